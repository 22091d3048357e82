"""The C++ CPU kernel of ragged attention against the per-segment reference, and its fallback to the torch path.

The kernel is built on first use (``kernels/_ragged_cpu.py``; torch caches the library, so only the
first run on a machine pays the build). Without a C++ compiler the kernel tests are skipped and the
fallback tests still run.
"""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch
from lukv_bench.kernels import _ragged_cpu
from lukv_bench.kernels.ops import RaggedStore, ragged_attention
from lukv_bench.kernels.ragged_attention import (
    prepare_cpu_kernel,
    ragged_attention_cpu,
    ragged_attention_naive,
    ragged_attention_torch,
)

needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler: the CPU kernel cannot be built"
)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch):
    """The built kernel module (its build must succeed where a compiler is)."""
    monkeypatch.delenv(_ragged_cpu.DISABLE_ENV, raising=False)
    module = _ragged_cpu.load()
    assert module is not None, _ragged_cpu.unavailable_reason()
    return module


@pytest.fixture
def fresh_loader(monkeypatch: pytest.MonkeyPatch):
    """The loader as in a new process (nothing tried yet); the real state comes back afterwards."""
    monkeypatch.delenv(_ragged_cpu.DISABLE_ENV, raising=False)
    monkeypatch.setattr(_ragged_cpu, "_module", None)
    monkeypatch.setattr(_ragged_cpu, "_reason", None)
    return _ragged_cpu


def _table(seed: int, n_seg: int, D: int, dtype: torch.dtype, bucketed: bool, max_len: int = 300):
    """A ragged store with lengths 0 .. max_len (0- and 1-length segments included), stored rows random."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_len, (n_seg,), generator=g).tolist()
    counts[0], counts[min(1, n_seg - 1)] = 0, 1
    st = RaggedStore.empty(counts, D, dtype, "cpu", headroom=3, bucket_fill=0.75 if bucketed else None)
    for s, c in enumerate(counts):
        rows = st.starts[s] + torch.arange(c)
        st.k[rows] = torch.randn(c, D, generator=g).to(dtype)
        st.v[rows] = torch.randn(c, D, generator=g).to(dtype)
    return st, g


def _reference(q, st, scale, softcap=None):
    """The per-segment loop on fp32 copies of K/V (the storage dtype's values, read exactly)."""
    return ragged_attention_naive(q, st.k.float(), st.v.float(), st.starts, st.lens, scale, softcap=softcap)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [16, 64, 128, 24, 7])  # fixed-width paths and the any-D loop
@pytest.mark.parametrize("G,Q", [(1, 1), (3, 1), (4, 3)])
def test_cpu_kernel_matches_reference(kernel, dtype: torch.dtype, D: int, G: int, Q: int) -> None:
    st, g = _table(D * 10 + G + Q, 9, D, dtype, bucketed=D % 2 == 0)
    q = torch.randn(9 * G, Q, D, generator=g)
    for softcap in (None, 2.0):
        got = ragged_attention_cpu(q, st.k, st.v, st.starts, st.lens, D**-0.5, softcap=softcap)
        want = _reference(q, st, D**-0.5, softcap)
        assert got.dtype == torch.float32 and got.shape == q.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    assert torch.all(got[:G] == 0) and torch.all(got[G : 2 * G, : Q - 1] == 0)  # nothing visible: zero


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_kernel_reads_every_finite_half_exactly(kernel, dtype: torch.dtype) -> None:
    """One-row segments return their V row: every finite fp16 / bf16 bit pattern (subnormals too) read exactly."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    v = bits[torch.isfinite(bits.float())]
    v = v[: v.numel() // 64 * 64].view(-1, 64)
    n = v.shape[0]
    k = torch.zeros_like(v)
    starts, lens = torch.arange(n), torch.ones(n, dtype=torch.long)
    got = ragged_attention_cpu(torch.randn(n, 1, 64), k, v, starts, lens, 0.125)
    assert torch.equal(got[:, 0], v.float())


@needs_compiler
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_active_subset_of_sweep_table(kernel, impl: str) -> None:
    """Both CPU paths on an active subset of a bucketed table, as a batched decode reads it; q in bf16."""
    st, g = _table(5, 24, 64, torch.float32, bucketed=True, max_len=700)
    active = torch.tensor([s * 3 + h for s in (0, 2, 3, 5, 7) for h in range(3)])
    starts, lens = st.starts[active], st.lens[active]
    q = torch.randn(len(active) * 3, 1, 64, generator=g).to(torch.bfloat16)
    fn = ragged_attention_cpu if impl == "cpu" else ragged_attention_torch
    got = fn(q, st.k, st.v, starts, lens, 0.125)
    want = ragged_attention_naive(q, st.k, st.v, starts, lens, 0.125)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)  # bf16 output rounding
    exact = fn(q.float(), st.k, st.v, starts, lens, 0.125)
    torch.testing.assert_close(exact, ragged_attention_naive(q.float(), st.k, st.v, starts, lens, 0.125))


@needs_compiler
def test_cpu_kernel_strided_rows_and_dispatch(kernel) -> None:
    """K/V views whose rows are not back to back, and ragged_attention on CPU choosing the kernel."""
    st, g = _table(7, 6, 32, torch.float32, bucketed=False)
    wide_k = torch.randn(st.k.shape[0], 48, generator=g)
    wide_v = torch.randn(st.v.shape[0], 48, generator=g)
    wide_k[:, :32], wide_v[:, :32] = st.k, st.v
    k, v = wide_k[:, :32], wide_v[:, :32]  # row stride 48
    q = torch.randn(12, 2, 32, generator=g)
    want = ragged_attention_naive(q, st.k, st.v, st.starts, st.lens, 0.2)
    torch.testing.assert_close(ragged_attention_cpu(q, k, v, st.starts, st.lens, 0.2), want)
    assert torch.equal(
        ragged_attention(q, k, v, st.starts, st.lens, 0.2), ragged_attention_cpu(q, k, v, st.starts, st.lens, 0.2)
    )


@needs_compiler
def test_cpu_kernel_is_deterministic_per_segment(kernel) -> None:
    """A segment's output is bit for bit the same alone, in a batch, and on 1 or 2 threads."""
    st, g = _table(11, 30, 64, torch.float32, bucketed=True, max_len=1500)
    q = torch.randn(30 * 3, 1, 64, generator=g)
    args = (q, st.k, st.v, st.starts, st.lens, 0.125)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ragged_attention_cpu(*args)
        torch.set_num_threads(2)
        two = ragged_attention_cpu(*args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    for s in (0, 1, 17, 29):
        alone = ragged_attention_cpu(q[3 * s : 3 * s + 3], st.k, st.v, st.starts[s : s + 1], st.lens[s : s + 1], 0.125)
        assert torch.equal(alone, one[3 * s : 3 * s + 3])


@needs_compiler
def test_cpu_kernel_rejects_rows_outside_the_buffer(kernel) -> None:
    st, g = _table(3, 4, 16, torch.float32, bucketed=False)
    q = torch.randn(4, 1, 16, generator=g)
    lens = st.lens.clone()
    lens[2] = st.k.shape[0]
    with pytest.raises(RuntimeError, match="outside the K/V buffer"):
        ragged_attention_cpu(q, st.k, st.v, st.starts, lens, 0.25)


def test_build_failure_falls_back_once_with_the_reason(fresh_loader, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken():
        raise RuntimeError("Error building extension 'x':\nmain.cpp:1: error: something\nninja: build stopped")

    monkeypatch.setattr(fresh_loader, "_build", broken)
    st, g = _table(2, 5, 16, torch.float32, bucketed=True)
    q = torch.randn(10, 1, 16, generator=g)
    args = (q, st.k, st.v, st.starts, st.lens, 0.25)
    said = r"torch path.*its build failed \(RuntimeError: Error building extension 'x': \.\.\. main.cpp:1: error: som"
    with pytest.warns(RuntimeWarning, match=said):
        got = ragged_attention(*args)
    torch.testing.assert_close(got, ragged_attention_torch(*args), rtol=0, atol=0)
    assert "build failed" in fresh_loader.unavailable_reason()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: later calls are quiet
        ragged_attention(*args)
        assert not prepare_cpu_kernel()
    with pytest.raises(RuntimeError, match="unavailable: its build failed"):
        ragged_attention_cpu(*args)


def test_missing_compiler_is_named(fresh_loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(RuntimeWarning, match=r"no C\+\+ compiler \('/nonexistent/c\+\+' is not on PATH\)"):
        assert fresh_loader.load() is None


def test_turned_off_by_the_environment(fresh_loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fresh_loader.DISABLE_ENV, "0")
    monkeypatch.setattr(fresh_loader, "_build", lambda: pytest.fail("built although turned off"))
    st, g = _table(4, 3, 16, torch.float32, bucketed=False)
    q = torch.randn(3, 1, 16, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ragged_attention(q, st.k, st.v, st.starts, st.lens, 0.25)
    assert torch.equal(got, ragged_attention_torch(q, st.k, st.v, st.starts, st.lens, 0.25))
    assert fresh_loader.unavailable_reason() is None


def test_unsupported_storage_uses_the_torch_path() -> None:
    """fp64 K/V: not a kernel dtype, so ragged_attention takes the torch path (and stays exact)."""
    st, g = _table(6, 4, 16, torch.float64, bucketed=False)
    q = torch.randn(4, 1, 16, generator=g, dtype=torch.float64)
    got = ragged_attention(q, st.k, st.v, st.starts, st.lens, 0.25)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ragged_attention_torch(q, st.k, st.v, st.starts, st.lens, 0.25))
