"""Lanczos without full reorthogonalisation (issue 20): ``reorth="selective"`` against ground truth.

Spectra built to provoke ghost eigenvalues (well-separated outliers over a bulk, clusters, repeated values),
diagonal operators up to n = 10⁵ and a dense float64 matrix with a known spectrum, in float32 and float64.
Each ghost test also runs ``reorth="none"`` (the bare three-term recurrence) and checks that the same
assertion catches its ghosts, so the tests can fail.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hessext.lanczos import extreme_eigenpairs, lanczos, resolve_reorth
from hessext.linop import LinearOperator

F64, F32 = torch.float64, torch.float32


class Diag(LinearOperator):
    """diag(d) as an operator (products counted by the base class)."""

    def __init__(self, d: torch.Tensor) -> None:
        super().__init__(d.numel(), d.dtype, d.device)
        self.d = d

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.d[:, None] * X


def outliers_and_bulk(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """20 outliers evenly in [2, 10] over a uniform bulk in [0, 1], randomly permuted."""
    g = np.random.default_rng(seed)
    d = np.concatenate([g.uniform(0, 1, n - 20), np.linspace(2, 10, 20)])
    return torch.tensor(g.permutation(d), dtype=dtype)


def ghost_free(got: np.ndarray, spectrum: np.ndarray, rtol: float) -> bool:
    """Every computed value is an eigenvalue, no value appears more often than its multiplicity in
    ``spectrum`` (all eigenvalues, repeated ones repeated), and the largest eigenvalue is found."""
    spectrum = np.sort(spectrum)
    used = np.zeros(spectrum.size, dtype=bool)
    for v in got:
        near = np.flatnonzero(~used & (np.abs(spectrum - v) <= rtol * max(abs(v), 1.0)))
        if near.size == 0:
            return False
        used[near[0]] = True
    return bool(np.any(np.abs(got - spectrum[-1]) <= rtol * abs(spectrum[-1])))


@pytest.mark.parametrize("dtype,tol,rtol", [(F64, 1e-10, 1e-9), (F32, 1e-5, 2e-5)])
def test_diagonal_1e5_no_ghosts_and_bare_recurrence_has_them(dtype, tol, rtol):
    d = outliers_and_bulk(100_000, dtype)
    truth = d.double().numpy()
    sel = lanczos(Diag(d), k=10, tol=tol, max_iter=200, reorth="selective")
    assert sel.converged
    assert ghost_free(sel.eigenvalues.numpy(), truth, rtol), sel.eigenvalues
    eps = float(torch.finfo(dtype).eps)
    assert sel.orthogonality_loss <= 4 * eps ** 0.5              # semi-orthogonal, measured
    Y = sel.eigenvectors.double()
    true_res = torch.linalg.vector_norm(d.double()[:, None] * Y.T - Y.T * sel.eigenvalues, dim=0)
    assert float(true_res.max()) <= 20 * tol * 10                # honest Ritz pairs
    bare = lanczos(Diag(d), k=10, tol=tol, max_iter=200, reorth="none")
    assert not ghost_free(bare.eigenvalues.numpy(), truth, rtol)  # the check does catch ghosts
    assert bare.orthogonality_loss > 0.1


@pytest.mark.parametrize("dtype", [F64, F32])
def test_dense_known_spectrum_clusters_and_repeats(dtype):
    """Dense symmetric matrix, n = 400: a cluster (5, 5 + 1e-3, 5 + 2e-3), a triple value 4 and a bulk."""
    n = 400
    bulk = np.linspace(-1, 1, n - 8)
    ev = np.sort(np.concatenate([bulk, [5.0, 5.001, 5.002, 4.0, 4.0, 4.0, 3.0, -3.0]]))
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    A = ((Q * torch.tensor(ev)) @ Q.T).to(dtype)
    tol = 1e-10 if dtype == F64 else 1e-5
    # check_every=150: all 150 steps run, long after the outliers converged (where ghosts appear)
    full = lanczos(A, k=5, tol=tol, max_iter=150, check_every=150, reorth="full")
    sel = lanczos(A, k=5, tol=tol, max_iter=150, check_every=150, reorth="selective", compute_residuals=True)
    truth = ev          # a single Krylov space may or may not find a second copy of 4 (roundoff): both fine
    assert ghost_free(full.eigenvalues.numpy(), truth, 10 * tol)
    assert ghost_free(sel.eigenvalues.numpy(), truth, 10 * tol), sel.eigenvalues
    assert sel.residual_kind == "true"
    Y = sel.eigenvectors.to(F64)
    true_res = torch.linalg.vector_norm(A.to(F64) @ Y.T - Y.T * sel.eigenvalues, dim=0)
    assert torch.allclose(sel.residuals, true_res, rtol=0, atol=1e-3 if dtype == F32 else 1e-9)
    bare = lanczos(A, k=5, tol=tol, max_iter=150, check_every=150, reorth="none")
    assert not ghost_free(bare.eigenvalues.numpy(), truth, 10 * tol)


def test_both_ends_and_auto_keeps_full():
    d = outliers_and_bulk(20_000, F64, seed=3)
    d[:2] = torch.tensor([-3.0, -2.0], dtype=F64)                    # two outliers below the bulk too
    truth = np.sort(d.numpy())
    top, bot = extreme_eigenpairs(Diag(d), k_top=3, k_bottom=2, tol=1e-10, max_iter=300, reorth="selective")
    assert np.allclose(top.eigenvalues.numpy(), truth[-3:], rtol=1e-8, atol=0)
    assert np.allclose(bot.eigenvalues.numpy(), truth[:2], rtol=0, atol=1e-6)
    a = lanczos(Diag(d), k=3, tol=1e-8)
    f = lanczos(Diag(d), k=3, tol=1e-8, reorth="full")
    assert torch.equal(a.eigenvalues, f.eigenvalues) and a.num_matvecs == f.num_matvecs
    assert resolve_reorth("auto", 10 ** 7, 80) == "full"


@pytest.mark.parametrize("bad", ["partial", 1, None])
def test_bad_reorth_is_refused(bad):
    with pytest.raises(ValueError, match="reorth"):
        lanczos(torch.eye(5, dtype=F64), k=1, reorth=bad)
