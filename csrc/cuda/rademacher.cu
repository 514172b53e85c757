// CUDA kernel of hessext::rademacher_: out[i, j] = ±1 from hash(seed, offset + j*n + i), the hash of
// hessext/hash.h shared with the CPU kernel and mirrored by hessext/_reference.py. Grid-stride loops; the
// common layouts (1-D contiguous, column-major block) take a kernel without index division.
#include "hessext/checks.h"
#include "hessext/hash.h"

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace hessext {
namespace {

using torch::stable::Tensor;

constexpr int kThreads = 256;

// dst[f] = value(offset + f) for f < total.
template <typename T>
__global__ void __launch_bounds__(kThreads) fill_flat(T* __restrict__ dst, int64_t total, uint64_t offset,
                                                      ProbeKeys keys) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t f = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; f < total; f += stride)
    dst[f] = rademacher_value<T>(offset + static_cast<uint64_t>(f), keys);
}

// General strided layout: flat index f = r * inner + e (counter order within runs).
template <typename T>
__global__ void __launch_bounds__(kThreads) fill_strided(T* __restrict__ dst, int64_t total, int64_t inner,
                                                         int64_t run_stride, int64_t elem_stride,
                                                         uint64_t run_counter, uint64_t elem_counter,
                                                         uint64_t offset, ProbeKeys keys) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t f = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; f < total; f += stride) {
    const int64_t r = f / inner;
    const int64_t e = f - r * inner;
    const uint64_t c =
        offset + static_cast<uint64_t>(r) * run_counter + static_cast<uint64_t>(e) * elem_counter;
    dst[r * run_stride + e * elem_stride] = rademacher_value<T>(c, keys);
  }
}

template <typename T>
void launch(T* data, int64_t n, int64_t m, int64_t dim, int64_t s0, int64_t s1, uint64_t offset,
            ProbeKeys keys, cudaStream_t stream) {
  const int64_t total = n * m;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
  const bool flat = (dim == 1 && s0 == 1) || (dim == 2 && (s0 == 1 || n == 1) && (s1 == n || m == 1));
  if (flat) {
    fill_flat<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(data, total, offset, keys);
  } else if (dim == 1) {
    fill_strided<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(data, total, n, 0, s0, 0, 1,
                                                                            offset, keys);
  } else {
    // columns as runs: element (i, j) at i*s0 + j*s1 with counter offset + j*n + i
    fill_strided<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        data, total, n, s1, s0, static_cast<uint64_t>(n), 1, offset, keys);
  }
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, "rademacher_: CUDA launch failed: ", cudaGetErrorString(err));
}

void rademacher_cuda(Tensor out, int64_t seed, int64_t offset) {
  check_rademacher_args(out, offset);
  torch::stable::accelerator::DeviceGuard guard(out.get_device_index());
  const int64_t n = out.size(0);
  const int64_t m = out.dim() == 2 ? out.size(1) : 1;
  if (n == 0 || m == 0) return;
  const ProbeKeys keys = probe_keys(static_cast<uint64_t>(seed));
  const int64_t s0 = out.stride(0);
  const int64_t s1 = out.dim() == 2 ? out.stride(1) : 0;
  cudaStream_t stream = static_cast<cudaStream_t>(
      torch::stable::accelerator::getCurrentStream(out.get_device_index()).nativeHandle());
  if (out.scalar_type() == ScalarType::Float) {
    launch<float>(out.mutable_data_ptr<float>(), n, m, out.dim(), s0, s1, static_cast<uint64_t>(offset), keys,
                  stream);
  } else {
    launch<double>(out.mutable_data_ptr<double>(), n, m, out.dim(), s0, s1, static_cast<uint64_t>(offset),
                   keys, stream);
  }
}

}  // namespace
}  // namespace hessext

STABLE_TORCH_LIBRARY_IMPL(hessext, CUDA, m) {
  m.impl("rademacher_", TORCH_BOX(&hessext::rademacher_cuda));
}
