"""The model-state guard, and the thread-local isolation of an analysis's randomness and attention backend.

Every public hessext call leaves the user's model exactly as it found it, and touches no process-wide state
that another thread could observe.

Model-mode policy
-----------------
Analysis runs in **eval mode** by default (dropout off, BatchNorm on its running statistics), so that the
Hessian is that of a deterministic function. ``eval_mode=False`` analyses in train mode instead; ``None``
keeps whatever modes the modules are in. Either way, on exit (normal or by exception) the following are
restored:

- the ``training`` flag of every submodule (set one by one, not through ``model.train()``, so mixed modes
  survive);
- every parameter's ``requires_grad`` flag;
- every parameter's ``.grad``: the same tensor object (or ``None``), with its values copied back if they
  were modified in place.

Parameters and buffers are never written by hessext, and the model's ``nn.Parameter`` objects are never
replaced: the HVP evaluates the model through ``torch.func.functional_call`` on detached aliases or copies.
As a debug check, the guard compares the autograd version counters of all parameters and buffers on exit; a
change means something wrote to them in place (a bug, or a model that mutates its own state in ``forward``).
It warns, or raises with ``strict=True`` / ``HESSEXT_DEBUG=1``.

Threads
-------
**Analyses of one model are serialised; analyses of different models run concurrently.** The guard holds a
re-entrant lock of its model (one per model, created on first use) for its whole duration, so two threads
analysing one model take turns. Within one thread guards nest by reference count: only the outermost entry
snapshots and only the last exit restores, so overlapping guards (two ``session()``\\ s of operators on one
model) closed in any order leave the model as it was found. A nested guard that asks for another mode
applies it; when it exits, the mode of the guards still open is applied again. (Training the model in one
thread while another analyses it is not supported: the analysis switches the modules' modes.)

Randomness and attention
------------------------
The guard never writes the global RNGs. Inside an analysis, randomness goes to **private generators**
(:func:`private_rng`) whose states are copied, read only, from the global torch generators when the
outermost scope of the thread is entered: a train-mode forward draws the dropout masks the global generator
would have drawn (results equal those of a run that restores the global RNG afterwards), yet no other
thread's draws can be rewound and the global RNG is exactly where it was. :func:`isolated_forward`, held by
the evaluator around every forward pass, routes the draws there with a thread-local
``torch.overrides.TorchFunctionMode`` that

- passes the private generator to random functions called without one (``torch.rand``/``randn``/
  ``randint``/``randperm``/``bernoulli``/``normal``/``multinomial``/``poisson``/``rrelu``, the ``*_like``
  factories, ``Tensor.random_``/``uniform_``/``normal_``/``bernoulli_``/``exponential_``/``geometric_``/
  ``log_normal_``/``cauchy_``/``multinomial``), e.g. the base seed a ``DataLoader`` draws;
- re-implements ``dropout``/``feature_dropout``/``alpha_dropout``/``feature_alpha_dropout`` (and their
  in-place forms: everything ``nn.Dropout*`` and ``F.dropout*`` reach) with that generator, bitwise like
  the native CPU path (``noise = empty_like(x).bernoulli_(1 − p); noise /= 1 − p; x · noise``);
- computes ``F.scaled_dot_product_attention`` with the math implementation
  (``aten._scaled_dot_product_attention_math``): CPU flash attention has neither a double backward nor
  forward-mode AD, and the process-global ``sdpa_kernel`` switches are never touched.

The Python-level functions of ``torch.nn.functional`` that can reach randomness or attention
(``multi_head_attention_forward``, ``dropout2d``, ``gumbel_softmax``, …) run with the mode active inside
them too, through a copy whose own ``__torch_function__`` check is off (a torch-function mode is otherwise
suspended while it handles a call, so ``nn.MultiheadAttention`` would reach flash attention). Randomness
drawn on devices other than the CPU and CUDA, and by C++ kernels without a generator argument
(``native_dropout``), still uses the global generators; on CUDA the dropout masks come from the
re-implementation above, not from the fused kernel a run without hessext uses. Cost: ~2.5 µs per torch call
inside a forward pass (measured on the CPU: +0–5 % per HVP of the 85k-parameter benchmark MLP with rebuilt
graphs, +7–15 % for the tests' one-layer transformer, nothing once a graph is cached).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import threading
import types
import warnings
import weakref
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["preserve_model_state", "guard_held", "ModelStructure", "private_rng", "isolated_forward",
           "rng_state", "restore_rng_state"]


# ======================================================================================== global RNG (read)
def rng_state() -> dict:
    """Snapshot of the global RNG states (torch CPU, initialised CUDA devices, numpy, ``random``)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore a snapshot taken by :func:`rng_state` (hessext's analyses do not use this: they never write
    the global RNGs, see :func:`private_rng`)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


# ============================================================================================ private RNG
class _ThreadState(threading.local):
    """Per thread: the private generators of the open :func:`private_rng` scope, whether the isolation
    mode is on the torch-function stack, and the model guards open."""

    def __init__(self) -> None:
        self.depth = 0
        self.generators: dict[torch.device, torch.Generator] = {}
        self.mode_active = False
        self.roots: dict[int, _RootGuard] = {}     # the root guards open in this thread, in entry order


_THREAD = _ThreadState()


@contextlib.contextmanager
def private_rng() -> Iterator[None]:
    """Thread-local scope of private generators (re-entrant: the outermost entry creates them).

    The CPU generator's state is copied from ``torch.default_generator`` at the outermost entry; a CUDA
    device's from that device's default generator the first time a draw on it asks (by then the global
    state is still the entry's: hessext never writes it). Nothing global is written, on entry or exit.
    """
    st = _THREAD
    if st.depth == 0:
        gen = torch.Generator()
        gen.set_state(torch.default_generator.get_state())
        st.generators = {torch.device("cpu"): gen}
    st.depth += 1
    try:
        yield
    finally:
        st.depth -= 1
        if st.depth == 0:
            st.generators = {}


def _generator(device: torch.device) -> torch.Generator | None:
    """The private generator of ``device`` in this thread's scope (None outside a scope or for devices other
    than the CPU and CUDA)."""
    st = _THREAD
    if st.depth == 0:
        return None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
        gen = st.generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.set_state(torch.cuda.default_generators[index].get_state())
            st.generators[device] = gen
        return gen
    if device.type == "cpu":
        return st.generators[torch.device("cpu")]
    return None


def _device_of(args: tuple, kwargs: dict) -> torch.device:
    """Where a random function draws: its ``device=``, else its first tensor argument, else the default."""
    dev = kwargs.get("device")
    if dev is not None:
        return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    for a in args:
        if isinstance(a, Tensor):
            return a.device
    for a in kwargs.values():
        if isinstance(a, Tensor):
            return a.device
    return torch.get_default_device()


def _with_generator(func: Callable, args: tuple, kwargs: dict) -> Any:
    """``func`` with the private generator unless the call names a generator itself."""
    if kwargs.get("generator") is None and not any(isinstance(a, torch.Generator) for a in args):
        gen = _generator(_device_of(args, kwargs))
        if gen is not None:
            kwargs = {**kwargs, "generator": gen}
    return func(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- dropout
_ALPHA = 1.7580993408473766     # ATen's alpha_dropout constant


def _dropout_args(input: Tensor, p: float, train: bool) -> tuple[Tensor, float, bool]:
    return input, p, train


def _dropout(func: Callable, args: tuple, kwargs: dict, feature: bool, alpha: bool, inplace: bool) -> Any:
    """ATen's ``_dropout_impl`` with the private generator, op for op (so bitwise the native CPU result for
    the same generator state); the cases that draw nothing (and the errors) go to ``func`` itself."""
    x, p, train = _dropout_args(*args, **kwargs)
    gen = _generator(x.device) if isinstance(x, Tensor) else None
    if (gen is None or not train or not 0.0 < float(p) < 1.0 or x.numel() == 0
            or (feature and x.dim() < 2)):
        return func(*args, **kwargs)
    p = float(p)
    if feature:
        noise = x.new_empty((x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2))
    else:
        noise = torch.empty_like(x)
    noise.bernoulli_(1.0 - p, generator=gen)
    if alpha:
        a = 1.0 / math.sqrt((_ALPHA * _ALPHA * p + 1.0) * (1.0 - p))
        b = noise.add(-1).mul_(_ALPHA * a).add_(_ALPHA * a * p)
        noise.mul_(a)
        return (x.mul_(noise) if inplace else x * noise).add_(b)
    noise.div_(1.0 - p)
    return x.mul_(noise) if inplace else x * noise


def _dropout_action(feature: bool, alpha: bool, inplace: bool) -> Callable:
    return lambda func, args, kwargs: _dropout(func, args, kwargs, feature, alpha, inplace)


# ---------------------------------------------------------------------------------------------- attention
def _sdpa_args(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> tuple:
    return query, key, value, attn_mask, float(dropout_p), bool(is_causal), scale, bool(enable_gqa)


def _sdpa_math(func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """``F.scaled_dot_product_attention`` by the math implementation, as the math backend computes it: a
    boolean mask becomes an additive 0/−inf mask; attention dropout uses the private generator."""
    q, k, v, mask, p, causal, scale, gqa = _sdpa_args(*args, **kwargs)
    if q.is_nested:
        return func(*args, **kwargs)
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros_like(mask, dtype=q.dtype).masked_fill_(mask.logical_not(), float("-inf"))
    math_sdpa = torch.ops.aten._scaled_dot_product_attention_math
    if p == 0.0:
        return math_sdpa(q, k, v, mask, 0.0, causal, None, scale=scale, enable_gqa=gqa)[0]
    # the softmax weights without dropout, then dropout and the product with V as the math backend does
    _, weights = math_sdpa(q, k, v, mask, 0.0, causal, None, scale=scale, enable_gqa=gqa)
    if gqa and v.shape[-3] != q.shape[-3]:
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    weights = _dropout(torch.dropout, (weights, p, True), {}, False, False, False)
    return torch.matmul(weights, v)


# ---------------------------------------------------------------------------------------------- the mode
def _never(*args: Any) -> bool:
    return False


# What a torch.nn.functional body must call for the mode to matter inside it (attribute and global names).
_REACHES = frozenset({
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "bernoulli",
    "bernoulli_", "exponential_", "uniform_", "normal_", "random_", "geometric_", "log_normal_", "cauchy_",
    "multinomial", "poisson", "normal", "rrelu", "rrelu_", "dropout", "dropout_", "feature_dropout",
    "feature_dropout_", "alpha_dropout", "alpha_dropout_", "feature_alpha_dropout", "feature_alpha_dropout_",
    "scaled_dot_product_attention"})
_TRANSPARENT: dict[Callable, Callable | None] = {}


def _names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


def _transparent(func: types.FunctionType) -> Callable | None:
    """For a Python-level ``torch.nn.functional`` function that can reach randomness or attention
    (``multi_head_attention_forward``, ``dropout2d``, ``gumbel_softmax``, …): a copy whose own
    ``__torch_function__`` check is off, so that its body runs with the isolation mode active (the mode is
    suspended while it handles the call itself). None for the others (their bodies need no mode)."""
    if func in _TRANSPARENT:
        return _TRANSPARENT[func]
    clone = None
    if _names(func.__code__) & _REACHES:
        env = dict(func.__globals__)
        env.update(has_torch_function=_never, has_torch_function_unary=_never,
                   has_torch_function_variadic=_never)
        clone = types.FunctionType(func.__code__, env, func.__name__, func.__defaults__, func.__closure__)
        clone.__kwdefaults__ = func.__kwdefaults__
    _TRANSPARENT[func] = clone
    return clone


def _actions() -> dict[Callable, Callable]:
    inject = [torch.rand, torch.randn, torch.randint, torch.randperm, torch.bernoulli, torch.normal,
              torch.multinomial, torch.poisson, torch.rand_like, torch.randn_like, torch.randint_like,
              torch.rrelu, torch.rrelu_]
    inject += [getattr(Tensor, name) for name in ("random_", "uniform_", "normal_", "bernoulli_", "bernoulli",
                                                  "exponential_", "geometric_", "log_normal_", "cauchy_",
                                                  "multinomial")]
    out: dict[Callable, Callable] = {f: _with_generator for f in inject}
    for name, feature, alpha in (("dropout", False, False), ("feature_dropout", True, False),
                                 ("alpha_dropout", False, True), ("feature_alpha_dropout", True, True)):
        out[getattr(torch, name)] = _dropout_action(feature, alpha, False)
        out[getattr(torch, name + "_")] = _dropout_action(feature, alpha, True)
    out[F.scaled_dot_product_attention] = _sdpa_math
    return out


_ACTIONS = _actions()
_FUNCTION, _FUNCTIONAL = types.FunctionType, F.__name__


class _IsolationMode(TorchFunctionMode):
    """Routes randomness to the private generators and attention to the math implementation (module
    docstring); every other call passes through unchanged."""

    def __torch_function__(self, func: Callable, types_: Any, args: tuple = (), kwargs: dict | None = None
                           ) -> Any:
        # the hot path of every torch call in a forward pass: one dict lookup, one type test
        try:
            action = _ACTIONS.get(func)
        except TypeError:       # an unhashable callable
            action = None
        if action is not None:
            return action(func, args, kwargs or {})
        if type(func) is _FUNCTION and func.__module__ == _FUNCTIONAL:
            clone = _transparent(func)
            if clone is not None:
                with self:
                    return clone(*args, **(kwargs or {}))
        return func(*args, **kwargs) if kwargs else func(*args)


@contextlib.contextmanager
def isolated_forward() -> Iterator[None]:
    """Hold around a forward pass (or anything that may draw: a ``DataLoader``'s iteration): randomness goes
    to this thread's private generators (a :func:`private_rng` scope is opened if none is), attention to
    the math implementation. Re-entrant; thread-local. Costs ~1 µs per torch call inside, so the evaluator
    holds it around forward passes only, not around backward passes or the algorithms."""
    st = _THREAD
    if st.mode_active:
        yield
        return
    with private_rng():
        st.mode_active = True
        try:
            with _IsolationMode():
                yield
        finally:
            st.mode_active = False


# ============================================================================================ the model guard
class _Shared:
    """The guard's record of one module, parameter or buffer, shared by every guard that covers it (two
    roots may share submodules: API A's loss wrapper around the user's model). ``count`` guards cover it
    (all in the thread that holds the locks of its modules); the first saves its state, the last restores
    it. ``covers`` lists the open root guards covering a module, in entry order; ``watchers`` counts the
    guards watching a parameter's or buffer's version counter (saved by the first in ``version``)."""

    __slots__ = ("lock", "count", "saved", "watchers", "version", "covers")

    def __init__(self, is_module: bool) -> None:
        self.lock = threading.RLock() if is_module else None
        self.count = 0
        self.saved: Any = None
        self.watchers = 0
        self.version = 0
        self.covers: list[_RootGuard] = []


# Keyed by id() with a weak reference (a WeakKeyDictionary would need hashable objects; a module that
# defines __eq__ without __hash__, e.g. a dataclass, is not). _BOOK guards this registry and every
# _Shared's bookkeeping (held briefly, never during an analysis).
_SHARED: dict[int, tuple[weakref.ref, _Shared]] = {}
_BOOK = threading.Lock()


def _shared(obj: Any, is_module: bool) -> _Shared:
    key = id(obj)
    item = _SHARED.get(key)
    if item is not None and item[0]() is obj:
        return item[1]
    state = _Shared(is_module)

    def forget(ref: weakref.ref, key: int = key) -> None:
        current = _SHARED.get(key)
        if current is not None and current[0] is ref:
            _SHARED.pop(key, None)
    _SHARED[key] = (weakref.ref(obj, forget), state)
    return state


class ModelStructure:
    """The parts of a module tree the guard walks: its modules, parameters and named parameters + buffers
    (with their shared records and the modules' locks in one global order).

    Walking ``model.modules()`` / ``named_parameters()`` costs ~0.1 ms per call on a small model; an operator
    that guards every product takes this snapshot once (the tree does not change under an analysis)."""

    __slots__ = ("modules", "params", "named_tensors", "module_states", "param_states", "tensor_states",
                 "locks")

    def __init__(self, model: nn.Module) -> None:
        self.modules = list(model.modules())
        self.params = list(model.parameters())
        self.named_tensors = list(model.named_parameters()) + list(model.named_buffers())
        with _BOOK:
            self.module_states = [_shared(m, True) for m in self.modules]
            self.param_states = [_shared(p, False) for p in self.params]
            self.tensor_states = [(_shared(t, False), k, t) for k, t in self.named_tensors]
        order = sorted(range(len(self.modules)), key=lambda j: id(self.modules[j]))
        self.locks = [self.module_states[j].lock for j in order]


class _RootGuard:
    """The guards open on one root module in this thread: their tokens and modes, in entry order."""

    __slots__ = ("root", "structure", "tokens", "failed")

    def __init__(self, root: nn.Module, structure: ModelStructure) -> None:
        self.root, self.structure = root, structure
        self.tokens: list[tuple[object, bool | None]] = []
        self.failed = False

    @property
    def mode(self) -> bool | None:
        """The mode the open guards ask for: the innermost one that asks for one."""
        for _, mode in reversed(self.tokens):
            if mode is not None:
                return mode
        return None

    def apply(self) -> None:
        """Put the root in its analysis mode (through ``eval()``/``train()``, so overrides of ``train``
        hold)."""
        mode = self.mode
        if mode is True:
            if any(m.training for m in self.structure.modules):   # already all in eval mode: nothing to do
                self.root.eval()
        elif mode is False:
            self.root.train()


def _version(t: Tensor) -> int:
    """The autograd version counter (inference tensors have none: 0)."""
    return 0 if t.is_inference() else t._version


def _open_root(root: nn.Module, structure: ModelStructure, rg: _RootGuard) -> None:
    """First guard of ``root`` in this thread (its modules' locks held): save what no guard covers yet."""
    with _BOOK:
        for m, st in zip(structure.modules, structure.module_states):
            if st.count == 0:
                st.saved = m.training
            st.count += 1
            st.covers.append(rg)
        for p, st in zip(structure.params, structure.param_states):
            if st.count == 0:
                g = p.grad
                st.saved = (p.requires_grad, g, None if g is None else _version(g),
                            None if g is None else g.detach().clone())
            st.count += 1
        for st, _, t in structure.tensor_states:
            if st.watchers == 0:
                st.version = _version(t)
            st.watchers += 1


def _close_root(rg: _RootGuard) -> list[str]:
    """Last guard of a root in this thread: restore what no other open guard covers; re-apply the modes
    of the guards still open on shared modules. Returns the names of parameters/buffers written."""
    structure = rg.structure
    still_open = False
    with _BOOK:
        for m, st in zip(structure.modules, structure.module_states):
            st.count -= 1
            st.covers.remove(rg)
            if st.count == 0 or not any(r.mode is not None for r in st.covers):
                if m.training != st.saved:
                    m.training = st.saved
            still_open = still_open or bool(st.covers)
        for p, st in zip(structure.params, structure.param_states):
            st.count -= 1
            if st.count == 0:
                _restore_parameter(p, st.saved)
        changed = []
        for st, k, t in structure.tensor_states:
            st.watchers -= 1
            if st.watchers == 0 and _version(t) != st.version:
                changed.append(k)
    if still_open:
        for other in _THREAD.roots.values():
            other.apply()
    return changed


def _restore_parameter(p: Tensor, saved: tuple) -> None:
    requires, g, ver, values = saved
    if p.requires_grad != requires:
        p.requires_grad_(requires)
    with torch.no_grad():
        if p.grad is not g:
            p.grad = g
        if g is not None and _version(g) != ver:
            g.copy_(values)


def _enter(root: nn.Module, eval_mode: bool | None, structure: ModelStructure | None
           ) -> tuple[_RootGuard, object]:
    """Register one guard (the first of its root in this thread takes the locks of the root's modules,
    waiting while another thread holds one); returns what :func:`_exit` needs."""
    token = object()
    rg = _THREAD.roots.get(id(root))
    if rg is not None and rg.root is root:             # nested in an open guard of this root: only count
        before = rg.mode
        rg.tokens.append((token, eval_mode))
        if rg.mode != before:
            rg.apply()
        return rg, token
    structure = structure if structure is not None else ModelStructure(root)
    acquired = []
    try:
        for lock in structure.locks:                   # one global order (by id): no lock-order inversion
            lock.acquire()
            acquired.append(lock)
        rg = _RootGuard(root, structure)
        rg.tokens.append((token, eval_mode))
        _open_root(root, structure, rg)
    except BaseException:
        for lock in reversed(acquired):
            lock.release()
        raise
    _THREAD.roots[id(root)] = rg
    rg.apply()
    return rg, token


def _exit(rg: _RootGuard, token: object, strict: bool) -> None:
    before = rg.mode
    rg.tokens = [(t, m) for t, m in rg.tokens if t is not token]
    if rg.tokens:
        if rg.mode != before:
            if rg.mode is None:                         # back to "as found": the saved flags, then the others
                for m, st in zip(rg.structure.modules, rg.structure.module_states):
                    if m.training != st.saved and not any(r.mode is not None for r in st.covers):
                        m.training = st.saved
            for other in _THREAD.roots.values():
                other.apply()
        return
    _THREAD.roots.pop(id(rg.root), None)
    try:
        changed = _close_root(rg)
    finally:
        for lock in reversed(rg.structure.locks):
            lock.release()
    if changed and not rg.failed:
        msg = (f"parameters/buffers {changed} were modified in place during a hessext call; hessext "
               "never writes them, so the model (or a loss function) did")
        if strict:
            raise RuntimeError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def guard_held(model: nn.Module, eval_mode: bool | None) -> bool:
    """Whether this thread holds a guard of ``model`` asking for ``eval_mode`` (another such guard would only
    count: callers may skip it, e.g. each product inside a ``session()``)."""
    rg = _THREAD.roots.get(id(model))
    return rg is not None and rg.root is model and rg.mode == eval_mode


@contextlib.contextmanager
def preserve_model_state(model: nn.Module, eval_mode: bool | None = True,
                         strict: bool | None = None,
                         structure: ModelStructure | None = None) -> Iterator[nn.Module]:
    """Context manager: hold the locks of the model's modules, snapshot its mutable state, set the analysis
    mode, restore on exit (module docstring: threads, nesting, what is restored). Inside, a
    :func:`private_rng` scope is open.

    Args:
        model: the user's module.
        eval_mode: ``True`` → eval mode inside the block, ``False`` → train mode, ``None`` → leave the modes
            as they are.
        strict: raise ``RuntimeError`` (instead of warning) if a parameter or buffer was written in place.
            Default: the environment variable ``HESSEXT_DEBUG=1``.
        structure: a :class:`ModelStructure` of ``model`` taken earlier (saves walking the tree).

    Yields:
        The model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if eval_mode is not None and not isinstance(eval_mode, bool):
        raise TypeError(f"eval_mode must be True, False or None, got {eval_mode!r}")
    if strict is None:
        strict = os.environ.get("HESSEXT_DEBUG", "") not in ("", "0")
    rg, token = _enter(model, eval_mode, structure)
    try:
        with private_rng():
            yield model
    except BaseException:
        rg.failed = True
        raise
    finally:
        _exit(rg, token, strict)
