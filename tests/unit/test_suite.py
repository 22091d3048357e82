"""Suite-file schema: valid files, path resolution, and one test per class of error."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from lukv_bench.config.options import Overrides, builtin_tasks
from lukv_bench.config.suite import Suite, SuiteError, load_suite, suite_from_options
from lukv_bench.errors import UserError

VALID = """\
name: example
model: embedded
policies: [full, snapkv, {name: mixed, scorer: h2o, allocator: layer-uncertainty}]
budgets: [0.1, 0.2, 0.4]
tasks:
  - {name: my-niah, type: jsonl, path: data/niah.jsonl, metric: substring}
  - {name: lb, type: longbench, subsets: [qasper, trec_like], source: auto}
  - {name: ruler, type: lm_eval, tasks: [niah_single_1], max_seq_lengths: [1024]}
  - {name: needle, type: needle, lengths: [512], depths: [0.5], samples_per_cell: 1}
limit: 20
generation: {max_new_tokens: 32, stop: ["\\n\\n"]}
compress: context
chat_template: auto
window: 32
storage: kv
gqa_reduce: mean
seed: 0
device: auto
dtype: float32
threads: 1
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    """Write a suite file and the JSONL file the VALID suite refers to."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "niah.jsonl").write_text(json.dumps({"context": "c", "question": "q", "answers": ["a"]}) + "\n")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problem(tmp_path: Path, text: str) -> str:
    """Load a broken suite and return the error message."""
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_suite(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_valid_suite_loads_with_defaults_and_resolved_paths(tmp_path, monkeypatch):
    path = write(tmp_path, VALID)
    monkeypatch.chdir("/")  # relative paths resolve against the suite's folder, not the cwd
    suite = load_suite(path)
    assert isinstance(suite, Suite)
    assert suite.name == "example" and suite.model == "embedded"
    assert suite.policies[2] == {"name": "mixed", "scorer": "h2o", "allocator": "layer-uncertainty"}
    assert suite.budgets == [0.1, 0.2, 0.4]
    assert suite.tasks[0]["path"] == str((tmp_path / "data" / "niah.jsonl").resolve())
    assert suite.tasks[1]["source"] == "auto" and suite.tasks[1]["seed"] == 0
    assert suite.tasks[3]["lengths"] == [512]  # needle keys pass through
    assert suite.generation.max_new_tokens == 32 and suite.generation.stop == ["\n\n"]
    assert (suite.limit, suite.window, suite.threads, suite.chat_template) == (20, 32, 1, "auto")
    assert suite.where("policies[1]") == f"{path}:3: policies[1]"
    json.dumps(suite.to_dict())  # recordable


def test_minimal_suite_defaults(tmp_path):
    suite = load_suite(
        write(
            tmp_path,
            "name: m\npolicies: [full]\nbudgets: {tokens: [128, 256]}\n"
            "tasks: [{name: t, type: jsonl, path: data/niah.jsonl}]\n",
        )
    )
    assert suite.model == "embedded" and suite.limit is None and suite.threads == 1
    assert suite.budgets == [{"tokens": 128}, {"tokens": 256}]
    assert suite.tasks[0]["metric"] == "substring"
    assert (suite.compress, suite.storage, suite.gqa_reduce, suite.dtype) == ("prompt", "kv", "mean", "float32")


def test_model_folder_resolves_against_suite_folder(tmp_path):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    suite = load_suite(write(tmp_path, VALID.replace("model: embedded", "model: models/tiny")))
    assert suite.model == str((tmp_path / "models" / "tiny").resolve())
    # something that is not a local path stays a hub id
    suite = load_suite(write(tmp_path, VALID.replace("model: embedded", "model: HuggingFaceTB/SmolLM2-135M")))
    assert suite.model == "HuggingFaceTB/SmolLM2-135M"


def test_missing_model_file(tmp_path):
    msg = problem(tmp_path, VALID.replace("model: embedded", "model: weights/m.gguf"))
    assert ":2: model: model path not found" in msg and str(tmp_path / "weights" / "m.gguf") in msg


def test_malformed_yaml_names_file_and_line(tmp_path):
    msg = problem(tmp_path, "name: x\npolicies: [full\nbudgets: [0.1]\n")
    assert "invalid YAML" in msg
    assert ":3:" in msg or ":4:" in msg  # the parser reports where it noticed the missing ']'


def test_unknown_key_suggests_close_match(tmp_path):
    msg = problem(tmp_path, VALID.replace("window: 32", "windw: 32"))
    assert ":14: windw: unknown key 'windw'; did you mean 'window'?" in msg


def test_unknown_task_key_suggests_close_match(tmp_path):
    msg = problem(tmp_path, VALID.replace("path: data/niah.jsonl", "pth: data/niah.jsonl"))
    assert ":6: tasks[0].pth: unknown key 'pth'; did you mean 'path'?" in msg
    assert "tasks[0]: missing required key 'path'" in msg


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("window: 32", "window: many", ":14: window: expected an integer >= 1, got 'many' (str)"),
        ("window: 32", "window: 0", ":14: window: must be >= 1, got 0"),
        ("threads: 1", "threads: true", ":20: threads: expected an integer >= 1 or null"),
        ("limit: 20", "limit: 0", ":10: limit: must be >= 1"),
        ("max_new_tokens: 32", "max_new_tokens: 0", ":11: generation.max_new_tokens: must be >= 1"),
        ("compress: context", "compress: all", ":12: compress: got 'all' (str); allowed: prompt, context"),
        ("storage: kv", "storage: heads", ":15: storage: got 'heads' (str); allowed: kv, query"),
        ("gqa_reduce: mean", "gqa_reduce: min", "gqa_reduce: got 'min' (str); allowed: mean, max, sum"),
        ("dtype: float32", "dtype: fp8", ":19: dtype: got 'fp8' (str); allowed: float32, bfloat16, float16"),
        ("device: auto", "device: tpu", ":18: device: got 'tpu' (str); allowed: auto, cpu, cuda, cuda:N"),
        ("chat_template: auto", "chat_template: maybe", ":13: chat_template: got 'maybe'"),
        ("name: example", "name: [a]", ":1: name: expected a non-empty string"),
        ("policies: [full, snapkv,", "policies: [7, snapkv,", ":3: policies[0]: expected a policy name"),
        ("{name: mixed, scorer", "{nam: mixed, scorer", ":3: policies[2]: a policy map needs a 'name' key"),
        ("type: lm_eval, tasks: [niah_single_1]", "type: lm_eval, tasks: []", ":8: tasks[2].tasks: expected a non"),
        ("max_seq_lengths: [1024]", "max_seq_lengths: [0]", ":8: tasks[2].max_seq_lengths[0]: must be >= 1"),
        ("type: needle", "type: haystack", ":9: tasks[3].type: got 'haystack' (str); allowed: jsonl, longbench"),
        ("metric: substring", "metric: bleu", ":6: tasks[0].metric: got 'bleu' (str); allowed: substring"),
    ],
)
def test_wrong_values_name_key_path_and_line(tmp_path, old, new, expected):
    assert old in VALID
    assert expected in problem(tmp_path, VALID.replace(old, new))


@pytest.mark.parametrize(
    ("budgets", "expected"),
    [
        ("[0.1, 1.5]", "budgets[1]: ratio must be in (0, 1], got 1.5"),
        ("[0, 0.5]", "budgets[0]: ratio must be in (0, 1], got 0"),
        ("[0.1, high]", "budgets[1]: expected a ratio in (0, 1], got 'high' (str)"),
        ("[0.2, 0.2]", "budgets[1]: duplicate budget 0.2"),
        ("[]", "budgets: expected a non-empty list of ratios"),
        ("{tokens: [128, 0]}", "budgets.tokens[1]: must be >= 1, got 0"),
        ("{tokens: 128}", "budgets.tokens: expected a non-empty list of integers"),
        ("{tokns: [128]}", "budgets.tokns: unknown key 'tokns'; did you mean 'tokens'?"),
    ],
)
def test_bad_budgets(tmp_path, budgets, expected):
    msg = problem(tmp_path, VALID.replace("budgets: [0.1, 0.2, 0.4]", f"budgets: {budgets}"))
    assert f":4: {expected}" in msg


def test_needle_entries_are_checked_against_the_needle_schema(tmp_path):
    msg = problem(tmp_path, VALID.replace("samples_per_cell: 1", "sample_per_cell: 1"))
    assert ":9: tasks[3].sample_per_cell: unknown key 'sample_per_cell'; did you mean 'samples_per_cell'?" in msg
    msg = problem(tmp_path, VALID.replace("depths: [0.5]", "depths: [1.5]"))
    assert ":9: tasks[3].depths[0]: must be <= 1, got 1.5" in msg


def test_missing_task_file_names_resolved_path(tmp_path):
    msg = problem(tmp_path, VALID.replace("data/niah.jsonl", "data/missing.jsonl"))
    assert f":6: tasks[0].path: file not found: {(tmp_path / 'data' / 'missing.jsonl').resolve()}" in msg


def test_longbench_subset_errors(tmp_path):
    msg = problem(tmp_path, VALID.replace("subsets: [qasper, trec_like]", "subsets: [qaspr]"))
    assert ":7: tasks[1].subsets[0]: unknown LongBench subset 'qaspr'; did you mean 'qasper'?" in msg
    msg = problem(tmp_path, VALID.replace("source: auto", "source: hub"))
    assert "tasks[1].subsets[1]: 'trec_like' is an offline generated subset, but source is 'hub'" in msg
    msg = problem(tmp_path, VALID.replace("[qasper, trec_like], source: auto", "[gov_report], source: offline"))
    assert "tasks[1].subsets[0]: LongBench subset 'gov_report' has no offline analogue" in msg
    msg = problem(tmp_path, VALID.replace("source: auto", "source: web"))
    assert "tasks[1].source: got 'web' (str); allowed: auto, hub, offline" in msg


def test_missing_required_keys_and_duplicates(tmp_path):
    msg = problem(
        tmp_path,
        "name: x\nname: y\n"
        "tasks: [{name: a, type: jsonl, path: data/niah.jsonl}, {name: a, type: lm_eval, tasks: [t]}]\n",
    )
    assert ":2: name: duplicate key" in msg
    assert "<top level>: missing required key 'policies'" in msg
    assert "<top level>: missing required key 'budgets'" in msg
    assert ":3: tasks[1].name: duplicate task name 'a'" in msg
    assert msg.count("\n") >= 4  # one error, one line per problem


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(tmp_path, VALID.replace("window: 32", "window: 0").replace("seed: 0", "seed: x"))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert len(info.value.problems) == 2


def test_not_a_map_and_empty_file(tmp_path):
    assert "a suite file must be a YAML map" in problem(tmp_path, "- a\n- b\n")
    assert "the suite file is empty" in problem(tmp_path, "\n")
    with pytest.raises(UserError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")


def test_overrides_replace_keys_of_a_suite_file(tmp_path, monkeypatch):
    path = write(tmp_path, VALID)
    (tmp_path / "cwdmodel").mkdir()
    monkeypatch.chdir(tmp_path)
    new = load_suite(path, Overrides(limit=3, model="cwdmodel", policies="snapkv,h2o", budgets="0.3", device="cpu",
                                     dtype="bfloat16", task="passkey"))
    assert new.limit == 3 and all(t["limit"] == 3 for t in new.tasks)
    assert new.model == str((tmp_path / "cwdmodel").resolve())
    assert (new.policies, new.budgets, new.device, new.dtype) == (["snapkv", "h2o"], [0.3], "cpu", "bfloat16")
    assert [(t["name"], t["type"]) for t in new.tasks] == [("passkey", "needle")]
    assert new.where("budgets[0]") == "--budgets: budgets[0]"  # later errors name the option too
    assert new.where("window").startswith(f"{path}:")
    assert load_suite(path) == load_suite(path, Overrides())
    assert load_suite(path, Overrides(limit=3)).window == 32  # the file's other keys stay


def test_a_bad_override_names_its_option_beside_the_files_problems(tmp_path):
    path = write(tmp_path, VALID.replace("window: 32", "window: 0"))
    with pytest.raises(SuiteError) as info:
        load_suite(path, Overrides(budgets="0.1,2,x", model="./nowhere", dtype="float8"))
    problems = info.value.problems
    assert len(problems) == 5, problems
    assert "--budgets: budgets[1]: ratio must be in (0, 1], got 2; for token counts write --budgets tokens:128,256" \
        in problems
    assert any(p.startswith("--budgets: budgets[2]: expected a ratio in (0, 1], got 'x'") for p in problems)
    assert any(p.startswith("--model: model: model path not found") and "nowhere" in p for p in problems)
    assert any(p.startswith("--dtype: dtype: got 'float8'") for p in problems)
    assert any(p.startswith(f"{path}:") and "window" in p for p in problems)


def test_suite_from_options_defaults_and_checks():
    suite = suite_from_options(Overrides(policies="snapkv,layer-uncertainty-plus", budgets="0.1,0.2", task="passkey",
                                         limit=4))
    assert suite.path is None and suite.name == "passkey" and suite.model == "embedded"
    assert suite.policies == ["snapkv", "layer-uncertainty-plus"] and suite.budgets == [0.1, 0.2]
    assert suite.tasks[0]["type"] == "needle" and suite.tasks[0]["limit"] == 4
    default = suite_from_options(Overrides())
    assert (default.policies, default.budgets, default.tasks[0]["name"]) == (["snapkv", "kvzip-plus"],
                                                                            [0.1, 0.2], "passkey")
    assert suite_from_options(Overrides(budgets="tokens:64,128")).budgets == [{"tokens": 64}, {"tokens": 128}]
    with pytest.raises(SuiteError, match="invalid run options") as info:
        suite_from_options(Overrides(budgets="tokens:16"))
    assert info.value.problems[0].startswith("--budgets: budgets.tokens[0]: budget 16 is not above")


def test_compress_option_sets_the_protocol_and_is_checked_like_the_key():
    assert suite_from_options(Overrides(task="multikey", compress="context")).compress == "context"
    with pytest.raises(SuiteError) as info:
        suite_from_options(Overrides(task="multikey", compress="question"))
    assert any(p.startswith("--compress: compress:") and "question" in p for p in info.value.problems)


def test_every_builtin_task_name_makes_a_valid_entry():
    names = ",".join(builtin_tasks())
    suite = suite_from_options(Overrides(task=names))
    assert [t["name"] for t in suite.tasks] == list(builtin_tasks())


def test_task_option_takes_a_jsonl_file_and_refuses_unknown_names(tmp_path, monkeypatch):
    write(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)
    suite = suite_from_options(Overrides(task="data/niah.jsonl"))
    assert suite.tasks[0]["path"] == str(tmp_path / "data" / "niah.jsonl") and suite.name == "niah"
    with pytest.raises(SuiteError) as info:
        suite_from_options(Overrides(task="paskey,nothing-like-this,,data/gone.jsonl"))
    problems = info.value.problems
    assert any(p.startswith("--task: tasks[0]: unknown task 'paskey'") and "did you mean 'passkey'" in p
               for p in problems), problems
    assert any(p.startswith("--task: tasks[1]: unknown task 'nothing-like-this'") for p in problems)
    assert any(p.startswith("--task: tasks[2].name: expected a non-empty string") for p in problems)
    assert any(p.startswith("--task: tasks[3].path: file not found") for p in problems)


def test_policy_names_and_parameters_are_listed_with_the_other_problems(tmp_path):
    text = VALID.replace(
        "policies: [full, snapkv, {name: mixed, scorer: h2o, allocator: layer-uncertainty}]",
        "policies: [full, snapkvv, {name: snapkv, kernel: x, nope: 1}, {name: x, scorer: h2o}, zigzag,\n"
        "  layer-uncertainty]",
    ).replace("window: 32", "window: 0")
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    problems = info.value.problems
    assert len(problems) == 6, problems
    at = {p.split(": ")[1]: p for p in problems if "policies[" in p}
    assert "did you mean 'snapkv'" in at["policies[1]"] and f"{path}:3:" in at["policies[1]"]
    assert sum("policies[2]" in p for p in problems) == 2  # both bad parameters of one entry
    assert any("'kernel' must be an integer" in p for p in problems) and any("'nope'" in p for p in problems)
    assert "needs both a 'scorer' and an 'allocator'" in at["policies[3]"]
    assert at["policies[5]"].startswith(f"{path}:4: policies[5]: policy name 'layer-uncertainty' is already used by "
                                        "policies[4]")
    assert any("window" in p for p in problems)


def test_shipped_suites_validate():
    root = Path(__file__).resolve().parents[2] / "suites"
    for path in sorted(root.glob("*.yaml")):
        suite = load_suite(path)
        assert suite.name == path.stem and suite.model == "embedded"
    lb = load_suite(root / "longbench.yaml")
    from lukv_bench.registry.listing import list_policies

    builtins = {p["name"] for p in list_policies() if p["distribution"] == "lukv-bench"}
    # every built-in, and the recommended default as the proposed policy
    assert lb.budgets == [0.1, 0.2] and set(lb.policies) == builtins and lb.report["proposed"] == "kvzip-plus"
    for path in sorted(root.glob("*.yaml")):  # the recommended default is in every shipped suite
        assert "kvzip-plus" in [p if isinstance(p, str) else p["name"] for p in load_suite(path).policies], path


def test_truncate_setting(tmp_path):
    suite = load_suite(write(tmp_path, VALID))
    assert suite.truncate == "middle" and suite.to_dict()["truncate"] == "middle"
    msg = problem(tmp_path, VALID + "truncate: error\n")  # lm-eval tasks left-truncate: refused while one is here
    assert ":21: truncate: 'error' does not apply to tasks[2] (lm_eval task 'ruler')" in msg
    ruler = "  - {name: ruler, type: lm_eval, tasks: [niah_single_1], max_seq_lengths: [1024]}\n"
    no_lm_eval = VALID.replace(ruler, "")
    suite = load_suite(write(tmp_path, no_lm_eval + "truncate: error\n"))
    assert suite.truncate == "error" and suite.where("truncate").endswith(":20: truncate")
    msg = problem(tmp_path, no_lm_eval + "truncate: start\n")
    assert ":20: truncate: got 'start' (str); allowed: middle, error, none" in msg


def test_token_budgets_must_exceed_the_window(tmp_path):
    text = VALID.replace("budgets: [0.1, 0.2, 0.4]", "budgets: {tokens: [8, 16, 64]}")
    text = text.replace("window: 32", "window: 16")
    msg = problem(tmp_path, text)
    assert ":4: budgets.tokens[0]: budget 8 is not above the observation window (16)" in msg
    assert ":4: budgets.tokens[1]: budget 16 is not above" in msg and "tokens[2]" not in msg
    suite = load_suite(write(tmp_path, text.replace("window: 16", "window: 4")))
    assert suite.budgets == [{"tokens": 8}, {"tokens": 16}, {"tokens": 64}]
    # without a window key the default (32) applies; a broken window reports only the window
    assert "observation window (32)" in problem(tmp_path, text.replace("window: 16\n", ""))
    msg = problem(tmp_path, text.replace("window: 16", "window: 0"))
    assert "window: must be >= 1" in msg and "observation window" not in msg


def test_budget_warning_for_ratios_resolving_to_the_window(tmp_path):
    suite = load_suite(write(tmp_path, VALID))  # window 32
    assert "at or below the observation window (32)" in suite.budget_warning(32, 1000)
    assert suite.budget_warning(33, 1000) is None
    assert suite.budget_warning(500, 400) is None  # the whole context is kept: FullKV, not "the last B"
    assert "no policy evicts anything" in suite.budget_warning(20, 20)  # a context no longer than the window


def test_task_max_new_tokens(tmp_path):
    text = VALID.replace("metric: substring}", "metric: substring, max_new_tokens: 8}")
    suite = load_suite(write(tmp_path, text))
    assert suite.tasks[0]["max_new_tokens"] == 8 and suite.tasks[1]["max_new_tokens"] is None
    msg = problem(tmp_path, VALID.replace("metric: substring}", "metric: substring, max_new_tokens: 0}"))
    assert ":6: tasks[0].max_new_tokens: must be >= 1, got 0" in msg
    msg = problem(tmp_path, VALID.replace("max_seq_lengths: [1024]}", "max_seq_lengths: [1024], max_new_tokens: 8}"))
    assert ":8: tasks[2].max_new_tokens: unknown key 'max_new_tokens'" in msg  # lm-eval sets its own
    msg = problem(tmp_path, VALID.replace("samples_per_cell: 1}", "samples_per_cell: 1, max_new_tokens: -2}"))
    assert ":9: tasks[3].max_new_tokens: must be >= 1, got -2" in msg
    assert msg.count("must be") == 1  # reported once: the needle task does not check it again


def test_needle_settings_it_ignored_are_refused(tmp_path):
    msg = problem(tmp_path, VALID.replace("samples_per_cell: 1}", "samples_per_cell: 1, compress: context}"))
    assert ":9: tasks[3].compress: is a suite-level setting" in msg
    msg = problem(tmp_path, VALID.replace("samples_per_cell: 1}", "samples_per_cell: 1, metric: qa_f1}"))
    assert ":9: tasks[3].metric: cannot be set: the needle task is scored by whether the pass key appears" in msg


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", ": the file is empty"),
        (b'{"context": "c", "question": "q"}\n', ":1: missing field(s) answers"),
        (b'{"context": "c", "question": "q", "answers": ["a"]}\n{oops\n', ":2: invalid JSON"),
        (b'\xef\xbb\xbf{"context": "c", "question": "q", "answers": ["a"]}\n', ":1: the file starts with a UTF-8"),
        (b'{"context": "\xff", "question": "q", "answers": ["a"]}\n', ":1: not UTF-8 text"),
    ],
)
def test_jsonl_data_is_checked_when_the_suite_loads(tmp_path, data, expected):
    path = write(tmp_path, VALID)
    (tmp_path / "data" / "niah.jsonl").write_bytes(data)
    with pytest.raises(UserError) as info:
        load_suite(path)
    data_file = (tmp_path / "data" / "niah.jsonl").resolve()
    assert f"{path}:6: tasks[0].path: {data_file}{expected}" in str(info.value)
