// CUDA kernel of hessext::rademacher_: out[i, j] = ±1 from hash(seed, offset + j*n + i), the hash of
// hessext/hash.h shared with the CPU kernel and mirrored by hessext/_reference.py. The bits are a pure
// function of the element's counter, so any walk order gives the same tensor.
//
// Every layout is written in memory order (consecutive threads of a warp write consecutive addresses when
// the fastest-moving dimension has unit stride) by a grid-stride loop whose grid is capped at the blocks
// resident on the device (occupancy API), so each thread walks many elements:
//   fill_flat: 1-D [n] of any stride, a dense column-major [n, m] block, [1, m] / [n, 1]: counter offset + f
//              for the f-th element, no index arithmetic beyond f * step.
//   fill_walk: any other 2-D layout (row-major [n, m], padded rows or columns, odd strides): the dimension
//              with the smaller stride is the inner one; a thread divides its first walk index once (32-bit)
//              and then advances (outer, inner), the address and the counter by the grid stride with adds
//              and one conditional wrap, never a division per element.
#include "hessext/checks.h"
#include "hessext/hash.h"
#include "device_info.cuh"
#include "probe_walk.h"

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

// dst[f * step] = value(offset + f) for f < total.
template <typename T>
__global__ void __launch_bounds__(kThreads) fill_flat(T* __restrict__ dst, int64_t total, int64_t step,
                                                      uint64_t offset, ProbeKeys keys) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
#pragma unroll 4
  for (int64_t f = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; f < total; f += stride)
    dst[f * step] = rademacher_value<T>(offset + static_cast<uint64_t>(f), keys);
}

// One thread's walk over a 2-D layout (probe_walk.h), its first index divided once, then stepped with adds.
template <typename T>
__global__ void __launch_bounds__(kThreads) fill_walk(T* __restrict__ dst, Walk w, uint64_t offset,
                                                      ProbeKeys keys) {
  // g0 < 2^32: the grid is capped at the resident blocks, far below 2^24
  WalkPos p = walk_start(w, blockIdx.x * kThreads + threadIdx.x, offset);
  while (p.o < w.outer) {
    dst[p.a] = rademacher_value<T>(p.c, keys);
    walk_step(w, p);
  }
}

// Grid of a grid-stride kernel over `total` elements: enough blocks to cover them, at most the blocks
// resident on the device at once (so each thread loops over total / (resident threads) elements).
template <typename Kernel>
unsigned grid_for(Kernel kernel, int64_t total) {
  const cuda::DeviceInfo dev = cuda::current_device_info("rademacher_");
  const int per_sm = cuda::resident_blocks_per_sm(kernel, kThreads, 0, "rademacher_");
  const int64_t resident = static_cast<int64_t>(per_sm) * dev.sms;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min((total + kThreads - 1) / kThreads, resident)));
}

template <typename T>
void launch(T* data, int64_t n, int64_t m, int64_t s0, int64_t s1, uint64_t offset, ProbeKeys keys,
            cudaStream_t stream) {
  const int64_t total = n * m;
  // one column, one row, or a dense column-major block: the f-th element in memory has counter offset + f
  const bool flat = m == 1 || n == 1 || (s0 == 1 && s1 == n);
  if (flat) {
    const int64_t step = m == 1 ? s0 : (n == 1 ? s1 : 1);
    const unsigned grid = grid_for(fill_flat<T>, total);
    fill_flat<T><<<grid, kThreads, 0, stream>>>(data, total, step, offset, keys);
  } else {
    const unsigned grid = grid_for(fill_walk<T>, total);
    const Walk w = make_walk(n, m, s0, s1, static_cast<int64_t>(grid) * kThreads);
    fill_walk<T><<<grid, kThreads, 0, stream>>>(data, w, offset, keys);
  }
  cuda::check_cuda(cudaGetLastError(), "rademacher_", "CUDA launch");
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
  cudaStream_t stream = cuda::current_stream(out.get_device_index(), "rademacher_");
  if (out.scalar_type() == ScalarType::Float) {
    launch<float>(out.mutable_data_ptr<float>(), n, m, s0, s1, static_cast<uint64_t>(offset), keys, stream);
  } else {
    launch<double>(out.mutable_data_ptr<double>(), n, m, s0, s1, static_cast<uint64_t>(offset), keys,
                   stream);
  }
}

}  // namespace
}  // namespace hessext

STABLE_TORCH_LIBRARY_IMPL(hessext, CUDA, m) {
  m.impl("rademacher_", TORCH_BOX(&hessext::rademacher_cuda));
}
