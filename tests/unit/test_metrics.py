"""Metrics on hand-computed cases, and the fidelity helpers."""

from __future__ import annotations

import math

import pytest
import torch

from lukv_bench.errors import UserError
from lukv_bench.runtime import fidelity
from lukv_bench.sample import Sample
from lukv_bench.tasks import metrics


def sample(*answers: str, all_classes: list[str] | None = None) -> Sample:
    return Sample(id="s", context="", question="", answers=list(answers), all_classes=all_classes)


def test_normalize_answer_is_squad_style():
    assert metrics.normalize_answer("The  Cat, sat on a MAT!") == "cat sat on mat"
    assert metrics.normalize_answer("An apple-pie") == "applepie"  # punctuation removed, not split


def test_substring_and_exact():
    assert metrics.score("substring", "I think it is Paris, France.", sample("paris")) == 1.0
    assert metrics.score("substring", "London", sample("Paris", "London")) == 1.0  # any answer counts
    assert metrics.score("substring", "Par is", sample("Paris")) == 0.0
    assert metrics.score("exact", "The Paris.", sample("paris")) == 1.0
    assert metrics.score("exact", "Paris, France", sample("paris")) == 0.0


def test_qa_f1_hand_computed():
    # prediction tokens [cat, sat, on, mat], gold [cat, on, mat]: P = 3/4, R = 1, F1 = 6/7
    assert metrics.qa_f1_score("the cat sat on the mat", "A cat on a mat") == pytest.approx(6 / 7)
    assert metrics.qa_f1_score("dog", "cat") == 0.0
    # repeated tokens count with multiplicity: pred [a1, a1, b], gold [a1, b]: P = 2/3, R = 1
    assert metrics.qa_f1_score("x x y", "x y") == pytest.approx(0.8)
    assert metrics.score("qa_f1", "cat", sample("dog", "the cat")) == 1.0  # max over answers


def test_rouge_l_hand_computed():
    # the rouge package (as LongBench): case kept, unique words. Prediction words {the cat sat on mat}
    # (5), gold {The cat is on the mat} (6); LCS of the word lists: cat on the mat (4 unique):
    # P = 4/5, R = 4/6, F = 2PR/(P+R) = 8/11
    assert metrics.rouge_l_score("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(8 / 11)
    # P = 2/2, R = 2/4 -> F = 2/3
    assert metrics.rouge_l_score("a d", "a b c d") == pytest.approx(2 / 3)
    assert metrics.rouge_l_score("", "a b") == 0.0


def test_classification_as_longbench():
    classes = ["number", "phone number", "city"]
    # "number" is inside the gold "phone number": it does not count against it
    assert metrics.score("classification", "phone number", sample("phone number", all_classes=classes)) == 1.0
    assert metrics.score("classification", "city or phone number", sample("phone number", all_classes=classes)) == 0.5
    assert metrics.score("classification", "city", sample("phone number", all_classes=classes)) == 0.0
    # gold "number": "phone number" also mentions it, and is not a substring of the gold -> 1/2
    assert metrics.score("classification", "phone number", sample("number", all_classes=classes)) == 0.5
    with pytest.raises(UserError, match="all_classes"):
        metrics.score("classification", "city", sample("city"))


def test_retrieval_and_count():
    assert metrics.score("retrieval", "Paragraph 3", sample("Paragraph 3")) == 1.0
    assert metrics.score("retrieval", "Paragraph 3 or Paragraph 5", sample("Paragraph 3")) == 0.5
    assert metrics.score("retrieval", "Paragraph 13", sample("Paragraph 3")) == 0.0
    assert metrics.score("retrieval", "no idea", sample("Paragraph 3")) == 0.0
    assert metrics.score("count", "There are 4 unique paragraphs.", sample("4")) == 1.0
    assert metrics.score("count", "4 or 14", sample("4")) == 0.5
    assert metrics.score("count", "four", sample("4")) == 0.0


def test_code_sim_uses_first_code_line():
    pred = "```python\n    x = foo(1)\n    return x\n```"
    assert metrics.score("code_sim", pred, sample("x = foo(1)")) == 1.0
    # fuzz.ratio("abcd", "abce") = round(100 * 2 * 3 / 8) = 75
    assert metrics.code_sim_score("abcd  # comment-free", "abce") < 1.0
    assert metrics.code_sim_score("# note\nabcd", "abce") == pytest.approx(0.75)
    assert metrics.code_sim_score("", "abce") == 0.0


def test_unknown_metric_lists_known_ones():
    with pytest.raises(UserError) as info:
        metrics.score("bleu", "x", sample("x"))
    for name in ("substring", "exact", "qa_f1", "rouge_l", "classification", "retrieval", "count", "code_sim"):
        assert name in str(info.value)


def test_scores_stay_in_unit_interval():
    s = sample("Paragraph 2", all_classes=["Paragraph 2"])
    for name in metrics.known_metrics():
        if name in ("count", "retrieval_zh"):  # retrieval_zh needs a "段落k" gold answer
            continue
        value = metrics.score(name, "Paragraph 2 and some more words", s)
        assert 0.0 <= value <= 1.0


def test_kl_divergence_hand_computed():
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    test = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    kl = fidelity.kl_divergence(ref, test)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl.shape == (2,) and kl.dtype == torch.float32
    assert kl[0].item() == pytest.approx(expected, rel=1e-5)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-6)
    # logits need not be normalised; bf16 inputs are upcast; -inf in the reference is fine
    assert fidelity.kl_divergence(ref + 3.0, ref).abs().max().item() < 1e-6
    assert fidelity.kl_divergence(ref.bfloat16(), test.bfloat16()).dtype == torch.float32
    masked = torch.tensor([[0.0, -float("inf")]])
    assert fidelity.kl_divergence(masked, torch.tensor([[0.0, 0.0]])).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        fidelity.kl_divergence(ref, test[:1])


def test_greedy_agreement():
    ref = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    test = torch.tensor([[0.0, 3.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    assert fidelity.greedy_agreement(ref, test) == pytest.approx(2 / 3)
    assert fidelity.greedy_agreement(ref, ref) == 1.0
