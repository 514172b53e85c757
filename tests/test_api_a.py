"""API A drop-in: ModelWrapper, min_max_hessian_eigs, hessian_trace (documented and legacy call forms).

Ground truth: the dense float64 Hessian of tiny models (``_models.dense_hessian``). Every snippet of the API A
document is executed (the Quick Start verbatim except for the import prefix).
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import runpy
import warnings

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

import hessext  # noqa: E402
from hessext.compat import DEFAULT_TRACE_METHOD  # noqa: E402
from hessext.hessian.hessian import min_max_hessian_eigs  # noqa: E402
from hessext.hessian.hessian_trace import hessian_trace  # noqa: E402
from hessext.model_interface.model_wrapper import ModelWrapper  # noqa: E402
from hessext.results import TraceResult  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP threads contend badly
    (measured here: 1.5 ms per HVP with one thread, 260 ms with two under load). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- helpers
def _mse(out, y):
    return nn.functional.mse_loss(out, y)


def _ce(out, y):
    return nn.functional.cross_entropy(out, y)


CASES = {
    "mlp-mse": (tiny_mlp, mlp_batch, _mse),
    "cnn-bn-ce": (tiny_cnn, cnn_batch, _ce),
    "transformer-ce": (tiny_transformer, transformer_batch, transformer_loss),
}


def _case(name):
    make_model, make_batch, loss = CASES[name]
    model = make_model()
    X, y = make_batch()
    return model, X, y, loss


def _check_pair(H: torch.Tensor, lam: float, vec: np.ndarray, tol: float) -> None:
    """Residual ‖H v − λ v‖ ≤ tol·|λ| against the dense Hessian, unit norm, and λ within the residual."""
    v = torch.from_numpy(vec).to(torch.float64)
    assert abs(float(v.norm()) - 1) < 1e-5
    r = float(torch.linalg.vector_norm(H @ v - lam * v))
    assert r <= tol * abs(lam), (r, lam)


def _check_extremes(H: torch.Tensor, min_eig, max_eig, min_vec, max_vec, tol: float = 1e-3) -> None:
    evals = torch.linalg.eigvalsh(H)
    lo, hi = float(evals[0]), float(evals[-1])
    assert abs(min_eig - lo) <= tol * abs(lo)
    assert abs(max_eig - hi) <= tol * abs(hi)
    _check_pair(H, min_eig, min_vec, tol)
    _check_pair(H, max_eig, max_vec, tol)


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "versions": {k: v._version for k, v in list(model.named_parameters()) + list(model.named_buffers())},
        "grads": {k: (p.grad, None if p.grad is None else p.grad.clone())
                  for k, p in model.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()),
    }


def _assert_unchanged(model: nn.Module, snap: dict) -> None:
    for k, v in model.state_dict(keep_vars=True).items():
        assert torch.equal(v.detach(), snap["state"][k]), k
    for k, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert t._version == snap["versions"][k], k
    for k, p in model.named_parameters():
        g0, values = snap["grads"][k]
        assert p.grad is g0, k
        if g0 is not None:
            assert torch.equal(p.grad, values), k
        assert p.requires_grad == snap["requires_grad"][k], k
    assert [m.training for m in model.modules()] == snap["training"]
    rng_t, rng_np, rng_py = snap["rng"]
    assert torch.equal(torch.get_rng_state(), rng_t)
    assert np.array_equal(np.random.get_state()[1], rng_np)
    assert random.getstate() == rng_py


def _run(src: str, ns: dict) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(src, "<api-a snippet>", "exec"), ns)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ the document's snippets
QUICK_START = '''
import torch
import torch.nn as nn
from hessext.model_interface.model_wrapper import ModelWrapper
from hessext.hessian.hessian import min_max_hessian_eigs
from hessext.hessian.hessian_trace import hessian_trace

# 1. Create your model
model = nn.Sequential(
    nn.Linear(4, 10),
    nn.ReLU(),
    nn.Linear(10, 1)
)

# 2. Prepare data
X = torch.randn(100, 4)
y = torch.randn(100, 1)

# 3. Define loss function
def loss_fn(model_output):
    return nn.MSELoss()(model_output, y)

# 4. Wrap your model
model_wrapper = ModelWrapper(model, loss_fn, X)

# 5. Compute Hessian eigenvalues
min_eig, max_eig, min_eigvec, max_eigvec = min_max_hessian_eigs(
    model_wrapper, 
    use_cuda=torch.cuda.is_available()
)

# 6. Estimate Hessian trace
trace = hessian_trace(model_wrapper, num_random_vectors=50)

print(f"Minimum eigenvalue: {min_eig}")
print(f"Maximum eigenvalue: {max_eig}")
print(f"Condition number: {max_eig / min_eig if min_eig > 0 else 'inf'}")
print(f"Hessian trace estimate: {trace}")
'''

WORKFLOW_1 = '''
# Train your model first
model.train()
for epoch in range(num_epochs):
    # ... training loop ...

# Analyze the trained model
model.eval()
model_wrapper = ModelWrapper(model, loss_fn, X)

# Compute Hessian properties
min_eig, max_eig, _, _ = min_max_hessian_eigs(model_wrapper)
trace = hessian_trace(model_wrapper)

# Interpret results
condition_number = max_eig / min_eig if min_eig > 0 else float('inf')
print(f"Model sharpness analysis:")
print(f"  Condition number: {condition_number:.2f}")
print(f"  Loss landscape sharpness: {trace:.4f}")
'''

WORKFLOW_2 = '''
# Monitor during training
eigenvalue_history = []

for epoch in range(num_epochs):
    # ... training step ...
    
    if epoch % 10 == 0:  # Check every 10 epochs
        model_wrapper = ModelWrapper(model, loss_fn, X)
        min_eig, max_eig, _, _ = min_max_hessian_eigs(model_wrapper)
        eigenvalue_history.append((epoch, min_eig, max_eig))

# Analyze training dynamics
for epoch, min_eig, max_eig in eigenvalue_history:
    condition = max_eig / min_eig if min_eig > 0 else float('inf')
    print(f"Epoch {epoch}: Condition number = {condition:.2f}")
'''

CUSTOM_LOSS = '''
def custom_loss_fn(model_output):
    # Your custom loss computation
    mse_loss = nn.MSELoss()(model_output, y)
    regularization = 0.01 * sum(p.norm() for p in model.parameters())
    return mse_loss + regularization

model_wrapper = ModelWrapper(model, custom_loss_fn, X)
'''

BATCH_PROCESSING = '''
# For large datasets, use batched analysis
batch_size = 32
results = []

for i in range(0, len(X), batch_size):
    X_batch = X[i:i+batch_size]
    y_batch = y[i:i+batch_size]
    
    def batch_loss_fn(model_output):
        return nn.MSELoss()(model_output, y_batch)
    
    wrapper = ModelWrapper(model, batch_loss_fn, X_batch)
    min_eig, max_eig, _, _ = min_max_hessian_eigs(wrapper)
    results.append((min_eig, max_eig))

# Analyze batch results
avg_min_eig = sum(r[0] for r in results) / len(results)
avg_max_eig = sum(r[1] for r in results) / len(results)
'''

TRAIN_STEP = '''\
    optimizer.zero_grad()
    loss_fn(model(X)).backward()
    optimizer.step()'''


def _doc_namespace() -> dict:
    """What the later snippets assume from the Quick Start (model, X, y, loss_fn), plus a training setup."""
    torch.manual_seed(0)
    ns: dict = {}
    _run(QUICK_START.replace("use_cuda=torch.cuda.is_available()", "use_cuda=False"), ns)
    ns["num_epochs"] = 21
    ns["optimizer"] = torch.optim.SGD(ns["model"].parameters(), lr=0.05)
    return ns


def _mse_hessian(model, X, y):
    return dense_hessian(model, lambda o, t: nn.MSELoss()(o, t), [(X, y)])


def test_quick_start_verbatim():
    torch.manual_seed(0)
    ns: dict = {}
    out = _run(QUICK_START, ns)
    lines = out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["Minimum eigenvalue", "Maximum eigenvalue",
                                                  "Condition number", "Hessian trace estimate"]
    assert isinstance(ns["min_eig"], float) and isinstance(ns["max_eig"], float)
    assert isinstance(ns["trace"], float)
    H = _mse_hessian(ns["model"], ns["X"], ns["y"])
    _check_extremes(H, ns["min_eig"], ns["max_eig"], ns["min_eigvec"], ns["max_eigvec"])
    assert ns["min_eigvec"].shape == (H.shape[0],) and ns["min_eigvec"].dtype == np.float32
    exact = float(torch.trace(H))
    res = hessian_trace(ns["model_wrapper"], num_random_vectors=50, return_result=True)
    assert res.estimate == ns["trace"]
    assert abs(ns["trace"] - exact) <= max(5 * res.std_error, 1e-4 * abs(exact))


def test_workflow_1_model_analysis():
    ns = _doc_namespace()
    loss_before = ns["loss_fn"](ns["model"](ns["X"])).item()
    out = _run(WORKFLOW_1.replace("    # ... training loop ...", TRAIN_STEP), ns)
    for text in ("Model sharpness analysis:", "Condition number:", "Loss landscape sharpness"):
        assert text in out
    model = ns["model"]
    assert ns["loss_fn"](model(ns["X"])).item() < loss_before     # the filled-in loop trained
    assert not model.training                                      # the snippet's model.eval() is respected
    H = _mse_hessian(model, ns["X"], ns["y"])
    evals = torch.linalg.eigvalsh(H)
    assert abs(ns["max_eig"] - float(evals[-1])) <= 1e-3 * abs(float(evals[-1]))
    cond = ns["condition_number"]
    expected = float(evals[-1] / evals[0]) if float(evals[0]) > 0 else float("inf")
    assert cond == pytest.approx(expected, rel=1e-2) if np.isfinite(expected) else cond == float("inf")


def test_workflow_2_training_monitoring():
    ns = _doc_namespace()
    out = _run(WORKFLOW_2.replace("    # ... training step ...", TRAIN_STEP), ns)
    hist = ns["eigenvalue_history"]
    assert [h[0] for h in hist] == [0, 10, 20]
    assert out.count("Condition number =") == 3
    assert all(lo <= hi for _, lo, hi in hist)
    # num_epochs = 21: the last check (epoch 20) follows the last training step, so it sees the final model.
    H = _mse_hessian(ns["model"], ns["X"], ns["y"])
    evals = torch.linalg.eigvalsh(H)
    assert abs(ns["min_eig"] - float(evals[0])) <= 1e-3 * abs(float(evals[0]))
    assert abs(ns["max_eig"] - float(evals[-1])) <= 1e-3 * abs(float(evals[-1]))
    assert hist[0][1:] != hist[-1][1:]                 # training between the checks changed the Hessian


def test_custom_loss_with_regularisation():
    """The regulariser reads model.parameters() inside loss_fn: its curvature must be in the Hessian."""
    ns = _doc_namespace()
    _run(CUSTOM_LOSS, ns)
    model, X, y = ns["model"], ns["X"], ns["y"]
    min_eig, max_eig, min_vec, max_vec = min_max_hessian_eigs(ns["model_wrapper"])
    # Exact Hessian: MSE part + 0.01·Σ_p ∇²‖p‖, with ∇²‖p‖ = (I − p̂p̂ᵀ)/‖p‖ per parameter tensor.
    H = _mse_hessian(model, X, y)
    o = 0
    for p in model.parameters():
        q = p.detach().double().reshape(-1)
        k = q.numel()
        nrm = q.norm()
        H[o:o + k, o:o + k] += 0.01 * (torch.eye(k, dtype=torch.float64) - torch.outer(q, q) / nrm ** 2) / nrm
        o += k
    _check_extremes(H, min_eig, max_eig, min_vec, max_vec)
    H_plain = _mse_hessian(model, X, y)
    assert abs(max_eig - float(torch.linalg.eigvalsh(H_plain)[-1])) > 1e-4   # the regulariser did count


def test_batch_processing():
    ns = _doc_namespace()
    _run(BATCH_PROCESSING, ns)
    results = ns["results"]
    assert len(results) == 4       # 100 samples in batches of 32: 32, 32, 32, 4
    model, X, y = ns["model"], ns["X"], ns["y"]
    for j, (lo, hi) in enumerate(results):
        H = _mse_hessian(model, X[32 * j:32 * j + 32], y[32 * j:32 * j + 32])
        evals = torch.linalg.eigvalsh(H)
        assert abs(lo - float(evals[0])) <= 1e-3 * abs(float(evals[0])) + 1e-6 * float(evals[-1])
        assert abs(hi - float(evals[-1])) <= 1e-3 * abs(float(evals[-1]))
    assert ns["avg_min_eig"] == pytest.approx(sum(r[0] for r in results) / 4)
    assert ns["avg_max_eig"] == pytest.approx(sum(r[1] for r in results) / 4)


# ----------------------------------------------------------------------------------------------- import paths
def test_import_paths_and_top_level():
    import hessext.compat as compat
    import hessext.model_interface as mi

    assert mi.ModelWrapper is compat.ModelWrapper is ModelWrapper
    assert min_max_hessian_eigs is compat.min_max_hessian_eigs
    assert hessian_trace is compat.hessian_trace
    for name in ("ModelWrapper", "min_max_hessian_eigs", "hessian_trace"):
        assert getattr(hessext, name) is getattr(compat, name), f"hessext.{name}: export it at top level"


def test_model_wrapper_holds_references():
    model, X, y, loss = _case("mlp-mse")
    fn = lambda out: loss(out, y)  # noqa: E731
    snap = _snapshot(model)
    w = ModelWrapper(model, fn, X)
    assert w.model is model and w.X is X and w.loss_fn is fn
    r = repr(w)
    assert r.startswith("ModelWrapper(") and "Sequential" in r
    assert f"{w.num_parameters:,}" in r and "[8, 4]" in r
    assert w.num_parameters == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert w.loss() == pytest.approx(float(loss(model(X), y)), rel=1e-6)
    if _mixed_dtype_mse_differentiable():
        H = w.operator(dtype=torch.float64).to_dense()
        torch.testing.assert_close(H, dense_hessian(model, loss, [(X, y)]), rtol=1e-9, atol=1e-10)
    else:  # torch < 2.13: float64 outputs against the captured float32 y; said clearly, not a wrong number
        with pytest.raises(RuntimeError, match=r"Cast them to torch\.float64"):
            w.operator(dtype=torch.float64).to_dense()
    _assert_unchanged(model, snap)


def _mixed_dtype_mse_differentiable() -> bool:
    """Whether this torch differentiates mse_loss between a float64 and a float32 tensor (from 2.13)."""
    a = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    try:
        torch.nn.functional.mse_loss(a, torch.ones(2)).backward()
    except RuntimeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------- eigenvalues
@pytest.mark.parametrize("name", list(CASES))
def test_eigs_against_dense(name):
    model, X, y, loss = _case(name)
    H = dense_hessian(model, loss, [(X, y)])
    w = ModelWrapper(model, lambda out: loss(out, y), X)
    min_eig, max_eig, min_vec, max_vec = min_max_hessian_eigs(w)
    assert isinstance(min_eig, float) and isinstance(max_eig, float)
    assert min_vec.shape == max_vec.shape == (H.shape[0],) and min_vec.dtype == np.float32
    _check_extremes(H, min_eig, max_eig, min_vec, max_vec)


def test_eigs_float64_tight_tol():
    model, X, y, loss = _case("mlp-mse")
    model = model.double()
    X, y = X.double(), y.double()
    H = dense_hessian(model, loss, [(X, y)])
    w = ModelWrapper(model, lambda out: loss(out, y), X)
    min_eig, max_eig, min_vec, max_vec = min_max_hessian_eigs(w, tol=1e-8, max_iter=200)
    assert min_vec.dtype == np.float64
    _check_extremes(H, min_eig, max_eig, min_vec, max_vec, tol=1e-8)


def test_loss_fn_override():
    model, X, y, _ = _case("mlp-mse")
    w = ModelWrapper(model, lambda out: _mse(out, y), X)
    l1 = lambda out: nn.functional.smooth_l1_loss(out, y)  # noqa: E731
    got = min_max_hessian_eigs(w, loss_fn=l1)
    want = min_max_hessian_eigs(ModelWrapper(model, l1, X))
    assert got[0] == want[0] and got[1] == want[1]
    _check_extremes(dense_hessian(model, nn.functional.smooth_l1_loss, [(X, y)]), *got)


def test_legacy_form_same_numbers_in_its_order(capsys):
    model, X, y, _ = _case("cnn-bn-ce")
    crit = nn.CrossEntropyLoss()
    new = min_max_hessian_eigs(ModelWrapper(model, lambda out: crit(out, y), X))
    old = min_max_hessian_eigs(model, X, y, crit, verbose=True)
    assert len(old) == 5
    max_e, min_e, max_v, min_v, count = old
    assert (max_e, min_e) == (new[1], new[0])
    np.testing.assert_array_equal(max_v, new[3])
    np.testing.assert_array_equal(min_v, new[2])
    assert isinstance(count, int) and 2 <= count <= 100
    assert "max eigenvalue" in capsys.readouterr().out
    min_max_hessian_eigs(model, X, y, crit, rank=1, verbose=True)    # only rank 0 prints
    assert capsys.readouterr().out == ""


def test_legacy_all_params_false_drops_scalar_parameters():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = tiny_mlp()
            self.temperature = nn.Parameter(torch.tensor(1.3))

        def forward(self, x):
            return self.body(x) * self.temperature

    model = Scaled()
    X, y = mlp_batch()
    names = [k for k, p in model.named_parameters() if p.dim() >= 1]
    H = dense_hessian(model, _mse, [(X, y)], names=names)
    max_e, min_e, max_v, min_v, _ = min_max_hessian_eigs(model, X, y, _mse, all_params=False)
    assert max_v.shape == (H.shape[0],) == (sum(p.numel() for p in model.parameters()) - 1,)
    _check_extremes(H, min_e, max_e, min_v, max_v)
    full = min_max_hessian_eigs(model, X, y, _mse)
    assert full[2].shape == (H.shape[0] + 1,)


def test_not_converged_warns_with_residuals():
    model, X, y, loss = _case("transformer-ce")
    w = ModelWrapper(model, lambda out: loss(out, y), X)
    with pytest.warns(RuntimeWarning, match=r"max_iter=4.*relative residuals reached"):
        min_eig, max_eig, _, _ = min_max_hessian_eigs(w, max_iter=4)
    assert min_eig <= max_eig


def test_use_cuda_without_cuda_warns_and_stays_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the fallback is not exercised")
    model, X, y, loss = _case("mlp-mse")
    w = ModelWrapper(model, lambda out: loss(out, y), X)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        got = min_max_hessian_eigs(w, use_cuda=True)
    want = min_max_hessian_eigs(w)
    assert got[:2] == want[:2]
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert hessian_trace(w, use_cuda=True) == hessian_trace(w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_use_cuda_on_gpu_leaves_model_on_cpu():
    model, X, y, loss = _case("cnn-bn-ce")
    snap = _snapshot(model)
    w = ModelWrapper(model, lambda out: loss(out, y), X)      # y stays on the CPU inside the closure
    got = min_max_hessian_eigs(w, use_cuda=True)
    assert all(p.device.type == "cpu" for p in model.parameters())
    _check_extremes(dense_hessian(model, loss, [(X, y)]), *got, tol=2e-3)
    _assert_unchanged(model, snap)


# ----------------------------------------------------------------------------------------------- trace
@pytest.mark.parametrize("method", ["hutchinson", "hutchpp", "xtrace", "auto"])
def test_trace_converges_with_budget(method):
    model, X, y, loss = _case("mlp-mse")
    n = sum(p.numel() for p in model.parameters())
    exact = float(torch.trace(dense_hessian(model, loss, [(X, y)])))
    w = ModelWrapper(model, lambda out: loss(out, y), X)
    errs = {}
    for m in (6, 3 * n):
        est = [hessian_trace(w, num_random_vectors=m, method=method, seed=s) for s in range(8)]
        errs[m] = float(np.sqrt(np.mean((np.array(est) - exact) ** 2)))
    assert errs[3 * n] < errs[6]
    if method not in ("hutchinson", "auto"):     # with a budget ≥ 2n the sketch spans the space: exact
        assert errs[3 * n] <= 1e-4 * abs(exact)


def test_trace_unbiased_and_calibrated():
    model, X, y, loss = _case("cnn-bn-ce")
    exact = float(torch.trace(dense_hessian(model, loss, [(X, y)])))
    w = ModelWrapper(model, lambda out: loss(out, y), X)
    res = [hessian_trace(w, num_random_vectors=20, method="hutchinson", seed=s, return_result=True)
           for s in range(30)]
    est = np.array([r.estimate for r in res])
    assert abs(est.mean() - exact) <= 4 * est.std(ddof=1) / np.sqrt(len(est))
    ses = np.array([r.std_error for r in res])
    assert 0.5 < np.sqrt(np.mean(ses ** 2)) / est.std(ddof=1) < 2.0


def test_trace_result_and_default_method():
    model, X, y, loss = _case("transformer-ce")
    w = ModelWrapper(model, lambda out: loss(out, y), X)
    res = hessian_trace(w, num_random_vectors=40, return_result=True)
    assert DEFAULT_TRACE_METHOD == "auto"              # adaptive: Hutchinson or XTrace, whichever suits H
    assert isinstance(res, TraceResult) and res.method in ("hutchinson", "xtrace")
    assert res.num_matvecs == 40 and res.std_error >= 0
    assert hessian_trace(w, num_random_vectors=40) == res.estimate
    assert hessian_trace(w, num_random_vectors=40, seed=3) != res.estimate
    assert hessian_trace(w, num_random_vectors=40, seed=3) == hessian_trace(w, num_random_vectors=40, seed=3)
    assert isinstance(hessian_trace(w, num_random_vectors=1), float)     # one probe: Hutchinson


def test_trace_legacy_form():
    model, X, y, loss = _case("mlp-mse")
    crit = nn.MSELoss()
    old = hessian_trace(model, crit, X, y)
    assert isinstance(old, float)
    assert old == hessian_trace(ModelWrapper(model, lambda out: crit(out, y), X), num_random_vectors=10)
    assert hessian_trace(model, crit, X, y, num_random_vectors=20, method="hutchinson") == \
        hessian_trace(model, crit, X, y, 20, method="hutchinson")


# --------------------------------------------------------------------------------------- model-state contract
class _StatefulNet(nn.Module):
    """BatchNorm (running stats), dropout (RNG), a frozen parameter: everything the contract protects."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(6, 2)
        self.fc2.bias.requires_grad_(False)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(x)))))


def _stateful_setup():
    model = _StatefulNet()
    model.train()
    model.bn.eval()                      # mixed modes must survive
    X, y = mlp_batch()
    _mse(model(X), y).backward()        # populate .grad
    return model, X, y


def test_model_state_unchanged_after_success():
    model, X, y = _stateful_setup()
    snap = _snapshot(model)
    w = ModelWrapper(model, lambda out: _mse(out, y), X)
    min_max_hessian_eigs(w)
    hessian_trace(w, num_random_vectors=10)
    min_max_hessian_eigs(model, X, y, _mse)
    hessian_trace(model, _mse, X, y)
    _assert_unchanged(model, snap)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("failure", ["raise", "non-scalar", "nan"])
@pytest.mark.parametrize("what", ["eigs", "trace"])
def test_model_state_unchanged_after_exception_in_loss(failure, what):
    model, X, y = _stateful_setup()
    snap = _snapshot(model)
    calls = [0]

    def loss_fn(out):
        calls[0] += 1
        torch.rand(3)                # consumes global RNG: must be restored
        if failure == "raise":
            raise _Boom("loss failed")
        if failure == "non-scalar":
            return (out - y) ** 2
        return _mse(out, y) * float("nan")

    w = ModelWrapper(model, loss_fn, X)
    with pytest.raises({"raise": _Boom, "non-scalar": ValueError, "nan": RuntimeError}[failure]):
        if what == "eigs":
            min_max_hessian_eigs(w)
        else:
            hessian_trace(w)
    _assert_unchanged(model, snap)


# ----------------------------------------------------------------------------------------------- bad input
def test_non_scalar_loss():
    model, X, y, _ = _case("mlp-mse")
    w = ModelWrapper(model, lambda out: (out - y) ** 2, X)
    with pytest.raises(ValueError, match=r"scalar.*\[8, 2\]"):
        min_max_hessian_eigs(w)
    with pytest.raises(ValueError, match="scalar"):
        hessian_trace(w)


def test_nan_loss():
    model, X, y, _ = _case("mlp-mse")
    w = ModelWrapper(model, lambda out: _mse(out, y) * float("nan"), X)
    with pytest.raises(RuntimeError, match="nan"):
        min_max_hessian_eigs(w)
    with pytest.raises(RuntimeError, match="nan"):
        min_max_hessian_eigs(model, X, y, lambda o, t: _mse(o, t) * float("nan"))


def test_model_without_trainable_parameters():
    model, X, y, _ = _case("mlp-mse")
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        min_max_hessian_eigs(ModelWrapper(model, lambda out: _mse(out, y), X))
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_trace(model, _mse, X, y)
    with pytest.raises(ValueError, match="no trainable parameters"):
        min_max_hessian_eigs(ModelWrapper(nn.ReLU(), lambda out: out.sum(), X))


def test_data_on_another_device():
    model, X, y, _ = _case("mlp-mse")
    Xm = torch.empty(X.shape, device="meta")
    with pytest.raises(ValueError, match="X is on device meta"):
        min_max_hessian_eigs(ModelWrapper(model, lambda out: _mse(out, y), Xm))
    with pytest.raises(ValueError, match="inputs is on device meta"):
        min_max_hessian_eigs(model, Xm, y, _mse)
    with pytest.raises(ValueError, match="targets is on device meta"):
        hessian_trace(model, _mse, X, torch.empty(y.shape, device="meta"))


def test_bad_arguments():
    model, X, y, _ = _case("mlp-mse")
    w = ModelWrapper(model, lambda out: _mse(out, y), X)
    with pytest.raises(TypeError, match="ModelWrapper.*got str"):
        min_max_hessian_eigs("model")
    with pytest.raises(TypeError, match="got int"):
        hessian_trace(3)
    with pytest.raises(ValueError, match="max_iter must be a positive int, got 0"):
        min_max_hessian_eigs(w, max_iter=0)
    with pytest.raises(ValueError, match="tol must be a float in"):
        min_max_hessian_eigs(w, tol=0.0)
    with pytest.raises(TypeError, match="use_cuda must be a bool"):
        min_max_hessian_eigs(w, use_cuda="yes")
    with pytest.raises(ValueError, match="num_random_vectors must be a positive int, got 0"):
        hessian_trace(w, num_random_vectors=0)
    with pytest.raises(ValueError, match="method must be one of"):
        hessian_trace(w, method="exact")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ModelWrapper(lambda x: x, lambda out: out.sum(), X)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ModelWrapper(model, "mse", X)
    with pytest.raises(TypeError, match="criterion must be callable"):
        min_max_hessian_eigs(model, X, y, None)


# ----------------------------------------------------------------------------------------------- examples
EXAMPLES = ["simple_hessian_analysis", "hessian_usage_demo", "hessian_analysis_guide",
            "hessian_eigenvalue_analysis"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_run(name, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)       # no non-convergence in the examples
        runpy.run_path(os.path.join(ROOT, "examples", f"{name}.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "eigenvalue" in out.lower() or "Condition number" in out
