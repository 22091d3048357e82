"""Which tokens do lukv-bench's presets and kvpress's presses keep? Kept-set agreement per (layer, KV head).

One command (from the repository root, in lukv-bench's environment)::

    python benchmarks/peers/agreement_kvpress.py --out docs/peers/kvpress/

What it does:

1. Makes (once) kvpress's virtual environment, as ``compare_kvpress.py`` does (same folder, same pins).
2. Reads ``benchmarks/peers/kvpress_agreement.yaml`` (model, pass-key samples, presets, budgets) and
   tokenises every sample as lukv-bench does; both sides get these token ids, so they see the same tokens.
3. lukv-bench's side, in this process: one prefill of the context per sample and
   :func:`lukv_bench.runtime.engine.sweep` with ``compress: context`` (kvpress's pipeline protocol: the
   context is compressed, the question fed afterwards); the kept positions are the engine's
   compression plan (``Compressed.keep``), the answer is the greedy decoding ("as run"). A second
   plan of the same prefill ("matched", no decoding of its own) takes kvpress's token count (kvpress
   rounds the budget down, lukv-bench up) and keeps only the newest tokens the press itself forces
   (``FORCED_BY_PRESS``) instead of the observation window: what differs then is scoring and allocation.
4. kvpress's side: ``kvpress_kept.py`` in kvpress's environment runs every press at ratio ``1 - budget``
   and records the positions it kept (freed) or would have kept (masked).
5. Writes ``OUT/agreement.md`` (the table and every known difference) and ``OUT/agreement.json``
   (rows, per-layer budgets, per-sample comparisons and answers).

Exit codes: 0 done, 1 a side failed (its output is shown), 2 bad input.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from agreement import compare_kept, parse_kept_run, summarize_agreement  # noqa: E402
from compare_kvpress import DEFAULT_VENV, ROOT, CompareError, _run_side, ensure_kvpress_venv  # noqa: E402

DEFAULT_SUITE = HERE / "kvpress_agreement.yaml"
#: lukv-bench preset -> the kvpress press ``kvpress_side.make_press`` builds for it
PRESSES = {
    "streaming": "StreamingLLMPress",
    "snapkv": "SnapKVPress",
    "pyramidkv": "PyramidKVPress",
    "adakv": "AdaKVPress(SnapKVPress)",
    "h2o": "ObservedAttentionPress",
    "tova": "TOVAPress",
    "keydiff": "KeyDiffPress",
    "criticalkv": "CriticalAdaKVPress(SnapKVPress)",
    "chunkkv": "ChunkKVPress(SnapKVPress)",
}
#: presets whose press forces fewer newest tokens than the observation window: how many it always keeps
#: (the SnapKV family's presses keep their ``window_size`` = 64, the suite's window)
FORCED_BY_PRESS = {"tova": 1, "keydiff": 0, "h2o": 0}
AS_RUN, MATCHED = "as run", "matched"  #: the two comparisons of every preset (see ``run_lukv``)


def kvpress_kept_tokens(n: int, ratio: float) -> int:
    """Tokens per head a kvpress press keeps of ``n`` at compression ratio ``ratio`` (kvpress's
    ``compute_n_kept``: rounded down, at least 1); lukv-bench rounds ``(1 - ratio) * n`` up."""
    return max(1, int(n * (1 - ratio)))
#: lukv-bench presets kvpress 0.5.5 has no press for (said so in the report)
NO_COUNTERPART = {
    "defensivekv": "kvpress 0.5.5 has no DefensiveKV press (the release ships its own kvpress fork)",
    "layer-defensivekv": "kvpress 0.5.5 has no Layer-DefensiveKV press (same fork)",
}


def load_agreement_suite(suite_path: Path):
    """The suite, checked for what this comparison can run: presets with a press and plain-ratio budgets."""
    from lukv_bench.config.suite import load_suite

    suite = load_suite(suite_path)
    names = [p if isinstance(p, str) else p["name"] for p in suite.policies]
    unmapped = [n for n in names if n not in PRESSES]
    if unmapped:
        raise ValueError(f"{suite_path}: policies {unmapped} have no kvpress press here; use only {sorted(PRESSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{suite_path}: each policy may appear once (kvpress's side is chosen by name)")
    if any(isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < 1 for b in suite.budgets):
        raise ValueError(f"{suite_path}: budgets must be ratios in (0, 1) (kvpress has no token budgets)")
    if suite.compress != "context":
        raise ValueError(f"{suite_path}: compress must be 'context', kvpress's pipeline protocol")
    return suite


def kept_sets(keep) -> list[list[list[int]]]:
    """lukv-bench's kept positions (a list of per-layer ``KeepSet``) as lists per layer and storage head."""
    out = []
    for ks in keep:
        idx, cu = ks.indices.tolist(), ks.cu_seqlens.tolist()
        out.append([idx[cu[h]:cu[h + 1]] for h in range(len(cu) - 1)])
    return out


def run_lukv(suite) -> tuple[list[dict], dict[tuple, dict], dict[str, str], float]:
    """lukv-bench's side: samples as token ids, {(preset, variant, budget, sample id): kept and answer},
    FullKV's answer per sample, and the seconds it took."""
    from lukv_bench.run.session import Session
    from lukv_bench.runtime.contract import Budget
    from lukv_bench.runtime.engine import sweep
    from lukv_bench.runtime.prompts import build_prompt, fit_prompt, model_max_positions
    from lukv_bench.tasks import build_tasks

    t0 = time.perf_counter()
    session = Session(suite)
    engine = session.engine
    policies = [p for p in session.policies.policies if p is not session.full]
    runs = [(session.full, 1.0)] + [(p, b) for p in policies for b in suite.budgets]
    samples, sides, full = [], {}, {}
    for task in build_tasks(suite, engine.tokenizer):
        for sample in task.samples(task.limit):
            ids, _, _ = fit_prompt(build_prompt(engine.tokenizer, sample, session.chat),
                                   model_max_positions(engine.model.config), suite.max_new_tokens, suite.truncate)
            samples.append({"id": str(sample.id), "context_ids": ids.context, "question_ids": ids.question,
                            "answers": list(sample.answers)})
            for pre, out in sweep(engine, ids.context, ids.question, runs, session.full, compress="context",
                                  max_new_tokens=suite.max_new_tokens, eos_ids=engine.eos_ids(), stop=suite.stop):
                if out.policy is session.full:
                    full[str(sample.id)] = out.generation.text
                    continue
                name, budget = out.policy.name, float(out.budget_spec)
                sides[(name, AS_RUN, budget, str(sample.id))] = {
                    "kept": kept_sets(out.compressed.keep), "answer": out.generation.text}
                tokens = kvpress_kept_tokens(pre.n, round(1 - budget, 6))
                plan = out.policy.plan(pre.stats, Budget.resolve({"tokens": tokens}, pre.n),
                                       window=FORCED_BY_PRESS.get(name, suite.window))
                sides[(name, MATCHED, budget, str(sample.id))] = {"kept": kept_sets(plan.keep), "answer": None}
            print(f"agreement: lukv-bench's side, sample {sample.id}: {len(ids.context)} context tokens", flush=True)
    return samples, sides, full, time.perf_counter() - t0


def pair_up(suite, sides: dict[tuple, dict], kv_runs: list[dict]) -> list[dict]:
    """Per (preset, variant, budget, sample) the comparison of both sides' kept sets and answers."""
    theirs = {(r["preset"], round(1 - r["ratio"], 6), r["sample_id"]): r for r in kv_runs if r["ratio"] > 0}
    pairs = []
    for (preset, variant, budget, sid), ours in sides.items():
        run = theirs.get((preset, round(budget, 6), sid))
        if run is None:
            raise CompareError(f"kvpress's side has no run of {preset} at ratio {1 - budget:g} on sample {sid}")
        pairs.append({
            "preset": preset, "variant": variant, "press": PRESSES[preset], "ratio": run["ratio"], "budget": budget,
            "how": "/".join(run["how"]), "sample_id": sid,
            "agreement": compare_kept(parse_kept_run(run), ours["kept"]),
            "answers": None if ours["answer"] is None else [run["answer"], ours["answer"]],
        })
    order = {name: i for i, name in enumerate(PRESSES)}
    pairs.sort(key=lambda p: (order[p["preset"]], -p["budget"], p["variant"] != AS_RUN))
    return pairs


def full_answers(kv_runs: list[dict], samples: list[dict], lukv_full: dict[str, str]) -> dict:
    """FullKV's answers of both sides per sample (the reference for the answer agreement)."""
    kv_full = {r["sample_id"]: r["answer"] for r in kv_runs if r["ratio"] == 0}
    return {s["id"]: [kv_full[s["id"]], lukv_full[s["id"]]] for s in samples}


def run_kvpress(python: Path, job: dict, work: Path, env: dict) -> tuple[float, dict]:
    """kvpress's side in its own environment; (process wall seconds, its result JSON)."""
    job_path, out_path = work / "kvpress_kept_job.json", work / "kvpress_kept_result.json"
    job_path.write_text(json.dumps(job))
    wall = _run_side([str(python), str(HERE / "kvpress_kept.py"), str(job_path), str(out_path)],
                     "kvpress's side (kvpress_kept.py)", env)
    return wall, json.loads(out_path.read_text())


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "peers" / "kvpress", help="where agreement.md and "
                    "agreement.json go (default: docs/peers/kvpress)")
    ap.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="presets, samples and budgets of both sides")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="kvpress's virtual environment (made if missing)")
    ap.add_argument("--render-only", action="store_true", help="rewrite OUT/agreement.md from OUT/agreement.json "
                    "without running anything")
    ap.add_argument("--raw", type=Path, help="also write both sides' kept sets and answers to this JSON file")
    ap.add_argument("--from-raw", type=Path, help="compare the sides saved by an earlier --raw instead of running them")
    args = ap.parse_args(argv)
    if args.render_only:
        saved = json.loads((args.out / "agreement.json").read_text())
        (args.out / "agreement.md").write_text(render(saved["rows"], saved["meta"]))
        print(f"agreement: re-rendered {args.out / 'agreement.md'} from agreement.json")
        return 0
    from lukv_bench.errors import UserError

    try:
        suite = load_agreement_suite(args.suite.resolve())
        if args.from_raw:
            raw = json.loads(args.from_raw.read_text())
            samples, lukv_full, lukv_s, kv_s, kv = (raw[k] for k in ("samples", "lukv_full", "lukv_s", "kv_s", "kv"))
            sides = {tuple(key): side for key, side in raw["sides"]}
        else:
            samples, sides, lukv_full, lukv_s, kv_s, kv = run_both(suite, args.venv.resolve())
            if args.raw:
                args.raw.write_text(json.dumps({
                    "samples": samples, "lukv_full": lukv_full, "lukv_s": lukv_s, "kv_s": kv_s, "kv": kv,
                    "sides": [[list(k), v] for k, v in sides.items()]}))
        pairs = pair_up(suite, sides, kv["runs"])
    except (UserError, ValueError) as e:
        print(f"agreement: error: {e}", file=sys.stderr)
        return 2
    except CompareError as e:
        print(f"agreement: failed: {e}", file=sys.stderr)
        return 1
    write_report(args, suite, samples, lukv_full, pairs, kv, {"lukv": lukv_s, "kvpress": kv_s})
    return 0


def run_both(suite, venv: Path) -> tuple:
    """lukv-bench's side, then kvpress's on the same token ids: (samples, sides, FullKV answers, lukv seconds,
    kvpress seconds, kvpress's result)."""
    python = ensure_kvpress_venv(venv)
    from lukv_bench.runtime.models import resolve_model_path

    model_dir, _ = resolve_model_path(suite.model)
    samples, sides, lukv_full, lukv_s = run_lukv(suite)
    presets = [p if isinstance(p, str) else p["name"] for p in suite.policies]
    job = {
        "model_dir": str(model_dir),
        "samples": [{k: s[k] for k in ("id", "context_ids", "question_ids")} for s in samples],
        "settings": [{"preset": "full", "ratio": 0.0}]
        + [{"preset": p, "ratio": round(1 - float(b), 6)} for p in presets for b in suite.budgets],
        "max_new_tokens": suite.max_new_tokens,
        "threads": int(suite.threads or 1),
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TRITON_INTERPRET", None)
    print("agreement: kvpress's side ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="lukv-kvpress-kept-") as tmp:
        kv_s, kv = run_kvpress(python, job, Path(tmp), env)
    return samples, sides, lukv_full, lukv_s, kv_s, kv


def write_report(args, suite, samples: list[dict], lukv_full: dict, pairs: list[dict], kv: dict,
                 seconds: dict) -> None:
    """OUT/agreement.json (rows, meta, per-sample comparisons) and OUT/agreement.md."""
    import lukv_bench

    rows = summarize_agreement(pairs)
    meta = {
        "out": os.path.relpath(args.out.resolve(), ROOT),
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "suite": os.path.relpath(args.suite.resolve(), ROOT),
        "policies": suite.policies,
        "window": suite.window,
        "samples": [{"id": s["id"], "context_tokens": len(s["context_ids"]), "question_tokens": len(s["question_ids"]),
                     "answers": s["answers"]} for s in samples],
        "full_answers": full_answers(kv["runs"], samples, lukv_full),
        "no_counterpart": NO_COUNTERPART,
        "seconds": seconds,
        "versions": {"lukv": lukv_bench.__version__, "kvpress": kv["versions"]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    per_sample = [{k: v for k, v in p.items() if k != "agreement"}
                  | {k: p["agreement"][k] for k in ("jaccard_mean", "identical_share", "same_count_share",
                                                    "same_layer_budget_share")}
                  for p in pairs]
    (args.out / "agreement.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "per_sample": per_sample}, indent=1) + "\n"
    )
    (args.out / "agreement.md").write_text(render(rows, meta))
    print(f"agreement: wrote {args.out / 'agreement.md'} and agreement.json")


def render(rows: list[dict], meta: dict) -> str:
    """The markdown report (filled in below)."""
    return json.dumps(rows[:1])


if __name__ == "__main__":
    sys.exit(main())
