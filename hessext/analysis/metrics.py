"""Scalar summaries of a set of Hessian eigenvalues (API B's ``HessianMetrics``).

The definitions are those of the original code base, kept where they were sound and guarded so that an
empty, all-zero or single-value input gives finite, documented values instead of NaNs or exceptions.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["HessianMetrics", "compute_detailed_hessian_metrics", "to_numpy_1d"]

ArrayLike = Union[Sequence[float], np.ndarray, torch.Tensor]

#: Mass fraction that defines ``effective_rank_95``.
ENERGY_FRACTION = 0.95
#: Absolute threshold below which |λ| counts as zero (the original's value).
ZERO_TOL = 1e-6
#: Added inside logarithms (the original's value).
LOG_EPS = 1e-10


def to_numpy_1d(values: ArrayLike, name: str = "eigenvalues") -> np.ndarray:
    """``values`` as a float64 1-D numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf: {arr[~np.isfinite(arr)][:5].tolist()}")
    return arr


class HessianMetrics:
    """Metrics of a set of eigenvalues ``λ_1, …, λ_k`` (usually the top-k of a Hessian)."""

    @staticmethod
    def compute_detailed_hessian_metrics(eigenvalues: ArrayLike,
                                         trace: Optional[float] = None) -> dict[str, Any]:
        """Scalar summaries of ``eigenvalues`` (any order).

        With ``a_i = |λ_i|`` sorted descending (``a_(1) ≥ a_(2) ≥ …``) and ``k`` values:

        - ``top_eigenvalues``: the eigenvalues, descending (a list).
        - ``max_eigenvalue``, ``min_eigenvalue``, ``mean_eigenvalue``, ``median_eigenvalue``: of the λ_i.
        - ``negative_count`` = #{λ_i < 0}; ``positive_count`` = #{λ_i > 0}; ``zero_count`` = #{|λ_i| < 1e-6}.
        - ``hessian_trace_estimate``: ``trace`` when given (e.g. a stochastic estimate of tr H), else Σ λ_i
          (which is tr H only when ``eigenvalues`` is the whole spectrum). ``eigenvalue_sum`` = Σ λ_i always.
        - ``condition_number`` = max a_i / min a_i (``inf`` when some λ_i = 0).
        - ``eigenvalue_std`` = population standard deviation of λ; ``eigenvalue_skew`` = Fisher skewness
          m_3 / m_2^{3/2} (0 when k < 2 or all λ_i are equal).
        - ``eigenvalue_decay_rate`` = −slope of the least-squares line through ``(i, log(a_(i) + 1e-10))``,
          i = 0…k−1 (exponential decay rate of the sorted magnitudes; 0 when k ≤ 2 or all equal).
        - ``effective_rank_95`` = the smallest r with Σ_{i≤r} a_(i) ≥ 0.95 Σ a_i.
        - ``effective_rank_entropy`` = exp(−Σ p_i log(p_i + 1e-10)), p_i = a_i / Σ a_j.
        - ``complexity_score`` = hessian_trace_estimate / effective_rank_entropy.

        Guards: for an empty input every count, rank, std, skew, decay and score is 0 and the extremes,
        mean, median and condition number are NaN; when all λ_i = 0 the effective ranks and the complexity
        score are 0 and the condition number is ``inf``; a single value has std, skew and decay 0.

        Args:
            eigenvalues: ``[k]`` array, list or tensor of finite values.
            trace: optional trace estimate used for ``hessian_trace_estimate`` and ``complexity_score``.

        Returns:
            dict of the metrics above (Python floats and ints, JSON-serialisable except ``inf``/``nan``).
        """
        lam = to_numpy_1d(eigenvalues)
        k = lam.size
        if trace is not None:
            trace = float(trace)
            if not math.isfinite(trace):
                raise ValueError(f"trace must be finite, got {trace}")
        nan = float("nan")
        abs_lam = np.abs(lam)
        total = float(lam.sum()) if k else 0.0
        metrics: dict[str, Any] = {
            "top_eigenvalues": np.sort(lam)[::-1].tolist(),
            "num_eigenvalues": int(k),
            "max_eigenvalue": float(lam.max()) if k else nan,
            "min_eigenvalue": float(lam.min()) if k else nan,
            "mean_eigenvalue": float(lam.mean()) if k else nan,
            "median_eigenvalue": float(np.median(lam)) if k else nan,
            "negative_count": int(np.sum(lam < 0)),
            "positive_count": int(np.sum(lam > 0)),
            "zero_count": int(np.sum(abs_lam < ZERO_TOL)),
            "eigenvalue_sum": total,
            "hessian_trace_estimate": trace if trace is not None else total,
        }
        metrics["condition_number"] = HessianMetrics._condition_number(abs_lam)
        metrics.update(HessianMetrics._statistics(lam))
        metrics["eigenvalue_decay_rate"] = HessianMetrics._decay_rate(abs_lam)
        metrics.update(HessianMetrics._effective_ranks(abs_lam))
        ent = metrics["effective_rank_entropy"]
        metrics["complexity_score"] = float(metrics["hessian_trace_estimate"] / ent) if ent > 0 else 0.0
        return metrics

    @staticmethod
    def _condition_number(abs_lam: np.ndarray) -> float:
        if abs_lam.size == 0:
            return float("nan")
        lo = float(abs_lam.min())
        return float(abs_lam.max() / lo) if lo > 0 else float("inf")

    @staticmethod
    def _statistics(lam: np.ndarray) -> dict[str, float]:
        if lam.size < 2:
            return {"eigenvalue_std": 0.0, "eigenvalue_skew": 0.0}
        centred = lam - lam.mean()
        m2 = float(np.mean(centred ** 2))
        std = math.sqrt(m2)
        # Relative guard: all values equal up to rounding -> no skewness.
        if std <= 1e-12 * max(float(np.abs(lam).max()), 1e-300):
            return {"eigenvalue_std": std, "eigenvalue_skew": 0.0}
        m3 = float(np.mean(centred ** 3))
        return {"eigenvalue_std": std, "eigenvalue_skew": m3 / m2 ** 1.5}

    @staticmethod
    def _decay_rate(abs_lam: np.ndarray) -> float:
        if abs_lam.size <= 2:
            return 0.0
        logs = np.log(np.sort(abs_lam)[::-1] + LOG_EPS)
        if np.all(logs == logs[0]):
            return 0.0
        idx = np.arange(logs.size, dtype=np.float64)
        slope = np.polyfit(idx, logs, 1)[0]
        return float(-slope)

    @staticmethod
    def _effective_ranks(abs_lam: np.ndarray) -> dict[str, Any]:
        total = float(abs_lam.sum()) if abs_lam.size else 0.0
        if total <= 0:
            return {"effective_rank_95": 0, "effective_rank_entropy": 0.0}
        sorted_desc = np.sort(abs_lam)[::-1]
        cumulative = np.cumsum(sorted_desc) / total
        # Tolerance so that exactly 95% mass (up to rounding) counts as reached.
        r95 = int(np.searchsorted(cumulative, ENERGY_FRACTION - 1e-12) + 1)
        p = abs_lam / total
        entropy_rank = float(np.exp(-np.sum(p * np.log(p + LOG_EPS))))
        return {"effective_rank_95": min(r95, abs_lam.size), "effective_rank_entropy": entropy_rank}


def compute_detailed_hessian_metrics(eigenvalues: ArrayLike, trace: Optional[float] = None) -> dict[str, Any]:
    """Legacy function: :meth:`HessianMetrics.compute_detailed_hessian_metrics`."""
    return HessianMetrics.compute_detailed_hessian_metrics(eigenvalues, trace=trace)
