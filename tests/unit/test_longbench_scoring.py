"""LongBench subsets scored as LongBench's eval.py scores them, on rows in the hub's format.

The rows are tests/fixtures/longbench/<subset>.jsonl (fields input, context, answers, length, dataset,
language, all_classes, _id, as in THUDM/LongBench's data.zip), read through ``data_dir``. Every expected
score is worked out by hand from LongBench's metrics.py; the arithmetic is in the comment beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lukv_bench.errors import UserError
from lukv_bench.runtime.prompts import render_prompt
from lukv_bench.tasks import longbench
from lukv_bench.tasks.longbench import LongBenchTask, LongBenchTaskType

FIXTURES = Path(__file__).parents[1] / "fixtures" / "longbench"


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch):
    monkeypatch.delenv(longbench.DATA_DIR_ENV, raising=False)


def _task(subset: str, **kwargs) -> LongBenchTask:
    return LongBenchTask(f"lb/{subset}", subset, source="hub", data_dir=str(FIXTURES), **kwargs)


# LongBench's eval.py dataset2metric, in this package's metric names
DATASET2METRIC = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1", "multifieldqa_zh": "qa_f1_zh",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "dureader": "rouge_zh", "gov_report": "rouge_l",
    "qmsum": "rouge_l", "multi_news": "rouge_l", "vcsum": "rouge_zh", "trec": "classification",
    "triviaqa": "qa_f1", "samsum": "rouge_l", "lsht": "classification", "passage_retrieval_en": "retrieval",
    "passage_count": "count", "passage_retrieval_zh": "retrieval_zh", "lcc": "code_sim_longbench",
    "repobench-p": "code_sim_longbench",
}

CASES = [
    # qa_f1: normalised tokens [lighthouse, keeper]; vs [old, lighthouse, keeper]: P = 2/2, R = 2/3,
    # F1 = 2 * 1 * 2/3 / (5/3) = 0.8; vs [keeper]: P = 1/2, R = 1, F1 = 2/3; the max over answers is 0.8
    ("narrativeqa", 0, "The lighthouse keeper.", 0.8),
    ("qasper", 0, "Unanswerable.", 1.0),  # [unanswerable] vs [unanswerable]
    # [elmo] vs [bert, and, elmo]: P = 1, R = 1/3, F1 = 2 * 1/3 / (4/3) = 0.5
    ("qasper", 1, "ELMo", 0.5),
    # [it, was, founded, in, 1987] vs [1987]: P = 1/5, R = 1, F1 = 2 * 0.2 / 1.2 = 1/3
    ("multifieldqa_en", 0, "It was founded in 1987.", 1 / 3),
    # qa_f1_zh: jieba [北京, ，, 中国] -> normalised, punctuation dropped: [北京, 中国] vs [北京]:
    # P = 1/2, R = 1, F1 = 2 * 0.5 / 1.5 = 2/3
    ("multifieldqa_zh", 0, "北京，中国", 2 / 3),
    # jieba [他, 在, 上海, 工作] vs [上海]: P = 1/4, R = 1, F1 = 2 * 0.25 / 1.25 = 0.4
    ("multifieldqa_zh", 1, "他在上海工作", 0.4),
    ("hotpotqa", 0, "yes", 1.0),  # case and punctuation do not count
    # [miller, versus, california] vs [miller, v, california]: P = R = 2/3, F1 = 2/3
    ("hotpotqa", 1, "Miller versus California", 2 / 3),
    # not a first-line subset: [paris, explanation, capital] ("the" dropped) vs [paris]: P = 1/3, R = 1, F1 = 0.5
    ("2wikimqa", 0, "Paris\nExplanation: the capital", 0.5),
    ("musique", 0, "1998", 0.0),
    # rouge_zh: jieba [我, 喜欢, 音乐] vs [我, 喜欢, 看书] joined by spaces; ROUGE-L (rouge package):
    # n = m = 3 unique words, LCS [我, 喜欢] = 2: P = R = 2/3, F = 2PR/(P+R) = 2/3
    ("dureader", 0, "我喜欢音乐", 2 / 3),
    # rouge_l at summary level: prediction sentences [The agency spent more], [It reported losses];
    # gold [The agency reported losses] (m = 4 unique words). LCS with each prediction sentence:
    # {The, agency} and {reported, losses}, union 4; n = 7 unique prediction words: P = 4/7, R = 4/4,
    # F = 2 * 4/7 / (11/7) = 8/11
    ("gov_report", 0, "The agency spent more. It reported losses.", 8 / 11),
    # case is kept: {the, plan, was, approved} vs {The, plan, was, approved}: LCS 3, P = R = 3/4
    ("qmsum", 0, "the plan was approved", 0.75),
    ("qmsum", 1, "", 0.0),  # nothing to score: LongBench's except branch gives 0
    # words count once: prediction {storm, hits, coast} (storm twice), gold {storm, hits, coast}: LCS 3,
    # P = R = 1
    ("multi_news", 0, "storm storm hits coast", 1.0),
    # jieba [会议, 讨论, 了, 预算] vs [会议, 讨论, 了, 预算, 和, 人员]: LCS 4, P = 4/4, R = 4/6,
    # F = 2 * 2/3 / (5/3) = 0.8
    ("vcsum", 0, "会议讨论了预算", 0.8),
    # classification on the first line only: "City" matches [City] -> 1/1 (the whole text would match
    # [Date, City] -> 1/2)
    ("trec", 0, "City\nDate", 1.0),
    ("trec", 0, "Other location", 0.0),  # matches [Other location], the gold City is not among them
    # first line "Paris" after dropping leading newlines: [paris] vs [paris] -> 1
    ("triviaqa", 0, "\nParis\n\nQuestion: What is the capital of Italy?", 1.0),
    # first line only: {Amanda, baked, cookies} (n = 3) vs 9 unique gold words, LCS 3: P = 1, R = 1/3,
    # F = 2 * 1/3 / (4/3) = 0.5
    ("samsum", 0, "Amanda baked cookies.\nDialogue: more text", 0.5),
    # LongBench's single pass over the matches [体育, 新闻, 体育新闻] (gold 体育新闻): 体育 is a strict
    # substring of the gold and is removed; the loop then passes over 新闻 (it moved into the removed slot),
    # so [新闻, 体育新闻] remain: 1/2
    ("lsht", 0, "体育新闻", 0.5),
    ("passage_count", 0, "There are 4 unique paragraphs out of 10.", 0.5),  # numbers [4, 10]: 1 of 2 right
    ("passage_retrieval_en", 0, "Paragraph 12", 1.0),
    ("passage_retrieval_en", 1, "Paragraph 3, not Paragraph 30", 0.5),  # numbers [3, 30]: 1 of 2
    ("passage_retrieval_zh", 0, "答案是段落5和段落7", 0.5),  # numbers [5, 7]: 1 of 2
    # code_sim_longbench: the first line without ` # //, unstripped: "    return total" (16 chars) vs
    # "return total" (12): fuzz.ratio = round(100 * 2 * 12 / 28) = 86
    ("lcc", 0, "\n    return total\n}", 0.86),
    # a blank line counts: "  " vs "x = 1": SequenceMatcher matches two single spaces, M = 2,
    # ratio = round(100 * 2 * 2 / 7) = 57
    ("lcc", 1, "\n  \nx = 1", 0.57),
    ("repobench-p", 0, "```python\nimport os\n```", 1.0),  # the fenced line is passed over
    ("repobench-p", 1, "half = total // 2", 0.0),  # its only line has "//": nothing left, ratio 0
]


@pytest.mark.parametrize(("subset", "index", "prediction", "expected"), CASES)
def test_subset_scores_as_longbench(subset, index, prediction, expected):
    task = _task(subset)
    samples = list(task.samples())
    assert task.metric == DATASET2METRIC[subset]
    assert task.score(prediction, samples[index]) == pytest.approx(expected, abs=1e-6)


def test_every_subset_has_longbench_metric_and_a_fixture():
    assert {name: spec.metric for name, spec in longbench.HUB_SUBSETS.items()} == DATASET2METRIC
    assert {c[0] for c in CASES} == set(DATASET2METRIC)


def test_offline_fallback_keeps_the_offline_sets_metric(monkeypatch):
    """lcc falls back to lcc_like, which keeps its own code_sim (the main job's records do not change)."""
    import datasets

    def no_hub(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'THUDM/LongBench' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    longbench._UNREACHABLE.clear()
    try:
        task = LongBenchTask("lb/lcc", "lcc", source="auto", context_tokens=300)
        assert task.metric == "code_sim" and task.data_source.startswith("offline")
    finally:
        longbench._UNREACHABLE.clear()


class _ChatTokenizer:
    """Just enough of a tokenizer with a chat template for render_prompt."""

    chat_template = "<user>{content}</user><assistant>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_prompts_are_longbench_templates_verbatim():
    (lcc, _) = _task("lcc").samples()
    context = lcc.context
    # dataset2prompt["lcc"] = "Please complete the code given below. \n{context}Next line of code:\n"
    assert "".join(lcc.blocks()) == f"Please complete the code given below. \n{context}Next line of code:\n"
    (trec,) = _task("trec").samples()
    assert "".join(trec.blocks()) == (
        "Please determine the type of the question below. Here are some examples of questions.\n\n"
        f"{trec.context}\n{trec.question.lstrip(chr(10))}"
    )
    tok = _ChatTokenizer()
    # few-shot and code subsets: no chat template even when the model has one, and no "Answer:" cue added
    head, tail, add_special = render_prompt(tok, trec, chat=True)
    assert head + tail == "".join(trec.blocks()) and add_special
    # the other subsets: the chat template around LongBench's prompt, cut before the question
    (hotpot, _) = _task("hotpotqa").samples()
    head, tail, add_special = render_prompt(tok, hotpot, chat=True)
    assert head.startswith("<user>Answer the question based on the given passages.") and not add_special
    assert tail == (
        "\n\nAnswer the question based on the given passages. Only give me the answer and do not output any "
        "other words.\n\nQuestion: Is the Harbour Light on the north cape?\nAnswer:</user><assistant>"
    )


def test_generation_lengths_and_first_line_rule_are_longbench():
    first_line = {n for n, s in longbench.HUB_SUBSETS.items() if s.first_line_only}
    no_chat = {n for n, s in longbench.HUB_SUBSETS.items() if not s.chat}
    assert first_line == {"trec", "triviaqa", "samsum", "lsht"}
    assert no_chat == {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
    (s, _) = _task("qmsum").samples()
    assert s.max_new_tokens == 512  # dataset2maxlen["qmsum"]


def test_length_buckets_split_longbench_e():
    tasks = LongBenchTaskType().build(
        {"name": "lb", "subsets": ["qasper_e"], "source": "hub", "hub_repo": longbench.HUB_REPO, "seed": 0,
         "context_tokens": 1500, "num_samples": None, "shuffle": False, "max_new_tokens": None,
         "data_dir": str(FIXTURES), "buckets": True},
        None,
    )
    # lengths 3999, 4000, 7999, 8000: under 4000 -> 0-4k, under 8000 -> 4-8k, else 8k+
    got = {t.name: [s.meta["length"] for s in t.samples()] for t in tasks}
    assert got == {"lb/qasper_e@0-4k": [3999], "lb/qasper_e@4-8k": [4000, 7999], "lb/qasper_e@8k+": [8000]}
    assert tasks[0].metric == "qa_f1" and "length bucket 0-4k" in tasks[0].data_source


def test_local_copy_from_the_environment_and_its_digest(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    shutil.copy(FIXTURES / "hotpotqa.jsonl", tmp_path / "data" / "hotpotqa.jsonl")  # data.zip's layout
    monkeypatch.setenv(longbench.DATA_DIR_ENV, str(tmp_path))
    task = LongBenchTask("lb/hotpotqa", "hotpotqa", source="auto")
    assert task.data_source == f"local: {tmp_path / 'data' / 'hotpotqa.jsonl'} ({longbench.DATA_DIR_ENV})"
    entry = {"subsets": ["hotpotqa"], "source": "auto", "hub_repo": longbench.HUB_REPO}
    before = LongBenchTaskType().data_version(entry)
    assert before.startswith("hotpotqa: local hotpotqa.jsonl sha256 ")
    with (tmp_path / "data" / "hotpotqa.jsonl").open("a") as f:
        f.write('{"input": "q", "context": "c", "answers": ["a"], "length": 1}\n')
    assert LongBenchTaskType().data_version(entry) != before  # other data, other records


def test_local_copy_problems_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"data_dir .* has no musique\.jsonl \(nor data/musique\.jsonl\)"):
        list(LongBenchTask("lb/musique", "musique", source="auto", data_dir=str(tmp_path)).samples())
    (tmp_path / "musique.jsonl").write_text('{"input": "q", "context": "c", "answers": ["a"]}\nnot json\n')
    with pytest.raises(UserError, match=r"musique\.jsonl:2: invalid JSON"):
        list(LongBenchTask("lb/musique", "musique", source="auto", data_dir=str(tmp_path)).samples())
    (tmp_path / "musique.jsonl").write_text('["not", "a", "row"]\n')
    with pytest.raises(UserError, match=r"musique\.jsonl:1: expected a LongBench row"):
        list(LongBenchTask("lb/musique", "musique", source="auto", data_dir=str(tmp_path)).samples())
