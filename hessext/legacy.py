"""The legacy functions of API B (``from project.hessian import get_hessian_eigenvectors, …``)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .alignment import compute_hessian_gradient_alignment
from .components import compute_component_hessians
from .metrics import compute_detailed_hessian_metrics

__all__ = ["get_hessian_eigenvectors", "compute_component_hessians", "compute_hessian_gradient_alignment",
           "measure_train_val_landscape_divergence", "compute_detailed_hessian_metrics"]


def get_hessian_eigenvectors(model: nn.Module, loss_fn: Any, train_data_loader: Any, num_batches: Optional[int] = None,
                             device: Any = None, n_top_vectors: int = 10, *,
                             model_type: Optional[str] = "decoder_only", tol: float = 1e-4,
                             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top ``n_top_vectors`` eigenpairs of the Hessian averaged over ``num_batches`` batches.

    Args:
        model: the model (never modified; analysed in eval mode).
        loss_fn: criterion (see :mod:`hessext.data` for dict and ``(inputs, targets)`` batches).
        train_data_loader: one batch, a list of batches or a DataLoader.
        num_batches: batches of an iterable to average (ignored for a single batch; None: all).
        device: "cpu", "cuda", … or None; "cuda" without a GPU warns and uses the parameters' device.
        n_top_vectors: k (clamped to the number of parameters).
        model_type: loss convention of dict batches.
        tol: Lanczos tolerance on the relative Ritz residuals.

    Returns:
        ``(eigenvalues [k], eigenvectors [k, n])`` as float numpy arrays, eigenvalues descending (largest
        algebraic first), rows of ``eigenvectors`` unit-norm in ``ParamLayout`` order.
    """
    from .analyzer import make_operator
    from .components import _extremes

    if isinstance(n_top_vectors, bool) or not isinstance(n_top_vectors, int) or n_top_vectors < 1:
        raise ValueError(f"n_top_vectors must be a positive int, got {n_top_vectors!r}")
    H = make_operator(model, loss_fn, train_data_loader, model_type, num_batches=num_batches, device=device,
                      arg_name="train_data_loader")
    res, _ = _extremes(H, min(n_top_vectors, H.n), 0, tol, seed)
    order = torch.argsort(res.eigenvalues, descending=True)
    vals = res.eigenvalues[order].detach().cpu().numpy()
    vecs = res.eigenvectors[order.to(res.eigenvectors.device)].detach().cpu().numpy()
    return vals, vecs


def measure_train_val_landscape_divergence(model: nn.Module, loss_fn: Any, train_batch: Any, val_batch: Any,
                                           model_type: Optional[str] = "decoder_only", n_components: int = 10,
                                           **config: Any) -> dict[str, Any]:
    """Legacy function: the ``train_val_divergence`` section of :meth:`HessianAnalyzer.analyze_step`."""
    from .analyzer import HessianAnalyzer, HessianConfig

    cfg = HessianConfig(n_components=n_components, track_component_hessian=False, track_gradient_alignment=False,
                        track_sharpness=False, track_train_val_landscape_divergence=True, **config)
    res = HessianAnalyzer(cfg).analyze_step(model, loss_fn, train_batch, val_batch, model_type=model_type,
                                            strict=True)
    return res["train_val_divergence"]
