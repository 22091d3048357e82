"""What the offline LongBench-shaped generators share: the set description, sample slots, prose helpers
and invented words.

The pydoc corpus itself (topics, titles, blocks) is read by :mod:`lukv_bench.data.corpus`; this module
only cuts it into the paragraphs and sentences the generators ask about.
"""

from __future__ import annotations

import functools
import random
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lukv_bench.data.corpus import UNDERLINE, Topic, topics
from lukv_bench.sample import Sample

__all__ = [
    "CHARS_PER_TOKEN",
    "FIRST_NAMES",
    "GENERATOR",
    "PY",
    "OfflineSubset",
    "Retry",
    "Slot",
    "cloze",
    "collapse",
    "distinct_words",
    "invented_word",
    "is_prose",
    "paragraph_pool",
    "prose_paragraphs",
    "split_sentences",
]

#: the generator's name and revision: part of every random stream and data source (a bump changes every set)
GENERATOR = "lukv-bench generator v1"
CHARS_PER_TOKEN = 4  #: context lengths are approximate: this many characters count as one token
PY = f"{sys.version_info.major}.{sys.version_info.minor}"  #: the Python whose pydoc_data the text comes from


# --- sets and samples ----------------------------------------------------------------------------


class Retry(Exception):
    """This random draw cannot make an answerable sample; draw again."""


@dataclass(frozen=True)
class Slot:
    """Where a sample sits in its set: ``index`` within the set identified by ``key`` (subset, seed, length).

    Unlike the sample's random draw it does not change when a draw is retried, so choices that must
    be balanced over the set (labels, question kinds) are taken from it.
    """

    key: str
    index: int

    def balanced(self, options: tuple[str, ...]) -> str:
        """The option of this sample: every block of ``len(options)`` samples holds each option once,
        in a seeded order, so the options are equally frequent over the set (exactly, per full block)."""
        order = list(options)
        random.Random(f"{self.key}:block:{self.index // len(options)}").shuffle(order)
        return order[self.index % len(options)]


@dataclass(frozen=True)
class OfflineSubset:
    """One generated subset: the LongBench subset it imitates, its metric and its generator."""

    name: str
    imitates: str
    metric: str
    what: str
    make: Callable[[random.Random, int, Slot], Sample]
    source: str = "pydoc_data"  #: a key of :data:`lukv_bench.data.longbench.SOURCES`
    first_line_only: bool = False  #: score only the first line of the prediction (as LongBench does)
    max_new_tokens: int = 32  #: LongBench's generation length for the imitated subset
    #: design revision: part of the random streams and of the sample ids (v1 subsets keep their v1 data)
    version: int = 1

    def sample_id(self, seed: int, index: int) -> str:
        """``<subset>-<seed>-<i>`` (v1) or ``<subset>-v<version>-<seed>-<i>``: a redesign never reuses an id."""
        tag = "" if self.version == 1 else f"-v{self.version}"
        return f"{self.name}{tag}-{seed}-{index}"

    def stream_key(self, seed: int, context_tokens: int) -> str:
        """The string every random draw of this set is seeded from."""
        tag = "" if self.version == 1 else f":v{self.version}"
        return f"{GENERATOR}:{self.name}{tag}:{seed}:{context_tokens}"


# --- prose of the pydoc topics -------------------------------------------------------------------

_STOP = frozenset(
    """about above after again against because before being below between both could does doing during
    each every from further have having here itself just more most must other ought same should some
    such than that their theirs them then there these they this those through under until very what
    when where which while whom with would your yours also only into onto used uses using since""".split()
)
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")
_WORD = re.compile(r"^[A-Za-z]{5,}$")


def collapse(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) replaced by one space."""
    return " ".join(text.split())


def is_prose(block: str) -> bool:
    """Whether a block of a topic is a prose paragraph of at least 80 characters (not code, grammar,
    an indented list, a table or a heading)."""
    lines = block.split("\n")
    if any(line[:1].isspace() for line in lines):  # code, grammar, tables, indented lists
        return False
    if any(UNDERLINE.match(line.strip()) for line in lines):  # headings
        return False
    return len(collapse(block)) >= 80


def prose_paragraphs(topic: Topic) -> list[str]:
    """Whitespace-collapsed prose paragraphs of a topic (no code, grammar or headings)."""
    return [collapse(b) for b in topic.blocks if is_prose(b)]


def split_sentences(paragraph: str, min_words: int = 8, max_words: int = 45) -> list[str]:
    """The sentences of a collapsed paragraph that have ``min_words`` to ``max_words`` words."""
    return [s for s in _SENT_SPLIT.split(paragraph) if min_words <= len(s.split()) <= max_words]


def cloze(sentence: str, haystack: str, rng: random.Random) -> tuple[str, str] | None:
    """Blank one distinctive word of ``sentence``: ``(sentence with "____", the word)``; None unless the blank
    is recoverable from ``haystack``.

    Recoverable: the sentence with any word in the gap occurs exactly once in the collapsed haystack.
    """
    words = sentence.split()
    options = [i for i, w in enumerate(words) if i > 0 and _WORD.match(w) and w.lower() not in _STOP]
    rng.shuffle(options)
    flat = collapse(haystack)
    for i in options:
        before, after = " ".join(words[:i]), " ".join(words[i + 1 :])
        pattern = re.escape(before + " ") + r"\S+" + (re.escape(" " + after) if after else "")
        if len(re.findall(pattern, flat)) == 1:
            return " ".join([*words[:i], "____", *words[i + 1 :]]), words[i]
    return None


@functools.cache
def _paragraph_pool_cached(lo: int, hi: int) -> tuple[str, ...]:
    seen: set[str] = set()
    pool = []
    for t in topics():
        for p in prose_paragraphs(t):
            if lo <= len(p) <= hi and p not in seen:
                seen.add(p)
                pool.append(p)
    return tuple(pool)


def paragraph_pool(lo: int, hi: int) -> list[str]:
    """Distinct prose paragraphs of lo..hi characters, in topic order (a fresh list)."""
    return list(_paragraph_pool_cached(lo, hi))


# --- invented words ------------------------------------------------------------------------------

# Invented names: an answer built from them cannot be known without the context, and none of its
# words can be guessed from the question (which names a different invented word).
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "pr", "r", "s", "st", "t", "tr", "v")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "ie")
_CODAS = ("", "", "", "l", "n", "r", "s", "th", "nd", "x", "m")

#: real first names, paired with an invented surname to name a person
FIRST_NAMES = (
    "Ada", "Alma", "Anton", "Bela", "Clara", "Dario", "Edith", "Elias", "Farah", "Greta", "Hugo", "Ines", "Ivo",
    "Jonas", "Kira", "Lena", "Lior", "Mara", "Milo", "Nadia", "Nils", "Olga", "Oskar", "Petra", "Rafael", "Rosa",
    "Selma", "Tomas", "Una", "Viktor", "Wanda", "Yara", "Zora",
)


def invented_word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable made-up lower-case word of 2-3 syllables (e.g. ``"dravoul"``)."""
    word = ""
    for _ in range(rng.randint(*syllables)):
        onset = rng.choice(_ONSETS)
        if word and word[-1] == onset[0]:  # no doubled consonant across syllables
            onset = onset[1:] or "v"
        word += onset + rng.choice(_VOWELS) + rng.choice(_CODAS)
    return word


def distinct_words(
    rng: random.Random, min_len: int = 5, syllables: tuple[int, int] = (2, 3)
) -> Iterator[str]:
    """An endless stream of invented words, none of which contains another (so each is found only as itself)."""
    seen: list[str] = []
    while True:
        word = invented_word(rng, syllables)
        if len(word) >= min_len and not any(word in o or o in word for o in seen):
            seen.append(word)
            yield word
