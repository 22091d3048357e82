"""kvpress's side of the kept-set agreement; run by agreement_kvpress.py inside the kvpress environment.

Usage (normally only through ``agreement_kvpress.py``)::

    KVPRESS_VENV/bin/python benchmarks/peers/kvpress_kept.py JOB.json RESULT.json

``JOB.json`` holds the model folder, the samples as token ids (``context_ids`` and ``question_ids``
exactly as lukv-bench tokenised them, so both sides see the same tokens), the settings (lukv-bench
preset name, kvpress compression ratio, ratio 0 meaning no press, and an optional diagnostic
``variant`` of the press, see ``kvpress_side.make_press``), ``max_new_tokens`` and the
torch thread count. Every (sample, setting) runs kvpress's own pipeline steps
(``KVPressTextGenerationPipeline._forward``: prefill of the context with the press attached, then the
question and greedy decoding) and records, per layer and KV head, the positions the press kept:

- a press that frees entries: the rows of the compressed keys, matched to the rows of the keys it was
  given (a gather copies rows exactly, and RoPE makes every position's key distinct);
- a press that masks entries (``module.masked_key_indices``, AdaKV-style, in ``compress`` or, like
  KVzip, after its own scoring pass): every position minus the masked ones, i.e. what it would have kept.

Only ``kvpress_side.py`` (the press mapping and pipeline), ``agreement.py`` (the bitmap encoding) and
lukv-bench's dependency-free ``PeakMemory`` are borrowed; lukv-bench's dependencies are not installed here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from agreement import encode_kept  # this folder is on sys.path when the file runs as a script
from kvpress_side import make_pipeline, make_press


def kept_positions(before: torch.Tensor, after: torch.Tensor, masked: tuple | None) -> tuple[list[list[int]], str]:
    """Per KV head the positions kept, and how the press dropped the rest ("freed" or "masked").

    ``before`` and ``after`` are the keys [1, H, n, D] given to and returned by the press's ``compress``;
    ``masked`` is the layer's ``masked_key_indices`` (batch, head, position) after it, or None.
    """
    n_heads, n = before.shape[1], before.shape[2]
    if masked is not None:
        if after.shape != before.shape:
            raise RuntimeError("a press both masked and freed entries; kvpress_kept.py reads only one of the two")
        return unmasked(masked, n_heads, n), "masked"
    kept = []
    for h in range(n_heads):
        rows = before[0, h].contiguous().numpy()
        where = {rows[j].tobytes(): j for j in range(n)}
        if len(where) != n:
            raise RuntimeError(f"head {h}: {n - len(where)} positions share a key; their rows cannot be told apart")
        out = after[0, h].contiguous().numpy()
        try:
            kept.append(sorted(where[out[i].tobytes()] for i in range(out.shape[0])))
        except KeyError:
            raise RuntimeError(f"head {h}: the press returned a key that is no input row (it merged or changed "
                               "keys); kept positions cannot be read from it") from None
    return kept, "freed"


def unmasked(masked: tuple, n_heads: int, n: int) -> list[list[int]]:
    """Per head the positions a layer's ``masked_key_indices`` (batch, head, position) leave unmasked."""
    dropped: list[set[int]] = [set() for _ in range(n_heads)]
    for h, j in zip(masked[1].tolist(), masked[2].tolist()):
        dropped[h].add(j)
    return [[j for j in range(n) if j not in dropped[h]] for h in range(n_heads)]


def watch(press, record: dict[int, tuple[list[list[int]], str]]) -> None:
    """Wrap ``press.compress`` so that every layer's kept positions land in ``record[layer]``."""
    compress = press.compress

    def watched(module, hidden_states, keys, values, attentions, kwargs):
        new_keys, new_values = compress(module, hidden_states, keys, values, attentions, kwargs)
        record[module.layer_idx] = kept_positions(keys, new_keys, getattr(module, "masked_key_indices", None))
        return new_keys, new_values

    press.compress = watched


def main(job_path: str, out_path: str) -> None:
    """Run every (sample, setting) of the job and write the result JSON."""
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(int(job["threads"]))
    import kvpress
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    pipe = make_pipeline(model, tokenizer)
    runs = []
    for setting in job["settings"]:
        preset, ratio = setting["preset"], float(setting["ratio"])
        impl = "eager" if preset == "h2o" else "sdpa"  # ObservedAttention reads the attention weights
        if model.config._attn_implementation != impl:
            model.set_attn_implementation(impl)
        for sample in job["samples"]:
            press = None if ratio == 0 else make_press(preset, ratio, setting.get("variant", ""))
            record: dict[int, tuple[list[list[int]], str]] = {}
            if press is not None:
                watch(press, record)
            for block in model.model.layers:  # masks of an earlier run must not leak into this one
                block.self_attn.masked_key_indices = None
            context = torch.tensor([sample["context_ids"]])
            question = torch.tensor([sample["question_ids"]])
            n = context.shape[1]
            t0 = time.perf_counter()
            with torch.no_grad():
                answer = pipe._forward({"context_ids": context, "questions_ids": [question]},
                                       max_new_tokens=int(job["max_new_tokens"]), press=press, cache=DynamicCache())[0]
            wall = time.perf_counter() - t0
            if press is not None and not record:  # a press that masks after the prefill (KVzip), not in compress
                for block in model.model.layers:
                    masked = getattr(block.self_attn, "masked_key_indices", None)
                    if masked is not None:
                        record[block.self_attn.layer_idx] = (unmasked(masked, model.config.num_key_value_heads, n),
                                                             "masked")
            if press is not None and sorted(record) != list(range(len(model.model.layers))):
                raise RuntimeError(f"{preset} at ratio {ratio}: the press compressed layers {sorted(record)} only")
            runs.append({
                "preset": preset,
                "ratio": ratio,
                "variant": setting.get("variant", ""),
                "press": type(press).__name__ if press is not None else "no press",
                "sample_id": sample["id"],
                "context_tokens": n,
                "how": sorted({how for _, how in record.values()}) or ["none"],
                "kept": [[encode_kept(head, n) for head in record[layer][0]] for layer in sorted(record)],
                "answer": answer,
                "wall_s": wall,
            })
            print(f"kvpress_kept: {preset} {setting.get('variant', '')} cr={ratio} {sample['id']}: {wall:.2f}s "
                  f"{answer!r}", flush=True)
    result = {
        "versions": {"kvpress": kvpress.__version__ if hasattr(kvpress, "__version__") else _version("kvpress"),
                     "transformers": transformers.__version__, "torch": torch.__version__},
        "threads": torch.get_num_threads(),
        "runs": runs,
    }
    Path(out_path).write_text(json.dumps(result))


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: kvpress_kept.py JOB.json RESULT.json")
    main(sys.argv[1], sys.argv[2])
