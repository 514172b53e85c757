"""Block Lanczos with thick restart in a bounded basis (block Krylov–Schur): extreme eigenpairs of a
symmetric operator with the basis read once per block of ``b`` vectors instead of once per vector (issue 20).

The relation. The basis ``Q`` (``j`` orthonormal rows), the next block ``R`` (``d ≤ b`` orthonormal rows,
orthogonal to ``Q``), the dense projected matrix ``H = Q A Qᵀ`` (``j × j``) and the coupling ``E``
(``d × j``) satisfy

    A Qᵀ = Qᵀ H + Rᵀ E.

One block step multiplies the whole block at once, ``W = (A Rᵀ)ᵀ`` (**one** ``op.matmat`` of width ``d``),
and orthogonalises it by GEMMs (block classical Gram–Schmidt, BCGS):

1. a local pass against the rows ``E`` touches and ``R`` itself: ``C = W Lᵀ``, ``W ← W − C L`` (the large
   components: ``A_R = R A Rᵀ`` and ``E``);
2. a full pass against ``[Q; R]`` (:func:`project_out`: two GEMMs, the basis read twice per block),
   repeated when it removed more energy than it left (the DGKS test of a block, Frobenius norms);
3. a rank-revealing orthonormal basis of what is left, from the eigen-decomposition of its small Gram
   matrix (SVQB, Stathopoulos & Wu 2002), applied twice when the first left the rows measurably
   non-orthonormal (as CholeskyQR2): ``W = Fᵀ Z`` with ``Z`` orthonormal (``d' × n``), ``F`` (``d' × d``).

Then ``A [Q; R]ᵀ = [Q; R]ᵀ H' + Zᵀ E'`` with

    H' = [[H, Eᵀ], [E, A_R]],     E' = [0, F],

so the basis grows by a block and ``Z`` is the next block. The Ritz pairs of ``A`` are
``(θ_i, y_i = [Q; R]ᵀ s_i)`` for ``H' s_i = θ_i s_i`` (dense ``eigh``; ``H'`` is block tridiagonal, with
an arrowhead after restarts), with residual

    ‖A y_i − θ_i y_i‖ = ‖E' s_i‖ = ‖F s_{i, last block}‖          (exact in exact arithmetic).

Thick restart (Wu & Simon 2000 in block form: the block Krylov–Schur restart). When the next block would not
fit in ``max_basis`` rows, keep ``l`` Ritz vectors ``Y = S_lᵀ [Q; R]``
(:func:`hessext.restart.compress_basis`, in place) and the next block ``Z``:
``A Yᵀ = Yᵀ Θ_l + Zᵀ (E' S_l)``, i.e. ``H = diag(θ)``, ``E = E' S_l`` (a dense ``d × l`` arrow), and
continue. The residual estimates stay exact.

Rank deficiency (breakdown / deflation): directions of ``W`` with singular value ``≤ ε^{2/3}‖H‖`` (the
breakdown test of :mod:`hessext.lanczos`) are dropped (an invariant subspace was found in them) and replaced
by fresh Rademacher vectors orthogonalised against the basis (coupling 0), so the block keeps its size;
where no fresh direction is left (the basis spans the space) the block shrinks, and at size 0 the Ritz
values are exact. Directions too small for the Gram matrix to resolve (``σ < ε^{1/4} σ_max``) go through
another Gram–Schmidt round at their own scale first, so a nearly dependent block neither loses
orthogonality nor is truncated.

Why a block, and what it costs: the orthogonalisation is memory-bound (a basis of ``M`` rows of ``n`` values
is read per pass); BCGS reads it about twice per **block** where vector Lanczos reads it two or three times
per vector, and the GEMMs of a block stream it at memory speed. But a block Krylov space of dimension ``j``
holds polynomials of degree ``j / b`` only, so for the same tolerance block Lanczos needs more products
(measured on tanh-MLP Hessians, top-10 to 1e-4, unbounded basis: 1.2× for b = 2, 1.6× for b = 4, 2.2× for
b = 8), and a restarted run needs a basis growing with ``b``. It finds eigenvalues of multiplicity up to
``b`` from the start block, and converges on clusters of up to ``b`` values at the rate of separated ones.
``benchmarks/bench_block_lanczos.py`` measures the trade-off.

Public names: :func:`block_lanczos`, :func:`default_block_size`, :func:`default_block_basis`,
:func:`project_out`, :func:`orthonormalize_block` (the last two are what the benchmark times as
"orthogonalisation").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from scipy.linalg import eigh
from torch import Tensor

from . import ops
from ._checks import check_bool, check_int, check_seed, check_tol, converged, work_dtype
from ._memory import format_bytes, require_memory
from .linop import LinearOperator, as_operator, holds_session
from .restart import compress_basis
from .results import EigenResult

__all__ = ["block_lanczos", "default_block_size", "default_block_basis", "project_out",
           "orthonormalize_block", "WHICH"]

WHICH = ("LA", "SA", "LM", "BE")
#: A direction of a block is normalised in a Gram–Schmidt round only if ``σ ≥ ε^{1/4} σ_max`` of that round:
#: its orthogonality to the basis is then within ``~ε^{3/4}`` and the Gram matrix resolves it; smaller ones
#: go through another round at their own scale.
ACCEPT_EXPONENT = 0.25
#: Directions with ``σ ≤ ε^{2/3} ‖H‖`` are an invariant subspace (deflated), as Lanczos's breakdown test.
DEFLATE_EXPONENT = 2.0 / 3.0
#: Singular values below ``RESOLUTION·√ε·σ_max`` are not resolved by a Gram matrix in working precision.
RESOLUTION = 4.0
#: Gram–Schmidt rounds per block before the remaining directions are taken as they are.
MAX_ROUNDS = 4
#: Step budget (products) with ``max_iter=None``: this many times ``max(4k, 2k + 60)``.
BUDGET_FACTOR = 10
_GRAM_FLOP_BUDGET = 4e9      # full basis Gram matrix for the orthogonality measure when rows²·n is below this


# ----------------------------------------------------------------------------------------------- policies
def default_block_size(k: int) -> int:
    """The default block size for ``k`` wanted eigenpairs: ``min(max(k, 2), 8)``.

    ``b ≥ 2`` so that double eigenvalues are found without a breakdown; ``b ≤ k`` where possible (a block
    wider than the wanted set spends products on unwanted directions); at most 8, where the GEMM sweeps have
    gained most of what they can (measured in ``benchmarks/bench_block_lanczos.py``)."""
    return min(max(k, 2), 8)


def default_block_basis(k: int, b: int) -> int:
    """The default basis bound for ``k`` pairs and block size ``b``: ``k + 10b`` rows.

    A restart cycle adds ``M − l`` vectors, i.e. ``(M − l) / b`` polynomial degrees, and the convergence per
    cycle follows the degree, so the bound grows with ``b``: about five new blocks per cycle past the kept
    ``l ≈ k + 5b`` (measured on tanh-MLP Hessians, top-10: ``k + 6b`` costs 25–45 % more products than an
    unbounded basis, ``k + 10b`` 5–15 %)."""
    return k + 10 * b


def _keep_rows(M: int, k: int, b: int) -> int:
    """Ritz vectors kept at a restart: ``M − b·t`` with ``t = max(1, round((M − k) / 2b))`` new blocks per
    cycle (half of the free rows, in whole blocks; at least one), never fewer than ``k``."""
    t = max(1, int(round((M - k) / (2 * b))))
    return max(k, M - b * t)


# ----------------------------------------------------------------------------------------------- kernels
def project_out(X: Tensor, V: Tensor) -> Tensor:
    """One pass of block classical Gram–Schmidt, in place: ``C = X Vᵀ``, ``X ← X − C V``; returns ``C``.

    ``X: [s, n]`` rows to clean, ``V: [r, n]`` orthonormal rows (r may be 0). Two GEMMs, each reading ``V``
    once: the whole cost of the pass is two sweeps of the basis for all ``s`` rows together."""
    if V.shape[0] == 0 or X.shape[0] == 0:
        return X.new_zeros(X.shape[0], V.shape[0])
    C = torch.mm(X, V.T)
    X.addmm_(C, V, alpha=-1.0)
    return C


def _host(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _eig_desc(G: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (descending) and left vectors of rows whose Gram matrix is ``G`` (float64, host);
    NaN/Inf raise ``RuntimeError`` naming ``what``."""
    if not np.all(np.isfinite(G)):
        raise RuntimeError(f"block_lanczos: non-finite value (NaN/Inf) in {what}: the operator returned "
                           "NaN/Inf (check the model's loss and its Hessian-vector products)")
    lam, U = np.linalg.eigh(0.5 * (G + G.T))
    return np.sqrt(np.maximum(lam[::-1], 0.0)), U[:, ::-1]


def _gram_eig(X: Tensor, what: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_eig_desc` of the small Gram matrix ``X Xᵀ`` of the rows ``X`` (one GEMM)."""
    return _eig_desc(_host(torch.mm(X, X.T)), what)


@dataclass
class _GS:
    """The state of one block orthonormalisation: ``W_in = Cv V + Fᵀ Z + P X`` throughout, with ``Z`` the
    accepted rows (``out[:d]``), ``X`` the rows still to resolve and ``P`` how they map into ``W``."""

    V: Tensor
    out: Tensor
    eps: float
    d: int = 0
    F: list = field(default_factory=list)           # [a, b] blocks of F, one per accepted batch
    Cv: Optional[np.ndarray] = None                 # [b, r]
    passes: int = 0                                 # full passes against V
    dropped: int = 0

    def round(self, X: Tensor, P: np.ndarray, drop_abs: float, last: bool) -> tuple[Tensor, np.ndarray]:
        """One Gram–Schmidt round: project ``X`` against ``V`` and the accepted ``Z`` (a second pass when the
        first removed more energy than it left: ``‖C‖_F² > ‖X'‖_F²``, the DGKS test of a block), normalise
        its well-resolved directions into ``Z``, drop those ``≤ drop_abs``, and return the rest
        (``U_restᵀ X``, ``P U_rest``) for another round."""
        Z = self.out[:self.d]
        for attempt in range(2):
            ch, czh = _host(project_out(X, self.V)), _host(project_out(X, Z))
            self.passes += int(self.V.shape[0] > 0)
            self.Cv += P @ ch
            if self.d:
                self._add_coupling(P @ czh)
            sig, U = _gram_eig(X, "the orthogonalised block")
            if float(np.sum(ch ** 2) + np.sum(czh ** 2)) <= float(np.sum(sig ** 2)):
                break
        smax = float(sig[0]) if sig.size else 0.0
        keep_at = 0.0 if last else self.eps ** ACCEPT_EXPONENT * smax
        acc = (sig > drop_abs) & (sig >= keep_at)
        # a singular value is known from the Gram matrix only down to ~√ε σ_max: smaller ones are dropped
        # only where that resolution is below drop_abs, else resolved at their own scale in the next round
        drop = (sig <= drop_abs) & (last or RESOLUTION * math.sqrt(self.eps) * smax <= drop_abs)
        rest = ~acc & ~drop
        self.dropped += int(np.sum(drop))
        if np.any(acc):
            self._accept(X, U[:, acc], sig[acc], P)
        if not np.any(rest):
            return X[:0], P[:, :0]
        Ur = U[:, rest]
        return torch.mm(_dev(Ur.T, X), X), P @ Ur

    def _add_coupling(self, Fz_t: np.ndarray) -> None:
        """Add ``Fz_tᵀ`` (``[d, b]``) to the coupling rows of the accepted ``Z`` (stored in batches)."""
        o = 0
        for i, Fi in enumerate(self.F):
            a = Fi.shape[0]
            self.F[i] = Fi + Fz_t[:, o:o + a].T
            o += a

    def _accept(self, X: Tensor, U: np.ndarray, sig: np.ndarray, P: np.ndarray) -> None:
        """``Z_new = Σ⁻¹ Uᵀ X`` into ``out[d:d+a]`` (SVQB) with coupling ``Σ Uᵀ Pᵀ``, and once more (as
        CholeskyQR2) when the rows are measurably non-orthonormal: ``max |Z Zᵀ − I| > 8 a ε``."""
        a = sig.size
        Zn = self.out[self.d:self.d + a]
        torch.mm(_dev(U.T / sig[:, None], X), X, out=Zn)
        Fn = sig[:, None] * (P @ U).T
        G = _host(torch.mm(Zn, Zn.T))
        if np.max(np.abs(G - np.eye(a))) > 8 * a * self.eps:
            s2, U2 = _eig_desc(G, "the new block")
            Zn.copy_(torch.mm(_dev(U2.T / s2[:, None], X), Zn))
            Fn = s2[:, None] * (U2.T @ Fn)
        self.F.append(Fn)
        self.d += a


def _dev(M: np.ndarray, like: Tensor) -> Tensor:
    """A small host matrix as a contiguous tensor of ``like``'s dtype and device."""
    return torch.from_numpy(np.ascontiguousarray(M)).to(dtype=like.dtype, device=like.device)


def orthonormalize_block(W: Tensor, V: Tensor, out: Tensor, drop_abs: float, fill: int, seed: int,
                         offset: int) -> tuple[int, np.ndarray, np.ndarray, dict]:
    """A rank-revealing orthonormal basis ``Z = out[:d]`` of the rows of ``W`` orthogonal to ``V``'s rows.

    Returns ``(d, F, Cv, info)`` with ``W = Cv V + Fᵀ Z`` up to the dropped directions (singular values
    ``≤ drop_abs`` each: an invariant subspace), ``F: [d, s]`` and ``Cv: [s, r]`` float64. When fewer than
    ``fill`` rows result, fresh Rademacher rows (counters from ``offset·n`` on) orthogonalised against ``V``
    and ``Z`` fill up to ``fill`` with coupling 0; rows that cannot be found (the space is exhausted) are left
    out. ``W`` is overwritten; ``info`` counts the full passes, dropped directions and fresh rows.
    """
    s, n = W.shape
    eps = float(torch.finfo(W.dtype).eps)
    gs = _GS(V=V, out=out, eps=eps, Cv=np.zeros((s, V.shape[0])))
    X, P = W, np.eye(s)
    for r in range(MAX_ROUNDS):
        if X.shape[0] == 0:
            break
        X, P = gs.round(X, P, drop_abs, last=r == MAX_ROUNDS - 1)
    fresh = 0
    room = n - V.shape[0]
    want = min(fill, room)
    tries = 0
    while gs.d < want and tries < 3:
        m = want - gs.d
        Xf = ops.rademacher(n, m, seed=seed, offset=(offset + fresh) * n, dtype=W.dtype,
                            device=W.device).T.contiguous() / math.sqrt(n)
        fresh += m
        tries += 1
        Pf = np.zeros((s, m))
        for r in range(MAX_ROUNDS):
            if Xf.shape[0] == 0:
                break
            Xf, Pf = gs.round(Xf, Pf, math.sqrt(eps), last=r == MAX_ROUNDS - 1)
    F = np.concatenate(gs.F, axis=0) if gs.F else np.zeros((0, s))
    return gs.d, F, gs.Cv, dict(passes=gs.passes, dropped=gs.dropped, fresh=fresh)


# ----------------------------------------------------------------------------------------------- one run
@dataclass
class _Block:
    """The state of one run between block steps: the basis buffer ``V`` (``[M + b, n]`` rows: ``Q = V[:j]``,
    the next block ``R = V[j:j+d]``), the projected matrix ``H`` (``j × j``) and coupling ``E`` (``d × j``) of
    ``A Qᵀ = Qᵀ H + Rᵀ E`` on the host, and the latest Ritz solution."""

    op: LinearOperator
    k: int
    which: str
    b: int
    M: int
    budget: int
    tol: float
    seed: int
    V: Tensor
    j: int = 0
    d: int = 0
    s0: int = 0                  # first row of Q that E couples to (the previous block, or 0 after a restart)
    H: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    E: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    F: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))   # coupling of the newest block
    tnorm: float = 0.0
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    S: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    res: np.ndarray = field(default_factory=lambda: np.zeros(0))
    steps: int = 0               # basis vectors created (products spent on block steps)
    restarts: int = 0
    fresh: int = 0               # Rademacher rows drawn (counter offsets)
    breakdown: bool = False
    exhausted: bool = False
    start_matvecs: int = 0

    @property
    def eps(self) -> float:
        return float(torch.finfo(self.V.dtype).eps)


def _start(st: _Block) -> None:
    """The first block: ``b`` seeded Rademacher rows (counters ``0 … b·n − 1``), orthonormalised."""
    n = st.op.n
    d, _, _, info = orthonormalize_block(st.V[:0].new_zeros(0, n), st.V[:0], st.V[:st.b], 0.0, st.b,
                                         st.seed, 0)
    st.d, st.fresh = d, info["fresh"]
    st.E = np.zeros((d, 0))


def _step(st: _Block) -> None:
    """One block step: ``W = (A Rᵀ)ᵀ`` (one ``matmat`` of width d), local and full block Gram–Schmidt, the
    next block into ``V[j+d:]``, and ``H ← [[H, Eᵀ], [E, A_R]]``, ``E ← [0, F]`` (module docstring)."""
    j, d, V = st.j, st.d, st.V
    R = V[j:j + d]
    W = st.op.matmat(R.T).T.contiguous()                 # [d, n]: rows, as the basis
    jn = j + d
    Cl = _host(project_out(W, V[st.s0:jn]))              # local pass: A_R and E (the large components)
    drop = st.eps ** DEFLATE_EXPONENT * max(st.tnorm, float(np.abs(Cl).max()) if Cl.size else 0.0)
    dn, F, Cv, info = orthonormalize_block(W, V[:jn], V[jn:jn + st.b], drop, min(st.b, st.op.n - jn),
                                           st.seed, st.fresh)
    st.fresh += info["fresh"]
    st.breakdown |= info["dropped"] > 0
    A_R = Cl[:, -d:] + Cv[:, j:jn]
    A_R = 0.5 * (A_R + A_R.T)
    H = np.zeros((jn, jn))
    H[:j, :j] = st.H
    H[j:, :j] = st.E
    H[:j, j:] = st.E.T
    H[j:, j:] = A_R
    st.tnorm = max(st.tnorm, _norm2(A_R) + _norm2(F) + _norm2(st.E))
    st.H, st.F, st.s0, st.j, st.d = H, F, j, jn, dn
    st.E = np.concatenate([np.zeros((dn, j)), F], axis=1)
    st.steps += d
    st.exhausted = dn == 0


def _norm2(M: np.ndarray) -> float:
    return float(np.linalg.norm(M, 2)) if M.size else 0.0


def _select(theta: np.ndarray, k: int, which: str, size: Optional[int] = None) -> np.ndarray:
    """Indices (ascending in θ) of the ``k`` wanted Ritz values, or of ``size ≥ k`` values around them on
    the same side(s) (what a restart keeps; ``"BE"`` widens both ends in proportion
    ``k // 2 : k − k // 2``)."""
    j = theta.size
    m = min(j, k if size is None else size)
    if which == "LM":
        return np.sort(np.argsort(np.abs(theta), kind="stable")[j - m:])
    kb = {"LA": 0, "SA": k, "BE": k // 2}[which]
    if size is not None and which == "BE" and 0 < kb < k:
        kb = max(kb, min(m - (k - kb), int(round(m * kb / k))))
    elif size is not None and which == "SA":
        kb = m
    kb = min(kb, m)
    kt = m - kb
    return np.concatenate([np.arange(kb), np.arange(j - kt, j)]).astype(int)


def _test(st: _Block) -> str:
    """Ritz pairs of ``H`` (dense ``eigh``) and their residual estimates ``‖F s_{last block}‖``; returns
    ``"stop"`` (converged, budget spent or the space exhausted), ``"restart"`` (the next block does not fit
    in the bound) or ``"continue"``."""
    st.theta, st.S = eigh(st.H)
    last = st.S[st.j - st.F.shape[1]:, :]
    st.res = np.linalg.norm(st.F @ last, axis=0) if st.F.size else np.zeros(st.theta.size)
    scale = max(st.tnorm, float(np.abs(st.theta).max()))
    w = _select(st.theta, st.k, st.which)
    ok = w.size == st.k and bool(np.all(converged(st.res[w], st.theta[w], st.tol, scale, st.V.dtype)))
    if ok or st.exhausted or st.steps + st.d > st.budget:
        return "stop"
    return "restart" if st.j + st.d > st.M else "continue"


def _restart(st: _Block) -> None:
    """Thick restart: ``V[:l] ← S_lᵀ V[:j]`` (the kept Ritz vectors), the next block moved to ``V[l:l+d]``,
    ``H = diag(θ_l)``, ``E = [0, F] S_l`` (module docstring)."""
    keep = min(_keep_rows(st.M, st.k, st.b), st.j - 1)
    idx = _select(st.theta, st.k, st.which, size=keep)
    j, d, V = st.j, st.d, st.V
    Rn = V[j:j + d]
    if idx.size + d > j:                                 # the target rows overlap the block: move via a copy
        Rn = Rn.clone()
    compress_basis(V, _dev(st.S[:, idx], V), j)
    nk = idx.size
    V[nk:nk + d].copy_(Rn)
    st.E = st.E @ st.S[:, idx]
    st.H = np.diag(st.theta[idx])
    st.j, st.s0 = nk, 0
    st.restarts += 1


def _orthogonality_loss(Vj: Tensor, newest: int, Y: Optional[Tensor]) -> float:
    """``max |V Vᵀ − I|`` of the basis rows when ``rows²·n ≤ 4e9`` (one GEMM), else of its ``newest`` rows
    against all rows; maxed with ``max |Y Yᵀ − I|`` of the Ritz vectors."""
    r, n = Vj.shape
    loss = 0.0
    if r:
        B = Vj if r * r * n <= _GRAM_FLOP_BUDGET else Vj[r - max(1, newest):]
        G = Vj @ B.T
        G[r - B.shape[0]:] -= torch.eye(B.shape[0], dtype=G.dtype, device=G.device)
        loss = float(G.abs().max())
    if Y is not None and Y.shape[0]:
        G = Y @ Y.T
        loss = max(loss, float((G - torch.eye(G.shape[0], dtype=G.dtype, device=G.device)).abs().max()))
    return loss


def _result(st: _Block, return_vectors: bool, compute_residuals: bool) -> EigenResult:
    """The wanted Ritz pairs of the final ``H``: values ascending, vectors ``S_wᵀ Q`` (one GEMM), residuals
    (the block estimates, or true ones at the cost of k products), convergence and diagnostics."""
    op, V = st.op, st.V
    w = _select(st.theta, st.k, st.which)
    vals = torch.from_numpy(st.theta[w].copy())
    res = st.res[w]
    scale = max(st.tnorm, float(np.abs(st.theta).max()) if st.theta.size else 0.0)
    if st.exhausted:
        res = np.minimum(res, st.eps * scale)           # the basis spans an invariant subspace: exact
    Q = V[:st.j]
    Y = None
    if return_vectors or compute_residuals:
        Y = _dev(st.S[:, w].T, V) @ Q
    kind = "estimate"
    res_t = torch.from_numpy(np.asarray(res, dtype=np.float64).copy())
    if compute_residuals and Y is not None and Y.shape[0]:
        Rm = op.matmat(Y.T.contiguous()) - Y.T * vals.to(dtype=V.dtype, device=V.device)[None, :]
        res_t = torch.linalg.vector_norm(Rm, dim=0).to("cpu", torch.float64)
        kind = "true"
    conv = converged(res_t.numpy(), st.theta[w], st.tol, scale, V.dtype)
    ok = bool(vals.numel() == st.k and (st.exhausted or np.all(conv)))
    return EigenResult(eigenvalues=vals, eigenvectors=Y if return_vectors else None, residuals=res_t,
                       num_matvecs=op.num_matvecs - st.start_matvecs, iterations=st.steps, converged=ok,
                       breakdown=st.breakdown,
                       orthogonality_loss=_orthogonality_loss(V[:st.j + st.d], st.d, Y), which=st.which,
                       residual_kind=kind, restarts=st.restarts, max_basis=st.M)


def _sizes(n: int, k: int, block_size: Optional[int], max_basis: Optional[int],
           max_iter: Optional[int]) -> tuple[int, int, int]:
    """Block size b, basis bound M and product budget of a run (validated; see :func:`block_lanczos`)."""
    b = default_block_size(k) if block_size is None else check_int("block_size", block_size, 1)
    b = min(b, n)
    if max_basis is None:
        M = default_block_basis(k, b)
    else:
        M = check_int("max_basis", max_basis, 1)
        if M < k + b and M < n:
            raise ValueError(f"max_basis must be >= k + block_size = {k + b} (the wanted pairs and one new "
                             f"block per restart) for k={k}, block_size={b}, n={n}, "
                             f"got max_basis={max_basis}")
    M = min(M, n)
    if max_iter is None:
        budget = BUDGET_FACTOR * max(4 * k, 2 * k + 60)
    else:
        budget = check_int("max_iter", max_iter, 1)
        if budget < k:
            raise ValueError(f"max_iter must be >= k = {k}, got max_iter={max_iter}")
    return b, M, budget


# ----------------------------------------------------------------------------------------------- public API
@holds_session
def block_lanczos(A: "LinearOperator | Tensor", k: int = 1, which: str = "LA", *,
                  block_size: Optional[int] = None, max_basis: Optional[int] = None,
                  max_iter: Optional[int] = None, tol: float = 1e-6, seed: int = 0,
                  return_vectors: bool = True, compute_residuals: bool = False) -> EigenResult:
    """``k`` extreme eigenpairs of a symmetric operator by block Lanczos with thick restart (module doc).

    Args:
        A: a :class:`~hessext.linop.LinearOperator` or a dense symmetric ``[n, n]`` tensor; computation in its
            dtype (float32/float64; others in float32) on its device.
        k: number of eigenpairs, ``1 ≤ k ≤ n``.
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest, ``"LM"`` largest magnitude, ``"BE"`` both ends
            (``k // 2`` from the bottom, ``k − k // 2`` from the top, from one Krylov space).
        block_size: b, vectors per block (one ``matmat`` of width b per step); default
            :func:`default_block_size` ``(k) = min(max(k, 2), 8)``; clamped to n. Eigenvalues of multiplicity
            up to b are found from the start block; larger multiplicities only through deflations.
        max_basis: bound M on the basis rows kept at once (``(M + b)·n`` values are allocated); default
            :func:`default_block_basis` ``(k, b) = k + 10b``; must be ``≥ k + b`` (or ``≥ n``). When the
            next block does not fit the run thick-restarts, keeping ``max(k, M − b·t)`` Ritz vectors,
            ``t = max(1, round((M − k) / 2b))`` (the wanted ones and their neighbours).
        max_iter: cap on the products spent on block steps over all restarts; default
            ``10·max(4k, 2k + 60)``; must be ``≥ k``. The run stops (``converged=False``) before a block
            that would exceed it.
        tol: stop when every wanted pair has ``‖F s_i‖ / max(|θ_i|, √ε‖H‖) < tol``
            (:func:`hessext._checks.converged`; ``‖H‖`` a running norm estimate of the projected matrix).
        seed: start block ``Z / √n`` with ``Z = hessext.ops.rademacher(n, b, seed=seed)`` (column c uses
            counters ``c·n …``), orthonormalised; fresh rows after a deflation continue the counters.
        return_vectors: compute the Ritz vectors ``[k, n]`` (one GEMM with the basis).
        compute_residuals: replace the block residual estimates by true residuals ``‖A y_i − θ_i y_i‖`` at
            the cost of one product of width k.

    Returns:
        :class:`~hessext.results.EigenResult` (eigenvalues ascending, float64 CPU; ``iterations`` = basis
        vectors created over all cycles; ``restarts`` and ``max_basis`` filled; ``breakdown`` when a direction
        was deflated; ``orthogonality_loss`` measured on the final basis — all of it when ``rows²·n ≤ 4·10⁹``,
        else its newest block against all rows — and on the Ritz vectors).

    Raises:
        ValueError: bad ``k``, ``which``, ``tol``, ``block_size``, ``max_basis``, ``max_iter``; a basis that
            does not fit in the device's available memory (before anything is allocated).
        TypeError: wrong argument types. RuntimeError: the operator produced NaN/Inf.
    """
    op = as_operator(A)
    k = check_int("k", k, 1)
    if not isinstance(which, str) or which.upper() not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    which = which.upper()
    tol, seed = check_tol(tol), check_seed(seed)
    return_vectors = check_bool("return_vectors", return_vectors)
    compute_residuals = check_bool("compute_residuals", compute_residuals)
    n = op.n
    if k > n:
        raise ValueError(f"k must be <= n = {n} (the operator size), got k={k}")
    b, M, budget = _sizes(n, k, block_size, max_basis, max_iter)
    dtype = work_dtype(op.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = (M + b) * n * itemsize
    require_memory(nbytes, op.device,
                   f"block_lanczos with k={k}, block_size={b}, max_basis={M}, n={n}: the basis of "
                   f"(max_basis + block_size)·n = {M + b}·{n} values ({format_bytes(nbytes)})",
                   lambda avail: f"pass max_basis <= {max(avail // (n * itemsize) - b, 0)}")
    st = _Block(op=op, k=k, which=which, b=b, M=M, budget=budget, tol=tol, seed=seed,
                V=torch.empty(M + b, n, dtype=dtype, device=op.device), start_matvecs=op.num_matvecs)
    _start(st)
    while True:
        _step(st)
        verdict = _test(st)
        if verdict == "stop":
            break
        if verdict == "restart":
            _restart(st)
    return _result(st, return_vectors, compute_residuals)
