// CUDA kernels of anoise (no torch headers: plain `nvcc -c` compiles this file).
//
// Forward with batch statistics: a split reduction (one block per channel x chunk, or per 32
// channels x chunk, writes Welford partials; a warp per channel merges them in chunk order)
// then an elementwise pass that draws the noise.  Backward: the same split reduction for
// g = sum(dy * eps), then an elementwise pass for dx.  No atomics: results are bitwise
// reproducible.  Statistics accumulate in float (double for double input).
//
// Noise (stream.cuh): every thread owns whole Philox groups (4 logically consecutive
// elements), so one Philox call and two Box-Muller pairs serve 4 elements.  Each pass has a
// "fast" instantiation, chosen on the host, for the common case where no group straddles a
// row (S and the index base multiples of 4) and 4 elements load as one vector; the general
// instantiation handles any shape, base and strides.  Index arithmetic is 32-bit whenever the
// tensor allows it, and divides by launch constants with multiplications (Divider).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "adaptive_noise.h"
#include "stream.cuh"

namespace anoise_cuda {
namespace {

constexpr int kThreads = 256;  // threads per block of every kernel but the merges
constexpr int kTileX = 32, kTileY = 8;
constexpr int64_t kPlaneChunk = 8192;  // elements per (channel, chunk) partial, planes
constexpr int64_t kRowChunk = 512;     // positions per (channel, chunk) partial, rows
constexpr int64_t kQuadChunk = 64;     // rows per (channel, chunk) partial, S == 1 noise_dot
constexpr int64_t kMaxBlocks = 65535LL * 8;

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

template <class T>
struct alignas(sizeof(T) * 4) Pack {
  T v[4];
};

template <class T>
__device__ __forceinline__ Pack<T> load4(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <class T>
__device__ __forceinline__ void store4(T* p, const Pack<T>& v) {
  *reinterpret_cast<Pack<T>*>(p) = v;
}

template <class I>
__host__ __device__ __forceinline__ I imin(I a, I b) {
  return a < b ? a : b;
}

// 4 elements to and from the accumulation type (bf16 and half: two packed conversions).
template <class T, class A>
__device__ __forceinline__ void unpack(const Pack<T>& p, A (&v)[4]) {
#pragma unroll
  for (int e = 0; e < 4; ++e) v[e] = (A)to_acc(p.v[e]);
}
__device__ __forceinline__ void unpack(const Pack<__nv_bfloat16>& p, float (&v)[4]) {
  const float2 a = __bfloat1622float2(__halves2bfloat162(p.v[0], p.v[1]));
  const float2 b = __bfloat1622float2(__halves2bfloat162(p.v[2], p.v[3]));
  v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
}
template <class T, class A>
__device__ __forceinline__ Pack<T> pack(const A (&v)[4]) {
  Pack<T> p;
#pragma unroll
  for (int e = 0; e < 4; ++e) p.v[e] = from_acc<T>(v[e]);
  return p;
}
template <>
__device__ __forceinline__ Pack<__nv_bfloat16> pack<__nv_bfloat16, float>(const float (&v)[4]) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
  return Pack<__nv_bfloat16>{{a.x, a.y, b.x, b.y}};
}
template <>
__device__ __forceinline__ Pack<__half> pack<__half, float>(const float (&v)[4]) {
  const __half2 a = __floats2half2_rn(v[0], v[1]), b = __floats2half2_rn(v[2], v[3]);
  return Pack<__half>{{a.x, a.y, b.x, b.y}};
}

// v += sc * eps for one group.  In float the scale multiplies r once per Box-Muller pair.
__device__ __forceinline__ void add_noise(float (&v)[4], float sc, const Polar4& q) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float rs = sc * q.p[i].r;
    v[2 * i] = fmaf(q.p[i].c, rs, v[2 * i]);
    v[2 * i + 1] = fmaf(q.p[i].s, rs, v[2 * i + 1]);
  }
}
__device__ __forceinline__ void add_noise(double (&v)[4], double sc, const Polar4& q) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    v[2 * i] += sc * (double)mul_rn(q.p[i].r, q.p[i].c);
    v[2 * i + 1] += sc * (double)mul_rn(q.p[i].r, q.p[i].s);
  }
}

// sum(v * eps) over one group.
__device__ __forceinline__ float dot4(const float (&v)[4], const Polar4& q) {
  return q.p[0].r * fmaf(v[1], q.p[0].s, v[0] * q.p[0].c) +
         q.p[1].r * fmaf(v[3], q.p[1].s, v[2] * q.p[1].c);
}
__device__ __forceinline__ double dot4(const double (&v)[4], const Polar4& q) {
  double acc = 0;
#pragma unroll
  for (int i = 0; i < 2; ++i)
    acc += v[2 * i] * (double)mul_rn(q.p[i].r, q.p[i].c) +
           v[2 * i + 1] * (double)mul_rn(q.p[i].r, q.p[i].s);
  return acc;
}

__device__ __forceinline__ Key seed_key(const int64_t* seed) {
  return make_key((uint64_t)__ldg(seed));
}

// y = x + sc * n in the accumulation type; y = x exactly where sc == 0 (also keeps -0.0).
template <class T, class A>
__device__ __forceinline__ T inject(T x, A sc, float n) {
  return sc == A(0) ? x : from_acc<T>((A)to_acc(x) + sc * (A)n);
}

// ---- deterministic reductions -------------------------------------------------------------

template <class A>
struct Welford {
  A n, mean, m2;
};

// b / n: in float an approximate quotient (2 ulp) is plenty for a merge weight.
__device__ __forceinline__ float weight(float b, float n) { return __fdividef(b, n); }
__device__ __forceinline__ double weight(double b, double n) { return b / n; }

template <class A>
__device__ __forceinline__ Welford<A> chan_merge(Welford<A> a, Welford<A> b) {
  const A n = a.n + b.n;
  if (n == A(0)) return a;
  const A delta = b.mean - a.mean, fb = weight(b.n, n);
  return Welford<A>{n, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.n * fb};
}

// Merge a tile of `cnt` (1..4) values, the first cnt of v: one division per tile, none per
// element.
template <class A>
__device__ __forceinline__ void add_tile(Welford<A>& w, const A (&v)[4], int cnt) {
  A sum = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) sum += k < cnt ? v[k] : A(0);
  const A mean = cnt == 4 ? sum * A(0.25) : sum / A(cnt);
  A m2 = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const A d = v[k] - mean;
    m2 += k < cnt ? d * d : A(0);
  }
  w = chan_merge(w, Welford<A>{A(cnt), mean, m2});
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

// Tree over the warp (lane 0 ends with the warp's result): a fixed order.
template <class V>
__device__ __forceinline__ V warp_reduce(V v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = combine(v, shfl_down(v, off));
  return v;
}

// Tree over the warp, then warp 0 over the warps' results.  Valid in thread 0.
template <class V>
__device__ V block_reduce(V v) {
  __shared__ V warp_out[kThreads / 32];
  v = warp_reduce(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_out[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_out[lane < kThreads / 32 ? lane : 0];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const V other = shfl_down(v, off);
      if (lane + off < kThreads / 32) v = combine(v, other);
    }
  }
  return v;
}

// The kTileY partials of each column of a (kTileX, kTileY) block, merged in row order.
// Valid in row 0.
template <class V>
__device__ V column_reduce(V v) {
  __shared__ V vals[kTileY][kTileX];
  vals[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.y == 0)
    for (int y = 1; y < kTileY; ++y) v = combine(v, vals[y][threadIdx.x]);
  return v;
}

// ---- plans: how a launch splits a tensor (host) -----------------------------------------------

bool fits32(int64_t v) { return v >= 0 && v < (int64_t(1) << 31) - 64; }

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

bool dense_rowmajor(const Shape& sh, const View& v) {
  return (sh.S <= 1 || v.sS == 1) && (sh.C <= 1 || v.sC == sh.S) &&
         (sh.N <= 1 || v.sN == sh.C * sh.S);
}

// Channels innermost in memory: a warp then reads 32 consecutive channels.
bool channels_inner(const Shape& sh, const View& v) {
  const int64_t other = sh.S > 1 ? v.sS : v.sN;
  return sh.C > 1 && v.sC < other && (sh.S > 1 || sh.N > 1);
}

unsigned blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return (unsigned)std::max<int64_t>(1, std::min(blocks, kMaxBlocks));
}

// Reductions: per channel, `items` work items cut into chunks of `chunk`.
enum class RKind { kPlanes, kRows, kQuads };
struct RPlan {
  RKind kind;
  bool fast;
  int64_t items, chunk, nchunks, slots;
};

RPlan stats_plan(const Shape& sh, const View& x, int elem) {
  RPlan p{};
  p.kind = channels_inner(sh, x) ? RKind::kRows : RKind::kPlanes;
  p.items = sh.N * sh.S;
  p.chunk = p.kind == RKind::kRows ? kRowChunk : kPlaneChunk;
  p.nchunks = (p.items + p.chunk - 1) / p.chunk;
  if (p.kind == RKind::kPlanes)
    p.fast = sh.S % 4 == 0 && x.sS == 1 && x.sN % 4 == 0 && x.sC % 4 == 0 &&
             aligned(x.data, 4 * elem);
  else
    p.fast = sh.S == 1 || x.sN == sh.S * x.sS;  // positions one stride apart
  return p;
}

RPlan dot_plan(const Shape& sh, const View& dy, uint64_t base, int elem) {
  RPlan p{};
  if (sh.S == 1) {
    p.kind = RKind::kQuads;
    p.items = sh.N;
    p.chunk = kQuadChunk;
    p.fast = sh.C % 4 == 0 && base % 4 == 0 && (sh.C == 1 || dy.sC == 1) && dy.sN % 4 == 0 &&
             aligned(dy.data, 4 * elem);
    p.slots = (sh.C + 3) / 4;
  } else {
    p.kind = channels_inner(sh, dy) ? RKind::kRows : RKind::kPlanes;
    p.slots = run_slots(sh.S, sh.S % 4 == 0 && base % 4 == 0);
    p.items = sh.N * p.slots;
    p.chunk = p.kind == RKind::kRows ? kRowChunk / 4 : kPlaneChunk / 4;
    p.fast = p.slots * 4 == sh.S && (p.kind == RKind::kRows ||
                       (dy.sS == 1 && dy.sN % 4 == 0 && dy.sC % 4 == 0 &&
                        aligned(dy.data, 4 * elem)));
  }
  p.nchunks = std::max<int64_t>(1, (p.items + p.chunk - 1) / p.chunk);
  return p;
}

// ---- forward: statistics -----------------------------------------------------------------------

// M2 (n times the variance) overflows float where the variance itself need not (|x| ~ 1e19).
// A block whose M2 came out +inf reduces its chunk again on x * 2**-64, off the hot loop, and
// stores that M2 (scaled by 2**-128) negated; finalize_stats scales it back in double.  NaN and
// Inf inputs give NaN, not +inf, and are left alone.
constexpr float kRescale = 0x1p-64f;

template <class A, class Scaled>
__device__ __forceinline__ void rescale_tile(A (&v)[4], Scaled) {
  if constexpr (Scaled::value) {
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] *= A(kRescale);
  }
}

template <class A>
__device__ __forceinline__ bool overflowed(const Welford<A>& w) {
  return std::is_same<A, float>::value && w.m2 == A(INFINITY);
}

// Block c * nchunks + k: positions [k*chunk, ...) of channel c, 4 per thread and step (a tile).
// Fast: S a multiple of 4 and x's rows aligned, so every tile is one vector of one row.
template <class T, bool Fast, class I>
__global__ void __launch_bounds__(kThreads)
    stats_planes(Shape sh, View x, RPlan p, Divider<I> dS, void* pmean, void* pm2) {
  using A = typename AccOf<T>::type;
  const int64_t k = blockIdx.x % p.nchunks, c = blockIdx.x / p.nchunks;
  const I begin = (I)(k * p.chunk), end = (I)imin<int64_t>(begin + p.chunk, p.items);
  const T* xc = static_cast<const T*>(x.data) + c * x.sC;
  __shared__ int rescale;
  if (threadIdx.x == 0) rescale = 0;
  auto reduce = [&](auto scaled) {
    Welford<A> w{A(0), A(0), A(0)};
#pragma unroll 1
    for (I j = begin + 4 * threadIdx.x; j < end; j += 4 * kThreads) {
      const I n = div(j, dS);
      I s = j - n * dS.d;
      A v[4];
      int cnt = 4;
      if (Fast) {
        unpack(load4(xc + (int64_t)n * x.sN + s), v);
      } else {
        cnt = (int)imin<I>(4, end - j);
        I row = n;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          v[e] = e < cnt ? (A)to_acc(xc[(int64_t)row * x.sN + (int64_t)s * x.sS]) : A(0);
          if (++s == dS.d) s = 0, ++row;
        }
      }
      rescale_tile(v, scaled);
      add_tile(w, v, cnt);
    }
    return block_reduce(w);
  };
  Welford<A> w = reduce(std::false_type{});
  if (std::is_same<A, float>::value) {
    if (threadIdx.x == 0 && overflowed(w)) rescale = 1;
    __syncthreads();
    if (rescale) {
      const Welford<A> scaled = reduce(std::true_type{});
      if (threadIdx.x == 0) w.m2 = -scaled.m2;
    }
  }
  if (threadIdx.x == 0) {
    static_cast<A*>(pmean)[c * p.nchunks + k] = w.mean;
    static_cast<A*>(pm2)[c * p.nchunks + k] = w.m2;
  }
}

// Channels innermost: block (32 channels, 8), thread (tx, ty) takes positions
// k*chunk + ty + 8 * (4 i + e), e = 0..3 (a tile), of channel 32 * (b / nchunks) + tx.
// Fast: positions one stride apart (no division).  Full tiles first, then the chunk's tail.
template <class T, bool Fast, class I>
__global__ void __launch_bounds__(kTileX* kTileY)
    stats_rows(Shape sh, View x, RPlan p, Divider<I> dS, void* pmean, void* pm2) {
  using A = typename AccOf<T>::type;
  const int64_t k = blockIdx.x % p.nchunks;
  const int64_t c = (int64_t)(blockIdx.x / p.nchunks) * kTileX + threadIdx.x;
  const I begin = (I)(k * p.chunk), end = (I)imin<int64_t>(begin + p.chunk, p.items);
  const int64_t pstride = sh.S == 1 ? x.sN : x.sS;
  const T* xc = static_cast<const T*>(x.data) + (c < sh.C ? c : 0) * x.sC;
  auto at = [&](I pos) {
    if (Fast) return (A)to_acc(xc[(int64_t)pos * pstride]);
    const I n = div(pos, dS);
    return (A)to_acc(xc[(int64_t)n * x.sN + (int64_t)(pos - n * dS.d) * x.sS]);
  };
  __shared__ int rescale;
  if (threadIdx.x == 0 && threadIdx.y == 0) rescale = 0;
  auto reduce = [&](auto scaled) {
    Welford<A> w{A(0), A(0), A(0)};
    if (c < sh.C) {
      I j = begin + threadIdx.y;
#pragma unroll 1
      for (; j + 3 * kTileY < end; j += 4 * kTileY) {
        A v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = at(j + e * kTileY);
        rescale_tile(v, scaled);
        add_tile(w, v, 4);
      }
      if (j < end) {
        A v[4];
        int cnt = 0;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool in = j + e * kTileY < end;
          v[e] = in ? at(j + e * kTileY) : A(0);
          cnt += in;
        }
        rescale_tile(v, scaled);
        add_tile(w, v, cnt);
      }
    }
    return column_reduce(w);
  };
  Welford<A> w = reduce(std::false_type{});
  if (std::is_same<A, float>::value) {
    if (threadIdx.y == 0 && overflowed(w)) rescale = 1;
    __syncthreads();
    if (rescale) {  // the whole block (column_reduce synchronises it); per channel below
      const Welford<A> scaled = reduce(std::true_type{});
      if (overflowed(w)) w.m2 = -scaled.m2;
    }
  }
  if (threadIdx.y == 0 && c < sh.C) {
    static_cast<A*>(pmean)[c * p.nchunks + k] = w.mean;
    static_cast<A*>(pm2)[c * p.nchunks + k] = w.m2;
  }
}

// One warp per channel: lanes merge chunks lane, lane + 32, ... in order, then a tree.
template <class A>
__global__ void finalize_stats(int64_t C, int64_t M, RPlan p, const A* pmean, const A* pm2,
                               const A* alpha, double eps, A* mean, A* var, A* scale) {
  const int64_t c = (int64_t)blockIdx.x * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (c >= C) return;  // whole warps
  Welford<double> w{0, 0, 0};
  for (int64_t k = lane; k < p.nchunks; k += 32) {
    const double nb = (double)imin<int64_t>(p.chunk, M - k * p.chunk);
    const double m2 = (double)pm2[c * p.nchunks + k];  // negative: scaled by 2**-128
    w = chan_merge(w, Welford<double>{nb, (double)pmean[c * p.nchunks + k],
                                      m2 < 0 ? -m2 * 0x1p128 : m2});
  }
  w = warp_reduce(w);
  if (lane == 0) {
    const A v = (A)(w.m2 / w.n);
    mean[c] = (A)w.mean;
    var[c] = v;
    // As the reference: sigma = sqrt(var + eps) and alpha * sigma in the statistics dtype.
    scale[c] = alpha[c] * sqrt(v + (A)eps);
  }
}

// ---- forward: the noise --------------------------------------------------------------------------

// Dense row-major x and y: item t is the group base/4 + t.  Fast: S and base multiples of 4
// and aligned data, so the 4 elements are one vector of one channel.
template <class T, bool Fast, class I>
__global__ void __launch_bounds__(kThreads)
    inject_flat(FlatPlan p, Divider<I> dS, Divider<I> dC, const T* __restrict__ x,
                T* __restrict__ y, const typename AccOf<T>::type* __restrict__ scale,
                const int64_t* seed) {
  using A = typename AccOf<T>::type;
  const Key key = seed_key(seed);
  const uint64_t g0 = p.base >> 2;
  const I step = (I)gridDim.x * kThreads;
#pragma unroll 1
  for (I t = (I)blockIdx.x * kThreads + threadIdx.x; t < (I)p.groups; t += step) {
    if (Fast) {
      const I l = 4 * t;
      const A sc = scale[channel_of(l, dS, dC)];
      const Pack<T> xv = load4(x + l);
      if (sc != A(0)) {
        A v[4];
        unpack(xv, v);
        add_noise(v, sc, polar4(philox(g0 + t, key)));
        store4(y + l, pack<T>(v));
      } else {
        store4(y + l, xv);  // exactly x
      }
    } else {
      Slot sl[4];
      flat_slots(p, dS, dC, (int64_t)t, sl);
      const Normal4 n = randn4(g0 + t, key);
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (sl[e].l >= 0) y[sl[e].l] = inject(x[sl[e].l], scale[sl[e].c], n.v[e]);
    }
  }
}

// Any layout, as runs (RunPlan): threads (a, slot) of a (32, 8) tile, looping over b.  Lanes
// go along the run when it is innermost in memory (LanesOnRun), else along a.  Fast: the
// channel is a, every run starts at a multiple of 4 and has a multiple of 4 elements (no group
// straddles two runs), and offsets fit in 32 bits.
template <class T, bool Fast, bool LanesOnRun>
__global__ void __launch_bounds__(kTileX* kTileY)
    inject_runs(RunPlan p, RunMem mx, RunMem my, int64_t tiles_x, const T* __restrict__ x,
                T* __restrict__ y, const typename AccOf<T>::type* __restrict__ scale,
                const int64_t* seed) {
  using A = typename AccOf<T>::type;
  const Key key = seed_key(seed);
  const int64_t X = (int64_t)(blockIdx.x % tiles_x) * kTileX + threadIdx.x;
  const int64_t Y = (int64_t)(blockIdx.x / tiles_x) * kTileY + threadIdx.y;
  const int64_t a = LanesOnRun ? Y : X, t = LanesOnRun ? X : Y;
  if (a >= p.NA || t >= p.slots) return;
  if (Fast) {
    // Pointers and the group advance by fixed steps along b: no index arithmetic per group.
    const A sc = scale[a];
    const int32_t xq = (int32_t)mx.q, yq = (int32_t)my.q;
    const T* xr = x + (int32_t)(a * mx.a + 4 * t * mx.q + blockIdx.y * mx.b);
    T* yr = y + (int32_t)(a * my.a + 4 * t * my.q + blockIdx.y * my.b);
    const int32_t xstep = (int32_t)(gridDim.y * mx.b), ystep = (int32_t)(gridDim.y * my.b);
    if (sc == A(0)) {  // exactly x
#pragma unroll 1
      for (int32_t b = blockIdx.y; b < (int32_t)p.NB; b += gridDim.y, xr += xstep, yr += ystep)
#pragma unroll
        for (int e = 0; e < 4; ++e) yr[e * yq] = xr[e * xq];
      return;
    }
    uint64_t g = ((p.base + (uint64_t)(a * p.La + blockIdx.y * p.Lb)) >> 2) + (uint64_t)t;
    const uint64_t gstep = (uint64_t)gridDim.y * (uint64_t)(p.Lb >> 2);
#pragma unroll 1
    for (int32_t b = blockIdx.y; b < (int32_t)p.NB;
         b += gridDim.y, xr += xstep, yr += ystep, g += gstep) {
      A v[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = (A)to_acc(xr[e * xq]);
      add_noise(v, sc, polar4(philox(g, key)));
#pragma unroll
      for (int e = 0; e < 4; ++e) yr[e * yq] = from_acc<T>(v[e]);
    }
    return;
  }
  const A sc_a = p.role == 0 ? scale[a] : A(0);
#pragma unroll 1
  for (int64_t b = blockIdx.y; b < p.NB; b += gridDim.y) {
    const RunItem it = run_item(run_start(p, a, b), p.L, t);
    if (!it.valid) continue;
    const A sc_b = p.role == 1 ? scale[b] : sc_a;
    const Normal4 n = normal4(philox(it.group, key));
    const T* xr = x + a * mx.a + b * mx.b;
    T* yr = y + a * my.a + b * my.b;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t q = it.q0 + e;
      if (q >= 0 && q < p.L)
        yr[q * my.q] = inject(xr[q * mx.q], p.role == 2 ? scale[q] : sc_b, n.v[e]);
    }
  }
}

// ---- backward: g = sum(dy * eps) ---------------------------------------------------------------

// Runs along S (S > 1), each in one channel.  Items (n, slot) of channel c, numbered
// n * slots + t.  Planes: block c * nchunks + k.  Fast: whole groups, one vector each.
template <class T, bool Fast, class I>
__global__ void __launch_bounds__(kThreads)
    dot_planes(Shape sh, View dy, RPlan p, Divider<I> dSlots, uint64_t base, const int64_t* seed,
               void* part) {
  using A = typename AccOf<T>::type;
  const Key key = seed_key(seed);
  const int64_t k = blockIdx.x % p.nchunks, c = blockIdx.x / p.nchunks;
  const I begin = (I)(k * p.chunk), end = (I)imin<int64_t>(begin + p.chunk, p.items);
  const T* dc = static_cast<const T*>(dy.data) + c * dy.sC;
  A acc = 0;
#pragma unroll 1
  for (I w = begin + threadIdx.x; w < end; w += kThreads) {
    const I n = div(w, dSlots), t = w - n * dSlots.d;
    const RunItem it = run_item(base + (uint64_t)(((int64_t)n * sh.C + c) * sh.S), sh.S, t);
    const T* row = dc + (int64_t)n * dy.sN;
    if (Fast) {
      A v[4];
      unpack(load4(row + 4 * (int64_t)t), v);
      acc += dot4(v, polar4(philox(it.group, key)));
    } else {
      if (!it.valid) continue;
      const Normal4 e = randn4(it.group, key);
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (it.q0 + i >= 0 && it.q0 + i < sh.S)
          acc += (A)to_acc(row[(it.q0 + i) * dy.sS]) * (A)e.v[i];
    }
  }
  acc = block_reduce(acc);
  if (threadIdx.x == 0) static_cast<A*>(part)[c * p.nchunks + k] = acc;
}

// Channels innermost: block (32 channels, 8); thread (tx, ty) takes items k*chunk + ty + 8 i.
template <class T, bool Fast, class I>
__global__ void __launch_bounds__(kTileX* kTileY)
    dot_rows(Shape sh, View dy, RPlan p, Divider<I> dSlots, uint64_t base, const int64_t* seed,
             void* part) {
  using A = typename AccOf<T>::type;
  const Key key = seed_key(seed);
  const int64_t k = blockIdx.x % p.nchunks;
  const int64_t c = (int64_t)(blockIdx.x / p.nchunks) * kTileX + threadIdx.x;
  const I begin = (I)(k * p.chunk), end = (I)imin<int64_t>(begin + p.chunk, p.items);
  const T* dc = static_cast<const T*>(dy.data) + (c < sh.C ? c : 0) * dy.sC;
  A acc = 0;
  if (c < sh.C) {
#pragma unroll 1
    for (I w = begin + threadIdx.y; w < end; w += kTileY) {
      const I n = div(w, dSlots), t = w - n * dSlots.d;
      const RunItem it = run_item(base + (uint64_t)(((int64_t)n * sh.C + c) * sh.S), sh.S, t);
      if (!Fast && !it.valid) continue;
      const int64_t q0 = Fast ? 4 * (int64_t)t : it.q0;
      const T* row = dc + (int64_t)n * dy.sN;
      A v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        v[i] = Fast || (q0 + i >= 0 && q0 + i < sh.S) ? (A)to_acc(row[(q0 + i) * dy.sS]) : A(0);
      acc += dot4(v, polar4(philox(it.group, key)));
    }
  }
  acc = column_reduce(acc);
  if (threadIdx.y == 0 && c < sh.C) static_cast<A*>(part)[c * p.nchunks + k] = acc;
}

// S == 1: the run of row n is its C channels.  Thread (tx, ty) owns channels 4j .. 4j+3,
// j = 32 * (b / nchunks) + tx, over rows k*chunk + ty + 8 i: the row's quad is one group when
// C and base are multiples of 4 (Fast), else parts of two (quad_source).
template <class T, bool Fast>
__global__ void __launch_bounds__(kTileX* kTileY)
    dot_quads(Shape sh, View dy, RPlan p, uint64_t base, const int64_t* seed, void* part) {
  using A = typename AccOf<T>::type;
  const Key key = seed_key(seed);
  const int64_t k = blockIdx.x % p.nchunks;
  const int64_t j = (int64_t)(blockIdx.x / p.nchunks) * kTileX + threadIdx.x;
  const int64_t begin = k * p.chunk, end = imin<int64_t>(begin + p.chunk, p.items);
  const T* dq = static_cast<const T*>(dy.data) + 4 * j * dy.sC;
  A acc[4] = {0, 0, 0, 0};
  if (j < p.slots) {
#pragma unroll 1
    for (int64_t n = begin + threadIdx.y; n < end; n += kTileY) {
      const uint64_t P = base + (uint64_t)(n * sh.C + 4 * j);
      if (Fast) {
        A v[4];
        unpack(load4(dq + n * dy.sN), v);
        const Normal4 e = randn4(P >> 2, key);
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i] += v[i] * (A)e.v[i];
      } else {
        const Normal4 e0 = randn4(P >> 2, key);
        const bool two = (P & 3) != 0 && 4 * j + 4 - (int64_t)(P & 3) < sh.C;
        Normal4 e1 = e0;
        if (two) e1 = randn4((P >> 2) + 1, key);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (4 * j + i >= sh.C) break;
          int comp;
          const int which = quad_source(P, i, comp);
          const float eps = which ? e1.v[comp] : e0.v[comp];
          acc[i] += (A)to_acc(dq[n * dy.sN + i * dy.sC]) * (A)eps;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const A total = column_reduce(acc[i]);
    __syncthreads();  // column_reduce's shared buffer is reused by the next channel
    if (threadIdx.y == 0 && 4 * j + i < sh.C)
      static_cast<A*>(part)[(4 * j + i) * p.nchunks + k] = total;
  }
}

// One warp per channel: lanes sum chunks lane, lane + 32, ... in order, then a tree.
template <class A>
__global__ void finalize_dot(int64_t C, int64_t M, int64_t nchunks, const A* part, A* gsum,
                             const A* alpha, const A* sigma, A* coef) {
  const int64_t c = (int64_t)blockIdx.x * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (c >= C) return;
  double s = 0;
  for (int64_t k = lane; k < nchunks; k += 32) s += (double)part[c * nchunks + k];
  s = warp_reduce(s);
  if (lane == 0) {
    gsum[c] = (A)s;
    if (coef != nullptr) coef[c] = (A)((double)alpha[c] * s / ((double)M * (double)sigma[c]));
  }
}

// ---- backward: dx ------------------------------------------------------------------------------

// Identical dense strides for dy, x and dx: 4 consecutive memory elements per item; the
// channel of memory offset m is (m / sC) % C.  Fast: each item is one aligned vector of one
// channel, or of 4 consecutive channels when channels are innermost (sC == 1).
template <class T, bool Fast, class I>
__global__ void __launch_bounds__(kThreads)
    dx_flat(I numel, Divider<I> dSC, Divider<I> dC, const T* __restrict__ dy,
            const T* __restrict__ x, T* __restrict__ dx, const typename AccOf<T>::type* coef,
            const typename AccOf<T>::type* mean) {
  using A = typename AccOf<T>::type;
  const I step = (I)gridDim.x * kThreads * 4;
#pragma unroll 1
  for (I m = 4 * ((I)blockIdx.x * kThreads + threadIdx.x); m < numel; m += step) {
    const I c0 = channel_of(m, dSC, dC);
    const bool inner = dSC.d == 1;  // channels innermost: element e is channel c0 + e
    if (Fast) {
      const Pack<T> dv = load4(dy + m), xv = load4(x + m);
      Pack<T> ov;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const I c = inner ? c0 + e : c0;
        ov.v[e] = from_acc<T>(dx_value((A)to_acc(dv.v[e]), (A)to_acc(xv.v[e]), coef[c], mean[c]));
      }
      store4(dx + m, ov);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const I i = m + e;
        if (i >= numel) break;
        const I c = e == 0 ? c0 : channel_of(i, dSC, dC);
        dx[i] = from_acc<T>(dx_value((A)to_acc(dy[i]), (A)to_acc(x[i]), coef[c], mean[c]));
      }
    }
  }
}

// Any strides: elements in dx's memory order (its dims sorted by stride), each tensor read with
// its own strides.
struct Order {
  int dim[3];       // dim[2] innermost in dx
  int64_t size[3];  // sizes in that order
};

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    dx_strided(Order o, Divider<I> d2, Divider<I> d1, I numel, View dy, View x, View dx,
               const typename AccOf<T>::type* coef, const typename AccOf<T>::type* mean) {
  using A = typename AccOf<T>::type;
  const I step = (I)gridDim.x * kThreads;
#pragma unroll 1
  for (I w = (I)blockIdx.x * kThreads + threadIdx.x; w < numel; w += step) {
    const I outer = div(w, d2), i2 = w - outer * d2.d;
    const I i0 = div(outer, d1), i1 = outer - i0 * d1.d;
    int64_t q[3];
    q[o.dim[0]] = i0;
    q[o.dim[1]] = i1;
    q[o.dim[2]] = i2;
    const A d = (A)to_acc(static_cast<const T*>(dy.data)[q[0] * dy.sN + q[1] * dy.sC + q[2] * dy.sS]);
    const A xv = (A)to_acc(static_cast<const T*>(x.data)[q[0] * x.sN + q[1] * x.sC + q[2] * x.sS]);
    static_cast<T*>(dx.data)[q[0] * dx.sN + q[1] * dx.sC + q[2] * dx.sS] =
        from_acc<T>(dx_value(d, xv, coef[q[1]], mean[q[1]]));
  }
}

// ---- test hooks ----------------------------------------------------------------------------------

// out[j] = eps(start + j) by groups: thread t draws group start/4 + t once.
__global__ void randn_groups(float* out, int64_t n, uint64_t start, int64_t groups,
                             const int64_t* seed) {
  const Key key = seed_key(seed);
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < groups;
       t += (int64_t)gridDim.x * blockDim.x) {
    const Normal4 e = randn4((start >> 2) + t, key);
    const int64_t j0 = first_pos(start, t);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (j0 + i >= 0 && j0 + i < n) out[j0 + i] = e.v[i];
  }
}

__global__ void randn_strided(float* out, int64_t n, uint64_t start, uint64_t step,
                              const int64_t* seed) {
  const Key key = seed_key(seed);
  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n;
       j += (int64_t)gridDim.x * blockDim.x)
    out[j] = randn_at(start + (uint64_t)j * step, key);
}

__global__ void draw_at_kernel(const int64_t* groups, int64_t n, const int64_t* seed,
                               int64_t* words, float* rand4, float* randn4_out) {
  const Key key = seed_key(seed);
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const Words w = philox((uint64_t)groups[j], key);
  const uint32_t ws[4] = {w.w0, w.w1, w.w2, w.w3};
  const Normal4 e = normal4(w);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    words[4 * j + i] = ws[i];
    rand4[4 * j + i] = uniform(ws[i]);
    randn4_out[4 * j + i] = e.v[i];
  }
}

// ---- launchers -------------------------------------------------------------------------------

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

template <class I>
Divider<I> divider(int64_t d) {
  return make_divider<I>((I)std::max<int64_t>(d, 1));
}

template <class T>
struct ForwardStats {
  static cudaError_t run(const Shape& sh, View x, void* pmean, void* pm2, const void* alpha,
                         double eps, void* mean, void* var, void* scale, cudaStream_t stream,
                         const char** failed) {
    using A = typename AccOf<T>::type;
    const RPlan p = stats_plan(sh, x, sizeof(T));
    const bool small = fits32(p.items + 4 * kThreads);
    if (p.kind == RKind::kRows) {
      *failed = "stats_rows";
      const unsigned blocks = (unsigned)((sh.C + kTileX - 1) / kTileX * p.nchunks);
      const dim3 tile(kTileX, kTileY);
      if (small && p.fast)
        stats_rows<T, true, uint32_t><<<blocks, tile, 0, stream>>>(sh, x, p, divider<uint32_t>(sh.S), pmean, pm2);
      else if (small)
        stats_rows<T, false, uint32_t><<<blocks, tile, 0, stream>>>(sh, x, p, divider<uint32_t>(sh.S), pmean, pm2);
      else
        stats_rows<T, false, uint64_t><<<blocks, tile, 0, stream>>>(sh, x, p, divider<uint64_t>(sh.S), pmean, pm2);
    } else {
      *failed = "stats_planes";
      const unsigned blocks = (unsigned)(sh.C * p.nchunks);
      if (small && p.fast)
        stats_planes<T, true, uint32_t><<<blocks, kThreads, 0, stream>>>(sh, x, p, divider<uint32_t>(sh.S), pmean, pm2);
      else if (small)
        stats_planes<T, false, uint32_t><<<blocks, kThreads, 0, stream>>>(sh, x, p, divider<uint32_t>(sh.S), pmean, pm2);
      else
        stats_planes<T, false, uint64_t><<<blocks, kThreads, 0, stream>>>(sh, x, p, divider<uint64_t>(sh.S), pmean, pm2);
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    *failed = "finalize_stats";
    finalize_stats<A><<<(unsigned)((sh.C + 3) / 4), 128, 0, stream>>>(
        sh.C, p.items, p, static_cast<const A*>(pmean), static_cast<const A*>(pm2),
        static_cast<const A*>(alpha), eps, static_cast<A*>(mean), static_cast<A*>(var),
        static_cast<A*>(scale));
    return cudaGetLastError();
  }
};

template <class T>
struct ApplyNoise {
  static cudaError_t run(const Shape& sh, View x, View y, const void* scale_, const int64_t* seed,
                         uint64_t base, cudaStream_t stream) {
    using A = typename AccOf<T>::type;
    const A* scale = static_cast<const A*>(scale_);
    const T* xp = static_cast<const T*>(x.data);
    T* yp = static_cast<T*>(y.data);
    const int64_t numel = sh.N * sh.C * sh.S;
    if (dense_rowmajor(sh, x) && dense_rowmajor(sh, y)) {
      const FlatPlan p{base, numel, sh.S, sh.C, groups_in_run(base, numel)};
      const unsigned blocks = blocks_for(p.groups);
      const bool fast = sh.S % 4 == 0 && base % 4 == 0 && aligned(xp, 4 * sizeof(T)) &&
                        aligned(yp, 4 * sizeof(T));
      if (fits32(numel + 4 * (int64_t)blocks * kThreads)) {
        const Divider<uint32_t> dS = divider<uint32_t>(sh.S), dC = divider<uint32_t>(sh.C);
        if (fast)
          inject_flat<T, true, uint32_t><<<blocks, kThreads, 0, stream>>>(p, dS, dC, xp, yp, scale, seed);
        else
          inject_flat<T, false, uint32_t><<<blocks, kThreads, 0, stream>>>(p, dS, dC, xp, yp, scale, seed);
      } else {
        inject_flat<T, false, uint64_t><<<blocks, kThreads, 0, stream>>>(
            p, divider<uint64_t>(sh.S), divider<uint64_t>(sh.C), xp, yp, scale, seed);
      }
      return cudaGetLastError();
    }
    RunMem mx, my;
    bool lanes_on_run, lanes_y;
    const RunPlan p = run_plan(sh.N, sh.C, sh.S, x.sN, x.sC, x.sS, base, mx, lanes_on_run);
    run_plan(sh.N, sh.C, sh.S, y.sN, y.sC, y.sS, base, my, lanes_y);  // same runs, y's strides
    const int64_t span = (sh.N - 1) * std::max(std::abs(x.sN), std::abs(y.sN)) +
                         (sh.C - 1) * std::max(std::abs(x.sC), std::abs(y.sC)) +
                         (sh.S - 1) * std::max(std::abs(x.sS), std::abs(y.sS));
    const bool fast = p.slots * 4 == p.L && p.role == 0 && fits32(span + 4 * kTileX);
    const int64_t ex = lanes_on_run ? p.slots : p.NA, ey = lanes_on_run ? p.NA : p.slots;
    const int64_t tiles_x = (ex + kTileX - 1) / kTileX, tiles_y = (ey + kTileY - 1) / kTileY;
    const dim3 grid((unsigned)(tiles_x * tiles_y), (unsigned)std::min<int64_t>(p.NB, 65535));
    const dim3 tile(kTileX, kTileY);
    if (lanes_on_run) {
      if (fast)
        inject_runs<T, true, true><<<grid, tile, 0, stream>>>(p, mx, my, tiles_x, xp, yp, scale, seed);
      else
        inject_runs<T, false, true><<<grid, tile, 0, stream>>>(p, mx, my, tiles_x, xp, yp, scale, seed);
    } else {
      if (fast)
        inject_runs<T, true, false><<<grid, tile, 0, stream>>>(p, mx, my, tiles_x, xp, yp, scale, seed);
      else
        inject_runs<T, false, false><<<grid, tile, 0, stream>>>(p, mx, my, tiles_x, xp, yp, scale, seed);
    }
    return cudaGetLastError();
  }
};

template <class T>
struct NoiseDot {
  static cudaError_t run(const Shape& sh, View dy, const int64_t* seed, uint64_t base,
                         void* part, void* gsum, const void* alpha, const void* sigma, void* coef,
                         cudaStream_t stream, const char** failed) {
    using A = typename AccOf<T>::type;
    const RPlan p = dot_plan(sh, dy, base, sizeof(T));
    const bool small = fits32(p.items + kThreads);
    const dim3 tile(kTileX, kTileY);
    if (p.kind == RKind::kQuads) {
      *failed = "dot_quads";
      const unsigned blocks = (unsigned)((p.slots + kTileX - 1) / kTileX * p.nchunks);
      if (p.fast)
        dot_quads<T, true><<<blocks, tile, 0, stream>>>(sh, dy, p, base, seed, part);
      else
        dot_quads<T, false><<<blocks, tile, 0, stream>>>(sh, dy, p, base, seed, part);
    } else if (p.kind == RKind::kRows) {
      *failed = "dot_rows";
      const unsigned blocks = (unsigned)((sh.C + kTileX - 1) / kTileX * p.nchunks);
      if (small && p.fast)
        dot_rows<T, true, uint32_t><<<blocks, tile, 0, stream>>>(sh, dy, p, divider<uint32_t>(p.slots), base, seed, part);
      else if (small)
        dot_rows<T, false, uint32_t><<<blocks, tile, 0, stream>>>(sh, dy, p, divider<uint32_t>(p.slots), base, seed, part);
      else
        dot_rows<T, false, uint64_t><<<blocks, tile, 0, stream>>>(sh, dy, p, divider<uint64_t>(p.slots), base, seed, part);
    } else {
      *failed = "dot_planes";
      const unsigned blocks = (unsigned)(sh.C * p.nchunks);
      if (small && p.fast)
        dot_planes<T, true, uint32_t><<<blocks, kThreads, 0, stream>>>(sh, dy, p, divider<uint32_t>(p.slots), base, seed, part);
      else if (small)
        dot_planes<T, false, uint32_t><<<blocks, kThreads, 0, stream>>>(sh, dy, p, divider<uint32_t>(p.slots), base, seed, part);
      else
        dot_planes<T, false, uint64_t><<<blocks, kThreads, 0, stream>>>(sh, dy, p, divider<uint64_t>(p.slots), base, seed, part);
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    *failed = "finalize_dot";
    finalize_dot<A><<<(unsigned)((sh.C + 3) / 4), 128, 0, stream>>>(
        sh.C, sh.N * sh.S, p.nchunks, static_cast<const A*>(part), static_cast<A*>(gsum),
        static_cast<const A*>(alpha), static_cast<const A*>(sigma), static_cast<A*>(coef));
    return cudaGetLastError();
  }
};

bool same_strides(const View& a, const View& b) {
  return a.sN == b.sN && a.sC == b.sC && a.sS == b.sS;
}

// dx's dims ordered by its strides, innermost last (size-1 dims never matter).
Order make_order(const Shape& sh, const View& v) {
  const int64_t sizes[3] = {sh.N, sh.C, sh.S};
  const int64_t strides[3] = {v.sN, v.sC, v.sS};
  int d[3] = {0, 1, 2};
  auto key = [&](int i) { return sizes[i] == 1 ? INT64_MAX : strides[i]; };
  std::stable_sort(d, d + 3, [&](int a, int b) { return key(a) > key(b); });
  Order o{};
  for (int a = 0; a < 3; ++a) {
    o.dim[a] = d[a];
    o.size[a] = sizes[d[a]];
  }
  return o;
}

// Dense (no gaps, no overlap) in some order of its dims.
bool dense(const Shape& sh, const View& v) {
  const Order o = make_order(sh, v);
  const int64_t strides[3] = {v.sN, v.sC, v.sS};
  int64_t expect = 1;
  for (int a = 2; a >= 0; --a) {
    if (o.size[a] != 1 && strides[o.dim[a]] != expect) return false;
    expect *= o.size[a];
  }
  return true;
}

template <class T>
struct InputGrad {
  static cudaError_t run(const Shape& sh, View dy, View x, View dx, const void* coef_,
                         const void* mean_, cudaStream_t stream) {
    using A = typename AccOf<T>::type;
    const A* coef = static_cast<const A*>(coef_);
    const A* mean = static_cast<const A*>(mean_);
    const int64_t numel = sh.N * sh.C * sh.S;
    const unsigned flat_blocks = blocks_for((numel + 3) / 4);
    if (dense(sh, dx) && same_strides(dx, dy) && same_strides(dx, x) &&
        fits32(numel + 4 * (int64_t)flat_blocks * kThreads)) {
      // Channel c's elements are sC apart; with one channel any multiple of 4 will do.
      const int64_t sC = sh.C == 1 ? 4 : dx.sC;
      const bool fast = (sC % 4 == 0 || (sC == 1 && sh.C % 4 == 0)) && numel % 4 == 0 &&
                        aligned(dx.data, 4 * sizeof(T)) && aligned(dy.data, 4 * sizeof(T)) &&
                        aligned(x.data, 4 * sizeof(T));
      const unsigned blocks = flat_blocks;
      const Divider<uint32_t> dSC = divider<uint32_t>(sC), dC = divider<uint32_t>(sh.C);
      const T* d = static_cast<const T*>(dy.data);
      const T* xp = static_cast<const T*>(x.data);
      T* o = static_cast<T*>(dx.data);
      if (fast)
        dx_flat<T, true, uint32_t><<<blocks, kThreads, 0, stream>>>((uint32_t)numel, dSC, dC, d, xp, o, coef, mean);
      else
        dx_flat<T, false, uint32_t><<<blocks, kThreads, 0, stream>>>((uint32_t)numel, dSC, dC, d, xp, o, coef, mean);
      return cudaGetLastError();
    }
    const Order o = make_order(sh, dx);
    const unsigned blocks = blocks_for(numel);
    if (fits32(numel + (int64_t)blocks * kThreads))
      dx_strided<T, uint32_t><<<blocks, kThreads, 0, stream>>>(
          o, divider<uint32_t>(o.size[2]), divider<uint32_t>(o.size[1]), (uint32_t)numel, dy, x, dx, coef, mean);
    else
      dx_strided<T, uint64_t><<<blocks, kThreads, 0, stream>>>(
          o, divider<uint64_t>(o.size[2]), divider<uint64_t>(o.size[1]), (uint64_t)numel, dy, x, dx, coef, mean);
    return cudaGetLastError();
  }
};

Status done(cudaError_t err, const char* kernel) {
  return Status{err, err == cudaSuccess ? nullptr : kernel};
}

}  // namespace

int64_t stats_partials(const Shape& sh, const View& x) {
  return std::max<int64_t>(1, sh.C * stats_plan(sh, x, 4).nchunks);
}

int64_t dot_partials(const Shape& sh, const View& dy, uint64_t base) {
  return std::max<int64_t>(1, sh.C * dot_plan(sh, dy, base, 4).nchunks);
}

Status forward_stats(DType dt, const Shape& sh, View x, void* pmean, void* pm2,
                     const void* alpha, double eps, void* mean, void* var, void* scale,
                     cudaStream_t stream) {
  const char* failed = "forward_stats";
  const cudaError_t err =
      dispatch<ForwardStats>(dt, sh, x, pmean, pm2, alpha, eps, mean, var, scale, stream, &failed);
  return done(err, failed);
}

Status apply_noise(DType dt, const Shape& sh, View x, View y, const void* scale,
                   const int64_t* seed, uint64_t base, cudaStream_t stream) {
  return done(dispatch<ApplyNoise>(dt, sh, x, y, scale, seed, base, stream), "inject");
}

Status noise_dot(DType dt, const Shape& sh, View dy, const int64_t* seed, uint64_t base,
                 void* part, void* gsum, const void* alpha, const void* sigma, void* coef,
                 cudaStream_t stream) {
  const char* failed = "noise_dot";
  const cudaError_t err = dispatch<NoiseDot>(dt, sh, dy, seed, base, part, gsum, alpha, sigma,
                                             coef, stream, &failed);
  return done(err, failed);
}

Status input_grad(DType dt, const Shape& sh, View dy, View x, View dx, const void* coef,
                  const void* mean, cudaStream_t stream) {
  return done(dispatch<InputGrad>(dt, sh, dy, x, dx, coef, mean, stream), "dx");
}

Status randn(float* out, int64_t n, int64_t start, int64_t step, const int64_t* seed,
             cudaStream_t stream) {
  if (n == 0) return Status{cudaSuccess, nullptr};
  if (step == 1) {
    const int64_t groups = groups_in_run((uint64_t)start, n);
    randn_groups<<<blocks_for(groups), kThreads, 0, stream>>>(out, n, (uint64_t)start, groups,
                                                              seed);
  } else {
    randn_strided<<<blocks_for(n), kThreads, 0, stream>>>(out, n, (uint64_t)start,
                                                          (uint64_t)step, seed);
  }
  return done(cudaGetLastError(), "randn");
}

Status draw_at(const int64_t* groups, int64_t n, const int64_t* seed, int64_t* words,
               float* rand4, float* randn4_out, cudaStream_t stream) {
  if (n == 0) return Status{cudaSuccess, nullptr};
  draw_at_kernel<<<(unsigned)((n + 127) / 128), 128, 0, stream>>>(groups, n, seed, words, rand4,
                                                                  randn4_out);
  return done(cudaGetLastError(), "draw_at_kernel");
}

}  // namespace anoise_cuda
