// The kernels compiled for AVX-512 (F/DQ/BW/VL); chosen at run time when the CPU has them.
#if defined(__x86_64__)
#include <immintrin.h>  // before the target pragma, so that nothing from a header is compiled
#include <stdint.h>     // for AVX-512

#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c,bmi2")
// Scheduling before register allocation (off by default on x86): it interleaves the noise
// generator's independent dependency chains, 1.1-1.2x its throughput (benchmarks/RESULTS.md).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("schedule-insns", "sched-pressure")
#endif
#define ANOISE_ISA avx512
#define ANOISE_ISA_NAME "avx512"
#define ANOISE_SIMD 512
#include "kernels_impl.h"

namespace anoise_cpu {
const Kernels& kernels_avx512() { return avx512::table; }
}  // namespace anoise_cpu
#endif
