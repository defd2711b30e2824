// float16 / bfloat16 <-> float32 on raw 16-bit storage, branch-free so that loops converting
// them vectorise without F16C or AVX512-BF16.  Rounding is to nearest even, as torch's casts.
#pragma once

#include "simd.h"

namespace anoise_cpu {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

static inline __attribute__((always_inline)) float to_float(float v) { return v; }
static inline __attribute__((always_inline)) double to_float(double v) { return v; }

static inline __attribute__((always_inline)) float to_float(BFloat16 v) {
  return u2f((uint32_t)v.bits << 16);
}

static inline __attribute__((always_inline)) float to_float(Half v) {
  const uint32_t h = v.bits;
  const uint32_t shifted_exp = 0x7C00u << 13;
  uint32_t o = (h & 0x7FFFu) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (127 - 15) << 23;
  const uint32_t inf_nan = o + ((128 - 16) << 23);
  // Subnormal: let the FPU renormalise (magic = 2^-14).
  const uint32_t sub = f2u(u2f(o + (1u << 23)) - u2f(113u << 23));
  o = exp == shifted_exp ? inf_nan : (exp == 0 ? sub : o);
  return u2f(o | ((h & 0x8000u) << 16));
}

template <class T>
struct FromFloat;

template <>
struct FromFloat<float> {
  static inline __attribute__((always_inline)) float conv(float v) { return v; }
};
template <>
struct FromFloat<double> {
  static inline __attribute__((always_inline)) double conv(double v) { return v; }
};
template <>
struct FromFloat<BFloat16> {
  static inline __attribute__((always_inline)) BFloat16 conv(float v) {
    const uint32_t u = f2u(v);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    return BFloat16{(uint16_t)(nan ? ((u >> 16) | 0x0040u) : rounded)};
  }
};
template <>
struct FromFloat<Half> {
  static inline __attribute__((always_inline)) Half conv(float v) {
    const uint32_t f16max = (127u + 16u) << 23;
    const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    uint32_t f = f2u(v);
    const uint32_t sign = f & 0x80000000u;
    f ^= sign;
    const uint32_t big = f > 0x7F800000u ? 0x7E00u : 0x7C00u;  // NaN : Inf / overflow
    const uint32_t small = f2u(u2f(f) + u2f(denorm_magic)) - denorm_magic;
    const uint32_t normal = (f + ((15u - 127u) << 23) + 0xFFFu + ((f >> 13) & 1u)) >> 13;
    const uint32_t o = f >= f16max ? big : (f < (113u << 23) ? small : normal);
    return Half{(uint16_t)(o | (sign >> 16))};
  }
};

}  // namespace anoise_cpu
