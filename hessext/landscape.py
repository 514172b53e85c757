"""Loss along directions in parameter space: 1-D slices and 2-D planes, computed functionally.

For the analysed parameters ``θ ∈ R^n`` (ParamLayout order) and unit directions ``d`` (``d₁, d₂``),

    1-D:  ℓ(α)    = L(θ + α d),            α ∈ [-r, r]
    2-D:  ℓ(α, β) = L(θ + α d₁ + β d₂),    (α, β) ∈ [-r, r]²

where ``L`` is the (batch-size weighted) mean loss over the given batches. Along a Hessian eigenvector
``v`` with eigenvalue ``λ`` the second-order Taylor model is ``ℓ(α) ≈ L + α gᵀv + ½ λ α²``; the 1-D result
carries the exact slope ``gᵀd`` and curvature ``dᵀHd`` at ``α = 0`` (one gradient and one Hessian-vector
product) so that a plot can show where the quadratic picture stops holding.

The user's model is never written: every evaluation is the loss of the one functional evaluator of
hessext (:class:`hessext.evaluator.FunctionalEvaluator`: ``torch.func.functional_call`` on perturbed
**copies** of the parameters, ``θ + α d`` is a new tensor), under the model-state guard (training flags,
``requires_grad`` and ``.grad`` are restored, also on exceptions; the global RNG is never written). The slope
and curvature come from the same :class:`~hessext.hvp.HessianOperator` (one gradient, one HVP). Batches
follow :mod:`hessext.data`: ``(inputs, targets)``, a bare tensor, or a dict with ``input_ids``/``labels``
for ``model_type``; ``batch_loss`` overrides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import check_int, check_positive_float, order_descending
from .hvp import HessianOperator, unsupported_by
from .layout import ParamLayout

__all__ = ["Landscape1D", "Landscape2D", "loss_landscape_1d", "loss_landscape_2d", "random_direction",
           "suggest_radius"]


@dataclass(frozen=True)
class Landscape1D:
    """``losses[i] = L(θ + alphas[i] · d)``.

    Attributes:
        alphas: ``[g]`` offsets (parameter-space distance when ``d`` is a unit vector).
        losses: ``[g]`` mean losses.
        base_loss: ``L(θ)``.
        slope: ``gᵀd`` at θ (None if not computed).
        curvature: ``dᵀHd`` at θ (None if not computed); equals λ when ``d`` is a unit eigenvector.
        radius: ``r``; ``alphas`` spans ``[-r, r]``.
        direction_norm: ``‖d‖`` of the direction as given (before normalisation).
        label: name of the direction, used by the plots.
        num_evaluations: forward passes spent (points × batches, plus one per batch for the Taylor terms).
    """
    alphas: np.ndarray
    losses: np.ndarray
    base_loss: float
    slope: Optional[float]
    curvature: Optional[float]
    radius: float
    direction_norm: float
    label: str
    num_evaluations: int


@dataclass(frozen=True)
class Landscape2D:
    """``losses[i, j] = L(θ + alphas[i] · d₁ + betas[j] · d₂)``.

    Attributes:
        alphas, betas: ``[g]`` offsets along ``d₁`` and ``d₂``.
        losses: ``[g, g]`` mean losses.
        base_loss: ``L(θ)``.
        radius: ``r``.
        labels: names of the two directions.
        cos_angle: cosine between the two directions as given; ``d₂`` is orthogonalised against ``d₁``
            (Gram–Schmidt) so that the plane's axes are perpendicular.
        num_evaluations: forward passes spent.
    """
    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray
    base_loss: float
    radius: float
    labels: tuple[str, str]
    cos_angle: float
    num_evaluations: int


class _Slices:
    """The mean loss ``L`` at points ``θ + δ`` of parameter space, and the Taylor terms at ``θ``, of one
    model, loss and data: the evaluator and the Hessian of a :class:`~hessext.hvp.HessianOperator`."""

    def __init__(self, model: nn.Module, loss_fn: Any, data: Any, params: Any, model_type: Optional[str],
                 batch_loss: Optional[Callable], eval_mode: bool) -> None:
        self.H = HessianOperator(model, loss_fn, data, params, model_type=model_type, batch_loss=batch_loss,
                                 eval_mode=eval_mode)
        self.H.max_cached_graphs = self.H.num_batches   # the Taylor terms: one forward per batch
        self.ev = self.H.evaluator
        self.layout: ParamLayout = self.H.layout
        self.dtype, self.device = self.H.dtype, self.H.device

    def loss_at(self, theta: Tensor) -> float:
        """``L(θ)`` for a flat ``θ`` (inside the guard, under ``no_grad``)."""
        return float(self.ev.mean_loss(self.layout.as_dict(theta)))

    def slope_and_curvature(self, d: Tensor) -> tuple[Optional[float], Optional[float]]:
        """``gᵀd`` and ``dᵀHd`` at θ: one HVP (whose graph the gradient then reuses), one gradient. (None,
        None) when this model has no second derivative in any HVP mode."""
        try:
            hd = self.H @ d
            _, g = self.H.loss_and_grad()
        except RuntimeError as e:
            # Only a missing second derivative makes the Taylor terms unavailable; anything else (out of
            # memory, a NaN check, an interrupt) is the caller's to see.
            cause = e.__cause__ if e.__cause__ is not None else e
            if unsupported_by("double_backward", cause) or unsupported_by("forward_over_reverse", cause):
                return None, None
            raise
        return float(g @ d), float(d @ hd)


def _as_flat(direction: Any, layout: ParamLayout, what: str) -> Tensor:
    """A direction as a flat ``[n]`` tensor in layout order."""
    if isinstance(direction, Tensor):
        d = direction.detach()
        if d.dim() == 2 and d.shape[0] == 1:
            d = d[0]
        if d.dim() != 1 or d.shape[0] != layout.n:
            raise ValueError(f"{what} must be a flat vector of length n={layout.n} (ParamLayout order), got "
                             f"shape {tuple(direction.shape)}")
        return d
    if isinstance(direction, Mapping):
        return layout.flatten({k: torch.as_tensor(v) for k, v in direction.items()}).detach()
    if isinstance(direction, (list, tuple)) and direction and all(isinstance(t, Tensor) for t in direction):
        return layout.flatten(list(direction)).detach()
    if isinstance(direction, np.ndarray):
        return _as_flat(torch.from_numpy(direction), layout, what)
    raise TypeError(f"{what} must be a flat tensor [n], a list of per-parameter tensors or a dict name -> "
                    f"tensor, got {type(direction).__name__}")


def _top_vectors(eigen: Any, count: int) -> tuple[list[Tensor], list[str]]:
    """The eigenvectors of the ``count`` largest eigenvalues of an ``EigenResult``."""
    vecs = getattr(eigen, "eigenvectors", None)
    if vecs is None:
        raise ValueError("the EigenResult has no eigenvectors (computed with return_vectors=False)")
    vals = torch.as_tensor(eigen.eigenvalues).detach().cpu()
    if vals.numel() < count:
        raise ValueError(f"need {count} eigenvectors, the EigenResult has {vals.numel()}")
    order = order_descending(vals)[:count].tolist()
    sub = "₁₂₃₄₅₆₇₈₉"
    return [vecs[i] for i in order], [f"v{sub[j]} (λ={float(vals[i]):.3g})" for j, i in enumerate(order)]


def _grid(radius: float, num_points: int) -> np.ndarray:
    g = np.linspace(-radius, radius, num_points)
    if num_points % 2 == 1:
        g[num_points // 2] = 0.0
    return g


def loss_landscape_1d(model: nn.Module, loss_fn: Any, batch: Any, direction: Any, radius: float = 1.0,
                      num_points: int = 21, *, params: Any = None, model_type: Optional[str] = None,
                      batch_loss: Optional[Callable] = None, normalize: bool = True, eval_mode: bool = True,
                      taylor: bool = True, label: Optional[str] = None) -> Landscape1D:
    """Loss along one direction, ``ℓ(α) = L(θ + α d)`` for ``num_points`` values of α in ``[-r, r]``.

    Args:
        model: the user's model (read only).
        loss_fn: the criterion (see :mod:`hessext.data`).
        batch: one batch or a list of batches (the loss is their batch-size weighted mean).
        direction: a flat ``[n]`` tensor in ParamLayout order (e.g. a row of ``EigenResult.eigenvectors``),
            a list of per-parameter tensors, a dict name → tensor, or an ``EigenResult`` (its top
            eigenvector).
        radius: ``r`` (> 0).
        num_points: number of α values (>= 2; odd numbers include α = 0 exactly).
        params: the analysed parameters (names or Parameters; None: all trainable ones), as in
            ``HessianOperator``; the direction lives in their space.
        model_type: for dict batches.
        batch_loss: custom ``(model_call, batch) -> (loss, weight)``.
        normalize: scale ``d`` to unit Euclidean norm (α is then a parameter-space distance).
        eval_mode: evaluate in eval mode (dropout off); the model's own flags are restored afterwards.
        taylor: also compute the slope ``gᵀd`` and curvature ``dᵀHd`` at θ (one gradient + one HVP).
        label: name of the direction for plots (default ``"d"``, or ``"v₁ (λ=…)"`` for an EigenResult).

    Returns:
        :class:`Landscape1D`.
    """
    r = check_positive_float("radius", radius)
    g = check_int("num_points", num_points, minimum=2)
    if hasattr(direction, "eigenvalues") and hasattr(direction, "eigenvectors"):
        vecs, names = _top_vectors(direction, 1)
        direction, label = vecs[0], label or names[0]
    sl = _Slices(model, loss_fn, batch, params, model_type, batch_loss, eval_mode)
    with sl.H.session():
        d = _as_flat(direction, sl.layout, "direction").to(device=sl.device, dtype=sl.dtype)
        norm = float(d.norm())
        if not (math.isfinite(norm) and norm > 0):
            raise ValueError(f"direction must be nonzero and finite, got norm {norm}")
        if normalize:
            d = d / norm
        theta = sl.ev.flat_parameters()
        alphas = _grid(r, g)
        with torch.no_grad():
            losses = np.array([sl.loss_at(theta + float(a) * d) for a in alphas])
            base = float(losses[g // 2]) if g % 2 == 1 else sl.loss_at(theta)
        slope, curv = sl.slope_and_curvature(d) if taylor else (None, None)
    return Landscape1D(alphas=alphas, losses=losses, base_loss=base, slope=slope, curvature=curv, radius=r,
                       direction_norm=norm, label=label or "d", num_evaluations=sl.ev.num_evaluations)


def loss_landscape_2d(model: nn.Module, loss_fn: Any, batch: Any, directions: Any, radius: float = 1.0,
                      num_points: int = 21, *, params: Any = None, model_type: Optional[str] = None,
                      batch_loss: Optional[Callable] = None, normalize: bool = True, eval_mode: bool = True,
                      labels: Optional[Sequence[str]] = None) -> Landscape2D:
    """Loss on a plane, ``ℓ(α, β) = L(θ + α d₁ + β d₂)`` on a ``num_points²`` grid of ``[-r, r]²``.

    ``d₂`` is made orthogonal to ``d₁`` (Gram–Schmidt; eigenvectors of a symmetric H already are) and both
    are scaled to unit norm when ``normalize`` is True.

    Args:
        directions: ``[2, n]`` tensor (rows, like ``EigenResult.eigenvectors``), a pair of directions in any
            form :func:`loss_landscape_1d` accepts, or an ``EigenResult`` (its top two eigenvectors).
        Other arguments: as :func:`loss_landscape_1d`.

    Returns:
        :class:`Landscape2D` with ``losses[i, j]`` at ``(alphas[i], betas[j])``.
    """
    r = check_positive_float("radius", radius)
    g = check_int("num_points", num_points, minimum=2)
    if hasattr(directions, "eigenvalues") and hasattr(directions, "eigenvectors"):
        vecs, names = _top_vectors(directions, 2)
        directions, labels = vecs, labels or names
    if isinstance(directions, Tensor):
        if directions.dim() != 2 or directions.shape[0] != 2:
            raise ValueError(f"directions must be a [2, n] tensor or a pair, got shape "
                             f"{tuple(directions.shape)}")
        pair = [directions[0], directions[1]]
    elif isinstance(directions, (list, tuple)) and len(directions) == 2:
        pair = list(directions)
    else:
        raise TypeError(f"directions must be a [2, n] tensor, a pair of directions or an EigenResult, got "
                        f"{type(directions).__name__}")
    sl = _Slices(model, loss_fn, batch, params, model_type, batch_loss, eval_mode)
    with sl.H.session():
        d1 = _as_flat(pair[0], sl.layout, "directions[0]").to(device=sl.device, dtype=sl.dtype)
        d2 = _as_flat(pair[1], sl.layout, "directions[1]").to(device=sl.device, dtype=sl.dtype)
        n1, n2 = float(d1.norm()), float(d2.norm())
        for name, nv in (("directions[0]", n1), ("directions[1]", n2)):
            if not (math.isfinite(nv) and nv > 0):
                raise ValueError(f"{name} must be nonzero and finite, got norm {nv}")
        cos = float(d1 @ d2) / (n1 * n2)
        if abs(cos) > 1 - 1e-6:
            raise ValueError(f"directions are parallel (cosine {cos:.6f}); they do not span a plane")
        u1 = d1 / n1
        w = d2 - (u1 @ d2) * u1
        if normalize:
            d1, d2 = u1, w / w.norm()
        else:
            d2 = w
        theta = sl.ev.flat_parameters()
        alphas, betas = _grid(r, g), _grid(r, g)
        losses = np.empty((g, g))
        with torch.no_grad():
            for i, a in enumerate(alphas):
                row = theta + float(a) * d1
                for j, b in enumerate(betas):
                    losses[i, j] = sl.loss_at(row + float(b) * d2)
            base = float(losses[g // 2, g // 2]) if g % 2 == 1 else sl.loss_at(theta)
    labels = tuple(labels) if labels is not None else ("d₁", "d₂")
    if len(labels) != 2:
        raise ValueError(f"labels must be two strings, got {labels!r}")
    return Landscape2D(alphas=alphas, betas=betas, losses=losses, base_loss=base, radius=r,
                       labels=(str(labels[0]), str(labels[1])), cos_angle=cos,
                       num_evaluations=sl.ev.num_evaluations)


def random_direction(model: nn.Module, *, seed: int = 0, params: Any = None,
                     filter_normalize: bool = True) -> Tensor:
    """A random Gaussian direction ``[n]`` in ParamLayout order, optionally filter-normalised.

    Filter normalisation (Li et al., *Visualizing the Loss Landscape of Neural Nets*, 2018): each row
    (output filter) ``d_i`` of a parameter with ≥ 2 dimensions is rescaled to ``‖θ_i‖``, and 1-D
    parameters (biases, norm scales) get zero, so that the plot is comparable across scale-invariant
    networks. Pass the result with ``normalize=False`` to keep that scaling. Uses its own generator: the
    global RNG is not touched.
    """
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    if params is not None and (isinstance(params, str) or not all(isinstance(p, str) for p in params)):
        raise TypeError("params must be None or a list of parameter names")
    layout = ParamLayout.from_module(model, params)
    named = dict(model.named_parameters())
    parts = []
    for k in layout.names:
        p = named[k].detach()
        d = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype=p.dtype, device=p.device)
        if filter_normalize:
            if p.dim() <= 1:
                d = torch.zeros_like(d)
            else:
                pn = p.reshape(p.shape[0], -1).norm(dim=1)
                dn = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-12)
                d = d * (pn / dn).reshape(-1, *([1] * (p.dim() - 1)))
        parts.append(d)
    return layout.flatten(parts)


def suggest_radius(eigenvalue: float, loss: float, rise: float = 1.0, minimum: float = 1e-3,
                   maximum: float = 1e3) -> float:
    """Radius at which the quadratic model ``½ λ r²`` rises by ``rise × |loss|``: ``r = √(2 rise |L| / |λ|)``,
    clipped to ``[minimum, maximum]`` (a useful default for slices along the top eigenvector)."""
    lam, ell = abs(float(eigenvalue)), abs(float(loss))
    if not math.isfinite(lam) or lam == 0 or not math.isfinite(ell) or ell == 0:
        return 1.0
    return float(min(max(math.sqrt(2.0 * rise * ell / lam), minimum), maximum))
