"""``trec_like``: few-shot classification imitating LongBench's trec — which chapter of the Python
documentation a snippet comes from (metric ``classification``, first line of the prediction).

Every chapter is the answer equally often over a set, and the context's examples take the chapters in
turn, so neither favours a label.
"""

from __future__ import annotations

import functools
import random

from lukv_bench.data.corpus import topics
from lukv_bench.data.longbench.common import OfflineSubset, Slot, prose_paragraphs, split_sentences
from lukv_bench.sample import Sample

DESIGN = 2  #: design revision: part of the set's random streams, sample ids and data source ("design v2")
VERSION = f"trec_like v{DESIGN}"  #: this generator's version; :func:`generator_version` reports it

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


@functools.lru_cache(maxsize=1)
def _snippet_table() -> dict[str, list[str]]:
    """Labelled topic key -> its prose sentences (trec_like snippets)."""
    table = {}
    for t in topics():
        if t.key in CHAPTERS:
            snippets = [s for p in prose_paragraphs(t) for s in split_sentences(p, 8, 60) if s[:1].isupper()]
            if snippets:
                table[t.key] = snippets
    return table


def make_sample(rng: random.Random, target: int, slot: Slot) -> Sample:
    """One sample: labelled snippets filling about ``target`` characters, and a snippet of the chapter
    ``slot`` picks (so every chapter is the answer equally often), with one support example of its topic."""
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


SUBSET = OfflineSubset(
    "trec_like",
    "trec",
    "classification",
    "few-shot classification (chapter)",
    make_sample,
    first_line_only=True,
    max_new_tokens=64,
    version=DESIGN,
)
