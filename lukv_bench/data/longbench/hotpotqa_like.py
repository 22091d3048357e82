"""``hotpotqa_like``: multi-document QA imitating LongBench's hotpotqa — who did something for one of
several invented organisations, each the subject of its own passage (metric ``qa_f1``).

Design v3: each passage is a title (an invented organisation), prose quoted from the Python docs and one
fact sentence about the organisation, naming a person (a real first name and an invented surname). The
passages' facts use different relations (founded, directs, designed, ...) as long as there are relations
left, so the question matches one fact by its organisation and its wording; the answer is a two-word
name that occurs once in the context and never in the question, so echoing the question scores nothing.
The relation asked is balanced over the set.

Design v2 (up to 0.18 FullKV on the embedded SmolLM2-135M at 1,500 tokens, 0.03 at 2,000) gave every
passage the same four attributes of an invented software project, too many look-alike facts for a small
model; v2's samples are those of the git history before this design.
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

DESIGN = 3  #: design revision: part of the set's random streams, sample ids and data source ("design v3")
VERSION = f"hotpotqa_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it

#: relation -> (fact about organisation O naming person X, question about O)
_FACTS = {
    "founder": ("The {O} was founded by {X}.", "Who founded the {O}?"),
    "director": ("The {O} is directed by {X}.", "Who directs the {O}?"),
    "architect": ("The building of the {O} was designed by {X}.", "Who designed the building of the {O}?"),
    "donor": ("The {O} was funded by a gift from {X}.", "Whose gift funded the {O}?"),
    "logo": ("The logo of the {O} was drawn by {X}.", "Who drew the logo of the {O}?"),
    "report": (
        "The first annual report of the {O} was written by {X}.", "Who wrote the first annual report of the {O}?"
    ),
}
_ORGS = ("Institute", "Foundation", "Society", "Laboratory", "Academy", "Observatory")
_PASSAGE_CHARS = 1600  #: prose per passage at most (about 400 tokens): five passages in a 2,000-token context
_INSTRUCTION = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
)


@functools.cache
def _quote_pool() -> tuple[str, ...]:
    """Short prose sentences of the Python docs without quotes (the passages' text)."""
    return tuple(
        s for p in paragraph_pool(80, 2000) for s in split_sentences(p, 8, 30) if '"' not in s and "\n" not in s
    )


def _passage(org: str, fact: str, rng: random.Random, chars: int) -> str:
    """The organisation's name as a title, then consecutive prose sentences with the fact among them."""
    pool = _quote_pool()
    start = rng.randrange(len(pool))
    body: list[str] = []
    while sum(len(s) + 1 for s in body) < chars:
        body.append(pool[(start + len(body)) % len(pool)])
    body.insert(rng.randint(0, len(body)), fact)
    return f"{org}\n" + " ".join(body)


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: passages about invented organisations filling about ``target`` characters, and a question
    on the fact of one of them (the relation chosen by ``slot``, so every relation is asked equally often)."""
    n = max(2, round(target / (_PASSAGE_CHARS + 60)))
    chars = min(_PASSAGE_CHARS, target // n)  # short contexts: shorter passages
    asked = slot.balanced(tuple(_FACTS))
    k = rng.randrange(n)
    others = [r for r in _FACTS if r != asked]
    rng.shuffle(others)
    relations = [asked if i == k else others[(i - (i > k)) % len(others)] for i in range(n)]
    words = distinct_words(rng, syllables=(2, 2))
    passages = []
    for relation in relations:
        org = f"{next(words).capitalize()} {rng.choice(_ORGS)}"
        person = f"{rng.choice(FIRST_NAMES)} {next(words).capitalize()}"
        fact = _FACTS[relation][0].format(O=org, X=person)
        passages.append((org, person, _passage(org, fact, rng, chars)))
    org, answer, _ = passages[k]
    context = "\n\n".join(f"Passage {i + 1}:\n{text}" for i, (_, _, text) in enumerate(passages))
    if context.count(answer) != 1:  # pragma: no cover - invented words never occur in the docs' prose
        raise Retry
    return Sample(
        id="",
        instruction=f"{_INSTRUCTION}\n\nThe following are given passages.",
        context=context,
        question=f"{_INSTRUCTION}\n\nQuestion: {_FACTS[asked][1].format(O=org)}\nAnswer:",
        answers=[answer],
        meta={"organisation": org, "relation": asked, "passage": k + 1, "n_passages": n},
    )


SUBSET = OfflineSubset(
    "hotpotqa_like",
    "hotpotqa",
    "qa_f1",
    "multi-document QA (who did something for one of several invented organisations, one passage each)",
    make_sample,
    source="invented_organisations",
    version=DESIGN,
)
