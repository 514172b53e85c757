"""Minimal working example of the Hessian API (API A) on hessext.

The code between the markers is the document's Quick Start, verbatim except for the import prefix
(``oxford_loss_landscapes`` → ``hessext``). Runs on the CPU in a few seconds:

    python examples/simple_hessian_analysis.py
"""
from __future__ import annotations


def interpret(min_eig: float, max_eig: float) -> str:
    """A one-paragraph reading of the extreme eigenvalues (the document's "Interpreting Results")."""
    if min_eig < 0:
        where = "negative curvature: a saddle point (or a local maximum along some direction)"
    elif min_eig <= 1e-6 * max(abs(max_eig), 1.0):
        where = "a (nearly) flat direction: a very flat region, optimisation may stall"
    else:
        where = "all curvatures positive: a local minimum with convex behaviour"
    cond = max_eig / min_eig if min_eig > 0 else float("inf")
    if cond == float("inf"):
        difficulty = "condition number undefined (min eigenvalue <= 0): reported as inf"
    elif cond > 1000:
        difficulty = f"condition number {cond:.1f} > 1000: ill-conditioned, expect numerical trouble"
    elif cond > 100:
        difficulty = f"condition number {cond:.1f}: challenging for first-order methods"
    else:
        difficulty = f"condition number {cond:.1f}: well conditioned"
    return f"min eigenvalue {min_eig:.4g} -> {where}; max eigenvalue {max_eig:.4g}; {difficulty}"


def main() -> None:
    import torch as _torch

    _torch.set_num_threads(1)  # tiny models: one thread is fastest (and robust on a busy machine)
    # the Quick Start's imports stay in the document's order:
    # isort: off
    # ----- Quick Start (verbatim, import prefix changed) -----
    import torch
    import torch.nn as nn
    from hessext.model_interface.model_wrapper import ModelWrapper
    from hessext.hessian.hessian import min_max_hessian_eigs
    from hessext.hessian.hessian_trace import hessian_trace

    # 1. Create your model
    model = nn.Sequential(
        nn.Linear(4, 10),
        nn.ReLU(),
        nn.Linear(10, 1)
    )

    # 2. Prepare data
    X = torch.randn(100, 4)
    y = torch.randn(100, 1)

    # 3. Define loss function
    def loss_fn(model_output):
        return nn.MSELoss()(model_output, y)

    # 4. Wrap your model
    model_wrapper = ModelWrapper(model, loss_fn, X)

    # 5. Compute Hessian eigenvalues
    min_eig, max_eig, min_eigvec, max_eigvec = min_max_hessian_eigs(
        model_wrapper, 
        use_cuda=torch.cuda.is_available()
    )

    # 6. Estimate Hessian trace
    trace = hessian_trace(model_wrapper, num_random_vectors=50)

    print(f"Minimum eigenvalue: {min_eig}")
    print(f"Maximum eigenvalue: {max_eig}")
    print(f"Condition number: {max_eig / min_eig if min_eig > 0 else 'inf'}")
    print(f"Hessian trace estimate: {trace}")
    # ----- end of the Quick Start -----
    # isort: on

    print(model_wrapper)
    print(f"eigenvectors: shape {min_eigvec.shape}, dtype {min_eigvec.dtype}, "
          f"norms {float((min_eigvec ** 2).sum() ** 0.5):.6f} / {float((max_eigvec ** 2).sum() ** 0.5):.6f}")
    print("Interpretation:", interpret(min_eig, max_eig))


if __name__ == "__main__":
    main()
