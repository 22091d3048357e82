"""Check every Triton kernel against its torch reference on a CUDA GPU at production sizes.

Run from the repository root as ``python tools/gpu_check.py`` (a tool, not part of the installed
package; it needs lukv-bench installed). Prints, per op, the largest error and the median
kernel time with the achieved bandwidth (bytes moved / time) next to the device's measured copy
bandwidth (or TFLOP/s for the compute-bound accumulated attention). Exit status: 0 when everything
matches, 1 on a mismatch, 2 when there is no CUDA device (or triton is missing / interpreting).
Takes well under 5 minutes on an H100/H200.
"""

import math
import statistics
import sys
from collections.abc import Callable

import torch
from lukv_bench.kernels.dispatch import has_triton, interpreting

__all__ = ["main"]

HQ, S, D, T = 32, 8, 128, 32768  # production sizes: Llama-3-8B-like layer, 32k prompt
WINDOW = 32


def _median_ms(fn: Callable[..., object], *args: object, iters: int, warmup: int = 3) -> float:
    """Median time of ``fn(*args)`` in milliseconds, each run timed with CUDA events."""
    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in GB/s (read + write of a 1 GiB buffer)."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = _median_ms(y.copy_, x, iters=20)
    return 2 * (1 << 30) / (ms * 1e-3) / 1e9


class _Report:
    """Collects one line per check and whether everything matched."""

    def __init__(self, copy_gbs: float) -> None:
        self.copy_gbs = copy_gbs
        self.ok = True

    def line(self, name: str, err: float, ok: bool, ms: float, nbytes: int = 0, flops: float = 0.0) -> None:
        """Print one result line; ``nbytes`` or ``flops`` give the throughput column."""
        self.ok &= ok
        rate = ""
        if nbytes:
            gbs = nbytes / (ms * 1e-3) / 1e9
            rate = f"{gbs:8.1f} GB/s ({100 * gbs / self.copy_gbs:5.1f}% of copy)"
        elif flops:
            rate = f"{flops / (ms * 1e-3) / 1e12:8.1f} TFLOP/s"
        status = "ok  " if ok else "FAIL"
        print(f"{status} {name:<44} max err {err:9.2e}  {ms * 1e3:10.1f} us  {rate}", flush=True)


def _err(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> tuple[float, bool]:
    got, want = got.float(), want.float()
    diff = (got - want).abs()
    ok = bool(torch.isfinite(got).all()) and bool((diff <= atol + rtol * want.abs()).all())
    return float(diff.max()) if diff.numel() else 0.0, ok


def _lengths(gen: torch.Generator, n: int, lo: int, hi: int) -> list[int]:
    return torch.randint(lo, hi + 1, (n,), generator=gen).tolist()


def _check_compact(rep: _Report, gen: torch.Generator) -> None:
    from lukv_bench.kernels.compact import _compact_triton, compact_torch

    for dtype in (torch.bfloat16, torch.float32):
        kv = torch.randn(2, 1, T, S, D, generator=gen).to(dtype).cuda()
        src_k, src_v = kv[0, 0].transpose(0, 1), kv[1, 0].transpose(0, 1)  # strided [S, T, D] views
        counts = _lengths(gen, S, T // 16, T // 2)
        idx = torch.cat([torch.randperm(T, generator=gen)[:c] for c in counts]).cuda()
        cu = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()], device="cuda")
        starts = cu[:-1].clone()
        M = sum(counts)
        outs = []
        for fn in (compact_torch, _compact_triton):
            dk = torch.zeros(M, D, dtype=dtype, device="cuda")
            dv = torch.zeros_like(dk)
            fn(src_k, src_v, idx, cu, starts, dk, dv)
            outs.append((dk, dv))
        ok = torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
        dk, dv = outs[1]
        ms = _median_ms(_compact_triton, src_k, src_v, idx, cu, starts, dk, dv, iters=50)
        nbytes = 2 * 2 * M * D * dk.element_size() + M * 8
        rep.line(f"compact {str(dtype)[6:]} S={S} kept={M} strided", 0.0 if ok else math.inf, ok, ms, nbytes)


def _check_append(rep: _Report, gen: torch.Generator) -> None:
    from lukv_bench.kernels.append import RaggedStore, _append_triton, append, append_torch

    for Q in (1, 16):
        counts = _lengths(gen, S, T // 8, T // 2)
        st = RaggedStore.empty(counts, D, torch.bfloat16, "cuda", headroom=64)
        st.k.normal_()
        st.v.normal_()
        ref = RaggedStore(st.k.clone(), st.v.clone(), st.starts.clone(), st.lens.clone(), st.caps.clone())
        new = torch.randn(2, S, Q, D, generator=gen).to(torch.bfloat16).cuda()
        st = append(st, new[0], new[1], backend="triton")
        append_torch(ref, new[0], new[1])
        ok = torch.equal(st.k, ref.k) and torch.equal(st.v, ref.v)
        ok &= st.lens.tolist() == [c + Q for c in counts]
        # time the in-place write alone (repeated appends would exhaust the headroom and regrow)
        ms = _median_ms(_append_triton, st, new[0], new[1], iters=100)
        rep.line(f"append bf16 S={S} Q={Q}", 0.0 if ok else math.inf, ok, ms, 2 * 2 * S * Q * D * 2)


def _check_ragged(rep: _Report, gen: torch.Generator) -> None:
    from lukv_bench.kernels.append import RaggedStore
    from lukv_bench.kernels.ragged_attention import _ragged_triton, ragged_attention_torch

    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}
    cases = ((torch.bfloat16, 1, T), (torch.bfloat16, 16, T), (torch.float16, 1, 8192), (torch.float32, 4, 8192))
    for dtype, Q, seq in cases:
        counts = _lengths(gen, S, seq // 8, seq)
        counts[0] = 0  # an empty head: its queries must give zeros
        st = RaggedStore.empty(counts, D, dtype, "cuda", headroom=16)
        st.k.normal_()
        st.v.normal_()
        q = torch.randn(1, Q, HQ, D, generator=gen).to(dtype).cuda()[0].transpose(0, 1)  # strided [Hq, Q, D]
        scale = D**-0.5
        want = ragged_attention_torch(q, st.k, st.v, st.starts, st.lens, scale)
        got = _ragged_triton(q, st.k, st.v, st.starts, st.lens, scale)
        err, ok = _err(got, want, tol[dtype], 1e-2)
        ms = _median_ms(_ragged_triton, q, st.k, st.v, st.starts, st.lens, scale, iters=100)
        nbytes = 2 * sum(counts) * D * st.k.element_size() + 2 * q.numel() * q.element_size()
        rep.line(f"ragged_attention {str(dtype)[6:]} Hq={HQ} S={S} Q={Q} T<={seq}", err, ok, ms, nbytes)


def _check_window(rep: _Report, gen: torch.Generator) -> None:
    from lukv_bench.kernels.window_scores import _window_stats_triton, window_stats_torch

    for dtype, seq in ((torch.bfloat16, T), (torch.float32, 4096)):
        q = torch.randn(1, seq, HQ, D, generator=gen).to(dtype).cuda()[0].transpose(0, 1)[:, seq - WINDOW :]
        k = torch.randn(1, seq, S, D, generator=gen).to(dtype).cuda()[0].transpose(0, 1)
        scale = D**-0.5
        want = window_stats_torch(q, k, scale, seq - WINDOW)
        got = _window_stats_triton(q, k, scale, seq - WINDOW)
        # fp32 inputs run an ieee dot; bf16 products are exact in fp32: only summation order differs
        errs = [_err(g, w, 1e-5, 2e-3) for g, w in zip(got, want, strict=True)]
        ok = all(e[1] for e in errs)
        err = max(e[0] for e in errs)
        ms = _median_ms(_window_stats_triton, q, k, scale, seq - WINDOW, iters=20)
        nbytes = 2 * k.numel() * k.element_size() + 2 * HQ * seq * 4  # K read by both passes; two outputs
        rep.line(f"window_stats {str(dtype)[6:]} Hq={HQ} S={S} w={WINDOW} T={seq}", err, ok, ms, nbytes)


def _check_accumulated(rep: _Report, gen: torch.Generator) -> None:
    from lukv_bench.kernels.accumulated import _accumulated_triton, accumulated_attention_torch

    for dtype, seq in ((torch.bfloat16, T), (torch.float32, 2048)):
        q = torch.randn(1, seq, HQ, D, generator=gen).to(dtype).cuda()[0].transpose(0, 1)
        k = torch.randn(1, seq, S, D, generator=gen).to(dtype).cuda()[0].transpose(0, 1)
        scale = D**-0.5
        want = accumulated_attention_torch(q, k, scale, block=512)
        got = _accumulated_triton(q, k, scale)
        err, ok = _err(got, want, 1e-3, 2e-3)
        # every softmax row sums to one, so each head's column sums add up to T
        totals = got.double().sum(1)
        ok &= bool(torch.allclose(totals, torch.full_like(totals, float(seq)), rtol=1e-4))
        ms = _median_ms(_accumulated_triton, q, k, scale, iters=5, warmup=1)
        flops = 2 * 2.0 * HQ * seq * seq * D / 2  # two causal passes of q k^T
        rep.line(f"accumulated_attention {str(dtype)[6:]} Hq={HQ} S={S} T={seq}", err, ok, ms, flops=flops)


def main() -> int:
    """Run all checks; 0 = all match, 1 = mismatch, 2 = cannot run here."""
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; this check needs a GPU (the CPU tests cover the interpreter)")
        return 2
    if not has_triton():
        print("gpu_check: triton is not installed")
        return 2
    if interpreting():
        print("gpu_check: unset TRITON_INTERPRET (kernels would run in the CPU interpreter)")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the torch references must be true fp32
    props = torch.cuda.get_device_properties(0)
    copy_gbs = _copy_bandwidth()
    print(f"device: {props.name}, sm_{props.major}{props.minor}; measured copy bandwidth {copy_gbs:.0f} GB/s")
    rep = _Report(copy_gbs)
    gen = torch.Generator().manual_seed(0)
    for check in (_check_compact, _check_append, _check_ragged, _check_window, _check_accumulated):
        check(rep, gen)
        torch.cuda.empty_cache()
    print("all kernels match the torch reference" if rep.ok else "MISMATCH: see FAIL lines above")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
