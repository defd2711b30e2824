// The anoise noise stream (SPEC section 3, stream 2) and the index arithmetic of the CUDA
// kernels, as __host__ __device__ functions: the kernels call exactly this code, and a host
// program (tests/cuda/host_check.cu) runs it on the CPU to check it against Triton's vectors,
// measure its error and replay the kernels' element-to-group mapping.  No torch, no Triton.
//
// Element i of a call draws component i & 3 of randn4x(seed, i >> 2): one Philox4x32-10 call
// gives the four normals of group j = i >> 2, and a kernel computes each group once (threads own
// whole groups).
//
// The normals use cheap approximations, chosen so that host and device compute bit-identical
// results (only IEEE add, mul and fma, integer ops and conversions), with one exception: the
// device's reciprocal square root (MUFU.RSQ, which rsqrtf uses for normal inputs; CUDA documents
// rsqrtf as within 2 ulp), so the host check measures the error with that allowance.  Measured
// (benchmarks/RESULTS.md): every normal within 2.2e-6 of the stream over 1e8 draws.
//   -2 log(a): exponent split and a degree-5 polynomial in a - 1 (log1p form, so a -> 1 keeps
//              its relative accuracy, which r = sqrt(-2 log a) needs there);
//   sqrt:      x * rsqrtf(x);
//   cos, sin:  of 2*pi*b with b the uniform in turns: reduced exactly to half turns in
//              [-1/2, 1/2] and polynomials of degree 8 and 9.  The stream's own angle is the
//              float product 6.2831855f * b; the difference (< 4.2e-7 rad) is in the budget.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define ANOISE_HD __host__ __device__ __forceinline__
#else
#define ANOISE_HD inline
#endif

#if !defined(__CUDA_ARCH__)
#include <cmath>
#include <cstring>
#endif

namespace anoise_cuda {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr float kUniformScale = 4.6566127342e-10f;  // largest s with (2^31-1)*s < 1
constexpr float kMinU1 = 1e-7f;

// ---- float operations that round the same way on host and device ------------------------------
// (nvcc contracts a*b+c into an fma on the device; these spell out every rounding.)

ANOISE_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
ANOISE_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
ANOISE_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
ANOISE_HD float as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}
ANOISE_HD uint32_t as_uint(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}
// 1/sqrt(x) for normal x: MUFU.RSQ on the device, what rsqrtf (documented: within 2 ulp)
// computes for normal inputs without its subnormal rescaling; correctly rounded on the host.
ANOISE_HD float rsqrt_approx(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return (float)(1.0 / std::sqrt((double)x));
#endif
}

// ---- Philox4x32-10 and the uniforms ----------------------------------------------------------

struct Words {
  uint32_t w0, w1, w2, w3;
};

// The key schedule of a seed: the round keys are the same for every group of a call, so a
// kernel computes them once, before its loop (they then live in uniform registers).
struct Key {
  uint32_t k0[10], k1[10];
};

ANOISE_HD Key make_key(uint64_t seed) {
  Key key;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    key.k0[r] = k0;
    key.k1[r] = k1;
#if defined(__CUDA_ARCH__)
    // Opaque to the compiler, which would otherwise recompute round keys inside the loops.
    asm volatile("" : "+r"(key.k0[r]), "+r"(key.k1[r]));
#endif
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return key;
}

ANOISE_HD uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);  // with a * b, one IMAD.WIDE.U32
#else
  return (uint32_t)(((uint64_t)a * b) >> 32);
#endif
}

// Philox4x32-10 on the counter (j_lo, j_hi, 0, 0).
ANOISE_HD Words philox(uint64_t j, const Key& key) {
  uint32_t c0 = (uint32_t)j, c1 = (uint32_t)(j >> 32), c2 = 0, c3 = 0;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hb = mulhi(c2, kPhiloxRoundB), lb = c2 * kPhiloxRoundB;
    const uint32_t ha = mulhi(c0, kPhiloxRoundA), la = c0 * kPhiloxRoundA;
    c0 = hb ^ c1 ^ key.k0[r];
    c2 = ha ^ c3 ^ key.k1[r];
    c1 = lb;
    c3 = la;
  }
  return Words{c0, c1, c2, c3};
}

// The word as Triton's int32 magnitude: ~v for negative v, in [0, 2^31).
ANOISE_HD int32_t magnitude(uint32_t w) {
  const int32_t v = (int32_t)w;
  return v ^ (v >> 31);
}

// Triton's uint_to_uniform_float: bit-exact.
ANOISE_HD float uniform(uint32_t w) { return mul_rn((float)magnitude(w), kUniformScale); }

// ---- Box-Muller pieces -------------------------------------------------------------------------

// -2 ln(a) for a in [1e-7, 1): a = 2^k m with m in [2/3, 4/3); -2 ln(m) = f (-2 + f Q(f)),
// f = m - 1 (exact); Q fitted for relative error ~1e-6 over |f| <= 1/3.
ANOISE_HD float neg2log(float a) {
  const uint32_t bits = as_uint(a);
  const int32_t k = (int32_t)(bits - 0x3f2aaaabu) >> 23;
  const float f = add_rn(as_float(bits - ((uint32_t)k << 23)), -1.0f);
  float q = -0.34031873f;
  q = fma_rn(q, f, 0.38773326f);
  q = fma_rn(q, f, -0.39626993f);
  q = fma_rn(q, f, 0.49689852f);
  q = fma_rn(q, f, -0.66673886f);
  q = fma_rn(q, f, 1.0000426f);
  const float p = mul_rn(f, fma_rn(f, q, -2.0f));
  return fma_rn((float)k, -1.38629436f, p);  // -2 ln 2
}

// The Box-Muller radius sqrt(-2 ln max(u, 1e-7)) of a word.
ANOISE_HD float radius(uint32_t w) {
  const float x = neg2log(fmaxf(uniform(w), kMinU1));
  return mul_rn(x, rsqrt_approx(x));
}

struct CosSin {
  float c, s;
};

// cos and sin of 2 pi b for the word's uniform b, with the sign of the half turn already folded
// into `sign` (0 or 0x80000000): (cos, sin)(2 pi b) = sign * (c, s).
ANOISE_HD CosSin turn(uint32_t w, uint32_t& sign) {
  const float b2 = mul_rn((float)magnitude(w), 2.0f * kUniformScale);  // 2b exactly, in [0, 2)
  const float t = add_rn(b2, 12582912.0f);  // 1.5 * 2^23: t = rint(2b) + 1.5 * 2^23 exactly
  sign = as_uint(t) << 31;                  // odd half turns flip both signs
  const float f = add_rn(b2, -add_rn(t, -12582912.0f));  // 2b - rint(2b), in [-1/2, 1/2]
  const float z = mul_rn(f, f);
  float c = 0.2200825f;  // cos(pi f), degree 8
  c = fma_rn(c, z, -1.3320947f);
  c = fma_rn(c, z, 4.0584514f);
  c = fma_rn(c, z, -4.9347955f);
  c = fma_rn(c, z, 1.0f);
  float s = 0.07722058f;  // sin(pi f), degree 9
  s = fma_rn(s, z, -0.5980454f);
  s = fma_rn(s, z, 2.5500314f);
  s = fma_rn(s, z, -5.1677069f);
  s = fma_rn(s, z, 3.1415926f);
  return CosSin{c, mul_rn(s, f)};
}

// One Box-Muller pair in polar form: its normals are (r c, r s), the half-turn sign folded
// into r.  Kernels scale r once per pair (r * scale, or r * (dy0 c + dy1 s)).
struct Polar {
  float r, c, s;
};

ANOISE_HD Polar polar(uint32_t wa, uint32_t wb) {
  uint32_t sign;
  const CosSin cs = turn(wb, sign);
  return Polar{as_float(as_uint(radius(wa)) ^ sign), cs.c, cs.s};
}

struct Polar4 {
  Polar p[2];  // (w0, w1) and (w2, w3)
};

ANOISE_HD Polar4 polar4(const Words& w) { return Polar4{{polar(w.w0, w.w1), polar(w.w2, w.w3)}}; }

// One Box-Muller pair: (r cos t, r sin t) for the words (wa, wb).
ANOISE_HD void box_muller(uint32_t wa, uint32_t wb, float& n_cos, float& n_sin) {
  const Polar p = polar(wa, wb);
  n_cos = mul_rn(p.r, p.c);
  n_sin = mul_rn(p.r, p.s);
}

struct Normal4 {
  float v[4];
};

// randn4x: [r01 cos t01, r01 sin t01, r23 cos t23, r23 sin t23].
ANOISE_HD Normal4 normal4(const Words& w) {
  Normal4 n;
  box_muller(w.w0, w.w1, n.v[0], n.v[1]);
  box_muller(w.w2, w.w3, n.v[2], n.v[3]);
  return n;
}

ANOISE_HD Normal4 randn4(uint64_t group, const Key& key) { return normal4(philox(group, key)); }

// eps of one element (test hooks; the kernels compute whole groups).
ANOISE_HD float randn_at(uint64_t i, const Key& key) {
  const Normal4 n = randn4(i >> 2, key);
  const int k = (int)(i & 3);
  return k == 0 ? n.v[0] : (k == 1 ? n.v[1] : (k == 2 ? n.v[2] : n.v[3]));
}

// ---- index arithmetic shared by the kernels and the host check --------------------------------

// Division by a divisor fixed for a launch, without a divide instruction (the round-up method
// of Granlund and Montgomery): q = (hi(n * m) + n) >> shift, exact for n < 2^31 (32-bit) or
// n < 2^63 (64-bit).  The kernels use the 32-bit form whenever their indices allow it.
template <class I>
struct Divider {
  I d, m;
  uint32_t shift;
};

template <class I>
inline Divider<I> make_divider(I d) {  // host only
  uint32_t shift = 0;
  while ((unsigned __int128)1 << shift < (unsigned __int128)d) ++shift;
  const unsigned bits = 8 * sizeof(I);
  const unsigned __int128 m =
      (((unsigned __int128)1 << bits) * (((unsigned __int128)1 << shift) - d)) / d + 1;
  return Divider<I>{d, (I)m, shift};
}

ANOISE_HD uint64_t mulhi(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return (uint64_t)(((unsigned __int128)a * b) >> 64);
#endif
}

template <class I>
ANOISE_HD I div(I n, const Divider<I>& v) {
  return (mulhi(n, v.m) + n) >> v.shift;
}

// A run: `len` elements of logical indices p0 .. p0+len-1 (p0 includes the call's index base).
// Its groups are p0/4 .. (p0+len-1)/4; slot t holds the group p0/4 + t, whose component k is
// the run's element q0 + k (q0 = 4t - p0 % 4), for those q0 + k in [0, len).  A group that
// straddles two runs (len or p0 not a multiple of 4) is drawn by both: each keeps its own
// components.
ANOISE_HD int64_t groups_in_run(uint64_t p0, int64_t len) {
  return (int64_t)(((p0 + (uint64_t)len - 1) >> 2) - (p0 >> 2)) + 1;
}
ANOISE_HD int64_t first_pos(uint64_t p0, int64_t t) {
  return 4 * (int64_t)t - (int64_t)(p0 & 3);  // in [-3, 0] for t = 0
}

struct RunItem {
  bool valid;      // slot t holds a group of this run
  uint64_t group;  // its Philox counter
  int64_t q0;      // run position of its component 0
};

ANOISE_HD RunItem run_item(uint64_t p0, int64_t len, int64_t t) {
  return RunItem{t < groups_in_run(p0, len), (p0 >> 2) + (uint64_t)t, first_pos(p0, t)};
}

// Slots per run, for runs of length len starting anywhere (max of groups_in_run), or len/4
// when every run starts at a multiple of 4 and len is one (`whole`: no group straddles).
ANOISE_HD int64_t run_slots(int64_t len, bool whole) { return whole ? len / 4 : (len + 2) / 4 + 1; }

// A dense row-major (N, C, S) tensor walked group by group: item t is the group
// base/4 + t, its component k the element at local index first_pos(base, t) + k.  `groups`
// items cover the call (the first and last may be partly outside it).
struct FlatPlan {
  uint64_t base;
  int64_t numel, S, C, groups;
};

// An element of an item: local logical index l (-1: not in this call) and channel c.
struct Slot {
  int64_t l, c;
};

// The channel of local logical index l: (l / S) % C.
template <class I>
ANOISE_HD I channel_of(I l, const Divider<I>& dS, const Divider<I>& dC) {
  const I plane = div(l, dS);
  return plane - div(plane, dC) * dC.d;
}

// The elements of item t, for any S, C and base: the channel is found once and then stepped,
// as a group may straddle several rows (S < 4) and wrap from channel C-1 to 0.
template <class I>
ANOISE_HD void flat_slots(const FlatPlan& p, const Divider<I>& dS, const Divider<I>& dC,
                          int64_t t, Slot out[4]) {
  const int64_t l0 = first_pos(p.base, t);
  const I first = (I)(l0 < 0 ? 0 : l0);
  const I plane = div(first, dS);
  I s = first - plane * dS.d;
  I c = plane - div(plane, dC) * dC.d;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t l = l0 + k;
    if (l < 0 || l >= p.numel) {
      out[k] = Slot{-1, 0};
      continue;
    }
    out[k] = Slot{l, (int64_t)c};
    if (++s == dS.d) {
      s = 0;
      if (++c == dC.d) c = 0;
    }
  }
}

// A tensor seen as runs along its innermost logical dimension of size > 1 (logical stride 1,
// length L), for layouts whose memory order is not the logical one (channels_last, transposed,
// strided): the run of (a, b) starts at logical index base + a*La + b*Lb.  `role` says which
// coordinate is the channel: a (0), b (1) or the run position q (2).  Threads take (a, b, slot).
struct RunPlan {
  uint64_t base;
  int64_t L, NA, NB, La, Lb;
  int32_t role;
  int64_t slots;
};

// Element strides of a, b and q in one tensor.
struct RunMem {
  int64_t a, b, q;
};

ANOISE_HD uint64_t run_start(const RunPlan& p, int64_t a, int64_t b) {
  return p.base + (uint64_t)(a * p.La + b * p.Lb);
}

// The runs of an (N, C, S) tensor with strides (sN, sC, sS): the run is S when S > 1, else C
// (else N); a is whichever remaining dim is innermost in memory.  `lanes_on_run`: the run is
// innermost in memory, so a warp's lanes go along it (else along a).  Host only.
inline RunPlan run_plan(int64_t N, int64_t C, int64_t S, int64_t sN, int64_t sC, int64_t sS,
                        uint64_t base, RunMem& m, bool& lanes_on_run) {
  RunPlan p{};
  p.base = base;
  if (S > 1 || C == 1) {
    const bool s_run = S > 1;  // else the run is N (S == C == 1)
    const bool a_is_c = !s_run || N == 1 || (C > 1 && sC <= sN);
    p.L = s_run ? S : N;
    m.q = s_run ? sS : sN;
    p.NA = a_is_c ? C : N;
    p.NB = s_run ? (a_is_c ? N : C) : 1;
    p.La = a_is_c ? S : C * S;
    p.Lb = s_run ? (a_is_c ? C * S : S) : 0;
    m.a = a_is_c ? sC : sN;
    m.b = s_run ? (a_is_c ? sN : sC) : 0;
    p.role = a_is_c ? 0 : 1;
  } else {  // S == 1, C > 1: the run is a row's C channels
    p.L = C;
    m.q = sC;
    p.NA = N;
    p.NB = 1;
    p.La = C;
    p.Lb = 0;
    m.a = sN;
    m.b = 0;
    p.role = 2;
  }
  lanes_on_run = p.NA == 1 || m.q <= m.a;
  const bool whole = base % 4 == 0 && p.L % 4 == 0 && p.La % 4 == 0 && p.Lb % 4 == 0;
  p.slots = run_slots(p.L, whole);
  return p;
}

// For a row of C channels starting at logical index P (S == 1 reductions): which group, as an
// offset 0 or 1 from P/4, and which component hold channel 4j + k of the quad starting at P.
ANOISE_HD int quad_source(uint64_t P, int k, int& component) {
  const int r = (int)(P & 3) + k;
  component = r & 3;
  return r >> 2;
}

// dx of the batch-statistics backward: exactly dy where coef_c == 0 (alpha = 0, or sigma
// infinite), even for infinite or NaN x, as every backend does.
template <class A>
ANOISE_HD A dx_value(A dy, A x, A coef, A mean) {
  return coef == A(0) ? dy : dy + coef * (x - mean);
}

}  // namespace anoise_cuda
