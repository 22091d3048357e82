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
``(max - min) / median`` seen over the runs the baseline was made from, null when made from one run),
``runs`` (those runs' ratios) and ``optional`` (true: may be absent from a run, e.g. a benchmark that
needs the embedded model). Its ``machine`` block records where the baseline was measured; an entry
measured elsewhere (``--update --merge``) carries its own ``machine`` block. Where a ratio differs by
CPU beyond what one tolerance may cover (it divides memory-bound work by compute-bound work, say), an
entry also holds ``other_cpus``: per CPU name, that CPU's own ``ratio``, ``tolerance``, ``noise``, ``runs``
and ``machine``, made by ``--update --merge --this-cpu`` on that CPU and checked with the same rule there.

The gate fails (exit 1) when a ratio exceeds ``baseline * (1 + tolerance)`` or when a non-optional
baseline entry is missing from the run; it names the benchmark, the baseline, the measured value and
the tolerance. Benchmarks without a baseline entry are listed, not failed. Bad input exits 2, and so
does a baseline with a tolerance above ``MAX_TOLERANCE``: the gate must fail on a 2x regression of
any entry, so no tolerance may reach +100%.

Usage::

    python benchmarks/gate.py RESULTS.json                  # check (tox -e bench does this)
    python benchmarks/gate.py --update RESULTS.json [...]   # refresh the baseline on purpose
    python benchmarks/gate.py --update --merge R1.json ...  # refresh only the benchmarks these ran
    python benchmarks/gate.py --update --merge --this-cpu R1.json ...  # their own baseline for this CPU
    tox -e bench -- --update                                # the same, after a fresh benchmark run
    python benchmarks/gate.py --tables                      # rewrite the tables below from the baseline

The performance tables of ``README.md`` and ``docs/performance.md`` (between the ``TABLE_BEGIN`` and
``TABLE_END`` markers) are rendered from the baseline by :func:`render_table`: ``--update`` rewrites
them with the baseline it writes, and a test checks that the committed tables are the baseline's.

``--update`` with several results files (e.g. three runs of ``tox -e bench``'s pytest step, each
with ``--benchmark-json``) takes the median ratio, records the spread as ``noise`` and sets each
tolerance by :func:`tolerance_for` from that spread alone: a measured spread replaces whatever
tolerance the entry had, wider or narrower. From one file it keeps each entry's noise and derives
the tolerance from it (new entries get ``DEFAULT_TOLERANCE``). ``--merge`` keeps the baseline's
entries that the runs do not contain, their tolerances re-derived from their recorded runs.
``--update`` writes nothing when an entry's spread needs a tolerance above ``MAX_TOLERANCE``: it names
the entries whose benchmark needs a steadier measurement (more rounds, min of rounds, warmed
buffers); widening the tolerance instead would let a 2x slowdown through.
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
MAX_TOLERANCE = 0.9  #: ceiling: baseline * (1 + 0.9) < baseline * 2, so a 2x regression trips every entry
ROOT = Path(__file__).resolve().parents[1]
TABLE_FILES = (ROOT / "README.md", ROOT / "docs" / "performance.md")  #: files holding the rendered table
TABLE_BEGIN = "<!-- gate table: rendered by `python benchmarks/gate.py --tables` from benchmarks/baseline.json -->"
TABLE_END = "<!-- end of gate table -->"


class GateInputError(Exception):
    """A results or baseline file that cannot be used (exit code 2)."""


class TooNoisyError(GateInputError):
    """``--update`` refused: some entry's measured spread needs a tolerance above ``MAX_TOLERANCE``."""


def tolerance_for(noise: float | None) -> float:
    """Tolerance for a measured run-to-run spread: ``max(MIN_TOLERANCE, NOISE_FACTOR * noise)``, 0.05 steps.

    The spread is max - min over the runs, so 1.5 times it is at least 1.5 times the largest
    excursion above the median seen while measuring: room for the rarer, wider swings of a shared
    machine. A result above ``MAX_TOLERANCE`` (a spread above 0.6) is not used: such an entry needs a
    steadier benchmark, see :func:`update`.
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


def over_cap(baseline: dict[str, Any]) -> list[str]:
    """One message per baseline entry whose tolerance exceeds ``MAX_TOLERANCE`` (it would hide a 2x regression)."""
    return [
        f"{name}: tolerance +{e['tolerance']:.0%} is above the ceiling of +{MAX_TOLERANCE:.0%}, so a 2x regression "
        f"would pass; measure the benchmark steadier and refresh the baseline (python benchmarks/gate.py --update)"
        for name, e in sorted(_all_entries(baseline["benchmarks"]))
        if float(e["tolerance"]) > MAX_TOLERANCE
    ]


def _all_entries(benchmarks: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (label, entry) of a baseline's ``benchmarks``: the entries and their ``other_cpus`` ones."""
    out = []
    for name, e in benchmarks.items():
        out.append((name, e))
        out.extend((f"{name} on {cpu}", sub) for cpu, sub in (e.get("other_cpus") or {}).items())
    return out


def _entry_for(entry: dict[str, Any], cpu: str | None) -> tuple[dict[str, Any], str]:
    """The baseline a run on ``cpu`` is checked against -> (entry, note for the report line).

    That CPU's own entry where it has one; the entry itself where it was measured there (or says nothing
    of where); else the entry at the ``MAX_TOLERANCE`` ceiling, since ratios move by machine.
    """
    own = (entry.get("other_cpus") or {}).get(cpu) if cpu is not None else None
    if own is not None:
        return own, f" (baseline for {cpu})"
    if cpu is not None and "machine" in entry and entry["machine"].get("cpu") not in (None, cpu):
        ceiling = {**entry, "tolerance": max(float(entry["tolerance"]), MAX_TOLERANCE)}
        return ceiling, f" (baseline from {entry['machine']['cpu']}: checked at the +{MAX_TOLERANCE:.0%} ceiling)"
    return entry, ""


def spread(values: list[float]) -> float | None:
    """The relative spread ``(max - min) / median`` of two or more runs' ratios, 3 decimals; None for fewer."""
    if len(values) < 2:
        return None
    return round((max(values) - min(values)) / statistics.median(values), 3)


def check(
    baseline: dict[str, Any], measured: dict[str, dict[str, Any]], cpu: str | None = None
) -> tuple[list[str], list[str]]:
    """Compare a run with the baseline -> (report lines, failure messages); no failures means pass.

    ``cpu`` (from the run's machine_info) picks the baseline of each entry (:func:`_entry_for`): its
    ``other_cpus`` entry for that CPU, or, where the entry was measured on another CPU only, the entry at
    the ceiling ``MAX_TOLERANCE``, which still fails a 2x regression.
    """
    entries = baseline["benchmarks"]
    lines = [f"{'benchmark':46s} {'baseline':>9s} {'measured':>9s} {'change':>8s} {'limit':>9s}  status"]
    failures: list[str] = []
    for name in sorted(set(entries) | set(measured)):
        entry, got = entries.get(name), measured.get(name)
        if entry is None:
            lines.append(f"{name:46s} {'-':>9s} {got['ratio']:9.3f} {'':>8s} {'':>9s}  not in baseline (not gated)")
            continue
        entry, note = _entry_for(entry, cpu)
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
        status += note
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


def _settled(entry: dict[str, Any]) -> dict[str, Any]:
    """A kept baseline entry with its noise and tolerance re-derived from its recorded runs (if two or more)."""
    noise = spread([float(v) for v in entry.get("runs") or []])
    if noise is None:
        return entry
    return {**entry, "noise": noise, "tolerance": tolerance_for(noise)}


def _too_noisy(name: str, entry: dict[str, Any]) -> str:
    """Why ``entry``'s tolerance cannot be used, naming the benchmark and its runs."""
    runs = entry.get("runs") or []
    if entry.get("noise") is None:
        why = f"tolerance +{entry['tolerance']:.0%} was never measured (update it from two or more runs)"
    else:
        why = (
            f"runs spread {entry['noise']:.0%} ({min(runs):.3f}-{max(runs):.3f}) and need a tolerance of "
            f"+{entry['tolerance']:.0%}; make the benchmark steadier (more rounds, min of rounds, warmed buffers) "
            f"and measure it again"
        )
    return f"{name}: {why}; the ceiling is +{MAX_TOLERANCE:.0%}, so that a 2x regression trips the gate"


def update(
    baseline: dict[str, Any], runs: list[dict[str, dict[str, Any]]], machine_info: dict, *, merge: bool = False,
    this_cpu: bool = False,
) -> dict[str, Any]:
    """A new baseline from one or more runs: median ratio per benchmark; noise and tolerances as documented.

    Entries absent from every run are dropped unless optional (those are kept as they were), or, with
    ``merge``, kept with their tolerance re-derived from their recorded runs; entries measured here
    then carry this machine's block. With ``this_cpu`` (and ``merge``), an entry measured on another CPU keeps
    its figures and gets these runs as this CPU's own baseline in ``other_cpus``. Raises
    :class:`TooNoisyError` naming every entry whose tolerance would exceed ``MAX_TOLERANCE``.
    """
    old = baseline.get("benchmarks", {})
    machine = _machine(machine_info)
    names = sorted({n for run in runs for n in run})
    entries: dict[str, Any] = {}
    for name in names:
        values = [round(run[name]["ratio"], 4) for run in runs if name in run]  # as stored: noise re-derives
        prev = old.get(name, {})
        noise = spread(values) if len(values) >= 2 else prev.get("noise")
        if noise is not None:
            tolerance = tolerance_for(noise)
        else:
            tolerance = prev.get("tolerance", DEFAULT_TOLERANCE)
        ratio = round(statistics.median(values), 4)
        measured = {"ratio": ratio, "tolerance": tolerance, "noise": noise, "runs": values}
        prev_cpu = (prev.get("machine") or baseline.get("machine") or {}).get("cpu")
        if this_cpu and prev and prev_cpu != machine["cpu"]:  # this CPU's own baseline beside the entry's
            own = {**(prev.get("other_cpus") or {}), machine["cpu"]: {**measured, "machine": machine}}
            entries[name] = {**_settled(prev), "other_cpus": own}
            continue
        desc = next((run[name]["desc"] for run in runs if name in run and run[name]["desc"]), prev.get("desc"))
        entries[name] = {**measured, "desc": desc, "optional": bool(prev.get("optional", False))}
        if merge:
            entries[name]["machine"] = machine
        if prev.get("other_cpus"):
            entries[name]["other_cpus"] = prev["other_cpus"]
    for name, prev in old.items():
        if name not in entries and (merge or prev.get("optional")):
            entries[name] = _settled(prev) if merge else prev
    refused = [
        _too_noisy(name, e)
        for name, e in sorted(_all_entries(entries))
        if e["tolerance"] > MAX_TOLERANCE
    ]
    if refused:
        raise TooNoisyError("refusing to write the baseline:\n  " + "\n  ".join(refused))
    return {
        "about": (
            "Regression-gate baseline of same-run ratios (lower is better); see benchmarks/gate.py. "
            "A run fails when ratio > baseline ratio * (1 + tolerance)."
        ),
        "machine": baseline.get("machine", machine) if merge else machine,
        "benchmarks": dict(sorted(entries.items())),
    }


def render_table(baseline: dict[str, Any]) -> str:
    """The baseline as a markdown table: each gated ratio, what it divides, its runs and the gate's limit.

    An entry's runs name their machine when it has its own block; the others come from the machines the
    baseline's ``about`` names.
    """
    lines = [
        "| benchmark | ratio (lower is better) | baseline: median of runs | runs | gate fails above |",
        "|---|---|---:|---|---:|",
    ]
    for name, e in baseline.get("benchmarks", {}).items():
        where = f" on {e['machine'].get('cpu', '?')}" if "machine" in e else ""  # else the baseline's machines
        optional = " (optional)" if e.get("optional") else ""
        lines.append(_table_row(f"`{name}`{optional}", e.get("desc") or "", e, where))
        for cpu, sub in (e.get("other_cpus") or {}).items():
            lines.append(_table_row(f"`{name}` on {cpu}", "the same, this CPU's own baseline", sub, f" on {cpu}"))
    return "\n".join(lines)


def _table_row(label: str, desc: str, e: dict[str, Any], where: str) -> str:
    """One row of :func:`render_table` for baseline entry ``e`` (``where``: the runs' machine, or empty)."""
    runs = e.get("runs") or [e["ratio"]]
    span = f"{min(runs):.3f}-{max(runs):.3f} ({len(runs)} run{'s' if len(runs) > 1 else ''}{where})"
    limit = e["ratio"] * (1 + e["tolerance"])
    return f"| {label} | {desc} | {e['ratio']:.3f} | {span} | {limit:.3f} (+{e['tolerance']:.0%}) |"


def write_tables(baseline: dict[str, Any], files: tuple[Path, ...] = TABLE_FILES) -> list[Path]:
    """Replace the block between ``TABLE_BEGIN`` and ``TABLE_END`` in ``files`` by :func:`render_table`.

    Returns the files that changed; a file without both markers is an input error.
    """
    table = render_table(baseline)
    changed = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        start, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
        if start < 0 or end < start:
            raise GateInputError(f"{path}: no gate table markers ({TABLE_BEGIN!r} ... {TABLE_END!r})")
        new = text[: start + len(TABLE_BEGIN)] + "\n" + table + "\n" + text[end:]
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line: check a run against the baseline, or ``--update`` the baseline from runs."""
    ap = argparse.ArgumentParser(prog="python benchmarks/gate.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="*", type=Path, help="pytest-benchmark --benchmark-json file(s)")
    ap.add_argument("--baseline", type=Path, default=BASELINE, help=f"baseline file (default: {BASELINE})")
    ap.add_argument(
        "--update",
        action="store_true",
        help="write the baseline from these results instead of checking (several files: median, measured noise)",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="with --update: keep the baseline entries these results lack (tolerances re-derived from their runs)",
    )
    ap.add_argument(
        "--this-cpu",
        action="store_true",
        help="with --update --merge: entries measured on another CPU keep their figures and get these runs as "
        "this CPU's own baseline (for ratios that differ by CPU beyond one tolerance)",
    )
    ap.add_argument(
        "--tables",
        action="store_true",
        help="rewrite the performance tables of README.md and docs/performance.md from the baseline (no results)",
    )
    args = ap.parse_args(argv)
    try:
        baseline = load_baseline(args.baseline)
        if args.tables:
            if args.results or args.update:
                raise GateInputError("--tables takes no results files and no --update (--update rewrites them too)")
            for path in write_tables(baseline):
                print(f"gate: rewrote the table in {path}")
            return 0
        if not args.results:
            raise GateInputError("give a pytest-benchmark --benchmark-json results file (or --tables)")
        runs, infos = zip(*(read_ratios(p) for p in args.results), strict=True)
        if args.merge and not args.update:
            raise GateInputError("--merge only goes with --update")
        if args.this_cpu and not (args.update and args.merge):
            raise GateInputError("--this-cpu only goes with --update --merge")
        if args.update:
            new = update(baseline, list(runs), infos[-1], merge=args.merge, this_cpu=args.this_cpu)
            args.baseline.write_text(json.dumps(new, indent=2) + "\n")
            if args.baseline == BASELINE:
                for path in write_tables(new):
                    print(f"gate: rewrote the table in {path}")
            for name, e in new["benchmarks"].items():
                before = baseline["benchmarks"].get(name, {}).get("tolerance")
                if before is not None and before != e["tolerance"]:
                    print(f"gate: {name}: tolerance +{before:.0%} -> +{e['tolerance']:.0%}")
            print(f"gate: wrote {args.baseline} ({len(new['benchmarks'])} benchmarks from {len(runs)} run(s))")
            return 0
        if len(runs) != 1:
            raise GateInputError("checking takes exactly one results file (several are only for --update)")
        if not baseline["benchmarks"]:
            raise GateInputError(
                f"baseline {args.baseline} is missing or empty; create it with: "
                f"python benchmarks/gate.py --update {args.results[0]}"
            )
        if loose := over_cap(baseline):
            raise GateInputError(f"baseline {args.baseline}:\n  " + "\n  ".join(loose))
    except GateInputError as e:
        print(f"gate: error: {e}", file=sys.stderr)
        return 2
    lines, failures = check(baseline, runs[0], _machine(infos[0]).get("cpu"))
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
