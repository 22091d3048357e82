"""Task metrics, by name: a prediction against a sample's gold answers.

Task metrics score one prediction against a :class:`~lukv_bench.sample.Sample` and return a
float in [0, 1]; with several gold answers the best one counts. The LongBench metrics follow the
definitions of LongBench's evaluation script (Bai et al., 2023), re-implemented here:

* ``qa_f1`` — token-level F1 after SQuAD normalisation (lower case, no punctuation, no articles
  "a/an/the", single spaces).
* ``rouge_l`` — ROUGE-L F1 from the longest common subsequence of lower-cased word tokens.
* ``classification`` — the classes of ``sample.all_classes`` named in the prediction; classes that
  are strict substrings of the gold class are ignored; score ``1/len(matches)`` if the gold class is
  among them.
* ``retrieval`` — the gold answer is "Paragraph k"; the score is the fraction of the numbers in the
  prediction that equal k.
* ``count`` — the fraction of the numbers in the prediction that equal the gold count.
* ``code_sim`` — fuzzywuzzy ``ratio`` between the gold line and the first prediction line that is not
  empty and has no "`", "#" or "//" (a code-looking line), both stripped of surrounding whitespace.

Plus ``substring`` (normalised gold answer contained in the normalised prediction) and ``exact``
(normalised equality).

This module is also the ``builtin-metrics`` plugin: the metrics are registered through the
``register_metrics`` hook, as a plugin's own metric would be, and looked up by name in the registry.
"""

from __future__ import annotations

import functools
import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from lukv_bench.errors import UserError
from lukv_bench.registry.catalog import catalog
from lukv_bench.registry.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from lukv_bench.sample import Sample

__all__ = [
    "Metric",
    "classification_score",
    "code_sim_score",
    "count_score",
    "exact_score",
    "known_metrics",
    "normalize_answer",
    "qa_f1_score",
    "register_metrics",
    "retrieval_score",
    "rouge_l_score",
    "score",
    "substring_score",
]

@runtime_checkable
class Metric(Protocol):
    """A task metric: registered with ``register(fn, name=...)`` in a plugin's ``register_metrics`` hook."""

    def __call__(self, prediction: str, answer: str, sample: Sample) -> float:
        """Score ``prediction`` against one gold ``answer`` of ``sample`` (usually in [0, 1])."""
        ...


_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"\d+")


def normalize_answer(text: str) -> str:
    """SQuAD/LongBench normalisation: lower case, drop punctuation and articles, collapse spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _norm_or_plain(text: str) -> str:
    """Normalised text, or the lower-cased stripped text when normalisation leaves nothing."""
    norm = normalize_answer(text)
    return norm if norm else text.lower().strip()


def substring_score(prediction: str, answer: str) -> float:
    """1.0 when the normalised answer occurs inside the normalised prediction."""
    gold = _norm_or_plain(answer)
    if not gold:
        return 0.0
    return 1.0 if gold in _norm_or_plain(prediction) else 0.0


def exact_score(prediction: str, answer: str) -> float:
    """1.0 when prediction and answer are equal after normalisation."""
    return 1.0 if _norm_or_plain(prediction) == _norm_or_plain(answer) else 0.0


def _token_f1(pred_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, answer: str) -> float:
    """Token F1 between normalised prediction and answer (LongBench ``qa_f1_score``)."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(answer).split())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_score(prediction: str, answer: str) -> float:
    """ROUGE-L F1: ``2PR/(P+R)`` with P = LCS/len(prediction), R = LCS/len(answer) (word tokens)."""
    pred = _WORD.findall(prediction.lower())
    gold = _WORD.findall(answer.lower())
    lcs = _lcs_length(pred, gold)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(gold)
    return 2 * precision * recall / (precision + recall)


def classification_score(prediction: str, answer: str, all_classes: Sequence[str]) -> float:
    """LongBench classification: 1/len(matched classes) if the gold class is matched, else 0.

    A class matches when its name occurs in the prediction; matched classes that are strict
    substrings of the gold class (e.g. "number" inside "phone number") do not count against it.
    """
    matched = [c for c in all_classes if c and c in prediction]
    matched = [c for c in matched if not (c in answer and c != answer)]
    if answer in matched:
        return 1.0 / len(matched)
    return 0.0


def retrieval_score(prediction: str, answer: str) -> float:
    """LongBench passage retrieval: share of the numbers in the prediction equal to the gold paragraph."""
    found = re.findall(r"Paragraph (\d+)", answer)
    if not found:
        raise UserError(f"retrieval metric: gold answer {answer!r} is not of the form 'Paragraph <k>'")
    numbers = _NUMBER.findall(prediction)
    if not numbers:
        return 0.0
    return sum(1 for n in numbers if n == found[0]) / len(numbers)


def count_score(prediction: str, answer: str) -> float:
    """LongBench passage count: share of the numbers in the prediction equal to the gold count."""
    numbers = _NUMBER.findall(prediction)
    if not numbers:
        return 0.0
    gold = answer.strip()
    return sum(1 for n in numbers if n == gold) / len(numbers)


def _first_code_line(prediction: str) -> str:
    for line in prediction.lstrip("\n").split("\n"):
        if line.strip() and "`" not in line and "#" not in line and "//" not in line:
            return line.strip()
    return ""


def code_sim_score(prediction: str, answer: str) -> float:
    """fuzzywuzzy ratio (0-100, scaled to [0, 1]) between the first code-looking line and the answer."""
    with warnings.catch_warnings():  # "Using slow pure-python SequenceMatcher": fine for one line
        warnings.simplefilter("ignore")
        from fuzzywuzzy import fuzz

    return fuzz.ratio(_first_code_line(prediction), answer.strip()) / 100.0


def _classification(prediction: str, answer: str, sample: Sample) -> float:
    """The classes of the sample's label set named in the prediction; 1/matches if the gold class is among them."""
    if not sample.all_classes:
        raise UserError(f"sample {sample.id!r}: the 'classification' metric needs the sample's all_classes (label set)")
    return classification_score(prediction, answer, sample.all_classes)


def _per_answer(fn: Callable[[str, str], float]) -> Metric:
    """A :class:`Metric` from a (prediction, answer) function that does not need the sample."""

    @functools.wraps(fn)
    def metric(prediction: str, answer: str, sample: Sample) -> float:
        return fn(prediction, answer)

    return metric


@hookimpl
def register_metrics(register: Register) -> None:
    """The built-in metrics."""
    for name, fn in (
        ("substring", _per_answer(substring_score)),
        ("exact", _per_answer(exact_score)),
        ("qa_f1", _per_answer(qa_f1_score)),
        ("rouge_l", _per_answer(rouge_l_score)),
        ("classification", _classification),
        ("retrieval", _per_answer(retrieval_score)),
        ("count", _per_answer(count_score)),
        ("code_sim", _per_answer(code_sim_score)),
    ):
        register(fn, name=name)


def _registry():
    return catalog().metrics


def known_metrics() -> list[str]:
    """Names accepted by :func:`score` (and by the suite key ``metric``), built-in and from plugins."""
    return _registry().names()


def check_metric(name: str) -> None:
    """Raise :class:`UserError` when ``name`` is not a registered metric (naming the closest one)."""
    _registry().lookup(name)


def score(metric: str, prediction: str, sample: Sample) -> float:
    """Score ``prediction`` for ``sample`` with ``metric``: the best score over the gold answers."""
    fn = _registry().lookup(metric).obj
    if not sample.answers:
        return 0.0
    return max(fn(prediction, answer, sample) for answer in sample.answers)
