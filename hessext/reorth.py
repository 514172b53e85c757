"""Partial reorthogonalisation for Lanczos (Simon 1984): ``lanczos(..., reorth="partial")``, issue 20.

Full reorthogonalisation reads the whole basis twice per step, ``O(j·n)`` memory traffic at step j, which at
millions of parameters costs more than the Hessian-vector product itself. Simon's partial
reorthogonalisation (PRO, as in PROPACK) keeps the basis only *semi*-orthogonal, ``|q_lᵀ q_j| ≤ √ε``, which is
enough for the tridiagonal ``T_j`` to be the projection of ``A`` onto an orthonormal basis up to ``O(ε‖A‖)``
(Simon 1984, Theorem 4): the Ritz values are as accurate as with full reorthogonalisation and there are no
ghost copies. The loss of orthogonality ``ω_{l,j} = q_lᵀ q_j`` is *estimated* on the host by the recurrence
obtained from ``q_lᵀ`` of two Lanczos relations,

    β_j ω_{l,j+1} = β_l ω_{l+1,j} + (α_l − α_j) ω_{l,j} + β_{l−1} ω_{l−1,j} − β_{j−1} ω_{l,j−1} ± ν,

(``ω_{j,j} = 1``; O(j) scalar work a step), where ``ν`` is the rounding a step adds to each component. Only
when the estimate passes the level η (below) is the new vector checked and, if the measurement confirms it,
orthogonalised against the whole basis (one classical Gram–Schmidt pass by two matrix–vector products), and
so is the one after it (the recurrence carries ``ω_{·,j}`` of the not-reorthogonalised ``q_j`` into step
j + 2).

Calibrated and measured, not assumed:

- ``ν``: in float32 the rounding of a Hessian-vector product, not of the recurrence, sets it (measured: one
  step leaves components of ~1e-4 along the basis at 6M parameters, ~1000 ε‖T‖). The first ``WARMUP`` steps
  are fully reorthogonalised and the components each left along the basis, measured in float64, set ``ν``
  (times ``NOISE_SAFETY``).
- η = √max(ε, ν/‖T‖): semi-orthogonality relative to the precision of the products (the error of ``T`` is
  O(η²‖A‖), the products' own level). A run whose ``ν`` would put η at ``ETA_MAX`` is fully
  reorthogonalised from then on.
- Checkpoints (one read of the basis: ``max_l |q_lᵀ w| / ‖w‖``) at every step whose estimate passes η and at
  intervals of ``CHECK_FIRST`` doubling to ``CHECK_MAX`` steps. A measurement above the estimate scales
  ``ν`` up; a measured column is kept (and replaces the estimates) when one more step, growing as the
  estimates do, stays below η; a periodic checkpoint ``GIVE_UP`` times above η switches the run to full
  passes. ``measured`` (reported by :func:`lanczos` as part of ``orthogonality_loss``) is the largest loss
  measured in a stored vector.

Cost per step: the three-term recurrence (about 8 vector reads) and, every ~8–15 steps on the MLP Hessians of
``benchmarks/bench_lanczos_scale.py`` (14–20 passes in 150–180 steps), two passes against the basis — against
one pass (2j reads) every step.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import ops

__all__ = ["PartialOrthogonalizer", "gram_schmidt_pass", "DGKS_ETA", "WARMUP", "NOISE_SAFETY", "GIVE_UP",
           "ETA_MAX", "CHECK_FIRST", "CHECK_MAX"]

#: DGKS threshold (Daniel, Gragg, Kaufman, Stewart 1976; ARPACK uses 0.717): a second Gram–Schmidt pass is
#: needed only when the first one removed more than 1 − η² of the vector's energy.
DGKS_ETA = 1.0 / math.sqrt(2.0)
#: Steps fully reorthogonalised at the start of a partial run (their passes measure the rounding ν).
WARMUP = 4
#: Factor on the measured rounding per step in the ω-recurrence (the estimate should stay an upper bound).
NOISE_SAFETY = 2.0
#: A checkpoint that measures a loss above this many √ε means the estimates failed: fully reorthogonalise the
#: rest of the run.
GIVE_UP = 10.0
#: Cap of the semi-orthogonality level of a run whose products are noisier than ε (see the module docstring).
ETA_MAX = 1e-2
#: Steps between unconditional checkpoints: first, and at most (the interval doubles while estimates hold).
CHECK_FIRST, CHECK_MAX = 8, 32


def gram_schmidt_pass(w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor, float, float]:
    """One classical Gram–Schmidt pass of ``w`` against the rows of ``basis`` and a second one when the DGKS
    test asks for it. Returns ``(w', coefficients of the first pass, ‖w'‖, ‖w‖)`` with ``‖w‖`` from
    ``‖w‖² = ‖w'‖² + ‖Bw‖²`` (no extra read; exact for orthonormal rows)."""
    w2, c, nt = ops.reorthogonalize(w, basis, 1)
    nrm = float(nt)
    before = math.sqrt(nrm * nrm + float(torch.dot(c, c)))
    if nrm < DGKS_ETA * before:
        w2, _, nt = ops.reorthogonalize(w2, basis, 1)
        nrm = float(nt)
    return w2, c, nrm, before


class PartialOrthogonalizer:
    """The ``reorth="partial"`` state of one Lanczos run (module docstring): host copies of α, β, the two
    newest columns of the estimated ``ω`` and the calibrated rounding ``ν``.

    ``mode``: ``"partial"``; ``"full"`` (after the estimates failed, or for a whole run: a Gram–Schmidt pass
    every step); ``"none"`` (the bare recurrence, for tests and demonstrations: ghosts).
    Counters: ``passes`` (full passes done), ``events`` (estimates that crossed √ε).
    """

    def __init__(self, rows: int, dtype: torch.dtype, mode: str = "partial") -> None:
        self.mode = mode
        self.alpha = np.zeros(rows + 1)
        self.beta = np.zeros(rows + 1)        # beta[l] couples q_l and q_{l+1}
        self.cur = np.ones(1)                 # ω_{l,j}, l = 0 … j (cur[j] = 1)
        self.prev = np.zeros(0)               # ω_{l,j−1}, l = 0 … j − 1
        self.eps = float(torch.finfo(dtype).eps)
        self.eta0 = math.sqrt(self.eps)
        self.eta = self.eta0                  # the semi-orthogonality level: √max(ε, ν/‖T‖), ≤ ETA_MAX
        self.nu = 0.0                         # rounding a step leaves along each basis vector (absolute)
        self.force = 0                        # passes still owed (the step after an event)
        self.interval = CHECK_FIRST           # steps between unconditional checkpoints
        self.next_check = WARMUP + CHECK_FIRST
        self.measured = 0.0
        self.passes = self.events = self.checks = 0

    # ------------------------------------------------------------------------------------------ the step
    def clean(self, w: Tensor, V: Tensor, j: int, a: float, tn: float) -> tuple[Tensor, float]:
        """Make ``w`` (step j's ``A q_j − α_j q_j − β_{j−1} q_{j−1}``) as orthogonal to ``V[:j+1]`` as the
        mode asks. Returns ``(w, β_j = ‖w‖)``."""
        self.alpha[j] = a
        if self.mode == "partial" and j >= WARMUP and self.force == 0:
            self.eta = min(ETA_MAX, max(self.eta0, math.sqrt(self.nu / max(tn, 1e-300))))
            if self.eta >= ETA_MAX:        # the steps are too noisy for semi-orthogonality to mean anything
                self.mode = "full"
        if self.mode == "none":
            nrm = float(torch.linalg.vector_norm(w))
        elif self.mode == "full" or j < WARMUP:
            w, nrm = self._pass(w, V, j)
        elif self.force > 0:                         # the step after an event
            w, nrm, _ = self._blas_pass(w, V[:j + 1], None)
            self.force -= 1
            self._reset(j, self.eps)
        else:
            nrm = float(torch.linalg.vector_norm(w))
            new = self._omega(j, a, nrm)
            est = float(np.max(np.abs(new[:j + 1])))
            if est > self.eta or j >= self.next_check:
                w, nrm, new = self._checkpoint(w, V[:j + 1], j, nrm, new, est)
            if new is not None:
                self.prev, self.cur = self.cur, new
        self.beta[j] = nrm
        return w, nrm

    def _omega(self, j: int, a: float, b: float) -> np.ndarray:
        """The estimated ``ω_{·,j+1}`` (length j + 2, last entry 1) of ``w = β_j q_{j+1}``."""
        cur, prev, al, be = self.cur, self.prev, self.alpha, self.beta
        t = be[:j] * cur[1:j + 1] + (al[:j] - a) * cur[:j]
        if j > 1:
            t[1:] += be[:j - 1] * cur[:j - 1]
        if j > 0:
            t -= be[j - 1] * prev[:j]
        new = np.empty(j + 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            new[:j] = (t + np.copysign(self.nu, t)) / b
            new[j] = self.nu / b
        new[j + 1] = 1.0
        return new

    def _checkpoint(self, w: Tensor, basis: Tensor, j: int, nrm: float, new: np.ndarray,
                    est: float) -> "tuple[Tensor, float, np.ndarray | None]":
        """Measure ``c = Q_{j+1}ᵀ w`` (one read of the basis). A loss that one more step (growing as the
        estimates do, at least 2×) would carry past η is an event: the pass is finished from ``c`` and the
        next step passes too (returns ``new = None``: the estimates restart). Otherwise ``w`` is stored as it
        is and the column's estimates become the measured values. An estimate below the measurement scales
        ``ν`` up and shortens the interval of unconditional checkpoints, which doubles, up to ``CHECK_MAX``,
        while the estimates hold; a periodic checkpoint far above η (the estimates missed by more than
        ``GIVE_UP``) switches the rest of the run to full reorthogonalisation."""
        c = basis @ w
        loss = float(c.abs().max()) / max(nrm, 1e-300)
        self.checks += 1
        periodic = est <= self.eta
        # the growth of the loss in one step, from the estimates (at least 2): a loss that the next step
        # would carry past η is not accepted
        growth = max(2.0, est / max(float(np.max(np.abs(self.cur[:j]))) if j > 0 else 0.0, 1e-300))
        if loss > est:
            self.nu *= loss / max(est, 1e-300)
            self.interval = CHECK_FIRST
        else:
            self.interval = min(2 * self.interval, CHECK_MAX)
        self.next_check = j + self.interval
        if periodic and loss > GIVE_UP * self.eta:      # the estimates missed by far: stored vectors may too
            self.mode = "full"
            self.measured = max(self.measured, loss)
        if loss <= self.eta / growth and self.mode == "partial":
            self.measured = max(self.measured, loss)   # the loss of a stored vector
            new[:j + 1] = np.abs(c.double().cpu().numpy()) / max(nrm, 1e-300)
            return w, nrm, new
        self.events += 1
        w, nrm, _ = self._blas_pass(w, basis, c)
        self.force = 1
        self._reset(j, max(self.eps, self.eta * loss))
        return w, nrm, None

    def _blas_pass(self, w: Tensor, basis: Tensor, c: "Tensor | None") -> tuple[Tensor, float, Tensor]:
        """One classical Gram–Schmidt pass by two matrix–vector products (``c = Q w`` unless given,
        ``w − Qᵀc``): float32 accumulation is far below the semi-orthogonality level, and the library's GEMV
        streams faster than the double-accumulating kernel of full reorthogonalisation."""
        if c is None:
            c = basis @ w
        w = torch.addmv(w, basis.T, c, alpha=-1)
        self.passes += 1
        return w, float(torch.linalg.vector_norm(w)), c

    def _reset(self, j: int, level: float) -> None:
        """``q_{j+1}`` was orthogonalised against the basis: its estimates restart at ``level``."""
        new = np.full(j + 2, level)
        new[j + 1] = 1.0
        self.prev, self.cur = self.cur, new

    def _pass(self, w: Tensor, V: Tensor, j: int) -> tuple[Tensor, float]:
        """A full Gram–Schmidt pass of the warm-up (or of full mode) by the kernel, DGKS second pass when
        needed. In the warm-up the components the step left along the (at most ``WARMUP``) basis rows,
        measured in float64 so that every backend measures the same thing, set ``ν``."""
        if j < WARMUP and self.mode == "partial":
            c = V[:j + 1].double() @ w.double()
            self.nu = max(self.nu, NOISE_SAFETY * float(c.abs().max()))
        w, _, nrm, _ = gram_schmidt_pass(w, V[:j + 1])
        self.passes += 1
        self._reset(j, self.eps)
        return w, nrm

    def fresh_vector(self, j: int) -> None:
        """Row ``j`` was replaced by a fresh vector orthogonalised against the whole basis (a restart after a
        breakdown, ``β_{j−1} = 0``)."""
        self.beta[j - 1] = 0.0
        self.cur = np.full(j + 1, self.eps)
        self.cur[j] = 1.0
        self.prev = np.zeros(j)
