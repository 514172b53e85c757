"""Curvature over training: a tracker a training loop calls once per step, with warm-started Lanczos.

At every ``every``-th step :class:`CurvatureTracker` builds the Hessian operator of the loss at the current
parameters and computes the requested quantities:

- ``lambda_max`` / ``top_k``: the top Ritz pairs, each checkpoint's solve started from the previous
  checkpoint's Ritz vectors (``v0 = Σ_i y_i`` of the previous top-k; ``lanczos`` takes a single start vector),
  with the same residual test as a cold (seeded) start; ``lambda_min`` likewise from the bottom;
- ``trace`` ± standard error (:func:`hessext.trace.estimate_trace`, ``trace_probes`` products);
- ``batch_sharpness`` ``E_B[g_Bᵀ H_B g_B / ‖g_B‖²]`` over the batches of ``data``
  (one gradient and one HVP each);
- ``grad_overlap`` ``‖Vᵀ g‖² / ‖g‖²`` with V the top-k Ritz vectors and g the full gradient;
- ``preconditioned_sharpness`` ``λmax(P^{-1/2} H P^{-1/2})`` with P from Adam/AdamW/RMSprop state:
  Adam ``P = (1 − β₁ᵗ)·diag(√v̂ + ε)``, ``v̂ = exp_avg_sq / (1 − β₂ᵗ)``; RMSprop ``P = diag(√square_avg + ε)``.

Stability thresholds (when the learning rate η is known): ``2/η`` for lambda_max, top_k and batch sharpness;
``(2 + 2β₁)/((1 − β₁)η)`` for Adam's preconditioned sharpness (``2/η`` for RMSprop).

Records go to ``self.records`` and, with ``path``, to a JSON-lines file: one line per checkpoint written
with a single ``write`` + ``flush`` + ``fsync``; a torn last line (a crash while writing) is cut away when the
file is reopened, and the run continues the file. A cold comparison solve adds ``cold_matvecs`` and
``cold_values`` (its Ritz values, descending) to the record.
The model, the optimiser's state and the global RNG are untouched.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn

from .._checks import check_bool, check_int, check_tol, json_safe
from .._state import isolated_forward, preserve_model_state
from ..data import is_batch
from ..distributed import hessian_operator
from ..lanczos import lanczos
from ..linop import LinearOperator
from ..trace import estimate_trace

QUANTITIES = ("lambda_max", "top_k", "lambda_min", "trace", "batch_sharpness", "grad_overlap",
              "preconditioned_sharpness")

__all__ = ["CurvatureTracker", "PreconditionedOperator", "load_tracking", "trainer_callback",
           "preconditioner_diagonal", "QUANTITIES"]


class PreconditionedOperator(LinearOperator):
    """``x ↦ d ⊙ H (d ⊙ x)``: the symmetric form ``P^{-1/2} H P^{-1/2}`` of ``P⁻¹H`` (same eigenvalues) for a
    diagonal ``P = diag(d)^{-2}``; ``d`` in ParamLayout order."""

    def __init__(self, H: LinearOperator, d: Tensor) -> None:
        if d.dim() != 1 or d.shape[0] != H.n:
            raise ValueError(f"d must have shape [{H.n}], got {list(d.shape)}")
        super().__init__(H.n, H.dtype, H.device)
        self.H = H
        self.d = d.to(dtype=H.dtype, device=H.device)

    def session(self) -> Any:
        return self.H.session()

    def _matmat(self, X: Tensor) -> Tensor:
        return self.d[:, None] * self.H.matmat(self.d[:, None] * X)


def _state_step(state: dict) -> float:
    s = state.get("step", 0)
    return float(s.item() if isinstance(s, Tensor) else s)


def preconditioner_diagonal(optimizer: torch.optim.Optimizer, model: nn.Module, names: Iterable[str]
                            ) -> Optional[tuple[Tensor, float]]:
    """``(d, β₁)`` with ``d = diag(P)^{-1/2}`` in the order of ``names`` from an Adam/AdamW/RMSprop state
    (read only); ``None`` for other optimisers or before the first step. β₁ is 0 for RMSprop."""
    kind = type(optimizer).__name__
    if kind not in ("Adam", "AdamW", "RMSprop"):
        return None
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts = []
    beta1 = 0.0
    for name in names:
        p = params[name]
        state = optimizer.state.get(p, {})
        g = group_of.get(id(p))
        if g is None or not state:
            return None
        eps = float(g["eps"])
        if kind == "RMSprop":
            diag = state["square_avg"].detach().double().sqrt() + eps
        else:
            beta1, beta2 = (float(b) for b in g["betas"])
            t = _state_step(state)
            if t <= 0:
                return None
            v_hat = state["exp_avg_sq"].detach().double() / (1.0 - beta2 ** t)
            diag = (1.0 - beta1 ** t) * (v_hat.sqrt() + eps)
        parts.append(diag.reshape(-1).rsqrt())
    return torch.cat(parts), beta1


def _batches(data: Any) -> list:
    if is_batch(data):
        return [data]
    return list(data)


class CurvatureTracker:
    """Track curvature quantities of ``loss_fn`` on ``data`` over training (module docstring for the maths).

    Args:
        model, loss_fn, data: as for :class:`hessext.HessianOperator` (``data``: one batch or a list of them).
        every: compute at steps with ``step % every == 0``.
        quantities: any of :data:`QUANTITIES`.
        k: number of top eigenpairs (``top_k``, ``grad_overlap``).
        tol: Lanczos relative residual tolerance (warm and cold alike).
        warm_start: start each solve from the previous checkpoint's Ritz vectors.
        cold_every: also run a cold (seeded) solve every ``cold_every``-th checkpoint (``cold_matvecs``).
        path: JSON-lines file (continued if it exists).
        lr: learning rate for thresholds (default: the optimiser's ``param_groups[0]["lr"]``).
        seed: seed of cold starts and trace probes.
        params, dtype, model_type: passed to the operator.
        trace_probes: products for the trace estimate.
        max_iter: Lanczos Krylov dimension cap.
    """

    def __init__(self, model: nn.Module, loss_fn: Any, data: Any, *, every: int = 10,
                 quantities: Iterable[str] = ("lambda_max",), k: int = 1, tol: float = 1e-3,
                 warm_start: bool = True, cold_every: Optional[int] = None,
                 path: str | os.PathLike | None = None, lr: Optional[float] = None, seed: int = 0,
                 params: Any = None, dtype: Any = None, model_type: Optional[str] = None,
                 trace_probes: int = 20, max_iter: Optional[int] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        quantities = (quantities,) if isinstance(quantities, str) else tuple(quantities)
        bad = [q for q in quantities if q not in QUANTITIES]
        if bad or not quantities:
            raise ValueError(f"quantities must be a non-empty subset of {QUANTITIES}, got {quantities!r}")
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.every = check_int("every", every, 1)
        self.quantities = quantities
        self.k = check_int("k", k, 1)
        self.tol = check_tol(tol)
        self.warm_start = check_bool("warm_start", warm_start)
        self.cold_every = None if cold_every is None else check_int("cold_every", cold_every, 1)
        self.lr = None if lr is None else float(lr)
        self.seed = check_int("seed", seed, 0)
        self.params, self.dtype, self.model_type = params, dtype, model_type
        self.trace_probes = check_int("trace_probes", trace_probes, 1)
        self.max_iter = max_iter
        self.path = None if path is None else os.fspath(path)
        self.records: list[dict] = []
        self._prev: dict[str, Tensor] = {}     # previous Ritz vectors [k, n] per solve name
        self._checkpoints = 0
        if self.path is not None:
            self.records = _open_jsonl(self.path)

    # ------------------------------------------------------------------ one checkpoint
    def step(self, step: int, optimizer: Optional[torch.optim.Optimizer] = None,
             loss: Optional[float] = None) -> Optional[dict]:
        """Compute the record at ``step`` if ``step % every == 0`` (else return None); append it to
        :attr:`records` and to the file."""
        step = check_int("step", step, 0)
        if step % self.every:
            return None
        t0 = time.perf_counter()
        # isolated_forward: anything that draws (a DataLoader among the batches) uses this thread's private
        # generator, so the global RNG is never written (and never rewound under another thread's feet)
        with isolated_forward(), preserve_model_state(self.model, eval_mode=None):
            rec = self._compute(step, optimizer, loss)
        rec["time_s"] = time.perf_counter() - t0
        self._checkpoints += 1
        self.records.append(rec)
        if self.path is not None:
            _append_jsonl(self.path, rec)
        return rec

    def _operator(self, data: Any) -> LinearOperator:
        batches = _batches(data)
        return hessian_operator(self.model, self.loss_fn, batches[0] if len(batches) == 1 else iter(batches),
                                self.params, model_type=self.model_type, dtype=self.dtype)

    def _solve(self, name: str, A: LinearOperator, k: int, which: str, cold: bool, out: dict) -> Any:
        """Warm (or cold) Lanczos for ``name``; fills matvecs / residuals / cold_matvecs in ``out``."""
        k = min(k, A.global_n)       # the whole space (A.n is this rank's slice on an FSDP2 model)
        prev = self._prev.get(name)
        v0 = None
        if self.warm_start and prev is not None and prev.shape == (k, A.n):
            v0 = prev.sum(dim=0).to(A.dtype)
        # check_every=1 (warm and cold alike): test from the k-th step on, so a good start stops early
        res = lanczos(A, k, which=which, tol=self.tol, v0=v0, seed=self.seed, max_iter=self.max_iter,
                      check_every=1)
        self._prev[name] = res.eigenvectors.detach().clone()
        out["matvecs"][name] = int(res.num_matvecs)
        out["residuals"][name] = float(res.residuals.max())
        if cold:
            c = lanczos(A, k, which=which, tol=self.tol, seed=self.seed, max_iter=self.max_iter,
                        check_every=1, return_vectors=False)
            out["cold_matvecs"][name] = int(c.num_matvecs)
            out["cold_values"][name] = c.eigenvalues.flip(0).tolist()
        return res

    def _compute(self, step: int, optimizer: Any, loss: Optional[float]) -> dict:
        lr = self.lr if self.lr is not None else (
            float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None)
        cold = self.cold_every is not None and self._checkpoints % self.cold_every == 0
        out: dict[str, Any] = {"matvecs": {}, "cold_matvecs": {}, "cold_values": {}, "residuals": {}}
        q: dict[str, Any] = {}
        th: dict[str, float] = {}
        H = self._operator(self.data)
        want = set(self.quantities)
        top = None
        if want & {"lambda_max", "top_k", "grad_overlap"}:
            kk = self.k if want & {"top_k", "grad_overlap"} else 1
            top = self._solve("lambda_max", H, kk, "LA", cold, out)
            vals = top.eigenvalues.flip(0).tolist()
            if "lambda_max" in want:
                q["lambda_max"] = vals[0]
            if "top_k" in want:
                q["top_k"] = vals
        if "lambda_min" in want:
            q["lambda_min"] = float(self._solve("lambda_min", H, 1, "SA", cold, out).eigenvalues[0])
        if "grad_overlap" in want or loss is None:
            before = H.num_matvecs
            f, g = H.loss_and_grad()
            loss = f if loss is None else loss
            if "grad_overlap" in want:
                V = top.eigenvectors.to(g.dtype)
                if H.sharded:   # partial sums of this rank's slices, summed over the ranks first
                    sums = H.allreduce_(torch.cat([V @ g, (g @ g).reshape(1)]).double())
                    q["grad_overlap"] = float(sums[:-1].square().sum() / sums[-1].clamp_min(1e-300))
                else:
                    q["grad_overlap"] = float((V @ g).square().sum() / g.square().sum().clamp_min(1e-300))
                out["matvecs"]["grad_overlap"] = H.num_matvecs - before
        if "trace" in want:
            tr = estimate_trace(H, self.trace_probes, seed=self.seed)
            q["trace"], q["trace_std_error"] = float(tr.estimate), float(tr.std_error)
            out["matvecs"]["trace"] = int(tr.num_matvecs)
        if "batch_sharpness" in want:
            q["batch_sharpness"], out["matvecs"]["batch_sharpness"] = self._batch_sharpness()
        beta1 = None
        if "preconditioned_sharpness" in want and optimizer is not None and H.sharded:
            raise ValueError("CurvatureTracker: preconditioned_sharpness is not supported on an "
                             "FSDP2-sharded model (the optimizer's state is not matched to the local shards)")
        if "preconditioned_sharpness" in want and optimizer is not None:
            pd = preconditioner_diagonal(optimizer, self.model, H.layout.names)
            if pd is not None:
                d, beta1 = pd
                r = self._solve("preconditioned_sharpness", PreconditionedOperator(H, d), 1, "LA", cold, out)
                q["preconditioned_sharpness"] = float(r.eigenvalues[-1])
        if lr is not None:
            for name in ("lambda_max", "top_k", "batch_sharpness"):
                if name in q:
                    th[name] = 2.0 / lr
            if "preconditioned_sharpness" in q:
                th["preconditioned_sharpness"] = (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)
        return {"step": step, "loss": None if loss is None else float(loss), "lr": lr,
                "optimizer": None if optimizer is None else type(optimizer).__name__,
                "quantities": q, "thresholds": th, "matvecs": out["matvecs"],
                "cold_matvecs": out["cold_matvecs"] if cold else None,
                "cold_values": out["cold_values"] if cold else None, "residuals": out["residuals"],
                "warm_start": self.warm_start}

    def _batch_sharpness(self) -> tuple[float, int]:
        """``E_B[g_Bᵀ H_B g_B / ‖g_B‖²]`` (plain mean over batches) and the products spent."""
        vals, mv = [], 0
        for b in _batches(self.data):
            op = self._operator(b)
            _, g = op.loss_and_grad()
            hg = op.matvec(g)
            if op.sharded:   # global inner products of the ranks' slices
                nrm, ghg = float(op.dot(g, g)), float(op.dot(g, hg))
            else:
                nrm, ghg = float(g.square().sum()), float(g @ hg)
            vals.append(ghg / nrm if nrm > 0 else math.nan)
            mv += 1
        return sum(vals) / len(vals), mv


# ------------------------------------------------------------------------------------------- JSON-lines
def _read_jsonl(path: str) -> tuple[list[dict], int]:
    """Records of complete lines and the byte length they occupy (a torn / unparsable tail excluded)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    records, good = [], 0
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            break
        line = raw[pos:end].strip()
        if line:
            try:
                records.append(json.loads(line))
            except ValueError:
                break
        pos = good = end + 1
    return records, good


def _open_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    records, good = _read_jsonl(path)
    if good != os.path.getsize(path):
        with open(path, "r+b") as fh:
            fh.truncate(good)
            fh.flush()
            os.fsync(fh.fileno())
    return records


def _append_jsonl(path: str, record: dict) -> None:
    line = (json.dumps(json_safe(record), allow_nan=True) + "\n").encode()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)   # a new run's folder
    with open(path, "ab") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def load_tracking(path: str | os.PathLike) -> list[dict]:
    """The records of a tracking JSON-lines file (a torn last line is skipped)."""
    return _read_jsonl(os.fspath(path))[0]


def trainer_callback(tracker: CurvatureTracker) -> Any:
    """A ``transformers.TrainerCallback`` whose ``on_step_end`` calls ``tracker.step(state.global_step,
    optimizer=optimizer)``. Raises ImportError if transformers is not installed."""
    try:
        from transformers import TrainerCallback
    except ImportError as e:
        raise ImportError("trainer_callback needs the optional dependency transformers "
                          "(pip install transformers)") from e

    class CurvatureCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                        **kw: Any) -> Any:
            tracker.step(state.global_step, optimizer=optimizer)
            return control

    return CurvatureCallback()
