"""kvpress's side of the side-by-side run; executed by compare_kvpress.py inside the kvpress environment.

Usage (normally only through ``compare_kvpress.py``)::

    KVPRESS_VENV/bin/python benchmarks/peers/kvpress_side.py JOB.json RESULT.json

``JOB.json`` holds the model folder (a plain transformers folder), the samples (context and question
text exactly as lukv-bench renders them), the policies (lukv-bench names) and kvpress compression
ratios, ``max_new_tokens`` and the torch thread count. Every sample runs once without a press
(FullKV) and once per (policy, ratio) through kvpress's own ``KVPressTextGenerationPipeline``: one
prefill with the press attached, then greedy decoding, as a kvpress user would run it.

Per run it records the answer, the wall time of the pipeline call, the bytes of the cache tensors
after the call (what the process actually holds), the entries AdaKV masked instead of freeing,
per-layer cache lengths (to see whether PyramidKV's pyramid applied or fell back to uniform) and the
peak memory of the call, measured with lukv-bench's own ``PeakMemory`` (same method on both sides).

This file must not import anything of lukv-bench beyond ``lukv_bench.runtime.memory``: lukv-bench's
dependencies are not installed here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

T_START = time.perf_counter()

# kvpress runs with its own transformers; only the dependency-free peak-memory helper is borrowed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402
import torch  # noqa: E402

from lukv_bench.runtime.memory import PeakMemory  # noqa: E402


def make_press(policy: str, ratio: float, variant: str = ""):
    """The kvpress press that implements lukv-bench policy ``policy`` at compression ratio ``ratio``.

    ``variant`` names a diagnostic change of kvpress's press (agreement_kvpress.py): ``"whole prompt"``
    makes KVzip repeat and score the whole prompt, chat template prefix included, as lukv-bench does.

    Hyper-parameters are kvpress 0.5.5's defaults, spelled out; benchmarks/peers/kvpress_suite.yaml and
    kvpress_agreement.yaml set lukv-bench's side to the same values. ``criticalkv`` maps to
    ``CriticalAdaKVPress`` because lukv-bench's preset uses AdaKV's head-wise budgets; ``kvzip`` to
    ``KVzipPress(layerwise=True)`` (kvpress's default ranks all layers together; lukv-bench's preset is uniform).
    """
    from kvpress import (
        AdaKVPress,
        ChunkKVPress,
        CriticalAdaKVPress,
        ExpectedAttentionPress,
        KeyDiffPress,
        KVzipPress,
        ObservedAttentionPress,
        PyramidKVPress,
        SnapKVPress,
        StreamingLLMPress,
        TOVAPress,
    )

    if policy == "streaming":
        return StreamingLLMPress(compression_ratio=ratio, n_sink=4)
    if policy == "snapkv":
        return SnapKVPress(compression_ratio=ratio, window_size=64, kernel_size=5)
    if policy == "pyramidkv":
        return PyramidKVPress(compression_ratio=ratio, window_size=64, kernel_size=5, beta=20)
    if policy == "adakv":
        return AdaKVPress(SnapKVPress(compression_ratio=ratio, window_size=64, kernel_size=5), alpha_safeguard=0.2)
    if policy == "h2o":
        return ObservedAttentionPress(compression_ratio=ratio)
    if policy == "tova":
        return TOVAPress(compression_ratio=ratio)
    if policy == "keydiff":
        return KeyDiffPress(compression_ratio=ratio)
    if policy == "criticalkv":
        return CriticalAdaKVPress(SnapKVPress(compression_ratio=ratio, window_size=64, kernel_size=5),
                                  alpha_safeguard=0.2, epsilon=1e-4, first_stage_ratio=0.5)
    if policy == "chunkkv":
        return ChunkKVPress(SnapKVPress(compression_ratio=ratio, window_size=64, kernel_size=5), chunk_length=20)
    if policy == "expected-attention":
        return ExpectedAttentionPress(compression_ratio=ratio, n_future_positions=512, n_sink=4, use_covariance=True,
                                      use_vnorm=True, epsilon=0.0)
    if policy == "kvzip" and variant == "whole prompt":
        return whole_prompt_kvzip(ratio)
    if policy == "kvzip":  # layerwise: the same number of entries per layer, as lukv-bench's uniform budgets
        return KVzipPress(compression_ratio=ratio, layerwise=True, n_sink=4, chunk_size=2048)
    raise SystemExit(f"kvpress_side: no kvpress press is mapped to policy {policy!r} (variant {variant!r})")


def whole_prompt_kvzip(ratio: float):
    """KVzipPress (as ``make_press`` configures it) repeating the whole prompt, chat-template prefix included:
    the repeat then reads, and its attention is normalised over, every prompt token, as in lukv-bench."""
    from kvpress import KVzipPress

    class WholePromptKVzip(KVzipPress):
        def prepare(self, model, tokenizer, prev_postfix_size=8):
            self.prefix_length = 0  # read by prepare and, after it, as the first scored position
            return super().prepare(model, tokenizer, prev_postfix_size)

    return WholePromptKVzip(compression_ratio=ratio, layerwise=True, n_sink=4, chunk_size=2048)


def make_pipeline(model, tokenizer):
    """kvpress's pipeline, able to ask the question when layers hold different numbers of tokens.

    With per-layer cache lengths (PyramidKV), transformers builds the attention mask of a
    multi-token forward from one layer's length and SDPA fails on the other layers. Feeding the
    question one token at a time needs no mask; only then is that path taken.
    """
    from kvpress import KVPressTextGenerationPipeline

    class Pipeline(KVPressTextGenerationPipeline):
        tokenwise_questions = 0  #: how many questions were fed token by token

        def generate_answer(self, question_ids, cache, context_length, max_new_tokens):
            lengths = {cache.get_seq_length(i) for i in range(len(cache))}
            if len(lengths) > 1 and question_ids.shape[1] > 1:
                type(self).tokenwise_questions += 1
                for j in range(question_ids.shape[1] - 1):
                    pos = torch.tensor([[context_length + j]], device=self.model.device)
                    self.model(input_ids=question_ids[:, j : j + 1], past_key_values=cache, position_ids=pos)
                shift = question_ids.shape[1] - 1
                return super().generate_answer(question_ids[:, -1:], cache, context_length + shift, max_new_tokens)
            return super().generate_answer(question_ids, cache, context_length, max_new_tokens)

    return Pipeline(model=model, tokenizer=tokenizer, device=model.device)


def cache_figures(cache, model) -> dict:
    """Bytes held by the cache tensors, per-layer lengths and AdaKV's masked entries."""
    nbytes, lengths = 0, []
    for layer in cache.layers:
        nbytes += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        lengths.append(int(layer.keys.shape[2]))
    masked = 0
    for block in model.model.layers:
        idx = getattr(block.self_attn, "masked_key_indices", None)
        if idx is not None:
            masked += int(idx[2].numel())
    return {"kv_bytes": nbytes, "layer_len_min": min(lengths), "layer_len_max": max(lengths), "masked_entries": masked}


def main(job_path: str, out_path: str) -> None:
    """Run every (sample, setting) of the job and write the result JSON."""
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(int(job["threads"]))
    import kvpress
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    t_imported = time.perf_counter()
    rss_before_model = psutil.Process().memory_info().rss
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    pipe = make_pipeline(model, tokenizer)
    t_loaded = time.perf_counter()

    settings = [(None, 0.0)] + [(p, r) for p in job["policies"] for r in job["ratios"]]
    runs = []
    for policy, ratio in settings:
        press = None if policy is None else make_press(policy, ratio)
        # ObservedAttention needs the attention weights, which only eager attention returns
        impl = "eager" if policy == "h2o" else "sdpa"
        if model.config._attn_implementation != impl:
            model.set_attn_implementation(impl)
        for sample in job["samples"]:
            for block in model.model.layers:  # AdaKV's masks of an earlier run must not leak into this one
                block.self_attn.masked_key_indices = None
            cache = DynamicCache()
            before = pipe.tokenwise_questions
            t0 = time.perf_counter()
            with PeakMemory("cpu") as mem:
                answer = pipe(
                    sample["context"], question=sample["question"], press=press, cache=cache,
                    max_new_tokens=int(job["max_new_tokens"]),
                )["answer"]
            wall = time.perf_counter() - t0
            runs.append({
                "policy": policy or "full",
                "ratio": ratio,
                "sample_id": sample["id"],
                "answer": answer,
                "wall_s": wall,
                "peak_rss_bytes": mem.peak,
                "context_tokens": int(pipe.preprocess(sample["context"], [sample["question"]], "", 10**10)[
                    "context_ids"].shape[1]),
                "tokenwise_question": pipe.tokenwise_questions > before,
                **cache_figures(cache, model),
            })
            print(f"kvpress_side: {policy or 'full'} cr={ratio} {sample['id']}: {wall:.2f}s {answer!r}", flush=True)
    t_end = time.perf_counter()
    result = {
        "versions": {"kvpress": kvpress.__version__ if hasattr(kvpress, "__version__") else _version("kvpress"),
                     "transformers": transformers.__version__, "torch": torch.__version__},
        "threads": torch.get_num_threads(),
        "import_s": t_imported - T_START,
        "model_load_s": t_loaded - t_imported,
        "sweep_s": t_end - t_loaded,
        "rss_before_model_bytes": rss_before_model,
        "runs": runs,
    }
    Path(out_path).write_text(json.dumps(result, indent=2))


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: kvpress_side.py JOB.json RESULT.json")
    main(sys.argv[1], sys.argv[2])
