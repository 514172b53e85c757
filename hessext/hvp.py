"""HessianOperator: the Hessian of a model's loss as a matrix-free symmetric linear operator.

For batches ``B_1, …, B_K`` with weights ``w_b`` (their number of samples) and per-batch losses ``L_b(θ)``,

    H = (Σ_b w_b ∇²_θ L_b(θ)) / (Σ_b w_b),      θ ∈ R^n the analysed parameters (ParamLayout order),

and ``H v`` is computed without ever forming ``H``. The operator is composed of three parts, each readable on
its own:

- a :class:`~hessext.evaluator.FunctionalEvaluator`: the loss of batch ``b`` at given parameter tensors
  (``torch.func.functional_call`` of the model *and* the loss, on detached aliases of the user's tensors or
  converted copies), the batches, the model-state guard. The user's parameters, buffers and ``.grad`` are
  never written, and every term of the loss is counted (also one on ``model.parameters()`` or on the
  model's Parameters held in a closure);
- an **HVP strategy** per mode (:class:`DoubleBackward`, :class:`ForwardOverReverse`), ``"auto"`` resolved
  by the operator on the first product;
- a **reducer**: how the weighted sums ``Σ_b w_b H_b X`` and ``Σ_b w_b`` become the mean — :class:`LocalMean`
  in one process, the data-parallel all-reduce of :mod:`hessext.distributed` over a process group.

HVP modes
---------
- ``"double_backward"`` (Pearlmutter's trick by reverse-over-reverse): ``g_b = ∇L_b`` is computed once per
  batch with ``create_graph=True``, then ``H_b v = ∇_θ⟨g_b, v⟩`` is one more backward through that graph. A
  block ``V = [v_1 … v_m]`` goes through ONE call on accelerators,
  ``torch.autograd.grad(g_b, θ, grad_outputs=V, is_grads_batched=True, retain_graph=True)``; on the CPU the
  columns go one by one through the cached graph, which measured faster there (1.8 vs 2.9 gradients per
  vector on an 85k-parameter MLP: vmapped backward kernels gain nothing over already-large CPU GEMMs).
  With ``cache_graph=True`` the gradient graphs of the first ``max_cached_graphs`` (4) batches are kept
  and reused by every later matvec (one backward per HVP instead of forward + 2 backwards); the graphs of
  further batches are rebuilt on each matvec (and dropped right after), which bounds memory to 4 graphs.
  Cached graphs are discarded automatically if a parameter or buffer is modified in place.
  Measured on the CPU: 1.4–2.3 gradient evaluations per HVP with a cached graph, 2.7–2.8 rebuilt.
- ``"forward_over_reverse"``: ``H_b v = jvp(∇L_b, (θ,), (v,))`` with ``torch.func.jvp`` of
  ``torch.func.grad``; blocks go through ``torch.func.vmap`` over the tangents (``randomness="same"``).
  No graph is kept; 2.8–5.1 gradient evaluations per HVP on the CPU. It needs forward-mode AD of the
  backward of every op, and on torch 2.13 ``nn.MSELoss`` / ``F.mse_loss`` have none: their backward fails
  under ``jvp`` with ``RuntimeError: ZeroTensors are immutable…``. Use ``mode="double_backward"`` (or
  ``"auto"``) with them, or write the loss out (``((out - y) ** 2).mean()``). A loss term on the model's
  Parameters held in a closure is invisible to ``torch.func``: this mode refuses it (``ValueError``).
- ``"auto"`` (default): double backward, the cheapest measured; if this model has no double backward
  (an op whose derivative is not differentiable, e.g. "derivative for … is not implemented") it falls back
  to forward-over-reverse with a warning. The choice is made on the first product (which is also that
  product's result); ``mode_used`` tells which, ``fallback_reason`` why.

A batched call that fails because an op has no batching rule (vmap) makes the operator loop over the columns
from then on (``batched`` becomes False). Only those known errors of torch — a missing double backward,
forward-mode derivative or batching rule — switch a mode; any other error raised by the user's model or loss
propagates unchanged (same type, same message), and the mode stays as it was.

Model-mode policy, autograd modes, threads
------------------------------------------
By default (``eval_mode=True``) the model is analysed in eval mode: dropout is off and BatchNorm uses its
running statistics, so ``H`` is the Hessian of a deterministic function. ``eval_mode=False`` analyses in
train mode: BatchNorm uses batch statistics (and updates only private copies of the buffers) and dropout is
active, so H depends on the dropout masks: a warning says that matvecs are then stochastic (the masks are
fixed inside a cached graph and redrawn whenever a graph is rebuilt). The masks are drawn from a private
generator that starts where the global one stands (the masks a global draw would give); the global RNG is
never written.

Every public call (``matvec``/``matmat``/``@``, ``loss_and_grad``, ``determinism_check``, ``mode_used``)
runs inside the model-state guard (:func:`hessext._state.preserve_model_state`: training flags,
``requires_grad`` and ``.grad`` are restored afterwards, also when the call raises) and under
``torch.inference_mode(False)`` + ``torch.enable_grad()``, so it gives the right numbers inside
``torch.no_grad()`` or ``torch.inference_mode()``. A loss that does not require grad (computed under
``no_grad``, detached) raises ``ValueError``. Analyses of one model are serialised (the guard holds the
model's lock); analyses of different models run concurrently.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_int
from .evaluator import FunctionalEvaluator
from .linop import LinearOperator
from .ops import rademacher

__all__ = ["HessianOperator", "HVP_MODES", "DoubleBackward", "ForwardOverReverse", "LocalMean",
           "unsupported_by", "WeightedBatchSum"]

HVP_MODES = ("auto", "double_backward", "forward_over_reverse")

# ------------------------------------------------------------------------------------------ known errors
# What torch 2.13 says when a mode cannot differentiate an op (each row: substrings that must all appear).
_MISSING = {
    "double_backward": (("derivative for", "not implemented"), ("differentiate twice",),
                        ("double backward",)),
    "forward_over_reverse": (("forward AD",), ("forward-mode AD",), ("forward mode AD",), ("jvp function",),
                             ("setup_context",), ("ZeroTensors are immutable",),
                             ("in-place operation", "captured Tensor"),
                             ("derivative for", "not implemented")),
    "batching": (("Batching rule",), ("vmap",), ("batching",), ("is_grads_batched",)),
}
_OTHER = {"double_backward": "forward_over_reverse", "forward_over_reverse": "double_backward"}


def unsupported_by(what: str, e: BaseException) -> bool:
    """Whether ``e`` is torch saying that ``what`` (an HVP mode, or ``"batching"``) cannot handle an op of
    this model — as opposed to an error of the user's model or loss, which must propagate unchanged."""
    if not isinstance(e, (RuntimeError, NotImplementedError)) or isinstance(e, torch.OutOfMemoryError):
        return False
    text = str(e)
    return any(all(s in text for s in row) for row in _MISSING[what])


def _failed(mode: str, i: int, e: BaseException) -> RuntimeError:
    return RuntimeError(f"HVP with mode={mode!r} failed on batch {i}: {type(e).__name__}: {e}. This model "
                        f"needs an op that mode does not support; try mode={_OTHER[mode]!r}.")


def _zeros_for_unused(hs: Sequence[Tensor | None], shapes: Sequence[torch.Size], like: Tensor
                      ) -> list[Tensor]:
    """Unused parameters (None) have a zero Hessian row."""
    return [torch.zeros(s, dtype=like.dtype, device=like.device) if h is None else h
            for h, s in zip(hs, shapes)]


def _column_loop(strategy: Any, one: Callable[[int], list[Tensor]], m: int, err: BaseException | None
                 ) -> list[Tensor]:
    """Columns one by one; a batched call that failed on a missing batching rule (``err``) is not tried
    again once the loop has worked."""
    cols = [one(j) for j in range(m)]
    if err is not None:
        strategy.batched = False
        warnings.warn(f"batched HVP failed on this model ({type(err).__name__}: {str(err)[:200]}); looping "
                      "over the columns from now on", RuntimeWarning, stacklevel=5)
    return [torch.stack(hs) for hs in zip(*cols)]


# ------------------------------------------------------------------------------------------ strategies
class DoubleBackward:
    """``H_b V = ∂⟨∇L_b, V⟩/∂θ`` through the gradient's graph, cached for the first ``max_cached`` batches
    (module docstring)."""

    name = "double_backward"

    def __init__(self, ev: FunctionalEvaluator, cache_graph: bool = True, max_cached: int = 4) -> None:
        self.ev, self.cache_graph, self.max_cached = ev, cache_graph, max_cached
        self.batched = True
        self.graphs: dict[int, tuple[Tensor, tuple[Tensor | None, ...], bool]] = {}
        self._versions: tuple[int, ...] | None = None

    def graph(self, i: int, use_cache: bool = True) -> tuple[Tensor, tuple[Tensor | None, ...], bool]:
        """``(L_i, ∇L_i with its graph, with_originals)`` of batch ``i``, cached when allowed."""
        if self.graphs and self.ev.versions() != self._versions:
            self.graphs.clear()                     # a parameter or buffer was written in place
        if use_cache and i in self.graphs:
            return self.graphs[i]
        entry = self.ev.gradient(i, create_graph=True)
        if use_cache and self.cache_graph and i < self.max_cached:
            if not self.graphs:
                self._versions = self.ev.versions()
            self.graphs[i] = entry
        return entry

    def hvp(self, i: int, Vs: list[Tensor], use_cache: bool = True) -> list[Tensor]:
        """``H_i V`` for ``V`` given per parameter as ``[m, *shape]`` blocks; same form out."""
        _, grads, with_originals = self.graph(i, use_cache)
        pairs = [(g, v) for g, v in zip(grads, Vs) if g is not None and g.requires_grad]
        if not pairs:
            return [torch.zeros_like(v) for v in Vs]
        outs, vs = [g for g, _ in pairs], [v for _, v in pairs]
        inputs = self.ev.inputs(with_originals)

        def product(cols: list[Tensor], batched: bool) -> list[Tensor]:
            hs = torch.autograd.grad(outs, inputs, grad_outputs=cols, retain_graph=True, allow_unused=True,
                                     is_grads_batched=batched)
            shapes = [v.shape if batched else v.shape[1:] for v in Vs]
            return _zeros_for_unused(self.ev.combine(hs, with_originals), shapes, Vs[0])

        m = Vs[0].shape[0]
        if m == 1:
            return [h[None] for h in product([v[0] for v in vs], False)]
        err = None
        # On the CPU a loop of single backwards through the cached graph is faster than one vmapped backward
        # (measured on the 85k-parameter MLP, batch 512, 1 thread: 1.8 vs 2.9 gradients per vector; vmap's
        # batched kernels gain nothing over already-large CPU GEMMs); accelerators gain from one launch.
        if self.batched and self.ev.device.type != "cpu":
            try:
                return product(vs, True)
            except (RuntimeError, NotImplementedError) as e:
                if not unsupported_by("batching", e):
                    raise
                err = e
        return _column_loop(self, lambda j: product([v[j] for v in vs], False), m, err)


class ForwardOverReverse:
    """``H_b V = jvp(∇L_b, θ, V)`` by ``torch.func`` (module docstring); nothing is cached."""

    name = "forward_over_reverse"

    def __init__(self, ev: FunctionalEvaluator) -> None:
        self.ev = ev
        self.batched = True
        self._checked: set[int] = set()

    def _check(self, i: int) -> None:
        """Once per batch, one gradient outside ``torch.func``: the loss is finite and differentiable, and
        has no term on the model's own Parameters (``torch.func`` cannot see through a closure)."""
        if i in self._checked:
            return
        _, _, with_originals = self.ev.gradient(i, create_graph=False)
        if with_originals:
            raise ValueError(f"the loss of batch {i} has a term on the model's Parameters read outside the "
                             "model call (a closure over the Parameter objects); mode='forward_over_reverse' "
                             "cannot differentiate it: use mode='double_backward'")
        self._checked.add(i)

    def hvp(self, i: int, Vs: list[Tensor], use_cache: bool = True) -> list[Tensor]:
        self._check(i)
        names = self.ev.layout.names
        primals = {k: t.detach() for k, t in self.ev.leaves.items()}
        grad_fn = torch.func.grad(lambda p: self.ev.loss(i, p))

        def one(tangent: dict[str, Tensor]) -> dict[str, Tensor]:
            return torch.func.jvp(grad_fn, (primals,), (tangent,))[1]

        m = Vs[0].shape[0]
        if m == 1:
            out = one({k: v[0] for k, v in zip(names, Vs)})
            return [out[k][None] for k in names]
        err = None
        if self.batched:
            try:
                out = torch.func.vmap(one, randomness="same")(dict(zip(names, Vs)))
                return [out[k] for k in names]
            except (RuntimeError, NotImplementedError) as e:
                if not unsupported_by("batching", e):
                    raise
                err = e

        def column(j: int) -> list[Tensor]:
            out = one({k: v[j] for k, v in zip(names, Vs)})
            return [out[k] for k in names]
        return _column_loop(self, column, m, err)


# ------------------------------------------------------------------------------------------ reducer
class LocalMean:
    """The reducer of one process: ``total / weight_sum`` (the weighted mean of its own batches)."""

    local = True

    def attach(self, dtype: torch.dtype, device: torch.device) -> None:
        """Told the operator's dtype and device once it is built (nothing to do here)."""

    def reduce(self, total: Tensor, weight_sum: float) -> Tensor:
        """``total`` (``Σ_b w_b x_b``: ``[n, m]`` or ``[n + 1]``) divided by ``Σ_b w_b``."""
        return total / weight_sum

    def guard(self, numel: int) -> contextlib.AbstractContextManager:
        """Held around the computation of one reduced quantity of ``numel`` numbers (a data-parallel
        reducer tells the other ranks when this one fails before its collective)."""
        return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------ operator
class WeightedBatchSum:
    """``Σ_b w_b P_b`` of per-batch flat products ``P_b: [m, n]`` (fresh tensors, accumulated in place; with
    ``single`` the one product itself, unweighted), the weight sum, and which batches were finite — the one
    accumulation of :class:`HessianOperator` and the curvature operators (:mod:`hessext.curvature`).

    Finiteness costs one GEMV per batch: ``x·0 = ±0`` for finite x and NaN for NaN/Inf, so ``P_b @ 0`` is 0
    exactly when every entry is finite (measured: 5 µs vs 107 µs for ``isfinite(P_b).all()``); the zero vector
    is kept between calls."""

    def __init__(self) -> None:
        self._zero: Tensor | None = None

    def __call__(self, products: Iterable[tuple[Tensor, float]],
                 single: bool) -> tuple[Tensor, float, Tensor]:
        """Returns ``(total [m, n], Σ w_b, ok [batches] bool)``."""
        total: Tensor | None = None
        weight_sum = 0.0
        finite: list[Tensor] = []
        for flat, w in products:
            if self._zero is None or self._zero.shape[0] != flat.shape[1]:
                self._zero = torch.zeros(flat.shape[1], dtype=flat.dtype, device=flat.device)
            finite.append(flat @ self._zero)
            if total is None:
                total = flat if single else flat.mul_(w)
            else:
                total.add_(flat, alpha=w)
            weight_sum += w
        if total is None:
            raise RuntimeError("no batch to sum over")
        return total, weight_sum, torch.stack(finite).eq(0).all(dim=1)


class HessianOperator(LinearOperator):
    """``H = Σ_b w_b ∇²L_b / Σ_b w_b`` of a model's loss as a LinearOperator of size n (analysed parameters).

    Args:
        model: the user's ``nn.Module`` (never modified).
        loss_fn: the criterion; see :mod:`hessext.data` for how it is called for each batch kind. May be None
            for dict batches (cross-entropy) or with ``batch_loss``.
        data: one batch, a list/tuple of batches, or an iterable (DataLoader) with ``num_batches``.
        params: None (all parameters with ``requires_grad``), a list of parameter names, or a list of the
            model's Parameters. The layout follows ``model.named_parameters()`` order.
        num_batches: use at most this many batches of ``data``.
        model_type: for dict batches: "decoder_only", "encoder_only", "encoder_decoder" (None: decoder_only).
        batch_loss: custom ``(model_call, batch) -> (loss, weight)``, overrides the built-in batch kinds.
        mode: "auto", "double_backward" or "forward_over_reverse" (module docstring).
        dtype: torch.float32 / torch.float64: compute on converted copies of parameters, buffers and
            floating inputs (the model is untouched). None: the parameters' own dtype (float32/float64);
            bfloat16/float16 parameters are analysed on float32 copies (the Hessian of the float32-upcast
            model; :mod:`hessext.evaluator`).
        device: compute on copies moved to this device (API A's ``use_cuda``). None: the parameters' device.
        eval_mode: analyse in eval mode (default) or, with False, in train mode (module docstring).
        progress: show a tqdm bar over the batches of each matvec (None: only with ≥ 20 batches).
        cache_graph: keep the gradient graphs of up to ``max_cached_graphs`` batches (double backward).
        reducer: how the weighted sums over this process's batches become the mean: None for
            :class:`LocalMean`; :func:`hessext.distributed.hessian_operator` passes the data-parallel one.
        loss_source: which loss of a dict batch is analysed: "auto" (default: the model's own
            ``model(**batch).loss`` when its forward takes ``labels`` — transformers' LM heads —, else
            ``loss_fn`` on the logits), "model" or "loss_fn" (:mod:`hessext.data`).

    Attributes:
        layout: the :class:`ParamLayout` of the analysed parameters.
        model: the user's model.
        evaluator: the :class:`~hessext.evaluator.FunctionalEvaluator` of the loss.
        mode_used: the HVP mode in use ("double_backward" or "forward_over_reverse").
        loss_source_used: the loss analysed: "model" (``model(**batch).loss``), "loss_fn" or "batch_loss".
        batched: whether blocks go through one batched call (False after a batching rule was missing).
        num_batches: number of batches used.
        max_cached_graphs: gradient graphs of at most this many batches are cached (default 4).

    Raises:
        ValueError: no trainable parameters / empty ``params``; unknown names (close names listed);
            data and model on different devices; empty data; data errors (batch named); bad
            ``mode``/``dtype``; a loss without an autograd graph (on the first product).
        TypeError: integer parameters; mixed float32/float64 parameters without ``dtype=``; wrong types.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Tensor] | None, data: Any,
                 params: Sequence[str] | Sequence[nn.Parameter] | None = None, *,
                 num_batches: int | None = None, model_type: str | None = None,
                 batch_loss: Callable[..., Any] | None = None, mode: str = "auto",
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 eval_mode: bool = True, progress: bool | None = False, cache_graph: bool = True,
                 reducer: Any = None, loss_source: str = "auto") -> None:
        if mode not in HVP_MODES:
            raise ValueError(f"mode must be one of {HVP_MODES}, got {mode!r}")
        ev = FunctionalEvaluator(model, loss_fn, data, params, num_batches=num_batches, model_type=model_type,
                                 batch_loss=batch_loss, dtype=dtype, device=device, eval_mode=eval_mode,
                                 loss_source=loss_source)
        super().__init__(ev.layout.n, ev.dtype, ev.device)
        self.evaluator = ev
        self.model, self.layout, self.num_batches = ev.model, ev.layout, ev.num_batches
        self.loss_fn, self.model_type, self.eval_mode = loss_fn, model_type, ev.eval_mode
        self.loss_source_used = ev.loss_source_used
        self.mode, self.progress = mode, progress
        self._strategies = {"double_backward": DoubleBackward(ev, bool(cache_graph)),
                            "forward_over_reverse": ForwardOverReverse(ev)}
        self._mode_used: str | None = None if mode == "auto" else mode
        self.fallback_reason: str | None = None
        self._reducer = reducer if reducer is not None else LocalMean()
        self._reducer.attach(self.dtype, self.device)
        self._sum = WeightedBatchSum()    # the weighted sum over batches with its finiteness test
        if not ev.eval_mode:
            warnings.warn("eval_mode=False: the model is analysed in train mode; with dropout the Hessian "
                          "depends on random masks and matvecs are stochastic (fixed within a cached graph, "
                          "redrawn when a graph is rebuilt); BatchNorm uses batch statistics", UserWarning,
                          stacklevel=2)

    # ------------------------------------------------------------------ settings of the strategies
    @property
    def max_cached_graphs(self) -> int:
        return self._strategies["double_backward"].max_cached

    @max_cached_graphs.setter
    def max_cached_graphs(self, value: int) -> None:
        self._strategies["double_backward"].max_cached = check_int("max_cached_graphs", value, minimum=0)

    @property
    def cache_graph(self) -> bool:
        return self._strategies["double_backward"].cache_graph

    @property
    def batched(self) -> bool:
        return self._strategies[self._mode_used or "double_backward"].batched

    # ------------------------------------------------------------------ guard and modes
    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """Around every public call: the model-state guard (re-entrant: nested in a :meth:`session` it only
        counts) and autograd on, whatever the caller's grad or inference mode."""
        with self.evaluator.guard():
            if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
                with torch.inference_mode(False), torch.enable_grad():
                    yield
            else:
                yield

    def session(self) -> contextlib.AbstractContextManager:
        """Hold the model-state guard for a whole run of products (lanczos, the trace estimators and SLQ do):
        the model is put in the analysis mode once and restored — flags, ``requires_grad``, ``.grad`` — when
        the run ends or raises, instead of around every product (~0.15 ms each on the CPU). Other threads
        analysing the same model wait until the session ends."""
        return self.evaluator.guard()

    def _hvp(self, mode: str, i: int, Vs: list[Tensor], use_cache: bool) -> list[Tensor]:
        """``H_i V`` by ``mode``; a known limitation of the mode is reported as such, any other error
        propagates unchanged."""
        try:
            return self._strategies[mode].hvp(i, Vs, use_cache)
        except (RuntimeError, NotImplementedError) as e:
            if unsupported_by(mode, e):
                raise _failed(mode, i, e) from e
            raise

    def _resolve(self, Vs: list[Tensor] | None = None, use_cache: bool = True
                 ) -> tuple[str, list[Tensor] | None]:
        """Resolve ``mode="auto"`` (inside :meth:`_call`): double backward on batch 0, else — only if this
        model has no double backward — forward-over-reverse. With ``Vs`` (the caller's own block) that
        product is the caller's first result and is returned with the mode, so resolving costs no extra
        HVP; without, a probe vector of ones is used."""
        if self._mode_used is not None:
            return self._mode_used, None
        probe = Vs if Vs is not None else [torch.ones(1, *s, dtype=self.dtype, device=self.device)
                                           for s in self.layout.shapes]
        try:
            first = self._strategies["double_backward"].hvp(0, probe, use_cache)
            mode = "double_backward"
        except (RuntimeError, NotImplementedError) as e:
            if not unsupported_by("double_backward", e):
                raise
            self._strategies["double_backward"].graphs.clear()
            try:
                first = self._strategies["forward_over_reverse"].hvp(0, probe, use_cache)
            except (RuntimeError, NotImplementedError) as e2:
                if not unsupported_by("forward_over_reverse", e2):
                    raise
                raise RuntimeError(f"no HVP mode works on this model (double_backward: {type(e).__name__}: "
                                   f"{e}; forward_over_reverse: {type(e2).__name__}: {e2})") from e2
            mode = "forward_over_reverse"
            self.fallback_reason = f"double_backward failed: {e}"
            warnings.warn(f"mode='auto': double backward failed on this model, using forward-over-reverse "
                          f"({str(e)[:200]})", RuntimeWarning, stacklevel=5)
        self._mode_used = mode
        return mode, (first if Vs is not None else None)

    @property
    def mode_used(self) -> str:
        """The HVP mode in use; resolving ``mode="auto"`` runs one probe HVP on the first batch."""
        if self._mode_used is None:
            with self._call():
                self._resolve()
        return self._mode_used  # type: ignore[return-value]

    # ------------------------------------------------------------------ products
    def _batches(self) -> Iterable[int]:
        show = self.num_batches >= 20 if self.progress is None else bool(self.progress)
        if not show:
            return range(self.num_batches)
        from tqdm import tqdm
        return tqdm(range(self.num_batches), desc="HVP batches", leave=False)

    def _apply(self, X: Tensor, use_cache: bool = True) -> Tensor:
        """``H X`` for ``X: [n, m]`` (inside :meth:`_call`).

        Hot path (one HVP costs ~1.4 gradients on the CPU, so every pass over n counts): per batch one
        flatten (``cat``) and one fused finiteness test; with one batch and a local reducer the result is
        that batch's product itself (no weighting, no division); the weighted sum over several batches is
        accumulated in place.
        """
        Vs = self.layout.unflatten_batched(X)
        with self._reducer.guard(self.n * X.shape[1]), self.evaluator.differentiating():
            mode, first = self._resolve(Vs, use_cache)     # resolving "auto" computes batch 0's product
            single = self.num_batches == 1 and self._reducer.local
            products = ((self.layout.flatten_batched(first if (i == 0 and first is not None)
                                                     else self._hvp(mode, i, Vs, use_cache)),
                         self.evaluator.weights[i]) for i in self._batches())
            total, weight_sum, ok = self._sum(products, single)
            if not bool(ok.all()):
                self._raise_not_finite(mode, int((~ok).nonzero()[0]), Vs, use_cache)
            if single:
                return total.T.contiguous()
            return self._reducer.reduce(total.T, weight_sum).contiguous()

    def _raise_not_finite(self, mode: str, b: int, Vs: list[Tensor], use_cache: bool) -> None:
        """Name the parameters whose HVP block is NaN/Inf on batch ``b`` (error path: recomputes it)."""
        hv = self._hvp(mode, b, Vs, use_cache)
        bad = [k for k, h in zip(self.layout.names, hv) if not bool(torch.isfinite(h).all())]
        raise RuntimeError(f"Hessian-vector product contains NaN/Inf on batch {b} in parameter(s) {bad} "
                           f"(mode {mode!r})")

    def _matmat(self, X: Tensor) -> Tensor:
        with self._call():
            if X.is_inference():
                X = X.clone()
            return self._apply(X)

    # ------------------------------------------------------------------ gradient, diagnostics
    def _gradient(self, i: int) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        """Loss and gradient of batch ``i``, from the cached graph when there is one to reuse."""
        db = self._strategies["double_backward"]
        if self._mode_used == "double_backward" and db.cache_graph and i < db.max_cached:
            loss, grads, _ = db.graph(i, use_cache=True)
            return loss, tuple(None if g is None else g.detach() for g in grads)
        loss, grads, _ = self.evaluator.gradient(i, create_graph=False)
        return loss, grads

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """Weighted mean loss (a float) and its gradient ``[n]`` over the operator's batches."""
        with self._call(), self._reducer.guard(self.n + 1):
            total = torch.zeros(self.n + 1, dtype=self.dtype, device=self.device)
            weight_sum = 0.0
            for i in range(self.num_batches):
                loss, grads = self._gradient(i)
                w = self.evaluator.weights[i]
                flat = torch.cat([torch.zeros(k, dtype=self.dtype, device=self.device) if g is None
                                  else g.reshape(-1) for g, k in zip(grads, self.layout.numels)])
                total[:-1].add_(flat, alpha=w)
                total[-1] += w * loss.to(self.dtype)
                weight_sum += w
            out = self._reducer.reduce(total, weight_sum)
        grad = out[:-1].clone()
        if not bool(torch.isfinite(grad).all()):
            bad = [k for k, g in self.layout.as_dict(grad).items() if not bool(torch.isfinite(g).all())]
            raise RuntimeError(f"the gradient contains NaN/Inf in parameter(s) {bad}")
        return float(out[-1]), grad

    def determinism_check(self, seed: int = 0) -> float:
        """``‖H v − H' v‖ / ‖H v‖`` for one Rademacher ``v``: ``H v`` is computed twice, the second time with
        freshly built graphs (no cache), within one call. 0 for a deterministic model and kernels; larger with
        train-mode dropout or non-deterministic kernels. Counts 2 matvecs."""
        v = rademacher(self.n, seed=seed, dtype=self.dtype, device=self.device)[:, None]
        with self._call():
            y1 = self._apply(v, use_cache=True)
            y2 = self._apply(v, use_cache=False)
        self.num_matvecs += 2
        denom = float(torch.linalg.vector_norm(y1))
        diff = float(torch.linalg.vector_norm(y1 - y2))
        if denom == 0.0:
            return 0.0 if diff == 0.0 else math.inf
        return diff / denom

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, params={len(self.layout)}, batches={self.num_batches}, "
                f"mode={self._mode_used or self.mode!r}, dtype={self.dtype}, device={self.device})")
