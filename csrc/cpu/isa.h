// Run-time choice of the instruction set for the CPU inner loops. The loops live in `.inc` files that a
// kernel includes twice: in namespace `isa_base` (the compiler's baseline, e.g. SSE2 on x86-64) and, on
// x86 with GCC, in namespace `isa_avx2` under `#pragma GCC target("avx2,fma")`. One portable binary, the
// AVX2 loops where the CPU has them. HESSEXT_CPU_ISA=baseline forces the baseline loops (tests use it).
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define HESSEXT_HAVE_AVX2_CLONES 1
#else
#define HESSEXT_HAVE_AVX2_CLONES 0
#endif

namespace hessext {

inline bool cpu_use_avx2() {
#if HESSEXT_HAVE_AVX2_CLONES
  static const bool use = [] {
    const char* env = std::getenv("HESSEXT_CPU_ISA");
    if (env != nullptr && std::strcmp(env, "baseline") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return use;
#else
  return false;
#endif
}

// Whether the CPU reorthogonalize loops issue software prefetches for the next block of basis rows
// (reorth_kernels.inc). Measured, single- and two-threaded, float32, n = 1e5..1e7, k = 8..128: on the AMD
// EPYC the kernels were tuned on they hide the hardware prefetchers' restart at every new row segment; on an
// Intel Xeon (2 MiB L2 per core) they cost 1.3-1.9x (the hardware prefetchers already stream, and the
// extra instructions and L2 traffic get in the way). So: on AMD CPUs only; HESSEXT_CPU_PREFETCH=0|1
// overrides. Prefetching never changes the results.
inline bool cpu_is_amd() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  static const bool amd = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") != 0;
  }();
  return amd;
#else
  return false;
#endif
}

inline bool cpu_software_prefetch() {
  static const bool use = [] {
    const char* env = std::getenv("HESSEXT_CPU_PREFETCH");
    if (env != nullptr && *env != '\0') return std::strcmp(env, "0") != 0;
    return cpu_is_amd();
  }();
  return use;
}

}  // namespace hessext
