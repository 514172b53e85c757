// CPU kernel of hessext::rademacher_: out[i, j] = ±1 from hash(seed, offset + j*n + i) (hessext/hash.h).
//
// Counters of a column are consecutive, so the hash runs over uint32 lanes with the counter's high word
// held fixed, a loop the compiler vectorises (baseline and AVX2 builds, isa.h). Rows are cut into blocks
// for torch::stable::parallel_for; within a block the output is written in memory order: column by column
// for column-major layouts, tile by tile and row by row for row-major ones (the common ops.rademacher(n, m)
// layout). Every layout gives the same bits, a pure function of the element's counter.
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

constexpr int64_t kRowBlock = 2048;  // rows per parallel task
constexpr int64_t kTileRows = 256;   // rows of a tile of the row-order walk
constexpr int64_t kTileCols = 16;    // columns of a tile of the row-order walk

// Rows [i0, i0 + len) of out (a 1-D tensor is m = 1), element (i, j) at data + i*s0 + j*s1, for layouts whose
// memory order runs down the columns (s0 <= s1): column j of the block is a run of consecutive counters,
// hashed by the vectorised loop straight into out (unit row stride) or into a buffer and written with
// stride s0 (still memory order).
template <typename T, typename Fill>
void fill_columns(T* data, int64_t i0, int64_t len, int64_t n, int64_t m, int64_t s0, int64_t s1,
                  uint64_t offset, ProbeKeys keys, Fill consecutive) {
  T buf[kRowBlock];
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

// The same rows for layouts whose memory order runs along the rows (s1 < s0: row-major [n, m], padded rows,
// odd strides): tiles of kTileRows x kTileCols, each column of a tile hashed as a run of consecutive
// counters into buf (vectorised), then written row by row, each row's kTileCols elements one after another
// (for m <= kTileCols a dense row-major tile is written in exact memory order; wider rows go out in chunks
// of kTileCols elements, 64 or 128 bytes). No strided store across rows, no division.
template <typename T, typename Fill>
void fill_rows(T* data, int64_t i0, int64_t len, int64_t n, int64_t m, int64_t s0, int64_t s1,
               uint64_t offset, ProbeKeys keys, Fill consecutive) {
  T buf[kTileCols][kTileRows];
  for (int64_t r0 = 0; r0 < len; r0 += kTileRows) {
    const int64_t rows = std::min(kTileRows, len - r0);
    const int64_t i = i0 + r0;
    for (int64_t j0 = 0; j0 < m; j0 += kTileCols) {
      const int64_t cols = std::min(kTileCols, m - j0);
      for (int64_t c = 0; c < cols; ++c) {
        const uint64_t c0 = offset + static_cast<uint64_t>(j0 + c) * static_cast<uint64_t>(n) + i;
        consecutive(buf[c], c0, rows, keys);
      }
      T* dst = data + i * s0 + j0 * s1;
      if (s1 == 1) {
        for (int64_t r = 0; r < rows; ++r, dst += s0)
          for (int64_t c = 0; c < cols; ++c) dst[c] = buf[c][r];
      } else {
        for (int64_t r = 0; r < rows; ++r, dst += s0)
          for (int64_t c = 0; c < cols; ++c) dst[c * s1] = buf[c][r];
      }
    }
  }
}

// out[i, j] (at data + i*s0 + j*s1; a 1-D tensor is m = 1) = value(offset + j*n + i), written in memory
// order. The rows are cut into blocks of kRowBlock, one parallel task each (a block of a row-major [n, m]
// tensor stays in cache while it is filled).
template <typename T>
void fill(T* data, int64_t n, int64_t m, int64_t s0, int64_t s1, uint64_t offset, ProbeKeys keys) {
  auto consecutive = &isa_base::fill_consecutive<T>;
#if HESSEXT_HAVE_AVX2_CLONES
  if (cpu_use_avx2()) consecutive = &isa_avx2::fill_consecutive<T>;
#endif
  if (n == 1) {  // one row: a run of m consecutive counters with stride s1
    n = m;
    m = 1;
    s0 = s1;
    s1 = 0;
  }
  const bool by_rows = m > 1 && s1 < s0;
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t i0 = b * kRowBlock;
      const int64_t len = std::min(kRowBlock, n - i0);
      if (by_rows) {
        fill_rows(data, i0, len, n, m, s0, s1, offset, keys, consecutive);
      } else {
        fill_columns(data, i0, len, n, m, s0, s1, offset, keys, consecutive);
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
