"""Where the question starts in a rendered lm-eval request: the split of the ``compress: context`` protocol.

Under ``compress: context`` (kvpress's leaderboard protocol, "query-agnostic") a policy chooses what
to keep before the model sees the question: the request is cut where the document's question starts;
everything before it (instructions, haystack, few-shot examples, the chat template's opening) is
prefilled and compressed, the question and what follows it (the chat template's closing, the answer
prefix) are fed after compression.

The question is found from the lm-eval document (:func:`question_of`):

- RULER's documents (``input``, ``gen_prefix``, ``max_length``): the last line of ``input``. Every
  RULER template ends with ``"\\n" + question`` after its haystack (``niah``: "What are all the special
  magic ...", ``vt``/``cwe``/``fwe``: "Question: ..."), the same place kvpress's RULER dataset splits at;
- other documents: their ``question`` or ``query`` field.

The question's text is then searched in the rendered request (its last occurrence: few-shot examples
come first). When the document has no question or its text is not in the request, the caller falls
back to a fixed number of tokens and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["QuestionSpan", "locate", "question_of", "token_cut", "without_context"]

#: the fields of a RULER document (lm-eval's ``tasks/ruler``) that identify one
RULER_FIELDS = frozenset({"input", "gen_prefix", "max_length"})
#: document fields that hold the question in other lm-eval tasks, in the order they are tried
QUESTION_FIELDS = ("question", "query")


@dataclass(frozen=True)
class QuestionSpan:
    """Where a document's question starts in its rendered request."""

    start: int  #: character offset of the question in the rendered request
    method: str  #: how the question was found (recorded in each record's meta)


def question_of(doc: Any) -> tuple[str, str] | None:
    """(question text, how it was found) of an lm-eval document, or None when it names no question."""
    if not isinstance(doc, dict):
        return None
    text = doc.get("input")
    if RULER_FIELDS <= doc.keys() and isinstance(text, str) and "\n" in text.strip():
        question = text.strip().rsplit("\n", 1)[1].strip()
        if question:
            return question, "ruler: the input's last line"
    for name in QUESTION_FIELDS:
        value = doc.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip(), f"doc field {name!r}"
    return None


def locate(context: str, doc: Any) -> QuestionSpan | None:
    """Where ``doc``'s question starts in ``context`` (its last occurrence), or None when not found."""
    found = question_of(doc)
    if found is None:
        return None
    text, method = found
    at = context.rfind(text)
    return QuestionSpan(at, method) if at >= 0 else None


def token_cut(tokenizer: Any, context: str, at: int, add_special_tokens: bool) -> int:
    """How many tokens of ``context``'s encoding come before character ``at``.

    Uses the fast tokenizer's offsets, so the tokens are those of the whole request (lm-eval's); a
    token that straddles ``at`` goes after the cut.
    """
    enc = tokenizer(context, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > at and end > start:  # special tokens have empty spans
            return i
    return len(enc["input_ids"])


def without_context(context: str, doc_text: str, span: QuestionSpan) -> str | None:
    """The request without the document's text before its question (the no-context control).

    What precedes the document's text (the chat template's opening, few-shot examples) and the
    question with everything after it stay. None when the document's text is not found in
    ``context`` around the question.
    """
    start = context.rfind(doc_text.strip(), 0, span.start + len(doc_text)) if doc_text.strip() else -1
    if start < 0 or start > span.start:
        return None
    return context[:start] + context[span.start:]
