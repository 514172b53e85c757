// Launch sizing shared by the CUDA kernels: the device's SM count and L2 size and a kernel's resident blocks
// per SM (the occupancy API), looked up once per (device, kernel, block size) and cached. Included by the
// .cu files of csrc/cuda only (setup.py compiles *.cu; this header is not a translation unit).
#pragma once

#include <torch/headeronly/util/Exception.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

namespace hessext {
namespace cuda {

inline void check_cuda(cudaError_t err, const char* op, const char* what) {
  STD_TORCH_CHECK(err == cudaSuccess, op, ": ", what, " failed: ", cudaGetErrorString(err));
}

struct DeviceInfo {
  int device = 0;
  int sms = 1;               // multiprocessors
  int64_t l2_bytes = 0;      // L2 cache size
};

// The current device's SM count and L2 size (the caller holds a DeviceGuard for the tensors' device).
inline DeviceInfo current_device_info(const char* op) {
  static std::mutex mu;
  static std::map<int, DeviceInfo> cache;
  int device = 0;
  check_cuda(cudaGetDevice(&device), op, "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  DeviceInfo info;
  info.device = device;
  int l2 = 0;
  check_cuda(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device), op,
             "cudaDeviceGetAttribute(MultiProcessorCount)");
  check_cuda(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device), op,
             "cudaDeviceGetAttribute(L2CacheSize)");
  info.l2_bytes = l2;
  if (info.sms < 1) info.sms = 1;
  cache.emplace(device, info);
  return info;
}

// Blocks of `kernel` (launched with `threads` threads and `smem` bytes of dynamic shared memory) resident on
// one SM of the current device at once: cudaOccupancyMaxActiveBlocksPerMultiprocessor, at least 1.
template <typename Kernel>
int resident_blocks_per_sm(Kernel kernel, int threads, size_t smem, const char* op) {
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int, size_t>, int> cache;
  int device = 0;
  check_cuda(cudaGetDevice(&device), op, "cudaGetDevice");
  const auto key = std::make_tuple(device, reinterpret_cast<const void*>(kernel), threads, smem);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int blocks = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem), op,
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  if (blocks < 1) blocks = 1;
  cache.emplace(key, blocks);
  return blocks;
}

}  // namespace cuda
}  // namespace hessext
