"""Gradient–curvature alignment (with the true ``H·g``), sharpness and train/val landscape divergence.

These functions take what the analyzer has already computed (gradient, one extra HVP ``H g``, Ritz pairs,
trace estimates) and return plain dicts of floats; nothing here runs an HVP except
:func:`compute_hessian_gradient_alignment`, the legacy entry point.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .._checks import order_descending
from .metrics import to_numpy_1d
from .spectrum import extreme_ritz_pairs, make_operator

__all__ = [
    "gradient_alignment",
    "sharpness_metrics",
    "train_val_divergence",
    "eigenvalue_distribution_overlap",
    "eigenspace_overlap",
    "compute_hessian_gradient_alignment",
]

_EPS = 1e-10


def _f(x: Tensor) -> float:
    return float(x.detach().to("cpu", torch.float64))


def gradient_alignment(grad: Tensor, Hg: Tensor, eigenvalues: Optional[Tensor] = None,
                       eigenvectors: Optional[Tensor] = None,
                       allreduce: Optional[Callable[[Tensor], Tensor]] = None) -> dict[str, Any]:
    """Alignment of the gradient ``g`` with the curvature, from the true ``H g`` and top-k Ritz pairs.

    With ``g`` the gradient, ``Hg = H g`` (one Hessian-vector product) and Ritz pairs ``(λ_i, v_i)``
    (``‖v_i‖ = 1``, the top-k of H):

    - ``grad_norm`` = ‖g‖, ``Hg_norm`` = ‖Hg‖;
    - ``grad_Hg_alignment`` = |gᵀHg| / (‖g‖ ‖Hg‖) = |cos(g, Hg)| ∈ [0, 1] (1 when g is an eigenvector);
    - ``grad_Hg_ratio`` = ‖Hg‖ / ‖g‖ (curvature-to-gradient ratio; ≤ max|λ|);
    - ``rayleigh_quotient`` = gᵀHg / ‖g‖² (curvature along the gradient direction);
    - ``eigenvector_alignments`` = [|cos(g, v_i)|] (descending λ order);
    - ``weighted_alignment`` = Σ_i w_i |cos(g, v_i)| with w_i = |λ_i| / Σ_j |λ_j| (the original definition);
    - ``top_subspace_fraction`` = Σ_i (gᵀv_i)² / ‖g‖² ∈ [0, 1]: fraction of ‖g‖² in span{v_1…v_k};
    - ``top_eigenvalues``: the λ_i, descending.

    Zero gradients give 0 for every ratio and alignment (never NaN). Every inner product is a sum over the
    vector's entries: the local partial sums ``[gᵀg, HgᵀHg, gᵀHg, V g, ‖v_i‖²]`` are packed and, for
    sharded vectors, summed across ranks by ONE ``allreduce`` before the ratios are formed.

    Args:
        grad: ``[n]``.
        Hg: ``[n]``, the Hessian times ``grad``.
        eigenvalues: ``[k]`` Ritz values (any order) or None.
        eigenvectors: ``[k, n]`` rows matching ``eigenvalues``, or None.
        allreduce: for vectors sharded across ranks (``n`` this rank's slice), the in-place sum across
            ranks of a float64 tensor (e.g. ``ShardedHessianOperator.allreduce_``); None: whole vectors.
    """
    g = grad.detach().reshape(-1).double()
    hg = Hg.detach().reshape(-1).double()
    if g.shape != hg.shape:
        raise ValueError(f"grad and Hg must have the same shape, got {tuple(g.shape)} and {tuple(hg.shape)}")
    lam = V = None
    if eigenvalues is not None and eigenvectors is not None and eigenvalues.numel() > 0:
        lam = eigenvalues.detach().to("cpu", torch.float64)
        V = eigenvectors.detach().to(g.device, torch.float64)
        if V.dim() != 2 or V.shape != (lam.numel(), g.numel()):
            raise ValueError(f"eigenvectors must be [k, n] = [{lam.numel()}, {g.numel()}], got "
                             f"{tuple(V.shape)}")
        order = order_descending(lam)
        lam, V = lam[order], V[order.to(V.device)]
    if allreduce is None:       # whole vectors (the formulas as they have always been evaluated)
        gn, hn, ghg = _f(g.norm()), _f(hg.norm()), _f(g @ hg)
        proj = None if V is None else (V / V.norm(dim=1, keepdim=True).clamp_min(1e-300)) @ g
    else:                       # sharded: local partial sums, ONE all-reduce, then the ratios
        k = 0 if V is None else V.shape[0]
        parts = [torch.stack([g @ g, hg @ hg, g @ hg])]
        if V is not None:
            parts += [V @ g, (V * V).sum(dim=1)]
        sums = allreduce(torch.cat(parts)).to("cpu")
        gn, hn = math.sqrt(max(float(sums[0]), 0.0)), math.sqrt(max(float(sums[1]), 0.0))
        ghg = float(sums[2])
        proj = None if V is None else sums[3:3 + k] / sums[3 + k:3 + 2 * k].sqrt().clamp_min(1e-300)
    out: dict[str, Any] = {
        "grad_norm": gn,
        "Hg_norm": hn,
        "grad_Hg_alignment": abs(ghg) / (gn * hn) if gn > 0 and hn > 0 else 0.0,
        "grad_Hg_ratio": hn / gn if gn > 0 else 0.0,
        "rayleigh_quotient": ghg / gn ** 2 if gn > 0 else 0.0,
    }
    if lam is not None and proj is not None:
        proj = proj.cpu()                                                      # g·v_i with ‖v_i‖ = 1
        cos = proj.abs() / gn if gn > 0 else torch.zeros_like(proj)
        w_sum = float(lam.abs().sum())
        w = lam.abs() / w_sum if w_sum > 0 else torch.zeros_like(lam)
        out.update({
            "eigenvector_alignments": cos.tolist(),
            "weighted_alignment": float((w * cos).sum()),
            "top_subspace_fraction": float((proj ** 2).sum()) / gn ** 2 if gn > 0 else 0.0,
            "top_eigenvalues": lam.tolist(),
        })
    return out


def sharpness_metrics(top_eigenvalues: Sequence[float], min_eigenvalue: float,
                      trace_estimate: Optional[float], num_parameters: int,
                      trace_std_error: Optional[float] = None) -> dict[str, float]:
    """Sharpness of the loss surface from the computed spectrum.

    - ``max_sharpness`` = λ_max (largest algebraic eigenvalue: the steepest upward curvature; gradient
      descent with step η is unstable along it when η > 2/λ_max);
    - ``spectral_norm`` = ‖H‖₂ = max(|λ_max|, |λ_min|) over both ends of the spectrum;
    - ``mean_sharpness`` = tr(H) / n = E_u[uᵀHu] for u uniform on the unit sphere: the average curvature
      over all directions (from the stochastic trace estimate; NaN when no trace is available), with
      ``mean_sharpness_std_error`` = SE(tr)/n;
    - ``top_k_mean_sharpness`` = mean of the top-k eigenvalues;
    - ``min_eigenvalue`` = λ_min and ``negative_curvature_ratio`` = max(0, −λ_min) / |λ_max| (0 for a
      positive semi-definite Hessian).
    """
    top = to_numpy_1d(top_eigenvalues, "top_eigenvalues")
    if top.size == 0:
        raise ValueError("top_eigenvalues is empty")
    lmax, lmin = float(top.max()), float(min_eigenvalue)
    out = {
        "max_sharpness": lmax,
        "spectral_norm": max(abs(lmax), abs(lmin)),
        "mean_sharpness": (float(trace_estimate) / num_parameters if trace_estimate is not None
                           and num_parameters > 0 else float("nan")),
        "top_k_mean_sharpness": float(top.mean()),
        "min_eigenvalue": lmin,
        "negative_curvature_ratio": max(0.0, -lmin) / abs(lmax) if lmax != 0 else 0.0,
    }
    if trace_std_error is not None and num_parameters > 0:
        out["mean_sharpness_std_error"] = float(trace_std_error) / num_parameters
    return out


def eigenvalue_distribution_overlap(train_eigenvalues: Sequence[float], val_eigenvalues: Sequence[float],
                                    bins: int = 19) -> float:
    """Histogram intersection of the normalised |λ| distributions (the original's definition, NaN-safe).

    Each set is mapped to ``a_i = |λ_i| / max_j |λ_j|`` ∈ [0, 1] (left as is when all are 0), binned into
    ``bins`` equal bins of [0, 1], and ``overlap = Σ_b min(p_b, q_b)`` with ``p, q`` the bin fractions.
    1 = identical histograms, 0 = disjoint. Empty input on either side gives 0.
    """
    a = np.abs(to_numpy_1d(train_eigenvalues, "train_eigenvalues"))
    b = np.abs(to_numpy_1d(val_eigenvalues, "val_eigenvalues"))
    if a.size == 0 or b.size == 0:
        return 0.0
    a = a / a.max() if a.max() > 0 else a
    b = b / b.max() if b.max() > 0 else b
    edges = np.linspace(0.0, 1.0, bins + 1)
    p = np.histogram(a, bins=edges)[0] / a.size
    q = np.histogram(b, bins=edges)[0] / b.size
    return float(np.minimum(p, q).sum())


def eigenspace_overlap(train_vectors: Tensor, val_vectors: Tensor) -> float:
    """‖V_tr V_valᵀ‖_F² / k for row-orthonormal ``[k, n]`` bases: 1 = same top-k subspace, ≈ k/n = random.

    With bases of different sizes k₁, k₂ the normaliser is min(k₁, k₂).
    """
    A = train_vectors.detach().double()
    B = val_vectors.detach().to(A.device, torch.float64)
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"bases must be [k, n] with the same n, got {tuple(A.shape)} and {tuple(B.shape)}")
    k = min(A.shape[0], B.shape[0])
    if k == 0:
        return 0.0
    return float((A @ B.T).pow(2).sum()) / k


def _safe_ratio(a: float, b: float) -> float:
    """a / (b + 1e-10) as in the original, but finite: 1 when both are ~0, ±1e10-capped otherwise."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return float("nan")
    den = b + _EPS if b >= 0 else b - _EPS
    r = a / den
    return float(max(-1e10, min(1e10, r)))


def train_val_divergence(train_metrics: Mapping[str, Any], val_metrics: Mapping[str, Any],
                         train_eigenvalues: Sequence[float], val_eigenvalues: Sequence[float],
                         train_vectors: Optional[Tensor] = None,
                         val_vectors: Optional[Tensor] = None) -> dict[str, Any]:
    """Train vs validation landscape comparison (the original's signals, made NaN-safe).

    With metrics ``M_tr``, ``M_val`` (:meth:`HessianMetrics.compute_detailed_hessian_metrics` fields, the
    trace being the stochastic estimate) and top-k spectra:

    - ``trace_ratio`` = tr_tr / (tr_val + ε), ``max_eigenvalue_ratio`` = λmax_tr / (λmax_val + ε)
      (ε = 1e-10 with the sign of the denominator; capped at ±1e10);
    - ``negative_eigenvalue_diff``, ``effective_rank_diff``, ``effective_rank_entropy_diff``: train − val;
    - ``train_decay_rate``, ``val_decay_rate``, ``decay_rate_ratio``, ``train/val_complexity_score``;
    - ``eigenvalue_distribution_overlap``: :func:`eigenvalue_distribution_overlap`;
    - ``train_val_landscape_divergence_score`` = mean of [log(1 + |trace_ratio|),
      log(1 + |max_eigenvalue_ratio|), |negative_eigenvalue_diff|, 1 − overlap] over the finite terms
      (the original used log1p of the signed ratios, NaN for ratios below −1). Identical landscapes give
      ``(2 log 2)/4 ≈ 0.347``; larger means more divergent;
    - ``eigenspace_overlap`` (when bases are given): :func:`eigenspace_overlap` of the top-k eigenvectors.
    """
    def g(m: Mapping[str, Any], key: str) -> float:
        v = m.get(key, float("nan"))
        return float(v) if v is not None else float("nan")

    sig: dict[str, Any] = {
        "trace_ratio": _safe_ratio(g(train_metrics, "hessian_trace_estimate"),
                                   g(val_metrics, "hessian_trace_estimate")),
        "max_eigenvalue_ratio": _safe_ratio(g(train_metrics, "max_eigenvalue"),
                                            g(val_metrics, "max_eigenvalue")),
        "negative_eigenvalue_diff": int(train_metrics.get("negative_count", 0))
        - int(val_metrics.get("negative_count", 0)),
        "effective_rank_diff": int(train_metrics.get("effective_rank_95", 0))
        - int(val_metrics.get("effective_rank_95", 0)),
        "effective_rank_entropy_diff": g(train_metrics, "effective_rank_entropy")
        - g(val_metrics, "effective_rank_entropy"),
        "train_decay_rate": g(train_metrics, "eigenvalue_decay_rate"),
        "val_decay_rate": g(val_metrics, "eigenvalue_decay_rate"),
        "decay_rate_ratio": _safe_ratio(g(train_metrics, "eigenvalue_decay_rate"),
                                        g(val_metrics, "eigenvalue_decay_rate")),
        "train_complexity_score": g(train_metrics, "complexity_score"),
        "val_complexity_score": g(val_metrics, "complexity_score"),
        "train_trace": g(train_metrics, "hessian_trace_estimate"),
        "val_trace": g(val_metrics, "hessian_trace_estimate"),
        "train_max_eigenvalue": g(train_metrics, "max_eigenvalue"),
        "val_max_eigenvalue": g(val_metrics, "max_eigenvalue"),
    }
    sig["eigenvalue_distribution_overlap"] = eigenvalue_distribution_overlap(train_eigenvalues,
                                                                             val_eigenvalues)
    terms = [math.log1p(abs(sig["trace_ratio"])), math.log1p(abs(sig["max_eigenvalue_ratio"])),
             float(abs(sig["negative_eigenvalue_diff"])), 1.0 - sig["eigenvalue_distribution_overlap"]]
    finite = [t for t in terms if math.isfinite(t)]
    sig["train_val_landscape_divergence_score"] = float(sum(finite) / len(finite)) if finite else 0.0
    if train_vectors is not None and val_vectors is not None:
        sig["eigenspace_overlap"] = eigenspace_overlap(train_vectors, val_vectors)
    return sig


def compute_hessian_gradient_alignment(model: Any, loss_fn: Any, data_batch: Any,
                                       model_type: Optional[str] = "decoder_only", n_components: int = 10,
                                       eigenvalues: Any = None, eigenvectors: Any = None,
                                       *, tol: float = 1e-4, num_batches: Optional[int] = None,
                                       device: Any = None) -> dict[str, Any]:
    """Legacy function: gradient–Hessian alignment on one batch.

    Computes the gradient, ``H g`` (one HVP) and — unless ``eigenvalues``/``eigenvectors`` ``[k, n]`` are
    given — the top ``n_components`` Ritz pairs, then :func:`gradient_alignment`.
    """
    H = make_operator(model, loss_fn, data_batch, model_type, num_batches=num_batches, device=device,
                      arg_name="data_batch")
    if H.sharded and (eigenvalues is not None or eigenvectors is not None):
        raise ValueError("compute_hessian_gradient_alignment: eigenvalues/eigenvectors cannot be given "
                         "for an FSDP2-sharded model (whole eigenvectors do not match the ranks' gradient "
                         "shards); leave them None to compute the Ritz pairs on the shards")
    loss, g = H.loss_and_grad()
    Hg = H @ g
    if eigenvalues is None or eigenvectors is None:
        res, _ = extreme_ritz_pairs(H, min(n_components, H.global_n), 0, tol, 0)
        eigenvalues, eigenvectors = res.eigenvalues, res.eigenvectors
    lam = torch.as_tensor(np.asarray(eigenvalues, dtype=np.float64)) if not isinstance(eigenvalues, Tensor) \
        else eigenvalues
    V = torch.as_tensor(np.asarray(eigenvectors)) if not isinstance(eigenvectors, Tensor) else eigenvectors
    out = gradient_alignment(g, Hg, lam, V, allreduce=H.allreduce_ if H.sharded else None)
    out["loss"] = float(loss)
    out["num_matvecs"] = int(H.num_matvecs)
    return out
