"""Range checks shared by the built-in scorers and allocators (raise ConfigError with the param name)."""

from __future__ import annotations

from typing import Any

from lukv_bench.errors import ConfigError


def check_range(
    owner: str,
    name: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise ConfigError unless ``value`` lies in the interval described by lo/hi (open or closed)."""
    bad = (
        (lo is not None and (value <= lo if lo_open else value < lo))
        or (hi is not None and (value >= hi if hi_open else value > hi))
        or value != value  # NaN
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{owner}: {name} must be in {interval} (got {value!r})")


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{owner}: {name} must be one of {', '.join(choices)} (got {value!r})")


def check_kernel(owner: str, kernel: int) -> None:
    """A pooling kernel must be an odd integer >= 1 (so padding k//2 keeps the length)."""
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"{owner}: kernel must be an odd integer >= 1 (got {kernel!r})")
