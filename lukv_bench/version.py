"""The version of lukv-bench (its own module, so any layer can read it without importing the package root)."""

__version__ = "0.1.0"
