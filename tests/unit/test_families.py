"""Generated task families: seeded, answers only in the context, suite keys checked."""

from __future__ import annotations

import pytest

from lukv_bench.data.corpus import prose_sentences
from lukv_bench.data.families import FAMILIES, FamilyTask, recall
from lukv_bench.errors import UserError
from lukv_bench.tasks import build_task

LONGEST = max(len(u.text) for u in prose_sentences()) // 4 + 1


@pytest.mark.parametrize("family", FAMILIES)
def test_family_samples_hold_their_answers_only_in_the_context(family: str) -> None:
    task = FamilyTask(family, family, seed=3, context_tokens=400)
    samples = list(task.samples(6))
    assert len(samples) == 6 and len({s.id for s in samples}) == 6
    for s in samples:
        assert s.answers and all(a in s.context for a in s.answers)
        assert not any(a in s.question or a in s.instruction for a in s.answers)
        # about the target (4 characters a token); prose families may overshoot by their last sentence
        assert 250 <= s.meta["context_tokens_est"] <= 400 + LONGEST
        assert task.score(" ".join(s.answers), s) == 1.0 and task.score("nothing here", s) == 0.0
    again = FamilyTask(family, family, seed=3, context_tokens=400).make_sample(4)
    assert again == samples[4]
    assert FamilyTask(family, family, seed=4, context_tokens=400).make_sample(4).context != samples[4].context


def test_fewshot_labels_are_balanced() -> None:
    task = FamilyTask("f", "fewshot", context_tokens=500)
    labels = [s.question for s in task.samples(8)]
    assert len(labels) == 8
    counts = {}
    for s in task.samples(8):
        counts[s.meta["index"] % 4] = counts.get(s.meta["index"] % 4, 0) + 1
    assert set(counts.values()) == {2}


def test_recall_counts_each_answer() -> None:
    assert recall("codes 111 and 333", ["111", "222", "333"]) == pytest.approx(2 / 3)


def test_suite_entry_is_checked() -> None:
    task = build_task({"name": "mk", "type": "family", "family": "multikey", "samples": 5})
    assert task.limit == 5 and task.metric == "substring"
    with pytest.raises(UserError, match="family"):
        build_task({"name": "x", "type": "family", "family": "trivia"})
    with pytest.raises(UserError, match="metric"):
        build_task({"name": "x", "type": "family", "family": "config", "metric": "exact"})
