"""Kernel benchmark: hessext's ops against the torch compositions they replace (``make bench-kernels``).

1. Correctness first: both ops against ``hessext/_reference.py`` on small inputs (aborts on a mismatch).
2. Machine read bandwidth: ``torch.dot(x, x)`` over a resident ~400 MB float32 tensor (reads it once); on
   CUDA also the device-to-device copy bandwidth of a 1 GiB tensor (CUDA events; bytes read + written),
   which is the reference of the "% of BW" column there (``--ref-gbps`` overrides it).
3. ``reorthogonalize(w, B)`` (CGS2, 3 sweeps over B) against the composition ``h = B @ w; w -= B.T @ h``
   done twice (4 sweeps), for n in {1e5, 1e6, 1e7} and k in {8, 32, 128} (combos whose basis exceeds
   ``--max-gb`` are skipped). Achieved GB/s counts the bytes of every sweep over the basis that happens
   (hessext: 3·k·n·elt, or 4·k·n·elt on CUDA when sweep 2 is split, see ``hessext_sweeps``; the
   composition 4·k·n·elt), next to the measured read bandwidth; a second column counts 3 sweeps, the
   issue's target. On CUDA every size is timed under each sweep-2 plan (``HESSEXT_REORTH_FUSE`` = auto,
   always, smem, never), so one run on a new device shows which plan its hardware wants.
4. ``rademacher_`` against ``torch.randint(0, 2, (n,)) * 2 - 1`` at n = 1e7 (1e8 on CUDA, beyond L2), as
   a 1-D vector, a row-major ``[n/16, 16]`` block (``ops.rademacher(n, m)``'s layout) and a column-major one.

Times are medians over repetitions with a fixed torch thread count (``--threads``, default 2). Prints a
Markdown table and writes JSON tagged with machine, torch version and git commit into ``bench-results/``.
``--quick`` runs a small subset (used by ``python -m hessext bench``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import hessext  # noqa: E402
from hessext import _backend, _reference, ops  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], device: str, min_time: float = 0.4, min_reps: int = 3,
           max_reps: int = 30) -> dict[str, float]:
    """Median and best wall time of ``fn`` (seconds) after one warm-up call."""
    fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "best_s": min(times), "reps": len(times)}


def correctness(device: str) -> None:
    for dtype, tol in ((torch.float32, 2e-6), (torch.float64, 1e-13)):
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(20_000, 40, generator=g, dtype=torch.float64))
        basis = q.T.contiguous().to(dtype)
        w = torch.randn(20_000, generator=g, dtype=torch.float64).to(dtype)
        got = ops.reorthogonalize(w.to(device), basis.to(device))
        ref = _reference.reorthogonalize(w, basis)
        for a, b in zip(got, ref):
            err = (a.cpu() - b).abs().max().item() if a.numel() else 0.0
            if err > tol * w.norm().item():
                sys.exit(f"correctness check FAILED: reorthogonalize {dtype} differs from the reference "
                         f"by {err}")
        out = torch.empty(100_003, 3, dtype=dtype, device=device)
        ops.rademacher_(out, seed=7, offset=2**32 - 50_000)
        ref_out = torch.empty(100_003, 3, dtype=dtype)
        _reference.rademacher_(ref_out, 7, 2**32 - 50_000)
        if not torch.equal(out.cpu(), ref_out):
            sys.exit(f"correctness check FAILED: rademacher_ {dtype} differs from the reference")
    print("correctness: reorthogonalize and rademacher_ match the reference (float32, float64)")


def read_bandwidth(device: str) -> dict[str, float]:
    """GB/s of ``torch.dot(x, x)`` over a resident 400 MB float32 tensor (each byte read once)."""
    x = torch.ones(100_000_000, dtype=torch.float32, device=device)
    t = timeit(lambda x=x: torch.dot(x, x), device, min_time=1.0, min_reps=5)
    nbytes = x.numel() * x.element_size()
    del x
    return {"bytes": nbytes, "median_s": t["median_s"], "best_s": t["best_s"],
            "gbps": nbytes / t["median_s"] / 1e9, "gbps_best": nbytes / t["best_s"] / 1e9}


def copy_bandwidth(device: str, numel: int = 1 << 28, reps: int = 10) -> dict[str, float]:
    """GB/s of ``dst.copy_(src)`` for a resident float32 tensor of ``numel`` elements (1 GiB by default),
    counting the bytes read and written (2 x the size). CUDA: timed with events, median of 5 batches of
    ``reps`` copies; CPU: wall time (``timeit``)."""
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    nbytes = 2 * numel * src.element_size()
    if device.startswith("cuda"):
        dst.copy_(src)
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / reps)
        t = {"median_s": statistics.median(times), "best_s": min(times)}
    else:
        t = timeit(lambda src=src, dst=dst: dst.copy_(src), device, min_time=0.5)
    del src, dst
    return {"bytes": nbytes, "median_s": t["median_s"], "best_s": t["best_s"],
            "gbps": nbytes / t["median_s"] / 1e9, "gbps_best": nbytes / t["best_s"] / 1e9}


def make_basis(k: int, n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Unit-norm ±1/√n rows (filled with the fast probe kernel; orthonormality does not change timings)."""
    basis = torch.empty(k, n, dtype=dtype, device=device)
    ops.rademacher_(basis.view(-1), seed=1234)
    basis.mul_(1.0 / n ** 0.5)
    return basis


def composition(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The torch-op CGS2 that reorthogonalize replaces: two GEMVs per pass, 4 sweeps over the basis."""
    w = w.clone()
    for _ in range(2):
        h = basis @ w
        w -= basis.T @ h
    return w


FUSE_MODES = ("auto", "always", "smem", "never")  # HESSEXT_REORTH_FUSE: L2 / shared memory / split


def hessext_sweeps(n: int, k: int, elt: int, device: str, mode: str = "auto") -> int:
    """Sweeps over the basis that ``reorthogonalize(w, B)`` (2 passes) makes: 3 on the CPU; on CUDA 3 when
    sweep 2 runs fused (through L2, or through shared memory), 4 when split -- ``make_plan`` in
    ``csrc/cuda/reorth_plan.h``, mirrored here for the HESSEXT_REORTH_FUSE ``mode``. The shared-memory
    stage's residency is estimated from the device's shared memory per SM (the kernel asks the occupancy
    API), so an "auto" count near that boundary may be off by one sweep."""
    if not device.startswith("cuda"):
        return 3
    props = torch.cuda.get_device_properties(torch.device(device))
    threads, chunk, min_blocks_per_sm, l2_share_divisor, smem_min_blocks = 256, 128, 2, 2, 2
    columns = min(-(-n // threads), min_blocks_per_sm * props.multi_processor_count) * threads
    l2 = mode == "always" or (mode == "auto" and k * columns * elt <= props.L2_cache_size // l2_share_divisor)
    stage = k * chunk * elt + chunk * elt + 128  # + the kernel's static shared memory
    fits = stage <= getattr(props, "shared_memory_per_block_optin", 0)
    resident = min(2048 // threads, getattr(props, "shared_memory_per_multiprocessor", 0) // (stage + 1024))
    smem = not l2 and fits and (mode == "smem" or (mode == "auto" and resident >= smem_min_blocks))
    return 3 if (l2 or smem) else 4


def _time_reorth(w: torch.Tensor, basis: torch.Tensor, device: str, mode: str) -> dict[str, float]:
    """``timeit`` of ``reorthogonalize(w, basis)`` under ``HESSEXT_REORTH_FUSE=mode`` (restored after)."""
    old = os.environ.get("HESSEXT_REORTH_FUSE")
    os.environ["HESSEXT_REORTH_FUSE"] = mode
    try:
        return timeit(lambda: ops.reorthogonalize(w, basis), device)
    finally:
        if old is None:
            del os.environ["HESSEXT_REORTH_FUSE"]
        else:
            os.environ["HESSEXT_REORTH_FUSE"] = old


def bench_reorth(sizes: list[tuple[int, int]], dtype: torch.dtype, device: str, max_gb: float) -> list[dict]:
    """One row per size (on CUDA one per sweep-2 plan of FUSE_MODES, so one run compares them)."""
    rows = []
    elt = torch.empty((), dtype=dtype).element_size()
    modes = FUSE_MODES if device.startswith("cuda") else ("auto",)
    for n, k in sizes:
        nbytes = k * n * elt
        if nbytes > max_gb * 1e9:
            rows.append({"op": "reorthogonalize", "n": n, "k": k, "skipped": f"basis {nbytes / 1e9:.1f} GB > "
                         f"--max-gb {max_gb}"})
            continue
        basis = make_basis(k, n, dtype, device)
        w = torch.randn(n, dtype=dtype, device=device)
        comp = timeit(lambda w=w, basis=basis: composition(w, basis), device)
        for mode in modes:
            ours = _time_reorth(w, basis, device, mode)
            sweeps = hessext_sweeps(n, k, elt, device, mode)
            rows.append({
                "op": "reorthogonalize" if mode == "auto" else f"reorthogonalize ({mode})",
                "n": n, "k": k, "dtype": str(dtype).replace("torch.", ""), "fuse": mode,
                "basis_bytes": nbytes, "hessext": ours, "torch": comp,
                "hessext_sweeps": sweeps, "torch_sweeps": 4,
                "hessext_gbps": sweeps * nbytes / ours["median_s"] / 1e9,
                "hessext_gbps_3_sweeps": 3 * nbytes / ours["median_s"] / 1e9,
                "torch_gbps": 4 * nbytes / comp["median_s"] / 1e9,
                "speedup": comp["median_s"] / ours["median_s"],
            })
        del basis, w
    return rows


def bench_rademacher(n: int, device: str) -> list[dict]:
    """rademacher_ into n float32 elements laid out as [n], row-major [n/16, 16] and column-major [n/16, 16]
    (GB/s: bytes written), against torch.randint of the same number of elements."""
    m = 16
    ref = timeit(lambda: torch.randint(0, 2, (n,), device=device) * 2 - 1, device)
    f32 = {"dtype": torch.float32, "device": device}
    outs = {"rademacher_ [n]": torch.empty(n, **f32),
            "rademacher_ [n/16, 16] row-major": torch.empty(n // m, m, **f32),
            "rademacher_ [n/16, 16] col-major": torch.empty(m, n // m, **f32).t()}
    rows = []
    for name, out in outs.items():
        ours = timeit(lambda out=out: ops.rademacher_(out, seed=1, offset=0), device)
        rows.append({"op": name, "n": out.numel(), "dtype": "float32", "hessext": ours, "torch": ref,
                     "hessext_gbps": out.numel() * 4 / ours["median_s"] / 1e9,
                     "speedup": ref["median_s"] / ours["median_s"]})
    return rows


def _git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine(device: str) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    m = {"hostname": platform.node(), "platform": platform.platform(), "cpu": cpu,
         "logical_cpus": os.cpu_count(), "python": platform.python_version()}
    if device.startswith("cuda"):
        m["gpu"] = torch.cuda.get_device_name()
    return m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subset (n <= 1e6, k <= 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cuda" if hessext.BACKEND == "cuda" else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--max-gb", type=float, default=6.0, help="skip bases larger than this (GB)")
    parser.add_argument("--out", default=str(ROOT / "bench-results"), help="directory for the JSON result")
    parser.add_argument("--ref-gbps", type=float, default=None,
                        help="reference bandwidth of the %% column (default: the measured D2D copy bandwidth "
                             "on CUDA, the torch.dot read bandwidth on the CPU)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    device = args.device
    print(f"hessext kernel benchmark: backend {hessext.BACKEND}, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads (fixed), {args.dtype}")
    if hessext.BACKEND == "python":
        print(f"note: compiled kernels not loaded ({_backend.LOAD_ERROR}); timing the Python reference")
    correctness(device)

    bw = read_bandwidth(device)
    print(f"read bandwidth: {bw['gbps']:.1f} GB/s (median; best {bw['gbps_best']:.1f}) "
          f"= torch.dot over a resident {bw['bytes'] / 1e6:.0f} MB tensor")
    copy_bw = copy_bandwidth(device) if device.startswith("cuda") else None
    if copy_bw is not None:
        print(f"copy bandwidth: {copy_bw['gbps']:.1f} GB/s (median; best {copy_bw['gbps_best']:.1f}) = "
              f"device-to-device copy of a resident 1 GiB tensor, bytes read + written, CUDA events")
    if args.ref_gbps is not None:
        ref_gbps, ref_name = args.ref_gbps, "--ref-gbps"
    elif copy_bw is not None:
        ref_gbps, ref_name = copy_bw["gbps"], "D2D copy"
    else:
        ref_gbps, ref_name = bw["gbps"], "read"

    if args.quick:
        sizes = [(n, k) for n in (100_000, 1_000_000) for k in (8, 32)]
        rad_n = 1_000_000
    else:
        sizes = [(n, k) for n in (100_000, 1_000_000, 10_000_000) for k in (8, 32, 128)]
        rad_n = 100_000_000 if device.startswith("cuda") else 10_000_000
    rows = bench_reorth(sizes, dtype, device, args.max_gb)
    rows.extend(bench_rademacher(rad_n, device))

    print()
    print(f"| op | n | k | hessext ms | torch ms | speedup | sweeps | hessext GB/s | % of {ref_name} BW "
          "| % counting 3 sweeps | torch GB/s | speedup (best of reps) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['op']} | {r['n']:.0e} | {r['k']} | skipped: {r['skipped']} | | | | | | | | |")
            continue
        k = r.get("k", "-")
        torch_gbps = f"{r['torch_gbps']:.1f}" if "torch_gbps" in r else "-"
        sweeps = r.get("hessext_sweeps", "-")
        pct3 = f"{100 * r['hessext_gbps_3_sweeps'] / ref_gbps:.0f}%" if "hessext_gbps_3_sweeps" in r else "-"
        print(f"| {r['op']} | {r['n']:.0e} | {k} | {r['hessext']['median_s'] * 1e3:.2f} | "
              f"{r['torch']['median_s'] * 1e3:.2f} | {r['speedup']:.2f}x | {sweeps} | "
              f"{r['hessext_gbps']:.1f} | "
              f"{100 * r['hessext_gbps'] / ref_gbps:.0f}% | {pct3} | {torch_gbps} | "
              f"{r['torch']['best_s'] / r['hessext']['best_s']:.2f}x |")
    print(f"\nreorthogonalize GB/s count the sweeps over the basis that happen (hessext: 3, or 4 on CUDA "
          f"when sweep 2 is split; on CUDA one row per HESSEXT_REORTH_FUSE plan: auto, always = through L2, "
          f"smem = through shared memory, never = split; the issue's target counts 3) and 4 (torch: h = B@w; "
          f"w -= B.T@h, twice); bases that fit in the last-level cache exceed the DRAM read bandwidth. "
          f"rademacher_ GB/s counts the bytes written; torch = torch.randint(0, 2, (n,)) * 2 - 1. "
          f"Medians; % of the {ref_name} bandwidth, {ref_gbps:.1f} GB/s.")

    result = {
        "benchmark": "bench_kernels", "quick": args.quick,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(device), "torch": torch.__version__, "commit": _git_commit(),
        "backend": hessext.BACKEND, "device": device, "threads": torch.get_num_threads(), "dtype": args.dtype,
        "read_bandwidth": bw, "copy_bandwidth": copy_bw, "reference_gbps": ref_gbps,
        "reference": ref_name, "rows": rows,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"bench_kernels-{'quick-' if args.quick else ''}{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
