"""Task loaders: JSONL, LongBench (hub path simulated, offline fallback), the offline generator."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lukv_bench.data import longbench_offline as gen
from lukv_bench.errors import UserError
from lukv_bench.suite import load_suite
from lukv_bench.tasks import LmEvalTaskConfig, Task, build_task, build_tasks, expand_task, longbench
from lukv_bench.tasks.jsonl import JsonlTask, load_jsonl
from lukv_bench.tasks.longbench import LongBenchTask

ROWS = [
    {"id": "a", "context": "The key is 7.", "question": "Key?", "answers": ["7"]},
    {"id": "b", "context": "Sky is blue.", "question": "Colour?", "answers": "blue", "source": "x"},
]


def write_jsonl(path: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("\n".join([*(json.dumps(r) for r in rows), *extra_lines]) + "\n")
    return path


# --- jsonl ---------------------------------------------------------------------------------------


def test_jsonl_task_loads_and_scores(tmp_path):
    task = JsonlTask("t", write_jsonl(tmp_path / "t.jsonl", ROWS), metric="substring", limit=1)
    assert isinstance(task, Task)
    samples = list(task.samples())
    assert [s.id for s in samples] == ["a", "b"] and samples[1].answers == ["blue"]
    assert samples[1].meta["source"] == "x" and samples[1].meta["line"] == 2
    assert [s.id for s in task.samples(1)] == ["a"]
    assert task.score("It is 7", samples[0]) == 1.0 and task.score("8", samples[0]) == 0.0
    assert str(tmp_path / "t.jsonl") in task.data_source


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "invalid JSON"),
        ('{"context": "c", "question": "q"}', "missing field(s) answers"),
        ('{"context": "c", "question": "q", "answers": []}', "'answers' must be a non-empty list"),
        ('{"context": 3, "question": "q", "answers": ["a"]}', "field 'context' must be a string"),
        ('{"id": "a", "context": "c", "question": "q", "answers": ["a"]}', "duplicate id 'a' (first on line 1)"),
        ("[1, 2]", "expected a JSON object per line"),
    ],
)
def test_jsonl_bad_row_names_file_and_line(tmp_path, line, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", ROWS, ("", line))  # a blank line, then the bad row (line 4)
    with pytest.raises(UserError) as info:
        load_jsonl(path)
    assert f"{path}:4: " in str(info.value) and expected in str(info.value)


def test_jsonl_missing_file_and_classification_classes(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "nope.jsonl"))):
        JsonlTask("t", tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=":1: the classification metric needs 'all_classes'"):
        JsonlTask("t", write_jsonl(tmp_path / "t.jsonl", ROWS), metric="classification")


def test_build_from_suite_resolves_relative_paths(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "t.jsonl", ROWS)
    (tmp_path / "s.yaml").write_text(
        "name: s\npolicies: [full]\nbudgets: [0.5]\nlimit: 1\nseed: 3\ntasks:\n"
        "  - {name: mine, type: jsonl, path: data/t.jsonl, shuffle: true}\n"
        "  - {name: lb, type: longbench, source: offline, subsets: [count_like_is_wrong]}\n"
    )
    with pytest.raises(UserError, match="unknown LongBench subset"):
        load_suite(tmp_path / "s.yaml")
    text = (tmp_path / "s.yaml").read_text().replace("count_like_is_wrong", "passage_count, lcc_like")
    text += "  - {name: ruler, type: lm_eval, tasks: [niah_single_1], max_seq_lengths: [512], limit: 4}\n"
    text += "  - {name: needle, type: needle, lengths: [300], depths: [0.5]}\n"
    (tmp_path / "s.yaml").write_text(text)
    monkeypatch.chdir("/")
    suite = load_suite(tmp_path / "s.yaml")
    tasks = build_tasks(suite)
    assert [t.name for t in tasks] == ["mine", "lb/passage_count", "lb/lcc_like", "ruler", "needle"]
    assert tasks[4].limit == 1 and len(list(tasks[4].samples(tasks[4].limit))) == 1
    assert tasks[0].limit == 1 and "shuffled with seed 3" in tasks[0].data_source
    assert tasks[1].metric == "count" and tasks[2].metric == "code_sim"
    assert "imitating LongBench 'passage_count'" in tasks[1].data_source and "seed 3" in tasks[1].data_source
    cfg = tasks[3]
    assert isinstance(cfg, LmEvalTaskConfig) and cfg.limit == 4 and cfg.lm_eval_metadata() == {"max_seq_lengths": [512]}
    with pytest.raises(UserError, match="stands for 2 tasks"):
        build_task(suite.tasks[1], suite)
    with pytest.raises(UserError, match="unknown task type"):
        expand_task({"name": "x", "type": "csv"})


# --- offline generator -----------------------------------------------------------------------------

N = 4
TOKENS = 700


@pytest.fixture(scope="module")
def generated() -> dict[str, list]:
    return {name: gen.generate(name, N, seed=1, context_tokens=TOKENS) for name in gen.OFFLINE_SUBSETS}


def test_generator_is_deterministic_and_prefix_stable(generated):
    for name, samples in generated.items():
        assert gen.generate(name, N, seed=1, context_tokens=TOKENS) == samples, name
        assert gen.generate(name, 2, seed=1, context_tokens=TOKENS) == samples[:2], name
        assert gen.generate(name, N, seed=2, context_tokens=TOKENS) != samples, name
        assert len({s.id for s in samples}) == N


def test_generated_contexts_have_about_the_target_length(generated):
    for name, samples in generated.items():
        lengths = [len(s.context) / gen.CHARS_PER_TOKEN for s in samples]
        assert max(lengths) < 1.6 * TOKENS, name
        if name != "qasper_like":  # a single document may be shorter than the target
            assert min(lengths) > 0.5 * TOKENS, name


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_qasper_like_answerable(generated):
    for s in generated["qasper_like"]:
        sentence, word = s.meta["sentence"], s.answers[0]
        assert sentence in _flat(s.context)
        blanked = re.search(r'sentence of the document: "(.*)" Which word', s.question, re.S).group(1)
        assert blanked.replace("____", word) == sentence
        # the gap is recoverable: one place in the context matches the sentence around the gap
        before, after = blanked.split("____")
        assert len(re.findall(re.escape(before) + r"\S+" + re.escape(after), _flat(s.context))) == 1


def test_hotpotqa_like_answerable(generated):
    for s in generated["hotpotqa_like"]:
        passages = re.split(r"(?:^|\n\n)Passage \d+:\n", s.context)[1:]
        definers = [p for p in passages if re.search(rf"^\s+{re.escape(s.meta['symbol'])}\s+::=", p, re.M)]
        assert len(definers) == 1
        assert definers[0].split("\n", 1)[0] == s.answers[0]
        assert passages.index(definers[0]) + 1 == s.meta["passage"]


def test_triviaqa_like_answerable(generated):
    for s in generated["triviaqa_like"]:
        last_passage = s.context.rsplit("Passage: ", 1)[1]
        assert s.meta["sentence"] in last_passage
        assert s.answers[0] in s.meta["sentence"]
        assert s.context.count("Answer: ") >= 1  # few-shot examples precede it


def test_trec_like_answerable(generated):
    for s in generated["trec_like"]:
        assert s.answers[0] in s.all_classes
        assert f"Snippet: {s.meta['support']}\nChapter: {s.answers[0]}" in s.context
        query = s.question.removeprefix("Snippet: ").removesuffix("\nChapter:")
        assert query not in s.context
        assert s.answers[0] == gen.CHAPTERS[s.meta["topic"]]


def test_passage_retrieval_like_answerable(generated):
    for s in generated["passage_retrieval_en_like"]:
        paragraphs = re.findall(r"^Paragraph (\d+): (.*)$", s.context, re.M)
        holding = [k for k, text in paragraphs if s.meta["excerpt"] in text]
        assert [f"Paragraph {k}" for k in holding] == s.answers
        assert len(paragraphs) == s.meta["n_paragraphs"]


def test_passage_count_like_answerable(generated):
    for s in generated["passage_count_like"]:
        paragraphs = re.findall(r"^Paragraph \d+: (.*)$", s.context, re.M)
        assert len(paragraphs) == s.meta["n_paragraphs"]
        assert len(set(paragraphs)) == int(s.answers[0])
        assert max(Counter(paragraphs).values()) >= 1


def test_lcc_like_answer_is_the_next_real_line(generated):
    for s in generated["lcc_like"]:
        lines = gen.stdlib_file(s.meta["file"].removeprefix("Lib/")).read_text(encoding="utf-8").split("\n")
        assert lines[s.meta["line"] - 1].strip() == s.answers[0]
        assert s.context == "\n".join(lines[s.meta["first_line"] - 1 : s.meta["line"] - 1]) + "\n"


def test_generated_samples_score_their_own_answers(generated):
    for name, samples in generated.items():
        metric = gen.OFFLINE_SUBSETS[name].metric
        task = LongBenchTask("lb", name, source="offline", seed=1, context_tokens=TOKENS, num_samples=N)
        assert task.metric == metric
        for s in samples:
            assert task.score(s.answers[0], s) == pytest.approx(1.0), name


# --- LongBench hub / fallback ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_hub_state():
    """Forget hubs found unreachable by earlier tests."""
    longbench._UNREACHABLE.clear()
    yield
    longbench._UNREACHABLE.clear()


def _no_hub(*args, **kwargs):
    raise ConnectionError("Couldn't reach 'THUDM/LongBench' on the Hub (LocalEntryNotFoundError)")


def test_auto_falls_back_to_offline_and_says_so(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _no_hub)
    task = LongBenchTask("lb/qasper", "qasper", source="auto", context_tokens=400)
    samples = list(task.samples(2))
    assert len(samples) == 2 and samples[0].meta["subset"] == "qasper_like"
    assert task.data_source.startswith("offline LongBench-shaped set 'qasper_like' imitating LongBench 'qasper'")
    assert "hub THUDM/LongBench/qasper unavailable: ConnectionError" in task.data_source
    assert len(list(task.samples(25))) == 25  # grows on demand (prefix-stable)
    assert list(task.samples(2)) == samples
    # the next subset does not wait for the hub again, and still says why it is offline
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a))
    other = LongBenchTask("lb/lcc", "lcc", source="auto", context_tokens=400)
    assert "hub THUDM/LongBench/lcc unavailable: ConnectionError" in other.data_source and calls == []


def test_hub_source_without_hub_is_a_user_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _no_hub)
    with pytest.raises(UserError, match="source is 'hub' but THUDM/LongBench/qasper could not be loaded"):
        list(LongBenchTask("lb", "qasper", source="hub").samples(1))
    with pytest.raises(UserError, match="has no offline analogue"):
        list(LongBenchTask("lb", "gov_report", source="auto").samples(1))


def test_hub_rows_become_samples(monkeypatch):
    import datasets

    calls = []

    def fake(repo, name, split):
        calls.append((repo, name, split))
        return [
            {
                "_id": "x1",
                "input": "What is 2+2?",
                "context": "Examples...",
                "answers": ["Number"],
                "all_classes": ["Number", "Location"],
                "length": 10,
            }
        ]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    task = LongBenchTask("lb/trec", "trec", source="auto")
    (s,) = task.samples()
    assert calls == [("THUDM/LongBench", "trec", "test")]
    assert task.data_source == "hub: THUDM/LongBench/trec (split test)"
    assert s.id == "x1" and s.question == "What is 2+2?" and s.all_classes == ["Number", "Location"]
    assert task.metric == "classification"
    assert task.score("Number\nLocation is wrong", s) == 1.0  # LongBench scores trec's first line only
