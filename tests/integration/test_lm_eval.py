"""lm-eval integration on the tiny random model: exactness, shared prefill, records and resume.

Local lm-eval tasks are built from a YAML and a small JSONL in ``tmp_path`` (no hub, no built-in
task index). The tiny model has random weights and a byte tokenizer, so scores are meaningless;
what is checked is that the numbers equal an uncompressed computation and that the bookkeeping
(one prefill per shared context, one record per (doc, policy, budget), resume) is right.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from support import MC_YAML, TINY

from lukv_bench.config.suite import load_suite  # noqa: E402
from lukv_bench.registry import resolve_policy  # noqa: E402
from lukv_bench.run.executors import LocalExecutor  # noqa: E402
from lukv_bench.run.results import read_records  # noqa: E402
from lukv_bench.run.runner import Runner  # noqa: E402
from lukv_bench.runtime.engine import Engine  # noqa: E402
from lukv_bench.tasks.lm_eval.logged import sample_score  # noqa: E402
from lukv_bench.tasks.lm_eval.model import LukvEvalLM  # noqa: E402

MC_DOCS = [
    {"question": "Question: what colour is the sky on a clear day at noon?\nAnswer:",
     "choices": ["blue", "green", "red"], "label": 0},
    {"question": "Question: how many legs does a spider have, counting all of them?\nAnswer:",
     "choices": ["six", "eight", "ten", "four"], "label": 1},
    {"question": "Question: which one of these is a prime number, if any?\nAnswer:",
     "choices": ["nine", "seven"], "label": 1},
]
GEN_DOCS = [
    {"prompt": "The pass key is 4821. Remember it. Some filler text follows here. The pass key is", "answer": "4821"},
    {"prompt": "Alice lives in Paris and Bob lives in Rome. More filler text here. Bob lives in", "answer": "Rome"},
]

GEN_YAML = """task: lukv_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the two task YAMLs; data_files are absolute (lm-eval resolves them against the CWD)."""
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    for name, docs, yaml in (("mc", MC_DOCS, MC_YAML), ("gen", GEN_DOCS, GEN_YAML)):
        data = d / f"{name}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
        (d / f"{name}.yaml").write_text(yaml.format(path=json.dumps(str(data.resolve()))))
    return d


@pytest.fixture(scope="module")
def engine(tiny: Any) -> Engine:
    """An engine over the session's tiny model."""
    return Engine(tiny.model, tiny.tokenizer)


@pytest.fixture
def prefills(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Engine.prefill calls (the prompt length of each)."""
    calls: list[int] = []
    real = Engine.prefill

    def counting(self: Engine, input_ids: torch.Tensor, needs: Any = ()) -> Any:
        calls.append(int(input_ids.shape[1]))
        return real(self, input_ids, needs)

    monkeypatch.setattr(Engine, "prefill", counting)
    return calls


def _settings(full_only_budget: float = 1.0, budget: Any = 1.0) -> tuple[list[tuple[Any, Any]], Any]:
    full = resolve_policy("full")
    return [(full, full_only_budget), (resolve_policy("snapkv"), budget),
            (resolve_policy("layer-uncertainty"), budget)], full


def _reference_loglik(model: torch.nn.Module, tok: Any, context: str, continuation: str) -> float:
    """Sum of log-softmax of the continuation tokens from one plain forward over context + continuation."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float()
    logp = torch.log_softmax(logits[len(ctx) - 1 : len(whole) - 1], -1)
    return float(logp.gather(1, torch.tensor(whole[len(ctx):])[:, None]).sum())


def _ll_requests(docs: list[dict[str, Any]]) -> list[Instance]:
    reqs = []
    for d, doc in enumerate(docs):
        for i, choice in enumerate(doc["choices"]):
            reqs.append(Instance("loglikelihood", doc, (doc["question"], " " + choice), i,
                                 metadata=("lukv_mc", d, 1)))
    return reqs


def test_loglikelihood_at_full_budget_matches_plain_forward(engine: Engine, prefills: list[int]) -> None:
    settings, full = _settings(budget=1.0)
    lm = LukvEvalLM(engine, settings, full, chat=False)
    reqs = _ll_requests(MC_DOCS)
    per_setting = [lm.use(i).loglikelihood(reqs) for i in range(len(settings))]
    assert len(prefills) == len(MC_DOCS)  # one prefill per shared context, reused by every setting
    for r, *answers in zip(reqs, *per_setting):
        want = _reference_loglik(engine.model, engine.tokenizer, *r.args)
        for got, _greedy in answers:
            assert got == pytest.approx(want, abs=1e-4)


def test_loglikelihood_compressed_differs_and_keeps_fewer_tokens(engine: Engine) -> None:
    settings, full = _settings(budget=0.3)
    lm = LukvEvalLM(engine, settings, full, chat=False)
    reqs = _ll_requests(MC_DOCS[:1])
    full_ll = [a for a, _ in lm.use(0).loglikelihood(reqs)]
    comp_ll = [a for a, _ in lm.use(1).loglikelihood(reqs)]
    assert full_ll != pytest.approx(comp_ll, abs=1e-6)
    st = lm.doc_answers("lukv_mc", 0)
    assert st is not None
    comp = [a.outcome.compressed for a in st]
    assert comp[1].kv_bytes < comp[0].kv_bytes == comp[0].kv_bytes_full


def test_single_token_choices_feel_the_compression(engine: Engine) -> None:
    """One-token answers (letters) are scored after the uncompressed tail, so a small budget shows.

    With no tail, the first continuation token would come from the uncompressed prefill and every
    single-token log-likelihood would equal FullKV's at any budget: the flaw this protocol fixes.
    """
    full = resolve_policy("full")
    settings = [(full, 1.0), (resolve_policy("snapkv"), 0.1), (resolve_policy("streaming"), 0.1)]
    context = "Some facts: the river is long, the hill is green, the sky is wide. " * 4 + "Pick one.\nAnswer:"
    reqs = [Instance("loglikelihood", {}, (context, letter), i, metadata=("mc1", 0, 1))
            for i, letter in enumerate("ABCD")]
    assert all(len(engine.tokenizer(r.args[1], add_special_tokens=False)["input_ids"]) == 1 for r in reqs)
    lm = LukvEvalLM(engine, settings, full, chat=False, tail=8)
    full_ll = [a for a, _ in lm.use(0).loglikelihood(reqs)]
    for i in (1, 2):
        compressed = [a for a, _ in lm.use(i).loglikelihood(reqs)]
        assert max(abs(a - b) for a, b in zip(full_ll, compressed)) > 1e-4, settings[i][0].name
    # FullKV in this protocol equals one plain forward over the whole request
    for r, got in zip(reqs, full_ll):
        assert got == pytest.approx(_reference_loglik(engine.model, engine.tokenizer, *r.args), abs=1e-4)
    no_tail = LukvEvalLM(engine, settings, full, chat=False, tail=0)
    flat = [[a for a, _ in no_tail.use(i).loglikelihood(reqs)] for i in range(3)]
    assert flat[1] == pytest.approx(flat[0], abs=1e-6) and flat[2] == pytest.approx(flat[0], abs=1e-6)


def test_loglikelihood_rolling_matches_uncompressed(engine: Engine) -> None:
    settings, full = _settings(budget=0.3)
    tok = engine.tokenizer
    text = "A short document whose perplexity is computed without any eviction at all."
    req = Instance("loglikelihood_rolling", {}, (text,), 0, metadata=("roll", 0, 1))
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = engine.model(torch.tensor([ids])).logits[0].float()
    want = float(torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None]).sum())
    lm = LukvEvalLM(engine, settings, full, chat=False)
    assert lm.use(1).loglikelihood_rolling([req])[0] == pytest.approx(want, abs=1e-4)
    # windows shorter than the document: each window scored from scratch, one token of overlap
    win = 16
    short = LukvEvalLM(engine, settings, full, chat=False, max_length=win)
    want_win = 0.0
    for start in range(1, len(ids), win):
        chunk = ids[start - 1 : start + win - 1]
        with torch.no_grad():
            lg = engine.model(torch.tensor([chunk])).logits[0].float()
        target = torch.tensor(ids[start : start + win])
        want_win += float(torch.log_softmax(lg[: len(target)], -1).gather(1, target[:, None]).sum())
    assert short.loglikelihood_rolling([req])[0] == pytest.approx(want_win, abs=1e-4)


def test_generate_until_stops_and_shares_prefill(engine: Engine, prefills: list[int]) -> None:
    settings, full = _settings(budget=0.5)
    lm = LukvEvalLM(engine, settings, full, chat=False)
    reqs = [Instance("generate_until", doc, (doc["prompt"], {"until": ["\n"], "max_gen_toks": 5}), 0,
                     metadata=("lukv_gen", d, 1)) for d, doc in enumerate(GEN_DOCS)]
    outs = [lm.use(i).generate_until(reqs) for i in range(len(settings))]
    assert len(prefills) == len(GEN_DOCS)
    for per_setting in outs:
        assert all(isinstance(t, str) and "\n" not in t for t in per_setting)
    st = lm.doc_answers("lukv_gen", 0)
    assert st is not None and all(0 < len(a.outcome.generation.tokens) <= 5 for a in st)
    assert st[0].outcome.kl_mean is None and st[1].outcome.kl_mean is not None  # FullKV is the reference


def test_generate_until_in_batches_keeps_the_reference(engine: Engine) -> None:
    """With `batch_settings` smaller than the cells, later batches still measure fidelity against FullKV."""
    settings, full = _settings(budget=0.5)
    req = Instance("generate_until", GEN_DOCS[0], (GEN_DOCS[0]["prompt"], {"until": ["\n"], "max_gen_toks": 4}), 0,
                   metadata=("lukv_gen", 0, 1))
    together = LukvEvalLM(engine, settings, full, chat=False)
    apart = LukvEvalLM(engine, settings, full, chat=False, batch_settings=1)
    assert [together.use(i).generate_until([req]) for i in range(3)] == [apart.use(i).generate_until([req])
                                                                         for i in range(3)]
    answers = apart.doc_answers("lukv_gen", 0)
    assert answers is not None and all(a.outcome.kl_mean is not None for a in answers[1:])


def test_chat_template_keeps_gen_prefix_turn_open(engine: Engine) -> None:
    from lukv_bench.testing import byte_tokenizer

    tok = byte_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
        "{% if not (loop.last and continue_final_message) %}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    settings, full = _settings()
    lm = LukvEvalLM(Engine(engine.model, tok), settings, full)
    chat = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "The answer is"}]
    assert lm.apply_chat_template(chat, add_generation_prompt=False).endswith("The answer is")
    assert lm.apply_chat_template(chat[:1]).endswith("<assistant>")


def test_sample_score_picks_ruler_length() -> None:
    sample = {"metrics": ["4096", "1024"], "4096": -1.0, "1024": 0.5, "doc": {"max_length": 1024}}
    assert sample_score(sample) == ("1024", 0.5)
    assert sample_score({"metrics": ["acc", "acc_norm"], "acc": 1.0, "acc_norm": 0.0}) == ("acc", 1.0)


def _lm_eval_suite(folder: Path, tasks_dir: Path, policies: list[str]) -> Path:
    path = folder / "suite.yaml"
    path.write_text(
        f"name: lm\nmodel: {TINY}\n"
        f"policies: {json.dumps(policies)}\nbudgets: [0.4]\n"
        "tasks:\n  - {name: local, type: lm_eval, tasks: [lukv_mc, lukv_gen], "
        f"include_path: {json.dumps(str(tasks_dir))}}}\n"
        "chat_template: false\nwindow: 8\ndevice: cpu\n"
    )
    return path


def _run(suite: Path, out: Path, on_change: str = "error") -> None:
    Runner(load_suite(suite), out, progress=False, on_change=on_change).run(LocalExecutor())


def test_lm_eval_units_records_and_resume(tasks_dir: Path, tmp_path: Path, prefills: list[int]) -> None:
    """lm-eval tasks run as units of the one runner: one record per (doc, cell), resumed per record."""
    out = tmp_path / "out"
    policies = ["full", "snapkv", "layer-uncertainty"]
    _run(_lm_eval_suite(tmp_path, tasks_dir, policies), out)
    assert len(prefills) == len(MC_DOCS) + len(GEN_DOCS)  # once per doc, for every cell
    recs = list(read_records(out / "results.jsonl"))
    keys = {(r["task"], r["sample_id"], r["policy"], json.dumps(r["budget"])) for r in recs}
    want = {(f"local/{t}", str(d), p, json.dumps(1.0 if p == "full" else 0.4))
            for t, n in (("lukv_mc", len(MC_DOCS)), ("lukv_gen", len(GEN_DOCS)))
            for d in range(n) for p in policies}
    assert keys == want and len(recs) == len(want)
    for r in recs:
        assert r["score"] in (0.0, 1.0)
        assert r["metric"] == ("acc" if r["task"].endswith("mc") else "exact_match")
        assert r["kv_bytes"] > 0 and r["kv_bytes_full"] > 0 and r["context_tokens"] > 0
        assert (r["kv_bytes"] < r["kv_bytes_full"]) == (r["policy"] != "full")
        assert r["prefill_s"] is not None and r["compress_s"] is not None
        assert "local files" in r["data_source"] and r["meta"]["lm_eval_task"] in r["task"]
        # what the cache holds includes the uncompressed tail: 4 layers x K,V x 2 KV heads x 16 dims x 4 bytes
        assert r["kv_bytes_full"] == r["context_tokens"] * 4 * 2 * 2 * 16 * 4
        if r["policy"] != "full" and r["context_tokens"] - r["meta"]["uncompressed_tail"] <= 8:  # window 8
            assert "no policy evicts anything" in r["meta"]["budget_warning"]
    mc0 = next(r for r in recs if r["task"] == "local/lukv_mc" and r["sample_id"] == "0" and r["policy"] == "full")
    assert mc0["answers"] == ["blue"] and mc0["prediction"] in MC_DOCS[0]["choices"]
    gen = [r for r in recs if r["task"] == "local/lukv_gen"]
    assert all(r["new_tokens"] > 0 and r["answers"] in (["4821"], ["Rome"]) for r in gen)
    assert all(r["kl_mean"] is not None for r in gen if r["policy"] != "full")

    # a rerun finds everything done: no prefill, no new records
    prefills.clear()
    _run(_lm_eval_suite(tmp_path, tasks_dir, policies), out)
    assert prefills == []
    assert len(list(read_records(out / "results.jsonl"))) == len(recs)

    # a new policy runs alone: only its records are added
    _run(_lm_eval_suite(tmp_path, tasks_dir, [*policies, "pyramidkv"]), out)
    recs2 = list(read_records(out / "results.jsonl"))
    assert len(recs2) == len(recs) + len(MC_DOCS) + len(GEN_DOCS)
    assert {r["policy"] for r in recs2[len(recs):]} == {"pyramidkv"}


def test_suite_settings_lm_eval_does_not_apply_are_refused(tasks_dir: Path, tmp_path: Path) -> None:
    """`compress` and `truncate` do not apply to lm-eval tasks: a suite that sets them is refused, naming both."""
    from click.testing import CliRunner

    from lukv_bench.cli import main

    suite = _lm_eval_suite(tmp_path, tasks_dir, ["full", "snapkv"])
    suite.write_text(suite.read_text() + "compress: prompt\ntruncate: error\n")
    res = CliRunner().invoke(main, ["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert f"{suite}:10: compress: 'prompt' does not apply to tasks[0] (lm_eval task 'local')" in res.output
    assert f"{suite}:11: truncate: 'error' does not apply to tasks[0] (lm_eval task 'local')" in res.output
    suite.write_text(suite.read_text().replace("compress: prompt\ntruncate: error\n", "compress: context\n"))
    assert CliRunner().invoke(main, ["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress"]).exit_code == 0


#: RULER-shaped documents (lm-eval's ``tasks/ruler`` fields): instruction, haystack, question on the input's last line
RULER_DOCS = [
    {"index": i, "max_length": 4096, "length": 60, "outputs": [key],
     "input": "Some special magic numbers are hidden within the following text.\n"
              + "The grass is green. The sky is blue. " * 3 + f"One of the special magic numbers for {name} is: {key}. "
              + "The sun is yellow. " * 3
              + f"\nWhat are all the special magic numbers for {name} mentioned in the text?",
     "gen_prefix": f"The special magic number for {name} mentioned in the text is"}
    for i, (name, key) in enumerate((("lucky-cat", "4821"), ("blue-owl", "7730")))
]
RULER_YAML = """task: lukv_ruler
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: generate_until
description: "Read and answer.\n"
doc_to_text: "{{{{input}}}}"
doc_to_target: "{{{{outputs[0]}}}}"
gen_prefix: "{{{{gen_prefix}}}}"
target_delimiter: " "
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
metadata:
  version: 1.0
"""


def _ruler_request(doc: dict[str, Any], d: int) -> tuple[Instance, str]:
    """A generate request rendered the way lm-eval renders a RULER document under a ChatML-like template."""
    context = f"<|im_start|>user\n{doc['input']}<|im_end|>\n<|im_start|>assistant\n{doc['gen_prefix']}"
    return Instance("generate_until", doc, (context, {"until": ["\n"], "max_gen_toks": 3}), 0,
                    metadata=("ruler_like", d, 1)), context


def test_generate_until_cuts_at_the_question(engine: Engine, prefills: list[int],
                                             caplog: pytest.LogCaptureFixture) -> None:
    """The compressed part ends where the question starts; the question and answer prefix are fed after it."""
    settings, full = _settings(budget=0.5)
    tok = engine.tokenizer
    lm = LukvEvalLM(engine, settings, full, chat=False, tail=8)
    req, context = _ruler_request(RULER_DOCS[0], 0)
    lm.use(1).generate_until([req])
    at = context.index("What are all the special magic numbers")
    head = len(tok(context[:at])["input_ids"])
    total = len(tok(context)["input_ids"])
    assert prefills == [head]  # one prefill: the context before the question, shared by every cell
    answers = lm.doc_answers("ruler_like", 0)
    assert answers is not None
    for a in answers:
        assert a.extra["split"] == "ruler: the input's last line"
        assert (a.extra["compressed_tokens"], a.extra["uncompressed_tail"]) == (head, total - head)
        assert a.pre.tail == total - head
    # a document without a question: the last `tail` tokens, with a warning naming the task
    doc = {"prompt": "no question field here, only a long enough prompt to cut"}
    other = Instance("generate_until", doc, (doc["prompt"], {"until": ["\n"], "max_gen_toks": 2}), 0,
                     metadata=("plain", 0, 1))
    with caplog.at_level("WARNING"):
        lm.generate_until([other])
    assert "task 'plain': a request's question was not found" in caplog.text
    plain = lm.doc_answers("plain", 0)
    assert plain is not None and plain[0].extra["split"] == "tail: the last 8 tokens (question not found)"
    assert plain[0].extra["uncompressed_tail"] == 8 and prefills[-1] == len(tok(doc["prompt"])["input_ids"]) - 8
    # split: tail ignores the question
    by_tail = LukvEvalLM(engine, settings, full, chat=False, tail=8, split="tail")
    by_tail.generate_until([req])
    assert by_tail.doc_answers("ruler_like", 0)[0].extra["split"] == "tail: the last 8 tokens"
    assert prefills[-1] == total - 8


def test_no_context_control_drops_the_haystack(engine: Engine, prefills: list[int]) -> None:
    """The control answers the request without the document's text before its question, under FullKV."""
    from lukv_bench.errors import UserError

    full = resolve_policy("full")
    tok = engine.tokenizer
    lm = LukvEvalLM(engine, [(full, 1.0)], full, chat=False, doc_text=lambda doc: doc["input"])
    req, context = _ruler_request(RULER_DOCS[0], 0)
    lm.generate_until([req])
    question = RULER_DOCS[0]["input"].rsplit("\n", 1)[1]
    control = context.replace(RULER_DOCS[0]["input"], question)
    assert "4821" not in control
    answers = lm.doc_answers("ruler_like", 0)
    assert answers is not None
    assert prefills == [len(tok("<|im_start|>user\n")["input_ids"])]
    assert answers[0].pre.n + answers[0].pre.tail == len(tok(control)["input_ids"])
    # a task whose documents name no question cannot have a control: a clear error naming the fix
    doc = {"prompt": "no question"}
    bad = Instance("generate_until", doc, (doc["prompt"], {"max_gen_toks": 2}), 0, metadata=("plain", 0, 1))
    with pytest.raises(UserError, match="task 'plain': the no-context control needs .* set `control: false`"):
        lm.generate_until([bad])


def test_lm_eval_control_units_and_split_meta(tmp_path: Path) -> None:
    """`control: true` adds `<entry>/<task>:no-context` (FullKV only); every record says where its request was cut."""
    d = tmp_path / "tasks"
    d.mkdir()
    data = d / "ruler.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in RULER_DOCS))
    (d / "ruler.yaml").write_text(RULER_YAML.format(path=json.dumps(str(data.resolve()))))
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"name: lm\nmodel: {TINY}\npolicies: [full, snapkv]\nbudgets: [0.4]\ncompress: context\n"
        "tasks:\n  - {name: r, type: lm_eval, tasks: [lukv_ruler], control: true, "
        f"include_path: {json.dumps(str(d))}}}\n"
        "chat_template: false\nwindow: 8\ndevice: cpu\n"
    )
    out = tmp_path / "out"
    _run(suite, out)
    recs = list(read_records(out / "results.jsonl"))
    keys = {(r["task"], r["sample_id"], r["policy"]) for r in recs}
    want = {("r/lukv_ruler", str(i), p) for i in range(len(RULER_DOCS)) for p in ("full", "snapkv")}
    want |= {("r/lukv_ruler:no-context", str(i), "full") for i in range(len(RULER_DOCS))}
    assert keys == want and len(recs) == len(want)
    by_key = {(r["task"], r["sample_id"], r["policy"]): r for r in recs}
    for i, doc in enumerate(RULER_DOCS):
        task = by_key[("r/lukv_ruler", str(i), "full")]
        control = by_key[("r/lukv_ruler:no-context", str(i), "full")]
        assert task["meta"]["split"] == control["meta"]["split"] == "ruler: the input's last line"
        assert control["meta"]["control"] == "no-context" and "control" not in task["meta"]
        assert "no-context control" in control["data_source"] and control["answers"] == doc["outputs"]
        # the control drops the instruction and the haystack; the description, question and answer prefix stay
        assert control["context_tokens"] == task["meta"]["uncompressed_tail"] + control["meta"]["compressed_tokens"]
        assert control["context_tokens"] < task["context_tokens"]
        assert task["meta"]["compressed_tokens"] + task["meta"]["uncompressed_tail"] == task["context_tokens"]
