"""The offline task families answer only from their context: no answer leaks into the question, no
label dominates, and generated code cannot be completed from memory of the standard library."""

from __future__ import annotations

import functools
import re
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from lukv_bench.data import longbench as gen
from lukv_bench.tasks import metrics
from lukv_bench.tasks.longbench import LongBenchTask

TOKENS = 700
MANY = 200


@functools.cache
def _samples(subset: str, n: int, seed: int = 3) -> tuple:
    return tuple(gen.generate(subset, n, seed=seed, context_tokens=TOKENS))


def _task(subset: str) -> LongBenchTask:
    return LongBenchTask("lb", subset, source="offline", seed=3, context_tokens=TOKENS)


# --- hotpotqa_like -----------------------------------------------------------------------------------


def test_hotpotqa_like_echoing_the_question_scores_zero():
    """A predictor that repeats the question (the leak of the old design) must learn nothing."""
    task = _task("hotpotqa_like")
    samples = _samples("hotpotqa_like", MANY)
    echo = [task.score(s.question, s) for s in samples]
    gold = [task.score(s.answers[0], s) for s in samples]
    assert sum(echo) / len(echo) < 0.01
    assert sum(gold) / len(gold) == pytest.approx(1.0)


def test_hotpotqa_like_answer_is_a_span_of_exactly_one_passage():
    for s in _samples("hotpotqa_like", 40):
        passages = re.split(r"(?:^|\n\n)Passage \d+:\n", s.context)[1:]
        assert len(passages) == s.meta["n_passages"] >= 2
        holding = [i + 1 for i, p in enumerate(passages) if s.answers[0] in p]
        assert holding == [s.meta["passage"]]
        assert passages[s.meta["passage"] - 1].startswith(s.meta["project"] + "\n")
        assert s.meta["project"] in s.question
        # no word of the answer appears in the question (after the metric's normalisation)
        answer_words = set(metrics.normalize_answer(s.answers[0]).split())
        assert not answer_words & set(metrics.normalize_answer(s.question).split())
        assert len(answer_words) >= 2  # multi-token spans


def test_hotpotqa_like_asks_every_attribute_equally_often():
    counts = Counter(s.meta["attribute"] for s in _samples("hotpotqa_like", MANY))
    assert len(counts) == 4 and max(counts.values()) - min(counts.values()) <= 1


# --- trec_like ---------------------------------------------------------------------------------------


def test_trec_like_labels_are_balanced():
    samples = _samples("trec_like", MANY)
    classes = samples[0].all_classes
    counts = Counter(s.answers[0] for s in samples)
    assert set(counts) == set(classes)
    assert max(counts.values()) / len(samples) <= 1 / len(classes) + 0.01


def test_trec_like_context_examples_do_not_favour_a_label():
    for s in _samples("trec_like", 20):
        labels = Counter(re.findall(r"^Chapter: (.*)$", s.context, re.M))
        assert set(labels) == set(s.all_classes)
        # the chapters take turns; the support example of the answer's topic adds at most one
        assert max(labels.values()) - min(labels.values()) <= 2


def test_trec_like_balance_does_not_depend_on_retries_or_seed():
    for seed in (0, 1):
        samples = gen.generate("trec_like", 14, seed=seed, context_tokens=TOKENS)
        counts = Counter(s.answers[0] for s in samples)
        assert sorted(counts.values()) == [2] * 7


# --- lcc_like ----------------------------------------------------------------------------------------


@functools.cache
def _stdlib_source() -> str:
    """Every .py file of the standard library (not site-packages), concatenated."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue
        try:
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return "\n".join(parts)


def _distinctive(sample) -> list[str]:
    """Identifiers of the target line derived from the sample's invented record kind."""
    kind = sample.meta["kind"]
    return [w for w in re.findall(r"[A-Za-z_]\w*", sample.answers[0]) if kind in w.lower()]


def test_lcc_like_target_names_identifiers_that_only_the_context_defines():
    samples = _samples("lcc_like", 30)
    stdlib = _stdlib_source()
    root = Path(sysconfig.get_paths()["stdlib"])
    for s in samples:
        names = _distinctive(s)
        assert names, s.answers[0]
        for name in names:
            assert name in s.context, name
            assert name not in stdlib, name
        module = s.meta["module"]
        assert not (root / module).exists()
        assert module.removesuffix(".py") not in stdlib


def test_lcc_like_context_is_real_python_and_the_target_continues_it():
    import ast

    for s in _samples("lcc_like", 30):
        lines = s.context.split("\n")
        assert len(lines) == s.meta["line"]  # the context ends just before the target line
        # the context up to the end of the previous method parses; adding the target keeps the module valid
        last_def = max(i for i, line in enumerate(lines) if line.startswith("    def "))
        ast.parse("\n".join(lines[:last_def]))
        assert s.answers[0] == s.answers[0].strip() and s.answers[0]


def test_redesigned_sets_are_deterministic_and_prefix_stable():
    for subset in ("hotpotqa_like", "trec_like", "lcc_like"):
        a = gen.generate(subset, 5, seed=4, context_tokens=TOKENS)
        assert gen.generate(subset, 5, seed=4, context_tokens=TOKENS) == a
        assert gen.generate(subset, 3, seed=4, context_tokens=TOKENS) == a[:3]
        assert gen.generate(subset, 5, seed=5, context_tokens=TOKENS) != a
        assert all(s.id.startswith(f"{subset}-v2-4-") for s in a)
        assert "design v2" in gen.data_source(subset, 4, TOKENS)


# --- generator versions ------------------------------------------------------------------------------


def test_every_generator_has_a_version_that_matches_its_design():
    import importlib

    versions = {name: gen.generator_version(name) for name in gen.OFFLINE_SUBSETS}
    assert len(set(versions.values())) == len(versions)
    for name, spec in gen.OFFLINE_SUBSETS.items():
        module = importlib.import_module(spec.make.__module__)
        assert module.SUBSET is spec
        assert module.VERSION == f"{name} v{spec.version}"
        assert versions[name] == f"{gen.GENERATOR}, {module.VERSION}"
        # the data source names the same design (v1 sets keep their original wording)
        assert ("design v" in gen.data_source(name, 0, TOKENS)) == (spec.version != 1)
    assert gen.generator_version("hotpotqa_like") == "lukv-bench generator v1, hotpotqa_like v2"
    with pytest.raises(KeyError, match="unknown offline subset"):
        gen.generator_version("qasper")
