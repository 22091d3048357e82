"""Helpers the tests share (imported as ``support``: conftest.py puts the tests folder on ``sys.path``).

The tiny model's folder and the repository root; prefill statistics built by hand for policy tests; the
lukv-bench CLI as a separate process, for tests that kill a run midway (resume, durability).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lukv_bench.runtime.contract import LayerStats, PrefillStats

#: the tiny random test model as a model folder (written once per test session by conftest.py)
TINY = os.environ["LUKV_TEST_TINY"]
#: a local lm-eval multiple-choice task (``lukv_mc``) over a JSONL file; format ``path`` (JSON-quoted)
MC_YAML = """task: lukv_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""

#: the repository's root folder
ROOT = Path(__file__).resolve().parents[1]


# -- prefill statistics for policy tests ------------------------------------------------------------


def attention_stats(
    layer: int, q: torch.Tensor, k: torch.Tensor, window: int, storage: str = "kv"
) -> LayerStats:
    """LayerStats of one layer from q [Hq, n, D] and k [Hkv, n, D] (values are random)."""
    hq, n, d = q.shape
    group = hq // k.shape[0]
    kq = k.repeat_interleave(group, 0)
    logits = q @ kq.transpose(1, 2) / math.sqrt(d)
    causal = torch.ones(n, n, dtype=torch.bool).triu(1)
    attn = torch.softmax(logits.masked_fill(causal, float("-inf")), dim=-1)  # [Hq, n, n]
    w = min(window, n)
    win = attn[:, n - w :, :]
    prefix = win[:, :, : n - w]
    gen = torch.Generator().manual_seed(1000 + layer)
    keys = k if storage == "kv" else kq
    values = torch.randn(keys.shape, generator=gen)
    # the values' output norms through a random output projection W_o [2d, Hq * d] (CriticalKV)
    w_o = torch.randn(2 * d, hq * d, generator=gen)
    kv_values = values if storage == "kv" else values[::group]
    value_norms = torch.stack(
        [(kv_values[h // group] @ w_o[:, h * d : (h + 1) * d].T).abs().sum(-1) for h in range(hq)]
    )
    return LayerStats(
        layer=layer,
        keys=keys.clone(),
        values=values,
        win_sum=win.sum(1),
        win_sumsq=(win * win).sum(1),
        win_entropy=-(prefix * torch.log(prefix + 1e-10)).sum((1, 2)),
        window=w,
        acc_attn=attn.sum(1),
        last_attn=attn[:, n - 1],
        win_max=win.amax(1) if w else torch.zeros(hq, n),
        value_norms=value_norms,
        queries=q.clone(),
        rotary=rope(d),
        # a stand-in for KVzip's repeat pass at its default chunk: the largest attention from any prompt query
        repeat_max={2048: attn.amax(1)},
    )


def rope(dim: int, base: float = 10000.0):
    """positions -> (cos, sin) [m, dim] of plain RoPE (rotate-half layout), like a model's ``rotary_emb``."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2).float() / dim)

    def cos_sin(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    return cos_sin


def make_stats(
    n_layers: int = 4,
    n_q_heads: int = 4,
    n_kv_heads: int = 2,
    n: int = 24,
    head_dim: int = 8,
    window: int = 4,
    seed: int = 0,
    storage: str = "kv",
    sharpness: list[float] | None = None,
) -> PrefillStats:
    """Random-q/k prefill statistics; ``sharpness[l]`` scales layer l's queries (peakier attention)."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for layer in range(n_layers):
        scale = sharpness[layer] if sharpness else 1.0 + layer
        q = torch.randn(n_q_heads, n, head_dim, generator=gen) * scale
        k = torch.randn(n_kv_heads, n, head_dim, generator=gen)
        layers.append(attention_stats(layer, q, k, window, storage))
    return PrefillStats(layers=layers, n_q_heads=n_q_heads, n_kv_heads=n_kv_heads, storage=storage)


def hand_stats(win_means: list[torch.Tensor], window: int, n_kv_heads: int | None = None) -> PrefillStats:
    """Stats with given window-mean attention per layer ([Hq, n] each); keys zero, no variance."""
    hq, n = win_means[0].shape
    hkv = n_kv_heads or hq
    layers = []
    for layer, mean in enumerate(win_means):
        mean = mean.float()
        layers.append(
            LayerStats(
                layer=layer,
                keys=torch.zeros(hkv, n, 2),
                values=torch.zeros(hkv, n, 2),
                win_sum=mean * window,
                win_sumsq=mean * mean * window,
                win_entropy=torch.zeros(hq),
                window=window,
            )
        )
    return PrefillStats(layers=layers, n_q_heads=hq, n_kv_heads=hkv)


def uncertainty_stats(n: int) -> PrefillStats:
    """Three layers, one head: uniform (MBA 18 of 20 at tau .9), one spike (1), two halves (2)."""
    uniform = torch.zeros(1, n)
    uniform[0, :20] = 1 / 20
    spike = torch.zeros(1, n)
    spike[0, 3] = 1.0
    halves = torch.zeros(1, n)
    halves[0, 1] = halves[0, 7] = 0.5
    return hand_stats([uniform, spike, halves], window=2)


# -- the CLI in another process ------------------------------------------------------------------------


def lukv_bench_command() -> list[str]:
    """argv prefix that runs the installed ``lukv-bench`` (or the CLI module with this interpreter)."""
    exe = Path(sys.executable).with_name("lukv-bench")
    return [str(exe)] if exe.is_file() else [sys.executable, "-c", "from lukv_bench.cli import main; main()"]


def kill_after_records(cmd: list[str], results: Path, cwd: Path, env: dict[str, str] | None = None,
                       records: int = 3, timeout: float = 150) -> None:
    """Start ``cmd`` in its own session and SIGKILL its whole process group once ``results`` holds
    ``records`` lines; fails if the run ends on its own before that."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_bytes().count(b"\n") >= records:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
