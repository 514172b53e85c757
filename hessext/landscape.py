"""Loss along directions in parameter space: 1-D slices and 2-D planes, computed functionally.

For the analysed parameters ``θ ∈ R^n`` (ParamLayout order) and unit directions ``d`` (``d₁, d₂``),

    1-D:  ℓ(α)    = L(θ + α d),            α ∈ [-r, r]
    2-D:  ℓ(α, β) = L(θ + α d₁ + β d₂),    (α, β) ∈ [-r, r]²

where ``L`` is the (batch-size weighted) mean loss over the given batches. Along a Hessian eigenvector
``v`` with eigenvalue ``λ`` the second-order Taylor model is ``ℓ(α) ≈ L + α gᵀv + ½ λ α²``; the 1-D result
carries the exact slope ``gᵀd`` and curvature ``dᵀHd`` at ``α = 0`` (one gradient and one Hessian-vector
product) so that a plot can show where the quadratic picture stops holding.

The user's model is never written: every evaluation is ``torch.func.functional_call`` on perturbed
**copies** of the parameters (``θ + α d`` is a new tensor), under
:func:`hessext._state.preserve_model_state` (training flags, ``requires_grad``, ``.grad`` and RNG states are
restored, also on exceptions). Batches follow :mod:`hessext.data`: ``(inputs, targets)``, a bare tensor, or a
dict with ``input_ids``/``labels`` for ``model_type``; ``batch_loss`` overrides.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._state import preserve_model_state
from .data import make_batch_loss, normalize_data
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


def _sdpa_math() -> contextlib.AbstractContextManager:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_radius(radius: Any) -> float:
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.floating, np.integer)):
        raise TypeError(f"radius must be a positive number, got {type(radius).__name__}")
    r = float(radius)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"radius must be positive and finite, got {radius!r}")
    return r


class _Evaluator:
    """Mean loss of the model at perturbed parameters, never touching the model's own tensors."""

    def __init__(self, model: nn.Module, loss_fn: Any, data: Any, params: Any, model_type: Optional[str],
                 batch_loss: Optional[Callable], eval_mode: bool) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        names = None
        if params is not None:
            if isinstance(params, str):
                params = [params]
            items = list(params)
            if items and all(isinstance(p, Tensor) for p in items):
                by_id = {id(p): k for k, p in model.named_parameters()}
                missing = [j for j, p in enumerate(items) if id(p) not in by_id]
                if missing:
                    raise ValueError(f"params[{missing[0]}] is not a parameter of the model")
                names = [by_id[id(p)] for p in items]
            else:
                names = items
        self.layout = ParamLayout.from_module(model, names)
        named = dict(model.named_parameters())
        self.base = {k: named[k].detach() for k in self.layout.names}
        self.frozen = {k: p.detach() for k, p in named.items() if k not in self.base}
        self.buffers = {k: b.detach() for k, b in model.named_buffers()}
        self.batches = normalize_data(data, None, custom=batch_loss is not None)
        self.loss = make_batch_loss(loss_fn, model, model_type=model_type, batch_loss=batch_loss)
        self.eval_mode = eval_mode
        self.count = 0
        p0 = next(iter(self.base.values()))
        self.dtype, self.device = p0.dtype, p0.device

    def flat_base(self) -> Tensor:
        return self.layout.flatten([self.base[k] for k in self.layout.names])

    def loss_at(self, params: Mapping[str, Tensor]) -> Tensor:
        buffers = self.buffers if self.eval_mode else {k: b.clone() for k, b in self.buffers.items()}
        state = {**self.frozen, **buffers, **params}

        def model_call(*args: Any, **kwargs: Any) -> Any:
            return functional_call(self.model, state, args, kwargs)

        total, weight = None, 0.0
        for batch in self.batches:
            loss, w = self.loss(model_call, batch)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TypeError(f"the loss must be a scalar tensor, got {type(loss).__name__}")
            self.count += 1
            total = loss.reshape(()) * w if total is None else total + loss.reshape(()) * w
            weight += w
        return total / weight

    def loss_at_flat(self, theta: Tensor) -> float:
        return float(self.loss_at(self.layout.as_dict(theta)))

    def slope_and_curvature(self, d: Tensor) -> tuple[Optional[float], Optional[float]]:
        """``gᵀd`` and ``dᵀHd`` at θ by double backward (one gradient + one HVP)."""
        try:
            with torch.enable_grad():
                leaves = {k: v.clone().requires_grad_(True) for k, v in self.base.items()}
                loss = self.loss_at(leaves)
                grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
                ds = self.layout.unflatten(d)
                gd = sum((g * v).sum() for g, v in zip(grads, ds))
                hd = torch.autograd.grad(gd, list(leaves.values()), allow_unused=True)
                dhd = sum((h * v).sum() for h, v in zip(hd, ds) if h is not None)
            return float(gd.detach()), float(dhd.detach()) if isinstance(dhd, Tensor) else 0.0
        except RuntimeError as e:
            # Only a missing double backward (an op without a second derivative) makes the Taylor terms
            # unavailable; anything else (out of memory, a NaN check, an interrupt) is the caller's to see.
            if "derivative for" in str(e) and "not implemented" in str(e):
                return None, None
            raise


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
    order = torch.argsort(vals, descending=True)[:count].tolist()
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
    r = _check_radius(radius)
    g = _check_int("num_points", num_points, 2)
    if hasattr(direction, "eigenvalues") and hasattr(direction, "eigenvectors"):
        vecs, names = _top_vectors(direction, 1)
        direction, label = vecs[0], label or names[0]
    with preserve_model_state(model, eval_mode=eval_mode), _sdpa_math():
        ev = _Evaluator(model, loss_fn, batch, params, model_type, batch_loss, eval_mode)
        d = _as_flat(direction, ev.layout, "direction").to(device=ev.device, dtype=ev.dtype)
        norm = float(d.norm())
        if not (math.isfinite(norm) and norm > 0):
            raise ValueError(f"direction must be nonzero and finite, got norm {norm}")
        if normalize:
            d = d / norm
        theta = ev.flat_base()
        alphas = _grid(r, g)
        with torch.no_grad():
            losses = np.array([ev.loss_at_flat(theta + float(a) * d) for a in alphas])
            base = float(losses[g // 2]) if g % 2 == 1 else ev.loss_at_flat(theta)
        slope, curv = ev.slope_and_curvature(d) if taylor else (None, None)
    return Landscape1D(alphas=alphas, losses=losses, base_loss=base, slope=slope, curvature=curv, radius=r,
                       direction_norm=norm, label=label or "d", num_evaluations=ev.count)


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
    r = _check_radius(radius)
    g = _check_int("num_points", num_points, 2)
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
    with preserve_model_state(model, eval_mode=eval_mode), _sdpa_math():
        ev = _Evaluator(model, loss_fn, batch, params, model_type, batch_loss, eval_mode)
        d1 = _as_flat(pair[0], ev.layout, "directions[0]").to(device=ev.device, dtype=ev.dtype)
        d2 = _as_flat(pair[1], ev.layout, "directions[1]").to(device=ev.device, dtype=ev.dtype)
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
        theta = ev.flat_base()
        alphas, betas = _grid(r, g), _grid(r, g)
        losses = np.empty((g, g))
        with torch.no_grad():
            for i, a in enumerate(alphas):
                row = theta + float(a) * d1
                for j, b in enumerate(betas):
                    losses[i, j] = ev.loss_at_flat(row + float(b) * d2)
            base = float(losses[g // 2, g // 2]) if g % 2 == 1 else ev.loss_at_flat(theta)
    labels = tuple(labels) if labels is not None else ("d₁", "d₂")
    if len(labels) != 2:
        raise ValueError(f"labels must be two strings, got {labels!r}")
    return Landscape2D(alphas=alphas, betas=betas, losses=losses, base_loss=base, radius=r,
                       labels=(str(labels[0]), str(labels[1])), cos_angle=cos, num_evaluations=ev.count)


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
