// The memory-order walk of fill_walk (rademacher.cu) over a 2-D [n, m] layout, in host/device functions so
// that the index arithmetic compiles (and can be checked) on the host too; no torch or CUDA headers.
//
// The layout is seen as (outer, inner), the inner dimension being the one with the smaller stride: element
// (o, e) sits at o * os + e * es and has counter offset + o * oc + e * ec (row-major [n, m]: inner = j with
// counter step n, outer = i with counter step 1; columns with gaps: inner = i, outer = j). The walk index
// g = o * inner + e is then memory order. A thread starts at g0 (one division) and advances by the grid
// stride S = do_ * inner + de (de < inner), which moves the address by da and the counter by dc; when e
// passes inner it wraps once more by (wa, wc). Counter arithmetic is modulo 2^64, as in the definition of the
// probe bits (docs/internals.md).
#pragma once

#include "hessext/hash.h"  // HESSEXT_HOST_DEVICE

#include <cstdint>

namespace hessext {

struct Walk {
  int64_t inner, outer;  // sizes
  int64_t es, os;        // element strides (es <= os)
  uint64_t ec, oc;       // counter strides
  int64_t de, do_;       // the grid stride in (inner, outer) steps
  int64_t da, wa;        // address increments: per grid stride, and per wrap of the inner index
  uint64_t dc, wc;       // counter increments: the same
};

struct WalkPos {
  int64_t o, e, a;
  uint64_t c;
};

// The walk of [n, m] with strides (s0, s1) for a grid stride of `stride` elements (both sizes > 1).
inline Walk make_walk(int64_t n, int64_t m, int64_t s0, int64_t s1, int64_t stride) {
  Walk w;
  const uint64_t un = static_cast<uint64_t>(n);
  if (s0 <= s1) {
    w.inner = n; w.outer = m; w.es = s0; w.os = s1; w.ec = 1; w.oc = un;
  } else {
    w.inner = m; w.outer = n; w.es = s1; w.os = s0; w.ec = un; w.oc = 1;
  }
  w.do_ = stride / w.inner;
  w.de = stride - w.do_ * w.inner;
  w.da = w.do_ * w.os + w.de * w.es;
  w.dc = static_cast<uint64_t>(w.do_) * w.oc + static_cast<uint64_t>(w.de) * w.ec;
  w.wa = w.os - w.inner * w.es;
  w.wc = w.oc - static_cast<uint64_t>(w.inner) * w.ec;
  return w;
}

// Position of walk index g0 (< 2^32): a 32-bit division (none when inner >= 2^32, as then g0 < inner).
HESSEXT_HOST_DEVICE WalkPos walk_start(const Walk& w, uint32_t g0, uint64_t offset) {
  WalkPos p;
  p.o = 0;
  p.e = g0;
  if (w.inner <= 0xFFFFFFFFll) {
    const uint32_t inner = static_cast<uint32_t>(w.inner);
    const uint32_t q = g0 / inner;
    p.o = q;
    p.e = g0 - q * inner;
  }
  p.a = p.o * w.os + p.e * w.es;
  p.c = offset + static_cast<uint64_t>(p.o) * w.oc + static_cast<uint64_t>(p.e) * w.ec;
  return p;
}

// Advance by the grid stride: adds and one conditional wrap.
HESSEXT_HOST_DEVICE void walk_step(const Walk& w, WalkPos& p) {
  p.e += w.de;
  p.o += w.do_;
  p.a += w.da;
  p.c += w.dc;
  if (p.e >= w.inner) {
    p.e -= w.inner;
    ++p.o;
    p.a += w.wa;
    p.c += w.wc;
  }
}

}  // namespace hessext
