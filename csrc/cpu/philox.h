// The anoise noise stream, stream 2 (SPEC section 3), for the CPU kernels: element i draws
// component i & 3 of Triton's tl.randn4x(seed, i >> 2).
//
// One Philox4x32-10 call per group of four elements.  Philox runs on 64-bit lanes that each hold
// one group's 32-bit state in their low half (mul_lo32 gives the full 64-bit products, and the
// high halves, never read, may hold anything), so the 64-bit counters carry past 2**32 by
// themselves.  The words are then packed into 32-bit lanes as Box-Muller pairs,
// a = [u0, u2] and b = [u1, u3] of each group, and one log, sqrt, sin and cos serve both normals
// of a pair.  Zipping the cos and sin results gives the groups' normals in element order.
// fill_groups, the kernels' path, takes rounds 0 and 1 out as constants where a stage's groups
// share their high word (philox_run) and forms the last round straight into pairs.
//
// Words and uniforms are exact; log, sin and cos are approximations, per build:
//   baseline (SSE2): -2 ln u by a degree-7 minimax polynomial, sin and cos by quadrant
//     reduction and Cephes' sinf / cosf polynomials;
//   AVX2: the same log; sin and cos of t = k * 0.84f + r (exact) from 8-entry tables of
//     sin, cos(k * 0.84f) and degree-5 / degree-6 minimax polynomials in r;
//   AVX-512: -2 ln u from 32-entry tables (getmant / getexp, |f| <= 1/64, degree-3
//     polynomial), sin and cos of t = k * 0.2f + r from 32-entry tables and degree-3 / degree-4
//     polynomials (tools/cpu_noise_tables.py makes the tables and fits).
// Each approximation's own error is below 3e-7 relative (log) and 2e-8 absolute (sin, cos), so
// the normals' error is mostly float32 rounding: over 1e8 draws (benchmarks/cpu_noise_error.py)
// the worst is 7.8e-7 / 8.5e-7 / 8.8e-7 absolute for baseline / AVX2 / AVX-512, at most 0.025 of
// the SPEC bound 1e-5 + 1e-5 |eps|.  The builds may differ from each other in the last bits, but
// within a build draw() and fill_groups() give the same bits (the tests check it).  No standard
// headers are included: these inline functions are compiled once per instruction set (see
// kernels_impl.h).
#pragma once

#include "simd.h"

namespace anoise_cpu {
namespace ANOISE_ISA {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr float kUniformScale = 4.6566127342e-10f;  // largest s with (2^31-1)*s < 1
constexpr float kTwoPi = 6.2831855f;                // float32(2*pi), as Triton
constexpr float kMinU1 = 1e-7f;
constexpr int kRounds = 10;

// The round keys of a seed, broadcast and as scalars.
struct Key {
  vq k0[kRounds], k1[kRounds];
  vu k_last;  // k0 and k1 of the last round, in the even and odd 32-bit lanes
  uint32_t s0[kRounds], s1[kRounds];
};

ANOISE_VINLINE Key make_key(uint64_t seed) {
  Key key;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < kRounds; ++r) {
    key.s0[r] = k0;
    key.s1[r] = k1;
    key.k0[r] = vq{} + (uint64_t)k0;
    key.k1[r] = vq{} + (uint64_t)k1;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  key.k_last = (vu)(vq{} + ((uint64_t)key.s1[kRounds - 1] << 32 | key.s0[kRounds - 1]));
  return key;
}

// Philox4x32-10 on the counters (g_lo, g_hi, 0, 0) of the groups in the lanes of g.  The words
// are the low halves of w[0..3].
ANOISE_VINLINE void philox4(vq g, const Key& key, vq w[4]) {
  const vq ra = vq{} + (uint64_t)kPhiloxRoundA, rb = vq{} + (uint64_t)kPhiloxRoundB;
  // Round 0 with c2 = c3 = 0.
  vq c3 = mul_lo32(g, ra);
  vq c0 = (g >> 32) ^ key.k0[0];
  vq c2 = (c3 >> 32) ^ key.k1[0];
  vq c1 = vq{};
#pragma GCC unroll 9
  for (int r = 1; r < kRounds; ++r) {
    const vq pb = mul_lo32(c2, rb), pa = mul_lo32(c0, ra);
    c0 = (pb >> 32) ^ c1 ^ key.k0[r];
    c2 = (pa >> 32) ^ c3 ^ key.k1[r];
    c1 = pb;
    c3 = pa;
  }
  w[0] = c0;
  w[1] = c1;
  w[2] = c2;
  w[3] = c3;
}

// The low halves of the lanes of lo and hi, as 32-bit lanes lo0 hi0 lo1 hi1 ...
ANOISE_VINLINE vu pack_pair(vq lo, vq hi) { return blend_odd((vu)lo, (vu)(hi << 32)); }

// Philox of a run of counters (g_lo, hi, 0, 0) that share their high word hi, from the products
// p = g_lo * kPhiloxRoundA (64-bit lanes), straight into Box-Muller pairs (wa, wb as pack_pair
// packs them).  Rounds 0 and 1 take hi's part out as constants: c0 and c1 of round 0 are
// (hi ^ k0, 0), so round 1's product pa is one scalar.
struct RunConst {
  vq c2_1;  // round 1's c2 is p ^ c2_1: hi(pa) ^ k1[1]
  vq c2_2;  // round 2's c2 is hi(its pa) ^ c2_2: lo(round 1's pa) ^ k1[2]
};

ANOISE_VINLINE RunConst run_const(uint32_t hi, const Key& key) {
  const uint64_t pa = (uint64_t)(hi ^ key.s0[0]) * kPhiloxRoundA;
  return {vq{} + (uint64_t)((uint32_t)(pa >> 32) ^ key.s1[1]),
          vq{} + (uint64_t)((uint32_t)pa ^ key.s1[2])};
}

ANOISE_VINLINE void philox_run(vq p, const RunConst& rc, const Key& key, vu& wa, vu& wb) {
  const vq ra = vq{} + (uint64_t)kPhiloxRoundA, rb = vq{} + (uint64_t)kPhiloxRoundB;
  // Rounds 0 and 1.
  vq pb = mul_lo32((p >> 32) ^ key.k1[0], rb);
  vq c0 = (pb >> 32) ^ key.k0[1], c1 = pb, c2 = p ^ rc.c2_1;
  // Round 2: c3 of round 1 is a constant.
  pb = mul_lo32(c2, rb);
  vq pa = mul_lo32(c0, ra);
  c0 = (pb >> 32) ^ c1 ^ key.k0[2];
  c2 = (pa >> 32) ^ rc.c2_2;
  c1 = pb;
  vq c3 = pa;
#pragma GCC unroll 6
  for (int r = 3; r < kRounds - 1; ++r) {
    pb = mul_lo32(c2, rb);
    pa = mul_lo32(c0, ra);
    c0 = (pb >> 32) ^ c1 ^ key.k0[r];
    c2 = (pa >> 32) ^ c3 ^ key.k1[r];
    c1 = pb;
    c3 = pa;
  }
  pb = mul_lo32(c2, rb);
  pa = mul_lo32(c0, ra);
#if ANOISE_SIMD == 512
  // The last round straight into pairs: w0 = hi(pb) ^ c1 ^ k0 in the even 32-bit lanes and
  // w2 = hi(pa) ^ c3 ^ k1 in the odd ones, from two masked shuffles and one ternary xor.
  const vu hi = (vu)_mm512_mask_shuffle_epi32((__m512i)pa, 0x5555, (__m512i)pb, (_MM_PERM_ENUM)0xF5);
  wa = hi ^ pack_lo_lo(c1, c3) ^ key.k_last;
#else
  // The last round: w2 is formed in the high halves (hi(pa) is there already), so that one
  // blend packs it with w0.
  const vq w0 = (pb >> 32) ^ c1 ^ key.k0[kRounds - 1];
  const vq w2_hi = pa ^ (c3 << 32) ^ (vq)key.k_last;
  wa = blend_odd((vu)w0, (vu)w2_hi);
#endif
  wb = pack_lo_lo(pb, pa);
}

// Triton's uint_to_uniform_float.
ANOISE_VINLINE vf uniform(vu w) {
  vi v = (vi)w;
  v ^= v >> 31;  // ~v for negative v
  return to_vf(v) * kUniformScale;
}

// -2 ln(x) for x in [1e-7, 1) (normal, positive): x = m * 2^e with m in [sqrt(1/2), sqrt(2))
// split on the bits, then -2 ln(m) = f * P(f) with f = m - 1 (exact) and P a degree-7 minimax
// fit in relative error (2.6e-7 in float32), so small radii keep their relative accuracy.
constexpr float kLog2Poly[8] = {2.021369487e-1f,  -3.244514167e-1f, 3.450168073e-1f,
                                -3.980033398e-1f, 4.993981719e-1f,  -6.667011976e-1f,
                                1.000007272f,     -1.999999881f};
ANOISE_VINLINE vf minus_2_log(vf x) {
  const vi i = (vi)x - 0x3F3504F3;  // bits relative to those of sqrt(1/2)
  const vi e = i >> 23;
  const vf f = (vf)((i & 0x007FFFFF) + 0x3F3504F3) - 1.0f;
  vf p = bc(kLog2Poly[0]);
  for (int d = 1; d < 8; ++d) p = madd(p, f, bc(kLog2Poly[d]));
  return madd(to_vf(e), bc(-1.3862943611f), p * f);  // -2 ln 2 = -1.3862943611
}

// sin and cos of t in [0, 2*pi]: quadrant reduction with a three-part pi/2 whose leading parts
// have few mantissa bits (k * part is exact), then Cephes' sinf/cosf polynomials.
ANOISE_VINLINE void sincos_approx(vf t, vf& sin_t, vf& cos_t) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf kf = madd(t, bc(0.636619772367581343f), bc(kRound));
  const vu k = (vu)kf;  // the low bits of kf's mantissa are k = round(t * 2/pi)
  const vf fk = kf - kRound;
  vf r = madd(fk, bc(-1.5703125f), t);
  r = madd(fk, bc(-4.837512969970703125e-4f), r);
  r = madd(fk, bc(-7.54978995489188216e-8f), r);
  const vf z = r * r;
  vf ps = madd(z, bc(-1.9515295891e-4f), bc(8.3321608736e-3f));
  ps = madd(ps, z, bc(-1.6666654611e-1f));
  const vf s = madd(ps * z, r, r);
  vf pc = madd(z, bc(2.443315711809948e-5f), bc(-1.388731625493765e-3f));
  pc = madd(pc, z, bc(4.166664568298827e-2f));
  const vf c = madd(pc * z, z, madd(z, bc(-0.5f), bc(1.0f)));
  // Quadrants 0..3: (sin, cos) = (s, c), (c, -s), (-s, -c), (-c, s): swap for odd k, sin
  // negative for k & 2, cos negative where that differs from k & 1.
  const vu odd = k << 31;
  const vu sin_sign = (k << 30) & 0x80000000u;
  sin_t = (vf)((vu)select_sign((vi)odd, c, s) ^ sin_sign);
  cos_t = (vf)((vu)select_sign((vi)odd, s, c) ^ sin_sign ^ odd);
}

// Tables and coefficients made by tools/cpu_noise_tables.py.
#if ANOISE_SIMD == 512
// log: |f| <= 0.01562, relative error of the polynomial 2.45e-07
alignas(64) static constexpr float kLogRcp[32] = {
    0x1.f81f82p-1f, 0x1.e9131ap-1f, 0x1.dae608p-1f, 0x1.cd8568p-1f,
    0x1.c0e07p-1f, 0x1.b4e81cp-1f, 0x1.a98ef6p-1f, 0x1.9ec8eap-1f,
    0x1.948b1p-1f, 0x1.8acb9p-1f, 0x1.818182p-1f, 0x1.78a4c8p-1f,
    0x1.702e06p-1f, 0x1.681682p-1f, 0x1.605816p-1f, 0x1.58ed24p-1f,
    0x1.51d07ep+0f, 0x1.4afd6ap+0f, 0x1.446f86p+0f, 0x1.3e22ccp+0f,
    0x1.381382p+0f, 0x1.323e34p+0f, 0x1.2c9fb4p+0f, 0x1.27350cp+0f,
    0x1.21fb78p+0f, 0x1.1cf06ap+0f, 0x1.181182p+0f, 0x1.135c82p+0f,
    0x1.0ecf56p+0f, 0x1.0a681p+0f, 0x1.0624dep+0f, 0x1p+0f};
alignas(64) static constexpr float kLogT[32] = {
    -0x1.fc0a8ap-6f, -0x1.77459cp-4f, -0x1.341d74p-3f, -0x1.a926d8p-3f,
    -0x1.0d77e8p-2f, -0x1.44d2b4p-2f, -0x1.7ab89p-2f, -0x1.af3c92p-2f,
    -0x1.e27076p-2f, -0x1.0a325p-1f, -0x1.22941ep-1f, -0x1.3a64c6p-1f,
    -0x1.51aad8p-1f, -0x1.686c8p-1f, -0x1.7eaf84p-1f, -0x1.94793ep-1f,
    -0x1.a9ceccp-1f, -0x1.beb4dap-1f, -0x1.d32fe8p-1f, -0x1.e74426p-1f,
    -0x1.faf586p-1f, -0x1.0723e6p+0f, -0x1.109f3cp+0f, -0x1.19ee6ap+0f,
    -0x1.23130ep+0f, -0x1.2c0eap+0f, -0x1.34e288p+0f, -0x1.3d9024p+0f,
    -0x1.4618bep+0f, -0x1.4e7d82p+0f, -0x1.56bf9cp+0f, -0x1.62e43p+0f};
constexpr float kLogA0 = -0x1p+1f, kLogA1 = 0x1.000602p+0f, kLogA2 = -0x1.55655ep-1f;
// sincos: step 0.20000000298023224, |r| <= 0.10020, sin error 1.44e-08, cos error 5.92e-11
alignas(64) static constexpr float kSinTab[32] = {
    0x0p+0f, 0x1.96dff2p-3f, 0x1.8ec3aep-2f, 0x1.2118d2p-1f,
    0x1.6f494cp-1f, 0x1.aed54ap-1f, 0x1.dd343ap-1f, 0x1.f88cdep-1f,
    0x1.ffc81cp-1f, 0x1.f29c28p-1f, 0x1.d18f6ep-1f, 0x1.9df33cp-1f,
    0x1.59d64ep-1f, 0x1.07efcap-1f, 0x1.57072p-2f, 0x1.21038p-3f,
    -0x1.de338ep-5f, -0x1.05ac94p-2f, -0x1.c52418p-2f, -0x1.394572p-1f,
    -0x1.837bap-1f, -0x1.be3f3p-1f, -0x1.e73864p-1f, -0x1.fcc512p-1f,
    -0x1.fe094ap-1f, -0x1.eaf81ep-1f, -0x1.c4542ap-1f, -0x1.8ba7c8p-1f,
    -0x1.43356p-1f, -0x1.dbc0a8p-2f, -0x1.1e1f12p-2f, -0x1.545576p-4f};
alignas(64) static constexpr float kCosTab[32] = {
    0x1p+0f, 0x1.f5cb4ap-1f, 0x1.d7954ep-1f, 0x1.a69264p-1f,
    0x1.64b6bep-1f, 0x1.14a28p-1f, 0x1.730de8p-2f, 0x1.5c17b8p-3f,
    -0x1.de67c6p-6f, -0x1.d14f58p-3f, -0x1.aa2268p-2f, -0x1.2d5006p-1f,
    -0x1.798bacp-1f, -0x1.b6ba2p-1f, -0x1.e26af8p-1f, -0x1.fae04cp-1f,
    -0x1.ff207ep-1f, -0x1.ef002cp-1f, -0x1.cb23eap-1f, -0x1.94f9b8p-1f,
    -0x1.4eaa5ep-1f, -0x1.f606ecp-2f, -0x1.3ab574p-2f, -0x1.cb606p-4f,
    0x1.666568p-4f, 0x1.22785cp-2f, 0x1.dfc2dap-2f, 0x1.44f67ap-1f,
    0x1.8d16fap-1f, 0x1.c562d2p-1f, 0x1.eb9b72p-1f, 0x1.fe3ac4p-1f};
constexpr float kSinS3 = -0x1.553102p-3f, kCosC2 = -0x1.fffffcp-2f, kCosC4 = 0x1.552cap-5f;
#elif ANOISE_SIMD == 256
// AVX2 sincos: step 0.8399999737739563, |r| <= 0.42084, sin error 1.83e-08, cos error 9.28e-10
alignas(32) static constexpr float kSinTab8[8] = {
    0x0p+0f, 0x1.7d41dcp-1f, 0x1.fcf33cp-1f, 0x1.2a274p-1f,
    -0x1.bbc018p-3f, -0x1.be3f2cp-1f, -0x1.e4c4c8p-1f, -0x1.91c44ep-2f};
alignas(32) static constexpr float kCosTab8[8] = {
    0x1p+0f, 0x1.55bdbp-1f, -0x1.be68d6p-4f, -0x1.a03b3ep-1f,
    -0x1.f3d63ap-1f, -0x1.f606f6p-2f, 0x1.49813p-2f, 0x1.d6f21ap-1f};
constexpr float kSin8S3 = -0x1.5553eep-3f, kSin8S5 = 0x1.0f77d2p-7f;
constexpr float kCos8C2 = -0x1.fffffep-2f, kCos8C4 = 0x1.555386p-5f, kCos8C6 = -0x1.69e214p-10f;
#endif

// Box-Muller on the pairs of the 32-bit lanes of wa[q] (first words) and wb[q] (second words),
// q < N: r cos t and r sin t of each pair.  The N vectors go in lockstep, one step for all of
// them at a time, so that the out-of-order window holds several of the long dependency chains
// (log, sqrt) at once.
#define ANOISE_EACH(stmt)         \
  for (int q = 0; q < N; ++q) {   \
    stmt;                         \
  }
template <int N>
ANOISE_VINLINE void box_muller_n(const vu* wa, const vu* wb, vf* n_cos, vf* n_sin) {
#if ANOISE_SIMD == 512
  // -2 ln x for x = M 2^E, M in [1, 2): j = the top 5 bits of M's fraction, m = getmant(x) in
  // [0.75, 1.5) (M, or M / 2 for j >= 16), f = m * rcp_j - 1 with |f| <= 1/64, and
  // -2 ln x = E * (-2 ln 2) + T_j + f * P(f), T_j = 2 ln rcp_j (- 2 ln 2 for j >= 16).  For
  // j = 31 (x in [63/64, 1) 2^E) rcp = 1 and T = -2 ln 2 exactly: with E = -1 the first two
  // terms cancel exactly, so radii near 0 keep their relative accuracy.
  __m512 x[N], m[N];
  __m512i j[N];
  vf e[N], rcp[N], tj[N], f[N], radius[N];
  ANOISE_EACH(x[q] = (__m512)vmax(uniform(wa[q]), bc(kMinU1)))
  ANOISE_EACH(j[q] = _mm512_srli_epi32((__m512i)x[q], 18))
  ANOISE_EACH(m[q] = _mm512_getmant_ps(x[q], _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_src))
  ANOISE_EACH(e[q] = (vf)_mm512_getexp_ps(x[q]))
  ANOISE_EACH(rcp[q] = (vf)_mm512_permutex2var_ps(_mm512_load_ps(kLogRcp), j[q],
                                                   _mm512_load_ps(kLogRcp + 16)))
  ANOISE_EACH(tj[q] = (vf)_mm512_permutex2var_ps(_mm512_load_ps(kLogT), j[q],
                                                  _mm512_load_ps(kLogT + 16)))
  ANOISE_EACH(f[q] = madd((vf)m[q], rcp[q], bc(-1.0f)))
  ANOISE_EACH(radius[q] = madd(madd(f[q], bc(kLogA2), bc(kLogA1)), f[q], bc(kLogA0)) * f[q])
  ANOISE_EACH(radius[q] = vsqrt(madd(e[q], bc(kLogT[31]), tj[q]) + radius[q]))
  // t = k * 0.2f + r exactly (k = round(t / 0.2f) in 0 .. 31, |r| <= 0.1002: one fma, exact
  // since r is a multiple of min(ulp(t), ulp(0.2f))), and sin, cos of k * 0.2f from tables:
  // sin t = sin(a) cos r + cos(a) sin r, cos t = cos(a) cos r - sin(a) sin r.
  constexpr float kStep = 0.2f;
  const __m512 sin_lo = _mm512_load_ps(kSinTab), sin_hi = _mm512_load_ps(kSinTab + 16);
  const __m512 cos_lo = _mm512_load_ps(kCosTab), cos_hi = _mm512_load_ps(kCosTab + 16);
#define ANOISE_SIN_A(k) (vf)_mm512_permutex2var_ps(sin_lo, (__m512i)(k), sin_hi)
#define ANOISE_COS_A(k) (vf)_mm512_permutex2var_ps(cos_lo, (__m512i)(k), cos_hi)
#define ANOISE_SIN_R(r, z) madd((r) * (z), bc(kSinS3), r)
#define ANOISE_COS_R(z) madd(madd(z, bc(kCosC4), bc(kCosC2)), z, bc(1.0f))
#elif ANOISE_SIMD == 256
  // AVX2: log as the baseline build; sin and cos as for AVX-512 from 8-entry tables (one
  // vpermps each): t = k * 0.84f + r exactly, k in 0 .. 7, |r| <= 0.4205, degree-5 sin and
  // degree-6 cos.
  vf radius[N], f[N], p[N];
  vi i[N];
  ANOISE_EACH(radius[q] = vmax(uniform(wa[q]), bc(kMinU1)))
  ANOISE_EACH(i[q] = (vi)radius[q] - 0x3F3504F3)  // minus_2_log, step by step
  ANOISE_EACH(f[q] = (vf)((i[q] & 0x007FFFFF) + 0x3F3504F3) - 1.0f)
  ANOISE_EACH(p[q] = madd(f[q], bc(kLog2Poly[0]), bc(kLog2Poly[1])))
  for (int d = 2; d < 8; ++d) ANOISE_EACH(p[q] = madd(p[q], f[q], bc(kLog2Poly[d])))
  ANOISE_EACH(radius[q] = vsqrt(madd(to_vf(i[q] >> 23), bc(-1.3862943611f), p[q] * f[q])))
  constexpr float kStep = 0.84f;
  const __m256 sin_a = _mm256_load_ps(kSinTab8), cos_a = _mm256_load_ps(kCosTab8);
#define ANOISE_SIN_A(k) (vf)_mm256_permutevar8x32_ps(sin_a, (__m256i)(k))
#define ANOISE_COS_A(k) (vf)_mm256_permutevar8x32_ps(cos_a, (__m256i)(k))
#define ANOISE_SIN_R(r, z) madd((r) * (z), madd(z, bc(kSin8S5), bc(kSin8S3)), r)
#define ANOISE_COS_R(z) \
  madd(madd(madd(z, bc(kCos8C6), bc(kCos8C4)), z, bc(kCos8C2)), z, bc(1.0f))
#endif
#if ANOISE_SIMD >= 256
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  vf kf[N], r[N], z[N], sr[N], cr[N], sa[N], ca[N];
  ANOISE_EACH(r[q] = uniform(wb[q]) * kTwoPi)  // t
  ANOISE_EACH(kf[q] = madd(r[q], bc(1.0f / kStep), bc(kRound)))  // k in the low mantissa bits
  ANOISE_EACH(r[q] = madd(kf[q] - kRound, bc(-kStep), r[q]))
  ANOISE_EACH(z[q] = r[q] * r[q])
  ANOISE_EACH(sr[q] = ANOISE_SIN_R(r[q], z[q]))
  ANOISE_EACH(cr[q] = ANOISE_COS_R(z[q]))
  ANOISE_EACH(sa[q] = radius[q] * ANOISE_SIN_A(kf[q]))
  ANOISE_EACH(ca[q] = radius[q] * ANOISE_COS_A(kf[q]))
  ANOISE_EACH(n_cos[q] = madd(ca[q], cr[q], -(sa[q] * sr[q])))
  ANOISE_EACH(n_sin[q] = madd(sa[q], cr[q], ca[q] * sr[q]))
#undef ANOISE_SIN_A
#undef ANOISE_COS_A
#undef ANOISE_SIN_R
#undef ANOISE_COS_R
#else
  for (int q = 0; q < N; ++q) {
    const vf radius = vsqrt(minus_2_log(vmax(uniform(wa[q]), bc(kMinU1))));
    vf s, c;
    sincos_approx(uniform(wb[q]) * kTwoPi, s, c);
    n_cos[q] = radius * c;
    n_sin[q] = radius * s;
  }
#endif
}
#undef ANOISE_EACH

// One draw of the groups in the lanes of g: words, uniforms and normals.  The group in 64-bit
// lane q has its pairs (u0, u1) and (u2, u3) in 32-bit lanes 2q and 2q + 1; zip_lo then zip_hi
// give the normals of the group in lane kLaneOf[0] first, then kLaneOf[1], ... (see simd.h).
struct Draw {
  vq w[4];
  vf ua, ub;        // first and second uniform of each pair
  vf n_cos, n_sin;  // r cos t and r sin t of each pair
};

ANOISE_VINLINE Draw draw(vq g, const Key& key) {
  Draw d;
  philox4(g, key, d.w);
  const vu wa = pack_pair(d.w[0], d.w[2]), wb = pack_lo_lo(d.w[1], d.w[3]);
  d.ua = uniform(wa);
  d.ub = uniform(wb);
  box_muller_n<1>(&wa, &wb, &d.n_cos, &d.n_sin);
  return d;
}

// fill_groups works in stages of kStage draws: Philox for all of them into a small buffer, then
// Box-Muller.  A whole draw is one chain of about 140 cycles of dependent instructions, too long
// for the out-of-order window to overlap many; the stages' shorter loop bodies, with
// kPhiloxChains independent Philox calls interleaved and kBoxMullerWidth Box-Muller vectors in
// lockstep (box_muller_n), keep more of them in flight.  The kernels_<isa>.cpp files also turn
// on gcc's scheduling before register allocation, which interleaves those chains' instructions
// (x86 builds leave it off by default).  Widths measured on Zen 4 (1M normals, one thread).
constexpr int kStage = 16;
#if ANOISE_SIMD == 512
constexpr int kPhiloxChains = 8;
constexpr int kBoxMullerWidth = 2;
#elif ANOISE_SIMD == 256
constexpr int kPhiloxChains = 4;
constexpr int kBoxMullerWidth = 4;
#else
constexpr int kPhiloxChains = 4;
constexpr int kBoxMullerWidth = 2;
#endif

// out[0 .. 4 * ngroups) = the normals of groups g0, g0 + 1, ... (element indices 4 * g0 ...).
ANOISE_VINLINE void fill_groups(float* out, uint64_t g0, int64_t ngroups, const Key& key) {
  vu wa[kStage], wb[kStage];
  for (int64_t j = 0; j < ngroups; j += kStage * kQuads) {
    const int64_t left = ngroups - j;
    const int64_t full = left >= kStage * kQuads ? kStage : left / kQuads;
    const int64_t nv = full < kStage && full * kQuads < left ? full + 1 : full;
    const uint64_t first = g0 + (uint64_t)j;
    const uint64_t last = first + (uint64_t)(left < kStage * kQuads ? left : kStage * kQuads) - 1;
    if ((first >> 32) == (last >> 32)) {
      // The stage's groups share their high word: products g_lo * kPhiloxRoundA step by
      // kQuads * kPhiloxRoundA from lane to lane of the draws (the lanes past the last group,
      // never stored, may wrap).
      const RunConst rc = run_const((uint32_t)(first >> 32), key);
      const vq step = vq{} + (uint64_t)kQuads * kPhiloxRoundA;
      vq p = mul_lo32(iota_q() + first, vq{} + (uint64_t)kPhiloxRoundA);
      int64_t v = 0;
      for (; v + kPhiloxChains <= nv; v += kPhiloxChains) {
#pragma GCC unroll 8
        for (int u = 0; u < kPhiloxChains; ++u) {
          philox_run(p, rc, key, wa[v + u], wb[v + u]);
          p += step;
        }
      }
      for (; v < nv; ++v, p += step) philox_run(p, rc, key, wa[v], wb[v]);
    } else {
      for (int64_t v = 0; v < nv; ++v) {
        vq w[4];
        philox4(iota_q() + (first + (uint64_t)(v * kQuads)), key, w);
        wa[v] = pack_pair(w[0], w[2]);
        wb[v] = pack_lo_lo(w[1], w[3]);
      }
    }
    float* o = out + 4 * j;
    int64_t v = 0;
    for (; v + kBoxMullerWidth <= full; v += kBoxMullerWidth) {
      vf c[kBoxMullerWidth], s[kBoxMullerWidth];
      box_muller_n<kBoxMullerWidth>(wa + v, wb + v, c, s);
      for (int q = 0; q < kBoxMullerWidth; ++q, o += 2 * kLanes) {
        storef(o, zip_lo(c[q], s[q]));
        storef(o + kLanes, zip_hi(c[q], s[q]));
      }
    }
    for (; v < full; ++v, o += 2 * kLanes) {
      vf c, s;
      box_muller_n<1>(&wa[v], &wb[v], &c, &s);
      storef(o, zip_lo(c, s));
      storef(o + kLanes, zip_hi(c, s));
    }
    if (v < nv) {  // the last, partial draw
      vf c, s;
      box_muller_n<1>(&wa[v], &wb[v], &c, &s);
      float tmp[2 * kLanes];
      storef(tmp, zip_lo(c, s));
      storef(tmp + kLanes, zip_hi(c, s));
      __builtin_memcpy(o, tmp, (uint64_t)(4 * (left - v * kQuads)) * sizeof(float));
    }
  }
}

// Noise blocks: eps for n consecutive element indices i .. i + n - 1, whole groups drawn into buf;
// the returned pointer is eps(i).  buf needs noise_buf_floats(n) floats.
constexpr int64_t noise_buf_floats(int64_t n) { return n + 8; }

ANOISE_VINLINE const float* noise_block(float* buf, uint64_t i, int64_t n, const Key& key) {
  const int64_t head = (int64_t)(i & 3u);
  fill_groups(buf, i >> 2, (head + n + 3) >> 2, key);
  return buf + head;
}

}  // namespace ANOISE_ISA
}  // namespace anoise_cpu
