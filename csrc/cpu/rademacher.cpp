// CPU kernel of hessext::rademacher_: out[i, j] = ±1 from hash(seed, offset + j*n + i) (hessext/hash.h).
//
// Counters of a column are consecutive, so the hash runs over uint32 lanes with the counter's high word
// held fixed, a loop the compiler vectorises (baseline and AVX2 builds, isa.h). Rows are cut into blocks
// for torch::stable::parallel_for; every layout (1-D, row- or column-major blocks, strided views) gives the
// same bits, a pure function of the element's counter.
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

constexpr int64_t kRowBlock = 2048;

// out[i, j] (at data + i*s0 + j*s1; a 1-D tensor is m = 1) = value(offset + j*n + i). The rows are cut into
// blocks of kRowBlock, one parallel task each; in a block, column j is a run of consecutive counters,
// hashed by the vectorised loop straight into out (unit row stride) or into a buffer and scattered (any
// other stride). A block of a row-major [n, m] tensor stays in cache while its columns are filled.
template <typename T>
void fill(T* data, int64_t n, int64_t m, int64_t s0, int64_t s1, uint64_t offset, ProbeKeys keys) {
  auto consecutive = &isa_base::fill_consecutive<T>;
#if HESSEXT_HAVE_AVX2_CLONES
  if (cpu_use_avx2()) consecutive = &isa_avx2::fill_consecutive<T>;
#endif
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  auto work = [&](int64_t begin, int64_t end) {
    T buf[kRowBlock];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t i0 = b * kRowBlock;
      const int64_t len = std::min(kRowBlock, n - i0);
      for (int64_t j = 0; j < m; ++j) {
        const uint64_t c = offset + static_cast<uint64_t>(j) * static_cast<uint64_t>(n) + i0;
        T* dst = data + i0 * s0 + j * s1;
        if (s0 == 1) {
          consecutive(dst, c, len, keys);
        } else {
          consecutive(buf, c, len, keys);
          for (int64_t i = 0; i < len; ++i) dst[i * s0] = buf[i];
        }
      }
    }
  };
  // ~64K elements per task at least: below that a fork/join costs more than the work.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (kRowBlock * m));
  if (blocks <= grain) {
    work(0, blocks);
  } else {
    torch::stable::parallel_for(0, blocks, grain, work);
  }
}

void rademacher_cpu(Tensor out, int64_t seed, int64_t offset) {
  check_rademacher_args(out, offset);
  const ProbeKeys keys = probe_keys(static_cast<uint64_t>(seed));
  const int64_t n = out.size(0);
  const int64_t m = out.dim() == 2 ? out.size(1) : 1;
  if (n == 0 || m == 0) return;
  const int64_t s0 = out.stride(0);
  const int64_t s1 = out.dim() == 2 ? out.stride(1) : 0;
  if (out.scalar_type() == ScalarType::Float) {
    fill<float>(out.mutable_data_ptr<float>(), n, m, s0, s1, static_cast<uint64_t>(offset), keys);
  } else {
    fill<double>(out.mutable_data_ptr<double>(), n, m, s0, s1, static_cast<uint64_t>(offset), keys);
  }
}

}  // namespace
}  // namespace hessext

STABLE_TORCH_LIBRARY_IMPL(hessext, CPU, m) {
  m.impl("rademacher_", TORCH_BOX(&hessext::rademacher_cpu));
}
