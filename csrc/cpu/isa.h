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

}  // namespace hessext
