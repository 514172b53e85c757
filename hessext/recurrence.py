"""The Lanczos step recurrence shared by :func:`hessext.lanczos.lanczos` and SLQ: :class:`LanczosChains`.

``p`` chains advance together with one block product per step; each chain's new vector is orthogonalised
against its own basis — on the CPU by the three-term recurrence, one classical Gram–Schmidt pass and a second
only when the DGKS test asks for it (:func:`_orthogonalize_selective`), on accelerators by CGS2 without host
synchronisation — or, for one chain with a :class:`hessext.reorth.PartialOrthogonalizer`, by the plain
three-term recurrence with partial reorthogonalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from . import ops
from .linop import LinearOperator
from .reorth import DGKS_ETA, PartialOrthogonalizer

__all__ = ["LanczosChains"]


@dataclass
class LanczosChains:
    """``p`` independent Lanczos chains on one operator, advanced together: one ``A @ [n, p]`` block product
    per step, full reorthogonalisation of each chain against its own basis.

    Chain ``c`` keeps its orthonormal basis as rows ``V[c, :j+1] = q_0 … q_j`` and its tridiagonal ``T`` in
    ``alpha[c, i] = α_i = q_iᵀ A q_i`` and ``beta[c, i] = β_i = ‖A q_i − Σ_{l≤i} (q_lᵀ A q_i) q_l‖``
    (β_i couples ``q_i`` and ``q_{i+1}``). ``flags[c, i]`` marks a breakdown, ``β_i ≤ btol · ‖T‖``, with
    ``tnorm[c]`` the running estimate ``‖T‖ ≈ max_i |α_i| + β_i + β_{i−1}``. All buffers live on the
    operator's device, so advancing needs no host synchronisation on accelerators.

    Users: :func:`lanczos` (p = 1, convergence tests and restarts between calls to :meth:`advance`) and
    :func:`hessext.density.slq_quadrature` (p probes, one call). The caller fills ``V[:, 0]`` with unit start
    vectors and checks the memory first (:meth:`nbytes`, :func:`require_memory`).
    """

    V: Tensor         # [p, rows, n] bases as rows
    alpha: Tensor     # [p, rows] diagonal of T
    beta: Tensor      # [p, rows] off-diagonal of T (beta[c, j] couples j and j + 1)
    flags: Tensor     # [p, rows] bool: breakdown at step j
    tnorm: Tensor     # [p] running ‖T‖ estimate

    @staticmethod
    def nbytes(p: int, rows: int, n: int, dtype: torch.dtype) -> int:
        """Bytes of the ``[p, rows, n]`` bases (the α, β buffers are ``n`` times smaller)."""
        return p * rows * n * torch.empty((), dtype=dtype).element_size()

    @classmethod
    def allocate(cls, p: int, rows: int, n: int, dtype: torch.dtype, device: torch.device,
                 pin: bool = False) -> "LanczosChains":
        """Empty bases ``[p, rows, n]`` (in page-locked host memory with ``pin``, for a host basis of an
        accelerator's operator) and zeroed ``α, β, flags [p, rows]``, ``tnorm [p]``."""
        return cls(V=torch.empty(p, rows, n, dtype=dtype, device=device, pin_memory=pin),
                   alpha=torch.zeros(p, rows, dtype=dtype, device=device),
                   beta=torch.zeros(p, rows, dtype=dtype, device=device),
                   flags=torch.zeros(p, rows, dtype=torch.bool, device=device),
                   tnorm=torch.zeros(p, dtype=dtype, device=device))

    def advance(self, op: LinearOperator, j0: int, j1: int, btol: float, pbar: Any = None,
                guard: "Optional[PartialOrthogonalizer]" = None) -> None:
        """Advance every chain from step ``j0`` to ``j1`` (``V[:, j0]`` holds the current unit vectors).

        On accelerators there is no host synchronisation inside (CGS2 against the whole basis every step); on
        the CPU, where a synchronisation costs nothing, each step reads one norm to decide whether the second
        Gram–Schmidt pass is needed (:func:`_orthogonalize_selective`), which saves a third of the basis
        traffic. ``q_{j+1} = w / max(β_j, tiny)``, so an exact breakdown yields a zero vector, never NaN; the
        caller finds flagged steps at its next synchronisation point and discards what follows them.

        With a ``guard`` (one chain only, ``reorth="partial"``) the step is the plain three-term recurrence
        and the guard orthogonalises against the whole basis only when its estimate of the loss of
        orthogonality asks for it (:class:`PartialOrthogonalizer`); ``guard.mode == "none"`` keeps the bare
        recurrence (tests only).
        """
        if guard is not None:
            for j in range(j0, j1):
                self._guarded_step(op, j, btol, guard)
                if pbar is not None:
                    pbar.update(1)
            return
        V, alpha, beta, flags, tnorm = self.V, self.alpha, self.beta, self.flags, self.tnorm
        p, rows, _ = V.shape
        tiny = torch.finfo(V.dtype).tiny
        zero = torch.zeros((), dtype=V.dtype, device=V.device)
        selective = _selective_reorth(V.device)
        for j in range(j0, j1):
            X = V[:, j, :].T.contiguous()                  # [n, p]
            W = op.matmat(X).T.contiguous()                 # [p, n]
            for c in range(p):
                if selective:
                    w_out, a, nrm = _orthogonalize_selective(W[c], V[c], j, beta[c, j - 1] if j > 0 else None,
                                                             op)
                else:
                    w_out, coeffs, nrm = op.reorthogonalize(W[c], V[c, :j + 1], 2)
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


    def _guarded_step(self, op: LinearOperator, j: int, btol: float,
                      guard: "PartialOrthogonalizer") -> None:
        """One step of chain 0 without full reorthogonalisation: ``w = A q_j − α_j q_j − β_{j−1} q_{j−1}``
        (``α_j = q_jᵀ A q_j``), then :meth:`PartialOrthogonalizer.clean` (which orthogonalises ``w`` against
        the whole basis when the estimated loss of orthogonality asks for it)."""
        V, rows = self.V[0], self.V.shape[1]
        w = op.matmat(V[j][:, None])[:, 0]
        a = torch.dot(V[j], w)
        w.addcmul_(V[j], a, value=-1)
        bprev = float(self.beta[0, j - 1]) if j > 0 else 0.0
        if j > 0:
            w.add_(V[j - 1], alpha=-bprev)
        af = float(a)
        w, nrm = guard.clean(w, V, j, af, float(self.tnorm[0]))
        self.alpha[0, j] = a
        self.beta[0, j] = nrm
        tn = max(float(self.tnorm[0]), abs(af) + nrm + bprev)
        self.tnorm[0] = tn
        self.flags[0, j] = nrm <= btol * tn
        if j + 1 < rows:
            torch.div(w, max(nrm, torch.finfo(V.dtype).tiny), out=V[j + 1])


def _selective_reorth(device: torch.device) -> bool:
    """Whether Lanczos reorthogonalises selectively (DGKS): on the CPU, where reading a norm on the host costs
    nothing; accelerators keep the unconditional two-pass CGS2, which needs no host synchronisation."""
    return device.type == "cpu"


def _orthogonalize_selective(w: Tensor, Vc: Tensor, j: int, beta_prev: Optional[Tensor],
                             op: Optional[LinearOperator] = None) -> tuple[Tensor, Tensor, Tensor]:
    """One Lanczos step's orthogonalisation of ``w = A q_j`` (modified in place), with a second pass only when
    needed: returns ``(w', α_j, ‖w'‖)``.

    The three-term recurrence removes the large components first, ``w ← w − α q_j − β_{j−1} q_{j−1}`` with
    ``α = q_jᵀ w``; what is left along the basis is rounding-level, so one classical Gram–Schmidt pass against
    the whole basis (``ops.reorthogonalize(..., passes=1)``: 2 sweeps of the basis instead of CGS2's 3) makes
    ``w'`` orthogonal to working precision, unless the pass removed a large part of it: if
    ``‖w'‖ < η ‖w‖`` (η = 1/√2, the DGKS criterion) a second pass follows, as in ARPACK's ``dsaitr``. The
    returned α includes the pass's own correction along ``q_j``. Dots, norms and passes go through the
    operator's vector-space hooks (all-reduced for sharded vectors, so every rank takes the same branch);
    without ``op``, the single-process ones.
    """
    dot = torch.dot if op is None else op.dot
    norm = torch.linalg.vector_norm if op is None else op.norm
    reorth = ops.reorthogonalize if op is None else op.reorthogonalize
    q = Vc[j]
    a = dot(q, w)
    w.addcmul_(q, a, value=-1)
    if beta_prev is not None:
        w.addcmul_(Vc[j - 1], beta_prev, value=-1)
    wn = norm(w)
    w_out, coeffs, nrm = reorth(w, Vc[:j + 1], 1)
    if float(nrm) < DGKS_ETA * float(wn):
        w_out, c2, nrm = reorth(w_out, Vc[:j + 1], 1)
        coeffs = coeffs + c2
    return w_out, a + coeffs[j], nrm
