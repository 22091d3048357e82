"""The answer of a sample as the profile scores it: its reply tokens and its span in the context's tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lukv_bench.runtime.prompts import render_prompt


def answer_token_ids(tokenizer: Any, answer: str, chat: bool) -> list[int]:
    """Token ids of ``answer`` as the reply to the prompt: after ``Answer:`` a space leads, in chat it does not."""
    return list(tokenizer(answer if chat else " " + answer, add_special_tokens=False)["input_ids"])


def answer_span(tokenizer: Any, sample: Any, chat: bool, context_ids: Sequence[int]) -> tuple[str, list[int]] | None:
    """``(answer, context token positions)`` of the first gold answer found in the sample's context.

    Every whole-word occurrence (case-sensitive) inside ``sample.context`` counts; a token belongs to
    the span when its characters overlap an occurrence. None when no answer occurs, or when the
    tokenizer cannot map tokens to characters (a slow tokenizer).
    """
    head, _, add_special = render_prompt(tokenizer, sample, chat)
    try:
        enc = tokenizer(head, add_special_tokens=add_special, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if list(enc["input_ids"]) != list(context_ids):
        return None
    base = head.find(sample.context)
    region = (base, base + len(sample.context)) if base >= 0 else (0, len(head))
    offsets = enc["offset_mapping"]
    for answer in sample.answers:
        text = answer.strip()
        if not text:
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(text) + r"(?!\w)")
        hits = [(m.start(), m.end()) for m in pattern.finditer(head, region[0], region[1])]
        positions = [
            i for i, (s, e) in enumerate(offsets) if e > s and any(s < he and e > hs for hs, he in hits)
        ]
        if positions:
            return answer, positions
    return None

