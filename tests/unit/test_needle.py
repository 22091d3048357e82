"""The offline needle-in-a-haystack task."""

from __future__ import annotations

import pytest

from lukv_bench.errors import UserError
from lukv_bench.sample import Sample
from lukv_bench.tasks.base import Task
from lukv_bench.tasks.needle import DATA_SOURCE, NeedleTask

CFG = {"name": "needle", "type": "needle", "lengths": [300, 800], "depths": [0.0, 0.1, 0.5, 0.9, 1.0]}


class WordTokenizer:
    """Stand-in for an HF tokenizer: one token per whitespace-separated word."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [0] * len(text.split())


def test_grid_size_ids_and_meta():
    task = NeedleTask.from_config({**CFG, "samples_per_cell": 2})
    assert isinstance(task, Task)
    samples = list(task.samples())
    assert len(samples) == len(task) == 2 * 5 * 2
    assert len({s.id for s in samples}) == len(samples)
    cells = {(s.meta["length"], s.meta["depth"]) for s in samples}
    assert cells == {(L, d) for L in CFG["lengths"] for d in CFG["depths"]}
    assert task.metric == "substring"
    assert task.data_source == DATA_SOURCE
    assert len(list(task.samples(limit=3))) == 3


def test_needle_in_context_at_depth_and_length():
    task = NeedleTask.from_config(CFG)
    for s in task.samples():
        assert isinstance(s, Sample)
        key = s.answers[0]
        assert key.isdigit() and len(key) == 5
        needle = f"The secret pass key is {key}."
        assert s.context.count(key) == 1 and needle in s.context
        pos = s.context.index(needle) / (len(s.context) - len(needle))
        assert abs(pos - s.meta["depth"]) < 0.2, (s.id, pos)
        # at a sentence boundary: preceded by the start or the end of a sentence
        before = s.context[: s.context.index(needle)]
        assert before == "" or before.rstrip()[-1] in ".!?\"'"
        approx_tokens = len(s.context) / 4
        assert 0.6 * s.meta["length"] <= approx_tokens <= 1.05 * s.meta["length"]
        assert "pass key" in s.question and "pass key" in s.instruction
        ctx_block, q_block = s.blocks()
        assert needle in ctx_block and q_block == s.question


def test_deterministic_with_seed():
    a = [(s.id, s.context, s.answers) for s in NeedleTask.from_config(CFG).samples()]
    b = [(s.id, s.context, s.answers) for s in NeedleTask.from_config(CFG).samples()]
    c = [(s.id, s.context, s.answers) for s in NeedleTask.from_config({**CFG, "seed": 1}).samples()]
    assert a == b
    assert a != c


def test_tokenizer_sets_length():
    task = NeedleTask.from_config({**CFG, "lengths": [400]}, tokenizer=WordTokenizer())
    for s in task.samples():
        words = len(s.context.split())
        assert 0.8 * 400 <= words <= 400


def test_score_substring():
    task = NeedleTask.from_config(CFG)
    s = next(task.samples())
    assert task.score(f"The pass key is {s.answers[0]}.", s) == 1.0
    assert task.score("I don't know", s) == 0.0


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"lengths": [0, 100]}, "lengths"),
        ({"lengths": [100.5]}, "lengths"),
        ({"lengths": []}, "lengths"),
        ({"lengths": "1000"}, "lengths"),
        ({"depths": [1.5]}, "depths"),
        ({"depths": [-0.1]}, "depths"),
        ({"depths": ["half"]}, "depths"),
        ({"samples_per_cell": 0}, "samples_per_cell"),
        ({"seed": "x"}, "seed"),
        ({"depth": [0.5]}, "depth"),
    ],
)
def test_config_validation(bad, key):
    with pytest.raises(UserError, match=f"`?'?{key}"):
        NeedleTask.from_config({**CFG, **bad})


def test_max_new_tokens_is_honoured():
    task = NeedleTask.from_config({**CFG, "max_new_tokens": 7})
    assert {s.max_new_tokens for s in task.samples()} == {7}
    assert {s.max_new_tokens for s in NeedleTask.from_config(CFG).samples(2)} == {None}  # the suite's
    with pytest.raises(UserError, match="max_new_tokens: must be >= 1, got 0"):
        NeedleTask.from_config({**CFG, "max_new_tokens": 0})


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("metric", "qa_f1", "scored by whether the pass key appears in the answer"),
        ("compress", "context", "suite-level setting"),
        ("chat_template", False, "suite-level setting"),
    ],
)
def test_settings_it_cannot_honour_are_refused(key, value, why):
    with pytest.raises(UserError, match=f"{key}: .*{why}"):
        NeedleTask.from_config({**CFG, key: value})


def test_limit_spreads_samples_over_the_grid() -> None:
    """A limited needle run covers the grid's depths and lengths, not only its first rows."""
    task = NeedleTask.from_config({"lengths": [100, 200], "depths": [0.1, 0.5, 0.9], "seed": 3})
    picked = [(s.meta["length"], s.meta["depth"]) for s in task.samples(3)]
    assert picked == [(100, 0.1), (100, 0.9), (200, 0.5)]
    assert {d for _, d in picked} == {0.1, 0.5, 0.9} and {n for n, _ in picked} == {100, 200}
    assert len(list(task.samples(None))) == len(list(task.samples(6))) == 6
