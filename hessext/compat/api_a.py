"""API A on the hessext engine: ``ModelWrapper``, ``min_max_hessian_eigs`` and ``hessian_trace``.

This module serves the Hessian API of a loss-landscape package (documented as
``oxford_loss_landscapes.model_interface.model_wrapper.ModelWrapper``,
``oxford_loss_landscapes.hessian.hessian.min_max_hessian_eigs`` and
``oxford_loss_landscapes.hessian.hessian_trace.hessian_trace``): replacing the import prefix
``oxford_loss_landscapes`` by ``hessext`` is the whole migration. Two call forms are accepted and told apart
by the type of the first argument:

* the **documented form** (first argument a :class:`ModelWrapper`)::

      min_max_hessian_eigs(model_wrapper, loss_fn=None, use_cuda=False, max_iter=100, tol=1e-3)
          -> (min_eig, max_eig, min_eigvec, max_eigvec)
      hessian_trace(model_wrapper, loss_fn=None, num_random_vectors=100, use_cuda=False) -> float

* the **legacy form** of that package's actual code (first argument an ``nn.Module``)::

      min_max_hessian_eigs(net, inputs, targets, criterion, rank=0, use_cuda=False, verbose=False,
                           all_params=True) -> (max_eig, min_eig, max_eigvec, min_eigvec, hvp_count)
      hessian_trace(model, loss_fn, inputs, targets, num_random_vectors=10) -> float

Both forms run the same engine: :class:`hessext.hvp.HessianOperator` (matrix-free ``H v``), one Lanczos run
with full reorthogonalisation for both ends of the spectrum (:func:`hessext.lanczos.lanczos`,
``which="BE"``), and the trace estimators of :mod:`hessext.trace`.

Precision: the computation runs in the parameters' dtype (float32/float64), or in float64 with
``float64=True``. A **bfloat16/float16 model** is analysed on float32 copies of its parameters, buffers and
floating inputs, with nothing to pass (:mod:`hessext.evaluator`): what is analysed is the Hessian of the
float32-upcast model (the same weights in float32 arithmetic), and the model stays in its dtype, untouched.
Only a model mixing float32 and float64 parameters needs a choice (``float64=True``).

FSDP2-sharded models (``torch.distributed.fsdp.fully_shard``; call the functions on every rank, each rank
with its own batch): the operator is a :class:`hessext.sharded.ShardedHessianOperator` (finite differences
of FSDP's gradients, vectors sharded like the parameters), the mean over ranks of each rank's loss (weight 1
per rank, as in :func:`hessext.distributed.data_parallel`); eigenvalues and traces are the same on every
rank, and the eigenvectors returned are whole vectors assembled from the shards. ``float64=True`` and
``use_cuda=True`` are refused (``ValueError``): the sharded operator computes in the shards' dtype and place.
``ModelWrapper.loss()`` is this rank's loss.

Model-state contract: the user's model is never changed — parameters, buffers, ``.grad``, ``requires_grad``,
training flags and the global RNG states are as they were after every call, also when a call raises. The
analysis runs in **eval mode** (dropout off, BatchNorm on its running statistics), as the original code did
(it called ``net.eval()``, and left the model there; hessext restores the caller's modes).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import ArgumentTypeError, check_bool, check_int, check_tol, converged
from .._state import preserve_model_state
from ..data import map_tensors, tensors_of
from ..distributed import hessian_operator
from ..hvp import HessianOperator
from ..lanczos import lanczos
from ..linop import LinearOperator
from ..sharded import is_fsdp_model
from ..trace import TRACE_METHODS, estimate_trace, hutchinson, hutchpp, xtrace

__all__ = ["ModelWrapper", "min_max_hessian_eigs", "hessian_trace", "DEFAULT_TRACE_METHOD", "TRACE_METHODS"]

#: Estimator used by :func:`hessian_trace` when ``method`` is None (chosen by measurement; see its docstring).
#: ``hessian_trace(method=...)`` accepts the names of :data:`hessext.trace.TRACE_METHODS`.
DEFAULT_TRACE_METHOD = "auto"
#: Fewest products each estimator needs (``"auto"`` and Hutchinson: 1; XTrace: 2; Hutch++: 3).
_MIN_BUDGET = {"hutchinson": 1, "hutchpp": 3, "xtrace": 2, "auto": 1}


# ----------------------------------------------------------------------------------------------- helpers
def _describe(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"Tensor{list(obj.shape)} {str(obj.dtype).replace('torch.', '')} on {obj.device}"
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(_describe(o) for o in obj[:3]) + (", ..." if len(obj) > 3 else "")
        return f"{type(obj).__name__}({inner})"
    if isinstance(obj, dict):
        return "dict(" + ", ".join(f"{k}={_describe(v)}" for k, v in list(obj.items())[:3]) + ")"
    return type(obj).__name__


def _fn_name(fn: Any) -> str:
    if fn is None:
        return "None"
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _budget(name: str, value: Any) -> int:
    """A product budget (``max_iter``, ``num_random_vectors``): :func:`hessext._checks.check_int`, with a
    value below 1 worded as API A's messages have always been ("must be a positive int")."""
    number = check_int(name, value)
    if number < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return number


def _relative_tol(value: Any) -> float:
    """API A's relative ``tol`` in (0, 1) (:func:`hessext._checks.check_tol`); any out-of-range value is
    reported with the interval."""
    try:
        return check_tol(value, upper=1.0)
    except ArgumentTypeError:
        raise
    except ValueError as e:
        raise ValueError(f"tol must be a float in (0, 1), got {value!r}") from e


def _compute_dtype(float64: Any) -> Optional[torch.dtype]:
    """``float64=True``: compute in float64 on the operator's copies (the model keeps its dtype)."""
    return torch.float64 if check_bool("float64", float64) else None


def _check_loss_fn(loss_fn: Any, name: str = "loss_fn") -> None:
    if not callable(loss_fn):
        raise TypeError(f"{name} must be callable (model_output -> scalar tensor), got "
                        f"{type(loss_fn).__name__}")


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(k, p) for k, p in model.named_parameters() if p.requires_grad]


def _param_device(model: nn.Module) -> torch.device:
    named = _trainable(model)
    if not named:
        raise ValueError(f"the model ({type(model).__name__}) has no trainable parameters (none with "
                         "requires_grad=True): there is no Hessian to analyse")
    return named[0][1].device


def _resolve_device(use_cuda: Any, model: nn.Module) -> Optional[torch.device]:
    """The ``device=`` for the operator: a CUDA device for ``use_cuda=True`` when one exists, else None.

    The operator computes on copies on that device; the user's model is never moved.
    """
    use_cuda = check_bool("use_cuda", use_cuda)
    if not use_cuda:
        return None
    if not torch.cuda.is_available():
        warnings.warn("use_cuda=True but CUDA is not available: computing on the CPU", UserWarning,
                      stacklevel=4)
        return None
    dev = _param_device(model)
    return None if dev.type == "cuda" else torch.device("cuda", torch.cuda.current_device())


def _check_data_device(data: Any, model: nn.Module, device: Optional[torch.device], name: str) -> None:
    """Every tensor of ``data`` must be where the model's parameters are (or on the compute device)."""
    pdev = _param_device(model)
    ok = {pdev} if device is None else {pdev, device}
    for t in tensors_of(data):
        if t.device.type == "meta" or t.device not in ok:
            where = "the model's parameters are on " + str(pdev)
            if device is not None:
                where += f" (computing on {device})"
            raise ValueError(f"{name} is on device {t.device} but {where}; move {name} (or the model) so "
                             "that they are on the same device")


def _vec_to_numpy(v: Tensor) -> np.ndarray:
    """A flat numpy copy of a unit vector, sign fixed so that its largest-magnitude entry is positive."""
    v = v.detach().reshape(-1)
    v = v / torch.linalg.vector_norm(v)
    if v.numel() and float(v[int(torch.argmax(v.abs()))]) < 0:
        v = -v
    return v.to("cpu").numpy().copy()


class _LossOfOutput(nn.Module):
    """The whole loss as a module around the user's model (a reference, not a copy).

    ``kind="output"``: ``forward(X) = loss_fn(model(X))`` (API A); ``kind="pair"``:
    ``forward((inputs, targets)) = loss_fn(model(inputs), targets)`` (legacy form). The engine evaluates this
    module functionally, so the loss function runs while the analysed parameters are swapped in: a loss that
    reads ``model.parameters()`` itself (the document's regularised loss) is differentiated correctly.

    When computing on another device than the user's (``use_cuda``), a loss function that captured tensors on
    the user's device (``lambda out: mse(out, y)`` with ``y`` on the CPU) cannot take the model output on the
    GPU; then (detected on the first call) the output is moved back for the loss function, differentiably.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Tensor], kind: str) -> None:
        super().__init__()
        self.model = model
        # Not registered as a submodule: a criterion module's own parameters/buffers are not analysed.
        object.__setattr__(self, "loss_fn", loss_fn)
        self.kind = kind
        self.home: Optional[torch.device] = None     # the user's device when computing elsewhere
        self._move_output: Optional[bool] = None

    def _loss(self, out: Any, *rest: Any) -> Tensor:
        return self.loss_fn(out, *rest)

    def _loss_at_home(self, out: Any, rest: tuple) -> Tensor:
        """The loss with the output (and targets) moved to the user's device, returned on the output's."""
        device = out.device if isinstance(out, Tensor) else None
        loss = self._loss(*map_tensors((out, *rest), lambda t: t.to(self.home)))
        return loss.to(device) if isinstance(loss, Tensor) and device is not None else loss

    def forward(self, batch: Any) -> Tensor:
        if self.kind == "output":
            out, rest = self.model(batch), ()
        else:
            out, rest = self.model(batch[0]), (batch[1],)
        if self.home is None or self._move_output is False:
            loss = self._loss(out, *rest)
        elif self._move_output:
            loss = self._loss_at_home(out, rest)
        else:
            try:
                loss = self._loss(out, *rest)
                self._move_output = False
            except RuntimeError as e:
                if "device" not in str(e):
                    raise
                self._move_output = True
                loss = self._loss_at_home(out, rest)
        if not isinstance(loss, Tensor):
            raise TypeError(f"the loss function must return a scalar tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            what = "loss_fn(model(X))" if self.kind == "output" else "criterion(net(inputs), targets)"
            raise ValueError(f"{what} must return a scalar, got a tensor of shape {list(loss.shape)} (reduce "
                             "it, e.g. with .mean() or reduction='mean')")
        return loss.reshape(())


def _loss_operator(model: nn.Module, loss_module: _LossOfOutput, batch: Any,
                   params: Optional[Sequence[str]] = None, *, dtype: Optional[torch.dtype] = None,
                   device: Optional[torch.device] = None, mode: str = "auto") -> HessianOperator:
    """The HessianOperator of ``loss_module(batch)`` over ``model``'s parameters (names without prefix); for
    an FSDP2-sharded ``model`` a :class:`~hessext.sharded.ShardedHessianOperator`
    (:func:`_sharded_operator`)."""
    if is_fsdp_model(model):
        return _sharded_operator(model, loss_module, batch, params, dtype=dtype, device=device, mode=mode)
    if device is not None and device != _param_device(model):
        loss_module.home = _param_device(model)
    names = None if params is None else ["model." + k for k in params]
    first = next((t for t in tensors_of(batch) if t.dim() > 0), None)
    if first is not None and first.shape[0] == 0:
        arg = "X" if loss_module.kind == "output" else "inputs"
        raise ValueError(f"{arg} has 0 samples (a tensor of shape {tuple(first.shape)} in the batch); the "
                         "Hessian of a loss over an empty batch is undefined")

    def batch_loss(model_call: Callable[..., Any], b: Any) -> tuple[Tensor, float]:
        return model_call(b), 1.0

    # One batch: a list around it, so that a tuple/list is not read as several batches.
    return hessian_operator(loss_module, None, [batch], names, batch_loss=batch_loss, mode=mode, dtype=dtype,
                            device=device, eval_mode=True)


def _sharded_operator(model: nn.Module, loss_module: _LossOfOutput, batch: Any,
                      params: Optional[Sequence[str]], *, dtype: Optional[torch.dtype],
                      device: Optional[torch.device], mode: str) -> LinearOperator:
    """The operator of an FSDP2-sharded model: ``loss_module(batch)`` evaluated through the FSDP model
    itself (``ShardedHessianOperator`` differentiates FSDP's gradients), this rank's batch with weight 1
    (as the data-parallel operator weights API A's one batch per rank: the mean over ranks of each rank's
    loss). Options it cannot honour are refused, naming them."""
    if dtype is not None:
        raise ValueError("float64=True is not supported on an FSDP2-sharded model: the sharded operator "
                         "computes in the parameters' dtype (shard a float64 copy of the model instead)")
    if device is not None:
        raise ValueError("use_cuda=True / device= are not supported on an FSDP2-sharded model: the sharded "
                         "operator computes where the shards are")

    def batch_loss(model_call: Callable[..., Any], b: Any) -> tuple[Tensor, float]:
        return loss_module(b), 1.0

    return hessian_operator(model, None, [batch], params, batch_loss=batch_loss, batch_weights=[1.0],
                            mode=mode, eval_mode=True)


# ----------------------------------------------------------------------------------------------- ModelWrapper
class ModelWrapper:
    """A model, a loss of the model's output and the data, as API A's functions expect them.

    The contract (as documented by API A): ``loss_fn(model(X))`` is the scalar loss whose Hessian with respect
    to the model's trainable parameters is analysed, i.e. ``loss_fn`` takes the **model output only**
    (targets, if any, are captured by the function, e.g. ``lambda out: nn.MSELoss()(out, y)``) and returns a
    scalar tensor.

    The wrapper holds references only: it copies nothing and changes nothing about the model (the analysis
    evaluates the model functionally, in eval mode, and restores every flag it touches).

    Args:
        model: the ``nn.Module`` to analyse.
        loss_fn: ``loss_fn(model_output) -> scalar Tensor``.
        X: the input batch, passed to the model as ``model(X)`` (a tensor, or any object the model accepts
            as its single argument; all its tensors must be on the model's device).

    Attributes:
        model: the user's model (the same object).
        loss_fn: the loss function.
        X: the data (the same object).

    Example:
        >>> wrapper = ModelWrapper(model, lambda out: nn.MSELoss()(out, y), X)
        >>> H = wrapper.operator()            # the Hessian as a hessext LinearOperator
        >>> H @ v                              # H v, v: [n] in parameter order
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any], Tensor], X: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_loss_fn(loss_fn)
        if X is None:
            raise ValueError("X must be the model's input (a tensor), got None")
        self.model = model
        self.loss_fn = loss_fn
        self.X = X

    # ---------------------------------------------------------------- conveniences
    def parameters(self):
        """The model's parameters (``model.parameters()``)."""
        return self.model.parameters()

    def named_parameters(self):
        """The model's named parameters (``model.named_parameters()``)."""
        return self.model.named_parameters()

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters n (the size of the Hessian)."""
        return sum(p.numel() for _, p in _trainable(self.model))

    def loss(self, loss_fn: Optional[Callable[[Any], Tensor]] = None) -> float:
        """``loss_fn(model(X))`` as a float, evaluated in eval mode without gradients (model unchanged)."""
        fn = self.loss_fn if loss_fn is None else loss_fn
        _check_loss_fn(fn)
        with preserve_model_state(self.model, eval_mode=True), torch.no_grad():
            value = fn(self.model(self.X))
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"loss_fn(model(X)) must return a scalar tensor, got {_describe(value)}")
        return float(value)

    def operator(self, loss_fn: Optional[Callable[[Any], Tensor]] = None, *,
                 params: Optional[Sequence[str]] = None, dtype: Optional[torch.dtype] = None,
                 device: Optional[torch.device | str] = None, mode: str = "auto") -> HessianOperator:
        """The Hessian of ``loss_fn(model(X))`` as a :class:`hessext.hvp.HessianOperator`.

        ``H = ∇²_θ loss_fn(model(X; θ))`` over the trainable parameters θ ∈ R^n (flattened in
        ``model.named_parameters()`` order); ``H`` is never formed, ``H @ v`` costs one or two gradients.

        Args:
            loss_fn: overrides the wrapper's loss function.
            params: parameter names to analyse (None: every trainable parameter).
            dtype: compute dtype (torch.float32 / torch.float64; None: the parameters' dtype, float32 for a
                bfloat16/float16 model).
            device: compute device (copies are moved there; the model is not). None: the model's device.
            mode: HVP mode of the operator ("auto", "double_backward", "forward_over_reverse").

        Raises:
            ValueError: no trainable parameters; X on another device than the model.
            TypeError: ``loss_fn`` not callable.
        """
        fn = self.loss_fn if loss_fn is None else loss_fn
        _check_loss_fn(fn)
        _param_device(self.model)
        dev = None if device is None else torch.device(device)
        _check_data_device(self.X, self.model, dev, "X")
        return _loss_operator(self.model, _LossOfOutput(self.model, fn, "output"), self.X, params,
                              dtype=dtype, device=dev, mode=mode)

    def __repr__(self) -> str:
        named = _trainable(self.model)
        n = sum(p.numel() for _, p in named)
        return (f"ModelWrapper(model={type(self.model).__name__}, trainable_params={n:,} in {len(named)} "
                f"tensors, loss_fn={_fn_name(self.loss_fn)}, X={_describe(self.X)})")


# ----------------------------------------------------------------------------------------------- eigenvalues
def _extreme_eigs(H: HessianOperator, max_iter: int, tol: float, seed: int):
    """Both ends of the spectrum of ``H`` from one Krylov space.

    Returns ``(lam_min, lam_max, v_min, v_max, residuals[2], converged, num_matvecs)`` with ``v_*`` tensors
    ``[n]`` in the operator's dtype and device.
    """
    n = H.global_n                      # the whole space (H.n is this rank's slice when sharded)
    before = H.num_matvecs
    if n == 1 and not H.sharded:  # a 1x1 Hessian: one product gives it exactly
        one = torch.ones(1, dtype=H.dtype, device=H.device)
        lam = float(H.matvec(one)[0])
        return lam, lam, one, one, (0.0, 0.0), True, H.num_matvecs - before
    if n == 1:
        raise ValueError("min_max_hessian_eigs: an FSDP2-sharded model with a single parameter has a 1x1 "
                         "Hessian; analyse it unsharded")
    res = lanczos(H, k=2, which="BE", tol=tol, max_iter=max(2, min(max_iter, n)), seed=seed)
    vals = res.eigenvalues.to(torch.float64)
    vecs = res.eigenvectors
    lo, hi = int(torch.argmin(vals)), int(torch.argmax(vals))
    lam_min, lam_max = float(vals[lo]), float(vals[hi])
    r = res.residuals.to(torch.float64)
    r_min, r_max = float(r[lo]), float(r[hi])
    if not all(map(math.isfinite, (lam_min, lam_max, r_min, r_max))):
        raise RuntimeError(f"Lanczos produced non-finite values (eigenvalues {vals.tolist()}, residuals "
                           f"{r.tolist()}): the Hessian-vector products are not finite")
    # Criterion (hessext._checks.converged): ‖H v − λ v‖ < tol·max(|λ|, √ε·‖H‖). The floor √ε·‖H‖ only
    # matters for an eigenvalue that is numerically zero at the working precision (its relative residual is
    # undefined).
    ok = res.converged or bool(converged([r_min, r_max], [lam_min, lam_max], tol,
                                         max(abs(lam_min), abs(lam_max)), H.dtype).all())
    v_min, v_max = vecs[lo], vecs[hi]
    if H.sharded:   # API A returns whole eigenvectors: assemble them from the ranks' shards (exact)
        v_min, v_max = H.gather(v_min), H.gather(v_max)
    return lam_min, lam_max, v_min, v_max, (r_min, r_max), ok, H.num_matvecs - before


def _warn_not_converged(lam_min: float, lam_max: float, residuals: tuple[float, float], max_iter: int,
                        tol: float, stacklevel: int = 3) -> None:
    rmin = residuals[0] / max(abs(lam_min), 1e-300)
    rmax = residuals[1] / max(abs(lam_max), 1e-300)
    warnings.warn(f"min_max_hessian_eigs: Lanczos stopped at max_iter={max_iter} before reaching "
                  f"tol={tol:g}; relative residuals reached: min eigenvalue {rmin:.3g} "
                  f"(‖Hv−λv‖={residuals[0]:.3g}), max "
                  f"eigenvalue {rmax:.3g} (‖Hv−λv‖={residuals[1]:.3g}). Increase max_iter (or tol) for a "
                  "converged result.", RuntimeWarning, stacklevel=stacklevel)


def _min_max_wrapper(model_wrapper: ModelWrapper, loss_fn: Optional[Callable[[Any], Tensor]] = None,
                     use_cuda: bool = False, max_iter: int = 100, tol: float = 1e-3, *,
                     seed: int = 0, float64: bool = False) -> tuple[float, float, np.ndarray, np.ndarray]:
    if loss_fn is not None:
        _check_loss_fn(loss_fn)
    max_iter = _budget("max_iter", max_iter)
    tol = _relative_tol(tol)
    device = _resolve_device(use_cuda, model_wrapper.model)
    H = model_wrapper.operator(loss_fn, device=device, dtype=_compute_dtype(float64))
    lam_min, lam_max, v_min, v_max, resid, ok, _ = _extreme_eigs(H, max_iter, tol, seed)
    if not ok:
        _warn_not_converged(lam_min, lam_max, resid, max_iter, tol, stacklevel=4)
    return lam_min, lam_max, _vec_to_numpy(v_min), _vec_to_numpy(v_max)


def _min_max_legacy(net: nn.Module, inputs: Any, targets: Any, criterion: Callable[[Any, Any], Tensor],
                    rank: int = 0, use_cuda: bool = False, verbose: bool = False, all_params: bool = True, *,
                    max_iter: int = 100, tol: float = 1e-3, seed: int = 0,
                    float64: bool = False) -> tuple[float, float, np.ndarray, np.ndarray, int]:
    _check_loss_fn(criterion, "criterion")
    check_int("rank", rank, minimum=0)
    verbose = check_bool("verbose", verbose)
    all_params = check_bool("all_params", all_params)
    max_iter = _budget("max_iter", max_iter)
    tol = _relative_tol(tol)
    device = _resolve_device(use_cuda, net)
    params: Optional[list[str]] = None
    if not all_params:  # as the original: leave out 0-dim (scalar) parameters
        params = [k for k, p in _trainable(net) if p.dim() >= 1]
        if not params:
            raise ValueError("all_params=False keeps parameters with at least one dimension, and the model "
                             "has no trainable parameter of that kind")
    _param_device(net)
    _check_data_device(inputs, net, device, "inputs")
    _check_data_device(targets, net, device, "targets")
    H = _loss_operator(net, _LossOfOutput(net, criterion, "pair"), (inputs, targets), params, device=device,
                       dtype=_compute_dtype(float64))
    lam_min, lam_max, v_min, v_max, resid, ok, count = _extreme_eigs(H, max_iter, tol, seed)
    if not ok:
        _warn_not_converged(lam_min, lam_max, resid, max_iter, tol, stacklevel=4)
    if verbose and rank == 0:
        print(f"Rank {rank}: max eigenvalue = {lam_max:.6g}, min eigenvalue = {lam_min:.6g} "
              f"({count} Hessian-vector products, residuals {resid[1]:.2e} / {resid[0]:.2e})")
    return lam_max, lam_min, _vec_to_numpy(v_max), _vec_to_numpy(v_min), int(count)


def _first_arg(args: tuple, kwargs: dict, names: Sequence[str]) -> Any:
    if args:
        return args[0]
    for k in names:
        if k in kwargs:
            return kwargs[k]
    raise TypeError(f"missing the first argument ({' or '.join(names)})")


def min_max_hessian_eigs(*args: Any, **kwargs: Any):
    """The algebraically smallest and largest Hessian eigenvalues and their eigenvectors.

    **Documented form** (first argument a :class:`ModelWrapper`)::

        min_max_hessian_eigs(model_wrapper, loss_fn=None, use_cuda=False, max_iter=100, tol=1e-3, *, seed=0,
                             float64=False)
            -> (min_eig, max_eig, min_eigvec, max_eigvec)

    **Legacy form** (first argument an ``nn.Module``; compatibility with the package's actual code)::

        min_max_hessian_eigs(net, inputs, targets, criterion, rank=0, use_cuda=False, verbose=False,
                             all_params=True, *, max_iter=100, tol=1e-3, seed=0, float64=False)
            -> (max_eig, min_eig, max_eigvec, min_eigvec, hvp_count)

    Method: the Hessian ``H = ∇²_θ L(θ)`` is a matrix-free operator (``H v`` by double backward with a
    cached gradient graph). ONE Lanczos run with full reorthogonalisation builds the Krylov space
    ``K_m(H, q₁) = span{q₁, H q₁, …, H^{m−1} q₁}`` and reads both ends off the tridiagonal
    ``T_m = Q_mᵀ H Q_m``: the extreme Ritz values ``θ_min ≥ λ_min`` and ``θ_max ≤ λ_max`` converge first
    (Kaniel–Paige), so one space serves both. The original ran ``scipy.sparse.linalg.eigsh`` twice, the
    second time on the shifted operator ``H − λ_max I``, at ``tol=1e-2``.

    Accuracy (``tol``): Lanczos stops when, for both Ritz pairs, the relative residual
    ``‖H v − θ v‖ / |θ| ≤ tol`` (for an eigenvalue numerically zero at the working precision,
    ``|θ| < √ε·‖H‖``, the residual is taken relative to ``√ε·‖H‖`` instead). A residual ``r`` bounds the
    eigenvalue error by ``r`` (some eigenvalue lies within ``r`` of ``θ``) and, with a gap δ to the rest of
    the spectrum, by ``r²/δ`` (Kato–Temple). With the default ``tol=1e-3`` this gives
    ``|θ − λ| ≤ 10⁻³|λ|`` outright and typically far less: on the 85k-parameter MLP benchmark (float32,
    ``benchmarks/bench_api_a.py``) the relative errors are 4.5e-6 (min) and 6e-9 (max) after 53
    Hessian-vector products, where the original's two ``eigsh`` runs at ``tol=1e-2`` spend 52–62 products
    and miss by up to 1–2 %. If ``max_iter`` Lanczos steps do not reach ``tol``, a ``RuntimeWarning``
    reports the relative residuals reached (the values returned are then the best Ritz pairs found; their
    residuals still bound their errors).

    Args (documented form):
        model_wrapper: a :class:`ModelWrapper` (model, ``loss_fn(model_output)``, X).
        loss_fn: overrides the wrapper's loss function for this call.
        use_cuda: compute on the GPU when CUDA is available (on copies: the model is not moved); without
            CUDA a ``UserWarning`` is issued and the computation stays on the CPU.
        max_iter: maximum number of Lanczos iterations (= Hessian-vector products); capped at n.
        tol: relative residual tolerance (see above).
        seed: seed of the (counter-based) Lanczos start vector; results are reproducible.
        float64: compute in float64 (on the operator's copies of the parameters; the model keeps its dtype).
            Needed for ``tol`` below ~5e-7, which float32 cannot verify (a ``UserWarning`` says so).

    Args (legacy form):
        net: the model. inputs, targets: one batch; the loss is ``criterion(net(inputs), targets)``.
        rank: only rank 0 prints (with ``verbose``). all_params: True analyses every trainable parameter;
        False, as the original code, leaves out 0-dim (scalar) parameters. Other arguments as above.

    Returns:
        Documented form: ``(min_eig, max_eig, min_eigvec, max_eigvec)``; legacy form: ``(max_eig, min_eig,
        max_eigvec, min_eigvec, hvp_count)``. Eigenvalues are Python floats; eigenvectors flat numpy arrays
        ``(n,)`` of unit norm in the order of ``model.named_parameters()`` (trainable ones), in the
        parameters' dtype (float32 for a float32 model, as the original; float64 for a float64 model; float32
        for a bfloat16/float16 model, analysed on float32 copies; float64 with ``float64=True``), with
        the sign fixed so that the largest-magnitude entry is positive. ``hvp_count`` is the number of
        Hessian-vector products spent.

    Raises:
        TypeError: the first argument is neither a ModelWrapper nor an nn.Module; wrong argument types.
        ValueError: bad ``max_iter``/``tol``; no trainable parameters; data on another device; a loss that is
            not a scalar.
        RuntimeError: the loss (or a Hessian-vector product) is NaN/Inf.
    """
    first = _first_arg(args, kwargs, ("model_wrapper", "net"))
    if isinstance(first, ModelWrapper):
        return _min_max_wrapper(*args, **kwargs)
    if isinstance(first, nn.Module):
        if "net" not in kwargs and not args:
            raise TypeError("legacy form: pass the model as the first positional argument or as net=")
        return _min_max_legacy(*args, **kwargs)
    raise TypeError("min_max_hessian_eigs: the first argument must be a ModelWrapper (documented form) or an "
                    f"nn.Module (legacy form net, inputs, targets, criterion), got {type(first).__name__}")


# ----------------------------------------------------------------------------------------------- trace
def _estimate_trace(H: HessianOperator, budget: int, method: Optional[str], seed: int):
    explicit = method is not None
    method = DEFAULT_TRACE_METHOD if method is None else method
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {TRACE_METHODS} or None, got {method!r}")
    seed = check_int("seed", seed)
    if budget < _MIN_BUDGET[method]:
        if not explicit:  # the default estimator needs 2 probes; one probe is Hutchinson's job
            method = "hutchinson"
        else:
            raise ValueError(f"num_random_vectors={budget} is too small for method={method!r} (needs >= "
                             f"{3 if method == 'hutchpp' else 2})")
    if method == "auto":
        res = estimate_trace(H, budget, method="auto", seed=seed)
    else:
        res = {"hutchinson": hutchinson, "hutchpp": hutchpp, "xtrace": xtrace}[method](H, budget, seed=seed)
    if not math.isfinite(res.estimate):
        raise RuntimeError(f"the trace estimate is {res.estimate}: the Hessian-vector products are not "
                           "finite")
    return res


def _trace_wrapper(model_wrapper: ModelWrapper, loss_fn: Optional[Callable[[Any], Tensor]] = None,
                   num_random_vectors: int = 100, use_cuda: bool = False, *, method: Optional[str] = None,
                   seed: int = 0, return_result: bool = False, float64: bool = False):
    if loss_fn is not None:
        _check_loss_fn(loss_fn)
    budget = _budget("num_random_vectors", num_random_vectors)
    return_result = check_bool("return_result", return_result)
    device = _resolve_device(use_cuda, model_wrapper.model)
    H = model_wrapper.operator(loss_fn, device=device, dtype=_compute_dtype(float64))
    res = _estimate_trace(H, budget, method, seed)
    return res if return_result else float(res.estimate)


def _trace_legacy(model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], inputs: Any, targets: Any,
                  num_random_vectors: int = 10, *, use_cuda: bool = False, method: Optional[str] = None,
                  seed: int = 0, return_result: bool = False, float64: bool = False):
    _check_loss_fn(loss_fn)
    budget = _budget("num_random_vectors", num_random_vectors)
    return_result = check_bool("return_result", return_result)
    device = _resolve_device(use_cuda, model)
    _param_device(model)
    _check_data_device(inputs, model, device, "inputs")
    _check_data_device(targets, model, device, "targets")
    H = _loss_operator(model, _LossOfOutput(model, loss_fn, "pair"), (inputs, targets), device=device,
                       dtype=_compute_dtype(float64))
    res = _estimate_trace(H, budget, method, seed)
    return res if return_result else float(res.estimate)


def hessian_trace(*args: Any, **kwargs: Any):
    """An estimate of the Hessian trace ``tr(H) = Σᵢ λᵢ`` from ``num_random_vectors`` Hessian-vector products.

    **Documented form** (first argument a :class:`ModelWrapper`)::

        hessian_trace(model_wrapper, loss_fn=None, num_random_vectors=100, use_cuda=False, *, method=None,
                      seed=0, return_result=False, float64=False) -> float   (or TraceResult)

    **Legacy form** (first argument an ``nn.Module``; compatibility with the package's actual code)::

        hessian_trace(model, loss_fn, inputs, targets, num_random_vectors=10, *, use_cuda=False, method=None,
                      seed=0, return_result=False, float64=False) -> float
                      (loss = loss_fn(model(inputs), targets))

    ``num_random_vectors`` is the **matvec budget** m (the number of Hessian-vector products), whatever the
    estimator. Estimators (``method``):

    * ``"hutchinson"``: ``tr(H) ≈ (1/m) Σⱼ zⱼᵀ H zⱼ`` with Rademacher ``zⱼ`` (what the original code did);
      variance ``2(‖H‖_F² − Σᵢ Hᵢᵢ²)/m``.
    * ``"hutchpp"``: Hutch++ (Meyer, Musco, Musco, Woodruff 2021): the trace of a rank-m/3 sketch ``Q`` of
      the top of the spectrum exactly, Hutchinson on ``(I − QQᵀ)H(I − QQᵀ)``; error ``O(‖H‖_*/m)``.
    * ``"xtrace"``: XTrace (Epperly, Tropp, Webber 2024): exchangeable leave-one-out Hutch++ that uses every
      probe both for the low-rank part and for the residual; same rate, smaller constant.
    * ``"auto"``: :func:`hessext.trace.adaptive_trace`: the first half of the budget is XTrace's sketch
      ``Y = AΩ``; from ``Y`` alone it estimates which estimator has the lower variance (the fraction of
      ``‖H‖_F²`` the sketch misses) and completes either XTrace or Hutchinson with the same probes.
    * ``None``: :data:`DEFAULT_TRACE_METHOD` = ``"auto"``, chosen by measurement: the lowest error at equal
      budget on a small MLP, CNN and transformer (cross-entropy, n = 830–1684), each at initialisation and
      after 150 Adam steps; root-mean-square relative error over 20 seeds against the exact trace of the
      dense float64 Hessian (``python benchmarks/bench_api_a.py --trace``; full table in the README):

      ====================  =================  =================  =================  =================
      budget 30 / 100       hutchinson         hutchpp            xtrace             auto
      ====================  =================  =================  =================  =================
      MLP init              1.1e-1 / 8.4e-2    1.9e-1 / 1.2e-1    2.9e-1 / 1.1e-1    1.1e-1 / 8.4e-2
      MLP trained           2.1e-2 / 1.2e-2    2.8e-2 / 1.1e-2    3.1e-2 / 1.1e-2    2.1e-2 / 1.1e-2
      CNN init              2.5e-1 / 1.3e-1    4.7e-1 / 1.5e-1    3.7e-1 / 8.4e-2    2.5e-1 / 8.4e-2
      CNN trained           3.5e-2 / 2.1e-2    2.5e-2 / 6.7e-3    2.3e-2 / 7.2e-3    2.3e-2 / 7.2e-3
      transformer init      3.8e-2 / 1.8e-2    6.0e-2 / 2.5e-2    5.7e-2 / 1.9e-2    3.8e-2 / 1.8e-2
      transformer trained   6.6e-2 / 3.7e-2    3.1e-2 / 7.8e-4    2.6e-2 / 7.2e-4    2.6e-2 / 7.2e-4
      geo. mean, 12 runs    4.6e-2             3.4e-2             3.2e-2             2.6e-2
      ====================  =================  =================  =================  =================

      Flat spectra (freshly initialised networks) favour Hutchinson by up to 2.7×, spectra with a few
      dominant eigenvalues (trained networks) favour XTrace by up to 52×; ``"auto"`` takes the better one
      in 11 of 12 cases and is within 2 % of it in the twelfth.

    Args (documented form):
        model_wrapper: a :class:`ModelWrapper`.
        loss_fn: overrides the wrapper's loss function for this call.
        num_random_vectors: matvec budget m ≥ 1 (the default estimator falls back to Hutchinson for m = 1;
            an explicit ``method="xtrace"`` needs m ≥ 2, ``"hutchpp"`` m ≥ 3).
        use_cuda: as in :func:`min_max_hessian_eigs`.
        method: ``"hutchinson"``, ``"hutchpp"``, ``"xtrace"``, ``"auto"`` or None (the default, ``"auto"``).
        seed: probe seed (counter-based Rademacher probes: same seed, same number on CPU and GPU).
        return_result: return the :class:`hessext.results.TraceResult` (estimate, ``std_error``,
            ``num_matvecs``, ``method``) instead of a float.
        float64: compute in float64 (on the operator's copies; the model keeps its dtype).

    Returns:
        The trace estimate as a Python float, or the ``TraceResult`` with ``return_result=True``.

    Raises:
        TypeError / ValueError: wrong argument types or values (the message names the argument).
        RuntimeError: the loss or a Hessian-vector product is NaN/Inf.
    """
    first = _first_arg(args, kwargs, ("model_wrapper", "model"))
    if isinstance(first, ModelWrapper):
        return _trace_wrapper(*args, **kwargs)
    if isinstance(first, nn.Module):
        return _trace_legacy(*args, **kwargs)
    raise TypeError("hessian_trace: the first argument must be a ModelWrapper (documented form) or an "
                    f"nn.Module (legacy form model, loss_fn, inputs, targets), got {type(first).__name__}")
