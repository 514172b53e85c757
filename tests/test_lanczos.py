"""Lanczos with full reorthogonalisation: dense matrices with known spectra, then tiny-model Hessians."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from _models import (  # noqa: E402
    cnn_batch,
    dense_hessian,
    mlp_batch,
    tiny_cnn,
    tiny_mlp,
    tiny_transformer,
    transformer_batch,
    transformer_loss,
)
from torch import nn

from hessext.lanczos import eigsh, extreme_eigenpairs, lanczos  # noqa: E402
from hessext.linop import DenseOperator, LinearOperator  # noqa: E402
from hessext.results import EigenResult  # noqa: E402

F64, F32 = torch.float64, torch.float32


def with_spectrum(evals, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    """Q diag(evals) Qᵀ with a random orthogonal Q."""
    evals = torch.as_tensor(np.asarray(evals, dtype=np.float64))
    n = evals.numel()
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return ((Q * evals) @ Q.T).to(dtype)


def spread_spectrum(n: int = 120) -> np.ndarray:
    """Indefinite: a bulk in [-1, 1] and separated outliers on both sides."""
    ev = np.concatenate([np.linspace(-1, 1, n - 10), [3, 4, 5, 6, 7], [-2, -3, -4, -5, -6]])
    return np.sort(ev)


def check_pairs(A: torch.Tensor, res: EigenResult, expected: np.ndarray, rtol: float) -> None:
    got = res.eigenvalues.numpy()
    assert got.shape == expected.shape
    assert np.all(np.diff(got) >= 0), "eigenvalues must be ascending"
    scale = np.maximum(np.abs(expected), 1e-30)
    assert np.all(np.abs(got - expected) <= rtol * scale), f"{got} vs {expected}"
    V = res.eigenvectors
    assert V is not None and V.shape == (len(expected), A.shape[0])
    A64, V64 = A.to(F64), V.to(F64)
    lam = torch.from_numpy(got)
    true_res = torch.linalg.vector_norm(A64 @ V64.T - V64.T * lam, dim=0)
    norm_A = float(torch.linalg.matrix_norm(A64, ord=2))
    # returned vectors are eigenvectors to the requested accuracy, and the reported residuals match
    assert float(true_res.max()) <= 10 * rtol * norm_A, true_res
    assert torch.allclose(res.residuals, true_res, rtol=0, atol=10 * rtol * norm_A)
    assert res.orthogonality_loss < (1e-12 if A.dtype == F64 else 1e-4)


@pytest.mark.parametrize("dtype,rtol", [(F64, 1e-8), (F32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("which", ["LA", "SA", "LM", "BE"])
def test_dense_known_spectrum(which, dtype, rtol):
    ev = spread_spectrum()
    A = with_spectrum(ev, dtype=dtype)
    tol = 1e-10 if dtype == F64 else 1e-6
    res = lanczos(A, k=5, which=which, tol=tol)
    expected = {"LA": ev[-5:], "SA": ev[:5], "LM": np.sort(ev[np.argsort(np.abs(ev))[-5:]]),
                "BE": np.concatenate([ev[:2], ev[-3:]])}[which]
    assert res.converged and not res.breakdown and res.which == which
    assert res.iterations < A.shape[0] and res.num_matvecs >= res.iterations
    check_pairs(A, res, expected, rtol)


def test_true_residuals_option_and_operator_input():
    ev = spread_spectrum()
    op = DenseOperator(with_spectrum(ev))
    est = lanczos(op, k=3, tol=1e-10)
    true = lanczos(op, k=3, tol=1e-10, compute_residuals=True)
    assert est.residual_kind == "estimate" and true.residual_kind == "true"
    assert true.num_matvecs == est.num_matvecs + 3
    assert float(true.residuals.max()) < 1e-8 * 7
    assert "eigenvectors" not in est.to_dict()
    assert len(json.loads(json.dumps(est.to_dict(include_vectors=True)))["eigenvectors"]) == 3
    assert est.max == pytest.approx(7.0, rel=1e-10) and est.min == pytest.approx(5.0, rel=1e-10)
    assert est.top(2).tolist() == pytest.approx([7.0, 6.0], rel=1e-10)
    assert eigsh is lanczos


def test_extreme_eigenpairs_one_krylov_space():
    ev = spread_spectrum()
    A = with_spectrum(ev)
    top, bottom = extreme_eigenpairs(A, k_top=4, k_bottom=3, tol=1e-10)
    assert top.which == "LA" and bottom.which == "SA"
    assert top.num_matvecs == bottom.num_matvecs  # one shared run
    check_pairs(A, top, ev[-4:], 1e-8)
    check_pairs(A, bottom, ev[:3], 1e-8)
    both = lanczos(A, k=7, which="BE", tol=1e-10)
    assert both.eigenvalues.numpy() == pytest.approx(np.concatenate([ev[:3], ev[-4:]]), rel=1e-8)


def test_exact_when_krylov_space_is_whole_space():
    ev = np.random.default_rng(3).standard_normal(30)
    A = with_spectrum(ev)
    res = lanczos(A, k=30, which="LA", max_iter=30)
    assert res.converged and res.iterations == 30
    assert res.eigenvalues.numpy() == pytest.approx(np.sort(ev), abs=1e-12)


def test_breakdown_low_rank_restarts_into_null_space():
    n = 80
    ev = np.zeros(n)
    ev[:3] = [1.0, 2.0, 3.0]
    A = with_spectrum(ev)
    res = lanczos(A, k=5, which="LA", tol=1e-10)
    assert res.breakdown and res.converged
    # the Krylov space of one start vector is 4-dimensional; the 5th pair needs a restart into the null space
    assert res.iterations >= 5 and res.iterations < 10
    assert res.eigenvalues.numpy() == pytest.approx([0, 0, 1, 2, 3], abs=1e-12)
    V = res.eigenvectors
    assert float(torch.linalg.vector_norm(A @ V.T - V.T * res.eigenvalues, dim=0).max()) < 1e-10
    bottom = lanczos(A, k=3, which="SA", tol=1e-10)
    assert bottom.converged and bottom.eigenvalues.numpy() == pytest.approx([0, 0, 0], abs=1e-12)


def test_breakdown_finds_repeated_eigenvalues():
    # three distinct values: every Krylov space breaks down after 3 steps; the multiplicities need restarts
    ev = np.array([5.0] * 3 + [2.0] * 10 + [-1.0] * 27)
    A = with_spectrum(ev, seed=1)
    res = lanczos(A, k=4, which="LA", tol=1e-10)
    assert res.breakdown and res.converged
    assert res.eigenvalues.numpy() == pytest.approx([2, 5, 5, 5], abs=1e-10)
    be = lanczos(A, k=4, which="BE", tol=1e-10)
    assert be.eigenvalues.numpy() == pytest.approx([-1, -1, 5, 5], abs=1e-10)
    # zero and identity operators: immediate exact breakdowns, no NaN
    z = lanczos(torch.zeros(10, 10, dtype=F64), k=2)
    assert z.converged and z.eigenvalues.tolist() == [0.0, 0.0]
    e = lanczos(torch.eye(10, dtype=F64), k=3)
    assert e.converged and e.eigenvalues.numpy() == pytest.approx([1, 1, 1], abs=1e-14)


def test_not_converged_at_max_iter_and_check_schedule():
    ev = np.linspace(0, 1, 300) ** 3          # clustered top: slow convergence
    A = with_spectrum(ev)
    res = lanczos(A, k=3, tol=1e-12, max_iter=12)
    assert not res.converged and res.iterations == 12 and res.num_matvecs == 12
    a = lanczos(A, k=1, tol=1e-8, check_every=1)
    b = lanczos(A, k=1, tol=1e-8)
    assert a.converged and b.converged
    assert a.num_matvecs <= b.num_matvecs <= a.num_matvecs + 10
    assert a.eigenvalues.item() == pytest.approx(1.0, rel=1e-7)


def test_seeded_start_and_v0():
    A = with_spectrum(spread_spectrum())
    r1, r2 = lanczos(A, k=2, seed=5), lanczos(A, k=2, seed=5)
    assert torch.equal(r1.eigenvalues, r2.eigenvalues) and r1.num_matvecs == r2.num_matvecs
    v0 = torch.ones(A.shape[0], dtype=F64)
    r3 = lanczos(A, k=2, v0=v0)
    assert r3.eigenvalues.numpy() == pytest.approx([6, 7], rel=1e-8)


def test_nan_operator_raises():
    A = with_spectrum(spread_spectrum())
    A[3, 5] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        lanczos(A, k=1)


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 0}, "k must be >= 1"), ({"k": 11}, "k must be <= n = 10"),
    ({"which": "XX"}, "which must be one of"), ({"tol": 0.0}, "tol must be"), ({"tol": -1e-3}, "tol must be"),
    ({"max_iter": 0}, "max_iter must be >= 1"),
    ({"k": 3, "max_iter": 2}, "max_iter must be >= k"), ({"check_every": 0}, "check_every must be >= 1"),
    ({"v0": torch.zeros(10, dtype=F64)}, "v0 must be finite and non-zero"),
    ({"v0": torch.ones(9, dtype=F64)}, r"v0 must have shape \[10\]"),
])
def test_bad_arguments(kwargs, match):
    A = with_spectrum(np.arange(10.0))
    with pytest.raises(ValueError, match=match):
        lanczos(A, **kwargs)


def test_bad_types():
    A = with_spectrum(np.arange(10.0))
    with pytest.raises(TypeError):
        lanczos(A, k=1.5)
    with pytest.raises(TypeError):
        lanczos("not an operator", k=1)
    with pytest.raises(ValueError, match="k_top"):
        extreme_eigenpairs(A, k_top=0, k_bottom=0)


# ---------------------------------------------------------------------------------------------- tiny models
def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


MODELS = {
    "mlp": (tiny_mlp, mlp_batch, mse),
    "cnn": (tiny_cnn, cnn_batch, nn.CrossEntropyLoss()),
    "transformer": (tiny_transformer, transformer_batch, transformer_loss),
}
_CACHE: dict = {}


def model_case(name: str):
    if name not in _CACHE:
        make_model, make_batch, loss = MODELS[name]
        model, batch = make_model(), make_batch()
        _CACHE[name] = (model, batch, loss, dense_hessian(model, loss, [batch]))
    return _CACHE[name]


@pytest.mark.parametrize("name", list(MODELS))
def test_tiny_model_hessian_operator(name):
    from hessext.hvp import HessianOperator

    model, batch, loss, H = model_case(name)
    ev = torch.linalg.eigvalsh(H).numpy()
    op = HessianOperator(model, loss, batch, dtype=F64)
    top, bottom = extreme_eigenpairs(op, k_top=5, k_bottom=5, tol=1e-10, max_iter=H.shape[0])
    assert top.converged and bottom.converged
    check_pairs(H, top, ev[-5:], 1e-8)
    check_pairs(H, bottom, ev[:5], 1e-8)
    assert op.num_matvecs == top.num_matvecs


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_tiny_model_dense_float32(name):
    _, _, _, H = model_case(name)
    ev = torch.linalg.eigvalsh(H).numpy()
    res = lanczos(H.float(), k=5, which="LA", tol=1e-6, max_iter=H.shape[0])
    assert res.converged
    check_pairs(H.float(), res, ev[-5:], 1e-4)


def test_host_synchronisations_only_at_convergence_tests(monkeypatch):
    import hessext.lanczos as L

    calls = []
    real = L.eigh_tridiagonal

    def counting(d, e, *args, **kwargs):
        calls.append(len(d))
        return real(d, e, *args, **kwargs)

    monkeypatch.setattr(L, "eigh_tridiagonal", counting)
    A = with_spectrum(np.linspace(0, 1, 200) ** 2)
    res = lanczos(A, k=2, tol=1e-8)
    # default schedule on the CPU: first test at max(k + 5, 8) = 8 vectors, then after every step
    assert calls == list(range(8, res.iterations + 1))
    # on an accelerator every max(3, min(10, j // 10)) steps (a test is a host synchronisation there)
    cuda = torch.device("cuda")
    assert [L._check_every_interval(j, cuda) for j in (8, 39, 40, 100, 500)] == [3, 3, 4, 10, 10]
    assert L._check_every_interval(500, torch.device("cpu")) == 1
    calls.clear()
    res = lanczos(A, k=2, tol=1e-8, check_every=7, max_iter=40)
    assert calls == list(range(7, res.iterations, 7)) + [res.iterations]


@pytest.mark.parametrize("dtype,tol", [(F32, 1e-6), (F64, 1e-13)])
def test_selective_reorthogonalisation_second_pass_only_when_needed(monkeypatch, dtype, tol):
    """DGKS (CPU): one Gram–Schmidt pass when it keeps most of w, a second when it removed more than half of
    its energy; either way w' is orthogonal to the basis, the returned norm is ‖w'‖ and α is w's component
    along q_j."""
    import hessext.ops as O
    import hessext.recurrence as R

    passes = []
    real = O.reorthogonalize

    def counting(w, basis, p=2):
        passes.append(p)
        return real(w, basis, p)

    monkeypatch.setattr(O, "reorthogonalize", counting)
    g = torch.Generator().manual_seed(3)
    n, j = 400, 6
    Q, _ = torch.linalg.qr(torch.randn(n, j + 1, generator=g, dtype=F64))
    Vc = Q.T.contiguous().to(dtype)
    beta_prev = torch.tensor(0.3, dtype=dtype)
    fresh = torch.randn(n, generator=g, dtype=F64).to(dtype)
    fresh -= Vc.T @ (Vc @ fresh)
    for along, expected in ((1e-3, [1]), (1e3, [1, 1])):   # small / dominant component along old rows
        w = fresh + along * (Vc[:3].T @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype)) + 0.7 * Vc[j]
        w += beta_prev * Vc[j - 1]
        passes.clear()
        w_out, a, nrm = R._orthogonalize_selective(w.clone(), Vc, j, beta_prev)
        assert passes == expected
        assert float((Vc @ w_out).abs().max()) <= tol * float(w.norm())
        assert float(nrm) == pytest.approx(float(w_out.norm()), rel=1e-5)
        assert float(a) == pytest.approx(0.7, abs=tol * float(w.norm()))   # α to rounding of ‖w‖


def test_selective_and_cgs2_lanczos_agree(monkeypatch):
    """The CPU's selective reorthogonalisation and unconditional CGS2 (the accelerator path) give the same
    Ritz values and keep the basis orthogonal to working precision."""
    import hessext.recurrence as R

    assert R._selective_reorth(torch.device("cpu")) and not R._selective_reorth(torch.device("cuda"))
    A = with_spectrum(np.concatenate([np.linspace(-1, 1, 150), [3.0, 3.01, 5.0]]), dtype=F64)
    out = {}
    for sel in (True, False):
        monkeypatch.setattr(R, "_selective_reorth", lambda device, s=sel: s)
        out[sel] = lanczos(A, k=4, which="BE", tol=1e-10, max_iter=120)
        assert out[sel].orthogonality_loss < 1e-12
    np.testing.assert_allclose(out[True].eigenvalues.numpy(), out[False].eigenvalues.numpy(), rtol=1e-11)


# ---------------------------------------------------------------------------------------------- edge cases
def test_zero_rayleigh_quotient_at_the_first_test_is_not_a_converged_pair():
    """A first test after one step with α_0 = q_0ᵀAq_0 = 0 and β_0 = 1 has Ritz value 0 with residual 1:
    not converged (the √ε‖T‖ floor is 0 there, since ‖T_1‖ = 0). Lanczos continues and finds the top
    eigenvalue."""
    A = torch.zeros(6, 6, dtype=F64)
    A[0, 1] = A[1, 0] = 1.0
    A[2, 2] = 0.5
    v0 = torch.zeros(6, dtype=F64)
    v0[0] = 1.0
    res = lanczos(A, k=1, v0=v0, check_every=1)
    assert res.converged and res.eigenvalues.tolist() == pytest.approx([1.0], abs=1e-14)
    assert float(torch.linalg.vector_norm(A @ res.eigenvectors[0] - res.eigenvectors[0])) < 1e-14


def test_tol_warning_points_at_the_caller():
    A = with_spectrum(spread_spectrum(), dtype=F32)
    with pytest.warns(UserWarning, match="below what float32 arithmetic can verify") as rec:
        lanczos(A, k=1, tol=1e-12, max_iter=20)
    assert [w.filename for w in rec] == [__file__]


def test_descending_pairs_for_the_facades():
    ev = spread_spectrum()
    A = with_spectrum(ev)
    res = lanczos(A, k=4, which="BE", tol=1e-10)
    vals, vecs = res.descending()
    order = torch.argsort(res.eigenvalues, descending=True)
    assert torch.equal(vals, res.eigenvalues[order]) and torch.equal(vecs, res.eigenvectors[order])
    assert vals.numpy() == pytest.approx(np.sort(np.r_[ev[:2], ev[-2:]])[::-1], rel=1e-10)
    # row i is still the eigenvector of value i
    assert float(torch.linalg.vector_norm(A @ vecs.T - vecs.T * vals, dim=0).max()) < 1e-8
    assert torch.equal(res.top(), vals) and torch.equal(res.top(2), vals[:2])
    assert lanczos(A, k=2, return_vectors=False).descending()[1] is None


def test_lanczos_chains_satisfy_the_lanczos_relation():
    """The public step routine (shared with SLQ): for each of p chains, Q_m orthonormal and
    A Q_mᵀ = Q_mᵀ T_m + β_{m−1} q_m e_mᵀ, with T_m = tridiag(β, α, β) from the chain's buffers."""
    from hessext.lanczos import LanczosChains

    ev = spread_spectrum()
    A = with_spectrum(ev)
    n, p, m = A.shape[0], 3, 15
    chains = LanczosChains.allocate(p, m + 1, n, F64, torch.device("cpu"))
    assert LanczosChains.nbytes(p, m + 1, n, F64) == chains.V.numel() * 8
    Z = torch.randn(p, n, generator=torch.Generator().manual_seed(0), dtype=F64)
    chains.V[:, 0] = Z / torch.linalg.vector_norm(Z, dim=1, keepdim=True)
    chains.advance(DenseOperator(A), 0, m, btol=1e-10)
    assert not bool(chains.flags.any())
    for c in range(p):
        Q = chains.V[c]                                              # [m + 1, n]: q_0 … q_m
        a, b = chains.alpha[c, :m], chains.beta[c, :m]
        T = torch.diag(a) + torch.diag(b[:m - 1], 1) + torch.diag(b[:m - 1], -1)
        assert float((Q @ Q.T - torch.eye(m + 1, dtype=F64)).abs().max()) < 1e-13
        rel = A @ Q[:m].T - Q[:m].T @ T
        rel[:, m - 1] -= b[m - 1] * Q[m]
        assert float(rel.abs().max()) < 1e-12 * 7
        assert float(chains.tnorm[c]) >= float(torch.linalg.eigvalsh(T).abs().max())


# ---------------------------------------------------------------------------------------------- memory
class NeverMultiplies(LinearOperator):
    """A huge operator that must never be multiplied (nor its basis allocated)."""

    def __init__(self, n: int = 10 ** 8) -> None:
        super().__init__(n, torch.float32)

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the operator was multiplied")


def _no_allocation(monkeypatch) -> None:
    import hessext.lanczos as L

    def refuse(cls, *args, **kwargs):
        raise AssertionError("the Lanczos basis was allocated")
    monkeypatch.setattr(L.LanczosChains, "allocate", classmethod(refuse))


@pytest.mark.parametrize("call", ["lanczos", "extreme_eigenpairs"])
def test_basis_that_cannot_fit_is_refused_before_allocating(monkeypatch, call):
    """Not even k + 3 vectors fit in half of the (pretended) memory: a clear error, nothing allocated."""
    import hessext._memory as L

    _no_allocation(monkeypatch)
    op = NeverMultiplies()
    n = op.n
    monkeypatch.setattr(L, "available_memory", lambda device: 6 * n * 4)   # half: 3 vectors of float32
    with pytest.raises(ValueError) as info:
        if call == "lanczos":
            lanczos(op, k=2, max_iter=10 ** 9)
        else:
            extreme_eigenpairs(op, k_top=1, k_bottom=1, max_iter=10 ** 9)
    msg = str(info.value)
    for part in ("k=2", f"n={n}", "at least 5 vectors", "half of the memory available on cpu", "smaller k",
                 "max_basis"):
        assert part in msg, (part, msg)
    with pytest.raises(ValueError, match=r"max_basis=50 with k=2, n=100000000: .*needs .*max_basis <= 5"):
        lanczos(op, k=2, max_basis=50)                  # an explicit bound must fit in all of the memory
    assert op.num_matvecs == 0


def test_max_iter_beyond_memory_restarts_within_half_of_it(monkeypatch):
    """The basis bound comes from half of the available memory; beyond it the run thick-restarts and still
    finds the dense truth (it used to refuse)."""
    import hessext._memory as L

    ev = spread_spectrum()
    A = with_spectrum(ev)
    row = A.shape[0] * 8                                                  # bytes of one basis row
    monkeypatch.setattr(L, "available_memory", lambda device: 40 * row)  # half: 20 rows -> bound 19
    for kw in ({"max_iter": 100}, {}):
        res = lanczos(A, k=3, tol=1e-10, **kw)
        assert res.max_basis == 19 and res.restarts >= 1 and res.converged
        check_pairs(A, res, ev[-3:], 1e-8)
    monkeypatch.setattr(L, "available_memory", lambda device: 8 * row)   # half: 4 rows < k + 3
    with pytest.raises(ValueError, match="needs at least 6 vectors"):
        lanczos(A, k=3)
    monkeypatch.setattr(L, "available_memory", lambda device: None)     # unknown: unbounded, no restart
    res = lanczos(A, k=3, max_iter=39, tol=1e-10)
    assert res.converged and res.restarts == 0 and res.max_basis == 39


def test_available_memory_and_format_bytes():
    from hessext.lanczos import available_memory, format_bytes

    avail = available_memory("cpu")
    assert isinstance(avail, int) and avail > 0
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
        assert avail <= total
    assert available_memory("meta") is None
    assert format_bytes(10) == "10 B" and format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024 ** 3) == "3.0 GiB" and format_bytes(2 * 1024 ** 6) == "2048.0 PiB"


def test_available_memory_on_cuda_counts_the_allocator_cache(monkeypatch):
    """CUDA: free device memory plus what torch's caching allocator holds reserved but unused (mocked: this
    runs without a GPU)."""
    from hessext.lanczos import available_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 5000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 300)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 100)
    assert available_memory("cuda:0") == 1000 + 300 - 100
