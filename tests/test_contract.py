"""Reliability contract (issue 8) across the public surface of hessext.

1. **Model state.** Every public entry point leaves the user's model exactly as it found it — parameters
   and buffers bitwise, ``.grad`` (identity and values; ``None`` stays ``None``), ``requires_grad``, the
   ``training`` flag of every submodule, dtype and device — and leaves the global torch / numpy / Python
   ``random`` RNG states untouched: not restored afterwards, never written (train-mode analyses draw their
   dropout masks from a private copy of the global generator; ``tests/test_engine_threads.py`` checks that
   the masks are those a global draw gives and that no other thread's draws are rewound). Checked after a
   successful call and after a call interrupted by an exception raised *inside a Hessian-vector product*
   (``KeyboardInterrupt`` for Ctrl-C,
   ``torch.OutOfMemoryError("simulated OOM")`` for an out-of-memory error that persists on retry), on a
   model in train mode (with one submodule in eval mode, so mixed modes must survive) and on one in eval
   mode, both with Dropout (and the MLP with BatchNorm whose running statistics must not move).

   Fault injection: the operators cache the gradient graph of a batch, so a model *forward* runs only once
   per batch and cannot be used to interrupt an iteration. Instead a forward hook wraps the model output in
   an identity ``autograd.Function`` whose backward is itself an identity ``Function`` (``_HvpProbe``); the
   latter's backward (double-backward mode) or jvp (forward-over-reverse mode) runs once per HVP. A
   :class:`Tripwire` counts forwards and HVPs; a dry run records the event sequence of the call, and the
   interrupted run raises at the middle HVP event (never at the first forward). Entry points without an
   HVP (loss-landscape grids) are interrupted at a middle forward.

   The distributed operator is covered by ``tests/test_distributed.py`` (``test_model_untouched``,
   ``test_failure_on_one_rank_raises_on_every_rank``) in a 2-process run; it is not repeated here.

2. **Bad input.** Each row of the matrix is one test id, answered by a specific exception type whose
   message names the argument and the value received (checked with ``match=``).

3. **Numerical guard rails.** Breakdown and loss of orthogonality are reported by Lanczos; results carry
   residuals and standard errors; a float32 tolerance below float32's reach warns and suggests float64.

4. **Saved data.** ``save_hessian_data`` writes JSON + NPZ atomically (temporary file in the same directory,
   then ``os.replace``), loadable with ``allow_pickle=False``; output directories are created, never cleared.

Reproducibility is in ``tests/test_reproducibility.py``; the memory bound in ``benchmarks/bench_memory.py``.
"""
from __future__ import annotations

import json
import math
import os
import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hessext import ops  # noqa: E402
from hessext.analysis import (  # noqa: E402
    ComponentAnalyzer,
    HessianAnalyzer,
    HessianConfig,
    compute_component_hessians,
    compute_hessian_gradient_alignment,
    extract_component_parameters,
    get_hessian_eigenvectors,
    measure_train_val_landscape_divergence,
)
from hessext.compat import ModelWrapper, hessian_trace, min_max_hessian_eigs  # noqa: E402
from hessext.data import LossNotFiniteError  # noqa: E402
from hessext.density import spectral_density  # noqa: E402
from hessext.hvp import HessianOperator  # noqa: E402
from hessext.lanczos import extreme_eigenpairs, lanczos  # noqa: E402
from hessext.landscape import loss_landscape_1d, loss_landscape_2d, random_direction  # noqa: E402
from hessext.models import TransformerFactory  # noqa: E402
from hessext.trace import estimate_trace, hutchinson, hutchpp, xtrace  # noqa: E402

VOCAB, SEQ = 11, 6


# ============================================================================================ fault injection
class Tripwire:
    """Counts model forwards ("fwd") and Hessian-vector products ("hvp") and raises from event ``at`` on:
    once (``persistent=False``: Ctrl-C) or at every later event too (``persistent=True``: an out-of-memory
    condition that does not go away when the caller retries)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.at: Optional[int] = None
        self.exc: Optional[BaseException] = None
        self.fired = False
        self.persistent = False
        self.nan_hvp = False

    def reset(self, at: Optional[int] = None, exc: Optional[BaseException] = None,
              persistent: bool = False) -> None:
        self.events, self.at, self.exc, self.fired, self.nan_hvp = [], at, exc, False, False
        self.persistent = persistent

    def hit(self, kind: str) -> None:
        self.events.append(kind)
        if self.at is not None and (self.persistent or not self.fired) and len(self.events) >= self.at:
            self.fired = True
            raise self.exc  # type: ignore[misc]


TRIP = Tripwire()


class _HvpProbe(torch.autograd.Function):
    """Identity on the output gradient; differentiating it again (one HVP) hits the tripwire."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g: torch.Tensor) -> torch.Tensor:
        return g.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, gg: torch.Tensor) -> torch.Tensor:
        TRIP.hit("hvp")
        return gg * float("nan") if TRIP.nan_hvp else gg

    @staticmethod
    def jvp(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        TRIP.hit("hvp")
        return t * float("nan") if TRIP.nan_hvp else t


class _OutProbe(torch.autograd.Function):
    """Identity on the model output whose backward routes the gradient through :class:`_HvpProbe`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return _HvpProbe.apply(g)

    @staticmethod
    def jvp(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return t


def _probe_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    TRIP.hit("fwd")
    return _OutProbe.apply(output)


# ============================================================================================ models and data
def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def make_mlp(mode: str) -> nn.Module:
    """Linear-BatchNorm-Tanh-Dropout-Linear (~70 parameters), a frozen BN bias, a pre-set ``.grad``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.25), nn.Linear(6, 2))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].num_batches_tracked.fill_(7)
    model[1].bias.requires_grad_(False)
    model[0].weight.grad = torch.randn_like(model[0].weight)
    _set_mode(model, mode, leaf=model[4])
    model.register_forward_hook(_probe_hook)
    return model


def make_transformer(mode: str) -> nn.Module:
    """Decoder-only TransformerFactory model with dropout, ~870 parameters, a pre-set ``.grad``."""
    torch.manual_seed(0)
    model = TransformerFactory.create_decoder_only_transformer(
        vocab_size=VOCAB, d_model=8, num_heads=2, num_layers=1, d_ff=16, max_seq_length=8, dropout=0.1)
    model.lm_head.weight.grad = torch.randn_like(model.lm_head.weight)
    _set_mode(model, mode, leaf=model.lm_head)
    model.register_forward_hook(_probe_hook)
    return model


def _set_mode(model: nn.Module, mode: str, leaf: nn.Module) -> None:
    if mode == "train":
        model.train()
        leaf.eval()      # a mixed configuration: restoring with model.train() would get it wrong
    else:
        model.eval()


def mlp_data(seed: int = 1, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)


def lm_batch(seed: int = 3, n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, VOCAB, (n, SEQ), generator=g),
            "labels": torch.randint(0, VOCAB, (n, SEQ), generator=g)}


# ============================================================================================ state snapshot
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8).clone()


@dataclass
class Snapshot:
    params: list
    buffers: list
    modes: list
    rng: tuple


def snapshot(model: nn.Module) -> Snapshot:
    params = [(k, p, _bits(p), p.requires_grad, p.grad, None if p.grad is None else _bits(p.grad), p.dtype,
               p.device) for k, p in model.named_parameters()]
    buffers = [(k, b, _bits(b), b.dtype, b.device) for k, b in model.named_buffers()]
    modes = [(k, m, m.training) for k, m in model.named_modules()]
    rng = (torch.get_rng_state().clone(), np.random.get_state(), random.getstate())
    return Snapshot(params, buffers, modes, rng)


def assert_unchanged(model: nn.Module, snap: Snapshot) -> None:
    now = dict(model.named_parameters())
    assert list(now) == [k for k, *_ in snap.params], "the set of parameters changed"
    for k, p, bits, req, grad, gbits, dtype, device in snap.params:
        q = now[k]
        assert q is p, f"parameter {k} was replaced"
        assert q.dtype == dtype and q.device == device, f"parameter {k} moved to {q.dtype} / {q.device}"
        assert torch.equal(_bits(q), bits), f"parameter {k} changed"
        assert q.requires_grad == req, f"{k}.requires_grad changed to {q.requires_grad}"
        assert q.grad is grad, f"{k}.grad was replaced (was {'None' if grad is None else 'a tensor'})"
        if grad is not None:
            assert torch.equal(_bits(q.grad), gbits), f"{k}.grad values changed"
    bufs = dict(model.named_buffers())
    assert list(bufs) == [k for k, *_ in snap.buffers], "the set of buffers changed"
    for k, b, bits, dtype, device in snap.buffers:
        assert bufs[k] is b, f"buffer {k} was replaced"
        assert b.dtype == dtype and b.device == device, f"buffer {k} moved"
        assert torch.equal(_bits(b), bits), f"buffer {k} changed (BatchNorm statistics updated?)"
    for k, m, flag in snap.modes:
        assert m.training == flag, f"submodule {k or '<root>'}.training changed to {m.training}"
    t, npst, pyst = snap.rng
    assert torch.equal(torch.get_rng_state(), t), "the global torch RNG state changed"
    now_np = np.random.get_state()
    assert now_np[0] == npst[0] and np.array_equal(now_np[1], npst[1]) and now_np[2:] == npst[2:], \
        "the global numpy RNG state changed"
    assert random.getstate() == pyst, "Python's random state changed"


# ============================================================================================ entry points
@dataclass(frozen=True)
class Entry:
    model: str                                      # "mlp" or "transformer"
    call: Callable[[nn.Module], Any]
    records_errors: bool = False                    # RuntimeErrors are recorded in the result, not raised
    xfail: Optional[str] = None                     # a known violation of the state contract


def _op(m: nn.Module, **kw: Any) -> HessianOperator:
    return HessianOperator(m, mse, mlp_data(), **kw)


def _wrapper(m: nn.Module) -> ModelWrapper:
    X, y = mlp_data()
    return ModelWrapper(m, lambda out: mse(out, y), X)


def _cfg(**kw: Any) -> HessianConfig:
    base = dict(n_components=2, n_bottom=1, max_iter=6, trace_probes=3, tolerance=1e-2,
                component_list=["attention", "ffn"])
    base.update(kw)
    return HessianConfig(**base)


def _quiet(fn: Callable[[nn.Module], Any]) -> Callable[[nn.Module], Any]:
    def run(m: nn.Module) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(m)
    return run


ENTRIES: dict[str, Entry] = {
    # ---------------------------------------------------------------- engine
    "op_matmat": Entry("mlp", lambda m: _op(m) @ torch.ones(_op(m).n, 3)),
    "op_loss_and_grad": Entry("mlp", lambda m: HessianOperator(m, mse, [mlp_data(s) for s in (1, 2, 3)])
                              .loss_and_grad()),
    "op_determinism_check": Entry("mlp", lambda m: _op(m).determinism_check()),
    "op_train_mode_analysis": Entry("mlp", _quiet(lambda m: lanczos(_op(m, eval_mode=False), k=2,
                                                                     max_iter=8))),
    "op_float64_copies": Entry("mlp", lambda m: lanczos(_op(m, dtype=torch.float64), k=2, max_iter=8)),
    "op_forward_over_reverse": Entry("mlp", lambda m: lanczos(_op(m, mode="forward_over_reverse"), k=2,
                                                              max_iter=6)),
    "op_dataloader_6_batches": Entry("mlp", lambda m: hutchinson(HessianOperator(
        m, mse, DataLoader(TensorDataset(*mlp_data(n=12)), batch_size=2), num_batches=6), 4)),
    "lanczos_LA": Entry("mlp", lambda m: lanczos(_op(m), k=3, max_iter=10)),
    "lanczos_BE_true_residuals": Entry("mlp", lambda m: lanczos(_op(m), k=2, which="BE", max_iter=10,
                                                                compute_residuals=True)),
    "extreme_eigenpairs": Entry("mlp", lambda m: extreme_eigenpairs(_op(m), 2, 1, max_iter=10)),
    "hutchinson_blocks": Entry("mlp", lambda m: hutchinson(_op(m), 6, blocks={"a": slice(0, 10)},
                                                           block_size=2)),
    "hutchpp": Entry("mlp", lambda m: hutchpp(_op(m), 6)),
    "xtrace": Entry("mlp", lambda m: xtrace(_op(m), 6)),
    "estimate_trace_adaptive": Entry("mlp", lambda m: estimate_trace(_op(m), rtol=1e-3, max_matvecs=24)),
    "spectral_density": Entry("mlp", lambda m: spectral_density(_op(m), num_probes=2, num_iter=6)),
    # ---------------------------------------------------------------- API A, both call forms
    "apiA_min_max_wrapper": Entry("mlp", _quiet(lambda m: min_max_hessian_eigs(_wrapper(m), max_iter=10))),
    "apiA_min_max_legacy": Entry("mlp", _quiet(lambda m: min_max_hessian_eigs(m, *mlp_data(), mse,
                                                                              max_iter=10))),
    "apiA_trace_wrapper": Entry("mlp", lambda m: hessian_trace(_wrapper(m), num_random_vectors=6)),
    "apiA_trace_legacy": Entry("mlp", lambda m: hessian_trace(m, mse, *mlp_data(), 6)),
    "apiA_wrapper_operator": Entry("mlp", lambda m: _wrapper(m).operator() @ torch.ones(_op(m).n)),
    "apiA_wrapper_loss": Entry("mlp", lambda m: _wrapper(m).loss()),
    # ---------------------------------------------------------------- API B
    "apiB_analyze_step": Entry("transformer", _quiet(lambda m: HessianAnalyzer(_cfg()).analyze_step(
        m, None, lm_batch(3), lm_batch(4))), records_errors=True),
    "apiB_analyze_step_strict": Entry("transformer", _quiet(lambda m: HessianAnalyzer(_cfg()).analyze_step(
        m, None, lm_batch(3), lm_batch(4), strict=True))),
    "apiB_analyze_step_train_mode_bn": Entry("mlp", _quiet(lambda m: HessianAnalyzer(_cfg(
        eval_mode=False, track_component_hessian=False)).analyze_step(
        m, mse, [mlp_data(1), mlp_data(2)], model_type=None, strict=True))),
    "apiB_compute_batch_analysis": Entry("transformer", _quiet(lambda m: HessianAnalyzer(_cfg(
        track_component_hessian=False)).compute_batch_analysis(
        m, None, [lm_batch(3), lm_batch(5)])), records_errors=True),
    "apiB_component_analyzer": Entry("transformer", _quiet(lambda m: ComponentAnalyzer(
        tol=1e-2, trace_probes=3, max_iter=6).analyze_all_components(m, None, lm_batch(3), n_components=2))),
    "legacy_compute_component_hessians": Entry("transformer", _quiet(lambda m: compute_component_hessians(
        m, None, lm_batch(3), components=["attention", "ffn"], n_components=1))),
    "legacy_get_hessian_eigenvectors": Entry("transformer", lambda m: get_hessian_eigenvectors(
        m, None, [lm_batch(3), lm_batch(4)], num_batches=2, n_top_vectors=2, tol=1e-2)),
    "legacy_get_hessian_eigenvectors_dataloader": Entry("transformer", lambda m: get_hessian_eigenvectors(
        m, None, DataLoader([lm_batch(3), lm_batch(4)], batch_size=None), num_batches=2, n_top_vectors=2,
        tol=1e-2)),
    "apiB_compute_batch_analysis_dataloader": Entry("transformer", _quiet(lambda m: HessianAnalyzer(_cfg(
        track_component_hessian=False)).compute_batch_analysis(
        m, None, DataLoader([lm_batch(3), lm_batch(5)], batch_size=None))), records_errors=True),
    "legacy_gradient_alignment": Entry("transformer", lambda m: compute_hessian_gradient_alignment(
        m, None, lm_batch(3), n_components=2, tol=1e-2)),
    "legacy_train_val_divergence": Entry("transformer", _quiet(
        lambda m: measure_train_val_landscape_divergence(m, None, lm_batch(3), lm_batch(4), n_components=2,
                                                         max_iter=6, trace_probes=3, tolerance=1e-2))),
    # ---------------------------------------------------------------- landscape helpers (evaluate losses)
    "landscape_1d": Entry("mlp", lambda m: loss_landscape_1d(m, mse, mlp_data(), random_direction(m),
                                                             radius=0.5, num_points=5)),
    "landscape_2d": Entry("mlp", lambda m: loss_landscape_2d(
        m, mse, mlp_data(), [random_direction(m, seed=1), random_direction(m, seed=2)], num_points=3)),
    "landscape_random_direction": Entry("mlp", lambda m: random_direction(m, seed=5)),
}

MODELS = {"mlp": make_mlp, "transformer": make_transformer}
_EVENTS: dict[tuple[str, str], list[str]] = {}


def _dry_run(name: str, mode: str) -> list[str]:
    """The tripwire events of one successful call of entry ``name`` (cached)."""
    key = (name, mode)
    if key not in _EVENTS:
        entry = ENTRIES[name]
        model = MODELS[entry.model](mode)
        TRIP.reset()
        entry.call(model)
        _EVENTS[key] = list(TRIP.events)
    return _EVENTS[key]


def _fault_index(events: list[str]) -> Optional[int]:
    """1-based event at which to raise: the middle HVP, else a middle forward after the first one."""
    hvps = [i + 1 for i, e in enumerate(events) if e == "hvp"]
    if hvps:
        return hvps[len(hvps) // 2]
    later = list(range(2, len(events) + 1))
    return later[len(later) // 2] if later else None


def _entry_params() -> list:
    return [pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=e.xfail)) if e.xfail else k
            for k, e in ENTRIES.items()]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", _entry_params())
def test_state_unchanged_after_success(name: str, mode: str) -> None:
    entry = ENTRIES[name]
    model = MODELS[entry.model](mode)
    torch.manual_seed(1234)
    snap = snapshot(model)
    TRIP.reset()
    result = entry.call(model)
    assert result is not None
    if isinstance(result, dict):
        assert "error" not in result, result.get("error")
    assert_unchanged(model, snap)
    _EVENTS[(name, mode)] = list(TRIP.events)


INTERRUPTS = {"ctrl_c": lambda: KeyboardInterrupt(),
              "oom": lambda: torch.OutOfMemoryError("simulated OOM")}


@pytest.mark.parametrize("exc", list(INTERRUPTS))
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", _entry_params())
def test_state_unchanged_after_interrupt(name: str, mode: str, exc: str) -> None:
    entry = ENTRIES[name]
    events = _dry_run(name, mode)
    at = _fault_index(events)
    if at is None:
        pytest.skip(f"{name} runs a single forward and no HVP: nothing to interrupt inside")
    model = MODELS[entry.model](mode)
    torch.manual_seed(1234)
    snap = snapshot(model)
    error = INTERRUPTS[exc]()
    TRIP.reset(at=at, exc=error, persistent=exc == "oom")
    expected = KeyboardInterrupt if exc == "ctrl_c" else RuntimeError
    try:
        result = entry.call(model)
    except expected as e:
        chain = [e]
        while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        assert any(c is error or "simulated OOM" in str(c) for c in chain), \
            f"unexpected {type(e).__name__}: {e}"
        raised = True
    else:
        raised = False
        assert exc == "oom" and entry.records_errors, f"{name} swallowed the {type(error).__name__}"
        assert "simulated OOM" in str(result.get("error", result.get("errors"))), \
            "the failure must be recorded in the result"
    finally:
        fired = TRIP.fired
        TRIP.reset()
    assert fired, "the tripwire did not fire: the fault was not injected"
    assert raised or entry.records_errors
    assert_unchanged(model, snap)


def test_fault_is_injected_inside_the_iteration() -> None:
    """The tripwire sees one HVP per product: Lanczos with m steps records m HVPs after one forward
    (resolving mode="auto" uses the first product itself: no probe), so the middle-HVP fault is inside the
    iteration."""
    events = _dry_run("lanczos_LA", "eval")
    assert events[0] == "fwd" and events.count("fwd") == 1
    assert events.count("hvp") == 10
    assert _fault_index(events) > 3


def test_landscape_taylor_terms_do_not_hide_an_oom() -> None:
    """An out-of-memory error while computing the slope/curvature of a 1-D slice must surface."""
    model = make_mlp("eval")
    events = _dry_run("landscape_1d", "eval")
    TRIP.reset(at=events.index("hvp") + 1, exc=torch.OutOfMemoryError("simulated OOM"), persistent=True)
    try:
        with pytest.raises(RuntimeError, match="simulated OOM"):
            ENTRIES["landscape_1d"].call(model)
    finally:
        TRIP.reset()


def test_out_of_memory_keeps_its_type() -> None:
    """A caller that catches ``torch.OutOfMemoryError`` (to retry with a smaller batch) must see that type."""
    model = make_mlp("eval")
    events = _dry_run("lanczos_LA", "eval")
    TRIP.reset(at=_fault_index(events), exc=torch.OutOfMemoryError("simulated OOM"), persistent=True)
    try:
        with pytest.raises(torch.OutOfMemoryError, match="simulated OOM"):
            ENTRIES["lanczos_LA"].call(model)
    finally:
        TRIP.reset()


# ============================================================================================ bad input
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def _lm() -> nn.Module:
    torch.manual_seed(0)
    return TransformerFactory.create_decoder_only_transformer(vocab_size=VOCAB, d_model=8, num_heads=2,
                                                              num_layers=1, d_ff=16, max_seq_length=8)


def _frozen() -> nn.Module:
    return _mlp().requires_grad_(False)


def _half() -> nn.Module:
    return _mlp().half()


def _mixed() -> nn.Module:
    m = _mlp()
    m[2].double()     # float32 and float64 parameters: no single computation dtype to guess
    return m


def _mixed_devices() -> nn.Module:
    m = _mlp()
    m[2].to("meta")   # the "meta" device stands in for a second device
    return m


class _IntParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.counts = nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _nan_x() -> torch.Tensor:
    X, _ = mlp_data()
    X[0, 0] = float("nan")
    return X


X0, Y0 = mlp_data()
DENSE = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))


def _with_nan_hvp(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        model = _mlp()
        model.register_forward_hook(_probe_hook)
        TRIP.reset()
        TRIP.nan_hvp = True
        try:
            return fn(model)
        finally:
            TRIP.reset()
    return run


def _wrapped(model: nn.Module, X: torch.Tensor = X0, y: torch.Tensor = Y0) -> ModelWrapper:
    return ModelWrapper(model, lambda o: mse(o, y), X)


def _eigvecs(model: nn.Module, data: Any, **kw: Any) -> Any:
    loss, model_type = kw.pop("loss", mse), kw.pop("model_type", None)
    return get_hessian_eigenvectors(model, loss, data, model_type=model_type, **kw)


def _lm_bad(**fields: torch.Tensor) -> dict[str, torch.Tensor]:
    b = lm_batch()
    b.update(fields)
    return {k: v for k, v in b.items() if v is not None}


def _sq(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (o - t) ** 2


_SHAPE = r"got a tensor of shape \[8, 2\]"
_CPU_META = r"is on device meta but the model's parameters are on cpu"

# id -> (exception type, message pattern, call)
BAD_INPUTS: dict[str, tuple[type, str, Callable[[], Any]]] = {
    # ---- non-scalar loss
    "nonscalar_loss_operator": (ValueError, r"loss must be a scalar, " + _SHAPE,
                                lambda: HessianOperator(_mlp(), _sq, (X0, Y0)) @ torch.ones(44)),
    "nonscalar_loss_apiA": (ValueError, r"loss_fn\(model\(X\)\) must return a scalar, " + _SHAPE,
                            lambda: min_max_hessian_eigs(ModelWrapper(_mlp(), lambda o: (o - Y0) ** 2, X0))),
    "nonscalar_loss_apiA_legacy": (ValueError,
                                   r"criterion\(net\(inputs\), targets\) must return a scalar, " + _SHAPE,
                                   lambda: hessian_trace(_mlp(), _sq, X0, Y0, 4)),
    "nonscalar_loss_apiB": (ValueError, r"loss must be a scalar, " + _SHAPE + " on batch 0",
                            lambda: _eigvecs(_mlp(), (X0, Y0), loss=_sq)),
    # ---- NaN / Inf loss; NaN in a Hessian-vector product (where: batch and parameter names)
    "nan_loss_operator": (LossNotFiniteError, r"loss is nan on batch 0",
                          lambda: HessianOperator(_mlp(), mse, (_nan_x(), Y0)) @ torch.ones(44)),
    "nan_loss_apiA": (RuntimeError, r"loss is nan on batch 0",
                      lambda: min_max_hessian_eigs(_wrapped(_mlp(), _nan_x()))),
    "inf_loss_apiA_legacy": (RuntimeError, r"loss is inf on batch 0",
                             lambda: min_max_hessian_eigs(_mlp(), X0, Y0, lambda o, t: mse(o, t) * math.inf)),
    "nan_loss_apiB": (RuntimeError, r"loss is nan on batch 0", lambda: _eigvecs(_mlp(), (_nan_x(), Y0))),
    "nan_hvp_operator": (RuntimeError,
                         r"Hessian-vector product contains NaN/Inf on batch 0 in parameter\(s\) \['0.weight'",
                         _with_nan_hvp(lambda m: HessianOperator(m, mse, (X0, Y0)) @ torch.ones(44))),
    "nan_hvp_lanczos": (RuntimeError, r"NaN/Inf on batch 0 in parameter\(s\)",
                        _with_nan_hvp(lambda m: lanczos(HessianOperator(m, mse, (X0, Y0)), k=1))),
    "nan_hvp_apiA_trace": (RuntimeError, r"NaN/Inf on batch 0",
                           _with_nan_hvp(lambda m: hessian_trace(m, mse, X0, Y0, 4))),
    "nan_matrix_lanczos": (RuntimeError, r"non-finite value \(NaN/Inf\) in the tridiagonal at Lanczos step 0",
                           lambda: lanczos(torch.full((5, 5), math.nan, dtype=torch.float64), k=1)),
    "nan_matrix_hutchinson": (RuntimeError, r"hutchinson.*NaN/Inf",
                              lambda: hutchinson(torch.full((5, 5), math.nan), 3)),
    # ---- no trainable parameters
    "no_trainable_params_operator": (ValueError, r"no trainable parameters",
                                     lambda: HessianOperator(_frozen(), mse, (X0, Y0))),
    "no_trainable_params_apiA": (ValueError, r"model \(Sequential\) has no trainable parameters",
                                 lambda: min_max_hessian_eigs(_wrapped(_frozen()))),
    "no_trainable_params_apiA_legacy": (ValueError, r"no trainable parameters",
                                        lambda: hessian_trace(_frozen(), mse, X0, Y0, 4)),
    "no_trainable_params_apiB": (ValueError, r"no trainable parameters",
                                 lambda: _eigvecs(_frozen(), (X0, Y0))),
    # ---- empty batch / no data
    "empty_batch_operator": (ValueError, r"batch 0 is empty \(0 samples\)",
                             lambda: HessianOperator(_mlp(), mse, (X0[:0], Y0[:0]))),
    "empty_data_operator": (ValueError, r"data is empty", lambda: HessianOperator(_mlp(), mse, [])),
    "empty_batch_apiB": (ValueError, r"batch 0 is empty", lambda: _eigvecs(_mlp(), (X0[:0], Y0[:0]))),
    "empty_batch_apiA": (ValueError, r"X .*(empty|0 samples)",
                         lambda: min_max_hessian_eigs(_wrapped(_mlp(), X0[:0], Y0[:0]))),
    "empty_batch_apiA_legacy": (ValueError, r"inputs .*(empty|0 samples)",
                                lambda: hessian_trace(_mlp(), mse, X0[:0], Y0[:0], 4)),
    # ---- dict batches of a language model
    "dict_batch_without_labels": (ValueError, r"batch dict has keys \['input_ids'\]; expected 'labels'",
                                  lambda: _eigvecs(_lm(), _lm_bad(labels=None), loss=None,
                                                   model_type="decoder_only", n_top_vectors=1)),
    "labels_out_of_vocabulary": (ValueError,
                                 rf"labels out of range \[0, {VOCAB}\): got values in \[{VOCAB}, ",
                                 lambda: _eigvecs(_lm(), _lm_bad(labels=lm_batch()["labels"] + VOCAB),
                                                  loss=None, model_type="decoder_only", n_top_vectors=1)),
    "negative_labels": (ValueError, rf"labels out of range \[0, {VOCAB}\): got values in \[-",
                        lambda: HessianAnalyzer(_cfg(track_component_hessian=False)).analyze_step(
                            _lm(), None, _lm_bad(labels=-2 - lm_batch()["labels"]), strict=True)),
    # ---- k versus n
    "k_greater_than_n": (ValueError, r"k must be <= n = 5 .*got k=6", lambda: lanczos(DENSE, k=6)),
    "k_top_plus_bottom_greater_than_n": (ValueError, r"k_top \+ k_bottom must be <= n = 5, got 4 \+ 2",
                                         lambda: extreme_eigenpairs(DENSE, 4, 2)),
    "max_iter_below_k": (ValueError, r"max_iter must be >= k = 3, got max_iter=2",
                         lambda: lanczos(DENSE, k=3, max_iter=2)),
    # ---- non-positive counts, budgets and tolerances
    "lanczos_k_zero": (ValueError, r"k must be >= 1, got 0", lambda: lanczos(DENSE, k=0)),
    "lanczos_tol_zero": (ValueError, r"tol must be a positive finite float, got 0.0",
                         lambda: lanczos(DENSE, tol=0.0)),
    "lanczos_tol_negative": (ValueError, r"tol .* got -0.001", lambda: lanczos(DENSE, tol=-1e-3)),
    "lanczos_max_iter_zero": (ValueError, r"max_iter must be >= 1, got 0",
                              lambda: lanczos(DENSE, max_iter=0)),
    "hutchinson_zero_matvecs": (ValueError, r"num_matvecs must be >= 1, got 0", lambda: hutchinson(DENSE, 0)),
    "hutchpp_negative_matvecs": (ValueError, r"num_matvecs must be >= \d+, got -3",
                                 lambda: hutchpp(DENSE, -3)),
    "xtrace_zero_matvecs": (ValueError, r"num_matvecs must be >= \d+, got 0", lambda: xtrace(DENSE, 0)),
    "estimate_trace_rtol_zero": (ValueError, r"rtol must be a positive finite float, got 0.0",
                                 lambda: estimate_trace(DENSE, rtol=0.0)),
    "estimate_trace_max_matvecs_zero": (ValueError, r"max_matvecs must be >= 1, got 0",
                                        lambda: estimate_trace(DENSE, max_matvecs=0)),
    "density_num_probes_zero": (ValueError, r"num_probes must be >= 1, got 0",
                                lambda: spectral_density(DENSE, num_probes=0)),
    "density_num_iter_negative": (ValueError, r"num_iter must be >= 1, got -1",
                                  lambda: spectral_density(DENSE, num_iter=-1)),
    "density_sigma_zero": (ValueError, r"sigma must be a positive finite float, got 0.0",
                           lambda: spectral_density(DENSE, sigma=0.0)),
    "operator_num_batches_zero": (ValueError, r"num_batches must be >= 1, got 0",
                                  lambda: HessianOperator(_mlp(), mse, [(X0, Y0)], num_batches=0)),
    "apiA_max_iter_zero": (ValueError, r"max_iter must be a positive int, got 0",
                           lambda: min_max_hessian_eigs(_wrapped(_mlp()), max_iter=0)),
    "apiA_tol_zero": (ValueError, r"tol must be a float in \(0, 1\), got 0",
                      lambda: min_max_hessian_eigs(_wrapped(_mlp()), tol=0)),
    "apiA_legacy_tol_negative": (ValueError, r"tol must be a float in \(0, 1\), got -1.0",
                                 lambda: min_max_hessian_eigs(_mlp(), X0, Y0, mse, tol=-1.0)),
    "apiA_num_random_vectors_zero": (ValueError, r"num_random_vectors must be a positive int, got 0",
                                     lambda: hessian_trace(_wrapped(_mlp()), num_random_vectors=0)),
    "apiA_legacy_num_random_vectors_negative": (ValueError,
                                                r"num_random_vectors must be a positive int, got -1",
                                                lambda: hessian_trace(_mlp(), mse, X0, Y0, -1)),
    "config_n_components_zero": (ValueError, r"n_components must be a positive int, got 0",
                                 lambda: HessianConfig(n_components=0)),
    "config_tolerance_zero": (ValueError, r"tolerance must be a positive finite float, got 0.0",
                              lambda: HessianConfig(tolerance=0.0)),
    "config_tolerance_negative": (ValueError, r"tolerance .* got -0.0001",
                                  lambda: HessianConfig(tolerance=-1e-4)),
    "config_max_iter_zero": (ValueError, r"max_iter must be a positive int, got 0",
                             lambda: HessianConfig(max_iter=0)),
    "config_trace_probes_negative": (ValueError, r"trace_probes must be a non-negative int, got -1",
                                     lambda: HessianConfig(trace_probes=-1)),
    "config_num_batches_zero": (ValueError, r"num_batches must be a positive int, got 0",
                                lambda: HessianConfig(num_batches=0)),
    "component_analyzer_tol_zero": (ValueError, r"tol must be a positive finite float, got 0.0",
                                    lambda: ComponentAnalyzer(tol=0.0)),
    "component_analyzer_n_components_zero": (ValueError, r"n_components must be >= 1, got 0",
                                             lambda: ComponentAnalyzer().analyze_all_components(
                                                 _lm(), None, lm_batch(), n_components=0)),
    "legacy_n_top_vectors_zero": (ValueError, r"n_top_vectors must be >= 1, got 0",
                                  lambda: _eigvecs(_mlp(), (X0, Y0), n_top_vectors=0)),
    "legacy_tol_zero": (ValueError, r"tol must be a positive finite float, got 0.0",
                        lambda: _eigvecs(_mlp(), (X0, Y0), tol=0.0)),
    "landscape_radius_zero": (ValueError, r"radius must be a positive finite float, got 0.0",
                              lambda: loss_landscape_1d(_mlp(), mse, (X0, Y0), torch.ones(44), radius=0.0)),
    "landscape_num_points_one": (ValueError, r"num_points must be >= 2, got 1",
                                 lambda: loss_landscape_1d(_mlp(), mse, (X0, Y0), torch.ones(44),
                                                           num_points=1)),
    # ---- unknown component names
    "unknown_component_config": (ValueError, r"unknown component names \['atention'\]",
                                 lambda: HessianConfig(component_list=["attention", "atention"])),
    "unknown_component_analyzer": (ValueError, r"unknown component names \['bogus'\]",
                                   lambda: ComponentAnalyzer().analyze_all_components(
                                       _lm(), None, lm_batch(), component_list=["bogus"])),
    "unknown_component_extract": (ValueError, r"unknown component name 'mlp_block'",
                                  lambda: extract_component_parameters(_lm(), "mlp_block")),
    # ---- mixed devices ("meta" stands in for a second device)
    "params_on_two_devices_operator": (ValueError, r"parameters are on several devices \['cpu', 'meta'\]",
                                       lambda: HessianOperator(_mixed_devices(), mse, (X0, Y0))),
    "params_on_two_devices_apiA": (ValueError, r"several devices \['cpu', 'meta'\]",
                                   lambda: min_max_hessian_eigs(_wrapped(_mixed_devices()))),
    "params_on_two_devices_apiB": (ValueError, r"several devices \['cpu', 'meta'\]",
                                   lambda: _eigvecs(_mixed_devices(), (X0, Y0))),
    "data_on_other_device_operator": (ValueError, r"data batch 0 " + _CPU_META,
                                      lambda: HessianOperator(_mlp(), mse, (X0.to("meta"), Y0))),
    "data_on_other_device_apiA": (ValueError, r"X " + _CPU_META,
                                  lambda: min_max_hessian_eigs(_wrapped(_mlp(), X0.to("meta")))),
    "targets_on_other_device_apiA_legacy": (ValueError, r"targets " + _CPU_META,
                                            lambda: hessian_trace(_mlp(), mse, X0, Y0.to("meta"), 4)),
    "data_on_other_device_apiB": (ValueError, r"data batch 0 " + _CPU_META,
                                  lambda: _eigvecs(_mlp(), (X0.to("meta"), Y0))),
    # ---- integer / mixed-precision parameters (the message says how to proceed; half models run as float32)
    "mixed_float_dtypes_operator": (TypeError, r"mixed dtypes .*dtype=torch.float32 or torch.float64",
                                    lambda: HessianOperator(_mixed(), mse, (X0, Y0))),
    "integer_param_selected": (TypeError, r"parameter 'counts' has dtype torch.int64; .*float32 or float64",
                               lambda: HessianOperator(_IntParam(), mse, (X0, Y0), params=["counts"])),
}

_XFAIL_BAD: dict[str, str] = {}   # known violations (strict xfail) go here, with the fix they need


@pytest.mark.parametrize("name", [
    pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=_XFAIL_BAD[k])) if k in _XFAIL_BAD else k
    for k in BAD_INPUTS])
def test_bad_input(name: str) -> None:
    exc_type, pattern, fn = BAD_INPUTS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc_type, match=pattern):
            fn()


def test_half_precision_advice_works() -> None:
    """Following the half-precision message (``dtype=torch.float32``) gives the float32 Hessian."""
    half = _half()
    H = HessianOperator(half, mse, (X0.half(), Y0.half()), dtype=torch.float32)
    ref = HessianOperator(_half().float(), mse, (X0.half().float(), Y0.half().float()))
    v = torch.linspace(-1, 1, H.n)
    assert torch.allclose(H @ v, ref @ v, rtol=1e-5, atol=1e-6)
    assert all(p.dtype == torch.float16 for p in half.parameters())


def test_k_equal_n_is_the_full_spectrum() -> None:
    """``k = n`` is accepted by Lanczos (the Krylov space is the whole space; pairs exact); ``k > n`` is
    refused (``test_bad_input[k_greater_than_n]``)."""
    r = lanczos(DENSE, k=5)
    assert torch.allclose(r.eigenvalues, torch.arange(1.0, 6.0, dtype=torch.float64), atol=1e-12)
    assert r.converged


def _short_loader() -> DataLoader:
    X, y = mlp_data(n=4)
    return DataLoader(TensorDataset(X, y), batch_size=2)    # 2 batches


def test_short_dataloader_warns_and_uses_what_there_is() -> None:
    model = _mlp()
    with pytest.warns(UserWarning, match=r"num_batches=5 but data yields only 2 batch\(es\); using 2"):
        H = HessianOperator(model, mse, _short_loader(), num_batches=5)
    assert H.num_batches == 2
    ref = HessianOperator(model, mse, list(_short_loader()))
    v = torch.linspace(-1, 1, H.n)
    assert torch.equal(H @ v, ref @ v)


def test_short_dataloader_warns_in_api_b() -> None:
    model = _mlp()
    with pytest.warns(UserWarning, match=r"num_batches=5 but data yields only 2 batch\(es\)"):
        vals, _ = get_hessian_eigenvectors(model, mse, _short_loader(), num_batches=5, model_type=None,
                                           n_top_vectors=2, tol=1e-6)
    ref, _ = get_hessian_eigenvectors(model, mse, list(_short_loader()), model_type=None, n_top_vectors=2,
                                      tol=1e-6)
    assert np.array_equal(vals, ref)
    with pytest.warns(UserWarning, match=r"num_batches=5 but data yields only 2"):
        res = HessianAnalyzer(_cfg(num_batches=5, track_component_hessian=False)).analyze_step(
            model, mse, _short_loader(), model_type=None, strict=True)
    assert res["hessian"]["num_parameters"] == 44


# ============================================================================================ guard rails
def _low_rank(n: int = 40, rank: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))
    lam = torch.tensor([5.0, 2.0, -1.0], dtype=torch.float64)[:rank]
    return (Q * lam) @ Q.T, lam


def test_lanczos_reports_breakdown_on_low_rank_matrix() -> None:
    A, lam = _low_rank()
    r = lanczos(A, k=5, which="LA", tol=1e-10)
    assert r.breakdown
    assert r.iterations < 40
    exact = torch.linalg.eigvalsh(A)[-5:]
    assert torch.allclose(r.eigenvalues, exact, atol=1e-10)
    assert r.orthogonality_loss < 1e-12
    # a full-rank well-separated matrix does not break down
    r2 = lanczos(torch.diag(torch.linspace(1, 2, 40, dtype=torch.float64)), k=2, max_iter=10)
    assert not r2.breakdown


def test_lanczos_reports_loss_of_orthogonality(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain three-term Lanczos (reorthogonalising only against the last two vectors) loses orthogonality
    once a Ritz value converges; the result must say so. Full reorthogonalisation keeps it at roundoff."""
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    lam = torch.cat([torch.tensor([100.0, 50.0], dtype=torch.float64),
                     torch.linspace(0, 1, 198, dtype=torch.float64)])
    A = (Q * lam) @ Q.T
    full = lanczos(A, k=1, max_iter=80, tol=1e-14, check_every=80)
    assert full.orthogonality_loss < 1e-12
    real = ops.reorthogonalize

    def local(w: torch.Tensor, basis: torch.Tensor, passes: int = 2):
        k = basis.shape[0]
        w2, c2, nrm = real(w, basis[max(0, k - 2):], passes=1)
        coeffs = torch.zeros(k, dtype=w.dtype)
        coeffs[max(0, k - 2):] = c2
        return w2, coeffs, nrm

    monkeypatch.setattr("hessext.ops.reorthogonalize", local)
    plain = lanczos(A, k=1, max_iter=80, tol=1e-14, check_every=80)
    assert plain.orthogonality_loss > 1e-3


def test_eigen_result_residuals_are_true_residuals() -> None:
    A, _ = _low_rank(n=30, rank=3)
    A = A + torch.diag(torch.linspace(0, 0.5, 30, dtype=torch.float64))
    r = lanczos(A, k=2, max_iter=8, tol=1e-14, check_every=8)   # stopped early: residuals well above 0
    true = torch.linalg.vector_norm(A @ r.eigenvectors.T - r.eigenvectors.T * r.eigenvalues, dim=0)
    assert torch.allclose(r.residuals, true, rtol=1e-6, atol=1e-12)
    assert float(true.min()) > 1e-8
    assert not r.converged


def test_trace_result_standard_error_is_the_sample_standard_error() -> None:
    A, _ = _low_rank(n=30, rank=3)
    m = 12
    r = hutchinson(A, m, seed=4)
    Z = ops.rademacher(30, m, seed=4, dtype=torch.float64)
    vals = (Z * (A @ Z)).sum(0)
    assert r.estimate == pytest.approx(float(vals.mean()), rel=1e-12)
    assert r.std_error == pytest.approx(float(vals.std() / math.sqrt(m)), rel=1e-12)
    for fn in (hutchpp, xtrace):
        res = fn(A, m, seed=4)
        assert math.isfinite(res.std_error) and res.std_error >= 0 and res.num_matvecs == m


def _float32_operator() -> HessianOperator:
    return HessianOperator(_mlp(), mse, (X0, Y0))


def test_float32_tolerance_beyond_reach_warns() -> None:
    with pytest.warns(UserWarning, match=r"float64"):
        lanczos(_float32_operator(), k=2, tol=1e-9)


def test_float32_tolerance_beyond_reach_warns_api_a() -> None:
    with pytest.warns(UserWarning, match=r"float64"):
        min_max_hessian_eigs(ModelWrapper(_mlp(), lambda o: mse(o, Y0), X0), tol=1e-9)


def test_float64_reaches_the_tolerance_float32_cannot() -> None:
    """``float64=True`` (API A) computes in float64 without touching the model: no warning, and the extremes
    agree with the dense float64 Hessian to the requested tolerance."""
    model = _mlp()
    w = ModelWrapper(model, lambda o: mse(o, Y0), X0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        lo, hi, vlo, vhi = min_max_hessian_eigs(w, tol=1e-9, float64=True)
        lanczos(_float32_operator(), k=2, tol=1e-3)            # a reachable tol draws no warning
    dense = HessianOperator(model, mse, (X0, Y0), dtype=torch.float64).to_dense()
    ev = torch.linalg.eigvalsh(dense)
    assert lo == pytest.approx(float(ev[0]), rel=1e-8, abs=1e-10)
    assert hi == pytest.approx(float(ev[-1]), rel=1e-8)
    assert vhi.dtype == np.float64
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ============================================================================================ saved data
def _results() -> tuple[HessianAnalyzer, dict]:
    an = HessianAnalyzer(_cfg(track_component_hessian=False, save_eigenvectors=True))
    res = an.analyze_step(_mlp(), mse, (X0, Y0), model_type=None, step=3, strict=True)
    return an, res


def test_save_hessian_data_is_atomic_and_pickle_free(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "a" / "b"          # nested, does not exist yet
    an, res = _results()
    an.config.output_dir = str(out)
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        assert os.path.dirname(os.path.abspath(src)) == os.path.dirname(os.path.abspath(dst))
        assert os.path.exists(src) and not os.path.exists(dst)
        replaced.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    paths = an.save_hessian_data(res)
    assert {"model_step3.json", "model_step3.npz"} <= {os.path.basename(d) for _, d in replaced}
    assert sorted(os.listdir(out)) == ["model_step3.json", "model_step3.npz"]     # no temporary left
    with open(paths["json"], encoding="utf-8") as fh:
        data = json.load(fh)
    assert data["hessian"]["top_eigenvalues"] == res["hessian"]["top_eigenvalues"]
    with np.load(paths["npz"], allow_pickle=False) as z:
        assert np.array_equal(z["top_eigenvalues"], np.asarray(res["hessian"]["top_eigenvalues"]))
        assert z["top_eigenvectors"].shape == (2, 44)


def test_failed_save_keeps_the_previous_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    an, res = _results()
    an.config.output_dir = str(tmp_path)
    first = an.save_hessian_data(res)
    before = open(first["json"], "rb").read()

    def broken(src: Any, dst: Any) -> None:
        raise OSError("simulated disk full")

    monkeypatch.setattr(os, "replace", broken)
    res2 = dict(res, step=3, hessian=dict(res["hessian"], max_eigenvalue=123.0))
    with pytest.raises(OSError, match="simulated disk full"):
        an.save_hessian_data(res2)
    assert open(first["json"], "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["model_step3.json", "model_step3.npz"]


def test_output_dir_is_never_cleared(tmp_path: Any) -> None:
    keep = tmp_path / "user_notes.txt"
    keep.write_text("mine")
    sub = tmp_path / "plots"
    sub.mkdir()
    (sub / "old.png").write_bytes(b"x")
    an = HessianAnalyzer(_cfg(track_component_hessian=False, save_hessian_data=True,
                              output_dir=str(tmp_path)))
    an.analyze_step(_mlp(), mse, (X0, Y0), model_type=None, step=1, strict=True)
    an.analyze_step(_mlp(), mse, (X0, Y0), model_type=None, step=2, strict=True)
    an.create_plots()
    assert keep.read_text() == "mine" and (sub / "old.png").read_bytes() == b"x"
    names = set(os.listdir(tmp_path))
    assert {"model_step1.json", "model_step1.npz", "model_step2.json", "model_step2.npz"} <= names


def test_reports_are_written_atomically(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from hessext.viz import HessianVisualizer

    _, res = _results()
    replaced: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (replaced.append(os.fspath(d)), real_replace(s, d)))
    HessianVisualizer.save_analysis_summary(res, save_path=str(tmp_path))
    assert [os.path.basename(p) for p in replaced] == ["model_analysis_summary.txt"]
    replaced.clear()
    report = tmp_path / "report"
    HessianVisualizer.create_comprehensive_report(history={1: res}, save_path=str(report))
    assert {"model_analysis_summary.txt", "index.html"} <= {os.path.basename(p) for p in replaced}
    assert not [f for f in os.listdir(report) if f.startswith(".tmp")]


def test_saved_data_has_ordinary_permissions(tmp_path: Any) -> None:
    """JSON/NPZ written atomically get the permissions of an ordinary ``open(path, "w")``, not mkstemp's
    0600."""
    an, res = _results()
    an.config.output_dir = str(tmp_path)
    umask = os.umask(0o022)
    try:
        paths = an.save_hessian_data(res)
    finally:
        os.umask(umask)
    for p in paths.values():
        assert os.stat(p).st_mode & 0o777 == 0o644, p
