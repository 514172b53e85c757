"""Peak resident memory of Lanczos against the bound model + gradient graph + (basis + 3)·n·4 bytes.

Issue 8's memory contract, with issue 14's bounded basis: top-k Lanczos with m iterations on a model with n
parameters, keeping at most ``M = max_basis`` basis vectors at once (thick restart beyond it), needs no more
than

    M_bound = M_hvp + (min(m, M) + 3) · n · 4 bytes            (float32)

where ``M_hvp`` is the peak resident memory of a process that builds the model, the data and the
``HessianOperator`` and computes ONE Hessian-vector product (interpreter + torch + model + the cached
gradient graph + the few n-vectors of one HVP), and ``(m + 3)·n·4`` covers the Lanczos basis
(``[m + 1, n]`` rows, preallocated) plus two working vectors. Anything above the bound would be a hidden
copy of the basis or of the parameters.

Every figure is measured in a **fresh subprocess** (peak memory never goes down inside a process):

- ``baseline``: imports, model and data only;
- ``hvp``: + ``HessianOperator`` + one ``H @ v`` (and a Lanczos run on a 16 × 16 matrix, so that the code
  pages of scipy's tridiagonal solver and of the kernels count here too)  → ``M_hvp``;
- ``lanczos``: + ``lanczos(H, k, max_iter=m, tol=1e-30, return_vectors=False)`` (the tolerance is out of
  reach, so all m iterations run; the script checks ``iterations == m``);
- ``lanczos_vectors``: the same with ``return_vectors=True``: the k Ritz vectors ``[k, n]`` are the output
  and are formed while the basis is alive, so the bound for this run is ``M_hvp + (m + 3 + k)·n·4``.

Each child reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) and ``VmHWM`` from
``/proc/self/status`` (the kernel's high-water mark of the resident set; the two agree on Linux).

Default workload: an MLP of 10 Linear layers 1024 → 1024 (tanh) and a 1024 → 10 head, n = 10,506,250
parameters, a batch of 32 samples, cross-entropy, float32; top-10 Lanczos with 100 iterations.

Run: ``python benchmarks/bench_memory.py [--width 1024 --layers 10 --batch 32 --k 10 --iters 100]
[--threads 2] [--out bench-results]``. It takes a few minutes on 2 CPU cores (the reorthogonalisation
reads the growing basis, up to 4 GB, twice per step) and needs about 5 GB of free memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024.0 ** 2
STAGES = ("baseline", "hvp", "lanczos", "lanczos_vectors")


def _vm_hwm_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def _peak() -> dict[str, int]:
    return {"ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "vm_hwm_bytes": _vm_hwm_bytes()}


def child(stage: str, width: int, layers: int, batch: int, k: int, iters: int,
          threads: int) -> dict[str, Any]:
    """One measurement in this (fresh) process; returns the peaks and what was run."""
    sys.path.insert(0, ROOT)
    import torch
    from torch import nn

    import hessext
    from hessext.hvp import HessianOperator
    from hessext.lanczos import lanczos

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.Tanh()]
    model = nn.Sequential(*mods, nn.Linear(width, 10))
    n = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    X = torch.randn(batch, width, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    out: dict[str, Any] = {"stage": stage, "n": n, "backend": hessext.BACKEND, "torch": torch.__version__}
    t0 = time.perf_counter()
    if stage in ("hvp", "lanczos", "lanczos_vectors"):
        H = HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
        if stage == "hvp":
            # Load the code Lanczos runs (scipy's tridiagonal solver, the kernels) on a 16 x 16 matrix, so
            # that library pages count in M_hvp, as they do in the Lanczos child.
            lanczos(torch.diag(torch.arange(1.0, 17.0)), k=2, max_iter=8)
            v = torch.ones(n)
            hv = H @ v
            out["hv_norm"] = float(hv.norm())
        else:
            res = lanczos(H, k=k, which="LA", max_iter=iters, tol=1e-30,
                          return_vectors=stage == "lanczos_vectors")
            out.update(iterations=res.iterations, num_matvecs=res.num_matvecs, converged=res.converged,
                       breakdown=res.breakdown, orthogonality_loss=res.orthogonality_loss,
                       top_eigenvalue=float(res.eigenvalues[-1]), max_basis=res.max_basis,
                       restarts=res.restarts)
    out["seconds"] = time.perf_counter() - t0
    out.update(_peak())
    return out


def run_child(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", stage, "--width", str(args.width),
           "--layers", str(args.layers), "--batch", str(args.batch), "--k", str(args.k), "--iters",
           str(args.iters), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child {stage} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=list(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.width, args.layers, args.batch, args.k, args.iters,
                               args.threads)))
        return 0

    stages = {}
    for s in STAGES:
        stages[s] = run_child(s, args)
        print(f"  {s}: peak {stages[s]['vm_hwm_bytes'] / MiB:,.0f} MiB, {stages[s]['seconds']:.1f} s",
              flush=True)
    n, m = stages["lanczos"]["n"], args.iters
    lz = stages["lanczos"]
    for s in ("lanczos", "lanczos_vectors"):
        if stages[s]["iterations"] != m:
            print(f"warning: {s} ran {stages[s]['iterations']} iterations, not {m}")
    vec = n * 4
    rows = []
    for s, extra in (("lanczos", 0), ("lanczos_vectors", args.k)):
        for key in ("ru_maxrss_bytes", "vm_hwm_bytes"):
            base, hvp, peak = stages["baseline"][key], stages["hvp"][key], stages[s][key]
            kept = min(stages[s]["iterations"], stages[s]["max_basis"])     # vectors held at once
            bound = hvp + (kept + 3 + extra) * vec
            rows.append({"run": s, "measure": key, "baseline": base, "hvp": hvp, "lanczos": peak,
                         "bound": bound, "allowed_vectors": kept + 3 + extra,
                         "max_basis": stages[s]["max_basis"], "restarts": stages[s]["restarts"],
                         "lanczos_minus_hvp_in_vectors": (peak - hvp) / vec, "within_bound": peak <= bound})
    info = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "threads": args.threads, "torch": lz["torch"], "hessext_backend": lz["backend"],
            "commit": _commit(), "python": platform.python_version()}
    print(f"# hessext memory benchmark\n{json.dumps(info)}\n")
    print(f"MLP {args.layers}×{args.width}² + head, n = {n:,} parameters (one n-vector = "
          f"{vec / MiB:.1f} MiB), batch {args.batch}, top-{args.k} Lanczos, {lz['iterations']} iterations, "
          f"basis bound {lz['max_basis']} ({lz['restarts']} thick restarts) "
          f"({lz['num_matvecs']} HVPs, {lz['seconds']:.0f} s, orthogonality loss "
          f"{lz['orthogonality_loss']:.1e})\n")
    print("| run | measure | model only | + one HVP (M_hvp) | Lanczos peak | bound | "
          "(peak − M_hvp) / (n·4) | allowed | within bound |")
    print("|---|---|---:|---:|---:|---:|---:|---:|:---:|")
    for r in rows:
        run = ("return_vectors=False" if r["run"] == "lanczos"
               else f"return_vectors=True (+{args.k} Ritz vectors)")
        print(f"| {run} | {r['measure']} | {r['baseline'] / MiB:,.0f} MiB | {r['hvp'] / MiB:,.0f} MiB | "
              f"{r['lanczos'] / MiB:,.0f} MiB | {r['bound'] / MiB:,.0f} MiB | "
              f"{r['lanczos_minus_hvp_in_vectors']:.1f} | {r['allowed_vectors']} | "
              f"{'yes' if r['within_bound'] else 'NO'} |")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"bench_memory_{info['commit']}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump({"info": info, "args": vars(args), "stages": stages, "rows": rows}, fh, indent=1)
    os.replace(path + ".tmp", path)
    print(f"\nwrote {path}")
    return 0 if all(r["within_bound"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
