"""The legacy functions of API B (``from project.hessian import get_hessian_eigenvectors, …``): one-call
versions of the analyses of :mod:`hessext.analysis` with default settings."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from torch import nn

from .._checks import check_int
from .alignment import compute_hessian_gradient_alignment
from .analyzer import HessianAnalyzer
from .components import compute_component_hessians
from .config import HessianConfig
from .metrics import compute_detailed_hessian_metrics
from .spectrum import extreme_ritz_pairs, make_operator

__all__ = ["get_hessian_eigenvectors", "compute_component_hessians", "compute_hessian_gradient_alignment",
           "measure_train_val_landscape_divergence", "compute_detailed_hessian_metrics"]


def get_hessian_eigenvectors(model: nn.Module, loss_fn: Any, train_data_loader: Any,
                             num_batches: Optional[int] = None, device: Any = None,
                             n_top_vectors: int = 10, *, model_type: Optional[str] = "decoder_only",
                             tol: float = 1e-4,
                             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top ``n_top_vectors`` eigenpairs of the Hessian averaged over ``num_batches`` batches.

    Args:
        model: the model (never modified; analysed in eval mode).
        loss_fn: criterion (see :mod:`hessext.data` for dict and ``(inputs, targets)`` batches).
        train_data_loader: one batch, a list of batches or a DataLoader.
        num_batches: batches of an iterable to average (ignored for a single batch; None: all).
        device: "cpu", "cuda", … or None; "cuda" without a GPU warns and uses the parameters' device.
        n_top_vectors: k, at most the number n of analysed parameters (the Hessian has n eigenpairs).
        model_type: loss convention of dict batches.
        tol: Lanczos tolerance on the relative Ritz residuals.

    Returns:
        ``(eigenvalues [k], eigenvectors [k, n])`` as float numpy arrays, eigenvalues descending (largest
        algebraic first), rows of ``eigenvectors`` unit-norm in ``ParamLayout`` order. On an FSDP2-sharded
        model (call it on every rank) the rows are the whole eigenvectors, assembled from the ranks' shards
        by one all-reduce of ``k·n`` numbers (``ShardedHessianOperator.gather``): the same on every rank.

    Raises:
        ValueError: ``n_top_vectors`` is below 1 or above n (the message names k and n).
    """
    k = check_int("n_top_vectors", n_top_vectors, minimum=1)
    H = make_operator(model, loss_fn, train_data_loader, model_type, num_batches=num_batches, device=device,
                      arg_name="train_data_loader")
    n = H.global_n
    if k > n:
        raise ValueError(f"n_top_vectors must be <= n = {n} (the number of analysed parameters: the "
                         f"Hessian has n eigenpairs), got n_top_vectors={k}")
    res, _ = extreme_ritz_pairs(H, k, 0, tol, seed)
    vals, vecs = res.descending()
    if H.sharded:   # whole eigenvectors [k, n] from the ranks' shards (exact; the same bits on every rank)
        vecs = H.gather(vecs.T).T
    return vals.detach().cpu().numpy(), vecs.detach().cpu().numpy()


def measure_train_val_landscape_divergence(model: nn.Module, loss_fn: Any, train_batch: Any, val_batch: Any,
                                           model_type: Optional[str] = "decoder_only", n_components: int = 10,
                                           **config: Any) -> dict[str, Any]:
    """Legacy function: the ``train_val_divergence`` section of :meth:`HessianAnalyzer.analyze_step`."""
    cfg = HessianConfig(n_components=n_components, track_component_hessian=False,
                        track_gradient_alignment=False, track_sharpness=False,
                        track_train_val_landscape_divergence=True, **config)
    res = HessianAnalyzer(cfg).analyze_step(model, loss_fn, train_batch, val_batch, model_type=model_type,
                                            strict=True)
    return res["train_val_divergence"]
