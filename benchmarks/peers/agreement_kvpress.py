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
   For presses that keep one set per layer (``ONE_SET_PER_LAYER``) a third plan averages the scores over
   the layer's KV heads first ("matched, heads pooled"); for presses that split a layer's entries over its
   heads by one top-k (``FLAT_PER_LAYER``) a fourth takes that top-k over lukv-bench's scores, and is
   compared once more with kvpress's press changed to score the prompt as lukv-bench does (``KVPRESS_VARIANT``).
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
    "expected-attention": "ExpectedAttentionPress",
    "kvzip": "KVzipPress(layerwise)",
}
#: presets whose press forces fewer newest tokens than the observation window: how many it always keeps
#: (the SnapKV family's presses keep their ``window_size`` = 64, the suite's window)
FORCED_BY_PRESS = {"tova": 1, "keydiff": 0, "h2o": 0, "expected-attention": 0, "kvzip": 0}
#: presses that keep one set for every KV head of a layer, from scores averaged over all its heads
ONE_SET_PER_LAYER = {"tova"}
#: presses that split a layer's entries over its heads by one top-k over the layer (KVzip's masking)
FLAT_PER_LAYER = {"kvzip"}
AS_RUN, MATCHED = "as run", "matched"  #: the two comparisons of every preset (see ``run_lukv``)
POOLED = "matched, heads pooled"  #: the matched plan with the scores averaged over a layer's KV heads
FLAT = "matched, flat top-k per layer"  #: lukv-bench's scores, kvpress's per-layer top-k over all heads
#: the FLAT plan against kvpress's press changed to score the prompt as lukv-bench does (``kvpress_side``)
FLAT_WHOLE = "matched, flat top-k per layer; kvpress repeating the whole prompt"
#: lukv-bench comparison -> the variant of kvpress's press it is compared with ("": the press as configured)
KVPRESS_VARIANT = {FLAT_WHOLE: "whole prompt"}


def flat_layer_keep(scores, sinks: int, total: int) -> list[list[int]]:
    """Per head the positions that one top-``total`` over a layer's [S, n] ``scores`` takes, sinks first
    (KVzip's allocation in kvpress: the layer's entries go to whichever heads score highest)."""
    import torch

    from lukv_bench.runtime.selection import boosted_scores

    n_heads, n = scores.shape
    flat = torch.topk(boosted_scores(scores, sinks, 0).reshape(-1), total).indices
    return [sorted((flat[flat // n == h] % n).tolist()) for h in range(n_heads)]


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
    from lukv_bench.runtime.selection import select_all
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
                forced = FORCED_BY_PRESS.get(name, suite.window)
                plan = out.policy.plan(pre.stats, Budget.resolve({"tokens": tokens}, pre.n), window=forced)
                sides[(name, MATCHED, budget, str(sample.id))] = {"kept": kept_sets(plan.keep), "answer": None}
                if name in ONE_SET_PER_LAYER:  # to check that the GQA reduction explains what remains
                    pooled = [sc.mean(0, keepdim=True).expand_as(sc) for sc in plan.scores]
                    keep = select_all(pooled, plan.allocation, out.policy.sinks, forced)
                    sides[(name, POOLED, budget, str(sample.id))] = {"kept": kept_sets(keep), "answer": None}
                if name in FLAT_PER_LAYER:  # to check that the allocation explains what remains
                    total = [sc.shape[0] * pre.n - int(sc.shape[0] * pre.n * round(1 - budget, 6))
                             for sc in plan.scores]
                    flat = [flat_layer_keep(sc, out.policy.sinks, t) for sc, t in zip(plan.scores, total)]
                    sides[(name, FLAT, budget, str(sample.id))] = {"kept": flat, "answer": None}
                    sides[(name, FLAT_WHOLE, budget, str(sample.id))] = {"kept": flat, "answer": None}
            print(f"agreement: lukv-bench's side, sample {sample.id}: {len(ids.context)} context tokens", flush=True)
    return samples, sides, full, time.perf_counter() - t0


def pair_up(suite, sides: dict[tuple, dict], kv_runs: list[dict]) -> list[dict]:
    """Per (preset, variant, budget, sample) the comparison of both sides' kept sets and answers."""
    theirs = {(r["preset"], r.get("variant", ""), round(1 - r["ratio"], 6), r["sample_id"]): r
              for r in kv_runs if r["ratio"] > 0}
    pairs = []
    for (preset, variant, budget, sid), ours in sides.items():
        press_variant = KVPRESS_VARIANT.get(variant, "")
        run = theirs.get((preset, press_variant, round(budget, 6), sid))
        if run is None:
            what = f" ({press_variant})" if press_variant else ""
            raise CompareError(f"kvpress's side has no run of {preset}{what} at ratio {1 - budget:g} on sample {sid}")
        pairs.append({
            "preset": preset, "variant": variant, "press": PRESSES[preset], "ratio": run["ratio"], "budget": budget,
            "how": "/".join(run["how"]), "sample_id": sid,
            "agreement": compare_kept(parse_kept_run(run), ours["kept"]),
            "answers": None if ours["answer"] is None else [run["answer"], ours["answer"]],
        })
    order = {name: i for i, name in enumerate(PRESSES)}
    variants = {AS_RUN: 0, MATCHED: 1, POOLED: 2, FLAT: 3, FLAT_WHOLE: 4}
    pairs.sort(key=lambda p: (order[p["preset"]], -p["budget"], variants[p["variant"]]))
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
        + [{"preset": p, "ratio": round(1 - float(b), 6)} for p in presets for b in suite.budgets]
        + [{"preset": p, "ratio": round(1 - float(b), 6), "variant": v}
           for p in presets if p in FLAT_PER_LAYER for b in suite.budgets for v in KVPRESS_VARIANT.values()],
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


#: per preset, what differs between kvpress's press and lukv-bench's preset (read from both sources)
WHY = {
    "streaming": "Same rule: the first 4 tokens plus the most recent ones. The only difference is rounding: "
                 "kvpress keeps `int(n * (1 - ratio))` tokens, lukv-bench `ceil(budget * n)`, one token more "
                 "when `budget * n` is not whole.",
    "snapkv": "Same rule (mean attention of the last 64 queries, average pooling over 5, mean over the GQA group, "
              "window kept). kvpress recomputes the window attention in its hook; lukv-bench sums it in the "
              "capture pass. Both in fp32; rounding of the budget as for streaming.",
    "pyramidkv": "Both rank by SnapKV scores with layer budgets falling with depth, but the schedules differ. "
                 "kvpress (KVCache-Factory's formula) caps the first layer's selectable budget at `n - window` "
                 "(the whole context) and then re-derives the last one so that the total holds, and falls back "
                 "to the uniform budget when "
                 "`n >= max >= min >= window` fails (here at ratio 0.8 on every sample); lukv-bench's smallest "
                 "layer keeps `window + C / beta` and its total is exact. The layer budgets below show it; where "
                 "a layer's budgets are close, its kept sets nearly coincide.",
    "adakv": "kvpress masks instead of freeing (the table compares the positions it leaves unmasked). Head "
             "budgets differ by construction: kvpress first puts each head's `int(0.2 * n_kept)` best tokens "
             "(the window among them, scored at the maximum) above everything, then takes one top-k over all "
             "heads of the layer; lukv-bench reserves the window per head and splits the rest as "
             "`0.8 x flat top-k counts + 0.2 x uniform`. Scores are SnapKV's on both sides.",
    "h2o": "kvpress's ObservedAttentionPress scores every position by its attention summed over all queries "
           "divided by the number of queries that see it (the `normalize: true` of lukv-bench) and forces no "
           "token; lukv-bench keeps the 64-token window besides the scores. The *matched* row (no window, "
           "kvpress's count) isolates the score.",
    "tova": "kvpress's TOVAPress averages the last query's attention over *all* query heads of a layer and "
            "keeps one set for every KV head, forcing only the last token; lukv-bench averages over each GQA "
            "group (one set per KV head) and keeps the window. The *matched* row removes the window and the "
            "rounding; the per-group mean remains (a GQA reduction choice, §14 of docs/policies.md). The "
            "*matched, heads pooled* row averages lukv-bench's scores over the layer's KV heads (with equal "
            "groups, the mean over all query heads) to check that this reduction explains what remains.",
    "keydiff": "Same score (minus the cosine to the mean of the normalised keys). kvpress forces no token; "
               "lukv-bench keeps the 64-token window. The *matched* row (no window, kvpress's count) isolates "
               "the score.",
    "criticalkv": "kvpress's CriticalAdaKVPress masks instead of freeing, and selects in two stages: head "
                  "budgets from AdaKV's safeguard + flat top-k on the *plain SnapKV* scores, then half of each "
                  "head's budget by SnapKV alone (`first_stage_ratio` 0.5) and the rest by SnapKV x value norm. "
                  "lukv-bench ranks every token by the product and gives AdaKV's allocator the product scores "
                  "(the budget is not known to the scorer; §16 of docs/policies.md). Expect head budgets and the "
                  "attention-only half to differ.",
    "expected-attention": "Same rule (Gaussian model of the queries from the hidden states after the first 4 "
                          "tokens, RoPE averaged over the next 512 positions, covariance term, times the value "
                          "norm), the first 4 tokens forced on both sides (`sinks: 4` here). kvpress forces no "
                          "window; lukv-bench keeps the 64-token window. The *matched* row (no window, kvpress's "
                          "count) isolates the score.",
    "kvzip": "kvpress's KVzipPress masks instead of freeing (the positions it leaves unmasked are compared) and, "
             "with `layerwise=True` (its default ranks all layers at once), gives each layer the same number "
             "of entries but splits them over the heads by one top-k over the layer; lukv-bench's head budgets "
             "are uniform (the *flat top-k per layer* row applies kvpress's split to lukv-bench's scores). The "
             "scores differ too: kvpress repeats only the context after the chat template's prefix (the "
             "prefix scores 0 apart from the 4 sinks) and normalises each repeat query's attention over the "
             "sinks, the chunk and the repeat request only; lukv-bench repeats the whole compressed prompt, "
             "template included, and normalises over all of it. The last row changes kvpress's press to repeat "
             "the whole prompt (`kvpress_side.whole_prompt_kvzip`) and compares it with the flat split of "
             "lukv-bench's scores: with both differences removed the sets agree exactly.",
    "chunkkv": "kvpress's ChunkKVPress cuts the *whole* sequence (window included) into chunks of 20, scores "
               "a chunk by its mean SnapKV score summed over the KV heads (one chunk set for every head) and "
               "keeps `int(chunks * (1 - ratio))` whole chunks, so it keeps fewer tokens than the budget; "
               "lukv-bench cuts only the prefix before the window, scores chunks per KV head by the sum, keeps "
               "the window and cuts the last chunk to meet the budget exactly.",
}


def _summary(rows: list[dict]) -> list[str]:
    """Per preset, the comparison that agrees best with kvpress at every budget: identical, or how close."""
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == preset]
        by_variant: dict[str, list[dict]] = {}
        for r in mine:
            by_variant.setdefault(r["variant"], []).append(r)
        variant, best = max(by_variant.items(), key=lambda kv: min(r["jaccard_mean"] for r in kv[1]))
        if all(r["identical_share"] == 1 for r in best):
            out.append(f"- **{preset}**: identical kept sets in every (layer, head) in the *{variant}* comparison.")
        else:
            lo = min(r["jaccard_mean"] for r in best)
            out.append(f"- **{preset}**: not identical; best mean Jaccard {lo:.3f} (lowest over the budgets) in "
                       f"the *{variant}* comparison.")
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render(rows: list[dict], meta: dict) -> str:
    """The markdown report: the agreement table, FullKV's answers, and what differs per preset."""
    samples = meta["samples"]
    ctx = [s["context_tokens"] for s in samples]
    v = meta["versions"]
    full = meta["full_answers"]
    same_full = sum(a.strip() == b.strip() for a, b in full.values())
    lines = [
        "# Which tokens do lukv-bench and kvpress keep? Kept-set agreement per layer and KV head",
        "",
        f"Generated by `python benchmarks/peers/agreement_kvpress.py --out {meta['out']}` on {meta['date']} "
        f"({meta['machine']}). Model: SmolLM2-135M-Instruct (the embedded GGUF, de-quantized to fp32; 30 "
        f"layers, 3 KV heads, 9 query heads). {len(samples)} pass-key samples of {min(ctx)}-{max(ctx)} context "
        "tokens, tokenised once by lukv-bench and given to both sides as token ids (the same tokens). "
        "Protocol: kvpress's pipeline on both sides (lukv-bench `compress: context`): the context is prefilled "
        "and compressed, then the question is fed and the answer decoded greedily "
        f"(16 new tokens at most). Settings: `{meta['suite']}` (window {meta['window']}; kvpress's defaults "
        "wherever lukv-bench has the knob). Versions: lukv-bench "
        f"{v['lukv']}; kvpress {v['kvpress']['kvpress']} with transformers {v['kvpress']['transformers']}; torch "
        f"{v['kvpress']['torch']}.",
        "",
        "How the kept sets are read. lukv-bench: the engine's compression plan (`Compressed.keep`, the "
        "positions every (layer, KV head) holds). kvpress: `kvpress_kept.py` wraps the press's `compress`; a "
        "press that frees entries is read from the rows of the compressed keys (matched to the input rows), a "
        "press that masks (AdaKV, CriticalAdaKV) from `masked_key_indices`: what it would have kept.",
        "",
        "Two comparisons per preset and budget. **as run**: lukv-bench as a user runs it (budget "
        "`ceil(budget * n)` tokens per head, the observation window always kept), with its answer. **matched**: "
        "a second plan of the same prefill with kvpress's token count (`int(n * (1 - ratio))`) and only the "
        "newest tokens the press itself forces (64 for the SnapKV family, 1 for TOVA, 0 for KeyDiff and H2O); "
        "what still differs is scoring and allocation.",
        "",
        f"FullKV (no press) gave the same answer on both sides for {same_full} of {len(full)} samples.",
        "",
        "**In short** (the comparison closest to kvpress per preset, over both budgets):",
        "",
        *_summary(rows),
        "",
        "| preset (kvpress press) | kvpress ratio / budget | kvpress drops by | comparison | mean Jaccard "
        "| identical (layer, head) sets | same count per head | same layer budget | kept per head kvpress "
        "| kept per head lukv | same answer |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        answer = "-" if r["same_answers"] is None else f"{r['same_answers']} of {r['answered']}"
        lines.append(
            f"| {r['preset']} ({r['press']}) | {r['ratio']:g} / {r['budget']:g} | {r['how']} | {r['variant']} "
            f"| {r['jaccard_mean']:.3f} | {_pct(r['identical_share'])} | {_pct(r['same_count_share'])} "
            f"| {_pct(r['same_layer_budget_share'])} | {r['kept_kvpress']:.1f} | {r['kept_lukv']:.1f} | {answer} |"
        )
    lines += [
        "",
        "Columns: means over the samples of: *mean Jaccard*, |kvpress ∩ lukv| / |kvpress ∪ lukv| of the kept "
        "positions, averaged over the 30 x 3 (layer, KV head) pairs; *identical*, the share of pairs with "
        "exactly the same set; *same count per head*, the share with the same number of kept tokens; *same "
        "layer budget*, the share of layers keeping the same total over their heads; *kept per head*, the mean "
        "number of positions a (layer, head) keeps. *same answer*: samples whose answer text is identical "
        "(as-run rows only). Per-layer budgets and Jaccard are in `agreement.json` (`rows[].layers`).",
        "",
        "## What differs, preset by preset",
        "",
    ]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        lines.append(f"- **{preset}** ({next(r['press'] for r in rows if r['preset'] == preset)}): {WHY[preset]}")
    uneven = [r for r in rows if r["variant"] == MATCHED and r["same_layer_budget_share"] < 1
              and any(abs(x["kept_kvpress"] - x["kept_lukv"]) >= 1 for x in r["layers"])]
    if uneven:
        lines += ["", "## Layer budgets where they differ (matched comparison; mean kept per KV head, layer 0 "
                  "first, mean over the samples)", ""]
        for r in uneven:
            def series(key: str, fmt: str, r: dict = r) -> str:
                return " ".join(format(x[key], fmt) for x in r["layers"])

            lines.append(f"- **{r['preset']}** at ratio {r['ratio']:g}: kvpress {series('kept_kvpress', '.0f')}; "
                         f"lukv-bench {series('kept_lukv', '.0f')}; Jaccard per layer {series('jaccard', '.2f')}.")
    lines += ["", "## Not compared", ""]
    for preset, why in meta["no_counterpart"].items():
        lines.append(f"- **{preset}**: {why}.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
