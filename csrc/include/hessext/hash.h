// Counter-based Rademacher probes: the one definition of the hash, shared verbatim by the CPU kernel
// (csrc/cpu/rademacher.cpp), the CUDA kernel (csrc/cuda/rademacher.cu) and mirrored bit for bit by
// hessext/_reference.py (rademacher_bits). Change all three together.
//
// value(seed, c) = +1 if the top bit of hash(seed, c) is clear, else -1, for a 64-bit counter c:
//   k1 = fmix32(lo32(seed) ^ GOLDEN),  k2 = fmix32(hi32(seed) ^ k1 ^ C1)        (once per call, on the host)
//   hash(seed, c) = fmix32(fmix32(lo32(c) ^ k1) + (hi32(c) ^ k2))               (mod 2^32)
// where fmix32 is MurmurHash3's 32-bit finaliser (a bijection on uint32 with full avalanche).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HESSEXT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HESSEXT_HOST_DEVICE inline
#endif

namespace hessext {

constexpr uint32_t kGolden = 0x9E3779B9u;
constexpr uint32_t kC1 = 0x85EBCA6Bu;
constexpr uint32_t kC2 = 0xC2B2AE35u;

// MurmurHash3 fmix32.
HESSEXT_HOST_DEVICE uint32_t fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= kC1;
  x ^= x >> 13;
  x *= kC2;
  x ^= x >> 16;
  return x;
}

struct ProbeKeys {
  uint32_t k1;
  uint32_t k2;
};

// The two keys of a 64-bit seed (its two's-complement bits when passed as int64).
HESSEXT_HOST_DEVICE ProbeKeys probe_keys(uint64_t seed) {
  ProbeKeys keys;
  keys.k1 = fmix32(static_cast<uint32_t>(seed) ^ kGolden);
  keys.k2 = fmix32(static_cast<uint32_t>(seed >> 32) ^ keys.k1 ^ kC1);
  return keys;
}

// hash for a counter split into its low word and the already keyed high word (hi32(c) ^ k2): the inner
// loops keep hk2 fixed while lo runs over consecutive uint32 lanes.
HESSEXT_HOST_DEVICE uint32_t probe_hash_lo(uint32_t lo, uint32_t k1, uint32_t hk2) {
  return fmix32(fmix32(lo ^ k1) + hk2);
}

HESSEXT_HOST_DEVICE uint32_t probe_hash(uint64_t counter, ProbeKeys keys) {
  return probe_hash_lo(static_cast<uint32_t>(counter), keys.k1,
                       static_cast<uint32_t>(counter >> 32) ^ keys.k2);
}

// +1 or -1 from the hash's top bit without a branch or an int->float conversion: the top bit becomes the
// sign bit of 1.0 (so bit 0 -> +1, bit 1 -> -1, the reference's 1 - 2 * bit).
template <typename T>
HESSEXT_HOST_DEVICE T rademacher_from_hash(uint32_t h);

template <>
HESSEXT_HOST_DEVICE float rademacher_from_hash<float>(uint32_t h) {
  const uint32_t bits = 0x3F800000u | (h & 0x80000000u);
  float v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

template <>
HESSEXT_HOST_DEVICE double rademacher_from_hash<double>(uint32_t h) {
  const uint64_t bits = 0x3FF0000000000000ull | (static_cast<uint64_t>(h & 0x80000000u) << 32);
  double v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

template <typename T>
HESSEXT_HOST_DEVICE T rademacher_value(uint64_t counter, ProbeKeys keys) {
  return rademacher_from_hash<T>(probe_hash(counter, keys));
}

}  // namespace hessext
