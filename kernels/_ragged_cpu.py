"""The CPU kernel of ragged attention: C++ built once by torch's JIT extension loader, or nothing.

One pass per segment over its K and V rows with an online softmax: the segment's ``G`` query heads
(and ``Q`` queries) share each block of keys while it is in the L1 cache, so K and V are read once
from memory, and no padding row, mask or score matrix is materialised. Segments are split between
torch's intra-op threads by their lengths (``at::parallel_for``); one segment is always processed
by one thread, so the result does not depend on the thread count. K/V rows are read as fp32,
fp16 or bf16 and accumulated in fp32.

The build (``torch.utils.cpp_extension.load_inline``, ~40 s on 2 cores, once; later processes load
the cached library from torch's extension folder, ``TORCH_EXTENSIONS_DIR``) needs a C++ compiler and
ninja (the ``ninja`` package from PyPI is found without being on ``PATH``). The hot loops are
compiled for x86-64-v3 (AVX2 + FMA) beside the baseline and picked at load time (GCC's
``target_clones``), so the cached library runs on any x86-64. :func:`load` returns ``None`` when the
kernel cannot be had, after one warning naming why; ``LUKV_BENCH_CPU_KERNEL=0`` turns it off
without a warning. Callers then use the torch path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
import warnings
from types import ModuleType

import torch

__all__ = ["DISABLE_ENV", "load", "unavailable_reason"]

#: ``LUKV_BENCH_CPU_KERNEL=0`` (or off/false/no) keeps ragged attention on CPU on the torch path.
DISABLE_ENV = "LUKV_BENCH_CPU_KERNEL"

_SOURCE = r"""
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t BN = 64;  // keys per block: a block of K and V rows stays in L1 while every query row reads it

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
#define LUKV_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LUKV_CLONES
#endif
#define LUKV_INLINE inline __attribute__((always_inline))

// 8 floats as one value (GCC vector extensions): two SSE registers in the baseline build, one AVX register in the
// x86-64-v3 clone. v8u loads and stores at any float address.
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));

LUKV_INLINE v8 ld(const float* p) { return *reinterpret_cast<const v8u*>(p); }
LUKV_INLINE void st(float* p, v8 x) { *reinterpret_cast<v8u*>(p) = x; }
LUKV_INLINE v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }
LUKV_INLINE float hsum(v8 x) { return ((x[0] + x[4]) + (x[2] + x[6])) + ((x[1] + x[5]) + (x[3] + x[7])); }
LUKV_INLINE float hmax(v8 x) {
  float m = x[0];
  for (int i = 1; i < 8; ++i) m = std::max(m, x[i]);
  return m;
}

// exp(x) for x <= 0 with Cephes' expf polynomial (about 1 ulp); 0 below -87, -inf included
LUKV_INLINE v8 exp8(v8 x) {
  const v8 lo = splat(-87.f);
  const v8i under = x < lo;
  x = x < lo ? lo : x;
  const v8 n = (x * splat(1.44269504088896341f) + splat(12582912.f)) - splat(12582912.f);  // round(x / ln 2)
  const v8 r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
  v8 y = splat(1.9875691500e-4f);
  y = y * r + splat(1.3981999507e-3f);
  y = y * r + splat(8.3334519073e-3f);
  y = y * r + splat(4.1665795894e-2f);
  y = y * r + splat(1.6666665459e-1f);
  y = y * r + splat(5.0000001201e-1f);
  y = y * r * r + r + splat(1.f);
  y = y * reinterpret_cast<v8>((__builtin_convertvector(n, v8i) + 127) << 23);  // * 2^n
  return reinterpret_cast<v8>(reinterpret_cast<v8i>(y) & ~under);
}

// Scores p[0 .. hi) of one query row -> exp(p - new max) in place (p has room for BN entries); updates the row's
// running max m and sum l; returns the factor that rescales the row's accumulated output.
LUKV_INLINE float online_softmax(float* p, int64_t hi, float softcap, float& m, float& l) {
  if (softcap > 0.f)
    for (int64_t j = 0; j < hi; ++j) p[j] = softcap * std::tanh(p[j] / softcap);
  const int64_t hi8 = (hi + 7) & ~int64_t(7);
  for (int64_t j = hi; j < hi8; ++j) p[j] = -std::numeric_limits<float>::infinity();
  v8 mx = ld(p);
  for (int64_t j = 8; j < hi8; j += 8) {
    const v8 x = ld(p + j);
    mx = mx > x ? mx : x;
  }
  const float mnew = std::max(m, hmax(mx));
  const float alpha = exp8(splat(m - mnew))[0];  // 0 on the row's first block (m = -inf)
  v8 sum = splat(0.f);
  for (int64_t j = 0; j < hi8; j += 8) {
    const v8 e = exp8(ld(p + j) - splat(mnew));
    st(p + j, e);
    sum += e;
  }
  l = l * alpha + hsum(sum);
  m = mnew;
  return alpha;
}

// One online-softmax step of the R query rows of a segment over its keys j0 .. j0 + nb - 1 (kb, vb: those rows,
// row strides ks, vs). Row r is query i = r % Q, which sees the keys before len - Q + i + 1. m (running max),
// l (running sum of exp) and acc (unnormalised output, R x D) carry over between blocks; p is scratch.
#define LUKV_ATTEND_ARGS                                                                                         \
  const float *q, int64_t R, int64_t Q, int64_t D, const float *kb, int64_t ks, const float *vb, int64_t vs,     \
      int64_t j0, int64_t nb, int64_t len, float scaling, float softcap, float *m, float *l, float *acc, float *p
using AttendFn = void (*)(LUKV_ATTEND_ARGS);

// Any D: plain loops that the compiler vectorises
LUKV_CLONES
void attend_any(LUKV_ATTEND_ARGS) {
  for (int64_t r = 0; r < R; ++r) {
    const int64_t hi = std::min(nb, len - Q + r % Q + 1 - j0);
    if (hi <= 0) continue;
    const float* qr = q + r * D;
    for (int64_t j = 0; j < hi; ++j) {
      const float* kr = kb + j * ks;
      float part[8] = {0.f};  // 8 partial sums: a fixed order the compiler may vectorise
      int64_t d = 0;
      for (; d + 8 <= D; d += 8)
        for (int t = 0; t < 8; ++t) part[t] += qr[d + t] * kr[d + t];
      float s = 0.f;
      for (; d < D; ++d) s += qr[d] * kr[d];
      const float sum8 = ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
      p[j] = (s + sum8) * scaling;
    }
    const float alpha = online_softmax(p, hi, softcap, m[r], l[r]);
    float* __restrict a = acc + r * D;
    for (int64_t d = 0; d < D; ++d) a[d] *= alpha;
    for (int64_t j = 0; j < hi; ++j) {
      const float* __restrict vr = vb + j * vs;
      const float pj = p[j];
      for (int64_t d = 0; d < D; ++d) a[d] += pj * vr[d];
    }
  }
}

// D = 8 * NV (NV even): a query row and an output row live in registers; scores of 4 keys at a time
template <int NV>
LUKV_INLINE void attend_fixed(LUKV_ATTEND_ARGS) {
  static_assert(NV % 2 == 0, "NV must be even");
  for (int64_t r = 0; r < R; ++r) {
    const int64_t hi = std::min(nb, len - Q + r % Q + 1 - j0);
    if (hi <= 0) continue;
    v8 qv[NV];
    for (int c = 0; c < NV; ++c) qv[c] = ld(q + r * D + 8 * c);
    int64_t j = 0;
    for (; j + 4 <= hi; j += 4) {
      const float* k0 = kb + j * ks;
      const float* k1 = k0 + ks;
      const float* k2 = k1 + ks;
      const float* k3 = k2 + ks;
      v8 a0 = qv[0] * ld(k0), b0 = qv[0] * ld(k1), c0 = qv[0] * ld(k2), d0 = qv[0] * ld(k3);
      v8 a1 = qv[1] * ld(k0 + 8), b1 = qv[1] * ld(k1 + 8), c1 = qv[1] * ld(k2 + 8), d1 = qv[1] * ld(k3 + 8);
      for (int x = 2; x < NV; x += 2) {
        a0 += qv[x] * ld(k0 + 8 * x);
        b0 += qv[x] * ld(k1 + 8 * x);
        c0 += qv[x] * ld(k2 + 8 * x);
        d0 += qv[x] * ld(k3 + 8 * x);
        a1 += qv[x + 1] * ld(k0 + 8 * x + 8);
        b1 += qv[x + 1] * ld(k1 + 8 * x + 8);
        c1 += qv[x + 1] * ld(k2 + 8 * x + 8);
        d1 += qv[x + 1] * ld(k3 + 8 * x + 8);
      }
      a0 += a1;
      b0 += b1;
      c0 += c1;
      d0 += d1;
      // the four horizontal sums at once: lanes 0, 4, 2, 6 of t hold keys j, j + 1, j + 2, j + 3
      const v8 u = __builtin_shuffle(a0, b0, v8i{0, 1, 2, 3, 8, 9, 10, 11}) +
                   __builtin_shuffle(a0, b0, v8i{4, 5, 6, 7, 12, 13, 14, 15});
      const v8 w = __builtin_shuffle(c0, d0, v8i{0, 1, 2, 3, 8, 9, 10, 11}) +
                   __builtin_shuffle(c0, d0, v8i{4, 5, 6, 7, 12, 13, 14, 15});
      const v8 x = __builtin_shuffle(u, w, v8i{0, 1, 8, 9, 4, 5, 12, 13}) +
                   __builtin_shuffle(u, w, v8i{2, 3, 10, 11, 6, 7, 14, 15});
      const v8 t = x + __builtin_shuffle(x, v8i{1, 0, 3, 2, 5, 4, 7, 6});
      p[j] = t[0] * scaling;
      p[j + 1] = t[4] * scaling;
      p[j + 2] = t[2] * scaling;
      p[j + 3] = t[6] * scaling;
    }
    for (; j < hi; ++j) {
      const float* kr = kb + j * ks;
      v8 s0 = qv[0] * ld(kr), s1 = qv[1] * ld(kr + 8);
      for (int x = 2; x < NV; x += 2) {
        s0 += qv[x] * ld(kr + 8 * x);
        s1 += qv[x + 1] * ld(kr + 8 * x + 8);
      }
      p[j] = hsum(s0 + s1) * scaling;
    }
    const v8 alpha = splat(online_softmax(p, hi, softcap, m[r], l[r]));
    float* ar = acc + r * D;
    v8 a[NV];
    for (int c = 0; c < NV; ++c) a[c] = ld(ar + 8 * c) * alpha;
    for (j = 0; j < hi; ++j) {
      const v8 pj = splat(p[j]);
      const float* vr = vb + j * vs;
      for (int c = 0; c < NV; ++c) a[c] += pj * ld(vr + 8 * c);
    }
    for (int c = 0; c < NV; ++c) st(ar + 8 * c, a[c]);
  }
}

#define LUKV_FIXED(NV)                                    \
  LUKV_CLONES void attend_d##NV(LUKV_ATTEND_ARGS) {       \
    attend_fixed<NV>(q, R, Q, D, kb, ks, vb, vs, j0, nb, len, scaling, softcap, m, l, acc, p); \
  }
LUKV_FIXED(2)
LUKV_FIXED(4)
LUKV_FIXED(8)
LUKV_FIXED(10)
LUKV_FIXED(12)
LUKV_FIXED(16)
LUKV_FIXED(32)

AttendFn pick(int64_t D) {
  switch (D) {
    case 16: return attend_d2;
    case 32: return attend_d4;
    case 64: return attend_d8;
    case 80: return attend_d10;
    case 96: return attend_d12;
    case 128: return attend_d16;
    case 256: return attend_d32;
    default: return attend_any;
  }
}

// K/V rows of fp16 or bf16 into fp32 scratch, 8 values at a time (exact: every half and bfloat16 is a float)
typedef uint16_t u16x8 __attribute__((vector_size(16), aligned(2), may_alias));

LUKV_INLINE v8 bf16x8(u16x8 h) { return reinterpret_cast<v8>(__builtin_convertvector(h, v8i) << 16); }

// IEEE half -> float without branches: exponent and mantissa moved into place, rebiased by a multiply by 2^112
// (subnormal halves come out right too); infinities and NaNs get the float's all-ones exponent
LUKV_INLINE v8 f16x8(u16x8 h) {
  const v8i x = __builtin_convertvector(h, v8i);
  const v8i em = (x & 0x7fff) << 13;
  const v8i finite = reinterpret_cast<v8i>(reinterpret_cast<v8>(em) * splat(0x1p112f));
  const v8i bits = em >= (0x7c00 << 13) ? (em | 0x7f800000) : finite;
  return reinterpret_cast<v8>(bits | ((x & 0x8000) << 16));
}

template <bool BF16>
LUKV_INLINE void widen(const uint16_t* src, int64_t stride, int64_t n, int64_t D, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* s = src + i * stride;
    float* d = dst + i * D;
    int64_t c = 0;
    for (; c + 8 <= D; c += 8) {
      const u16x8 h = *reinterpret_cast<const u16x8*>(s + c);
      st(d + c, BF16 ? bf16x8(h) : f16x8(h));
    }
    for (; c < D; ++c)
      d[c] = BF16 ? static_cast<float>(c10::BFloat16(s[c], c10::BFloat16::from_bits()))
                  : static_cast<float>(c10::Half(s[c], c10::Half::from_bits()));
  }
}

LUKV_CLONES void widen_bf16(const uint16_t* src, int64_t stride, int64_t n, int64_t D, float* dst) {
  widen<true>(src, stride, n, D, dst);
}
LUKV_CLONES void widen_f16(const uint16_t* src, int64_t stride, int64_t n, int64_t D, float* dst) {
  widen<false>(src, stride, n, D, dst);
}
inline void widen(const c10::BFloat16* src, int64_t stride, int64_t n, int64_t D, float* dst) {
  widen_bf16(reinterpret_cast<const uint16_t*>(src), stride, n, D, dst);
}

#if defined(__GNUC__) && defined(__x86_64__)
#define LUKV_F16C 1
// fp16 with F16C's vcvtph2ps (8 values per instruction), where the CPU has it
__attribute__((target("avx,f16c"))) void widen_f16c(const uint16_t* src, int64_t stride, int64_t n, int64_t D,
                                                     float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* s = src + i * stride;
    float* d = dst + i * D;
    int64_t c = 0;
    for (; c + 8 <= D; c += 8)
      _mm256_storeu_ps(d + c, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + c))));
    for (; c < D; ++c) d[c] = static_cast<float>(c10::Half(s[c], c10::Half::from_bits()));
  }
}
#endif

inline void widen(const c10::Half* src, int64_t stride, int64_t n, int64_t D, float* dst) {
#ifdef LUKV_F16C
  static const bool f16c = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  if (f16c) return widen_f16c(reinterpret_cast<const uint16_t*>(src), stride, n, D, dst);
#endif
  widen_f16(reinterpret_cast<const uint16_t*>(src), stride, n, D, dst);
}

// Segments s0 .. s1 - 1, one after the other: the R = G * Q query rows of segment s are rows s * R .. of q/out.
template <typename T>
void run_segments(const float* q, const T* k, int64_t ks, const T* v, int64_t vs, const int64_t* starts,
                  const int64_t* lens, float* out, int64_t s0, int64_t s1, int64_t G, int64_t Q, int64_t D,
                  float scaling, float softcap) {
  const int64_t R = G * Q;
  const AttendFn attend = pick(D);
  std::vector<float> m(R), l(R), acc(R * D), p(BN);
  std::vector<float> kbuf, vbuf;
  if constexpr (!std::is_same_v<T, float>) {
    kbuf.resize(BN * D);
    vbuf.resize(BN * D);
  }
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t len = lens[s], start = starts[s];
    const float* qs = q + s * R * D;
    float* os = out + s * R * D;
    std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
    std::fill(l.begin(), l.end(), 0.f);
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t j0 = 0; j0 < len; j0 += BN) {
      const int64_t nb = std::min(BN, len - j0);
      const T* kr = k + (start + j0) * ks;
      const T* vr = v + (start + j0) * vs;
      if constexpr (std::is_same_v<T, float>) {
        attend(qs, R, Q, D, kr, ks, vr, vs, j0, nb, len, scaling, softcap, m.data(), l.data(), acc.data(), p.data());
      } else {
        widen(kr, ks, nb, D, kbuf.data());
        widen(vr, vs, nb, D, vbuf.data());
        attend(qs, R, Q, D, kbuf.data(), D, vbuf.data(), D, j0, nb, len, scaling, softcap, m.data(), l.data(),
               acc.data(), p.data());
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      const float total = l[r];  // 0 when the query sees no key: its output is zero
      for (int64_t d = 0; d < D; ++d) os[r * D + d] = total > 0.f ? acc[r * D + d] / total : 0.f;
    }
  }
}

}  // namespace

at::Tensor ragged_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& starts, const at::Tensor& lens, double scaling, double softcap) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(), "q: contiguous fp32 [Hq, Q, D]");
  TORCH_CHECK(k.dim() == 2 && v.dim() == 2 && k.sizes() == v.sizes() && k.size(1) == q.size(2),
              "k/v: [M, D] of q's D");
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), "k and v of one dtype");
  TORCH_CHECK(k.stride(1) == 1 && v.stride(1) == 1, "k/v rows must be contiguous");
  TORCH_CHECK(starts.dim() == 1 && lens.sizes() == starts.sizes() && starts.scalar_type() == at::kLong &&
                  lens.scalar_type() == at::kLong && starts.is_contiguous() && lens.is_contiguous() &&
                  starts.device().is_cpu() && lens.device().is_cpu(),
              "starts/lens: contiguous int64 [S] on the CPU");
  const int64_t Hq = q.size(0), Q = q.size(1), D = q.size(2), S = starts.size(0), M = k.size(0);
  TORCH_CHECK(S > 0 && Hq % S == 0, "S must divide Hq");
  const int64_t G = Hq / S;
  const int64_t* st = starts.data_ptr<int64_t>();
  const int64_t* ln = lens.data_ptr<int64_t>();
  std::vector<double> cost(S);
  double total = 0.0;
  for (int64_t s = 0; s < S; ++s) {
    if (ln[s] > 0)
      TORCH_CHECK(st[s] >= 0 && st[s] + ln[s] <= M, "segment ", s, ": rows ", st[s], "..", st[s] + ln[s] - 1,
                  " lie outside the K/V buffer of ", M, " rows");
    cost[s] = static_cast<double>(std::max<int64_t>(ln[s], 0) + 16);
    total += cost[s];
  }
  auto out = at::empty({Hq, Q, D}, q.options());
  // contiguous runs of segments of about equal work, one per thread
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), S));
  std::vector<int64_t> bounds(T + 1, S);
  bounds[0] = 0;
  double seen = 0.0;
  int64_t t = 1;
  for (int64_t s = 0; s < S && t < T; ++s) {
    while (t < T && seen >= total * static_cast<double>(t) / static_cast<double>(T)) bounds[t++] = s;
    seen += cost[s];
  }
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scaling), cap = static_cast<float>(softcap);
  const int64_t ks = k.stride(0), vs = v.stride(0);
  auto body = [&](auto tag) {
    using T_ = decltype(tag);
    const T_* kp = reinterpret_cast<const T_*>(k.data_ptr());
    const T_* vp = reinterpret_cast<const T_*>(v.data_ptr());
    at::parallel_for(0, T, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        run_segments<T_>(qp, kp, ks, vp, vs, st, ln, op, bounds[i], bounds[i + 1], G, Q, D, sc, cap);
    });
  };
  switch (k.scalar_type()) {
    case at::kFloat: body(float{}); break;
    case at::kHalf: body(c10::Half{}); break;
    case at::kBFloat16: body(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, "k/v dtype must be float32, float16 or bfloat16, got ", k.scalar_type());
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ragged_attention", &ragged_attention_cpu, py::call_guard<py::gil_scoped_release>());
}
"""

_CFLAGS = ["-O3", "-fopenmp", "-Wno-psabi"]  # -fopenmp: at::parallel_for runs serially in code compiled without it
_LDFLAGS = ["-fopenmp"]  # libgomp.so.1: the one torch has loaded, so torch.set_num_threads() applies

_lock = threading.Lock()
_module: ModuleType | None = None
_reason: str | None = None  # why the kernel is unavailable, once known
_log = logging.getLogger(__name__)


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("0", "off", "false", "no")


def _name() -> str:
    key = "\0".join([_SOURCE, *_CFLAGS, *_LDFLAGS, torch.__version__])
    return "lukv_ragged_attention_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _ninja_dir() -> str | None:
    """A folder to put on ``PATH`` for ninja: ``""`` when it is there already, ``None`` when there is none."""
    if shutil.which("ninja"):
        return ""
    try:
        import ninja  # the PyPI package; its binary is not on PATH when the venv is not activated
    except ImportError:
        return None
    return ninja.BIN_DIR


def _short(exc: BaseException) -> str:
    """An exception in one line: for a build error, its first line and the compiler's first error line."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0][:160]
    if len(lines) > 1:
        text += " ... " + next((x for x in lines[1:] if "error" in x.lower()), lines[-1])[:240]
    return f"{type(exc).__name__}: {text}"


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load_inline

    if not sys.platform.startswith("linux"):
        raise _Unavailable(f"it is built on Linux only (this is {sys.platform})")
    cxx = os.environ.get("CXX", "c++")
    if not shutil.which(cxx):
        raise _Unavailable(f"no C++ compiler ({cxx!r} is not on PATH)")
    ninja_dir = _ninja_dir()
    if ninja_dir is None:
        raise _Unavailable("ninja is missing (pip install ninja)")
    old_path = os.environ.get("PATH", "")
    if ninja_dir:
        os.environ["PATH"] = ninja_dir + os.pathsep + old_path
    _log.info("loading the C++ CPU kernel of ragged attention (the first time on a machine it is built: ~40 s)")
    try:
        return load_inline(_name(), cpp_sources=_SOURCE, extra_cflags=_CFLAGS, extra_ldflags=_LDFLAGS, verbose=False)
    finally:
        if ninja_dir:
            os.environ["PATH"] = old_path


class _Unavailable(Exception):
    """The kernel cannot be built here; the message says why."""


def load() -> ModuleType | None:
    """The compiled kernel module (built or loaded on first use), or ``None`` (see the module's docstring)."""
    global _module, _reason
    if _module is not None:
        return _module
    if _reason is not None or _disabled():
        return None
    with _lock:
        if _module is None and _reason is None:
            try:
                _module = _build()
            except Exception as exc:  # never crash a run over a faster path: fall back, say why once
                _reason = str(exc) if isinstance(exc, _Unavailable) else f"its build failed ({_short(exc)})"
                warnings.warn(
                    f"ragged attention on CPU uses the torch path: the C++ kernel is unavailable, {_reason}",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _module


def unavailable_reason() -> str | None:
    """Why :func:`load` returned ``None`` (``None`` while untried, loaded or turned off by the environment)."""
    return _reason
