"""Selective orthogonalisation for Lanczos (``lanczos(..., reorth="selective")``; experimental, issue 20).

Parlett & Scott (1979): in finite precision a Lanczos basis loses orthogonality only along converged Ritz
vectors, so the new vector is orthogonalised against those ("good" vectors) when PRO-style estimates
(Simon 1984) of its component along them pass √ε/2, instead of against the whole basis every step; measured
checkpoints (one basis sweep every ``CHECKPOINT_EVERY`` steps) keep the estimates honest and fall back to full
reorthogonalisation when they fail. Measured on float32 tanh-MLP Hessians (benchmarks/bench_lanczos_scale.py)
it does not beat full reorthogonalisation yet: indefinite spectra with both ends large converge ~40 Ritz
vectors that all need protecting, and in float32 the loss grows ~30x a step, so ``reorth="auto"`` keeps
``"full"`` (see :func:`hessext.lanczos.resolve_reorth`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import ops

__all__ = ["SelectiveOrthogonalizer", "NOISE_MAX", "CHECKPOINT_EVERY", "GIVE_UP"]


#: Cap of the calibrated rounding term of the τ-recurrence, in units of ε‖T‖ (beyond it, the good set would
#: take in every Ritz vector: the checkpoints then stay the safety net).
NOISE_MAX = 256.0
#: Steps between measured checkpoints of a selective run (one sweep of the basis each: j/16 reads per step).
CHECKPOINT_EVERY = 16
#: A measured loss above this many √ε means the estimates failed badly: the run continues fully
#: reorthogonalised (CGS2), which is correct whatever the basis holds.
GIVE_UP = 10.0


class SelectiveOrthogonalizer:
    """Selective orthogonalisation (Parlett & Scott 1979) with PRO-style triggers (Simon 1984) and measured
    checkpoints: the ``reorth="selective"`` state of one Lanczos run (experimental; ``"auto"`` does not pick
    it yet, see :func:`resolve_reorth`).

    Paige's theorem: in floating point, ``q_{j+1}`` loses orthogonality to ``Q_j`` only along Ritz vectors
    ``y_i`` that have converged, ``|y_iᵀ q_{j+1}| ≈ c·ε‖A‖ / ρ_i`` with ``ρ_i = |β_j s_{j,i}|``. The ``y_i``
    with ``ρ_i ≤ max(ε^{1/4}, 4c·√ε)·‖T‖`` ("good") are computed (a GEMM of those rows over the basis, about
    half a full pass each, :meth:`refresh`) and kept as orthonormal rows of ``Y`` (at most ``rmax``); the
    components ``τ_{i,l} = y_iᵀ q_l`` of later vectors are estimated by the recurrence obtained from ``y_iᵀ``
    of the Lanczos relation,

        β_l τ_{l+1} = |θ_i − α_l| τ_l + β_{l−1} τ_{l−1} + c·ε‖T‖,

    and ``w`` is orthogonalised against ``Y`` (:func:`hessext.ops.reorthogonalize`, one pass over ``r`` rows,
    not the ``j``-row basis) when an estimate exceeds ``√ε / 2``, and at the step after. The rounding
    constant ``c`` starts at 16 and is raised (≤ 256) whenever a pass measures more than was estimated.

    Monitoring, never assumed: every 16 steps the step measures ``max_i |q_iᵀ w| / ‖w‖`` against the whole
    basis (one sweep); a pass or checkpoint that measures more than ``2√ε`` repairs with full CGS2 here and
    at the next step, and above ``10√ε`` the rest of the run is fully reorthogonalised. ``measured`` is the
    largest loss measured in a stored vector; :func:`lanczos` reports the maximum of it and its own final
    measurement as ``orthogonality_loss``.

    Cost per step: the three-term recurrence (about 7 vector reads) plus ``4r`` reads on the steps that
    orthogonalise, ``j/16`` for the checkpoints, and half a full pass per computed Ritz vector — against
    ``2j`` (one CGS pass) per step for full reorthogonalisation.
    """

    def __init__(self, n: int, rmax: int, dtype: torch.dtype, device: torch.device, mode: str = "selective"):
        self.mode = mode                      # "selective", "full" (after a failed checkpoint) or "none"
        self.rmax = rmax
        self.Y = torch.empty(rmax if mode == "selective" else 0, n, dtype=dtype, device=device)
        self.r = 0
        self.theta = np.zeros(0)              # Ritz values of the stored rows
        self.rho = np.zeros(0)                # their residuals when computed
        self.tau = np.zeros(0)                # estimated |y_iᵀ q_j| of the newest basis vector
        self.tau_prev = np.zeros(0)
        self.eps = float(torch.finfo(dtype).eps)
        self.eta = math.sqrt(self.eps)
        self.trigger = self.eta / 2           # margin: one step can multiply the loss by |θ − α| / β
        self.next_checkpoint = CHECKPOINT_EVERY
        self.force_full = 0                   # full passes still owed after a failed checkpoint
        self.force_next = False               # the step after a selective pass orthogonalises too
        self.noise = 16 * self.eps            # rounding per step, in units of ‖T‖; calibrated upwards
        self.measured = 0.0
        self.passes = self.refreshes = self.checkpoints = self.repairs = 0

    def clean(self, w: Tensor, V: Tensor, j: int, a: float, bprev: float, tn: float) -> tuple[Tensor, float]:
        """Make ``w`` (the step's unnormalised ``β_j q_{j+1}``) as orthogonal as the mode asks.

        Returns ``(w, β_j = ‖w‖)``."""
        if self.mode == "none":
            return w, float(torch.linalg.vector_norm(w))
        if self.mode == "full" or self.force_full > 0 or j + 1 >= self.next_checkpoint:
            return self._full_or_checkpoint(w, V, j)
        nrm = float(torch.linalg.vector_norm(w))
        if self.r == 0:
            return w, nrm
        t = np.abs(self.theta - a) * self.tau + bprev * self.tau_prev + self.noise * tn
        t = t / max(nrm, torch.finfo(V.dtype).tiny)
        self.tau_prev, self.tau = self.tau, t
        forced = self.force_next
        if np.all(t <= self.trigger) and not forced:
            return w, nrm
        w, c, nt = ops.reorthogonalize(w, self.Y[:self.r], 1)
        self.passes += 1
        got = float(c.abs().max()) / max(nrm, 1e-300)    # w's loss before the pass: it is not stored
        if not forced and got > float(t.max()):   # the estimate was low: scale the rounding term up
            self.noise = min(self.noise * got / float(t.max()), NOISE_MAX * self.eps)
        self.force_next = not self.force_next
        self.tau = np.full(self.r, self.eps)
        if got > 2 * self.eta:                 # it grew past semi-orthogonality: repair as PRO would, with a
            self.repairs += 1                  # full pass here and at the next step
            self.force_full = 1
            if got > GIVE_UP * self.eta:
                self.mode = "full"
            w, _, nt = ops.reorthogonalize(w, V[:j + 1], 2)
        return w, float(nt)

    def _full_or_checkpoint(self, w: Tensor, V: Tensor, j: int) -> tuple[Tensor, float]:
        """A checkpoint measures ``max |Q_{j+1}ᵀ w| / ‖w‖`` (one sweep) and repairs if it is above ``√ε``;
        in ``"full"`` mode (or while repairs are owed) every step does one CGS pass against the basis."""
        basis = V[:j + 1]
        if self.mode == "full" or self.force_full > 0:
            w2, c, nt = ops.reorthogonalize(w, basis, 2 if self.mode == "full" else 1)
            self.measured = max(self.measured, float(c[:j - 1].abs().max()) / max(float(nt), 1e-300)
                                if j > 1 else 0.0)
            self.force_full = max(0, self.force_full - 1)
            self.tau = np.full(self.r, self.eps)
            self.tau_prev = np.full(self.r, self.eps)
            return w2, float(nt)
        self.checkpoints += 1
        self.next_checkpoint += CHECKPOINT_EVERY
        nrm = float(torch.linalg.vector_norm(w))
        g = basis @ w
        loss = float(g.abs().max()) / max(nrm, 1e-300)
        self.measured = max(self.measured, loss)
        if loss <= self.eta:                   # |y_iᵀ w| ≤ ‖Q_{j+1}ᵀ w‖ for y_i in the span of the basis
            self.tau_prev, self.tau = self.tau, np.full(self.r, float(torch.linalg.vector_norm(g)) / nrm)
            return w, nrm
        self.repairs += 1                      # the estimates missed: repair here and at the next step, and
        self.force_full = 1                    # widen the good set (the rounding term sets its threshold)
        self.noise = min(self.noise * max(4.0, loss / self.eta), NOISE_MAX * self.eps)
        if loss > GIVE_UP * self.eta:
            self.mode = "full"
        w2, _, nt = ops.reorthogonalize(w, basis, 2)
        return w2, float(nt)

    def refresh(self, V: Tensor, j: int, theta: np.ndarray, S: np.ndarray, res: np.ndarray,
                tn: float) -> None:
        """After the test of ``T_j``: compute the Ritz vectors ``y = V[:j]ᵀ s`` of good values that have no
        stored row (or whose stored row is much less converged) into free or stale rows of ``Y`` (one GEMM
        of those rows only: each costs about half a full pass), then orthogonalise the newest vector
        ``V[j]`` against ``Y``."""
        if self.mode != "selective" or j < 2:
            return
        # good: the loss along y, ≈ noise·‖T‖/ρ, can reach the trigger within a few steps
        thr = min(max(self.eps ** 0.25, 4 * self.noise / self.eta), 0.05) * tn
        good = np.flatnonzero(res <= thr)
        good = good[np.argsort(res[good], kind="stable")[:self.rmax]]
        rows, idx = self._assign(theta[good], res[good], tn)
        if not rows:
            return
        idx = good[idx]
        Sg = torch.from_numpy(np.ascontiguousarray(S[:, idx].T)).to(dtype=V.dtype, device=V.device)
        Ynew = Sg @ V[:j]
        for t, row in enumerate(rows):           # keep the rows orthonormal (CGS needs it): a new vector
            row = min(row, self.r)                # is orthogonalised against the others, twice, and dropped
            self.Y[row].zero_()                   # if it lies in their span already
            y, _, ny = ops.reorthogonalize(Ynew[t], self.Y[:max(self.r, row + 1)], 2)
            if float(ny) < 0.5:
                continue
            if row == self.r:
                self.r += 1
                self.theta, self.rho = np.append(self.theta, 0.0), np.append(self.rho, 0.0)
            self.Y[row] = y / ny
            self.theta[row], self.rho[row] = theta[idx[t]], res[idx[t]]
        self.refreshes += 1
        q, _, nq = ops.reorthogonalize(V[j], self.Y[:self.r], 1)
        V[j] = q / nq
        self.tau = np.full(self.r, self.eps)
        self.tau_prev = np.zeros(self.r)

    def _assign(self, th: np.ndarray, rh: np.ndarray, tn: float) -> tuple[list[int], list[int]]:
        """Match good values to stored rows one-to-one (nearest within the residuals). Returns the rows to
        (re)compute and the positions of their values in ``th``: unmatched values (into a new row, else a
        row that matched nothing) and values whose residual fell 1000-fold from above ``√ε‖T‖``."""
        free = np.ones(self.r, dtype=bool)
        todo_rows: list[int] = []
        todo_idx: list[int] = []
        unmatched = []
        for pos, (t, p) in enumerate(zip(th, rh)):
            cand = np.flatnonzero(free & (np.abs(self.theta - t) <= self.rho + p + 100 * self.eps * tn))
            if cand.size == 0:
                unmatched.append(pos)
                continue
            i = int(cand[np.argmin(np.abs(self.theta[cand] - t))])
            free[i] = False
            if p < self.rho[i] / 1000 and self.rho[i] > self.eta * tn:
                todo_rows.append(i)
                todo_idx.append(pos)
        spare = list(range(self.r, self.rmax)) + [int(i) for i in np.flatnonzero(free)]
        for pos, row in zip(unmatched, spare):
            todo_rows.append(row)
            todo_idx.append(pos)
        order = np.argsort(todo_rows, kind="stable")       # new rows are appended in increasing order
        return [todo_rows[i] for i in order], [todo_idx[i] for i in order]
