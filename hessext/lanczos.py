"""Lanczos with full reorthogonalisation: extreme eigenpairs of a symmetric operator.

For a symmetric ``A ∈ R^{n×n}`` and a unit start vector ``q_0``, step ``j`` computes ``w = A q_j``, removes
its components along **all** previous basis vectors (:func:`hessext.ops.reorthogonalize`: CGS2 on
accelerators; on the CPU the three-term recurrence, one Gram–Schmidt pass and a second only when the DGKS test
asks for it, see :func:`_orthogonalize_selective`), and sets

    α_j = q_jᵀ A q_j,     β_j = ‖w − Σ_{i≤j} (q_iᵀ w) q_i‖,     q_{j+1} = (that vector) / β_j,

so that ``Q_mᵀ A Q_m = T_m = tridiag(β, α, β)`` to roundoff. The Ritz pairs of ``A`` are
``(θ_i, y_i = Q_mᵀ s_i)`` for ``T_m s_i = θ_i s_i``, with residual

    ‖A y_i − θ_i y_i‖ = |β_m · s_{m,i}|          (exact in exact arithmetic; the "Lanczos estimate").

Full reorthogonalisation keeps ``Q_m`` orthonormal to working precision, so there are no spurious
("ghost") copies of converged Ritz values, and the estimate stays valid (Parlett, *The Symmetric
Eigenvalue Problem*, 1998, ch. 13; Golub & Van Loan, *Matrix Computations*, 4th ed., §10.1).

Design (see ``docs/internals.md``): the basis is preallocated as ``[max_iter + 1, n]`` rows (``basis[:j]``
is a view); α and β stay in device buffers; on accelerators the host synchronises only at convergence tests,
where the small tridiagonal is copied over and solved with ``scipy.linalg.eigh_tridiagonal`` (on the CPU, where
a synchronisation is free, also once per step for the DGKS test).
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from . import ops
from .linop import LinearOperator, as_operator, holds_session
from .results import EigenResult

__all__ = ["lanczos", "eigsh", "extreme_eigenpairs", "default_max_iter"]

WHICH = ("LA", "SA", "LM", "BE")
_GRAM_FLOP_BUDGET = 4e9      # full basis Gram matrix for the orthogonality measure when j²n is below this


# ----------------------------------------------------------------------------------------------- helpers
def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_tol(tol: object) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a positive float, got {type(tol).__name__} {tol!r}")
    if not (float(tol) > 0 and math.isfinite(float(tol))):
        raise ValueError(f"tol must be a positive finite float, got {tol!r}")
    return float(tol)


def _work_dtype(op: LinearOperator) -> torch.dtype:
    """The dtype the algorithms compute in: the operator's if float32/float64, else float32."""
    if op.dtype in (torch.float32, torch.float64):
        return op.dtype
    if op.dtype.is_complex:
        raise TypeError(f"complex operators are not supported, got dtype {op.dtype}")
    return torch.float32


#: Relative residuals below this many machine epsilons of the working dtype are rounding noise: a matvec
#: carries errors of order ε‖A‖, so a smaller ``tol`` can be "met" by the Lanczos estimate without meaning it.
TOL_EPS_FLOOR = 4.0


def _warn_tol_beyond_precision(tol: float, dtype: torch.dtype) -> None:
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
                  f"noise, so 'converged' would not mean what it says); {how}", UserWarning, stacklevel=4)


def default_max_iter(n: int, k: int) -> int:
    """Default Krylov dimension: ``min(n, max(4k, 2k + 60))`` (62 for k = 1, 80 for k = 10)."""
    return min(n, max(4 * k, 2 * k + 60))


def _start_vector(n: int, seed: int, offset: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``z / √n`` with ``z = rademacher(n, seed=seed, offset=offset)`` (a unit vector)."""
    return ops.rademacher(n, seed=seed, offset=offset, dtype=dtype, device=device) / math.sqrt(n)


def _lanczos_steps(op: LinearOperator, V: Tensor, alpha: Tensor, beta: Tensor, flags: Tensor,
                   tnorm: Tensor, j0: int, j1: int, btol: float, pbar=None) -> None:
    """Advance ``p`` independent Lanczos chains from step ``j0`` to ``j1``.

    On accelerators there is no host synchronisation inside (CGS2 against the whole basis every step); on the
    CPU, where a synchronisation costs nothing, each step reads one norm to decide whether the second
    Gram–Schmidt pass is needed (:func:`_orthogonalize_selective`), which saves a third of the basis traffic.

    Args:
        V: ``[p, rows, n]`` bases; ``V[c, j0]`` holds the current unit vector of chain c.
        alpha, beta: ``[p, rows]`` device buffers for the tridiagonals (``beta[c, j]`` couples j and j+1).
        flags: ``[p, rows]`` bool buffer; ``flags[c, j]`` is set when ``β_j ≤ btol · ‖T‖`` (breakdown).
        tnorm: ``[p]`` running estimate of ``‖T‖ = max_i |α_i| + β_i + β_{i-1}`` per chain.

    One ``op.matmat`` of ``p`` columns per step; the chains' reorthogonalisations are separate kernel calls.
    ``q_{j+1} = w / max(β_j, tiny)``, so an exact breakdown yields a zero vector, never NaN; the caller
    detects flagged steps at its next synchronisation point and discards what follows them.
    """
    p, rows, _ = V.shape
    tiny = torch.finfo(V.dtype).tiny
    zero = torch.zeros((), dtype=V.dtype, device=V.device)
    selective = _selective_reorth(V.device)
    for j in range(j0, j1):
        X = V[:, j, :].T.contiguous()                  # [n, p]
        W = op.matmat(X).T.contiguous()                 # [p, n]
        for c in range(p):
            if selective:
                w_out, a, nrm = _orthogonalize_selective(W[c], V[c], j, beta[c, j - 1] if j > 0 else None)
            else:
                w_out, coeffs, nrm = ops.reorthogonalize(W[c], V[c, :j + 1])
                a = coeffs[j]
            alpha[c, j] = a
            beta[c, j] = nrm
            prev = beta[c, j - 1] if j > 0 else zero
            tn = torch.maximum(tnorm[c], a.abs() + nrm + prev)
            tnorm[c] = tn
            flags[c, j] = nrm <= btol * tn
            if j + 1 < rows:
                torch.div(w_out, nrm.clamp_min(tiny), out=V[c, j + 1])
        if pbar is not None:
            pbar.update(1)


#: DGKS threshold (Daniel, Gragg, Kaufman, Stewart 1976; ARPACK uses 0.717): a second Gram–Schmidt pass is
#: needed only when the first one removed more than 1 − η² of the vector's energy.
DGKS_ETA = 1.0 / math.sqrt(2.0)


def _selective_reorth(device: torch.device) -> bool:
    """Whether Lanczos reorthogonalises selectively (DGKS): on the CPU, where reading a norm on the host costs
    nothing; accelerators keep the unconditional two-pass CGS2, which needs no host synchronisation."""
    return device.type == "cpu"


def _orthogonalize_selective(w: Tensor, Vc: Tensor, j: int, beta_prev: Optional[Tensor]
                             ) -> tuple[Tensor, Tensor, Tensor]:
    """One Lanczos step's orthogonalisation of ``w = A q_j`` (modified in place), with a second pass only when
    needed: returns ``(w', α_j, ‖w'‖)``.

    The three-term recurrence removes the large components first, ``w ← w − α q_j − β_{j−1} q_{j−1}`` with
    ``α = q_jᵀ w``; what is left along the basis is rounding-level, so one classical Gram–Schmidt pass against
    the whole basis (``ops.reorthogonalize(..., passes=1)``: 2 sweeps of the basis instead of CGS2's 3) makes
    ``w'`` orthogonal to working precision, unless the pass removed a large part of it: if
    ``‖w'‖ < η ‖w‖`` (η = 1/√2, the DGKS criterion) a second pass follows, as in ARPACK's ``dsaitr``. The
    returned α includes the pass's own correction along ``q_j``.
    """
    q = Vc[j]
    a = torch.dot(q, w)
    w.addcmul_(q, a, value=-1)
    if beta_prev is not None:
        w.addcmul_(Vc[j - 1], beta_prev, value=-1)
    wn = torch.linalg.vector_norm(w)
    w_out, coeffs, nrm = ops.reorthogonalize(w, Vc[:j + 1], 1)
    if float(nrm) < DGKS_ETA * float(wn):
        w_out, c2, nrm = ops.reorthogonalize(w_out, Vc[:j + 1], 1)
        coeffs = coeffs + c2
    return w_out, a + coeffs[j], nrm


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

    def extremes(self, mu: np.ndarray) -> np.ndarray:
        """Indices of the block's own extreme values on the wanted side(s)."""
        if self.lm or (self.kb > 0 and self.kt > 0):
            return np.unique(np.array([0, mu.size - 1]))
        return np.array([mu.size - 1]) if self.kt > 0 else np.array([0])


@dataclass
class _Run:
    vals: Tensor            # [k'] float64 CPU ascending
    vecs: Optional[Tensor]  # [k', n]
    res: Tensor             # [k'] float64 CPU
    rel: np.ndarray         # relative residuals
    ok: bool                # no unresolved multiplicity question and not cut short by exhaustion
    exhausted: bool         # the Krylov basis spans the whole space (all pairs exact)
    iterations: int
    num_matvecs: int
    breakdown: bool
    ortho: float
    residual_kind: str


def _check_every_interval(j: int, device: torch.device) -> int:
    """Default spacing of convergence tests once the basis holds j vectors.

    On the CPU a test (copy of α, β and ``eigh_tridiagonal`` of a j × j tridiagonal: ~50 µs at j = 100) costs
    far less than one product, and there is no device to synchronise with: test after every step, so no
    product is spent past convergence. On an accelerator each test is a host synchronisation that stalls
    the queue: ``max(3, min(10, j // 10))`` steps apart (at most ~10 % extra products past convergence)."""
    if device.type == "cpu":
        return 1
    return max(3, min(10, j // 10))


def _run(op: LinearOperator, want: _Want, *, max_iter: Optional[int], tol: float, seed: int,
         v0: Optional[Tensor], check_every: Optional[int], return_vectors: bool, progress: bool,
         compute_residuals: bool) -> _Run:
    n = op.n
    k = want.k
    if k > n:
        raise ValueError(f"k must be <= n = {n} (the operator size), got k={k}")
    if max_iter is None:
        m = default_max_iter(n, k)
    else:
        m = _check_int("max_iter", max_iter, 1)
        if m < k:
            raise ValueError(f"max_iter must be >= k = {k}, got max_iter={max_iter}")
        m = min(m, n)
    if check_every is not None:
        check_every = _check_int("check_every", check_every, 1)
    dtype, device = _work_dtype(op), op.device
    eps = float(torch.finfo(dtype).eps)
    _warn_tol_beyond_precision(tol, dtype)
    btol = eps ** (2.0 / 3.0)
    # Eigenvalues below sqrt(eps)·‖T‖ cannot be resolved relative to themselves in this precision (a matvec
    # carries errors of order eps·‖A‖): the relative residual of such a pair is measured against
    # sqrt(eps)·‖T‖ instead, so near-zero eigenvalues (the bottom of a PSD block) converge.
    zfloor = math.sqrt(eps)
    start_matvecs = op.num_matvecs

    V = torch.empty(1, m + 1, n, dtype=dtype, device=device)
    alpha = torch.zeros(1, m + 1, dtype=dtype, device=device)
    beta = torch.zeros(1, m + 1, dtype=dtype, device=device)
    flags = torch.zeros(1, m + 1, dtype=torch.bool, device=device)
    tnorm = torch.zeros(1, dtype=dtype, device=device)

    if v0 is None:
        V[0, 0] = _start_vector(n, seed, 0, dtype, device)
    else:
        if not isinstance(v0, Tensor):
            raise TypeError(f"v0 must be a torch.Tensor of shape [{n}], got {type(v0).__name__}")
        if v0.shape != (n,):
            raise ValueError(f"v0 must have shape [{n}], got {list(v0.shape)}")
        v = v0.detach().to(dtype=dtype, device=device)
        nv = float(torch.linalg.vector_norm(v))
        if not (nv > 0 and math.isfinite(nv)):
            raise ValueError(f"v0 must be finite and non-zero, got norm {nv}")
        V[0, 0] = v / nv

    pbar = None
    if progress:
        from tqdm.auto import tqdm
        pbar = tqdm(total=m, desc="lanczos", leave=False)

    j = 0
    block_start = 0
    restarts = 0
    breakdown_any = False
    exhausted = False
    pending = False                          # a breakdown left a multiplicity question open
    next_check = max(k, check_every) if check_every is not None else min(m, max(k + 5, 8))
    theta = np.zeros(0)
    S = np.zeros((0, 0))
    res_all = np.zeros(0)
    tn_host = 0.0
    try:
        while True:
            target = min(max(next_check, j + 1), m)
            _lanczos_steps(op, V, alpha, beta, flags, tnorm, j, target, btol, pbar)
            j = target
            host = torch.stack([alpha[0, :j], beta[0, :j], flags[0, :j].to(dtype)]).to("cpu", torch.float64)
            a, b, fl = host[0].numpy(), host[1].numpy().copy(), host[2].numpy() > 0.5
            if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
                bad = int(np.flatnonzero(~(np.isfinite(a) & np.isfinite(b)))[0])
                raise RuntimeError(f"lanczos: non-finite value (NaN/Inf) in the tridiagonal at Lanczos step "
                                   f"{bad}: the operator returned NaN/Inf (check the model's loss and its "
                                   "Hessian-vector products)")
            hits = np.flatnonzero(fl[block_start:j])
            broke = hits.size > 0
            if broke:
                f = block_start + int(hits[0])
                j = f + 1
                b[f] = 0.0
                beta[0, f] = 0.0
                breakdown_any = True
                if pbar is not None:
                    pbar.n = j
            a, b = a[:j], b[:j]
            theta, S = eigh_tridiagonal(a, b[:j - 1])
            tn_host = _tnorm_host(a, b[:j - 1])
            res_all = np.abs(b[j - 1]) * np.abs(S[j - 1, :])
            scale = np.maximum(np.abs(theta), zfloor * tn_host)
            rel_all = np.where(scale > 0, res_all / np.where(scale > 0, scale, 1.0), 0.0)
            widx = want.select(theta)
            conv_a = j >= k and bool(np.all(rel_all[widx] < tol))
            if j >= n:
                exhausted = True
                pending = False
                break
            # the last block's own spectrum (T is block diagonal across restarts)
            if block_start > 0 or broke:
                bs = block_start
                mu, Sb = eigh_tridiagonal(a[bs:j], b[bs:j - 1])
            if broke:
                pending = want.improves(mu, theta, tol, 100 * eps * tn_host)
                if pending and j < m:
                    if not _restart(op, V, j, seed, restarts + 1, eps):
                        exhausted = True
                        pending = False
                        break
                    restarts += 1
                    block_start = j
                    next_check = j + 1
                    continue
                break
            conv_b = True
            if block_start > 0:
                rb = np.abs(b[j - 1]) * np.abs(Sb[-1, :])
                ext = want.extremes(mu)
                conv_b = bool(np.all(rb[ext] < tol * np.maximum(np.abs(mu[ext]), zfloor * tn_host)))
            if conv_a and conv_b:
                pending = False
                break
            if j >= m:
                pending = block_start > 0 and not conv_b
                break
            next_check = j + (check_every if check_every is not None else _check_every_interval(j, device))
    finally:
        if pbar is not None:
            pbar.close()

    widx = want.select(theta)
    vals = torch.from_numpy(theta[widx].copy())
    scale = np.maximum(np.abs(theta[widx]), zfloor * tn_host)
    res = res_all[widx]
    if exhausted:
        res = np.minimum(res, eps * tn_host)     # the basis spans the whole space: pairs exact to roundoff
    rel = np.where(scale > 0, res / np.where(scale > 0, scale, 1.0), 0.0)
    Vj = V[0, :j]
    Y = None
    if return_vectors or compute_residuals:
        Sw = torch.from_numpy(np.ascontiguousarray(S[:, widx].T)).to(dtype=dtype, device=device)
        Y = Sw @ Vj                                           # [k, n]: one GEMM
    residual_kind = "estimate"
    res_t = torch.from_numpy(np.asarray(res, dtype=np.float64).copy())
    if compute_residuals and Y is not None and Y.shape[0] > 0:
        R = op.matmat(Y.T.contiguous()) - Y.T * vals.to(dtype=dtype, device=device)[None, :]
        res_t = torch.linalg.vector_norm(R, dim=0).to("cpu", torch.float64)
        rel = (res_t / torch.from_numpy(np.where(scale > 0, scale, 1.0))).numpy()
        residual_kind = "true"
    ortho = _orthogonality_loss(Vj, Y)
    return _Run(vals=vals, vecs=Y if return_vectors else None, res=res_t, rel=rel,
                ok=exhausted or not pending, exhausted=exhausted, iterations=j, num_matvecs=op.num_matvecs - start_matvecs,
                breakdown=breakdown_any, ortho=ortho, residual_kind=residual_kind)


def _restart(op: LinearOperator, V: Tensor, j: int, seed: int, r: int, eps: float) -> bool:
    """Put a fresh unit vector orthogonal to ``V[0, :j]`` into ``V[0, j]`` (counter offset ``r·n``)."""
    n = op.n
    for attempt in range(4):
        z = ops.rademacher(n, seed=seed, offset=(r + attempt * 7919) * n, dtype=V.dtype, device=V.device)
        w, _, nrm = ops.reorthogonalize(z, V[0, :j])
        if float(nrm) > math.sqrt(eps) * math.sqrt(n):
            w = w / nrm
            w, _, nrm = ops.reorthogonalize(w, V[0, :j])      # once more: the projection removed most of z
            V[0, j] = w / nrm
            return True
    return False


def _orthogonality_loss(Vj: Tensor, Y: Optional[Tensor]) -> float:
    """``max |V Vᵀ − I|`` of the basis when ``j² n ≤ 4e9`` (one GEMM), else of its newest row against all rows
    (where loss of orthogonality shows first); maxed with ``max |Y Yᵀ − I|`` of the Ritz vectors."""
    j, n = Vj.shape
    if j == 0:
        return 0.0
    if j * j * n <= _GRAM_FLOP_BUDGET:
        G = Vj @ Vj.T
        loss = (G - torch.eye(j, dtype=G.dtype, device=G.device)).abs().max()
    else:
        g = Vj @ Vj[-1]
        g[-1] -= 1
        loss = g.abs().max()
    if Y is not None and Y.shape[0] > 0:
        G = Y @ Y.T
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
            compute_residuals: bool = False) -> EigenResult:
    """``k`` extreme eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Args:
        A: a :class:`~hessext.linop.LinearOperator` or a dense symmetric ``[n, n]`` tensor. Computation is in
            the operator's dtype (float32/float64; others in float32) on its device.
        k: number of eigenpairs, ``1 ≤ k ≤ n``.
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"LM"`` largest magnitude, ``"BE"``
            both ends: ``k // 2`` from the bottom and ``k − k // 2`` from the top, from one Krylov space.
        max_iter: maximum Krylov dimension = matrix-vector products (restarts after a breakdown included);
            default ``min(n, max(4k, 2k + 60))``; values above ``n`` are clamped to ``n``; must be ``≥ k``.
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
            ``max_iter < k``, bad ``v0``. TypeError: wrong argument types.
        RuntimeError: the operator produced NaN/Inf.
    """
    op = as_operator(A)
    k = _check_int("k", k, 1)
    which = _parse_which(which)
    tol = _check_tol(tol)
    seed = _check_int("seed", seed, -(1 << 63))
    if k > op.n:
        raise ValueError(f"k must be <= n = {op.n} (the operator size), got k={k}")
    if which == "LM":
        want = _Want(0, k, lm=True)
    elif which == "LA":
        want = _Want(0, k)
    elif which == "SA":
        want = _Want(k, 0)
    else:
        want = _Want(k // 2, k - k // 2)
    r = _run(op, want, max_iter=max_iter, tol=tol, seed=seed, v0=v0, check_every=check_every,
             return_vectors=return_vectors, progress=progress, compute_residuals=compute_residuals)
    converged = bool(r.ok and r.vals.numel() == k and (r.exhausted or np.all(r.rel < tol)))
    return EigenResult(eigenvalues=r.vals, eigenvectors=r.vecs, residuals=r.res, num_matvecs=r.num_matvecs,
                       iterations=r.iterations, converged=converged, breakdown=r.breakdown,
                       orthogonality_loss=r.ortho, which=which, residual_kind=r.residual_kind)


eigsh = lanczos


@holds_session
def extreme_eigenpairs(A: "LinearOperator | Tensor", k_top: int = 1, k_bottom: int = 1,
                       **kwargs) -> tuple[EigenResult, EigenResult]:
    """The ``k_top`` largest and ``k_bottom`` smallest eigenpairs from ONE Krylov space.

    Same algorithm and keyword arguments as :func:`lanczos` (``max_iter``, ``tol``, ``seed``, ``v0``,
    ``check_every``, ``return_vectors``, ``progress``, ``compute_residuals``); the run stops when both ends
    have converged. Both results report the matvecs and iterations of the shared run; each has its own
    ``converged`` flag (its pairs met ``tol``). Either count may be 0 (an empty result), not both.

    Returns:
        ``(top, bottom)``: :class:`~hessext.results.EigenResult` with ``which="LA"`` and ``which="SA"``,
        eigenvalues ascending in each.
    """
    unknown = set(kwargs) - {"max_iter", "tol", "seed", "v0", "check_every", "return_vectors", "progress",
                             "compute_residuals"}
    if unknown:
        raise TypeError(f"extreme_eigenpairs got unexpected keyword arguments {sorted(unknown)}")
    op = as_operator(A)
    k_top = _check_int("k_top", k_top, 0)
    k_bottom = _check_int("k_bottom", k_bottom, 0)
    if k_top + k_bottom < 1:
        raise ValueError(f"k_top + k_bottom must be >= 1, got k_top={k_top}, k_bottom={k_bottom}")
    if k_top + k_bottom > op.n:
        raise ValueError(f"k_top + k_bottom must be <= n = {op.n}, got {k_top} + {k_bottom}")
    tol = _check_tol(kwargs.pop("tol", 1e-6))
    seed = _check_int("seed", kwargs.pop("seed", 0), -(1 << 63))
    r = _run(op, _Want(k_bottom, k_top), tol=tol, seed=seed, max_iter=kwargs.get("max_iter"),
             v0=kwargs.get("v0"), check_every=kwargs.get("check_every"),
             return_vectors=kwargs.get("return_vectors", True), progress=kwargs.get("progress", False),
             compute_residuals=kwargs.get("compute_residuals", False))
    kb = min(k_bottom, r.vals.numel())
    parts = []
    for sl, want_k, which in ((slice(kb, None), k_top, "LA"), (slice(0, kb), k_bottom, "SA")):
        vals, res, rel = r.vals[sl], r.res[sl], r.rel[sl]
        conv = bool(r.ok and vals.numel() == want_k and (r.exhausted or np.all(rel < tol)))
        parts.append(EigenResult(eigenvalues=vals, eigenvectors=None if r.vecs is None else r.vecs[sl],
                                 residuals=res, num_matvecs=r.num_matvecs, iterations=r.iterations,
                                 converged=conv, breakdown=r.breakdown, orthogonality_loss=r.ortho,
                                 which=which, residual_kind=r.residual_kind))
    return parts[0], parts[1]
