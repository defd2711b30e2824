// torch binding of the CUDA kernels (adaptive_noise.cu): argument checks, output allocation,
// the current stream, and readable errors after every launch.  Mirrors csrc/cpu/adaptive_noise.cpp.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <algorithm>
#include <limits>

#include "adaptive_noise.h"

namespace anoise_cuda {
namespace binding {  // not the launchers of adaptive_noise.h, whose names these share

#define ANOISE_CHECK_CUDA(t, name) \
  TORCH_CHECK_VALUE((t).is_cuda(), name, " must be a CUDA tensor, got one on ", (t).device())

#define ANOISE_CHECK_SAME_DEVICE(t, x, name)                                              \
  TORCH_CHECK_VALUE((t).device() == (x).device(), name, " is on ", (t).device(), " but x is on ", \
                    (x).device())

// Raise with the kernel's name and CUDA's message if a launch failed.
void check(const Status& st, const char* op) {
  TORCH_CHECK(st.err == cudaSuccess, "anoise cuda backend: ", op, ": launch of ",
              st.kernel ? st.kernel : "?", " failed: ", cudaGetErrorString(st.err));
}

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
  ANOISE_CHECK_CUDA(x, name);
  TORCH_CHECK_VALUE(x.dim() == 3, name, " must be a 3-D (N, C, S) view, got shape ", x.sizes());
  dtype_of(x, name);
}

void check_channels(const at::Tensor& v, const at::Tensor& x, const char* name,
                    at::ScalarType st) {
  ANOISE_CHECK_CUDA(v, name);
  ANOISE_CHECK_SAME_DEVICE(v, x, name);
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == x.size(1), name, " must have shape (",
                    x.size(1), ",) (one value per channel), got ", v.sizes());
  TORCH_CHECK_TYPE(v.scalar_type() == st, name, " must have dtype ", st,
                   " (the statistics dtype of the input), got ", v.scalar_type());
  TORCH_CHECK_VALUE(v.is_contiguous(), name, " must be contiguous");
}

// The seed is read on the device (no host synchronisation), so it must live on `like`'s
// device; checked before any device guard, which would assert on a CPU tensor.
const int64_t* seed_ptr(const at::Tensor& seed, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(seed.device() == like.device(), "seed must be on the same device as ",
                    like_name, " (", like.device(), "), got a tensor on ", seed.device());
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "seed must be an int64 tensor, got ",
                   seed.scalar_type());
  TORCH_CHECK_VALUE(seed.numel() == 1, "seed must hold one value, got shape ", seed.sizes());
  return seed.data_ptr<int64_t>();
}

uint64_t base_of(int64_t index_base) {
  TORCH_CHECK_VALUE(index_base >= 0, "index_base must be >= 0, got ", index_base);
  return static_cast<uint64_t>(index_base);
}

View view_of(const at::Tensor& t) {
  return View{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

Shape shape_of(const at::Tensor& t) { return Shape{t.size(0), t.size(1), t.size(2)}; }

at::Tensor partials(int64_t n, at::ScalarType st, const at::Tensor& like) {
  return at::empty({n}, like.options().dtype(st));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_batch(const at::Tensor& x3,
                                                             const at::Tensor& alpha,
                                                             const at::Tensor& seed, double eps,
                                                             int64_t index_base) {
  check_x3(x3, "x");
  const uint64_t base = base_of(index_base);
  const c10::cuda::CUDAGuard guard(x3.device());
  const at::ScalarType st = stat_type(x3);
  check_channels(alpha, x3, "alpha", st);
  const int64_t* s = seed_ptr(seed, x3, "x");
  const Shape sh = shape_of(x3);
  at::Tensor y = at::empty_like(x3);
  at::Tensor mean = at::empty({sh.C}, x3.options().dtype(st));
  at::Tensor var = at::empty({sh.C}, x3.options().dtype(st));
  if (sh.N * sh.S == 0 || sh.C == 0) {
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {y, mean, var};
  }
  const View xv = view_of(x3);
  const int64_t np = stats_partials(sh, xv);
  at::Tensor pmean = partials(np, st, x3), pm2 = partials(np, st, x3);
  at::Tensor scale = at::empty({sh.C}, x3.options().dtype(st));
  const DType dt = dtype_of(x3, "x");
  check(forward_stats(dt, sh, xv, pmean.data_ptr(), pm2.data_ptr(), alpha.data_ptr(), eps,
                      mean.data_ptr(), var.data_ptr(), scale.data_ptr(), stream()),
        "forward_batch");
  check(apply_noise(dt, sh, xv, view_of(y), scale.data_ptr(), s, base, stream()),
        "forward_batch");
  return {y, mean, var};
}

at::Tensor forward_scaled(const at::Tensor& x3, const at::Tensor& scale, const at::Tensor& seed,
                          int64_t index_base) {
  check_x3(x3, "x");
  const uint64_t base = base_of(index_base);
  const c10::cuda::CUDAGuard guard(x3.device());
  check_channels(scale, x3, "scale", stat_type(x3));
  const int64_t* s = seed_ptr(seed, x3, "x");
  at::Tensor y = at::empty_like(x3);
  if (y.numel() == 0) return y;
  check(apply_noise(dtype_of(x3, "x"), shape_of(x3), view_of(x3), view_of(y), scale.data_ptr(),
                    s, base, stream()),
        "forward_scaled");
  return y;
}

at::Tensor noise_dot(const at::Tensor& dy3, const at::Tensor& seed, int64_t index_base) {
  check_x3(dy3, "dy");
  const uint64_t base = base_of(index_base);
  const c10::cuda::CUDAGuard guard(dy3.device());
  const int64_t* s = seed_ptr(seed, dy3, "dy");
  const at::ScalarType st = stat_type(dy3);
  const Shape sh = shape_of(dy3);
  at::Tensor out = at::zeros({sh.C}, dy3.options().dtype(st));
  if (dy3.numel() == 0) return out;
  const View dv = view_of(dy3);
  at::Tensor part = partials(dot_partials(sh, dv, base), st, dy3);
  check(anoise_cuda::noise_dot(dtype_of(dy3, "dy"), sh, dv, s, base, part.data_ptr(),
                               out.data_ptr(), nullptr, nullptr, nullptr, stream()),
        "noise_dot");
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_batch(const at::Tensor& dy3, const at::Tensor& x3,
                                                  const at::Tensor& alpha, const at::Tensor& mean,
                                                  const at::Tensor& sigma,
                                                  const at::Tensor& seed, int64_t index_base) {
  check_x3(x3, "x");
  check_x3(dy3, "dy");
  const uint64_t base = base_of(index_base);
  const c10::cuda::CUDAGuard guard(x3.device());
  ANOISE_CHECK_SAME_DEVICE(dy3, x3, "dy");
  TORCH_CHECK_VALUE(dy3.sizes() == x3.sizes(), "dy must have x's shape ", x3.sizes(), ", got ",
                    dy3.sizes());
  TORCH_CHECK_TYPE(dy3.scalar_type() == x3.scalar_type(), "dy must have x's dtype ",
                   x3.scalar_type(), ", got ", dy3.scalar_type());
  const at::ScalarType st = stat_type(x3);
  check_channels(alpha, x3, "alpha", st);
  check_channels(mean, x3, "mean", st);
  check_channels(sigma, x3, "sigma", st);
  const int64_t* s = seed_ptr(seed, x3, "x");
  const Shape sh = shape_of(x3);
  at::Tensor gsum = at::zeros({sh.C}, x3.options().dtype(st));
  at::Tensor dx = at::empty_like(dy3);
  if (x3.numel() == 0) return {dx, gsum};
  const View dv = view_of(dy3);
  at::Tensor part = partials(dot_partials(sh, dv, base), st, x3);
  at::Tensor coef = at::empty({sh.C}, x3.options().dtype(st));
  const DType dt = dtype_of(x3, "x");
  // Each pass walks each tensor in its own layout: g over dy's, dx over dx's.
  check(anoise_cuda::noise_dot(dt, sh, dv, s, base, part.data_ptr(), gsum.data_ptr(),
                               alpha.data_ptr(), sigma.data_ptr(), coef.data_ptr(), stream()),
        "backward_batch");
  check(input_grad(dt, sh, dv, view_of(x3), view_of(dx), coef.data_ptr(), mean.data_ptr(),
                   stream()),
        "backward_batch");
  return {dx, gsum};
}

// Test hooks and the normal generator: eps at element indices start + j * step, j < count.
at::Tensor randn_range(int64_t start, int64_t count, int64_t step, const at::Tensor& seed) {
  TORCH_CHECK_VALUE(start >= 0 && count >= 0 && step >= 1,
                    "need start >= 0, count >= 0 and step >= 1, got ", start, ", ", count, ", ",
                    step);
  TORCH_CHECK_VALUE(seed.is_cuda(), "seed must be a CUDA tensor (the cuda backend draws on its ",
                    "device), got a tensor on ", seed.device());
  const c10::cuda::CUDAGuard guard(seed.device());
  const int64_t* s = seed_ptr(seed, seed, "seed");
  at::Tensor out = at::empty({count}, seed.options().dtype(at::kFloat));
  check(anoise_cuda::randn(out.data_ptr<float>(), count, start, step, s, stream()), "randn");
  return out;
}

at::Tensor randn(int64_t numel, const at::Tensor& seed) {
  TORCH_CHECK_VALUE(numel >= 0, "numel must be >= 0, got ", numel);
  return randn_range(0, numel, 1, seed);
}

// (words, rand4, randn4), each (G, 4): the Philox words (as int64), the uniforms and the
// kernels' normals of the given group indices.
std::tuple<at::Tensor, at::Tensor, at::Tensor> draw_at(const at::Tensor& groups,
                                                       const at::Tensor& seed) {
  ANOISE_CHECK_CUDA(groups, "groups");
  TORCH_CHECK_TYPE(groups.scalar_type() == at::kLong, "groups must be int64, got ",
                   groups.scalar_type());
  TORCH_CHECK_VALUE(groups.dim() == 1, "groups must be 1-D, got shape ", groups.sizes());
  const int64_t* s = seed_ptr(seed, groups, "groups");
  const c10::cuda::CUDAGuard guard(groups.device());
  at::Tensor g = groups.contiguous();
  const int64_t n = g.numel();
  at::Tensor words = at::empty({n, 4}, g.options());
  at::Tensor rand4 = at::empty({n, 4}, g.options().dtype(at::kFloat));
  at::Tensor randn4 = at::empty({n, 4}, g.options().dtype(at::kFloat));
  check(anoise_cuda::draw_at(g.data_ptr<int64_t>(), n, s, words.data_ptr<int64_t>(),
                             rand4.data_ptr<float>(), randn4.data_ptr<float>(), stream()),
        "draw_at");
  return {words, rand4, randn4};
}

}  // namespace binding
}  // namespace anoise_cuda

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace ac = anoise_cuda::binding;
  m.doc() = "anoise CUDA kernels (see anoise/backends.py for the launcher interface)";
  m.def("forward_batch", &ac::forward_batch, py::arg("x3"), py::arg("alpha"), py::arg("seed"),
        py::arg("eps"), py::kw_only(), py::arg("index_base") = 0);
  m.def("forward_scaled", &ac::forward_scaled, py::arg("x3"), py::arg("scale"), py::arg("seed"),
        py::kw_only(), py::arg("index_base") = 0);
  m.def("backward_batch", &ac::backward_batch, py::arg("dy3"), py::arg("x3"), py::arg("alpha"),
        py::arg("mean"), py::arg("sigma"), py::arg("seed"), py::kw_only(),
        py::arg("index_base") = 0);
  m.def("noise_dot", &ac::noise_dot, py::arg("dy3"), py::arg("seed"), py::kw_only(),
        py::arg("index_base") = 0);
  m.def("randn", &ac::randn, py::arg("numel"), py::arg("seed"));
  m.def("randn_range", &ac::randn_range, py::arg("start"), py::arg("count"), py::arg("step"),
        py::arg("seed"));
  m.def("draw_at", &ac::draw_at, py::arg("groups"), py::arg("seed"));
}
