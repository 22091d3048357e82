"""The tables of a profile result: per-sample values, means with their 95% intervals, per-layer
allocations, and the Spearman correlations across layers between the measures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lukv_bench.profile.result import ProfileResult, SampleProfile
from lukv_bench.profile.stats import spearman, summarize

#: one table cell: (measure, param, layer, head, [(sample, value, tokens)])
Cell = tuple[str, str, int, str, list[tuple[SampleProfile, float, float | None]]]


def cells(result: ProfileResult) -> Iterable[Cell]:
    """(measure, param, layer, head, [(sample, value, tokens)]) for every table cell.

    LMBA and LMBO values are fractions of the prompt (tokens are kept alongside); head ``all``
    is the mean over KV heads.
    """
    s = result.settings
    for name, params, attr in (("lmba", s.taus, "lmba"), ("lmbo", s.cos_thresholds, "lmbo")):
        for pi, param in enumerate(params):
            for layer in range(result.n_layers):
                heads: list[tuple[str, Any]] = [("all", None)] + [(str(h), h) for h in range(result.n_kv_heads)]
                for label, h in heads:
                    cell = []
                    for sp in result.samples:
                        row = getattr(sp, attr)[pi, layer]
                        tokens = float(row.mean() if h is None else row[h])
                        cell.append((sp, tokens / sp.prompt_tokens, tokens))
                    yield name, f"{param:g}", layer, label, cell
    for layer in range(result.n_layers):
        cell = [(sp, float(sp.ablation[layer]), None) for sp in result.samples if sp.ablation is not None]
        yield "ablation", "", layer, "all", cell


def sample_rows(result: ProfileResult) -> list[dict[str, Any]]:
    """One row per sample, measure, parameter, layer and head."""
    return [
        {"task": sp.task, "sample_id": sp.sample_id, "measure": m, "param": p, "layer": layer, "head": h,
         "value": v, "tokens": t}
        for m, p, layer, h, cell in cells(result)
        for sp, v, t in cell
    ]


def measure_rows(result: ProfileResult) -> list[dict[str, Any]]:
    """Mean, std and 95% interval over samples per measure, parameter, layer and head."""
    rows = []
    for m, p, layer, h, cell in cells(result):
        tokens = [t for _, _, t in cell if t is not None]
        rows.append({
            "measure": m, "param": p, "layer": layer, "head": h,
            "unit": "nats/token" if m == "ablation" else "fraction of prompt",
            **summarize([v for _, v, _ in cell]),
            "mean_tokens": sum(tokens) / len(tokens) if tokens else None,
        })
    return rows


def allocation_rows(result: ProfileResult) -> list[dict[str, Any]]:
    """Per policy and layer: kept fraction of the prompt (mean, spread) and mean tokens."""
    labels = list(result.samples[0].allocations) if result.samples else []
    rows = []
    for label in labels:
        for layer in range(result.n_layers):
            ratios = [sp.allocations[label][layer] / sp.prompt_tokens for sp in result.samples]
            tokens = [sp.allocations[label][layer] for sp in result.samples]
            rows.append({"policy": label, "budget": result.settings.budget, "layer": layer, **summarize(ratios),
                         "mean_tokens": sum(tokens) / len(tokens)})
    return rows


def layer_series(result: ProfileResult) -> dict[str, list[float]]:
    """Per-layer means (over samples, head ``all``) of every measure and parameter, by label."""
    out: dict[str, list[float]] = {}
    for m, p, _, h, cell in cells(result):
        if h != "all" or not cell:
            continue
        label = f"{m.upper()} {p}" if p else m
        out.setdefault(label, []).append(sum(v for _, v, _ in cell) / len(cell))
    return out


def correlations(result: ProfileResult) -> tuple[list[str], list[list[float | None]]]:
    """Spearman correlation across layers between every pair of layer series."""
    series = layer_series(result)
    labels = list(series)
    return labels, [[spearman(series[a], series[b]) for b in labels] for a in labels]
