// CPU kernel of hessext::rademacher_: out[i, j] = ±1 from hash(seed, offset + j*n + i) (hessext/hash.h).
//
// The element range is walked in counter order and cut into chunks for torch::stable::parallel_for. Inside
// a chunk, runs of counters that are consecutive and whose destination is contiguous (a 1-D tensor, or a
// column of a column-major block) go through a loop on uint32 lanes with the high word of the counter held
// fixed, which the compiler vectorises (baseline and AVX2 builds of that loop, isa.h); anything else (row-major blocks, strided views) takes the general
// per-element path with 64-bit counters. Both produce the same bits.
#include "hessext/checks.h"
#include "hessext/hash.h"
#include "isa.h"

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstdint>

namespace hessext {
namespace isa_base {
#include "rademacher_kernels.inc"
}  // namespace isa_base
#if HESSEXT_HAVE_AVX2_CLONES
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#include "rademacher_kernels.inc"
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

namespace {

using torch::stable::Tensor;

// dst[i * dst_stride] = value(c0 + i * c_stride), general path.
template <typename T>
void fill_strided(T* dst, int64_t dst_stride, uint64_t c0, uint64_t c_stride, int64_t len, ProbeKeys keys) {
  for (int64_t i = 0; i < len; ++i)
    dst[i * dst_stride] = rademacher_value<T>(c0 + static_cast<uint64_t>(i) * c_stride, keys);
}

// The tensor as `outer` runs of `inner` elements; run r, element e sits at data + r*run_stride +
// e*elem_stride and has counter offset + r*run_counter + e*elem_counter.
struct Layout {
  int64_t outer, inner;
  int64_t run_stride, elem_stride;
  uint64_t run_counter, elem_counter;
};

template <typename T>
void fill_layout(T* data, const Layout& L, uint64_t offset, ProbeKeys keys) {
  const int64_t total = L.outer * L.inner;
  const bool fast = L.elem_stride == 1 && L.elem_counter == 1;
  auto consecutive = &isa_base::fill_consecutive<T>;
#if HESSEXT_HAVE_AVX2_CLONES
  if (cpu_use_avx2()) consecutive = &isa_avx2::fill_consecutive<T>;
#endif
  auto work = [&](int64_t begin, int64_t end) {
    int64_t f = begin;
    while (f < end) {
      const int64_t r = f / L.inner;
      const int64_t e = f - r * L.inner;
      const int64_t len = std::min(end - f, L.inner - e);
      T* dst = data + r * L.run_stride + e * L.elem_stride;
      const uint64_t c = offset + static_cast<uint64_t>(r) * L.run_counter + static_cast<uint64_t>(e) * L.elem_counter;
      if (fast) {
        consecutive(dst, c, len, keys);
      } else {
        fill_strided<T>(dst, L.elem_stride, c, L.elem_counter, len, keys);
      }
      f += len;
    }
  };
  constexpr int64_t kGrain = int64_t{1} << 16;
  if (total <= kGrain) {
    work(0, total);
  } else {
    torch::stable::parallel_for(0, total, kGrain, work);
  }
}

void rademacher_cpu(Tensor out, int64_t seed, int64_t offset) {
  check_rademacher_args(out, offset);
  const ProbeKeys keys = probe_keys(static_cast<uint64_t>(seed));
  const int64_t n = out.size(0);
  const int64_t m = out.dim() == 2 ? out.size(1) : 1;
  if (n == 0 || m == 0) return;
  Layout L;
  if (out.dim() == 1) {
    L = {1, n, 0, out.stride(0), 0, 1};
  } else if (out.stride(0) == 1 || m == 1) {
    // column-major (or a single column): each column is a run of consecutive counters
    L = {m, n, out.stride(1), out.stride(0), static_cast<uint64_t>(n), 1};
  } else {
    // row-major or strided: rows as runs, the counter steps by n along a row
    L = {n, m, out.stride(0), out.stride(1), 1, static_cast<uint64_t>(n)};
  }
  if (out.scalar_type() == ScalarType::Float) {
    fill_layout<float>(out.mutable_data_ptr<float>(), L, static_cast<uint64_t>(offset), keys);
  } else {
    fill_layout<double>(out.mutable_data_ptr<double>(), L, static_cast<uint64_t>(offset), keys);
  }
}

}  // namespace
}  // namespace hessext

STABLE_TORCH_LIBRARY_IMPL(hessext, CPU, m) {
  m.impl("rademacher_", TORCH_BOX(&hessext::rademacher_cpu));
}
