"""Side-by-side run of lukv-bench and NVIDIA kvpress on the same model, samples and budgets.

One command (from the repository root, in lukv-bench's environment)::

    python benchmarks/peers/compare_kvpress.py --out docs/peers/kvpress/

What it does:

1. Makes kvpress's own virtual environment (``benchmarks/peers/.kvpress-venv``, git-ignored) on
   first use: kvpress pins other transformers versions than lukv-bench, so the two never share one.
   torch is pinned to the version lukv-bench runs on, so both sides use the same torch. kvpress is
   not a dependency of lukv-bench; without PyPI access this step fails with a message saying so.
   (Set ``PIP_EXTRA_INDEX_URL`` etc. as usual to steer pip, e.g. to a CPU-only torch index.)
2. Reads ``benchmarks/peers/kvpress_suite.yaml``: model, samples (needle/pass-key), policies and
   budgets. The model is handed to kvpress as the plain transformers folder that lukv-bench
   de-quantizes the embedded GGUF into; the samples as the exact context and question text
   lukv-bench renders.
3. Runs lukv-bench's side with its CLI (``lukv-bench run``) and kvpress's side with
   ``kvpress_side.py`` in the kvpress environment, one after the other, each in its own process with
   the suite's thread count. kvpress compression ratio ``r`` (fraction removed) is lukv-bench budget
   ``1 - r``.
4. Writes ``OUT/README.md`` (the table, the sweep-time ratio and what is known to differ) and
   ``OUT/comparison.json`` (every run of both sides).

Exit codes: 0 done, 1 a side failed (its output is shown), 2 bad input.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KVPRESS_VERSION = "0.5.5"
DEFAULT_VENV = HERE / ".kvpress-venv"
DEFAULT_SUITE = HERE / "kvpress_suite.yaml"
#: lukv-bench policy -> how kvpress names the press that implements it
KVPRESS_NAMES = {
    "streaming": "StreamingLLMPress",
    "snapkv": "SnapKVPress",
    "pyramidkv": "PyramidKVPress",
    "adakv": "AdaKVPress(SnapKVPress)",
    "h2o": "ObservedAttentionPress",
}


class CompareError(Exception):
    """A step of the comparison failed; the message says which and what to do (exit code 1)."""


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_kvpress(python: Path) -> bool:
    if not python.exists():
        return False
    probe = (
        "import kvpress, psutil; from importlib.metadata import version; "
        f"assert version('kvpress') == '{KVPRESS_VERSION}'"
    )
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def ensure_kvpress_venv(venv: Path) -> Path:
    """Create (once) a virtual environment with kvpress and the torch lukv-bench uses; its python."""
    from importlib.metadata import version

    python = _venv_python(venv)
    if _has_kvpress(python):
        return python
    torch_pin = "torch==" + version("torch").split("+")[0]
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", torch_pin, f"kvpress=={KVPRESS_VERSION}", "psutil"],
    ]
    print(f"compare: creating kvpress's environment in {venv} (kvpress {KVPRESS_VERSION}, {torch_pin})", flush=True)
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise CompareError(
                f"cannot create kvpress's virtual environment in {venv}: `{' '.join(cmd)}` exited with "
                f"{proc.returncode}:\n{tail}\n"
                f"kvpress is not a dependency of lukv-bench; this comparison installs kvpress=={KVPRESS_VERSION} "
                "from PyPI into its own environment, so it needs PyPI (or a mirror pip is configured for). "
                f"Remove {venv} and retry, or pass --venv to a folder with kvpress {KVPRESS_VERSION} installed."
            )
    if not _has_kvpress(python):
        raise CompareError(f"{venv} was created but `import kvpress` still fails there; remove the folder and retry")
    return python


def load_compare_suite(suite_path: Path):
    """The suite, checked for what kvpress can run: mapped policies and plain-ratio budgets."""
    from lukv_bench.config.suite import load_suite

    suite = load_suite(suite_path)
    names = [p if isinstance(p, str) else p["name"] for p in suite.policies]
    unmapped = [n for n in names if n not in KVPRESS_NAMES]
    if unmapped:
        raise ValueError(
            f"{suite_path}: policies {unmapped} have no kvpress counterpart here; use only {sorted(KVPRESS_NAMES)}"
        )
    if any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in suite.budgets):
        raise ValueError(f"{suite_path}: budgets must be plain ratios (kvpress has no token budgets)")
    return suite


def build_job(suite, suite_path: Path) -> tuple[dict, dict, list]:
    """(job for kvpress_side.py, suite summary, [(task, sample)]) from the checked suite."""
    from transformers import AutoTokenizer

    from lukv_bench.runtime.models import resolve_model_path
    from lukv_bench.tasks import build_tasks

    model_dir, _ = resolve_model_path(suite.model)  # de-quantizes the embedded GGUF once, before timing
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = [(task, sample) for task in build_tasks(suite, tokenizer) for sample in task.samples(task.limit)]
    samples = []
    for _, sample in pairs:
        context, question = sample.blocks()
        samples.append({"id": sample.id, "context": context, "question": question})
    job = {
        "model_dir": str(model_dir),
        "samples": samples,
        "policies": [p if isinstance(p, str) else p["name"] for p in suite.policies],
        "ratios": [round(1 - float(b), 6) for b in suite.budgets],
        "max_new_tokens": suite.max_new_tokens,
        "threads": int(suite.threads or 1),
    }
    info = {"file": str(suite_path.relative_to(ROOT) if suite_path.is_relative_to(ROOT) else suite_path),
            "model": suite.model, "budgets": list(suite.budgets), "compress": suite.compress,
            "window": suite.window, "threads": job["threads"], "max_new_tokens": suite.max_new_tokens,
            "policies": suite.policies}
    return job, info, pairs


def _run_side(cmd: list[str], what: str, env: dict) -> float:
    """Run one side's process, streaming nothing; its wall time. Raises CompareError on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise CompareError(f"{what} failed (exit {proc.returncode}): `{' '.join(cmd)}`\n{tail}")
    return wall


def run_lukv(suite_path: Path, work: Path, env: dict) -> tuple[float, list[dict]]:
    """lukv-bench's side through its CLI; (process wall seconds, its records without no-context controls)."""
    from lukv_bench.run.results import read_records

    out = work / "lukv"
    cli = Path(sys.executable).parent / "lukv-bench"  # the console script of the environment running this file
    cmd = [str(cli), "run", str(suite_path), "--out", str(out), "--no-progress"]
    wall = _run_side(cmd, "lukv-bench's side", env)
    return wall, compared_records(list(read_records(out / "results.jsonl")))


def run_kvpress(python: Path, job: dict, work: Path, env: dict) -> tuple[float, dict]:
    """kvpress's side in its own environment; (process wall seconds, its result JSON)."""
    job_path, out_path = work / "kvpress_job.json", work / "kvpress_result.json"
    job_path.write_text(json.dumps(job))
    wall = _run_side([str(python), str(HERE / "kvpress_side.py"), str(job_path), str(out_path)], "kvpress's side", env)
    return wall, json.loads(out_path.read_text())


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def _lukv_setting_s(rec: dict) -> float:
    """lukv-bench's time for one record: compression + its share of decoding; FullKV also carries the prefill.

    The prefill is shared by every setting of a sample, so it is counted once, in the FullKV row.
    """
    own = (rec["compress_s"] or 0.0) + (rec["decode_s"] or 0.0)
    return own + (rec["prefill_s"] or 0.0) if rec["policy"] == "full" else own


def compared_records(lukv_recs: list[dict]) -> list[dict]:
    """lukv-bench's records that have a kvpress counterpart: without the no-context controls.

    A needle task runs its no-context control by default (``<task>:no-context``, FullKV only, same sample
    ids); kvpress runs no such thing, and counting those records as FullKV runs doubled FullKV's row.
    """
    from lukv_bench.tasks.control import is_control

    return [r for r in lukv_recs if not is_control(r["task"])]


def summarize(job: dict, pairs: list, lukv_recs: list[dict], kv: dict) -> list[dict]:
    """One row per (policy, kvpress ratio) incl. FullKV: scores, times, KV bytes, peak memory of both."""
    scorer = {sample.id: (task, sample) for task, sample in pairs}

    def kv_score(run: dict) -> float:
        task, sample = scorer[run["sample_id"]]
        return float(task.score(run["answer"], sample))

    rows = []
    for policy, ratio in [("full", 0.0)] + [(p, r) for p in job["policies"] for r in job["ratios"]]:
        budget = round(1 - ratio, 6)
        ours = [
            r for r in lukv_recs if r["policy"] == policy and (policy == "full" or abs(r["budget"] - budget) < 1e-9)
        ]
        theirs = [r for r in kv["runs"] if r["policy"] == policy and abs(r["ratio"] - ratio) < 1e-9]
        if len(ours) != len(job["samples"]) or len(theirs) != len(job["samples"]):
            raise CompareError(f"{policy} at ratio {ratio}: {len(ours)} lukv-bench and {len(theirs)} kvpress runs "
                               f"for {len(job['samples'])} samples")
        rows.append({
            "policy": policy,
            "kvpress_press": KVPRESS_NAMES.get(policy, "no press"),
            "compression_ratio": ratio,
            "budget": budget,
            "samples": len(ours),
            "score_kvpress": statistics.mean(kv_score(r) for r in theirs),
            "score_lukv": statistics.mean(float(r["score"]) for r in ours),
            "time_s_kvpress": sum(r["wall_s"] for r in theirs),
            "time_s_lukv": sum(_lukv_setting_s(r) for r in ours),
            "kv_bytes_kvpress": statistics.mean(r["kv_bytes"] for r in theirs),
            "kv_bytes_lukv": statistics.mean(r["kv_bytes"] for r in ours),
            "masked_entries_kvpress": statistics.mean(r["masked_entries"] for r in theirs),
            "uneven_layers_kvpress": sum(r["layer_len_min"] != r["layer_len_max"] for r in theirs),
            "tokenwise_question_kvpress": any(r["tokenwise_question"] for r in theirs),
            "peak_mb_kvpress": max(r["peak_rss_bytes"] for r in theirs) / 2**20,
            "peak_mb_lukv": max(r["peak_mem_bytes"] or 0 for r in ours) / 2**20,
            "answers_kvpress": [r["answer"] for r in theirs],
            "answers_lukv": [r["prediction"] for r in ours],
        })
    return rows


def render(rows: list[dict], meta: dict) -> str:
    """The markdown report: table, sweep-time ratio, what differs, how it was run."""
    w = meta["wall_s"]
    ratio = w["kvpress"] / w["lukv"]
    ctx = meta["context_tokens"]
    pairs_of = [(a.strip(), b.strip()) for r in rows for a, b in zip(r["answers_kvpress"], r["answers_lukv"])]
    same_answers, all_answers = sum(a == b for a, b in pairs_of), len(pairs_of)
    full = next(r for r in rows if r["policy"] == "full")
    n_full = len(full["answers_kvpress"])
    same_full = sum(a.strip() == b.strip() for a, b in zip(full["answers_kvpress"], full["answers_lukv"]))
    same = "the same tokens on both sides" if meta["same_context_tokens"] else "NOT the same token counts on both sides"
    lines = [
        "# lukv-bench and kvpress side by side",
        "",
        f"Generated by `python benchmarks/peers/compare_kvpress.py --out {meta['out']}` on {meta['date']} "
        f"({meta['machine']}; {meta['threads']} torch thread(s) per side, the sides run one after the other). "
        f"Model: SmolLM2-135M-Instruct (the embedded GGUF, de-quantized to fp32), {len(meta['samples'])} pass-key "
        f"samples of {min(ctx)}-{max(ctx)} context tokens ({same}), greedy, {meta['max_new_tokens']} new tokens at "
        "most. "
        f"Versions: lukv-bench {meta['versions']['lukv']}; kvpress {meta['versions']['kvpress']['kvpress']} "
        f"with transformers {meta['versions']['kvpress']['transformers']}; torch "
        f"{meta['versions']['kvpress']['torch']} on both sides.",
        "",
        f"**Whole sweep** (process start to last answer: imports, model load, {len(rows)} settings x "
        f"{len(meta['samples'])} samples): kvpress **{w['kvpress']:.1f} s**, lukv-bench **{w['lukv']:.1f} s**; "
        f"sweep-time ratio kvpress / lukv-bench = **{ratio:.2f}x**. "
        f"(kvpress's own split: import {meta['kvpress_split']['import_s']:.1f} s, model load "
        f"{meta['kvpress_split']['model_load_s']:.1f} s, settings {meta['kvpress_split']['sweep_s']:.1f} s.) "
        "Absolute times depend on the machine and on its load (see the load average above; the sides ran one "
        "after the other, so both saw it); the ratio is the figure to compare.",
        "",
        f"**Same answers**: the two implementations produced the identical answer text in {same_answers} of "
        f"{all_answers} runs ({same_full} of {n_full} FullKV runs), so where scores differ it is a real difference "
        "in what was kept, not in prompting or decoding.",
        "",
        "| policy (kvpress press) | kvpress ratio / our budget | score kvpress | score lukv | time kvpress s "
        "| time lukv s | KV held kvpress MB | KV held lukv MB | peak RSS kvpress MB | peak RSS lukv MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        notes = []
        if r["masked_entries_kvpress"]:
            notes.append(f"{r['masked_entries_kvpress']:,.0f} entries masked, not freed")
        if r["policy"] == "pyramidkv":
            notes.append(f"pyramid on {r['uneven_layers_kvpress']} of {r['samples']} samples, uniform fallback on "
                         f"{r['samples'] - r['uneven_layers_kvpress']}")
        if r["tokenwise_question_kvpress"]:
            notes.append("question fed token by token")
        note = f" ({'; '.join(notes)})" if notes else ""
        setting = "-" if r["policy"] == "full" else f"{r['compression_ratio']:g} / {r['budget']:g}"
        lines.append(
            f"| {r['policy']} ({r['kvpress_press']}) | {setting} | {r['score_kvpress']:.2f} | {r['score_lukv']:.2f} "
            f"| {r['time_s_kvpress']:.1f} | {r['time_s_lukv']:.1f} | {_mb(r['kv_bytes_kvpress'])}{note} "
            f"| {_mb(r['kv_bytes_lukv'])} | {r['peak_mb_kvpress']:.0f} | {r['peak_mb_lukv']:.0f} |"
        )
    lines.append(
        f"| **whole sweep** (all rows, {len(meta['samples'])} samples) | | | | **{w['kvpress']:.1f}** "
        f"| **{w['lukv']:.1f}** | | | | |"
    )
    lines += [
        "",
        "Columns: *score* is the mean pass-key hit (the answer contains the key) over the samples, scored by "
        "lukv-bench's metric for both sides. *time* is the sum over the samples of that setting's work: for "
        "kvpress the whole pipeline call (prefill + compression + question + answer); for lukv-bench the "
        "compression and decoding of that setting, with each sample's single prefill counted in the FullKV row "
        "(lukv-bench prefills once per sample and builds every setting's cache from it). *KV held* is the mean "
        "size of the cache tensors after compression: for kvpress the `DynamicCache` tensors, for lukv-bench "
        "the ragged cache's buffers. *peak RSS* is the process's resident memory sampled during the setting "
        "(lukv-bench's `PeakMemory` on both sides), largest over the samples; it includes the fp32 weights "
        "(~540 MB) and each side's libraries, and since freed memory is not always returned to the OS it "
        "rarely falls from one setting to the next, so read it as an upper bound per setting. lukv-bench decodes "
        "all settings of a sample together in one batch and captures the statistics of every policy in its one "
        "prefill, so its peak is that of the batch and the same in every row.",
        "",
        "## What is known to differ",
        "",
        "- **kvpress's AdaKV frees nothing.** It keeps every entry and masks the evicted ones at decode time "
        "(a fake key per head), so its KV held equals FullKV's; lukv-bench stores only the kept entries, "
        "ragged per head.",
        "- **kvpress's PyramidKV falls back to uniform budgets on short inputs** at its defaults "
        "(window 64, beta 20): its pyramid needs the smallest layer budget to be at least the window, which "
        "fails at high compression ratios on contexts this short; the row says whether the pyramid applied. "
        "lukv-bench's pyramidkv always applies its schedule with exact totals.",
        "- **kvpress's PyramidKV cannot take a multi-token question on CPU SDPA** when the pyramid applies "
        "(layers then hold different lengths, and transformers builds one mask for all layers); "
        "`kvpress_side.py` feeds the question one token at a time in that case (marked in the table).",
        "- **kvpress's pipeline prefills once per setting**: every (press, ratio) pays the full prefill "
        "again. lukv-bench prefills each sample once and builds every setting's cache from it.",
        "- **H2O**: kvpress's ObservedAttentionPress needs eager attention (it reads the attention weights), "
        "which is slower than SDPA; lukv-bench computes the accumulated attention in blocks after an SDPA "
        "prefill.",
        "- **StreamingLLM**: lukv-bench's streaming also evicts while decoding (holding each layer at its "
        "budget); kvpress's StreamingLLMPress compresses only the prefill. With a few new tokens this changes "
        "little.",
        "- **Extra work on lukv-bench's side**: every setting is also scored for fidelity to FullKV (a "
        "teacher-forced pass over FullKV's answer), which kvpress does not do; it is included in lukv-bench's "
        "times.",
        "- Hyper-parameters were aligned where lukv-bench has the knob (window 64, SnapKV kernel 5 with "
        "average pooling, H2O normalised by the number of queries that see a key, AdaKV alpha 0.2 without "
        "per-head rescaling): see `benchmarks/peers/kvpress_suite.yaml`. Budget selection still differs in "
        "detail (e.g. how AdaKV applies its safeguard, how GQA groups are reduced).",
        f"- Few samples ({len(meta['samples'])} per cell): a score difference of one sample is "
        f"{1 / len(meta['samples']):.2f}. This is a smoke-level comparison of cost and behaviour, not a ranking.",
        "",
        "Every run (answers, per-layer lengths, masked entries, times) is in `comparison.json`. Which tokens "
        "each side keeps, per layer and KV head, for these presets and the newer ones (TOVA, KeyDiff, "
        "CriticalKV, ChunkKV): `agreement.md` (`benchmarks/peers/agreement_kvpress.py`).",
        "",
    ]
    return "\n".join(lines)


def render_only(out: Path, suite_path: Path) -> int:
    """Rebuild rows and README.md from a previous run's comparison.json (same suite), running nothing."""
    saved = json.loads((out / "comparison.json").read_text())
    job, _, pairs = build_job(load_compare_suite(suite_path), suite_path)
    rows = summarize(job, pairs, saved["lukv_runs"], {"runs": saved["kvpress_runs"]})
    (out / "README.md").write_text(render(rows, saved["meta"]))
    (out / "comparison.json").write_text(json.dumps({**saved, "rows": rows}, indent=2) + "\n")
    print(f"compare: re-rendered {out / 'README.md'} from comparison.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "peers" / "kvpress", help="where README.md and "
                    "comparison.json go (default: docs/peers/kvpress)")
    ap.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="the suite both sides run")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="kvpress's virtual environment (made if missing)")
    ap.add_argument("--render-only", action="store_true", help="rewrite OUT/README.md from OUT/comparison.json "
                    "without running anything (after a change to the table's layout)")
    args = ap.parse_args(argv)
    if args.render_only:
        return render_only(args.out, args.suite.resolve())
    from lukv_bench.errors import UserError

    try:
        suite = load_compare_suite(args.suite.resolve())
        python = ensure_kvpress_venv(args.venv.resolve())
        job, suite_info, pairs = build_job(suite, args.suite.resolve())
        env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("TRITON_INTERPRET", None)
        with tempfile.TemporaryDirectory(prefix="lukv-kvpress-") as tmp:
            work = Path(tmp)
            load_before = os.getloadavg()[0]
            print("compare: lukv-bench's side ...", flush=True)
            lukv_wall, lukv_recs = run_lukv(args.suite.resolve(), work, env)
            print(f"compare: lukv-bench's side took {lukv_wall:.1f} s; kvpress's side ...", flush=True)
            kv_wall, kv = run_kvpress(python, job, work, env)
            print(f"compare: kvpress's side took {kv_wall:.1f} s", flush=True)
            load_after = os.getloadavg()[0]
    except (UserError, ValueError) as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    except CompareError as e:
        print(f"compare: failed: {e}", file=sys.stderr)
        return 1
    rows = summarize(job, pairs, lukv_recs, kv)
    import lukv_bench

    meta = {
        "out": os.path.relpath(args.out.resolve(), ROOT),
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load average {load_before:.1f} before and "
                   f"{load_after:.1f} after",
        "threads": job["threads"],
        "max_new_tokens": job["max_new_tokens"],
        "samples": [s["id"] for s in job["samples"]],
        "context_tokens": sorted({r["context_tokens"] for r in kv["runs"]}),
        "same_context_tokens": {(r["sample_id"], r["context_tokens"]) for r in kv["runs"]}
        == {(r["sample_id"], r["context_tokens"]) for r in lukv_recs},
        "wall_s": {"kvpress": kv_wall, "lukv": lukv_wall},
        "sweep_time_ratio_kvpress_over_lukv": kv_wall / lukv_wall,
        "kvpress_split": {k: kv[k] for k in ("import_s", "model_load_s", "sweep_s")},
        "versions": {"lukv": lukv_bench.__version__, "kvpress": kv["versions"]},
        "suite": suite_info,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text(render(rows, meta))
    lukv_runs = [{k: r.get(k) for k in ("policy", "budget", "sample_id", "score", "prediction", "context_tokens",
                                        "kv_bytes", "kv_bytes_full", "prefill_s", "compress_s", "decode_s",
                                        "peak_mem_bytes", "layer_budgets", "kl_mean")} for r in lukv_recs]
    (args.out / "comparison.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "lukv_runs": lukv_runs, "kvpress_runs": kv["runs"]}, indent=2) + "\n"
    )
    print(f"compare: wrote {args.out / 'README.md'} and comparison.json; sweep-time ratio kvpress / lukv-bench = "
          f"{kv_wall / lukv_wall:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
