"""``passage_retrieval_en_like``: synthetic retrieval imitating LongBench's passage_retrieval_en — which
numbered paragraph a copied sentence comes from (metric ``retrieval``)."""

from __future__ import annotations

import random

from lukv_bench.data.longbench.common import OfflineSubset, Retry, Slot, paragraph_pool, split_sentences
from lukv_bench.sample import Sample

DESIGN = 1  #: design revision: part of the set's random streams, sample ids and data source from v2 on
VERSION = f"passage_retrieval_en_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: numbered paragraphs filling about ``target`` characters, and a sentence that occurs in
    exactly one of them (raises :class:`Retry` when the drawn paragraph has none)."""
    pool = paragraph_pool(200, 900)
    rng.shuffle(pool)
    chosen: list[str] = []
    size = 0
    for p in pool:
        if size >= target:
            break
        chosen.append(p)
        size += len(p) + 16
    k = rng.randrange(len(chosen))
    sentences = [s for s in split_sentences(chosen[k]) if sum(s in p for p in chosen) == 1]
    if not sentences:
        raise Retry
    excerpt = rng.choice(sentences)
    context = "\n\n".join(f"Paragraph {i + 1}: {p}" for i, p in enumerate(chosen))
    return Sample(
        id="",
        instruction=(
            f"Here are {len(chosen)} paragraphs from the Python documentation, along with a sentence copied "
            "from one of them. Please determine which paragraph the sentence is from."
        ),
        context=context,
        question=(
            f"The following is a sentence copied from one of the paragraphs.\n\n{excerpt}\n\n"
            "Please enter the number of the paragraph that the sentence is from. The answer format must "
            'be like "Paragraph 1", "Paragraph 2", etc.\n\nThe answer is: '
        ),
        answers=[f"Paragraph {k + 1}"],
        meta={"excerpt": excerpt, "n_paragraphs": len(chosen)},
    )


SUBSET = OfflineSubset(
    "passage_retrieval_en_like",
    "passage_retrieval_en",
    "retrieval",
    "synthetic retrieval (which paragraph)",
    make_sample,
    version=DESIGN,
)
