"""Sharded Hessian analysis (issue 17): per-rank vector and basis memory at p = 1, 2, 4 (FSDP2, gloo, CPU),
and the accuracy of float32 finite-difference products with the default step.

Protocol: the decoder-only transformer of ``examples/sharded_analysis.py`` (widened by ``--d-model``), the
same 4 batches split over the p ranks; every block and the root sharded by ``fully_shard`` over a 1-D mesh.
On each rank: ``ShardedHessianOperator`` (float32 model, default step), top-5 Lanczos eigenvalues
(``tol=1e-5``, ``max_basis`` as given). Reported per p (rank 0; the maxima over ranks for memory):

- ``vector_bytes_per_rank``: one vector on the rank = its local shards (``op.n · itemsize``);
- ``basis_bytes_per_rank``: the Lanczos basis ``(M + 1) · n_local · itemsize`` (M = the run's basis bound);
- ``ratio_to_p1``: both divided by the p = 1 figures (1/p expected, up to one row per parameter);
- ``top5`` and their largest relative difference to the float64 exact (double-backward) single-process
  eigenvalues (must reach: ≤ 1e-3);
- ``seconds``: wall time of the Lanczos run (indicative only: a shared 2-core machine, p processes).

Run: ``python benchmarks/bench_sharded.py [--d-model 32] [--ranks 1 2 4] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
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
sys.path.insert(0, os.path.join(ROOT, "examples"))

from sharded_analysis import make_data, make_model, sharded_operator  # noqa: E402

import hessext.models as hm  # noqa: E402
from hessext.distributed import shard  # noqa: E402
from hessext.hvp import HessianOperator  # noqa: E402
from hessext.lanczos import lanczos  # noqa: E402


def _model(d_model: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return hm.TransformerFactory.create_decoder_only_transformer(
        vocab_size=64, d_model=d_model, num_heads=2, num_layers=2, d_ff=2 * d_model, max_seq_length=12
    ).to(dtype) if d_model != 16 else make_model(dtype)


def _worker(rank: int, world: int, port: int, d_model: int, max_basis: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    try:
        data = shard(make_data(), rank, world)
        op = sharded_operator(_model(d_model, torch.float32), data, "cpu", "central")
        t0 = time.perf_counter()
        res = lanczos(op, k=5, which="LA", tol=1e-5, seed=0, max_basis=max_basis, return_vectors=False)
        secs = time.perf_counter() - t0
        item = torch.empty((), dtype=op.dtype).element_size()
        row = {"rank": rank, "n_local": op.n, "global_n": op.global_n, "vector_bytes": op.n * item,
               "basis_bytes": (res.max_basis + 1) * op.n * item, "max_basis": res.max_basis,
               "top5": sorted(res.eigenvalues.tolist(), reverse=True), "matvecs": res.num_matvecs,
               "gradient_evals": op.num_gradient_evals, "seconds": secs}
        torch.save(row, os.path.join(out, f"p{world}_r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, d_model: int, max_basis: int, out: str) -> list[dict]:
    mp.spawn(_worker, args=(world, _free_port(), d_model, max_basis, out), nprocs=world, join=True)
    return [torch.load(os.path.join(out, f"p{world}_r{r}.pt")) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=16)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--max-basis", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref_op = HessianOperator(_model(args.d_model, torch.float64), nn.CrossEntropyLoss(), make_data(),
                             dtype=torch.float64)
    exact = lanczos(ref_op, k=5, which="LA", tol=1e-10, seed=0, return_vectors=False).eigenvalues
    exact = torch.sort(exact, descending=True).values
    rows, base = [], None
    with tempfile.TemporaryDirectory() as out:
        for p in args.ranks:
            ranks = run(p, args.d_model, args.max_basis, out)
            vec = max(r["vector_bytes"] for r in ranks)
            basis = max(r["basis_bytes"] for r in ranks)
            base = base or (vec, basis, p)
            top = torch.tensor(ranks[0]["top5"], dtype=torch.float64)
            row = {"p": p, "global_n": ranks[0]["global_n"], "n_local": [r["n_local"] for r in ranks],
                   "vector_bytes_per_rank": vec, "basis_bytes_per_rank": basis,
                   "vector_ratio_to_p1": vec / base[0], "basis_ratio_to_p1": basis / base[1],
                   "max_basis": ranks[0]["max_basis"], "top5": ranks[0]["top5"],
                   "top5_rel_err_vs_exact_f64": float(((top - exact) / exact).abs().max()),
                   "same_on_every_rank": all(r["top5"] == ranks[0]["top5"] for r in ranks),
                   "matvecs": ranks[0]["matvecs"], "seconds": round(max(r["seconds"] for r in ranks), 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"exact_top5_f64": exact.tolist(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
