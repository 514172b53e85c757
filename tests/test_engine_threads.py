"""The engine under threads, overlapping guards, autograd modes and faulty losses (issue 18), each against
ground truth (dense float64 Hessians of tiny models, or the single-threaded result of the same call).

1. Threads: analyses of one model are serialised (the guard holds the locks of the model's modules), so two
   threads × two operators on one model give the single-threaded numbers bit for bit, never replace a
   ``Parameter`` and leave flags, attention switches and the global RNG as they were — in every one of many
   trials (a race that shows one time in four is missed by 24 trials with probability 0.75^24 ≈ 1e-3).
2. Randomness: the global RNG is never written; train-mode analysis draws the masks a global draw would
   have drawn; a shuffled DataLoader keeps its order; a background analysis never repeats the main
   thread's draws.
3. Guards nest by reference count, in any closing order, also across two roots sharing modules.
4. Autograd modes, detached losses, loss terms on the parameters, error propagation, data errors, complex
   vectors.
"""
from __future__ import annotations

import copy
import gc
import threading
import warnings
from typing import Any, Callable

import _redteam
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from hessext import _state
from hessext.distributed import hessian_operator
from hessext.hvp import HessianOperator, unsupported_by
from hessext.lanczos import lanczos

F64 = torch.float64
CUDA = torch.backends.cuda
SDPA = (CUDA.flash_sdp_enabled, CUDA.mem_efficient_sdp_enabled, CUDA.math_sdp_enabled)


# ------------------------------------------------------------------------------------------------ helpers
def mse(out: Tensor, y: Tensor) -> Tensor:
    return (out - y).pow(2).mean()


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 6), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    model = nn.Sequential(*layers, nn.Linear(6, 2))
    model.train()
    model[1].eval()                    # mixed modes must survive
    return model


def batches(count: int, n: int = 8, seed: int = 10) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)) for _ in range(count)]


def flat_hessian(f: Callable[[dict[str, Tensor]], Tensor], model: nn.Module) -> Tensor:
    """Dense float64 Hessian of ``f(θ)`` over ``model``'s trainable parameters (ParamLayout order)."""
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    base = {k: p.detach().double() for k, p in model.named_parameters()}

    def g(flat: Tensor) -> Tensor:
        theta, o = dict(base), 0
        for k in names:
            theta[k] = flat[o:o + base[k].numel()].view_as(base[k])
            o += base[k].numel()
        return f(theta)
    # the truth's own attention: the math backend (CPU flash attention has no forward-mode AD)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        H = torch.func.hessian(g)(torch.cat([base[k].reshape(-1) for k in names]))
    return 0.5 * (H + H.T)


def model_loss(model: nn.Module, data: list[tuple[Tensor, Tensor]]) -> Callable[[dict], Tensor]:
    """The batch-size weighted mean ``mse`` of a float64 eval-mode copy at θ."""
    m = copy.deepcopy(model).double().eval()
    total = sum(x.shape[0] for x, _ in data)

    def f(theta: dict) -> Tensor:
        return sum(x.shape[0] / total * mse(torch.func.functional_call(m, theta, (x.double(),)), y.double())
                   for x, y in data)
    return f


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def slots(model: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    return [(m, k, p) for m in model.modules() for k, p in m._parameters.items()]


def run_together(fns: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException | None]]:
    """The red-team helper, joined after at most two minutes."""
    return _redteam.run_together(fns, timeout=120.0)


def top(H: Any) -> Tensor:
    return lanczos(H, k=2, max_iter=12, tol=1e-30).eigenvalues


# ================================================================================================ 1. threads
def test_two_threads_two_operators_one_model_equal_single_threaded():
    model, data = mlp(), batches(8)
    truth = torch.linalg.eigvalsh(flat_hessian(model_loss(model, data), model))[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # tol=1e-30 is below float32's reach: fixed steps
        single = top(HessianOperator(model, mse, data))
    assert float(single[-1]) == pytest.approx(float(truth), rel=1e-4)
    v = torch.linspace(-1, 1, 44)
    single_mv = HessianOperator(model, mse, data) @ v
    before = (slots(model), flags(model), [f() for f in SDPA], torch.get_rng_state())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for trial in range(24):
            ops = [HessianOperator(model, mse, data) for _ in range(2)]
            results, errors = run_together([lambda H=ops[0]: top(H), lambda H=ops[1]: H @ v,
                                            lambda H=ops[1]: top(H)][: 2 + trial % 2])
            assert errors == [None] * len(errors), f"trial {trial}: {errors}"
            assert torch.equal(results[0], single), f"trial {trial}: {results[0]} vs {single}"
            if trial % 2 == 0:
                assert torch.equal(results[1], single_mv), f"trial {trial}: matvec differs"
            now = (slots(model), flags(model), [f() for f in SDPA], torch.get_rng_state())
            assert all(a[2] is b[2] for a, b in zip(now[0], before[0])), f"trial {trial}: Parameter replaced"
            assert all(type(getattr(m, k)) is nn.Parameter for m, k, _ in now[0])
            assert now[1] == before[1] and now[2] == before[2], f"trial {trial}: flags/switches changed"
            assert torch.equal(now[3], before[3]), f"trial {trial}: global RNG moved"


def test_forwards_of_one_model_never_overlap_across_threads():
    """The serialisation itself: a loss that counts how many forwards of the model run at once sees one,
    while two threads analyse the model (products, sessions, gradients interleaved)."""
    model, data = mlp(), batches(4)
    inside, peak = [0], [0]
    lock = threading.Lock()

    def loss(out: Tensor, y: Tensor) -> Tensor:
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            for _ in range(50):          # stay inside long enough for the other thread to try
                out = out + 0.0
            return mse(out, y)
        finally:
            with lock:
                inside[0] -= 1

    def work() -> None:
        H = HessianOperator(model, loss, data, cache_graph=False)
        for _ in range(3):
            H @ torch.ones(H.n)
            H.loss_and_grad()
    for _ in range(6):
        _, errors = run_together([work, work])
        assert errors == [None, None]
    assert peak[0] == 1


def test_different_models_in_different_threads_stay_correct():
    models, data = [mlp(seed=s) for s in (0, 1)], [batches(4, seed=20), batches(4, seed=30)]
    v = torch.linspace(-1, 1, 44, dtype=F64)
    truths = [flat_hessian(model_loss(m, d), m) @ v for m, d in zip(models, data)]
    for trial in range(8):
        results, errors = run_together([
            lambda j=j: HessianOperator(models[j], mse, data[j], dtype=F64) @ v for j in range(2)])
        assert errors == [None, None]
        for j in range(2):
            torch.testing.assert_close(results[j], truths[j], rtol=1e-10, atol=1e-12)


def test_guard_registry_forgets_dead_models():
    gc.collect()
    base = len(_state._SHARED)
    model = mlp()
    HessianOperator(model, mse, batches(1)) @ torch.ones(44)
    assert len(_state._SHARED) > base
    del model
    gc.collect()
    assert len(_state._SHARED) == base


# ============================================================================================ 2. randomness
def test_train_mode_masks_are_those_of_a_global_draw_and_global_rng_is_untouched():
    """What the guard used to do (draw from the global RNG, restore it afterwards) and what it does now
    (draw from a private copy) give the same masks; the global state is exactly where it was."""
    model = mlp(dropout=0.4).double()
    x, y = (t.double() for t in batches(1)[0])
    v = torch.linspace(-1, 1, 44, dtype=F64)
    params = [p for p in model.parameters()]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    # the reference: a train-mode graph whose dropout masks come from the global generator
    model.train()
    loss = mse(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g.reshape(-1) * w).sum() for g, w in zip(grads, torch.split(v, [p.numel() for p in params])))
    hv = torch.autograd.grad(dot, params)
    ref = torch.cat([h.reshape(-1) for h in hv])
    model[1].eval()
    torch.set_rng_state(state)
    with pytest.warns(UserWarning, match="eval_mode=False"):
        H = HessianOperator(model, mse, (x, y), eval_mode=False)
    got = H @ v
    assert torch.equal(torch.get_rng_state(), state), "the analysis moved the global RNG"
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    assert flags(model) == [True, True, False, True, True]


def test_shuffled_dataloader_keeps_its_order_and_the_global_rng():
    x, y = batches(1, n=12)[0]
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    model = mlp()
    torch.manual_seed(7)
    state = torch.get_rng_state()
    H = HessianOperator(model, mse, loader, dtype=F64)
    assert torch.equal(torch.get_rng_state(), state)
    expected = list(loader)                       # what iterating from the same global state gives
    truth = flat_hessian(model_loss(model, expected), model)
    v = torch.linspace(-1, 1, 44, dtype=F64)
    torch.testing.assert_close(H @ v, truth @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eval_mode", [True, False], ids=["eval", "train"])
def test_background_analysis_never_repeats_main_thread_draws(eval_mode):
    model = mlp(dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        H = HessianOperator(model, mse, batches(3), eval_mode=eval_mode, cache_graph=False)
    done = threading.Event()
    failure: list[BaseException] = []

    def background() -> None:
        try:
            for _ in range(30):
                H @ torch.ones(H.n)
        except BaseException as e:  # noqa: BLE001
            failure.append(e)
        finally:
            done.set()

    torch.manual_seed(99)
    t = threading.Thread(target=background, daemon=True)
    t.start()
    draws = []
    while not done.is_set() or len(draws) < 500:
        draws.append(int(torch.randint(0, 2 ** 62, (1,))))
    t.join(60)
    assert not failure, failure
    g = torch.Generator().manual_seed(99)
    assert draws == [int(torch.randint(0, 2 ** 62, (1,), generator=g)) for _ in draws]


class SelfAttention(nn.Module):
    """Attention through ``F.scaled_dot_product_attention`` with attention dropout (bool mask)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(4, 12)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, 2, 2).permute(2, 0, 3, 1, 4)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        p = 0.3 if self.training else 0.0
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(h.transpose(1, 2).reshape(x.shape[0], x.shape[1], 4)).mean(1)


def test_attention_goes_to_math_for_analysis_only():
    """Flash attention (CPU) has no double backward: the operator's forwards use the math implementation
    while the process-wide switches stay as the user set them (even with math disabled); train-mode
    attention dropout draws what the math backend would draw from the global generator."""
    model = SelfAttention().double()
    x = torch.randn(3, 5, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    v = torch.linspace(-1, 1, sum(p.numel() for p in model.parameters()), dtype=F64)
    model.eval()
    truth = flat_hessian(model_loss(model, [(x, y)]), model)
    saved = [f() for f in SDPA]
    try:
        CUDA.enable_math_sdp(False)
        H = HessianOperator(model, mse, (x, y))
        torch.testing.assert_close(H @ v, truth @ v, rtol=1e-10, atol=1e-12)
        assert not CUDA.math_sdp_enabled() and [f() for f in SDPA][:2] == saved[:2]
    finally:
        CUDA.enable_math_sdp(saved[2])
    # train mode: the same bits as the math backend drawing from the global generator
    model.train()
    torch.manual_seed(5)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        ref = mse(model(x), y)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    with _state.isolated_forward():
        got = mse(model(x), y)
    assert torch.equal(got, ref) and torch.equal(torch.get_rng_state(), state)


# ================================================================================================ 3. nesting
@pytest.mark.parametrize("order", ["lifo", "fifo"])
@pytest.mark.parametrize("shared", ["same_model", "wrapper"], ids=["same_model", "wrapper_sharing_it"])
def test_overlapping_sessions_closed_in_any_order(order, shared):
    model = mlp()
    other = model if shared == "same_model" else nn.Sequential(model)   # a second root sharing every module
    found = flags(model)
    Ha = HessianOperator(model, mse, batches(1))
    Hb = HessianOperator(other, mse, batches(1), eval_mode=False) if shared == "wrapper" else \
        HessianOperator(other, mse, batches(1))
    sa, sb = Ha.session(), Hb.session()
    sa.__enter__()
    assert not any(flags(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sb.__enter__()
        expect_b = all(flags(model)) if shared == "wrapper" else not any(flags(model))
        assert expect_b
        Hb @ torch.ones(Hb.n)
    first, second = (sa, sb) if order == "fifo" else (sb, sa)
    first.__exit__(None, None, None)
    if shared == "wrapper":   # the one still open has its mode again
        assert flags(model) == [first is sa] * len(found)
    second.__exit__(None, None, None)
    assert flags(model) == found


def test_nested_guard_with_another_mode_then_enclosing_mode_again():
    model = mlp()
    found = flags(model)
    with _state.preserve_model_state(model, eval_mode=True):
        assert not any(flags(model))
        with _state.preserve_model_state(model, eval_mode=False):
            assert all(flags(model))
            with _state.preserve_model_state(model, eval_mode=None):
                assert all(flags(model))
        assert not any(flags(model))
    assert flags(model) == found


# ================================================================================================ 4. autograd
@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference"])
@pytest.mark.parametrize("mode", ["double_backward", "forward_over_reverse"])
def test_products_inside_no_grad_and_inference_mode(grad_mode, mode):
    model, data = mlp(), batches(2)
    truth = flat_hessian(model_loss(model, data), model)
    v = torch.linspace(-1, 1, 44)
    outside = HessianOperator(model, mse, data, mode=mode, dtype=F64)
    with grad_mode():
        inside_data = [(x.clone(), y.clone()) for x, y in data]      # inference tensors in inference mode
        inside = HessianOperator(model, mse, inside_data, mode=mode, dtype=F64)
        for H in (outside, inside):
            torch.testing.assert_close(H @ v.double(), truth @ v.double(), rtol=1e-10, atol=1e-12)
        loss, g = inside.loss_and_grad()
        eig = lanczos(inside, k=1, tol=1e-10).eigenvalues
    assert float(eig[-1]) == pytest.approx(float(torch.linalg.eigvalsh(truth)[-1]), rel=1e-8)
    assert loss == pytest.approx(float(model_loss(model, data)({k: p.detach().double() for k, p in
                                                               model.named_parameters()})), rel=1e-12)
    assert g.abs().max() > 0


def test_operator_on_a_model_built_in_inference_mode():
    """Parameters that are inference tensors are copied into normal tensors for the analysis."""
    with torch.inference_mode():
        model = mlp()
    assert next(model.parameters()).is_inference()
    data = batches(1)
    v = torch.linspace(-1, 1, 44)
    truth = flat_hessian(model_loss(mlp(), data), mlp())
    for dtype in (None, F64):
        H = HessianOperator(model, mse, data, dtype=dtype)
        torch.testing.assert_close((H @ v).double(), truth @ v.double(), rtol=1e-5, atol=1e-6)


def detached(out: Tensor, y: Tensor) -> Tensor:
    return mse(out.detach(), y)


def under_no_grad(out: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return mse(out, y)


@pytest.mark.parametrize("mode", ["auto", "forward_over_reverse"])
@pytest.mark.parametrize("loss", [detached, under_no_grad], ids=["detached", "no_grad"])
def test_loss_without_graph_raises_instead_of_zeros(loss, mode):
    H = HessianOperator(mlp(), loss, batches(1), mode=mode)
    with pytest.raises(ValueError, match="does not require grad.*no_grad.*detached"):
        H @ torch.ones(H.n)
    with pytest.raises(ValueError, match="does not require grad"):
        H.loss_and_grad()


def test_parameters_unused_by_a_batch_still_give_zero_rows():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.a(x)

    model = TwoHeads()
    H = HessianOperator(model, mse, batches(1), dtype=F64)
    y = H @ torch.ones(H.n, dtype=F64)
    assert torch.equal(y[10:], torch.zeros(10, dtype=F64)) and y[:10].abs().max() > 0


WD, PROX = 0.01, 0.05


@pytest.mark.parametrize("term", ["weight_decay", "proximal"])
@pytest.mark.parametrize("dtype", [None, F64], ids=["aliases", "float64_copies"])
def test_every_loss_term_counted(term, dtype):
    """Weight decay over ``model.parameters()`` (read through the module) and a proximal term over a captured
    list of the Parameter objects (a closure): both are in the Hessian, against the dense truth of the full
    loss; with float64 copies of a float32 model too."""
    model, data = mlp(seed=3), batches(2, seed=40)
    captured = list(model.parameters())
    anchors = [p.detach().clone() + 0.1 for p in captured]

    def reg() -> Tensor:
        if term == "weight_decay":
            return WD * sum(p.pow(2).sum() for p in model.parameters())
        return PROX * sum((p - a).pow(2).sum() for p, a in zip(captured, anchors))

    def loss(out: Tensor, y: Tensor) -> Tensor:
        return mse(out, y) + reg()

    base = model_loss(model, data)
    names = [k for k, _ in model.named_parameters()]
    anchors64 = dict(zip(names, [a.double() for a in anchors]))

    def full(theta: dict) -> Tensor:
        if term == "weight_decay":
            return base(theta) + WD * sum(theta[k].pow(2).sum() for k in names)
        return base(theta) + PROX * sum((theta[k] - anchors64[k]).pow(2).sum() for k in names)
    truth = flat_hessian(full, model)
    assert (truth - flat_hessian(base, model)).abs().max() > 0.01
    H = HessianOperator(model, loss, data, dtype=dtype)
    v = torch.linspace(-1, 1, 44, dtype=H.dtype)
    rtol = 1e-10 if dtype == F64 and term == "weight_decay" else 1e-5
    torch.testing.assert_close((H @ v).double(), truth @ v.double(), rtol=rtol, atol=rtol)
    _, g = H.loss_and_grad()
    theta = {k: p.detach().double().requires_grad_(True) for k, p in model.named_parameters()}
    g_ref = torch.cat([t.reshape(-1) for t in torch.autograd.grad(full(theta), list(theta.values()))])
    torch.testing.assert_close(g.double(), g_ref, rtol=rtol, atol=rtol)


def test_forward_over_reverse_counts_module_terms_and_refuses_closure_terms():
    model, data = mlp(seed=3), batches(1)
    captured = list(model.parameters())

    def wd(out: Tensor, y: Tensor) -> Tensor:
        return mse(out, y) + WD * sum(p.pow(2).sum() for p in model.parameters())

    def prox(out: Tensor, y: Tensor) -> Tensor:
        return mse(out, y) + PROX * sum(p.pow(2).sum() for p in captured)

    v = torch.linspace(-1, 1, 44, dtype=F64)
    a = HessianOperator(model, wd, data, dtype=F64, mode="forward_over_reverse") @ v
    b = HessianOperator(model, wd, data, dtype=F64, mode="double_backward") @ v
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    H = HessianOperator(model, prox, data, dtype=F64, mode="forward_over_reverse")
    with pytest.raises(ValueError, match="closure.*mode='double_backward'"):
        H @ v


# ================================================================================================ errors
class Boom:
    def __init__(self, armed: bool = True) -> None:
        self.armed = armed

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        if self.armed:
            self.armed = False
            raise RuntimeError("boom")
        return mse(out, y)


@pytest.mark.parametrize("mode", ["auto", "double_backward", "forward_over_reverse"])
def test_users_runtime_error_propagates_unchanged(mode):
    model, data = mlp(), batches(1)
    truth = flat_hessian(model_loss(model, data), model)
    H = HessianOperator(model, Boom(), data, mode=mode, dtype=F64)
    V = torch.linspace(-1, 1, 88, dtype=F64).reshape(44, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError) as info:
            H @ V
    assert type(info.value) is RuntimeError and str(info.value) == "boom"
    assert not [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
    batched = H.batched
    torch.testing.assert_close(H @ V, truth @ V, rtol=1e-10, atol=1e-12)
    assert H.mode_used == ("double_backward" if mode == "auto" else mode) and H.batched == batched
    assert H.fallback_reason is None


def test_users_error_inside_a_vmapped_block_does_not_switch_to_a_column_loop():
    model, data = mlp(), batches(1)
    loss = Boom(armed=False)
    H = HessianOperator(model, loss, data, mode="forward_over_reverse", dtype=F64)
    V = torch.eye(44, dtype=F64)[:, :3]
    H @ V
    loss.armed = True
    with pytest.raises(RuntimeError, match="^boom$"):
        H @ V
    assert H.batched


def test_known_limitations_are_told_apart_from_user_errors():
    w = torch.randn(3, requires_grad=True)
    x, y = torch.randn(4, 3), torch.randn(4)
    try:
        torch.func.jvp(torch.func.grad(lambda w: nn.MSELoss()(x @ w, y)), (w.detach(),), (torch.ones(3),))
    except RuntimeError as e:
        assert unsupported_by("forward_over_reverse", e) and not unsupported_by("double_backward", e)
    else:   # a later torch fixed it: then the documented limitation is gone too
        pass
    assert not unsupported_by("double_backward", RuntimeError("boom"))
    assert not unsupported_by("forward_over_reverse", RuntimeError("The size of tensor a (16) must match"))
    assert not unsupported_by("batching", torch.OutOfMemoryError("vmap: out of memory"))
    missing = RuntimeError("derivative for aten::foo_backward is not implemented")
    assert unsupported_by("double_backward", missing)


def test_mse_loss_with_forward_over_reverse_says_what_to_use():
    model, data = mlp(), batches(1)
    H = HessianOperator(model, nn.MSELoss(), data, mode="forward_over_reverse")
    try:
        H @ torch.ones(H.n)
    except RuntimeError as e:
        assert "ZeroTensors" in str(e) and "mode='double_backward'" in str(e)
    auto = HessianOperator(model, nn.MSELoss(), data)
    auto @ torch.ones(auto.n)
    assert auto.mode_used == "double_backward"


def lm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(7, 3), nn.Linear(3, 7))


@pytest.mark.parametrize("case", ["pair_sizes", "bool_ids", "sequence_first_labels", "seq2seq_1d_labels"])
def test_data_errors_are_named(case):
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 7, (3, 5), generator=g), torch.randint(0, 7, (3, 5), generator=g)
    calls = {
        "pair_sizes": (lambda: HessianOperator(mlp(), mse, [batches(1, n=8)[0], (torch.randn(16, 4),
                                                                               torch.randn(8, 2))]),
                       ValueError, r"batch 1: inputs and targets have different numbers of samples.*"
                                   r"\[16, 4\].*\[8, 2\]"),
        "bool_ids": (lambda: HessianOperator(lm(), None, {"input_ids": ids > 3, "labels": labels}),
                     TypeError, r"batch 0: batch\['input_ids'\] must be an integer tensor.*torch.bool"),
        "sequence_first_labels": (lambda: HessianOperator(lm(), None, {"input_ids": ids, "labels": labels.T}),
                                  ValueError, r"batch 0: labels of shape \[5, 3\] do not match input_ids of "
                                              r"shape \[3, 5\]"),
        "seq2seq_1d_labels": (lambda: HessianOperator(lm(), None, {"input_ids": ids, "labels": labels[0]},
                                                      model_type="encoder_decoder"),
                              ValueError, r"labels of shape \[5\] do not fit input_ids of shape \[3, 5\]"),
    }
    fn, exc, pattern = calls[case]
    with pytest.raises(exc, match=pattern):
        fn()


def test_complex_vectors_are_refused_naming_the_dtype():
    H = HessianOperator(mlp(), mse, batches(1))
    z = torch.complex(torch.ones(44), torch.ones(44))
    with pytest.raises(TypeError, match="complex64"):
        H @ z
    with pytest.raises(TypeError, match="complex128"):
        H.matmat(torch.ones(44, 2, dtype=torch.complex128))


def test_factory_builds_plain_operators_outside_data_parallel():
    model, data = mlp(), batches(1)
    H = hessian_operator(model, mse, data, dtype=F64)
    assert type(H) is HessianOperator and H.dtype == F64
