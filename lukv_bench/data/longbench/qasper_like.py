"""``qasper_like``: single-document QA imitating LongBench's qasper — a word removed from a sentence of a
reference topic, asked back (metric ``qa_f1``)."""

from __future__ import annotations

import random

from lukv_bench.data.corpus import Topic, topics
from lukv_bench.data.longbench.common import OfflineSubset, Retry, Slot, cloze, collapse, is_prose, split_sentences
from lukv_bench.sample import Sample

DESIGN = 1  #: design revision: part of the set's random streams, sample ids and data source from v2 on
VERSION = f"qasper_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it


def _excerpt(topic: Topic, budget: int, rng: random.Random) -> str:
    blocks = topic.blocks
    # start anywhere that still leaves about `budget` characters
    total, first = 0, len(blocks) - 1
    for j in range(len(blocks) - 1, -1, -1):
        total += len(blocks[j]) + 2
        first = j
        if total >= budget:
            break
    start = rng.randint(0, first)
    out: list[str] = []
    size = 0
    for block in blocks[start:]:
        if out and size + len(block) > budget:
            break
        if not out and len(block) > budget:  # one huge block: keep whole lines up to the budget
            lines = block.split("\n")
            keep = [lines[0]]
            for line in lines[1:]:
                if sum(map(len, keep)) + len(keep) + len(line) > budget:
                    break
                keep.append(line)
            return "\n".join(keep)
        out.append(block)
        size += len(block) + 2
    return "\n\n".join(out)


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: an excerpt of about ``target`` characters of one topic, and one of its sentences with a
    word blanked that only the excerpt can fill (raises :class:`Retry` when this draw has none)."""
    long_enough = [t for t in topics() if len(t.body) >= target * 0.8] or list(topics())
    topic = rng.choice(long_enough)
    body = _excerpt(topic, target, rng)
    context = f"{topic.title}\n\n{body}"
    paragraphs = [collapse(b) for b in body.split("\n\n") if is_prose(b)]
    sentences = [s for p in paragraphs for s in split_sentences(p)]
    rng.shuffle(sentences)
    for sentence in sentences:
        made = cloze(sentence, context, rng)
        if made:
            blanked, word = made
            break
    else:
        raise Retry
    return Sample(
        id="",
        instruction=(
            "You are given a technical document and a question. Answer the question as concisely as you "
            "can, using a single word if possible. Do not provide any explanation."
        ),
        context=f"Document: {context}",
        question=(
            "Answer the question based on the document above as concisely as you can, using a single word "
            "if possible. Do not provide any explanation.\n\n"
            f'Question: One word was removed from this sentence of the document: "{blanked}" '
            "Which word is missing?\n\nAnswer:"
        ),
        answers=[word],
        meta={"topic": topic.key, "sentence": blanked.replace("____", word)},
    )


SUBSET = OfflineSubset(
    "qasper_like",
    "qasper",
    "qa_f1",
    "single-document QA (fill the gap)",
    make_sample,
    max_new_tokens=128,
    version=DESIGN,
)
