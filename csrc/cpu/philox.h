// The anoise noise stream, stream 2 (SPEC section 3), for the CPU kernels: element i draws
// component i & 3 of Triton's tl.randn4x(seed, i >> 2).
//
// One Philox4x32-10 call per group of four elements.  Philox runs on 64-bit lanes that each hold
// one group's 32-bit state in their low half (mul_lo32 gives the full 64-bit products, and the
// high halves, never read, may hold anything), so the 64-bit counters carry past 2**32 by
// themselves.  The words are then packed into 32-bit lanes as Box-Muller pairs,
// a = [u0, u2] and b = [u1, u3] of each group, and one log, sqrt, sin and cos serve both normals
// of a pair.  Zipping the cos and sin results gives the groups' normals in element order.
//
// log, sin and cos are polynomial approximations (Cephes' logf, sinf, cosf); words and
// uniforms are exact, normals are within about 1e-6 of the stream evaluated in float64
// (benchmarks/cpu_noise_error.py measures it).  No standard headers are included: these
// inline functions are compiled once per instruction set (see kernels_impl.h).
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

// The round keys of a seed, broadcast.
struct Key {
  vq k0[kRounds], k1[kRounds];
};

ANOISE_VINLINE Key make_key(uint64_t seed) {
  Key key;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < kRounds; ++r) {
    key.k0[r] = vq{} + (uint64_t)k0;
    key.k1[r] = vq{} + (uint64_t)k1;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
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
ANOISE_VINLINE vu pack_pair(vq lo, vq hi) { return (vu)((lo & 0xFFFFFFFFull) | (hi << 32)); }

// Triton's uint_to_uniform_float.
ANOISE_VINLINE vf uniform(vu w) {
  vi v = (vi)w;
  v ^= v >> 31;  // ~v for negative v
  return to_vf(v) * kUniformScale;
}

// Natural log for x in [1e-7, 1) (normal, positive): Cephes logf.
ANOISE_VINLINE vf log_approx(vf x) {
  const vu b = (vu)x;
  const vu bm = (b & 0x007FFFFFu) | 0x3F000000u;  // x = m * 2^e, m in [0.5, 1)
  // m < sqrt(1/2): use 2m - 1 and e - 1, keeping the argument in [-0.29, 0.41].
  const vi below = (vi)(bm < 0x3F3504F3u);  // -1 or 0
  const vi e = (vi)(b >> 23) - 126 + below;
  const vf m0 = (vf)bm;
  const vf m = (m0 - 1.0f) + (vf)(bm & (vu)below);
  const vf z = m * m;
  vf p = bc(7.0376836292e-2f);
  p = madd(p, m, bc(-1.1514610310e-1f));
  p = madd(p, m, bc(1.1676998740e-1f));
  p = madd(p, m, bc(-1.2420140846e-1f));
  p = madd(p, m, bc(1.4249322787e-1f));
  p = madd(p, m, bc(-1.6668057665e-1f));
  p = madd(p, m, bc(2.0000714765e-1f));
  p = madd(p, m, bc(-2.4999993993e-1f));
  p = madd(p, m, bc(3.3333331174e-1f));
  const vf fe = to_vf(e);
  vf y = p * m * z;
  y = madd(fe, bc(-2.12194440e-4f), y);  // ln 2 split in two so that fe * ln2 is exact
  y = madd(z, bc(-0.5f), y);
  return madd(fe, bc(0.693359375f), m + y);
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
  // Quadrants 0..3: (sin, cos) = (s, c), (c, -s), (-s, -c), (-c, s).
  const vi odd = (vi)(k << 31);
  sin_t = (vf)((vu)select_sign(odd, c, s) ^ ((k & 2u) << 30));
  cos_t = (vf)((vu)select_sign(odd, s, c) ^ (((k + 1u) & 2u) << 30));
}

// One draw of the groups in the lanes of g: words, uniforms and normals.  Lane order of the
// 32-bit vectors: a pair per lane, pairs (u0, u1) and (u2, u3) of group 0, then of group 1, ...
struct Draw {
  vq w[4];
  vf ua, ub;        // first and second uniform of each pair
  vf n_cos, n_sin;  // r cos t and r sin t of each pair
};

ANOISE_VINLINE Draw draw(vq g, const Key& key) {
  Draw d;
  philox4(g, key, d.w);
  d.ua = uniform(pack_pair(d.w[0], d.w[2]));
  d.ub = uniform(pack_pair(d.w[1], d.w[3]));
  const vf radius = vsqrt(log_approx(vmax(d.ua, bc(kMinU1))) * -2.0f);
  vf s, c;
  sincos_approx(d.ub * kTwoPi, s, c);
  d.n_cos = radius * c;
  d.n_sin = radius * s;
  return d;
}

// The 4 * kQuads normals of groups g0 .. g0 + kQuads - 1, in element order, into out[0 .. 2 *
// kLanes).
ANOISE_VINLINE void randn4x_store(float* out, uint64_t g0, const Key& key) {
  const Draw d = draw(iota_q() + g0, key);
  storef(out, zip_lo(d.n_cos, d.n_sin));
  storef(out + kLanes, zip_hi(d.n_cos, d.n_sin));
}

constexpr int64_t kGroupsPerStep = 2 * kQuads;  // two independent draws per step for the ILP

// out[0 .. 4 * ngroups) = the normals of groups g0, g0 + 1, ... (element indices 4 * g0 ...).
ANOISE_VINLINE void fill_groups(float* out, uint64_t g0, int64_t ngroups, const Key& key) {
  int64_t j = 0;
  for (; j + kGroupsPerStep <= ngroups; j += kGroupsPerStep) {
    randn4x_store(out + 4 * j, g0 + (uint64_t)j, key);
    randn4x_store(out + 4 * j + 2 * kLanes, g0 + (uint64_t)(j + kQuads), key);
  }
  for (; j < ngroups; j += kQuads) {
    float tmp[2 * kLanes];
    randn4x_store(tmp, g0 + (uint64_t)j, key);
    const int64_t n = ngroups - j < kQuads ? ngroups - j : kQuads;
    __builtin_memcpy(out + 4 * j, tmp, (uint64_t)(4 * n) * sizeof(float));
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
