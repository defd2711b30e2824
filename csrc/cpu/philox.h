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
// log, sin and cos are polynomial approximations (a minimax fit, Cephes' sinf, cosf); words and
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
ANOISE_VINLINE vu pack_pair(vq lo, vq hi) { return blend_odd((vu)lo, (vu)(hi << 32)); }

// Triton's uint_to_uniform_float.
ANOISE_VINLINE vf uniform(vu w) {
  vi v = (vi)w;
  v ^= v >> 31;  // ~v for negative v
  return to_vf(v) * kUniformScale;
}

// -2 ln(x) for x in [1e-7, 1) (normal, positive): x = m * 2^e with m in [sqrt(1/2), sqrt(2))
// split on the bits, then -2 ln(m) = f * P(f) with f = m - 1 (exact) and P a degree-7 minimax
// fit in relative error (2.6e-7 in float32), so small radii keep their relative accuracy.
ANOISE_VINLINE vf minus_2_log(vf x) {
  const vi i = (vi)x - 0x3F3504F3;  // bits relative to those of sqrt(1/2)
  const vi e = i >> 23;
  const vf f = (vf)((i & 0x007FFFFF) + 0x3F3504F3) - 1.0f;
  vf p = bc(2.021369487e-1f);
  p = madd(p, f, bc(-3.244514167e-1f));
  p = madd(p, f, bc(3.450168073e-1f));
  p = madd(p, f, bc(-3.980033398e-1f));
  p = madd(p, f, bc(4.993981719e-1f));
  p = madd(p, f, bc(-6.667011976e-1f));
  p = madd(p, f, bc(1.000007272f));
  p = madd(p, f, bc(-1.999999881f));
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

// Box-Muller on the pairs of the 32-bit lanes of wa (first words) and wb (second words):
// r cos t and r sin t of each pair.
ANOISE_VINLINE void box_muller(vu wa, vu wb, vf& n_cos, vf& n_sin) {
  const vf radius = vsqrt(minus_2_log(vmax(uniform(wa), bc(kMinU1))));
  vf s, c;
  sincos_approx(uniform(wb) * kTwoPi, s, c);
  n_cos = radius * c;
  n_sin = radius * s;
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
  const vu wa = pack_pair(d.w[0], d.w[2]), wb = pack_pair(d.w[1], d.w[3]);
  d.ua = uniform(wa);
  d.ub = uniform(wb);
  box_muller(wa, wb, d.n_cos, d.n_sin);
  return d;
}

// fill_groups works in stages of kStage draws: Philox for all of them into a small buffer, then
// Box-Muller.  A whole draw is one chain of about 140 cycles of dependent instructions, too long
// for the out-of-order window to overlap many; the stages' shorter loop bodies, with
// kPhiloxChains independent Philox calls interleaved, keep more of them in flight (on Zen 3,
// 1.2x the throughput of whole draws; more chains spill registers).
constexpr int kStage = 16;
constexpr int kPhiloxChains = 4;

// out[0 .. 4 * ngroups) = the normals of groups g0, g0 + 1, ... (element indices 4 * g0 ...).
ANOISE_VINLINE void fill_groups(float* out, uint64_t g0, int64_t ngroups, const Key& key) {
  vu wa[kStage], wb[kStage];
  for (int64_t j = 0; j < ngroups; j += kStage * kQuads) {
    const int64_t left = ngroups - j;
    const int64_t full = left >= kStage * kQuads ? kStage : left / kQuads;
    const int64_t nv = full < kStage && full * kQuads < left ? full + 1 : full;
    const auto words = [&](int64_t v, vq w[4]) {
      philox4(iota_q() + (g0 + (uint64_t)(j + v * kQuads)), key, w);
      wa[v] = pack_pair(w[0], w[2]);
      wb[v] = pack_pair(w[1], w[3]);
    };
    int64_t v = 0;
    for (; v + kPhiloxChains <= nv; v += kPhiloxChains) {
      vq w[kPhiloxChains][4];
#pragma GCC unroll 4
      for (int u = 0; u < kPhiloxChains; ++u) words(v + u, w[u]);
    }
    for (; v < nv; ++v) {
      vq w[4];
      words(v, w);
    }
    float* o = out + 4 * j;
    for (v = 0; v < full; ++v, o += 2 * kLanes) {
      vf c, s;
      box_muller(wa[v], wb[v], c, s);
      storef(o, zip_lo(c, s));
      storef(o + kLanes, zip_hi(c, s));
    }
    if (v < nv) {  // the last, partial draw
      vf c, s;
      box_muller(wa[v], wb[v], c, s);
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
