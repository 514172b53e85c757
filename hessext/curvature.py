"""The Gauss–Newton and Fisher curvatures of a model's loss as matrix-free operators, and ``H = G + E``.

Write the loss of batch ``b`` as a function of the model outputs, ``L_b(θ) = ℓ_b(z_b(θ))``, with
``J_b = ∂z_b/∂θ``. With the batch weights ``w_b`` (batch sizes, as :class:`~hessext.hvp.HessianOperator`):

- **generalised Gauss–Newton** ``G = Σ_b w_b J_bᵀ (∇²_z ℓ_b) J_b / Σ_b w_b``; the Hessian is
  ``H = G + E`` with the residual ``E = Σ_b w_b Σ_o (∂ℓ_b/∂z_o) ∇²_θ z_o / Σ_b w_b``, the part that carries
  the model's own second derivatives. ``HessianOperator(...) - GGNOperator(...)`` (a lazy
  :class:`~hessext.linop.SumOperator`, see :func:`residual_operator`) *is* ``E``;
- **Fisher** ``F = Σ_b w_b J_bᵀ M_b J_b / Σ_b w_b`` with ``M_b = c_b Σ_t ĝ_t ĝ_tᵀ`` (below).

The batch loss is a sum of **terms** (the "samples" of the Fisher), ``ℓ_b = c_b Σ_t ℓ_t(z_t)``, one per row
``z_t`` of the outputs: an example of ``[N, C]`` logits or ``[N, *]`` regression outputs, and one *token*
(position) of token-level logits ``[B, L, V]`` (dict batches, or a criterion applied position by position).
``c_b`` is the reduction's scale: ``1/Σ_t w_{y_t}`` for mean cross-entropy (the count of non-ignored
tokens without class weights), ``1/numel`` for mean squared error, ``1`` for ``reduction="sum"``.

Closed forms (``p_t = softmax(z_t)``):

- cross-entropy (class weights ``w``, label smoothing ``ε``, ignored labels):
  ``ℓ_t = s_t lse(z_t) − a_tᵀ z_t`` with ``a_t = (1−ε) w_{y_t} e_{y_t} + (ε/V) w``
  (``a_t = w ∘ ((1−ε) q_t + ε/V)`` for probability targets ``q_t``; ``a_t = 0`` for an ignored label) and
  ``s_t = Σ_c a_tc``, so ``∇²_z ℓ_t = s_t (diag p_t − p_t p_tᵀ)`` and ``∇_z ℓ_t = s_t p_t − a_t``;
- squared error: ``ℓ_t = ‖z_t − y_t‖²``, ``∇²_z ℓ_t = 2 I``, ``∇_z ℓ_t = 2 (z_t − y_t)``.

Fisher kinds (``c`` the reduction's scale, so that ``F`` is on the scale of ``G`` and ``H``):

- ``"empirical"``: ``F = c Σ_t g_t g_tᵀ`` with the per-term gradients ``g_t = ∇_θ ℓ_t = J_tᵀ ĝ_t``,
  ``ĝ_t = ∇_z ℓ_t`` at the data's labels (the uncentred covariance of the per-sample gradients, curvlinops'
  ``EFLinearOperator``). It is never formed from per-sample parameter gradients (``n × samples`` numbers):
  ``F v = Jᵀ (c Σ_t ĝ_t (ĝ_tᵀ J v))`` costs one product like ``G v``.
- ``"mc"``: the same with ``ĝ_t`` at labels sampled from the model, ``mc_samples`` draws per term:
  ``ĝ_tj = √s_t (p_t − e_{ŷ_tj})``, ``ŷ_tj ~ p_t`` for cross-entropy, and ``ĝ_tj = √2 ε_tj``,
  ``ε_tj ~ N(0, I)`` for squared error (``y ~ N(z, I/2)``, the likelihood whose negative log is the loss up to
  a constant). ``E[ĝ ĝᵀ] = ∇²_z ℓ_t`` in both cases, so ``E[F_mc] = G`` exactly. The draws are counter-based:
  batch ``i`` of rank ``r`` uses a ``torch.Generator`` seeded from ``(seed, r, i)`` only (uniforms and
  normals drawn on the CPU in float64; a cross-entropy label is the inverse CDF of ``p_t`` at its uniform),
  so a rerun, and every rank, reproduces them; the labels are drawn once per batch and kept.

Products. Per batch the forward pass is run once and its graph kept (the first ``max_cached_graphs`` batches,
as the double-backward HVP), together with the graph of ``u ↦ Jᵀ u``. Then ``J v`` is one backward through
that graph (reverse-over-reverse: ``J v = ∂⟨Jᵀ u, v⟩/∂u``), the output-space matrix is applied in closed form,
and ``Jᵀ w`` is one backward through the forward graph: measured 1.1–1.4 gradients per product on the
benchmark MLP, 1.4–1.5 on its transformer (``benchmarks/bench_curvature.py``; ``torch.func.jvp`` + ``vjp``
with a fresh forward each time, as curvlinops does: 2.6–3.6). On a model without double backward
``J v`` falls back to forward-mode AD (a dual forward pass per product). On the CPU a block is multiplied
column by column; on accelerators in one batched call.

Data, model and options are those of :class:`~hessext.hvp.HessianOperator`: the batches of
:mod:`hessext.data` (``(inputs, targets)`` pairs and dict batches; a bare tensor has no targets and is
refused), the :class:`~hessext.evaluator.FunctionalEvaluator` (model never changed, eval mode by default,
``dtype=`` / ``device=`` copies), ``session()`` holding the model-state guard, and a reducer (``reducer=``:
:class:`~hessext.hvp.LocalMean` or :class:`~hessext.distributed.DataParallelMean`; see
:func:`matching_reducer`). The model's loss is evaluated through the user's own batch loss and compared with
the closed form on every batch: a criterion the closed form does not reproduce is refused with the two values.
Models that compute their own loss from ``labels`` (Hugging Face) are analysed on the loss they report: the
causal-LM shift (``logits[:, :-1]`` against ``labels[:, 1:]``) for ``model_type`` ``"decoder_only"``/None,
aligned labels otherwise.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_bool, check_int, check_seed
from ._state import isolated_forward
from .data import IGNORE_INDEX, check_loss_finite, make_batch_loss, normalize_data, validate_batch
from .distributed import DataParallelMean, DistributedHessianOperator
from .evaluator import FunctionalEvaluator
from .hvp import LocalMean, WeightedBatchSum, unsupported_by
from .linop import LinearOperator

__all__ = ["CurvatureOperator", "GGNOperator", "FisherOperator", "residual_operator", "matching_reducer",
           "FISHER_KINDS", "JVP_MODES", "SUPPORTED_LOSSES"]

FISHER_KINDS = ("empirical", "mc")
JVP_MODES = ("auto", "double_backward", "forward_ad")
SUPPORTED_LOSSES = ("nn.CrossEntropyLoss (and subclasses computing it), F.cross_entropy, None for dict "
                    "batches (cross-entropy), nn.MSELoss, F.mse_loss; reduction 'mean' or 'sum'")


# ------------------------------------------------------------------------------------------ loss forms
@dataclass(frozen=True)
class _Form:
    """A loss the closed forms know: ``kind`` ("cross_entropy" | "mse") and the criterion's options."""

    kind: str
    reduction: str = "mean"
    weight: Tensor | None = None
    smoothing: float = 0.0
    ignore_index: int = IGNORE_INDEX


def _loss_form(loss_fn: Any) -> _Form:
    """The closed form of ``loss_fn``; ``ValueError`` naming it and what is supported otherwise."""
    if loss_fn is None or loss_fn is F.cross_entropy:
        return _Form("cross_entropy")
    if loss_fn is F.mse_loss:
        return _Form("mse")
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.MSELoss)):
        if loss_fn.reduction not in ("mean", "sum"):
            raise ValueError(f"loss_fn {loss_fn!r} has reduction={loss_fn.reduction!r}; the batch loss must "
                             "be a scalar: reduction 'mean' or 'sum'")
        if isinstance(loss_fn, nn.MSELoss):
            return _Form("mse", loss_fn.reduction)
        return _Form("cross_entropy", loss_fn.reduction, loss_fn.weight, float(loss_fn.label_smoothing),
                     int(loss_fn.ignore_index))
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    raise ValueError(f"loss_fn={name!r} has no closed-form output Hessian in hessext; supported: "
                     f"{SUPPORTED_LOSSES}. Wrap a custom criterion's cross-entropy or squared-error part in "
                     "one of these, or analyse the Hessian (HessianOperator)")


class _Terms:
    """The output-space pieces of one batch: the outputs' rows ``[T, C]`` (a view/permutation of ``z``),
    ``c·s_t`` (cross-entropy) or ``2c`` (squared error) for ``G``, and ``ĝ`` with its scale for ``F``."""

    def __init__(self, shape: torch.Size, class_dim: int | None, loss: float) -> None:
        self.shape, self.class_dim, self.loss = shape, class_dim, loss
        self.P: Tensor | None = None            # [T, C] softmax (cross-entropy)
        self.s: Tensor | float = 0.0            # [T] c·s_t (cross-entropy) or the scalar 2c (squared error)
        self.g_hat: Tensor | None = None        # [k, T, C] output gradients of the Fisher
        self.g_scale = 1.0                      # c (empirical) or c/k (Monte Carlo)
        self.use_fisher = False
        self.c = 1.0                            # the reduction's scale
        self.s_raw: Tensor | None = None        # [T] s_t (cross-entropy)
        self.A: Tensor | None = None            # [T, C] a_t (cross-entropy), for the empirical Fisher
        self.R: Tensor | None = None            # [T, C] z_t − y_t (squared error), for the empirical Fisher

    def rows(self, x: Tensor) -> Tensor:
        """``[*lead, *shape] → [*lead, T, C]``."""
        lead = x.dim() - len(self.shape)
        if self.class_dim is not None:
            x = x.movedim(lead + self.class_dim, -1)
        C = x.shape[-1] if self.class_dim is not None else (
            int(torch.Size(self.shape[1:]).numel()) if len(self.shape) > 1 else 1)
        return x.reshape(*x.shape[:lead], -1, C)

    def unrows(self, r: Tensor) -> Tensor:
        """Inverse of :meth:`rows`."""
        lead = r.shape[:-2]
        if self.class_dim is None:
            return r.reshape(*lead, *self.shape)
        moved = list(self.shape)
        moved.append(moved.pop(self.class_dim))
        return r.reshape(*lead, *moved).movedim(-1, len(lead) + self.class_dim)

    def apply(self, u: Tensor) -> Tensor:
        """``M u`` for the output-space matrix ``M`` (``∇²_z ℓ`` or ``c Σ ĝ ĝᵀ``), ``u: [*lead, T, C]``."""
        if self.use_fisher:
            gh = self.g_hat                                           # [k, T, C]
            coef = (gh * u.unsqueeze(-3)).sum(-1, keepdim=True)       # [*lead, k, T, 1]
            return (gh * coef).sum(-3) * self.g_scale
        if self.P is None:
            return u * self.s
        Pu = self.P * u
        return self.s[:, None] * (Pu - self.P * Pu.sum(-1, keepdim=True))


def _ce_terms(z: Tensor, y: Tensor, form: _Form, ignored: Tensor | None, class_dim: int) -> _Terms:
    """Cross-entropy terms of logits ``z`` (classes along ``class_dim``) against class indices (``ignored``:
    mask of ignored labels) or probabilities ``y``."""
    t = _Terms(z.shape, class_dim, 0.0)
    Z = t.rows(z)
    T, V = Z.shape
    w = (torch.ones(V, dtype=Z.dtype, device=Z.device) if form.weight is None
         else form.weight.to(dtype=Z.dtype, device=Z.device))
    eps = form.smoothing
    if y.is_floating_point():
        A = w * ((1 - eps) * t.rows(y.to(Z.dtype)) + eps / V)
        count = float(T)
    else:
        yy = y.reshape(-1)
        keep = torch.ones_like(yy, dtype=torch.bool) if ignored is None else ~ignored.reshape(-1)
        idx = yy.masked_fill(~keep, 0)
        if bool(keep.any()) and (int(idx.min()) < 0 or int(idx.max()) >= V):
            raise ValueError(f"labels out of range [0, {V}): got values in [{int(idx.min())}, "
                             f"{int(idx.max())}]")
        wy = w[idx] * keep
        A = (eps / V) * w * keep[:, None].to(Z.dtype)
        A = A.scatter_add(1, idx[:, None], ((1 - eps) * wy)[:, None])
        count = float(wy.sum())
    s = A.sum(-1)
    c = 1.0 / count if form.reduction == "mean" else 1.0
    t.loss = float(c * (s * torch.logsumexp(Z, -1) - (A * Z).sum(-1)).sum())
    t.P, t.s, t.s_raw, t.A, t.c = torch.softmax(Z, -1), c * s, s, A, c
    return t


def _mse_terms(z: Tensor, y: Tensor, form: _Form) -> _Terms:
    if not isinstance(y, Tensor) or y.shape != z.shape:
        got = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"squared error: targets of shape {got} do not match outputs of shape "
                         f"{list(z.shape)} (the closed form needs equal shapes)")
    t = _Terms(z.shape, None, 0.0)
    c = 1.0 / max(z.numel(), 1) if form.reduction == "mean" else 1.0
    t.loss = float(c * ((z - y.to(z.dtype)) ** 2).sum())
    t.s, t.c, t.R = 2.0 * c, c, t.rows(z - y.to(z.dtype))
    return t


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): the counter-based seed of one batch's draws."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def _output_tensor(out: Any) -> Tensor:
    """The logits / outputs in a model's output (``.logits``, ``["logits"]``, ``[0]`` or the tensor)."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, Tensor):
        return out.logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find the outputs in the model output of type {type(out).__name__}; expected a "
                    "tensor or an object with .logits")


# ------------------------------------------------------------------------------------------ operator
@dataclass
class _Entry:
    """One batch's kept state: the outputs ``z`` with their graph, the dummy ``u`` and ``Jᵀu`` with its graph
    (None in forward-AD mode), and the closed-form terms."""

    z: Tensor
    u: Tensor | None
    gu: tuple[Tensor | None, ...] | None
    terms: _Terms


class CurvatureOperator(LinearOperator):
    """Base of :class:`GGNOperator` and :class:`FisherOperator`: ``Σ_b w_b J_bᵀ M_b J_b / Σ_b w_b`` (module
    docstring). Arguments as :class:`~hessext.hvp.HessianOperator`'s, plus:

    Args:
        pad_idx: a label value ignored by dict-batch losses besides -100 (as API B's ``pad_idx``).
        loss_source: which loss of a dict batch (:mod:`hessext.data`): "auto" (a model that computes its own
            loss from ``labels`` is analysed on it: Hugging Face causal LMs with the label shift), "model" or
            "loss_fn" (labels aligned with the logits). ``loss_source_used`` tells which.
        jvp: how ``J v`` is computed: "auto" (reverse-over-reverse through the kept graph, forward-mode AD on
            a model without double backward), "double_backward" or "forward_ad".
        cache_graph: keep the graphs of the first ``max_cached_graphs`` (4) batches between products.
        reducer: :class:`~hessext.hvp.LocalMean` (None) or a
            :class:`~hessext.distributed.DataParallelMean` (:func:`matching_reducer`).

    Attributes:
        layout, model, evaluator, num_batches, loss_kind ("cross_entropy" | "mse"), loss_source_used,
        mode_used (the ``jvp`` mode in use), num_matvecs.
    """

    def __init__(self, model: nn.Module, loss_fn: Any, data: Any, params: Any = None, *,
                 num_batches: int | None = None, model_type: str | None = None, pad_idx: int | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 eval_mode: bool = True, loss_source: str = "auto", jvp: str = "auto",
                 cache_graph: bool = True, reducer: Any = None) -> None:
        if jvp not in JVP_MODES:
            raise ValueError(f"jvp must be one of {JVP_MODES}, got {jvp!r}")
        standard = make_batch_loss(loss_fn, model, model_type=model_type, pad_idx=pad_idx,
                                   loss_source=loss_source)
        batches = self._batches_of(data, num_batches)
        source = standard.source_for(batches)
        dicts = [isinstance(b, Mapping) for b in batches]
        # the model's own loss is cross-entropy (checked against its value); else the criterion's closed form
        self.form = _Form("cross_entropy") if source == "model" else _loss_form(loss_fn)
        for i, b in enumerate(batches):
            validate_batch(b, i, model_type, loss_source=source)
            if dicts[i] and "labels" not in b:
                raise ValueError(f"batch {i}: a dict batch without 'labels': the Gauss-Newton and Fisher "
                                 "matrices need the labels")
        if loss_fn is None and not all(dicts):
            raise TypeError("loss_fn is None; it is required for (inputs, targets) batches (None means "
                            "cross-entropy only for dict batches)")
        if self.form.kind != "cross_entropy" and any(dicts):
            raise ValueError(f"dict batches are analysed with cross-entropy of the logits, got "
                             f"loss_fn={loss_fn!r}")
        self.loss_source_used = source
        self._captured: tuple[Any, dict, Any] | None = None
        ev = FunctionalEvaluator(model, None, batches[0] if len(batches) == 1 else iter(batches), params,
                                 model_type=model_type, batch_loss=self._capturing(standard), dtype=dtype,
                                 device=device, eval_mode=eval_mode)
        super().__init__(ev.layout.n, ev.dtype, ev.device)
        self.evaluator, self.model, self.layout, self.num_batches = ev, ev.model, ev.layout, ev.num_batches
        self.model_type, self.pad_idx, self.loss_kind = model_type, pad_idx, self.form.kind
        self.mode = jvp
        self._mode_used: str | None = None if jvp == "auto" else jvp
        self.cache_graph = check_bool("cache_graph", cache_graph)
        self.max_cached_graphs = 4
        self._entries: dict[int, _Entry] = {}
        self._versions: tuple[int, ...] | None = None
        self._layouts: dict[int, Any] = {}
        self._batched = True
        self._reducer = reducer if reducer is not None else LocalMean()
        self._reducer.attach(self.dtype, self.device)
        self._sum = WeightedBatchSum()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _batches_of(data: Any, num_batches: int | None) -> list:
        with isolated_forward():  # a DataLoader draws its seed from a private copy of the RNG
            batches = normalize_data(data, num_batches)
        for i, b in enumerate(batches):
            if isinstance(b, Tensor):
                raise ValueError(f"batch {i} is a bare tensor: the Gauss-Newton and Fisher matrices need "
                                 "targets (the loss as a function of the model outputs and the labels); pass "
                                 "(inputs, targets) pairs or dict batches with 'labels'")
        return batches

    def _capturing(self, standard: Callable[..., Any]) -> Callable[..., Any]:
        """The user's batch loss, recording the model call's output and keywords for the closed form."""
        def batch_loss(model_call: Callable[..., Any], batch: Any) -> Any:
            seen: dict[str, Any] = {}

            def call(*args: Any, **kwargs: Any) -> Any:
                out = model_call(*args, **kwargs)
                seen["out"], seen["kwargs"] = out, kwargs
                return out
            loss, weight = standard(call, batch)
            if "out" not in seen:
                raise RuntimeError("the batch loss did not call the model")
            self._captured = (seen["out"], seen["kwargs"], batch)
            return loss, weight
        return batch_loss

    # ------------------------------------------------------------------ the output-space matrix
    def _finish_terms(self, i: int, t: _Terms) -> _Terms:
        """Subclass hook: what ``M`` is (GGN: the loss Hessian as built)."""
        t.A = t.R = None
        return t

    def _forward(self, i: int, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Any, dict, Any]:
        """``(user loss, outputs z, raw output, model-call keywords, batch)`` of batch ``i`` at ``params``."""
        self._captured = None
        loss = self.evaluator.loss(i, params)
        out, kwargs, batch = self._captured
        self._captured = None
        return loss, _output_tensor(out), out, kwargs, batch

    def _candidates(self, i: int, z: Tensor, out: Any, kwargs: dict, batch: Any
                    ) -> list[tuple[str, Callable[[], _Terms]]]:
        """The readings of batch ``i``'s loss in closed form (the first one whose value matches is kept)."""
        form = self.form
        if isinstance(batch, Mapping):
            return self._dict_candidates(z, batch["labels"])
        y = batch[1]
        if form.kind == "mse":
            return [("squared error", lambda: _mse_terms(z, y, form))]
        if not isinstance(y, Tensor):
            raise TypeError(f"batch {i}: cross-entropy targets must be a tensor, got {type(y).__name__}")
        ign = None if y.is_floating_point() else (y == form.ignore_index)
        if z.dim() <= 1:
            return [("single example", lambda: _ce_terms(z.reshape(1, -1), y.reshape(1, *y.shape[1:])
                                                         if y.is_floating_point() else y.reshape(1), form,
                                                         None if ign is None else ign.reshape(1), 1))]
        dims = []
        want = z.shape if y.is_floating_point() else None
        if (y.shape == want) or (want is None and y.shape == z.shape[:1] + z.shape[2:]):
            dims.append(1)
        if z.dim() > 2 and ((want is not None and y.shape == z.shape)
                            or (want is None and y.shape == z.shape[:-1])):
            dims.append(z.dim() - 1)
        if not dims:
            raise ValueError(f"batch {i}: cross-entropy targets of shape {list(y.shape)} fit neither classes "
                             f"along dim 1 nor along the last dim of outputs of shape {list(z.shape)}")
        return [(f"classes along dim {d}", lambda d=d: _ce_terms(z, y, form, ign, d)) for d in dims]

    def _dict_candidates(self, z: Tensor, labels: Tensor) -> list[tuple[str, Callable[[], _Terms]]]:
        """Dict batches: logits ``[..., V]`` against labels aligned position by position; for the model's own
        loss (Hugging Face) also the causal-LM shift (``logits[:, t]`` against ``labels[:, t + 1]``), tried
        first for ``model_type`` "decoder_only"/None."""
        V = z.shape[-1]
        if z.shape[:-1].numel() != labels.numel():
            raise ValueError(f"logits of shape {list(z.shape)} do not match labels of shape "
                             f"{list(labels.shape)} position by position")
        own = self.loss_source_used == "model"
        readings = [("aligned", labels)]
        if own and labels.dim() == 2 and z.dim() == 3:
            shifted = labels.new_full(labels.shape, IGNORE_INDEX)
            shifted[:, :-1] = labels[:, 1:]
            shift = ("shifted (causal LM)", shifted)
            readings = [shift] + readings if self.model_type in (None, "decoder_only") else readings + [shift]
        ignored = {IGNORE_INDEX} if own else ({IGNORE_INDEX, self.form.ignore_index}
                                             | ({self.pad_idx} if self.pad_idx is not None else set()))

        def build(lab: Tensor) -> _Terms:
            lab = lab.reshape(-1)
            ign = torch.zeros_like(lab, dtype=torch.bool)
            for v in ignored:
                ign = ign | (lab == v)
            return self._reshaped(_ce_terms(z.reshape(-1, V), lab, self.form, ign, 1), z)
        return [(name, lambda lab=lab: build(lab)) for name, lab in readings]

    @staticmethod
    def _reshaped(t: _Terms, z: Tensor) -> _Terms:
        """Terms built on ``z.reshape(-1, V)`` given ``z``'s own shape (classes last)."""
        t.shape, t.class_dim = z.shape, z.dim() - 1
        return t

    def _terms(self, i: int, z: Tensor, loss: Tensor, out: Any, kwargs: dict, batch: Any) -> _Terms:
        """The closed-form terms of batch ``i``, checked against the user's loss value."""
        user = check_loss_finite(loss, i)
        cands = self._candidates(i, z, out, kwargs, batch)
        if i in self._layouts:
            cands = [c for c in cands if c[0] == self._layouts[i]] or cands
        # the precision of the loss the user's code computed (transformers' losses upcast to float32 only)
        eps = torch.finfo(loss.dtype if loss.is_floating_point() else z.dtype).eps
        tol = math.sqrt(eps) * max(1.0, abs(user))
        values = []
        for name, build in cands:
            t = build()
            if abs(t.loss - user) <= tol:
                self._layouts[i] = name
                return self._finish_terms(i, t)
            values.append(f"{name}: {t.loss:.8g}")
        raise ValueError(f"batch {i}: the loss is {user:.8g} but its closed form ({self.form.kind}, "
                         f"{'; '.join(values)}) differs: loss_fn computes something {type(self).__name__} "
                         f"does not model (supported: {SUPPORTED_LOSSES})")

    # ------------------------------------------------------------------ per-batch graphs
    def _entry(self, i: int) -> _Entry:
        ev = self.evaluator
        if self._entries and ev.versions() != self._versions:
            self._entries.clear()                   # a parameter or buffer was written in place
        if i in self._entries:
            return self._entries[i]
        leaves = list(ev.leaves.values())
        loss, z, out, kwargs, batch = self._forward(i, ev.leaves)
        terms = self._terms(i, z.detach(), loss, out, kwargs, batch)
        if not z.requires_grad:
            raise ValueError(f"the model outputs of batch {i} do not depend on the analysed parameters "
                             "through autograd (computed under no_grad, or detached)")
        u = gu = None
        if self._mode_used != "forward_ad":
            u = torch.zeros_like(z, requires_grad=True)
            gu = torch.autograd.grad(z, leaves, u, create_graph=True, allow_unused=True)
        entry = _Entry(z, u, gu, terms)
        if self.cache_graph and i < self.max_cached_graphs:
            if not self._entries:
                self._versions = ev.versions()
            self._entries[i] = entry
        return entry

    def _jvp(self, i: int, e: _Entry, vs: list[Tensor], batched: bool) -> Tensor:
        """``J v`` (``vs`` per parameter; with ``batched`` a leading column dimension)."""
        if self._mode_used != "forward_ad":
            try:
                pairs = [(g, v) for g, v in zip(e.gu, vs) if g is not None and g.requires_grad]
                if not pairs:
                    return torch.zeros((vs[0].shape[0],) * batched + tuple(e.z.shape), dtype=e.z.dtype,
                                       device=e.z.device)
                jv = torch.autograd.grad([g for g, _ in pairs], e.u, [v for _, v in pairs], retain_graph=True,
                                         allow_unused=True, is_grads_batched=batched)[0]
                self._mode_used = "double_backward"
                return jv if jv is not None else e.z.new_zeros((vs[0].shape[0],) * batched + tuple(e.z.shape))
            except (RuntimeError, NotImplementedError) as exc:
                if self._mode_used == "double_backward" or batched \
                        or not unsupported_by("double_backward", exc):
                    raise
                warnings.warn(f"jvp='auto': this model has no double backward ({str(exc)[:200]}); computing "
                              "J v by forward-mode AD", RuntimeWarning, stacklevel=6)
                self._mode_used = "forward_ad"
        ev = self.evaluator
        with fwAD.dual_level(), torch.no_grad():
            duals = {k: fwAD.make_dual(t.detach(), v) for (k, t), v in zip(ev.leaves.items(), vs)}
            _, z, _, _, _ = self._forward(i, duals)
            tangent = fwAD.unpack_dual(z).tangent
        return torch.zeros_like(e.z) if tangent is None else tangent

    def _batch_product(self, i: int, Vs: list[Tensor]) -> list[Tensor]:
        """``M_i``-curvature times the block ``Vs`` (per parameter ``[m, *shape]``), same form out."""
        e = self._entry(i)
        leaves = list(self.evaluator.leaves.values())
        m = Vs[0].shape[0]

        def product(vs: list[Tensor], batched: bool) -> list[Tensor]:
            jv = self._jvp(i, e, vs, batched)
            w = e.terms.unrows(e.terms.apply(e.terms.rows(jv)))
            gs = torch.autograd.grad(e.z, leaves, w, retain_graph=True, allow_unused=True,
                                     is_grads_batched=batched)
            return [torch.zeros_like(v) if g is None else g for g, v in zip(gs, vs)]

        if m > 1 and self._batched and self.device.type != "cpu" and self._mode_used == "double_backward":
            try:
                return product(Vs, True)
            except (RuntimeError, NotImplementedError) as exc:
                if not unsupported_by("batching", exc):
                    raise
                self._batched = False
        if m == 1:
            return [h[None] for h in product([v[0] for v in Vs], False)]
        cols = [product([v[j] for v in Vs], False) for j in range(m)]
        return [torch.stack(c) for c in zip(*cols)]

    # ------------------------------------------------------------------ LinearOperator
    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """The model-state guard and autograd on, whatever the caller's grad or inference mode."""
        with self.evaluator.guard(), torch.inference_mode(False), torch.enable_grad():
            yield

    def session(self) -> contextlib.AbstractContextManager:
        """The model-state guard held for a run of products (as :meth:`HessianOperator.session`)."""
        return self.evaluator.guard()

    @property
    def mode_used(self) -> str:
        """How ``J v`` is computed ("double_backward" or "forward_ad"; resolved on the first product)."""
        return self._mode_used or "double_backward"

    def _matmat(self, X: Tensor) -> Tensor:
        with self._call():
            X = X.clone() if X.is_inference() else X
            Vs = self.layout.unflatten_batched(X)
            with self._reducer.guard(self.n * X.shape[1]):
                single = self.num_batches == 1 and self._reducer.local
                # (the weight of batch i is known once its product has been evaluated: left to right)
                products = ((self.layout.flatten_batched(self._batch_product(i, Vs)),
                             self.evaluator.weights[i]) for i in range(self.num_batches))
                total, weight_sum, ok = self._sum(products, single)
                if not bool(ok.all()):
                    raise RuntimeError(f"{type(self).__name__} product contains NaN/Inf on batch "
                                       f"{int((~ok).nonzero()[0])}")
                if single:
                    return total.T.contiguous()
                return self._reducer.reduce(total.T, weight_sum).contiguous()

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """Weighted mean loss and its gradient ``[n]`` over the operator's batches (the user's loss)."""
        with self._call(), self._reducer.guard(self.n + 1):
            total = torch.zeros(self.n + 1, dtype=self.dtype, device=self.device)
            weight_sum = 0.0
            for i in range(self.num_batches):
                loss, grads, _ = self.evaluator.gradient(i, create_graph=False)
                w = self.evaluator.weights[i]
                flat = torch.cat([torch.zeros(k, dtype=self.dtype, device=self.device) if g is None
                                  else g.reshape(-1) for g, k in zip(grads, self.layout.numels)])
                total[:-1].add_(flat, alpha=w)
                total[-1] += w * loss.to(self.dtype)
                weight_sum += w
            out = self._reducer.reduce(total, weight_sum)
        return float(out[-1]), out[:-1].clone()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, loss={self.loss_kind}, batches={self.num_batches}, "
                f"dtype={self.dtype}, device={self.device})")


class GGNOperator(CurvatureOperator):
    """The generalised Gauss–Newton matrix ``G = Σ_b w_b J_bᵀ ∇²_z ℓ_b J_b / Σ_b w_b`` (module docstring):
    positive semi-definite for cross-entropy and squared error; ``HessianOperator(...) - GGNOperator(...)``
    is the residual ``E = H − G``.

    Args:
        model, loss_fn, data, params, num_batches, model_type, dtype, device, eval_mode: as
            :class:`~hessext.hvp.HessianOperator` (``loss_fn``: :data:`SUPPORTED_LOSSES`; batches with
            targets). Further keywords: :class:`CurvatureOperator`.

    Raises:
        ValueError: an unsupported loss (named), a bare-tensor batch, a loss value the closed form does not
            reproduce (on the first product), and the data errors of :class:`HessianOperator`.
    """


class FisherOperator(CurvatureOperator):
    """The Fisher matrix ``F = Σ_b w_b J_bᵀ (c Σ_t ĝ_t ĝ_tᵀ) J_b / Σ_b w_b`` (module docstring).

    Args:
        kind: "empirical" (labels of the data) or "mc" (labels sampled from the model; ``E[F] = G``).
        mc_samples: draws per term for ``kind="mc"``.
        seed: seed of the draws (counter-based: batch ``i`` of rank ``r`` uses ``(seed, r, i)`` only).
        other arguments: :class:`GGNOperator`.
    """

    def __init__(self, model: nn.Module, loss_fn: Any, data: Any, params: Any = None, *,
                 kind: str = "empirical", mc_samples: int = 1, seed: int = 0, **kwargs: Any) -> None:
        if kind not in FISHER_KINDS:
            raise ValueError(f"kind must be one of {FISHER_KINDS}, got {kind!r}")
        self.kind = kind
        self.mc_samples = check_int("mc_samples", mc_samples, minimum=1)
        self.seed = check_seed(seed)
        super().__init__(model, loss_fn, data, params, **kwargs)

    def _finish_terms(self, i: int, t: _Terms) -> _Terms:
        t.use_fisher = True
        if self.kind == "empirical":
            t.g_hat = (t.s_raw[:, None] * t.P - t.A)[None] if t.P is not None else (2.0 * t.R)[None]
            t.g_scale, t.A, t.R = t.c, None, None
            return t
        k = self.mc_samples
        rank = int(getattr(self._reducer, "rank", 0))
        gen = torch.Generator(device="cpu").manual_seed(_mix(self.seed, rank, i))
        if t.P is None:                               # squared error: y ~ N(z, I/2), ĝ = √2 ε
            eps = torch.randn((k, *t.R.shape), generator=gen, dtype=torch.float64)
            t.g_hat = (math.sqrt(2.0) * eps).to(dtype=t.R.dtype, device=t.R.device)
        else:                                         # cross-entropy: ŷ ~ p by the inverse CDF at a uniform
            P = t.P
            T, V = P.shape
            u = torch.rand((T, k), generator=gen, dtype=torch.float64)
            cdf = P.detach().to("cpu", torch.float64).cumsum(-1)
            yhat = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=V - 1).to(P.device)   # [T, k]
            onehot = F.one_hot(yhat.T, V).to(P.dtype)                                          # [k, T, V]
            t.g_hat = torch.sqrt(t.s_raw)[None, :, None] * (P[None] - onehot)
        t.g_scale, t.A, t.R = t.c / k, None, None
        return t


def residual_operator(H: LinearOperator, G: LinearOperator) -> LinearOperator:
    """``E = H − G`` (lazy): the residual of the Gauss–Newton split ``H = G + E`` (module docstring). Both
    operators must analyse the same parameters (same layout when they have one)."""
    if not isinstance(H, LinearOperator) or not isinstance(G, LinearOperator):
        raise TypeError(f"H and G must be LinearOperators, got {type(H).__name__} and {type(G).__name__}")
    lh, lg = getattr(H, "layout", None), getattr(G, "layout", None)
    if lh is not None and lg is not None and lh != lg:
        raise ValueError(f"H and G analyse different parameters ({len(lh)} vs {len(lg)} tensors, n={H.n} vs "
                         f"{G.n}): build them with the same params")
    return H - G


def matching_reducer(H: Any) -> Any:
    """The reducer a curvature operator needs to average like ``H``: a
    :class:`~hessext.distributed.DataParallelMean` over ``H``'s group for a
    :class:`~hessext.distributed.DistributedHessianOperator` (what
    :func:`hessext.distributed.hessian_operator` builds inside ``data_parallel()``), else None (local)."""
    if isinstance(H, DistributedHessianOperator):
        return DataParallelMean(H.process_group, H.reduce_dtype)
    return None
