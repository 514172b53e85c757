"""HessianOperator: the Hessian of a model's loss as a matrix-free symmetric linear operator.

For batches ``B_1, …, B_K`` with weights ``w_b`` (their number of samples) and per-batch losses ``L_b(θ)``,

    H = (Σ_b w_b ∇²_θ L_b(θ)) / (Σ_b w_b),      θ ∈ R^n the analysed parameters (ParamLayout order),

and ``H v`` is computed without ever forming ``H``. The model is evaluated functionally,
``torch.func.functional_call(model, {params, buffers}, inputs)``, on detached tensors that share storage
with the user's parameters (copies only when ``dtype=``/``device=`` ask for a conversion), so the user's
parameters, buffers and ``.grad`` are never written.

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
  No graph is kept; 2.8–5.1 gradient evaluations per HVP on the CPU.
- ``"auto"`` (default): double backward, the cheapest measured; if it fails on this model (an op without
  a double backward) it falls back to forward-over-reverse (which needs forward-mode AD of every op). The
  choice is made by a probe on the first batch the first time it is needed; ``mode_used`` tells which.

If a batched call fails (an op without a batching rule), the operator loops over the columns from then on
(``batched`` becomes False). Forward passes run under ``sdpa_kernel([SDPBackend.MATH])`` (class attribute
``force_math_sdpa``): CPU flash attention has neither a double backward nor forward-mode AD.

Model-mode policy
-----------------
By default (``eval_mode=True``) the model is analysed in eval mode: dropout is off and BatchNorm uses its
running statistics, so ``H`` is the Hessian of a deterministic function. ``eval_mode=False`` analyses in
train mode: BatchNorm uses batch statistics (and updates only private copies of the buffers) and dropout is
active, so H depends on the dropout masks drawn from the global RNG: a warning says that matvecs are then
stochastic (the masks are fixed inside a cached graph and redrawn whenever a graph is rebuilt).
Every public call (``matvec``/``matmat``/``@``, ``loss_and_grad``, ``determinism_check``, ``mode_used``)
runs inside :func:`hessext._state.preserve_model_state`: training flags, ``requires_grad``, ``.grad`` and
the global RNG states are restored afterwards, also when the call raises.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .data import (LossNotFiniteError, check_loss, check_loss_finite, make_batch_loss, map_tensors,
                   normalize_data, tensors_of)
from .layout import ParamLayout
from .linop import LinearOperator
from ._state import ModelStructure, preserve_model_state, restore_rng_state, rng_state

__all__ = ["HessianOperator", "HVP_MODES"]

#: Set by :func:`hessext.distributed.data_parallel`: while set (in this thread / task), constructing a
#: ``HessianOperator`` builds the data-parallel subclass it names, so facades run unchanged on every rank.
DATA_PARALLEL: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("hessext_data_parallel",
                                                                                default=None)

HVP_MODES = ("auto", "double_backward", "forward_over_reverse")
_FLOAT_DTYPES = (torch.float32, torch.float64)


def _sdpa_math() -> contextlib.AbstractContextManager:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


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
            floating inputs (the model is untouched). None: the parameters' own dtype (float32/float64).
        device: compute on copies moved to this device (API A's ``use_cuda``). None: the parameters' device.
        eval_mode: analyse in eval mode (default) or, with False, in train mode (module docstring).
        progress: show a tqdm bar over the batches of each matvec (None: only with ≥ 20 batches).
        cache_graph: keep the gradient graphs of up to ``max_cached_graphs`` batches (double backward).

    Attributes:
        layout: the :class:`ParamLayout` of the analysed parameters.
        model: the user's model.
        mode_used: the HVP mode in use ("double_backward" or "forward_over_reverse").
        batched: whether blocks go through one batched call (False after a batched call failed).
        num_batches: number of batches used.

    Raises:
        ValueError: no trainable parameters / empty ``params``; unknown names (close names listed);
            data and model on different devices; empty data; bad ``mode``/``dtype``.
        TypeError: half/integer parameters (pass ``dtype=torch.float32`` or ``torch.float64``); wrong types.
    """

    #: Gradient graphs of at most this many batches are cached (double backward, ``cache_graph=True``).
    max_cached_graphs: int = 4
    #: Run forward passes under the math scaled-dot-product-attention backend.
    force_math_sdpa: bool = True

    def __new__(cls, *args: Any, **kwargs: Any) -> "HessianOperator":
        ctx = DATA_PARALLEL.get()
        if ctx is not None and cls is HessianOperator:
            cls = ctx["cls"]       # inside data_parallel(): the data-parallel subclass (same __init__ args)
        return super().__new__(cls)

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Tensor] | None, data: Any,
                 params: Sequence[str] | Sequence[nn.Parameter] | None = None, *,
                 num_batches: int | None = None, model_type: str | None = None,
                 batch_loss: Callable[..., Any] | None = None, mode: str = "auto",
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 eval_mode: bool = True, progress: bool | None = False, cache_graph: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if mode not in HVP_MODES:
            raise ValueError(f"mode must be one of {HVP_MODES}, got {mode!r}")
        if dtype is not None and dtype not in _FLOAT_DTYPES:
            raise ValueError(f"dtype must be torch.float32, torch.float64 or None, got {dtype!r}")
        if not isinstance(eval_mode, bool):
            raise TypeError(f"eval_mode must be a bool, got {type(eval_mode).__name__}")
        self.model = model
        self.layout = ParamLayout.from_module(model, self._resolve_names(model, params))
        named = dict(model.named_parameters())
        analysed = [named[k] for k in self.layout.names]

        # dtype / device of the computation
        for k, p in zip(self.layout.names, analysed):
            if not p.is_floating_point() or (dtype is None and p.dtype not in _FLOAT_DTYPES):
                raise TypeError(f"parameter {k!r} has dtype {p.dtype}; the Hessian is computed in float32 or "
                                "float64: pass dtype=torch.float32 or dtype=torch.float64")
        dtypes = {p.dtype for p in analysed}
        if dtype is None and len(dtypes) > 1:
            raise TypeError(f"the analysed parameters have mixed dtypes {sorted(map(str, dtypes))}; pass "
                            "dtype=torch.float32 or dtype=torch.float64")
        devices = {p.device for p in analysed}
        if device is None and len(devices) > 1:
            raise ValueError(f"the analysed parameters are on several devices {sorted(map(str, devices))}; "
                             "pass device=")
        op_dtype = dtype if dtype is not None else analysed[0].dtype
        op_device = torch.device(device) if device is not None else analysed[0].device
        super().__init__(self.layout.n, op_dtype, op_device)
        self._convert = dtype is not None or device is not None

        def conv(t: Tensor) -> Tensor:
            t = t.detach()
            if not self._convert:
                return t
            to_dtype = op_dtype if (dtype is not None and t.is_floating_point()) else t.dtype
            return t.to(device=op_device, dtype=to_dtype, copy=True)

        self._leaves: dict[str, Tensor] = {k: conv(p).requires_grad_(True)
                                           for k, p in zip(self.layout.names, analysed)}
        self._frozen: dict[str, Tensor] = {k: conv(p) for k, p in named.items() if k not in self._leaves}
        self._buffers: dict[str, Tensor] = {k: conv(b) for k, b in model.named_buffers()}

        # data
        # Iterating a DataLoader draws its base seed from the global torch RNG: restore it afterwards.
        rng = rng_state()
        try:
            batches = normalize_data(data, num_batches, custom=batch_loss is not None)
        finally:
            restore_rng_state(rng)
        if self._convert:
            def conv_in(t: Tensor) -> Tensor:
                if dtype is not None and t.is_floating_point():
                    return t.to(device=op_device, dtype=dtype)
                return t.to(device=op_device)
            batches = [map_tensors(b, conv_in) for b in batches]
        else:
            for i, b in enumerate(batches):
                for t in tensors_of(b):
                    if t.device != op_device:
                        raise ValueError(f"data batch {i} is on device {t.device} but the model's parameters "
                                         f"are on {op_device}; move them to one device or pass device=")
        self._batches = batches
        self.num_batches = len(batches)
        self._loss = make_batch_loss(loss_fn, model, model_type=model_type, batch_loss=batch_loss)
        self.loss_fn, self.model_type = loss_fn, model_type

        self._guard_depth = 0          # > 0 while the model-state guard is held (see _context / session)
        self._structure: ModelStructure | None = None   # the model's module tree, walked once
        self._zero: Tensor | None = None  # [n] zeros: H x · 0 is 0 iff H x is finite (one GEMV, see _apply)
        self.mode = mode
        self._mode_used: str | None = None if mode == "auto" else mode
        self.fallback_reason: str | None = None
        self.eval_mode = eval_mode
        self.cache_graph = bool(cache_graph)
        self.progress = progress
        self.batched = True
        self._graphs: dict[int, tuple[Tensor, tuple[Tensor | None, ...], float]] = {}
        self._graph_versions: tuple[int, ...] | None = None
        self._weights: dict[int, float] = {}
        self._finite_checked: set[int] = set()
        if not eval_mode:
            warnings.warn("eval_mode=False: the model is analysed in train mode; with dropout the Hessian "
                          "depends on random masks and matvecs are stochastic (fixed within a cached graph, "
                          "redrawn when a graph is rebuilt); BatchNorm uses batch statistics", UserWarning,
                          stacklevel=2)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _resolve_names(model: nn.Module, params: Any) -> list[str] | None:
        if params is None:
            return None
        if isinstance(params, (str, Tensor)):
            params = [params]
        if isinstance(params, dict):
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
                    raise ValueError(f"params[{j}] (a tensor of shape {list(p.shape)}) is not a parameter of "
                                     "the model")
                out.append(by_id[id(p)])
            return out
        kinds = sorted({type(p).__name__ for p in items})
        raise TypeError(f"params must be None, a list of names or a list of the model's Parameters, "
                        f"got {kinds}")

    # ------------------------------------------------------------------ evaluation
    def _state(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        buffers = self._buffers
        if not self.eval_mode:  # train-mode modules (BatchNorm) write their buffers: give them clones
            buffers = {k: b.clone() for k, b in buffers.items()}
        return {**self._frozen, **buffers, **params}

    def _batch_loss(self, i: int, params: dict[str, Tensor]) -> Tensor:
        """Loss of batch ``i`` at the given analysed parameters (a 0-dim tensor); records its weight."""
        state = self._state(params)

        def model_call(*args: Any, **kwargs: Any) -> Any:
            return functional_call(self.model, state, args, kwargs)

        loss, w = self._loss(model_call, self._batches[i])
        self._weights[i] = float(w)
        return check_loss(loss, i)

    def _versions(self) -> tuple[int, ...]:
        ts = list(self._leaves.values()) + list(self._frozen.values()) + list(self._buffers.values())
        return tuple(t._version for t in ts)

    def _graph(self, i: int, use_cache: bool) -> tuple[Tensor, tuple[Tensor | None, ...], float]:
        """(loss, gradient with its graph, weight) of batch ``i``, cached when allowed."""
        if self._graphs:
            v = self._versions()
            if v != self._graph_versions:
                self._graphs.clear()
        if use_cache and i in self._graphs:
            return self._graphs[i]
        leaves = list(self._leaves.values())
        with torch.enable_grad():
            loss = self._batch_loss(i, self._leaves)
            check_loss_finite(loss, i)
            self._finite_checked.add(i)
            if loss.requires_grad:
                grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            else:
                grads = (None,) * len(leaves)
        entry = (loss.detach(), tuple(grads), self._weights[i])
        if use_cache and self.cache_graph and i < self.max_cached_graphs:
            if not self._graphs:
                self._graph_versions = self._versions()
            self._graphs[i] = entry
        return entry

    def _hvp_double_backward(self, i: int, Vs: list[Tensor], use_cache: bool) -> tuple[list[Tensor], float]:
        _, grads, w = self._graph(i, use_cache)
        m = Vs[0].shape[0]
        leaves = list(self._leaves.values())
        pairs = [(g, v) for g, v in zip(grads, Vs) if g is not None and g.requires_grad]
        if not pairs:
            return [torch.zeros_like(v) for v in Vs], w
        outs = [g for g, _ in pairs]
        vs = [v for _, v in pairs]

        def one(cols: list[Tensor], batched: bool) -> list[Tensor]:
            hs = torch.autograd.grad(outs, leaves, grad_outputs=cols, retain_graph=True, allow_unused=True,
                                     is_grads_batched=batched)
            # unused parameters (None) have a zero Hessian row (materialize_grads would drop the batch dim)
            shapes = [v.shape if batched else v.shape[1:] for v in Vs]
            return [torch.zeros(s, dtype=self.dtype, device=self.device) if h is None else h
                    for h, s in zip(hs, shapes)]

        if m == 1:
            return [h[None] for h in one([v[0] for v in vs], False)], w
        err = None
        # On the CPU a loop of single backwards through the cached graph is faster than one vmapped backward
        # (measured on the 85k-parameter MLP, batch 512, 1 thread: 1.8 vs 2.9 gradients per vector; vmap's
        # batched kernels gain nothing over already-large CPU GEMMs); accelerators gain from one launch.
        if self.batched and self.device.type != "cpu":
            try:
                return list(one(vs, True)), w
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as e:
                err = e
        cols = [one([v[j] for v in vs], False) for j in range(m)]
        self._batching_failed(err)
        return [torch.stack(hs) for hs in zip(*cols)], w

    def _hvp_forward_over_reverse(self, i: int, Vs: list[Tensor]) -> tuple[list[Tensor], float]:
        names = self.layout.names
        if i not in self._finite_checked:
            with torch.no_grad():
                check_loss_finite(self._batch_loss(i, {k: t.detach() for k, t in self._leaves.items()}), i)
            self._finite_checked.add(i)
        primals = {k: self._leaves[k].detach() for k in names}
        grad_fn = torch.func.grad(lambda p: self._batch_loss(i, p))

        def one(tangent: dict[str, Tensor]) -> dict[str, Tensor]:
            return torch.func.jvp(grad_fn, (primals,), (tangent,))[1]

        m = Vs[0].shape[0]
        if m == 1:
            out = one({k: v[0] for k, v in zip(names, Vs)})
            return [out[k][None] for k in names], self._weights[i]
        err = None
        if self.batched:
            try:
                out = torch.func.vmap(one, randomness="same")(dict(zip(names, Vs)))
                return [out[k] for k in names], self._weights[i]
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as e:
                err = e
        cols = [one({k: v[j] for k, v in zip(names, Vs)}) for j in range(m)]
        self._batching_failed(err)
        return [torch.stack([c[k] for c in cols]) for k in names], self._weights[i]

    def _batching_failed(self, e: Exception | None) -> None:
        """The batched call failed but the column loop worked: loop from now on."""
        if e is None:
            return
        self.batched = False
        warnings.warn(f"batched HVP failed on this model ({type(e).__name__}: {str(e)[:200]}); looping over "
                      "the columns from now on", RuntimeWarning, stacklevel=4)

    def _batch_hvp(self, mode: str, i: int, Vs: list[Tensor], use_cache: bool) -> tuple[list[Tensor], float]:
        if mode == "double_backward":
            return self._hvp_double_backward(i, Vs, use_cache)
        return self._hvp_forward_over_reverse(i, Vs)

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        """The model-state guard (and the math attention backend) around a public call; re-entrant: inside an
        active guard (a :meth:`session`, or a nested call) it costs nothing."""
        if self._guard_depth > 0:
            self._guard_depth += 1
            try:
                yield
            finally:
                self._guard_depth -= 1
            return
        with contextlib.ExitStack() as stack:
            if self._structure is None:
                self._structure = ModelStructure(self.model)
            stack.enter_context(preserve_model_state(self.model, self.eval_mode, structure=self._structure))
            if self.force_math_sdpa:
                stack.enter_context(_sdpa_math())
            self._guard_depth = 1
            try:
                yield
            finally:
                self._guard_depth = 0

    def session(self) -> contextlib.AbstractContextManager:
        """Hold the model-state guard for a whole run of products (lanczos, the trace estimators and SLQ do):
        the model is put in the analysis mode once and restored — flags, ``.grad``, RNG states — when the
        run ends or raises, instead of around every product (~0.15 ms each on the CPU)."""
        return self._context()

    def _ensure_mode(self, Vs: list[Tensor] | None = None,
                     use_cache: bool = True) -> tuple[str, tuple[list[Tensor], float] | None]:
        """Resolve ``mode="auto"`` (inside an active :meth:`_context`): the first product on batch 0 is tried
        with double backward, then forward-over-reverse; the mode that works is kept. With ``Vs`` (the
        caller's own block) that product is the caller's first result and is returned with the mode, so
        resolving costs no extra HVP; without, a probe vector of ones is used."""
        if self._mode_used is not None:
            return self._mode_used, None
        probe = Vs if Vs is not None else [torch.ones(1, *s, dtype=self.dtype, device=self.device)
                                           for s in self.layout.shapes]
        errors: dict[str, BaseException] = {}
        for mode in ("double_backward", "forward_over_reverse"):
            try:
                first = self._batch_hvp(mode, 0, probe, use_cache=use_cache)
            except (LossNotFiniteError, ValueError, TypeError, torch.OutOfMemoryError):
                raise
            except (RuntimeError, NotImplementedError) as e:
                errors[mode] = e
                self._graphs.clear()
                continue
            self._mode_used = mode
            if errors:
                self.fallback_reason = f"double_backward failed: {errors['double_backward']}"
                warnings.warn(f"mode='auto': double backward failed on this model, using "
                              "forward-over-reverse "
                              f"({str(errors['double_backward'])[:200]})", RuntimeWarning, stacklevel=4)
            return mode, (first if Vs is not None else None)
        msg = "; ".join(f"{k}: {type(e).__name__}: {e}" for k, e in errors.items())
        raise RuntimeError(f"no HVP mode works on this model ({msg})") from errors["forward_over_reverse"]

    @property
    def mode_used(self) -> str:
        """The HVP mode in use; resolving ``mode="auto"`` runs one probe HVP on the first batch."""
        if self._mode_used is None:
            with self._context():
                self._ensure_mode()
        return self._mode_used  # type: ignore[return-value]

    def _progress(self) -> bool:
        if self.progress is None:
            return self.num_batches >= 20
        return bool(self.progress)

    def _apply(self, X: Tensor, use_cache: bool = True) -> Tensor:
        """``H X`` for ``X: [n, m]`` (inside an active :meth:`_context`).

        Hot path (one HVP costs ~1.4 gradients on the CPU, so every pass over n counts): per batch one
        flatten (``cat``) and one fused finiteness test; with one batch the result is that batch's product
        itself (no weighting, no division); the weighted sum over several batches is accumulated in place.
        """
        Vs = self.layout.unflatten_batched(X)
        mode, first = self._ensure_mode(Vs, use_cache)       # resolving "auto" computes batch 0's product
        total: Tensor | None = None
        weight_sum = 0.0
        finite: list[Tensor] = []
        batches: Iterable[int] = range(self.num_batches)
        if self._progress():
            from tqdm import tqdm
            batches = tqdm(batches, desc="HVP batches", leave=False)
        single = self.num_batches == 1 and type(self)._reduce is HessianOperator._reduce
        for i in batches:
            try:
                hv, w = first if (i == 0 and first is not None) else self._batch_hvp(mode, i, Vs, use_cache)
            except (LossNotFiniteError, ValueError, TypeError, torch.OutOfMemoryError):
                raise   # an out-of-memory error keeps its type: callers catch it to retry smaller
            except (RuntimeError, NotImplementedError) as e:
                raise RuntimeError(f"HVP with mode={mode!r} failed on batch {i}: {type(e).__name__}: {e}. "
                                   "Try another mode= ('double_backward' or 'forward_over_reverse').") from e
            flat = self.layout.flatten_batched(hv)                 # [m, n], a fresh tensor
            # finiteness in one GEMV: x·0 = ±0 for finite x and NaN for NaN/Inf, so flat @ 0 is 0 exactly
            # when every entry is finite (measured: 5 µs vs 107 µs for isfinite(flat).all() at n = 85k)
            if self._zero is None:
                self._zero = torch.zeros(self.n, dtype=flat.dtype, device=flat.device)
            finite.append(flat @ self._zero)
            if total is None:
                total = flat if single else flat.mul_(w)
            else:
                total.add_(flat, alpha=w)
            weight_sum += w
        ok = torch.stack(finite).eq(0).all(dim=1)                 # [batches]
        if not bool(ok.all()):
            b = int((~ok).nonzero()[0])
            self._raise_not_finite(mode, b, Vs, use_cache)
        assert total is not None
        if single:
            return total.T.contiguous()
        return self._reduce(total.T, weight_sum).contiguous()

    def _raise_not_finite(self, mode: str, b: int, Vs: list[Tensor], use_cache: bool) -> None:
        """Name the parameters whose HVP block is NaN/Inf on batch ``b`` (error path: recomputes it)."""
        hv, _ = self._batch_hvp(mode, b, Vs, use_cache)
        bad = [k for k, h in zip(self.layout.names, hv) if not bool(torch.isfinite(h).all())]
        raise RuntimeError(f"Hessian-vector product contains NaN/Inf on batch {b} in parameter(s) {bad} "
                           f"(mode {mode!r})")

    def _reduce(self, hv_sum: Tensor, weight_sum: float) -> Tensor:
        """Turn this process's weighted sums into the mean: ``hv_sum / weight_sum``.

        The hook for data parallelism: a distributed subclass all-reduces ``hv_sum`` and ``weight_sum`` over
        ranks before dividing. ``hv_sum`` is ``[n, m]`` (matmat) or ``[n + 1]`` (``loss_and_grad``: the
        weighted gradient sum with the weighted loss sum appended).
        """
        return hv_sum / weight_sum

    # ------------------------------------------------------------------ public API
    def _matmat(self, X: Tensor) -> Tensor:
        with self._context():
            return self._apply(X)

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """Weighted mean loss (a float) and its gradient ``[n]`` over the operator's batches."""
        with self._context():
            leaves = list(self._leaves.values())
            total = torch.zeros(self.n + 1, dtype=self.dtype, device=self.device)
            weight_sum = 0.0
            for i in range(self.num_batches):
                if self._mode_used == "double_backward" and self.cache_graph and i < self.max_cached_graphs:
                    loss, grads, w = self._graph(i, use_cache=True)
                    grads = tuple(None if g is None else g.detach() for g in grads)
                else:
                    with torch.enable_grad():
                        loss = self._batch_loss(i, self._leaves)
                        check_loss_finite(loss, i)
                        grads = (torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad
                                 else (None,) * len(leaves))
                    loss, w = loss.detach(), self._weights[i]
                flat = torch.cat([torch.zeros(k, dtype=self.dtype, device=self.device) if g is None
                                  else g.reshape(-1) for g, k in zip(grads, self.layout.numels)])
                total[:-1].add_(flat, alpha=w)
                total[-1] += w * loss.to(self.dtype)
                weight_sum += w
            out = self._reduce(total, weight_sum)
            grad = out[:-1].clone()
            if not bool(torch.isfinite(grad).all()):
                bad = [k for k, g in self.layout.as_dict(grad).items() if not bool(torch.isfinite(g).all())]
                raise RuntimeError(f"the gradient contains NaN/Inf in parameter(s) {bad}")
            return float(out[-1]), grad

    def determinism_check(self, seed: int = 0) -> float:
        """``‖H v − H' v‖ / ‖H v‖`` for one Rademacher ``v``: ``H v`` is computed twice, the second time with
        freshly built graphs (no cache), within one call. 0 for a deterministic model and kernels; larger with
        train-mode dropout or non-deterministic kernels. Counts 2 matvecs."""
        from .ops import rademacher

        v = rademacher(self.n, seed=seed, dtype=self.dtype, device=self.device)[:, None]
        with self._context():
            y1 = self._apply(v, use_cache=True)
            y2 = self._apply(v, use_cache=False)
        self.num_matvecs += 2
        denom = float(torch.linalg.vector_norm(y1))
        diff = float(torch.linalg.vector_norm(y1 - y2))
        if denom == 0.0:
            return 0.0 if diff == 0.0 else math.inf
        return diff / denom

    def clear_cache(self) -> None:
        """Drop the cached gradient graphs (they are rebuilt on demand)."""
        self._graphs.clear()

    def __repr__(self) -> str:
        return (f"HessianOperator(n={self.n}, params={len(self.layout)}, batches={self.num_batches}, "
                f"mode={self._mode_used or self.mode!r}, dtype={self.dtype}, device={self.device})")

