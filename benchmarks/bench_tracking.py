"""Curvature tracking over training (issue 15): matvecs and time per tracked checkpoint, warm against cold
starts, and the tracker's cost relative to a training step.

Workloads (float32, seed 0, CPU):

- ``mlp``: the issue's tanh MLP 20-200-200-4, MSE loss, full batch of N Gaussian inputs (N = 1000; 256 with
  ``--quick``) with random one-hot targets, gradient descent at η = 0.1 (edge of stability at λ_max = 2/η);
- ``transformer``: ``hessext.TransformerFactory.create_decoder_only_transformer`` (vocab 64, d_model 32,
  2 heads, 1 layer, d_ff 64), one batch of 16 random sequences of 16 tokens (next-token labels), Adam at
  η = 1e-3.

Each workload is trained twice from the same initialisation for ``--steps`` steps, with
``hessext.CurvatureTracker(every=--every, quantities=("lambda_max",), tol=--tol)`` called after every
optimiser step: once with ``warm_start=True`` and once with ``warm_start=False``. The tracker leaves the
model, the optimiser and the RNG untouched, so both runs see the same checkpoints. Measured:

- matvecs per checkpoint (the tracker's ``record["matvecs"]``, all quantities summed): median over the
  checkpoints after the first (the first warm checkpoint has nothing to start from and is a cold solve);
- time per checkpoint: wall clock of ``tracker.step`` at a checkpoint (median);
- a training step: wall clock of forward + backward + ``optimizer.step`` (median over all steps);
- ``ckpt / train step``: the two medians' ratio; ``overhead``: total tracker time over total training time
  (with a checkpoint every ``--every`` steps).

Run: ``python benchmarks/bench_tracking.py [--quick] [--steps 200] [--every 10] [--tol 1e-3]
[--threads 1] [--workloads mlp transformer] [--json out.json]``; prints a markdown table. ``--quick``
takes well under a minute on one core.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import hessext  # noqa: E402


@dataclass
class Workload:
    """A model, its loss and data, an optimiser factory and one training step."""
    name: str
    model: nn.Module
    loss_fn: Any
    data: Any
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    train_step: Callable[[nn.Module, torch.optim.Optimizer], float]
    model_type: Any = None


@dataclass
class RunStats:
    """What one tracked training run measured."""
    matvecs: list[int] = field(default_factory=list)     # per checkpoint, all quantities summed
    ckpt_s: list[float] = field(default_factory=list)    # tracker.step time at checkpoints
    train_s: list[float] = field(default_factory=list)   # every training step
    lambda_max: list[float] = field(default_factory=list)


def mlp_workload(n: int) -> Workload:
    """The issue's 20-200-200-4 tanh MLP with MSE on Gaussian inputs and random one-hot targets, GD η=0.1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (n,), generator=g), 4).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 4))
    loss_fn = nn.MSELoss()

    def step(m: nn.Module, opt: torch.optim.Optimizer) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(m(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return Workload("mlp 20-200-200-4 tanh (GD, η=0.1)", model, loss_fn, (x, y),
                    lambda m: torch.optim.SGD(m.parameters(), lr=0.1), step)


def transformer_workload() -> Workload:
    """A tiny decoder-only transformer on random next-token data, Adam η=1e-3."""
    torch.manual_seed(0)
    vocab, seq, batch = 64, 16, 16
    model = hessext.TransformerFactory.create_decoder_only_transformer(
        vocab_size=vocab, d_model=32, num_heads=2, num_layers=1, d_ff=64, max_seq_length=seq)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    data = {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}
    loss_fn = nn.CrossEntropyLoss()

    def step(m: nn.Module, opt: torch.optim.Optimizer) -> float:
        opt.zero_grad(set_to_none=True)
        logits = m(data["input_ids"])
        loss = loss_fn(logits.reshape(-1, vocab), data["labels"].reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    return Workload("transformer d32 1 layer (Adam, η=1e-3)", model, loss_fn, data,
                    lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), step, model_type="decoder_only")


def tracked_run(make: Callable[[], Workload], warm: bool, steps: int, every: int, tol: float) -> RunStats:
    """Train a fresh copy of the workload for ``steps`` steps, tracking λ_max every ``every`` steps."""
    w = make()
    opt = w.make_optimizer(w.model)
    tracker = _tracker_class()(w.model, w.loss_fn, w.data, every=every, quantities=("lambda_max",),
                         tol=tol, warm_start=warm, seed=0, model_type=w.model_type)
    out = RunStats()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        loss = w.train_step(w.model, opt)
        out.train_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rec = tracker.step(step, optimizer=opt, loss=loss)
        if rec is not None:
            out.ckpt_s.append(time.perf_counter() - t0)
            out.matvecs.append(int(sum(v for v in (rec.get("matvecs") or {}).values() if v is not None)))
            out.lambda_max.append(float(rec["quantities"]["lambda_max"]))
    return out


def _tracker_class() -> type:
    """``hessext.CurvatureTracker`` (or, before it is exported at the top level, its defining module's)."""
    cls = getattr(hessext, "CurvatureTracker", None)
    if cls is None:
        try:
            from hessext.analysis.tracking import CurvatureTracker as cls
        except ImportError:
            raise SystemExit("hessext.CurvatureTracker is not in this checkout (issue 15)") from None
    return cls


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarise(name: str, n_params: int, warm: RunStats, cold: RunStats) -> list[dict[str, Any]]:
    """One row per start mode (cold first), with the warm/cold matvec ratio on the warm row."""
    rows = []
    for mode, r in (("cold", cold), ("warm", warm)):
        mv = _median([float(m) for m in r.matvecs[1:]] or [float(m) for m in r.matvecs])
        train = _median(r.train_s)
        rows.append({"workload": name, "params": n_params, "start": mode, "checkpoints": len(r.matvecs),
                     "median_matvecs": mv, "first_matvecs": r.matvecs[0] if r.matvecs else None,
                     "median_ckpt_s": _median(r.ckpt_s), "median_train_step_s": train,
                     "ckpt_over_train_step": _median(r.ckpt_s) / train if train else float("nan"),
                     "overhead": sum(r.ckpt_s) / sum(r.train_s) if r.train_s else float("nan"),
                     "lambda_max_last": r.lambda_max[-1] if r.lambda_max else None})
    rows[1]["warm_over_cold_matvecs"] = rows[1]["median_matvecs"] / rows[0]["median_matvecs"]
    lam_gap = [abs(a - b) / abs(b) for a, b in zip(warm.lambda_max, cold.lambda_max) if b]
    rows[1]["max_rel_lambda_gap"] = max(lam_gap) if lam_gap else None
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| workload | params | start | ckpts | median matvecs (first) | warm/cold | ckpt time "
            "| train step | ckpt / train step | overhead | max rel. λ gap |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        ratio = r.get("warm_over_cold_matvecs")
        gap = r.get("max_rel_lambda_gap")
        lines.append(
            f"| {r['workload']} | {r['params']:,} | {r['start']} | {r['checkpoints']} | "
            f"{r['median_matvecs']:g} ({r['first_matvecs']}) | {'' if ratio is None else f'{ratio:.0%}'} | "
            f"{r['median_ckpt_s'] * 1e3:.1f} ms | {r['median_train_step_s'] * 1e3:.2f} ms | "
            f"{r['ckpt_over_train_step']:.1f}× | {r['overhead']:.0%} | "
            f"{'' if gap is None else f'{gap:.1e}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=256 for the MLP, 60 steps")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 300; quick 60)")
    ap.add_argument("--every", type=int, default=10, help="track every this many steps")
    ap.add_argument("--tol", type=float, default=1e-3, help="the tracker's residual tolerance")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workloads", nargs="+", default=["mlp", "transformer"], choices=["mlp", "transformer"])
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    _tracker_class()
    torch.set_num_threads(args.threads)
    steps = args.steps or (60 if args.quick else 300)
    makers = {"mlp": lambda: mlp_workload(256 if args.quick else 1000), "transformer": transformer_workload}
    rows: list[dict[str, Any]] = []
    for key in args.workloads:
        make = makers[key]
        probe = make()
        n_params = sum(p.numel() for p in probe.model.parameters())
        warm = tracked_run(make, True, steps, args.every, args.tol)
        cold = tracked_run(make, False, steps, args.every, args.tol)
        rows += summarise(probe.name, n_params, warm, cold)
    print(f"steps={steps} every={args.every} tol={args.tol:g} threads={args.threads} "
          f"torch={torch.__version__}")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
