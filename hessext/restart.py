"""Thick restart for Lanczos (Wu & Simon, SIAM J. Matrix Anal. Appl. 22(2), 2000): a Krylov basis of at most
``M`` vectors, restarted from the Ritz vectors it has already found.

After ``j`` steps the basis ``Q_j = [q_0 … q_{j−1}]`` (rows), the next Lanczos vector ``q_j`` and the
projected matrix ``T_j = Q_jᵀ A Q_j = S Θ Sᵀ`` satisfy ``A Q_jᵀ = Q_jᵀ T_j + β_{j−1} q_j e_jᵀ``. Keeping ``l``
Ritz pairs ``(θ_i, y_i = Q_jᵀ s_i)`` gives

    A y_i = θ_i y_i + b_i q_j,        b_i = β_{j−1} s_{j−1, i},

so ``[y_0 … y_{l−1}, q_j]`` is again an orthonormal basis whose projected matrix is the *arrowhead*

    T' = [[diag(θ_0 … θ_{l−1}), b], [bᵀ, α_l]],     α_l = q_jᵀ A q_j,

and Lanczos continues from ``q_j`` (renamed ``q_l``) with the usual three-term recurrence below the arrow:
the step at ``q_l`` must remove ``Σ_i b_i y_i`` as well, which full reorthogonalisation against the whole
basis does (with the DGKS second pass when it removed much). The Lanczos residual estimate
``|β_{j−1} s_{j−1, i}|`` of every later Ritz pair stays exact in exact arithmetic, so convergence tests are
unchanged.

What is kept: the wanted pairs plus as many of their neighbours on the same side(s) as fit in half of the free
rows (``keep_count``), the choice of TRLan's "thick" restart. The basis is rewritten in place, a column panel
at a time (:func:`compress_basis`), so a restart needs ``l × panel`` extra values, not another basis.

The bound itself (:func:`basis_bound`): half of the memory available when the solve starts, and above
n = 10⁶ at most :func:`fast_basis_bound` vectors, where a small basis is faster.

Used by :mod:`hessext.lanczos`; nothing here touches the operator.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import _memory
from ._checks import check_int
from ._memory import format_bytes, require_memory

__all__ = ["keep_count", "projected_matrix", "compress_basis", "basis_bound", "fast_basis_bound",
           "PANEL_BYTES", "BASIS_MEMORY_SHARE", "RESTART_BUDGET_FACTOR", "FAST_BASIS_MIN_N"]

#: Bytes of the temporary column panel of :func:`compress_basis` (``l × panel`` values): small against the
#: basis, large enough that each GEMM panel streams at memory speed.
PANEL_BYTES = 32 * 2 ** 20


def keep_count(k: int, rows: int, j: int) -> int:
    """Ritz pairs kept at a thick restart of a basis of ``j`` vectors under a bound of ``rows``: the ``k``
    wanted plus half of the free rows ``(rows − k) // 2`` (at least one more than k), leaving at least one new
    step per cycle: ``min(j − 1, rows − 1, k + max(1, (rows − k) // 2))``."""
    return max(1, min(j - 1, rows - 1, k + max(1, (rows - k) // 2)))


def projected_matrix(alpha: np.ndarray, beta: np.ndarray, nkeep: int, arrow: np.ndarray) -> np.ndarray:
    """The dense ``j × j`` projected matrix of a restarted basis: ``diag(α_0 … α_{l−1})`` (the kept Ritz
    values, ``l = nkeep``), the arrow ``b`` coupling them to row ``l``, and the tridiagonal
    ``tridiag(β, α, β)`` of the Lanczos steps from row ``l`` on (``beta[i]`` couples rows ``i`` and ``i + 1``;
    ``beta[:l]`` is unused)."""
    j = alpha.size
    T = np.zeros((j, j))
    T[np.arange(j), np.arange(j)] = alpha
    if j > nkeep:
        T[:nkeep, nkeep] = arrow
        T[nkeep, :nkeep] = arrow
        idx = np.arange(nkeep, j - 1)
        T[idx, idx + 1] = beta[nkeep:j - 1]
        T[idx + 1, idx] = beta[nkeep:j - 1]
    return T


def compress_basis(V: Tensor, S_keep: Tensor, j: int) -> None:
    """``V[:l] ← S_keepᵀ V[:j]`` in place (``S_keep: [j, l]``, ``l ≤ j``, rows of ``V`` are vectors), one
    column panel at a time: every panel's rows are read in full before any of them is overwritten, and the
    only extra memory is an ``[l, panel]`` buffer of at most :data:`PANEL_BYTES`."""
    n, nk = V.shape[1], S_keep.shape[1]
    St = S_keep.T.contiguous()
    panel = max(1024, PANEL_BYTES // max(1, nk * V.element_size()))
    buf = torch.empty(nk, min(panel, n), dtype=V.dtype, device=V.device)
    for c0 in range(0, n, panel):
        c1 = min(n, c0 + panel)
        out = buf[:, :c1 - c0]
        torch.matmul(St, V[:j, c0:c1], out=out)
        V[:nk, c0:c1].copy_(out)


#: Share of the available memory the default basis bound may take (issue 14: "at most half").
BASIS_MEMORY_SHARE = 0.5
#: Step budget of a restarted run with ``max_iter=None``: this many times the unrestarted Krylov dimension.
RESTART_BUDGET_FACTOR = 10
#: Above this n the default bound is also capped for speed at :func:`fast_basis_bound` (issue 20).
FAST_BASIS_MIN_N = 1_000_000


def fast_basis_bound(k: int) -> int:
    """The default basis bound for speed at ``n > FAST_BASIS_MIN_N``: ``max(20, 2k + 10)`` vectors.

    Why: full reorthogonalisation reads the basis twice per step, so an unbounded run costs ~``m²·n`` memory
    traffic, which at millions of parameters exceeds the Hessian-vector products themselves. Thick restart
    within a small basis costs a few more products and far less traffic. Measured
    (benchmarks/bench_lanczos_scale.py; tanh MLP, batch 16, top-10 to 1e-4, float32, 2 threads): n = 1.0M,
    unbounded 11.0 s / 178 HVPs, M = 30: 3.3 s / 189; n = 6.1M, unbounded 60.5 s / 153 HVPs, M = 40: 24.7 s /
    156, M = 30: 20.5 s / 159, M = 20: 25.8 s / 186 — the eigenvalues agree to 2e-7 relative."""
    return max(20, 2 * k + 10)


def basis_bound(n: int, k: int, m: int, max_iter: Optional[int], max_basis: Optional[int],
                 dtype: torch.dtype, device: torch.device, fast_cap: bool = True) -> tuple[int, int]:
    """The basis bound M (vectors kept at once) and the step budget of a run of Krylov dimension ``m``.

    ``max_basis=None``: ``M = min(m, ⌊share · available / (n · itemsize)⌋ − 1)`` with ``share = 1/2`` of what
    :func:`available_memory` reports for the basis device when the solve starts (``M = m`` where that is
    unknown), and above ``n = FAST_BASIS_MIN_N`` at most :func:`fast_basis_bound` ``(k)`` (with ``fast_cap``:
    full reorthogonalisation; a partial run's steps do not slow down with the basis); an explicit
    ``max_basis`` is used as given (and must fit in all the available memory). ``M = m`` is today's
    unrestarted run, budget ``m``. ``M < m`` thick-restarts within M vectors
    (:mod:`hessext.restart`), with a budget of ``max_iter`` steps, or ``RESTART_BUDGET_FACTOR · m`` for
    ``max_iter=None``. Errors name ``max_basis``/``max_iter``, k and n, the bytes needed and available."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    row = n * itemsize
    least = min(m, k + 2)
    if max_basis is not None:
        M = check_int("max_basis", max_basis, 1)
        if M < least:
            raise ValueError(f"max_basis must be >= min(Krylov dimension, k + 2) = {least} for k={k}, n={n}, "
                             f"got max_basis={max_basis}")
        M = min(M, m)
        require_memory((M + 1) * row, device,
                       f"max_basis={max_basis} with k={k}, n={n}: the Lanczos basis of (max_basis + 1)·n "
                       f"= {M + 1}·{n} {str(dtype).replace('torch.', '')} values",
                       lambda avail: f"pass max_basis <= {max(avail // row - 1, 0)} (or None: half of "
                                     "the available memory)")
    else:
        avail = _memory.available_memory(device)
        M = m if avail is None else min(m, int(BASIS_MEMORY_SHARE * avail) // row - 1)
        if n > FAST_BASIS_MIN_N and fast_cap:
            M = min(M, max(fast_basis_bound(k), least))
        if M < least:
            raise ValueError(
                f"the Lanczos basis for k={k}, n={n} needs at least {least + 1} vectors of {n} "
                f"{str(dtype).replace('torch.', '')} values ({format_bytes((least + 1) * row)}), but half of "
                f"the memory available on {torch.device(device)} is "
                f"{format_bytes(BASIS_MEMORY_SHARE * avail)}: ask for fewer eigenpairs (smaller k), analyse "
                "fewer parameters, compute in float32, keep the basis in host memory (basis_device='cpu') or "
                "pass max_basis explicitly")
    if M >= m:
        return m, m
    return M, (max_iter if max_iter is not None else RESTART_BUDGET_FACTOR * m)
