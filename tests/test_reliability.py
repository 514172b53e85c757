"""Reliability II (issue 18): red-team tests of the public entry points, each against a dense float64 Hessian.

1. **Threads, one model.** Two ``HessianOperator``s on one module (8 batches each) and API A twice, run from
   two threads released together by a barrier, many trials: every result equals the single-threaded one (or,
   where hessext refuses concurrent use, the error names the model), the model's ``Parameter`` objects are
   never replaced, and an optimiser step still trains the model. Different models in different threads
   stay correct.
2. **No leaked global state.** Training flags of every submodule, the attention-backend switches
   (``torch.backends.cuda.*_sdp_enabled``) and the global RNG after overlapping ``session()``s closed out of
   order and after threaded analyses; a background analysis must not rewind the RNG another thread draws
   from (the main thread's draws equal a fresh generator's); a train-mode analysis leaves the global RNGs
   where a run without analysis leaves them.
3. **Autograd modes.** Inside ``torch.inference_mode()`` / ``torch.no_grad()`` every entry point gives the
   right number or raises an error that says why; a loss that does not depend on the parameters through
   autograd (detached, or computed under ``no_grad``) raises. Never all zeros.
4. **Every loss term counted.** A loss with a term on the parameters read outside the model (weight decay
   over ``model.parameters()``, a proximal term over a captured list of Parameters) has that term in the
   Hessian of every API; the truth is ``torch.func.hessian`` of the full loss.
5. **Inputs and errors.** Labels checked by shape, complex vectors, an absurd ``max_iter``, the user's own
   ``RuntimeError`` propagated unchanged (no fallback, no warning), data errors named as data errors, float64
   eigenvectors saved as float64, one save is both files or neither, forward-over-reverse with
   ``nn.MSELoss`` works or says what to use.

Only public entry points are used. Thread tests repeat each experiment many times (a race that shows in one
trial of four is missed by 20 trials with probability 0.75^20 ≈ 3e-3, by 40 with 1e-5).
"""
from __future__ import annotations

import glob
import json
import os
import random
import threading
import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch
from _models import dense_hessian, mlp_batch, tiny_mlp  # noqa: E402
from _redteam import (  # noqa: E402
    Boom,
    HugeIdentity,
    check_concurrent,
    dense_hessian_of,
    dropout_mlp,
    fresh_draws,
    global_rng_states,
    mixed_modes,
    model_output,
    module_flags,
    mse,
    names_shapes,
    parameter_slots,
    refused_for,
    replaced_parameters,
    run_together,
    same_rng_states,
    sdpa_flags,
    set_sdpa_flags,
    trains,
)
from torch import nn

from hessext import (  # noqa: E402
    HessianAnalyzer,
    HessianConfig,
    HessianOperator,
    ModelWrapper,
    TransformerFactory,
    get_hessian_eigenvectors,
    hessian_trace,
    min_max_hessian_eigs,
)
from hessext.lanczos import lanczos  # noqa: E402
from hessext.trace import hutchinson  # noqa: E402

MSE = nn.MSELoss()


@pytest.fixture(autouse=True)
def _sdpa_all_enabled():
    """Every attention backend enabled at the start (so that a leaked switch shows), restored afterwards."""
    saved = sdpa_flags()
    set_sdpa_flags({k: True for k in saved})
    yield
    set_sdpa_flags(saved)


def top_eig(H: Any, tol: float = 1e-5) -> float:
    return float(lanczos(H, k=1, which="LA", tol=tol).eigenvalues[-1])


def eig_ends(D: torch.Tensor) -> tuple[float, float]:
    ev = torch.linalg.eigvalsh(D)
    return float(ev[0]), float(ev[-1])


# ================================================================================ 1. threads
BATCHES8 = [mlp_batch(seed=10 + i) for i in range(8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_operators_on_one_model_from_two_threads(dtype):
    model = mixed_modes(tiny_mlp().to(dtype))
    batches = [(x.to(dtype), y.to(dtype)) for x, y in BATCHES8]
    tol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-10, 1e-9)
    truth = eig_ends(dense_hessian(model, mse, batches))[1]
    single = top_eig(HessianOperator(model, mse, batches), tol)
    assert single == pytest.approx(truth, rel=100 * rtol)
    slots, flags, sdpa = parameter_slots(model), module_flags(model), sdpa_flags()
    for trial in range(20):
        ops = [HessianOperator(model, mse, batches) for _ in range(2)]
        results, errors = run_together([lambda H=H: top_eig(H, tol) for H in ops])
        check_concurrent(results, errors, lambda r: abs(r - single) <= rtol * abs(single), model,
                         f"trial {trial}")
        assert replaced_parameters(slots) == [], f"trial {trial}: Parameters replaced by other tensors"
        assert module_flags(model) == flags, f"trial {trial}: training flags changed"
        assert sdpa_flags() == sdpa, f"trial {trial}: attention backends changed"
    assert trains(model, mse, *batches[0], [p for *_, p in slots]), "an optimiser step no longer trains it"


def test_api_a_twice_concurrently_on_one_model():
    """Documented form (ModelWrapper) in one thread, legacy form in the other: both must give the
    single-threaded (min, max)."""
    model = tiny_mlp().train()
    X, Y = mlp_batch(seed=3, n=16)
    wrapper = ModelWrapper(model, lambda out: MSE(out, Y), X)
    lo, hi = eig_ends(dense_hessian(model, MSE, [(X, Y)]))
    ref = min_max_hessian_eigs(wrapper, tol=1e-5)[:2]
    assert ref == pytest.approx((lo, hi), abs=1e-4 * abs(hi))
    slots, flags, sdpa = parameter_slots(model), module_flags(model), sdpa_flags()

    def same(r: tuple) -> bool:
        return abs(r[0] - ref[0]) <= 1e-5 * abs(ref[1]) and abs(r[1] - ref[1]) <= 1e-5 * abs(ref[1])

    for trial in range(40):
        results, errors = run_together([
            lambda: min_max_hessian_eigs(wrapper, tol=1e-5)[:2],
            lambda: min_max_hessian_eigs(model, X, Y, MSE, tol=1e-5)[1::-1],   # (max, min, …) reversed
        ])
        check_concurrent(results, errors, same, model, f"trial {trial}")
        assert replaced_parameters(slots) == [], f"trial {trial}: Parameters replaced by other tensors"
        assert module_flags(model) == flags, f"trial {trial}: training flags changed"
        assert sdpa_flags() == sdpa, f"trial {trial}: attention backends changed"
    assert trains(model, MSE, X, Y, [p for *_, p in slots]), "an optimiser step no longer trains it"


def test_different_models_in_different_threads_stay_correct():
    """Thread j: the top eigenvalue of an 8-batch operator and API A's (min, max) of its own model j."""
    models = [mixed_modes(tiny_mlp(seed=s)) for s in (0, 1)]
    data = [BATCHES8[:4], BATCHES8[4:]]

    def work(j: int) -> tuple[float, float, float]:
        X, Y = data[j][0]
        lo, hi = min_max_hessian_eigs(models[j], X, Y, mse, tol=1e-5)[1::-1]
        return top_eig(HessianOperator(models[j], mse, data[j])), lo, hi

    refs = []
    for j, (model, batches) in enumerate(zip(models, data)):
        ref = work(j)
        want = (eig_ends(dense_hessian(model, mse, batches))[1],
                *eig_ends(dense_hessian(model, mse, batches[:1])))
        assert ref == pytest.approx(want, rel=1e-4, abs=1e-4 * abs(want[0]))
        refs.append(ref)
    slots = [parameter_slots(m) for m in models]
    flags = [module_flags(m) for m in models]
    for trial in range(10):
        results, errors = run_together([lambda j=j: work(j) for j in range(2)])
        assert errors == [None, None], f"trial {trial}: {errors}"
        for j in range(2):
            assert results[j] == pytest.approx(refs[j], rel=1e-5, abs=1e-5 * abs(refs[j][0])), \
                f"trial {trial}, model {j}"
            assert replaced_parameters(slots[j]) == []
            assert module_flags(models[j]) == flags[j], f"trial {trial}: model {j}'s training flags changed"


# ================================================================================ 2. global state
@pytest.mark.parametrize("same_model", [True, False], ids=["one_model", "two_models"])
def test_overlapping_sessions_closed_out_of_order(same_model):
    model_a = mixed_modes(tiny_mlp(seed=0))
    model_b = model_a if same_model else mixed_modes(tiny_mlp(seed=1))
    X, Y = mlp_batch(seed=4)
    Ha, Hb = HessianOperator(model_a, mse, (X, Y)), HessianOperator(model_b, mse, (X, Y))
    Da, Db = dense_hessian(model_a, mse, [(X, Y)]), dense_hessian(model_b, mse, [(X, Y)])
    flags_a, flags_b, sdpa = module_flags(model_a), module_flags(model_b), sdpa_flags()
    v = torch.linspace(-1, 1, Ha.n)
    torch.manual_seed(2024)
    draws = []
    sa, sb = Ha.session(), Hb.session()
    sa.__enter__()
    ya = Ha @ v
    draws.append(torch.rand(2))
    sb.__enter__()
    yb = Hb @ v
    draws.append(torch.rand(2))
    sa.__exit__(None, None, None)          # the first one opened is closed first
    draws.append(torch.rand(2))
    sb.__exit__(None, None, None)
    draws.append(torch.rand(2))
    torch.testing.assert_close(ya.double(), Da @ v.double(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(yb.double(), Db @ v.double(), rtol=1e-4, atol=1e-5)
    expected = fresh_draws(2024, 4, lambda g: torch.rand(2, generator=g))
    problems = [what for what, ok in [
        ("training flags not restored",
         module_flags(model_a) == flags_a and module_flags(model_b) == flags_b),
        (f"attention backends left switched: {sdpa_flags()}", sdpa_flags() == sdpa),
        ("the global RNG was rewound: draws made while the sessions were open repeat",
         torch.equal(torch.stack(draws), torch.stack(expected))),
    ] if not ok]
    assert not problems, "; ".join(problems)


def test_session_does_not_rewind_draws_made_inside_it():
    model = tiny_mlp()
    H = HessianOperator(model, mse, mlp_batch())
    torch.manual_seed(7)
    with H.session():
        inside = torch.rand(3)
        H @ torch.ones(H.n)
    after = torch.rand(3)
    expected = fresh_draws(7, 2, lambda g: torch.rand(3, generator=g))
    assert torch.equal(torch.cat([inside, after]), torch.cat(expected)), \
        "leaving a session rewound the global RNG: draws made inside it repeat"


@pytest.mark.filterwarnings("ignore:eval_mode=False")
@pytest.mark.parametrize("eval_mode", [True, False], ids=["eval", "train"])
@pytest.mark.parametrize("same_model", [True, False], ids=["one_model", "two_models"])
def test_threaded_analyses_leave_global_state(same_model, eval_mode):
    """Each thread runs products (one guard each) and a Lanczos run (one session) on a train-mode model with
    dropout, analysed in eval or in train mode; afterwards flags, attention backends and the global RNG
    states are what they were (train-mode analysis too: it must not move the global RNG)."""
    model_a = mixed_modes(dropout_mlp(seed=0))
    model_b = model_a if same_model else mixed_modes(dropout_mlp(seed=1))
    data = [BATCHES8[:2], BATCHES8[2:4]]
    flags_a, flags_b, sdpa = module_flags(model_a), module_flags(model_b), sdpa_flags()
    v = torch.linspace(-1, 1, 44)

    def work(model: nn.Module, batches: list) -> float:
        H = HessianOperator(model, mse, batches, eval_mode=eval_mode)
        for _ in range(3):
            H @ v
        return float(lanczos(H, k=1, max_iter=8).eigenvalues[-1])

    for trial in range(20):
        rng = global_rng_states()
        results, errors = run_together([lambda: work(model_a, data[0]), lambda: work(model_b, data[1])])
        for e in errors:
            if e is not None and not refused_for(e, model_a):
                raise e
        assert module_flags(model_a) == flags_a, f"trial {trial}: training flags changed"
        assert module_flags(model_b) == flags_b, f"trial {trial}: training flags changed"
        assert sdpa_flags() == sdpa, f"trial {trial}: attention backends left switched"
        assert same_rng_states(global_rng_states(), rng), f"trial {trial}: global RNG state changed"


@pytest.mark.filterwarnings("ignore:eval_mode=False")
@pytest.mark.parametrize("eval_mode", [True, False], ids=["eval", "train"])
def test_background_analysis_does_not_repeat_main_thread_draws(eval_mode):
    """A training loop draws from the global RNG while another thread analyses (in eval mode: nothing may
    touch the global RNG, so the draws are exactly a fresh generator's; in train mode, with dropout: the
    draws must at least never repeat)."""
    model = dropout_mlp()
    H = HessianOperator(model, mse, BATCHES8[:4], eval_mode=eval_mode)
    v = torch.linspace(-1, 1, H.n)
    done = threading.Event()
    failure: list[BaseException] = []

    def background() -> None:
        try:
            for _ in range(40):
                H @ v                    # one guard (snapshot + restore) per product
            for _ in range(3):
                top_eig(H)               # one session per run
        except BaseException as e:  # noqa: BLE001
            failure.append(e)
        finally:
            done.set()

    def draw(g: torch.Generator | None = None) -> int:
        return int(torch.randint(0, 2 ** 62, (1,), generator=g))

    torch.manual_seed(99)
    t = threading.Thread(target=background, daemon=True)
    t.start()
    draws = []
    while not done.is_set() or len(draws) < 1000:
        draws.append(draw())
    t.join(60)
    assert not failure, failure
    repeats = len(draws) - len(set(draws))
    assert repeats == 0, f"{repeats} of {len(draws)} draws of the main thread repeated (the RNG was rewound)"
    if eval_mode:
        assert draws == fresh_draws(99, len(draws), draw), "an eval-mode analysis touched the global RNG"


@pytest.mark.filterwarnings("ignore:eval_mode=False")
def test_train_mode_analysis_leaves_global_rng_where_no_analysis_does():
    model = dropout_mlp()
    X, Y = mlp_batch(seed=5)

    def run(analyse: bool) -> tuple:
        torch.manual_seed(5)
        np.random.seed(5)
        random.seed(5)
        first = torch.rand(3)
        if analyse:
            H = HessianOperator(model, mse, (X, Y), eval_mode=False)
            H @ torch.ones(H.n)
            top_eig(H)
            cfg = HessianConfig.minimal(n_components=1, trace_probes=2, eval_mode=False)
            HessianAnalyzer(cfg).analyze_step(model, mse, (X, Y), model_type=None, strict=True)
        return torch.cat([first, torch.rand(3)]).tolist(), float(np.random.rand()), random.random()

    assert run(True) == run(False)


# ================================================================================ 3. autograd modes
GRAD_MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}


@pytest.fixture(scope="module")
def mlp_case():
    model = tiny_mlp()
    X, Y = mlp_batch(seed=2, n=12)
    D = dense_hessian(model, mse, [(X, Y)])
    return model, X, Y, D


def says_why(e: BaseException) -> bool:
    text = str(e).lower()
    return any(w in text for w in ("grad", "inference", "depend", "detach"))


def right_or_raises(compute: Callable[[], Any], check: Callable[[Any], None]) -> None:
    """Either ``compute()`` raises an error that says why, or its value passes ``check``."""
    try:
        value = compute()
    except (RuntimeError, ValueError, TypeError) as e:
        assert says_why(e), f"raised, but the message does not say why: {type(e).__name__}: {e}"
        return
    check(value)


def minimal_config(**kw: Any) -> HessianConfig:
    base = dict(n_components=1, n_bottom=1, trace_probes=0, track_sharpness=False, tolerance=1e-5)
    base.update(kw)
    return HessianConfig.minimal(**base)


def analyze(model: nn.Module, loss_fn: Any, batch: Any, **kw: Any) -> dict:
    return HessianAnalyzer(minimal_config(**kw)).analyze_step(model, loss_fn, batch, model_type=None)


def check_analysis(res: dict, lo: float, hi: float) -> None:
    """API B records a failure per section: a result without the ``hessian`` section (and with an error) is a
    refusal; a ``hessian`` section must hold the right extreme eigenvalues."""
    if "hessian" not in res:
        assert "error" in res and says_why(res["error"]), res.get("error")
        return
    got = (res["hessian"]["min_eigenvalue"], res["hessian"]["max_eigenvalue"])
    assert got == pytest.approx((lo, hi), abs=1e-4 * abs(hi)), f"API B gave {got}, dense {(lo, hi)}"


@pytest.mark.parametrize("grad_mode", list(GRAD_MODES))
@pytest.mark.parametrize("entry", ["matvec_built_outside", "matvec_built_inside", "lanczos", "hutchinson",
                                   "api_a_min_max", "api_a_trace", "analyze_step"])
def test_autograd_modes_right_or_raise(mlp_case, grad_mode, entry):
    model, X, Y, D = mlp_case
    lo, hi = eig_ends(D)
    n = D.shape[0]
    v = torch.linspace(-1, 1, n)
    mode = GRAD_MODES[grad_mode]
    wrapper = ModelWrapper(model, lambda out: mse(out, Y), X)

    def close(got: Any, want: Any, what: str, rel: float = 1e-4) -> None:
        assert got == pytest.approx(want, rel=rel, abs=1e-6), f"{what} under {grad_mode}: {got} vs {want}"

    if entry == "matvec_built_outside":
        H = HessianOperator(model, mse, (X, Y))

        def compute():
            with mode():
                return H @ v
        right_or_raises(compute, lambda y: torch.testing.assert_close(y.double(), D @ v.double(), rtol=1e-4,
                                                                       atol=1e-5))
    elif entry == "matvec_built_inside":
        def compute():
            with mode():
                return HessianOperator(model, mse, (X, Y)) @ v
        right_or_raises(compute, lambda y: torch.testing.assert_close(y.double(), D @ v.double(), rtol=1e-4,
                                                                       atol=1e-5))
    elif entry == "lanczos":
        def compute():
            with mode():
                return top_eig(HessianOperator(model, mse, (X, Y)))
        right_or_raises(compute, lambda lam: close(lam, hi, "lanczos top eigenvalue"))
    elif entry == "hutchinson":
        want = hutchinson(HessianOperator(model, mse, (X, Y)), 8, seed=3).estimate
        assert want != 0.0

        def compute():
            with mode():
                return hutchinson(HessianOperator(model, mse, (X, Y)), 8, seed=3).estimate
        right_or_raises(compute, lambda est: close(est, want, "hutchinson", rel=1e-5))
    elif entry == "api_a_min_max":
        def compute():
            with mode():
                return min_max_hessian_eigs(wrapper, tol=1e-5)[:2]
        right_or_raises(compute, lambda r: close(r, (lo, hi), "API A (min, max)"))
    elif entry == "api_a_trace":
        def compute():   # Hutch++ with 3n products is exact (its sketch spans the range of H)
            with mode():
                return hessian_trace(wrapper, num_random_vectors=3 * n, method="hutchpp")
        right_or_raises(compute, lambda t: close(t, float(D.trace()), "API A trace", rel=1e-3))
    else:
        def compute():
            with mode():
                return analyze(model, mse, (X, Y))
        right_or_raises(compute, lambda res: check_analysis(res, lo, hi))


def detached(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.detach() - y).pow(2).mean()


def under_no_grad(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (out - y).pow(2).mean()


@pytest.mark.parametrize("loss", [detached, under_no_grad], ids=["detached", "no_grad"])
@pytest.mark.parametrize("entry", ["matvec", "lanczos", "api_a_min_max", "api_a_trace", "api_a_legacy",
                                   "analyze_step"])
def test_loss_without_autograd_path_raises(mlp_case, loss, entry):
    model, X, Y, D = mlp_case
    n = D.shape[0]
    wrapper = ModelWrapper(model, lambda out: loss(out, Y), X)
    calls = {
        "matvec": lambda: HessianOperator(model, loss, (X, Y)) @ torch.ones(n),
        "lanczos": lambda: top_eig(HessianOperator(model, loss, (X, Y))),
        "api_a_min_max": lambda: min_max_hessian_eigs(wrapper),
        "api_a_trace": lambda: hessian_trace(wrapper, num_random_vectors=4),
        "api_a_legacy": lambda: min_max_hessian_eigs(model, X, Y, loss),
        "analyze_step": lambda: analyze(model, loss, (X, Y)),
    }
    try:
        res = calls[entry]()
    except (RuntimeError, ValueError, TypeError) as e:
        assert says_why(e), f"raised, but the message does not say why: {type(e).__name__}: {e}"
        return
    if entry == "analyze_step" and "hessian" not in res:
        assert says_why(res.get("error", "")), res.get("error")
        return
    raise AssertionError(f"a loss with no autograd path to the parameters returned {res!r}, not an error")


# ================================================================================ 4. loss terms
WD, PROX = 0.05, 0.05


def regulariser(model: nn.Module, term: str) -> Callable[[], torch.Tensor]:
    """``WD Σ‖p‖²`` over ``model.parameters()`` (read at call time), or ``PROX Σ‖p − p₀‖²`` over a captured
    list of the model's Parameters."""
    params = list(model.parameters())
    anchors = [p.detach().clone() + 0.1 for p in params]
    if term == "weight_decay":
        return lambda: WD * sum(p.pow(2).sum() for p in model.parameters())
    return lambda: PROX * sum((p - a).pow(2).sum() for p, a in zip(params, anchors))


def dense_full(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, term: str) -> torch.Tensor:
    anchors = {k: p.detach().double() + 0.1 for k, p in model.named_parameters()}

    def full_loss(m: nn.Module, theta: dict) -> torch.Tensor:
        loss = mse(model_output(m, theta, X), Y.double())
        if term == "weight_decay":
            return loss + WD * sum(t.pow(2).sum() for t in theta.values())
        return loss + PROX * sum((theta[k] - anchors[k]).pow(2).sum() for k in theta)
    return dense_hessian_of(model, full_loss)


@pytest.mark.parametrize("term", ["weight_decay", "proximal"])
@pytest.mark.parametrize("entry", ["operator_matvec", "operator_lanczos", "api_a_documented", "api_a_legacy",
                                   "api_a_trace", "analyze_step", "get_hessian_eigenvectors"])
def test_every_loss_term_counted(term, entry):
    model = tiny_mlp(seed=3)
    X, Y = mlp_batch(seed=6, n=10)
    reg = regulariser(model, term)

    def loss_pair(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mse(out, y) + reg()

    D = dense_full(model, X, Y, term)
    lo, hi = eig_ends(D)
    n = D.shape[0]
    # the regulariser's curvature (2·0.05 on the diagonal) is far above the tolerances below
    assert abs(hi - eig_ends(dense_hessian(model, mse, [(X, Y)]))[1]) > 0.05
    wrapper = ModelWrapper(model, lambda out: loss_pair(out, Y), X)
    if entry == "operator_matvec":
        v = torch.linspace(-1, 1, n)
        y = HessianOperator(model, loss_pair, (X, Y)) @ v
        torch.testing.assert_close(y.double(), D @ v.double(), rtol=1e-4, atol=1e-5)
    elif entry == "operator_lanczos":
        assert top_eig(HessianOperator(model, loss_pair, (X, Y))) == pytest.approx(hi, rel=1e-4)
    elif entry == "api_a_documented":
        got = min_max_hessian_eigs(wrapper, tol=1e-5)[:2]
        assert got == pytest.approx((lo, hi), abs=1e-4 * abs(hi))
    elif entry == "api_a_legacy":
        got = min_max_hessian_eigs(model, X, Y, loss_pair, tol=1e-5)[1::-1]
        assert got == pytest.approx((lo, hi), abs=1e-4 * abs(hi))
    elif entry == "api_a_trace":
        got = hessian_trace(wrapper, num_random_vectors=3 * n, method="hutchpp")
        assert got == pytest.approx(float(D.trace()), rel=1e-3)
    elif entry == "analyze_step":
        res = HessianAnalyzer(minimal_config()).analyze_step(model, loss_pair, (X, Y), model_type=None,
                                                             strict=True)
        got = (res["hessian"]["min_eigenvalue"], res["hessian"]["max_eigenvalue"])
        assert got == pytest.approx((lo, hi), abs=1e-4 * abs(hi))
    else:
        vals, _ = get_hessian_eigenvectors(model, loss_pair, (X, Y), n_top_vectors=1, model_type=None,
                                           tol=1e-5)
        assert float(vals[0]) == pytest.approx(hi, rel=1e-4)


# ================================================================================ 5. inputs, errors
VOCAB, B, L = 7, 3, 5


def tiny_decoder() -> nn.Module:
    torch.manual_seed(0)
    return TransformerFactory.create_decoder_only_transformer(vocab_size=VOCAB, d_model=4, num_heads=2,
                                                              num_layers=1, d_ff=6, max_seq_length=L)


def token_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (B, L), generator=g), torch.randint(0, VOCAB, (B, L), generator=g)


LABEL_ENTRIES = {
    "analyze_step": lambda m, b: HessianAnalyzer(minimal_config()).analyze_step(
        m, nn.CrossEntropyLoss(), b, model_type="decoder_only", strict=True),
    "get_hessian_eigenvectors": lambda m, b: get_hessian_eigenvectors(m, nn.CrossEntropyLoss(), b,
                                                                      n_top_vectors=1),
    "operator": lambda m, b: HessianOperator(m, nn.CrossEntropyLoss(), b, model_type="decoder_only")
    @ torch.ones(sum(p.numel() for p in m.parameters())),
}


@pytest.mark.parametrize("entry", list(LABEL_ENTRIES))
def test_sequence_first_labels_are_refused(entry):
    model = tiny_decoder()
    ids, labels = token_batch()
    LABEL_ENTRIES[entry](model, {"input_ids": ids, "labels": labels})        # aligned: works
    with pytest.raises((ValueError, TypeError)) as info:
        LABEL_ENTRIES[entry](model, {"input_ids": ids, "labels": labels.T.contiguous()})
    assert names_shapes(str(info.value), (L, B)) and names_shapes(str(info.value), (B, L)), \
        f"the error does not name both shapes: {info.value}"


def test_complex_vector_refused_or_handled(mlp_case):
    model, X, Y, D = mlp_case
    H = HessianOperator(model, mse, (X, Y))
    g = torch.Generator().manual_seed(0)
    re_, im = torch.randn(H.n, generator=g), torch.randn(H.n, generator=g)
    with warnings.catch_warnings():
        # "Casting complex values to real discards the imaginary part" (a UserWarning) is a failure
        warnings.simplefilter("error", UserWarning)
        try:
            y = H @ torch.complex(re_, im)
        except TypeError:
            return
    assert y.is_complex(), f"H @ complex vector returned {y.dtype}"
    torch.testing.assert_close(y.real.double(), D @ re_.double(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.imag.double(), D @ im.double(), rtol=1e-4, atol=1e-5)


def test_absurd_max_iter_runs_within_a_bounded_basis():
    """A Krylov dimension of 10⁶ over 10⁷ parameters (a 40 TB basis) is never allocated: the basis is bounded
    (thick restart within max_basis vectors, issue 14) and the answer is right; never an allocator error."""
    op = HugeIdentity()                    # 2·I breaks down after one step: test after every step
    res = lanczos(op, k=1, max_iter=10 ** 6, check_every=1)
    assert res.max_basis <= 62
    assert float(res.eigenvalues[-1]) == pytest.approx(2.0)


def raises_boom(call: Callable[[], Any]) -> list:
    """``call()`` raises exactly RuntimeError("boom"); returns the warnings it issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError) as info:
            call()
    assert type(info.value) is RuntimeError and str(info.value) == "boom", \
        f"the user's error came back as {type(info.value).__name__}: {info.value}"
    # torch's own deprecation notices (first use of torch.func) are not hessext's
    return [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]


def test_user_runtime_error_on_first_call_propagates(mlp_case):
    model, X, Y, D = mlp_case
    v = torch.linspace(-1, 1, D.shape[0])
    H = HessianOperator(model, Boom(), (X, Y))
    caught = raises_boom(lambda: H @ v)
    assert not caught, [str(w.message) for w in caught]
    y = H @ v                                       # the loss works now: no mode was switched
    assert H.mode_used == "double_backward"
    torch.testing.assert_close(y.double(), D @ v.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("entry", ["api_a_legacy", "api_a_documented", "analyze_step"])
def test_user_runtime_error_propagates_through_facades(mlp_case, entry):
    model, X, Y, _ = mlp_case

    class AlwaysBoom:
        def __call__(self, *args: Any) -> torch.Tensor:
            raise RuntimeError("boom")

    calls = {
        "api_a_legacy": lambda: min_max_hessian_eigs(model, X, Y, AlwaysBoom()),
        "api_a_documented": lambda: min_max_hessian_eigs(ModelWrapper(model, AlwaysBoom(), X)),
        "analyze_step": lambda: HessianAnalyzer(minimal_config()).analyze_step(
            model, AlwaysBoom(), (X, Y), model_type=None, strict=True),
    }
    raises_boom(calls[entry])


def test_user_runtime_error_in_batched_block_propagates(mlp_case):
    """Forward-over-reverse pushes a block through one vmapped call: the user's error there must propagate,
    not switch the operator to a column loop for good."""
    model, X, Y, D = mlp_case
    V = torch.linspace(-1, 1, 3 * D.shape[0]).reshape(D.shape[0], 3)
    loss = Boom(armed=False)
    H = HessianOperator(model, loss, (X, Y), mode="forward_over_reverse")
    H @ V
    batched = getattr(H, "batched", True)
    loss.armed = True
    caught = raises_boom(lambda: H @ V)
    assert not caught, [str(w.message) for w in caught]
    Y3 = H @ V
    assert getattr(H, "batched", True) == batched, "one user error switched the operator to a column loop"
    torch.testing.assert_close(Y3.double(), D @ V.double(), rtol=1e-4, atol=1e-5)


def is_data_error(e: BaseException) -> bool:
    text = str(e).lower()
    return "no hvp mode" not in text and any(
        w in text for w in ("data", "batch", "shape", "size", "input", "target", "sample", "bool", "dtype"))


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("entry", ["operator", "api_a_legacy", "analyze_step"])
def test_inputs_and_targets_of_different_lengths_named_as_data_error(entry):
    model = tiny_mlp()
    X, _ = mlp_batch(seed=1, n=16)
    _, Y = mlp_batch(seed=2, n=8)
    calls = {
        "operator": lambda: HessianOperator(model, MSE, (X, Y)) @ torch.ones(44),
        "api_a_legacy": lambda: min_max_hessian_eigs(model, X, Y, MSE),
        "analyze_step": lambda: HessianAnalyzer(minimal_config()).analyze_step(
            model, MSE, (X, Y), model_type=None, strict=True),
    }
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        calls[entry]()
    assert is_data_error(info.value), f"{type(info.value).__name__}: {info.value}"


@pytest.mark.parametrize("entry", list(LABEL_ENTRIES))
def test_bool_input_ids_named_as_data_error(entry):
    model = tiny_decoder()
    ids, labels = token_batch()
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        LABEL_ENTRIES[entry](model, {"input_ids": ids > 3, "labels": labels})
    assert is_data_error(info.value), f"{type(info.value).__name__}: {info.value}"


def test_float64_analysis_saves_float64_eigenvectors(tmp_path, mlp_case):
    model, X, Y, D = mlp_case
    cfg = minimal_config(save_hessian_data=True, save_eigenvectors=True, output_dir=str(tmp_path),
                         dtype=torch.float64, tolerance=1e-10)
    HessianAnalyzer(cfg).analyze_step(model, mse, (X, Y), model_type=None, step=3, strict=True)
    saved = {}
    for path in glob.glob(str(tmp_path / "**" / "*.npz"), recursive=True):
        with np.load(path, allow_pickle=False) as z:
            saved.update({(path, k): z[k] for k in z.files if "eigenvector" in k})
    assert len(saved) == 1, f"expected one saved eigenvector array, found {sorted(saved)}"
    (path, _), vecs = next(iter(saved.items()))
    stem = os.path.splitext(path)[0]
    assert os.path.exists(stem + ".json"), "one save is one unit: the JSON file of the NPZ is missing"
    with open(stem + ".json") as f:
        json.load(f)
    assert vecs.dtype == np.float64, f"a float64 analysis saved {vecs.dtype} eigenvectors"
    top = torch.linalg.eigh(D).eigenvectors[:, -1].numpy()
    assert abs(float(np.dot(vecs.reshape(-1, D.shape[0])[0], top))) == pytest.approx(1.0, abs=1e-10)


def test_forward_over_reverse_with_mse_loss_works_or_says_what_to_use(mlp_case):
    model, X, Y, D = mlp_case
    v = torch.linspace(-1, 1, D.shape[0])
    try:
        y = HessianOperator(model, MSE, (X, Y), mode="forward_over_reverse") @ v
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
        assert "double_backward" in str(e), f"the error does not say what to use: {e}"
        return
    torch.testing.assert_close(y.double(), D @ v.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:save_hessian_data failed")
@pytest.mark.parametrize("blocked", ["json", "npz"])
def test_one_save_is_both_files_or_neither(tmp_path, mlp_case, blocked):
    """A save whose second file cannot be written (a directory stands where that file goes) leaves neither
    file, whichever of the two is blocked; the file names are learnt from a normal save first."""
    model, X, Y, _ = mlp_case

    def save_into(out: str) -> None:
        cfg = minimal_config(save_hessian_data=True, save_eigenvectors=True, output_dir=out)
        HessianAnalyzer(cfg).analyze_step(model, mse, (X, Y), model_type=None, step=5)

    save_into(str(tmp_path / "normal"))
    names = sorted(os.path.relpath(p, tmp_path / "normal")
                   for p in glob.glob(str(tmp_path / "normal" / "**" / "*.*"), recursive=True))
    assert [os.path.splitext(n)[1] for n in names] == [".json", ".npz"], names
    target = tmp_path / "blocked"
    os.makedirs(target / names[[".json", ".npz"].index("." + blocked)])
    try:
        save_into(str(target))          # hessext warns (or raises) that the save failed
    except OSError:
        pass
    other = names[1 - [".json", ".npz"].index("." + blocked)]
    assert not os.path.exists(target / other), f"{other} was written although {blocked} could not be"
