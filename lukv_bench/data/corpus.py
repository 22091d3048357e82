"""The one text corpus of the offline data: Python's language reference as ``help()`` shows it.

``pydoc_data.topics`` ships with every CPython install, so every generated task (needles, the
LongBench-shaped sets, the study's families), the latency task, the benchmarks and the tests read
real English prose without any download. Three views of it: whole topics (:func:`topics`), cleaned
prose sentences (:func:`prose_sentences`, for haystacks) and token ids of the whole text
(:func:`reference_text_ids`, for prompts of an exact length).
"""

from __future__ import annotations

import functools
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4  #: length estimate when no tokenizer is given
#: what the corpus text depends on: ``pydoc_data`` changes with every Python release
CORPUS_VERSION = f"pydoc_data of Python {platform.python_version()}"
UNDERLINE = re.compile(r"^[*=\-~^+#]{3,}$")  #: a heading underline (===, ---, ***)

#: how records and reports name this text
SOURCE = "Python's language reference (pydoc_data.topics, ships with Python)"


def reference_text_ids(tokenizer, n_tokens: int) -> list[int]:
    """``n_tokens`` token ids of Python's language reference (repeated when the text is shorter)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < n_tokens:
        ids = ids + ids
    return list(ids[:n_tokens])


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
        rest = lines[2:] if len(lines) > 1 and UNDERLINE.match(lines[1].strip()) else lines[1:]
        out.append(Topic(key=key, title=title, body="\n".join(rest).strip("\n")))
    return tuple(out)


_HEADING_LINE = re.compile(r"^\s*[*=\-^~#]{3,}\s*$")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_FOOTNOTE = re.compile(r"\s*\[\d+\]")
_EMPHASIS = re.compile(r"\*([^*\s][^*]*)\*")


@dataclass(frozen=True)
class Sentence:
    """One prose sentence of the reference text; ``para_end`` marks the last sentence of a paragraph."""

    text: str
    para_end: bool


def _clean_paragraph(raw: str) -> str | None:
    """Return one prose paragraph as a single line, or None if it is code, grammar or a heading."""
    lines = raw.split("\n")
    if not raw.strip():
        return None
    for line in lines:
        if line[:1] in (" ", "\t") or _HEADING_LINE.match(line):
            return None  # indented code / grammar block, or a heading underline
    text = " ".join(line.strip() for line in lines)
    if "::=" in text or ">>>" in text or "`" in text:
        return None
    text = _FOOTNOTE.sub("", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) < 80 or not text[0].isalpha() or not text.endswith("."):
        return None
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters / len(text) < 0.85:
        return None
    return text


@functools.lru_cache(maxsize=1)
def prose_sentences() -> tuple[Sentence, ...]:
    """All cleaned prose sentences, in a fixed order (sorted topic names, document order)."""
    from pydoc_data.topics import topics

    units: list[Sentence] = []
    for name in sorted(topics):
        for raw in topics[name].split("\n\n"):
            para = _clean_paragraph(raw)
            if para is None:
                continue
            sentences = [s.strip() for s in _SENTENCE_SPLIT.split(para) if s.strip()]
            for i, sentence in enumerate(sentences):
                units.append(Sentence(sentence, para_end=i == len(sentences) - 1))
    if not units:  # pragma: no cover - would mean a broken Python install
        raise RuntimeError("pydoc_data.topics yielded no prose paragraphs for the haystacks")
    return tuple(units)


def join_sentences(units: list[Sentence]) -> str:
    """Join sentences with spaces, and paragraphs with blank lines."""
    parts: list[str] = []
    for i, unit in enumerate(units):
        parts.append(unit.text)
        if i < len(units) - 1:
            parts.append("\n\n" if unit.para_end else " ")
    return "".join(parts)


def token_counter(tokenizer: Any | None) -> Callable[[str], int]:
    """A function counting tokens with ``tokenizer`` (HF-style ``encode``), else ``len // 4``."""
    if tokenizer is None:
        return lambda text: -(-len(text) // CHARS_PER_TOKEN)

    def count(text: str) -> int:
        try:
            ids = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            ids = tokenizer.encode(text)
        ids = getattr(ids, "ids", ids)  # `tokenizers.Encoding`
        return len(ids)

    return count
