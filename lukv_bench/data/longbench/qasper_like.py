"""``qasper_like``: single-document QA imitating LongBench's qasper — a question about one fact of a
technical document on an invented software project (metric ``qa_f1``).

Design v2: the document is an excerpt of one Python-docs topic (without its drawn tables) presented as the
manual of an invented project, with four sentences about the project's people inserted between its blocks, each with a
different relation (started, maintains, drew the logo, ...). The question asks one relation (balanced
over the set) by its wording; the answer is a two-word name (a real first name and an invented surname)
that occurs once in the document and never in the question, so neither the model's knowledge nor an echo
of the question scores; the four people have different first names. Only topics long enough for the
target length are drawn (18 at 2,000 tokens, 3 at 8,000), so long sets repeat topics, with other projects,
people and excerpts.

Design v1 (a word removed from a sentence of the document, asked back; ~0 FullKV on the embedded
SmolLM2-135M at 2,000 tokens, so it could not rank policies) is in the git history before this design.
"""

from __future__ import annotations

import random

from lukv_bench.data.corpus import Topic, topics
from lukv_bench.data.longbench.common import FIRST_NAMES, OfflineSubset, Retry, Slot, distinct_words
from lukv_bench.sample import Sample

DESIGN = 2  #: design revision: part of the set's random streams, sample ids and data source ("design v2")
VERSION = f"qasper_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it

#: relation -> (fact about project P naming person X, question about P)
_FACTS = {
    "founder": ("The {P} project was started by {X}.", "Who started the {P} project?"),
    "maintainer": ("Today the {P} project is maintained by {X}.", "Who maintains the {P} project today?"),
    "logo": ("The logo of {P} was drawn by {X}.", "Who drew the logo of {P}?"),
    "manual": ("This manual of {P} was written by {X}.", "Who wrote the manual of {P}?"),
    "release": ("The first release of {P} was announced by {X}.", "Who announced the first release of {P}?"),
    "tests": ("The test suite of {P} was designed by {X}.", "Who designed the test suite of {P}?"),
}
_N_FACTS = 4
_INSTRUCTION = (
    "Answer the question based on the document above as concisely as you can, using a name if possible. "
    "Do not provide any explanation."
)


def _is_table(block: str) -> bool:
    """Whether a block is a drawn table: a ``+---+`` border or a ``| ... |`` row (such rows confuse a small
    model more than they inform it; grammar blocks with ``|`` alternatives are kept)."""
    rows = [line.strip() for line in block.split("\n")]
    return any(r.startswith(("+-", "+=")) or (len(r) > 1 and r.startswith("|") and r.endswith("|")) for r in rows)


def _excerpt(topic: Topic, budget: int, rng: random.Random) -> list[str]:
    """Consecutive blocks of ``topic`` (tables left out) holding about ``budget`` characters (a huge first
    block: its first lines)."""
    blocks = [b for b in topic.blocks if not _is_table(b)]
    total, first = 0, len(blocks) - 1
    for j in range(len(blocks) - 1, -1, -1):  # start anywhere that still leaves about `budget` characters
        total += len(blocks[j]) + 2
        first = j
        if total >= budget:
            break
    out: list[str] = []
    size = 0
    for block in blocks[rng.randint(0, first):]:
        if out and size + len(block) > budget:
            break
        if not out and len(block) > budget:
            lines = block.split("\n")
            keep = [lines[0]]
            for line in lines[1:]:
                if sum(map(len, keep)) + len(keep) + len(line) > budget:
                    break
                keep.append(line)
            return ["\n".join(keep)]
        out.append(block)
        size += len(block) + 2
    return out


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: a document of about ``target`` characters on one invented project, with facts about its
    people, and a question on one fact (the relation chosen by ``slot``, so each is asked equally often)."""
    long_enough = [t for t in topics() if sum(len(b) for b in t.blocks if not _is_table(b)) >= target * 0.8]
    long_enough = long_enough or list(topics())
    topic = rng.choice(long_enough)
    blocks = _excerpt(topic, target, rng)
    asked = slot.balanced(tuple(_FACTS))
    others = [r for r in _FACTS if r != asked]
    relations = [asked, *rng.sample(others, _N_FACTS - 1)]
    rng.shuffle(relations)
    words = distinct_words(rng, syllables=(2, 2))
    project = next(words).capitalize()
    # distinct first names too: naming the wrong person must not earn a shared first name's F1
    firsts = rng.sample(FIRST_NAMES, _N_FACTS)
    people = {r: f"{first} {next(words).capitalize()}" for r, first in zip(relations, firsts, strict=True)}
    for relation in relations:  # each fact as its own block at a random place among the blocks
        blocks.insert(rng.randint(0, len(blocks)), _FACTS[relation][0].format(P=project, X=people[relation]))
    title = f"{project} manual: {topic.title}"
    context = "\n\n".join([title, *blocks])
    answer = people[asked]
    if context.count(answer) != 1:  # pragma: no cover - invented words never occur in the docs' prose
        raise Retry
    return Sample(
        id="",
        instruction=(
            "You are given a technical document and a question. Answer the question as concisely as you "
            "can, using a name if possible. Do not provide any explanation."
        ),
        context=f"Document: {context}",
        question=f"{_INSTRUCTION}\n\nQuestion: {_FACTS[asked][1].format(P=project)}\n\nAnswer:",
        answers=[answer],
        meta={"project": project, "relation": asked, "topic": topic.key, "n_facts": _N_FACTS},
    )


SUBSET = OfflineSubset(
    "qasper_like",
    "qasper",
    "qa_f1",
    "single-document QA (who did something for an invented project, asked of its manual)",
    make_sample,
    source="invented_project",
    max_new_tokens=128,
    version=DESIGN,
)
