"""Run ``world`` spawned worker processes (one per rank) and collect what each saved: the multi-process tests'
one launcher (data-parallel and FSDP2-sharded).

Each worker is called as ``target(*args_of(rank, port))`` and must save a dict to ``<out_dir>/rank<r>.pt``
(``{"fatal": traceback}`` when it failed; :func:`run_rank` does that around the worker's own checks). A rank
still alive after ``limit_s`` is killed and the test fails naming it: a hang guard, not a timing.
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(target: Callable[..., Any], args_of: Callable[[int, int], tuple], world: int, out_dir: str,
              limit_s: float) -> list[dict]:
    """Start ``world`` spawned processes ``target(*args_of(rank, port))``, wait at most ``limit_s`` seconds in
    all, and return each rank's saved dict (failing the test on a hang, a missing file or a fatal error)."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=args_of(r, port), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + limit_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    if hung:
        pytest.fail(f"ranks {hung} of {world} did not finish within {limit_s} s")
    out = []
    for r in range(world):
        path = os.path.join(out_dir, f"rank{r}.pt")
        assert os.path.exists(path), f"rank {r} wrote no result (exit code {procs[r].exitcode})"
        res = torch.load(path, weights_only=False)
        if "fatal" in res:
            pytest.fail(f"rank {r} of {world} failed:\n{res['fatal']}")
        out.append(res)
    return out


def run_rank(rank: int, world: int, port: int, out_dir: str, timeout_s: float,
             body: Callable[[], dict]) -> None:
    """The body of one spawned rank: one thread, a gloo group on ``port``, ``body()``'s dict saved to
    ``<out_dir>/rank<rank>.pt`` (``{"fatal": traceback}`` when anything raised: reported, never a hang), the
    group destroyed."""
    torch.set_num_threads(1)
    res: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        res = body()
    except BaseException:  # noqa: BLE001  report, do not hang the parent
        res["fatal"] = traceback.format_exc()
    finally:
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        if dist.is_initialized():
            dist.destroy_process_group()
