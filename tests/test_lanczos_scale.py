"""Lanczos with partial reorthogonalisation (issue 20): ``reorth="partial"`` against ground truth.

Spectra built to provoke ghost eigenvalues (well-separated outliers over a bulk, clusters, repeated values),
diagonal operators up to n = 10⁵ and a dense float64 matrix with a known spectrum, in float32 and float64.
Each ghost test also runs ``reorth="none"`` (the bare three-term recurrence) and checks that the same
assertion catches its ghosts, so the tests can fail. The ω-recurrence itself is checked against the exact
inner products of a basis built without reorthogonalisation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _spectra import Diag, ghost_free, outliers_and_bulk

import hessext.lanczos as hl
from hessext.lanczos import extreme_eigenpairs, lanczos, resolve_reorth
from hessext.reorth import PartialOrthogonalizer

F64, F32 = torch.float64, torch.float32


@pytest.mark.parametrize("dtype,tol,rtol,most", [(F64, 1e-10, 1e-9, 70), (F32, 1e-5, 2e-5, 130)])
def test_diagonal_1e5_no_ghosts_and_bare_recurrence_has_them(dtype, tol, rtol, most):
    """Outliers 10× the bulk's width grow the loss ~20× a step: float32's three decades between ε and √ε
    then need a pass every few steps (still fewer than full reorthogonalisation's one per step)."""
    d = outliers_and_bulk(100_000, dtype)
    truth = d.double().numpy()
    # check_every=200: all 200 steps run, long after the outliers converged (where ghosts appear)
    if hl.BACKEND == "python" and dtype == F32:
        # the fallback's float32 passes are too coarse for the estimates: refused, never a wrong answer
        with pytest.raises(ValueError, match="reorth='partial' needs the compiled kernels in float32"):
            lanczos(Diag(d), k=10, tol=tol, max_iter=200, reorth="partial")
        return
    par = lanczos(Diag(d), k=10, tol=tol, max_iter=200, check_every=200, reorth="partial")
    assert ghost_free(par.eigenvalues.numpy(), truth, rtol), par.eigenvalues
    eps = float(torch.finfo(dtype).eps)
    assert par.reorth == "partial" and 0 < par.reorth_passes < most
    # semi-orthogonal, measured: at η = √max(ε, ν/‖T‖) (ν: the measured rounding of a step, ~ε‖T‖ here)
    assert par.orthogonality_loss <= 10 * math.sqrt(eps)
    Y = par.eigenvectors.double()
    true_res = torch.linalg.vector_norm(d.double()[:, None] * Y.T - Y.T * par.eigenvalues, dim=0)
    assert float(true_res.max()) <= 100 * tol * 10                           # honest Ritz pairs
    full = lanczos(Diag(d), k=10, tol=tol, max_iter=200, check_every=200, reorth="full")
    assert float((par.eigenvalues - full.eigenvalues).abs().max()) <= 10 * tol * 10
    bare = lanczos(Diag(d), k=10, tol=tol, max_iter=200, check_every=200, reorth="none")
    assert not ghost_free(bare.eigenvalues.numpy(), truth, rtol)  # the check does catch ghosts
    assert bare.orthogonality_loss > 0.1 and bare.reorth_passes == 0


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
    full = lanczos(A, k=5, tol=tol, max_iter=150, check_every=150, reorth="full")
    truth = ev          # a single Krylov space may or may not find a second copy of 4 (roundoff): both fine
    assert ghost_free(full.eigenvalues.numpy(), truth, 10 * tol)
    if hl.BACKEND == "python" and dtype == F32:                # refused there (see the 1e5 test)
        with pytest.raises(ValueError, match="compiled kernels"):
            lanczos(A, k=5, tol=tol, max_iter=150, reorth="partial")
    else:
        par = lanczos(A, k=5, tol=tol, max_iter=150, check_every=150, reorth="partial",
                      compute_residuals=True)
        assert ghost_free(par.eigenvalues.numpy(), truth, 10 * tol), par.eigenvalues
        assert par.residual_kind == "true" and par.reorth == "partial"
        Y = par.eigenvectors.to(F64)
        true_res = torch.linalg.vector_norm(A.to(F64) @ Y.T - Y.T * par.eigenvalues, dim=0)
        assert torch.allclose(par.residuals, true_res, rtol=0, atol=1e-3 if dtype == F32 else 1e-9)
    bare = lanczos(A, k=5, tol=tol, max_iter=150, check_every=150, reorth="none")
    assert not ghost_free(bare.eigenvalues.numpy(), truth, 10 * tol)


def test_both_ends():
    d = outliers_and_bulk(20_000, F64, seed=3)
    d[:2] = torch.tensor([-3.0, -2.0], dtype=F64)                    # two outliers below the bulk too
    truth = np.sort(d.numpy())
    top, bot = extreme_eigenpairs(Diag(d), k_top=3, k_bottom=2, tol=1e-10, max_iter=300, reorth="partial")
    assert top.reorth == bot.reorth == "partial"
    assert np.allclose(top.eigenvalues.numpy(), truth[-3:], rtol=1e-8, atol=0)
    assert np.allclose(bot.eigenvalues.numpy(), truth[:2], rtol=0, atol=1e-6)


def test_omega_recurrence_matches_exact_inner_products():
    """β_j ω_{l,j+1} from the recurrence (with ν = 0) equals q_lᵀ q_{j+1} of a basis built without any
    reorthogonalisation, up to the rounding of one step, while the loss itself grows from 1e-6 to O(1)."""
    d = outliers_and_bulk(20_000, F32)
    m = 50
    V = torch.zeros(m + 1, d.numel(), dtype=F32)
    q = torch.randn(d.numel(), generator=torch.Generator().manual_seed(0), dtype=F32)
    V[0] = q / q.norm()
    al, be = np.zeros(m), np.zeros(m)
    for j in range(m):
        w = d * V[j]
        a = torch.dot(V[j], w)
        w -= a * V[j]
        if j > 0:
            w -= be[j - 1] * V[j - 1]
        be[j], al[j] = float(w.norm()), float(a)
        V[j + 1] = w / be[j]
    omega = (V.double() @ V.double().T).numpy()
    P = PartialOrthogonalizer(m + 1, F32)
    P.alpha[:m], P.beta[:m] = al, be
    losses = []
    for j in range(5, m - 1):
        P.cur, P.prev = omega[:j + 1, j].copy(), omega[:j, j - 1].copy()
        est = P._omega(j, al[j], be[j])
        true = omega[:j + 1, j + 1]
        assert np.abs(est[:j] - true[:j]).max() <= 1e-6, j
        losses.append(np.abs(true[:j]).max())
    assert losses[0] < 1e-4 and max(losses) > 0.1


def test_auto_choice(monkeypatch):
    assert resolve_reorth("auto", 10 ** 7, backend="cpu") == "partial"
    assert resolve_reorth("auto", 10 ** 7, backend="cuda") == "partial"
    assert resolve_reorth("auto", 10 ** 6, backend="cpu") == "full"  # small problems: unchanged
    assert resolve_reorth("auto", 10 ** 7, fits=False, backend="cpu") == "full"
    assert resolve_reorth("auto", 10 ** 7, sharded=True, backend="cpu") == "full"
    assert resolve_reorth("auto", 10 ** 7, backend="python") == "full"  # float32 GEMV passes too coarse
    assert resolve_reorth("full", 10 ** 7) == "full"
    d = outliers_and_bulk(20_000, F64, seed=3)
    a = lanczos(Diag(d), k=3, tol=1e-8)
    f = lanczos(Diag(d), k=3, tol=1e-8, reorth="full")
    assert a.reorth == "full" and a.reorth_passes == -1
    assert torch.equal(a.eigenvalues, f.eigenvalues) and a.num_matvecs == f.num_matvecs
    monkeypatch.setattr(hl, "PARTIAL_MIN_N", 1000)                   # dispatch as above 10⁶
    monkeypatch.setattr(hl, "BACKEND", "cpu")                        # as with the compiled kernels
    p = lanczos(Diag(d), k=3, tol=1e-8)
    assert p.reorth == "partial"
    assert p.max_basis == hl.PARTIAL_DIM_FACTOR * hl.krylov_dim_for_extremes(20_000, 3)
    torch.testing.assert_close(p.eigenvalues, f.eigenvalues, rtol=1e-9, atol=0)
    bounded = lanczos(Diag(d), k=3, tol=1e-8, max_basis=40)          # a bound below its basis: full, restarts
    assert bounded.reorth == "full"
    with pytest.raises(ValueError, match="reorth='partial' needs the whole Krylov basis"):
        lanczos(Diag(d), k=3, max_basis=40, reorth="partial")


@pytest.mark.parametrize("bad", ["selective", 1, None])
def test_bad_reorth_is_refused(bad):
    with pytest.raises(ValueError, match="reorth"):
        lanczos(torch.eye(5, dtype=F64), k=1, reorth=bad)
