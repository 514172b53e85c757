"""Stochastic Lanczos quadrature: exact quadrature, normalisation, moments, tiny-model Hessians."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _models import dense_hessian, mlp_batch, tiny_mlp  # noqa: E402

from hessext import ops  # noqa: E402
from hessext.density import slq_quadrature, spectral_density  # noqa: E402
from hessext.linop import LinearOperator  # noqa: E402

F64 = torch.float64


def with_spectrum(evals, seed: int = 0) -> torch.Tensor:
    evals = torch.as_tensor(np.asarray(evals, dtype=np.float64))
    n = evals.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return (Q * evals) @ Q.T


def test_quadrature_exact_when_num_iter_covers_n():
    ev = np.random.default_rng(0).standard_normal(40) * 2
    A = with_spectrum(ev)
    n, p = 40, 3
    nodes, weights, mv = slq_quadrature(A, num_probes=p, num_iter=100, seed=7)   # clamped to n
    assert nodes.shape == (p, n) and weights.shape == (p, n) and mv == p * n
    assert torch.allclose(weights.sum(1), torch.ones(p, dtype=F64), atol=1e-12)
    Z = ops.rademacher(n, p, seed=7, dtype=F64) / np.sqrt(n)
    for c in range(p):
        # nodes are the eigenvalues; Gauss quadrature integrates vᵀ A^k v exactly
        assert np.sort(nodes[c].numpy()) == pytest.approx(np.sort(ev), abs=1e-10)
        v = Z[:, c]
        for k in (1, 2, 3, 5):
            exact = float(v @ torch.linalg.matrix_power(A, k) @ v)
            assert float((weights[c] * nodes[c] ** k).sum()) == pytest.approx(exact, rel=1e-9, abs=1e-11)


def test_gauss_rule_exact_for_low_degree_with_few_nodes():
    A = with_spectrum(np.linspace(-3, 5, 80))
    nodes, weights, _ = slq_quadrature(A, num_probes=2, num_iter=6, seed=1)
    v = ops.rademacher(80, seed=1, dtype=F64) / np.sqrt(80)
    for k in range(0, 12):   # m-point Gauss: exact up to degree 2m − 1 = 11
        exact = float(v @ torch.linalg.matrix_power(A, k) @ v)
        assert float((weights[0] * nodes[0] ** k).sum()) == pytest.approx(exact, rel=1e-9, abs=1e-10)


def test_density_integrates_to_one_and_mean_is_trace_over_n():
    ev = np.r_[np.random.default_rng(1).uniform(-0.5, 1.0, 55), [4.0, 6.0, 9.0, 12.0, 20.0]]
    A = with_spectrum(ev)
    n = ev.size
    d = spectral_density(A, num_probes=6, num_iter=n, seed=2)
    assert float(torch.trapezoid(d.density, d.grid)) == pytest.approx(1.0, abs=1e-12)
    assert torch.all(d.density >= 0)
    # the density's mean equals the quadrature mean (Gaussians are symmetric) ...
    grid_mean = float(torch.trapezoid(d.grid * d.density, d.grid))
    assert grid_mean == pytest.approx(d.mean, rel=1e-6, abs=1e-9)
    # ... which is (1/p) Σ vᵀAv exactly (quadrature exact per probe), an unbiased estimate of tr/n
    Z = ops.rademacher(n, 6, seed=2, dtype=F64)
    assert d.trace_estimate == pytest.approx(float(((A @ Z) * Z).sum(0).mean()), rel=1e-10)
    assert abs(d.trace_estimate - ev.sum()) <= 4 * d.trace_std_error
    assert d.num_matvecs == 6 * n and d.n == n
    assert d.moment(2) == pytest.approx(float(((A @ A @ Z) * Z).sum(0).mean()) / n, rel=1e-9)
    # without broadening artefacts the density peaks near the eigenvalues: the mass above 3 is ≈ 5/60
    mass_hi = float(torch.trapezoid(d.density * (d.grid > 3), d.grid))
    assert mass_hi == pytest.approx(5 / 60, abs=0.06)
    json.dumps(d.to_dict())


def test_user_grid_and_sigma():
    A = with_spectrum(np.linspace(0, 1, 30))
    g = torch.linspace(-1, 2, 2001, dtype=F64)
    d = spectral_density(A, num_probes=2, num_iter=30, sigma=0.05, grid=g)
    assert d.sigma == 0.05 and torch.equal(d.grid, g)
    assert float(torch.trapezoid(d.density, d.grid)) == pytest.approx(1.0, abs=1e-6)


def test_breakdown_truncates_probe():
    A = with_spectrum(np.r_[[1.0, 2.0, 3.0], np.zeros(37)])   # Krylov spaces of dimension 4
    nodes, weights, _ = slq_quadrature(A, num_probes=2, num_iter=20, seed=0)
    for c in range(2):
        assert int((weights[c] > 0).sum()) <= 4
        assert float(weights[c].sum()) == pytest.approx(1.0, abs=1e-12)
        live = nodes[c][weights[c] > 1e-14].numpy()
        assert np.all(np.min(np.abs(live[:, None] - np.array([0, 1, 2, 3.0])[None]), axis=1) < 1e-10)
    d = spectral_density(A, num_probes=2, num_iter=20)
    assert torch.isfinite(d.density).all()


def test_tiny_mlp_hessian_operator():
    from hessext.hvp import HessianOperator

    model, batch = tiny_mlp(), mlp_batch()
    loss = lambda o, y: ((o - y) ** 2).mean()  # noqa: E731
    H = dense_hessian(model, loss, [batch])
    ev = torch.linalg.eigvalsh(H).numpy()
    op = HessianOperator(model, loss, batch, dtype=F64)
    d = spectral_density(op, num_probes=3, num_iter=30, seed=5)
    assert op.num_matvecs == 90 == d.num_matvecs
    # extreme nodes converge to the extreme eigenvalues first
    assert float(d.nodes.max()) == pytest.approx(ev[-1], rel=1e-6)
    assert float(d.nodes.min()) == pytest.approx(ev[0], rel=1e-6)
    dense = spectral_density(H, num_probes=3, num_iter=30, seed=5)
    assert torch.allclose(d.nodes, dense.nodes, atol=1e-8)
    assert torch.allclose(d.weights, dense.weights, atol=1e-8)
    assert float(torch.trapezoid(d.density, d.grid)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"num_probes": 0}, ValueError, "num_probes must be >= 1"),
    ({"num_iter": 0}, ValueError, "num_iter must be >= 1"),
    ({"sigma": 0.0}, ValueError, "sigma must be a positive"),
    ({"num_grid": 1}, ValueError, "num_grid must be >= 2"),
    ({"grid": torch.zeros(2, 2)}, ValueError, "grid must be a non-empty 1-D"),
    ({"num_iter": 2.0}, TypeError, "num_iter must be an int"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        spectral_density(with_spectrum(np.arange(5.0)), **kwargs)


class NeverMultiplies(LinearOperator):
    """A huge operator that must never be multiplied (nor its bases allocated)."""

    def __init__(self, n: int = 10 ** 8) -> None:
        super().__init__(n, torch.float32)

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the operator was multiplied")


@pytest.mark.parametrize("fn", [slq_quadrature, spectral_density])
def test_absurd_num_iter_is_refused_before_allocating(monkeypatch, fn):
    import hessext.lanczos as L

    def refuse(cls, *args, **kwargs):
        raise AssertionError("the Lanczos bases were allocated")
    monkeypatch.setattr(L.LanczosChains, "allocate", classmethod(refuse))
    op = NeverMultiplies()
    n = op.n
    with pytest.raises(ValueError) as info:
        fn(op, num_probes=4, num_iter=10 ** 9)
    msg = str(info.value)
    need = n * n * 4                              # ONE chain of min(num_iter, n) · n float32 values
    for part in ("num_iter=1000000000", "num_probes=4", f"n={n}", f"needs {need:,} bytes",
                 "are available on cpu", "smaller num_iter"):
        assert part in msg, (part, msg)
    assert op.num_matvecs == 0


def test_chains_run_in_groups_within_half_of_the_memory(monkeypatch):
    """Probes whose bases do not fit in half of the memory run in groups: the same probes, the same
    quadrature (to rounding); a num_iter whose single chain does not fit at all is refused, naming it."""
    import hessext._memory as L

    ev = np.linspace(-1.0, 2.0, 50)
    A = with_spectrum(ev)
    whole = slq_quadrature(A, num_probes=3, num_iter=10)
    monkeypatch.setattr(L, "available_memory", lambda device: 2 * 10 * 50 * 8)   # half: 1 basis of 10 rows
    nodes, weights, mv = slq_quadrature(A, num_probes=3, num_iter=10)
    assert mv == 30 and torch.allclose(weights.sum(1), torch.ones(3, dtype=F64), atol=1e-12)
    assert torch.allclose(nodes, whole[0], rtol=0, atol=1e-12)
    assert torch.allclose(weights, whole[1], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"num_iter=30 with num_probes=3, n=50: .*\(at most 20 fits"):
        slq_quadrature(A, num_probes=3, num_iter=30)
    assert float(nodes.max()) <= 2.0 + 1e-12 and float(nodes.min()) >= -1.0 - 1e-12
