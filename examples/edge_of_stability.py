"""The edge of stability reproduced (Cohen et al. 2021, 2022) with warm-started curvature tracking.

A 20-200-200-4 tanh MLP, MSE loss (½‖f − y‖² averaged over points), 1,000 Gaussian inputs with random
one-hot targets, full batch.
GD at η = 0.1: λmax sharpens to 2/η = 20 and stays there. Adam at η = 2e-3, β = (0.9, 0.999): the
preconditioned sharpness λmax(P⁻¹H) settles at (2 + 2β₁)/((1 − β₁)η) = 38/η.

    python examples/edge_of_stability.py --out DIR [--optimizer gd|adam] [--steps N] [--every M]

Writes DIR/eos.json (optimizer, lr, threshold, steps, lambda_max, matvecs, cold_matvecs, loss, and
cold_lambda_max, wall_s), DIR/eos.png and the tracker's records DIR/eos_tracking.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn

from hessext.analysis.tracking import CurvatureTracker


def half_squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE as in Cohen et al.: ``(1/N) Σ_i ½‖f(x_i) − y_i‖²`` (nn.MSELoss would also divide by the 4 outputs,
    halving every curvature and slowing progressive sharpening by the same factor)."""
    return 0.5 * (output - target).square().sum(dim=1).mean()


def make_problem(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The MLP and the fixed data set (float32)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1000, 20, generator=g)
    y = nn.functional.one_hot(torch.randint(0, 4, (1000,), generator=g), 4).float()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 4))
    return model, (x, y)


def run(optimizer: str, steps: int, every: int, cold_every: int = 5, path: str | None = None) -> dict:
    model, (x, y) = make_problem()
    loss_fn = half_squared_error
    if optimizer == "gd":
        lr = 0.1
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        quantity = "lambda_max"
    else:
        lr = 2e-3
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
        quantity = "preconditioned_sharpness"
    tracker = CurvatureTracker(model, loss_fn, (x, y), every=every, quantities=(quantity,), tol=1e-3,
                               cold_every=cold_every, lr=lr, path=path)
    out = {"optimizer": optimizer, "lr": lr, "threshold": None, "steps": [], "lambda_max": [], "matvecs": [],
           "cold_matvecs": [], "loss": [],
           "cold_lambda_max": []}
    t0 = time.perf_counter()
    for step in range(steps + 1):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        if step > 0 or optimizer == "gd":
            rec = tracker.step(step, optimizer=opt, loss=float(loss.detach()))
            if rec is not None and quantity in rec["quantities"]:
                out["steps"].append(step)
                out["lambda_max"].append(rec["quantities"][quantity])
                out["matvecs"].append(rec["matvecs"][quantity])
                cm = rec["cold_matvecs"]
                out["cold_matvecs"].append(None if cm is None else cm[quantity])
                cv = rec.get("cold_values")
                out["cold_lambda_max"].append(None if cv is None else cv[quantity][0])
                out["loss"].append(float(loss.detach()))
                out["threshold"] = rec["thresholds"][quantity]
        if step == steps:
            break
        loss.backward()
        opt.step()
    out["wall_s"] = time.perf_counter() - t0
    out["records"] = tracker.records
    return out


def plot(out: dict, path: str) -> str:
    """Draw with hessext.viz.plot_curvature_tracking; a minimal matplotlib plot if it is unavailable."""
    try:
        from hessext.viz import plot_curvature_tracking
        # its save_path is a directory (file name from model_name): save the returned figure as DIR/eos.png
        fig = plot_curvature_tracking(out["records"], save_path=None,
                                      model_name=f"tanh MLP, {out['optimizer']}")
        fig.savefig(path, dpi=100)
        import matplotlib.pyplot as plt
        plt.close(fig)
        return "hessext.viz.plot_curvature_tracking"
    except ImportError:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(out["steps"], out["lambda_max"], label="sharpness")
        ax.axhline(out["threshold"], ls="--", color="k", label="threshold")
        ax.set_xlabel("step")
        ax.legend()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return "fallback matplotlib"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--optimizer", choices=("gd", "adam"), default="gd")
    ap.add_argument("--steps", type=int, default=None, help="default 3000 (gd) / 1200 (adam)")
    ap.add_argument("--every", type=int, default=None,
                    help="steps between checkpoints; default 10 (gd) / 3 (adam: P changes every step, so "
                         "closer checkpoints keep the warm start good)")
    a = ap.parse_args()
    steps = a.steps if a.steps is not None else (3000 if a.optimizer == "gd" else 1200)
    every = a.every if a.every is not None else (10 if a.optimizer == "gd" else 3)
    os.makedirs(a.out, exist_ok=True)
    track = os.path.join(a.out, "eos_tracking.jsonl")
    if os.path.exists(track):
        os.remove(track)                      # a fresh run (the tracker would continue an existing file)
    out = run(a.optimizer, steps, every, path=track)
    how = plot(out, os.path.join(a.out, "eos.png"))
    records = out.pop("records")
    with open(os.path.join(a.out, "eos.json"), "w") as fh:
        json.dump(out, fh)
    lam = out["lambda_max"]
    half = [v for s, v in zip(out["steps"], lam) if s >= steps / 2]
    warm = sorted(out["matvecs"])
    cold = sorted(c for c in out["cold_matvecs"] if c is not None)
    print(f"{a.optimizer}: lr={out['lr']} threshold={out['threshold']:.4g} checkpoints={len(records)} "
          f"wall={out['wall_s']:.1f}s figure: {how}")
    print(f"last half: min {min(half):.4g} max {max(half):.4g} (ratio {min(half) / out['threshold']:.3f} .. "
          f"{max(half) / out['threshold']:.3f})")
    pairs = [(w, c) for w, c in zip(lam, out["cold_lambda_max"]) if c is not None]
    print(f"first {lam[0]:.4g}, peak {max(lam):.4g}; warm vs cold solves at {len(pairs)} checkpoints: max "
          f"relative difference {max(abs(w - c) / abs(c) for w, c in pairs):.2e}")
    print(f"median warm matvecs {warm[len(warm) // 2]}, median cold {cold[len(cold) // 2]}, ratio "
          f"{warm[len(warm) // 2] / cold[len(cold) // 2]:.3f}")


if __name__ == "__main__":
    main()
