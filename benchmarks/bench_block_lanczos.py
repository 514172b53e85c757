"""Block Lanczos at scale (issue 20): where the time of a solve goes, block against vector Lanczos.

Workload (that of ``benchmarks/bench_lanczos_scale.py``): ``HessianOperator`` of a tanh MLP 784-h-h-10 with
cross-entropy on one batch of 16 random samples (float32, random init, seed 0), top-10 (``which="LA"``) to
``tol=1e-4``, for h = 700 (n ≈ 1.0M) and h = 2100 (n ≈ 6.1M). Each size is solved, in one process and in this
order, with

- ``full``: ``lanczos(reorth="full", max_basis=300, max_iter=300)``: the whole Krylov basis kept (full
  reorthogonalisation without restarts, the reference of "agree");
- ``lanczos``: ``lanczos(max_iter=300)`` with its defaults (thick restart within ``fast_basis_bound(10) = 30``
  vectors above n = 10⁶);
- ``block b=…``: :func:`hessext.block_lanczos.block_lanczos` with block sizes 4, 8, 10, 16 and the default
  basis bound :func:`~hessext.block_lanczos.default_block_basis` (or ``--max-basis``).

Time split per solve (wall clock):

- HVP: inside the operator's ``matmat`` (a wrapping operator times it);
- orth: inside orthogonalisation — ``hessext.ops.reorthogonalize`` (vector Lanczos) and
  ``block_lanczos.project_out`` / ``orthonormalize_block`` (block Gram–Schmidt), nested calls counted once;
- restart: inside ``hessext.restart.compress_basis`` (the thick restarts' basis rewrite);
- rest: everything else (recurrences, the projected matrices' eigensolves, Ritz vectors, the orthogonality
  measurement).

"outside HVP" = (total − HVP) / total, the figure of merit of issue 20 (target ≤ 30 % at n ≈ 6M); "agree" is
``max |λ_i − λ_i^full| / |λ_i^full|`` over the 10 eigenvalues. The machine load (``os.getloadavg``) is printed
before and after each solve: timings on shared cores are noisy, so compare rows of one run and read the HVP
counts too.

Run: ``python benchmarks/bench_block_lanczos.py [--sizes 700 2100] [--blocks 4 8 10 16] [--threads 2]``
(~10 min on a loaded 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def configurations(blocks: list[int], max_basis: int | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, solver, keyword arguments) of every solve of one size, the reference first."""
    out = [("full", "lanczos", dict(reorth="full", max_basis=300, max_iter=300)),
           ("lanczos", "lanczos", dict(max_iter=300))]
    for b in blocks:
        kw: dict[str, Any] = dict(block_size=b)
        if max_basis is not None:
            kw["max_basis"] = max_basis
        out.append((f"block b={b}", "block", kw))
    return out


def run(sizes: list[int], blocks: list[int], max_basis: int | None, threads: int) -> list[dict[str, Any]]:
    """Every configuration on every size; one row per solve (printed as JSON lines as they finish)."""
    import numpy as np
    import torch
    from _timing import Timer, tanh_mlp_operator

    import hessext
    import hessext.block_lanczos as bl
    import hessext.lanczos as hl
    import hessext.ops as hops

    torch.set_num_threads(threads)
    orth, restart = Timer(), Timer()
    hops.reorthogonalize = orth.wrap(hops.reorthogonalize)
    bl.project_out = orth.wrap(bl.project_out)
    bl.orthonormalize_block = orth.wrap(bl.orthonormalize_block)
    hl.compress_basis = restart.wrap(hl.compress_basis)
    bl.compress_basis = restart.wrap(bl.compress_basis)

    rows = []
    for h in sizes:
        op = tanh_mlp_operator(h)
        ref = None
        with op.session():
            op.matvec(torch.ones(op.n))                      # build the cached graph outside the timings
            for name, solver, kw in configurations(blocks, max_basis):
                op.seconds, op.calls, mv0 = 0.0, 0, op.num_matvecs
                orth.total = orth.calls = restart.total = restart.calls = 0
                load0 = os.getloadavg()[0]
                t0 = time.perf_counter()
                if solver == "lanczos":
                    r = hl.lanczos(op, k=10, tol=1e-4, return_vectors=False, **kw)
                else:
                    r = bl.block_lanczos(op, k=10, tol=1e-4, return_vectors=False, **kw)
                total = time.perf_counter() - t0
                ev = r.eigenvalues.numpy()
                ref = ev if ref is None else ref
                mv = op.num_matvecs - mv0
                rows.append(dict(backend=hessext.BACKEND, n=op.n, solve=name, total=total, hvp=op.seconds,
                                 orth=orth.total, restart=restart.total,
                                 rest=total - op.seconds - orth.total - restart.total, matvecs=mv,
                                 matmat_calls=op.calls, converged=bool(r.converged), max_basis=r.max_basis,
                                 restarts=r.restarts, ortho=float(r.orthogonality_loss),
                                 agree=float(np.max(np.abs(ev - ref) / np.abs(ref))),
                                 ms_per_hvp=1e3 * op.seconds / max(1, mv), load=(load0, os.getloadavg()[0]),
                                 top=float(ev.max())))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        del op
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of all solves."""
    out = ["| n | solve | max_basis | restarts | HVPs | ms/HVP | total s | HVP s | orth s | restart s | "
           "rest s | outside HVP | ‖QᵀQ−I‖ | agree vs full | conv | load before/after |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['solve']} | {r['max_basis']} | {r['restarts']} | {r['matvecs']} | "
                   f"{r['ms_per_hvp']:.1f} | {r['total']:.2f} | {r['hvp']:.2f} | {r['orth']:.2f} | "
                   f"{r['restart']:.2f} | {r['rest']:.2f} | {(r['total'] - r['hvp']) / r['total']:.0%} | "
                   f"{r['ortho']:.1e} | {r['agree']:.1e} | {'yes' if r['converged'] else 'no'} | "
                   f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[700, 2100], help="hidden widths h")
    ap.add_argument("--blocks", type=int, nargs="*", default=[4, 8, 10, 16], help="block sizes")
    ap.add_argument("--max-basis", type=int, default=None, help="basis bound of the block solves")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    rows = run(args.sizes, args.blocks, args.max_basis, args.threads)
    import hessext
    print(f"\nTop-10 to tol 1e-4, MLP 784-h-h-10 tanh, batch 16, float32, {args.threads} threads, backend "
          f"{hessext.BACKEND}, {os.cpu_count()} CPUs\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
