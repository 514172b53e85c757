// Launch plan of the CUDA reorthogonalize (reorthogonalize.cu): tile sizes, grids and how sweep 2 runs --
// fused through L2, fused through shared memory, or split in two -- from n, k, the element size and the
// device (SM count, L2 size, resident blocks per SM from the occupancy API). Host-only arithmetic without
// CUDA or torch headers, so it compiles and is checked on any machine (tests/test_cuda_host.py).
// benchmarks/bench_kernels.py mirrors the sweep-2 choice (the sweep count it reports): keep them in step.
#pragma once

#include <algorithm>
#include <cstdint>

namespace hessext {
namespace reorth {

constexpr int kThreads = 256;                 // threads per block
constexpr int kWarps = kThreads / 32;
constexpr int kMaxVpt = 4;                    // columns per thread (registers) in a tile: 1, 2 or 4
constexpr int kMaxTile = kThreads * kMaxVpt;  // 1024 columns
constexpr int kChunk = 128;                   // columns per partial dot product / squared norm
constexpr int kRowsPerWarp = 4;               // rows a warp dots at once, one accumulator each
// Fused sweep 2 re-reads each tile's k rows from L2 right after subtracting them: the tiles of the blocks in
// flight (blocks x k x tile x element size) must fit in this share of L2 (the rest holds w, out, partials and
// other traffic) ...
constexpr int kL2ShareDivisor = 2;
// ... with at least this many blocks of the smallest tile per SM (fewer leave too few loads in flight; a
// first guess, to be measured on a GPU, overridden by HESSEXT_REORTH_FUSE=always|never).
constexpr int kFuseMinBlocksPerSm = 2;
// When the L2 cannot hold them, sweep 2 can stage the k rows of one 128-column chunk in shared memory (k x
// kChunk elements a block) and read them there twice: 3 sweeps for any k whose stage fits, if at least this
// many blocks stay resident per SM (one block alone would leave HBM idle while it computes; a first guess,
// to be measured on a GPU, overridden by HESSEXT_REORTH_FUSE=smem|never).
constexpr int kSmemMinBlocksPerSm = 2;
// A sweep's reduction (the k dot products' chunk partials, or the squared norm's) is folded into the sweep
// itself -- its last block to finish sums the partials, in the same fixed order as the separate reduction
// kernel -- when there are at most this many partials: one block then reads <= 256 KB (a few microseconds,
// about one launch). Larger reductions keep their own launch of one block per row, which reads them at the
// device's bandwidth. Only the launch count depends on this choice, never the bits.
constexpr int64_t kFoldMaxPartials = int64_t{1} << 15;

// HESSEXT_REORTH_FUSE: kAlways = fused through L2, kSmem = fused through shared memory, kNever = split.
// HESSEXT_REORTH_FOLD uses kAuto / kAlways / kNever.
enum class FuseMode { kAuto, kAlways, kNever, kSmem };

struct Device {
  int sms;
  int64_t l2_bytes;
  int resident_dot;        // resident blocks per SM of the DOT-only kernel
  int resident_fused;      // ... of SUB + DOT
  int resident_sub;        // ... of SUB (+ NORM)
  int resident_smem = 0;   // ... of the shared-memory fused sweep with this k's stage; 0: it does not fit
};

// Dynamic shared memory of the shared-memory fused sweep: the k rows of one chunk.
inline int64_t smem_stage_bytes(int64_t k, int elt) { return k * kChunk * elt; }

struct SweepLaunch {
  int vpt = kMaxVpt;       // tile = vpt * kThreads columns
  int64_t gx = 1;          // blocks over tiles (grid-stride loop when fewer than the tiles)
  int64_t gy = 1;          // blocks over row ranges (DOT-only sweeps)
  int64_t rows_per_y = 0;  // rows of a block's range
};

struct Plan {
  SweepLaunch dot;    // sweep 1 (and the dot half of an unfused sweep 2)
  SweepLaunch fused;  // sweep 2 when fused
  SweepLaunch sub;    // the subtracting sweeps
  bool fused_two = false;  // sweep 2 in one read of the basis from HBM ...
  bool smem = false;       // ... through shared memory (else through L2)
  int sweeps = 0;     // sweeps over the basis
  bool fold_dots = false;  // the dot sweeps reduce their own partials (last block)
  bool fold_norm = false;  // the norm sweep reduces its own partials (last block)
  int launches = 0;        // stream operations of one call: kernels, plus one memset of the fold counters
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether sweep 2 runs fused (one read of the basis from HBM, the second from L2) under kAuto: the k rows of
// kFuseMinBlocksPerSm smallest tiles (kThreads columns) per SM, or of all of w when it is shorter, fit in
// L2 / kL2ShareDivisor.
inline bool fuse_sweep_two(int64_t n, int64_t k, int elt, int sms, int64_t l2_bytes) {
  const int64_t columns = std::min(ceil_div(n, kThreads), int64_t{kFuseMinBlocksPerSm} * sms) * kThreads;
  return k * columns * elt <= l2_bytes / kL2ShareDivisor;
}

// A streaming sweep: the large tile when there are at least as many tiles as resident blocks, else the
// smallest (more blocks); the grid capped at the resident blocks.
inline SweepLaunch stream_launch(int64_t n, int64_t k, int64_t resident) {
  SweepLaunch s;
  s.vpt = ceil_div(n, kMaxTile) >= resident ? kMaxVpt : 1;
  const int64_t tiles = ceil_div(n, int64_t{s.vpt} * kThreads);
  s.gx = std::max<int64_t>(1, std::min(tiles, resident));
  s.rows_per_y = std::max<int64_t>(k, 1);
  return s;
}

// The DOT-only sweep: as stream_launch, and when the tiles are fewer than the resident blocks the rows are
// split over gridDim.y, each range sized for every warp of a full tile (kRowsPerWarp rows x 2 vpt chunks >=
// kWarps pairs); a tile shorter than vpt * kThreads columns (n < 256) or the last, shorter range leaves some
// warps idle -- microseconds at those sizes.
inline SweepLaunch dot_launch(int64_t n, int64_t k, int64_t resident) {
  SweepLaunch s = stream_launch(n, k, resident);
  if (s.gx < resident && k > 0) {
    const int64_t chunks_per_tile = 2 * s.vpt;
    const int64_t rows_min =
        std::max<int64_t>(kRowsPerWarp, ceil_div(kRowsPerWarp * kWarps, chunks_per_tile));
    const int64_t gy = std::max<int64_t>(1, std::min({ceil_div(resident, s.gx), ceil_div(k, rows_min),
                                                      int64_t{65535}}));
    s.rows_per_y = ceil_div(ceil_div(k, gy), kRowsPerWarp) * kRowsPerWarp;
    s.gy = ceil_div(k, s.rows_per_y);
  }
  return s;
}

// The fused sweep: the largest tile whose in-flight blocks fit the L2 share at full residency (and that still
// gives every resident block a tile), else the smallest tile with the grid cut to what fits (at least one).
inline SweepLaunch fused_launch(int64_t n, int64_t k, int elt, const Device& d) {
  const int64_t budget = d.l2_bytes / kL2ShareDivisor;
  const int64_t resident = int64_t{d.resident_fused} * d.sms;
  SweepLaunch s;
  s.rows_per_y = k;
  for (int vpt = kMaxVpt; vpt >= 1; vpt /= 2) {
    const int64_t tiles = ceil_div(n, int64_t{vpt} * kThreads);
    const int64_t blocks = std::max<int64_t>(1, std::min(tiles, resident));
    const bool fits = blocks * k * vpt * kThreads * elt <= budget;
    if ((fits && tiles >= resident) || vpt == 1) {  // a larger tile only when it leaves no SM idle
      s.vpt = vpt;
      s.gx = blocks;
      if (vpt == 1) s.gx = std::max<int64_t>(1, std::min(blocks, budget / (k * kThreads * elt)));
      return s;
    }
  }
  return s;
}

// Which reductions are folded into their sweeps, and the call's stream operations: the sweeps' kernels, one
// reduction kernel per dot sweep and for the norm unless folded, and one memset of the counters when any is.
// HESSEXT_REORTH_FOLD=always|never overrides (fold: the same FuseMode values).
inline void plan_reductions(Plan& p, int64_t n, int64_t k, int64_t passes, FuseMode fold = FuseMode::kAuto) {
  const int64_t chunks = ceil_div(n, kChunk);
  const bool auto_mode = fold == FuseMode::kAuto;
  p.fold_dots = k > 0 && (auto_mode ? k * chunks <= kFoldMaxPartials : fold == FuseMode::kAlways);
  p.fold_norm = auto_mode ? chunks <= kFoldMaxPartials : fold == FuseMode::kAlways;
  const int dot_sweeps = k == 0 ? 0 : static_cast<int>(passes);
  const int kernels = k == 0 ? 1 : (passes == 1 ? 2 : (p.fused_two ? 3 : 4));
  p.launches = kernels + (p.fold_dots ? 0 : dot_sweeps) + (p.fold_norm ? 0 : 1) +
               ((p.fold_dots || p.fold_norm) ? 1 : 0);
}

// The shared-memory fused sweep: one chunk per block at a time, the grid capped at the resident blocks.
inline SweepLaunch smem_launch(int64_t n, const Device& d) {
  SweepLaunch s;
  s.vpt = 0;  // unused: a tile is one chunk
  s.gx = std::max<int64_t>(1, std::min(ceil_div(n, kChunk), int64_t{std::max(d.resident_smem, 1)} * d.sms));
  return s;
}

// Sweep 2 under kAuto: through L2 when fuse_sweep_two, else through shared memory when its stage leaves
// kSmemMinBlocksPerSm blocks resident, else split (4 sweeps). kSmem where the stage does not fit at all
// (resident_smem == 0) is split too.
inline Plan make_plan(int64_t n, int64_t k, int64_t passes, int elt, const Device& d, FuseMode mode,
                      FuseMode fold = FuseMode::kAuto) {
  Plan p;
  p.dot = dot_launch(n, k, int64_t{d.resident_dot} * d.sms);
  p.sub = stream_launch(n, k, int64_t{d.resident_sub} * d.sms);
  if (k == 0) {
    p.sweeps = 0;
  } else if (passes == 1) {
    p.sweeps = 2;
  } else {
    const bool l2 = mode == FuseMode::kAlways ||
                    (mode == FuseMode::kAuto && fuse_sweep_two(n, k, elt, d.sms, d.l2_bytes));
    p.smem = !l2 && d.resident_smem > 0 &&
             (mode == FuseMode::kSmem || (mode == FuseMode::kAuto && d.resident_smem >= kSmemMinBlocksPerSm));
    p.fused_two = l2 || p.smem;
    if (l2) p.fused = fused_launch(n, k, elt, d);
    if (p.smem) p.fused = smem_launch(n, d);
    p.sweeps = p.fused_two ? 3 : 4;
  }
  plan_reductions(p, n, k, passes, fold);
  return p;
}

}  // namespace reorth
}  // namespace hessext
