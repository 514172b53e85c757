"""Data-parallel Hessian analysis: the same numbers from one process or from several.

Run it either way; rank 0 prints one JSON line, and the two lines agree (float64: to ~1e-10):

    python examples/distributed_analysis.py                          # one process, all the data
    torchrun --nproc_per_node=2 examples/distributed_analysis.py     # 2 ranks, each holds half the batches

Each rank builds the same model (same seed: in a training script, DDP's initial broadcast does this) and
keeps only its shard of the batches. ``DistributedHessianOperator`` all-reduces every Hessian-vector block
(one collective per matvec); Lanczos and the trace estimator then run unchanged on every rank and return the
same numbers everywhere, with no other communication. Without a process group the same class is a plain
single-process operator, so this script has a single code path. To run API A's or API B's facades
(``hessian_trace``, ``HessianAnalyzer.analyze_step``) unchanged on every rank, call them inside
``with hessext.distributed.data_parallel():``.

Options: ``--dtype float32``, ``--ddp`` (wrap the model in DistributedDataParallel first: its ``.module``
is analysed, nothing is synchronised), ``--timeout`` (seconds a collective may wait for a dead or hung
rank before raising).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hessext.distributed import DistributedHessianOperator, init_from_env, shard  # noqa: E402
from hessext.lanczos import lanczos  # noqa: E402
from hessext.trace import hutchpp  # noqa: E402


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


def make_data(num_batches: int = 8, batch_size: int = 32, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(16, 4, generator=g)
    out = []
    for _ in range(num_batches):
        x = torch.randn(batch_size, 16, generator=g)
        y = (x @ teacher).argmax(1)
        out.append((x, y))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--k", type=int, default=3, help="number of top eigenvalues")
    ap.add_argument("--trace-matvecs", type=int, default=60)
    ap.add_argument("--ddp", action="store_true", help="wrap the model in DistributedDataParallel first")
    ap.add_argument("--timeout", type=float, default=120.0, help="collective timeout in seconds")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        rank, world_size = init_from_env(timeout=timedelta(seconds=args.timeout))
    else:
        rank, world_size = 0, 1

    model = make_model()
    if args.ddp and distributed:
        model = nn.parallel.DistributedDataParallel(model)
    data = shard(make_data(), rank, world_size)  # the whole list when world_size == 1
    dtype = getattr(torch, args.dtype)

    H = DistributedHessianOperator(model, nn.CrossEntropyLoss(), data, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    top = lanczos(H, k=args.k, which="LA", tol=tol, seed=0)
    bottom = lanczos(H, k=1, which="SA", tol=tol, seed=0)
    trace = hutchpp(H, args.trace_matvecs, seed=0)

    if rank == 0:
        print(json.dumps({
            "top_eigenvalues": sorted(top.eigenvalues.tolist(), reverse=True),
            "min_eigenvalue": float(bottom.eigenvalues[0]),
            "trace": float(trace.estimate),
            "world_size": world_size,
        }), flush=True)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
