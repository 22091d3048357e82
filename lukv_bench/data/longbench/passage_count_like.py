"""``passage_count_like``: synthetic counting imitating LongBench's passage_count — how many unique
paragraphs a list with duplicates holds (metric ``count``)."""

from __future__ import annotations

import random

from lukv_bench.data.longbench.common import OfflineSubset, Slot, paragraph_pool
from lukv_bench.sample import Sample

DESIGN = 1  #: design revision: part of the set's random streams, sample ids and data source from v2 on
VERSION = f"passage_count_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: about ``target`` characters of numbered paragraphs, some repeated, and the count of the
    distinct ones as the answer."""
    pool = paragraph_pool(100, 600)
    avg = sum(map(len, pool)) / len(pool)
    slots = max(3, round(target / (avg + 16)))
    unique = rng.randint(max(1, slots // 4), slots)
    picked = rng.sample(pool, unique)
    order = picked + [rng.choice(picked) for _ in range(slots - unique)]
    rng.shuffle(order)
    context = "\n\n".join(f"Paragraph {i + 1}: {p}" for i, p in enumerate(order))
    return Sample(
        id="",
        instruction=(
            "There are some paragraphs below taken from the Python documentation. Some of them may be "
            "duplicates. Please carefully read these paragraphs and determine how many unique paragraphs "
            "there are after removing duplicates. In other words, how many non-repeating paragraphs are "
            "there in total?"
        ),
        context=context,
        question=(
            "Please enter the final count of unique paragraphs after removing duplicates. The output "
            "format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: "
        ),
        answers=[str(unique)],
        meta={"n_paragraphs": slots},
    )


SUBSET = OfflineSubset(
    "passage_count_like",
    "passage_count",
    "count",
    "synthetic counting (unique paragraphs)",
    make_sample,
    version=DESIGN,
)
