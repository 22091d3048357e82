"""An offline, LongBench-shaped data set generated from real text that ships with Python.

Sources (nothing is downloaded):

* ``pydoc_data.topics.topics`` — the Python Language Reference / library topics used by ``help()``
  (a dict ``topic -> text``; deduplicated by text, e.g. "else" and "if" share one text);
* the standard library's own ``.py`` files (for code completion).

Every subset imitates one LongBench subset (same task shape, prompt style and metric) and every
question is answerable from its context, which the generator checks while building it:

========================== ==================== ============== ============================================
subset                     imitates (LongBench) metric         what it asks
========================== ==================== ============== ============================================
qasper_like                qasper (1-doc QA)    qa_f1          a word removed from a sentence of the document
hotpotqa_like              hotpotqa (multi-doc) qa_f1          which passage defines grammar symbol X (title)
triviaqa_like              triviaqa (few-shot)  qa_f1          few-shot fill-the-gap questions on passages
trec_like                  trec (few-shot cls.) classification which reference chapter a snippet comes from
passage_retrieval_en_like  passage_retrieval_en retrieval      which numbered paragraph a sentence is from
passage_count_like         passage_count        count          how many unique paragraphs (with duplicates)
lcc_like                   lcc (code)           code_sim       next line of a standard-library function
========================== ==================== ============== ============================================

Generation is deterministic for a given Python version, seed and target length, and prefix-stable:
sample ``i`` depends only on ``(subset, seed, context_tokens, i)``. Context lengths are approximate
(``4`` characters per token).
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lukv_bench.tasks.base import Sample

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

#: standard-library files used for code completion (paths relative to the stdlib folder)
CODE_FILES = (
    "argparse.py",
    "ast.py",
    "calendar.py",
    "configparser.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "fractions.py",
    "ftplib.py",
    "gettext.py",
    "glob.py",
    "heapq.py",
    "imaplib.py",
    "inspect.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "mailbox.py",
    "netrc.py",
    "optparse.py",
    "pprint.py",
    "shlex.py",
    "shutil.py",
    "smtplib.py",
    "statistics.py",
    "string.py",
    "tarfile.py",
    "tempfile.py",
    "textwrap.py",
    "tokenize.py",
    "traceback.py",
    "uuid.py",
    "wave.py",
    "zipapp.py",
)

_STOP = frozenset(
    """about above after again against because before being below between both could does doing during
    each every from further have having here itself just more most must other ought same should some
    such than that their theirs them then there these they this those through under until very what
    when where which while whom with would your yours also only into onto used uses using since""".split()
)
_UNDERLINE = re.compile(r"^[*=\-~^+#]{3,}$")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")
_WORD = re.compile(r"^[A-Za-z]{5,}$")
_PRODUCTION = re.compile(r"^\s+([A-Za-z_]\w*)\s+::=", re.MULTILINE)


# --- source text ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """One deduplicated pydoc topic."""

    key: str
    title: str
    body: str  #: text after the title and its underline

    @property
    def blocks(self) -> list[str]:
        """Blank-line separated blocks of the body (paragraphs, code, grammar, headings)."""
        return [b for b in re.split(r"\n\s*\n", self.body) if b.strip()]


@functools.lru_cache(maxsize=1)
def topics() -> tuple[Topic, ...]:
    """All pydoc topics, sorted by key, one per distinct text."""
    from pydoc_data.topics import topics as raw

    seen: set[str] = set()
    out = []
    for key in sorted(raw):
        text = raw[key].strip("\n")
        if text in seen:
            continue
        seen.add(text)
        lines = text.split("\n")
        title = lines[0].strip()
        rest = lines[2:] if len(lines) > 1 and _UNDERLINE.match(lines[1].strip()) else lines[1:]
        out.append(Topic(key=key, title=title, body="\n".join(rest).strip("\n")))
    return tuple(out)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _is_prose(block: str) -> bool:
    lines = block.split("\n")
    if any(line[:1].isspace() for line in lines):  # code, grammar, tables, indented lists
        return False
    if any(_UNDERLINE.match(line.strip()) for line in lines):  # headings
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


def _excerpt(topic: Topic, budget: int, rng: random.Random, start: int | None = None) -> str:
    blocks = topic.blocks
    if start is None:
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


def _qasper_like(rng: random.Random, target: int) -> Sample:
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


def _hotpotqa_like(rng: random.Random, target: int) -> Sample:
    per_doc = max(500, target // 5)
    everything = list(topics())
    with_rules = [t for t in everything if _PRODUCTION.search(_excerpt(t, per_doc, rng, start=0))]
    main = rng.choice(with_rules)
    docs = [main]
    others = [t for t in everything if t is not main]
    rng.shuffle(others)
    size = len(_excerpt(main, per_doc, rng, start=0))
    for t in others:
        if size >= target:
            break
        docs.append(t)
        size += len(_excerpt(t, per_doc, rng, start=0)) + len(t.title) + 16
    rng.shuffle(docs)
    excerpts = [_excerpt(t, per_doc, rng, start=0) for t in docs]
    defined = [set(_PRODUCTION.findall(e)) for e in excerpts]
    k = docs.index(main)
    unique = sorted(s for s in defined[k] if sum(s in d for d in defined) == 1)
    if not unique:
        raise _Retry
    symbol = rng.choice(unique)
    context = "\n\n".join(
        f"Passage {i + 1}:\n{t.title}\n{e}" for i, (t, e) in enumerate(zip(docs, excerpts, strict=True))
    )
    return Sample(
        id="",
        instruction=(
            "Answer the question based on the given passages. Only give me the answer and do not output "
            "any other words.\n\nThe following are given passages."
        ),
        context=context,
        question=(
            "Answer the question based on the given passages. Only give me the answer and do not output "
            f'any other words.\n\nQuestion: Which passage defines the grammar symbol "{symbol}", that is, '
            f'contains the rule starting with "{symbol} ::="? Answer with the title of that passage.\n'
            "Answer:"
        ),
        answers=[main.title],
        meta={"topic": main.key, "symbol": symbol, "passage": k + 1},
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


def _trec_like(rng: random.Random, target: int) -> Sample:
    by_topic = _snippet_table()
    labelled = [t for t in topics() if t.key in by_topic]
    query_topic = rng.choice([t for t in labelled if len(by_topic[t.key]) >= 2])
    query, support = rng.sample(by_topic[query_topic.key], 2)
    examples = [(support, CHAPTERS[query_topic.key])]
    size = len(support) + 40
    pool = [(s, CHAPTERS[k]) for k, ss in by_topic.items() for s in ss if s not in (query, support)]
    rng.shuffle(pool)
    for s, label in pool:
        if size >= target:
            break
        examples.append((s, label))
        size += len(s) + 30
    rng.shuffle(examples)
    context = "\n\n".join(f"Snippet: {s}\nChapter: {label}" for s, label in examples)
    return Sample(
        id="",
        instruction=(
            "Please determine which chapter of the Python documentation the snippet below comes from. "
            "Here are some examples of snippets with their chapters."
        ),
        context=context,
        question=f"Snippet: {query}\nChapter:",
        answers=[CHAPTERS[query_topic.key]],
        all_classes=sorted(set(CHAPTERS.values())),
        meta={"topic": query_topic.key, "support": support},
    )


def _triviaqa_like(rng: random.Random, target: int) -> Sample:
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


def _passage_retrieval_like(rng: random.Random, target: int) -> Sample:
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


def _passage_count_like(rng: random.Random, target: int) -> Sample:
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


def stdlib_file(rel: str) -> Path:
    """Absolute path of a standard-library source file."""
    return Path(sysconfig.get_paths()["stdlib"]) / rel


@functools.cache
def _code_candidates(rel: str) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """Source lines of a stdlib file and (target line index, enclosing def line index) candidates."""
    path = stdlib_file(rel)
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return (), ()
    lines = source.split("\n")
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            body = body[1:]  # skip the docstring
        for stmt in body:
            if stmt.end_lineno != stmt.lineno or stmt.lineno == body[0].lineno:
                continue
            text = lines[stmt.lineno - 1].strip()
            if len(text) < 12 or any(c in text for c in ("#", "`", "//", '"""', "'''")):
                continue
            out.append((stmt.lineno - 1, node.lineno - 1 - len(node.decorator_list)))
    out.sort()
    return tuple(lines), tuple(out)


def _lcc_like(rng: random.Random, target: int) -> Sample:
    rel = rng.choice(CODE_FILES)
    lines, cached = _code_candidates(rel)
    candidates = list(cached)  # the cached list must stay in its sorted order
    rng.shuffle(candidates)
    for line, start_def in candidates:
        first, size = line, 0
        while first > 0 and size + len(lines[first - 1]) + 1 <= target:
            first -= 1
            size += len(lines[first]) + 1
        if first <= start_def and size >= target * 0.5:
            break
    else:
        raise _Retry
    context = "\n".join(lines[first:line]) + "\n"
    return Sample(
        id="",
        instruction="Please complete the code given below.",
        context=context,
        question="Next line of code:\n",
        answers=[lines[line].strip()],
        meta={"file": f"Lib/{rel}", "line": line + 1, "first_line": first + 1},
    )


# --- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineSubset:
    """One generated subset: the LongBench subset it imitates, its metric and its generator."""

    name: str
    imitates: str
    metric: str
    what: str
    make: Callable[[random.Random, int], Sample]
    source: str = "pydoc_data"  #: "pydoc_data" or "stdlib"
    first_line_only: bool = False  #: score only the first line of the prediction (as LongBench does)
    max_new_tokens: int = 32  #: LongBench's generation length for the imitated subset


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
            "multi-document QA (which passage defines X)",
            _hotpotqa_like,
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
            "code completion (next line)",
            _lcc_like,
            source="stdlib",
            max_new_tokens=64,
        ),
    )
}


def data_source(subset: str, seed: int, context_tokens: int) -> str:
    """The exact description of the generated data, for results records."""
    spec = OFFLINE_SUBSETS[subset]
    origin = (
        f"Python {PY}'s pydoc_data language-reference topics"
        if spec.source == "pydoc_data"
        else f"Python {PY}'s standard-library sources"
    )
    return (
        f"offline LongBench-shaped set '{subset}' imitating LongBench '{spec.imitates}', generated from "
        f"{origin} ({GENERATOR}, seed {seed}, ~{context_tokens} tokens per context)"
    )


def generate(subset: str, n: int, seed: int = 0, context_tokens: int = 1500) -> list[Sample]:
    """``n`` samples of ``subset``; deterministic and prefix-stable in ``(subset, seed, context_tokens)``."""
    spec = OFFLINE_SUBSETS[subset]
    target = context_tokens * CHARS_PER_TOKEN
    out = []
    for i in range(n):
        for attempt in range(100):
            rng = random.Random(f"{GENERATOR}:{subset}:{seed}:{context_tokens}:{i}:{attempt}")
            try:
                sample = spec.make(rng, target)
                break
            except _Retry:
                continue
        else:  # pragma: no cover - would mean the source text changed beyond recognition
            raise RuntimeError(f"could not generate an answerable {subset} sample #{i} (seed {seed})")
        sample.id = f"{subset}-{seed}-{i}"
        sample.meta.update(subset=subset, imitates=spec.imitates, generator=GENERATOR, python=PY)
        out.append(sample)
    return out
