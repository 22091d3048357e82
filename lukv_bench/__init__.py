"""lukv-bench: compare KV-cache eviction policies on your model and tasks.

Built-in policies live in :mod:`lukv_bench.policies`, the cache runtime's kernels in
:mod:`lukv_bench.kernels`; both are installed from the repository's top-level ``policies/`` and
``kernels/`` folders.

Outside suites, :func:`compress` compresses the KV cache of a plain transformers model with any
registered policy: ``with lukv_bench.compress(model, policy="snapkv", budget=0.2): model.generate(...)``;
:func:`load_model` gives a model and its tokenizer in one line (``lukv_bench.load_model("embedded")``).
"""

from pathlib import Path as _Path

from lukv_bench.version import __version__

__all__ = ["CompressionSession", "__version__", "compress", "load_model"]


def __getattr__(name: str):
    """``compress``, ``CompressionSession`` and ``load_model`` load on first use (they import torch)."""
    if name in ("compress", "CompressionSession", "load_model"):
        from lukv_bench import api
        return getattr(api, name)
    raise AttributeError(f"module 'lukv_bench' has no attribute {name!r}")

# Imported straight from a source checkout (e.g. `python -m ...` in the repository root, which puts
# the checkout before the installed package on sys.path), the top-level policies/ and kernels/
# folders are not inside this package; let submodule lookup find them there too.
_root = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "policies").is_dir() and (_root / "policies" / "__init__.py").is_file():
    __path__.append(str(_root))  # noqa: F821 - __path__ is defined for packages
