"""Half-precision (bfloat16 / float16) models through every public entry point.

With ``dtype=None`` a half model is analysed on float32 copies of its parameters, buffers and floating inputs:
the Hessian analysed is the one of the *float32-upcast model* (the same weights, exactly representable in
float32, run in float32 arithmetic). Ground truth: the dense float64 Hessian of that upcast model
(``_models.dense_hessian`` works on a float64 copy: bf16/fp16 → float64 is exact too). The user's model keeps
its dtype and is bitwise unchanged.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _models import dense_hessian, mlp_batch, tiny_mlp, tiny_transformer, transformer_batch, transformer_loss
from torch import nn

from hessext.analysis import HessianAnalyzer, HessianConfig, get_hessian_eigenvectors
from hessext.compat import ModelWrapper, hessian_trace, min_max_hessian_eigs
from hessext.evaluator import FunctionalEvaluator
from hessext.hvp import HessianOperator
from hessext.lanczos import lanczos

F64 = torch.float64
HALF = [torch.bfloat16, torch.float16]


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def snapshot(model: nn.Module) -> dict:
    return {"state": {k: (v.dtype, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()},
            "training": [m.training for m in model.modules()],
            "grad": [p.grad for p in model.parameters()],
            "requires_grad": [p.requires_grad for p in model.parameters()]}


def assert_untouched(model: nn.Module, snap: dict, dtype: torch.dtype) -> None:
    assert all(p.dtype == dtype for p in model.parameters())
    now = snapshot(model)
    for k, (dt, v) in snap["state"].items():
        assert now["state"][k][0] == dt and torch.equal(now["state"][k][1], v), k
    assert now["training"] == snap["training"] and now["requires_grad"] == snap["requires_grad"]
    assert all(g is None for g in now["grad"])


def half_mlp(dtype: torch.dtype) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A tiny MLP in ``dtype``, its batch in ``dtype``, and the dense float64 Hessian of the upcast model."""
    model = tiny_mlp(d_in=3, hidden=4, d_out=2).to(dtype)
    x, y = mlp_batch(d_in=3, d_out=2)
    x, y = x.to(dtype), y.to(dtype)
    return model, (x, y), dense_hessian(model, mse, [(x, y)])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(F64) - b.to(F64)).norm() / b.to(F64).norm())


# ------------------------------------------------------------------------------------------------ engine
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("mode", ["double_backward", "forward_over_reverse"])
def test_operator_upcasts_half_models_to_float32(dtype: torch.dtype, mode: str) -> None:
    model, batch, H = half_mlp(dtype)
    model.train()                                          # restored afterwards
    snap = snapshot(model)
    op = HessianOperator(model, mse, batch, mode=mode)
    assert op.dtype == torch.float32 and op.evaluator.upcast
    X = torch.randn(op.n, 3, generator=torch.Generator().manual_seed(0))
    assert rel_err(op @ X, H @ X.double()) < 1e-5
    loss, g = op.loss_and_grad()
    assert g.dtype == torch.float32
    up = copy.deepcopy(model).float()
    with torch.no_grad():
        assert loss == pytest.approx(float(mse(up(batch[0].float()), batch[1].float())), rel=1e-6)
    assert_untouched(model, snap, dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_explicit_float64_and_float32(dtype: torch.dtype) -> None:
    model, batch, H = half_mlp(dtype)
    op = HessianOperator(model, mse, batch, dtype=F64)
    assert op.dtype == F64 and not op.evaluator.upcast
    assert rel_err(op.to_dense(), H) < 1e-12
    op32 = HessianOperator(model, mse, batch, dtype=torch.float32)
    assert op32.dtype == torch.float32 and rel_err(op32.to_dense(), H) < 1e-5


def test_float32_model_is_not_converted() -> None:
    model = tiny_mlp(d_in=3, hidden=4, d_out=2)
    ev = FunctionalEvaluator(model, mse, mlp_batch(d_in=3, d_out=2))
    assert ev.dtype == torch.float32 and not ev.upcast
    assert ev.leaves["0.weight"].untyped_storage().data_ptr() == model[0].weight.untyped_storage().data_ptr()


def test_mixed_float32_float64_parameters_need_a_choice() -> None:
    model = tiny_mlp(d_in=3, hidden=4, d_out=2)
    model[2].double()
    x, y = mlp_batch(d_in=3, d_out=2)
    with pytest.raises(TypeError, match=r"mixed dtypes.*dtype=torch.float32 or torch.float64.*float64=True"):
        HessianOperator(model, mse, (x, y))
    # a half and a float32 part compute in float32 (both work in float32)
    mixed = tiny_mlp(d_in=3, hidden=4, d_out=2)
    mixed[0].to(torch.bfloat16)
    op = HessianOperator(mixed, lambda out, t: mse(out.float(), t), (x, y))
    assert op.dtype == torch.float32 and op.evaluator.upcast


def test_integer_parameter_message() -> None:
    model = tiny_mlp(d_in=3, hidden=4, d_out=2)
    model.register_parameter("steps", nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False))
    with pytest.raises(TypeError, match=r"'steps' has dtype torch.int64; .*leave it out of params="):
        HessianOperator(model, mse, mlp_batch(d_in=3, d_out=2), params=["steps"])


# ------------------------------------------------------------------------------------------------ API A
@pytest.mark.parametrize("dtype", HALF)
def test_api_a_documented_form(dtype: torch.dtype) -> None:
    model, (x, y), H = half_mlp(dtype)
    snap = snapshot(model)
    wrapper = ModelWrapper(model, lambda out: mse(out, y), x)
    lam_min, lam_max, v_min, v_max = min_max_hessian_eigs(wrapper, max_iter=200, tol=1e-5)
    evals, evecs = torch.linalg.eigh(H)
    assert lam_max == pytest.approx(float(evals[-1]), rel=1e-4)
    assert lam_min == pytest.approx(float(evals[0]), rel=1e-3, abs=1e-4 * float(evals[-1]))
    assert v_max.dtype == np.float32 and abs(float(np.dot(v_max, evecs[:, -1].numpy()))) > 1 - 1e-4
    n = H.shape[0]
    tr = hessian_trace(wrapper, num_random_vectors=2 * n + 2, method="xtrace")  # a full sketch: exact
    assert tr == pytest.approx(float(torch.trace(H)), rel=1e-4)
    lo64, hi64, _, _ = min_max_hessian_eigs(wrapper, max_iter=200, tol=1e-8, float64=True)
    assert hi64 == pytest.approx(float(evals[-1]), rel=1e-7)
    assert wrapper.operator().dtype == torch.float32
    assert_untouched(model, snap, dtype)


def test_api_a_legacy_form() -> None:
    model, (x, y), H = half_mlp(torch.bfloat16)
    snap = snapshot(model)
    lam_max, lam_min, _, _, count = min_max_hessian_eigs(model, x, y, mse, max_iter=200, tol=1e-5)
    evals = torch.linalg.eigvalsh(H)
    assert lam_max == pytest.approx(float(evals[-1]), rel=1e-4) and count > 0
    n = H.shape[0]
    tr = hessian_trace(model, mse, x, y, 2 * n + 2, method="xtrace")
    assert tr == pytest.approx(float(torch.trace(H)), rel=1e-4)
    assert_untouched(model, snap, torch.bfloat16)


# ------------------------------------------------------------------------------------------------ API B
@pytest.mark.parametrize("dtype", HALF)
def test_api_b_analyze_step_and_eigenvectors(dtype: torch.dtype) -> None:
    model = tiny_transformer().to(dtype)
    ids, labels = transformer_batch()
    H = dense_hessian(model, transformer_loss, [(ids, labels)])
    evals, evecs = torch.linalg.eigh(H)
    batch = {"input_ids": ids, "labels": labels}
    snap = snapshot(model)
    cfg = HessianConfig.minimal(n_components=2, trace_probes=0, tolerance=1e-5)
    res = HessianAnalyzer(cfg).analyze_step(model, nn.CrossEntropyLoss(), batch, strict=True)
    assert res["hessian"]["max_eigenvalue"] == pytest.approx(float(evals[-1]), rel=1e-4)
    assert res["hessian"]["top_eigenvalues"][1] == pytest.approx(float(evals[-2]), rel=1e-4)
    vals, vecs = get_hessian_eigenvectors(model, nn.CrossEntropyLoss(), batch, n_top_vectors=2, tol=1e-5)
    assert vecs.dtype == np.float32 and vecs.shape == (2, H.shape[0])
    assert float(vals[0]) == pytest.approx(float(evals[-1]), rel=1e-4)
    assert abs(float(np.dot(vecs[0], evecs[:, -1].numpy()))) > 1 - 1e-3
    assert_untouched(model, snap, dtype)


def test_lanczos_on_half_model_matches_dense_top() -> None:
    model, batch, H = half_mlp(torch.float16)
    res = lanczos(HessianOperator(model, mse, batch), k=2, which="LA", tol=1e-5)
    assert torch.allclose(res.eigenvalues.double(), torch.linalg.eigvalsh(H)[-2:], rtol=1e-4)
