"""Needle-in-a-haystack over a depth x length grid, built offline.

The haystack is real English prose that ships with every CPython install: the paragraphs of
``pydoc_data.topics`` (the language reference used by ``help()``), with grammar blocks, code examples
and headings removed. A needle sentence ("The secret pass key is 48213.") is inserted at a sentence
boundary at a fraction ``depth`` of the context; the model is asked for the number. Everything is
seeded, so a suite run is reproducible without any download.

Suite entry::

    - name: needle
      type: needle
      lengths: [500, 1000, 2000]   # approximate context length in tokens (tokenizer, else chars / 4)
      depths: [0.1, 0.5, 0.9]      # where the needle goes, 0 = start, 1 = end
      samples_per_cell: 1
      seed: 0
      max_new_tokens: 16           # optional; default: the suite's generation.max_new_tokens

The needle is always scored by whether the pass key appears in the answer, so ``metric`` is refused;
``compress`` and ``chat_template`` are suite-level settings and are refused on the task too. The keys
are declared once, by :class:`NeedleTaskType` (see :mod:`lukv_bench.config.schema`).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lukv_bench.config.schema import TaskContext, normalize_task
from lukv_bench.data.corpus import CORPUS_VERSION, Sentence, join_sentences, prose_sentences, token_counter
from lukv_bench.errors import UserError
from lukv_bench.registry.task_contract import Key
from lukv_bench.sample import Sample
from lukv_bench.tasks.base import MAX_NEW_TOKENS, BaseTaskType, task_limit
from lukv_bench.tasks.control import control_key

if TYPE_CHECKING:
    from lukv_bench.config.suite import Suite

VERSION = "lukv-bench needle v1"  #: the needle generator's design
DATA_SOURCE = f"offline needle-in-a-haystack over Python's pydoc_data text ({VERSION})"
INSTRUCTION = (
    "Below is a long text. Somewhere inside it there is a secret pass key. Read the text carefully "
    "and remember the pass key."
)
QUESTION = "What is the secret pass key? Answer with the number only."
NEEDLE_TEMPLATE = "The secret pass key is {key}."

#: keys other tasks or the suite's top level take, refused here with the reason
REFUSED_KEYS = {
    "metric": "cannot be set: the needle task is scored by whether the pass key appears in the answer "
    "(substring); remove it",
    "compress": "is a suite-level setting (top-level 'compress: prompt' or 'compress: context'); remove it "
    "from the task",
    "chat_template": "is a suite-level setting (top-level 'chat_template: auto|true|false'); remove it from "
    "the task",
}

class NeedleTask:
    """Depth x length needle-in-a-haystack task (metric ``substring``)."""

    metric = "substring"
    data_source = DATA_SOURCE

    def __init__(
        self,
        name: str = "needle",
        lengths: list[int] | tuple[int, ...] = (500, 1000, 2000),
        depths: list[float] | tuple[float, ...] = (0.1, 0.5, 0.9),
        samples_per_cell: int = 1,
        seed: int = 0,
        tokenizer: Any | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        """Build the task; see :meth:`from_config` for validation of user input."""
        self.name = name
        self.max_new_tokens = max_new_tokens  #: None: the suite's generation.max_new_tokens
        self.limit: int | None = None  #: samples a suite run uses (None: the whole grid)
        self.lengths = [int(x) for x in lengths]
        self.depths = [float(x) for x in depths]
        self.samples_per_cell = int(samples_per_cell)
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self._count = token_counter(tokenizer)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], tokenizer: Any | None = None) -> NeedleTask:
        """Check a task entry against the needle schema (:class:`NeedleTaskType`) and build the task.

        Raises :class:`~lukv_bench.errors.UserError` naming every offending key.
        """
        if not isinstance(cfg, Mapping):
            raise UserError(f"needle task: the task entry must be a mapping, got {type(cfg).__name__}")
        ctx = TaskContext(Path.cwd(), {"seed": 0})  # outside a suite the seed defaults to 0
        task = normalize_task({"name": "needle", "type": "needle", **cfg}, NeedleTaskType(), ctx)
        return NeedleTaskType().build(task, None, tokenizer)

    # -- samples -------------------------------------------------------------------------------

    def _haystack(self, rng: random.Random, budget_tokens: int) -> list[Sentence]:
        """Consecutive sentences from a seeded start, as many as fit in ``budget_tokens``."""
        units = prose_sentences()
        start = rng.randrange(len(units))

        def take(k: int) -> list[Sentence]:
            return [units[(start + i) % len(units)] for i in range(k)]

        # double until too long, then binary-search the largest k that fits
        lo, hi = 1, 2
        while self._count(join_sentences(take(hi))) <= budget_tokens and hi < 1_000_000:
            lo, hi = hi, hi * 2
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._count(join_sentences(take(mid))) <= budget_tokens:
                lo = mid
            else:
                hi = mid - 1
        return take(lo)

    def make_sample(self, length: int, depth: float, repeat: int) -> Sample:
        """Build the sample of one grid cell; deterministic in (seed, length, depth, repeat)."""
        rng = random.Random(f"lukv-needle-v1|{self.seed}|{length}|{depth!r}|{repeat}")
        key = str(rng.randrange(10_000, 100_000))
        needle = Sentence(NEEDLE_TEMPLATE.format(key=key), para_end=False)
        budget = max(1, length - self._count(needle.text) - 1)
        hay = self._haystack(rng, budget)
        while key in join_sentences(hay):  # the number must be unique to the needle
            key = str(rng.randrange(10_000, 100_000))
            needle = Sentence(NEEDLE_TEMPLATE.format(key=key), para_end=False)
        # sentence boundary closest to `depth` of the haystack's characters
        bounds = [0]
        for unit in hay:
            bounds.append(bounds[-1] + len(unit.text) + 1)
        target = depth * bounds[-1]
        i = bisect.bisect_left(bounds, target)
        if i > 0 and (i == len(bounds) or target - bounds[i - 1] <= bounds[i] - target):
            i -= 1
        units = hay[:i] + [needle] + hay[i:]
        context = join_sentences(units)
        position = context.index(needle.text) / max(1, len(context) - len(needle.text))
        return Sample(
            id=f"{self.name}-L{length}-d{depth:g}-r{repeat}",
            context=context,
            question=QUESTION,
            answers=[key],
            instruction=INSTRUCTION,
            max_new_tokens=self.max_new_tokens,
            meta={
                "depth": depth,
                "length": length,
                "repeat": repeat,
                "needle_position": round(position, 4),
                "context_tokens_est": self._count(context),
            },
        )

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        """Yield one sample per (length, depth, repeat), lengths outermost.

        A ``limit`` below the grid's size takes samples spread evenly over the grid (every
        ``size / limit``-th cell), not its first rows: a limited run still sees the deepest needles.
        """
        cells = [(length, depth, repeat) for length in self.lengths for depth in self.depths
                 for repeat in range(self.samples_per_cell)]
        if limit is not None and limit < len(cells):
            cells = [cells[j * len(cells) // limit] for j in range(limit)]
        for length, depth, repeat in cells:
            yield self.make_sample(length, depth, repeat)

    def __len__(self) -> int:
        """Number of grid samples (before any limit)."""
        return len(self.lengths) * len(self.depths) * self.samples_per_cell

    def score(self, prediction: str, sample: Sample) -> float:
        """1.0 if any gold answer occurs in the prediction (case-insensitive substring), else 0.0."""
        pred = prediction.lower()
        return 1.0 if any(a.lower() in pred for a in sample.answers) else 0.0


class NeedleTaskType(BaseTaskType):
    """``type: needle``: the offline needle-in-a-haystack grid (depth x length)."""

    name = "needle"
    keys = {
        "lengths": Key("list[int]", [500, 1000, 2000], minimum=1),
        "depths": Key("list[number]", [0.1, 0.5, 0.9], minimum=0.0, maximum=1.0),
        "samples_per_cell": Key("int", 1, minimum=1),
        "seed": Key("int", default_from="seed"),
        "max_new_tokens": MAX_NEW_TOKENS,
        "control": control_key(True),
        **{key: Key.refuse(why) for key, why in REFUSED_KEYS.items()},
    }

    def data_version(self, task: dict[str, Any]) -> str:
        """The needle generator's design and the corpus it draws haystacks from."""
        return f"{VERSION}; {CORPUS_VERSION}"

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> NeedleTask:
        """The grid task; the tokenizer (when given) measures lengths in tokens."""
        built = NeedleTask(task["name"], task["lengths"], task["depths"], task["samples_per_cell"], task["seed"],
                           tokenizer, max_new_tokens=task["max_new_tokens"])
        built.limit = task_limit(task, suite)
        return built
