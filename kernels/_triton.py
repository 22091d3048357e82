"""Optional Triton import shared by the kernel modules.

Kernel modules define their ``@triton.jit`` functions only when :data:`HAS_TRITON` is true, so the
package imports (and the torch reference path works) on machines without triton.
"""

from typing import Any

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton: Any = None  # type: ignore[no-redef]
    tl: Any = None  # type: ignore[no-redef]
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "next_pow2", "tl", "triton"]


def next_pow2(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()
