"""Result dataclasses of the hessext algorithms.

Every result is a frozen dataclass that carries its own error estimate and the number of matrix-vector
products (``num_matvecs``) spent on it, and converts to a JSON-serialisable ``dict`` with ``to_dict()``
(tensors become lists of floats; NaN/inf are kept as Python floats, which ``json.dumps`` writes as
``NaN``/``Infinity``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ._checks import order_descending

__all__ = ["EigenResult", "TraceResult", "DensityResult"]


def _floats(x: Optional[Tensor]) -> Optional[list]:
    if x is None:
        return None
    return [float(v) for v in x.detach().to("cpu", torch.float64).reshape(-1).tolist()] if x.dim() <= 1 \
        else x.detach().to("cpu", torch.float64).tolist()


@dataclass(frozen=True)
class EigenResult:
    """Ritz pairs of a symmetric operator ``A`` (from :func:`hessext.lanczos.lanczos`).

    Attributes:
        eigenvalues: ``[k]`` Ritz values, **ascending**, float64 on the CPU.
        eigenvectors: ``[k, n]`` unit Ritz vectors as rows (row i belongs to ``eigenvalues[i]``), in the
            operator's dtype and on its device; ``None`` when not requested.
        residuals: ``[k]`` residual norms ``‖A v_i − λ_i v_i‖₂`` (float64, CPU). Which kind is in
            ``residual_kind``: ``"estimate"`` — the free Lanczos estimate ``|β_m s_{m,i}|``, equal to the true
            residual in exact arithmetic and agreeing with it down to roundoff (≈ ε‖A‖) with full
            reorthogonalisation; ``"true"`` — computed with one extra block product (k matvecs).
            For a symmetric ``A`` some eigenvalue of ``A`` lies within ``residuals[i]`` of ``eigenvalues[i]``.
        num_matvecs: matrix-vector products spent (including any residual computation).
        iterations: Lanczos steps kept (size of the Krylov basis used; with thick restarts, all steps kept
            over the cycles).
        converged: all requested pairs met the tolerance (see :func:`hessext.lanczos.lanczos`).
        breakdown: an invariant subspace was found (``β_j ≈ 0``) at least once.
        orthogonality_loss: ``max |V Vᵀ − I|`` of the Lanczos basis (or an estimate for big bases; see
            :func:`hessext.lanczos.lanczos`), maxed with that of the returned Ritz vectors.
        which: ``"LA"``, ``"SA"``, ``"LM"`` or ``"BE"``.
        residual_kind: ``"estimate"`` or ``"true"``.
        restarts: thick restarts of the run (0: the basis never reached its bound ``max_basis``).
        max_basis: the bound on the number of basis vectors the run kept at once (0 where not recorded).
        reorth: the orthogonalisation the run ended with: ``"full"``, ``"partial"`` (Simon's partial
            reorthogonalisation: a semi-orthogonal basis, ``orthogonality_loss ≤ ~√ε``), ``"none"``.
        reorth_passes: full Gram–Schmidt passes a partial run made (``-1``: every step, ``"full"``).
    """

    eigenvalues: Tensor
    eigenvectors: Optional[Tensor]
    residuals: Tensor
    num_matvecs: int
    iterations: int
    converged: bool
    breakdown: bool
    orthogonality_loss: float
    which: str
    residual_kind: str = "estimate"
    restarts: int = 0
    max_basis: int = 0
    reorth: str = "full"
    reorth_passes: int = -1

    @property
    def k(self) -> int:
        """Number of returned pairs."""
        return int(self.eigenvalues.numel())

    @property
    def max(self) -> float:
        """The largest returned eigenvalue (NaN if none)."""
        return float(self.eigenvalues.max()) if self.k else float("nan")

    @property
    def min(self) -> float:
        """The smallest returned eigenvalue (NaN if none)."""
        return float(self.eigenvalues.min()) if self.k else float("nan")

    @property
    def relative_residuals(self) -> Tensor:
        """``residuals / max(|eigenvalues|, tiny)``."""
        return self.residuals / self.eigenvalues.abs().clamp_min(torch.finfo(torch.float64).tiny)

    def top(self, k: int | None = None) -> Tensor:
        """The ``k`` largest returned eigenvalues, **descending** (all of them when ``k`` is None)."""
        vals = self.eigenvalues[order_descending(self.eigenvalues)]
        return vals if k is None else vals[:k]

    def bottom(self, k: int | None = None) -> Tensor:
        """The ``k`` smallest returned eigenvalues, ascending (all of them when ``k`` is None)."""
        return self.eigenvalues if k is None else self.eigenvalues[:k]

    def descending(self) -> tuple[Tensor, Optional[Tensor]]:
        """``(eigenvalues [k], eigenvectors [k, n] or None)`` reordered largest first: the one place that
        turns the engine's ascending order into the descending order the API facades (API A, API B, the
        analyzer) report, so they need not sort themselves.

        The order is :func:`hessext._checks.order_descending` of the eigenvalues
        (``argsort(descending=True)``); row ``i`` of the vectors still belongs to value ``i``. Eigenvalues
        stay float64 on the CPU, vectors keep their dtype and device: bit for bit what
        ``order = torch.argsort(result.eigenvalues, descending=True)`` and ``vals[order], vecs[order]`` give.
        """
        order = order_descending(self.eigenvalues)
        vecs = None if self.eigenvectors is None else self.eigenvectors[order.to(self.eigenvectors.device)]
        return self.eigenvalues[order], vecs

    def to_dict(self, include_vectors: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary (eigenvectors only with ``include_vectors=True``)."""
        out: dict[str, Any] = {
            "eigenvalues": _floats(self.eigenvalues),
            "residuals": _floats(self.residuals),
            "num_matvecs": int(self.num_matvecs),
            "iterations": int(self.iterations),
            "converged": bool(self.converged),
            "breakdown": bool(self.breakdown),
            "orthogonality_loss": float(self.orthogonality_loss),
            "which": str(self.which),
            "residual_kind": str(self.residual_kind),
        }
        if include_vectors:
            out["eigenvectors"] = _floats(self.eigenvectors)
        return out


@dataclass(frozen=True)
class TraceResult:
    """A stochastic estimate of ``tr(A)`` with its standard error (from :mod:`hessext.trace`).

    Attributes:
        estimate: the trace estimate.
        std_error: its estimated standard error (NaN when it cannot be estimated, e.g. one probe;
            0 when the estimate is exact).
        num_matvecs: matrix-vector products spent.
        method: ``"hutchinson"``, ``"hutchpp"`` or ``"xtrace"``.
        block_estimates: ``{name: estimate of tr(A_bb)}`` for the requested index blocks, or None.
        block_std_errors: ``{name: standard error}`` of those, or None.
    """

    estimate: float
    std_error: float
    num_matvecs: int
    method: str
    block_estimates: Optional[dict[str, float]] = None
    block_std_errors: Optional[dict[str, float]] = None

    @property
    def relative_std_error(self) -> float:
        """``std_error / |estimate|`` (inf when the estimate is 0 and the error is not)."""
        if self.estimate == 0:
            return 0.0 if self.std_error == 0 else math.inf
        return self.std_error / abs(self.estimate)

    def interval(self, z: float = 2.0) -> tuple[float, float]:
        """``(estimate − z·SE, estimate + z·SE)``."""
        return self.estimate - z * self.std_error, self.estimate + z * self.std_error

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "estimate": float(self.estimate),
            "std_error": float(self.std_error),
            "relative_std_error": float(self.relative_std_error),
            "num_matvecs": int(self.num_matvecs),
            "method": str(self.method),
            "block_estimates": None if self.block_estimates is None
            else {str(k): float(v) for k, v in self.block_estimates.items()},
            "block_std_errors": None if self.block_std_errors is None
            else {str(k): float(v) for k, v in self.block_std_errors.items()},
        }


@dataclass(frozen=True)
class DensityResult:
    """A smoothed spectral density by stochastic Lanczos quadrature
    (:func:`hessext.density.spectral_density`).

    ``density[g]`` is ``φ(grid[g])`` with ``φ(λ) = (1/p) Σ_c Σ_i weights[c, i] 𝒩(λ; nodes[c, i], σ²)``.
    Unused quadrature slots (a probe whose Krylov space became invariant early) have weight 0.

    Attributes:
        grid: ``[g]`` evaluation points (float64, CPU).
        density: ``[g]`` density values (float64, CPU).
        nodes: ``[p, m]`` Gauss quadrature nodes (Ritz values) per probe.
        weights: ``[p, m]`` quadrature weights per probe (each row sums to 1).
        num_matvecs: matrix-vector products spent.
        sigma: width of the Gaussian broadening.
        n: dimension of the operator (to turn spectral means into traces).
    """

    grid: Tensor
    density: Tensor
    nodes: Tensor
    weights: Tensor
    num_matvecs: int
    sigma: float = float("nan")
    n: int = 0

    def moment(self, k: int) -> float:
        """SLQ estimate of the spectral moment ``(1/n) tr(A^k) ≈ (1/p) Σ_c Σ_i w_ci θ_ci^k``."""
        return float((self.weights * self.nodes.pow(k)).sum(1).mean())

    @property
    def mean(self) -> float:
        """SLQ estimate of the spectral mean ``tr(A) / n``."""
        return self.moment(1)

    @property
    def trace_estimate(self) -> float:
        """SLQ estimate of ``tr(A) = n · mean`` (a Hutchinson estimate with normalised Rademacher probes)."""
        return self.n * self.mean

    @property
    def trace_std_error(self) -> float:
        """Standard error of :attr:`trace_estimate` (spread over probes; NaN for one probe)."""
        per_probe = self.n * (self.weights * self.nodes).sum(1)
        p = per_probe.numel()
        return float(per_probe.std(unbiased=True) / math.sqrt(p)) if p > 1 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        arrays = {k: _floats(getattr(self, k)) for k in ("grid", "density", "nodes", "weights")}
        return {**arrays, "num_matvecs": int(self.num_matvecs), "sigma": float(self.sigma), "n": int(self.n),
                "trace_estimate": float(self.trace_estimate), "trace_std_error": float(self.trace_std_error)}
