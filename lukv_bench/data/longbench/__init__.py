"""An offline, LongBench-shaped data set generated from text that ships with Python, or invented.

Sources (nothing is downloaded):

* ``pydoc_data.topics.topics`` — the Python Language Reference / library topics used by ``help()``
  (read by :func:`lukv_bench.data.corpus.topics`, deduplicated by text: "else" and "if" share one text);
* invented words (pronounceable, made up per sample) for the organisations and people of
  ``hotpotqa_like``, the project and people of ``qasper_like`` and the services, hosts and ports of
  ``lcc_like``, so their answers cannot come from a model's memory: only from the context.

Every subset imitates one LongBench subset (same task shape, prompt style and metric) and every
question is answerable from its context, which the generator checks while building it. One module
of this package per generator; :mod:`.common` holds what they share.

========================== ==================== ============== ============================================
subset (module)            imitates (LongBench) metric         what it asks
========================== ==================== ============== ============================================
qasper_like                qasper (1-doc QA)    qa_f1          who did something (a two-word name) for an
                                                               invented project, asked of its manual
hotpotqa_like              hotpotqa (multi-doc) qa_f1          who did something (a two-word name) for one
                                                               of several invented organisations (one
                                                               passage each)
triviaqa_like              triviaqa (few-shot)  qa_f1          few-shot fill-the-gap questions on passages
trec_like                  trec (few-shot cls.) classification which reference chapter a snippet comes from
                                                               (every chapter equally often)
passage_retrieval_en_like  passage_retrieval_en retrieval      which numbered paragraph a sentence is from
(passage_retrieval_like)
passage_count_like         passage_count        count          how many unique paragraphs (with duplicates)
lcc_like                   lcc (code)           code_sim       next line of a generated module: a client
                                                               built from the host, port and owner that one
                                                               earlier function of the module defines
========================== ==================== ============== ============================================

Generation is deterministic for a given Python version, seed and target length, and prefix-stable:
sample ``i`` depends only on ``(subset, seed, context_tokens, i)``. Context lengths are approximate
(``4`` characters per token). Subsets redesigned after their first release carry a design version
(``OfflineSubset.version``) in their random streams, sample ids and data source, so their samples are
never mistaken for the earlier design's. Each generator module names its design in ``VERSION``
(``"hotpotqa_like v3"``); :func:`generator_version` reports it with the generator's own revision.
"""

from __future__ import annotations

import random
from types import ModuleType

from lukv_bench.data.longbench import (
    hotpotqa_like,
    lcc_like,
    passage_count_like,
    passage_retrieval_like,
    qasper_like,
    trec_like,
    triviaqa_like,
)
from lukv_bench.data.longbench.common import (
    CHARS_PER_TOKEN,
    GENERATOR,
    PY,
    OfflineSubset,
    Retry,
    Slot,
    distinct_words,
    invented_word,
    prose_paragraphs,
)
from lukv_bench.data.longbench.trec_like import CHAPTERS
from lukv_bench.sample import Sample

__all__ = [
    "CHAPTERS",
    "CHARS_PER_TOKEN",
    "GENERATOR",
    "OFFLINE_SUBSETS",
    "PY",
    "SOURCES",
    "OfflineSubset",
    "Slot",
    "data_source",
    "distinct_words",
    "generate",
    "generator_version",
    "invented_word",
    "prose_paragraphs",
]

#: one module per generator, in the order the subsets are listed
_MODULES: tuple[ModuleType, ...] = (
    qasper_like,
    hotpotqa_like,
    triviaqa_like,
    trec_like,
    passage_retrieval_like,
    passage_count_like,
    lcc_like,
)

#: subset name -> its description and generator (``OFFLINE_SUBSETS[name].make``)
OFFLINE_SUBSETS: dict[str, OfflineSubset] = {m.SUBSET.name: m.SUBSET for m in _MODULES}
_VERSIONS: dict[str, str] = {m.SUBSET.name: m.VERSION for m in _MODULES}

#: where a subset's text comes from -> how data_source describes it ({py}: the Python version)
SOURCES = {
    "pydoc_data": "Python {py}'s pydoc_data language-reference topics",
    "invented_organisations": (
        "passages of Python {py}'s pydoc_data prose, each about one invented organisation (made-up names and "
        "people) and stating one fact about it"
    ),
    "invented_project": (
        "an excerpt of one of Python {py}'s pydoc_data topics, presented as the manual of an invented project, "
        "with sentences naming the project's invented people"
    ),
    "invented_clients": (
        "generated Python modules of service clients whose names, hosts, ports and owners are invented"
    ),
}


def generator_version(subset: str) -> str:
    """The version of ``subset``'s generator: this generator's revision and the subset module's ``VERSION``,
    e.g. ``"lukv-bench generator v1, hotpotqa_like v3"``. It changes whenever the design of the subset's
    samples changes (the samples also depend on the Python version, which :func:`data_source` names).

    Raises KeyError for an unknown subset.
    """
    if subset not in _VERSIONS:
        raise KeyError(f"unknown offline subset {subset!r}; known: {', '.join(OFFLINE_SUBSETS)}")
    return f"{GENERATOR}, {_VERSIONS[subset]}"


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
            except Retry:
                continue
        else:  # pragma: no cover - would mean the source text changed beyond recognition
            raise RuntimeError(f"could not generate an answerable {subset} sample #{i} (seed {seed})")
        sample.id = spec.sample_id(seed, i)
        sample.meta.update(
            subset=subset, imitates=spec.imitates, generator=GENERATOR, design=spec.version, python=PY
        )
        out.append(sample)
    return out
