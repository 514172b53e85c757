// Host driver for tests/test_cuda_host.py: runs the host-compilable arithmetic of the CUDA kernels
// (csrc/cuda/probe_walk.h: fill_walk's walk; csrc/cuda/reorth_plan.h: reorthogonalize's launch plan) on
// cases read from stdin and prints the raw results; the Python test holds every expectation.
//
//   consts               one JSON object with reorth_plan.h's constants
//   walk                 per line "n m s0 s1 stride offset": every thread g0 in [0, stride) walks as in
//                        fill_walk; one output line per case: "g0 t a c" quadruples (t = the thread's step)
//   walk_far             per line "n m s0 s1 stride offset g0 every": one thread walks to its end; prints
//                        "t o e a c" when t % every == 0 or o changed at this step, then "end t"
//   plan                 per line "n k passes elt sms l2 rdot rfused rsub rsmem fuse fold" (fuse, fold:
//                        FuseMode as an int): make_plan's fields and fuse_sweep_two, one JSON object per case
//
// A walk that runs past its element count prints "LOOP" and stops (a broken walk_step must fail, not hang).
#include "hessext/hash.h"
#include "probe_walk.h"
#include "reorth_plan.h"

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>

namespace {

using hessext::Walk;
using hessext::WalkPos;
namespace reorth = hessext::reorth;

void print_consts() {
  std::printf(
      "{\"kThreads\": %d, \"kWarps\": %d, \"kMaxVpt\": %d, \"kMaxTile\": %d, \"kChunk\": %d, "
      "\"kRowsPerWarp\": %d, \"kL2ShareDivisor\": %d, \"kFuseMinBlocksPerSm\": %d, "
      "\"kSmemMinBlocksPerSm\": %d, \"kFoldMaxPartials\": %" PRId64 ", \"stage_k3_elt4\": %" PRId64 "}\n",
      reorth::kThreads, reorth::kWarps, reorth::kMaxVpt, reorth::kMaxTile, reorth::kChunk,
      reorth::kRowsPerWarp, reorth::kL2ShareDivisor, reorth::kFuseMinBlocksPerSm, reorth::kSmemMinBlocksPerSm,
      static_cast<int64_t>(reorth::kFoldMaxPartials), reorth::smem_stage_bytes(3, 4));
}

// Every thread of a grid of `stride` threads, as fill_walk runs them.
void walk_case(const std::string& line) {
  std::istringstream in(line);
  int64_t n, m, s0, s1, stride;
  uint64_t offset;
  in >> n >> m >> s0 >> s1 >> stride >> offset;
  const Walk w = hessext::make_walk(n, m, s0, s1, stride);
  const int64_t cap = n * m + 2;
  std::string out;
  char buf[128];
  for (int64_t g0 = 0; g0 < stride; ++g0) {
    WalkPos p = hessext::walk_start(w, static_cast<uint32_t>(g0), offset);
    for (int64_t t = 0; p.o < w.outer; ++t) {
      if (t > cap) {
        out += "LOOP ";
        break;
      }
      std::snprintf(buf, sizeof buf, "%" PRId64 " %" PRId64 " %" PRId64 " %" PRIu64 " ", g0, t, p.a, p.c);
      out += buf;
      hessext::walk_step(w, p);
    }
  }
  std::printf("%s\n", out.c_str());
}

// One thread's whole walk over a layout too large to list.
void walk_far_case(const std::string& line) {
  std::istringstream in(line);
  int64_t n, m, s0, s1, stride, every;
  uint64_t offset;
  uint32_t g0;
  in >> n >> m >> s0 >> s1 >> stride >> offset >> g0 >> every;
  const Walk w = hessext::make_walk(n, m, s0, s1, stride);
  WalkPos p = hessext::walk_start(w, g0, offset);
  const int64_t cap = (n * m) / stride + 2;
  int64_t t = 0;
  int64_t last_o = p.o;
  for (; p.o < w.outer; ++t) {
    if (t > cap) {
      std::printf("LOOP\n");
      break;
    }
    if (t % every == 0 || p.o != last_o)
      std::printf("%" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %" PRIu64 "\n", t, p.o, p.e, p.a, p.c);
    last_o = p.o;
    hessext::walk_step(w, p);
  }
  std::printf("end %" PRId64 "\n", t);
}

void print_launch(const char* name, const reorth::SweepLaunch& s) {
  std::printf("\"%s\": {\"vpt\": %d, \"gx\": %" PRId64 ", \"gy\": %" PRId64 ", \"rows_per_y\": %" PRId64
              "}, ", name, s.vpt, s.gx, s.gy, s.rows_per_y);
}

void plan_case(const std::string& line) {
  std::istringstream in(line);
  int64_t n, k, passes, l2;
  int elt, sms, rdot, rfused, rsub, rsmem, fuse, fold;
  in >> n >> k >> passes >> elt >> sms >> l2 >> rdot >> rfused >> rsub >> rsmem >> fuse >> fold;
  const reorth::Device d{sms, l2, rdot, rfused, rsub, rsmem};
  const reorth::Plan p = reorth::make_plan(n, k, passes, elt, d, static_cast<reorth::FuseMode>(fuse),
                                           static_cast<reorth::FuseMode>(fold));
  std::printf("{");
  print_launch("dot", p.dot);
  print_launch("fused", p.fused);
  print_launch("sub", p.sub);
  std::printf("\"smem\": %s, ", p.smem ? "true" : "false");
  std::printf("\"fused_two\": %s, \"sweeps\": %d, \"fold_dots\": %s, \"fold_norm\": %s, \"launches\": %d, "
              "\"fuse_sweep_two\": %s}\n",
              p.fused_two ? "true" : "false", p.sweeps, p.fold_dots ? "true" : "false",
              p.fold_norm ? "true" : "false", p.launches,
              reorth::fuse_sweep_two(n, k, elt, sms, l2) ? "true" : "false");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s consts|walk|walk_far|plan < cases\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  if (mode == "consts") {
    print_consts();
    return 0;
  }
  void (*run)(const std::string&) = nullptr;
  if (mode == "walk") run = walk_case;
  if (mode == "walk_far") run = walk_far_case;
  if (mode == "plan") run = plan_case;
  if (run == nullptr) {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  std::string line;
  while (std::getline(std::cin, line))
    if (!line.empty()) run(line);
  return 0;
}
