// torch binding of the fused CPU kernels: argument checks, the partition of the work into
// thread-count-independent tasks, the parallel loops, and the fixed-order merges of partials.
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "kernels.h"

namespace anoise_cpu {
namespace {

// Elements (or, for channels-innermost layouts, about that many elements' worth of positions)
// per task: small enough to stay in L2 between the two statistics passes, large enough to
// amortise a task's setup.  A constant, so results never depend on the thread count.
constexpr int64_t kChunk = 16384;
constexpr int64_t kRandnChunk = 1 << 16;
// Largest channel (bytes of x) that the two-pass ops walk channel by channel (see two_passes).
constexpr int64_t kChannelBytes = 4 << 20;

// Outputs of at least this many bytes are written with streaming stores: most of them would be
// evicted from the last-level cache before anything reads them, and skipping the read for
// ownership saves a quarter to a third of the traffic of a pass.
constexpr int64_t kStreamBytes = 16 << 20;

// ---- instruction-set selection ----------------------------------------------------------------

std::vector<const Kernels*> supported_kernels() {
  std::vector<const Kernels*> out{&kernels_baseline()};
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2")) {
    out.push_back(&kernels_avx2());
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
      out.push_back(&kernels_avx512());
  }
#endif
  return out;
}

const Kernels* find_kernels(const std::string& name) {
  for (const Kernels* k : supported_kernels())
    if (name == k->name) return k;
  return nullptr;
}

// The widest supported set, unless ANOISE_CPU_ISA names another.
const Kernels* initial_kernels() {
  const char* env = std::getenv("ANOISE_CPU_ISA");
  if (env != nullptr && *env != '\0' && std::string(env) != "auto") {
    const Kernels* k = find_kernels(env);
    TORCH_CHECK_VALUE(k != nullptr, "ANOISE_CPU_ISA=", env,
                      " is not supported by this CPU (or not one of baseline, avx2, avx512)");
    return k;
  }
  return supported_kernels().back();
}

std::atomic<const Kernels*>& active() {
  static std::atomic<const Kernels*> k{initial_kernels()};
  return k;
}

const Kernels& kern() { return *active().load(); }

// ---- checks ---------------------------------------------------------------------------------

#define ANOISE_CHECK_CPU(t, name)                                                             \
  TORCH_CHECK_VALUE((t).device().is_cpu(), name, " must be a CPU tensor, got one on ", \
                    (t).device())

DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat;
    case at::kDouble:
      return DType::kDouble;
    case at::kHalf:
      return DType::kHalf;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, name, " must be float16, bfloat16, float32 or float64, got ",
                       t.scalar_type());
  }
}

at::ScalarType stat_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_x3(const at::Tensor& x, const char* name) {
  ANOISE_CHECK_CPU(x, name);
  TORCH_CHECK_VALUE(x.dim() == 3, name, " must be a 3-D (N, C, S) view, got shape ", x.sizes());
  dtype_of(x, name);
}

void check_channels(const at::Tensor& v, const char* name, int64_t C, at::ScalarType st) {
  ANOISE_CHECK_CPU(v, name);
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == C, name, " must have shape (", C,
                    ",) (one value per channel), got ", v.sizes());
  TORCH_CHECK_TYPE(v.scalar_type() == st, name, " must have dtype ", st,
                   " (the statistics dtype of the input), got ", v.scalar_type());
  TORCH_CHECK_VALUE(v.is_contiguous(), name, " must be contiguous");
}

uint64_t seed_of(const at::Tensor& seed) {
  ANOISE_CHECK_CPU(seed, "seed");
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "seed must be an int64 tensor, got ",
                   seed.scalar_type());
  TORCH_CHECK_VALUE(seed.numel() == 1, "seed must hold one value, got shape ", seed.sizes());
  return static_cast<uint64_t>(seed.contiguous().data_ptr<int64_t>()[0]);
}

// Element i of a call draws eps(index_base + i): a rank's slice of a larger batch draws that
// slice's noise.
uint64_t base_of(int64_t index_base) {
  TORCH_CHECK_VALUE(index_base >= 0, "index_base must be >= 0, got ", index_base);
  return static_cast<uint64_t>(index_base);
}

// ---- geometry ---------------------------------------------------------------------------------

View view_of(const at::Tensor& t) {
  return View{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

// Walk channels-innermost layouts (channels_last) position by position; everything else channel
// plane by channel plane.  (N, C) inputs always go position by position, whatever their strides:
// the noise indices of a position's channels are consecutive, those of a channel's plane are C
// apart (each Philox call would serve one element).  Chunks of positions are a multiple of 4,
// so that groups of four noise indices do not straddle tasks when S and index_base are
// multiples of 4.
Geometry geometry_of(const at::Tensor& t) {
  Geometry g{};
  g.N = t.size(0);
  g.C = t.size(1);
  g.S = t.size(2);
  g.rows = g.C > 1 && (g.S == 1 || (t.stride(1) == 1 && t.stride(2) != 1));
  g.chunk = g.rows ? std::max<int64_t>(4, (kChunk / g.C) & ~int64_t{3}) : kChunk;
  const int64_t M = g.N * g.S;
  g.nchunks = (M + g.chunk - 1) / g.chunk;
  g.stream = t.numel() * t.element_size() >= kStreamBytes;
  return g;
}

// Elements of work per thread below which a call runs on the calling thread alone: waking a
// sleeping worker (OMP_WAIT_POLICY=PASSIVE, or a loaded machine) costs more than the pass over
// a few tens of thousands of elements, and the small activations of a network are many.
constexpr int64_t kMinElementsPerThread = 32768;

// Runs f(t) for t in [0, ntasks) on torch's intra-op threads, as many as `elements` of work
// keep busy.  Threads take tasks from a shared counter rather than fixed ranges, so a thread
// descheduled by other load does not hold the others back; which thread runs a task never
// changes its result.
template <class F>
void run_tasks(int64_t ntasks, int64_t elements, F&& f) {
  if (ntasks <= 0) return;
  const int64_t by_work = std::max<int64_t>(1, elements / kMinElementsPerThread);
  const int64_t workers = std::min<int64_t>({at::get_num_threads(), ntasks, by_work});
  if (workers == 1) {
    for (int64_t t = 0; t < ntasks; ++t) f(t);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) f(t);
  });
}

int64_t elements_of(const Geometry& g) { return g.N * g.C * g.S; }

template <class F>
void for_tasks(const Geometry& g, F&& f) {
  run_tasks(num_tasks(g), elements_of(g), f);
}

// The per-channel merges, f(c0, c1) over ranges of channels: nchunks partials per channel,
// cheap; threads only when there are many.
template <class F>
void for_channels(const Geometry& g, F&& f) {
  const int64_t grain = std::max<int64_t>(64, (int64_t{1} << 16) / std::max<int64_t>(1, g.nchunks));
  at::parallel_for(0, g.C, grain, [&](int64_t b, int64_t e) { f(b, e); });
}

// The ops whose second pass needs per-channel results of the first: pass1(t) for every task,
// finish(c0, c1) for every range of channels, then pass2(t) for every task.  Planes with enough channels go
// channel by channel instead (pass 1 over the channel's chunks, finish, pass 2), so that pass 2
// reads the channel from cache rather than from memory; the tasks and the merges are the same
// either way, and so are the results.
template <class P1, class Fin, class P2>
void two_passes(const Geometry& g, int64_t itemsize, P1&& pass1, Fin&& finish, P2&& pass2) {
  if (!g.rows && g.C >= 4 * at::get_num_threads() && g.N * g.S * itemsize <= kChannelBytes) {
    run_tasks(g.C, elements_of(g), [&](int64_t c) {
      for (int64_t k = 0; k < g.nchunks; ++k) pass1(c * g.nchunks + k);
      finish(c, c + 1);
      for (int64_t k = 0; k < g.nchunks; ++k) pass2(c * g.nchunks + k);
    });
    return;
  }
  for_tasks(g, pass1);
  for_channels(g, finish);
  for_tasks(g, pass2);
}

// Chan's pairwise merge of the chunk statistics of channels [c0, c1), in chunk order, in
// double: mean[c] and var[c] (biased).  Chunk-major with the channels innermost, so that in rows
// mode (partials of a chunk are contiguous over c; an (N, C) input of C = 768 has ~100 chunks)
// the merge vectorises over channels and reads the partials in order, with one division per
// chunk rather than one per chunk and channel.
template <class A>
void merge_stats(const Geometry& g, const at::Tensor& pmean_t, const at::Tensor& pm2_t,
                 int64_t c0, int64_t c1, double* __restrict mean, double* __restrict var) {
  const A* pmean = pmean_t.data_ptr<A>();
  const A* pm2 = pm2_t.data_ptr<A>();
  for (int64_t c = c0; c < c1; ++c) mean[c] = var[c] = 0;
  double n = 0;
  for (int64_t k = 0; k < g.nchunks; ++k) {
    const double nb = static_cast<double>(chunk_count(g, k)), tot = n + nb;
    const double w = nb / tot, w2 = n * w;
    const A* pmk = pmean + slot(g, 0, k);
    const A* pm2k = pm2 + slot(g, 0, k);
    const int64_t cs = g.rows ? 1 : g.nchunks;  // slot stride between channels
#pragma omp simd
    for (int64_t c = c0; c < c1; ++c) {
      const double delta = static_cast<double>(pmk[c * cs]) - mean[c];
      mean[c] += delta * w;
      var[c] += static_cast<double>(pm2k[c * cs]) + delta * delta * w2;
    }
    n = tot;
  }
  for (int64_t c = c0; c < c1; ++c) var[c] /= n;
}

// Mean and biased variance of channel c over all its elements, accumulated in double: the
// fallback for a channel whose single-precision statistics overflowed (a float32 sum of
// squares exceeds 3.4e38 long before the variance does, e.g. values near 1e19).  Only
// non-finite statistics take it, so the hot path keeps its float32 accumulation; a channel that
// holds NaN or Inf stays NaN here too.
void channel_stats_double(const at::Tensor& x3, int64_t c, double& mean, double& var) {
  const at::Tensor xc = x3.select(1, c).to(at::kDouble);
  mean = xc.mean().item<double>();
  var = (xc - mean).square().mean().item<double>();
}

// out[c] = the sum of the chunk partials of channel c, for c in [c0, c1), in chunk order
// (chunk-major, as merge_stats).
void merge_sum(const Geometry& g, const at::Tensor& part_t, int64_t c0, int64_t c1,
               double* __restrict out) {
  const double* part = part_t.data_ptr<double>();
  const int64_t cs = g.rows ? 1 : g.nchunks;
  for (int64_t c = c0; c < c1; ++c) out[c] = 0;
  for (int64_t k = 0; k < g.nchunks; ++k) {
    const double* pk = part + slot(g, 0, k);
#pragma omp simd
    for (int64_t c = c0; c < c1; ++c) out[c] += pk[c * cs];
  }
}

at::Tensor partials(const Geometry& g, at::ScalarType st, const at::Tensor& like) {
  return at::empty({std::max<int64_t>(1, g.C * g.nchunks)}, like.options().dtype(st));
}

// ---- launchers ----------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_batch(const at::Tensor& x3,
                                                             const at::Tensor& alpha,
                                                             const at::Tensor& seed, double eps,
                                                             int64_t index_base) {
  // A label in torch.profiler traces (free when no profiler runs).
  RECORD_FUNCTION("anoise_cpu::forward_batch", std::vector<c10::IValue>());
  check_x3(x3, "x");
  const at::ScalarType st = stat_type(x3);
  const Geometry g = geometry_of(x3);
  check_channels(alpha, "alpha", g.C, st);
  const uint64_t s = seed_of(seed), base = base_of(index_base);
  const DType dt = dtype_of(x3, "x");
  at::Tensor y = at::empty_like(x3);
  at::Tensor mean = at::empty({g.C}, x3.options().dtype(st));
  at::Tensor var = at::empty({g.C}, x3.options().dtype(st));
  if (g.N * g.S == 0) {
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {y, mean, var};
  }
  at::Tensor pmean = partials(g, st, x3), pm2 = partials(g, st, x3);
  at::Tensor scale = at::empty({g.C}, x3.options().dtype(st));
  const Kernels& k = kern();
  const View xv = view_of(x3), yv = view_of(y);
  std::vector<double> merged_mean(g.C), merged_var(g.C);
  AT_DISPATCH_FLOATING_TYPES(st, "anoise_cpu_forward", [&] {
    scalar_t* mean_p = mean.data_ptr<scalar_t>();
    scalar_t* var_p = var.data_ptr<scalar_t>();
    scalar_t* scale_p = scale.data_ptr<scalar_t>();
    const scalar_t* alpha_p = alpha.data_ptr<scalar_t>();
    const auto finish = [&](int64_t c0, int64_t c1) {
      merge_stats<scalar_t>(g, pmean, pm2, c0, c1, merged_mean.data(), merged_var.data());
      for (int64_t c = c0; c < c1; ++c) {
        double m = merged_mean[c], v = merged_var[c];
        if (!std::isfinite(v) || !std::isfinite(m)) channel_stats_double(x3, c, m, v);
        const scalar_t var_c = static_cast<scalar_t>(v);
        // As the reference: sigma = sqrt(var + eps), scale = alpha * sigma, in the stats dtype.
        const scalar_t sigma = std::sqrt(var_c + static_cast<scalar_t>(eps));
        mean_p[c] = static_cast<scalar_t>(m);
        var_p[c] = var_c;
        scale_p[c] = alpha_p[c] * sigma;
      }
    };
    two_passes(
        g, x3.element_size(),
        [&](int64_t t) { k.stats(g, dt, xv, t, pmean.data_ptr(), pm2.data_ptr()); }, finish,
        [&](int64_t t) { k.apply(g, dt, xv, yv, scale.data_ptr(), s, base, t); });
  });
  return {y, mean, var};
}

at::Tensor forward_scaled(const at::Tensor& x3, const at::Tensor& scale, const at::Tensor& seed,
                          int64_t index_base) {
  RECORD_FUNCTION("anoise_cpu::forward_scaled", std::vector<c10::IValue>());
  check_x3(x3, "x");
  const Geometry g = geometry_of(x3);
  check_channels(scale, "scale", g.C, stat_type(x3));
  const uint64_t s = seed_of(seed), base = base_of(index_base);
  const DType dt = dtype_of(x3, "x");
  at::Tensor y = at::empty_like(x3);
  if (g.N * g.S == 0) return y;
  const Kernels& k = kern();
  const View xv = view_of(x3), yv = view_of(y);
  for_tasks(g, [&](int64_t t) { k.apply(g, dt, xv, yv, scale.data_ptr(), s, base, t); });
  return y;
}

// g_c = sum(dy * eps) over channel c, accumulated in double, returned in the statistics dtype.
at::Tensor noise_dot_impl(const at::Tensor& dy3, const Geometry& g, uint64_t s, uint64_t base) {
  const at::ScalarType st = stat_type(dy3);
  at::Tensor out = at::zeros({g.C}, dy3.options().dtype(st));
  if (g.N * g.S == 0) return out;
  at::Tensor part = partials(g, at::kDouble, dy3);
  const Kernels& k = kern();
  const DType dt = dtype_of(dy3, "dy");
  const View dv = view_of(dy3);
  for_tasks(g, [&](int64_t t) { k.noise_dot(g, dt, dv, s, base, t, part.data_ptr<double>()); });
  std::vector<double> sums(g.C);
  AT_DISPATCH_FLOATING_TYPES(st, "anoise_cpu_dot", [&] {
    scalar_t* out_p = out.data_ptr<scalar_t>();
    for_channels(g, [&](int64_t c0, int64_t c1) {
      merge_sum(g, part, c0, c1, sums.data());
      for (int64_t c = c0; c < c1; ++c) out_p[c] = static_cast<scalar_t>(sums[c]);
    });
  });
  return out;
}

at::Tensor noise_dot(const at::Tensor& dy3, const at::Tensor& seed, int64_t index_base) {
  RECORD_FUNCTION("anoise_cpu::noise_dot", std::vector<c10::IValue>());
  check_x3(dy3, "dy");
  return noise_dot_impl(dy3, geometry_of(dy3), seed_of(seed), base_of(index_base));
}

std::tuple<at::Tensor, at::Tensor> backward_batch(const at::Tensor& dy3, const at::Tensor& x3,
                                                  const at::Tensor& alpha, const at::Tensor& mean,
                                                  const at::Tensor& sigma,
                                                  const at::Tensor& seed, int64_t index_base) {
  RECORD_FUNCTION("anoise_cpu::backward_batch", std::vector<c10::IValue>());
  check_x3(x3, "x");
  check_x3(dy3, "dy");
  TORCH_CHECK_VALUE(dy3.sizes() == x3.sizes(), "dy must have x's shape ", x3.sizes(), ", got ",
                    dy3.sizes());
  TORCH_CHECK_TYPE(dy3.scalar_type() == x3.scalar_type(), "dy must have x's dtype ",
                   x3.scalar_type(), ", got ", dy3.scalar_type());
  const at::ScalarType st = stat_type(x3);
  const Geometry g = geometry_of(x3);
  check_channels(alpha, "alpha", g.C, st);
  check_channels(mean, "mean", g.C, st);
  check_channels(sigma, "sigma", g.C, st);
  const uint64_t s = seed_of(seed), base = base_of(index_base);
  at::Tensor gsum = at::zeros({g.C}, x3.options().dtype(st));
  at::Tensor dx = at::empty_like(dy3);
  if (g.N * g.S == 0) return {dx, gsum};
  at::Tensor part = partials(g, at::kDouble, dy3);
  at::Tensor coef = at::empty({g.C}, x3.options().dtype(st));
  const double M = static_cast<double>(g.N * g.S);
  const Kernels& k = kern();
  const DType dt = dtype_of(x3, "x");
  const View dv = view_of(dy3), xv = view_of(x3), ov = view_of(dx);
  std::vector<double> sums(g.C);
  AT_DISPATCH_FLOATING_TYPES(st, "anoise_cpu_backward", [&] {
    const scalar_t* alpha_p = alpha.data_ptr<scalar_t>();
    const scalar_t* sigma_p = sigma.data_ptr<scalar_t>();
    scalar_t* gsum_p = gsum.data_ptr<scalar_t>();
    scalar_t* coef_p = coef.data_ptr<scalar_t>();
    const auto finish = [&](int64_t c0, int64_t c1) {
      merge_sum(g, part, c0, c1, sums.data());
      for (int64_t c = c0; c < c1; ++c) {
        const double gc = sums[c], a = alpha_p[c], sg = sigma_p[c];
        gsum_p[c] = static_cast<scalar_t>(gc);
        coef_p[c] = static_cast<scalar_t>(a * gc / (M * sg));
      }
    };
    two_passes(
        g, x3.element_size(),
        [&](int64_t t) { k.noise_dot(g, dt, dv, s, base, t, part.data_ptr<double>()); }, finish,
        [&](int64_t t) { k.dx(g, dt, dv, xv, ov, coef.data_ptr(), mean.data_ptr(), t); });
  });
  return {dx, gsum};
}

// ---- plain eager training calls: one autograd node in C++ -------------------------------------
//
// The same formulas as anoise/ops.py's forward_batch autograd (SPEC section 2), for eager calls
// that nothing traces or transforms: forward and backward then run without Python (the
// Python autograd.Function costs ~0.1 ms of interpreter time per layer and step, as much as
// a small layer's kernels).  Backward, for y = x + alpha_c sigma_c eps:
//   G_c = sum(dy * eps) over channel c (the noise regenerated from the seed),
//   dalpha_c = sigma_c G_c,
//   dx = dy + alpha_c G_c (x - mean_c) / (M sigma_c)   with stats_grad (backward_batch),
//   dx = dy                                             without (sigma is then a constant).

constexpr const char* kNoSecondOrder =
    "anoise: second derivatives (differentiating a gradient that flowed through an adaptive "
    "noise layer) are not implemented";

// Identity on a gradient the kernels computed from the sources: differentiating it raises.
struct FirstOrderOnly : public torch::autograd::Function<FirstOrderOnly> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& grad,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&) {
    return grad.view_as(grad);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK(false, kNoSecondOrder);
  }
};

// grad itself, or (when backward is differentiated: create_graph=True) marked as above.
at::Tensor first_order_only(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b,
                            const at::Tensor& c) {
  const auto needs = [](const at::Tensor& t) { return t.defined() && t.requires_grad(); };
  if (!at::GradMode::is_enabled() || !(needs(a) || needs(b) || needs(c))) return grad;
  // A custom function takes no undefined input: an absent source is replaced by grad itself.
  const auto or_grad = [&](const at::Tensor& t) { return t.defined() ? t : grad; };
  return FirstOrderOnly::apply(grad, or_grad(a), or_grad(b), or_grad(c));
}

at::Tensor view3d(const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() >= 2, "x must have at least 2 dims (N, C, *S), got shape ",
                    t.sizes());
  return t.reshape({t.size(0), t.size(1), -1});
}

struct EagerBatch : public torch::autograd::Function<EagerBatch> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& x, const at::Tensor& alpha,
                                                const at::Tensor& seed, double eps,
                                                bool stats_grad) {
    auto [y3, mean, var] = forward_batch(view3d(x), alpha, seed, eps, 0);
    // A tensor of its own rather than a view of y3: autograd forbids in-place ops (relu_) on
    // a view that a custom function returns.
    at::Tensor y = y3.reshape(x.sizes()).detach();
    ctx->save_for_backward({stats_grad ? x : at::Tensor(), alpha, mean, var, seed});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["stats_grad"] = stats_grad;
    ctx->mark_non_differentiable({mean, var});
    return {y, mean, var};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &alpha = saved[1], &mean = saved[2], &var = saved[3],
                     &seed = saved[4];
    const bool stats_grad = ctx->saved_data["stats_grad"].toBool();
    const bool need_x = ctx->needs_input_grad(0), need_alpha = ctx->needs_input_grad(1);
    const at::Tensor& dy = grads[0];
    at::Tensor dx, dalpha;
    if (!dy.defined() || !(need_x || need_alpha)) return {dx, dalpha, {}, {}, {}};
    at::Tensor sigma, g;
    {
      at::NoGradGuard no_grad;
      sigma = (var + ctx->saved_data["eps"].toDouble()).sqrt();
      if (need_x && stats_grad) {
        auto [dx3, g3] = backward_batch(view3d(dy), view3d(x), alpha, mean, sigma, seed, 0);
        dx = dx3.reshape(dy.sizes());
        g = g3;
      } else if (need_alpha) {
        g = noise_dot(view3d(dy), seed, 0);
      }
    }
    if (need_x) dx = stats_grad ? first_order_only(dx, dy, x, alpha) : dy;
    if (need_alpha) dalpha = sigma * first_order_only(g, dy, x, alpha);
    return {dx, dalpha, {}, {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> eager_batch(const at::Tensor& x,
                                                           const at::Tensor& alpha,
                                                           const at::Tensor& seed, double eps,
                                                           bool stats_grad) {
  const auto out = EagerBatch::apply(x, alpha, seed, eps, stats_grad);
  return {out[0], out[1], out[2]};
}

// eps for logical indices 0 .. numel-1 (the noise alone, for benchmarks and tests).
at::Tensor randn(int64_t numel, const at::Tensor& seed) {
  TORCH_CHECK_VALUE(numel >= 0, "numel must be >= 0, got ", numel);
  const uint64_t s = seed_of(seed);
  at::Tensor out = at::empty({numel}, seed.options().dtype(at::kFloat));
  float* p = out.data_ptr<float>();
  const Kernels& k = kern();
  const int64_t tasks = (numel + kRandnChunk - 1) / kRandnChunk;
  run_tasks(tasks, numel, [&](int64_t t) {
    const int64_t begin = t * kRandnChunk, n = std::min(numel - begin, kRandnChunk);
    k.randn(p + begin, n, static_cast<uint64_t>(begin), 1, s);
  });
  return out;
}

// Test hook: eps at element indices start, start + step, ... (count values) through the
// kernels' noise path.
at::Tensor randn_range(int64_t start, int64_t count, int64_t step, const at::Tensor& seed) {
  TORCH_CHECK_VALUE(start >= 0 && count >= 0 && step >= 1,
                    "need start >= 0, count >= 0 and step >= 1, got ", start, ", ", count, ", ",
                    step);
  const uint64_t s = seed_of(seed);
  at::Tensor out = at::empty({count}, seed.options().dtype(at::kFloat));
  kern().randn(out.data_ptr<float>(), count, static_cast<uint64_t>(start),
               static_cast<uint64_t>(step), s);
  return out;
}

// Test hook: the stream per group j of `groups` (int64, >= 0): the Philox words (G, 4) as int64,
// rand4x (G, 4) and randn4x (G, 4).
std::tuple<at::Tensor, at::Tensor, at::Tensor> draw_at(const at::Tensor& groups,
                                                       const at::Tensor& seed) {
  ANOISE_CHECK_CPU(groups, "groups");
  TORCH_CHECK_TYPE(groups.scalar_type() == at::kLong, "groups must be int64, got ",
                   groups.scalar_type());
  TORCH_CHECK_VALUE(groups.dim() == 1, "groups must be 1-D, got shape ", groups.sizes());
  TORCH_CHECK_VALUE(groups.numel() == 0 || groups.min().item<int64_t>() >= 0,
                    "groups must be >= 0");
  const uint64_t s = seed_of(seed);
  at::Tensor gr = groups.contiguous();
  const int64_t n = gr.numel();
  at::Tensor words = at::empty({n, 4}, gr.options());
  at::Tensor rand = at::empty({n, 4}, gr.options().dtype(at::kFloat));
  at::Tensor rn = at::empty({n, 4}, gr.options().dtype(at::kFloat));
  kern().draw_at(gr.data_ptr<int64_t>(), n, s, words.data_ptr<int64_t>(), rand.data_ptr<float>(),
                 rn.data_ptr<float>());
  return {words, rand, rn};
}

std::vector<std::string> isa_list() {
  std::vector<std::string> out;
  for (const Kernels* k : supported_kernels()) out.emplace_back(k->name);
  return out;
}

std::string isa() { return kern().name; }

void set_isa(const std::string& name) {
  const Kernels* k = find_kernels(name);
  TORCH_CHECK_VALUE(k != nullptr, "isa ", name, " is not supported here; supported: ",
                    c10::Join(", ", isa_list()));
  active().store(k);
}

}  // namespace
}  // namespace anoise_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace ac = anoise_cpu;
  using release = py::call_guard<py::gil_scoped_release>;
  m.doc() = "anoise fused CPU kernels (see anoise/backends.py for the launcher interface)";
  m.def("forward_batch", &ac::forward_batch, release(), py::arg("x3"), py::arg("alpha"),
        py::arg("seed"), py::arg("eps"), py::kw_only(), py::arg("index_base") = 0);
  m.def("forward_scaled", &ac::forward_scaled, release(), py::arg("x3"), py::arg("scale"),
        py::arg("seed"), py::kw_only(), py::arg("index_base") = 0);
  m.def("backward_batch", &ac::backward_batch, release(), py::arg("dy3"), py::arg("x3"),
        py::arg("alpha"), py::arg("mean"), py::arg("sigma"), py::arg("seed"), py::kw_only(),
        py::arg("index_base") = 0);
  m.def("noise_dot", &ac::noise_dot, release(), py::arg("dy3"), py::arg("seed"), py::kw_only(),
        py::arg("index_base") = 0);
  m.def("eager_batch", &ac::eager_batch, release(), py::arg("x"), py::arg("alpha"),
        py::arg("seed"), py::arg("eps"), py::arg("stats_grad"),
        "forward_batch as one autograd node (plain eager calls; x of shape (N, C, *S))");
  m.def("randn", &ac::randn, release(), py::arg("numel"), py::arg("seed"));
  m.def("randn_range", &ac::randn_range, release(), py::arg("start"), py::arg("count"),
        py::arg("step"), py::arg("seed"));
  m.def("draw_at", &ac::draw_at, release(), py::arg("groups"), py::arg("seed"));
  m.def("isa_list", &ac::isa_list, "instruction sets this CPU can run, narrowest first");
  m.def("isa", &ac::isa, "the instruction set in use");
  m.def("set_isa", &ac::set_isa, py::arg("name"), "switch instruction set (tests, benchmarks)");
}
