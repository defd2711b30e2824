// Philox4x32-10 on 8 AVX2 lanes with intrinsics.  gcc vectorises the scalar philox() of
// philox.h for AVX2 too, but it widens the 32x32->64-bit products to 64-bit lanes and shuffles
// back across the 128-bit halves, which costs more than the rounds themselves (measured: 11
// ns/element against 4); here even and odd lanes are multiplied in place (vpmuludq) and
// blended.  With AVX-512 the wide-lane formulation of philox.h is faster (vpmullq exists), so
// this is used for AVX2 only.  <immintrin.h> must be included before the target pragma.
#pragma once

#include "philox.h"

namespace anoise_cpu {

#if ANOISE_PHILOX_SIMD == 256
constexpr int kPhiloxLanes = 8;
typedef __m256i vec_t;
static inline __attribute__((always_inline)) vec_t vset1(uint32_t v) {
  return _mm256_set1_epi32((int)v);
}
static inline __attribute__((always_inline)) void mulhilo(vec_t a, vec_t b, vec_t& hi, vec_t& lo) {
  const vec_t even = _mm256_mul_epu32(a, b);
  const vec_t odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), b);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}
static inline __attribute__((always_inline)) void counters(uint64_t base, vec_t off, vec_t& lo,
                                                           vec_t& hi) {
  lo = _mm256_add_epi32(vset1((uint32_t)base), off);
  const vec_t no_carry = _mm256_cmpeq_epi32(_mm256_max_epu32(lo, off), lo);  // lo >= off
  hi = _mm256_add_epi32(vset1((uint32_t)(base >> 32)), _mm256_andnot_si256(no_carry, vset1(1)));
}
static inline __attribute__((always_inline)) vec_t lane_offsets(uint32_t step) {
  return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), vset1(step));
}
#define ANOISE_VXOR _mm256_xor_si256
#define ANOISE_VLOAD(p) _mm256_loadu_si256((const vec_t*)(p))
#define ANOISE_VSTORE(p, v) _mm256_storeu_si256((vec_t*)(p), v)
#endif

// Words w0, w1 for the counters base + off[l] of the kPhiloxLanes lanes.
static inline __attribute__((always_inline)) void philox_lanes(uint64_t base, vec_t off,
                                                               uint32_t k0, uint32_t k1,
                                                               uint32_t* w0, uint32_t* w1) {
  vec_t c0, c1;
  counters(base, off, c0, c1);
  vec_t c2 = vset1(0), c3 = vset1(0);
  const vec_t ra = vset1(kPhiloxRoundA), rb = vset1(kPhiloxRoundB);
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    vec_t hb, lb, ha, la;
    mulhilo(c2, rb, hb, lb);
    mulhilo(c0, ra, ha, la);
    c0 = ANOISE_VXOR(ANOISE_VXOR(hb, c1), vset1(k0));
    c2 = ANOISE_VXOR(ANOISE_VXOR(ha, c3), vset1(k1));
    c1 = lb;
    c3 = la;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  ANOISE_VSTORE(w0, c0);
  ANOISE_VSTORE(w1, c1);
}

}  // namespace anoise_cpu
