"""Comprehensive practical example: monitoring the Hessian during training, batch analysis, eigenvectors.

Covers the document's Workflow 2 (training monitoring, condition number per checkpoint), batch processing
(eigenvalues per mini-batch, averaged), reading the eigenvectors (which layers carry the extreme
curvature), and the cost in Hessian-vector products (legacy form's ``hvp_count``). Runs on the CPU in a few
seconds:

    python examples/hessian_eigenvalue_analysis.py
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from hessext.hessian.hessian import min_max_hessian_eigs
from hessext.hessian.hessian_trace import hessian_trace
from hessext.model_interface.model_wrapper import ModelWrapper


def layer_shares(model: nn.Module, vec: np.ndarray) -> dict[str, float]:
    """Fraction of an eigenvector's squared norm in each parameter tensor (vector in parameter order)."""
    out, o = {}, 0
    for name, p in model.named_parameters():
        out[name] = float((vec[o:o + p.numel()] ** 2).sum())
        o += p.numel()
    return out


def main() -> None:
    torch.set_num_threads(1)  # tiny models: one thread is fastest (and robust on a busy machine)
    torch.manual_seed(0)
    X = torch.randn(128, 4)
    y = torch.sin(X.sum(1, keepdim=True)) + 0.05 * torch.randn(128, 1)
    model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 1))

    def loss_fn(model_output):
        return nn.MSELoss()(model_output, y)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    num_epochs = 41

    # ----- Workflow 2: Training Monitoring (the document's code, with its training step filled in) -----
    # Monitor during training
    eigenvalue_history = []

    for epoch in range(num_epochs):
        optimizer.zero_grad()
        loss_fn(model(X)).backward()
        optimizer.step()

        if epoch % 10 == 0:  # Check every 10 epochs
            model_wrapper = ModelWrapper(model, loss_fn, X)
            min_eig, max_eig, _, _ = min_max_hessian_eigs(model_wrapper)
            eigenvalue_history.append((epoch, min_eig, max_eig))

    # Analyze training dynamics
    for epoch, min_eig, max_eig in eigenvalue_history:
        condition = max_eig / min_eig if min_eig > 0 else float('inf')
        print(f"Epoch {epoch}: Condition number = {condition:.2f}")
    # ----- end of Workflow 2 -----

    print("\nepoch | min eigenvalue | max eigenvalue | 2/max (largest stable SGD step)")
    for epoch, min_eig, max_eig in eigenvalue_history:
        print(f"{epoch:5d} | {min_eig:14.5g} | {max_eig:14.5g} | {2 / max_eig:.4g}")
    print("(SGD learning rate used: 0.05; steps above 2/max_eig diverge on the local quadratic model)")

    # ----- Batch Processing (the document's code) -----
    # For large datasets, use batched analysis
    batch_size = 32
    results = []

    for i in range(0, len(X), batch_size):
        X_batch = X[i:i+batch_size]
        y_batch = y[i:i+batch_size]
        
        def batch_loss_fn(model_output):
            return nn.MSELoss()(model_output, y_batch)
        
        wrapper = ModelWrapper(model, batch_loss_fn, X_batch)
        min_eig, max_eig, _, _ = min_max_hessian_eigs(wrapper)
        results.append((min_eig, max_eig))

    # Analyze batch results
    avg_min_eig = sum(r[0] for r in results) / len(results)
    avg_max_eig = sum(r[1] for r in results) / len(results)
    # ----- end of Batch Processing -----

    print(f"\nper-batch (min, max): {[(round(a, 4), round(b, 4)) for a, b in results]}")
    print(f"average over {len(results)} batches: min {avg_min_eig:.5g}, max {avg_max_eig:.5g}")
    full = ModelWrapper(model, loss_fn, X)
    f_min, f_max, min_vec, max_vec = min_max_hessian_eigs(full)
    print(f"full batch: min {f_min:.5g}, max {f_max:.5g}. With equal batch sizes the full-batch Hessian is "
          "the mean of the per-batch Hessians, and since lambda_max is convex (lambda_min concave): "
          f"max_full <= avg max ({f_max <= avg_max_eig + 1e-6}), "
          f"min_full >= avg min ({f_min >= avg_min_eig - 1e-6})")

    # ----- Eigenvectors: where the extreme curvature lives -----
    for label, vec in (("max", max_vec), ("min", min_vec)):
        shares = layer_shares(model, vec)
        top = ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
        print(f"{label} eigenvector by parameter tensor: {top}")

    # Cost and the legacy form (max first; the last value counts Hessian-vector products).
    max_e, min_e, _, _, hvp_count = min_max_hessian_eigs(model, X, y, nn.MSELoss())
    trace = hessian_trace(full, return_result=True)
    print(f"\nlegacy form: max {max_e:.5g}, min {min_e:.5g} from {hvp_count} HVPs; "
          f"trace {trace.estimate:.5g} +- {trace.std_error:.2g} from {trace.num_matvecs} HVPs")


if __name__ == "__main__":
    main()
