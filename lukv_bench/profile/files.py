"""The files of a profile: ``profile.json``, the measures/samples/allocations/correlations CSVs and the plots."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lukv_bench.profile.plots import draw_all
from lukv_bench.profile.result import ProfileResult
from lukv_bench.profile.tables import allocation_rows, correlations, measure_rows, sample_rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in cols})
    return path


def write_outputs(result: ProfileResult, out: Path) -> dict[str, Path]:
    """Write profile.json, measures/samples/allocations/correlations CSVs and the PNG plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    measures, allocations = measure_rows(result), allocation_rows(result)
    labels, matrix = correlations(result)
    files = {
        "measures": _write_csv(out / "measures.csv", measures),
        "samples": _write_csv(out / "samples.csv", sample_rows(result)),
        "allocations": _write_csv(out / "allocations.csv", allocations),
        "correlations": _write_csv(
            out / "correlations.csv",
            [{"measure": a, **{b: matrix[i][j] for j, b in enumerate(labels)}} for i, a in enumerate(labels)],
            ["measure", *labels],
        ),
    }
    doc = {
        "model": result.model,
        "data_source": result.data_source,
        "settings": asdict(result.settings),
        "n_layers": result.n_layers,
        "n_kv_heads": result.n_kv_heads,
        "samples": [sp.describe() for sp in result.samples],
        "skipped": result.skipped,
        "ablation_skipped": result.ablation_skipped(),
        "measures": measures,
        "allocations": allocations,
        "correlations": {"method": "spearman across layers", "measures": labels, "matrix": matrix},
    }
    files["json"] = out / "profile.json"
    files["json"].write_text(json.dumps(doc, indent=2))
    files.update(draw_all(result, out, measures, allocations, labels, matrix))
    return files
