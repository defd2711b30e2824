// The anoise noise stream (SPEC section 3) for the CPU kernels: Triton's tl.randn(seed, i).
//
// Everything here is branch-free scalar code on 32-bit lanes so that a loop calling
// randn_at() over consecutive elements auto-vectorises (the 32x32->64-bit products become
// vpmuludq).  log and cos are polynomial approximations (Cephes' logf/sinf/cosf, ~1e-7
// relative) rather than libm calls, which gcc cannot vectorise; SPEC allows randn within 1e-5
// of Triton's.  Words and rand are exact.  No standard headers are included: these inline
// functions are compiled once per instruction set (see kernels_impl.h).
#pragma once

#include <stdint.h>

namespace anoise_cpu {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr float kUniformScale = 4.6566127342e-10f;  // largest s with (2^31-1)*s < 1
constexpr float kTwoPi = 6.2831855f;                // float32(2*pi), as Triton
constexpr float kMinU1 = 1e-7f;

static inline __attribute__((always_inline)) uint32_t f2u(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}
static inline __attribute__((always_inline)) float u2f(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

struct Words {
  uint32_t w0, w1, w2, w3;
};

// Philox4x32-10 on counter (i_lo, i_hi, 0, 0) and key (k0, k1).
static inline __attribute__((always_inline)) Words philox(uint64_t i, uint32_t k0, uint32_t k1) {
  uint32_t c0 = (uint32_t)i, c1 = (uint32_t)(i >> 32), c2 = 0, c3 = 0;
  // Written out (not a loop) so the vectoriser sees straight-line code.
#define ANOISE_PHILOX_ROUND(r)                                                \
  {                                                                           \
    const uint64_t pb = (uint64_t)c2 * kPhiloxRoundB;                         \
    const uint64_t pa = (uint64_t)c0 * kPhiloxRoundA;                         \
    const uint32_t n0 = (uint32_t)(pb >> 32) ^ c1 ^ (k0 + (r) * kPhiloxKeyA); \
    const uint32_t n2 = (uint32_t)(pa >> 32) ^ c3 ^ (k1 + (r) * kPhiloxKeyB); \
    c1 = (uint32_t)pb;                                                        \
    c3 = (uint32_t)pa;                                                        \
    c0 = n0;                                                                  \
    c2 = n2;                                                                  \
  }
  ANOISE_PHILOX_ROUND(0u) ANOISE_PHILOX_ROUND(1u) ANOISE_PHILOX_ROUND(2u) ANOISE_PHILOX_ROUND(3u)
  ANOISE_PHILOX_ROUND(4u) ANOISE_PHILOX_ROUND(5u) ANOISE_PHILOX_ROUND(6u) ANOISE_PHILOX_ROUND(7u)
  ANOISE_PHILOX_ROUND(8u) ANOISE_PHILOX_ROUND(9u)
#undef ANOISE_PHILOX_ROUND
  return Words{c0, c1, c2, c3};
}

// The same rounds on 64-bit lanes that hold 32-bit values: with AVX-512 gcc then multiplies
// with vpmullq on 8 lanes and needs no shuffles, which measured 1.45 ns/element against 3.2
// for philox() (kernels_avx512.cpp selects it with ANOISE_PHILOX_WIDE).
static inline __attribute__((always_inline)) Words philox_wide(uint64_t i, uint32_t k0_,
                                                               uint32_t k1_) {
  constexpr uint64_t kLow = 0xFFFFFFFFull;
  uint64_t c0 = i & kLow, c1 = i >> 32, c2 = 0, c3 = 0;
  const uint64_t k0 = k0_, k1 = k1_;
#define ANOISE_PHILOX_WIDE_ROUND(r)                                            \
  {                                                                            \
    const uint64_t pb = c2 * (uint64_t)kPhiloxRoundB;                          \
    const uint64_t pa = c0 * (uint64_t)kPhiloxRoundA;                          \
    const uint64_t n0 = (pb >> 32) ^ c1 ^ ((k0 + (r) * kPhiloxKeyA) & kLow);   \
    const uint64_t n2 = (pa >> 32) ^ c3 ^ ((k1 + (r) * kPhiloxKeyB) & kLow);   \
    c1 = pb & kLow;                                                            \
    c3 = pa & kLow;                                                            \
    c0 = n0;                                                                   \
    c2 = n2;                                                                   \
  }
  ANOISE_PHILOX_WIDE_ROUND(0u) ANOISE_PHILOX_WIDE_ROUND(1u) ANOISE_PHILOX_WIDE_ROUND(2u)
  ANOISE_PHILOX_WIDE_ROUND(3u) ANOISE_PHILOX_WIDE_ROUND(4u) ANOISE_PHILOX_WIDE_ROUND(5u)
  ANOISE_PHILOX_WIDE_ROUND(6u) ANOISE_PHILOX_WIDE_ROUND(7u) ANOISE_PHILOX_WIDE_ROUND(8u)
  ANOISE_PHILOX_WIDE_ROUND(9u)
#undef ANOISE_PHILOX_WIDE_ROUND
  return Words{(uint32_t)c0, (uint32_t)c1, (uint32_t)c2, (uint32_t)c3};
}

// Triton's uint_to_uniform_float for 32-bit words.
static inline __attribute__((always_inline)) float uniform(uint32_t w) {
  int32_t v = (int32_t)w;
  v ^= v >> 31;  // ~v for negative v
  return (float)v * kUniformScale;
}

// Selects below are written as integer bit operations: a float value chosen by an int
// condition (or the reverse) is not if-converted by gcc for AVX2/SSE, and the loop would stay
// scalar.
static inline __attribute__((always_inline)) float select_bits(uint32_t mask, float a, float b) {
  return u2f((f2u(a) & mask) | (f2u(b) & ~mask));
}

// Natural log for x in [1e-7, 1) (normal, positive): Cephes logf.
static inline __attribute__((always_inline)) float log_approx(float x) {
  const uint32_t b = f2u(x);
  const uint32_t bm = (b & 0x007FFFFFu) | 0x3F000000u;  // x = m * 2^e, m in [0.5, 1)
  const float m0 = u2f(bm);
  // m < sqrt(1/2): use 2m - 1 and e - 1, keeping the argument in [-0.29, 0.41].
  const uint32_t below = bm < 0x3F3504F3u ? 0xFFFFFFFFu : 0u;
  const int32_t e = (int32_t)(b >> 23) - 126 + (int32_t)below;  // below is -1 as int32
  const float m = (m0 - 1.0f) + u2f(bm & below);
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const float fe = (float)e;
  float y = p * m * z;
  y += fe * -2.12194440e-4f;  // ln 2 split in two so that fe * ln2 is exact
  y += -0.5f * z;
  return (m + y) + fe * 0.693359375f;
}

// cos(t) for t in [0, 2*pi + 1): quadrant reduction with a three-part pi/2 whose leading parts
// have few mantissa bits (k * part is exact), then Cephes' sinf/cosf polynomials.
static inline __attribute__((always_inline)) float cos_approx(float t) {
  const int32_t k = (int32_t)(t * 0.636619772367581343f + 0.5f);
  const float fk = (float)k;
  float r = t - fk * 1.5703125f;
  r = r - fk * 4.837512969970703125e-4f;
  r = r - fk * 7.54978995489188216e-8f;
  const float z = r * r;
  const float c =
      ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
      0.5f * z + 1.0f;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  // Quadrants 0..3: cos, -sin, -cos, sin.
  const uint32_t odd = 0u - ((uint32_t)k & 1u);
  const uint32_t sign = ((uint32_t)(k + 1) & 2u) << 30;
  return u2f(f2u(select_bits(odd, s, c)) ^ sign);
}

// The first output of Triton's pair_uniform_to_normal.
static inline __attribute__((always_inline)) float box_muller(uint32_t w0, uint32_t w1) {
  // max(u1, 1e-7) on the bits (both are non-negative): a float compare here makes gcc thread
  // jumps into log_approx's select and give up vectorising.
  uint32_t b1 = f2u(uniform(w0));
  b1 = b1 < f2u(kMinU1) ? f2u(kMinU1) : b1;
  const float u1 = u2f(b1);
  const float u2 = uniform(w1);
  const float radius = __builtin_sqrtf(-2.0f * log_approx(u1));
  return radius * cos_approx(kTwoPi * u2);
}

// eps for logical index i of a call keyed by the 64-bit seed.
static inline __attribute__((always_inline)) float randn_at(uint64_t i, uint32_t k0, uint32_t k1) {
#if defined(ANOISE_PHILOX_WIDE)
  const Words w = philox_wide(i, k0, k1);
#else
  const Words w = philox(i, k0, k1);
#endif
  return box_muller(w.w0, w.w1);
}

}  // namespace anoise_cpu
