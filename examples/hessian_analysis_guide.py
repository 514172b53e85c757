"""Conceptual guide: what the Hessian's extreme eigenvalues, condition number and trace say about a model.

Workflow 1 of the document (train, then analyse the trained model), with the interpretation of each
number, the learning-rate reading of the largest eigenvalue, and a check of everything against the exact
(dense) Hessian of this small model. Runs on the CPU in a few seconds:

    python examples/hessian_analysis_guide.py
"""
from __future__ import annotations

import torch
import torch.nn as nn

from hessext.hessian.hessian import min_max_hessian_eigs
from hessext.hessian.hessian_trace import hessian_trace
from hessext.model_interface.model_wrapper import ModelWrapper


def explain_condition_number(min_eig: float, max_eig: float) -> str:
    """The document's reading of ``max_eig / min_eig`` (inf when the minimum is not positive)."""
    if min_eig <= 0:
        return ("min eigenvalue <= 0: not a strict local minimum (negative: saddle point or maximum along "
                "some direction; ~0: a flat direction); the condition number is reported as inf")
    cond = max_eig / min_eig
    if cond > 1000:
        return f"condition number {cond:.1f} > 1000: ill-conditioned, often numerically unstable"
    if cond > 100:
        return f"condition number {cond:.1f}: hard for plain gradient descent; second-order methods may help"
    return f"condition number {cond:.1f}: well conditioned; first-order methods work well"


def dense_hessian(model: nn.Module, loss_fn, X: torch.Tensor) -> torch.Tensor:
    """The exact Hessian (float64) of ``loss_fn(model(X))`` for a small model, for checking."""
    from torch.func import functional_call

    names = [k for k, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])

    def f(theta: torch.Tensor) -> torch.Tensor:
        chunks, o = {}, 0
        for k, s in zip(names, shapes, strict=True):
            chunks[k] = theta[o:o + s.numel()].view(s)
            o += s.numel()
        return loss_fn(functional_call(model, chunks, (X.double(),)))

    return torch.func.hessian(f)(flat)


def main() -> None:
    torch.set_num_threads(1)  # tiny models: one thread is fastest (and robust on a busy machine)
    torch.manual_seed(0)
    X = torch.randn(200, 4)
    y = (X[:, :1] * 0.7 - X[:, 1:2] ** 2 + 0.1 * torch.randn(200, 1))
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss_fn(model_output):
        return nn.MSELoss()(model_output, y.to(model_output.dtype))

    num_epochs = 200
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)

    # ----- Workflow 1: Model Analysis (the document's code, with its training loop filled in) -----
    # Train your model first
    model.train()
    for epoch in range(num_epochs):
        optimizer.zero_grad()
        loss_fn(model(X)).backward()
        optimizer.step()

    # Analyze the trained model
    model.eval()
    model_wrapper = ModelWrapper(model, loss_fn, X)

    # Compute Hessian properties
    min_eig, max_eig, _, _ = min_max_hessian_eigs(model_wrapper)
    trace = hessian_trace(model_wrapper)

    # Interpret results
    condition_number = max_eig / min_eig if min_eig > 0 else float('inf')
    print(f"Model sharpness analysis:")  # noqa: F541  (the document's code, verbatim)
    print(f"  Condition number: {condition_number:.2f}")
    print(f"  Loss landscape sharpness: {trace:.4f}")
    # ----- end of Workflow 1 -----

    print(f"\nloss after training: {model_wrapper.loss():.4f}")
    print(f"min eigenvalue {min_eig:.6g}, max eigenvalue {max_eig:.6g}, trace {trace:.6g}")
    print("Eigenvalues:")
    print("  minimum:", explain_condition_number(min_eig, max_eig))
    print(f"  maximum {max_eig:.4g}: steepest curvature. Gradient descent on the quadratic model is stable "
          f"only for learning rates below 2 / max_eig = {2 / max_eig:.4g}; larger max eigenvalues call for "
          "smaller rates.")
    print(f"Trace {trace:.4g}: the sum of all eigenvalues, an overall 'sharpness'; compare it across models "
          "or training states (it is an estimate: pass return_result=True for its standard error).")

    # Check against the exact Hessian of this small model.
    H = dense_hessian(model, loss_fn, X)
    evals = torch.linalg.eigvalsh(H)
    print(f"\nexact (dense float64): min {evals[0]:.6g}, max {evals[-1]:.6g}, trace {torch.trace(H):.6g}")
    exact_trace = float(torch.trace(H))
    print(f"relative errors: min {abs(min_eig - evals[0]) / abs(evals[0]):.1e}, "
          f"max {abs(max_eig - evals[-1]) / abs(evals[-1]):.1e}, "
          f"trace {abs(trace - exact_trace) / abs(exact_trace):.1e}")


if __name__ == "__main__":
    main()
