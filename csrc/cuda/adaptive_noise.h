// Host-side interface of the CUDA kernels (adaptive_noise.cu), shared with the torch binding
// (adaptive_noise_binding.cpp).  No torch and no device code here: the .cu file compiles with
// plain nvcc, and the binding only needs the CUDA runtime header.
//
// Every launcher enqueues its kernels on `stream`, checks each launch, and returns the first
// failure with the kernel's name (Status.kernel) so the binding can report it readably.
// The seed is read on the device from `seed` (an int64 holding the 64-bit seed's bits), so no
// launcher synchronises with the host.  Element i of a view draws eps(base + i) (uint64
// arithmetic), base being the call's index_base: a rank's slice of a larger batch draws that
// slice's noise.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace anoise_cuda {

enum class DType : int32_t { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// A (N, C, S) tensor: data pointer and element strides.
struct View {
  void* data;
  int64_t sN, sC, sS;
};

// Work split, fixed by the shape (never by the device), so results are deterministic:
// channel c's N*S positions are cut into `nchunks` chunks of `chunk` positions; one block
// reduces one (channel, chunk) (planes) or 32 channels x one chunk (rows: channels innermost in
// memory, e.g. channels_last, so that a warp reads 32 consecutive channels).  Partials of
// channel c, chunk k are at c * nchunks + k and are merged in chunk order.
struct Geometry {
  int64_t N, C, S;
  bool rows;
  int64_t chunk;
  int64_t nchunks;
};

struct Status {
  cudaError_t err;
  const char* kernel;  // the launch that failed, or nullptr
};

// Geometry for a view with these sizes and strides (x's, for every launcher of one call).
Geometry make_geometry(int64_t N, int64_t C, int64_t S, int64_t sN, int64_t sC, int64_t sS);

// acc = double for double input, float otherwise; `part*` buffers hold C * nchunks acc values,
// per-channel vectors C acc values.

// mean, var (biased) and scale = alpha * sqrt(var + eps) per channel.
Status forward_stats(DType dt, const Geometry& g, View x, void* pmean, void* pm2,
                     const void* alpha, double eps, void* mean, void* var, void* scale,
                     cudaStream_t stream);

// y = x + scale_c * eps (y = x exactly where scale_c == 0).
Status apply_noise(DType dt, const Geometry& g, View x, View y, const void* scale,
                   const int64_t* seed, uint64_t base, cudaStream_t stream);

// g_c = sum(dy * eps); with alpha and sigma also coef_c = alpha_c * g_c / (M * sigma_c).
Status noise_dot(DType dt, const Geometry& g, View dy, const int64_t* seed, uint64_t base,
                 void* part, void* gsum, const void* alpha, const void* sigma, void* coef,
                 cudaStream_t stream);

// dx = dy + coef_c * (x - mean_c).
Status input_grad(DType dt, const Geometry& g, View dy, View x, View dx, const void* coef,
                  const void* mean, cudaStream_t stream);

// out[j] = eps(start + j * step), j < n.
Status randn(float* out, int64_t n, int64_t start, int64_t step, const int64_t* seed,
             cudaStream_t stream);

// Words (n, 4) as int64, rand and randn at the given offsets (test hook).
Status draw_at(const int64_t* offsets, int64_t n, const int64_t* seed, int64_t* words,
               float* rand, float* randn_out, cudaStream_t stream);

}  // namespace anoise_cuda
