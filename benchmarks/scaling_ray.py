"""Ray executor: units' time with 1 worker against 2 workers on one local cluster (docs/scaling.md).

Runs the suite below (the embedded model, 8 needle depths) through
``Runner.run(RayExecutor())`` with ``resources: {workers: 1}`` and ``{workers: 2}``, in pairs, on one
local Ray cluster started once (``ray.init(num_cpus=CPUS)``). For each run it prints the executor's
start (until the first worker has loaded the model), the units (from then to the last record), the
work the workers reported (per unit: prefill + every setting's compression and decode share, from
the records) and work / units time (units in flight on average), then the speed-up of the units.
It also checks that both runs wrote the same records (scores, predictions, kv_bytes, layer budgets).

Run (needs the ``ray`` extra and the embedded model): ``python benchmarks/scaling_ray.py [PAIRS]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

SUITE = """\
name: scaling
model: embedded
policies: [full, snapkv, layer-uncertainty]
budgets: [0.2, 0.5]
tasks:
  - {name: passkey, type: needle, lengths: [500], depths: [0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.85, 0.95]}
generation: {max_new_tokens: 24}
window: 16
threads: 1
resources: {workers: WORKERS, cpus_per_worker: 1}
"""
CPUS = 2
SAME = ("score", "prediction", "kv_bytes", "layer_budgets")


def one_run(workers: int, folder: Path) -> dict:
    """Run the suite with ``workers`` Ray workers; return its timings and records."""
    from lukv_bench.config.suite import load_suite
    from lukv_bench.run.executors import RayExecutor
    from lukv_bench.run.results import read_records
    from lukv_bench.run.runner import Runner

    path = folder / f"scaling-{workers}.yaml"
    path.write_text(SUITE.replace("WORKERS", str(workers)))
    runner = Runner(load_suite(path), folder / f"out-{workers}", progress=False)
    executor = RayExecutor()
    t0 = time.perf_counter()
    start = executor.start
    marks: dict[str, float] = {}

    def timed_start(evaluator):
        catalog = start(evaluator)
        marks["started"] = time.perf_counter()
        return catalog

    executor.start = timed_start
    results = runner.run(executor)
    end = time.perf_counter()
    records = list(read_records(results))
    units: dict[tuple, float] = {}
    for r in records:
        unit = (r["task"], r["sample_id"])
        own = (r.get("compress_s") or 0.0) + (r.get("decode_s") or 0.0)
        units[unit] = units.get(unit, r.get("prefill_s") or 0.0) + own  # the unit's one prefill, counted once
    return {
        "workers": workers,
        "start_s": marks["started"] - t0,
        "units_s": end - marks["started"],
        "work_s": sum(units.values()),
        "units": len(units),
        "records": {(r["task"], r["sample_id"], r["policy"], json.dumps(r["budget"])): tuple(r.get(f) for f in SAME)
                    for r in records},
    }


def main(argv: list[str]) -> int:
    import ray

    pairs = int(argv[0]) if argv else 2
    ray.init(num_cpus=CPUS, include_dashboard=False, logging_level="WARNING")
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for p in range(pairs):
                pair = []
                for workers in (1, 2):
                    folder = Path(tmp) / f"pair{p}"
                    folder.mkdir(exist_ok=True)
                    pair.append(one_run(workers, folder))
                if pair[0]["records"] != pair[1]["records"]:
                    print(f"pair {p}: 1-worker and 2-worker records differ", file=sys.stderr)
                    return 1
                rows.append(pair)
    finally:
        ray.shutdown()
    print(f"load average after the runs: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    print("| run | workers | start (s) | units (s) | work (s) | work per unit (s) | units in flight |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p, pair in enumerate(rows):
        for r in pair:
            print(f"| {chr(97 + p)} | {r['workers']} | {r['start_s']:.1f} | {r['units_s']:.1f} | {r['work_s']:.1f} "
                  f"| {r['work_s'] / r['units']:.1f} | {r['work_s'] / r['units_s']:.2f} |")
    for p, (one, two) in enumerate(rows):
        print(f"pair {chr(97 + p)}: units 2 workers / 1 worker speed-up {one['units_s'] / two['units_s']:.2f}x; "
              f"records identical")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
