"""Task metrics, by name: a prediction against a sample's gold answers.

Task metrics score one prediction against a :class:`~lukv_bench.sample.Sample` and return a
float in [0, 1]; with several gold answers the best one counts. The LongBench metrics follow the
definitions of LongBench's evaluation script (Bai et al., 2023), re-implemented here:

* ``qa_f1`` — token-level F1 after SQuAD normalisation (lower case, no punctuation, no articles
  "a/an/the", single spaces).
* ``qa_f1_zh`` — token F1 over jieba words, each lower-cased and stripped of (Chinese and ASCII)
  punctuation and spaces, empty words dropped (``pip install 'lukv-bench[zh]'`` for jieba).
* ``rouge_l`` — the ``rouge`` package's ROUGE-L F (summary level: sentences split at ".", words at
  spaces, case kept, unique words), which LongBench's ``rouge_score`` calls; 0 when it cannot score
  (an empty prediction).
* ``rouge_zh`` — ``rouge_l`` on jieba words joined by spaces.
* ``classification`` — the classes of ``sample.all_classes`` named in the prediction; matched classes
  that are strict substrings of the gold class are dropped in LongBench's single pass (which passes
  over the match right after each one it drops); score ``1/len(matches)`` if the gold class is left.
* ``retrieval`` / ``retrieval_zh`` — the gold answer is "Paragraph k" / "段落k"; the score is the
  fraction of the numbers in the prediction that equal k.
* ``count`` — the fraction of the numbers in the prediction that equal the gold count.
* ``code_sim_longbench`` — LongBench's ``code_sim_score``: fuzzywuzzy ``ratio`` (0-100, /100) between
  the gold line and the first prediction line without "`", "#" or "//" (blank lines included), as
  they are.
* ``code_sim`` — the same ratio on the first such line that is not blank, both stripped of
  surrounding whitespace (the offline ``lcc_like`` set's metric; kept so its records stay as they are).

Plus ``substring`` (normalised gold answer contained in the normalised prediction) and ``exact``
(normalised equality).

This module is also the ``builtin-metrics`` plugin: the metrics are registered through the
``register_metrics`` hook, as a plugin's own metric would be, and looked up by name in the registry.
"""

from __future__ import annotations

import functools
import logging
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
    "code_sim_longbench_score",
    "code_sim_score",
    "count_score",
    "exact_score",
    "known_metrics",
    "normalize_answer",
    "normalize_zh_answer",
    "qa_f1_score",
    "qa_f1_zh_score",
    "register_metrics",
    "retrieval_score",
    "retrieval_zh_score",
    "rouge_l_score",
    "rouge_zh_score",
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
#: what LongBench's Chinese normalisation removes: ASCII and full-width/CJK punctuation
_ZH_PUNCT = _PUNCT | set(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】"
    "〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")


def normalize_answer(text: str) -> str:
    """SQuAD/LongBench normalisation: lower case, drop punctuation and articles, collapse spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """LongBench's Chinese normalisation: lower case, drop punctuation, drop all whitespace."""
    return "".join(ch for ch in text.lower() if ch not in _ZH_PUNCT and not ch.isspace())


@functools.cache
def _jieba():
    try:
        import jieba
    except ImportError as e:
        raise UserError(
            "the Chinese LongBench metrics (qa_f1_zh, rouge_zh) segment words with jieba, which is not "
            "installed: pip install 'lukv-bench[zh]' (or pip install jieba)"
        ) from e
    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading banner is not ours to print
    return jieba


def _zh_words(text: str) -> list[str]:
    """jieba's words of ``text`` (accurate mode, as LongBench cuts)."""
    return list(_jieba().cut(text, cut_all=False))


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


def qa_f1_zh_score(prediction: str, answer: str) -> float:
    """Token F1 over normalised jieba words, empty ones dropped (LongBench ``qa_f1_zh_score``)."""

    def words(text: str) -> list[str]:
        return [w for w in (normalize_zh_answer(w) for w in _zh_words(text)) if w]

    return _token_f1(words(prediction), words(answer))


def rouge_l_score(prediction: str, answer: str) -> float:
    """ROUGE-L F of the ``rouge`` package, the library LongBench's ``rouge_score`` calls (0 when it cannot score).

    Using the same library keeps its particulars, which published LongBench numbers carry: text is
    split into sentences at ".", words at spaces, case is kept and words count once.
    """
    from rouge import Rouge

    try:
        return float(Rouge().get_scores([prediction], [answer], avg=True)["rouge-l"]["f"])
    except (ValueError, RecursionError):
        # ValueError: nothing left to score (e.g. an empty prediction); RecursionError: its recursive
        # LCS walk on a very long sentence. LongBench scores both 0 (it catches every exception).
        return 0.0


def rouge_zh_score(prediction: str, answer: str) -> float:
    """ROUGE-L (:func:`rouge_l_score`) over jieba words joined by spaces (LongBench ``rouge_zh_score``)."""
    return rouge_l_score(" ".join(_zh_words(prediction)), " ".join(_zh_words(answer)))

def classification_score(prediction: str, answer: str, all_classes: Sequence[str]) -> float:
    """LongBench classification: 1/len(matched classes) if the gold class is matched, else 0.

    A class matches when its name occurs in the prediction; matched classes that are strict
    substrings of the gold class (e.g. "number" inside "phone number") are dropped in one pass that
    skips the match right after each dropped one, as LongBench's loop (it removes from the list it
    iterates over) does.
    """
    matched = [c for c in all_classes if c in prediction]
    i = 0
    while i < len(matched):
        if matched[i] in answer and matched[i] != answer:
            del matched[i]  # and the match that moves into slot i is passed over, as in LongBench
        i += 1
    if answer in matched:
        return 1.0 / len(matched)
    return 0.0


def _retrieval(prediction: str, answer: str, label: str, metric: str) -> float:
    """Share of the numbers in the prediction equal to k of the gold answer ``<label>k``."""
    found = re.findall(re.escape(label) + r"(\d+)", answer)
    if not found:
        raise UserError(f"{metric} metric: gold answer {answer!r} is not of the form '{label}<k>'")
    numbers = _NUMBER.findall(prediction)
    if not numbers:
        return 0.0
    return sum(1 for n in numbers if n == found[0]) / len(numbers)


def retrieval_score(prediction: str, answer: str) -> float:
    """LongBench passage retrieval: share of the numbers in the prediction equal to the gold paragraph."""
    return _retrieval(prediction, answer, "Paragraph ", "retrieval")


def retrieval_zh_score(prediction: str, answer: str) -> float:
    """LongBench's Chinese passage retrieval: the gold answer is "段落k" (LongBench ``retrieval_zh_score``)."""
    return _retrieval(prediction, answer, "段落", "retrieval_zh")


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


def _fuzz_ratio(a: str, b: str) -> float:
    """fuzzywuzzy's ``ratio`` of two strings, scaled from 0-100 to [0, 1]."""
    with warnings.catch_warnings():  # "Using slow pure-python SequenceMatcher": fine for one line
        warnings.simplefilter("ignore")
        from fuzzywuzzy import fuzz

    return fuzz.ratio(a, b) / 100.0


def code_sim_score(prediction: str, answer: str) -> float:
    """fuzzywuzzy ratio between the first non-blank code-looking line and the answer, both stripped."""
    return _fuzz_ratio(_first_code_line(prediction), answer.strip())


def code_sim_longbench_score(prediction: str, answer: str) -> float:
    """LongBench's ``code_sim_score``: ratio of the first line without "`", "#" or "//" (blank or not), unstripped."""
    lines = prediction.lstrip("\n").split("\n")
    line = next((x for x in lines if "`" not in x and "#" not in x and "//" not in x), "")
    return _fuzz_ratio(line, answer)


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
        ("qa_f1_zh", _per_answer(qa_f1_zh_score)),
        ("rouge_l", _per_answer(rouge_l_score)),
        ("rouge_zh", _per_answer(rouge_zh_score)),
        ("classification", _classification),
        ("retrieval", _per_answer(retrieval_score)),
        ("retrieval_zh", _per_answer(retrieval_zh_score)),
        ("count", _per_answer(count_score)),
        ("code_sim", _per_answer(code_sim_score)),
        ("code_sim_longbench", _per_answer(code_sim_longbench_score)),
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
