"""Block Lanczos with thick restart (issue 20, ``hessext.block_lanczos``) against ground truth.

Dense float64/float32 matrices with known spectra (clustered and repeated eigenvalues: a block of b vectors
finds multiplicities up to b), a diagonal operator of n = 10⁵ with clustered outliers (ghost test), rank-
deficient operators (deflation and exhaustion), and a tiny model's HessianOperator against its dense float64
Hessian. Every reported residual is compared with the true residual ``‖A y − θ y‖``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _spectra import Diag, outliers_and_clusters, wanted, with_spectrum
from torch import nn

import hessext.block_lanczos as B
from hessext.block_lanczos import block_lanczos, orthonormalize_block, project_out
from hessext.hvp import HessianOperator
from hessext.lanczos import lanczos

F64, F32 = torch.float64, torch.float32


def true_residuals(A: torch.Tensor, res) -> torch.Tensor:
    Y = res.eigenvectors
    return torch.linalg.vector_norm(A @ Y.T - Y.T * res.eigenvalues.to(Y.dtype), dim=0).double()


@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
@pytest.mark.parametrize("b,M", [(4, 26), (2, 14)])
def test_restarted_pairs_equal_dense_truth(which, b, M):
    """Both ends, magnitude, top and bottom with thick restarts: the eigenvalues of the dense truth, residual
    estimates equal to the true residuals, orthonormal basis and Ritz vectors."""
    truth = outliers_and_clusters()
    if which in ("SA", "BE"):                  # give the bottom end outliers too (a bulk edge is slow)
        truth = np.concatenate([[-4.0, -3.6, -3.3], truth[3:]])
    A = with_spectrum(truth)
    res = block_lanczos(A, k=6, which=which, block_size=b, max_basis=M, tol=1e-10, max_iter=3000)
    assert res.converged and res.restarts >= 1 and res.max_basis == M
    assert res.iterations > M and res.num_matvecs == res.iterations
    np.testing.assert_allclose(res.eigenvalues.numpy(), wanted(truth, which, 6), rtol=0, atol=1e-8)
    tr = true_residuals(A, res)
    assert torch.allclose(tr, res.residuals, rtol=1e-2, atol=1e-11), (tr, res.residuals)
    assert res.orthogonality_loss < 1e-12


@pytest.mark.parametrize("b", [3, 4])
def test_repeated_eigenvalues_up_to_block_size(b):
    """A triple top eigenvalue and a double one below: a block of b ≥ 3 finds every copy (a single-vector
    Krylov space sees one copy of each)."""
    truth = np.concatenate([np.linspace(0.0, 1.0, 194), [2.0, 2.0, 3.0, 4.0, 4.0, 4.0]])
    A = with_spectrum(truth, seed=2)
    res = block_lanczos(A, k=6, block_size=b, max_basis=30, tol=1e-10, max_iter=3000)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues.numpy(), [2, 2, 3, 4, 4, 4], rtol=0, atol=1e-9)
    assert torch.allclose(true_residuals(A, res), res.residuals, rtol=1e-2, atol=1e-10)
    Y = res.eigenvectors
    assert float((Y @ Y.T - torch.eye(6, dtype=F64)).abs().max()) < 1e-10


def test_float32_clustered():
    truth = outliers_and_clusters(200)
    A = with_spectrum(truth, seed=1, dtype=F32)
    res = block_lanczos(A, k=5, block_size=4, max_basis=24, tol=1e-5, max_iter=2000)
    assert res.converged and res.restarts >= 1 and res.eigenvectors.dtype == F32
    np.testing.assert_allclose(res.eigenvalues.numpy(), np.sort(truth)[-5:], rtol=2e-5)
    tr = true_residuals(A, res)
    assert bool(torch.all(tr <= 3 * res.residuals + 1e-5 * 5.0)), (tr, res.residuals)
    assert res.orthogonality_loss < 1e-5


@pytest.mark.parametrize("dtype,tol,rtol", [(F64, 1e-10, 1e-9), (F32, 1e-5, 2e-5)])
def test_diagonal_1e5_no_ghosts(dtype, tol, rtol):
    """n = 10⁵ with clustered outliers, restarted: exactly the top 10, each once (no spurious copy of a
    converged value), true residuals within the reported ones."""
    g = np.random.default_rng(0)
    n = 100_000
    top = [10.5, 10.5 + 1e-3, 11.0, 11.0 + 2e-3]
    d = np.concatenate([g.uniform(0, 1, n - 20), np.linspace(2, 10, 16), top])
    D = torch.tensor(g.permutation(d), dtype=dtype)
    res = block_lanczos(Diag(D), k=10, block_size=4, max_basis=34, tol=tol, max_iter=3000)
    assert res.converged and res.restarts >= 1
    got = res.eigenvalues.numpy()
    np.testing.assert_allclose(got, np.sort(d)[-10:], rtol=rtol)
    assert np.all(np.diff(got) > 0.5e-3)               # distinct: no ghost
    Y = res.eigenvectors
    tr = torch.linalg.vector_norm(D[:, None] * Y.T - Y.T * res.eigenvalues.to(dtype), dim=0).double()
    scale = 11.0 * (1e-12 if dtype == F64 else 2e-6)
    assert bool(torch.all(tr <= 1.5 * res.residuals + scale)), (tr, res.residuals)


def test_agrees_with_lanczos_on_hessian_and_model_untouched():
    """A tiny model's HessianOperator (float64): both ends equal the dense Hessian's eigenvalues, true
    residuals equal the estimates, and the model's parameters and .grad are untouched."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    X, y = torch.randn(20, 6, dtype=F64), torch.randint(0, 3, (20,))
    before = [p.detach().clone() for p in model.parameters()]
    H = HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
    dense = torch.linalg.eigvalsh(H.to_dense()).numpy()
    res = block_lanczos(H, k=4, which="BE", block_size=2, max_basis=12, tol=1e-10, max_iter=2000)
    assert res.converged and res.restarts >= 1
    np.testing.assert_allclose(res.eigenvalues.numpy(), wanted(dense, "BE", 4), rtol=0, atol=1e-8)
    t = block_lanczos(H, k=4, which="BE", block_size=2, max_basis=12, tol=1e-10, max_iter=2000,
                      compute_residuals=True)
    assert t.residual_kind == "true" and t.num_matvecs == res.num_matvecs + 4
    assert torch.allclose(t.residuals, res.residuals, rtol=1e-2, atol=1e-11)
    ref = lanczos(H, k=4, which="BE", tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues.numpy(), ref.eigenvalues.numpy(), rtol=0, atol=1e-8)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_low_rank_deflation_and_exhaustion():
    """Rank 3 (a breakdown in the first blocks): the zero eigenvalues are found through fresh directions; a
    space smaller than the basis is exhausted and every value is exact."""
    g = torch.Generator().manual_seed(3)
    U = torch.linalg.qr(torch.randn(60, 3, dtype=F64, generator=g))[0]
    A = (U * torch.tensor([3.0, 2.0, 1.0], dtype=F64)) @ U.T
    res = block_lanczos(A, k=5, block_size=4, tol=1e-10)
    assert res.converged and res.breakdown
    np.testing.assert_allclose(res.eigenvalues.numpy(), [0, 0, 1, 2, 3], rtol=0, atol=1e-10)
    assert torch.allclose(true_residuals(A, res), res.residuals, rtol=1e-2, atol=1e-10)
    truth = np.arange(1.0, 13.0)
    small = with_spectrum(truth, seed=4)
    r = block_lanczos(small, k=12, which="SA", block_size=5, tol=1e-12)
    assert r.converged
    np.testing.assert_allclose(r.eigenvalues.numpy(), truth, rtol=0, atol=1e-10)
    assert float(true_residuals(small, r).max()) < 1e-10


def test_orthonormalize_block_rank_revealing():
    """Dependent and nearly dependent rows: the result is orthonormal, orthogonal to V, and reproduces W
    (``W = Cv V + Fᵀ Z``) up to the dropped directions only."""
    g = torch.Generator().manual_seed(5)
    n = 500
    V = torch.linalg.qr(torch.randn(n, 7, dtype=F64, generator=g))[0].T.contiguous()
    base = torch.randn(3, n, dtype=F64, generator=g)
    W = torch.cat([base, base[:1] + 1e-9 * torch.randn(1, n, dtype=F64, generator=g),
                   base[1:2] * 2 + V[0] * 5.0, torch.randn(1, n, dtype=F64, generator=g) * 1e-7])
    W0 = W.clone()
    out = torch.empty(6, n, dtype=F64)
    d, F, Cv, info = orthonormalize_block(W, V, out, drop_abs=1e-12, fill=6, seed=0, offset=0)
    Z = out[:d]
    assert d == 6 and info["dropped"] == 1 and info["fresh"] >= 1
    assert float((Z @ Z.T - torch.eye(d, dtype=F64)).abs().max()) < 1e-13
    assert float((Z @ V.T).abs().max()) < 1e-13
    rebuilt = torch.from_numpy(Cv) @ V + torch.from_numpy(F).T @ Z
    assert float((rebuilt - W0).abs().max()) < 1e-11
    X = torch.randn(2, n, dtype=F64, generator=g)
    C = project_out(X, V)
    assert C.shape == (2, 7) and float((X @ V.T).abs().max()) < 1e-12


def test_seeded_runs_identical_and_budget():
    A = with_spectrum(outliers_and_clusters())
    a = block_lanczos(A, k=4, block_size=3, max_basis=16, tol=1e-9, max_iter=2000)
    b = block_lanczos(A, k=4, block_size=3, max_basis=16, tol=1e-9, max_iter=2000)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    c = block_lanczos(A, k=4, block_size=3, max_basis=16, tol=1e-14, max_iter=30)
    assert not c.converged and c.num_matvecs <= 30
    d = block_lanczos(A, k=4, tol=1e-9, return_vectors=False)
    assert d.eigenvectors is None and d.max_basis == B.default_block_basis(4, B.default_block_size(4))


@pytest.mark.parametrize("kw,err", [(dict(k=0), ValueError), (dict(k=301), ValueError),
                                    (dict(which="XX"), ValueError), (dict(block_size=0), ValueError),
                                    (dict(block_size=2.0), TypeError), (dict(max_basis=5), ValueError),
                                    (dict(max_iter=2), ValueError), (dict(tol=-1.0), ValueError),
                                    (dict(return_vectors=1), TypeError)])
def test_argument_errors_name_the_argument(kw, err):
    A = with_spectrum(outliers_and_clusters())
    args = dict(k=4, block_size=3)
    args.update(kw)
    name = next(iter(kw))
    with pytest.raises(err, match=name):
        block_lanczos(A, **args)


def test_non_finite_operator_raises():
    A = with_spectrum(outliers_and_clusters(50))
    A[3, 3] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        block_lanczos(A, k=2)
