"""Batch adapters: turn the user's ``data`` into a list of batches and each batch into ``(loss, weight)``.

Accepted ``data``:

- one batch;
- a list/tuple of batches;
- any other iterable (a ``DataLoader``, a generator): its first ``num_batches`` items (all of them when
  ``num_batches`` is None). The batches are materialised once, so that every matvec sees the same data.
  If the iterable yields fewer than ``num_batches`` a ``UserWarning`` is issued and what there is is used.

Which loss is analysed (``loss_source``)
----------------------------------------
For dict batches there are two conventions, chosen by ``loss_source`` (a keyword of
:class:`~hessext.hvp.HessianOperator`, :class:`~hessext.evaluator.FunctionalEvaluator` and
:func:`make_batch_loss`):

- ``"model"``: the loss **the model reports**, ``model(**batch).loss`` — every key of the batch is passed as a
  keyword argument (``input_ids``, ``attention_mask``, ``labels``, ``decoder_input_ids``, ``token_type_ids``,
  …), so the model does its own label shift (causal LMs), masking (-100) and ``labels → decoder_input_ids``
  (encoder–decoders). ``model_type``, ``loss_fn`` and ``pad_idx`` play no part. The output's loss is read
  as ``out.loss``, else ``out["loss"]``, else ``out[0]`` when the output is a tuple whose first item is a
  0-dim tensor (transformers' ``return_dict=False``).
- ``"loss_fn"``: the seed documents' convention below (labels aligned with the logits position by position,
  ``loss_fn`` applied to them), for models that do not compute a loss (the ``hessext.models`` factory).
- ``"auto"`` (default): ``"model"`` when the model **computes its own loss** — its ``forward`` has an explicit
  ``labels`` parameter (:func:`computes_own_loss`: transformers' ``*ForCausalLM``, ``*ForMaskedLM``,
  ``*ForConditionalGeneration``, …; a bare ``GPT2Model`` has none) — else ``"loss_fn"``. A model that
  takes ``labels`` but returns no loss then raises a ``ValueError`` that says to pass
  ``loss_source="loss_fn"``. A wrapper whose ``forward(*args, **kwargs)`` hides the signature (DDP,
  ``torch.compile``) is not detected: pass ``loss_source="model"``.

The ambiguous case — ``"auto"`` chose ``"model"`` while a ``loss_fn`` (or ``pad_idx``) was given too, e.g.
API B's ``analyze_step(hf_model, nn.CrossEntropyLoss(), batch)`` — issues ONE ``UserWarning`` per model
class and process (not per operator: API B builds several operators per step), saying which loss was chosen
and how to choose the other. Non-dict batches always use ``loss_fn`` (``"model"`` with them is an error).
The choice made is exposed as ``loss_source_used`` (``"model"``, ``"loss_fn"`` or ``"batch_loss"``) on the
evaluator and the operator, for results' metadata.

Batch weights with the model's loss: a transformers loss is the mean over the non-ignored tokens **of one
batch**; the operator keeps its rule for every kind of batch: batches are averaged with weight = number of
sequences (``batch_size``). For one batch the analysed loss is exactly ``model(**batch).loss``; over several
batches with different numbers of label tokens it is the sequence-weighted mean of the per-batch losses, not
the token-weighted mean over their union (for that, pass ``batch_loss`` returning ``(loss, n_tokens)``).
Note that transformers' causal/masked-LM losses upcast the logits to float32 (``logits.float()``), so a
float64 analysis of such a model is float64 up to the logits and float32 in the final cross-entropy.

Batch kinds and their loss (``loss_source="loss_fn"``):

- ``(inputs, targets)`` (a 2-tuple or 2-list whose first element is a tensor) →
  ``loss_fn(model(inputs), targets)``;
- a bare tensor ``X`` → ``loss_fn(model(X))`` (API A's contract: the loss function sees only the output);
- a dict with ``input_ids`` and ``labels`` (optional ``attention_mask``, ``decoder_input_ids``), for
  ``model_type`` ∈ {"decoder_only", "encoder_only", "encoder_decoder"} (None means "decoder_only"):

  * decoder_only / encoder_only: ``out = model(input_ids[, attention_mask=…])``;
  * encoder_decoder: ``out = model(input_ids, decoder_input_ids[, attention_mask=…])`` where
    ``decoder_input_ids`` defaults to ``labels`` shifted right by one position, the first position and
    ignored labels filled with the pad id (``pad_idx``, or 0 when ``pad_idx`` is None);
  * ``attention_mask`` is passed (as a keyword) only if ``model.forward`` accepts it;
  * ``logits = out.logits`` if the output has it (else ``out["logits"]``, ``out[0]`` or ``out``);
  * ``loss = loss_fn(logits.reshape(-1, V), labels.reshape(-1))``: labels are aligned with the logits
    position by position (**no shift**: the model or the data already did it). Labels equal to -100, to
    ``pad_idx`` (if given) or to the criterion's own ``ignore_index`` are replaced by -100. When ``loss_fn``
    is an ``nn.CrossEntropyLoss`` (or None), the loss is ``F.cross_entropy`` with that criterion's
    weight, reduction and label smoothing and ``ignore_index=-100`` (the user's criterion object is never
    modified); any other callable receives the -100-masked labels.

A custom ``batch_loss(model_call, batch) -> (loss, weight)`` overrides all of the above; ``model_call``
calls the model (functionally) with whatever arguments it is given.

Data errors are named as data errors before any forward pass (:func:`validate_batch`): an ``(inputs,
targets)`` pair with different numbers of samples, ``input_ids``/``labels`` that are not integer tensors
(bool ids), and labels whose *shape* does not fit ``input_ids`` for the model type
(:func:`check_dict_batch`; dict batches are checked again at each loss evaluation, also under a custom
``batch_loss`` built by :func:`make_batch_loss`).

The weight of a batch is its number of samples (first dimension of the inputs / ``input_ids``); the
operator averages per-batch quantities with these weights.
"""
from __future__ import annotations

import inspect
import itertools
import math
import threading
import warnings
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int

__all__ = ["MODEL_TYPES", "LOSS_SOURCES", "LossNotFiniteError", "normalize_data", "is_batch", "batch_size",
           "map_tensors", "tensors_of", "make_batch_loss", "BatchLossFunction", "check_loss",
           "check_loss_finite", "shift_right", "forward_accepts", "computes_own_loss", "check_loss_source",
           "reported_loss", "validate_batch", "check_dict_batch"]

MODEL_TYPES = ("decoder_only", "encoder_only", "encoder_decoder")
#: Which loss of a dict batch is analysed (module docstring).
LOSS_SOURCES = ("auto", "model", "loss_fn")
IGNORE_INDEX = -100

BatchLoss = Callable[[Callable[..., Any], Any], "tuple[Tensor, float]"]


class LossNotFiniteError(RuntimeError):
    """The loss of a batch is NaN or infinite (a property of the data/model, not of the HVP mode)."""


def is_batch(obj: Any) -> bool:
    """Whether ``obj`` is one batch of a built-in kind (tensor, dict, or ``(inputs, targets)``)."""
    if isinstance(obj, Tensor) or isinstance(obj, Mapping):
        return True
    return isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], Tensor)


def normalize_data(data: Any, num_batches: int | None = None, *, custom: bool = False) -> list:
    """The list of batches described by ``data`` (see the module docstring).

    A list/tuple of length 2 whose first element is a tensor is read as one ``(inputs, targets)`` batch;
    wrap it (``[(x, y)]``) or pass a list of dicts/tuples to mean several batches.

    Args:
        data: one batch, a list/tuple of batches, or an iterable of batches.
        num_batches: use at most this many batches (None: all).
        custom: batches are for a custom ``batch_loss`` and may be of any type.

    Raises:
        ValueError: ``num_batches`` is not a positive int, or there is no batch.
        TypeError: an item is not a batch of a supported kind (without ``custom``).
    """
    if num_batches is not None:
        num_batches = check_int("num_batches", num_batches, minimum=1)
    if data is None:
        raise ValueError("data is None: pass a batch, a list of batches or a DataLoader")
    if is_batch(data):
        batches = [data]
    elif isinstance(data, (list, tuple)):
        batches = list(data)
    elif isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        if custom:
            batches = [data]
        else:
            raise TypeError(f"data must be a tensor, an (inputs, targets) pair, a dict, a list of batches or "
                            f"an iterable of batches, got {type(data).__name__}")
    else:
        it = iter(data)
        batches = list(it if num_batches is None else itertools.islice(it, num_batches))
    if num_batches is not None:
        if len(batches) < num_batches:
            warnings.warn(f"num_batches={num_batches} but data yields only {len(batches)} batch(es); using "
                          f"{len(batches)}", UserWarning, stacklevel=3)
        batches = batches[:num_batches]
    if not batches:
        raise ValueError("data is empty: there is no batch to analyse")
    for i, b in enumerate(batches):
        if not custom and not is_batch(b):
            raise TypeError(f"batch {i} is a {type(b).__name__}; expected a tensor, an (inputs, targets) "
                            "pair or a dict with 'input_ids' and 'labels' (or pass batch_loss=)")
        if not custom and batch_size(b) == 0:
            raise ValueError(f"batch {i} is empty (0 samples)")
    return batches


def batch_size(batch: Any) -> int:
    """Number of samples of a batch: the first dimension of its inputs (1 for a 0-dim or unknown input)."""
    if isinstance(batch, Tensor):
        x = batch
    elif isinstance(batch, Mapping):
        x = batch.get("input_ids")
        if x is None:
            x = next((v for v in batch.values() if isinstance(v, Tensor)), None)
    elif isinstance(batch, (tuple, list)) and batch:
        x = batch[0]
    else:
        x = None
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.dim() > 0 else 1
    return 1


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``fn`` to every tensor in nested tuples/lists/dicts (other leaves unchanged)."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def tensors_of(obj: Any) -> list[Tensor]:
    """All tensors in nested tuples/lists/dicts."""
    out: list[Tensor] = []
    map_tensors(obj, lambda t: out.append(t) or t)
    return out


def forward_accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` accepts a keyword argument ``name`` (explicitly or via ``**kwargs``)."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return False
    ps = sig.parameters
    return name in ps or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values())


def computes_own_loss(model: nn.Module) -> bool:
    """Whether ``model`` computes its own loss from ``labels``: its ``forward`` has an explicit ``labels``
    parameter (not merely ``**kwargs``), as transformers' ``*ForCausalLM`` / ``*ForMaskedLM`` /
    ``*ForConditionalGeneration`` heads have."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return False
    p = sig.parameters.get("labels")
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return p is not None and p.kind in named


def check_loss_source(loss_source: Any) -> str:
    """``loss_source`` if it is one of :data:`LOSS_SOURCES`; ``ValueError`` naming the value otherwise."""
    if not isinstance(loss_source, str) or loss_source not in LOSS_SOURCES:
        raise ValueError(f"loss_source must be one of {LOSS_SOURCES}, got {loss_source!r}")
    return loss_source


def reported_loss(out: Any, where: str = "") -> Tensor:
    """The loss a model reports in its output: ``out.loss``, else ``out["loss"]``, else ``out[0]`` for a
    tuple whose first item is a 0-dim tensor (transformers with ``return_dict=False``).

    Raises:
        ValueError: the output carries no loss (``where`` prefixes the message).
    """
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, Mapping):
        loss = out.get("loss")
    if loss is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor) \
            and out[0].dim() == 0:
        loss = out[0]
    if not isinstance(loss, Tensor):
        raise ValueError(f"{where}loss_source='model' analyses model(**batch).loss, but the output of type "
                         f"{type(out).__name__} carries no loss (does the batch hold 'labels'?); pass "
                         "loss_source='loss_fn' to apply loss_fn to the logits instead")
    return loss


def shift_right(labels: Tensor, pad: int = 0) -> Tensor:
    """``[pad, l_0, …, l_{L-2}]`` along the last dimension, with ignored labels (-100) replaced by ``pad``."""
    out = labels.new_full(labels.shape, pad)
    out[..., 1:] = labels[..., :-1]
    return out.masked_fill(out == IGNORE_INDEX, pad)


def check_loss(loss: Any, index: int) -> Tensor:
    """``loss`` as a 0-dim tensor; ``TypeError``/``ValueError`` if it is not a one-element tensor."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"the loss of batch {index} must be a Tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"the loss must be a scalar, got a tensor of shape {list(loss.shape)} on batch "
                         f"{index} (use reduction='mean' or 'sum')")
    if not loss.is_floating_point():
        raise TypeError(f"the loss of batch {index} must be floating point, got {loss.dtype}")
    return loss.reshape(())


def check_loss_finite(loss: Tensor, index: int) -> float:
    """``float(loss)``; raises :class:`LossNotFiniteError` (a RuntimeError), ``"loss is nan on batch 3"``,
    if it is not finite."""
    v = float(loss.detach())
    if not math.isfinite(v):
        raise LossNotFiniteError(f"loss is {v} on batch {index}")
    return v


def _output_tensor(out: Any, want_logits: bool) -> Any:
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if not want_logits:
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in the model output of type {type(out).__name__}; expected a tensor "
                    "or an object with .logits")


def _criterion(loss_fn: Any) -> tuple[Callable[[Tensor, Tensor], Tensor], set[int]]:
    """The 2-D-logits criterion and the extra label values it ignores."""
    if loss_fn is None:
        loss_fn = nn.CrossEntropyLoss()
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        weight, reduction, smoothing = loss_fn.weight, loss_fn.reduction, loss_fn.label_smoothing
        extra = {int(loss_fn.ignore_index)} - {IGNORE_INDEX}

        def ce(logits: Tensor, labels: Tensor) -> Tensor:
            w = None if weight is None else weight.to(dtype=logits.dtype, device=logits.device)
            return F.cross_entropy(logits, labels, weight=w, ignore_index=IGNORE_INDEX, reduction=reduction,
                                   label_smoothing=smoothing)
        return ce, extra
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    return loss_fn, set()


def check_dict_batch(batch: Mapping, model_type: str | None = None, where: str = "") -> None:
    """The keys, dtypes and shapes of a dict batch, per model type (``where`` prefixes the message, e.g.
    ``"batch 3: "``).

    ``input_ids`` must be an integer tensor (not bool) and ``labels`` an integer tensor. The labels are
    aligned with the logits position by position, so for ``decoder_only`` / ``encoder_only`` (and None)
    ``labels.shape == input_ids.shape``; for ``encoder_decoder`` the labels are the ``[batch, target
    length]`` decoder targets: 2-D with the batch size of ``input_ids``. (Element counts are not enough:
    sequence-first labels for batch-first ids have the right count and would be analysed misaligned.)
    """
    for key in ("labels", "input_ids"):
        if key not in batch:
            raise ValueError(f"{where}batch dict has keys {sorted(batch.keys())}; expected {key!r}")
    ids, labels = batch["input_ids"], batch["labels"]
    for key, t in (("input_ids", ids), ("labels", labels)):
        if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            got = f"dtype {t.dtype} (shape {list(t.shape)})" if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{where}batch[{key!r}] must be an integer tensor of token ids, got {got}")
    if model_type == "encoder_decoder":
        if labels.dim() != 2 or ids.dim() < 1 or labels.shape[0] != ids.shape[0]:
            raise ValueError(f"{where}labels of shape {list(labels.shape)} do not fit input_ids of shape "
                             f"{list(ids.shape)}: for model_type='encoder_decoder' the labels must be "
                             "[batch, target_length] with the batch size of input_ids")
    elif labels.shape != ids.shape:
        raise ValueError(f"{where}labels of shape {list(labels.shape)} do not match input_ids of shape "
                         f"{list(ids.shape)}: for model_type={model_type or 'decoder_only'!r} the labels are "
                         "aligned with input_ids position by position and must have the same shape "
                         "(sequence-first labels must be transposed)")


def validate_batch(batch: Any, index: int, model_type: str | None = None, loss_source: str = "loss_fn"
                   ) -> None:
    """Data errors of a built-in batch, named as such before any forward pass (a loss would report them
    obscurely, or not at all): an ``(inputs, targets)`` pair whose tensors have different numbers of
    samples, and the dict-batch checks of :func:`check_dict_batch`. With ``loss_source="model"`` (the
    resolved source) the model defines what a dict batch holds: only its keys are checked (``str``, as
    keyword arguments must be)."""
    where = f"batch {index}: "
    if isinstance(batch, Mapping) and loss_source == "model":
        bad = [k for k in batch if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where}the keys of a dict batch are passed as keyword arguments "
                            f"(model(**batch)) and must be str, got {bad[:3]}")
    elif isinstance(batch, Mapping):
        check_dict_batch(batch, model_type, where)
    elif isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor):
        x, y = batch
        if isinstance(y, Tensor) and x.dim() > 0 and y.dim() > 0 and x.shape[0] != y.shape[0]:
            raise ValueError(f"{where}inputs and targets have different numbers of samples: inputs of shape "
                             f"{list(x.shape)}, targets of shape {list(y.shape)}")


def _custom_loss(batch_loss: BatchLoss) -> BatchLoss:
    """A user's ``batch_loss`` whose result is checked: ``(loss, weight)`` or ``loss`` (weight 1)."""
    if not callable(batch_loss):
        raise TypeError(f"batch_loss must be callable, got {type(batch_loss).__name__}")

    def custom(model_call: Callable[..., Any], batch: Any) -> tuple[Tensor, float]:
        res = batch_loss(model_call, batch)
        if isinstance(res, (tuple, list)):
            if len(res) != 2:
                raise ValueError(f"batch_loss must return (loss, weight), got a sequence of length "
                                 f"{len(res)}")
            loss, weight = res
        else:
            loss, weight = res, 1.0
        weight = float(weight)
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"batch_loss returned weight {weight}; it must be positive and finite")
        return loss, weight
    return custom


class _DictLoss:
    """The loss of a dict batch for one model type (module docstring)."""

    def __init__(self, loss_fn: Any, model: nn.Module, model_type: str | None, pad_idx: int | None) -> None:
        self.loss_fn, self.model_type, self.pad_idx = loss_fn, model_type, pad_idx
        self.accepts_mask = forward_accepts(model, "attention_mask")
        self.validated: set[tuple[int, int]] = set()

    def logits(self, model_call: Callable[..., Any], batch: Mapping) -> Tensor:
        ids, labels = batch["input_ids"], batch["labels"]
        kwargs = {}
        if batch.get("attention_mask") is not None and self.accepts_mask:
            kwargs["attention_mask"] = batch["attention_mask"]
        if self.model_type == "encoder_decoder":
            dec = batch.get("decoder_input_ids")
            if dec is None:
                dec = shift_right(labels, 0 if self.pad_idx is None else self.pad_idx)
            out = model_call(ids, dec, **kwargs)
        else:
            out = model_call(ids, **kwargs)
        logits = _output_tensor(out, want_logits=True)
        if logits.dim() < 1 or logits.shape[:-1].numel() != labels.numel():
            raise ValueError(f"logits of shape {list(logits.shape)} do not match labels of shape "
                             f"{list(labels.shape)} position by position")
        return logits

    def __call__(self, model_call: Callable[..., Any], batch: Mapping) -> tuple[Tensor, float]:
        check_dict_batch(batch, self.model_type)
        crit, extra_ignored = _criterion(self.loss_fn)
        labels = batch["labels"]
        logits = self.logits(model_call, batch)
        V = logits.shape[-1]
        lab = labels.reshape(-1)
        ignore = lab == IGNORE_INDEX
        for v in ({self.pad_idx} if self.pad_idx is not None else set()) | extra_ignored:
            ignore = ignore | (lab == v)
        lab = lab.masked_fill(ignore, IGNORE_INDEX)
        key = (id(labels), V)
        if key not in self.validated:
            valid = lab[~ignore]
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= V):
                raise ValueError(f"labels out of range [0, {V}): got values in [{int(valid.min())}, "
                                 f"{int(valid.max())}]")
            self.validated.add(key)
        return crit(logits.reshape(-1, V), lab), float(batch_size(batch))


_WARNED: set[type] = set()
_WARNED_LOCK = threading.Lock()


def _warn_ambiguous_once(model_cls: type, loss_fn: Any, pad_idx: int | None) -> None:
    """The one-time warning (per model class and process) of ``loss_source="auto"`` choosing the model's
    own loss while a ``loss_fn`` / ``pad_idx`` was given."""
    with _WARNED_LOCK:
        if model_cls in _WARNED:
            return
        _WARNED.add(model_cls)
    given = [f"loss_fn={type(loss_fn).__name__}"] if loss_fn is not None else []
    given += [f"pad_idx={pad_idx}"] if pad_idx is not None else []
    warnings.warn(f"{model_cls.__name__} computes its own loss from 'labels': hessext analyses the loss it "
                  f"reports, model(**batch).loss (loss_source='auto' -> 'model'), and does not use the given "
                  f"{' and '.join(given)}. Pass loss_source='loss_fn' to analyse loss_fn(logits, labels) "
                  "with the labels aligned to the logits (no shift), or loss_source='model' to silence this "
                  "warning. (Shown once per model class.)", UserWarning, stacklevel=2)


class BatchLossFunction:
    """``(model_call, batch) -> (loss, weight)`` for the built-in batch kinds (module docstring), made by
    :func:`make_batch_loss`.

    Attributes:
        loss_source: the requested source (``"auto"``, ``"model"`` or ``"loss_fn"``).
        dict_source: the source used for dict batches (``"model"`` or ``"loss_fn"``).
    """

    def __init__(self, loss_fn: Any, model: nn.Module, model_type: str | None, pad_idx: int | None,
                 loss_source: str) -> None:
        self.loss_fn, self.pad_idx = loss_fn, pad_idx
        self.loss_source = check_loss_source(loss_source)
        own = computes_own_loss(model)
        self.dict_source = loss_source if loss_source != "auto" else ("model" if own else "loss_fn")
        self._ambiguous = loss_source == "auto" and own and (loss_fn is not None or pad_idx is not None)
        self._model_cls = type(model)
        self._dict_loss = _DictLoss(loss_fn, model, model_type, pad_idx)

    def source_for(self, batches: Iterable[Any]) -> str:
        """The source used for these batches: :attr:`dict_source` if there is a dict batch, else
        ``"loss_fn"``. Raises ``ValueError`` when ``loss_source="model"`` meets a non-dict batch."""
        batches = list(batches)
        kinds = [isinstance(b, Mapping) for b in batches]
        if self.loss_source == "model" and not all(kinds):
            i = kinds.index(False)
            raise ValueError(f"loss_source='model' analyses model(**batch).loss and needs dict batches; "
                             f"batch {i} is a {type(batches[i]).__name__}")
        return self.dict_source if any(kinds) else "loss_fn"

    def __call__(self, model_call: Callable[..., Any], batch: Any) -> tuple[Tensor, float]:
        loss_fn = self.loss_fn
        if isinstance(batch, Mapping):
            if self.dict_source == "loss_fn":
                return self._dict_loss(model_call, batch)
            if self._ambiguous:
                _warn_ambiguous_once(self._model_cls, loss_fn, self.pad_idx)
            return reported_loss(model_call(**batch)), float(batch_size(batch))
        if self.loss_source == "model":
            raise ValueError(f"loss_source='model' analyses model(**batch).loss and needs dict batches, got "
                             f"a {type(batch).__name__}")
        if loss_fn is None:
            raise TypeError("loss_fn is None; it is required for (inputs, targets) and tensor batches")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if isinstance(batch, Tensor):
            out = _output_tensor(model_call(batch), want_logits=False)
            return loss_fn(out), float(batch_size(batch))
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            inputs, targets = batch
            out = _output_tensor(model_call(inputs), want_logits=False)
            return loss_fn(out, targets), float(batch_size(batch))
        raise TypeError(f"unsupported batch of type {type(batch).__name__}; pass batch_loss=")


def make_batch_loss(loss_fn: Any, model: nn.Module, *, model_type: str | None = None,
                    batch_loss: BatchLoss | None = None, pad_idx: int | None = None,
                    loss_source: str = "auto") -> BatchLoss:
    """The function ``(model_call, batch) -> (loss, weight)`` for this loss and batch kind.

    Args:
        loss_fn: the criterion (see the module docstring); may be None for dict batches (cross-entropy, or
            the model's own loss) or when ``batch_loss`` is given.
        model: the user's model (only inspected: does its forward accept ``attention_mask``, ``labels``?).
        model_type: "decoder_only", "encoder_only", "encoder_decoder" or None (= "decoder_only").
        batch_loss: custom override; it may return ``(loss, weight)`` or just ``loss`` (weight 1).
        pad_idx: a label value to ignore in dict batches (besides -100); None: only -100.
        loss_source: "auto", "model" or "loss_fn": which loss of a dict batch (module docstring).

    Returns:
        A :class:`BatchLossFunction` (the built-in kinds), or the checked ``batch_loss``.
    """
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES} or None, got {model_type!r}")
    if pad_idx is not None:
        pad_idx = check_int("pad_idx", pad_idx)
    check_loss_source(loss_source)
    if batch_loss is not None:
        return _custom_loss(batch_loss)
    return BatchLossFunction(loss_fn, model, model_type, pad_idx, loss_source)
