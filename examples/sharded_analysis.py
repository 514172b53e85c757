"""Hessian analysis of an FSDP2-sharded transformer: vectors sharded like the parameters, never gathered.

Run it either way; rank 0 prints one JSON line with the same keys, and the two lines agree (float64: to
~1e-8 relative; float32: to ~1e-4):

    torchrun --nproc_per_node=2 examples/sharded_analysis.py   # FSDP2 over 2 ranks (CPU: gloo), each rank
                                                                # holds half of every parameter and vector
    python examples/sharded_analysis.py                         # one process, the exact (double-backward)
                                                                # HessianOperator on all the data

Under torchrun each rank builds the same small decoder-only transformer (``hessext.models``), shards every
block and then the root with ``torch.distributed.fsdp.fully_shard`` over a 1-D ``DeviceMesh``, and keeps
its share of the batches (``hessext.distributed.shard``). ``ShardedHessianOperator`` computes Hessian–vector
products by central differences of FSDP's own gradients; Lanczos and Hutchinson run unchanged on the
sharded vectors (dot products all-reduced) and every rank gets the same numbers. ``vector_bytes_per_rank``
is the size of one vector on this rank (the Lanczos basis holds ``m + 1`` of them): it falls as ``1/p``.

On GPUs: ``torchrun --nproc_per_node=8 examples/sharded_analysis.py --device cuda`` (NCCL, one GPU per
rank, ``LOCAL_RANK`` selects it); across nodes add ``--nnodes``, ``--node_rank`` and ``--rdzv-endpoint``.

Options: ``--dtype float32|float64`` (default float64), ``--k`` (top eigenvalues), ``--trace-probes``,
``--scheme central|richardson``.
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

from hessext.distributed import init_from_env, shard  # noqa: E402
from hessext.hvp import HessianOperator  # noqa: E402
from hessext.lanczos import lanczos  # noqa: E402
from hessext.models import Block, TransformerFactory  # noqa: E402
from hessext.trace import hutchinson  # noqa: E402

VOCAB, SEQ = 32, 12


def make_model(dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TransformerFactory.create_decoder_only_transformer(vocab_size=VOCAB, d_model=16, num_heads=2,
                                                                num_layers=2, d_ff=32, max_seq_length=SEQ)
    return model.to(dtype)


def make_data(num_batches: int = 4, batch_size: int = 4, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_batches):
        ids = torch.randint(0, VOCAB, (batch_size, SEQ + 1), generator=g)
        out.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:]})
    return out


def sharded_operator(model: nn.Module, data: list, device: str, scheme: str):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from hessext.sharded import ShardedHessianOperator

    mesh = init_device_mesh(device, (dist.get_world_size(),))
    for m in model.modules():
        if isinstance(m, Block):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return ShardedHessianOperator(model, nn.CrossEntropyLoss(), data, scheme=scheme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--trace-probes", type=int, default=20)
    ap.add_argument("--scheme", choices=["central", "richardson"], default="central")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dtype = getattr(torch, args.dtype)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = init_from_env(timeout=timedelta(seconds=args.timeout)) if distributed else (0, 1)
    device = args.device if args.device == "cpu" else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    model = make_model(dtype).to(device)
    data = [{k: v.to(device) for k, v in b.items()} for b in shard(make_data(), rank, world)]
    if distributed:
        H = sharded_operator(model, data, args.device, args.scheme)
    else:
        H = HessianOperator(model, nn.CrossEntropyLoss(), data, dtype=dtype)
    tol = 1e-8 if dtype == torch.float64 else 1e-5
    top = lanczos(H, k=args.k, which="LA", tol=tol, seed=0, return_vectors=False)
    bottom = lanczos(H, k=1, which="SA", tol=tol, seed=1, return_vectors=False)
    trace = hutchinson(H, args.trace_probes, seed=0)
    if rank == 0:
        print(json.dumps({
            "top_eigenvalues": sorted(top.eigenvalues.tolist(), reverse=True),
            "min_eigenvalue": float(bottom.eigenvalues[0]),
            "trace": float(trace.estimate),
            "world_size": world,
            "vector_bytes_per_rank": H.n * torch.empty((), dtype=H.dtype).element_size(),
        }), flush=True)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
