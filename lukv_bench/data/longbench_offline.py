"""An offline, LongBench-shaped data set generated from text that ships with Python, or invented.

Sources (nothing is downloaded):

* ``pydoc_data.topics.topics`` — the Python Language Reference / library topics used by ``help()``
  (a dict ``topic -> text``; deduplicated by text, e.g. "else" and "if" share one text);
* invented words (pronounceable, made up per sample) for the names, people, places and code
  identifiers of ``hotpotqa_like`` and ``lcc_like``, so their answers cannot come from a model's
  memory: only from the context.

Every subset imitates one LongBench subset (same task shape, prompt style and metric) and every
question is answerable from its context, which the generator checks while building it:

========================== ==================== ============== ============================================
subset                     imitates (LongBench) metric         what it asks
========================== ==================== ============== ============================================
qasper_like                qasper (1-doc QA)    qa_f1          a word removed from a sentence of the document
hotpotqa_like              hotpotqa (multi-doc) qa_f1          an attribute (a multi-word name) of one of many
                                                               invented projects
triviaqa_like              triviaqa (few-shot)  qa_f1          few-shot fill-the-gap questions on passages
trec_like                  trec (few-shot cls.) classification which reference chapter a snippet comes from
                                                               (every chapter equally often)
passage_retrieval_en_like  passage_retrieval_en retrieval      which numbered paragraph a sentence is from
passage_count_like         passage_count        count          how many unique paragraphs (with duplicates)
lcc_like                   lcc (code)           code_sim       next line of a generated module; it names an
                                                               identifier that only the context defines
========================== ==================== ============== ============================================

Generation is deterministic for a given Python version, seed and target length, and prefix-stable:
sample ``i`` depends only on ``(subset, seed, context_tokens, i)``. Context lengths are approximate
(``4`` characters per token). Subsets redesigned after their first release carry a design version
(``OfflineSubset.version``) in their random streams, sample ids and data source, so their samples are
never mistaken for the earlier design's.
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
    "CHAPTERS",
    "GENERATOR",
    "OFFLINE_SUBSETS",
    "OfflineSubset",
    "data_source",
    "generate",
]

GENERATOR = "lukv-bench generator v1"
CHARS_PER_TOKEN = 4
PY = f"{sys.version_info.major}.{sys.version_info.minor}"

#: pydoc topic -> the chapter of the Python documentation it comes from (trec_like's labels)
CHAPTERS: dict[str, str] = {
    **dict.fromkeys(
        ["floating", "id-classes", "identifiers", "imaginary", "integers", "numbers", "strings"],
        "Lexical analysis",
    ),
    **dict.fromkeys(
        [
            "attribute-access",
            "callable-types",
            "context-managers",
            "customization",
            "numeric-types",
            "objects",
            "sequence-types",
            "specialnames",
            "types",
        ],
        "Data model",
    ),
    **dict.fromkeys(["dynamic-features", "exceptions", "execmodel", "naming"], "Execution model"),
    **dict.fromkeys(
        [
            "atom-identifiers",
            "atom-literals",
            "attribute-references",
            "await",
            "binary",
            "bitwise",
            "booleans",
            "calls",
            "comparisons",
            "conversions",
            "dict",
            "exprlists",
            "in",
            "lambda",
            "lists",
            "operator-summary",
            "power",
            "shifting",
            "slicings",
            "subscriptions",
            "unary",
        ],
        "Expressions",
    ),
    **dict.fromkeys(
        [
            "assert",
            "assignment",
            "augassign",
            "break",
            "continue",
            "del",
            "global",
            "import",
            "nonlocal",
            "pass",
            "raise",
            "return",
            "yield",
        ],
        "Simple statements",
    ),
    **dict.fromkeys(
        ["async", "class", "compound", "else", "for", "function", "if", "try", "while", "with"],
        "Compound statements",
    ),
    **dict.fromkeys(
        [
            "bltin-code-objects",
            "bltin-ellipsis-object",
            "bltin-null-object",
            "bltin-type-objects",
            "specialattrs",
            "string-methods",
            "truth",
            "typesfunctions",
            "typesmapping",
            "typesmethods",
            "typesmodules",
            "typesseq",
            "typesseq-mutable",
        ],
        "Built-in types",
    ),
}

_STOP = frozenset(
    """about above after again against because before being below between both could does doing during
    each every from further have having here itself just more most must other ought same should some
    such than that their theirs them then there these they this those through under until very what
    when where which while whom with would your yours also only into onto used uses using since""".split()
)
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")
_WORD = re.compile(r"^[A-Za-z]{5,}$")


# --- source text ---------------------------------------------------------------------------------


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _is_prose(block: str) -> bool:
    lines = block.split("\n")
    if any(line[:1].isspace() for line in lines):  # code, grammar, tables, indented lists
        return False
    if any(UNDERLINE.match(line.strip()) for line in lines):  # headings
        return False
    return len(_collapse(block)) >= 80


def prose_paragraphs(topic: Topic) -> list[str]:
    """Whitespace-collapsed prose paragraphs of a topic (no code, grammar or headings)."""
    return [_collapse(b) for b in topic.blocks if _is_prose(b)]


def _sentences(paragraph: str, min_words: int = 8, max_words: int = 45) -> list[str]:
    return [s for s in _SENT_SPLIT.split(paragraph) if min_words <= len(s.split()) <= max_words]


def _cloze(sentence: str, haystack: str, rng: random.Random) -> tuple[str, str] | None:
    """Blank one distinctive word of ``sentence``; None unless the blank is recoverable from ``haystack``.

    Recoverable: the sentence with any word in the gap occurs exactly once in the collapsed haystack.
    """
    words = sentence.split()
    options = [i for i, w in enumerate(words) if i > 0 and _WORD.match(w) and w.lower() not in _STOP]
    rng.shuffle(options)
    flat = _collapse(haystack)
    for i in options:
        before, after = " ".join(words[:i]), " ".join(words[i + 1 :])
        pattern = re.escape(before + " ") + r"\S+" + (re.escape(" " + after) if after else "")
        if len(re.findall(pattern, flat)) == 1:
            return " ".join([*words[:i], "____", *words[i + 1 :]]), words[i]
    return None


# --- subsets -------------------------------------------------------------------------------------


class _Retry(Exception):
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


def _qasper_like(rng: random.Random, target: int, slot: Slot) -> Sample:
    long_enough = [t for t in topics() if len(t.body) >= target * 0.8] or list(topics())
    topic = rng.choice(long_enough)
    body = _excerpt(topic, target, rng)
    context = f"{topic.title}\n\n{body}"
    paragraphs = [_collapse(b) for b in body.split("\n\n") if _is_prose(b)]
    sentences = [s for p in paragraphs for s in _sentences(p)]
    rng.shuffle(sentences)
    for sentence in sentences:
        made = _cloze(sentence, context, rng)
        if made:
            blanked, word = made
            break
    else:
        raise _Retry
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


# Invented names: an answer built from them cannot be known without the context, and none of its
# words can be guessed from the question (which names a different invented word).
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "pr", "r", "s", "st", "t", "tr", "v")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "ie")
_CODAS = ("", "", "", "l", "n", "r", "s", "th", "nd", "x", "m")
_FIRST_NAMES = (
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


def _hotpotqa_like(rng: random.Random, target: int, slot: Slot) -> Sample:
    sentences = _quote_pool()
    passages: list[tuple[str, dict[str, str]]] = []
    size = 0
    it = distinct_words(rng, syllables=(2, 2))
    while size < target:
        name = next(it).capitalize()
        values = {
            "author": f"{rng.choice(_FIRST_NAMES)} {next(it).capitalize()}",
            "maintainer": f"{rng.choice(_FIRST_NAMES)} {next(it).capitalize()}",
            "city": rng.choice(_CITY_FORMS).format(W=next(it).capitalize()),
            "sponsor": rng.choice(_SPONSOR_FORMS).format(W=next(it).capitalize()),
        }
        text = _project_passage(name, values, rng, rng.choice(sentences))
        passages.append((f"{name}\n{text}", values))
        size += len(text) + len(name) + 16
    if len(passages) < 2:
        raise _Retry
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


@functools.cache
def _quote_pool() -> tuple[str, ...]:
    """Short prose sentences of the Python docs without quotes (filler remarks for hotpotqa_like)."""
    return tuple(
        s for p in _paragraph_pool(80, 2000) for s in _sentences(p, 8, 30) if '"' not in s and "\n" not in s
    )


@functools.lru_cache(maxsize=1)
def _snippet_table() -> dict[str, list[str]]:
    """Labelled topic key -> its prose sentences (trec_like snippets)."""
    table = {}
    for t in topics():
        if t.key in CHAPTERS:
            snippets = [s for p in prose_paragraphs(t) for s in _sentences(p, 8, 60) if s[:1].isupper()]
            if snippets:
                table[t.key] = snippets
    return table


def _trec_like(rng: random.Random, target: int, slot: Slot) -> Sample:
    by_topic = _snippet_table()
    classes = tuple(sorted(set(CHAPTERS.values())))
    label = slot.balanced(classes)  # every chapter is the answer equally often
    query_key = rng.choice(sorted(k for k, ss in by_topic.items() if CHAPTERS[k] == label and len(ss) >= 2))
    query, support = rng.sample(by_topic[query_key], 2)
    examples = [(support, label)]
    size = len(support) + 40
    pools: dict[str, list[str]] = {c: [] for c in classes}
    for k, ss in by_topic.items():
        pools[CHAPTERS[k]].extend(s for s in ss if s not in (query, support))
    for pool in pools.values():
        rng.shuffle(pool)
    # the examples take the chapters in turn, so the context does not favour any label either
    turn = list(classes)
    rng.shuffle(turn)
    while size < target and any(pools.values()):
        for c in turn:
            if size >= target:
                break
            if pools[c]:
                s = pools[c].pop()
                examples.append((s, c))
                size += len(s) + 30
    rng.shuffle(examples)
    context = "\n\n".join(f"Snippet: {s}\nChapter: {c}" for s, c in examples)
    return Sample(
        id="",
        instruction=(
            "Please determine which chapter of the Python documentation the snippet below comes from. "
            "Here are some examples of snippets with their chapters."
        ),
        context=context,
        question=f"Snippet: {query}\nChapter:",
        answers=[label],
        all_classes=list(classes),
        meta={"topic": query_key, "support": support},
    )


def _triviaqa_like(rng: random.Random, target: int, slot: Slot) -> Sample:
    paragraphs = _paragraph_pool(200, 1200)
    rng.shuffle(paragraphs)
    shots: list[tuple[str, str, str]] = []
    size = 0
    for p in paragraphs:
        if size >= target:
            break
        sentences = _sentences(p)
        if not sentences:
            continue
        made = _cloze(rng.choice(sentences), p, rng)
        if made:
            shots.append((p, *made))
            size += len(p) + len(made[0]) + 40
    if len(shots) < 2:
        raise _Retry
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


def _paragraph_pool(lo: int, hi: int) -> list[str]:
    """Distinct prose paragraphs of lo..hi characters, in topic order (a fresh list)."""
    return list(_paragraph_pool_cached(lo, hi))


def _passage_retrieval_like(rng: random.Random, target: int, slot: Slot) -> Sample:
    pool = _paragraph_pool(200, 900)
    rng.shuffle(pool)
    chosen: list[str] = []
    size = 0
    for p in pool:
        if size >= target:
            break
        chosen.append(p)
        size += len(p) + 16
    k = rng.randrange(len(chosen))
    sentences = [s for s in _sentences(chosen[k]) if sum(s in p for p in chosen) == 1]
    if not sentences:
        raise _Retry
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


def _passage_count_like(rng: random.Random, target: int, slot: Slot) -> Sample:
    pool = _paragraph_pool(100, 600)
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


_TEXT_FIELDS = ("label", "owner", "title", "source", "status", "region", "author", "channel")
_INT_FIELDS = ("count", "size", "weight", "level", "rank", "limit", "offset", "priority")


@dataclass(frozen=True)
class _Kind:
    """One invented record kind of a generated module: its word and the names derived from it."""

    word: str
    suffix: str
    limit: int
    text_field: str
    int_field: str
    sep: str

    @property
    def const(self) -> str:
        return self.word.upper()

    @property
    def cls(self) -> str:
        return f"{self.word.capitalize()}Record"


def _kind_definitions(k: _Kind) -> list[str]:
    return [
        "@dataclass",
        f"class {k.cls}:",
        f'    """One {k.word} entry."""',
        "",
        f"    {k.text_field}: str",
        f"    {k.int_field}: int = 0",
        "",
        "",
        f"def _parse_{k.word}(text: str, strict: bool = False) -> {k.cls}:",
        f'    {k.text_field}, _, raw = text.strip().partition("{k.sep}")',
        f"    if strict and len({k.text_field}) > {k.const}_LIMIT:",
        f'        raise ValueError("{k.word} {k.text_field} is longer than the limit")',
        f"    return {k.cls}({k.text_field}, int(raw or 0))",
        "",
        "",
    ]


#: store methods: name -> body lines for one kind (after the ``def`` line)
def _method(family: str, k: _Kind) -> list[str]:
    w = k.word
    if family == "load":
        return [
            f"    def load_{w}(self, name: str) -> {k.cls}:",
            f"        path = os.path.join(self.root, name + {k.const}_SUFFIX)",
            '        with open(path, encoding="utf-8") as fh:',
            f"            record = _parse_{w}(fh.read(), strict=True)",
            f"        self._{w}_cache[name] = record",
            "        return record",
        ]
    if family == "save":
        return [
            f"    def save_{w}(self, name: str, record: {k.cls}) -> None:",
            f"        path = os.path.join(self.root, name + {k.const}_SUFFIX)",
            '        with open(path, "w", encoding="utf-8") as fh:',
            f'            fh.write(f"{{record.{k.text_field}}}{k.sep}{{record.{k.int_field}}}\\n")',
            f"        self._{w}_cache[name] = record",
        ]
    if family == "total":
        return [
            f"    def total_{w}(self) -> int:",
            f"        return sum(record.{k.int_field} for record in self._{w}_cache.values())",
        ]
    if family == "find":
        return [
            f"    def find_{w}(self, {k.text_field}: str) -> list[str]:",
            f"        names = [n for n, r in self._{w}_cache.items() if r.{k.text_field} == {k.text_field}]",
            "        return sorted(names)",
        ]
    assert family == "dump"
    return [
        f"    def dump_{w}(self) -> str:",
        f"        rows = {{n: [r.{k.text_field}, r.{k.int_field}] for n, r in self._{w}_cache.items()}}",
        f'        return json.dumps({{"kind": "{w}", "limit": {k.const}_LIMIT, "rows": rows}})',
    ]


_FAMILIES = ("load", "save", "total", "find", "dump")


def _module_lines(domain: str, kinds: list[_Kind], families: list[str], grouped: bool) -> list[str]:
    """A whole generated module: constants, record classes and parsers, then a store class."""
    store = f"{domain.capitalize()}Store"
    lines = [
        f'"""Reading, checking and saving {domain} records.',
        "",
        f"Each record kind has its own file suffix, size limit and parser; {store}",
        "keeps the records it has loaded or saved.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import json",
        "import os",
        "from dataclasses import dataclass",
        "",
    ]
    for k in kinds:
        lines += [f'{k.const}_SUFFIX = "{k.suffix}"', f"{k.const}_LIMIT = {k.limit}"]
    lines += ["", ""]
    if grouped:  # all classes, then all parsers
        parts = [_kind_definitions(k) for k in kinds]
        lines += [x for p in parts for x in p[:8]] + [x for p in parts for x in p[8:]]
    else:
        lines += [x for k in kinds for x in _kind_definitions(k)]
    lines += [
        f"class {store}:",
        f'    """Loads and saves {domain} records below one folder."""',
        "",
        "    def __init__(self, root: str) -> None:",
        "        self.root = root",
    ]
    lines += [f"        self._{k.word}_cache: dict[str, {k.cls}] = {{}}" for k in kinds]
    for k in kinds:
        for family in families:
            lines += ["", *_method(family, k)]
    return lines


def _lcc_like(rng: random.Random, target: int, slot: Slot) -> Sample:
    words = distinct_words(rng, min_len=6)
    domain = next(words)
    families = rng.sample(_FAMILIES, rng.randint(2, 4))
    grouped = rng.random() < 0.5
    kinds: list[_Kind] = []
    while True:
        word = next(words)
        kinds.append(
            _Kind(
                word=word,
                suffix=f".{word[:3]}",
                limit=rng.randint(16, 4096),
                text_field=rng.choice(_TEXT_FIELDS),
                int_field=rng.choice(_INT_FIELDS),
                sep=rng.choice(":|;="),
            )
        )
        lines = _module_lines(domain, kinds, families, grouped)
        last = kinds[-1]
        # the target: a line of the last method that names the last kind (only the context can tell it)
        method_start = max(i for i, line in enumerate(lines) if line.startswith("    def "))
        candidates = [
            i
            for i in range(method_start + 1, len(lines))
            if last.word in lines[i].lower()
        ]
        line = rng.choice(candidates)
        context = "\n".join(lines[:line]) + "\n"
        if len(context) >= 0.8 * target or len(kinds) >= 200:
            break
    return Sample(
        id="",
        instruction="Please complete the code given below.",
        context=context,
        question="Next line of code:\n",
        answers=[lines[line].strip()],
        meta={"module": f"{domain}_store.py", "line": line + 1, "kind": last.word},
    )


# --- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineSubset:
    """One generated subset: the LongBench subset it imitates, its metric and its generator."""

    name: str
    imitates: str
    metric: str
    what: str
    make: Callable[[random.Random, int, Slot], Sample]
    source: str = "pydoc_data"  #: a key of :data:`SOURCES`
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


#: where a subset's text comes from -> how data_source describes it ({py}: the Python version)
SOURCES = {
    "pydoc_data": "Python {py}'s pydoc_data language-reference topics",
    "invented_projects": (
        "invented software-project profiles (made-up names, people, places and sponsors) with remarks quoted "
        "from Python {py}'s pydoc_data topics"
    ),
    "invented_code": "generated Python modules whose record kinds and identifiers are invented words",
}


OFFLINE_SUBSETS: dict[str, OfflineSubset] = {
    s.name: s
    for s in (
        OfflineSubset(
            "qasper_like",
            "qasper",
            "qa_f1",
            "single-document QA (fill the gap)",
            _qasper_like,
            max_new_tokens=128,
        ),
        OfflineSubset(
            "hotpotqa_like",
            "hotpotqa",
            "qa_f1",
            "multi-document QA (an attribute of one invented project among many)",
            _hotpotqa_like,
            source="invented_projects",
            version=2,
        ),
        OfflineSubset(
            "triviaqa_like",
            "triviaqa",
            "qa_f1",
            "few-shot QA (fill the gap)",
            _triviaqa_like,
            first_line_only=True,
        ),
        OfflineSubset(
            "trec_like",
            "trec",
            "classification",
            "few-shot classification (chapter)",
            _trec_like,
            first_line_only=True,
            max_new_tokens=64,
            version=2,
        ),
        OfflineSubset(
            "passage_retrieval_en_like",
            "passage_retrieval_en",
            "retrieval",
            "synthetic retrieval (which paragraph)",
            _passage_retrieval_like,
        ),
        OfflineSubset(
            "passage_count_like",
            "passage_count",
            "count",
            "synthetic counting (unique paragraphs)",
            _passage_count_like,
        ),
        OfflineSubset(
            "lcc_like",
            "lcc",
            "code_sim",
            "code completion (next line naming an invented identifier)",
            _lcc_like,
            source="invented_code",
            max_new_tokens=64,
            version=2,
        ),
    )
}


def data_source(subset: str, seed: int, context_tokens: int) -> str:
    """The exact description of the generated data, for results records."""
    spec = OFFLINE_SUBSETS[subset]
    origin = SOURCES[spec.source].format(py=PY)
    design = "" if spec.version == 1 else f", design v{spec.version}"
    return (
        f"offline LongBench-shaped set '{subset}' imitating LongBench '{spec.imitates}', generated from "
        f"{origin} ({GENERATOR}{design}, seed {seed}, ~{context_tokens} tokens per context)"
    )


def generate(subset: str, n: int, seed: int = 0, context_tokens: int = 1500) -> list[Sample]:
    """``n`` samples of ``subset``; deterministic and prefix-stable in ``(subset, seed, context_tokens)``."""
    spec = OFFLINE_SUBSETS[subset]
    target = context_tokens * CHARS_PER_TOKEN
    key = spec.stream_key(seed, context_tokens)
    out = []
    for i in range(n):
        slot = Slot(key, i)
        for attempt in range(100):
            rng = random.Random(f"{key}:{i}:{attempt}")
            try:
                sample = spec.make(rng, target, slot)
                break
            except _Retry:
                continue
        else:  # pragma: no cover - would mean the source text changed beyond recognition
            raise RuntimeError(f"could not generate an answerable {subset} sample #{i} (seed {seed})")
        sample.id = spec.sample_id(seed, i)
        sample.meta.update(
            subset=subset, imitates=spec.imitates, generator=GENERATOR, design=spec.version, python=PY
        )
        out.append(sample)
    return out
