"""Outliers and bulk: the Hessian H, its Gauss–Newton part G = Jᵀ H_L J and the residual E = H − G of a
trained classifier (Papyan 2019, 2020; Sagun et al. 2017).

A 20-48-48-C tanh MLP trained with Adam on a C-class Gaussian mixture (cross-entropy, full batch). After
training, G is positive semi-definite and carries the top of H's spectrum (C − 1 outliers for C classes, in
Papyan's analysis); E is small and roughly symmetric around 0 and carries H's negative eigenvalues.

    python examples/curvature_decomposition.py [--out DIR] [--steps N] [--classes C]

Prints the top eigenvalues of H, G and E (Lanczos, float64) and the SLQ traces (tr H = tr G + tr E holds
exactly for the same probes); writes DIR/mlp_curvature_densities.png (the three densities, log scale, on one
grid with one broadening width) and DIR/curvature_decomposition.json.

Measured (defaults, 5 classes, n = 3605; 7.6 s on one CPU thread): loss 0.060 after 150 steps; top eigenvalues
1.59, 1.31, 1.19, 1.04, 1.01 (H) against 1.50, 1.24, 1.13, 0.98, 0.96 (G), ratios 1.05–1.06; E's spectrum in
[−0.066, 0.110]; λ_min(G) = 7e-6 ≥ 0; tr H − (tr G + tr E) = 4e-14 on the same probes.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn

from hessext.curvature import GGNOperator
from hessext.density import spectral_density
from hessext.hvp import HessianOperator
from hessext.lanczos import extreme_eigenpairs
from hessext.viz import plot_curvature_densities


def make_problem(classes: int, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """``classes`` Gaussian clusters in 20 dimensions (600 points), and the MLP."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.5 * torch.randn(classes, 20, generator=g)
    y = torch.randint(0, classes, (600,), generator=g)
    x = centres[y] + 1.5 * torch.randn(600, 20, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh(), nn.Linear(48, classes))
    return model, (x, y)


def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], steps: int) -> tuple[float, float]:
    """Full-batch Adam; returns the final loss and accuracy."""
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(x)
        return float(loss_fn(out, y)), float((out.argmax(1) == y).float().mean())


def analyse(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], k: int = 8, probes: int = 6,
            steps: int = 60) -> dict:
    """Top/bottom eigenvalues and SLQ densities of H, G and E on one grid with one width σ."""
    loss_fn = nn.CrossEntropyLoss()
    H = HessianOperator(model, loss_fn, data, dtype=torch.float64)
    G = GGNOperator(model, loss_fn, data, dtype=torch.float64)
    ops = {"H": H, "G": G, "E": H - G}
    ends = {}
    for name, op in ops.items():
        top, bottom = extreme_eigenpairs(op, k_top=k, k_bottom=2, tol=1e-6, return_vectors=False)
        ends[name] = (top.descending()[0].tolist(), bottom.eigenvalues.tolist())
    lo = min(min(b) for _, b in ends.values())
    hi = max(max(t) for t, _ in ends.values())
    sigma = 0.004 * (hi - lo)
    grid = torch.linspace(lo - 6 * sigma, hi + 6 * sigma, 1200, dtype=torch.float64)
    dens = {name: spectral_density(op, num_probes=probes, num_iter=steps, sigma=sigma, grid=grid, seed=1)
            for name, op in ops.items()}
    return {"ops": ops, "ends": ends, "densities": dens, "sigma": sigma}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="curvature-decomposition")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--classes", type=int, default=5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, data = make_problem(args.classes)
    loss, acc = train(model, data, args.steps)
    n = sum(p.numel() for p in model.parameters())
    print(f"trained {args.steps} Adam steps: loss {loss:.4f}, accuracy {acc:.3f}, n = {n} parameters")
    res = analyse(model, data)
    summary = {"steps": args.steps, "classes": args.classes, "loss": loss, "accuracy": acc, "n": n,
               "sigma": res["sigma"], "top_eigenvalues": {}, "bottom_eigenvalues": {}, "trace_slq": {},
               "matvecs": {}}
    for name, (top, bottom) in res["ends"].items():
        d = res["densities"][name]
        summary["top_eigenvalues"][name] = top
        summary["bottom_eigenvalues"][name] = bottom
        summary["trace_slq"][name] = d.trace_estimate
        summary["matvecs"][name] = res["ops"][name].num_matvecs
        print(f"{name}: top {', '.join(f'{v:.4g}' for v in top[:6])}   bottom {bottom[0]:.4g}   "
              f"SLQ trace {d.trace_estimate:.4g} ± {d.trace_std_error:.2g}")
    tr = summary["trace_slq"]
    print(f"tr H − (tr G + tr E) on the same probes: {tr['H'] - tr['G'] - tr['E']:.2e}")
    ratio = [h / g for h, g in zip(summary["top_eigenvalues"]["H"], summary["top_eigenvalues"]["G"])]
    print(f"top eigenvalues λ_i(H) / λ_i(G), i = 1..{args.classes}: "
          f"{', '.join(f'{r:.3f}' for r in ratio[:args.classes])}")
    os.makedirs(args.out, exist_ok=True)
    fig = plot_curvature_densities(res["densities"], args.out, "mlp",
                                   top_eigenvalues={k: v[0][:args.classes] for k, v in res["ends"].items()})
    summary["figure"] = fig.hessext_files
    summary["wall_s"] = time.perf_counter() - t0
    with open(os.path.join(args.out, "curvature_decomposition.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    print(f"wrote {', '.join(fig.hessext_files)} in {summary['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
