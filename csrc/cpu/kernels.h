// The interface between the torch binding (adaptive_noise.cpp) and the kernels, which are
// compiled once per instruction set (kernels_impl.h) and chosen at run time.  Plain structs and
// raw pointers only, so the kernel translation units include no torch or standard headers.
//
// Work is cut into tasks whose boundaries depend only on the shape (never on the number of
// threads); each task writes its own slot of the partial buffers and the binding merges them
// in a fixed order, so results are bitwise independent of the thread count.
#pragma once

#include <stdint.h>

namespace anoise_cpu {

enum class DType : int32_t { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// A (N, C, S) tensor: data pointer and element strides.
struct View {
  void* data;
  int64_t sN, sC, sS;
};

// How the elements are walked.
//   planes (rows == false): one channel's (N, S) plane at a time, cut into chunks of `chunk`
//     elements; task t is channel t / nchunks, chunk t % nchunks.  The inner loop runs over s
//     (or over n when S == 1).
//   rows (rows == true, channels innermost in memory, e.g. channels_last or (N, C)): task t is
//     chunk t of `chunk` positions (n, s), each a run over all C channels.
// Partial results of channel c in chunk k live at slot(c, k).
// stream: write the outputs with streaming stores (large outputs: no read for ownership, and
// what the pass reads again stays cached).
struct Geometry {
  int64_t N, C, S;
  bool rows;
  int64_t chunk;
  int64_t nchunks;
  bool stream;
};

// Free functions with internal linkage (not members): every kernel translation unit gets its
// own copy, so the linker never substitutes one compiled for another instruction set.
static inline int64_t num_tasks(const Geometry& g) { return g.rows ? g.nchunks : g.C * g.nchunks; }
static inline int64_t slot(const Geometry& g, int64_t c, int64_t k) {
  return g.rows ? k * g.C + c : c * g.nchunks + k;
}
// Elements per channel in chunk k (chunks cut the N * S positions of a channel).
static inline int64_t chunk_count(const Geometry& g, int64_t k) {
  const int64_t left = g.N * g.S - k * g.chunk;
  return left < g.chunk ? left : g.chunk;
}

// acc = double for double input, float otherwise; partial buffers and per-channel vectors
// (scale, coef, mean) are in acc, except the partial sums of g, which are double.
//
// Noise: element i (a logical index: the call's index_base plus the row-major index in the
// (N, C, S) view) draws eps(i) = component i & 3 of randn4x(seed, i >> 2) (SPEC section 3).
struct Kernels {
  const char* name;
  // Per chunk: mean and sum of squared deviations (two passes over the chunk, in cache).
  void (*stats)(const Geometry&, DType, View x, int64_t task, void* pmean, void* pm2);
  // y = x + scale_c * eps  (y = x exactly where scale_c == 0).  Element i of the view draws
  // eps(base + i) (uint64 arithmetic): base is the call's index_base.
  void (*apply)(const Geometry&, DType, View x, View y, const void* scale, uint64_t seed,
                uint64_t base, int64_t task);
  // Per chunk: sum(dy * eps) in double, eps drawn as in apply.
  void (*noise_dot)(const Geometry&, DType, View dy, uint64_t seed, uint64_t base, int64_t task,
                    double* pg);
  // dx = dy + coef_c * (x - mean_c).
  void (*dx)(const Geometry&, DType, View dy, View x, View dx, const void* coef, const void* mean,
             int64_t task);
  // out[j] = eps(i0 + j * istep) for j in [0, n) (the kernels' path when istep == 1).
  void (*randn)(float* out, int64_t n, uint64_t i0, uint64_t istep, uint64_t seed);
  // Test hook: for each group j of groups[0 .. n), the four Philox words, rand4x and randn4x,
  // as rows of four.
  void (*draw_at)(const int64_t* groups, int64_t n, uint64_t seed, int64_t* words, float* rand4,
                  float* randn4);
};

const Kernels& kernels_baseline();
#if defined(__x86_64__)
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();
#endif

}  // namespace anoise_cpu
