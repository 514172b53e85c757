"""Memory-bounded Lanczos (issue 14): thick restart within ``max_basis`` vectors, against ground truth.

Dense float64 matrices with known spectra, a diagonal operator of n = 10⁵ with outliers and clusters (ghost
test), a tiny model's Hessian against its dense float64 eigendecomposition; the default bound (half of the
available memory) leaves small problems exactly as they were.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _spectra import Diag, outliers_and_clusters, wanted, with_spectrum
from torch import nn

import hessext._memory
import hessext.lanczos as L
from hessext.hvp import HessianOperator
from hessext.lanczos import extreme_eigenpairs, lanczos
from hessext.restart import compress_basis, keep_count, projected_matrix

F64, F32 = torch.float64, torch.float32


@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
@pytest.mark.parametrize("max_basis", [30, 16])
def test_restarted_pairs_equal_dense_truth(which, max_basis):
    truth = outliers_and_clusters()
    A = with_spectrum(truth)
    res = lanczos(A, k=6, which=which, tol=1e-10, max_basis=max_basis, max_iter=3000)
    assert res.converged and res.restarts >= 1 and res.max_basis == max_basis
    assert res.iterations > max_basis                   # more steps than the basis holds
    np.testing.assert_allclose(res.eigenvalues.numpy(), wanted(truth, which, 6), rtol=0, atol=1e-8)
    Y = res.eigenvectors
    R = A @ Y.T - Y.T * res.eigenvalues
    true_res = torch.linalg.vector_norm(R, dim=0)
    # the Lanczos estimates stay honest after restarts: equal to the true residuals up to roundoff
    assert torch.allclose(true_res, res.residuals, rtol=1e-3, atol=1e-12), (true_res, res.residuals)
    assert float((Y @ Y.T - torch.eye(6, dtype=F64)).abs().max()) < 1e-12
    assert res.orthogonality_loss < 1e-12


def test_float32_restarted_and_extreme_eigenpairs():
    truth = outliers_and_clusters(200)
    A = with_spectrum(truth, seed=1, dtype=F32)
    top, bottom = extreme_eigenpairs(A, k_top=3, k_bottom=2, tol=1e-5, max_basis=14)
    assert top.converged and bottom.converged and top.restarts >= 1
    np.testing.assert_allclose(top.eigenvalues.numpy(), np.sort(truth)[-3:], rtol=2e-5)
    np.testing.assert_allclose(bottom.eigenvalues.numpy(), np.sort(truth)[:2], rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype,tol,rtol", [(F64, 1e-10, 1e-9), (F32, 1e-5, 2e-5)])
def test_diagonal_1e5_restarted_no_ghosts(dtype, tol, rtol):
    """n = 10⁵, clustered outliers: every returned value is a distinct eigenvalue (no spurious copies of the
    converged ones after restarts), the top 10 exactly."""
    g = np.random.default_rng(0)
    n = 100_000
    top = [10.5, 10.5 + 1e-3, 11.0, 11.0 + 2e-3]
    d = np.concatenate([g.uniform(0, 1, n - 20), np.linspace(2, 10, 16), top])
    res = lanczos(Diag(torch.tensor(g.permutation(d), dtype=dtype)), k=10, tol=tol, max_basis=24,
                  max_iter=2000)
    assert res.converged and res.restarts >= 1
    got = res.eigenvalues.numpy()
    np.testing.assert_allclose(got, np.sort(d)[-10:], rtol=rtol)
    assert np.all(np.diff(got) > 0.5 * 1e-3)            # distinct: no ghost copy of a converged value


def test_default_bound_leaves_small_problems_unchanged(monkeypatch):
    """At small n the default bound (half of the available memory) is above the Krylov dimension: the same
    numbers, bit for bit, and the same matvec count as an unbounded run."""
    A = with_spectrum(outliers_and_clusters())
    a = lanczos(A, k=5, tol=1e-10)
    monkeypatch.setattr(hessext._memory, "available_memory", lambda device: None)       # no bound at all
    b = lanczos(A, k=5, tol=1e-10)
    assert a.restarts == 0 and a.max_basis == L.krylov_dim_for_extremes(300, 5)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    assert a.num_matvecs == b.num_matvecs and a.iterations == b.iterations


def test_basis_allocation_is_the_bound(monkeypatch):
    rows = []
    orig = L.LanczosChains.allocate.__func__

    def record(cls, p, r, n, dtype, device, pin=False):
        rows.append(r)
        return orig(cls, p, r, n, dtype, device, pin)
    monkeypatch.setattr(L.LanczosChains, "allocate", classmethod(record))
    A = with_spectrum(outliers_and_clusters())
    lanczos(A, k=4, tol=1e-8, max_basis=12)
    assert rows == [13]                                 # M + 1 rows: the basis and the next vector
    row = 300 * 8
    monkeypatch.setattr(hessext._memory, "available_memory", lambda device: 2 * 21 * row)   # half: 21 rows
    res = lanczos(A, k=4, tol=1e-8)
    assert rows[-1] == 21 and res.max_basis == 20 and res.converged


def test_budget_and_not_converged_flag():
    A = with_spectrum(outliers_and_clusters())
    res = lanczos(A, k=4, tol=1e-14, max_basis=8, max_iter=40)
    assert not res.converged and res.iterations == 40 and res.num_matvecs == 40


def test_v0_and_hessian_operator_restarted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    X, y = torch.randn(20, 6, dtype=F64), torch.randint(0, 3, (20,))
    H = HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
    dense = torch.linalg.eigvalsh(H.to_dense())
    res = lanczos(H, k=3, which="BE", tol=1e-10, max_basis=10, max_iter=2000, v0=torch.ones(H.n, dtype=F64))
    assert res.converged and res.restarts >= 1
    expect = torch.cat([dense[:1], dense[-2:]])
    torch.testing.assert_close(res.eigenvalues, expect, rtol=0, atol=1e-9)


def test_bad_bounds():
    A = with_spectrum(outliers_and_clusters())
    with pytest.raises(ValueError, match=r"max_basis must be >= min\(Krylov dimension, k \+ 2\) = 7"):
        lanczos(A, k=5, max_basis=6)
    with pytest.raises(TypeError, match="max_basis"):
        lanczos(A, k=5, max_basis=10.5)
    with pytest.raises(ValueError, match="reorth='partial' needs the whole Krylov basis"):
        lanczos(A, k=2, max_basis=10, reorth="partial")
    with pytest.raises(TypeError, match="unexpected keyword"):
        extreme_eigenpairs(A, k_top=1, k_bottom=1, basis=4)


def test_restart_pieces():
    """compress_basis (panel by panel, in place) against one GEMM; projected_matrix's arrowhead layout;
    keep_count's bounds."""
    g = torch.Generator().manual_seed(0)
    V = torch.randn(9, 5000, dtype=F64, generator=g)
    S = torch.linalg.qr(torch.randn(7, 4, dtype=F64, generator=g))[0]
    expect = S.T @ V[:7]
    import hessext.restart as R
    old = R.PANEL_BYTES
    try:
        R.PANEL_BYTES = 4 * 8 * 1024                    # 1024-column panels: 5 panels, the last one partial
        compress_basis(V, S, 7)
    finally:
        R.PANEL_BYTES = old
    assert torch.allclose(V[:4], expect, rtol=0, atol=1e-13)
    T = projected_matrix(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.0, 0.5, 9.0]), 2,
                         np.array([0.1, 0.2]))
    np.testing.assert_array_equal(T, [[1, 0, 0.1, 0], [0, 2, 0.2, 0], [0.1, 0.2, 3, 0.5], [0, 0, 0.5, 4]])
    assert keep_count(5, 30, 30) == 17 and keep_count(5, 7, 7) == 6 and keep_count(1, 3, 3) == 2


def test_fast_bound_only_above_a_million():
    """n ≤ 10⁶ keeps the unbounded run (same basis size as before); above, full reorthogonalisation's default
    bound is fast_basis_bound(k) = max(20, 2k + 10), while ``reorth="auto"`` runs partial reorthogonalisation
    without restarts in PARTIAL_DIM_FACTOR times the default dimension; the top eigenvalues are exact."""
    g = np.random.default_rng(1)
    for n, kw, expect, mode in (
            (1_000_000, {}, L.krylov_dim_for_extremes(1_000_000, 2), "full"),
            (1_000_001, {"reorth": "full"}, L.fast_basis_bound(2), "full"),
            (1_000_001, {}, L.PARTIAL_DIM_FACTOR * L.krylov_dim_for_extremes(1_000_001, 2), "partial")
            if L.BACKEND != "python" else (1_000_001, {}, L.fast_basis_bound(2), "full")):
        d = np.concatenate([g.uniform(0, 1, n - 3), [3.0, 4.0, 5.0]])
        res = lanczos(Diag(torch.tensor(g.permutation(d), dtype=F64)), k=2, tol=1e-8, return_vectors=False,
                      **kw)
        assert res.max_basis == expect and res.converged and res.reorth == mode
        np.testing.assert_allclose(res.eigenvalues.numpy(), [4.0, 5.0], rtol=1e-7)
