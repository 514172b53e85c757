"""Gauss–Newton and Fisher operators: hessext against curvlinops' GGNLinearOperator and EFLinearOperator.

Workloads: the MLP (85k parameters, batch 512) and the transformer (2-layer decoder, ~135k parameters, 16
sequences of 32 tokens) of ``benchmarks/bench_engine.py``. For curvlinops the transformer's logits are
flattened to ``[tokens, vocab]`` (labels to ``[tokens]``) by a wrapper module, so that it sees a plain
``nn.CrossEntropyLoss`` over tokens; hessext gets the model as it is with bench_engine's token-level
criterion. Both define the empirical Fisher per token (hessext's "term", curvlinops' flattened outputs):
the same matrices, compared number for number.

Sections (one process, one thread count, float32 unless said):

1. **Equal results**: ``G v`` and ``F v`` for 3 random vectors,
   ``‖x_hessext − x_curvlinops‖ / ‖x_curvlinops‖`` (target ≤ 1e-6).
2. **Product cost** in units of one gradient (forward + backward of the same loss), interleaved rounds,
   medians: hessext ``G v`` / ``F v`` in a session (as the algorithms call them) and standalone, curvlinops'
   ``@`` on a torch vector. Targets: hessext ``G v`` ≤ 1.5 gradients on the MLP; hessext ``G v``, ``F v`` no
   slower than curvlinops' on every workload.
3. **Top-10 eigenvalues of G to 1e-3** against a float64 reference (hessext Lanczos, tol 1e-10): each tool on
   a ladder of its tolerance, the cheapest setting reaching 1e-3 (``first_accurate`` of bench_engine; time =
   best of 3 runs of that setting): hessext ``lanczos`` on a fresh ``GGNOperator`` (its graph building
   included) against scipy ``eigsh`` on curvlinops' ``GGNLinearOperator`` (built once outside the timing: its
   constructor runs determinism checks). Target: hessext ≥ 2× faster.

Run: ``python benchmarks/bench_curvature.py [--threads 1] [--workloads mlp,transformer]``; writes
``bench-results/bench_curvature_<commit>.json`` and prints a text table. Needs the peers (``make
.venv/.bench-installed``); the system load is recorded before and after (threads > 1 only on a quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_engine import (  # noqa: E402
    ROOT,
    Counter,
    counted_scipy,
    first_accurate,
    machine_info,
    make_workload,
    math_sdpa,
)

from hessext.curvature import FisherOperator, GGNOperator  # noqa: E402
from hessext.lanczos import lanczos  # noqa: E402

LADDER = [3e-2, 2e-2, 1e-2, 7e-3, 5e-3, 3e-3, 2e-3, 1e-3, 5e-4, 3e-4, 1e-4, 1e-5]


class FlatLogits(nn.Module):
    """``model(x)`` with the logits flattened to ``[tokens, vocab]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.reshape(-1, out.shape[-1])


def workload(name: str) -> tuple[tuple, tuple]:
    """``(model, batch, criterion)`` for hessext and for curvlinops: the same function. On the transformer,
    hessext gets ``[B, L, V]`` logits, ``[B, L]`` labels and bench_engine's token-level ``SeqCE`` (its closed
    form reads the classes along the last dimension, checked against the loss value); curvlinops gets the
    logits flattened by :class:`FlatLogits` (same parameters), flat labels and ``nn.CrossEntropyLoss``."""
    model, (X, y), crit = make_workload(name)
    if name == "transformer":
        return (model, (X, y), crit), (FlatLogits(model), (X, y.reshape(-1)), nn.CrossEntropyLoss())
    return (model, (X, y), crit), (model, (X, y), crit)


def equal_results(ops: dict[str, Any], n: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(7)
    V = torch.randn(n, 3, generator=g)
    out = {}
    for kind in ("G", "F"):
        ours, theirs = ops[f"hessext {kind}"], ops[f"curvlinops {kind}"]
        errs = []
        for j in range(3):
            a, b = ours @ V[:, j], theirs @ V[:, j]
            errs.append(float((a - b).norm() / b.norm()))
        out[kind] = max(errs)
    return out


def product_cost(model: nn.Module, batch: tuple, crit: nn.Module, ops: dict[str, Any], n: int,
                 rounds: int) -> dict[str, float]:
    """Seconds per product / seconds per gradient, medians of interleaved rounds."""
    params = [p for p in model.parameters() if p.requires_grad]
    X, y = batch
    v = torch.randn(n, generator=torch.Generator().manual_seed(3))

    def grad_once() -> Any:
        return torch.autograd.grad(crit(model(X), y), params)

    G, Fe = ops["hessext G"], ops["hessext F"]
    fns: dict[str, Callable[[], Any]] = {
        "gradient": grad_once,
        "hessext G·v (standalone)": lambda: G @ v,
        "curvlinops G·v": lambda: ops["curvlinops G"] @ v,
        "curvlinops F·v": lambda: ops["curvlinops F"] @ v,
    }
    in_session = {"hessext G·v": lambda: G @ v, "hessext F·v": lambda: Fe @ v}
    times: dict[str, list[float]] = {k: [] for k in list(fns) + list(in_session)}
    G @ v, Fe @ v                                          # graphs built: not part of the per-product cost
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        with G.session():
            for k, f in in_session.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(t)) for k, t in times.items()}
    out = {f"{k} / gradient": med[k] / med["gradient"] for k in med if k != "gradient"}
    out["gradient_s"] = med["gradient"]
    return out


def top10(model: nn.Module, batch: tuple, crit: nn.Module, cl_ggn: Any) -> dict[str, Any]:
    from scipy.sparse.linalg import eigsh

    ref = lanczos(GGNOperator(model, crit, batch, dtype=torch.float64), k=10, which="LA", tol=1e-10,
                  max_iter=400, seed=1, return_vectors=False)
    ref_vals = ref.eigenvalues.numpy()

    def run_hessext(tol: float) -> tuple[np.ndarray, int]:
        op = GGNOperator(model, crit, batch)
        res = lanczos(op, k=10, which="LA", tol=tol, max_iter=300, seed=0, return_vectors=False)
        return res.eigenvalues.double().numpy(), int(res.num_matvecs)

    counter = Counter()
    lin = cl_ggn.to_scipy()

    def run_curvlinops(tol: float) -> tuple[np.ndarray, int]:
        counter.n = 0
        vals = eigsh(counted_scipy(lin, counter), k=10, which="LA", tol=tol, return_eigenvectors=False,
                     v0=np.ones(lin.shape[0], dtype=np.float32))
        return vals, counter.n

    out: dict[str, Any] = {"reference_top10": ref_vals.tolist(), "reference_converged": bool(ref.converged)}
    for tool, fn in (("hessext lanczos", run_hessext), ("curvlinops + scipy eigsh", run_curvlinops)):
        secs, mv, err, setting = first_accurate(LADDER, fn, ref_vals)
        out[tool] = {"seconds": secs, "matvecs": mv, "rel_error": err, "tol": setting}
        print(f"  top-10 {tool:26s} {secs if secs is None else round(secs, 3)} s  matvecs={mv}  "
              f"err={err if err is None else f'{err:.1e}'}  tol={setting}", flush=True)
    a, b = out["hessext lanczos"]["seconds"], out["curvlinops + scipy eigsh"]["seconds"]
    out["speedup"] = None if not (a and b) else b / a
    return out


def bench(name: str, rounds: int) -> dict[str, Any]:
    from curvlinops import EFLinearOperator, GGNLinearOperator

    (model, batch, crit), (cl_model, cl_batch, cl_crit) = workload(name)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    print(f"## {name}: {n} parameters", flush=True)
    ops = {"hessext G": GGNOperator(model, crit, batch), "hessext F": FisherOperator(model, crit, batch),
           "curvlinops G": GGNLinearOperator(cl_model, cl_crit, params, [cl_batch]),
           "curvlinops F": EFLinearOperator(cl_model, cl_crit, params, [cl_batch])}
    res: dict[str, Any] = {"n": n}
    res["equal_results_max_rel_diff"] = equal_results(ops, n)
    print(f"  equal results (max rel. diff over 3 vectors): {res['equal_results_max_rel_diff']}", flush=True)
    res["product_cost"] = product_cost(model, batch, crit, ops, n, rounds)
    print("  product cost: " + ", ".join(f"{k} {v:.3g}" for k, v in res["product_cost"].items()), flush=True)
    res["top10"] = top10(model, batch, crit, ops["curvlinops G"])
    return res


def table(results: dict[str, dict]) -> str:
    lines = ["| workload | G·v/grad (session) | G·v/grad (alone) | curvlinops G·v/grad | F·v/grad | "
             "curvlinops F·v/grad | max rel diff G, F | top-10 hessext s (mv) | "
             "top-10 curvlinops+eigsh s (mv) | speed-up |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for name, r in results.items():
        pc, t = r["product_cost"], r["top10"]
        h, c = t["hessext lanczos"], t["curvlinops + scipy eigsh"]
        eq = r["equal_results_max_rel_diff"]
        lines.append(
            f"| {name} | {pc['hessext G·v / gradient']:.2f} | "
            f"{pc['hessext G·v (standalone) / gradient']:.2f} | "
            f"{pc['curvlinops G·v / gradient']:.2f} | {pc['hessext F·v / gradient']:.2f} | "
            f"{pc['curvlinops F·v / gradient']:.2f} | {eq['G']:.1e}, {eq['F']:.1e} | "
            f"{h['seconds']:.2f} ({h['matvecs']}) | {c['seconds']:.2f} ({c['matvecs']}) | "
            f"{t['speedup']:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workloads", default="mlp,transformer")
    ap.add_argument("--rounds", type=int, default=21, help="interleaved rounds of the product-cost timing")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    info = machine_info(args.threads)
    info["load_average_before"] = os.getloadavg()
    print(f"# curvature operators: hessext vs curvlinops\n{json.dumps(info)}\n", flush=True)
    results = {}
    with math_sdpa():
        for name in args.workloads.split(","):
            results[name] = bench(name, args.rounds)
    info["load_average_after"] = os.getloadavg()
    print("\n" + table(results))
    print(f"\nload average before {info['load_average_before']}, after {info['load_average_after']}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"bench_curvature_{info['commit']}.json")
    with open(path + ".tmp", "w") as fh:
        json.dump({"info": info, "results": results}, fh, indent=1)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
