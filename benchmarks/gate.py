"""Regression gate: compare the same-run ratios of a pytest-benchmark run with a committed baseline.

Absolute timings depend on the machine, so CI never asserts them (pytest-benchmark still stores them
for history: ``pytest-benchmark compare``). What is gated are ratios of two figures taken in the same
run on the same machine, e.g. "kernel time / naive reference time" or "peak memory at 20% KV / at
FullKV".

Convention for benchmarks (``benchmarks/test_bench_*.py``):

* a benchmark takes part by setting ``benchmark.extra_info["ratio"] = <float>``, **lower is better**;
* optionally ``benchmark.extra_info["ratio_desc"] = "what / what"`` says what is divided by what;
* ``bench_ratio`` in ``benchmarks/conftest.py`` does both for "fast path vs reference" pairs.

``benchmarks/baseline.json`` maps each benchmark name (pytest's test id, e.g.
``test_bench_compact[2048]``) to ``ratio`` (the baseline value), ``tolerance`` (relative: 0.5 means
the ratio may grow by up to 50% before the gate fails), ``noise`` (the relative spread
``(max - min) / median`` seen over the runs the baseline was made from, null when made from one run)
and ``optional`` (true: may be absent from a run, e.g. a benchmark that needs the embedded model).
Its ``machine`` block records where the baseline was measured.

The gate fails (exit 1) when a ratio exceeds ``baseline * (1 + tolerance)`` or when a non-optional
baseline entry is missing from the run; it names the benchmark, the baseline, the measured value and
the tolerance. Benchmarks without a baseline entry are listed, not failed. Bad input exits 2.

Usage::

    python benchmarks/gate.py RESULTS.json                  # check (tox -e bench does this)
    python benchmarks/gate.py --update RESULTS.json [...]   # refresh the baseline on purpose
    tox -e bench -- --update                                # the same, after a fresh benchmark run

``--update`` with several results files (e.g. three runs of ``tox -e bench``'s pytest step, each
with ``--benchmark-json``) takes the median ratio, records the spread as ``noise`` and sets each
tolerance by :func:`tolerance_for`, never below the entry's previous tolerance (lower one by editing
the file); from one file it keeps the existing tolerances (new entries get ``DEFAULT_TOLERANCE``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

BASELINE = Path(__file__).with_name("baseline.json")
DEFAULT_TOLERANCE = 0.5  #: tolerance of an entry whose noise has not been measured
MIN_TOLERANCE = 0.3  #: no tolerance is set below this, however quiet the measured runs were
NOISE_FACTOR = 1.5  #: tolerance = NOISE_FACTOR x measured spread, when that is above MIN_TOLERANCE


class GateInputError(Exception):
    """A results or baseline file that cannot be used (exit code 2)."""


def tolerance_for(noise: float | None) -> float:
    """Tolerance for a measured run-to-run spread: ``max(MIN_TOLERANCE, NOISE_FACTOR * noise)``, 0.05 steps.

    The spread is max - min over the runs, so 1.5 times it is at least 1.5 times the largest
    excursion above the median seen while measuring: room for the rarer, wider swings of a shared
    machine, while a 2x slowdown still trips every entry whose spread was under 2/3.
    """
    if noise is None:
        return DEFAULT_TOLERANCE
    return max(MIN_TOLERANCE, math.ceil(NOISE_FACTOR * noise * 20 - 1e-9) / 20)


def load_json(path: Path, what: str) -> Any:
    """Parse a JSON file, turning a missing or malformed file into :class:`GateInputError`."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GateInputError(f"{what} {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise GateInputError(f"{what} {path} is not readable JSON: {e}") from None


def read_ratios(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The ratios of one pytest-benchmark ``--benchmark-json`` file, by name, and its machine_info.

    Each value is ``{"ratio": float, "desc": str | None}``; benchmarks that set no ratio are left out.
    """
    data = load_json(path, "results file")
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise GateInputError(f"results file {path} has no 'benchmarks' list; pass pytest --benchmark-json output")
    out: dict[str, dict[str, Any]] = {}
    for i, bench in enumerate(data["benchmarks"]):
        name = bench.get("name") if isinstance(bench, dict) else None
        if not isinstance(name, str):
            raise GateInputError(f"results file {path}: benchmarks[{i}] has no name")
        extra = bench.get("extra_info") or {}
        if "ratio" not in extra:
            continue
        ratio = extra["ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
            raise GateInputError(
                f"results file {path}: {name} has extra_info['ratio'] = {ratio!r}; it must be a positive number"
            )
        if name in out:
            raise GateInputError(f"results file {path}: benchmark name {name!r} occurs twice; names must be unique")
        out[name] = {"ratio": float(ratio), "desc": extra.get("ratio_desc")}
    return out, data.get("machine_info") or {}


def load_baseline(path: Path) -> dict[str, Any]:
    """Read and check the baseline file (a missing file is an empty baseline)."""
    if not path.exists():
        return {"benchmarks": {}}
    data = load_json(path, "baseline")
    entries = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise GateInputError(f"baseline {path} has no 'benchmarks' mapping")
    for name, e in entries.items():
        ok = (
            isinstance(e, dict)
            and isinstance(e.get("ratio"), (int, float))
            and e["ratio"] > 0
            and isinstance(e.get("tolerance"), (int, float))
            and e["tolerance"] >= 0
        )
        if not ok:
            raise GateInputError(
                f"baseline {path}: entry {name!r} needs a positive 'ratio' and a non-negative 'tolerance', got {e!r}"
            )
    return data


def check(baseline: dict[str, Any], measured: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Compare a run with the baseline -> (report lines, failure messages); no failures means pass."""
    entries = baseline["benchmarks"]
    lines = [f"{'benchmark':46s} {'baseline':>9s} {'measured':>9s} {'change':>8s} {'limit':>9s}  status"]
    failures: list[str] = []
    for name in sorted(set(entries) | set(measured)):
        entry, got = entries.get(name), measured.get(name)
        if entry is None:
            lines.append(f"{name:46s} {'-':>9s} {got['ratio']:9.3f} {'':>8s} {'':>9s}  not in baseline (not gated)")
            continue
        base, tol = float(entry["ratio"]), float(entry["tolerance"])
        limit = base * (1 + tol)
        if got is None:
            if entry.get("optional"):
                lines.append(f"{name:46s} {base:9.3f} {'-':>9s} {'':>8s} {limit:9.3f}  missing (optional)")
            else:
                lines.append(f"{name:46s} {base:9.3f} {'-':>9s} {'':>8s} {limit:9.3f}  MISSING")
                failures.append(
                    f"{name}: in the baseline (ratio {base:.3f}) but not in this run; run it, mark the entry "
                    f"\"optional\": true, or refresh the baseline"
                )
            continue
        value = got["ratio"]
        change = value / base - 1
        if value > limit:
            status = "REGRESSED"
            desc = f" ({got['desc']})" if got.get("desc") else ""
            failures.append(
                f"{name}{desc}: ratio {value:.3f} vs baseline {base:.3f} is {change:+.0%}, beyond the tolerance "
                f"of +{tol:.0%} (limit {limit:.3f})"
            )
        elif value < base / (1 + tol):
            status = "ok (improved beyond tolerance: consider refreshing the baseline)"
        else:
            status = "ok"
        lines.append(f"{name:46s} {base:9.3f} {value:9.3f} {change:+8.0%} {limit:9.3f}  {status}")
    return lines, failures


def _machine(info: dict[str, Any]) -> dict[str, Any]:
    """The baseline's machine block from a run's machine_info (filled by benchmarks/conftest.py)."""
    cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
    return {
        "cpu": info.get("cpu_model") or cpu.get("brand_raw") or info.get("processor") or "unknown",
        "cores": info.get("cores") or cpu.get("count"),
        "torch": info.get("torch"),
        "python": info.get("python_version"),
        "system": " ".join(str(info.get(k, "")) for k in ("system", "release")).strip() or None,
        "date": _dt.date.today().isoformat(),
    }


def update(baseline: dict[str, Any], runs: list[dict[str, dict[str, Any]]], machine_info: dict) -> dict[str, Any]:
    """A new baseline from one or more runs: median ratio per benchmark; noise and tolerances as documented.

    Entries absent from every run are dropped unless optional (those are kept as they were).
    """
    old = baseline.get("benchmarks", {})
    names = sorted({n for run in runs for n in run})
    entries: dict[str, Any] = {}
    for name in names:
        values = [run[name]["ratio"] for run in runs if name in run]
        median = statistics.median(values)
        prev = old.get(name, {})
        if len(values) >= 2:
            noise: float | None = round((max(values) - min(values)) / median, 3)
            # a quiet refresh must not undo what noisier sessions showed: never lower a tolerance here
            tolerance = max(float(prev.get("tolerance", 0.0)), tolerance_for(noise))
        else:
            noise = prev.get("noise")
            tolerance = prev.get("tolerance", DEFAULT_TOLERANCE)
        desc = next((run[name]["desc"] for run in runs if name in run and run[name]["desc"]), prev.get("desc"))
        entries[name] = {
            "ratio": round(median, 4),
            "tolerance": tolerance,
            "noise": noise,
            "runs": [round(v, 4) for v in values],
            "desc": desc,
            "optional": bool(prev.get("optional", False)),
        }
    for name, prev in old.items():
        if name not in entries and prev.get("optional"):
            entries[name] = prev
    return {
        "about": (
            "Regression-gate baseline of same-run ratios (lower is better); see benchmarks/gate.py. "
            "A run fails when ratio > baseline ratio * (1 + tolerance)."
        ),
        "machine": _machine(machine_info),
        "benchmarks": entries,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: check a run against the baseline, or ``--update`` the baseline from runs."""
    ap = argparse.ArgumentParser(prog="python benchmarks/gate.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="pytest-benchmark --benchmark-json file(s)")
    ap.add_argument("--baseline", type=Path, default=BASELINE, help=f"baseline file (default: {BASELINE})")
    ap.add_argument(
        "--update",
        action="store_true",
        help="write the baseline from these results instead of checking (several files: median, measured noise)",
    )
    args = ap.parse_args(argv)
    try:
        baseline = load_baseline(args.baseline)
        runs, infos = zip(*(read_ratios(p) for p in args.results), strict=True)
        if args.update:
            new = update(baseline, list(runs), infos[-1])
            args.baseline.write_text(json.dumps(new, indent=2) + "\n")
            print(f"gate: wrote {args.baseline} ({len(new['benchmarks'])} benchmarks from {len(runs)} run(s))")
            return 0
        if len(runs) != 1:
            raise GateInputError("checking takes exactly one results file (several are only for --update)")
        if not baseline["benchmarks"]:
            raise GateInputError(
                f"baseline {args.baseline} is missing or empty; create it with: "
                f"python benchmarks/gate.py --update {args.results[0]}"
            )
    except GateInputError as e:
        print(f"gate: error: {e}", file=sys.stderr)
        return 2
    lines, failures = check(baseline, runs[0])
    machine = baseline.get("machine", {})
    print(f"gate: {args.results[0]} vs {args.baseline} (measured on {machine.get('cpu')}, {machine.get('date')})")
    print("\n".join(lines))
    if failures:
        print(f"gate: FAILED, {len(failures)} problem(s):", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        print(
            "gate: if the change is intended, refresh the baseline: tox -e bench -- --update "
            "(or python benchmarks/gate.py --update RESULTS.json ...) and commit benchmarks/baseline.json",
            file=sys.stderr,
        )
        return 1
    print(f"gate: passed ({sum(n in baseline['benchmarks'] for n in runs[0])} ratios within tolerance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
