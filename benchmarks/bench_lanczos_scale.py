"""Lanczos at scale: where the time of a solve goes, full against partial reorthogonalisation (issue 20).

Workload: ``HessianOperator`` of a tanh MLP 784-h-h-10 with cross-entropy on one batch of 16 random samples
(float32, random init, seed 0), ``lanczos(k=10, tol=1e-4, max_iter=300)``, for n from ~1e5 to ~1e7. Each
size is solved with

- ``full``: full reorthogonalisation with the whole Krylov basis kept (``max_basis=300``; the behaviour before
  the basis bound, the reference of "agree");
- ``full M=30``: ``reorth="full"`` with its default bound (thick restart within ``fast_basis_bound(10) = 30``
  vectors above n = 10⁶, the unbounded run below): ``lanczos``'s default before partial reorthogonalisation;
- ``default``: what ``lanczos`` does by default now (``reorth="auto"``: partial reorthogonalisation above
  n = 10⁶, the ``full`` run at and below);
- ``bare`` (``--bare``): the three-term recurrence without any reorthogonalisation (``reorth="none"``: ghosts,
  not converged; the cost floor of any single-vector Lanczos),

on the backend this process loaded; the driver runs itself once per backend (compiled, then
``HESSEXT_FORCE_PYTHON=1``) in subprocesses.

Time split per solve (wall clock, one process, fixed thread count):

- HVP: inside the operator's ``matmat`` (a wrapping operator times it);
- orth: inside orthogonalisation — ``hessext.ops.reorthogonalize`` (full passes) and the partial state's
  ``clean`` (its norm, the ω-recurrence and its passes), nested calls counted once;
- rest: everything else (the three-term recurrence, tests of ``T_j``, final Ritz vectors and the
  orthogonality measurement).

"outside HVP" = (orth + rest) / total, the issue's figure of merit (target ≤ 30 % at n ≈ 6M). "agree" is
``max |λ_i − λ_i^full| / |λ_i^full|`` over the 10 eigenvalues against the full run of the same size.

Run: ``python benchmarks/bench_lanczos_scale.py [--quick] [--threads 2] [--sizes 2100] [--bare]``;
``--backend`` runs one backend in this process (used by the driver). A full run takes ~10 min on a 2-core
machine, ``--quick`` ~1 min.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: hidden width h of 784-h-h-10 -> n ≈ 784h + h² + 11h + 10
SIZES_FULL = (110, 700, 2100, 2700)          # n ≈ 0.1M, 1.0M, 6.1M, 9.4M
SIZES_QUICK = (110, 700)


def configurations(bare: bool) -> list[tuple[str, dict[str, Any]]]:
    """The solves of each size: name and the keyword arguments of ``lanczos``."""
    out = [("full", dict(reorth="full", max_basis=300)), ("full M=30", dict(reorth="full")), ("default", {})]
    if bare:
        out.append(("bare", dict(reorth="none")))
    return out


def run_backend(sizes: tuple[int, ...], threads: int, bare: bool = False) -> list[dict[str, Any]]:
    """Solve every size with each of :func:`configurations` on this process's backend; one row per solve."""
    import numpy as np
    import torch
    from _timing import Timer, tanh_mlp_operator

    import hessext
    import hessext.lanczos as hl
    import hessext.ops as hops

    torch.set_num_threads(threads)
    orth = Timer()
    hops.reorthogonalize = orth.wrap(hops.reorthogonalize)
    hl.PartialOrthogonalizer.clean = orth.wrap(hl.PartialOrthogonalizer.clean)

    rows = []
    floors = []
    for h in sizes:
        op = tanh_mlp_operator(h)
        ref = None
        with op.session():
            op.matvec(torch.ones(op.n))                      # build the cached graph outside the timings
            floors.append(recurrence_floor(op))
            for mode, kw in configurations(bare):
                op.seconds, orth.total, mv0 = 0.0, 0.0, op.num_matvecs
                t0 = time.perf_counter()
                r = hl.lanczos(op, k=10, tol=1e-4, max_iter=300, return_vectors=False, **kw)
                total = time.perf_counter() - t0
                ev = r.eigenvalues.numpy()
                if ref is None:
                    ref = ev
                agree = float(np.max(np.abs(ev - ref) / np.abs(ref)))
                rows.append(dict(backend=hessext.BACKEND, n=op.n, mode=mode, reorth=r.reorth,
                                 passes=r.reorth_passes, total=total,
                                 hvp=op.seconds, orth=orth.total, rest=total - op.seconds - orth.total,
                                 matvecs=op.num_matvecs - mv0, converged=bool(r.converged),
                                 max_basis=r.max_basis, restarts=r.restarts,
                                 ortho=float(r.orthogonality_loss), agree=agree,
                                 ms_per_hvp=1e3 * op.seconds / max(1, op.num_matvecs - mv0)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        del op
    return rows + floors


def recurrence_floor(op: Any, reps: int = 20) -> dict[str, Any]:
    """The cost floor of any single-vector Lanczos: one HVP against the vector work of one bare three-term
    step (a dot, two axpys, a norm and the new row written into memory already touched), both timed here."""
    import torch

    from hessext import BACKEND
    n = op.n
    V = torch.randn(4, n)
    V /= V.norm(dim=1, keepdim=True)

    def step() -> None:
        w = V[3].clone()                                  # stands for the product (a fresh vector)
        a = torch.dot(V[1], w)
        w.addcmul_(V[1], a, value=-1)
        w.add_(V[0], alpha=-0.5)
        torch.div(w, torch.linalg.vector_norm(w), out=V[2])

    def timed(f: Callable[[], Any]) -> float:
        for _ in range(3):
            f()
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        return (time.perf_counter() - t0) / reps

    hvp = timed(lambda: op.matvec(V[1]))
    rec = timed(step)
    return dict(backend=BACKEND, n=n, mode="floor", hvp_ms=1e3 * hvp, step_ms=1e3 * rec,
                share=rec / (hvp + rec))


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of all solves."""
    out = ["| backend | n | solve | reorth | passes | max_basis | restarts | HVPs | ms/HVP | total s | "
           "HVP s | orth s | rest s | outside HVP | ‖QᵀQ−I‖ | agree vs full | conv |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    floors = [r for r in rows if r["mode"] == "floor"]
    rows = [r for r in rows if r["mode"] != "floor"]
    for r in rows:
        passes = "every step" if r["passes"] < 0 else r["passes"]
        out.append(f"| {r['backend']} | {r['n']:,} | {r['mode']} | {r['reorth']} | {passes} | "
                   f"{r['max_basis']} | {r['restarts']} | "
                   f"{r['matvecs']} | {r['ms_per_hvp']:.1f} | "
                   f"{r['total']:.2f} | {r['hvp']:.2f} | {r['orth']:.2f} | {r['rest']:.2f} | "
                   f"{(r['total'] - r['hvp']) / r['total']:.0%} | {r['ortho']:.1e} | {r['agree']:.1e} | "
                   f"{'yes' if r['converged'] else 'no'} |")
    out += ["", "The floor (one HVP against the vector work of one bare three-term step, warm memory):", "",
            "| backend | n | HVP ms | recurrence ms | share of a step outside the HVP |",
            "|---|---:|---:|---:|---:|"]
    out += [f"| {r['backend']} | {r['n']:,} | {r['hvp_ms']:.1f} | {r['step_ms']:.1f} | {r['share']:.0%} |"
            for r in floors]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes up to n ≈ 1M only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bare", action="store_true", help="also the bare recurrence (reorth='none')")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="hidden widths h (default: all)")
    ap.add_argument("--backends", nargs="*", default=["compiled", "python"], choices=("compiled", "python"))
    ap.add_argument("--backend", choices=("compiled", "python"), default=None,
                    help="run one backend in this process and print its rows as JSON")
    args = ap.parse_args()
    sizes = tuple(args.sizes) if args.sizes else SIZES_QUICK if args.quick else SIZES_FULL
    if args.backend is not None:
        print(json.dumps(run_backend(sizes, args.threads, args.bare)))
        return
    rows: list[dict[str, Any]] = []
    for backend in args.backends:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        env.pop("HESSEXT_FORCE_PYTHON", None)
        if backend == "python":
            env["HESSEXT_FORCE_PYTHON"] = "1"
        cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend,
               "--threads", str(args.threads), "--sizes", *map(str, sizes)]
        if args.bare:
            cmd.append("--bare")
        out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        rows += json.loads(out.strip().splitlines()[-1])
    print(f"\nLanczos top-10 to tol 1e-4, MLP 784-h-h-10 tanh, batch 16, float32, {args.threads} threads\n")
    print(table(rows))


if __name__ == "__main__":
    main()
