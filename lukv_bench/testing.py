"""What tests, benchmarks and plugin authors share: a tiny random-weight model that needs no download.

:func:`tiny_model` builds a small random Llama with GQA in-process (fixed seed, byte-level
tokenizer); :func:`save_tiny_model` writes it as an ordinary transformers model folder, so a suite
can name it (``model: /path/to/tiny``) and every run goes through the same loading path as any
local model. :class:`DyingUnitWorker` injects worker crashes into the Ray executor. Nothing in the
product imports this module.
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


def tiny_model(
    n_layers: int = 4, n_heads: int = 4, n_kv_heads: int = 2, head_dim: int = 16, seed: int = 0
) -> LoadedModel:
    """A small random Llama with GQA, built in-process with a fixed seed (no files, no network)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=n_heads * head_dim,
        intermediate_size=4 * n_heads * head_dim,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # larger-than-default init so attention is peaked and eviction changes outputs measurably
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                torch.nn.init.normal_(proj.weight, std=0.2)
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, name=TINY_NAME, source="tiny")


def save_tiny_model(folder: Path, **sizes: int) -> Path:
    """Write :func:`tiny_model` (with ``sizes``) and its tokenizer to ``folder``, a loadable model folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        lm = tiny_model(**sizes)
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
