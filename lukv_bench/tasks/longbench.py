"""LongBench subsets: the real data (hub or a local copy), or the offline LongBench-shaped set.

``source`` decides where samples come from:

* ``hub`` — the real LongBench (``THUDM/LongBench`` by default, one config per subset, split
  ``test``) through ``datasets.load_dataset``; failure is a :class:`UserError`.
* ``offline`` — the generated set of :mod:`lukv_bench.data.longbench` (``qasper`` means
  ``qasper_like`` there; subsets without an offline analogue are refused).
* ``auto`` — the hub, and when it cannot be reached the offline analogue. ``data_source`` then says
  so ("offline ... (hub THUDM/LongBench/qasper unavailable: ...)"): never a silent substitution.

A local copy in the hub's format (``<subset>.jsonl`` per subset, as in LongBench's ``data.zip``) given
by the task key ``data_dir`` or the environment variable ``LUKV_LONGBENCH_DIR`` takes the hub's place
for ``hub`` and ``auto`` (no fallback: a missing file is an error). Subset names ending in ``_e``
are LongBench-E's configs; ``buckets: true`` splits each subset by LongBench-E's length buckets.

Real data follows LongBench's protocol (docs/longbench.md): its prompt template per subset
(``dataset2prompt``), its generation length (``dataset2maxlen``; ``Sample.max_new_tokens``, unless
the suite task sets ``max_new_tokens``), no chat template for the few-shot and code subsets, its
metric per subset and first-line-only scoring for trec, triviaqa, samsum and lsht. Names ending in
``_like`` always mean the offline set, which keeps its own prompts and metrics.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lukv_bench.config.schema import TaskContext
from lukv_bench.errors import UserError
from lukv_bench.registry.task_contract import OPTIONAL, REQUIRED, Key
from lukv_bench.sample import Sample
from lukv_bench.tasks import metrics
from lukv_bench.tasks.base import MAX_NEW_TOKENS, BaseTaskType, task_limit
from lukv_bench.tasks.control import control_key
from lukv_bench.tasks.jsonl import read_text_file

if TYPE_CHECKING:
    from lukv_bench.config.suite import Suite

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_CONTEXT_TOKENS",
    "DEFAULT_NUM_SAMPLES",
    "HUB_REPO",
    "HUB_SUBSETS",
    "LENGTH_BUCKETS",
    "LONGBENCH_E",
    "HubSubset",
    "LongBenchTask",
    "LongBenchTaskType",
    "all_subset_names",
    "hub_spec",
    "length_bucket",
    "load_hub_rows",
    "load_local_rows",
    "local_dir",
    "local_file",
    "subset_problem",
]

log = logging.getLogger(__name__)

HUB_REPO = "THUDM/LongBench"
DEFAULT_CONTEXT_TOKENS = 1500
DEFAULT_NUM_SAMPLES = 20
#: environment variable naming a local copy of LongBench (when the task has no ``data_dir``)
DATA_DIR_ENV = "LUKV_LONGBENCH_DIR"
#: LongBench-E's length buckets, by the sample's ``length`` field (its eval.py ``scorer_e``)
LENGTH_BUCKETS = ("0-4k", "4-8k", "8k+")


def length_bucket(length: int) -> str:
    """LongBench-E's bucket of a sample: under 4,000, under 8,000, or more (``length`` counts words)."""
    return "0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"


@dataclass(frozen=True)
class HubSubset:
    """A real LongBench subset: its metric, generation length, prompt template and offline analogue."""

    name: str
    metric: str
    max_new_tokens: int  #: LongBench's dataset2maxlen
    template: str  #: LongBench's dataset2prompt entry, with {context} and {input}
    offline: str | None = None  #: name of the offline analogue, if any
    first_line_only: bool = False
    chat: bool = True  #: False: LongBench never applies the chat format (few-shot and code subsets)

    def prompt(self, row: dict[str, Any]) -> tuple[str, str, str]:
        """(instruction, context, question) of a hub row: the template cut around ``{context}``."""
        head, tail = self.template.split("{context}")
        return head, str(row.get("context", "")), tail.format(input=row.get("input", ""))


_QA_ONLY = "Only give me the answer and do not output any other words."
_MULTI_DOC = (
    f"Answer the question based on the given passages. {_QA_ONLY}\n\nThe following are given passages.\n"
    f"{{context}}\n\nAnswer the question based on the given passages. {_QA_ONLY}\n\nQuestion: {{input}}\nAnswer:"
)
_QASPER_RULE = (
    "as concisely as you can, using a single phrase or sentence if possible. If the question cannot be "
    'answered based on the information in the article, write "unanswerable". If the question is a yes/no '
    'question, answer "yes", "no", or "unanswerable". Do not provide any explanation.'
)
# LongBench's templates are kept character for character (typos such as "asconcisely" included):
# published scores were produced with them.
_NARRATIVE_RULE = "asconcisely as you can, using a single phrase if possible. Do not provide any explanation."
_CODE = "Please complete the code given below. \n{context}"

HUB_SUBSETS: dict[str, HubSubset] = {
    s.name: s
    for s in (
        HubSubset(
            "narrativeqa", "qa_f1", 128,
            "You are given a story, which can be either a novel or a movie script, and a question. Answer the "
            f"question {_NARRATIVE_RULE}\n\nStory: {{context}}\n\nNow, answer the question based on the story "
            f"{_NARRATIVE_RULE}\n\nQuestion: {{input}}\n\nAnswer:",
        ),
        HubSubset(
            "qasper", "qa_f1", 128,
            f"You are given a scientific article and a question. Answer the question {_QASPER_RULE}\n\n"
            f"Article: {{context}}\n\n Answer the question based on the above article {_QASPER_RULE}\n\n"
            "Question: {input}\n\nAnswer:",
            offline="qasper_like",
        ),
        HubSubset(
            "multifieldqa_en", "qa_f1", 64,
            "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question "
            "based on the above text, only give me the answer and do not output any other words.\n\n"
            "Question: {input}\nAnswer:",
        ),
        HubSubset(
            "multifieldqa_zh", "qa_f1_zh", 64,
            "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，"
            "不要输出任何其他字词。\n\n问题：{input}\n回答：",
        ),
        HubSubset("hotpotqa", "qa_f1", 32, _MULTI_DOC, offline="hotpotqa_like"),
        HubSubset("2wikimqa", "qa_f1", 32, _MULTI_DOC),
        HubSubset("musique", "qa_f1", 32, _MULTI_DOC),
        HubSubset(
            "dureader", "rouge_zh", 128,
            "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
        ),
        HubSubset(
            "gov_report", "rouge_l", 512,
            "You are given a report by a government agency. Write a one-page summary of the report.\n\n"
            "Report:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
        ),
        HubSubset(
            "qmsum", "rouge_l", 512,
            "You are given a meeting transcript and a query containing a question or instruction. Answer the "
            "query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the "
            "above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
        ),
        HubSubset(
            "multi_news", "rouge_l", 512,
            "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}"
            "\n\nNow, write a one-page summary of all the news.\n\nSummary:",
        ),
        HubSubset(
            "vcsum", "rouge_zh", 512,
            "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
        ),
        HubSubset(
            "trec", "classification", 64,
            "Please determine the type of the question below. Here are some examples of questions.\n\n"
            "{context}\n{input}",
            offline="trec_like", first_line_only=True, chat=False,
        ),
        HubSubset(
            "triviaqa", "qa_f1", 32,
            f"Answer the question based on the given passage. {_QA_ONLY} The following are some examples.\n\n"
            "{context}\n\n{input}",
            offline="triviaqa_like", first_line_only=True, chat=False,
        ),
        HubSubset(
            "samsum", "rouge_l", 128,
            "Summarize the dialogue into a few short sentences. The following are some examples.\n\n"
            "{context}\n\n{input}",
            first_line_only=True, chat=False,
        ),
        HubSubset(
            "lsht", "classification", 64, "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
            first_line_only=True, chat=False,
        ),
        HubSubset(
            "passage_count", "count", 32,
            "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please "
            "carefully read these paragraphs and determine how many unique paragraphs there are after removing "
            "duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\n"
            "Please enter the final count of unique paragraphs after removing duplicates. The output format "
            "should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
            offline="passage_count_like",
        ),
        HubSubset(
            "passage_retrieval_en", "retrieval", 32,
            "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
            "abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the "
            'number of the paragraph that the abstract is from. The answer format must be like "Paragraph 1", '
            '"Paragraph 2", etc.\n\nThe answer is: ',
            offline="passage_retrieval_en_like",
        ),
        HubSubset(
            "passage_retrieval_zh", "retrieval_zh", 32,
            "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n"
            '{input}\n\n请输入摘要所属段落的编号。答案格式必须是"段落1"，"段落2"等格式\n\n答案是：',
        ),
        HubSubset("lcc", "code_sim_longbench", 64, f"{_CODE}Next line of code:\n", offline="lcc_like", chat=False),
        HubSubset("repobench-p", "code_sim_longbench", 64, f"{_CODE}{{input}}Next line of code:\n", chat=False),
    )
}

#: subsets with a LongBench-E config ``<subset>_e`` (even lengths across the three buckets)
LONGBENCH_E = (
    "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
    "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)


def hub_spec(name: str) -> HubSubset | None:
    """The real subset ``name`` stands for (``qasper_e``: LongBench-E's qasper), None for other names."""
    if name.endswith("_e") and name[:-2] in LONGBENCH_E:
        return HUB_SUBSETS[name[:-2]]
    return HUB_SUBSETS.get(name)


def _offline_subsets() -> dict[str, Any]:
    from lukv_bench.data.longbench import OFFLINE_SUBSETS

    return OFFLINE_SUBSETS


def all_subset_names() -> list[str]:
    """Real LongBench subset names supported here, LongBench-E's, then the offline ``*_like`` ones."""
    return [*HUB_SUBSETS, *(f"{n}_e" for n in LONGBENCH_E), *_offline_subsets()]


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
    spec = hub_spec(name)
    if spec is not None:
        if source == "offline" and spec.offline is None:
            with_analogue = [s.name for s in HUB_SUBSETS.values() if s.offline]
            return (
                f"LongBench subset {name!r} has no offline analogue; with source: offline use one of "
                f"{', '.join(with_analogue)} (or {', '.join(offline)})"
            )
        return None
    close = difflib.get_close_matches(name, all_subset_names(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown LongBench subset {name!r}; {hint}known: {', '.join(all_subset_names())}"


def local_dir(data_dir: str | None) -> tuple[Path, str] | None:
    """The local copy of LongBench to read, and what named it: ``data_dir``, else ``$LUKV_LONGBENCH_DIR``."""
    if data_dir:
        return Path(data_dir), "data_dir"
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    return (Path(env).expanduser(), DATA_DIR_ENV) if env else None


def local_file(folder: Path, subset: str) -> Path | None:
    """``<folder>/<subset>.jsonl``, else ``<folder>/data/<subset>.jsonl`` (data.zip as unpacked); None if neither."""
    for path in (folder / f"{subset}.jsonl", folder / "data" / f"{subset}.jsonl"):
        if path.is_file():
            return path
    return None


def _missing_file(folder: Path, named_by: str, subset: str) -> str:
    return (
        f"{named_by} {folder} has no {subset}.jsonl (nor data/{subset}.jsonl); put LongBench's files there "
        f"(THUDM/LongBench's data.zip unpacked, one <subset>.jsonl per subset) or remove {subset!r}"
    )


def load_local_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a local LongBench file in the hub's format (one JSON object per line, blank lines skipped)."""
    rows = []
    for line_no, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{line_no}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(row, dict) or "context" not in row or "answers" not in row:
            raise UserError(
                f"{path}:{line_no}: expected a LongBench row (a JSON object with input, context, answers, "
                "length, all_classes, _id)"
            )
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: the file has no rows; expected one LongBench row per line")
    return rows


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


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
    """One LongBench subset (real or offline-generated) as a :class:`~lukv_bench.tasks.base.Task`.

    ``data_dir`` (else ``$LUKV_LONGBENCH_DIR``) reads the real data from a local copy instead of the
    hub; ``bucket`` keeps only the samples of one LongBench-E length bucket (real data only).
    """

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
        data_dir: str | None = None,
        bucket: str | None = None,
    ) -> None:
        if source not in ("auto", "hub", "offline"):
            raise UserError(f"LongBench source must be auto, hub or offline (got {source!r})")
        problem = subset_problem(subset, source)
        if problem:
            raise UserError(problem)
        if bucket is not None and bucket not in LENGTH_BUCKETS:
            raise UserError(f"LongBench length bucket must be one of {', '.join(LENGTH_BUCKETS)} (got {bucket!r})")
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
        self.bucket = bucket
        self.hub = hub_spec(subset)
        self.local = local_dir(data_dir) if self.hub is not None and source != "offline" else None
        self.offline_name = subset if subset in offline else (self.hub.offline if self.hub else None)
        spec = self.hub or offline[subset]
        #: tokens to generate per sample: the suite task's max_new_tokens, else LongBench's length for
        #: this subset (its dataset2maxlen; offline sets use the length of the subset they imitate)
        self.max_new_tokens: int = max_new_tokens if max_new_tokens is not None else spec.max_new_tokens
        self._samples: list[Sample] | None = None
        self._generated = False  # samples come from the offline generator
        self._fallback_reason = ""
        self._data_source = ""

    # -- loading --

    def _real_rows(self) -> tuple[list[dict[str, Any]], str]:
        """The subset's rows from the local copy (when one is named) or the hub, and where they came from."""
        if self.local is not None:
            folder, named_by = self.local
            path = local_file(folder, self.subset)
            if path is None:
                raise UserError(f"task {self.name!r}: {_missing_file(folder, named_by, self.subset)}")
            return load_local_rows(path), f"local: {path} ({named_by})"
        if self.hub_repo in _UNREACHABLE:
            raise ConnectionError(_UNREACHABLE[self.hub_repo])
        return load_hub_rows(self.hub_repo, self.subset)

    def _load(self, want: int | None = None) -> None:
        if self._samples is not None and not (
            self._generated and self.num_samples is None and want and want > len(self._samples)
        ):
            return
        fallback_reason = self._fallback_reason
        if self.hub is not None and self.source in ("hub", "auto") and not self._generated:
            try:
                rows, where = self._real_rows()
            except UserError:
                raise
            except Exception as e:  # the hub path failed: refuse (hub) or say so (auto)
                if _is_connection_problem(e):
                    _UNREACHABLE.setdefault(self.hub_repo, str(e))
                if self.source == "hub":
                    raise UserError(
                        f"task {self.name!r}: source is 'hub' but {self.hub_repo}/{self.subset} could not be "
                        f"loaded ({_short(e)}). Check the network/HF_HUB_OFFLINE and the datasets cache, point "
                        f"data_dir (or ${DATA_DIR_ENV}) at a local copy, or use source: offline (or auto) for the "
                        "generated LongBench-shaped set."
                    ) from e
                if self.offline_name is None:
                    raise UserError(
                        f"task {self.name!r}: {self.hub_repo}/{self.subset} could not be loaded "
                        f"({_short(e)}) and this subset has no offline analogue; remove it, make the hub "
                        f"reachable or point data_dir (or ${DATA_DIR_ENV}) at a local copy"
                    ) from e
                if self.bucket is not None:
                    raise UserError(
                        f"task {self.name!r}: {self.hub_repo}/{self.subset} could not be loaded ({_short(e)}); "
                        "length buckets need the real data (the offline sets have no LongBench lengths): make "
                        f"the hub reachable, point data_dir (or ${DATA_DIR_ENV}) at a local copy, or drop buckets"
                    ) from e
                fallback_reason = f"hub {self.hub_repo}/{self.subset} unavailable: {_short(e)}"
                self._fallback_reason = fallback_reason
                log.warning("task %s: %s; using the offline set %s", self.name, fallback_reason, self.offline_name)
            else:
                samples = [self._from_row(r, i) for i, r in enumerate(rows)]
                if self.bucket is not None:
                    samples = [s for s in samples if s.meta["length_bucket"] == self.bucket]
                for sample in samples:
                    sample.max_new_tokens = self.max_new_tokens
                if self.shuffle:
                    random.Random(f"longbench:{self.subset}:{self.seed}").shuffle(samples)
                self._samples = samples
                order = f", shuffled with seed {self.seed}" if self.shuffle else ""
                part = f", length bucket {self.bucket}" if self.bucket is not None else ""
                self._data_source = f"{where}{part}{order}"
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
        """A sample in LongBench's own prompt: its template cut at the context's end, joined verbatim."""
        hub = self.hub
        assert hub is not None
        answers = row.get("answers") or []
        if isinstance(answers, str):
            answers = [answers]
        length = row.get("length")
        if self.bucket is not None and not isinstance(length, int):
            raise UserError(
                f"task {self.name!r}: row {i} of {self.subset} has no integer 'length' field, which length "
                "buckets need; use LongBench's files as published or drop buckets"
            )
        instruction, context, question = hub.prompt(row)
        meta: dict[str, Any] = {"subset": self.subset, "length": length, "index": i}
        if isinstance(length, int):
            meta["length_bucket"] = length_bucket(length)
        return Sample(
            id=str(row.get("_id") or f"{self.subset}-{i}"),
            instruction=instruction,
            context=context,
            question=question,
            answers=[str(a) for a in answers],
            all_classes=list(row["all_classes"]) if row.get("all_classes") else None,
            meta=meta,
            verbatim=True,
            chat=hub.chat,
        )

    def _spec(self) -> Any:
        """What the loaded samples follow: the offline set's spec when generated, else the real subset's."""
        self._load()
        if self._generated or self.hub is None:
            assert self.offline_name is not None
            return _offline_subsets()[self.offline_name]
        return self.hub

    # -- Task protocol --

    @property
    def metric(self) -> str:
        """The metric of the data in use: LongBench's for real data, the offline set's own when generated."""
        return self._spec().metric

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
        """LongBench scoring: the metric, on the first line only for trec/triviaqa/samsum/lsht; best answer."""
        spec = self._spec()
        if spec.first_line_only:
            prediction = prediction.lstrip("\n").split("\n")[0]
        return metrics.score(spec.metric, prediction, sample)


class LongBenchTaskType(BaseTaskType):
    """``type: longbench``: one task per subset, named ``<name>/<subset>``, from the hub, a local copy or offline.

    With ``buckets: true``, one task per subset and LongBench-E length bucket: ``<name>/<subset>@0-4k``.
    """

    name = "longbench"
    keys = {
        "subsets": Key("list[str]", REQUIRED, unique=True,
                       help="LongBench subset names, e.g. [qasper, passage_retrieval_en], LongBench-E's "
                            "[qasper_e] or offline *_like ones"),
        "source": Key("str", "auto", choices=("auto", "hub", "offline")),
        "context_tokens": Key("int", DEFAULT_CONTEXT_TOKENS, minimum=128),
        "num_samples": Key("int", None, minimum=1, nullable=True),  # offline sets: as many as the limit asks
        "seed": Key("int", default_from="seed"),
        "hub_repo": Key("str", HUB_REPO),
        "shuffle": Key("bool", False),
        "max_new_tokens": MAX_NEW_TOKENS,
        "control": control_key(True),
        # added after records existed: OPTIONAL keeps them out of the entries (and digests) that omit them
        "data_dir": Key("folder", OPTIONAL,
                        help=f"a local copy of LongBench (<subset>.jsonl per subset; default ${DATA_DIR_ENV})"),
        "buckets": Key("bool", OPTIONAL, help="split each subset by LongBench-E's length buckets (0-4k, 4-8k, 8k+)"),
    }

    def check(self, task: dict[str, Any], report: Callable[[str, str], None], ctx: TaskContext) -> None:
        """Every subset must exist and be available from the chosen source (and the local copy, if named)."""
        source = task.get("source", "auto")
        if source == "offline" and task.get("data_dir"):
            report("data_dir", "source is 'offline' (generated data), so data_dir would not be read; use "
                               "source: auto or hub with data_dir, or remove data_dir")
        if task.get("buckets") and source == "offline":
            report("buckets", "length buckets need the real data (the offline sets have no LongBench lengths); "
                              "use source: auto or hub (with the hub or data_dir), or remove buckets")
        local = local_dir(task.get("data_dir")) if source != "offline" else None
        if local is not None and not local[0].is_dir():
            report("data_dir", f"{local[1]} {local[0]}: folder not found")
            local = None
        for i, subset in enumerate(task.get("subsets", [])):
            problem = subset_problem(subset, source)
            if problem:
                report(f"subsets[{i}]", problem)
            elif task.get("buckets") and hub_spec(subset) is None:
                report(f"subsets[{i}]", f"{subset!r} is an offline generated subset: it has no LongBench lengths "
                                        "to bucket; use a real subset name or remove buckets")
            elif local is not None and hub_spec(subset) is not None and local_file(local[0], subset) is None:
                report(f"subsets[{i}]", _missing_file(local[0], local[1], subset))

    def data_version(self, task: dict[str, Any]) -> str:
        """Per subset: the local file and its digest, or the hub dataset and the offline generator that may stand in."""
        from lukv_bench.data.corpus import CORPUS_VERSION
        from lukv_bench.data.longbench import generator_version

        local = local_dir(task.get("data_dir")) if task["source"] != "offline" else None
        parts = []
        for subset in task["subsets"]:
            spec = hub_spec(subset)
            path = local_file(local[0], subset) if local is not None and spec is not None else None
            if path is not None:
                parts.append(f"{subset}: local {path.name} sha256 {_file_digest(path)}")
                continue
            offline = subset if subset in _offline_subsets() else spec.offline if spec else None
            hub = f"hub {task['hub_repo']}/{subset}" if spec is not None and task["source"] != "offline" else None
            gen = generator_version(offline) if offline and task["source"] != "hub" else None
            parts.append(f"{subset}: " + ", ".join(p for p in (hub, gen) if p))
        return "; ".join(parts) + f"; {CORPUS_VERSION}"

    def build(self, task: dict[str, Any], suite: Suite | None, tokenizer: Any = None) -> list[LongBenchTask]:
        """One task per subset (and per length bucket with ``buckets: true``)."""
        buckets: tuple[str | None, ...] = LENGTH_BUCKETS if task.get("buckets") else (None,)
        return [
            LongBenchTask(
                name=f"{task['name']}/{subset}" + (f"@{bucket}" if bucket else ""),
                subset=subset,
                source=task["source"],
                hub_repo=task["hub_repo"],
                seed=task["seed"],
                context_tokens=task["context_tokens"],
                num_samples=task["num_samples"],
                shuffle=task["shuffle"],
                limit=task_limit(task, suite),
                max_new_tokens=task["max_new_tokens"],
                data_dir=task.get("data_dir"),
                bucket=bucket,
            )
            for subset in task["subsets"]
            for bucket in buckets
        ]
