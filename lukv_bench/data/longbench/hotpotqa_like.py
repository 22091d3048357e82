"""``hotpotqa_like``: multi-document QA imitating LongBench's hotpotqa — an attribute (a multi-word
invented name) of one of many invented software projects (metric ``qa_f1``).

Every answer is made of invented words that occur once in the context and never in the question, so
echoing the question scores nothing; the attribute asked is balanced over the set.
"""

from __future__ import annotations

import functools
import random

from lukv_bench.data.longbench.common import (
    FIRST_NAMES,
    OfflineSubset,
    Retry,
    Slot,
    distinct_words,
    paragraph_pool,
    split_sentences,
)
from lukv_bench.sample import Sample

DESIGN = 2  #: design revision: part of the set's random streams, sample ids and data source ("design v2")
VERSION = f"hotpotqa_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it

#: attribute -> (sentence about project P with value X, question about P). The question repeats the
#: sentence's wording up to the value, so the answer is the span that follows it in one passage;
#: every answer is made of invented words that occur once in the context and never in the question.
_FACTS = {
    "author": ("The original author of {P} is {X}.", "Who is the original author of {P}?"),
    "maintainer": ("The current maintainer of {P} is {X}.", "Who is the current maintainer of {P}?"),
    "city": ("The first version of {P} was written in {X}.", "Where was the first version of {P} written?"),
    "sponsor": ("The main sponsor of {P} is the {X}.", "Who is the main sponsor of {P}?"),
}
_CITY_FORMS = ("Port {W}", "{W} Falls", "North {W}", "{W} Bay", "Upper {W}")
_SPONSOR_FORMS = ("{W} Foundation", "{W} Institute", "{W} Trust", "{W} Society")
_KINDS = ("library", "command-line tool", "build system", "database driver", "test runner", "web framework")


@functools.cache
def _quote_pool() -> tuple[str, ...]:
    """Short prose sentences of the Python docs without quotes (filler remarks for hotpotqa_like)."""
    return tuple(
        s for p in paragraph_pool(80, 2000) for s in split_sentences(p, 8, 30) if '"' not in s and "\n" not in s
    )


def _project_passage(name: str, values: dict[str, str], rng: random.Random, quote: str) -> str:
    facts = [_FACTS[a][0].format(P=name, X=values[a]) for a in _FACTS]
    rng.shuffle(facts)
    sentences = [
        f"{name} is an open-source {rng.choice(_KINDS)}, first released in {rng.randint(1989, 2021)}.",
        *facts[:2],
        f'Its manual opens with this remark: "{quote}"',
        *facts[2:],
        f"The current release is {rng.randint(1, 9)}.{rng.randint(0, 30)}.",
    ]
    return " ".join(sentences)


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: invented project profiles filling about ``target`` characters, and a question on one
    attribute of one project (the attribute chosen by ``slot``, so every attribute is asked equally often)."""
    sentences = _quote_pool()
    passages: list[tuple[str, dict[str, str]]] = []
    size = 0
    it = distinct_words(rng, syllables=(2, 2))
    while size < target:
        name = next(it).capitalize()
        values = {
            "author": f"{rng.choice(FIRST_NAMES)} {next(it).capitalize()}",
            "maintainer": f"{rng.choice(FIRST_NAMES)} {next(it).capitalize()}",
            "city": rng.choice(_CITY_FORMS).format(W=next(it).capitalize()),
            "sponsor": rng.choice(_SPONSOR_FORMS).format(W=next(it).capitalize()),
        }
        text = _project_passage(name, values, rng, rng.choice(sentences))
        passages.append((f"{name}\n{text}", values))
        size += len(text) + len(name) + 16
    if len(passages) < 2:
        raise Retry
    k = rng.randrange(len(passages))
    attribute = slot.balanced(tuple(_FACTS))
    name = passages[k][0].split("\n", 1)[0]
    answer = passages[k][1][attribute]
    context = "\n\n".join(f"Passage {i + 1}:\n{text}" for i, (text, _) in enumerate(passages))
    return Sample(
        id="",
        instruction=(
            "Answer the question based on the given passages. Only give me the answer and do not output "
            "any other words.\n\nThe following are given passages."
        ),
        context=context,
        question=(
            "Answer the question based on the given passages. Only give me the answer and do not output "
            f"any other words.\n\nQuestion: {_FACTS[attribute][1].format(P=name)}\nAnswer:"
        ),
        answers=[answer],
        meta={"project": name, "attribute": attribute, "passage": k + 1, "n_passages": len(passages)},
    )


SUBSET = OfflineSubset(
    "hotpotqa_like",
    "hotpotqa",
    "qa_f1",
    "multi-document QA (an attribute of one invented project among many)",
    make_sample,
    source="invented_projects",
    version=DESIGN,
)
