"""LongBench subsets: the real data from the hub, or the offline LongBench-shaped set.

``source`` decides where samples come from:

* ``hub`` — the real LongBench (``THUDM/LongBench`` by default, one config per subset, split
  ``test``) through ``datasets.load_dataset``; failure is a :class:`UserError`.
* ``offline`` — the generated set of :mod:`lukv_bench.data.longbench` (``qasper`` means
  ``qasper_like`` there; subsets without an offline analogue are refused).
* ``auto`` — the hub, and when it cannot be reached the offline analogue. ``data_source`` then says
  so ("offline ... (hub THUDM/LongBench/qasper unavailable: ...)"): never a silent substitution.

Subset names ending in ``_like`` always mean the offline set. Each subset keeps LongBench's metric,
its first-line-only scoring (trec, triviaqa, samsum), its generation length (LongBench's
``dataset2maxlen``, e.g. 512 tokens for gov_report; ``Sample.max_new_tokens``, unless the suite task
sets ``max_new_tokens``) and a prompt in the spirit of LongBench's templates, split into
instruction / context / question blocks (see :class:`Sample`).
"""

from __future__ import annotations

import difflib
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lukv_bench.config.schema import TaskContext
from lukv_bench.errors import UserError
from lukv_bench.registry.task_contract import REQUIRED, Key
from lukv_bench.sample import Sample
from lukv_bench.tasks import metrics
from lukv_bench.tasks.base import MAX_NEW_TOKENS, BaseTaskType, task_limit
from lukv_bench.tasks.control import control_key

if TYPE_CHECKING:
    from lukv_bench.config.suite import Suite

__all__ = [
    "DEFAULT_CONTEXT_TOKENS",
    "DEFAULT_NUM_SAMPLES",
    "HUB_REPO",
    "HUB_SUBSETS",
    "HubSubset",
    "LongBenchTask",
    "LongBenchTaskType",
    "all_subset_names",
    "subset_problem",
]

log = logging.getLogger(__name__)

HUB_REPO = "THUDM/LongBench"
DEFAULT_CONTEXT_TOKENS = 1500
DEFAULT_NUM_SAMPLES = 20

_QA_ONLY = "Only give me the answer and do not output any other words."
_PASSAGES = f"Answer the question based on the given passages. {_QA_ONLY}"


@dataclass(frozen=True)
class HubSubset:
    """A real LongBench subset: metric, generation length, prompt blocks and offline analogue."""

    name: str
    metric: str
    max_new_tokens: int
    instruction: str
    context: str  #: format string with {context}
    question: str  #: format string with {input}
    offline: str | None = None  #: name of the offline analogue, if any
    first_line_only: bool = False


HUB_SUBSETS: dict[str, HubSubset] = {
    s.name: s
    for s in (
        HubSubset(
            "narrativeqa",
            "qa_f1",
            128,
            "You are given a story (a novel or a movie script) and a question. Answer the question as "
            "briefly as you can, with a single phrase if possible. Do not explain.",
            "Story: {context}",
            "Now answer the question based on the story, as briefly as you can, with a single phrase if "
            "possible. Do not explain.\n\nQuestion: {input}\n\nAnswer:",
        ),
        HubSubset(
            "qasper",
            "qa_f1",
            128,
            "You are given a scientific article and a question. Answer as briefly as you can, with a single "
            "phrase or sentence if possible. If the article does not answer the question, write "
            '"unanswerable". For a yes/no question answer "yes", "no" or "unanswerable". Do not explain.',
            "Article: {context}",
            "Answer the question based on the article above, as briefly as you can, with a single phrase or "
            'sentence if possible. If the article does not answer it, write "unanswerable"; for a yes/no '
            'question answer "yes", "no" or "unanswerable". Do not explain.\n\nQuestion: {input}\n\nAnswer:',
            offline="qasper_like",
        ),
        HubSubset(
            "multifieldqa_en",
            "qa_f1",
            64,
            "Read the following text and answer the question briefly.",
            "{context}",
            f"Now answer the following question based on the text above. {_QA_ONLY}\n\nQuestion: {{input}}\nAnswer:",
        ),
        *(
            HubSubset(
                name,
                "qa_f1",
                32,
                f"{_PASSAGES}\n\nThe following are given passages.",
                "{context}",
                f"{_PASSAGES}\n\nQuestion: {{input}}\nAnswer:",
                offline=offline,
            )
            for name, offline in (("hotpotqa", "hotpotqa_like"), ("2wikimqa", None), ("musique", None))
        ),
        HubSubset(
            "gov_report",
            "rouge_l",
            512,
            "You are given a report by a government agency. Write a one-page summary of the report.",
            "Report:\n{context}",
            "Now write a one-page summary of the report.\n\nSummary:",
        ),
        HubSubset(
            "qmsum",
            "rouge_l",
            512,
            "You are given a meeting transcript and a query containing a question or an instruction. "
            "Answer the query in one or more sentences.",
            "Transcript:\n{context}",
            "Now answer the query based on the meeting transcript above, in one or more sentences.\n\n"
            "Query: {input}\nAnswer:",
        ),
        HubSubset(
            "multi_news",
            "rouge_l",
            512,
            "You are given several news passages. Write a one-page summary of all the news.",
            "News:\n{context}",
            "Now write a one-page summary of all the news.\n\nSummary:",
        ),
        HubSubset(
            "trec",
            "classification",
            64,
            "Please determine the type of the question below. Here are some examples of questions.",
            "{context}",
            "{input}",
            offline="trec_like",
            first_line_only=True,
        ),
        HubSubset(
            "triviaqa",
            "qa_f1",
            32,
            f"Answer the question based on the given passage. {_QA_ONLY} The following are some examples.",
            "{context}",
            "{input}",
            offline="triviaqa_like",
            first_line_only=True,
        ),
        HubSubset(
            "samsum",
            "rouge_l",
            128,
            "Summarize the dialogue in a few short sentences. The following are some examples.",
            "{context}",
            "{input}",
            first_line_only=True,
        ),
        HubSubset(
            "passage_count",
            "count",
            32,
            "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Read "
            "them carefully and determine how many unique paragraphs there are after removing duplicates, "
            "that is, how many non-repeating paragraphs there are in total.",
            "{context}",
            "Please enter the final count of unique paragraphs after removing duplicates. The output should "
            "only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
            offline="passage_count_like",
        ),
        HubSubset(
            "passage_retrieval_en",
            "retrieval",
            32,
            "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph "
            "the abstract is from.",
            "{context}",
            "The following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the "
            'abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", etc.\n\n'
            "The answer is: ",
            offline="passage_retrieval_en_like",
        ),
        HubSubset(
            "lcc",
            "code_sim",
            64,
            "Please complete the code given below.",
            "{context}",
            "Next line of code:\n",
            offline="lcc_like",
        ),
        HubSubset(
            "repobench-p",
            "code_sim",
            64,
            "Please complete the code given below.",
            "{context}",
            "{input}Next line of code:\n",
        ),
    )
}


def _offline_subsets() -> dict[str, Any]:
    from lukv_bench.data.longbench import OFFLINE_SUBSETS

    return OFFLINE_SUBSETS


def all_subset_names() -> list[str]:
    """Real LongBench subset names supported here, then the offline ``*_like`` ones."""
    return [*HUB_SUBSETS, *_offline_subsets()]


def subset_problem(name: str, source: str) -> str | None:
    """Why ``name`` cannot be used with ``source`` (None when it can)."""
    offline = _offline_subsets()
    if name in offline:
        if source == "hub":
            return (
                f"{name!r} is an offline generated subset, but source is 'hub'; use the real name "
                f"{offline[name].imitates!r} or source: offline/auto"
            )
        return None
    if name in HUB_SUBSETS:
        if source == "offline" and HUB_SUBSETS[name].offline is None:
            with_analogue = [s.name for s in HUB_SUBSETS.values() if s.offline]
            return (
                f"LongBench subset {name!r} has no offline analogue; with source: offline use one of "
                f"{', '.join(with_analogue)} (or {', '.join(offline)})"
            )
        return None
    close = difflib.get_close_matches(name, all_subset_names(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown LongBench subset {name!r}; {hint}known: {', '.join(all_subset_names())}"


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


#: repositories found unreachable in this process -> the reason (later subsets skip the ~30 s retries)
_UNREACHABLE: dict[str, str] = {}


def _is_connection_problem(err: BaseException) -> bool:
    names = {t.__name__ for t in type(err).__mro__}
    text = str(err).lower()
    return bool(
        names & {"ConnectionError", "Timeout", "TimeoutError", "LocalEntryNotFoundError", "OfflineModeIsEnabled"}
        or "couldn't reach" in text
        or "offline mode" in text
    )


def load_hub_rows(repo: str, subset: str) -> tuple[list[dict[str, Any]], str]:
    """Rows of a LongBench subset from the hub, and a description of what was loaded.

    ``datasets.load_dataset(repo, subset, split="test")`` first; ``THUDM/LongBench`` is a
    loading-script data set that recent ``datasets`` versions refuse to run, so in that case the
    same data is read from the repository's ``data.zip`` (``data/<subset>.jsonl``).
    """
    import datasets

    try:
        ds = datasets.load_dataset(repo, subset, split="test")
        return [dict(r) for r in ds], f"hub: {repo}/{subset} (split test)"
    except Exception as e:
        if "script" not in str(e).lower():
            raise
        import zipfile

        from huggingface_hub import hf_hub_download

        archive = hf_hub_download(repo_id=repo, filename="data.zip", repo_type="dataset")
        with zipfile.ZipFile(archive) as z:
            text = z.read(f"data/{subset}.jsonl").decode("utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return rows, f"hub: {repo}/{subset} (data.zip, data/{subset}.jsonl)"


class LongBenchTask:
    """One LongBench subset (real or offline-generated) as a :class:`~lukv_bench.tasks.base.Task`."""

    def __init__(
        self,
        name: str,
        subset: str,
        source: str = "auto",
        hub_repo: str = HUB_REPO,
        seed: int = 0,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        num_samples: int | None = None,
        shuffle: bool = False,
        limit: int | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        if source not in ("auto", "hub", "offline"):
            raise UserError(f"LongBench source must be auto, hub or offline (got {source!r})")
        problem = subset_problem(subset, source)
        if problem:
            raise UserError(problem)
        offline = _offline_subsets()
        self.name = name
        self.subset = subset
        self.source = source
        self.hub_repo = hub_repo
        self.seed = seed
        self.context_tokens = context_tokens
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.limit = limit
        self.hub = HUB_SUBSETS.get(subset)
        self.offline_name = subset if subset in offline else (self.hub.offline if self.hub else None)
        spec = self.hub or offline[subset]
        self.metric: str = spec.metric
        self.first_line_only: bool = spec.first_line_only
        #: tokens to generate per sample: the suite task's max_new_tokens, else LongBench's length for
        #: this subset (its dataset2maxlen; offline sets use the length of the subset they imitate)
        self.max_new_tokens: int = max_new_tokens if max_new_tokens is not None else spec.max_new_tokens
        self._samples: list[Sample] | None = None
        self._generated = False  # samples come from the offline generator
        self._fallback_reason = ""
        self._data_source = ""

    # -- loading --

    def _load(self, want: int | None = None) -> None:
        if self._samples is not None and not (
            self._generated and self.num_samples is None and want and want > len(self._samples)
        ):
            return
        fallback_reason = self._fallback_reason
        if self.hub is not None and self.source in ("hub", "auto") and not self._generated:
            try:
                if self.hub_repo in _UNREACHABLE:
                    raise ConnectionError(_UNREACHABLE[self.hub_repo])
                rows, where = load_hub_rows(self.hub_repo, self.subset)
            except Exception as e:  # the hub path failed: refuse (hub) or say so (auto)
                if _is_connection_problem(e):
                    _UNREACHABLE.setdefault(self.hub_repo, str(e))
                if self.source == "hub":
                    raise UserError(
                        f"task {self.name!r}: source is 'hub' but {self.hub_repo}/{self.subset} could not be "
                        f"loaded ({_short(e)}). Check the network/HF_HUB_OFFLINE and the datasets cache, or "
                        "use source: offline (or auto) for the generated LongBench-shaped set."
                    ) from e
                if self.offline_name is None:
                    raise UserError(
                        f"task {self.name!r}: {self.hub_repo}/{self.subset} could not be loaded "
                        f"({_short(e)}) and this subset has no offline analogue; remove it or make the hub "
                        "reachable"
                    ) from e
                fallback_reason = f"hub {self.hub_repo}/{self.subset} unavailable: {_short(e)}"
                self._fallback_reason = fallback_reason
                log.warning("task %s: %s; using the offline set %s", self.name, fallback_reason, self.offline_name)
            else:
                samples = [self._from_row(r, i) for i, r in enumerate(rows)]
                for sample in samples:
                    sample.max_new_tokens = self.max_new_tokens
                if self.shuffle:
                    random.Random(f"longbench:{self.subset}:{self.seed}").shuffle(samples)
                self._samples = samples
                order = f", shuffled with seed {self.seed}" if self.shuffle else ""
                self._data_source = f"{where}{order}"
                return
        from lukv_bench.data import longbench as gen

        assert self.offline_name is not None
        n = self.num_samples or max(DEFAULT_NUM_SAMPLES, want or 0, self.limit or 0)
        self._samples = gen.generate(self.offline_name, n, self.seed, self.context_tokens)
        for sample in self._samples:
            sample.max_new_tokens = self.max_new_tokens
        self._generated = True
        source = gen.data_source(self.offline_name, self.seed, self.context_tokens)
        self._data_source = f"{source} ({fallback_reason})" if fallback_reason else source

    def _from_row(self, row: dict[str, Any], i: int) -> Sample:
        hub = self.hub
        assert hub is not None
        answers = row.get("answers") or []
        if isinstance(answers, str):
            answers = [answers]
        return Sample(
            id=str(row.get("_id") or f"{self.subset}-{i}"),
            instruction=hub.instruction,
            context=hub.context.format(context=row.get("context", "")),
            question=hub.question.format(input=row.get("input", "")),
            answers=[str(a) for a in answers],
            all_classes=list(row["all_classes"]) if row.get("all_classes") else None,
            meta={"subset": self.subset, "length": row.get("length"), "index": i},
        )

    # -- Task protocol --

    @property
    def data_source(self) -> str:
        """Exactly which data is used (loads the data on first access)."""
        self._load()
        return self._data_source

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        """Yield up to ``limit`` samples in a fixed order (hub order, or the generator's seeded order).

        Offline sets without an explicit ``num_samples`` generate as many as asked (at least 20); the
        generator is prefix-stable, so a larger limit only appends samples.
        """
        self._load(limit)
        assert self._samples is not None
        yield from self._samples[: limit if limit is not None else len(self._samples)]

    def score(self, prediction: str, sample: Sample) -> float:
        """LongBench scoring: the subset's metric, on the first line only for trec/triviaqa/samsum."""
        if self.first_line_only:
            prediction = prediction.lstrip("\n").split("\n")[0]
        return metrics.score(self.metric, prediction, sample)


class LongBenchTaskType(BaseTaskType):
    """``type: longbench``: one task per subset, named ``<name>/<subset>``, from the hub or offline."""

    name = "longbench"
    keys = {
        "subsets": Key("list[str]", REQUIRED, unique=True,
                       help="LongBench subset names, e.g. [qasper, passage_retrieval_en] or offline *_like ones"),
        "source": Key("str", "auto", choices=("auto", "hub", "offline")),
        "context_tokens": Key("int", DEFAULT_CONTEXT_TOKENS, minimum=128),
        "num_samples": Key("int", None, minimum=1, nullable=True),  # offline sets: as many as the limit asks
        "seed": Key("int", default_from="seed"),
        "hub_repo": Key("str", HUB_REPO),
        "shuffle": Key("bool", False),
        "max_new_tokens": MAX_NEW_TOKENS,
        "control": control_key(True),
    }

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: TaskContext) -> None:
        """Every subset must exist, and be available from the chosen source."""
        source = task.get("source", "auto")
        for i, subset in enumerate(task.get("subsets", [])):
            problem = subset_problem(subset, source)
            if problem:
                report(f"subsets[{i}]", problem)

    def data_version(self, task: dict[str, Any]) -> str:
        """Per subset, the offline generator that may supply it (and the corpus), and the hub dataset."""
        from lukv_bench.data.corpus import CORPUS_VERSION
        from lukv_bench.data.longbench import generator_version

        parts = []
        for subset in task["subsets"]:
            offline = subset if subset in _offline_subsets() else HUB_SUBSETS[subset].offline
            hub = f"hub {task['hub_repo']}/{subset}" if subset in HUB_SUBSETS and task["source"] != "offline" else None
            gen = generator_version(offline) if offline and task["source"] != "hub" else None
            parts.append(f"{subset}: " + ", ".join(p for p in (hub, gen) if p))
        return "; ".join(parts) + f"; {CORPUS_VERSION}"

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> list[LongBenchTask]:
        """One task per subset."""
        return [
            LongBenchTask(
                name=f"{task['name']}/{subset}",
                subset=subset,
                source=task["source"],
                hub_repo=task["hub_repo"],
                seed=task["seed"],
                context_tokens=task["context_tokens"],
                num_samples=task["num_samples"],
                shuffle=task["shuffle"],
                limit=task_limit(task, suite),
                max_new_tokens=task["max_new_tokens"],
            )
            for subset in task["subsets"]
        ]
