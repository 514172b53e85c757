"""Basic usage of the Hessian API (API A) on hessext: the document's calls, one by one.

Covers: wrapping a model (``ModelWrapper``), extreme eigenvalues and eigenvectors
(``min_max_hessian_eigs``), the trace estimate (``hessian_trace``, also with its standard error), a loss
override, the document's custom loss with regularisation, and the legacy call form of the original code.
Runs on the CPU in a few seconds:

    python examples/hessian_usage_demo.py
"""
from __future__ import annotations

import torch
import torch.nn as nn

from hessext.hessian.hessian import min_max_hessian_eigs
from hessext.hessian.hessian_trace import hessian_trace
from hessext.model_interface.model_wrapper import ModelWrapper


def main() -> None:
    torch.set_num_threads(1)  # tiny models: one thread is fastest (and robust on a busy machine)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 1))
    X = torch.randn(100, 4)
    y = torch.randn(100, 1)

    def loss_fn(model_output):
        return nn.MSELoss()(model_output, y)

    model_wrapper = ModelWrapper(model, loss_fn, X)
    print(model_wrapper)

    # Extreme eigenpairs: one Lanczos run serves both ends; default tol=1e-3 is a relative residual.
    min_eig, max_eig, min_eigvec, max_eigvec = min_max_hessian_eigs(model_wrapper)
    print(f"min eigenvalue {min_eig:.6g}, max eigenvalue {max_eig:.6g}")
    print(f"eigenvectors: {min_eigvec.shape} {min_eigvec.dtype}, unit norm, in model.parameters() order")
    print(f"condition number: {max_eig / min_eig if min_eig > 0 else float('inf')}")

    # Trace: num_random_vectors is the budget of Hessian-vector products; XTrace by default.
    trace = hessian_trace(model_wrapper, num_random_vectors=50)
    res = hessian_trace(model_wrapper, num_random_vectors=50, return_result=True)
    print(f"trace estimate {trace:.6g} (XTrace, {res.num_matvecs} HVPs, standard error {res.std_error:.2g})")
    hutch = hessian_trace(model_wrapper, num_random_vectors=50, method="hutchinson", seed=1,
                          return_result=True)
    print(f"Hutchinson with the same budget: {hutch.estimate:.6g} +- {hutch.std_error:.2g}")

    # A loss override for one call (here: the L1 loss of the same output).
    l1_min, l1_max, _, _ = min_max_hessian_eigs(model_wrapper, loss_fn=lambda out: nn.SmoothL1Loss()(out, y))
    print(f"SmoothL1 loss: min {l1_min:.4g}, max {l1_max:.4g}")

    # Custom loss with regularisation (the document's "Advanced Usage"): the regulariser reads
    # model.parameters() itself, and its curvature is part of the Hessian.
    def custom_loss_fn(model_output):
        # Your custom loss computation
        mse_loss = nn.MSELoss()(model_output, y)
        regularization = 0.01 * sum(p.norm() for p in model.parameters())
        return mse_loss + regularization

    model_wrapper = ModelWrapper(model, custom_loss_fn, X)
    r_min, r_max, _, _ = min_max_hessian_eigs(model_wrapper)
    print(f"regularised loss: min {r_min:.6g}, max {r_max:.6g}, trace {hessian_trace(model_wrapper):.6g}")

    # The legacy call form of the original code: (net, inputs, targets, criterion) -> max first, + HVP count.
    max_e, min_e, max_v, min_v, hvp_count = min_max_hessian_eigs(model, X, y, nn.MSELoss())
    print(f"legacy form: max {max_e:.6g}, min {min_e:.6g}, {hvp_count} Hessian-vector products")
    print(f"legacy hessian_trace: {hessian_trace(model, nn.MSELoss(), X, y, num_random_vectors=10):.6g}")


if __name__ == "__main__":
    main()
