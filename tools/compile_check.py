"""Compile every Triton kernel for a GPU target, without a GPU.

Run from the repository root as ``python tools/compile_check.py`` (``--all``: every variant). A tool,
not part of the installed package; it needs lukv-bench installed.

Uses ``triton.compile`` with an explicit ``GPUTarget`` and the ptxas shipped in the triton wheel, so
it catches invalid ``tl.dot`` shapes, type errors in loop-carried values and excessive shared memory
on a CPU-only machine. ``TRITON_INTERPRET`` must be unset (under the interpreter ``@triton.jit``
gives interpreter objects that cannot be compiled). Prints one JSON line per kernel.
"""

import json
import sys
from dataclasses import asdict, dataclass

from lukv_bench.kernels.dispatch import has_triton, interpreting

__all__ = ["CompileReport", "compile_all", "main"]

#: Shared memory per block on H100/H200 (sm_90), bytes.
SM90_SHARED_LIMIT = 227 * 1024


@dataclass
class CompileReport:
    """Result of compiling one kernel variant."""

    kernel: str
    variant: str
    shared_bytes: int
    ptx_chars: int
    cubin_bytes: int
    num_warps: int


def _ptr(dtype: str) -> str:
    return "*" + dtype


def _variants(full: bool) -> list[tuple[object, str, dict[str, str], dict[str, object], int]]:
    """(kernel, variant, pointer/float argument types, constexprs, num_warps) per kernel variant."""
    # imported here, not at the top: kernel modules read TRITON_INTERPRET when they are imported
    from lukv_bench.kernels import accumulated, append, compact, ragged_attention, window_scores

    out: list[tuple[object, str, dict[str, str], dict[str, object], int]] = []
    for dt in ("bf16", "fp16", "fp32"):
        out.append(
            (
                compact._compact_kernel,
                dt,
                {n: _ptr(dt) for n in ("src_k", "src_v", "dest_k", "dest_v")}
                | {n: "*i64" for n in ("idx_ptr", "cu_ptr", "dest_start_ptr")},
                {"BLOCK_N": compact._BLOCK_N, "BLOCK_D": 128},
                4,
            )
        )
        out.append(
            (
                append._append_kernel,
                dt,
                {n: _ptr(dt) for n in ("new_k", "new_v", "k_ptr", "v_ptr")}
                | {n: "*i64" for n in ("start_ptr", "len_ptr")},
                {"BLOCK_Q": append._BLOCK_Q, "BLOCK_D": 128},
                4,
            )
        )
        prec = "ieee" if dt == "fp32" else "tf32"
        for w in (8, 32, 64):
            common = {
                "BLOCK_W": max(16, w),
                "BLOCK_T": window_scores._BLOCK_T,
                "BLOCK_D": 128,
                "UPCAST": False,
                "DOT_PREC": prec,
            }
            fp = {"q_ptr": _ptr(dt), "k_ptr": _ptr(dt), "qk_scale": "fp32"}
            out.append((window_scores._window_lse_kernel, f"{dt} w={w}", fp | {"part_ptr": "*fp32"}, common, 4))
            out.append(
                (
                    window_scores._window_stats_kernel,
                    f"{dt} w={w}",
                    fp | {n: "*fp32" for n in ("lse_ptr", "sum_ptr", "sumsq_ptr", "ent_ptr")},
                    common,
                    4,
                )
            )
        for d in (64, 128):
            common = {
                "BLOCK_M": accumulated._BLOCK_M,
                "BLOCK_N": accumulated._BLOCK_N,
                "BLOCK_D": d,
                "UPCAST": False,
                "DOT_PREC": prec,
            }
            fp = {"q_ptr": _ptr(dt), "k_ptr": _ptr(dt), "lse_ptr": "*fp32", "qk_scale": "fp32"}
            out.append((accumulated._row_lse_kernel, f"{dt} D={d}", fp, common, 4))
            out.append((accumulated._col_sum_kernel, f"{dt} D={d}", fp | {"out_ptr": "*fp32"}, common, 4))
            out.append(
                (
                    ragged_attention._ragged_split_kernel,
                    f"{dt} D={d}",
                    {n: _ptr(dt) for n in ("q_ptr", "k_ptr", "v_ptr")}
                    | {n: "*i64" for n in ("start_ptr", "len_ptr")}
                    | {n: "*fp32" for n in ("m_ptr", "l_ptr", "acc_ptr")}
                    | {"qk_scale": "fp32"},
                    {"BLOCK_N": ragged_attention._BLOCK_N, "BLOCK_D": d},
                    4,
                )
            )
            out.append(
                (
                    ragged_attention._ragged_combine_kernel,
                    f"{dt} D={d}",
                    {n: "*fp32" for n in ("m_ptr", "l_ptr", "acc_ptr")} | {"out_ptr": _ptr(dt)},
                    {"BLOCK_S": 64, "BLOCK_D": d},
                    1,
                )
            )
    if full:
        return out
    # quick set: every kernel in bf16 at the production head size, plus the fp32 (ieee dot) tile
    # that needs the most shared memory
    keep = {"bf16", "bf16 w=32", "bf16 D=128"}
    return [v for v in out if v[1] in keep or (v[1] == "fp32 D=128" and v[0] is accumulated._col_sum_kernel)]


def compile_all(capability: int = 90, warp_size: int = 32, full: bool = False) -> list[CompileReport]:
    """Compile the kernels for ``cuda:capability``; raises on the first failure.

    ``full`` compiles every dtype/shape variant (minutes); the default is a quick representative set.
    """
    if not has_triton():
        raise RuntimeError("triton is not installed")
    if interpreting():
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", capability, warp_size)
    backend = make_backend(target)
    reports = []
    for fn, variant, types, constexprs, num_warps in _variants(full):
        names = fn.arg_names  # type: ignore[attr-defined]
        if "SOFTCAP" in names:  # as launched for models without soft-capping
            constexprs = {"SOFTCAP": 0.0, **constexprs}
        # everything not typed explicitly is a size or stride (int32) or a constexpr
        signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
        src = ASTSource(fn=fn, signature=signature, constexprs=dict(constexprs))
        options = backend.parse_options({"num_warps": num_warps})
        compiled = triton.compile(src, target=target, options=options.__dict__)
        reports.append(
            CompileReport(
                kernel=fn.__name__,  # type: ignore[attr-defined]
                variant=variant,
                shared_bytes=int(compiled.metadata.shared),
                ptx_chars=len(compiled.asm.get("ptx", "")),
                cubin_bytes=len(compiled.asm.get("cubin", b"")),
                num_warps=num_warps,
            )
        )
    return reports


def main() -> int:
    """CLI: compile for sm_90 (``--all``: all variants), print JSON lines; 1 if over the smem limit."""
    try:
        reports = compile_all(full="--all" in sys.argv[1:])
    except RuntimeError as e:
        print(f"compile_check: {e}", file=sys.stderr)
        return 2
    worst = 0
    for r in reports:
        print(json.dumps(asdict(r)))
        worst = max(worst, r.shared_bytes)
    return 0 if worst <= SM90_SHARED_LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
