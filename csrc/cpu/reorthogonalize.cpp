// CPU kernel of hessext::reorthogonalize: CGS2 of w against the orthonormal rows of basis [k, n], fused so
// that the basis is streamed from memory 3 times (2 passes) or 2 times (1 pass) instead of 4 (resp. 2):
//
//   sweep 1:  h1 = B w                                            (read B)
//   sweep 2:  per column tile:  w' = w - B_tileᵀ h1  then  h2 += B_tile w'   (read B once: the tile's
//             columns are sized so that k * tile fits in 3/4 (AMD) or 1/2 of the per-core L2, and its
//             second read hits L2;
//             on AMD both phases prefetch the next tile, so memory keeps streaming while the dots read L2)
//   sweep 3:  w'' = w' - Bᵀ h2  and  ‖w''‖²                        (read B)
//
// Work is split into one contiguous column range per thread (torch::stable::parallel_for); every thread
// keeps its own partial dot products (double), reduced afterwards in thread order, so the result does not
// depend on scheduling. The inner loops (reorth_kernels.inc) run on 4 basis rows at a time with
// cache-line-wide lane accumulators, compiled for the baseline ISA and for AVX2+FMA (isa.h); they prefetch
// the next row block in software on AMD CPUs only (isa.h: cpu_software_prefetch, measured).
#include "hessext/checks.h"
#include "isa.h"

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include <unistd.h>

namespace hessext {
namespace isa_base {
#include "reorth_kernels.inc"
}  // namespace isa_base
#if HESSEXT_HAVE_AVX2_CLONES
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#include "reorth_kernels.inc"
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

namespace {

using torch::stable::Tensor;

template <typename T>
struct Sweeps {
  decltype(&isa_base::sweep_range<T>) sweep;
  decltype(&isa_base::fused_range<T>) fused;
};

template <typename T>
Sweeps<T> pick_sweeps() {
#if HESSEXT_HAVE_AVX2_CLONES
  if (cpu_use_avx2()) return {&isa_avx2::sweep_range<T>, &isa_avx2::fused_range<T>};
#endif
  return {&isa_base::sweep_range<T>, &isa_base::fused_range<T>};
}

struct Plan {
  int64_t chunks;      // contiguous column ranges, one per thread
  int64_t chunk_cols;  // columns per range (a multiple of 64 elements: threads never share a cache line)
  int64_t tile;        // tile of the streaming sweeps: the tile of w stays in L2
  int64_t fused_tile;  // tile of the fused sweep: k * fused_tile * sizeof(T) <= 3/4 (AMD) or 1/2 of the L2
};

// Bytes of the basis tile that the fused sweep keeps in L2 for its second read: 3/4 of the per-core L2
// (sysconf; 512 KiB assumed when unknown) on AMD CPUs (tuned there, with software prefetch); 1/2 on others,
// where the hardware prefetchers bring the next tile's lines into L2 early (measured on an Intel Xeon with
// 2 MiB L2, 2 threads: k = 128, n = 1e6 / 4e6: 57 / 234 ms at 1/2 against 63 / 258 ms at 3/4; k = 32 the
// same within noise). The tile sets how the dot products are grouped, so it follows the processor (as the
// L2 size does) and not the HESSEXT_CPU_PREFETCH override, which changes no bits. Longer row segments per
// tile keep the hardware prefetchers streaming; the rest of L2 holds the w/out tiles and the next block.
inline int64_t fused_budget_bytes(bool amd) {
  static const int64_t l2_bytes = [] {
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (l2 <= 0) l2 = 512 * 1024;
    return static_cast<int64_t>(std::clamp<long>(l2, 256 * 1024, 4 * 1024 * 1024));
  }();
  return amd ? l2_bytes * 3 / 4 : l2_bytes / 2;
}

template <typename T>
Plan make_plan(int64_t k, int64_t n) {
  Plan p;
  const int64_t threads = std::max<int64_t>(1, torch::stable::get_num_threads());
  // At least ~64K basis elements per thread: below that the fork/join costs more than it saves.
  const int64_t min_cols = std::max<int64_t>(1024, (int64_t{1} << 16) / std::max<int64_t>(k, 1));
  p.chunks = std::max<int64_t>(1, std::min<int64_t>(threads, n / min_cols));
  p.chunk_cols = ((n + p.chunks - 1) / p.chunks + 63) / 64 * 64;
  p.chunks = std::max<int64_t>(1, (n + p.chunk_cols - 1) / p.chunk_cols);
  // Streaming sweeps: 256 KiB row segments (the tile of w stays in L2); longer segments keep the hardware
  // prefetchers streaming (measured single-threaded: ~81 % of a flat read with 64 KiB, ~90 % with 256 KiB).
  p.tile = int64_t{256} * 1024 / static_cast<int64_t>(sizeof(T));
  const int64_t budget = fused_budget_bytes(cpu_is_amd()) / static_cast<int64_t>(sizeof(T));
  p.fused_tile = std::clamp<int64_t>(budget / std::max<int64_t>(k, 1) / 64 * 64, 256, p.tile);
  return p;
}

enum class Sweep { kDot, kFused, kSubNorm };

// One sweep on every chunk in parallel; `out` gets the per-chunk partials summed in chunk order:
// out[0..k) dot products (kDot, kFused), out[k] the squared norm (kSubNorm).
template <typename T>
void parallel_sweep(const Plan& p, const Sweeps<T>& fn, Sweep kind, const T* B, int64_t k, int64_t n,
                    const T* src, T* dst, const T* h, std::vector<double>& partial,
                    std::vector<double>& out) {
  const int64_t stride = k + 1;
  const bool pf = cpu_software_prefetch();
  std::fill(partial.begin(), partial.end(), 0.0);
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t c0 = c * p.chunk_cols;
      const int64_t c1 = std::min(n, c0 + p.chunk_cols);
      double* acc = partial.data() + c * stride;
      switch (kind) {
        case Sweep::kDot:
          fn.sweep(B, k, n, src, dst, false, h, true, false, acc, c0, c1, p.tile, pf);
          break;
        case Sweep::kFused:
          fn.fused(B, k, n, src, dst, h, acc, c0, c1, p.fused_tile, pf);
          break;
        case Sweep::kSubNorm:
          fn.sweep(B, k, n, src, dst, true, h, false, true, acc, c0, c1, p.tile, pf);
          break;
      }
    }
  };
  if (p.chunks == 1) {
    work(0, 1);
  } else {
    torch::stable::parallel_for(0, p.chunks, 1, work);
  }
  std::fill(out.begin(), out.end(), 0.0);
  for (int64_t c = 0; c < p.chunks; ++c)
    for (int64_t r = 0; r < stride; ++r) out[r] += partial[c * stride + r];
}

template <typename T>
void reorthogonalize_impl(const T* w, const T* B, int64_t k, int64_t n, int64_t passes, T* out,
                          T* coeffs, T* norm_out) {
  if (n == 0) {
    std::fill(coeffs, coeffs + k, T(0));
    *norm_out = T(0);
    return;
  }
  const Plan p = make_plan<T>(k, n);
  const Sweeps<T> fn = pick_sweeps<T>();
  std::vector<double> partial(p.chunks * (k + 1)), h(k + 1), hsum(k, 0.0);
  std::vector<T> hT(k + 1);  // never empty, so hT.data() is a valid pointer even for k = 0
  if (k > 0) {
    // sweep 1: h1 = B w
    parallel_sweep<T>(p, fn, Sweep::kDot, B, k, n, w, out, nullptr, partial, h);
    for (int64_t r = 0; r < k; ++r) {
      hsum[r] = h[r];
      hT[r] = static_cast<T>(h[r]);
    }
    if (passes == 2) {
      // sweep 2 (fused): out = w - Bᵀ h1; h2 = B out
      parallel_sweep<T>(p, fn, Sweep::kFused, B, k, n, w, out, hT.data(), partial, h);
      for (int64_t r = 0; r < k; ++r) {
        hsum[r] += h[r];
        hT[r] = static_cast<T>(h[r]);
      }
      w = out;  // the last sweep updates out in place
    }
  }
  // last sweep: out = w - Bᵀ h; ‖out‖²   (k = 0: a copy and the norm)
  parallel_sweep<T>(p, fn, Sweep::kSubNorm, B, k, n, w, out, hT.data(), partial, h);
  for (int64_t r = 0; r < k; ++r) coeffs[r] = static_cast<T>(hsum[r]);
  *norm_out = static_cast<T>(std::sqrt(h[k]));
}

std::tuple<Tensor, Tensor, Tensor> reorthogonalize_cpu(Tensor w, Tensor basis, int64_t passes) {
  check_reorthogonalize_args(w, basis, passes);
  w = torch::stable::contiguous(w);
  basis = torch::stable::contiguous(basis);
  const int64_t n = w.size(0);
  const int64_t k = basis.size(0);
  Tensor out = torch::stable::empty_like(w);
  Tensor coeffs = torch::stable::new_empty(w, {k});
  Tensor norm = torch::stable::new_empty(w, {});
  if (w.scalar_type() == ScalarType::Float) {
    reorthogonalize_impl<float>(w.const_data_ptr<float>(), basis.const_data_ptr<float>(), k, n, passes,
                                out.mutable_data_ptr<float>(), coeffs.mutable_data_ptr<float>(),
                                norm.mutable_data_ptr<float>());
  } else {
    reorthogonalize_impl<double>(w.const_data_ptr<double>(), basis.const_data_ptr<double>(), k, n, passes,
                                 out.mutable_data_ptr<double>(), coeffs.mutable_data_ptr<double>(),
                                 norm.mutable_data_ptr<double>());
  }
  return std::make_tuple(out, coeffs, norm);
}

}  // namespace
}  // namespace hessext

STABLE_TORCH_LIBRARY_IMPL(hessext, CPU, m) {
  m.impl("reorthogonalize", TORCH_BOX(&hessext::reorthogonalize_cpu));
}
