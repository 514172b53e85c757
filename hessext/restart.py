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

Used by :mod:`hessext.lanczos`; nothing here touches the operator.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["keep_count", "projected_matrix", "compress_basis", "PANEL_BYTES"]

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
