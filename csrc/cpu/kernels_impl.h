// The CPU kernels, compiled once per instruction set: a kernels_<isa>.cpp file sets
// `#pragma GCC target(...)`, defines ANOISE_ISA (a namespace), ANOISE_ISA_NAME and ANOISE_SIMD,
// then includes this file.  Only headers without out-of-line code are included (no std
// templates), so no function compiled for a wider instruction set can be picked by the linker
// for use elsewhere.  The noise comes from explicit vectors (philox.h); the loops that consume
// it are written so that gcc vectorises them (`omp simd`, unit-stride fast paths).
#include "half.h"
#include "kernels.h"
#include "philox.h"

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

// A run of `len` elements along one dimension, starting at logical (n, c, s).
struct Seg {
  int64_t n, c, s, len;
};

// The walk of the statistics and dx passes: in rows mode a run goes over the channels of one
// position (c = 0); otherwise over s, or over n when S == 1.
struct Walk {
  const Geometry& g;
  bool along_c, along_n;

  explicit Walk(const Geometry& geo) : g(geo), along_c(geo.rows), along_n(!geo.rows && geo.S == 1) {}

  int64_t offset(const View& v, const Seg& q) const { return q.n * v.sN + q.c * v.sC + q.s * v.sS; }
  int64_t inner(const View& v) const { return along_c ? v.sC : (along_n ? v.sN : v.sS); }

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

// Noise elements drawn per block (a stack buffer, in L1): whole stages of fill_groups.
constexpr int64_t kBlock = 4 * kStage * kQuads * 2;

// The walk of the passes that draw noise.  Runs whose elements have consecutive noise indices,
// so that each Philox call serves four of them (only a run's first and last group can be
// partial):
//   planes: runs along s (along n when S == 1, which here means C == 1), in blocks;
//   rows with S == 1 ((N, C) inputs): the task's indices are contiguous; each block of them is
//     cut at position boundaries into runs along c, one scale per element (lanes());
//   rows with S > 1 (channels_last): tiles of consecutive s within one n and, per channel, a run
//     along s (strided in memory; the tile stays in cache while its channels are visited).
struct NoiseWalk {
  enum Dir { kAlongS, kAlongN, kAlongC };
  const Geometry& g;
  uint64_t base;  // noise index of logical element 0
  Dir dir;

  NoiseWalk(const Geometry& geo, uint64_t index_base)
      : g(geo),
        base(index_base),
        dir(geo.rows ? (geo.S == 1 ? kAlongC : kAlongS) : (geo.S == 1 ? kAlongN : kAlongS)) {}

  bool lanes() const { return dir == kAlongC; }
  int64_t offset(const View& v, const Seg& q) const { return q.n * v.sN + q.c * v.sC + q.s * v.sS; }
  int64_t inner(const View& v) const { return dir == kAlongC ? v.sC : (dir == kAlongN ? v.sN : v.sS); }
  uint64_t index(int64_t n, int64_t c, int64_t s) const {
    return base + (uint64_t)((n * g.C + c) * g.S + s);
  }
  // Positions per tile in rows mode with S > 1: about 4096 elements, a multiple of 4.
  int64_t tile() const {
    const int64_t t = (4096 / g.C) & ~int64_t{3};
    return t < 4 ? 4 : (t > kBlock ? kBlock : t);
  }

  // Calls f(q, e) for each run q of the task, in a fixed order, with e[l] the noise of its
  // element l; e is null for channels where skip(c) (their runs draw nothing).
  template <class Skip, class F>
  void each(int64_t task, const Key& key, Skip&& skip, F&& f) const {
    float buf[noise_buf_floats(kBlock)];
    if (!g.rows) {
      const int64_t c = task / g.nchunks, k = task % g.nchunks;
      const bool none = skip(c);
      int64_t j = k * g.chunk;
      const int64_t end = j + chunk_count(g, k);
      while (j < end) {
        const int64_t n = dir == kAlongN ? j : j / g.S, s = dir == kAlongN ? 0 : j - n * g.S;
        const int64_t len = dir == kAlongN ? end - j : imin(end - j, g.S - s);
        for (int64_t b = 0; b < len; b += kBlock) {
          const int64_t m = imin(kBlock, len - b);
          const Seg q = dir == kAlongN ? Seg{n + b, c, 0, m} : Seg{n, c, s + b, m};
          f(q, none ? nullptr : noise_block(buf, index(q.n, c, q.s), m, key));
        }
        j += len;
      }
      return;
    }
    const int64_t p0 = task * g.chunk, p1 = p0 + chunk_count(g, task);
    if (g.S == 1) {
      const int64_t f1 = p1 * g.C;
      for (int64_t f0 = p0 * g.C; f0 < f1; f0 += kBlock) {
        const int64_t m = imin(kBlock, f1 - f0);
        const float* e = noise_block(buf, base + (uint64_t)f0, m, key);
        for (int64_t i = f0; i < f0 + m;) {
          const int64_t n = i / g.C, c = i - n * g.C, len = imin(g.C - c, f0 + m - i);
          f(Seg{n, c, 0, len}, e + (i - f0));
          i += len;
        }
      }
      return;
    }
    const int64_t t = tile();
    for (int64_t p = p0; p < p1;) {
      const int64_t n = p / g.S, s = p - n * g.S;
      const int64_t len = imin(t, imin(p1 - p, g.S - s));
      for (int64_t c = 0; c < g.C; ++c)
        f(Seg{n, c, s, len}, skip(c) ? nullptr : noise_block(buf, index(n, c, s), len, key));
      p += len;
    }
  }
};

constexpr auto kNoSkip = [](int64_t) { return false; };

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

template <class T, bool CONTIG>
inline void run_copy(const T* x, int64_t xs, T* y, int64_t ys, int64_t len) {
  if (CONTIG) xs = ys = 1;
#pragma omp simd
  for (int64_t l = 0; l < len; ++l) y[l * ys] = x[l * xs];
}

// y = x + scale * e; LANES: one scale per element of the run (y = x exactly where it is 0),
// else scale[0].
template <class T, bool CONTIG, bool LANES>
inline void run_apply(const T* x, int64_t xs, T* y, int64_t ys, int64_t len,
                      const float* __restrict e, const typename AccOf<T>::type* __restrict scale) {
  using A = typename AccOf<T>::type;
  if (CONTIG) xs = ys = 1;
#pragma omp simd
  for (int64_t l = 0; l < len; ++l) {
    const A sc = scale[LANES ? l : 0];
    const A xv = (A)to_float(x[l * xs]);
    const A r = xv + sc * (A)e[l];
    y[l * ys] = FromFloat<T>::conv(LANES && sc == 0 ? xv : r);
  }
}

// sum(dy * e) in double: the products of float32 values are exact, so g keeps its accuracy
// when terms of both signs cancel (a float32 sum lost ~1e-5 of d alpha at M ~ 1e5).
template <class T, bool CONTIG>
inline double run_dot(const T* dy, int64_t ds, int64_t len, const float* __restrict e) {
  if (CONTIG) ds = 1;
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t l = 0; l < len; ++l) acc += (double)to_float(dy[l * ds]) * (double)e[l];
  return acc;
}

// Rows mode: acc[l] += dy[l] * e[l].
template <class T, bool CONTIG>
inline void run_dot_lanes(const T* dy, int64_t ds, int64_t len, const float* __restrict e,
                          double* __restrict acc) {
  if (CONTIG) ds = 1;
#pragma omp simd
  for (int64_t l = 0; l < len; ++l) acc[l] += (double)to_float(dy[l * ds]) * (double)e[l];
}

// Float runs with unit strides and streaming stores: out[l] = op(l) in explicit vectors, where
// op(a, b, c) combines vectors of a[l..], b[l..], c[l..].  Partial vectors at either end of the
// run go through staging vectors, so every element takes the same arithmetic.
template <class Op>
inline void stream_run(float* out, int64_t len, const float* a, const float* b, const float* c,
                       Op&& op) {
  const auto part = [&](int64_t l, int64_t m) {
    float ta[kLanes] = {}, tb[kLanes] = {}, tc[kLanes] = {}, to[kLanes];
    for (int64_t i = 0; i < m; ++i) ta[i] = a[l + i], tb[i] = b[l + i], tc[i] = c[l + i];
    storef(to, op(loadf(ta), loadf(tb), loadf(tc)));
    for (int64_t i = 0; i < m; ++i) out[l + i] = to[i];
  };
  int64_t l = imin(len, (int64_t)((-(uint64_t)out & (kVecBytes - 1)) / sizeof(float)));
  if (l > 0) part(0, l);
  for (; l + kLanes <= len; l += kLanes) stream_store(out + l, op(loadf(a + l), loadf(b + l), loadf(c + l)));
  if (l < len) part(l, len - l);
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
    const A d = (A)to_float(dy[l * ds]);
    // A zero coefficient gives dy itself, also where x is +-Inf or NaN (0 * Inf is NaN).
    const A v = k == A(0) ? d : d + k * ((A)to_float(x[l * xs]) - m);
    dx[l * os] = FromFloat<T>::conv(v);
  }
}

// ---- tasks ---------------------------------------------------------------------------------

// Outputs are written with streaming stores when Geometry::stream on float runs with unit
// strides (the large tensors of the hot path).
template <class T>
constexpr bool kIsFloat = false;
template <>
constexpr bool kIsFloat<float> = true;

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
  const NoiseWalk w(g, base);
  const Key key = make_key(seed);
  const int64_t xs = w.inner(xv), ys = w.inner(yv);
  if (w.lanes()) {
    w.each(task, key, kNoSkip, [&](const Seg& q, const float* e) {
      run_apply<T, CONTIG, true>(x + w.offset(xv, q), xs, y + w.offset(yv, q), ys, q.len, e,
                                 scale + q.c);
    });
    return;
  }
  // y = x exactly where scale is 0, and no noise is drawn there.
  const auto zero = [&](int64_t c) { return scale[c] == 0; };
  w.each(task, key, zero, [&](const Seg& q, const float* e) {
    const T* xp = x + w.offset(xv, q);
    T* yp = y + w.offset(yv, q);
    if (e == nullptr) {
      run_copy<T, CONTIG>(xp, xs, yp, ys, q.len);
      return;
    }
    if constexpr (CONTIG && kIsFloat<T>) {
      if (g.stream) {
        const vf sc = bc(scale[q.c]);
        stream_run(yp, q.len, xp, e, e, [&](vf xa, vf ea, vf) { return madd(sc, ea, xa); });
        return;
      }
    }
    run_apply<T, CONTIG, false>(xp, xs, yp, ys, q.len, e, scale + q.c);
  });
  if (g.stream) stream_fence();
}

template <class T, bool CONTIG>
void dot_task(const Geometry& g, View dv, uint64_t seed, uint64_t base, int64_t task,
              double* pg) {
  const T* dy = static_cast<const T*>(dv.data);
  const NoiseWalk w(g, base);
  const Key key = make_key(seed);
  const int64_t ds = w.inner(dv);
  if (g.rows) {
    double* acc = pg + slot(g, 0, task);
    for (int64_t c = 0; c < g.C; ++c) acc[c] = 0;
    if (w.lanes()) {
      w.each(task, key, kNoSkip, [&](const Seg& q, const float* e) {
        run_dot_lanes<T, CONTIG>(dy + w.offset(dv, q), ds, q.len, e, acc + q.c);
      });
    } else {
      w.each(task, key, kNoSkip, [&](const Seg& q, const float* e) {
        acc[q.c] += run_dot<T, CONTIG>(dy + w.offset(dv, q), ds, q.len, e);
      });
    }
    return;
  }
  double acc = 0;
  w.each(task, key, kNoSkip, [&](const Seg& q, const float* e) {
    acc += run_dot<T, CONTIG>(dy + w.offset(dv, q), ds, q.len, e);
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
    if (g.rows) {
      run_dx<T, CONTIG, true>(dp, ds, xp, xs, op, os, q.len, coef, mean);
      return;
    }
    if constexpr (CONTIG && kIsFloat<T>) {
      if (g.stream && coef[q.c] == 0) {
        stream_run(op, q.len, dp, dp, dp, [&](vf d, vf, vf) { return d; });
        return;
      }
      if (g.stream) {
        const vf k = bc(coef[q.c]), m = bc(mean[q.c]);
        stream_run(op, q.len, dp, xp, xp, [&](vf d, vf xa, vf) { return madd(k, xa - m, d); });
        return;
      }
    }
    run_dx<T, CONTIG, false>(dp, ds, xp, xs, op, os, q.len, coef + q.c, mean + q.c);
  });
  if (g.stream) stream_fence();
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
  static void run(const Geometry& g, View d, uint64_t seed, uint64_t base, int64_t t, double* p) {
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
  const NoiseWalk w(g, base);
  dispatch<ApplyF>(dt, w.inner(x) == 1 && w.inner(y) == 1, g, x, y, scale, seed, base, task);
}

void noise_dot(const Geometry& g, DType dt, View dy, uint64_t seed, uint64_t base, int64_t task,
               double* pg) {
  const NoiseWalk w(g, base);
  dispatch<DotF>(dt, w.inner(dy) == 1, g, dy, seed, base, task, pg);
}

void dx(const Geometry& g, DType dt, View dy, View x, View out, const void* coef,
        const void* mean, int64_t task) {
  const Walk w(g);
  const bool contig = w.inner(dy) == 1 && w.inner(x) == 1 && w.inner(out) == 1;
  dispatch<DxF>(dt, contig, g, dy, x, out, coef, mean, task);
}

// Contiguous indices (istep == 1) take the kernels' path: whole groups straight into out, the
// partial groups at either end through a block.  Other steps draw each element's own group,
// kQuads elements per draw (a test hook, not a kernel path).
void randn(float* out, int64_t n, uint64_t i0, uint64_t istep, uint64_t seed) {
  const Key key = make_key(seed);
  float buf[noise_buf_floats(8)];
  if (istep == 1) {
    const int64_t head = imin((int64_t)((4u - (i0 & 3u)) & 3u), n);
    const float* e = noise_block(buf, i0, head, key);
    for (int64_t l = 0; l < head; ++l) out[l] = e[l];
    const int64_t groups = (n - head) / 4, body = head + 4 * groups;
    fill_groups(out + head, (i0 + (uint64_t)head) >> 2, groups, key);
    e = noise_block(buf, i0 + (uint64_t)body, n - body, key);
    for (int64_t l = body; l < n; ++l) out[l] = e[l - body];
    return;
  }
  for (int64_t j = 0; j < n; j += kQuads) {
    const int64_t m = imin(kQuads, n - j);
    uint64_t idx[kQuads];
    int64_t groups[kQuads];
    for (int64_t l = 0; l < kQuads; ++l) {
      idx[l] = i0 + (uint64_t)(j + (l < m ? l : 0)) * istep;
      groups[kLaneOf[l]] = (int64_t)(idx[l] >> 2);
    }
    const Draw d = draw(loadq(groups), key);
    float z[2 * kLanes];
    storef(z, zip_lo(d.n_cos, d.n_sin));
    storef(z + kLanes, zip_hi(d.n_cos, d.n_sin));
    for (int64_t l = 0; l < m; ++l) out[j + l] = z[4 * l + (int64_t)(idx[l] & 3u)];
  }
}

void draw_at(const int64_t* groups, int64_t n, uint64_t seed, int64_t* words, float* rand4,
             float* randn4) {
  const Key key = make_key(seed);
  for (int64_t j = 0; j < n; j += kQuads) {
    const int64_t m = imin(kQuads, n - j);
    int64_t g[kQuads] = {};
    for (int64_t l = 0; l < m; ++l) g[kLaneOf[l]] = groups[j + l];
    const Draw d = draw(loadq(g), key);
    float u[2 * kLanes], z[2 * kLanes];
    storef(u, zip_lo(d.ua, d.ub));
    storef(u + kLanes, zip_hi(d.ua, d.ub));
    storef(z, zip_lo(d.n_cos, d.n_sin));
    storef(z + kLanes, zip_hi(d.n_cos, d.n_sin));
    for (int64_t l = 0; l < m; ++l)
      for (int k = 0; k < 4; ++k) {
        words[4 * (j + l) + k] = (int64_t)(d.w[k][kLaneOf[l]] & 0xFFFFFFFFull);
        rand4[4 * (j + l) + k] = u[4 * l + k];
        randn4[4 * (j + l) + k] = z[4 * l + k];
      }
  }
}

const Kernels table = {ANOISE_ISA_NAME, stats, apply, noise_dot, dx, randn, draw_at};

}  // namespace
}  // namespace ANOISE_ISA
}  // namespace anoise_cpu
