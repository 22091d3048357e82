"""What ``lukv-bench profile`` measures: the settings, their defaults and the parsing of the list options."""

from __future__ import annotations

from dataclasses import dataclass

from lukv_bench.errors import UserError

DEFAULT_TAUS = (0.8, 0.9, 0.95)
DEFAULT_COS = (0.99,)
DEFAULT_BUDGET = 0.2
DEFAULT_LIMIT = 4
DEFAULT_WINDOW = 32


def parse_fractions(text: str, option: str, example: str) -> tuple[float, ...]:
    """Parse a comma-separated list of numbers in (0, 1] given to ``option``; UserError otherwise."""
    hint = f"{option} takes comma-separated numbers in (0, 1], e.g. {option} {example}"
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise UserError(f"{hint} (got {text!r})") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise UserError(f"{hint} (got {text!r})")
    return tuple(sorted(set(values)))


@dataclass
class ProfileSettings:
    """What is measured: the LMBA mass shares, LMBO cosine thresholds, allocation budget and window."""

    taus: tuple[float, ...] = DEFAULT_TAUS
    cos_thresholds: tuple[float, ...] = DEFAULT_COS
    budget: float = DEFAULT_BUDGET  #: mean budget (ratio of the prompt) of the allocation comparison
    window: int | None = None  #: observation window (last prompt tokens); None: the suite's, else 32
    chat_template: bool | str = "auto"
    gqa_reduce: str = "mean"  #: how query-head scores fold onto KV heads (SnapKV scores for LMBO)
    truncate: str = "middle"  #: prompts longer than the model's positions: the suite's rule (prompts.fit_prompt)

    def __post_init__(self) -> None:
        if not 0.0 < self.budget < 1.0:
            raise UserError(f"--budget must be a ratio in (0, 1), e.g. --budget 0.2 (got {self.budget})")
        if self.window is not None and self.window < 1:
            raise UserError(f"--window must be at least 1 token (got {self.window})")
