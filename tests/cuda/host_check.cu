// Host-side checks of csrc/cuda/stream.cuh, the code the CUDA kernels run for the noise and
// its indexing, compiled for the CPU (nvcc, or g++ -x c++).  Driven by tests/test_cuda_host.py.
//
//   host_check vectors            stdin: "seed group" lines; stdout per line: the 4 words,
//                                 the 4 uniforms as float bits (hex), the 4 normals
//   host_check accuracy DRAWS     error of the normals over DRAWS draws against the stream
//                                 evaluated in double, rsqrt taken anywhere within its 2 ulp
//   host_check scan STEP          every STEP-th word value: relative error of the radius and
//                                 absolute error of cos / sin, each against double
//   host_check mapping            the kernels' element-to-group mapping over straddling shapes
//   host_check arithmetic         Divider against division; dx = dy where coef == 0
// Each mode prints "ok ..." on success, or "FAIL ..." lines and exits 1.
#include <stdint.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "stream.cuh"

using namespace anoise_cuda;

namespace {

int failures = 0;

void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char* fmt, ...) {
  if (++failures > 20) return;
  va_list ap;
  va_start(ap, fmt);
  std::printf("FAIL ");
  std::vprintf(fmt, ap);
  std::printf("\n");
  va_end(ap);
}

// ---- vectors ---------------------------------------------------------------------------------

int vectors() {
  unsigned long long seed, group;
  while (std::scanf("%llu %llu", &seed, &group) == 2) {
    const Words w = philox(group, make_key(seed));
    const uint32_t ws[4] = {w.w0, w.w1, w.w2, w.w3};
    const Normal4 n = normal4(w);
    for (uint32_t v : ws) std::printf("%u ", v);
    for (uint32_t v : ws) std::printf("%08x ", as_uint(uniform(v)));
    std::printf("%.9g %.9g %.9g %.9g\n", n.v[0], n.v[1], n.v[2], n.v[3]);
  }
  return 0;
}

// ---- accuracy ----------------------------------------------------------------------------------

// The stream with exact transcendentals: the uniforms and the float product 6.2831855f * b
// as SPEC section 3 writes them, log, sqrt, cos and sin in double.
void reference_pair(uint32_t wa, uint32_t wb, double& nc, double& ns) {
  const float a = std::fmax(uniform(wa), kMinU1);
  const double r = std::sqrt(-2.0 * std::log((double)a));
  const double t = (double)(6.2831855f * uniform(wb));
  nc = r * std::cos(t);
  ns = r * std::sin(t);
}

float ulps(float x, int d) {
  for (; d > 0; --d) x = std::nextafter(x, INFINITY);
  for (; d < 0; ++d) x = std::nextafter(x, -INFINITY);
  return x;
}

struct Worst {
  double abs_err = 0, ratio = 0, at_ref = 0, at_got = 0;
  void add(double got, double ref) {
    const double err = std::fabs(got - ref);
    const double r = err / (1e-5 + 1e-5 * std::fabs(ref));  // torch's assert_close bound
    if (err > abs_err) abs_err = err;
    if (r > ratio) ratio = r, at_ref = ref, at_got = got;
  }
};

int accuracy(double draws) {
  Worst kernel, bound;
  const uint64_t seeds[4] = {0, 1234567, 0x9E3779B97F4A7C15ull, 0xFFFFFFFFFFFFFFFFull};
  const uint64_t groups = (uint64_t)(draws / 4 / 4) + 1;
  for (uint64_t seed : seeds) {
    const Key key = make_key(seed);
    for (uint64_t g = 0; g < groups; ++g) {
      const uint64_t j = g * 0x9E3779B1ull;  // spread over the 64-bit counter space
      const Words w = philox(j, key);
      const uint32_t pairs[2][2] = {{w.w0, w.w1}, {w.w2, w.w3}};
      for (const auto& pr : pairs) {
        double rc, rs;
        reference_pair(pr[0], pr[1], rc, rs);
        float nc, ns;
        box_muller(pr[0], pr[1], nc, ns);
        kernel.add(nc, rc);
        kernel.add(ns, rs);
        // The device's rsqrt may be any float within 2 ulp of the correctly rounded one.
        const float x = neg2log(std::fmax(uniform(pr[0]), kMinU1));
        uint32_t sign;
        const CosSin cs = turn(pr[1], sign);
        for (int d = -2; d <= 2; ++d) {
          const float r = as_float(as_uint(mul_rn(x, ulps(rsqrt_approx(x), d))) ^ sign);
          bound.add(mul_rn(r, cs.c), rc);
          bound.add(mul_rn(r, cs.s), rs);
        }
      }
    }
  }
  const double n = 4.0 * 4.0 * (double)groups;
  std::printf("draws %.0f\n", n);
  std::printf("host rsqrt: max abs err %.3g, max err / (1e-5 + 1e-5 |ref|) %.3f (ref %.6g got %.6g)\n",
              kernel.abs_err, kernel.ratio, kernel.at_ref, kernel.at_got);
  std::printf("rsqrt within 2 ulp: max abs err %.3g, max err / (1e-5 + 1e-5 |ref|) %.3f (ref %.6g got %.6g)\n",
              bound.abs_err, bound.ratio, bound.at_ref, bound.at_got);
  if (bound.ratio >= 1) fail("a normal is outside 1e-5 (abs and rel) of the stream");
  if (failures) return 1;
  std::printf("ok accuracy\n");
  return 0;
}

// Every STEP-th 32-bit word: the two factors of a normal separately.
int scan(uint64_t step) {
  double r_rel = 0, cs_abs = 0, ang_abs = 0;
  uint64_t count = 0;
  for (uint64_t v = 0; v < (1ull << 32); v += step, ++count) {
    const uint32_t w = (uint32_t)v;
    const float x = neg2log(std::fmax(uniform(w), kMinU1));
    const double r_ref = std::sqrt(-2.0 * std::log((double)std::fmax(uniform(w), kMinU1)));
    for (int d = -2; d <= 2; ++d) {
      const double r = mul_rn(x, ulps(rsqrt_approx(x), d));
      r_rel = std::fmax(r_rel, std::fabs(r - r_ref) / r_ref);
    }
    uint32_t sign;
    const CosSin cs = turn(w, sign);
    const double sg = sign ? -1.0 : 1.0;
    const double t_ref = (double)(6.2831855f * uniform(w));
    const double t_exact = 6.283185307179586477 * (double)uniform(w);
    cs_abs = std::fmax(cs_abs, std::fabs(sg * cs.c - std::cos(t_exact)));
    cs_abs = std::fmax(cs_abs, std::fabs(sg * cs.s - std::sin(t_exact)));
    ang_abs = std::fmax(ang_abs, std::fabs(std::cos(t_ref) - std::cos(t_exact)));
    ang_abs = std::fmax(ang_abs, std::fabs(std::sin(t_ref) - std::sin(t_exact)));
  }
  std::printf("words %llu\n", (unsigned long long)count);
  std::printf("radius: max relative error %.3g (rsqrt within 2 ulp)\n", r_rel);
  std::printf("cos, sin of 2 pi b: max absolute error %.3g\n", cs_abs);
  std::printf("stream's float angle 6.2831855f * b vs 2 pi b: up to %.3g in cos, sin\n", ang_abs);
  // |n - n_ref| <= r_rel |n| + r_max (cs_abs + ang_abs), r_max = sqrt(-2 ln 1e-7) < 5.68.
  const double bound = 5.68 * (cs_abs + ang_abs);
  std::printf("bound: |n - n_ref| <= %.3g |n| + %.3g\n", r_rel, bound);
  if (r_rel >= 1e-5 || bound >= 1e-5) fail("the bound exceeds 1e-5");
  if (failures) return 1;
  std::printf("ok scan\n");
  return 0;
}

// ---- mapping -----------------------------------------------------------------------------------

// Every element of the call must be visited once, with its own group and component.
struct Coverage {
  std::string what;
  uint64_t base;
  int64_t numel, S, C;
  std::vector<int> seen;
  Coverage(std::string w, uint64_t b, int64_t N, int64_t C_, int64_t S_)
      : what(std::move(w)), base(b), numel(N * C_ * S_), S(S_), C(C_), seen(N * C_ * S_, 0) {}
  void visit(int64_t l, uint64_t group, int comp, int64_t channel) {
    if (l < 0 || l >= numel) return fail("%s: local index %lld out of range", what.c_str(), (long long)l);
    const uint64_t i = base + (uint64_t)l;
    if (group != i >> 2 || (uint64_t)comp != (i & 3))
      fail("%s: element %lld drew component %d of group %llu, not %llu of %llu", what.c_str(),
           (long long)l, comp, (unsigned long long)group, (unsigned long long)(i & 3),
           (unsigned long long)(i >> 2));
    if (channel != (l / S) % C)
      fail("%s: element %lld given channel %lld, not %lld", what.c_str(), (long long)l,
           (long long)channel, (long long)((l / S) % C));
    ++seen[l];
  }
  void done() {
    for (int64_t l = 0; l < numel; ++l)
      if (seen[l] != 1) return fail("%s: element %lld visited %d times", what.c_str(), (long long)l, seen[l]);
  }
};

template <class I>
void check_flat(uint64_t base, int64_t N, int64_t C, int64_t S) {
  char name[160];
  std::snprintf(name, sizeof name, "flat<%zu> N=%lld C=%lld S=%lld base=%llu", sizeof(I),
                (long long)N, (long long)C, (long long)S, (unsigned long long)base);
  Coverage cov(name, base, N, C, S);
  const FlatPlan p{base, cov.numel, S, C, groups_in_run(base, cov.numel)};
  const Divider<I> dS = make_divider<I>((I)S), dC = make_divider<I>((I)C);
  const bool fast = S % 4 == 0 && base % 4 == 0;
  for (int64_t t = 0; t < p.groups; ++t) {
    Slot sl[4];
    flat_slots(p, dS, dC, t, sl);
    for (int k = 0; k < 4; ++k)
      if (sl[k].l >= 0) cov.visit(sl[k].l, (base >> 2) + (uint64_t)t, k, sl[k].c);
    if (fast)  // the fast kernel: one channel per group, the channel of its first element
      for (int k = 0; k < 4; ++k)
        if ((int64_t)channel_of((I)(4 * t), dS, dC) != sl[k].c)
          fail("%s: fast path channel differs at item %lld", name, (long long)t);
  }
  cov.done();
}

// inject_runs: threads (a, b, slot) over a RunPlan built from the strides of a layout.
void check_runs(uint64_t base, int64_t N, int64_t C, int64_t S, const char* layout) {
  int64_t sN, sC, sS;
  if (!std::strcmp(layout, "channels_last")) sN = S * C, sC = 1, sS = C;
  else if (!std::strcmp(layout, "transposed")) sN = 1, sC = N, sS = N * C;  // (N,C) .t()
  else sN = 2 * C * S, sC = 2 * S, sS = 2;                                  // strided NCHW
  char name[160];
  std::snprintf(name, sizeof name, "runs %s N=%lld C=%lld S=%lld base=%llu", layout,
                (long long)N, (long long)C, (long long)S, (unsigned long long)base);
  Coverage cov(name, base, N, C, S);
  RunMem m;
  bool lanes_on_run;
  const RunPlan p = run_plan(N, C, S, sN, sC, sS, base, m, lanes_on_run);
  const bool fast = p.slots * 4 == p.L;
  std::set<int64_t> offsets;
  for (int64_t a = 0; a < p.NA; ++a)
    for (int64_t b = 0; b < p.NB; ++b)
      for (int64_t t = 0; t < p.slots; ++t) {
        const RunItem it = run_item(run_start(p, a, b), p.L, t);
        if (!fast && !it.valid) continue;
        const int64_t q0 = fast ? 4 * t : it.q0;
        for (int k = 0; k < 4; ++k) {
          const int64_t q = q0 + k;
          if (!fast && (q < 0 || q >= p.L)) continue;
          const int64_t l = (int64_t)(run_start(p, a, b) - base) + q;
          const int64_t channel = p.role == 0 ? a : (p.role == 1 ? b : q);
          cov.visit(l, it.group, k, channel);
          // The memory offset the kernel uses must be the element's own.
          const int64_t n = l / (C * S), c = (l / S) % C, s = l % S;
          if (a * m.a + b * m.b + q * m.q != n * sN + c * sC + s * sS)
            fail("%s: element %lld read at the wrong offset", name, (long long)l);
        }
      }
  cov.done();
}

// dot_planes / dot_rows: items (n, slot) of each channel, numbered n * slots + t.
void check_dot_runs(uint64_t base, int64_t N, int64_t C, int64_t S) {
  char name[160];
  std::snprintf(name, sizeof name, "dot runs N=%lld C=%lld S=%lld base=%llu", (long long)N,
                (long long)C, (long long)S, (unsigned long long)base);
  Coverage cov(name, base, N, C, S);
  const int64_t slots = run_slots(S, S % 4 == 0 && base % 4 == 0);
  const bool fast = slots * 4 == S;
  const Divider<uint32_t> d = make_divider<uint32_t>((uint32_t)slots);
  for (int64_t c = 0; c < C; ++c)
    for (uint32_t w = 0; w < (uint32_t)(N * slots); ++w) {
      const uint32_t n = div(w, d), t = w - n * d.d;
      const RunItem it = run_item(base + (uint64_t)(((int64_t)n * C + c) * S), S, t);
      if (!fast && !it.valid) continue;
      const int64_t q0 = fast ? 4 * (int64_t)t : it.q0;
      for (int k = 0; k < 4; ++k)
        if (fast || (q0 + k >= 0 && q0 + k < S))
          cov.visit(((int64_t)n * C + c) * S + q0 + k, it.group, k, c);
    }
  cov.done();
}

// dot_quads (S == 1): channels 4j..4j+3 of row n.
void check_quads(uint64_t base, int64_t N, int64_t C) {
  char name[160];
  std::snprintf(name, sizeof name, "dot quads N=%lld C=%lld base=%llu", (long long)N,
                (long long)C, (unsigned long long)base);
  Coverage cov(name, base, N, C, 1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; 4 * j < C; ++j) {
      const uint64_t P = base + (uint64_t)(n * C + 4 * j);
      for (int i = 0; i < 4 && 4 * j + i < C; ++i) {
        int comp;
        const int which = quad_source(P, i, comp);
        cov.visit(n * C + 4 * j + i, (P >> 2) + (uint64_t)which, comp, 4 * j + i);
      }
    }
  cov.done();
}

int mapping() {
  const uint64_t bases[] = {0, 1, 2, 3, 4, 4294967293ull, 4294967296ull + 6, (1ull << 62) + 1};
  const int64_t shapes[][3] = {{3, 7, 13}, {2, 3, 1}, {5, 4, 1}, {2, 5, 2}, {3, 2, 3},
                               {2, 3, 8}, {2, 64, 1}, {1, 1, 9}, {4, 1, 1}, {2, 6, 49}};
  int cases = 0;
  for (uint64_t base : bases)
    for (const auto& sh : shapes) {
      check_flat<uint32_t>(base, sh[0], sh[1], sh[2]);
      check_flat<uint64_t>(base, sh[0], sh[1], sh[2]);
      for (const char* layout : {"channels_last", "transposed", "strided"})
        check_runs(base, sh[0], sh[1], sh[2], layout);
      if (sh[2] > 1) check_dot_runs(base, sh[0], sh[1], sh[2]);
      else check_quads(base, sh[0], sh[1]);
      cases += 7;
    }
  if (failures) return 1;
  std::printf("ok mapping: %d cases\n", cases);
  return 0;
}

// ---- arithmetic -------------------------------------------------------------------------------

int arithmetic() {
  uint64_t state = 88172645463325252ull;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  const uint64_t divisors[] = {1, 2, 3, 4, 7, 49, 64, 3136, 12345, 65536, 1000003, 2147483647ull};
  for (uint64_t d : divisors) {
    const Divider<uint32_t> d32 = make_divider<uint32_t>((uint32_t)d);
    const Divider<uint64_t> d64 = make_divider<uint64_t>(d);
    for (int k = 0; k < 200000; ++k) {
      const uint32_t n32 = (uint32_t)(next() >> 33);  // < 2^31
      const uint64_t n64 = next() >> 1;               // < 2^63
      if (div(n32, d32) != n32 / d) fail("32-bit %u / %llu", n32, (unsigned long long)d);
      if (div(n64, d64) != n64 / d) fail("64-bit %llu / %llu", (unsigned long long)n64, (unsigned long long)d);
    }
    for (uint32_t n32 : {0u, 1u, (uint32_t)d - 1, (uint32_t)d, 2147483647u})
      if (div(n32, d32) != n32 / d) fail("32-bit %u / %llu", n32, (unsigned long long)d);
  }
  // dx = dy exactly where coef == 0, whatever x and mean hold.
  const float specials[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f, 3.5f};
  for (float x : specials)
    for (float mean : specials) {
      const float dy = -1.25f;
      if (as_uint(dx_value(dy, x, 0.0f, mean)) != as_uint(dy)) fail("dx_value(coef=0, x=%g)", x);
      const double dyd = 0.75;
      if (dx_value(dyd, (double)x, 0.0, (double)mean) != dyd) fail("dx_value<double>(coef=0)");
    }
  if (!std::isnan(dx_value(1.0f, NAN, 0.5f, 0.0f))) fail("NaN x with coef != 0 must give NaN");
  if (failures) return 1;
  std::printf("ok arithmetic\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "vectors") return vectors();
  if (mode == "accuracy" && argc > 2) return accuracy(std::atof(argv[2]));
  if (mode == "scan" && argc > 2) return scan(std::strtoull(argv[2], nullptr, 10));
  if (mode == "mapping") return mapping();
  if (mode == "arithmetic") return arithmetic();
  std::fprintf(stderr, "usage: host_check vectors|accuracy DRAWS|scan STEP|mapping|arithmetic\n");
  return 2;
}
