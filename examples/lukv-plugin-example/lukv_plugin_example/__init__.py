"""An example lukv-bench plugin: a policy, a task type and a metric.

* the ``keynorm`` scorer and the ``keynorm`` policy that uses it (with the built-in ``uniform`` allocator);
* the ``passphrase`` task type: a few words hidden in filler text, to be repeated back;
* the ``word_recall`` metric: the share of the answer's words that the prediction contains.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lukv_bench.config.schema import TaskContext
from lukv_bench.errors import ConfigError
from lukv_bench.registry.hookspecs import Register, hookimpl
from lukv_bench.registry.task_contract import Key
from lukv_bench.runtime.contract import LayerStats, PolicySpec, PrefillStats
from lukv_bench.sample import Sample
from lukv_bench.tasks import BaseTaskType
from lukv_bench.tasks.base import MAX_NEW_TOKENS, task_limit
from lukv_bench.tasks.metrics import normalize_answer, score

# ------------------------------------------------------------------------------------------ policy


@dataclass
class KeyNormScorer:
    """Keys with a small L2 norm score high: they tend to attract attention, so they are kept.

    No attention statistics are needed, only the stored keys, so it works with any attention
    implementation. ``power`` only sharpens the ranking's spread (the order is the same for any
    positive power); it is here to show how a plugin param appears in the registry.
    """

    power: float = 1.0

    name: ClassVar[str] = "keynorm"
    needs: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        if not self.power > 0:
            raise ConfigError(f"keynorm scorer: power must be > 0 (got {self.power!r})")

    def score(self, layer: LayerStats, stats: PrefillStats) -> torch.Tensor:
        """[S, n] minus the key norm of every stored head and token."""
        return -layer.keys.float().norm(dim=-1).pow(self.power)


@hookimpl
def register_scorers(register: Register) -> None:
    """Register the ``keynorm`` scorer (under its ``name``)."""
    register(KeyNormScorer)


@hookimpl
def register_policies(register: Register) -> None:
    """Register the ``keynorm`` policy: key-norm scores with uniform layer budgets."""
    register(PolicySpec("keynorm", "keynorm", "uniform", "Key norm: keep low-norm keys, uniform budgets"))


# ------------------------------------------------------------------------------------------ metric


def word_recall(prediction: str, answer: str, sample: Sample) -> float:
    """Share of the answer's (normalised) words that occur in the prediction."""
    gold = normalize_answer(answer).split()
    if not gold:
        return 0.0
    said = set(normalize_answer(prediction).split())
    return sum(w in said for w in gold) / len(gold)


@hookimpl
def register_metrics(register: Register) -> None:
    """Register the ``word_recall`` metric (a function: its name is given)."""
    register(word_recall, name="word_recall")


# --------------------------------------------------------------------------------------- task type

FILLER = (
    "The river bends twice before it reaches the old mill.",
    "Rain fell on the market all morning and the stalls closed early.",
    "A clock in the tower has been ten minutes slow for years.",
    "The baker opens at six and sells out of rye bread by noon.",
    "Gulls follow the ferry from the harbour to the island.",
)
WORDS = ("amber", "cobalt", "falcon", "granite", "harbour", "lantern", "meadow", "orchid", "pepper", "quartz",
         "saffron", "timber", "violet", "willow")


@dataclass
class PassphraseTask:
    """Filler text with a passphrase hidden in it; the model is asked to repeat the passphrase."""

    name: str
    metric: str
    samples_n: int
    length: int
    phrase_words: int
    seed: int
    limit: int | None = None
    max_new_tokens: int | None = None
    data_source: str = "generated passphrases (lukv-plugin-example)"

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        """Up to ``limit`` samples, the same for the same seed."""
        for i in range(min(self.samples_n, limit if limit is not None else self.samples_n)):
            rng = random.Random(f"passphrase|{self.seed}|{i}")
            phrase = " ".join(rng.sample(WORDS, self.phrase_words))
            filler = [rng.choice(FILLER) for _ in range(max(1, self.length // 10))]
            filler.insert(rng.randrange(len(filler) + 1), f"The passphrase is: {phrase}.")
            yield Sample(id=f"{self.name}-{i}", context=" ".join(filler), question="What is the passphrase?",
                         answers=[phrase], instruction="Remember the passphrase in the text.",
                         max_new_tokens=self.max_new_tokens)

    def score(self, prediction: str, sample: Sample) -> float:
        """The task's metric, best over the gold answers."""
        return score(self.metric, prediction, sample)


class PassphraseTaskType(BaseTaskType):
    """``type: passphrase``: repeat back a few words hidden in filler text."""

    name = "passphrase"
    keys = {
        "samples": Key("int", 4, minimum=1),
        "length": Key("int", 200, minimum=20, help="context length in words"),
        "phrase_words": Key("int", 3, minimum=1, maximum=len(WORDS)),
        "seed": Key("int", default_from="seed"),
        "metric": Key("metric", "word_recall"),
        "max_new_tokens": MAX_NEW_TOKENS,
    }

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: TaskContext) -> None:
        """The phrase must be a small part of the text."""
        if "length" in task and "phrase_words" in task and task["phrase_words"] * 10 > task["length"]:
            report("phrase_words", f"{task['phrase_words']} words do not hide in {task['length']} words of text; "
                   f"use length >= {task['phrase_words'] * 10}")

    def build(self, task: dict[str, Any], suite: Any, tokenizer: Any = None) -> PassphraseTask:
        """The task of this entry."""
        return PassphraseTask(task["name"], task["metric"], task["samples"], task["length"], task["phrase_words"],
                              task["seed"], limit=task_limit(task, suite), max_new_tokens=task["max_new_tokens"])


@hookimpl
def register_task_types(register: Register) -> None:
    """Register the ``passphrase`` task type (under its ``name``)."""
    register(PassphraseTaskType)
