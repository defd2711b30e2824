// CUDA kernels of anoise (no torch headers: plain `nvcc -c` compiles this file).
//
// Forward with batch statistics: a split reduction (one block per channel x chunk writes a
// Welford partial; one thread per channel merges its partials in chunk order, Chan's formula,
// in double) then an elementwise pass that regenerates the noise.  Backward: the same split
// reduction for g = sum(dy * eps), then an elementwise pass for dx.  No atomics: every result
// is bitwise reproducible.  Statistics accumulate in float (double for double input).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "adaptive_noise.h"
#include "philox.cuh"

namespace anoise_cuda {
namespace {

constexpr int kThreads = 256;       // block size of the planes reductions and elementwise passes
constexpr int64_t kChunk = 8192;    // positions per chunk (planes)
constexpr int kRowsX = 32;          // rows reductions: 32 channels x 8 positions per block
constexpr int kRowsY = 8;
constexpr int64_t kRowsChunk = 512;  // positions per chunk (rows)
constexpr int kVec = 4;             // elements per thread along the innermost memory dimension

// ---- element types ----------------------------------------------------------------------------

template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_acc(typename AccOf<T>::type v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ void seed_key(const int64_t* seed, uint32_t& k0, uint32_t& k1) {
  const uint64_t s = (uint64_t)__ldg(seed);
  k0 = (uint32_t)s;
  k1 = (uint32_t)(s >> 32);
}

// ---- deterministic block reductions -----------------------------------------------------------

template <class A>
struct Welford {
  A n, mean, m2;
};

template <class A>
__device__ __forceinline__ Welford<A> chan_merge(Welford<A> a, Welford<A> b) {
  const A n = a.n + b.n;
  if (n == A(0)) return a;
  const A delta = b.mean - a.mean, fb = b.n / n;
  return Welford<A>{n, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.n * fb};
}

template <class A>
__device__ __forceinline__ Welford<A> shfl_down(Welford<A> w, int offset) {
  return Welford<A>{__shfl_down_sync(0xffffffffu, w.n, offset),
                    __shfl_down_sync(0xffffffffu, w.mean, offset),
                    __shfl_down_sync(0xffffffffu, w.m2, offset)};
}
template <class A>
__device__ __forceinline__ A shfl_down(A v, int offset) {
  return __shfl_down_sync(0xffffffffu, v, offset);
}
template <class A>
__device__ __forceinline__ Welford<A> combine(Welford<A> a, Welford<A> b) {
  return chan_merge(a, b);
}
template <class A>
__device__ __forceinline__ A combine(A a, A b) {
  return a + b;
}

// Tree over the warp, then warp 0 over the warps' results: a fixed order.
template <class V>
__device__ V block_reduce(V v) {
  __shared__ V warp_out[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v = combine(v, shfl_down(v, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_out[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_out[lane < kThreads / 32 ? lane : 0];
    const bool active = lane < kThreads / 32;
    for (int off = 16; off > 0; off >>= 1) {
      const V other = shfl_down(v, off);
      if (active && lane + off < kThreads / 32) v = combine(v, other);
    }
  }
  return v;  // valid in thread 0
}

// ---- reductions per (channel, chunk) ---------------------------------------------------------

// What is accumulated: Welford statistics of x, or sum(dy * eps).
template <class T, class A>
struct StatsOp {
  using V = Welford<A>;
  __device__ static V zero() { return V{A(0), A(0), A(0)}; }
  __device__ static V add(V w, T v, uint64_t, uint32_t, uint32_t) {
    const A x = (A)to_acc(v);
    w.n += A(1);
    const A d = x - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (x - w.mean);
    return w;
  }
  __device__ static void store(V w, void* part, void* part2, int64_t slot) {
    static_cast<A*>(part)[slot] = w.mean;
    static_cast<A*>(part2)[slot] = w.m2;
  }
};

template <class T, class A>
struct DotOp {
  using V = A;
  __device__ static V zero() { return A(0); }
  __device__ static V add(V acc, T v, uint64_t i, uint32_t k0, uint32_t k1) {
    return acc + (A)to_acc(v) * (A)randn_at(i, k0, k1);
  }
  __device__ static void store(V acc, void* part, void*, int64_t slot) {
    static_cast<A*>(part)[slot] = acc;
  }
};

// grid C * nchunks: block c * nchunks + k reduces positions [k*chunk, ...) of channel c.
// Element i of the view draws eps(base + i) (uint64 arithmetic; base is the call's index_base).
template <class T, class Op>
__global__ void __launch_bounds__(kThreads)
    reduce_planes(Geometry g, View x, const int64_t* seed, uint64_t base, void* part,
                  void* part2) {
  const int64_t k = blockIdx.x % g.nchunks, c = blockIdx.x / g.nchunks;
  const int64_t M = g.N * g.S, begin = k * g.chunk;
  const int64_t end = begin + g.chunk < M ? begin + g.chunk : M;
  uint32_t k0 = 0, k1 = 0;
  if (seed != nullptr) seed_key(seed, k0, k1);
  const T* xp = static_cast<const T*>(x.data);
  typename Op::V acc = Op::zero();
  for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
    const int64_t n = j / g.S, s = j - n * g.S;
    acc = Op::add(acc, xp[n * x.sN + c * x.sC + s * x.sS],
                  base + (uint64_t)((n * g.C + c) * g.S + s), k0, k1);
  }
  acc = block_reduce(acc);
  if (threadIdx.x == 0) Op::store(acc, part, part2, c * g.nchunks + k);
}

// grid ceil(C / 32) * nchunks, block (32, 8): in block b (channels 32 * (b / nchunks) + ...,
// chunk k = b % nchunks) thread (tx, ty) walks its channel over positions k*chunk + ty, + 8, ...;
// the 8 partials of a channel are merged in ty order.
template <class T, class Op>
__global__ void __launch_bounds__(kRowsX* kRowsY)
    reduce_rows(Geometry g, View x, const int64_t* seed, uint64_t base, void* part,
                void* part2) {
  using V = typename Op::V;
  __shared__ V vals[kRowsX * kRowsY];
  const int64_t k = blockIdx.x % g.nchunks;
  const int64_t c = (int64_t)(blockIdx.x / g.nchunks) * kRowsX + threadIdx.x;
  const int64_t M = g.N * g.S, begin = k * g.chunk;
  const int64_t end = begin + g.chunk < M ? begin + g.chunk : M;
  uint32_t k0 = 0, k1 = 0;
  if (seed != nullptr) seed_key(seed, k0, k1);
  const T* xp = static_cast<const T*>(x.data);
  V acc = Op::zero();
  if (c < g.C) {
    for (int64_t p = begin + threadIdx.y; p < end; p += kRowsY) {
      const int64_t n = p / g.S, s = p - n * g.S;
      acc = Op::add(acc, xp[n * x.sN + c * x.sC + s * x.sS],
                    base + (uint64_t)((n * g.C + c) * g.S + s), k0, k1);
    }
  }
  vals[threadIdx.y * kRowsX + threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < g.C) {
    for (int y = 1; y < kRowsY; ++y) acc = combine(acc, vals[y * kRowsX + threadIdx.x]);
    Op::store(acc, part, part2, c * g.nchunks + k);
  }
}

template <class T, class Op>
cudaError_t launch_reduce(const Geometry& g, View x, const int64_t* seed, uint64_t base,
                          void* part, void* part2, cudaStream_t stream) {
  if (g.rows) {
    const unsigned blocks = (unsigned)((g.C + kRowsX - 1) / kRowsX * g.nchunks);
    reduce_rows<T, Op><<<blocks, dim3(kRowsX, kRowsY), 0, stream>>>(g, x, seed, base, part,
                                                                    part2);
  } else {
    const unsigned blocks = (unsigned)(g.C * g.nchunks);
    reduce_planes<T, Op><<<blocks, kThreads, 0, stream>>>(g, x, seed, base, part, part2);
  }
  return cudaGetLastError();
}

// ---- merges, one thread per channel ------------------------------------------------------------

template <class A>
__global__ void finalize_stats(Geometry g, const A* pmean, const A* pm2, const A* alpha,
                               double eps, A* mean, A* var, A* scale) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= g.C) return;
  const int64_t M = g.N * g.S;
  double n = 0, m = 0, m2 = 0;
  for (int64_t k = 0; k < g.nchunks; ++k) {
    const int64_t left = M - k * g.chunk;
    const double nb = (double)(left < g.chunk ? left : g.chunk);
    const double delta = (double)pmean[c * g.nchunks + k] - m, tot = n + nb;
    m += delta * nb / tot;
    m2 += (double)pm2[c * g.nchunks + k] + delta * delta * n * nb / tot;
    n = tot;
  }
  const A v = (A)(m2 / n);
  mean[c] = (A)m;
  var[c] = v;
  // As the reference: sigma = sqrt(var + eps) and alpha * sigma in the statistics dtype.
  scale[c] = alpha[c] * sqrt(v + (A)eps);
}

template <class A>
__global__ void finalize_dot(Geometry g, const A* part, A* gsum, const A* alpha, const A* sigma,
                             A* coef) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= g.C) return;
  double s = 0;
  for (int64_t k = 0; k < g.nchunks; ++k) s += (double)part[c * g.nchunks + k];
  gsum[c] = (A)s;
  if (coef != nullptr)
    coef[c] = (A)((double)alpha[c] * s / ((double)(g.N * g.S) * (double)sigma[c]));
}

// ---- elementwise passes in memory order -------------------------------------------------------

// The three dims ordered by x's strides (innermost last), so consecutive threads touch
// consecutive memory for dense inputs whatever the layout (NCHW, channels_last, transposed).
struct Order {
  int dim[3];        // dim[2] innermost
  int64_t size[3];   // sizes in that order
  int64_t inner_groups;  // ceil(size[2] / kVec)
  int64_t work;          // size[0] * size[1] * inner_groups
};

Order make_order(const Geometry& g, const View& x) {
  const int64_t sizes[3] = {g.N, g.C, g.S};
  const int64_t strides[3] = {x.sN, x.sC, x.sS};
  int d[3] = {0, 1, 2};
  // Size-1 dims never matter; otherwise sort by stride, descending (stable: N, C, S on ties).
  auto key = [&](int i) { return sizes[i] == 1 ? INT64_MAX : strides[i]; };
  for (int a = 0; a < 3; ++a)
    for (int b = a + 1; b < 3; ++b)
      if (key(d[b]) > key(d[a])) {
        const int t = d[a];
        d[a] = d[b];
        d[b] = t;
      }
  Order o{};
  for (int a = 0; a < 3; ++a) {
    o.dim[a] = d[a];
    o.size[a] = sizes[d[a]];
  }
  o.inner_groups = (o.size[2] + kVec - 1) / kVec;
  o.work = o.size[0] * o.size[1] * o.inner_groups;
  return o;
}

struct Coords {
  int64_t v[3];  // n, c, s
};

__device__ __forceinline__ Coords coords_of(const Order& o, int64_t w, int64_t& inner0) {
  const int64_t outer = w / o.inner_groups;
  inner0 = (w - outer * o.inner_groups) * kVec;
  const int64_t a0 = outer / o.size[1], a1 = outer - a0 * o.size[1];
  Coords q;
  q.v[o.dim[0]] = a0;
  q.v[o.dim[1]] = a1;
  q.v[o.dim[2]] = 0;
  return q;
}

__device__ __forceinline__ int64_t offset_of(const View& v, const Coords& q) {
  return q.v[0] * v.sN + q.v[1] * v.sC + q.v[2] * v.sS;
}

__device__ __forceinline__ int64_t stride_of(const View& v, int dim) {
  return dim == 0 ? v.sN : (dim == 1 ? v.sC : v.sS);
}

// Loads of kVec elements: one vector load when the run is contiguous and aligned.
template <class T>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <class T>
__device__ __forceinline__ bool can_vectorise(const T* p, int64_t stride, int64_t count) {
  return count == kVec && stride == 1 && (reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T>)) == 0;
}

template <class T>
__device__ __forceinline__ void load_run(const T* p, int64_t stride, int64_t count, T* out) {
  if (can_vectorise(p, stride, count)) {
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
    for (int l = 0; l < kVec; ++l) out[l] = pk.v[l];
  } else {
#pragma unroll
    for (int l = 0; l < kVec; ++l)
      if (l < count) out[l] = p[l * stride];
  }
}

template <class T>
__device__ __forceinline__ void store_run(T* p, int64_t stride, int64_t count, const T* in) {
  if (can_vectorise(p, stride, count)) {
    Pack<T> pk;
#pragma unroll
    for (int l = 0; l < kVec; ++l) pk.v[l] = in[l];
    *reinterpret_cast<Pack<T>*>(p) = pk;
  } else {
#pragma unroll
    for (int l = 0; l < kVec; ++l)
      if (l < count) p[l * stride] = in[l];
  }
}

// Noise index base + (n*C + c)*S + s of the run's first element, and its step along the run.
__device__ __forceinline__ void logical(const Geometry& g, const Coords& q, int inner_dim,
                                        uint64_t base, uint64_t& i0, uint64_t& step) {
  i0 = base + (uint64_t)((q.v[0] * g.C + q.v[1]) * g.S + q.v[2]);
  step = inner_dim == 2 ? 1u : (inner_dim == 1 ? (uint64_t)g.S : (uint64_t)(g.C * g.S));
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(Geometry g, Order o, View x, View y, const typename AccOf<T>::type* scale,
                 const int64_t* seed, uint64_t base) {
  using A = typename AccOf<T>::type;
  uint32_t k0, k1;
  seed_key(seed, k0, k1);
  const int id = o.dim[2];
  for (int64_t w = (int64_t)blockIdx.x * kThreads + threadIdx.x; w < o.work;
       w += (int64_t)gridDim.x * kThreads) {
    int64_t inner0;
    Coords q = coords_of(o, w, inner0);
    q.v[id] = inner0;
    const int64_t count = o.size[2] - inner0 < kVec ? o.size[2] - inner0 : kVec;
    uint64_t i0, step;
    logical(g, q, id, base, i0, step);
    T xv[kVec], yv[kVec];
    const T* xp = static_cast<const T*>(x.data) + offset_of(x, q);
    T* yp = static_cast<T*>(y.data) + offset_of(y, q);
    load_run(xp, stride_of(x, id), count, xv);
#pragma unroll
    for (int l = 0; l < kVec; ++l) {
      if (l < count) {
        const A sc = scale[id == 1 ? q.v[1] + l : q.v[1]];
        const A e = (A)randn_at(i0 + l * step, k0, k1);
        const A xa = (A)to_acc(xv[l]);
        yv[l] = sc == A(0) ? xv[l] : from_acc<T>(xa + sc * e);  // exact x where scale is 0
      }
    }
    store_run(yp, stride_of(y, id), count, yv);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    dx_kernel(Geometry g, Order o, View dy, View x, View dx, const typename AccOf<T>::type* coef,
              const typename AccOf<T>::type* mean) {
  using A = typename AccOf<T>::type;
  const int id = o.dim[2];
  for (int64_t w = (int64_t)blockIdx.x * kThreads + threadIdx.x; w < o.work;
       w += (int64_t)gridDim.x * kThreads) {
    int64_t inner0;
    Coords q = coords_of(o, w, inner0);
    q.v[id] = inner0;
    const int64_t count = o.size[2] - inner0 < kVec ? o.size[2] - inner0 : kVec;
    T dv[kVec], xv[kVec], ov[kVec];
    load_run(static_cast<const T*>(dy.data) + offset_of(dy, q), stride_of(dy, id), count, dv);
    load_run(static_cast<const T*>(x.data) + offset_of(x, q), stride_of(x, id), count, xv);
#pragma unroll
    for (int l = 0; l < kVec; ++l) {
      const int64_t c = id == 1 ? q.v[1] + l : q.v[1];
      if (l < count)
        ov[l] = from_acc<T>((A)to_acc(dv[l]) + coef[c] * ((A)to_acc(xv[l]) - mean[c]));
    }
    store_run(static_cast<T*>(dx.data) + offset_of(dx, q), stride_of(dx, id), count, ov);
  }
}

__global__ void randn_kernel(float* out, int64_t n, int64_t start, int64_t step,
                             const int64_t* seed) {
  uint32_t k0, k1;
  seed_key(seed, k0, k1);
  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n;
       j += (int64_t)gridDim.x * blockDim.x)
    out[j] = randn_at((uint64_t)start + (uint64_t)j * (uint64_t)step, k0, k1);
}

__global__ void draw_at_kernel(const int64_t* offsets, int64_t n, const int64_t* seed,
                               int64_t* words, float* rand, float* randn_out) {
  uint32_t k0, k1;
  seed_key(seed, k0, k1);
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const Words w = philox((uint64_t)offsets[j], k0, k1);
  words[4 * j + 0] = w.w0;
  words[4 * j + 1] = w.w1;
  words[4 * j + 2] = w.w2;
  words[4 * j + 3] = w.w3;
  rand[j] = uniform(w.w0);
  randn_out[j] = box_muller(w.w0, w.w1);
}

// ---- dispatch -------------------------------------------------------------------------------

unsigned grid_for(int64_t work) {
  // Enough blocks to fill any current GPU several times over; the loops are grid-strided.
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return (unsigned)(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

template <template <class> class F, class... Args>
cudaError_t dispatch(DType dt, Args... args) {
  switch (dt) {
    case DType::kFloat:
      return F<float>::run(args...);
    case DType::kDouble:
      return F<double>::run(args...);
    case DType::kHalf:
      return F<__half>::run(args...);
    case DType::kBFloat16:
      return F<__nv_bfloat16>::run(args...);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------

Geometry make_geometry(int64_t N, int64_t C, int64_t S, int64_t sN, int64_t sC, int64_t sS) {
  Geometry g{N, C, S, false, kChunk, 0};
  const int64_t plane_inner = S > 1 ? sS : sN;
  g.rows = C > 1 && sC == 1 && plane_inner != 1;
  g.chunk = g.rows ? kRowsChunk : kChunk;
  g.nchunks = (N * S + g.chunk - 1) / g.chunk;
  return g;
}

namespace {

template <class T>
struct ForwardStats {
  static cudaError_t run(const Geometry& g, View x, void* pmean, void* pm2, const void* alpha,
                         double eps, void* mean, void* var, void* scale, cudaStream_t stream,
                         const char** failed) {
    using A = typename AccOf<T>::type;
    *failed = g.rows ? "reduce_rows<stats>" : "reduce_planes<stats>";
    cudaError_t err = launch_reduce<T, StatsOp<T, A>>(g, x, nullptr, 0, pmean, pm2, stream);
    if (err != cudaSuccess) return err;
    *failed = "finalize_stats";
    finalize_stats<A><<<(unsigned)((g.C + 127) / 128), 128, 0, stream>>>(
        g, static_cast<const A*>(pmean), static_cast<const A*>(pm2),
        static_cast<const A*>(alpha), eps, static_cast<A*>(mean), static_cast<A*>(var),
        static_cast<A*>(scale));
    return cudaGetLastError();
  }
};

template <class T>
struct ApplyNoise {
  static cudaError_t run(const Geometry& g, View x, View y, const void* scale, const int64_t* seed,
                         uint64_t base, cudaStream_t stream) {
    const Order o = make_order(g, x);
    apply_kernel<T><<<grid_for(o.work), kThreads, 0, stream>>>(
        g, o, x, y, static_cast<const typename AccOf<T>::type*>(scale), seed, base);
    return cudaGetLastError();
  }
};

template <class T>
struct NoiseDot {
  static cudaError_t run(const Geometry& g, View dy, const int64_t* seed, uint64_t base,
                         void* part, void* gsum, const void* alpha, const void* sigma, void* coef,
                         cudaStream_t stream, const char** failed) {
    using A = typename AccOf<T>::type;
    *failed = g.rows ? "reduce_rows<dot>" : "reduce_planes<dot>";
    cudaError_t err = launch_reduce<T, DotOp<T, A>>(g, dy, seed, base, part, nullptr, stream);
    if (err != cudaSuccess) return err;
    *failed = "finalize_dot";
    finalize_dot<A><<<(unsigned)((g.C + 127) / 128), 128, 0, stream>>>(
        g, static_cast<const A*>(part), static_cast<A*>(gsum), static_cast<const A*>(alpha),
        static_cast<const A*>(sigma), static_cast<A*>(coef));
    return cudaGetLastError();
  }
};

template <class T>
struct InputGrad {
  static cudaError_t run(const Geometry& g, View dy, View x, View dx, const void* coef,
                         const void* mean, cudaStream_t stream) {
    using A = typename AccOf<T>::type;
    const Order o = make_order(g, x);
    dx_kernel<T><<<grid_for(o.work), kThreads, 0, stream>>>(
        g, o, dy, x, dx, static_cast<const A*>(coef), static_cast<const A*>(mean));
    return cudaGetLastError();
  }
};

Status done(cudaError_t err, const char* kernel) {
  return Status{err, err == cudaSuccess ? nullptr : kernel};
}

}  // namespace

Status forward_stats(DType dt, const Geometry& g, View x, void* pmean, void* pm2,
                     const void* alpha, double eps, void* mean, void* var, void* scale,
                     cudaStream_t stream) {
  const char* failed = "forward_stats";
  const cudaError_t err =
      dispatch<ForwardStats>(dt, g, x, pmean, pm2, alpha, eps, mean, var, scale, stream, &failed);
  return done(err, failed);
}

Status apply_noise(DType dt, const Geometry& g, View x, View y, const void* scale,
                   const int64_t* seed, uint64_t base, cudaStream_t stream) {
  return done(dispatch<ApplyNoise>(dt, g, x, y, scale, seed, base, stream), "apply_kernel");
}

Status noise_dot(DType dt, const Geometry& g, View dy, const int64_t* seed, uint64_t base,
                 void* part, void* gsum, const void* alpha, const void* sigma, void* coef,
                 cudaStream_t stream) {
  const char* failed = "noise_dot";
  const cudaError_t err = dispatch<NoiseDot>(dt, g, dy, seed, base, part, gsum, alpha, sigma,
                                             coef, stream, &failed);
  return done(err, failed);
}

Status input_grad(DType dt, const Geometry& g, View dy, View x, View dx, const void* coef,
                  const void* mean, cudaStream_t stream) {
  return done(dispatch<InputGrad>(dt, g, dy, x, dx, coef, mean, stream), "dx_kernel");
}

Status randn(float* out, int64_t n, int64_t start, int64_t step, const int64_t* seed,
             cudaStream_t stream) {
  if (n == 0) return Status{cudaSuccess, nullptr};
  randn_kernel<<<grid_for(n), kThreads, 0, stream>>>(out, n, start, step, seed);
  return done(cudaGetLastError(), "randn_kernel");
}

Status draw_at(const int64_t* offsets, int64_t n, const int64_t* seed, int64_t* words,
               float* rand, float* randn_out, cudaStream_t stream) {
  if (n == 0) return Status{cudaSuccess, nullptr};
  draw_at_kernel<<<(unsigned)((n + 127) / 128), 128, 0, stream>>>(offsets, n, seed, words, rand,
                                                                  randn_out);
  return done(cudaGetLastError(), "draw_at_kernel");
}

}  // namespace anoise_cuda
