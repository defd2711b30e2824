// Host-side interface of the CUDA kernels (adaptive_noise.cu), shared with the torch binding
// (adaptive_noise_binding.cpp).  No torch and no device code here: the .cu file compiles with
// plain nvcc, and the binding only needs the CUDA runtime header.
//
// Every launcher enqueues its kernels on `stream`, checks each launch, and returns the first
// failure with the kernel's name (Status.kernel) so the binding can report it readably.
// The seed is read on the device from `seed` (an int64 holding the 64-bit seed's bits), so no
// launcher synchronises with the host.  Element i (logical row-major index) of a view draws
// eps(base + i) = randn4x(seed, (base + i) >> 2)[(base + i) & 3] (SPEC section 3, uint64
// arithmetic), base being the call's index_base: a rank's slice of a larger batch draws that
// slice's noise.  Each tensor is read with its own strides.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace anoise_cuda {

enum class DType : int32_t { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

struct Shape {
  int64_t N, C, S;
};

// A (N, C, S) tensor: data pointer and element strides.
struct View {
  void* data;
  int64_t sN, sC, sS;
};

struct Status {
  cudaError_t err;
  const char* kernel;  // the launch that failed, or nullptr
};

// Reductions are split into (channel, chunk) partials, the chunks fixed by the shape and the
// strides (never by the device) and merged in a fixed order: results are deterministic.
// These give the number of accumulator values (double for double input, float otherwise)
// each partials buffer of forward_stats / noise_dot needs (at least 1).
int64_t stats_partials(const Shape& sh, const View& x);
int64_t dot_partials(const Shape& sh, const View& dy, uint64_t base);

// mean, var (biased) and scale = alpha * sqrt(var + eps) per channel (C values of the
// statistics type each).  pmean and pm2 hold stats_partials(sh, x) values.
Status forward_stats(DType dt, const Shape& sh, View x, void* pmean, void* pm2,
                     const void* alpha, double eps, void* mean, void* var, void* scale,
                     cudaStream_t stream);

// y = x + scale_c * eps (y = x exactly where scale_c == 0).
Status apply_noise(DType dt, const Shape& sh, View x, View y, const void* scale,
                   const int64_t* seed, uint64_t base, cudaStream_t stream);

// g_c = sum(dy * eps); with alpha and sigma also coef_c = alpha_c * g_c / (M * sigma_c).
// part holds dot_partials(sh, dy, base) values.
Status noise_dot(DType dt, const Shape& sh, View dy, const int64_t* seed, uint64_t base,
                 void* part, void* gsum, const void* alpha, const void* sigma, void* coef,
                 cudaStream_t stream);

// dx = dy + coef_c * (x - mean_c), exactly dy where coef_c == 0.
Status input_grad(DType dt, const Shape& sh, View dy, View x, View dx, const void* coef,
                  const void* mean, cudaStream_t stream);

// out[j] = eps(start + j * step), j < n (step 1: drawn group by group, as the kernels do).
Status randn(float* out, int64_t n, int64_t start, int64_t step, const int64_t* seed,
             cudaStream_t stream);

// Test hook: for each of n group indices, the Philox words (n, 4) as int64, the uniforms and
// the normals (n, 4) of the kernels.
Status draw_at(const int64_t* groups, int64_t n, const int64_t* seed, int64_t* words,
               float* rand4, float* randn4, cudaStream_t stream);

}  // namespace anoise_cuda
