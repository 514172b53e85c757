"""Data-parallel HVP benchmark: time per Hessian-vector product with 1 and 2 processes (gloo, localhost).

Protocol (each process pinned to one thread; the same model and the same 4 batches in every setting):

1. Correctness first: the 2-rank product equals the 1-process product on the same vector (printed).
2. 1 process, all 4 batches: median wall time of one ``H v`` (gradient graphs cached, as in Lanczos).
3. 2 processes, 2 batches each (``DistributedHessianOperator``): median wall time of one ``H v``, split
   into the local HVP work on the shard (slowest rank), the time inside the all-reduce call, and within
   that the pure transfer (item 4) and the rest, which is waiting for the slower rank (load imbalance or,
   on a shared machine, a rank descheduled by other work).
4. The all-reduce alone on ``n + 2`` floats after a barrier (pure communication), and for a ladder of sizes.
5. One gradient evaluation on all the data, to express HVP time in units of one gradient.
6. One Lanczos step (HVP + all-reduce + full reorthogonalisation), from a 30-step run, on 1 and 2 processes.

Cost model of one Lanczos step on ``p`` ranks: ``T_hvp(N/p) + T_allreduce(n) + T_reorth(n, k)``. The HVP
part shrinks as 1/p, the all-reduce of n floats is (for a ring) ~2n floats sent per rank whatever p, and
the reorthogonalisation is replicated on every rank.

Run: ``python benchmarks/bench_distributed.py [--hidden 256] [--batch 128] [--reps 20] [--json out.json]``.
The machine is shared and has 2 cores: numbers are indicative.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NUM_BATCHES = 4


def make_model(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, 10))


def make_data(batch: int) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 64, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(NUM_BATCHES)]


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up (builds and caches the gradient graphs)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


LANCZOS_STEPS = 30


def _lanczos_step(H) -> float:
    """Seconds per step of a Lanczos run of at most 30 steps (k = 1, tol = 1e-6): elapsed time divided by
    the matvecs actually taken. Every rank runs the same steps (same bits), so the step count agrees."""
    import warnings

    from hessext.lanczos import lanczos

    m0 = H.num_matvecs
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lanczos(H, k=1, which="LA", max_iter=LANCZOS_STEPS, tol=1e-6, seed=0)
    return (time.perf_counter() - t0) / max(1, H.num_matvecs - m0)


def single_process(hidden: int, batch: int, reps: int) -> dict:
    from hessext.hvp import HessianOperator

    torch.set_num_threads(1)
    model, data = make_model(hidden), make_data(batch)
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    v = torch.randn(H.n, generator=torch.Generator().manual_seed(2))
    t_hvp = _median_time(lambda: H.matvec(v), reps)

    params = list(model.parameters())

    def grad() -> None:
        for x, y in data:
            torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)

    t_grad = _median_time(grad, reps)
    t_step = _lanczos_step(H)
    return {"n": H.n, "t_hvp": t_hvp, "t_grad": t_grad, "t_step": t_step, "Hv": H.matvec(v)}


def _worker(rank: int, port: int, hidden: int, batch: int, reps: int, out: str) -> None:
    from hessext.distributed import DataParallelMean, DistributedHessianOperator, shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    comm = {"t": 0.0}
    collective = DataParallelMean.collective

    def timed_collective(reducer, fn, what):
        # time spent inside the all-reduce (including the wait for the other rank); this spawned worker
        # process owns its copy of the class, so the wrapper reaches no other process
        t0 = time.perf_counter()
        try:
            return collective(reducer, fn, what)
        finally:
            comm["t"] += time.perf_counter() - t0

    DataParallelMean.collective = timed_collective
    model = make_model(hidden)
    H = DistributedHessianOperator(model, nn.CrossEntropyLoss(), shard(make_data(batch), rank, 2))
    v = torch.randn(H.n, generator=torch.Generator().manual_seed(2))
    Hv = H.matvec(v)  # warm-up, and the correctness check
    ts, cs, ls = [], [], []
    for _ in range(reps):
        dist.barrier()
        comm["t"] = 0.0
        t0 = time.perf_counter()
        H.matvec(v)
        ts.append(time.perf_counter() - t0)
        cs.append(comm["t"])
        ls.append(ts[-1] - cs[-1])
    dist.barrier()
    t_step = _lanczos_step(H)
    # the all-reduce alone, ranks aligned by a barrier
    sizes = sorted({H.n + 2, 10_000, 100_000, 1_000_000})
    alone = {}
    for size in sizes:
        buf = torch.ones(size)
        dist.all_reduce(buf)
        tt = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            tt.append(time.perf_counter() - t0)
        alone[size] = statistics.median(tt)
    torch.save({"t_hvp": statistics.median(ts), "t_comm": statistics.median(cs),
                "t_local": statistics.median(ls), "t_step": t_step, "alone": alone, "Hv": Hv, "n": H.n},
               os.path.join(out, f"rank{rank}.pt"))
    DataParallelMean.collective = collective
    dist.destroy_process_group()


def two_processes(hidden: int, batch: int, reps: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(r, port, hidden, batch, reps, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(600)
            if p.is_alive():
                p.kill()
                raise RuntimeError("a rank did not finish within 600 s")
        return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128, help="samples per batch (4 batches)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write the results as JSON to this path")
    args = ap.parse_args()

    load_before = os.getloadavg()
    one = single_process(args.hidden, args.batch, args.reps)
    two = two_processes(args.hidden, args.batch, args.reps)
    n = one["n"]
    err = max(float((r["Hv"] - one["Hv"]).norm() / one["Hv"].norm()) for r in two)
    bitwise = torch.equal(two[0]["Hv"], two[1]["Hv"])
    t2 = max(r["t_hvp"] for r in two)
    c2 = max(r["t_comm"] for r in two)
    alone = {k: max(r["alone"][k] for r in two) for k in two[0]["alone"]}
    local2 = max(r["t_local"] for r in two)          # the slower rank's HVP work on its shard
    pure = alone[n + 2]                                 # the transfer itself
    wait = max(0.0, c2 - pure)                          # the rest of the time in the call: waiting
    step1, step2 = one["t_step"], max(r["t_step"] for r in two)

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        commit = "unknown"
    cpu = platform.processor() or platform.machine()
    print(f"# Distributed HVP (gloo, localhost, 1 thread per process) — {cpu}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, commit {commit}")
    print(f"MLP 64-{args.hidden}-{args.hidden}-10, n = {n} parameters, "
          f"{NUM_BATCHES} batches x {args.batch} samples")
    print(f"load average before the run: {load_before[0]:.2f} (1 min) on {os.cpu_count()} cores; "
          "above the core count the two ranks compete with other work and the wait column grows")
    print(f"check: ||Hv(2 ranks) - Hv(1 process)|| / ||Hv|| = {err:.2e}; "
          f"bitwise equal on both ranks: {bitwise}\n")
    print("| processes | time per HVP (ms) | local HVP work (ms) | in all-reduce call (ms) "
          "| of which transfer (ms) | of which waiting (ms) | all-reduce share (transfer) | speed-up "
          "| HVP / gradient | one Lanczos step (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| 1 | {1e3 * one['t_hvp']:.2f} | {1e3 * one['t_hvp']:.2f} | 0 | 0 | 0 | 0% | 1.00 | "
          f"{one['t_hvp'] / one['t_grad']:.2f} | {1e3 * step1:.2f} |")
    print(f"| 2 | {1e3 * t2:.2f} | {1e3 * local2:.2f} | {1e3 * c2:.2f} | {1e3 * pure:.2f} "
          f"| {1e3 * wait:.2f} | "
          f"{100 * c2 / t2:.0f}% ({100 * pure / t2:.0f}%) | {one['t_hvp'] / t2:.2f} | "
          f"{t2 / one['t_grad']:.2f} | {1e3 * step2:.2f} |")
    print("\nall-reduce alone (2 ranks, after a barrier):\n")
    print("| floats | time (ms) | GB/s (payload) |")
    print("|---|---|---|")
    for k, t in alone.items():
        mark = " (n + 2)" if k == n + 2 else ""
        print(f"| {k}{mark} | {1e3 * t:.3f} | {4 * k / t / 1e9:.2f} |")
    print("\nCost of one Lanczos step on p ranks: T_hvp(N/p) + T_allreduce(n) + T_reorth(n, k); "
          "communication is one all-reduce of n floats per matvec (ring: ~2n floats sent per rank, "
          "independent of p).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "torch": torch.__version__, "commit": commit, "n": n,
                       "hidden": args.hidden, "batch": args.batch, "num_batches": NUM_BATCHES,
                       "t_hvp_1": one["t_hvp"], "t_grad_1": one["t_grad"], "t_hvp_2": t2, "t_comm_2": c2,
                       "t_local_2": local2, "t_transfer_2": pure, "t_wait_2": wait,
                       "t_lanczos_step_1": step1, "t_lanczos_step_2": step2,
                       "loadavg_before": load_before[0],
                       "allreduce_alone": {str(k): v for k, v in alone.items()}, "rel_err": err,
                       "bitwise_equal_across_ranks": bitwise}, f, indent=1)


if __name__ == "__main__":
    main()
