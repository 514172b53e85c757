"""The CUDA kernels' index and launch arithmetic, checked on the host.

The CUDA kernels cannot run here, but the two headers that hold their arithmetic compile without CUDA or
torch: ``csrc/cuda/probe_walk.h`` (the memory-order walk of ``fill_walk`` in ``rademacher.cu``) and
``csrc/cuda/reorth_plan.h`` (tiles, grids, fusion and folded reductions of ``reorthogonalize.cu``). A
small C++ driver (``tests/cuda_host_driver.cpp``) is built once per module with the system compiler
against the real headers; it simulates the kernels' host-visible arithmetic and prints raw results. Every
expectation is written here, in Python, from the kernels' documented contract -- never by calling the
C++ helpers again:

- the walk visits every element of a non-overlapping 2-D layout exactly once, at its address, with counter
  ``offset + j * n + i`` (mod 2^64), thread ``g0`` at step ``t`` holding walk index ``g0 + t * stride``
  (memory order: consecutive threads write consecutive elements in address order);
- every launch plan respects the grid limits and residency, covers all tiles, rows and chunks, fuses
  sweep 2 only when its tiles fit the L2 share, and counts its stream operations as ``launch()`` issues them.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER_SRC = Path(__file__).resolve().with_name("cuda_host_driver.cpp")
U64 = 1 << 64
THREADS = 256  # threads per block of every kernel (kThreads)
CHUNK = 128    # columns per partial dot product / squared norm (kChunk)


def _compiler() -> str | None:
    """$CXX when set, else the first of c++, g++, clang++ on PATH."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The driver built against csrc/include and csrc/cuda (with UBSan when the toolchain has it)."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler ($CXX, c++, g++ or clang++) to build the host driver")
    exe = tmp_path_factory.mktemp("cuda_host") / "driver"
    flags = ["-std=c++17", "-O1", "-Wall", f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc' / 'cuda'}"]
    ubsan = ["-fsanitize=undefined", "-fno-sanitize-recover=undefined"]
    res = None
    for extra in (ubsan, []):  # signed overflow in the headers aborts the driver when UBSan is there
        res = subprocess.run([cxx, *flags, *extra, str(DRIVER_SRC), "-o", str(exe)], capture_output=True,
                             text=True, timeout=120)
        if res.returncode == 0:
            return exe
    raise AssertionError(f"the host driver does not compile:\n{res.stderr}")


def _run(driver: Path, mode: str, cases: list[str]) -> list[str]:
    """The driver's output lines for `cases` (one per stdin line)."""
    res = subprocess.run([str(driver), mode], input="\n".join(cases) + "\n", capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, f"driver {mode} failed ({res.returncode}):\n{res.stderr[-3000:]}"
    return res.stdout.splitlines()


def _report(failures: list[str], what: str) -> None:
    """Fail with the first few failures of `what`, if any."""
    shown = "\n".join(failures[:15])
    assert not failures, f"{len(failures)} {what} failures, e.g.:\n{shown}"


@pytest.fixture(scope="module")
def consts(driver: Path) -> dict:
    """reorth_plan.h's constants, as the driver sees them."""
    return json.loads(_run(driver, "consts", [])[0])


# --------------------------------------------------------------------------------------- probe walk

def _walk_index(n: int, m: int, s0: int, s1: int, i: int, j: int) -> int:
    """fill_walk's walk index of (i, j): the dimension with the smaller stride is the inner one."""
    return j * n + i if s0 <= s1 else i * m + j


def _layouts(n: int, m: int) -> list[tuple[str, int, int]]:
    """The non-flat, non-overlapping strides of [n, m] that fill_walk is called on (see launch())."""
    cands = [("row-major", m, 1), ("col-gap1", 1, n + 1), ("col-gap3", 1, n + 3), ("row-pad1", m + 1, 1),
             ("row-pad2", m + 2, 1), ("odd-col", 2, 2 * n + 1), ("odd-row", 2 * m + 3, 2),
             ("interleaved23", 2, 3), ("interleaved32", 3, 2), ("odd57", 5, 7)]
    out = []
    for name, s0, s1 in cands:
        addrs = {i * s0 + j * s1 for i in range(n) for j in range(m)}
        flat = s0 == 1 and s1 == n
        if len(addrs) == n * m and not flat:
            out.append((name, s0, s1))
    return out


def _nested(n: int, m: int, s0: int, s1: int) -> bool:
    """Whether the outer stride steps over the whole inner extent (then walk order is address order)."""
    return s1 >= n * s0 if s0 <= s1 else s0 >= m * s1


def _walk_cases() -> list[tuple[int, int, str, int, int, int, int]]:
    """(n, m, layout, s0, s1, grid stride, counter offset) for every small case."""
    offsets = (0, 12345, (1 << 32) - 3, U64 - 7)  # 2^32 - 3: the counter's low word carries; U64 - 7 wraps
    cases = []
    for n, m in itertools.product(range(2, 8), repeat=2):
        for (name, s0, s1), stride, offset in itertools.product(
                _layouts(n, m), (1, 2, 3, 5, 7, 32, 256, n * m + 1, 3 * n * m + 5), offsets):
            cases.append((n, m, name, s0, s1, stride, offset))
    return cases


def _check_walk(case: tuple, line: str) -> str | None:
    """None when the walk of `case` printed in `line` is right, else what is wrong."""
    n, m, _, s0, s1, stride, offset = case
    toks = line.split()
    if "LOOP" in toks:
        return "a thread walked past the element count (walk_step does not advance)"
    at = {i * s0 + j * s1: (i, j) for i in range(n) for j in range(m)}
    ranks = {a: r for r, a in enumerate(sorted(at))}
    seen = set()
    vals = list(map(int, toks))
    for q in range(0, len(vals), 4):
        g0, t, a, c = vals[q:q + 4]
        if a not in at:
            return f"thread {g0} step {t}: address {a} is no element"
        i, j = at[a]
        g = g0 + t * stride
        if a in seen:
            return f"element ({i}, {j}) written twice (thread {g0} step {t})"
        seen.add(a)
        if c != (offset + j * n + i) % U64:
            return f"element ({i}, {j}): counter {c}, expected {(offset + j * n + i) % U64}"
        if _walk_index(n, m, s0, s1, i, j) != g:
            return f"thread {g0} step {t} wrote ({i}, {j}), not walk index {g}"
        if _nested(n, m, s0, s1) and ranks[a] != g:
            return f"thread {g0} step {t}: walk index {g} is the {ranks[a]}-th address (not memory order)"
    if len(seen) != n * m:
        missing = sorted(at[a] for a in set(at) - seen)[:5]
        return f"{n * m - len(seen)} elements never written, e.g. {missing}"
    return None


def test_walk_visits_each_element_once_in_memory_order(driver: Path) -> None:
    """Every thread of every grid stride, as fill_walk runs them, on all small [n, m] layouts."""
    cases = _walk_cases()
    lines = _run(driver, "walk", [f"{n} {m} {s0} {s1} {st} {off}" for n, m, _, s0, s1, st, off in cases])
    assert len(lines) == len(cases)
    failures = []
    for case, line in zip(cases, lines):
        err = _check_walk(case, line)
        if err:
            n, m, name, s0, s1, stride, offset = case
            failures.append(f"[{n}, {m}] {name} strides ({s0}, {s1}), grid stride {stride}, offset {offset}: "
                            f"{err}")
    _report(failures, "walk")


def test_walk_layout_families_are_exercised() -> None:
    """The case list really holds every family (a filter bug must not silently shrink it)."""
    names = {c[2] for c in _walk_cases()}
    assert {"row-major", "col-gap1", "row-pad1", "odd-col", "odd-row", "interleaved23"} <= names
    assert any(not _nested(n, m, s0, s1) for n, m, _, s0, s1, _, _ in _walk_cases())


# Layouts with an inner extent at and beyond 2^32 (walk_start's no-division branch), walked by one thread.
FAR_LAYOUTS = [
    ("col-gap, inner 2^32+3", (1 << 32) + 3, 2, 1, (1 << 32) + 8),
    ("row-major, inner 2^32+3", 2, (1 << 32) + 3, (1 << 32) + 3, 1),
    ("col-gap, inner 2^32", 1 << 32, 2, 1, (1 << 32) + 3),
    ("col-gap, inner 2^32-1", (1 << 32) - 1, 2, 1, 1 << 32),
]
FAR_EVERY = 4096


def _far_expected(n: int, m: int, s0: int, s1: int, offset: int, g: int) -> tuple[int, int, int, int]:
    """(o, e, address, counter) of walk index g."""
    inner = n if s0 <= s1 else m
    o, e = divmod(g, inner)
    i, j = (e, o) if s0 <= s1 else (o, e)
    return o, e, i * s0 + j * s1, (offset + j * n + i) % U64


def _check_far(case: tuple, lines: list[str]) -> list[str]:
    """What is wrong with one thread's printed walk over a FAR_LAYOUTS layout."""
    _, n, m, s0, s1, stride, offset, g0 = case
    total, inner = n * m, (n if s0 <= s1 else m)
    steps = max(0, -(-(total - g0) // stride))
    wraps = {-(-(b * inner - g0) // stride) for b in range(1, total // inner)}  # steps where o moves on
    expect_t = sorted({t for t in range(0, steps, FAR_EVERY)} | {t for t in wraps if 0 < t < steps})
    errs = []
    if lines[-1] != f"end {steps}":
        errs.append(f"walk ended with '{lines[-1]}', expected 'end {steps}'")
    got_t = []
    for line in lines[:-1]:
        if line == "LOOP":
            errs.append("the thread walked past its element count")
            continue
        t, o, e, a, c = map(int, line.split())
        got_t.append(t)
        want = _far_expected(n, m, s0, s1, offset, g0 + t * stride)
        if (o, e, a, c) != want:
            errs.append(f"step {t}: (o, e, a, c) = {(o, e, a, c)}, expected {want}")
    if got_t != expect_t:
        errs.append(f"printed steps differ (wraps): got {got_t[:8]}..., expected {expect_t[:8]}...")
    return errs


def test_walk_with_inner_extent_beyond_32_bits(driver: Path) -> None:
    """walk_start's branch for inner >= 2^32 (no division) and its 32-bit division up to inner = 2^32-1,
    then whole walks of one thread across the wrap of the inner index and of the 64-bit counter."""
    cases = []
    for (name, n, m, s0, s1), stride in itertools.product(FAR_LAYOUTS, (262144, 132 * 8 * THREADS)):
        for g0, offset in ((0, U64 - (1 << 33)), (1, 0), (stride - 1, U64 - 1), ((1 << 32) - 1, 99)):
            cases.append((name, n, m, s0, s1, stride, offset, g0))
    lines = _run(driver, "walk_far",
                 [f"{n} {m} {s0} {s1} {st} {off} {g0} {FAR_EVERY}" for _, n, m, s0, s1, st, off, g0 in cases])
    per_case: list[list[str]] = [[]]
    for line in lines:
        per_case[-1].append(line)
        if line.startswith("end "):
            per_case.append([])
    assert len(per_case) - 1 == len(cases)
    failures = [f"{c[0]}, grid stride {c[5]}, g0 {c[7]}, offset {c[6]}: {e}"
                for c, out in zip(cases, per_case) for e in _check_far(c, out)]
    _report(failures, "far walk")


# --------------------------------------------------------------------------------------- launch plan

MODES = {"auto": 0, "always": 1, "never": 2, "smem": 3}  # reorth::FuseMode's order (HESSEXT_REORTH_FUSE)
FOLD_MODES = ["auto", "always", "never"]  # HESSEXT_REORTH_FOLD
DEVICES = {"A100": (108, 40 << 20), "H100": (132, 50 << 20), "small": (2, 512 << 10)}
# resident blocks per SM of the (dot, fused, sub, shared-memory fused) kernels; 0: the stage does not fit
RESIDENT = [(r, r, r, r % 4) for r in range(1, 9)] + [(8, 4, 6, 0), (3, 1, 8, 2), (1, 8, 2, 1)]
# the sizes, plus the boundaries of folding (k * chunks or chunks = 2^15 and one past) and of the
# large tile (132 * 8 * 1024: as many 1024-column tiles as an H100-like device's 8 x 132 resident blocks)
PLAN_NS = [1, 100, 128, 129, 1000, 2000, 16384, 32768, 32769, 100_000, 1 << 21, (1 << 21) + 1, 1_000_000,
           132 * 8 * 1024, 1 << 22, (1 << 22) + 1, 10_000_000, (1 << 31) + 5]
PLAN_KS = [0, 1, 2, 5, 30, 128, 130, 256, 512]


@dataclass(frozen=True)
class Case:
    """One make_plan input: problem, element size, device (SMs, L2 bytes, resident blocks per SM of the
    three sweep kernels) and the two overrides."""

    n: int
    k: int
    passes: int
    elt: int
    device: str
    sms: int
    l2: int
    rdot: int
    rfused: int
    rsub: int
    rsmem: int
    mode: str           # the fusion override
    fold: str = "auto"  # the folding override

    def line(self) -> str:
        """The driver's input line."""
        return (f"{self.n} {self.k} {self.passes} {self.elt} {self.sms} {self.l2} {self.rdot} {self.rfused} "
                f"{self.rsub} {self.rsmem} {MODES[self.mode]} {MODES[self.fold]}")

    def __str__(self) -> str:
        """The case as a failure message names it."""
        return (f"n={self.n} k={self.k} passes={self.passes} elt={self.elt} {self.device} "
                f"resident(dot, fused, sub, smem)=({self.rdot}, {self.rfused}, {self.rsub}, {self.rsmem}) "
                f"fuse={self.mode} "
                f"fold={self.fold}")


@pytest.fixture(scope="module")
def plans(driver: Path) -> list[tuple[Case, dict]]:
    """make_plan over the whole grid of cases (the folding overrides on one residency: they change only the
    reductions)."""
    cases = [Case(n, k, passes, elt, dev, *DEVICES[dev], *res, mode, fold)
             for n, k, passes, elt, dev, res, mode, fold in itertools.product(
                 PLAN_NS, PLAN_KS, (1, 2), (4, 8), DEVICES, RESIDENT, MODES, FOLD_MODES)
             if fold == "auto" or res == RESIDENT[-1]]
    lines = _run(driver, "plan", [c.line() for c in cases])
    assert len(lines) == len(cases)
    return [(c, json.loads(line)) for c, line in zip(cases, lines)]


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b) for a >= 0, b > 0."""
    return -(-a // b)


def _tiles(n: int, vpt: int) -> int:
    """Tiles of vpt * kThreads columns over n columns."""
    return _cdiv(n, vpt * THREADS)


def _grid_errors(c: Case, name: str, s: dict, resident: int) -> list[str]:
    """Limits every sweep launch obeys: residency, tiles, the y-dimension, tile size."""
    errs = []
    if s["vpt"] not in (1, 2, 4):
        errs.append(f"{name}: vpt {s['vpt']}")
        return errs
    tiles = _tiles(c.n, s["vpt"])
    if not 1 <= s["gx"] <= max(1, resident):
        errs.append(f"{name}: gx {s['gx']} outside [1, {max(1, resident)}] (resident blocks)")
    if s["gx"] > tiles:
        errs.append(f"{name}: gx {s['gx']} > {tiles} tiles (idle blocks)")
    if not 1 <= s["gy"] <= 65535:
        errs.append(f"{name}: gy {s['gy']} outside [1, 65535]")
    return errs


def _stream_errors(c: Case, name: str, s: dict, resident: int) -> list[str]:
    """A streaming (dot or sub) sweep uses every resident block the tiles allow, with the big tile only when
    there are at least as many big tiles as resident blocks (reorth_plan.h stream_launch)."""
    big = _tiles(c.n, 4) >= resident
    errs = []
    if s["vpt"] != (4 if big else 1):
        errs.append(f"{name}: vpt {s['vpt']} with {_tiles(c.n, 4)} large tiles, {resident} resident blocks")
    elif s["gx"] != max(1, min(_tiles(c.n, s["vpt"]), resident)):
        errs.append(f"{name}: gx {s['gx']} leaves resident blocks idle ({_tiles(c.n, s['vpt'])} tiles, "
                    f"{resident} resident)")
    return errs


def _dot_rows_errors(c: Case, s: dict, resident: int) -> list[str]:
    """The dot sweep's row split over gridDim.y: every row in exactly one non-empty range."""
    gx, gy, rpy, k = s["gx"], s["gy"], s["rows_per_y"], c.k
    errs = []
    if gy * rpy < max(k, 1) or (k > 0 and (gy - 1) * rpy >= k):
        errs.append(f"dot: gy {gy} x rows_per_y {rpy} does not tile k = {k} without an empty range")
    if gy > 1 and rpy % 4:
        errs.append(f"dot: rows_per_y {rpy} not a multiple of kRowsPerWarp with gy {gy}")
    if (gy - 1) * gx >= max(resident, 1):
        errs.append(f"dot: grid {gx} x {gy} exceeds the {resident} resident blocks by more than one row")
    if gy > 1 and gx >= resident:
        errs.append(f"dot: rows split (gy {gy}) although the tiles fill the {resident} resident blocks")
    if gx < resident and k >= 32 and gy == 1:
        errs.append(f"dot: {gx} blocks of {resident} resident, k = {k}, and no row split")
    return errs


def test_sweep_grids_respect_residency_tiles_and_rows(plans: list[tuple[Case, dict]]) -> None:
    """Every SweepLaunch: 1 <= gx <= resident and <= tiles, vpt in {1, 2, 4}, y ranges tile the k rows;
    the dot and sub sweeps fill the resident blocks; subtracting sweeps never split rows (each block would
    subtract every row again)."""
    failures = []
    for c, p in plans:
        res_dot, res_sub = c.rdot * c.sms, c.rsub * c.sms
        errs = _grid_errors(c, "dot", p["dot"], res_dot) + _grid_errors(c, "sub", p["sub"], res_sub)
        errs += _stream_errors(c, "dot", p["dot"], res_dot) + _stream_errors(c, "sub", p["sub"], res_sub)
        errs += _dot_rows_errors(c, p["dot"], res_dot)
        if p["sub"]["gy"] != 1:
            errs.append(f"sub: gy {p['sub']['gy']} (the SUB kernels subtract all k rows per block)")
        failures += [f"{c}: {e}" for e in errs]
    _report(failures, "grid")


def _fuse_expected(c: Case, consts: dict) -> bool:
    """fuse_sweep_two's documented rule: the k rows of kFuseMinBlocksPerSm smallest tiles per SM (or of all
    of w when shorter) fit in L2 / kL2ShareDivisor."""
    columns = min(_cdiv(c.n, THREADS), consts["kFuseMinBlocksPerSm"] * c.sms) * THREADS
    return c.k * columns * c.elt <= c.l2 // consts["kL2ShareDivisor"]


def _fusion_errors(c: Case, p: dict, consts: dict) -> list[str]:
    errs = []
    rule = _fuse_expected(c, consts)
    if p["fuse_sweep_two"] != rule:
        errs.append(f"fuse_sweep_two = {p['fuse_sweep_two']}, documented rule gives {rule}")
    if c.k == 0 or c.passes == 1:
        l2 = smem = False
        sweeps = 0 if c.k == 0 else 2
    else:  # through L2 when asked or by the rule; else through shared memory when the stage fits and,
        # under auto, leaves kSmemMinBlocksPerSm blocks resident; else split
        l2 = c.mode == "always" or (c.mode == "auto" and rule)
        smem = not l2 and c.rsmem > 0 and (
            c.mode == "smem" or (c.mode == "auto" and c.rsmem >= consts["kSmemMinBlocksPerSm"]))
        sweeps = 3 if (l2 or smem) else 4
    if p["fused_two"] != (l2 or smem) or p["smem"] != smem:
        errs.append(f"(fused_two, smem) = ({p['fused_two']}, {p['smem']}), expected ({l2 or smem}, {smem})")
    if p["sweeps"] != sweeps:
        errs.append(f"sweeps = {p['sweeps']}, expected {sweeps}")
    return errs


def _smem_launch_errors(c: Case, s: dict) -> list[str]:
    """The shared-memory fused sweep: one chunk per block at a time, every resident block busy when the
    chunks allow, never more blocks than chunks."""
    want = max(1, min(_cdiv(c.n, CHUNK), c.rsmem * c.sms))
    if s["gx"] != want or s["gy"] != 1:
        return [f"smem: grid {s['gx']} x {s['gy']}, expected {want} x 1 ({_cdiv(c.n, CHUNK)} chunks, "
                f"{c.rsmem} x {c.sms} resident)"]
    return []


def _fused_launch_errors(c: Case, s: dict, consts: dict) -> list[str]:
    """The fused sweep's tiles in flight fit the L2 share (bar the one-block fallback), no larger grid would
    have fitted, a tile above the smallest leaves no SM idle, and all k rows are in its one y-range."""
    resident = c.rfused * c.sms
    budget = c.l2 // consts["kL2ShareDivisor"]
    errs = _grid_errors(c, "fused", s, resident)
    vpt, gx = s["vpt"], s["gx"]
    inflight = gx * c.k * vpt * THREADS * c.elt
    if inflight > budget and not (vpt == 1 and gx == 1):
        errs.append(f"fused: {gx} blocks x k {c.k} x {vpt * THREADS} columns x {c.elt} B = {inflight} B > "
                    f"L2 share {budget} B")
    if vpt == 1 and gx < min(_tiles(c.n, 1), resident) and (gx + 1) * c.k * THREADS * c.elt <= budget:
        errs.append(f"fused: grid cut to {gx} although {gx + 1} blocks fit the L2 share")
    if vpt > 1 and (_tiles(c.n, vpt) < resident or gx != resident):
        errs.append(f"fused: vpt {vpt} with {_tiles(c.n, vpt)} tiles, gx {gx}, {resident} resident blocks")
    if s["gy"] != 1 or s["rows_per_y"] < c.k:
        errs.append(f"fused: gy {s['gy']}, rows_per_y {s['rows_per_y']} for k = {c.k}")
    if c.mode == "auto":
        floor = min(_tiles(c.n, 1), consts["kFuseMinBlocksPerSm"] * c.sms, resident)
        if gx * vpt < floor:
            errs.append(f"fused under auto: {gx} blocks of {vpt * THREADS} columns, fewer than the {floor} "
                        f"smallest tiles fuse_sweep_two assumed in flight")
    return errs


def test_fusion_decision_and_fused_grid(plans: list[tuple[Case, dict]], consts: dict) -> None:
    """fused_two: never for passes == 1 or k == 0, forced by always / never, else fuse_sweep_two, else
    through shared memory when its stage fits (smem forces it); sweeps 0 / 2 / 3 / 4; the L2-fused grid
    fits the L2 share it was decided on, the shared-memory one fills the resident blocks."""
    failures = []
    for c, p in plans:
        errs = _fusion_errors(c, p, consts)
        if p["smem"]:
            errs += _smem_launch_errors(c, p["fused"])
        elif p["fused_two"]:
            errs += _fused_launch_errors(c, p["fused"], consts)
        failures += [f"{c}: {e}" for e in errs]
    _report(failures, "fusion")
    chosen = {(p["fused_two"], p["smem"]) for c, p in plans if c.mode == "auto" and c.passes == 2 and c.k > 0}
    assert chosen == {(True, False), (True, True), (False, False)}, chosen  # L2, shared memory, split


def _launch_sequence(c: Case, fused: bool, fold_dots: bool, fold_norm: bool) -> list[str]:
    """The stream operations of one call, in reorthogonalize.cu's launch() order: a folded reduction runs
    in its sweep's last block (tickets zeroed by one memset per call), an unfolded one as its own kernel."""
    ops = ["memset of the fold tickets"] if (fold_dots or fold_norm) else []
    if c.k == 0:
        ops.append("copy + norm sweep")
    else:
        ops.append("sweep 1 (dots)")
        ops += [] if fold_dots else ["reduce_rows 1"]
        if c.passes == 2:
            ops += ["sweep 2 (fused)"] if fused else ["sweep 2 (subtract)", "sweep 2 (dots)"]
            ops += [] if fold_dots else ["reduce_rows 2"]
            ops.append("sweep 3 (subtract + norm)")
        else:
            ops.append("sweep 2 (subtract + norm)")
    ops += [] if fold_norm else ["reduce_norm"]
    return ops


def test_reductions_folded_and_launches_counted(plans: list[tuple[Case, dict]], consts: dict) -> None:
    """fold_dots / fold_norm follow kFoldMaxPartials exactly (boundaries included) or the always / never
    override; launches equals the operations launch() issues."""
    limit = consts["kFoldMaxPartials"]
    failures = []
    for c, p in plans:
        chunks = _cdiv(c.n, CHUNK)
        forced = c.fold == "always"
        fold_dots = c.k > 0 and (c.k * chunks <= limit if c.fold == "auto" else forced)
        fold_norm = chunks <= limit if c.fold == "auto" else forced
        ops = _launch_sequence(c, p["fused_two"], fold_dots, fold_norm)
        if (p["fold_dots"], p["fold_norm"]) != (fold_dots, fold_norm):
            failures.append(f"{c}: (fold_dots, fold_norm) = ({p['fold_dots']}, {p['fold_norm']}), expected "
                            f"({fold_dots}, {fold_norm}) for {chunks} chunks")
        elif p["launches"] != len(ops):
            failures.append(f"{c}: launches = {p['launches']}, launch() issues {len(ops)}: {ops}")
    _report(failures, "reduction")
    folded = {(p["fold_dots"], p["fold_norm"]) for c, p in plans if c.fold == "auto"}
    assert folded == {(True, True), (False, True), (False, False)}, folded  # every branch was exercised


def test_constants_match_the_kernels(consts: dict) -> None:
    """The constants the kernels hard-wire: 256 threads = 8 warps, tiles of 1, 2, 4 x 256 columns made of
    whole 128-column chunks, 4 rows per warp, and a folded reduction of at most 256 KB of double partials."""
    assert consts["kThreads"] == THREADS and consts["kWarps"] == THREADS // 32
    assert consts["kChunk"] == CHUNK and consts["kMaxVpt"] == 4
    assert consts["kMaxTile"] == consts["kMaxVpt"] * THREADS
    assert consts["kRowsPerWarp"] == 4
    for vpt in (1, 2, 4):
        assert vpt * THREADS % CHUNK == 0
    assert 1 <= consts["kFoldMaxPartials"] and consts["kFoldMaxPartials"] * 8 <= 256 << 10
    assert consts["kL2ShareDivisor"] >= 1 and consts["kFuseMinBlocksPerSm"] >= 1
    assert consts["kSmemMinBlocksPerSm"] >= 1
    assert consts["stage_k3_elt4"] == 3 * CHUNK * 4  # the shared-memory stage: k rows of one chunk


@pytest.mark.parametrize("n", [1, 127, 128, 129, 255, 256, 1000, 1024, 1025, 4097, 10_000])
def test_chunks_lie_in_one_tile_and_partials_cover_them(n: int) -> None:
    """Each 128-column chunk lies inside exactly one tile for every vpt, and the dot / norm partial indices
    the kernels write (t0 / kChunk + chunk of the tile, chunk < ceil(len / kChunk)) cover every chunk once."""
    chunks = _cdiv(n, CHUNK)
    for vpt in (1, 2, 4):
        tile = vpt * THREADS
        for ch in range(chunks):
            first, last = ch * CHUNK, min(ch * CHUNK + CHUNK, n) - 1
            assert first // tile == last // tile, (n, vpt, ch)
        written = []
        for t in range(_tiles(n, vpt)):
            t0 = t * tile
            length = min(n - t0, tile)
            written += [t0 // CHUNK + ch for ch in range(_cdiv(length, CHUNK))]
        assert sorted(written) == list(range(chunks)), (n, vpt)


def _rows_of(by: int, k: int, rpy: int) -> range:
    """tile_sweep's row range of blockIdx.y = by (r_begin, r_end as the kernel computes them)."""
    r_begin = by * rpy
    r_end = k if (k - r_begin) < rpy else r_begin + rpy
    return range(r_begin, r_end)


def test_grid_stride_covers_every_tile_and_row(plans: list[tuple[Case, dict]]) -> None:
    """The kernels' grid-stride loop over tiles (t = blockIdx.x, + gridDim.x, ...) reaches every tile
    exactly once, and the y ranges every row exactly once, for each planned launch (small tile counts
    simulated; larger ones follow from gx >= 1)."""
    seen = set()
    for c, p in plans:
        names = ["dot", "sub"] + (["fused"] if p["fused_two"] else [])
        for name in names:
            s = p[name]
            tiles = _cdiv(c.n, CHUNK) if (name == "fused" and p["smem"]) else _tiles(c.n, s["vpt"])
            key = (tiles, s["gx"], s["gy"], s["rows_per_y"], c.k if name != "sub" else 0)
            if key in seen or tiles > 20_000:
                continue
            seen.add(key)
            visits = [t for b in range(s["gx"]) for t in range(b, tiles, s["gx"])]
            assert sorted(visits) == list(range(tiles)), (str(c), name, s)
            if name == "dot" and c.k > 0:
                rows = [r for by in range(s["gy"]) for r in _rows_of(by, c.k, s["rows_per_y"])]
                assert sorted(rows) == list(range(c.k)), (str(c), name, s)
                assert all(len(_rows_of(by, c.k, s["rows_per_y"])) > 0 for by in range(s["gy"]))
    assert len(seen) > 50
