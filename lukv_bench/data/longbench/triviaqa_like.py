"""``triviaqa_like``: few-shot QA imitating LongBench's triviaqa — fill-the-gap questions on prose
paragraphs of the reference, the last one asked (metric ``qa_f1``, first line of the prediction)."""

from __future__ import annotations

import random

from lukv_bench.data.longbench.common import OfflineSubset, Retry, Slot, cloze, paragraph_pool, split_sentences
from lukv_bench.sample import Sample

DESIGN = 1  #: design revision: part of the set's random streams, sample ids and data source from v2 on
VERSION = f"triviaqa_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: answered fill-the-gap examples on paragraphs filling about ``target`` characters, then
    one more paragraph whose gap is asked (raises :class:`Retry` when fewer than two shots can be made)."""
    paragraphs = paragraph_pool(200, 1200)
    rng.shuffle(paragraphs)
    shots: list[tuple[str, str, str]] = []
    size = 0
    for p in paragraphs:
        if size >= target:
            break
        sentences = split_sentences(p)
        if not sentences:
            continue
        made = cloze(rng.choice(sentences), p, rng)
        if made:
            shots.append((p, *made))
            size += len(p) + len(made[0]) + 40
    if len(shots) < 2:
        raise Retry
    *examples, (passage, blanked, word) = shots
    context = "\n\n".join(
        f'Passage: {p}\nQuestion: Which word is missing from "{b}"?\nAnswer: {w}' for p, b, w in examples
    )
    return Sample(
        id="",
        instruction=(
            "Answer the question based on the given passage. Only give me the answer and do not output any "
            "other words. The following are some examples."
        ),
        context=f"{context}\n\nPassage: {passage}",
        question=f'Question: Which word is missing from "{blanked}"?\nAnswer:',
        answers=[word],
        meta={"passage": passage, "sentence": blanked.replace("____", word)},
    )


SUBSET = OfflineSubset(
    "triviaqa_like",
    "triviaqa",
    "qa_f1",
    "few-shot QA (fill the gap)",
    make_sample,
    first_line_only=True,
    version=DESIGN,
)
