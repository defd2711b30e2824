// The kernels for the instruction set the compiler targets by default (SSE2 on x86-64).
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// Scheduling before register allocation, as in kernels_avx512.cpp.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("schedule-insns", "sched-pressure")
#endif

#define ANOISE_ISA baseline
#define ANOISE_ISA_NAME "baseline"
#define ANOISE_SIMD 128
#include "kernels_impl.h"

namespace anoise_cpu {
const Kernels& kernels_baseline() { return baseline::table; }
}  // namespace anoise_cpu
