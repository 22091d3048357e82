"""Choose between the Triton kernels and the torch reference implementations.

Rules, in order:

1. ``LUKV_BENCH_BACKEND=torch|triton`` in the environment forces a backend (``auto`` or unset: no force).
2. Otherwise CUDA tensors use Triton (when it is importable) and CPU tensors use torch.

Triton on CPU tensors is only possible with ``TRITON_INTERPRET=1`` (the Triton interpreter), which
the test-suite sets process-wide before any kernel module is imported. Production never sets it.
"""

from __future__ import annotations

import os

import torch

from ._triton import HAS_TRITON

__all__ = ["BACKEND_ENV", "backend", "has_triton", "interpreting", "resolve"]

#: Environment variable that forces a backend.
BACKEND_ENV = "LUKV_BENCH_BACKEND"

_VALID = ("torch", "triton")


def has_triton() -> bool:
    """True when the ``triton`` package imported successfully."""
    return HAS_TRITON


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` is set, i.e. ``@triton.jit`` kernels run in the CPU interpreter.

    Triton reads the variable when each kernel is decorated, so it has to be set before the kernel
    modules are imported; this helper reads it at call time.
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no", "off")


def _check_triton(tensors: tuple[torch.Tensor, ...]) -> None:
    if not has_triton():
        raise RuntimeError("the triton backend was requested but triton is not installed")
    on_cpu = any(t.device.type != "cuda" for t in tensors)
    if on_cpu and not interpreting():
        raise RuntimeError(
            "the triton backend needs CUDA tensors; on CPU tensors it only runs in the Triton "
            "interpreter (set TRITON_INTERPRET=1 before importing lukv_bench.kernels)"
        )


def backend(*tensors: torch.Tensor) -> str:
    """Backend for an op on ``tensors``: ``"triton"`` or ``"torch"``.

    ``LUKV_BENCH_BACKEND`` overrides the device-based choice; forcing ``triton`` raises
    :class:`RuntimeError` when triton is missing, or when a tensor is on the CPU and the Triton
    interpreter is off.
    """
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced and forced != "auto":
        if forced not in _VALID:
            raise ValueError(f"{BACKEND_ENV}={forced!r}: expected one of {_VALID} or 'auto'")
        if forced == "triton":
            _check_triton(tensors)
        return forced
    if tensors and all(t.device.type == "cuda" for t in tensors) and has_triton():
        return "triton"
    return "torch"


def resolve(requested: str | None, *tensors: torch.Tensor) -> str:
    """Backend for one call: ``requested`` (an op's ``backend=`` argument) if given, else :func:`backend`."""
    if requested is None:
        return backend(*tensors)
    if requested not in _VALID:
        raise ValueError(f"backend={requested!r}: expected one of {_VALID} or None")
    if requested == "triton":
        _check_triton(tensors)
    return requested
