"""HessianOperator against dense float64 Hessians of tiny models: modes, batches, subsets, state."""
from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _models import (  # noqa: E402
    cnn_batch,
    dense_hessian,
    mlp_batch,
    tiny_cnn,
    tiny_mlp,
    tiny_transformer,
    transformer_batch,
    transformer_loss,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hessext.data import make_batch_loss, normalize_data, shift_right  # noqa: E402
from hessext.hvp import DoubleBackward, HessianOperator, LocalMean, unsupported_by  # noqa: E402

F64 = torch.float64
IN_PROJ = "layer.self_attn.in_proj_weight"
MODES = ["auto", "double_backward", "forward_over_reverse"]


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Written out: nn.MSELoss's backward has no working forward-mode AD in torch 2.13 ("ZeroTensors are
    # immutable"), so forward-over-reverse needs this form; double backward works with both.
    return ((out - y) ** 2).mean()


CASES = {
    "mlp": (tiny_mlp, mlp_batch, mse),
    "cnn": (tiny_cnn, cnn_batch, nn.CrossEntropyLoss()),
    "transformer": (tiny_transformer, transformer_batch, transformer_loss),
}
_DENSE: dict = {}


def case(name: str):
    make_model, make_batch, loss = CASES[name]
    model, batch = make_model(), make_batch()
    key = (name, "single")
    if key not in _DENSE:
        _DENSE[key] = dense_hessian(model, loss, [batch])
    return model, batch, loss, _DENSE[key]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    scale = float(expected.abs().max())
    err = float((actual.to(expected.dtype) - expected).abs().max())
    assert err <= rtol * max(scale, 1e-30), f"max error {err:.3e} vs scale {scale:.3e} (rtol {rtol})"


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(CASES))
def test_hvp_matches_dense_hessian(name, mode):
    model, batch, loss, H = case(name)
    op = HessianOperator(model, loss, batch, mode=mode, dtype=F64)
    assert op.shape == H.shape and op.dtype == F64
    v, X = rand(op.n, seed=1), rand(op.n, 3, seed=2)
    assert_close(op @ v, H @ v, 1e-10)
    assert_close(op @ X, H @ X, 1e-10)
    assert op.batched
    assert op.num_matvecs == 4
    assert op.mode_used == ("double_backward" if mode == "auto" else mode)


@pytest.mark.parametrize("name", list(CASES))
def test_float32_within_1e5(name):
    model, batch, loss, H = case(name)
    op = HessianOperator(model, loss, batch)  # the float32 model as it is
    assert op.dtype == torch.float32
    X = rand(op.n, 2, seed=3, dtype=torch.float32)
    assert_close(op @ X, H @ X.double(), 1e-5)


def test_to_dense_symmetric_and_to_scipy():
    model, batch, loss, H = case("cnn")
    op = HessianOperator(model, loss, batch, dtype=F64)
    D = op.to_dense()
    assert torch.equal(D, D.T) or float((D - D.T).abs().max()) <= 1e-12 * float(D.abs().max())
    assert_close(D, H, 1e-10)
    x = np.random.default_rng(0).standard_normal(op.n)
    np.testing.assert_allclose(op.to_scipy().matvec(x), H.numpy() @ x, rtol=1e-10,
                               atol=1e-10 * float(H.abs().max()))


def test_nn_mseloss_double_backward():
    model, batch, _, H = case("mlp")
    op = HessianOperator(model, nn.MSELoss(), batch, dtype=F64)
    assert_close(op @ rand(op.n, 2), H @ rand(op.n, 2), 1e-10)


def test_auto_falls_back_to_forward_over_reverse(monkeypatch):
    def no_double_backward(self, i, Vs, use_cache=True):
        raise RuntimeError("derivative for aten::fake_backward is not implemented")

    monkeypatch.setattr(DoubleBackward, "hvp", no_double_backward)
    model, batch, loss, H = case("transformer")
    op = HessianOperator(model, loss, batch, dtype=F64)
    with pytest.warns(RuntimeWarning, match="forward-over-reverse"):
        assert op.mode_used == "forward_over_reverse"
    assert "fake_backward" in op.fallback_reason
    assert_close(op @ rand(op.n, 2), H @ rand(op.n, 2), 1e-10)
    bad = HessianOperator(model, loss, batch, dtype=F64, mode="double_backward")
    with pytest.raises(RuntimeError, match="mode='double_backward' failed on batch 0.*forward_over_reverse"):
        bad @ rand(bad.n)


def test_math_attention_is_what_makes_attention_twice_differentiable():
    """CPU flash attention (what torch picks for this transformer) has no double backward; the operator
    routes attention to the math implementation for its own forwards only: the process-wide backend switches
    are never touched."""
    model, batch, loss, H = case("transformer")
    out = loss(model(batch[0]), batch[1])
    (g,) = torch.autograd.grad(out, model.layer.self_attn.in_proj_weight, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for .* is not implemented") as info:
        torch.autograd.grad(g.sum(), model.layer.self_attn.in_proj_weight)
    assert unsupported_by("double_backward", info.value)
    cuda = torch.backends.cuda
    flags = (cuda.flash_sdp_enabled, cuda.mem_efficient_sdp_enabled, cuda.math_sdp_enabled)
    switches = [f() for f in flags]
    op = HessianOperator(model, loss, batch, dtype=F64)
    with op.session():
        assert [f() for f in flags] == switches
        assert_close(op @ rand(op.n), H @ rand(op.n), 1e-10)
    assert op.mode_used == "double_backward"


# ---------------------------------------------------------------------------------------------- batches
def mlp_batches():
    return [mlp_batch(seed=1, n=8), mlp_batch(seed=2, n=3), mlp_batch(seed=3, n=5)]


@pytest.mark.parametrize("mode,cache,max_cached", [
    ("double_backward", True, 4), ("double_backward", True, 1), ("double_backward", False, 4),
    ("forward_over_reverse", True, 4)])
def test_batch_list_is_weighted_by_batch_size(mode, cache, max_cached):
    model, batches = tiny_mlp(), mlp_batches()
    H = dense_hessian(model, mse, batches)
    op = HessianOperator(model, mse, batches, mode=mode, dtype=F64, cache_graph=cache)
    op.max_cached_graphs = max_cached
    X = rand(op.n, 2)
    for _ in range(2):  # second pass through the cache
        assert_close(op @ X, H @ X, 1e-10)
    graphs = op._strategies["double_backward"].graphs
    assert len(graphs) == (0 if mode != "double_backward" or not cache else min(3, max_cached))
    # the plain (unweighted) mean differs: the weighting matters
    H_plain = dense_hessian(model, mse, batches, weights=[1.0, 1.0, 1.0])
    assert float((H_plain - H).abs().max()) > 1e-3 * float(H.abs().max())


def test_dataloader_with_num_batches():
    model = tiny_mlp()
    x, y = mlp_batch(seed=4, n=14)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)
    H3 = dense_hessian(model, mse, [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:12], y[8:12])])
    op = HessianOperator(model, mse, loader, num_batches=3, dtype=F64)
    assert op.num_batches == 3
    assert_close(op @ rand(op.n), H3 @ rand(op.n), 1e-10)
    H_all = dense_hessian(model, mse, [(x, y)])  # 4+4+4+2 samples, weighted = full-batch Hessian
    with pytest.warns(UserWarning, match="only 4 batch"):
        op_all = HessianOperator(model, mse, loader, num_batches=10, dtype=F64)
    assert op_all.num_batches == 4
    assert_close(op_all @ rand(op.n), H_all @ rand(op.n), 1e-10)


def test_bare_tensor_batch_api_a():
    model = tiny_mlp()
    x, y = mlp_batch()

    def loss_of_output(out):  # API A: the loss sees only the model output
        return mse(out, y)

    H = dense_hessian(model, lambda out, _: loss_of_output(out), [(x, None)])
    op = HessianOperator(model, loss_of_output, x, dtype=F64)
    assert_close(op @ rand(op.n), H @ rand(op.n), 1e-10)


class MaskedLM(nn.Module):
    """HF-like decoder-only LM (embedding, tanh, head; 49 parameters):
    forward(input_ids, attention_mask=None) -> object with .logits."""

    def __init__(self, vocab: int = 7, d: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = torch.tanh(self.embed(input_ids))
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return SimpleNamespace(logits=self.head(h))


class MaskBaked(nn.Module):
    def __init__(self, lm: MaskedLM, mask: torch.Tensor) -> None:
        super().__init__()
        self.lm, self.mask = lm, mask

    def forward(self, ids):
        return self.lm(ids, attention_mask=self.mask).logits


def lm_batch():
    ids, labels = transformer_batch()
    labels = labels.clone()
    labels[0, 1] = -100
    labels[2, 3] = -100
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    return ids, labels, mask


def test_dict_batch_decoder_only_with_mask_and_ignored_labels():
    lm = MaskedLM()
    ids, labels, mask = lm_batch()
    H = dense_hessian(MaskBaked(lm, mask), transformer_loss, [(ids, labels)])  # F.cross_entropy ignores -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    op = HessianOperator(lm, nn.CrossEntropyLoss(), batch, model_type="decoder_only", dtype=F64)
    assert_close(op @ rand(op.n, 2), H @ rand(op.n, 2), 1e-10)
    # the mask is actually used: without it the product differs
    nomask = HessianOperator(lm, None, {"input_ids": ids, "labels": labels}, dtype=F64)
    v = rand(op.n)
    assert float((nomask @ v - H @ v).abs().max()) > 1e-6


def test_dict_batch_respects_criterion_ignore_index_without_mutating_it():
    model = MaskedLM()
    ids, labels = transformer_batch()
    crit = nn.CrossEntropyLoss(ignore_index=3)
    masked = labels.masked_fill(labels == 3, -100)
    assert bool((labels == 3).any())
    H = dense_hessian(MaskBaked(model, None), transformer_loss, [(ids, masked)])
    op = HessianOperator(model, crit, {"input_ids": ids, "labels": labels}, dtype=F64)
    assert_close(op @ rand(op.n), H @ rand(op.n), 1e-10)
    assert crit.ignore_index == 3


def test_pad_idx_via_make_batch_loss():
    model = MaskedLM()
    ids, labels = transformer_batch()
    pad = int(labels[0, 0])
    masked = labels.masked_fill(labels == pad, -100)
    H = dense_hessian(MaskBaked(model, None), transformer_loss, [(ids, masked)])
    custom = make_batch_loss(nn.CrossEntropyLoss(), model, pad_idx=pad)
    op = HessianOperator(model, None, [{"input_ids": ids, "labels": labels}], batch_loss=custom, dtype=F64)
    assert_close(op @ rand(op.n), H @ rand(op.n), 1e-10)


class TinySeq2Seq(nn.Module):
    def __init__(self, vocab: int = 7, d: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.src = nn.Embedding(vocab, d)
        self.tgt = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, src, tgt=None):
        if tgt is None:  # dense_hessian passes one input: a (src, tgt) pair
            src, tgt = src
        h = torch.tanh(self.src(src).mean(1, keepdim=True) + self.tgt(tgt))
        return self.head(h)


def test_dict_batch_encoder_decoder_shifts_labels_right():
    model = TinySeq2Seq()
    src, labels = transformer_batch(seq=4)
    labels = labels.clone()
    labels[1, 2] = -100
    dec = shift_right(labels, 0)
    assert torch.equal(dec[:, 1:], labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0))
    assert bool((dec[:, 0] == 0).all())
    H = dense_hessian(model, transformer_loss, [((src, dec), labels)])
    op = HessianOperator(model, nn.CrossEntropyLoss(), {"input_ids": src, "labels": labels},
                         model_type="encoder_decoder", dtype=F64)
    assert_close(op @ rand(op.n), H @ rand(op.n), 1e-10)
    explicit_dec = torch.randint(0, 7, labels.shape, generator=torch.Generator().manual_seed(5))
    H2 = dense_hessian(model, transformer_loss, [((src, explicit_dec), labels)])
    batch2 = {"input_ids": src, "labels": labels, "decoder_input_ids": explicit_dec}
    op2 = HessianOperator(model, None, batch2, model_type="encoder_decoder", dtype=F64)
    assert_close(op2 @ rand(op.n), H2 @ rand(op.n), 1e-10)


def test_dict_batch_errors():
    model = tiny_transformer()
    ids, labels = transformer_batch()
    with pytest.raises(ValueError, match=r"batch dict has keys \['input_ids'\]; expected 'labels'"):
        HessianOperator(model, None, {"input_ids": ids}) @ torch.ones(237)
    with pytest.raises(ValueError, match=r"labels out of range \[0, 7\)"):
        HessianOperator(model, None, {"input_ids": ids, "labels": labels + 7}) @ torch.ones(237)
    with pytest.raises(ValueError, match="model_type"):
        HessianOperator(model, None, {"input_ids": ids, "labels": labels}, model_type="gpt")


def test_custom_batch_loss_overrides():
    model, batch, loss, H = case("mlp")
    seen = []

    def batch_loss(model_call, b):
        seen.append(b["tag"])
        return loss(model_call(b["x"]), b["y"]), 2.0

    data = [{"x": batch[0], "y": batch[1], "tag": "a"}]
    op = HessianOperator(model, None, data, batch_loss=batch_loss, dtype=F64)
    assert_close(op @ rand(op.n), H @ rand(op.n), 1e-10)
    assert seen and set(seen) == {"a"}


# ---------------------------------------------------------------------------------------------- subsets
def test_parameter_subsets_by_name_parameter_and_slice():
    model, batch, loss, H = case("transformer")
    names = [IN_PROJ, "head.weight"]
    H_sub = dense_hessian(model, loss, [batch], names=names)
    op = HessianOperator(model, loss, batch, params=list(reversed(names)), dtype=F64)
    assert op.layout.names == names
    assert_close(op @ rand(op.n, 2), H_sub @ rand(op.n, 2), 1e-10)
    op_p = HessianOperator(model, loss, batch, dtype=F64,
                           params=[model.head.weight, model.layer.self_attn.in_proj_weight])
    assert op_p.layout.names == names
    # the query third of the packed in_proj_weight, through restrict on the full operator
    full = HessianOperator(model, loss, batch, dtype=F64)
    d = model.layer.self_attn.embed_dim
    idx = full.layout.indices([(IN_PROJ, slice(0, d)), "head.bias"])
    sub = full.restrict(idx)
    assert_close(sub.to_dense(), H[idx][:, idx], 1e-10)


# ------------------------------------------------------------------------------------------ loss/grad etc.
def test_loss_and_grad():
    model, batches = tiny_mlp(), mlp_batches()
    m64 = copy.deepcopy(model).double()
    w = torch.tensor([8.0, 3.0, 5.0], dtype=F64)
    with torch.no_grad():
        total = sum(wi * mse(m64(x.double()), y.double()) for wi, (x, y) in zip(w, batches)) / w.sum()
    def mean_loss(p):
        return sum(wi * mse(torch.func.functional_call(m64, p, (x.double(),)), y.double())
                   for wi, (x, y) in zip(w, batches)) / w.sum()

    grads = torch.func.grad(mean_loss)(dict(m64.named_parameters()))
    grads = [g.detach() for g in grads.values()]
    g_ref = torch.cat([g.reshape(-1) for g in grads])
    for mode in ["double_backward", "forward_over_reverse"]:
        op = HessianOperator(model, mse, batches, dtype=F64, mode=mode)
        op.max_cached_graphs = 2  # cached and uncached batches
        op @ rand(op.n)
        loss, g = op.loss_and_grad()
        assert abs(loss - total.item()) <= 1e-12 * abs(total.item())
        assert_close(g, g_ref, 1e-12)
        assert g.shape == (op.n,) and g.dtype == F64


def test_reducer_is_used_by_matvec_and_loss_and_grad():
    class Halved(LocalMean):
        local = False    # no single-batch shortcut: every product goes through reduce

        def reduce(self, total, weight_sum):
            return super().reduce(total, 2 * weight_sum)

    model, batch, loss, H = case("mlp")
    op = HessianOperator(model, loss, batch, dtype=F64)
    half = HessianOperator(model, loss, batch, dtype=F64, reducer=Halved())
    v = rand(op.n)
    assert_close(half @ v, 0.5 * (op @ v), 1e-14)
    (l1, g1), (l2, g2) = op.loss_and_grad(), half.loss_and_grad()
    assert abs(l2 - 0.5 * l1) < 1e-14 and torch.allclose(g2, 0.5 * g1, rtol=1e-14, atol=0)


def test_cached_graph_follows_in_place_parameter_updates():
    model, batch, loss, H = case("mlp")
    model = copy.deepcopy(model)
    op = HessianOperator(model, loss, batch)  # float32, aliases the parameters
    v = rand(op.n, dtype=torch.float32)
    op @ v
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    H_new = dense_hessian(model, loss, [batch])
    assert_close(op @ v, H_new @ v.double(), 1e-5)
    assert float((H_new - H).abs().max()) > 1e-3


def test_determinism_check():
    model, batch, loss, _ = case("cnn")
    assert HessianOperator(model, loss, batch, dtype=F64).determinism_check() <= 1e-14
    torch.manual_seed(0)
    dropout_model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 2))
    x, y = mlp_batch()
    assert HessianOperator(dropout_model, mse, (x, y)).determinism_check() == 0.0
    with pytest.warns(UserWarning, match="stochastic"):
        op = HessianOperator(dropout_model, mse, (x, y), eval_mode=False)
    assert op.determinism_check() > 1e-3


def test_progress_bar_runs(capsys):
    model, batches = tiny_mlp(), mlp_batches()
    op = HessianOperator(model, mse, batches, dtype=F64, progress=True)
    op @ rand(op.n)
    assert "HVP batches" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ state contract
class Boom(Exception):
    pass


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        "tensors": [(t, t.clone(), t._version) for t in list(model.parameters()) + list(model.buffers())],
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(model: nn.Module, snap: dict) -> None:
    assert [m.training for m in model.modules()] == snap["modes"]
    assert [p.requires_grad for p in model.parameters()] == snap["requires_grad"]
    for p, (g, values) in zip(model.parameters(), snap["grads"]):
        assert p.grad is g
        if g is not None:
            assert torch.equal(g, values)
    for t, values, version in snap["tensors"]:
        assert torch.equal(t, values) and t._version == version
    assert torch.equal(torch.get_rng_state(), snap["rng"])


def prepared_cnn() -> nn.Module:
    model = tiny_cnn()
    model.train()
    model.conv.eval()  # mixed flags must survive
    model.head.bias.requires_grad_(False)
    model.conv.weight.grad = torch.full_like(model.conv.weight, 0.25)
    return model


@pytest.mark.parametrize("eval_mode", [True, False])
def test_state_untouched_after_success(eval_mode):
    model = prepared_cnn()
    snap = snapshot(model)
    rm = model.bn.running_mean.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        op = HessianOperator(model, nn.CrossEntropyLoss(), [cnn_batch(1), cnn_batch(2)], eval_mode=eval_mode)
    assert "head.bias" not in op.layout.names
    op @ rand(op.n, dtype=torch.float32)
    op @ rand(op.n, 2, dtype=torch.float32)
    op.loss_and_grad()
    op.determinism_check()
    if not eval_mode:  # train-mode BatchNorm (batch statistics) is exact too; eval mode is covered above
        H = dense_hessian(model, nn.CrossEntropyLoss(), [cnn_batch(1), cnn_batch(2)], names=op.layout.names,
                          eval_mode=False)
        v = rand(op.n)
        assert_close(op @ v.float(), H @ v, 1e-5)
    assert_unchanged(model, snap)
    assert torch.equal(model.bn.running_mean, rm) and int(model.bn.num_batches_tracked) == 0
    assert model.head.bias.grad is None


@pytest.mark.parametrize("mode", ["double_backward", "forward_over_reverse"])
@pytest.mark.parametrize("eval_mode", [True, False])
def test_state_restored_after_exception_inside_hvp(mode, eval_mode):
    model = prepared_cnn()
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        torch.rand(3)  # a draw inside the analysis goes to its private generator, not the global one
        if len(calls) == 3:
            raise Boom("third call")
        return nn.functional.cross_entropy(out, y)

    snap = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        op = HessianOperator(model, loss_fn, [cnn_batch(1), cnn_batch(2), cnn_batch(3)], mode=mode,
                             eval_mode=eval_mode)
    with pytest.raises(Boom):
        op @ rand(op.n, 2, dtype=torch.float32)
    assert len(calls) == 3
    assert_unchanged(model, snap)


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    model, batch, loss, _ = case("mlp")
    with pytest.raises(TypeError, match="nn.Module"):
        HessianOperator(lambda x: x, loss, batch)
    with pytest.raises(ValueError, match="no trainable parameters"):
        HessianOperator(copy.deepcopy(model).requires_grad_(False), loss, batch)
    with pytest.raises(ValueError, match="params is empty"):
        HessianOperator(model, loss, batch, params=[])
    with pytest.raises(ValueError, match="close.*0.weight"):
        HessianOperator(model, loss, batch, params=["0.weigth"])
    with pytest.raises(ValueError, match="not a parameter"):
        HessianOperator(model, loss, batch, params=[nn.Parameter(torch.zeros(2))])
    auto = HessianOperator(copy.deepcopy(model).half(), loss, batch)      # half models: float32 copies
    assert auto.dtype == torch.float32 and auto.evaluator.upcast
    half = HessianOperator(copy.deepcopy(model).half(), loss, batch, dtype=torch.float32)  # converted copies
    assert half.dtype == torch.float32 and torch.isfinite(half @ torch.ones(half.n)).all()
    int_model = copy.deepcopy(model)
    int_model.register_parameter("steps", nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False))
    with pytest.raises(TypeError, match=r"'steps'.*dtype=torch.float32"):
        HessianOperator(int_model, loss, batch, params=["steps"])
    with pytest.raises(ValueError, match="mode"):
        HessianOperator(model, loss, batch, mode="fast")
    with pytest.raises(ValueError, match="dtype"):
        HessianOperator(model, loss, batch, dtype=torch.float16)
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, loss, [])
    with pytest.raises(ValueError, match="batch 0 is empty"):
        HessianOperator(model, loss, (batch[0][:0], batch[1][:0]))
    meta = (batch[0].to("meta"), batch[1].to("meta"))
    with pytest.raises(ValueError, match="meta.*cpu"):
        HessianOperator(model, loss, meta)
    with pytest.raises(ValueError, match="num_batches"):
        normalize_data([batch], num_batches=0)


def test_numerical_errors():
    model, batch, loss, _ = case("mlp")
    with pytest.raises(ValueError, match=r"scalar.*\[8, 2\]"):
        HessianOperator(model, lambda out, y: (out - y) ** 2, batch) @ torch.ones(44)
    nan_batches = [batch, (batch[0] * float("nan"), batch[1])]
    with pytest.raises(RuntimeError, match="loss is nan on batch 1"):
        HessianOperator(model, loss, nan_batches) @ torch.ones(44)

    def nan_hessian(out, y):  # finite loss whose derivatives are 0/0 = NaN: sqrt at 0
        return loss(out, y) + torch.sqrt(((out - out.detach()) ** 2).sum())

    for mode in ["double_backward", "forward_over_reverse"]:
        op = HessianOperator(model, nan_hessian, batch, mode=mode)
        with pytest.raises(RuntimeError, match=r"NaN/Inf on batch 0 in parameter\(s\) \['0.weight'"):
            op @ torch.ones(op.n)


def test_dtype_and_device_copies_leave_the_model_alone():
    model, batch, loss, H = case("mlp")
    before = [p.detach().clone() for p in model.parameters()]
    op = HessianOperator(model, loss, batch, dtype=F64, device="cpu")
    leaves = op.evaluator.leaves.values()
    assert all(leaf.data_ptr() != p.data_ptr() for leaf, p in zip(leaves, model.parameters()))
    assert_close(op @ rand(op.n), H @ rand(op.n), 1e-10)
    assert all(p.dtype == torch.float32 and torch.equal(p, b) for p, b in zip(model.parameters(), before))
    alias = HessianOperator(model, loss, batch)  # no conversion: the leaves share the parameters' storage
    leaves = alias.evaluator.leaves.values()
    assert all(leaf.data_ptr() == p.data_ptr() for leaf, p in zip(leaves, model.parameters()))


class _Float32Gradient(torch.autograd.Function):
    """Identity whose backward fails the way torch's own kernels do on a dtype mismatch (as mse_loss between
    float64 and float32 tensors does before torch 2.13), whatever this torch's version (usable under
    torch.func: setup_context and a forward derivative)."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def jvp(ctx, t):
        return t

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("Found dtype Float but expected Double")


class _SquareWithBadSecond(torch.autograd.Function):
    """x²: its backward works, the backward of that backward (an HVP's second pass) fails as above."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * _Float32Gradient.apply(x) * g


@pytest.mark.parametrize("where", ["gradient", "second backward", "forward over reverse"])
def test_dtype_mismatch_inside_torch_is_explained(where):
    """torch's dtype-mismatch error from a backward through the user's loss is explained once (a
    LossDtypeError caused by torch's error), in the gradient, in an HVP's second backward and under
    torch.func; other errors pass through unchanged. (The GGN/Fisher operators differentiate only the model:
    their output Hessians are closed forms.)"""
    from hessext.evaluator import LossDtypeError

    model, batch, loss, _ = case("mlp")
    if where == "second backward":  # the gradient works; its own backward (the HVP) fails
        def bad(out, y):
            return _SquareWithBadSecond.apply(out - y).mean()
    else:
        def bad(out, y):
            return loss(_Float32Gradient.apply(out), y)
    mode = "forward_over_reverse" if where == "forward over reverse" else "double_backward"
    op = HessianOperator(model, bad, batch, dtype=F64, mode=mode)
    with pytest.raises(LossDtypeError, match=r"failed inside torch .*\(Found dtype Float but expected "
                                             r"Double\).*Cast them to torch\.float64") as info:
        op @ torch.ones(op.n, dtype=F64)
    assert type(info.value.__cause__) is RuntimeError  # torch's own error, explained once
    assert str(info.value).count("failed inside torch") == 1
    other = HessianOperator(model, lambda out, y: loss(out, y) + torch.log(-out.abs().sum()), batch)
    with pytest.raises(RuntimeError, match="loss is nan") as info:  # other errors pass through unchanged
        other @ torch.ones(other.n)
    assert not isinstance(info.value, LossDtypeError)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_copies_match_cpu():
    model, batch, loss, H = case("transformer")
    op = HessianOperator(model, loss, batch, dtype=F64, device="cuda")
    assert op.device.type == "cuda"
    X = rand(op.n, 2)
    Y = op @ X  # CPU in, CPU out; computed on the GPU
    assert Y.device.type == "cpu"
    assert_close(Y, H @ X, 1e-10)
    assert next(model.parameters()).device.type == "cpu"


class WritesItsBuffer(nn.Module):
    """A pathological model that writes a buffer in place in forward (even in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.unused = nn.Parameter(torch.ones(3))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return self.lin(x)


def test_guard_reports_in_place_writes_and_unused_parameters_give_zero(monkeypatch):
    model = WritesItsBuffer()
    x, y = mlp_batch()
    alias = HessianOperator(model, mse, (x, y))  # buffers aliased: the model's own write is reported
    with pytest.warns(RuntimeWarning, match=r"\['calls'\] were modified in place"):
        alias @ rand(alias.n, dtype=torch.float32)
    calls = model.calls.clone()
    op = HessianOperator(model, mse, (x, y), dtype=F64)  # converted copies: the user's buffer is safe
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        Y = op @ rand(op.n, 2)
    assert torch.equal(model.calls, calls)
    a, b = op.layout.range_of("unused")
    assert torch.equal(Y[a:b], torch.zeros(b - a, 2, dtype=F64))
    assert float(torch.cat([Y[:a], Y[b:]]).abs().max()) > 0
    monkeypatch.setenv("HESSEXT_DEBUG", "1")
    strict = HessianOperator(model, mse, (x, y), mode="double_backward")
    with pytest.raises(RuntimeError, match="modified in place"):
        strict @ rand(strict.n, dtype=torch.float32)
    # torch.func refuses the in-place write to a captured buffer outright
    fwd = HessianOperator(model, mse, (x, y), mode="forward_over_reverse")
    with pytest.raises(RuntimeError, match="failed on batch 0"):
        fwd @ rand(fwd.n, dtype=torch.float32)


def test_nan_hvp_on_a_later_batch_is_located():
    """Several batches: the finiteness test (one GEMV with a zero vector per batch) names the batch and the
    parameters whose block is NaN/Inf."""
    model, batch, loss, _ = case("mlp")
    far = (batch[0], batch[1] + 100.0)

    def sometimes_nan(out, y):   # NaN second derivatives (sqrt at 0) on the batch with large targets only
        extra = torch.sqrt(((out - out.detach()) ** 2).sum()) if float(y.mean()) > 50 else 0.0
        return loss(out, y) + extra

    op = HessianOperator(model, sometimes_nan, [batch, far], mode="double_backward")
    with pytest.raises(RuntimeError, match=r"NaN/Inf on batch 1 in parameter\(s\) \['0.weight'"):
        op @ torch.ones(op.n, 3)
    # a finite product is exactly what the dense Hessian gives, also through the multi-batch path
    op2 = HessianOperator(model, loss, [batch, far], dtype=F64)
    H = dense_hessian(model, loss, [batch, far])
    V = rand(op2.n, 3)
    assert_close(op2 @ V, H @ V, 1e-10)


def test_session_holds_the_guard_once_for_a_whole_algorithm(monkeypatch):
    """lanczos / trace estimators hold the model-state guard once per run (one snapshot, not one per product:
    the products' own guards nest in it and only count); the model is restored when the run ends and when
    it raises."""
    from hessext import _state
    from hessext.lanczos import lanczos
    from hessext.trace import hutchinson

    model, batch, loss, _ = case("mlp")
    model.train()
    entered = []
    real = _state._open_root

    def counting(*a, **kw):
        entered.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(_state, "_open_root", counting)
    op = HessianOperator(model, loss, batch)
    res = lanczos(op, k=2, max_iter=20, tol=1e-30)
    assert res.num_matvecs >= 20 and len(entered) == 1
    assert model.training                                     # back in train mode after the run
    entered.clear()
    hutchinson(op, 12, block_size=1)
    assert len(entered) == 1
    # without a session every product is guarded on its own
    entered.clear()
    op @ torch.ones(op.n)
    op @ torch.ones(op.n)
    assert len(entered) == 2
    # an exception inside the session still restores the model
    with pytest.raises(KeyError):
        with op.session():
            assert not model.training
            op @ torch.ones(op.n)
            raise KeyError("boom")
    assert model.training
