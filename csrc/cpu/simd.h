// Fixed-width vectors for the noise generator, as GCC vector extensions: one source, compiled per
// instruction set.  kernels_<isa>.cpp sets ANOISE_SIMD (128, 256 or 512 bits) and includes the
// intrinsics header before its target pragma; arithmetic uses the extensions' operators, and the
// few operations they lack (32x32->64-bit multiply, sqrt, max, fused multiply-add, sign select)
// are wrapped here per instruction set.  Explicit vectors, not auto-vectorised scalar code: gcc
// would not keep four Philox words and two Box-Muller pairs in lanes as laid out below.
#pragma once

#include <stdint.h>

namespace anoise_cpu {

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

#ifndef ANOISE_SIMD
#define ANOISE_SIMD 128
#endif
#ifndef ANOISE_ISA
#error "define ANOISE_ISA (the namespace of this instruction set's build) before including simd.h"
#endif

namespace ANOISE_ISA {

constexpr int kVecBytes = ANOISE_SIMD / 8;
constexpr int kLanes = kVecBytes / 4;  // 32-bit lanes per vector
constexpr int kQuads = kLanes / 2;     // 64-bit lanes per vector

typedef float vf __attribute__((vector_size(kVecBytes)));
typedef int32_t vi __attribute__((vector_size(kVecBytes)));
typedef uint32_t vu __attribute__((vector_size(kVecBytes)));
typedef uint64_t vq __attribute__((vector_size(kVecBytes)));

#define ANOISE_VINLINE static inline __attribute__((always_inline))

ANOISE_VINLINE vf bc(float x) { return vf{} + x; }

ANOISE_VINLINE vf loadf(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
ANOISE_VINLINE void storef(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
// A store that bypasses the caches (no read for ownership); p must be kVecBytes-aligned.
ANOISE_VINLINE void stream_store(float* p, vf v) {
#if ANOISE_SIMD == 512
  _mm512_stream_ps(p, (__m512)v);
#elif ANOISE_SIMD == 256
  _mm256_stream_ps(p, (__m256)v);
#elif defined(__SSE2__)
  _mm_stream_ps(p, (__m128)v);
#else
  storef(p, v);
#endif
}
// Orders a task's streaming stores before whatever reads them next.
ANOISE_VINLINE void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

ANOISE_VINLINE vq loadq(const int64_t* p) {
  vq v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

ANOISE_VINLINE vf to_vf(vi v) { return __builtin_convertvector(v, vf); }

// Low 32 bits of each 64-bit lane of a times those of b, as 64-bit products (the high halves of
// the inputs are ignored).
ANOISE_VINLINE vq mul_lo32(vq a, vq b) {
#if ANOISE_SIMD == 512
  return (vq)_mm512_mul_epu32((__m512i)a, (__m512i)b);
#elif ANOISE_SIMD == 256
  return (vq)_mm256_mul_epu32((__m256i)a, (__m256i)b);
#elif defined(__SSE2__)
  return (vq)_mm_mul_epu32((__m128i)a, (__m128i)b);
#else
  return (a & 0xFFFFFFFFull) * (b & 0xFFFFFFFFull);
#endif
}

ANOISE_VINLINE vf vsqrt(vf a) {
#if ANOISE_SIMD == 512
  return (vf)_mm512_sqrt_ps((__m512)a);
#elif ANOISE_SIMD == 256
  return (vf)_mm256_sqrt_ps((__m256)a);
#elif defined(__SSE2__)
  return (vf)_mm_sqrt_ps((__m128)a);
#else
  for (int l = 0; l < kLanes; ++l) a[l] = __builtin_sqrtf(a[l]);
  return a;
#endif
}

ANOISE_VINLINE vf vmax(vf a, vf b) {
#if ANOISE_SIMD == 512
  return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif ANOISE_SIMD == 256
  return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#elif defined(__SSE2__)
  return (vf)_mm_max_ps((__m128)a, (__m128)b);
#else
  return a > b ? a : b;
#endif
}

// a * b + c, fused where the instruction set has FMA (the AVX2 and AVX-512 builds; the noise
// generator's approximations differ between builds anyway, see philox.h).
ANOISE_VINLINE vf madd(vf a, vf b, vf c) {
#if ANOISE_SIMD == 512
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif ANOISE_SIMD == 256
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

// Lanes of a where the sign bit of m is set, else lanes of b.
ANOISE_VINLINE vf select_sign(vi m, vf a, vf b) {
#if ANOISE_SIMD == 512
  return (vf)_mm512_mask_blend_ps(_mm512_movepi32_mask((__m512i)m), (__m512)b, (__m512)a);
#elif ANOISE_SIMD == 256
  return (vf)_mm256_blendv_ps((__m256)b, (__m256)a, (__m256)m);
#else
  const vu full = (vu)(m >> 31);
  return (vf)(((vu)a & full) | ((vu)b & ~full));
#endif
}

// zip: interleave the lanes of a and b within each 128-bit block (one unpack instruction each,
// none crossing blocks): lo = a0 b0 a1 b1 of every block, hi = a2 b2 a3 b3 of every block.  A
// 64-bit lane q of a vector of pairs, zipped, lands in block q / 2 of lo (q even) or of hi (q
// odd); so the draws put consecutive groups in the 64-bit lanes in the order iota_q (group
// g0 + l in lane kLaneOf[l]), and the two zipped vectors hold the normals in element order.
#if ANOISE_SIMD == 512
#define ANOISE_ZIP_LO 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29
#define ANOISE_ZIP_HI 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31
#define ANOISE_IOTA_Q 0, 4, 1, 5, 2, 6, 3, 7
#define ANOISE_LANE_OF 0, 2, 4, 6, 1, 3, 5, 7
#define ANOISE_BLEND_ODD 0, 17, 2, 19, 4, 21, 6, 23, 8, 25, 10, 27, 12, 29, 14, 31
#elif ANOISE_SIMD == 256
#define ANOISE_ZIP_LO 0, 8, 1, 9, 4, 12, 5, 13
#define ANOISE_ZIP_HI 2, 10, 3, 11, 6, 14, 7, 15
#define ANOISE_IOTA_Q 0, 2, 1, 3
#define ANOISE_LANE_OF 0, 2, 1, 3
#define ANOISE_BLEND_ODD 0, 9, 2, 11, 4, 13, 6, 15
#else
#define ANOISE_ZIP_LO 0, 4, 1, 5
#define ANOISE_ZIP_HI 2, 6, 3, 7
#define ANOISE_IOTA_Q 0, 1
#define ANOISE_LANE_OF 0, 1
#define ANOISE_BLEND_ODD 0, 5, 2, 7
#endif
constexpr int kLaneOf[kQuads] = {ANOISE_LANE_OF};

// The low halves of the 64-bit lanes of a and b, as 32-bit lanes a0 b0 a1 b1 ...
ANOISE_VINLINE vu pack_lo_lo(vq a, vq b) {
#if ANOISE_SIMD == 512
  return (vu)_mm512_mask_shuffle_epi32((__m512i)a, 0xAAAA, (__m512i)b, _MM_PERM_CDAB);
#else
  return __builtin_shufflevector((vu)a, (vu)(b << 32), ANOISE_BLEND_ODD);
#endif
}

ANOISE_VINLINE vf zip_lo(vf a, vf b) { return __builtin_shufflevector(a, b, ANOISE_ZIP_LO); }
ANOISE_VINLINE vf zip_hi(vf a, vf b) { return __builtin_shufflevector(a, b, ANOISE_ZIP_HI); }
ANOISE_VINLINE vq iota_q() { return vq{ANOISE_IOTA_Q}; }
// Even lanes of a, odd lanes of b.
ANOISE_VINLINE vu blend_odd(vu a, vu b) { return __builtin_shufflevector(a, b, ANOISE_BLEND_ODD); }

}  // namespace ANOISE_ISA
}  // namespace anoise_cpu
