"""API A benchmark: ``min_max_hessian_eigs`` (defaults) against the original algorithm, and the trace default.

``--eig`` (default section). Workload: the MLP of ``benchmarks/bench_engine.py`` (64-256-256-10, tanh, 85,002
parameters, batch 512, cross-entropy, float32, same seeds). Reference: float64 hessext Lanczos to a relative
residual of 1e-10 (both ends). Compared:

* ``hessext``: ``min_max_hessian_eigs(ModelWrapper(model, loss_fn, X))`` with default arguments
  (``max_iter=100, tol=1e-3``): one Lanczos run (full reorthogonalisation) for both ends, cached
  double-backward HVPs.
* ``original``: the algorithm of the original code — ``scipy.sparse.linalg.eigsh(k=1, which="LM", tol)`` on a
  double-backward HVP (forward, gradient with ``create_graph``, backward of ``⟨g, v⟩``, rebuilt for every
  product, numpy in/out) for the maximum, then ``eigsh`` on the shifted operator ``H − λ_max I`` for the
  minimum — on a ladder of tolerances starting at its default 1e-2.
* ``original-alg/hessext-HVP``: the same two-``eigsh`` algorithm on hessext's cached-graph operator
  (``HessianOperator.to_scipy()``), which isolates the algorithmic difference from the HVP cost.

"Equal accuracy" is reported in two ways: (a) the loosest ladder tolerance at which the original reaches the
must-reach accuracy (min within 1 %, max within 0.1 %), and (b) the loosest at which it is at least as
accurate as ``hessext`` with defaults at both ends (errors below 1e-6 count as equal: float32 roundoff).

``--trace``: which estimator ``hessian_trace`` uses by default. Root-mean-square relative error over 20 seeds
of Hutchinson, Hutch++ and XTrace at budgets 30 and 100, against the exact trace of the float64 Hessian, on a
small MLP, CNN and transformer, each at initialisation and after 150 Adam steps.

Run: ``python benchmarks/bench_api_a.py [--eig] [--trace] [--threads 2] [--repeat 3] [--json out.json]``.
Times are the fastest of ``--repeat`` runs (errors and HVP counts the worst); wall-clock numbers on a shared
machine are indicative, HVP counts are exact.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hessext.compat.api_a import ModelWrapper, hessian_trace, min_max_hessian_eigs  # noqa: E402
from hessext.lanczos import lanczos  # noqa: E402

LADDER = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
FLOOR = 1e-6          # errors below this count as equal (float32 roundoff of the HVP)


# ----------------------------------------------------------------------------------------------- eig section
def mlp_workload() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The MLP workload of bench_engine.py: 85,002 parameters, batch 512 (same seeds)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10))
    X = torch.randn(512, 64, generator=g)
    y = torch.randint(0, 10, (512,), generator=g)
    return model, X, y


def original_style_matvec(model: nn.Module, X: torch.Tensor, y: torch.Tensor,
                          crit: Callable, counter: list) -> Callable[[np.ndarray], np.ndarray]:
    """H v as the original code computed it: rebuild the graph, double backward, numpy in and out."""
    params = [p for p in model.parameters()]

    def mv(v: np.ndarray) -> np.ndarray:
        counter[0] += 1
        flat = torch.from_numpy(np.asarray(v, dtype=np.float32).reshape(-1))
        vs, o = [], 0
        for p in params:
            vs.append(flat[o:o + p.numel()].view_as(p))
            o += p.numel()
        loss = crit(model(X), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * u).sum() for g, u in zip(grads, vs, strict=True))
        hv = torch.autograd.grad(dot, params)
        return torch.cat([h.reshape(-1) for h in hv]).numpy().astype(np.float64)

    return mv


def two_eigsh(n: int, mv: Callable[[np.ndarray], np.ndarray], tol: float) -> tuple[float, float]:
    """The original algorithm: eigsh for the max, then eigsh on H − λ_max I for the min (ARPACK's own v0)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    A = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    lam_max = float(eigsh(A, k=1, which="LM", tol=tol, return_eigenvectors=True)[0][0])
    S = LinearOperator((n, n), matvec=lambda v: mv(v) - lam_max * np.asarray(v).reshape(-1), dtype=np.float64)
    lam_min = float(eigsh(S, k=1, which="LM", tol=tol, return_eigenvectors=True)[0][0]) + lam_max
    if lam_max <= 0 < lam_min:     # "LM" found the negative end first: the original swapped them
        lam_max, lam_min = lam_min, lam_max
    return lam_min, lam_max


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def eig_section(out: dict, repeat: int = 3) -> None:
    model, X, y = mlp_workload()
    crit = nn.CrossEntropyLoss()

    def loss_fn(o: torch.Tensor) -> torch.Tensor:
        return crit(o, y)

    wrapper = ModelWrapper(model, loss_fn, X)
    print(f"workload: MLP, n = {wrapper.num_parameters:,} parameters, batch {len(X)}, float32, "
          f"{torch.get_num_threads()} threads", flush=True)

    t0 = time.perf_counter()
    H64 = wrapper.operator(dtype=torch.float64)
    ref = lanczos(H64, k=2, which="BE", tol=1e-10, max_iter=250, seed=1)
    ref_min, ref_max = float(ref.eigenvalues[0]), float(ref.eigenvalues[-1])
    print(f"reference (float64 Lanczos, {ref.num_matvecs} HVPs, {time.perf_counter() - t0:.1f} s): "
          f"min {ref_min:.10g}, max {ref_max:.10g}, relative residuals "
          f"{[f'{float(r):.1e}' for r in ref.relative_residuals]}", flush=True)
    out["reference"] = {"min": ref_min, "max": ref_max, "hvps": ref.num_matvecs}

    # hessext, default arguments (timed on the documented form; HVPs counted by the legacy form, same numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        min_max_hessian_eigs(ModelWrapper(model, loss_fn, X), max_iter=5)  # warm-up (allocator, threads)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        mn, mx, _, _ = min_max_hessian_eigs(ModelWrapper(model, loss_fn, X))
        times.append(time.perf_counter() - t0)
    hvps = min_max_hessian_eigs(model, X, y, crit)[4]
    ours = {"seconds": min(times), "hvps": hvps, "err_min": rel(mn, ref_min), "err_max": rel(mx, ref_max),
            "min": mn, "max": mx}
    out["hessext"] = ours
    rows = [("hessext defaults (tol=1e-3)", ours)]

    n = wrapper.num_parameters
    H32 = wrapper.operator()
    sc = H32.to_scipy()
    variants: dict[str, Callable[[], tuple[Callable, list]]] = {}

    def orig_factory():
        counter = [0]
        return original_style_matvec(model, X, y, crit, counter), counter

    def hx_factory():
        counter = [0]

        def mv(v: np.ndarray) -> np.ndarray:
            counter[0] += 1
            return sc.matvec(v).reshape(-1)
        return mv, counter

    variants["original"] = orig_factory
    variants["original-alg/hessext-HVP"] = hx_factory
    out["ladder"] = {}
    for name, factory in variants.items():
        out["ladder"][name] = []
        for tol in LADDER:
            runs = []
            for _ in range(repeat):
                mv, counter = factory()
                t0 = time.perf_counter()
                try:
                    lo, hi = two_eigsh(n, mv, tol)
                except Exception as exc:  # ARPACK non-convergence at a loose tol is reported, not fatal
                    print(f"  {name} tol={tol:g}: failed ({type(exc).__name__}: {str(exc)[:80]})")
                    break
                secs = time.perf_counter() - t0
                runs.append((secs, counter[0], rel(lo, ref_min), rel(hi, ref_max), lo, hi))
            if not runs:
                continue
            # fastest time; largest HVP count and errors over the repeats (ARPACK draws its own start vector)
            row = {"tol": tol, "seconds": min(r[0] for r in runs), "hvps": max(r[1] for r in runs),
                   "err_min": max(r[2] for r in runs), "err_max": max(r[3] for r in runs),
                   "min": runs[0][4], "max": runs[0][5]}
            out["ladder"][name].append(row)
            rows.append((f"{name} tol={tol:g}", row))
            print(f"  {name} tol={tol:g}: {row['seconds']:.2f} s, {row['hvps']} HVPs, "
                  f"err min {row['err_min']:.2e}, max {row['err_max']:.2e}", flush=True)

    print("\n| method | seconds | HVPs | rel. error min | rel. error max |\n|---|---:|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['seconds']:.2f} | {r['hvps']} | {r['err_min']:.2e} | {r['err_max']:.2e} |")

    print(f"\nmust-reach with defaults: min within 1 %: {ours['err_min'] <= 1e-2} ({ours['err_min']:.1e}); "
          f"max within 0.1 %: {ours['err_max'] <= 1e-3} ({ours['err_max']:.1e})")
    out["speedups"] = {}
    for name, ladder in out["ladder"].items():
        for label, pred in (
                ("must-reach accuracy (min 1%, max 0.1%)",
                 lambda r: r["err_min"] <= 1e-2 and r["err_max"] <= 1e-3),
                ("hessext's accuracy",
                 lambda r: (r["err_min"] <= max(ours["err_min"], FLOOR)
                            and r["err_max"] <= max(ours["err_max"], FLOOR)))):
            hit = next((r for r in ladder if pred(r)), None)
            if hit is None:
                print(f"{name} at {label}: not reached on the ladder")
                continue
            sp = hit["seconds"] / ours["seconds"]
            out["speedups"][f"{name} @ {label}"] = {"tol": hit["tol"], "speedup": sp,
                                                    "hvp_ratio": hit["hvps"] / ours["hvps"]}
            print(f"{name} at {label}: tol={hit['tol']:g}, {hit['seconds']:.2f} s, {hit['hvps']} HVPs -> "
                  f"hessext {sp:.2f}x faster ({hit['hvps'] / ours['hvps']:.2f}x fewer HVPs)")


# ---------------------------------------------------------------------------------------------- trace section
class _TinyLM(nn.Module):
    def __init__(self, vocab: int = 16, d: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layer = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        mask = torch.triu(torch.full((L, L), float("-inf")), 1)
        return self.head(self.layer(self.embed(ids), src_mask=mask))


def trace_workloads():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(20, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 5))
    X = torch.randn(128, 20, generator=g)
    y = torch.randint(0, 5, (128,), generator=g)
    yield "mlp", mlp, X, (lambda o, y=y: nn.functional.cross_entropy(o, y))
    cnn = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
                        nn.Conv2d(6, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(32, 10))
    X = torch.randn(64, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    yield "cnn", cnn, X, (lambda o, y=y: nn.functional.cross_entropy(o, y))
    lm = _TinyLM()
    X = torch.randint(0, 16, (16, 8), generator=g)
    y = torch.randint(0, 16, (16, 8), generator=g)
    yield "transformer", lm, X, (lambda o, y=y: nn.functional.cross_entropy(o.reshape(-1, 16), y.reshape(-1)))


def _train(model: nn.Module, X: torch.Tensor, loss_fn: Callable, steps: int = 150) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(X)).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def trace_section(out: dict, seeds: int = 20, budgets=(30, 100)) -> None:
    methods = ("hutchinson", "hutchpp", "xtrace", "auto")
    print("\n| workload | n | budget | " + " | ".join(methods) + " |")
    print("|---|---:|---:|" + "---:|" * len(methods))
    out["trace"] = []
    for name, model, X, loss_fn in trace_workloads():
        for state in ("init", "trained"):
            if state == "trained":
                _train(model, X, loss_fn)
            w = ModelWrapper(model, loss_fn, X)
            exact = float(w.operator(dtype=torch.float64).to_dense().diagonal().sum())
            for m in budgets:
                errs = {}
                for meth in methods:
                    e = [(hessian_trace(w, num_random_vectors=m, method=meth, seed=s) - exact) / abs(exact)
                         for s in range(seeds)]
                    errs[meth] = math.sqrt(float(np.mean(np.square(e))))
                out["trace"].append({"workload": f"{name} ({state})", "n": w.num_parameters, "budget": m,
                                     "exact": exact, **errs})
                best = min(errs, key=errs.get)
                print(f"| {name} ({state}) | {w.num_parameters} | {m} | "
                      + " | ".join(f"**{errs[k]:.2e}**" if k == best else f"{errs[k]:.2e}" for k in methods)
                      + " |", flush=True)
    geo = {k: math.exp(np.mean([math.log(r[k]) for r in out["trace"]])) for k in methods}
    out["trace_geomean"] = geo
    print("geometric mean of the RMS relative errors: " + ", ".join(f"{k} {v:.2e}" for k, v in geo.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eig", action="store_true", help="eigenvalue comparison (default without --trace)")
    ap.add_argument("--trace", action="store_true", help="trace estimator comparison")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (the fastest is reported)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    out: dict[str, Any] = {"machine": platform.node(), "processor": platform.processor(),
                           "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.eig or not args.trace:
        eig_section(out, args.repeat)
    if args.trace:
        trace_section(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
