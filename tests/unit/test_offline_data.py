"""The offline task families answer only from their context: no answer leaks into the question, no
label dominates, and generated code needs values that only the context defines."""

from __future__ import annotations

import functools
import re
from collections import Counter

import pytest

from lukv_bench.data import longbench as gen
from lukv_bench.data.longbench import hotpotqa_like, qasper_like
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


def test_hotpotqa_like_answer_is_in_exactly_one_passage_and_not_in_the_question():
    for s in _samples("hotpotqa_like", 40):
        passages = re.split(r"(?:^|\n\n)Passage \d+:\n", s.context)[1:]
        assert len(passages) == s.meta["n_passages"] >= 2
        holding = [i + 1 for i, p in enumerate(passages) if s.answers[0] in p]
        assert holding == [s.meta["passage"]]
        assert s.context.count(s.answers[0]) == 1
        assert passages[s.meta["passage"] - 1].startswith(s.meta["organisation"] + "\n")
        assert s.meta["organisation"] in s.question and s.answers[0] not in s.question
        # no word of the answer appears in the question (after the metric's normalisation)
        answer_words = set(metrics.normalize_answer(s.answers[0]).split())
        assert not answer_words & set(metrics.normalize_answer(s.question).split())
        assert len(answer_words) >= 2  # multi-token spans


def test_hotpotqa_like_passages_state_different_relations():
    """Each passage states one fact; while relations are left, no two passages share one."""
    facts = [f.split("{O}")[1] for f, _ in hotpotqa_like._FACTS.values()]
    for s in _samples("hotpotqa_like", 20):
        passages = re.split(r"(?:^|\n\n)Passage \d+:\n", s.context)[1:]
        used = [[f for f in facts if f.split("{X}")[0] in p] for p in passages]
        assert all(len(u) == 1 for u in used)
        if len(passages) <= len(facts):
            assert len({u[0] for u in used}) == len(passages)


def test_hotpotqa_like_asks_every_relation_equally_often():
    counts = Counter(s.meta["relation"] for s in _samples("hotpotqa_like", MANY))
    assert len(counts) == len(hotpotqa_like._FACTS) and max(counts.values()) - min(counts.values()) <= 1


# --- qasper_like --------------------------------------------------------------------------------------


def test_qasper_like_echo_scores_zero_and_the_wrong_person_nothing():
    """Repeating the question learns nothing, the gold name scores 1, and naming another person of the
    manual scores 0 (the four people share no first name, and surnames are distinct invented words)."""
    task = _task("qasper_like")
    samples = _samples("qasper_like", MANY)
    assert sum(task.score(s.question, s) for s in samples) / len(samples) < 0.01
    assert sum(task.score(s.answers[0], s) for s in samples) / len(samples) == pytest.approx(1.0)
    for s in samples[:40]:
        project = s.meta["project"]
        named = [m.group(1) for text, _ in qasper_like._FACTS.values()
                 if (m := re.search(re.escape(text.split("{X}")[0].format(P=project)) + r"(\w+ \w+)\.", s.context))]
        assert len(named) == s.meta["n_facts"] == 4 and s.answers[0] in named
        assert len({n.split()[0] for n in named}) == 4
        assert all(task.score(n, s) == 0.0 for n in named if n != s.answers[0])


def test_qasper_like_states_each_fact_once_as_its_own_block():
    for s in _samples("qasper_like", 40):
        answer, project, relation = s.answers[0], s.meta["project"], s.meta["relation"]
        fact = qasper_like._FACTS[relation][0].format(P=project, X=answer)
        assert s.context.count(answer) == 1 and f"\n\n{fact}" in s.context
        assert answer not in s.question and qasper_like._FACTS[relation][1].format(P=project) in s.question
        assert "+---" not in s.context and "+===" not in s.context  # drawn tables are left out


def test_qasper_like_asks_every_relation_equally_often():
    counts = Counter(s.meta["relation"] for s in _samples("qasper_like", MANY))
    assert len(counts) == len(qasper_like._FACTS) and max(counts.values()) - min(counts.values()) <= 1


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


def test_lcc_like_answer_is_in_the_context_and_not_in_the_question():
    """The target line rebuilds one service's client: only the context holds its host, port and owner."""
    for s in _samples("lcc_like", 30):
        answer = s.answers[0]
        assert s.context.count(f"    {answer}\n") + s.context.endswith(f"    {answer}") == 1
        assert answer not in s.question
        host, port, owner = re.fullmatch(r'return Client\("([^"]+)", (\d+), "([^"]+)", retries\)', answer).groups()
        assert host not in s.question and port not in s.question
        # the function of the asked service holds the answer, and the question reopens that service
        assert f"def open_{s.meta['service']}(retries: int = 3) -> Client:" in s.context
        assert f"def reopen_{s.meta['service']}(" in s.question


def test_lcc_like_is_plain_python_completed_by_the_answer():
    import ast

    for s in _samples("lcc_like", 30):
        assert not s.chat and s.verbatim  # LongBench's lcc: a plain completion, no chat template
        assert not s.question.endswith("\n")  # the model starts the line with its own newline-and-indent
        ast.parse(s.context)
        ast.parse(s.context + s.question + "\n    " + s.answers[0] + "\n")
        assert s.answers[0] == s.answers[0].strip() and s.answers[0]


def test_lcc_like_no_context_prompt_has_no_value_of_the_answer():
    task = _task("lcc_like")
    for s in _samples("lcc_like", 10):
        assert task.score(s.answers[0], s) == pytest.approx(1.0)
        assert task.score(s.question, s) < 0.5  # echoing the question is far from the line


def test_redesigned_sets_are_deterministic_and_prefix_stable():
    for subset, version in (("hotpotqa_like", 3), ("trec_like", 2), ("lcc_like", 3), ("qasper_like", 2)):
        a = gen.generate(subset, 5, seed=4, context_tokens=TOKENS)
        assert gen.generate(subset, 5, seed=4, context_tokens=TOKENS) == a
        assert gen.generate(subset, 3, seed=4, context_tokens=TOKENS) == a[:3]
        assert gen.generate(subset, 5, seed=5, context_tokens=TOKENS) != a
        assert all(s.id.startswith(f"{subset}-v{version}-4-") for s in a)
        assert f"design v{version}" in gen.data_source(subset, 4, TOKENS)


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
    assert gen.generator_version("hotpotqa_like") == "lukv-bench generator v1, hotpotqa_like v3"
    with pytest.raises(KeyError, match="unknown offline subset"):
        gen.generator_version("qasper")
