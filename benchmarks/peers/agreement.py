"""Agreement of kept token sets between lukv-bench and kvpress: the pure part (no torch, no kvpress).

Both sides of ``agreement_kvpress.py`` import this file: ``kvpress_kept.py`` (in kvpress's own
environment) encodes the positions a press kept with :func:`encode_kept`, the driver (in
lukv-bench's environment) decodes them with :func:`parse_kept_run` and compares them with
lukv-bench's plan (:func:`compare_kept`, :func:`summarize_agreement`). It needs only the standard
library, so it runs in both environments and its tests need neither kvpress nor a model.

A *kept set* is the set of prompt positions one (layer, KV head) holds after compression. kvpress
either frees evicted entries (the positions are read from the compressed cache) or masks them
(AdaKV-style presses: the positions are every position minus the masked ones); the encoding is the
same in both cases, and ``how`` says which it was.
"""

from __future__ import annotations

import base64
import statistics
from collections.abc import Iterable, Sequence

#: a run's kept sets: per layer, per KV head, the ascending kept positions
KeptSets = list[list[list[int]]]


def encode_kept(positions: Iterable[int], n: int) -> str:
    """The positions of one head as a base64 bitmap of ``n`` bits (bit ``j`` set: position ``j`` kept).

    A bitmap is 1 bit per context token, so a whole sweep's kept sets fit a JSON file of a few MB.
    """
    bits = bytearray((n + 7) // 8)
    for j in positions:
        if not 0 <= j < n:
            raise ValueError(f"position {j} outside the context of {n} tokens")
        bits[j >> 3] |= 1 << (j & 7)
    return base64.b64encode(bytes(bits)).decode("ascii")


def decode_kept(bitmap: str, n: int) -> list[int]:
    """The ascending positions of a bitmap written by :func:`encode_kept` for an ``n``-token context."""
    raw = base64.b64decode(bitmap.encode("ascii"), validate=True)
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"bitmap of {len(raw)} bytes for a context of {n} tokens (expected {(n + 7) // 8})")
    kept = [j for j in range(n) if raw[j >> 3] >> (j & 7) & 1]
    if n % 8 and raw[-1] >> (n % 8):
        raise ValueError(f"bitmap sets bits past the context of {n} tokens")
    return kept


def parse_kept_run(run: dict) -> KeptSets:
    """The kept sets of one run of ``kvpress_kept.py``'s result (``{"context_tokens": n, "kept": [[bitmap]]}``)."""
    n = int(run["context_tokens"])
    return [[decode_kept(head, n) for head in layer] for layer in run["kept"]]


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """|A ∩ B| / |A ∪ B| of two position sets; 1.0 when both are empty (they agree on keeping nothing)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def compare_kept(theirs: KeptSets, ours: KeptSets) -> dict:
    """Agreement of two runs' kept sets over every (layer, KV head).

    Returns the mean Jaccard overlap, the share of (layer, head) with identical sets, the share with the
    same number of kept tokens, the share of layers that keep the same total (the layer budget), per
    layer the mean kept tokens per head of each side and the layer's mean Jaccard. Both runs must have
    the same layers and heads.
    """
    if len(theirs) != len(ours) or any(len(a) != len(b) for a, b in zip(theirs, ours)):
        raise ValueError(
            f"kept sets of different shapes: {[len(x) for x in theirs]} heads per layer (kvpress) vs "
            f"{[len(x) for x in ours]} (lukv-bench)"
        )
    per_layer, overlaps, identical, same_count = [], [], 0, 0
    for a_layer, b_layer in zip(theirs, ours):
        layer_j = [jaccard(a, b) for a, b in zip(a_layer, b_layer)]
        overlaps += layer_j
        identical += sum(set(a) == set(b) for a, b in zip(a_layer, b_layer))
        same_count += sum(len(a) == len(b) for a, b in zip(a_layer, b_layer))
        per_layer.append({
            "kept_kvpress": statistics.mean(len(a) for a in a_layer),
            "kept_lukv": statistics.mean(len(b) for b in b_layer),
            "jaccard": statistics.mean(layer_j),
        })
    cells = len(overlaps)
    return {
        "jaccard_mean": statistics.mean(overlaps),
        "identical_share": identical / cells,
        "same_count_share": same_count / cells,
        "same_layer_budget_share": statistics.mean(
            sum(map(len, a)) == sum(map(len, b)) for a, b in zip(theirs, ours)),
        "layers": per_layer,
    }


def same_answer(a: str, b: str) -> bool:
    """Whether two answers are the same text, ignoring surrounding white space."""
    return a.strip() == b.strip()


def summarize_agreement(pairs: Sequence[dict]) -> list[dict]:
    """One row per (preset, variant, kvpress ratio) from per-sample comparisons, in first-seen order.

    Each item of ``pairs`` is one sample: ``preset``, ``variant``, ``press``, ``ratio``, ``budget``, ``how``
    (freed | masked), ``agreement`` (a :func:`compare_kept` result) and ``answers`` (``[kvpress, lukv]``,
    or None when the variant has no decoding of its own). The row holds the means over samples, the
    per-layer budgets averaged over samples, and the number of samples with the same answer.
    """
    groups: dict[tuple, list[dict]] = {}
    for p in pairs:
        groups.setdefault((p["preset"], p["variant"], p["ratio"]), []).append(p)
    rows = []
    for (preset, variant, ratio), items in groups.items():
        agreements = [p["agreement"] for p in items]
        n_layers = len(agreements[0]["layers"])
        layers = [
            {key: statistics.mean(a["layers"][i][key] for a in agreements)
             for key in ("kept_kvpress", "kept_lukv", "jaccard")}
            for i in range(n_layers)
        ]
        answered = [p["answers"] for p in items if p["answers"] is not None]
        rows.append({
            "preset": preset,
            "variant": variant,
            "press": items[0]["press"],
            "how": items[0]["how"],
            "ratio": ratio,
            "budget": items[0]["budget"],
            "samples": len(items),
            "jaccard_mean": statistics.mean(a["jaccard_mean"] for a in agreements),
            "identical_share": statistics.mean(a["identical_share"] for a in agreements),
            "same_count_share": statistics.mean(a["same_count_share"] for a in agreements),
            "same_layer_budget_share": statistics.mean(a["same_layer_budget_share"] for a in agreements),
            "kept_kvpress": statistics.mean(layer["kept_kvpress"] for layer in layers),
            "kept_lukv": statistics.mean(layer["kept_lukv"] for layer in layers),
            "layers": layers,
            "same_answers": sum(same_answer(a, b) for a, b in answered) if answered else None,
            "answered": len(answered),
        })
    return rows
