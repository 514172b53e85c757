"""Real size: a GPT-2-small-sized model (124M parameters) analysed within a memory bound (issue 14).

Workload: ``transformers.GPT2LMHeadModel(GPT2Config())`` (the defaults: 12 layers, 768 wide, vocabulary 50257,
tied embeddings; eager attention, as PyHessian needs a double backward through it; random init, seed 0,
eval mode, float32) on one batch of ``--batch`` sequences of ``--seq``
random tokens, ``labels = input_ids``: the loss is the one the model reports, ``model(**batch).loss`` (shifted
next-token cross-entropy), for hessext and for PyHessian alike (PyHessian gets a wrapper returning the logits
and a criterion computing the same shifted cross-entropy).

Every figure comes from a **fresh subprocess** (peak resident memory never goes down inside a process), run
one after the other:

- ``hvp``: model, data, ``HessianOperator`` and ONE Hessian-vector product (plus one gradient, timed) →
  ``M_hvp`` = the peak resident memory of model + gradient graph + the vectors of one product;
- ``top1`` / ``top5`` / ``lmin``: ``lanczos`` (k = 1 / 5 largest, 1 smallest) to ``tol=1e-3``, default basis
  bound, ``return_vectors=False``; bound check: ``peak ≤ M_hvp + (max_basis + 3)·n·4`` bytes;
- ``trace``: ``estimate_trace`` (Hutch++/XTrace chosen adaptively) with 40 products, with its standard error;
- ``analyze_step``: ``HessianAnalyzer(model).analyze_step(batch, config=HessianConfig.minimal())``;
- ``pyhessian``: PyHessian 0.1 ``hessian(...).eigenvalues(maxIter=100, tol=1e-3, top_n=1)`` (power
  iteration; its HVPs counted).

"agrees" compares each top-1 value with the top-5 run's largest eigenvalue (|Δ| / λ).

Run: ``python benchmarks/bench_scale.py [--batch 2 --seq 32 --threads 2] [--phases ...] [--out DIR]``
(needs transformers and, for the side-by-side, PyHessian: ``make .venv/.bench-installed``). On the 2-core
machine a full run takes ~30–60 minutes and ~10 GB of memory; ``--n-layer 2`` gives a quick smaller run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

PHASES = ("hvp", "top1", "top5", "lmin", "trace", "analyze_step", "pyhessian")


def _peak_rss() -> int:
    """``VmHWM`` of ``/proc/self/status``: the process's peak resident set, bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _build(args: argparse.Namespace):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config() if args.n_layer is None else GPT2Config(n_layer=args.n_layer)
    model = GPT2LMHeadModel(cfg).eval()
    model.set_attn_implementation("eager")     # PyHessian's double backward cannot go through CPU flash SDPA
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)
    return model, {"input_ids": ids, "labels": ids.clone()}


def phase(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one phase in this process and return its figures."""
    import torch

    import hessext
    from hessext.hvp import HessianOperator

    torch.set_num_threads(args.threads)
    model, batch = _build(args)
    n = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {"phase": name, "n": n}
    t0 = time.perf_counter()
    if name == "pyhessian":
        out.update(_pyhessian(model, batch))
    elif name == "analyze_step":
        res = hessext.HessianAnalyzer(hessext.HessianConfig.minimal()).analyze_step(model, None, batch)
        out["keys"] = sorted(res.keys()) if isinstance(res, dict) else type(res).__name__
        out["top_eigenvalue"] = _first_top(res)
    else:
        H = HessianOperator(model, None, batch)
        out["loss_source"] = getattr(H, "loss_source_used", None)
        with H.session():
            if name == "hvp":
                v = torch.randn(n, generator=torch.Generator().manual_seed(0))
                t1 = time.perf_counter()
                H.matvec(v)
                out["first_hvp_s"] = time.perf_counter() - t1
                t1 = time.perf_counter()
                H.matvec(v)
                out["hvp_s"] = time.perf_counter() - t1
                t1 = time.perf_counter()
                loss, _ = H.loss_and_grad()
                out["grad_s"] = time.perf_counter() - t1
                out["loss"] = float(loss)
                out["reported_loss"] = float(model(**batch).loss)
            elif name == "trace":
                r = hessext.estimate_trace(H, 40, seed=0)
                out.update(trace=r.estimate, std_error=r.std_error, method=r.method, matvecs=r.num_matvecs)
            else:
                k, which = {"top1": (1, "LA"), "top5": (5, "LA"), "lmin": (1, "SA")}[name]
                r = hessext.lanczos.lanczos(H, k=k, which=which, tol=1e-3, seed=0, return_vectors=False)
                out.update(eigenvalues=r.eigenvalues.tolist(), matvecs=r.num_matvecs, converged=r.converged,
                           restarts=r.restarts, max_basis=r.max_basis,
                           rel_residuals=(r.residuals / r.eigenvalues.abs()).tolist())
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss"] = _peak_rss()
    return out


def _first_top(res: Any) -> Any:
    try:
        return float(res["hessian"]["max_eigenvalue"])
    except (KeyError, TypeError, IndexError):
        return None


def _pyhessian(model, batch) -> dict[str, Any]:
    import importlib

    import torch.nn.functional as F
    from torch import nn

    class Logits(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, ids):  # noqa: ANN001, ANN201
            return self.m(input_ids=ids).logits

    def shifted_ce(logits, labels):  # noqa: ANN001, ANN201 - what GPT2LMHeadModel computes from labels
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    pyh = importlib.import_module("pyhessian.hessian")
    count = [0]
    orig = pyh.hessian_vector_product

    def counted(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        count[0] += 1
        return orig(*a, **kw)
    pyh.hessian_vector_product = counted
    h = pyh.hessian(Logits(model), shifted_ce, data=(batch["input_ids"], batch["labels"]), cuda=False)
    vals, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
    return {"eigenvalues": [float(vals[0])], "matvecs": count[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--n-layer", type=int, default=None, help="fewer layers for a quick run (default: 12)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--phases", nargs="*", default=list(PHASES), choices=PHASES)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench-results")
    args = ap.parse_args()
    if args.phase is not None:
        print(json.dumps(phase(args.phase, args)))
        return
    rows = []
    for name in args.phases:
        cmd = [sys.executable, os.path.abspath(__file__), "--phase", name, "--batch", str(args.batch),
               "--seq", str(args.seq), "--threads", str(args.threads)]
        if args.n_layer is not None:
            cmd += ["--n-layer", str(args.n_layer)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            rows.append({"phase": name, "error": f"exit {proc.returncode}"})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = summarise(rows)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_scale.json"), "w") as f:
        json.dump({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                   "batch": args.batch, "seq": args.seq, "rows": rows}, f, indent=1)
    print(report)


def summarise(rows: list[dict[str, Any]]) -> str:
    """The README table: time, HVPs, peak memory against the bound, agreement."""
    by = {r["phase"]: r for r in rows}
    hvp = by.get("hvp", {})
    n = hvp.get("n", 0)
    base = hvp.get("peak_rss")
    ref = (by.get("top5", {}).get("eigenvalues") or [None])[-1]
    gib = 2.0 ** 30
    out = [f"n = {n:,} parameters; one HVP {hvp.get('hvp_s', float('nan')):.2f} s, one gradient "
           f"{hvp.get('grad_s', float('nan')):.2f} s; M_hvp (model + graph + one product) = "
           f"{(base or 0) / gib:.2f} GiB; analysed loss {hvp.get('loss')} vs model(**batch).loss "
           f"{hvp.get('reported_loss')}",
           "",
           "| run | result | HVPs | time s | peak RSS GiB | bound GiB (M_hvp + (M+3)·n·4) | max_basis | "
           "agrees with top-5 λ₁ |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in PHASES[1:]:
        r = by.get(name)
        if r is None:
            continue
        if "error" in r:
            out.append(f"| {name} | {r['error']} | | | | | | |")
            continue
        vals = r.get("eigenvalues")
        if vals:
            result = ", ".join(f"{v:.4g}" for v in vals)
        elif "trace" in r:
            result = f"{r['trace']:.4g} ± {r['std_error']:.2g}"
        else:
            result = f"λ₁ = {r.get('top_eigenvalue')}"
        M = r.get("max_basis")
        bound = f"{(base + (M + 3) * n * 4) / gib:.2f}" if (M and base) else ""
        agree = (f"{abs(vals[-1] - ref) / abs(ref):.1e}" if (vals and ref and name in ("top1", "pyhessian"))
                 else "")
        out.append(f"| {name} | {result} | {r.get('matvecs', '')} | {r['seconds']:.1f} | "
                   f"{r['peak_rss'] / gib:.2f} | {bound} | {M or ''} | {agree} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
