"""One evaluation item, as every task yields it and the runtime turns it into a prompt.

Prompts are split in two blocks so the engine can run both protocols: ``compress: prompt``
(context and question prefilled together and compressed; the observation window sees the question)
and ``compress: context`` (only the context block is compressed; the question is fed afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One evaluation item."""

    id: str
    context: str  #: the long document(s) to be compressed
    question: str  #: the query, asked after the context
    answers: list[str]  #: gold answers (any match counts, metric-dependent)
    instruction: str = ""  #: task instruction placed before the context
    all_classes: list[str] | None = None  #: label set for classification metrics
    meta: dict[str, Any] = field(default_factory=dict)  #: e.g. needle depth/length for heatmaps
    #: tokens to generate for this sample (the task's ``max_new_tokens``, or LongBench's per-subset
    #: length); None: the suite's ``generation.max_new_tokens``
    max_new_tokens: int | None = None
    #: the three parts are a benchmark's own prompt template, cut at the context's end (LongBench's):
    #: joined as they are, with no paragraph breaks added and no "Answer:" cue after a plain prompt
    verbatim: bool = False
    #: False: never wrap this prompt in the chat template (LongBench's few-shot and code subsets)
    chat: bool = True

    def blocks(self) -> tuple[str, str]:
        """(context block, question block) of the user message, in that order."""
        if self.verbatim:
            return f"{self.instruction}{self.context}", self.question
        head = f"{self.instruction}\n\n" if self.instruction else ""
        return f"{head}{self.context}\n\n", self.question
