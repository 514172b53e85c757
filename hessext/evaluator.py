"""The one functional evaluator of the user's loss: ``L_b(θ)`` of batch ``b`` at given parameter tensors.

:class:`FunctionalEvaluator` owns everything between the user's objects and a differentiable scalar:

- the **parameter/buffer split**: the analysed parameters (a :class:`~hessext.layout.ParamLayout`) become
  leaves ``θ`` — detached aliases of the user's tensors, or converted copies when ``dtype=``/``device=``
  ask for it — the other parameters and the buffers detached constants (buffers cloned per evaluation in
  train mode, where BatchNorm writes them);
- the **computation dtype**: ``dtype=`` (float32/float64), else the parameters' own float32/float64; a
  **half-precision model** (bfloat16/float16 parameters) is analysed on float32 copies of its parameters,
  buffers and floating inputs (:func:`hessext._checks.work_dtype`), so what is analysed is the Hessian of the
  *float32-upcast model* — the same weights (exactly representable in float32) run in float32 arithmetic,
  not the rounding of bf16/fp16 arithmetic, which has no useful second derivative. The user's model stays
  in its dtype, untouched; ``upcast`` tells that this happened;
- the **batches** (:mod:`hessext.data`), converted like the parameters and validated up front; which loss
  of a dict batch is analysed (the model's own ``model(**batch).loss`` or ``loss_fn`` on the logits) is
  ``loss_source`` (see :mod:`hessext.data`), the choice made is ``loss_source_used``;
- the **loss of batch i at given parameter tensors**: the user's model *and* loss function run together as
  one module under ``torch.func.functional_call``, so a loss term that reads ``model.parameters()`` (weight
  decay) sees ``θ``; a term on the model's ``Parameter`` objects held in a closure (a proximal term over a
  captured list) is differentiated through those objects and added (:meth:`gradient`, :meth:`combine`), so
  every term of the loss is in its derivatives;
- the **model-state guard** around a run (:meth:`guard`) and the isolation of every forward pass
  (:func:`hessext._state.isolated_forward`: private RNG, math attention).

``HessianOperator`` (the HVP strategies) and the loss landscapes evaluate the loss only through this class.

Autograd modes: tensors are built outside inference mode (inference tensors among the parameters or the data
are cloned into normal tensors), and a loss with no autograd graph (computed under ``no_grad``, detached)
raises a ``ValueError`` that says so instead of giving zero derivatives.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._checks import check_bool, work_dtype
from ._state import ModelStructure, guard_held, isolated_forward, preserve_model_state
from .data import (
    BatchLossFunction,
    check_loss,
    check_loss_finite,
    check_loss_source,
    make_batch_loss,
    map_tensors,
    normalize_data,
    tensors_of,
    validate_batch,
)
from .layout import ParamLayout

__all__ = ["FunctionalEvaluator", "LossModule", "LossDtypeError", "parameter_names", "FLOAT_DTYPES"]


class LossDtypeError(RuntimeError):
    """torch could not differentiate the user's loss because it mixes dtypes (see
    :meth:`FunctionalEvaluator.differentiating`)."""

FLOAT_DTYPES = (torch.float32, torch.float64)
_PREFIX = "model."


class LossModule(nn.Module):
    """The user's model and its batch loss as one module: ``forward(batch) = batch_loss(model, batch)``.

    Evaluated with ``functional_call``, the loss function runs while the analysed tensors are swapped in,
    so terms that read the parameters through the module are part of the loss being differentiated. The
    model is a submodule (its names gain the prefix ``model.``); the loss function is not registered."""

    def __init__(self, model: nn.Module, batch_loss: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "batch_loss", batch_loss)

    def forward(self, batch: Any) -> Any:
        return self.batch_loss(self.model, batch)


def parameter_names(model: nn.Module, params: Any) -> list[str] | None:
    """``params`` as parameter names: None (all trainable), names, or the model's Parameters (a dict: its
    keys)."""
    if params is None:
        return None
    if isinstance(params, (str, Tensor)):
        params = [params]
    if isinstance(params, Mapping):
        params = list(params.keys())
    items = list(params)
    if not items:
        raise ValueError("params is empty: select at least one parameter (or pass params=None)")
    if all(isinstance(p, str) for p in items):
        return items
    if all(isinstance(p, Tensor) for p in items):
        by_id = {id(p): k for k, p in model.named_parameters()}
        out = []
        for j, p in enumerate(items):
            if id(p) not in by_id:
                raise ValueError(f"params[{j}] (a tensor of shape {list(p.shape)}) is not a parameter of the "
                                 "model")
            out.append(by_id[id(p)])
        return out
    kinds = sorted({type(p).__name__ for p in items})
    raise TypeError(f"params must be None, a list of names or a list of the model's Parameters, got {kinds}")


def _compute_dtype_device(names: Sequence[str], analysed: Sequence[Tensor], dtype: torch.dtype | None,
                          device: Any) -> tuple[torch.dtype, torch.device]:
    """The dtype and device the analysis computes in (errors name the parameter and what to pass).

    ``dtype=None``: the parameters' work dtype (:func:`hessext._checks.work_dtype`: float32/float64 as they
    are, bfloat16/float16 → float32); parameters whose work dtypes differ (float32 and float64) need an
    explicit choice."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be torch.float32, torch.float64 or None, got {dtype!r}")
    for k, p in zip(names, analysed):
        if not p.is_floating_point():
            raise TypeError(f"parameter {k!r} has dtype {p.dtype}; the Hessian is computed in float32 or "
                            "float64 for floating-point parameters only (dtype=torch.float32 converts "
                            "floating parameters, not this one): leave it out of params=")
    dtypes = {work_dtype(p.dtype) for p in analysed}
    if dtype is None and len(dtypes) > 1:
        found = sorted({str(p.dtype) for p in analysed})
        raise TypeError(f"the analysed parameters have mixed dtypes {found}; choose the computation dtype: "
                        "dtype=torch.float32 or torch.float64 (HessianOperator, ModelWrapper.operator, "
                        "HessianConfig.dtype) or float64=True (min_max_hessian_eigs, hessian_trace)")
    devices = {p.device for p in analysed}
    if device is None and len(devices) > 1:
        raise ValueError(f"the analysed parameters are on several devices {sorted(map(str, devices))}; "
                         "pass device=")
    return (dtype if dtype is not None else dtypes.pop(),
            torch.device(device) if device is not None else analysed[0].device)


class FunctionalEvaluator:
    """The weighted per-batch losses ``L_b(θ)`` of ``model`` + ``loss_fn`` over ``data``, evaluated
    functionally (module docstring). Arguments as :class:`~hessext.hvp.HessianOperator`'s.

    Attributes:
        model, layout, dtype, device, eval_mode, num_batches.
        upcast: True when half-precision parameters are analysed on float32 copies (``dtype=None``).
        loss_source_used: the loss analysed: ``"model"`` (``model(**batch).loss``), ``"loss_fn"`` (the
            criterion on the output) or ``"batch_loss"`` (a custom function); see :mod:`hessext.data`.
        leaves: dict name → leaf tensor ``θ_k`` (``requires_grad``), in layout order.
        weights: dict batch index → weight ``w_b`` (its number of samples, or the ``batch_loss`` weight),
            known once the batch has been evaluated.
        num_evaluations: forward passes run so far.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Tensor] | None, data: Any,
                 params: Any = None, *, num_batches: int | None = None, model_type: str | None = None,
                 batch_loss: Callable[..., Any] | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, eval_mode: bool = True,
                 loss_source: str = "auto") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.eval_mode = check_bool("eval_mode", eval_mode)
        check_loss_source(loss_source)
        if batch_loss is not None and loss_source not in ("auto", getattr(batch_loss, "loss_source", None)):
            raise ValueError(f"loss_source={loss_source!r} does not apply with batch_loss= (the custom "
                             "function computes the loss); leave loss_source='auto'")
        fn = make_batch_loss(loss_fn, model, model_type=model_type, batch_loss=batch_loss,
                             loss_source=loss_source)
        builtin = batch_loss if isinstance(batch_loss, BatchLossFunction) else fn
        builtin = builtin if isinstance(builtin, BatchLossFunction) else None
        self.layout = ParamLayout.from_module(model, parameter_names(model, params))
        named = dict(model.named_parameters())
        analysed = [named[k] for k in self.layout.names]
        self.dtype, self.device = _compute_dtype_device(self.layout.names, analysed, dtype, device)
        self.upcast = dtype is None and any(p.dtype != self.dtype for p in analysed)
        self._convert = dtype is not None or device is not None or self.upcast
        self._float = self.dtype if self.upcast else dtype
        self._structure: ModelStructure | None = None
        with torch.inference_mode(False):
            self.leaves = {k: self._alias(p).requires_grad_(True)
                           for k, p in zip(self.layout.names, analysed)}
            self._fixed = {_PREFIX + k: self._alias(p) for k, p in named.items() if k not in self.leaves}
            self._buffers = {_PREFIX + k: self._alias(b) for k, b in model.named_buffers()}
            self._batches = self._load(data, num_batches, model_type, batch_loss is not None,
                                       builtin.dict_source if builtin is not None else "loss_fn")
        self.loss_source_used = builtin.source_for(self._batches) if builtin is not None else "batch_loss"
        # the model's own Parameters: a loss term on them (a closure) is differentiated through them
        self._originals = [(j, p) for j, p in enumerate(analysed)]
        self.num_batches = len(self._batches)
        self._module = LossModule(model, fn)
        self.weights: dict[int, float] = {}
        self.num_evaluations = 0

    # ------------------------------------------------------------------ construction
    def _alias(self, t: Tensor) -> Tensor:
        """A detached alias of ``t`` (a converted copy with ``dtype=``/``device=``; a normal-tensor clone of
        an inference tensor)."""
        t = t.detach()
        if self._convert:
            to_dtype = self.dtype if (self._float is not None and t.is_floating_point()) else t.dtype
            return t.to(device=self.device, dtype=to_dtype, copy=True)
        return t.clone() if t.is_inference() else t

    def _load(self, data: Any, num_batches: int | None, model_type: str | None, custom: bool,
              dict_source: str) -> list:
        # a DataLoader draws its base seed (and a shuffled one its order) from the RNG: give it a private copy
        with isolated_forward():
            batches = normalize_data(data, num_batches, custom=custom)
        if not custom:
            for i, b in enumerate(batches):
                validate_batch(b, i, model_type, dict_source)
        if self._convert:
            def conv(t: Tensor) -> Tensor:
                if self._float is not None and t.is_floating_point():
                    return t.to(device=self.device, dtype=self._float)
                return t.to(device=self.device)
            return [map_tensors(b, conv) for b in batches]
        for i, b in enumerate(batches):
            for t in tensors_of(b):
                if t.device != self.device:
                    raise ValueError(f"data batch {i} is on device {t.device} but the model's parameters "
                                     f"are on {self.device}; move them to one device or pass device=")
        return [map_tensors(b, lambda t: t.clone() if t.is_inference() else t) for b in batches]

    # ------------------------------------------------------------------ the run
    def guard(self) -> contextlib.AbstractContextManager:
        """The model-state guard of :mod:`hessext._state` for this model and mode (re-entrant; nothing to do
        when this thread already holds one in this mode)."""
        if guard_held(self.model, self.eval_mode):
            return contextlib.nullcontext()
        if self._structure is None:
            self._structure = ModelStructure(self.model)
        return preserve_model_state(self.model, self.eval_mode, structure=self._structure)

    def versions(self) -> tuple[int, ...]:
        """Autograd version counters of every tensor the evaluation reads (a change: written in place)."""
        ts = list(self.leaves.values()) + list(self._fixed.values()) + list(self._buffers.values())
        return tuple(t._version for t in ts)

    # ------------------------------------------------------------------ losses
    def loss(self, i: int, params: Mapping[str, Tensor]) -> Tensor:
        """``L_i`` at the analysed tensors ``params`` (layout names → tensors): a 0-dim tensor; records the
        batch's weight. Grad mode is the caller's."""
        buffers = self._buffers
        if not self.eval_mode:  # train-mode modules (BatchNorm) write their buffers: give them clones
            buffers = {k: b.clone() for k, b in buffers.items()}
        state = {**self._fixed, **buffers}
        for k, t in params.items():
            state[_PREFIX + k] = t
        with isolated_forward():
            loss, w = functional_call(self._module, state, (self._batches[i],))
        self.num_evaluations += 1
        self.weights[i] = float(w)
        return check_loss(loss, i)

    def mean_loss(self, params: Mapping[str, Tensor]) -> Tensor:
        """``Σ_b w_b L_b / Σ_b w_b`` at ``params`` (the loss landscapes' ``L(θ)``)."""
        total, weight = None, 0.0
        for i in range(self.num_batches):
            loss = self.loss(i, params)
            w = self.weights[i]
            total = loss * w if total is None else total + loss * w
            weight += w
        assert total is not None
        return total / weight

    @staticmethod
    def require_graph(loss: Tensor, i: int) -> None:
        """A loss without an autograd graph has no derivatives to give: say why instead of returning 0."""
        if not loss.requires_grad:
            raise ValueError(f"the loss of batch {i} does not depend on the analysed parameters through "
                             "autograd (it does not require grad): it was computed under torch.no_grad() or "
                             "torch.inference_mode(), or detached from the model output; hessext needs a "
                             "loss it can differentiate")

    # ------------------------------------------------------------------ derivatives
    def _own(self) -> list[tuple[int, Tensor]]:
        """(layout position, Parameter) of the model's own analysed Parameters that can be differentiated."""
        return [(j, p) for j, p in self._originals if p.requires_grad and not p.is_inference()]

    def inputs(self, with_originals: bool) -> list[Tensor]:
        """What to differentiate with respect to: the leaves, and the model's own Parameters (those that
        require grad) when a loss term reads them directly (outputs then go through :meth:`combine`)."""
        out = list(self.leaves.values())
        if with_originals:
            out += [p for _, p in self._own()]
        return out

    def combine(self, parts: Sequence[Tensor | None], with_originals: bool) -> list[Tensor | None]:
        """Per analysed parameter, the derivative along the leaf plus the one along the model's own
        Parameter (the same θ reached two ways: ``d/dθ f(θ, θ) = ∂₁f + ∂₂f``); ``parts`` are derivatives
        with respect to :meth:`inputs` ``(with_originals)``."""
        n = len(self.leaves)
        out = list(parts[:n])
        if with_originals:
            for (j, _), h in zip(self._own(), parts[n:]):
                if h is not None:
                    h = h.to(dtype=self.dtype, device=self.device)
                    out[j] = h if out[j] is None else out[j] + h
        return out

    @contextlib.contextmanager
    def differentiating(self):
        """Around backward passes through the user's loss (the gradient, and every operator's products):
        torch's own dtype-mismatch error (a loss that mixes outputs in the computation dtype with tensors of
        another dtype, such as float32 targets captured by ``loss_fn`` under ``dtype=torch.float64``:
        ``mse_loss`` cannot differentiate that before torch 2.13) becomes a :class:`LossDtypeError` that says
        what happened and what to do. Nested uses explain once."""
        try:
            yield
        except LossDtypeError:
            raise
        except RuntimeError as err:
            msg = str(err)
            if "Found dtype" not in msg or "but expected" not in msg:
                raise
            dt = self.dtype
            raise LossDtypeError(
                f"differentiating the loss in {dt} failed inside torch {torch.__version__} ({msg}): the loss "
                f"mixes {dt} tensors with tensors of another dtype (targets captured by loss_fn, for one), "
                f"which this torch cannot differentiate for every loss (mse_loss before torch 2.13). Cast "
                f"them to {dt} in the loss (e.g. F.mse_loss(out, y.to(out.dtype))), or analyse in the "
                f"model's own dtype.") from err

    def gradient(self, i: int, create_graph: bool) -> tuple[Tensor, tuple[Tensor | None, ...], bool]:
        """``(L_i, ∇_θ L_i, with_originals)``: the detached loss, the gradient per analysed parameter (None
        where it does not depend on it) — every term, also those on the model's own Parameters, which
        ``with_originals`` then says — with its graph when ``create_graph``. Checks that the loss is finite
        and differentiable."""
        with torch.enable_grad():
            loss = self.loss(i, self.leaves)
            check_loss_finite(loss, i)
            self.require_graph(loss, i)
            with self.differentiating():
                parts = torch.autograd.grad(loss, self.inputs(True), create_graph=create_graph,
                                            allow_unused=True)
        with_originals = any(g is not None for g in parts[len(self.leaves):])
        grads = self.combine(parts, with_originals)
        return loss.detach(), tuple(grads), with_originals

    def flat_parameters(self) -> Tensor:
        """``θ`` as a flat ``[n]`` vector (detached, in the computation dtype)."""
        return self.layout.flatten([t.detach() for t in self.leaves.values()])
