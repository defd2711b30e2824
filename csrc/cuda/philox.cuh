// The anoise noise stream (SPEC section 3) on the GPU: Triton's tl.randn(seed, i), written out
// so that the .cu files need no Triton and no torch.  Mirrors csrc/cpu/philox.h; here log, cos
// and sqrt are CUDA's accurate logf/cosf/sqrtf (no fast-math: __cosf loses accuracy past pi).
#pragma once

#include <stdint.h>

namespace anoise_cuda {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr float kUniformScale = 4.6566127342e-10f;  // largest s with (2^31-1)*s < 1
constexpr float kTwoPi = 6.2831855f;                // float32(2*pi), as Triton
constexpr float kMinU1 = 1e-7f;

struct Words {
  uint32_t w0, w1, w2, w3;
};

// Philox4x32-10 on counter (i_lo, i_hi, 0, 0) and key (k0, k1).
__device__ __forceinline__ Words philox(uint64_t i, uint32_t k0, uint32_t k1) {
  uint32_t c0 = (uint32_t)i, c1 = (uint32_t)(i >> 32), c2 = 0, c3 = 0;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hb = __umulhi(c2, kPhiloxRoundB), lb = c2 * kPhiloxRoundB;
    const uint32_t ha = __umulhi(c0, kPhiloxRoundA), la = c0 * kPhiloxRoundA;
    c0 = hb ^ c1 ^ k0;
    c2 = ha ^ c3 ^ k1;
    c1 = lb;
    c3 = la;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return Words{c0, c1, c2, c3};
}

// Triton's uint_to_uniform_float for 32-bit words.
__device__ __forceinline__ float uniform(uint32_t w) {
  int32_t v = (int32_t)w;
  v = v < 0 ? ~v : v;
  return __fmul_rn((float)v, kUniformScale);
}

// The first output of Triton's pair_uniform_to_normal.
__device__ __forceinline__ float box_muller(uint32_t w0, uint32_t w1) {
  const float u1 = fmaxf(uniform(w0), kMinU1);
  const float u2 = uniform(w1);
  // __fmul_rn: keep the products unfused, as in the reference formula.
  return __fmul_rn(sqrtf(__fmul_rn(-2.0f, logf(u1))), cosf(__fmul_rn(kTwoPi, u2)));
}

// eps for logical index i of a call keyed by the 64-bit seed.
__device__ __forceinline__ float randn_at(uint64_t i, uint32_t k0, uint32_t k1) {
  const Words w = philox(i, k0, k1);
  return box_muller(w.w0, w.w1);
}

}  // namespace anoise_cuda
