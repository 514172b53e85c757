"""Lanczos with full reorthogonalisation: extreme eigenpairs of a symmetric operator.

For a symmetric ``A ∈ R^{n×n}`` and a unit start vector ``q_0``, step ``j`` computes ``w = A q_j``, removes
its components along **all** previous basis vectors (:func:`hessext.ops.reorthogonalize`: CGS2 on
accelerators; on the CPU the three-term recurrence, one Gram–Schmidt pass and a second only when the DGKS test
asks for it, see :func:`hessext.recurrence._orthogonalize_selective`), and sets

    α_j = q_jᵀ A q_j,     β_j = ‖w − Σ_{i≤j} (q_iᵀ w) q_i‖,     q_{j+1} = (that vector) / β_j,

so that ``Q_mᵀ A Q_m = T_m = tridiag(β, α, β)`` to roundoff. The Ritz pairs of ``A`` are
``(θ_i, y_i = Q_mᵀ s_i)`` for ``T_m s_i = θ_i s_i``, with residual

    ‖A y_i − θ_i y_i‖ = |β_m · s_{m,i}|          (exact in exact arithmetic; the "Lanczos estimate").

Full reorthogonalisation keeps ``Q_m`` orthonormal to working precision, so there are no spurious
("ghost") copies of converged Ritz values, and the estimate stays valid (Parlett, *The Symmetric
Eigenvalue Problem*, 1998, ch. 13; Golub & Van Loan, *Matrix Computations*, 4th ed., §10.1).

Design (see ``docs/internals.md``): the basis is preallocated as ``[max_iter + 1, n]`` rows (``basis[:j]``
is a view) after checking that it fits in the device's memory (:func:`require_memory`); α and β stay in
device buffers; on accelerators the host synchronises only at convergence tests, where the small tridiagonal
is copied over and solved with ``scipy.linalg.eigh_tridiagonal`` (on the CPU, where a synchronisation is
free, also once per step for the DGKS test). The step recurrence lives in :class:`LanczosChains`, shared
with stochastic Lanczos quadrature (:mod:`hessext.density`, p chains at once).

Orthogonalisation choice (``reorth=``, issue 20): ``"full"`` as above; ``"partial"`` (Simon's partial
reorthogonalisation, :class:`hessext.reorth.PartialOrthogonalizer`): the three-term recurrence, the loss of
orthogonality estimated by the ω-recurrence (measured at checkpoints), and a full pass of this step and the
next only when it nears the semi-orthogonality level — which keeps the Ritz values as accurate as full
reorthogonalisation; it does not restart (its dropped pass components, ~η‖A‖, would break the arrowhead
relation of a thick restart). ``"none"``: the bare recurrence, for tests. ``"auto"`` picks ``"partial"``
above ``PARTIAL_MIN_N`` unknowns when its whole (larger, unrestarted) basis fits in the memory bound,
``"full"`` otherwise (:func:`resolve_reorth`, measured by ``benchmarks/bench_lanczos_scale.py``).

Public names other modules use: :func:`lanczos` / :data:`eigsh`, :func:`extreme_eigenpairs`,
:class:`LanczosChains`, :class:`PartialOrthogonalizer`, :func:`resolve_reorth`,
:func:`krylov_dim_for_extremes` (= :func:`default_max_iter`),
:func:`available_memory`, :func:`require_memory`, :func:`format_bytes`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from scipy.linalg import eigh, eigh_tridiagonal
from torch import Tensor

from ._backend import BACKEND
from ._checks import check_int, check_seed, check_tol, converged, work_dtype
from ._memory import available_memory, format_bytes, require_memory
from .linop import LinearOperator, as_operator, holds_session
from .recurrence import LanczosChains
from .reorth import PartialOrthogonalizer
from .restart import (
    RESTART_BUDGET_FACTOR,
    basis_bound,
    compress_basis,
    fast_basis_bound,
    keep_count,
    projected_matrix,
)
from .results import EigenResult

__all__ = ["lanczos", "eigsh", "extreme_eigenpairs", "default_max_iter", "krylov_dim_for_extremes",
           "LanczosChains", "PartialOrthogonalizer", "resolve_reorth", "fast_basis_bound",
           "available_memory", "require_memory", "format_bytes"]

WHICH = ("LA", "SA", "LM", "BE")
REORTH = ("auto", "full", "partial", "none")
_GRAM_FLOP_BUDGET = 4e9      # full basis Gram matrix for the orthogonality measure when j²n is below this


# ----------------------------------------------------------------------------------------------- policies
#: Relative residuals below this many machine epsilons of the working dtype are rounding noise: a matvec
#: carries errors of order ε‖A‖, so a smaller ``tol`` can be "met" by the Lanczos estimate without meaning it.
TOL_EPS_FLOOR = 4.0


def _warn_tol_beyond_precision(tol: float, dtype: torch.dtype, stacklevel: int) -> None:
    """Warn when ``tol`` asks for more than ``dtype`` can verify, and say how to compute in float64."""
    eps = float(torch.finfo(dtype).eps)
    if tol >= TOL_EPS_FLOOR * eps:
        return
    how = ("compute in float64 instead: HessianOperator(..., dtype=torch.float64), float64=True in "
           "min_max_hessian_eigs / hessian_trace, or HessianConfig(dtype=torch.float64)"
           if dtype != torch.float64 else "no wider dtype is available; use tol >= "
           f"{TOL_EPS_FLOOR * eps:.1e}")
    warnings.warn(f"tol={tol:g} is below what {str(dtype).replace('torch.', '')} arithmetic can verify "
                  f"(relative residuals under {TOL_EPS_FLOOR:g}·eps = {TOL_EPS_FLOOR * eps:.1e} are rounding "
                  f"noise, so 'converged' would not mean what it says); {how}", UserWarning,
                  stacklevel=stacklevel + 1)


def krylov_dim_for_extremes(n: int, k: int) -> int:
    """The engine's default Krylov dimension for ``k`` extreme eigenpairs: ``min(n, max(4k, 2k + 60))``
    (62 for k = 1, 80 for k = 10).

    Why this size: with full reorthogonalisation the extreme Ritz values of neural-network Hessians (a few
    outliers above a bulk) converge to ``tol ≈ 1e-6`` within a few tens of steps; ``2k + 60`` leaves room for
    the k wanted pairs plus ~60 steps to resolve them, ``4k`` for large k. It caps the memory of one run at
    ``(m + 1)·n`` values. (API B's legacy functions use a more generous cap of their own, chosen for their
    contract; see :mod:`hessext.analysis`.)
    """
    return min(n, max(4 * k, 2 * k + 60))


#: The public name of :func:`krylov_dim_for_extremes` (the engine's ``max_iter`` default).
default_max_iter = krylov_dim_for_extremes


def _check_every_interval(j: int, device: torch.device) -> int:
    """Default spacing of convergence tests once the basis holds j vectors.

    On the CPU a test (copy of α, β and ``eigh_tridiagonal`` of a j × j tridiagonal: ~50 µs at j = 100) costs
    far less than one product, and there is no device to synchronise with: test after every step, so no
    product is spent past convergence. On an accelerator each test is a host synchronisation that stalls
    the queue: ``max(3, min(10, j // 10))`` steps apart (at most ~10 % extra products past convergence)."""
    if device.type == "cpu":
        return 1
    return max(3, min(10, j // 10))


def _tnorm_host(a: np.ndarray, b: np.ndarray) -> float:
    """``max_i |α_i| + |β_i| + |β_{i−1}|`` of the tridiagonal with diagonal a [j], off-diagonal b [j−1]."""
    if a.size == 0:
        return 0.0
    bb = np.abs(np.concatenate([[0.0], b, [0.0]]))
    return float(np.max(np.abs(a) + bb[:-1] + bb[1:]))


@dataclass
class _Want:
    """Which Ritz values are wanted: ``k`` largest in magnitude (``lm``) or ``kb`` bottom + ``kt`` top."""

    kb: int
    kt: int
    lm: bool = False

    @property
    def k(self) -> int:
        return self.kb + self.kt

    def select(self, theta: np.ndarray) -> np.ndarray:
        """Indices (ascending in θ) of the wanted values among ascending ``theta``."""
        j = theta.size
        if self.lm:
            idx = np.argsort(np.abs(theta), kind="stable")[max(0, j - self.k):]
            return np.sort(idx)
        kb = min(self.kb, j)
        kt = min(self.kt, j - kb)
        return np.concatenate([np.arange(kb), np.arange(j - kt, j)]).astype(int)

    def improves(self, mu: np.ndarray, theta: np.ndarray, margin_rel: float, margin_abs: float) -> bool:
        """Would another copy of some value in ``mu`` change the wanted values of ``theta``?"""
        if mu.size == 0:
            return False
        j = theta.size
        if j < self.k:
            return True
        if self.lm:
            ref = np.sort(np.abs(theta))[j - self.k]
            return bool(np.any(np.abs(mu) > ref + max(margin_rel * ref, margin_abs)))
        out = False
        if self.kt > 0:
            ref = theta[j - self.kt]
            out |= bool(np.any(mu > ref + max(margin_rel * abs(ref), margin_abs)))
        if self.kb > 0:
            ref = theta[self.kb - 1]
            out |= bool(np.any(mu < ref - max(margin_rel * abs(ref), margin_abs)))
        return out

    def widen(self, size: int) -> "_Want":
        """The same choice with ``size ≥ k`` values: the wanted ones and their neighbours on the same side(s)
        (both ends in proportion to ``kb : kt``); what a thick restart keeps."""
        if self.lm:
            return _Want(0, size, lm=True)
        if self.kt == 0:
            return _Want(size, 0)
        if self.kb == 0:
            return _Want(0, size)
        kb = max(self.kb, min(size - self.kt, int(round(size * self.kb / self.k))))
        return _Want(kb, size - kb)

    def extremes(self, mu: np.ndarray) -> np.ndarray:
        """Indices of the block's own extreme values on the wanted side(s)."""
        if self.lm or (self.kb > 0 and self.kt > 0):
            return np.unique(np.array([0, mu.size - 1]))
        return np.array([mu.size - 1]) if self.kt > 0 else np.array([0])


# ----------------------------------------------------------------------------------------------- one run
@dataclass
class _Run:
    """What one Lanczos run hands to the public functions (the wanted pairs, ascending)."""

    vals: Tensor            # [k'] float64 CPU ascending
    vecs: Optional[Tensor]  # [k', n]
    res: Tensor             # [k'] float64 CPU
    conv: np.ndarray        # [k'] bool: the pair passes _checks.converged
    ok: bool                # no unresolved multiplicity question and not cut short by exhaustion
    exhausted: bool         # the Krylov basis spans the whole space (all pairs exact)
    iterations: int
    num_matvecs: int
    breakdown: bool
    ortho: float
    residual_kind: str
    restarts: int = 0       # thick restarts (the basis bound was reached)
    max_basis: int = 0      # the bound on the basis (vectors)
    reorth: str = "full"    # the orthogonalisation the run ended with
    passes: int = -1        # full Gram–Schmidt passes of a partial run (-1: every step, full mode)


@dataclass
class _Krylov:
    """The state of one run between convergence tests: the device buffers, the basis size ``j`` and the host's
    latest solution of ``T_j`` (Ritz values θ, eigenvectors S, Lanczos residual estimates, ‖T‖)."""

    op: LinearOperator
    want: _Want
    chains: LanczosChains
    m: int                      # basis rows cap (the bound M; = the Krylov dimension when never restarted)
    budget: int                 # cap on the Lanczos steps kept over all thick restarts
    tol: float
    seed: int
    start_matvecs: int
    pbar: Any = None
    guard: Optional[PartialOrthogonalizer] = None
    j: int = 0                  # basis size (steps kept)
    block_start: int = 0        # first row of the current Krylov block (rows before it: earlier restarts)
    restarts: int = 0
    retired: int = 0            # steps folded into kept Ritz vectors by thick restarts
    nkeep: int = 0              # rows 0 … nkeep−1 are kept Ritz vectors (the arrowhead's diagonal)
    arrow: np.ndarray = field(default_factory=lambda: np.zeros(0))   # their coupling to row nkeep
    thick_restarts: int = 0
    beta_last: float = 0.0      # β_{j−1} of the latest test (signed; the arrow of a thick restart)
    breakdown: bool = False
    exhausted: bool = False     # the basis spans the whole space
    pending: bool = False       # a breakdown left a multiplicity question open
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    S: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    res_all: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tn_host: float = 0.0

    @property
    def dtype(self) -> torch.dtype:
        return self.chains.V.dtype

    @property
    def eps(self) -> float:
        return float(torch.finfo(self.dtype).eps)


#: Above this many unknowns ``reorth="auto"`` uses partial reorthogonalisation (when its basis fits); at and
#: below it runs are today's full reorthogonalisation, bit for bit.
PARTIAL_MIN_N = 1_000_000
#: Krylov dimension of a partial run with ``max_iter=None``: this many times :func:`krylov_dim_for_extremes`
#: (a partial run does not restart, and its steps cost the same at any basis size).
PARTIAL_DIM_FACTOR = 3


def resolve_reorth(reorth: object, n: int, fits: bool = True, sharded: bool = False,
                   backend: Optional[str] = None) -> str:
    """The orthogonalisation of a run over ``n`` unknowns: ``reorth`` itself, or for ``"auto"``: ``"partial"``
    when ``n > PARTIAL_MIN_N``, the operator is not sharded, the whole unrestarted basis of a partial run
    ``fits`` in the memory bound and the compiled kernels are loaded (``backend``, default
    ``hessext.BACKEND``); ``"full"`` otherwise (thick restarts within the bound).

    Measured (``benchmarks/bench_lanczos_scale.py``: float32 tanh-MLP Hessians, batch 16, top-10 to 1e-4,
    2 threads): at n = 1.0M partial reorthogonalisation solves in 2.6 s against 3.1 s, at 6.1M in 15.2 s
    against 15.9 s (14–20 passes instead of one a step; README "Lanczos at scale"). At n ≤ 10⁶ ``"auto"``
    keeps ``"full"``, so small problems are unchanged bit for bit. The pure-Python fallback keeps ``"full"``:
    its float32 passes (library GEMVs, ~1e-5 relative at 10⁵ unknowns on one thread) are too coarse for the
    bookkeeping (measured: the loss grew to 1e-2 and Ritz vectors came out 1e-3 off before the estimates gave
    up), so an explicit ``"partial"`` in float32 there is refused."""
    if not isinstance(reorth, str) or reorth not in REORTH:
        raise ValueError(f"reorth must be one of {REORTH}, got {reorth!r}")
    if reorth != "auto":
        return reorth
    compiled = (BACKEND if backend is None else backend) != "python"
    return "partial" if n > PARTIAL_MIN_N and fits and not sharded and compiled else "full"


def _krylov_dim(n: int, k: int, max_iter: Optional[int]) -> int:
    """The Krylov dimension m of a run: ``max_iter`` (≥ k, capped at n) or :func:`krylov_dim_for_extremes`."""
    if max_iter is None:
        return krylov_dim_for_extremes(n, k)
    m = check_int("max_iter", max_iter, 1)
    if m < k:
        raise ValueError(f"max_iter must be >= k = {k}, got max_iter={max_iter}")
    return min(m, n)


def _start_vector(op: LinearOperator, seed: int, offset: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """``z / √N`` with ``z = rademacher(N, seed=seed, offset=offset)`` over the whole space (``N`` =
    ``op.global_n``; a unit vector; this rank's slice of it for a sharded operator)."""
    return op.rademacher(seed=seed, offset=offset, dtype=dtype, device=device) / math.sqrt(op.global_n)


def _first_vector(op: LinearOperator, v0: Optional[Tensor], n: int, seed: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """``q_0``: the seeded Rademacher start vector, or ``v0 / ‖v0‖`` (validated; ``n`` is the local
    length)."""
    if v0 is None:
        return _start_vector(op, seed, 0, dtype, device)
    if not isinstance(v0, Tensor):
        raise TypeError(f"v0 must be a torch.Tensor of shape [{n}], got {type(v0).__name__}")
    if v0.shape != (n,):
        raise ValueError(f"v0 must have shape [{n}], got {list(v0.shape)}")
    v = v0.detach().to(dtype=dtype, device=device)
    nv = float(op.norm(v))
    if not (nv > 0 and math.isfinite(nv)):
        raise ValueError(f"v0 must be finite and non-zero, got norm {nv}")
    return v / nv


def _synchronise(st: _Krylov) -> tuple[np.ndarray, np.ndarray, bool]:
    """Copy ``α, β`` and the breakdown flags of the ``j`` steps to the host (the run's one synchronisation
    point), refuse NaN/Inf, and cut the basis after the first breakdown of the current block (``β_f := 0``;
    the steps after it are discarded). Returns ``(α [j], β [j], broke)`` for the possibly shorter j."""
    j, ch = st.j, st.chains
    host = torch.stack([ch.alpha[0, :j], ch.beta[0, :j], ch.flags[0, :j].to(st.dtype)])
    host = host.to("cpu", torch.float64)
    a, b, fl = host[0].numpy(), host[1].numpy().copy(), host[2].numpy() > 0.5
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        bad = int(np.flatnonzero(~(np.isfinite(a) & np.isfinite(b)))[0])
        raise RuntimeError(f"lanczos: non-finite value (NaN/Inf) in the tridiagonal at Lanczos step "
                           f"{bad}: the operator returned NaN/Inf (check the model's loss and its "
                           "Hessian-vector products)")
    hits = np.flatnonzero(fl[st.block_start:j])
    broke = hits.size > 0
    if broke:
        f = st.block_start + int(hits[0])
        st.j = j = f + 1
        b[f] = 0.0
        ch.beta[0, f] = 0.0
        st.breakdown = True
        if st.pbar is not None:
            st.pbar.n = st.retired + j
    return a[:j], b[:j], broke


def _test(st: _Krylov, a: np.ndarray, b: np.ndarray, broke: bool) -> str:
    """Solve ``T_j`` and decide: ``"stop"``, ``"restart"`` (after a breakdown that leaves the wanted set
    open: a fresh vector now fills row j) or ``"continue"``.

    Converged means every wanted pair of ``T_j`` passes :func:`hessext._checks.converged` and, after a
    restart, the current block's own extreme values do too (T is block diagonal across restarts, so a
    further copy of a wanted eigenvalue shows first in the last block).
    """
    j, want, tol = st.j, st.want, st.tol
    _solve_projected(st, a, b)
    widx = want.select(st.theta)
    conv_a = j >= want.k and bool(np.all(converged(st.res_all[widx], st.theta[widx], tol, st.tn_host,
                                                          st.dtype)))
    if j >= st.op.global_n:
        st.exhausted, st.pending = True, False
        return "stop"
    if st.block_start > 0 or broke:                   # the last block's own spectrum
        mu, Sb = (eigh_tridiagonal(a[st.block_start:j], b[st.block_start:j - 1]) if st.block_start > 0
                  else (st.theta, st.S))
    if broke:
        st.pending = want.improves(mu, st.theta, tol, 100 * st.eps * st.tn_host)
        if not (st.pending and j < st.m):
            return "stop"
        if not _restart(st.op, st.chains.V, j, st.seed, st.restarts + 1, st.eps):
            st.exhausted, st.pending = True, False
            return "stop"
        if st.guard is not None:                      # the fresh vector is orthogonal to the whole basis
            st.guard.fresh_vector(j)
        st.restarts += 1
        st.block_start = j
        return "restart"
    conv_b = True
    if st.block_start > 0:
        ext = want.extremes(mu)
        rb = np.abs(b[j - 1]) * np.abs(Sb[-1, ext])
        conv_b = bool(np.all(converged(rb, mu[ext], tol, st.tn_host, st.dtype)))
    if conv_a and conv_b:
        st.pending = False
        return "stop"
    if j >= st.m or st.retired + j >= st.budget:
        if st.retired + j < st.budget and st.guard is None and j >= 2:   # the basis is full: restart
            _thick_restart(st)
            return "thick"
        st.pending = st.block_start > 0 and not conv_b
        return "stop"
    return "continue"


def _solve_projected(st: _Krylov, a: np.ndarray, b: np.ndarray) -> None:
    """Ritz values θ, vectors S and Lanczos residual estimates ``|β_{j−1} s_{j−1,i}|`` of the projected
    matrix: the tridiagonal ``T_j`` (``scipy.linalg.eigh_tridiagonal``), or after a thick restart the
    arrowhead-plus-tridiagonal of :func:`hessext.restart.projected_matrix` (dense ``eigh``; j is at most
    the basis bound)."""
    j = st.j
    if st.nkeep == 0:
        st.theta, st.S = eigh_tridiagonal(a, b[:j - 1])
        st.tn_host = _tnorm_host(a, b[:j - 1])
    else:
        st.theta, st.S = eigh(projected_matrix(a, b, st.nkeep, st.arrow))
        st.tn_host = max(_tnorm_host(a[st.nkeep:], b[st.nkeep:j - 1]), float(np.abs(st.theta).max()))
    st.beta_last = float(b[j - 1])
    st.res_all = np.abs(b[j - 1]) * np.abs(st.S[j - 1, :])


def _thick_restart(st: _Krylov) -> None:
    """Keep the wanted Ritz pairs and their neighbours (:func:`hessext.restart.keep_count`), rewrite the basis
    in place as ``[y_0 … y_{l−1}, q_j]`` and the projected matrix as the arrowhead ``diag(θ) + b`` with
    ``b_i = β_{j−1} s_{j−1,i}`` (module docstring of :mod:`hessext.restart`)."""
    j, ch = st.j, st.chains
    idx = st.want.widen(keep_count(st.want.k, st.m, j)).select(st.theta)
    nk = int(idx.size)
    V = ch.V[0]
    S_keep = torch.from_numpy(np.ascontiguousarray(st.S[:, idx])).to(dtype=V.dtype, device=V.device)
    compress_basis(V, S_keep, j)
    V[nk].copy_(V[j])
    st.arrow = st.beta_last * st.S[j - 1, idx]
    ch.alpha[0, :nk] = torch.from_numpy(st.theta[idx].copy()).to(dtype=V.dtype, device=V.device)
    ch.beta[0, :nk] = 0
    ch.flags[0, :nk] = False
    st.retired += j - nk
    st.j, st.nkeep, st.block_start = nk, nk, 0
    st.thick_restarts += 1


def _iterate(st: _Krylov, check_every: Optional[int]) -> None:
    """The step loop: advance to the next convergence test, synchronise, test; restart or stop."""
    k, m, device = st.want.k, st.m, st.chains.V.device
    btol = st.eps ** (2.0 / 3.0)
    next_check = max(k, check_every) if check_every is not None else min(m, max(k + 5, 8))
    while True:
        target = min(max(next_check, st.j + 1), m, st.budget - st.retired)
        st.chains.advance(st.op, st.j, target, btol, st.pbar, guard=st.guard)
        st.j = target
        verdict = _test(st, *_synchronise(st))
        if verdict == "stop":
            return
        if verdict in ("restart", "thick"):
            next_check = st.j + 1
        elif check_every is not None:
            next_check = st.j + check_every
        else:
            next_check = st.j + _check_every_interval(st.j, device)


def _ritz_pairs(st: _Krylov, return_vectors: bool, compute_residuals: bool) -> _Run:
    """The wanted Ritz pairs of the final ``T_j``: values, vectors ``Y = S_wᵀ Q_j`` (one GEMM), residuals
    (the Lanczos estimates, or true ones at the cost of k matvecs) and the convergence of each pair."""
    op, dtype, device = st.op, st.dtype, st.chains.V.device
    widx = st.want.select(st.theta)
    vals = torch.from_numpy(st.theta[widx].copy())
    res = st.res_all[widx]
    if st.exhausted:
        res = np.minimum(res, st.eps * st.tn_host)     # the basis spans the whole space: exact to roundoff
    Vj = st.chains.V[0, :st.j]
    Y = None
    if return_vectors or compute_residuals:
        Sw = torch.from_numpy(np.ascontiguousarray(st.S[:, widx].T)).to(dtype=dtype, device=device)
        Y = Sw @ Vj                                           # [k, n]: one GEMM
    residual_kind = "estimate"
    res_t = torch.from_numpy(np.asarray(res, dtype=np.float64).copy())
    if compute_residuals and Y is not None and Y.shape[0] > 0:
        R = op.matmat(Y.T.contiguous()) - Y.T * vals.to(dtype=dtype, device=device)[None, :]
        res_t = op.norm(R, dim=0).to("cpu", torch.float64)
        residual_kind = "true"
    conv = converged(res_t.numpy(), st.theta[widx], st.tol, st.tn_host, dtype)
    return _Run(vals=vals, vecs=Y if return_vectors else None, res=res_t, conv=conv,
                ok=st.exhausted or not st.pending, exhausted=st.exhausted, iterations=st.retired + st.j,
                num_matvecs=op.num_matvecs - st.start_matvecs, breakdown=st.breakdown,
                ortho=max(_orthogonality_loss(op, Vj, Y), st.guard.measured if st.guard is not None else 0.0),
                residual_kind=residual_kind, restarts=st.thick_restarts, max_basis=st.m,
                reorth=st.guard.mode if st.guard is not None else "full",
                passes=st.guard.passes if st.guard is not None else -1)


def _choose_reorth(op: LinearOperator, reorth: object, k: int, max_iter: Optional[int],
                   max_basis: Optional[int], dtype: torch.dtype, device: torch.device) -> tuple[str, int]:
    """The orthogonalisation (:func:`resolve_reorth`) and Krylov dimension of a run. A partial (or bare)
    run never restarts, so with ``max_iter=None`` it gets ``PARTIAL_DIM_FACTOR`` times the default dimension
    (its steps cost the same at any basis size); ``"auto"`` picks it only where that whole basis fits in the
    bound (half of the available memory, or ``max_basis``)."""
    gn = op.global_n
    m_full = _krylov_dim(gn, k, max_iter)
    if not isinstance(reorth, str) or reorth not in REORTH:
        resolve_reorth(reorth, gn)                            # raises the error naming the choices
    m_part = m_full if max_iter is not None else min(gn, PARTIAL_DIM_FACTOR * m_full)
    if reorth == "partial" and BACKEND == "python" and dtype == torch.float32:
        raise ValueError("reorth='partial' needs the compiled kernels in float32: the pure-Python "
                         "fallback's float32 Gram-Schmidt passes (library GEMVs) are too coarse for its "
                         "estimates of the loss of orthogonality (measured: Ritz vectors 1e-3 off at 10^5 "
                         "unknowns). Use reorth='full' (or 'auto'), compute in float64, or build the "
                         "extension")
    if reorth in ("partial", "none"):
        return reorth, m_part
    fits = False
    if reorth == "auto" and gn > PARTIAL_MIN_N and not op.sharded:
        M, _ = basis_bound(op.n, k, m_part, max_iter, max_basis, dtype, device, fast_cap=False)
        fits = M >= m_part
    mode = resolve_reorth(reorth, gn, fits, op.sharded)
    return mode, (m_part if mode == "partial" else m_full)


def _run(op: LinearOperator, want: _Want, *, max_iter: Optional[int], tol: float, seed: int,
         v0: Optional[Tensor], check_every: Optional[int], return_vectors: bool, progress: bool,
         compute_residuals: bool, reorth: str = "auto", max_basis: Optional[int] = None,
         basis_device: Any = None) -> _Run:
    """One Lanczos run for the public functions: resolve the Krylov dimension and the basis bound
    (:func:`hessext.restart.basis_bound`), allocate the basis, iterate to convergence (:func:`_iterate`,
    thick restarts when the bound is reached), extract the wanted Ritz pairs (:func:`_ritz_pairs`)."""
    n, gn, k = op.n, op.global_n, want.k
    if k > gn:
        raise ValueError(f"k must be <= n = {gn} (the operator size), got k={k}")
    if check_every is not None:
        check_every = check_int("check_every", check_every, 1)
    dtype = work_dtype(op.dtype)
    device = op.device if basis_device is None else torch.device(basis_device)
    _warn_tol_beyond_precision(tol, dtype, stacklevel=4)    # -> _run -> lanczos -> holds_session -> caller
    mode, m = _choose_reorth(op, reorth, k, max_iter, max_basis, dtype, device)
    # (a rank of a sharded operator may hold no element: size its bound as if it held one)
    M, budget = basis_bound(max(n, 1), k, m, max_iter, max_basis, dtype, device, fast_cap=mode == "full")
    if op.sharded:      # every rank must keep the same bound (memory and local sizes differ)
        M = int(op.allreduce_(torch.tensor([float(M)], dtype=torch.float64), "min")[0])
        if M >= m:
            M, budget = m, m
        elif budget == m:
            budget = max_iter if max_iter is not None else RESTART_BUDGET_FACTOR * m
    if mode != "full" and M < m:
        raise ValueError(f"reorth={reorth!r} needs the whole Krylov basis ({m + 1} vectors), but the basis "
                         f"is bounded to {M} vectors (max_basis={max_basis}, or the memory available): use "
                         "reorth='full', which restarts within the bound")
    chains = LanczosChains.allocate(1, M + 1, n, dtype, device,
                                    pin=device.type == "cpu" and op.device.type == "cuda")
    st = _Krylov(op=op, want=want, chains=chains, m=M, budget=budget, tol=tol, seed=seed,
                 start_matvecs=op.num_matvecs)
    if mode != "full":
        st.guard = PartialOrthogonalizer(M + 1, dtype, mode)
    st.chains.V[0, 0] = _first_vector(op, v0, n, seed, dtype, device)
    if progress:
        from tqdm.auto import tqdm  # ~50 ms to import (asyncio): paid only when a bar is shown
        st.pbar = tqdm(total=budget, desc="lanczos", leave=False)
    try:
        _iterate(st, check_every)
    finally:
        if st.pbar is not None:
            st.pbar.close()
    return _ritz_pairs(st, return_vectors, compute_residuals)


def _restart(op: LinearOperator, V: Tensor, j: int, seed: int, r: int, eps: float) -> bool:
    """Put a fresh unit vector orthogonal to ``V[0, :j]`` into ``V[0, j]`` (counter offset ``r·n``, n the
    size of the whole space)."""
    n = op.global_n
    for attempt in range(4):
        z = op.rademacher(seed=seed, offset=(r + attempt * 7919) * n, dtype=V.dtype, device=V.device)
        w, _, nrm = op.reorthogonalize(z, V[0, :j], 2)
        if float(nrm) > math.sqrt(eps) * math.sqrt(n):
            w = w / nrm
            w, _, nrm = op.reorthogonalize(w, V[0, :j], 2)    # once more: the projection removed most of z
            V[0, j] = w / nrm
            return True
    return False


def _orthogonality_loss(op: LinearOperator, Vj: Tensor, Y: Optional[Tensor]) -> float:
    """``max |V Vᵀ − I|`` of the basis when ``j² n ≤ 4e9`` (one GEMM), else of its newest row against all rows
    (where loss of orthogonality shows first); maxed with ``max |Y Yᵀ − I|`` of the Ritz vectors. The Gram
    products are the operator's (local parts all-reduced for sharded vectors; n is the whole space's)."""
    j = Vj.shape[0]
    if j == 0:
        return 0.0
    if j * j * op.global_n <= _GRAM_FLOP_BUDGET:
        G = op.allreduce_(Vj @ Vj.T)
        loss = (G - torch.eye(j, dtype=G.dtype, device=G.device)).abs().max()
    else:
        g = op.allreduce_(Vj @ Vj[-1])
        g[-1] -= 1
        loss = g.abs().max()
    if Y is not None and Y.shape[0] > 0:
        G = op.allreduce_(Y @ Y.T)
        loss = torch.maximum(loss, (G - torch.eye(G.shape[0], dtype=G.dtype, device=G.device)).abs().max())
    return float(loss)


def _parse_which(which: object) -> str:
    if not isinstance(which, str) or which.upper() not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    return which.upper()


# ----------------------------------------------------------------------------------------------- public API
@holds_session
def lanczos(A: "LinearOperator | Tensor", k: int = 1, which: str = "LA", *, max_iter: Optional[int] = None,
            tol: float = 1e-6, seed: int = 0, v0: Optional[Tensor] = None, check_every: Optional[int] = None,
            return_vectors: bool = True, progress: bool = False,
            compute_residuals: bool = False, reorth: str = "auto", max_basis: Optional[int] = None,
            basis_device: "torch.device | str | None" = None) -> EigenResult:
    """``k`` extreme eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Args:
        A: a :class:`~hessext.linop.LinearOperator` or a dense symmetric ``[n, n]`` tensor. Computation is in
            the operator's dtype (float32/float64; others in float32) on its device.
        k: number of eigenpairs, ``1 ≤ k ≤ n``.
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"LM"`` largest magnitude, ``"BE"``
            both ends: ``k // 2`` from the bottom and ``k − k // 2`` from the top, from one Krylov space.
        max_iter: maximum Krylov dimension m = Lanczos steps kept (restarts after a breakdown included);
            default :func:`krylov_dim_for_extremes` ``= min(n, max(4k, 2k + 60))``; values above ``n`` are
            clamped to ``n``; must be ``≥ k``. When the basis is bounded below m (``max_basis``), the cap on
            all steps over the thick restarts: ``max_iter`` as given, or ``10 m`` by default.
        max_basis: bound M on the basis (vectors kept at once; ``(M + 1)·n`` values are allocated). None
            (default): as many as fit in **half** of the memory available on the basis device when the solve
            starts (:func:`available_memory`), at most m — so at small n the run is exactly the unrestarted
            one — and, for ``n > 10⁶``, at most :func:`fast_basis_bound` ``(k) = max(20, 2k + 10)``, where a
            smaller basis is faster (measured there). When the Krylov space outgrows M the run
            thick-restarts (Wu & Simon 2000, :mod:`hessext.restart`): it keeps the wanted Ritz vectors and
            ``(M − k) // 2`` neighbours, and continues with full reorthogonalisation against the
            kept basis; residual estimates stay exact.
            Must be ``≥ min(m, k + 2)``.
        basis_device: where the basis lives (default: the operator's device). ``"cpu"`` with an accelerator's
            operator keeps the basis in page-locked host memory (the device holds the model and the vectors
            of one product); orthogonalisation then runs on the host's kernel.
        tol: relative tolerance: stop when every wanted Ritz pair has
            ``|β_j s_{j,i}| / max(|θ_i|, √ε‖T‖) < tol`` (ε of the working dtype, ‖T‖ the tridiagonal's norm;
            the √ε floor lets eigenvalues that are zero to working precision converge). A ``tol`` below
            ``4ε`` cannot be verified in the working dtype and draws a ``UserWarning`` that says how to
            compute in float64.
        seed: start vector ``q_0 = z / √n`` with ``z = hessext.ops.rademacher(n, seed=seed)`` (counter-based
            ±1, identical on every backend); restarts use the same seed at counter offsets ``r·n``.
        v0: optional start vector ``[n]`` (normalised here) instead of the seeded one.
        check_every: steps between convergence tests. Default (adaptive): the first test when the basis holds
            ``max(k + 5, 8)`` vectors, then after every step on the CPU (a test costs ~50 µs, far less than
            a product), on an accelerator every ``max(3, min(10, j // 10))`` steps at basis size j (every 3
            steps up to j = 39, growing to every 10 from j = 100; at most ~10 % extra matvecs past
            convergence); right after every restart, and always at ``max_iter``. Each test is the only host
            synchronisation: α, β (device buffers) are copied and ``T_j`` is solved with
            ``scipy.linalg.eigh_tridiagonal``.
        return_vectors: compute the Ritz vectors ``Y = S_wᵀ Q_j`` (one GEMM).
        progress: show a tqdm bar.
        compute_residuals: replace the free Lanczos residual estimates by true residuals
            ``‖A y_i − θ_i y_i‖`` at the cost of one block product of k columns (k more matvecs).
        reorth: ``"auto"`` (default): ``"partial"`` above ``PARTIAL_MIN_N = 10⁶`` unknowns when its whole
            basis fits in the bound (half the available memory, or ``max_basis``) and the operator is not
            sharded, ``"full"`` otherwise (:func:`resolve_reorth`). ``"full"``: this docstring's algorithm.
            ``"partial"``: Simon's partial reorthogonalisation
            (:class:`hessext.reorth.PartialOrthogonalizer`):
            the three-term recurrence, the loss of orthogonality estimated by the ω-recurrence with a
            measured rounding term, and a full pass of this step and the next only when the estimate passes
            √ε; the basis stays semi-orthogonal (``orthogonality_loss ≲ √ε``, measured), the Ritz values are
            as accurate as with ``"full"``, and a partial run does not restart: with ``max_iter=None`` its
            Krylov dimension is ``PARTIAL_DIM_FACTOR = 3`` times the default. ``"none"``: the bare
            recurrence (ghost eigenvalues; for tests and demonstrations).

    Breakdown: when ``β_j ≤ ε^{2/3} ‖T‖`` (detected at the next test; the steps after it are discarded) the
    basis spans an invariant subspace and its Ritz values are exact eigenvalues. A random start vector reaches
    one copy of each distinct eigenvalue, so the rest of the space holds only further copies of the values
    found in the last block. If fewer than k values are known, or a further copy of one of them would change
    the wanted set, Lanczos restarts from a fresh Rademacher vector orthogonalised against the basis and keeps
    filling the same basis (valid with full reorthogonalisation; ``T`` becomes block diagonal). This finds
    the null space of low-rank Hessians and exact multiplicities. Without a breakdown a single-vector Krylov
    space sees one copy of each eigenvalue, so multiplicities are then found only as roundoff allows.

    Returns:
        :class:`~hessext.results.EigenResult`: ``min(k, iterations)`` pairs, eigenvalues ascending (float64,
        CPU), Ritz vectors ``[k, n]`` as rows, residual norms (``residual_kind``), ``converged`` (False when
        ``max_iter`` was reached before ``tol``), ``breakdown``, ``orthogonality_loss`` (``max |QQᵀ − I|``
        of the basis by one GEMM when ``j²n ≤ 4·10⁹``, else of its newest row against all rows; maxed with
        that of the Ritz vectors), ``num_matvecs`` (all products, including discarded steps and residuals).

    Raises:
        ValueError: k < 1 or k > n, unknown ``which``, non-positive ``tol``/``max_iter``/``check_every``,
            ``max_iter < k``, bad ``v0``; a basis that does not fit in the device's available memory (the
            message names ``max_iter``, k, n, the bytes needed and available, and what to pass instead; it is
            raised before anything is allocated). TypeError: wrong argument types.
        RuntimeError: the operator produced NaN/Inf.
    """
    op = as_operator(A)
    k = check_int("k", k, 1)
    which = _parse_which(which)
    tol = check_tol(tol)
    seed = check_seed(seed)
    if k > op.global_n:
        raise ValueError(f"k must be <= n = {op.global_n} (the operator size), got k={k}")
    if which == "LM":
        want = _Want(0, k, lm=True)
    elif which == "LA":
        want = _Want(0, k)
    elif which == "SA":
        want = _Want(k, 0)
    else:
        want = _Want(k // 2, k - k // 2)
    r = _run(op, want, max_iter=max_iter, tol=tol, seed=seed, v0=v0, check_every=check_every,
             return_vectors=return_vectors, progress=progress, compute_residuals=compute_residuals,
             reorth=reorth, max_basis=max_basis, basis_device=basis_device)
    ok = bool(r.ok and r.vals.numel() == k and (r.exhausted or np.all(r.conv)))
    return EigenResult(eigenvalues=r.vals, eigenvectors=r.vecs, residuals=r.res, num_matvecs=r.num_matvecs,
                       iterations=r.iterations, converged=ok, breakdown=r.breakdown,
                       orthogonality_loss=r.ortho, which=which, residual_kind=r.residual_kind,
                       restarts=r.restarts, max_basis=r.max_basis, reorth=r.reorth,
                       reorth_passes=r.passes)


eigsh = lanczos


@holds_session
def extreme_eigenpairs(A: "LinearOperator | Tensor", k_top: int = 1, k_bottom: int = 1,
                       **kwargs) -> tuple[EigenResult, EigenResult]:
    """The ``k_top`` largest and ``k_bottom`` smallest eigenpairs from ONE Krylov space.

    Same algorithm and keyword arguments as :func:`lanczos` (``max_iter``, ``tol``, ``seed``, ``v0``,
    ``check_every``, ``return_vectors``, ``progress``, ``compute_residuals``, ``reorth``, ``max_basis``,
    ``basis_device``); the run stops
    when both ends have converged. Both results report the matvecs and iterations of the shared run; each
    has its own ``converged`` flag (its pairs met ``tol``). Either count may be 0 (an empty result), not both.

    Returns:
        ``(top, bottom)``: :class:`~hessext.results.EigenResult` with ``which="LA"`` and ``which="SA"``,
        eigenvalues ascending in each.
    """
    unknown = set(kwargs) - {"max_iter", "tol", "seed", "v0", "check_every", "return_vectors", "progress",
                             "compute_residuals", "reorth", "max_basis", "basis_device"}
    if unknown:
        raise TypeError(f"extreme_eigenpairs got unexpected keyword arguments {sorted(unknown)}")
    op = as_operator(A)
    k_top = check_int("k_top", k_top, 0)
    k_bottom = check_int("k_bottom", k_bottom, 0)
    if k_top + k_bottom < 1:
        raise ValueError(f"k_top + k_bottom must be >= 1, got k_top={k_top}, k_bottom={k_bottom}")
    if k_top + k_bottom > op.global_n:
        raise ValueError(f"k_top + k_bottom must be <= n = {op.global_n}, got {k_top} + {k_bottom}")
    tol = check_tol(kwargs.pop("tol", 1e-6))
    seed = check_seed(kwargs.pop("seed", 0))
    r = _run(op, _Want(k_bottom, k_top), tol=tol, seed=seed, max_iter=kwargs.get("max_iter"),
             v0=kwargs.get("v0"), check_every=kwargs.get("check_every"),
             return_vectors=kwargs.get("return_vectors", True), progress=kwargs.get("progress", False),
             compute_residuals=kwargs.get("compute_residuals", False), reorth=kwargs.get("reorth", "auto"),
             max_basis=kwargs.get("max_basis"), basis_device=kwargs.get("basis_device"))
    kb = min(k_bottom, r.vals.numel())
    parts = []
    for sl, want_k, which in ((slice(kb, None), k_top, "LA"), (slice(0, kb), k_bottom, "SA")):
        vals, res = r.vals[sl], r.res[sl]
        conv = bool(r.ok and vals.numel() == want_k and (r.exhausted or np.all(r.conv[sl])))
        parts.append(EigenResult(eigenvalues=vals, eigenvectors=None if r.vecs is None else r.vecs[sl],
                                 residuals=res, num_matvecs=r.num_matvecs, iterations=r.iterations,
                                 converged=conv, breakdown=r.breakdown, orthogonality_loss=r.ortho,
                                 which=which, residual_kind=r.residual_kind, restarts=r.restarts,
                                 max_basis=r.max_basis, reorth=r.reorth, reorth_passes=r.passes))
    return parts[0], parts[1]
