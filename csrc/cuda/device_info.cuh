// What the CUDA kernels ask of the device and of torch: the current stream, the device's SM count and L2
// size, and a kernel's resident blocks per SM (the occupancy API), looked up once per (device, kernel, block
// size) and cached. Included by the
// .cu files of csrc/cuda only (setup.py compiles *.cu; this header is not a translation unit).
#pragma once

#include <torch/csrc/stable/accelerator.h>
#include <torch/headeronly/util/Exception.h>

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

namespace hessext {
namespace cuda {

inline void check_cuda(cudaError_t err, const char* op, const char* what) {
  STD_TORCH_CHECK(err == cudaSuccess, op, ": ", what, " failed: ", cudaGetErrorString(err));
}

// torch's current CUDA stream on device `index`. From the stable ABI when the build targets torch >= 2.13
// (setup.py: target_version); a build against torch 2.10-2.12, whose stable ABI has no stream handle yet,
// asks AOTInductor's C shim (aoti_torch_get_current_cuda_stream, exported by libtorch_cuda.so, which a CUDA
// torch has loaded before any CUDA tensor exists), looked up once with dlsym.
inline cudaStream_t current_stream(int32_t index, const char* op) {
#if TORCH_FEATURE_VERSION >= 0x020d000000000000ULL
  (void)op;
  return static_cast<cudaStream_t>(torch::stable::accelerator::getCurrentStream(index).nativeHandle());
#else
  using Fn = int32_t (*)(int32_t, void**);
  static const Fn fn = []() -> Fn {
    void* lib = dlopen("libtorch_cuda.so", RTLD_LAZY | RTLD_NOLOAD);
    void* sym = dlsym(lib != nullptr ? lib : RTLD_DEFAULT, "aoti_torch_get_current_cuda_stream");
    return reinterpret_cast<Fn>(sym);
  }();
  STD_TORCH_CHECK(fn != nullptr, op, ": this build targets torch < 2.13 and needs "
                  "aoti_torch_get_current_cuda_stream from libtorch_cuda.so, which is not loaded; rebuild "
                  "against torch >= 2.13");
  void* stream = nullptr;
  STD_TORCH_CHECK(fn(index, &stream) == 0, op, ": aoti_torch_get_current_cuda_stream(", index, ") failed");
  return static_cast<cudaStream_t>(stream);
#endif
}

struct DeviceInfo {
  int device = 0;
  int sms = 1;               // multiprocessors
  int64_t l2_bytes = 0;      // L2 cache size
  int64_t smem_optin = 0;    // shared memory one block may opt in to
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
  int optin = 0;
  check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), op,
             "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  info.smem_optin = optin;
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

// The dynamic shared memory `kernel` may use on the current device: the opt-in maximum less its static shared
// memory, allowed once per (device, kernel) with cudaFuncAttributeMaxDynamicSharedMemorySize (launches above
// the default 48 KB need it).
template <typename Kernel>
int64_t max_dynamic_smem(Kernel kernel, const char* op) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, int64_t> cache;
  const DeviceInfo info = current_device_info(op);
  const auto key = std::make_pair(info.device, reinterpret_cast<const void*>(kernel));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  cudaFuncAttributes attr{};
  check_cuda(cudaFuncGetAttributes(&attr, kernel), op, "cudaFuncGetAttributes");
  const int64_t bytes = std::max<int64_t>(0, info.smem_optin - static_cast<int64_t>(attr.sharedSizeBytes));
  check_cuda(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), op,
      "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  cache.emplace(key, bytes);
  return bytes;
}

}  // namespace cuda
}  // namespace hessext
