// CUDA kernel of hessext::reorthogonalize (CGS2 against the rows of basis [k, n]); same sweeps as the CPU
// kernel (csrc/cpu/reorthogonalize.cpp):
//
//   sweep 1:  h1 = B w                                   tile_sweep<DOT>        + reduce_rows
//   sweep 2:  w' = w - Bᵀ h1 ; h2 = B w'                 tile_sweep<SUB, DOT>   + reduce_rows
//   sweep 3:  w'' = w' - Bᵀ h2 ; ‖w''‖²                  tile_sweep<SUB, NORM>  + reduce_norm
//
// One block per tile of kTile columns. SUB: each thread keeps kVpt columns in registers and streams the k
// rows over them (coalesced across the block). DOT: the tile of w is staged in shared memory, each warp
// takes rows r = warp, warp + kWarps, ... and reduces its row's dot product with shuffles; the block writes
// one partial per row to partial[r * blocks + block], summed by reduce_rows in a fixed order (no atomics,
// so results are deterministic). In sweep 2 a block re-reads its own tile right after subtracting, which
// is served by L2 when the tiles of the resident blocks fit there.
//
// Precision, as on the CPU: dot products, squared norms, their partials and every reduction are kept in
// double for both dtypes (the products of two floats are exact in double); the coefficients applied by a
// subtraction are rounded to T, and the summed coefficients of both passes are kept in double until the
// final rounding to T. Only the subtraction w -= Bᵀ h runs in T.
//
// Aliasing: sweep 3 updates out in place (src == dst), so src and dst are not __restrict__; the basis,
// the coefficients and the partials never alias anything written by the same kernel.
//
// Launches go on the current stream of w's device under a device guard; every launch is checked.
#include "hessext/checks.h"

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <tuple>

namespace hessext {
namespace {

using torch::stable::Tensor;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kVpt = 4;
constexpr int kTile = kThreads * kVpt;

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

// src and dst may be the same array (an in-place update): no __restrict__ on them.
template <typename T, bool SUB, bool DOT, bool NORM>
__global__ void __launch_bounds__(kThreads) tile_sweep(const T* __restrict__ B, int64_t k, int64_t n,
                                                       const T* src, T* dst, const double* __restrict__ hsub,
                                                       double* __restrict__ partial,
                                                       double* __restrict__ norm_partial) {
  __shared__ T xs[kTile];
  __shared__ double scratch[kWarps];
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kTile;

  T v[kVpt];
#pragma unroll
  for (int q = 0; q < kVpt; ++q) {
    const int64_t c = t0 + threadIdx.x + q * kThreads;
    v[q] = c < n ? src[c] : T(0);
  }
  if (SUB) {
#pragma unroll 4
    for (int64_t r = 0; r < k; ++r) {
      const T h = static_cast<T>(hsub[r]);
      const T* row = B + r * n;
#pragma unroll
      for (int q = 0; q < kVpt; ++q) {
        const int64_t c = t0 + threadIdx.x + q * kThreads;
        if (c < n) v[q] -= h * row[c];
      }
    }
#pragma unroll
    for (int q = 0; q < kVpt; ++q) {
      const int64_t c = t0 + threadIdx.x + q * kThreads;
      if (c < n) dst[c] = v[q];
    }
  }
  if (DOT) {
#pragma unroll
    for (int q = 0; q < kVpt; ++q) xs[threadIdx.x + q * kThreads] = v[q];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int64_t len = (n - t0) < kTile ? (n - t0) : kTile;
    for (int64_t r = warp; r < k; r += kWarps) {
      const T* row = B + r * n + t0;
      double s = 0;
      for (int64_t i = lane; i < len; i += 32)
        s = fma(static_cast<double>(row[i]), static_cast<double>(xs[i]), s);
      s = warp_sum(s);
      if (lane == 0) partial[r * gridDim.x + blockIdx.x] = s;
    }
  }
  if (NORM) {
    double s = 0;
#pragma unroll
    for (int q = 0; q < kVpt; ++q) s = fma(static_cast<double>(v[q]), static_cast<double>(v[q]), s);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) norm_partial[blockIdx.x] = s;
  }
}

// h[r] = sum_b partial[r * blocks + b];  hsum[r] = (accumulate ? hsum[r] : 0) + h[r];  coeffs[r] = hsum[r]
// rounded to T. One block per row; everything but coeffs in double.
template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_rows(const double* __restrict__ partial, int64_t blocks,
                                                        double* __restrict__ h, double* __restrict__ hsum,
                                                        T* __restrict__ coeffs, bool accumulate) {
  __shared__ double scratch[kWarps];
  const int64_t r = blockIdx.x;
  double s = 0;
  for (int64_t b = threadIdx.x; b < blocks; b += kThreads) s += partial[r * blocks + b];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) {
    h[r] = s;
    const double total = accumulate ? hsum[r] + s : s;
    hsum[r] = total;
    coeffs[r] = static_cast<T>(total);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_norm(const double* __restrict__ partial, int64_t blocks,
                                                        T* __restrict__ norm) {
  __shared__ double scratch[kWarps];
  double s = 0;
  for (int64_t b = threadIdx.x; b < blocks; b += kThreads) s += partial[b];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *norm = static_cast<T>(sqrt(s));
}

template <typename T>
void launch(const T* w, const T* B, int64_t k, int64_t n, int64_t passes, T* out, T* coeffs, T* norm,
            double* ws, cudaStream_t stream) {
  const int64_t blocks = (n + kTile - 1) / kTile;
  double* partial = ws;                      // [k, blocks]
  double* norm_partial = ws + k * blocks;    // [blocks]
  double* h1 = norm_partial + blocks;        // [k]
  double* h2 = h1 + k;                       // [k]
  double* hsum = h2 + k;                     // [k]
  const dim3 grid(static_cast<unsigned>(blocks));
  if (k == 0) {
    tile_sweep<T, true, false, true><<<grid, kThreads, 0, stream>>>(B, 0, n, w, out, h1, partial,
                                                                    norm_partial);
    check_launch("tile_sweep (copy + norm)");
  } else {
    tile_sweep<T, false, true, false><<<grid, kThreads, 0, stream>>>(B, k, n, w, out, h1, partial,
                                                                     norm_partial);
    check_launch("tile_sweep (sweep 1)");
    reduce_rows<T><<<static_cast<unsigned>(k), kThreads, 0, stream>>>(partial, blocks, h1, hsum, coeffs,
                                                                      false);
    check_launch("reduce_rows (sweep 1)");
    if (passes == 2) {
      tile_sweep<T, true, true, false><<<grid, kThreads, 0, stream>>>(B, k, n, w, out, h1, partial,
                                                                      norm_partial);
      check_launch("tile_sweep (sweep 2)");
      reduce_rows<T><<<static_cast<unsigned>(k), kThreads, 0, stream>>>(partial, blocks, h2, hsum, coeffs,
                                                                        true);
      check_launch("reduce_rows (sweep 2)");
      tile_sweep<T, true, false, true><<<grid, kThreads, 0, stream>>>(B, k, n, out, out, h2, partial,
                                                                      norm_partial);
      check_launch("tile_sweep (sweep 3)");
    } else {
      tile_sweep<T, true, false, true><<<grid, kThreads, 0, stream>>>(B, k, n, w, out, h1, partial,
                                                                      norm_partial);
      check_launch("tile_sweep (sweep 2)");
    }
  }
  reduce_norm<T><<<1, kThreads, 0, stream>>>(norm_partial, blocks, norm);
  check_launch("reduce_norm");
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
  const int64_t blocks = (n + kTile - 1) / kTile;
  // double workspace: per-block partials of the k dots and of the squared norm, h1, h2 and their sum
  Tensor ws = torch::stable::new_empty(w, {k * blocks + blocks + 3 * k}, ScalarType::Double);
  cudaStream_t stream = static_cast<cudaStream_t>(
      torch::stable::accelerator::getCurrentStream(w.get_device_index()).nativeHandle());
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
