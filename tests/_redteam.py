"""Helpers of the issue-18 red-team tests (``tests/test_reliability.py``): threads started together, snapshots
of the process-wide state an analysis may touch, and the dense float64 Hessian of a loss written directly in
terms of the parameters (so that terms reading the parameters outside the model are in the ground truth);
small models, losses and fake operators the tests share.
"""
from __future__ import annotations

import copy
import random
import re
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from hessext import LinearOperator

SDPA_FLAGS = ("flash", "mem_efficient", "math", "cudnn")


# -------------------------------------------------------------------------------- threads
def run_together(fns: Sequence[Callable[[], Any]], timeout: float = 120.0) -> tuple[list[Any], list[Any]]:
    """Run ``fns`` in one thread each, released at the same instant by a ``threading.Barrier``.

    Returns ``(results, errors)``: ``errors[i]`` is the exception ``fns[i]`` raised (None if it returned).
    A thread still alive after ``timeout`` seconds (a deadlock) fails the calling test.
    """
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)
    errors: list[Any] = [None] * len(fns)

    def target(i: int) -> None:
        try:
            barrier.wait(timeout)
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors[i] = e

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    alive = [i for i, t in enumerate(threads) if t.is_alive()]
    if alive:
        raise AssertionError(f"threads {alive} still running after {timeout} s (deadlock?)")
    return results, errors


# -------------------------------------------------------------------------------- global state
def sdpa_flags() -> dict[str, bool]:
    """The process-wide attention-backend switches (``torch.backends.cuda.*_sdp_enabled``)."""
    out = {}
    for name in SDPA_FLAGS:
        fn = getattr(torch.backends.cuda, f"{name}_sdp_enabled", None)
        if fn is not None:
            out[name] = bool(fn())
    return out


def set_sdpa_flags(flags: Mapping[str, bool]) -> None:
    for name, value in flags.items():
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(value)


def module_flags(model: nn.Module) -> list[tuple[str, bool]]:
    """``(name, training)`` of every submodule."""
    return [(name, m.training) for name, m in model.named_modules()]


def parameter_slots(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Parameter]]:
    """``(qualified name, owning module, attribute name, Parameter)`` of every parameter of ``model``."""
    out = []
    for qual, p in model.named_parameters():
        prefix, _, attr = qual.rpartition(".")
        out.append((qual, model.get_submodule(prefix), attr, p))
    return out


def replaced_parameters(slots: Sequence[tuple[str, nn.Module, str, nn.Parameter]]) -> list[str]:
    """The qualified names whose module attribute is no longer the original ``Parameter`` object."""
    return [qual for qual, mod, attr, p in slots if getattr(mod, attr, None) is not p]


def global_rng_states() -> tuple[Tensor, Any, Any]:
    """torch CPU, numpy and Python ``random`` global RNG states."""
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def same_rng_states(a: tuple[Tensor, Any, Any], b: tuple[Tensor, Any, Any]) -> bool:
    ta, na, ra = a
    tb, nb, rb = b
    numpy_same = na[0] == nb[0] and np.array_equal(na[1], nb[1]) and tuple(na[2:]) == tuple(nb[2:])
    return bool(torch.equal(ta, tb)) and numpy_same and ra == rb


def trains(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], X: Tensor, Y: Tensor,
           params: Sequence[nn.Parameter]) -> bool:
    """One SGD step on ``params`` (the original Parameter objects) changes the model's output."""
    opt = torch.optim.SGD(list(params), lr=0.1)
    with torch.no_grad():
        before = model(X).clone()
    opt.zero_grad()
    loss_fn(model(X), Y).backward()
    if any(p.grad is None for p in params):
        return False
    opt.step()
    with torch.no_grad():
        after = model(X)
    return not torch.allclose(before, after)


# -------------------------------------------------------------------------------- ground truth
def dense_hessian_of(model: nn.Module, loss_of_params: Callable[[nn.Module, dict[str, Tensor]], Tensor]
                     ) -> Tensor:
    """Dense float64 Hessian ``∇²_θ f(θ)`` of ``f(θ) = loss_of_params(m, θ)`` over the trainable parameters of
    a float64 eval-mode deep copy ``m`` of ``model`` (``θ`` flattened in ``named_parameters()`` order).

    ``loss_of_params`` receives the copy and the dict name → parameter tensor (float64, differentiable) and
    returns the FULL scalar loss: the model term through ``functional_call(m, θ, x)`` and any term on the
    parameters written directly in ``θ`` (weight decay, a proximal term), so every term is in the truth.
    """
    m = copy.deepcopy(model).double().eval()
    names = [k for k, p in m.named_parameters() if p.requires_grad]
    base = {k: p.detach() for k, p in m.named_parameters()}

    def f(flat: Tensor) -> Tensor:
        chunks, offset = dict(base), 0
        for k in names:
            numel = base[k].numel()
            chunks[k] = flat[offset:offset + numel].view_as(base[k])
            offset += numel
        return loss_of_params(m, chunks)

    flat0 = torch.cat([base[k].reshape(-1) for k in names])
    H = torch.func.hessian(f)(flat0)
    return (0.5 * (H + H.T)).detach()


def model_output(m: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``m(x)`` at the parameters ``params`` (float64 input)."""
    return functional_call(m, dict(params), (x.double(),))


# ------------------------------------------------------------------------------------------------ fixtures
def mse(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error written out (works in every HVP mode)."""
    return (out - y).pow(2).mean()


def dropout_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 2))


def mixed_modes(model: nn.Module) -> nn.Module:
    """Train mode with one submodule in eval mode: mixed flags must survive."""
    model.train()
    model[1].eval()
    return model


def refused_for(e: BaseException, model: nn.Module) -> bool:
    """A concurrent analysis may be refused (issue 18, deliver 1) by an error that names the model."""
    return isinstance(e, (RuntimeError, ValueError)) and type(model).__name__ in str(e)


def check_concurrent(results: list, errors: list, expected: Callable[[Any], bool], model: nn.Module,
                     where: str) -> None:
    for i, (r, e) in enumerate(zip(results, errors)):
        if e is not None:
            if not refused_for(e, model):
                raise AssertionError(f"{where}: thread {i} raised {type(e).__name__}: {e}") from e
        elif not expected(r):
            raise AssertionError(f"{where}: thread {i} got {r}, not the single-threaded result")
    assert any(e is None for e in errors), f"{where}: every thread was refused: {errors}"


def fresh_draws(seed: int, count: int, draw: Callable[[torch.Generator], Any]) -> list:
    g = torch.Generator().manual_seed(seed)
    return [draw(g) for _ in range(count)]


def names_shapes(text: str, *shapes: tuple[int, ...]) -> bool:
    return all(re.search(r"[\[(]" + ", ".join(map(str, s)) + r"[\])]", text) for s in shapes)


class HugeIdentity(LinearOperator):
    """``2·I`` of size 10⁷ (a cheap stand-in for a big model); counts its products."""

    def __init__(self) -> None:
        super().__init__(10 ** 7, torch.float32)
        self.calls = 0

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 5:
            raise AssertionError("lanczos kept going on 2·I")
        return 2 * X


class Boom:
    """A loss that raises ``RuntimeError("boom")`` on its next call while ``armed``, then works."""

    def __init__(self, armed: bool = True) -> None:
        self.armed = armed

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.armed:
            self.armed = False
            raise RuntimeError("boom")
        return mse(out, y)
