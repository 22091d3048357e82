"""lukv-bench: compare KV-cache eviction policies on your model and tasks.

Built-in policies live in :mod:`lukv_bench.policies`, the cache runtime's kernels in
:mod:`lukv_bench.kernels`; both are installed from the repository's top-level ``policies/`` and
``kernels/`` folders.
"""

__version__ = "0.1.0"
