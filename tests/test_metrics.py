"""HessianMetrics definitions on hand-made spectra, and the pure alignment / divergence formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hessext.analysis.alignment import (
    eigenspace_overlap,
    eigenvalue_distribution_overlap,
    gradient_alignment,
    sharpness_metrics,
    train_val_divergence,
)
from hessext.analysis.metrics import HessianMetrics, compute_detailed_hessian_metrics

M = HessianMetrics.compute_detailed_hessian_metrics


def test_basic_fields_and_counts():
    m = M([1.0, -1.0, 4.0, 2.0, 0.0])
    assert m["top_eigenvalues"] == [4.0, 2.0, 1.0, 0.0, -1.0]
    assert m["max_eigenvalue"] == 4.0 and m["min_eigenvalue"] == -1.0
    assert m["negative_count"] == 1 and m["positive_count"] == 3 and m["zero_count"] == 1
    assert m["mean_eigenvalue"] == pytest.approx(1.2) and m["median_eigenvalue"] == 1.0
    assert m["hessian_trace_estimate"] == pytest.approx(6.0) == m["eigenvalue_sum"]
    assert m["condition_number"] == math.inf  # a zero eigenvalue: singular


def test_condition_number_std_skew():
    lam = np.array([4.0, 2.0, 1.0, -1.0])
    m = M(lam)
    assert m["condition_number"] == pytest.approx(4.0)
    assert m["eigenvalue_std"] == pytest.approx(np.std(lam))
    c = lam - lam.mean()
    assert m["eigenvalue_skew"] == pytest.approx(np.mean(c ** 3) / np.mean(c ** 2) ** 1.5)


def test_decay_rate_of_geometric_spectrum_is_log_ratio():
    m = M([8.0, 4.0, 2.0, 1.0, 0.5])
    assert m["eigenvalue_decay_rate"] == pytest.approx(math.log(2.0), rel=1e-6)
    # Order of the input does not matter; signs do not either (magnitudes decay).
    assert M([0.5, -2.0, 8.0, 1.0, -4.0])["eigenvalue_decay_rate"] == pytest.approx(math.log(2.0), rel=1e-6)


def test_effective_ranks():
    m = M([8.0, 4.0, 2.0, 1.0])  # cumulative 8/15, 12/15, 14/15, 1 -> 95% reached at 4
    assert m["effective_rank_95"] == 4
    assert M([100.0, 1.0, 1.0])["effective_rank_95"] == 1  # 100/102 > 0.95
    assert M([19.0, 1.0])["effective_rank_95"] == 1  # exactly 95%
    u = M([1.0, 1.0, 1.0, 1.0])
    assert u["effective_rank_entropy"] == pytest.approx(4.0, rel=1e-8)
    p = np.array([3.0, 1.0]) / 4
    assert M([3.0, 1.0])["effective_rank_entropy"] == pytest.approx(math.exp(-(p * np.log(p)).sum()),
                                                                    rel=1e-8)


def test_complexity_score_uses_given_trace():
    assert M([1.0, 1.0, 1.0, 1.0])["complexity_score"] == pytest.approx(1.0, rel=1e-8)
    m = M([1.0, 1.0, 1.0, 1.0], trace=8.0)
    assert m["hessian_trace_estimate"] == 8.0 and m["eigenvalue_sum"] == 4.0
    assert m["complexity_score"] == pytest.approx(2.0, rel=1e-8)


def test_empty_input_is_guarded():
    m = M([])
    assert m["negative_count"] == m["positive_count"] == m["zero_count"] == 0
    assert m["effective_rank_95"] == 0 and m["effective_rank_entropy"] == 0.0
    assert m["eigenvalue_std"] == m["eigenvalue_skew"] == m["eigenvalue_decay_rate"] == 0.0
    assert m["complexity_score"] == 0.0
    assert math.isnan(m["max_eigenvalue"]) and math.isnan(m["condition_number"])


def test_all_zero_input_is_guarded():
    m = M(np.zeros(3))
    assert m["effective_rank_95"] == 0 and m["effective_rank_entropy"] == 0.0
    assert m["complexity_score"] == 0.0 and m["zero_count"] == 3
    assert m["condition_number"] == math.inf
    assert m["eigenvalue_skew"] == 0.0 and m["eigenvalue_decay_rate"] == 0.0


def test_single_value():
    m = M([5.0])
    assert m["eigenvalue_std"] == 0.0 and m["eigenvalue_skew"] == 0.0 and m["eigenvalue_decay_rate"] == 0.0
    assert m["effective_rank_95"] == 1 and m["effective_rank_entropy"] == pytest.approx(1.0)
    assert m["condition_number"] == 1.0 and m["complexity_score"] == pytest.approx(5.0)


def test_equal_values_have_zero_skew_and_decay():
    m = M([2.0, 2.0, 2.0])
    assert m["eigenvalue_skew"] == 0.0 and m["eigenvalue_decay_rate"] == 0.0


def test_input_types_and_errors():
    a = M(torch.tensor([3.0, 1.0]))
    b = compute_detailed_hessian_metrics(np.array([1.0, 3.0]))
    assert a == b
    with pytest.raises(ValueError, match="NaN"):
        M([1.0, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        M(np.ones((2, 2)))
    with pytest.raises(TypeError):
        M(["a", "b"])


# ------------------------------------------------------------------ alignment, sharpness, divergence formulas
def test_gradient_alignment_on_a_dense_matrix():
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    lam = torch.tensor([5.0, 3.0, 1.0, 0.5, -0.5, -2.0], dtype=torch.float64)
    H = Q @ torch.diag(lam) @ Q.T
    g = torch.randn(6, dtype=torch.float64)
    top_vals, top_vecs = lam[:2], Q[:, :2].T
    out = gradient_alignment(g, H @ g, top_vals, top_vecs)
    Hg = H @ g
    assert out["grad_Hg_alignment"] == pytest.approx(abs(g @ Hg).item() / (g.norm() * Hg.norm()).item())
    assert out["grad_Hg_ratio"] == pytest.approx((Hg.norm() / g.norm()).item())
    assert out["rayleigh_quotient"] == pytest.approx((g @ Hg / (g @ g)).item())
    c = (top_vecs @ g).abs() / g.norm()
    assert out["weighted_alignment"] == pytest.approx(((5 * c[0] + 3 * c[1]) / 8).item())
    assert out["top_subspace_fraction"] == pytest.approx(((top_vecs @ g) ** 2).sum().item() / (g @ g).item())
    # g an eigenvector: perfectly aligned, all of it in the top space.
    e = gradient_alignment(Q[:, 0], H @ Q[:, 0], top_vals, top_vecs)
    assert e["grad_Hg_alignment"] == pytest.approx(1.0) and e["top_subspace_fraction"] == pytest.approx(1.0)
    assert e["grad_Hg_ratio"] == pytest.approx(5.0)


def test_gradient_alignment_zero_gradient_is_finite():
    out = gradient_alignment(torch.zeros(3), torch.zeros(3), torch.tensor([1.0]), torch.eye(3)[:1])
    assert all(math.isfinite(v) for v in out.values() if isinstance(v, float))
    assert out["grad_Hg_alignment"] == 0.0 and out["grad_Hg_ratio"] == 0.0


def test_sharpness_definitions():
    s = sharpness_metrics([4.0, 1.0], -6.0, trace_estimate=10.0, num_parameters=5, trace_std_error=1.0)
    assert s["max_sharpness"] == 4.0 and s["spectral_norm"] == 6.0
    assert s["mean_sharpness"] == 2.0 and s["mean_sharpness_std_error"] == 0.2
    assert s["top_k_mean_sharpness"] == 2.5 and s["negative_curvature_ratio"] == 1.5
    assert math.isnan(sharpness_metrics([1.0], 0.0, None, 3)["mean_sharpness"])


def test_distribution_overlap():
    a = [1.0, 0.5, 0.2]
    assert eigenvalue_distribution_overlap(a, a) == pytest.approx(1.0)
    assert eigenvalue_distribution_overlap(a, [2.0, 1.0, 0.4]) == pytest.approx(1.0)  # scale-free
    assert eigenvalue_distribution_overlap([1.0, 1.0], [1.0, 0.01]) == pytest.approx(0.5)
    assert eigenvalue_distribution_overlap([], a) == 0.0
    assert eigenvalue_distribution_overlap([0.0, 0.0], [0.0]) == pytest.approx(1.0)


def test_eigenspace_overlap():
    eye = torch.eye(4)
    assert eigenspace_overlap(eye[:2], eye[:2]) == pytest.approx(1.0)
    assert eigenspace_overlap(eye[:2], eye[2:]) == pytest.approx(0.0)
    R = torch.tensor([[1.0, 1.0, 0, 0], [1.0, -1.0, 0, 0]]) / math.sqrt(2)  # same span, rotated
    assert eigenspace_overlap(eye[:2], R) == pytest.approx(1.0)
    assert eigenspace_overlap(eye[:2], eye[1:3]) == pytest.approx(0.5)


def test_train_val_divergence_identical_and_nan_safe():
    m = M([3.0, 1.0], trace=10.0)
    d = train_val_divergence(m, m, [3.0, 1.0], [3.0, 1.0], torch.eye(3)[:2], torch.eye(3)[:2])
    assert d["trace_ratio"] == pytest.approx(1.0)
    assert d["eigenvalue_distribution_overlap"] == pytest.approx(1.0)
    assert d["train_val_landscape_divergence_score"] == pytest.approx(2 * math.log(2) / 4)
    assert d["eigenspace_overlap"] == pytest.approx(1.0)
    # Signed traces and a zero denominator: the original produced NaN (log1p of a ratio < -1).
    mv = M([0.0, -1.0], trace=-1.0)
    d2 = train_val_divergence(m, mv, [3.0, 1.0], [0.0, -1.0])
    assert d2["trace_ratio"] < -1
    assert all(math.isfinite(v) for v in d2.values() if isinstance(v, float))
    assert d2["train_val_landscape_divergence_score"] > d["train_val_landscape_divergence_score"]
