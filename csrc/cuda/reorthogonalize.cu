// CUDA kernel of hessext::reorthogonalize (CGS2 against the rows of basis [k, n]); same sweeps as the CPU
// kernel (csrc/cpu/reorthogonalize.cpp):
//
//   sweep 1:  h1 = B w                                   tile_sweep<DOT>        + reduction of h1
//   sweep 2:  w' = w - Bᵀ h1 ; h2 = B w'                 tile_sweep<SUB, DOT>   + reduction of h2
//   sweep 3:  w'' = w' - Bᵀ h2 ; ‖w''‖²                  tile_sweep<SUB, NORM>  + reduction of the norm
//
// Launches: a reduction with few partials (reorth_plan.h: kFoldMaxPartials) is folded into its sweep -- each
// block fences its partials and takes a ticket from a counter (zeroed by one memset per call); the block
// that takes the last ticket sums them -- so a small 2-pass call is one memset and 3 kernels instead of 6.
// Larger reductions run as their own kernel (reduce_rows: one block per row; reduce_norm), whose one extra
// launch is small against the sweep. Both run the same sum_chunks arithmetic, so the choice never shows in
// the bits (HESSEXT_REORTH_FOLD=always|never overrides it, for tests).
//
// Tiles and grids (reorth_plan.h): a block walks tiles of vpt * 256 columns (vpt = 1, 2 or 4) in a
// grid-stride loop, the grid capped at the blocks resident on the device (occupancy API x SM count).
// SUB: each thread keeps vpt columns in registers and streams the k rows over them (coalesced across the
// block). DOT: the tile of w is staged in shared memory; a warp takes (4 rows, 128-column chunk) pairs and
// accumulates the 4 dot products in independent registers. When the tiles are fewer than the resident blocks
// (small n), the DOT-only sweep also splits the rows over gridDim.y. Sweep 2 re-reads a tile's k rows right
// after subtracting them; it is fused only when the tiles of the blocks in flight fit in a share of the L2
// (sized from k, the element size, L2 size and residency; HESSEXT_REORTH_FUSE=always|never overrides), else
// it runs as a SUB sweep and a DOT sweep: 4 sweeps over the basis instead of 3.
//
// Determinism: every partial covers one fixed 128-column chunk (the dot of row r with chunk c: lane l sums
// columns l, l + 32, l + 64, l + 96 in that order, then a fixed shuffle tree) and reduce_rows / reduce_norm
// sum the chunks in an order fixed by n alone. So the results depend on n, k, the inputs and passes only:
// not on the tile, the grid or the device chosen at run time, and two identical calls agree bitwise.
//
// Precision, as on the CPU: dot products, squared norms, their partials and every reduction are kept in
// double for both dtypes (the products of two floats are exact in double); the coefficients applied by a
// subtraction are rounded to T, and the summed coefficients of both passes are kept in double until the
// final rounding to T. Only the subtraction w -= Bᵀ h runs in T.
//
// Aliasing: sweep 3 updates out in place (src == dst), so src and dst are not __restrict__; nor are the
// partials in tile_sweep, which a folded reduction reads back (after a fence) through its own pointers. The
// basis and the coefficients a sweep subtracts never alias anything written by the same kernel.
//
// Launches go on the current stream of w's device under a device guard; every launch is checked.
#include "hessext/checks.h"
#include "device_info.cuh"
#include "reorth_plan.h"

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>

namespace hessext {
namespace {

using torch::stable::Tensor;
using reorth::kChunk;
using reorth::kMaxTile;
using reorth::kMaxVpt;
using reorth::kRowsPerWarp;
using reorth::kThreads;
using reorth::kWarps;

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, "reorthogonalize: CUDA launch of ", what, " failed: ",
                  cudaGetErrorString(err));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block (in double); the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = (threadIdx.x < kWarps) ? scratch[threadIdx.x] : 0.0;
  if (warp == 0) v = warp_sum(v);
  return v;
}

// sum_c p[c] over c < chunks in a fixed order (thread t takes c = t, t + kThreads, ..., then block_sum),
// valid in thread 0; ends with a barrier so scratch can be reused at once. Loads bypass L1 (__ldcg): in a
// folded reduction the partials were written by other blocks of the same kernel.
__device__ __forceinline__ double sum_chunks(const double* p, int64_t chunks, double* scratch) {
  double s = 0;
  for (int64_t c = threadIdx.x; c < chunks; c += kThreads) s += __ldcg(p + c);
  s = block_sum(s, scratch);
  __syncthreads();
  return s;
}

// The reductions after a sweep: h[r] = sum of row r's chunk partials; hsum[r] = (accumulate ? hsum[r] : 0) +
// h[r]; coeffs[r] = hsum[r] rounded to T (rows [r_begin, r_end)); *norm = sqrt(sum of the norm partials).
template <typename T>
struct Reduction {
  const double* partial = nullptr;       // [k, chunks] dot partials
  const double* norm_partial = nullptr;  // [chunks]
  double* h = nullptr;
  double* hsum = nullptr;
  T* coeffs = nullptr;
  T* norm = nullptr;
  bool accumulate = false;
  unsigned* ticket = nullptr;  // when folded into the sweep: the last block to finish reduces
};

template <typename T>
__device__ __forceinline__ void reduce_dot_rows(const Reduction<T>& red, int64_t chunks, int64_t r_begin,
                                                int64_t r_end, double* scratch) {
  for (int64_t r = r_begin; r < r_end; ++r) {
    const double s = sum_chunks(red.partial + r * chunks, chunks, scratch);
    if (threadIdx.x == 0) {
      red.h[r] = s;
      const double total = red.accumulate ? red.hsum[r] + s : s;
      red.hsum[r] = total;
      red.coeffs[r] = static_cast<T>(total);
    }
  }
}

template <typename T>
__device__ __forceinline__ void reduce_norm_partials(const Reduction<T>& red, int64_t chunks,
                                                     double* scratch) {
  const double s = sum_chunks(red.norm_partial, chunks, scratch);
  if (threadIdx.x == 0) *red.norm = static_cast<T>(sqrt(s));
}

// Whether this block is the last of the grid to finish (every thread calls it after its last store of
// partials): the writes are fenced device-wide before thread 0 takes a ticket, and the last block fences
// again before it reads what the others wrote.
__device__ __forceinline__ bool last_block(unsigned* ticket, int* flag) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned blocks = gridDim.x * gridDim.y;
    *flag = atomicAdd(ticket, 1u) == blocks - 1;
    __threadfence();
  }
  __syncthreads();
  return *flag != 0;
}

// Dots of rows [r_begin, r_end) of a tile (element (r, c) at tile[r * ld + c], c < len; the basis in global
// memory, or its stage in shared memory) with the tile of w staged in xs: a warp takes (kRowsPerWarp rows,
// one 128-column chunk) pairs, one accumulator per row; partial[r * chunks + chunk0 + chunk of the tile].
template <typename T>
__device__ __forceinline__ void dot_tile(const T* __restrict__ tile, int64_t ld, int64_t len, int64_t r_begin,
                                         int64_t r_end, const T* xs, int64_t chunks, int64_t chunk0,
                                         double* __restrict__ partial) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int cpt = static_cast<int>((len + kChunk - 1) / kChunk);
  const int64_t groups = (r_end - r_begin + kRowsPerWarp - 1) / kRowsPerWarp;
  for (int64_t p = warp; p < groups * cpt; p += kWarps) {
    const int64_t g = p / cpt;
    const int ch = static_cast<int>(p - g * cpt);
    const int64_t r0 = r_begin + g * kRowsPerWarp;
    const int nr = static_cast<int>(r_end - r0 < kRowsPerWarp ? r_end - r0 : kRowsPerWarp);
    const int64_t c0 = static_cast<int64_t>(ch) * kChunk;
    const T* row = tile + r0 * ld + c0;
    double acc[kRowsPerWarp] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
    for (int s = 0; s < kChunk / 32; ++s) {
      const int i = lane + 32 * s;
      if (c0 + i < len) {
        const double x = static_cast<double>(xs[c0 + i]);
#pragma unroll
        for (int rr = 0; rr < kRowsPerWarp; ++rr)
          if (rr < nr) acc[rr] = fma(static_cast<double>(row[rr * ld + i]), x, acc[rr]);
      }
    }
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const double d = warp_sum(acc[rr]);
      if (lane == 0 && rr < nr) partial[(r0 + rr) * chunks + chunk0 + ch] = d;
    }
  }
}

// Squared norms of the tile's 128-column chunks (v: the thread's vpt columns) into norm_partial[chunk].
template <typename T>
__device__ __forceinline__ void norm_tile(const T (&v)[kMaxVpt], int vpt, int64_t t0, int64_t len,
                                          double* scratch, double* __restrict__ norm_partial) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < kMaxVpt; ++q) {
    if (q < vpt) {
      const double s = warp_sum(static_cast<double>(v[q]) * static_cast<double>(v[q]));
      if (lane == 0) scratch[q * kWarps + warp] = s;
    }
  }
  __syncthreads();
  constexpr int kWarpsPerChunk = kChunk / 32;
  const int cpt = static_cast<int>((len + kChunk - 1) / kChunk);
  if (threadIdx.x < cpt) {
    double s = 0.0;
    for (int w = 0; w < kWarpsPerChunk; ++w) s += scratch[threadIdx.x * kWarpsPerChunk + w];
    norm_partial[t0 / kChunk + threadIdx.x] = s;
  }
  __syncthreads();
}

// One sweep over the basis; see the file comment. Tiles t = blockIdx.x, + gridDim.x, ...; DOT rows
// [blockIdx.y * rows_per_y, + rows_per_y). src and dst may be the same array: no __restrict__ on them.
// FOLD: the last block to finish also reduces what the sweep produced (DOT: every row's dots; NORM: the
// squared norm); reorth_plan.h says when. The folded kernels only run on small problems (few partials), so
// they get room for the reduction's registers (at least 3 resident blocks: <= 80 registers) rather than spill
// at the 64 that ptxas picks otherwise. The unfolded kernels, which stream the large problems, keep ptxas's
// own choice: a minimum of 0 blocks is the same as none (measured: the same registers as without it, while 1
// is not -- it let the fused sweep take 95 registers, 2 resident blocks instead of 4).
template <typename T, bool SUB, bool DOT, bool NORM, bool FOLD>
__global__ void __launch_bounds__(kThreads, FOLD ? 3 : 0)
    tile_sweep(const T* __restrict__ B, int64_t k, int64_t n, const T* src, T* dst,
               const double* __restrict__ hsub, double* partial, double* norm_partial, int vpt,
               int64_t rows_per_y, Reduction<T> red) {
  __shared__ T xs[kMaxTile];
  __shared__ double scratch[kMaxVpt * kWarps];
  __shared__ int last;
  const int64_t tile = static_cast<int64_t>(vpt) * kThreads;
  const int64_t tiles = (n + tile - 1) / tile;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int64_t r_begin = static_cast<int64_t>(blockIdx.y) * rows_per_y;
  const int64_t r_end = (k - r_begin) < rows_per_y ? k : r_begin + rows_per_y;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t t0 = t * tile;
    const int64_t len = (n - t0) < tile ? (n - t0) : tile;
    T v[kMaxVpt];
#pragma unroll
    for (int q = 0; q < kMaxVpt; ++q) {
      const int64_t c = threadIdx.x + q * kThreads;
      v[q] = (q < vpt && c < len) ? src[t0 + c] : T(0);
    }
    if (SUB) {
#pragma unroll 4
      for (int64_t r = 0; r < k; ++r) {
        const T h = static_cast<T>(hsub[r]);
        const T* row = B + r * n + t0;
#pragma unroll
        for (int q = 0; q < kMaxVpt; ++q) {
          const int64_t c = threadIdx.x + q * kThreads;
          if (q < vpt && c < len) v[q] = fma(-h, row[c], v[q]);  // one rounding, in every sweep alike
        }
      }
#pragma unroll
      for (int q = 0; q < kMaxVpt; ++q) {
        const int64_t c = threadIdx.x + q * kThreads;
        if (q < vpt && c < len) dst[t0 + c] = v[q];
      }
    }
    if (DOT) {
#pragma unroll
      for (int q = 0; q < kMaxVpt; ++q)
        if (q < vpt) xs[threadIdx.x + q * kThreads] = v[q];
      __syncthreads();
      dot_tile<T>(B + t0, n, len, r_begin, r_end, xs, chunks, t0 / kChunk, partial);
      __syncthreads();  // xs is rewritten by the next tile
    }
    if (NORM) norm_tile<T>(v, vpt, t0, len, scratch, norm_partial);
  }
  if constexpr (FOLD) {
    static_assert(DOT || NORM, "only a DOT or NORM sweep has a reduction to fold");
    if (last_block(red.ticket, &last)) {
      if (DOT) reduce_dot_rows(red, chunks, 0, k, scratch);
      if (NORM) reduce_norm_partials(red, chunks, scratch);
    }
  }
}

// Sweep 2 fused through shared memory, for k too large for the L2 plan: a block takes one 128-column chunk
// at a time, copies its k rows of the basis into shared memory (asynchronous copies: all of them in flight at
// once), subtracts Bᵀh1 from the chunk of w there (thread c: column c, the rows in order 0..k-1, one fma
// each, as the SUB sweep does), and dots the result with the same staged rows (dot_tile, as every DOT
// sweep does): the basis is read from HBM once and the bits are those of the other plans.
template <typename T, bool FOLD>
__global__ void __launch_bounds__(kThreads, FOLD ? 3 : 0)
    smem_fused_sweep(const T* __restrict__ B, int64_t k, int64_t n, const T* src, T* dst,
                     const double* __restrict__ hsub, double* partial, Reduction<T> red) {
  extern __shared__ __align__(16) unsigned char stage_bytes[];
  T* stage = reinterpret_cast<T*>(stage_bytes);  // [k, kChunk]
  __shared__ T xs[kChunk];
  __shared__ double scratch[kWarps];
  __shared__ int last;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int64_t elements = k * kChunk;
  for (int64_t t = blockIdx.x; t < chunks; t += gridDim.x) {
    const int64_t t0 = t * kChunk;
    const int len = static_cast<int>((n - t0) < kChunk ? (n - t0) : kChunk);
    for (int64_t e = threadIdx.x; e < elements; e += kThreads) {
      const int c = static_cast<int>(e % kChunk);
      if (c < len) __pipeline_memcpy_async(stage + e, B + (e / kChunk) * n + t0 + c, sizeof(T));
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
    __syncthreads();
    const int c = threadIdx.x;
    if (c < len) {
      T v = src[t0 + c];
      for (int64_t r = 0; r < k; ++r) v = fma(-static_cast<T>(hsub[r]), stage[r * kChunk + c], v);
      dst[t0 + c] = v;
      xs[c] = v;
    }
    __syncthreads();
    dot_tile<T>(stage, kChunk, len, 0, k, xs, chunks, t, partial);
    __syncthreads();  // the stage and xs are rewritten for the next chunk
  }
  if constexpr (FOLD) {
    if (last_block(red.ticket, &last)) reduce_dot_rows(red, chunks, 0, k, scratch);
  }
}

// The reductions as kernels of their own (when not folded): one block per row of the dots, one for the norm.
template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_rows(Reduction<T> red, int64_t chunks) {
  __shared__ double scratch[kWarps];
  reduce_dot_rows(red, chunks, blockIdx.x, blockIdx.x + 1, scratch);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_norm(Reduction<T> red, int64_t chunks) {
  __shared__ double scratch[kWarps];
  reduce_norm_partials(red, chunks, scratch);
}

// An override from the environment: unset, "" or "auto"; "always" or "1"; "never" or "0"; "smem" (with_smem).
reorth::FuseMode env_mode(const char* name, bool with_smem) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return reorth::FuseMode::kAuto;
  if (std::strcmp(v, "always") == 0 || std::strcmp(v, "1") == 0) return reorth::FuseMode::kAlways;
  if (std::strcmp(v, "never") == 0 || std::strcmp(v, "0") == 0) return reorth::FuseMode::kNever;
  if (with_smem && std::strcmp(v, "smem") == 0) return reorth::FuseMode::kSmem;
  STD_TORCH_CHECK(false, "reorthogonalize: ", name, " must be auto, always, never",
                  with_smem ? " or smem" : "", ", got '", v, "'");
  return reorth::FuseMode::kAuto;
}

template <typename T>
reorth::Plan plan_for(int64_t n, int64_t k, int64_t passes) {
  const char* op = "reorthogonalize";
  const cuda::DeviceInfo info = cuda::current_device_info(op);
  reorth::Device d;
  d.sms = info.sms;
  d.l2_bytes = info.l2_bytes;
  d.resident_dot = cuda::resident_blocks_per_sm(tile_sweep<T, false, true, false, false>, kThreads, 0, op);
  d.resident_fused = cuda::resident_blocks_per_sm(tile_sweep<T, true, true, false, false>, kThreads, 0, op);
  d.resident_sub = cuda::resident_blocks_per_sm(tile_sweep<T, true, false, true, false>, kThreads, 0, op);
  const int64_t stage = reorth::smem_stage_bytes(k, static_cast<int>(sizeof(T)));
  if (passes == 2 && k > 0 && stage <= cuda::max_dynamic_smem(smem_fused_sweep<T, false>, op) &&
      stage <= cuda::max_dynamic_smem(smem_fused_sweep<T, true>, op))
    d.resident_smem = cuda::resident_blocks_per_sm(smem_fused_sweep<T, false>, kThreads,
                                                   static_cast<size_t>(stage), op);
  return reorth::make_plan(n, k, passes, static_cast<int>(sizeof(T)), d,
                           env_mode("HESSEXT_REORTH_FUSE", true), env_mode("HESSEXT_REORTH_FOLD", false));
}

// What every launch of one call shares.
template <typename T>
struct Call {
  const T* B;
  int64_t k, n, chunks;
  double* partial;       // [k, chunks]
  double* norm_partial;  // [chunks]
  cudaStream_t stream;
};

// A sweep's reduction as its own kernel (not folded): one block per row of the dots, or one for the norm.
template <typename T, bool DOT>
void reduce_apart(const Call<T>& c, const Reduction<T>& red) {
  if constexpr (DOT) {
    reduce_rows<T><<<static_cast<unsigned>(c.k), kThreads, 0, c.stream>>>(red, c.chunks);
  } else {
    reduce_norm<T><<<1, kThreads, 0, c.stream>>>(red, c.chunks);
  }
  check_launch(DOT ? "reduce_rows" : "reduce_norm");
}

// One sweep and, for a DOT or NORM sweep, its reduction: folded into the sweep (fold) or as its own kernel.
template <typename T, bool SUB, bool DOT, bool NORM>
void sweep(const Call<T>& c, const reorth::SweepLaunch& s, const T* src, T* dst, const double* hsub,
           const Reduction<T>& red, bool fold, const char* what) {
  const dim3 grid(static_cast<unsigned>(s.gx), static_cast<unsigned>(s.gy));
  if constexpr (DOT || NORM) {
    if (fold) {
      tile_sweep<T, SUB, DOT, NORM, true><<<grid, kThreads, 0, c.stream>>>(
          c.B, c.k, c.n, src, dst, hsub, c.partial, c.norm_partial, s.vpt, s.rows_per_y, red);
      check_launch(what);
      return;
    }
  }
  tile_sweep<T, SUB, DOT, NORM, false><<<grid, kThreads, 0, c.stream>>>(
      c.B, c.k, c.n, src, dst, hsub, c.partial, c.norm_partial, s.vpt, s.rows_per_y, red);
  check_launch(what);
  if constexpr (DOT || NORM) reduce_apart<T, DOT>(c, red);
}

// Sweep 2 fused through shared memory (its reduction folded, or as its own kernel).
template <typename T>
void smem_sweep(const Call<T>& c, const reorth::SweepLaunch& s, const T* src, T* dst, const double* hsub,
                const Reduction<T>& red, bool fold) {
  const unsigned grid = static_cast<unsigned>(s.gx);
  const size_t stage = static_cast<size_t>(reorth::smem_stage_bytes(c.k, static_cast<int>(sizeof(T))));
  if (fold) {
    smem_fused_sweep<T, true><<<grid, kThreads, stage, c.stream>>>(c.B, c.k, c.n, src, dst, hsub, c.partial,
                                                                   red);
  } else {
    smem_fused_sweep<T, false><<<grid, kThreads, stage, c.stream>>>(c.B, c.k, c.n, src, dst, hsub, c.partial,
                                                                    red);
  }
  check_launch("sweep 2 (fused, shared memory)");
  if (!fold) reduce_apart<T, true>(c, red);
}

template <typename T>
void launch(const T* w, const T* B, int64_t k, int64_t n, int64_t passes, T* out, T* coeffs, T* norm,
            double* ws, cudaStream_t stream) {
  const reorth::Plan plan = plan_for<T>(n, k, passes);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const Call<T> c{B, k, n, chunks, ws, ws + k * chunks, stream};
  double* h1 = c.norm_partial + chunks;  // [k]
  double* h2 = h1 + k;                   // [k]
  double* hsum = h2 + k;                 // [k]
  unsigned* tickets = reinterpret_cast<unsigned*>(hsum + k);  // [3]: sweep 1, sweep 2, norm
  if (plan.fold_dots || plan.fold_norm)
    cuda::check_cuda(cudaMemsetAsync(tickets, 0, 3 * sizeof(unsigned), stream), "reorthogonalize",
                     "cudaMemsetAsync of the reduction tickets");
  Reduction<T> r1;
  r1.partial = c.partial;
  r1.h = h1;
  r1.hsum = hsum;
  r1.coeffs = coeffs;
  r1.ticket = tickets;
  Reduction<T> r2 = r1;
  r2.h = h2;
  r2.accumulate = true;
  r2.ticket = tickets + 1;
  Reduction<T> rn;
  rn.norm_partial = c.norm_partial;
  rn.norm = norm;
  rn.ticket = tickets + 2;
  const bool fd = plan.fold_dots;
  const bool fn = plan.fold_norm;
  if (k == 0) {
    sweep<T, true, false, true>(c, plan.sub, w, out, h1, rn, fn, "copy + norm");
    return;
  }
  sweep<T, false, true, false>(c, plan.dot, w, out, h1, r1, fd, "sweep 1");
  if (passes == 1) {
    sweep<T, true, false, true>(c, plan.sub, w, out, h1, rn, fn, "sweep 2");
    return;
  }
  if (plan.smem) {
    smem_sweep(c, plan.fused, w, out, h1, r2, fd);
  } else if (plan.fused_two) {
    sweep<T, true, true, false>(c, plan.fused, w, out, h1, r2, fd, "sweep 2 (fused)");
  } else {
    sweep<T, true, false, false>(c, plan.sub, w, out, h1, r2, fd, "sweep 2 (subtract)");
    sweep<T, false, true, false>(c, plan.dot, out, out, h1, r2, fd, "sweep 2 (dots)");
  }
  sweep<T, true, false, true>(c, plan.sub, out, out, h2, rn, fn, "sweep 3");
}

std::tuple<Tensor, Tensor, Tensor> reorthogonalize_cuda(Tensor w, Tensor basis, int64_t passes) {
  check_reorthogonalize_args(w, basis, passes);
  torch::stable::accelerator::DeviceGuard guard(w.get_device_index());
  w = torch::stable::contiguous(w);
  basis = torch::stable::contiguous(basis);
  const int64_t n = w.size(0);
  const int64_t k = basis.size(0);
  Tensor out = torch::stable::empty_like(w);
  Tensor coeffs = torch::stable::new_empty(w, {k});
  Tensor norm = torch::stable::new_empty(w, {});
  if (n == 0) {
    torch::stable::zero_(coeffs);
    torch::stable::zero_(norm);
    return std::make_tuple(out, coeffs, norm);
  }
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  // double workspace: per-chunk partials of the k dots and of the squared norm, h1, h2, their sum, and two
  // doubles' room for the three reduction tickets
  Tensor ws = torch::stable::new_empty(w, {k * chunks + chunks + 3 * k + 2}, ScalarType::Double);
  cudaStream_t stream = cuda::current_stream(w.get_device_index(), "reorthogonalize");
  if (w.scalar_type() == ScalarType::Float) {
    launch<float>(w.const_data_ptr<float>(), basis.const_data_ptr<float>(), k, n, passes,
                  out.mutable_data_ptr<float>(), coeffs.mutable_data_ptr<float>(),
                  norm.mutable_data_ptr<float>(), ws.mutable_data_ptr<double>(), stream);
  } else {
    launch<double>(w.const_data_ptr<double>(), basis.const_data_ptr<double>(), k, n, passes,
                   out.mutable_data_ptr<double>(), coeffs.mutable_data_ptr<double>(),
                   norm.mutable_data_ptr<double>(), ws.mutable_data_ptr<double>(), stream);
  }
  return std::make_tuple(out, coeffs, norm);
}

}  // namespace
}  // namespace hessext

STABLE_TORCH_LIBRARY_IMPL(hessext, CUDA, m) {
  m.impl("reorthogonalize", TORCH_BOX(&hessext::reorthogonalize_cuda));
}
