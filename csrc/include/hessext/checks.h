// Argument checks shared by the CPU and CUDA kernels (host code only). They mirror
// hessext/_reference.py's checks: every message names the argument and the shape/dtype received.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace hessext {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

inline std::string shape_str(const Tensor& t) {
  std::ostringstream os;
  os << "[";
  for (int64_t d = 0; d < t.dim(); ++d) os << (d ? ", " : "") << t.size(d);
  os << "]";
  return os.str();
}

inline std::string device_str(const Tensor& t) {
  std::ostringstream os;
  os << (t.is_cuda() ? "cuda" : t.is_cpu() ? "cpu" : "another device");
  if (t.get_device_index() >= 0) os << ":" << static_cast<int>(t.get_device_index());
  return os.str();
}

// The dtype as Python prints it (torch.float32, ...), so messages read the same on every backend.
inline std::string dtype_str(ScalarType s) {
  switch (s) {
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Bool: return "torch.bool";
    default: return std::string("torch.") + torch::headeronly::toString(s);
  }
}

inline bool is_supported_float(ScalarType s) {
  return s == ScalarType::Float || s == ScalarType::Double;
}

inline void check_reorthogonalize_args(const Tensor& w, const Tensor& basis, int64_t passes) {
  STD_TORCH_CHECK(w.dim() == 1, "reorthogonalize: w must be 1-D [n], got ", w.dim(), "-D ", shape_str(w));
  STD_TORCH_CHECK(basis.dim() == 2, "reorthogonalize: basis must be 2-D [k, n], got ", basis.dim(), "-D ",
                  shape_str(basis));
  STD_TORCH_CHECK(basis.size(1) == w.size(0), "reorthogonalize: basis must be [k, n] with n = len(w) = ",
                  w.size(0), ", got ", shape_str(basis));
  STD_TORCH_CHECK(is_supported_float(w.scalar_type()), "reorthogonalize: w must be float32 or float64, got ",
                  dtype_str(w.scalar_type()));
  STD_TORCH_CHECK(basis.scalar_type() == w.scalar_type(), "reorthogonalize: basis dtype ",
                  dtype_str(basis.scalar_type()), " differs from w dtype ",
                  dtype_str(w.scalar_type()));
  STD_TORCH_CHECK(basis.device() == w.device(),
                  "reorthogonalize: basis and w must be on the same device, got basis on ",
                  device_str(basis), " and w on ", device_str(w));
  STD_TORCH_CHECK(passes == 1 || passes == 2, "reorthogonalize: passes must be 1 or 2, got ", passes);
}

// "shape [5, 3], strides [1, 0]", as hessext/_reference.py's _layout_str prints it.
inline std::string layout_str(const Tensor& t) {
  std::ostringstream os;
  os << "shape " << shape_str(t) << ", strides [";
  for (int64_t d = 0; d < t.dim(); ++d) os << (d ? ", " : "") << t.stride(d);
  os << "]";
  return os.str();
}

// Whether two elements of t share a memory location; the same rule as hessext/_reference.py's
// has_internal_overlap: exact for up to 2 dimensions of size > 1 (i p = j q with 0 < i < a, 0 < j < b has a
// solution exactly when q / g < a and p / g < b, g = gcd(p, q)), the sufficient "each stride exceeds the
// extent of the smaller ones" test beyond.
inline bool has_internal_overlap(const Tensor& t) {
  if (t.numel() == 0) return false;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (|stride|, size) of the dimensions of size > 1
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1) dims.emplace_back(std::llabs(t.stride(d)), t.size(d));
  std::sort(dims.begin(), dims.end());
  for (const auto& [st, sz] : dims)
    if (st == 0) return true;
  if (dims.size() <= 1) return false;
  if (dims.size() == 2) {
    const auto [p, a] = dims[0];
    const auto [q, b] = dims[1];
    const int64_t g = std::gcd(p, q);
    return q / g < a && p / g < b;
  }
  int64_t extent = 0;
  for (const auto& [st, sz] : dims) {
    if (st <= extent) return true;
    extent += st * (sz - 1);
  }
  return false;
}

// An output argument `name` of `op` must not write one location twice (expanded / stride-0 views).
inline void check_no_internal_overlap(const char* op, const char* name, const Tensor& t) {
  STD_TORCH_CHECK(!has_internal_overlap(t), op, ": ", name, " must not have elements that share memory (an "
                  "expanded or overlapping view), got ", layout_str(t), "; write into a tensor that owns its "
                  "elements (e.g. ", name, ".clone()) instead");
}

inline void check_rademacher_args(const Tensor& out, int64_t offset) {
  STD_TORCH_CHECK(out.dim() == 1 || out.dim() == 2, "rademacher_: out must be 1-D [n] or 2-D [n, m], got ",
                  out.dim(), "-D ", shape_str(out));
  STD_TORCH_CHECK(is_supported_float(out.scalar_type()), "rademacher_: out must be float32 or float64, got ",
                  dtype_str(out.scalar_type()));
  STD_TORCH_CHECK(offset >= 0, "rademacher_: offset must be >= 0, got ", offset);
  STD_TORCH_CHECK(offset <= INT64_MAX - out.numel(),
                  "rademacher_: offset + out.numel() must be < 2**63, got offset=", offset, " and ",
                  out.numel(), " elements");
  check_no_internal_overlap("rademacher_", "out", out);
}

}  // namespace hessext
