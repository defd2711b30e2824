// The CPU kernels, compiled once per instruction set: a kernels_<isa>.cpp file sets
// `#pragma GCC target(...)`, defines ANOISE_ISA (a namespace) and ANOISE_ISA_NAME, then
// includes this file.  Only headers without out-of-line code are included (no std templates),
// so no function compiled for a wider instruction set can be picked by the linker for use
// elsewhere.  Inner loops are written so that gcc vectorises them (`omp simd`, unit-stride
// fast paths, branch-free noise in philox.h).
#include "half.h"
#include "kernels.h"
#if defined(ANOISE_PHILOX_SIMD)
#include "philox_simd.h"
#endif

namespace anoise_cpu {
namespace ANOISE_ISA {
namespace {

template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// A run of `len` elements along the inner dimension, starting at logical (n, c, s).
// In rows mode the run goes over channels (c = 0); otherwise over s, or over n when S == 1.
struct Seg {
  int64_t n, c, s, len;
};

struct Walk {
  const Geometry& g;
  bool along_c, along_n;
  uint64_t base;  // noise index of logical element 0

  explicit Walk(const Geometry& geo, uint64_t index_base = 0)
      : g(geo), along_c(geo.rows), along_n(!geo.rows && geo.S == 1), base(index_base) {}

  int64_t offset(const View& v, const Seg& q) const { return q.n * v.sN + q.c * v.sC + q.s * v.sS; }
  int64_t inner(const View& v) const { return along_c ? v.sC : (along_n ? v.sN : v.sS); }
  uint64_t index(const Seg& q) const {
    return base + (uint64_t)((q.n * g.C + q.c) * g.S + q.s);
  }
  uint64_t istep() const { return along_c ? (uint64_t)g.S : (along_n ? (uint64_t)g.C : 1u); }

  // Calls f(seg) for each run of the task, in a fixed order.
  template <class F>
  void each(int64_t task, F&& f) const {
    if (g.rows) {
      const int64_t p0 = task * g.chunk, p1 = p0 + chunk_count(g, task);
      for (int64_t p = p0; p < p1; ++p) f(Seg{p / g.S, 0, p % g.S, g.C});
      return;
    }
    const int64_t c = task / g.nchunks, k = task % g.nchunks;
    int64_t j = k * g.chunk;
    const int64_t end = j + chunk_count(g, k);
    if (along_n) {
      f(Seg{j, c, 0, end - j});
      return;
    }
    while (j < end) {
      const int64_t n = j / g.S, s = j - n * g.S;
      const int64_t len = imin(end - j, g.S - s);
      f(Seg{n, c, s, len});
      j += len;
    }
  }
};

// ---- per-run inner loops (CONTIG: every tensor has unit stride along the run) -------------

template <class T, bool CONTIG>
inline typename AccOf<T>::type run_sum(const T* x, int64_t xs, int64_t len) {
  using A = typename AccOf<T>::type;
  if (CONTIG) xs = 1;
  A acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t l = 0; l < len; ++l) acc += (A)to_float(x[l * xs]);
  return acc;
}

template <class T, bool CONTIG>
inline typename AccOf<T>::type run_m2(const T* x, int64_t xs, int64_t len,
                                      typename AccOf<T>::type mean) {
  using A = typename AccOf<T>::type;
  if (CONTIG) xs = 1;
  A acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t l = 0; l < len; ++l) {
    const A d = (A)to_float(x[l * xs]) - mean;
    acc += d * d;
  }
  return acc;
}

// Rows mode: acc[c] += x[c] (or += (x[c] - mean[c])^2 when mean is given).
template <class T, bool CONTIG>
inline void run_lanes_sum(const T* x, int64_t xs, int64_t len, typename AccOf<T>::type* __restrict acc,
                          const typename AccOf<T>::type* __restrict mean) {
  using A = typename AccOf<T>::type;
  if (CONTIG) xs = 1;
  if (mean == nullptr) {
#pragma omp simd
    for (int64_t l = 0; l < len; ++l) acc[l] += (A)to_float(x[l * xs]);
  } else {
#pragma omp simd
    for (int64_t l = 0; l < len; ++l) {
      const A d = (A)to_float(x[l * xs]) - mean[l];
      acc[l] += d * d;
    }
  }
}

// The noise is drawn into a small stack block by its own loop, then used by a second one: with
// both in one loop, gcc sinks the noise into the `scale != 0` branch and cannot vectorise.
constexpr int64_t kBlock = 128;

inline void fill_noise(float* __restrict e, int64_t len, uint64_t i0, uint64_t istep, uint32_t k0,
                       uint32_t k1) {
#if defined(ANOISE_PHILOX_SIMD)
  if (istep < (1u << 27)) {  // lane offsets l * istep fit in 32 bits
    const vec_t off = lane_offsets((uint32_t)istep);
    for (int64_t b = 0; b < len; b += kPhiloxLanes) {
      uint32_t w0[kPhiloxLanes], w1[kPhiloxLanes];  // lanes past len draw unused values
      philox_lanes(i0 + (uint64_t)b * istep, off, k0, k1, w0, w1);
      const int64_t n = imin(kPhiloxLanes, len - b);
#pragma omp simd
      for (int64_t l = 0; l < n; ++l) e[b + l] = box_muller(w0[l], w1[l]);
    }
    return;
  }
#endif
#pragma omp simd
  for (int64_t l = 0; l < len; ++l) e[l] = randn_at(i0 + (uint64_t)l * istep, k0, k1);
}

// y = x + scale * eps; LANES: one scale per element of the run (rows mode), else scale[0].
template <class T, bool CONTIG, bool LANES>
inline void run_apply(const T* x, int64_t xs, T* y, int64_t ys, int64_t len, uint64_t i0,
                      uint64_t istep, const typename AccOf<T>::type* __restrict scale, uint32_t k0,
                      uint32_t k1) {
  using A = typename AccOf<T>::type;
  if (CONTIG) xs = ys = 1;
  if (!LANES && scale[0] == 0) {  // y = x exactly; a loop-invariant select blocks vectorising
#pragma omp simd
    for (int64_t l = 0; l < len; ++l) y[l * ys] = x[l * xs];
    return;
  }
  float e[kBlock];
  for (int64_t b = 0; b < len; b += kBlock) {
    const int64_t n = imin(kBlock, len - b);
    fill_noise(e, n, i0 + (uint64_t)b * istep, istep, k0, k1);
    const T* xb = x + b * xs;
    T* yb = y + b * ys;
    const A* sb = scale + (LANES ? b : 0);
#pragma omp simd
    for (int64_t l = 0; l < n; ++l) {
      const A sc = sb[LANES ? l : 0];
      const A xv = (A)to_float(xb[l * xs]);
      const A r = xv + sc * (A)e[l];
      yb[l * ys] = FromFloat<T>::conv(LANES && sc == 0 ? xv : r);  // exact x where scale is 0
    }
  }
}

// sum(dy * eps) over the run (LANES == false), or acc[l] += dy[l] * eps[l] (LANES).
template <class T, bool CONTIG, bool LANES>
inline typename AccOf<T>::type run_dot(const T* dy, int64_t ds, int64_t len, uint64_t i0,
                                       uint64_t istep, uint32_t k0, uint32_t k1,
                                       typename AccOf<T>::type* __restrict lanes) {
  using A = typename AccOf<T>::type;
  if (CONTIG) ds = 1;
  float e[kBlock];
  A acc = 0;
  for (int64_t b = 0; b < len; b += kBlock) {
    const int64_t n = imin(kBlock, len - b);
    fill_noise(e, n, i0 + (uint64_t)b * istep, istep, k0, k1);
    const T* db = dy + b * ds;
    if (LANES) {
      A* lb = lanes + b;
#pragma omp simd
      for (int64_t l = 0; l < n; ++l) lb[l] += (A)to_float(db[l * ds]) * (A)e[l];
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t l = 0; l < n; ++l) acc += (A)to_float(db[l * ds]) * (A)e[l];
    }
  }
  return acc;
}

template <class T, bool CONTIG, bool LANES>
inline void run_dx(const T* dy, int64_t ds, const T* x, int64_t xs, T* dx, int64_t os,
                   int64_t len, const typename AccOf<T>::type* __restrict coef,
                   const typename AccOf<T>::type* __restrict mean) {
  using A = typename AccOf<T>::type;
  if (CONTIG) ds = xs = os = 1;
#pragma omp simd
  for (int64_t l = 0; l < len; ++l) {
    const A k = coef[LANES ? l : 0], m = mean[LANES ? l : 0];
    const A v = (A)to_float(dy[l * ds]) + k * ((A)to_float(x[l * xs]) - m);
    dx[l * os] = FromFloat<T>::conv(v);
  }
}

// ---- tasks ---------------------------------------------------------------------------------

template <class T, bool CONTIG>
void stats_task(const Geometry& g, View xv, int64_t task, void* pmean_, void* pm2_) {
  using A = typename AccOf<T>::type;
  A* pmean = static_cast<A*>(pmean_);
  A* pm2 = static_cast<A*>(pm2_);
  const T* x = static_cast<const T*>(xv.data);
  const Walk w(g);
  const int64_t xs = w.inner(xv);
  if (g.rows) {
    A* mean = pmean + slot(g, 0, task);
    A* m2 = pm2 + slot(g, 0, task);
    for (int64_t c = 0; c < g.C; ++c) mean[c] = m2[c] = 0;
    w.each(task, [&](const Seg& q) { run_lanes_sum<T, CONTIG>(x + w.offset(xv, q), xs, q.len, mean, nullptr); });
    const A inv = (A)1 / (A)chunk_count(g, task);
    for (int64_t c = 0; c < g.C; ++c) mean[c] *= inv;
    w.each(task, [&](const Seg& q) { run_lanes_sum<T, CONTIG>(x + w.offset(xv, q), xs, q.len, m2, mean); });
    return;
  }
  const int64_t c = task / g.nchunks, k = task % g.nchunks;
  A sum = 0, m2 = 0;
  w.each(task, [&](const Seg& q) { sum += run_sum<T, CONTIG>(x + w.offset(xv, q), xs, q.len); });
  const A mean = sum / (A)chunk_count(g, k);
  w.each(task, [&](const Seg& q) { m2 += run_m2<T, CONTIG>(x + w.offset(xv, q), xs, q.len, mean); });
  pmean[slot(g, c, k)] = mean;
  pm2[slot(g, c, k)] = m2;
}

template <class T, bool CONTIG>
void apply_task(const Geometry& g, View xv, View yv, const void* scale_, uint64_t seed,
                uint64_t base, int64_t task) {
  using A = typename AccOf<T>::type;
  const A* scale = static_cast<const A*>(scale_);
  const T* x = static_cast<const T*>(xv.data);
  T* y = static_cast<T*>(yv.data);
  const Walk w(g, base);
  const int64_t xs = w.inner(xv), ys = w.inner(yv);
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  w.each(task, [&](const Seg& q) {
    const T* xp = x + w.offset(xv, q);
    T* yp = y + w.offset(yv, q);
    if (g.rows)
      run_apply<T, CONTIG, true>(xp, xs, yp, ys, q.len, w.index(q), w.istep(), scale, k0, k1);
    else
      run_apply<T, CONTIG, false>(xp, xs, yp, ys, q.len, w.index(q), w.istep(), scale + q.c, k0, k1);
  });
}

template <class T, bool CONTIG>
void dot_task(const Geometry& g, View dv, uint64_t seed, uint64_t base, int64_t task,
              void* pg_) {
  using A = typename AccOf<T>::type;
  A* pg = static_cast<A*>(pg_);
  const T* dy = static_cast<const T*>(dv.data);
  const Walk w(g, base);
  const int64_t ds = w.inner(dv);
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  if (g.rows) {
    A* acc = pg + slot(g, 0, task);
    for (int64_t c = 0; c < g.C; ++c) acc[c] = 0;
    w.each(task, [&](const Seg& q) {
      run_dot<T, CONTIG, true>(dy + w.offset(dv, q), ds, q.len, w.index(q), w.istep(), k0, k1,
                               acc);
    });
    return;
  }
  A acc = 0;
  w.each(task, [&](const Seg& q) {
    acc += run_dot<T, CONTIG, false>(dy + w.offset(dv, q), ds, q.len, w.index(q), w.istep(), k0,
                                     k1, nullptr);
  });
  pg[slot(g, task / g.nchunks, task % g.nchunks)] = acc;
}

template <class T, bool CONTIG>
void dx_task(const Geometry& g, View dv, View xv, View ov, const void* coef_, const void* mean_,
             int64_t task) {
  using A = typename AccOf<T>::type;
  const A* coef = static_cast<const A*>(coef_);
  const A* mean = static_cast<const A*>(mean_);
  const Walk w(g);
  const int64_t ds = w.inner(dv), xs = w.inner(xv), os = w.inner(ov);
  const T* dy = static_cast<const T*>(dv.data);
  const T* x = static_cast<const T*>(xv.data);
  T* dx = static_cast<T*>(ov.data);
  w.each(task, [&](const Seg& q) {
    const T* dp = dy + w.offset(dv, q);
    const T* xp = x + w.offset(xv, q);
    T* op = dx + w.offset(ov, q);
    if (g.rows)
      run_dx<T, CONTIG, true>(dp, ds, xp, xs, op, os, q.len, coef, mean);
    else
      run_dx<T, CONTIG, false>(dp, ds, xp, xs, op, os, q.len, coef + q.c, mean + q.c);
  });
}

// ---- dtype and stride dispatch ----------------------------------------------------------------

template <template <class, bool> class F, class... Args>
void dispatch(DType dt, bool contig, Args... args) {
  switch (dt) {
    case DType::kFloat:
      return contig ? F<float, true>::run(args...) : F<float, false>::run(args...);
    case DType::kDouble:
      return contig ? F<double, true>::run(args...) : F<double, false>::run(args...);
    case DType::kHalf:
      return contig ? F<Half, true>::run(args...) : F<Half, false>::run(args...);
    case DType::kBFloat16:
      return contig ? F<BFloat16, true>::run(args...) : F<BFloat16, false>::run(args...);
  }
}

template <class T, bool C>
struct StatsF {
  static void run(const Geometry& g, View x, int64_t t, void* a, void* b) {
    stats_task<T, C>(g, x, t, a, b);
  }
};
template <class T, bool C>
struct ApplyF {
  static void run(const Geometry& g, View x, View y, const void* s, uint64_t seed, uint64_t base,
                  int64_t t) {
    apply_task<T, C>(g, x, y, s, seed, base, t);
  }
};
template <class T, bool C>
struct DotF {
  static void run(const Geometry& g, View d, uint64_t seed, uint64_t base, int64_t t, void* p) {
    dot_task<T, C>(g, d, seed, base, t, p);
  }
};
template <class T, bool C>
struct DxF {
  static void run(const Geometry& g, View d, View x, View o, const void* k, const void* m,
                  int64_t t) {
    dx_task<T, C>(g, d, x, o, k, m, t);
  }
};

void stats(const Geometry& g, DType dt, View x, int64_t task, void* pmean, void* pm2) {
  const Walk w(g);
  dispatch<StatsF>(dt, w.inner(x) == 1, g, x, task, pmean, pm2);
}

void apply(const Geometry& g, DType dt, View x, View y, const void* scale, uint64_t seed,
           uint64_t base, int64_t task) {
  const Walk w(g);
  dispatch<ApplyF>(dt, w.inner(x) == 1 && w.inner(y) == 1, g, x, y, scale, seed, base, task);
}

void noise_dot(const Geometry& g, DType dt, View dy, uint64_t seed, uint64_t base, int64_t task,
               void* pg) {
  const Walk w(g);
  dispatch<DotF>(dt, w.inner(dy) == 1, g, dy, seed, base, task, pg);
}

void dx(const Geometry& g, DType dt, View dy, View x, View out, const void* coef,
        const void* mean, int64_t task) {
  const Walk w(g);
  const bool contig = w.inner(dy) == 1 && w.inner(x) == 1 && w.inner(out) == 1;
  dispatch<DxF>(dt, contig, g, dy, x, out, coef, mean, task);
}

void randn(float* out, int64_t n, uint64_t i0, uint64_t istep, uint64_t seed) {
  fill_noise(out, n, i0, istep, (uint32_t)seed, (uint32_t)(seed >> 32));
}

void draw_at(const int64_t* offsets, int64_t n, uint64_t seed, int64_t* words, float* rand,
             float* randn_out) {
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int64_t j = 0; j < n; ++j) {
    const Words w = philox((uint64_t)offsets[j], k0, k1);
    words[4 * j + 0] = w.w0;
    words[4 * j + 1] = w.w1;
    words[4 * j + 2] = w.w2;
    words[4 * j + 3] = w.w3;
    rand[j] = uniform(w.w0);
    randn_out[j] = box_muller(w.w0, w.w1);
  }
}

const Kernels table = {ANOISE_ISA_NAME, stats, apply, noise_dot, dx, randn, draw_at};

}  // namespace
}  // namespace ANOISE_ISA
}  // namespace anoise_cpu
