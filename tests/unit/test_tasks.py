"""Task loaders: JSONL, LongBench (hub path simulated, offline fallback), the offline generator."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lukv_bench.config.suite import load_suite
from lukv_bench.data import longbench as gen
from lukv_bench.errors import UserError
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


def test_hotpotqa_like_answerable(generated):
    for s in generated["hotpotqa_like"]:
        passages = re.split(r"(?:^|\n\n)Passage \d+:\n", s.context)[1:]
        holding = [p for p in passages if s.answers[0] in p]
        assert len(holding) == 1 and holding[0].split("\n", 1)[0] == s.meta["organisation"]
        assert passages.index(holding[0]) + 1 == s.meta["passage"]


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


def test_lcc_like_answer_is_the_next_line_and_copies_the_context(generated):
    for s in generated["lcc_like"]:
        assert s.question.rstrip().endswith('"""') and f"reopen_{s.meta['service']}(" in s.question
        assert f"    {s.answers[0]}" in s.context and s.answers[0] not in s.question


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
    # LongBench's trec template: "...examples of questions.\n\n{context}\n{input}", cut at the context's end
    assert s.id == "x1" and s.question == "\nWhat is 2+2?" and s.all_classes == ["Number", "Location"]
    assert task.metric == "classification"
    assert task.score("Number\nLocation is wrong", s) == 1.0  # LongBench scores trec's first line only


# LongBench's dataset2maxlen (THUDM/LongBench config/dataset2maxlen.json)
LONGBENCH_MAXLEN = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64, "hotpotqa": 32,
    "2wikimqa": 32, "musique": 32, "dureader": 128, "gov_report": 512, "qmsum": 512, "multi_news": 512,
    "vcsum": 512, "trec": 64, "triviaqa": 32, "samsum": 128, "lsht": 64, "passage_count": 32,
    "passage_retrieval_en": 32, "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64,
}


def test_hub_subsets_generate_longbench_lengths(monkeypatch):
    import datasets

    assert {name: s.max_new_tokens for name, s in longbench.HUB_SUBSETS.items()} == LONGBENCH_MAXLEN
    row = {"_id": "r", "input": "q", "context": "c", "answers": ["a"], "length": 1}
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, name, split: [row])
    for subset in ("gov_report", "samsum", "hotpotqa"):
        (s,) = LongBenchTask(f"lb/{subset}", subset, source="hub").samples()
        assert s.max_new_tokens == LONGBENCH_MAXLEN[subset], subset
    (s,) = LongBenchTask("lb/gov_report", "gov_report", source="hub", max_new_tokens=40).samples()
    assert s.max_new_tokens == 40  # the suite task's max_new_tokens wins


def test_offline_subsets_generate_the_imitated_lengths_and_suite_overrides(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: s\npolicies: [full]\nbudgets: [0.5]\nlimit: 1\ngeneration: {max_new_tokens: 9}\ntasks:\n"
        "  - {name: lb, type: longbench, source: offline, subsets: [qasper, lcc_like], context_tokens: 300}\n"
        "  - {name: lb2, type: longbench, source: offline, subsets: [hotpotqa], context_tokens: 300,"
        " max_new_tokens: 5}\n"
        "  - {name: mine, type: jsonl, path: t.jsonl}\n"
        "  - {name: mine2, type: jsonl, path: t.jsonl, max_new_tokens: 3}\n"
        "  - {name: nd, type: needle, lengths: [200], depths: [0.5], max_new_tokens: 11}\n"
    )
    write_jsonl(tmp_path / "t.jsonl", ROWS)
    tasks = build_tasks(load_suite(tmp_path / "s.yaml"))
    lengths = {t.name: {s.max_new_tokens for s in t.samples(t.limit)} for t in tasks}
    assert lengths == {
        "lb/qasper": {128}, "lb/lcc_like": {64}, "lb2/hotpotqa": {5},
        "mine": {None}, "mine2": {3}, "nd": {11},  # None: the suite's generation.max_new_tokens (9)
    }
    assert {o.imitates: o.max_new_tokens for o in gen.OFFLINE_SUBSETS.values()} == {
        o.imitates: LONGBENCH_MAXLEN[o.imitates] for o in gen.OFFLINE_SUBSETS.values()
    }


def test_jsonl_file_problems_name_file_and_line(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    with pytest.raises(UserError, match=re.escape(f"{bom}:1: the file starts with a UTF-8 byte-order mark")):
        load_jsonl(bom)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(ROWS[0]).encode() + b'\n\n{"context": "na\xefve"}\n')
    with pytest.raises(UserError, match=re.escape(f"{latin}:3: not UTF-8 text (byte 0xef at column 16)")):
        load_jsonl(latin)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match=re.escape(f"{empty}: the file is empty")):
        load_jsonl(empty)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path}: is a folder")):
        load_jsonl(tmp_path)


# --- prompts: fitting into the model's positions ----------------------------------------------------


def _ids(n_context: int, n_question: int):
    from lukv_bench.runtime.prompts import PromptIds

    return PromptIds(context=list(range(n_context)), question=list(range(1000, 1000 + n_question)))


def test_fit_prompt_middle_keeps_both_ends_and_the_question():
    from lukv_bench.runtime.prompts import fit_prompt

    ids = _ids(100, 10)
    fitted, original, used = fit_prompt(ids, max_positions=60, max_new_tokens=10, mode="middle")
    assert (original, used) == (110, 50) and len(fitted.full) == 50
    assert fitted.question == ids.question  # never cut
    assert fitted.context == list(range(25)) + list(range(85, 100))  # first 25 and last 25 of the 50 allowed
    # a question longer than half of the allowed tokens keeps it whole and takes the room from the start
    fitted, _, used = fit_prompt(_ids(100, 30), max_positions=60, max_new_tokens=10)
    assert used == 50 and fitted.context == list(range(20)) and len(fitted.question) == 30


def test_fit_prompt_leaves_prompts_that_fit_and_unknown_limits():
    from lukv_bench.runtime.prompts import DEFAULT_TRUNCATE, fit_prompt

    ids = _ids(40, 10)
    assert DEFAULT_TRUNCATE == "middle"
    for mode in ("middle", "error", "none"):
        assert fit_prompt(ids, 60, 10, mode) == (ids, 50, 50)  # exactly fits: generation room counted
        assert fit_prompt(ids, None, 10, mode) == (ids, 50, 50)
    too_long = _ids(100, 10)
    assert fit_prompt(too_long, 60, 10, "none") == (too_long, 110, 110)


def test_fit_prompt_error_names_task_sample_lengths_and_fix():
    from lukv_bench.runtime.prompts import fit_prompt

    with pytest.raises(UserError) as info:
        fit_prompt(_ids(100, 10), 60, 10, "error", task="lb/qasper", sample_id="s7", where="suite.yaml:9: truncate")
    msg = str(info.value)
    for part in ("suite.yaml:9: truncate: ", "task 'lb/qasper'", "sample 's7'", "110 tokens", "60 positions",
                 "10 tokens of generation room", "leave 50", "truncate: middle"):
        assert part in msg, (part, msg)
    # no room for any context: refused even under middle
    with pytest.raises(UserError, match="no context fits"):
        fit_prompt(_ids(100, 55), 60, 10, "middle", task="t", sample_id="s")
    with pytest.raises(UserError, match="truncate must be one of middle, error, none"):
        fit_prompt(_ids(1, 1), 60, 10, "left")


def test_fit_prompt_on_a_real_prompt_keeps_instruction_and_question():
    from lukv_bench.runtime.prompts import build_prompt, fit_prompt
    from lukv_bench.sample import Sample
    from lukv_bench.testing import byte_tokenizer

    tok = byte_tokenizer()
    sample = Sample(id="x", context="".join(f"<{i:04d}>" for i in range(400)), question="Which number?",
                    answers=["1"], instruction="Read this.")
    ids = build_prompt(tok, sample, chat=False)
    fitted, original, used = fit_prompt(ids, max_positions=1024, max_new_tokens=24)
    assert original == len(ids.full) > 1000 and used == len(fitted.full) == 1000
    text = tok.decode(fitted.full)
    assert text.startswith("Read this.\n\n<0000>") and text.endswith("<0399>\n\nWhich number?\nAnswer:")
    assert "<0200>" not in text  # the middle went


def test_model_max_positions():
    from types import SimpleNamespace

    from lukv_bench.runtime.prompts import model_max_positions
    from lukv_bench.testing import tiny_model

    assert model_max_positions(tiny_model(n_layers=1).config) == 4096
    assert model_max_positions(SimpleNamespace(n_positions=1024)) == 1024
    assert model_max_positions(SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=8192))) == 8192
    assert model_max_positions(SimpleNamespace()) is None
