"""What tests, benchmarks and plugin authors share: a tiny random-weight model that needs no download.

:func:`tiny_model` builds a small random Llama with GQA in-process (fixed seed, byte-level
tokenizer), or a model of another family (:data:`FAMILIES`: Mistral, Qwen2/3, Phi-3, Gemma 2/3, OLMo 2,
GPT-NeoX) from its transformers config class; :func:`save_tiny_model` writes it as an ordinary
transformers model folder, so a suite can name it (``model: /path/to/tiny``) and every run goes
through the same loading path as any local model. :class:`DyingUnitWorker` injects worker crashes
into the Ray executor. Nothing in the product imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lukv_bench.records import Record
from lukv_bench.run.executors import UnitWorker
from lukv_bench.runtime.models import LoadedModel
from lukv_bench.units import Unit

TINY_NAME = "tiny-random-llama"


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + BOS/EOS) that needs no files: for tiny-model tests."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<s>"] = len(vocab)
    vocab["</s>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


#: model families :func:`tiny_model` can build: transformers config and model class, and what each adds
#: to a plain Llama (the architectural differences the cache runtime must handle)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "GQA, RoPE"),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", "Llama 3 RoPE scaling (rope_type llama3)"),
    "mistral": ("MistralConfig", "MistralForCausalLM", "sliding-window attention in every layer"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "q/k/v biases; sliding window on the upper layers"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "per-head q/k RMSNorm"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", "fused qkv projection, sliding window, partial rotary"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", "attention logit soft-capping, alternating sliding layers"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", "q/k norm, local/global layers with their own RoPE bases"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", "q/k RMSNorm over the whole projection"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", "partial rotary, parallel residual, fused qkv"),
}


def _family_config(family: str, tok, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int,
                   sliding_window: int) -> Any:
    """The transformers config of a tiny ``family`` model (see :data:`FAMILIES`)."""
    import transformers

    hidden = n_heads * head_dim
    common: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    gqa = dict(num_key_value_heads=n_kv_heads, head_dim=head_dim)
    sliding_every_other = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    extra: dict[str, Any] = {
        "llama": gqa,
        "llama3": {**gqa, "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
        "mistral": {**gqa, "sliding_window": sliding_window},
        "qwen2": {"num_key_value_heads": n_kv_heads, "use_sliding_window": True,
                  "sliding_window": sliding_window, "max_window_layers": n_layers // 2},
        "qwen3": gqa,
        "phi3": {"num_key_value_heads": n_kv_heads, "sliding_window": sliding_window,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
        # a cap of 5 (released Gemma 2: 50) so that the tiny model's logits are really capped
        "gemma2": {**gqa, "sliding_window": sliding_window, "layer_types": sliding_every_other,
                   "query_pre_attn_scalar": 2 * head_dim, "hidden_activation": "gelu_pytorch_tanh",
                   "attn_logit_softcapping": 5.0},
        "gemma3": {**gqa, "sliding_window": sliding_window, "layer_types": sliding_every_other,
                   "query_pre_attn_scalar": 2 * head_dim, "hidden_activation": "gelu_pytorch_tanh"},
        "olmo2": {"num_key_value_heads": n_kv_heads},
        "gpt_neox": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                         "partial_rotary_factor": 0.5}, "use_parallel_residual": True},
    }[family]
    return getattr(transformers, FAMILIES[family][0])(**common, **extra)


def tiny_model(
    n_layers: int = 4,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int = 16,
    seed: int = 0,
    family: str = "llama",
    sliding_window: int = 24,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """A small random model of ``family`` (a key of :data:`FAMILIES`), built in-process with a fixed seed.

    GQA where the family has it (``n_kv_heads``); ``sliding_window`` is the window of the families
    with sliding-window layers, small so that test prompts exceed it. No files, no network.
    """
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
    tok = byte_tokenizer()
    config = _family_config(family, tok, n_layers, n_heads, n_kv_heads, head_dim, sliding_window)
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = getattr(transformers, FAMILIES[family][1])(config)
        # larger-than-default init so attention is peaked and eviction changes outputs measurably
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in _QUERY_KEY_PROJECTIONS:
                torch.nn.init.normal_(module.weight, std=0.2)
    model.to(dtype).eval()
    name = TINY_NAME if family == "llama" else f"tiny-random-{family}"
    return LoadedModel(model=model, tokenizer=tok, name=name, source="tiny")


#: projections whose weights :func:`tiny_model` scales up (fused ones included)
_QUERY_KEY_PROJECTIONS = frozenset({"q_proj", "k_proj", "qkv_proj", "query_key_value"})


def save_tiny_model(folder: Path, **options: Any) -> Path:
    """Write :func:`tiny_model` (with ``options``: sizes, ``family``, ``sliding_window``, ``dtype``) and its
    tokenizer to ``folder``, a loadable model folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        lm = tiny_model(**options)
        folder.mkdir(parents=True, exist_ok=True)
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
    return folder


class DyingUnitWorker(UnitWorker):
    """A Ray worker that crashes (``os._exit``) after the first record of a chosen sample's unit, on the unit's
    first ``attempts`` attempts: fault injection for the Ray executor's retry tests.

    Use ``RayExecutor(worker=DyingUnitWorker, worker_args=(task, sample, attempts))``.
    """

    def __init__(self, suite: Any, task: str, sample: str, attempts: int = 1) -> None:
        super().__init__(suite)
        self.target = (task, sample, attempts)

    def run(self, unit: Unit) -> list[Record]:
        """The unit's records, unless this unit is the target: then the process dies after its first record."""
        task, sample, attempts = self.target
        if unit.task != task or sample not in unit.samples or unit.attempt > attempts:
            return super().run(unit)
        assert self.session is not None, "setup() first"
        for _ in self.session.evaluate(unit):
            os._exit(1)  # a worker crash mid-unit
        return []
