"""CurvatureTracker against dense float64 truth on tiny models (issue 15)."""
from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
from _models import dense_hessian
from torch import nn

from hessext.analysis.tracking import (
    CurvatureTracker,
    PreconditionedOperator,
    load_tracking,
    preconditioner_diagonal,
    trainer_callback,
)
from hessext.linop import DenseOperator


def _half_se(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - y).square().sum(dim=1).mean()


def _problem(seed: int = 0, n: int = 16, d_in: int = 3, hidden: int = 5, d_out: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).double()
    return model, x, y


def _dense(model: nn.Module, batches: list) -> torch.Tensor:
    return dense_hessian(model, _half_se, batches)


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m = copy.deepcopy(model)
    gs = torch.autograd.grad(_half_se(m(x), y), list(m.parameters()))
    return torch.cat([g.reshape(-1) for g in gs])


def _train(model, opt, x, y, steps, trackers=(), fail_at=None):
    for s in range(steps + 1):
        if s == fail_at:
            raise RuntimeError("crash")
        for t in trackers:
            t.step(s, optimizer=opt)
        opt.zero_grad()
        _half_se(model(x), y).backward()
        opt.step()


def test_warm_and_cold_agree_to_tolerance_and_warm_is_cheaper():
    model, x, y = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tol = 1e-6
    q = ("lambda_max", "top_k", "lambda_min")
    warm = CurvatureTracker(model, _half_se, (x, y), every=5, quantities=q, k=2, tol=tol, cold_every=1)
    cold = CurvatureTracker(model, _half_se, (x, y), every=5, quantities=q, k=2, tol=tol, warm_start=False)
    truths = []

    class Truth:
        def step(self, s, optimizer=None):
            if s % 5 == 0:
                truths.append(torch.linalg.eigvalsh(_dense(model, [(x, y)])))

    _train(model, opt, x, y, 40, trackers=(warm, cold, Truth()))
    assert len(warm.records) == len(cold.records) == len(truths) == 9
    for rw, rc, ev in zip(warm.records, cold.records, truths):
        top, bottom = ev.flip(0)[:2].tolist(), float(ev[0])
        for r in (rw, rc):
            assert r["quantities"]["top_k"] == pytest.approx(top, rel=4 * tol, abs=1e-9)
            assert r["quantities"]["lambda_max"] == pytest.approx(top[0], rel=4 * tol)
            assert r["quantities"]["lambda_min"] == pytest.approx(bottom, rel=4 * tol, abs=1e-9)
        assert rw["cold_values"]["lambda_max"] == pytest.approx(rw["quantities"]["top_k"], rel=4 * tol)
        assert rc["cold_matvecs"] is None and rw["warm_start"] and not rc["warm_start"]
    later = [r["matvecs"]["lambda_max"] for r in warm.records[1:]]
    later_cold = [r["cold_matvecs"]["lambda_max"] for r in warm.records[1:]]
    assert sum(later) < sum(later_cold)
    assert [r["matvecs"]["lambda_max"] for r in cold.records] == [r["cold_matvecs"]["lambda_max"]
                                                                 for r in warm.records]


def _adam_state(model, x, y, opt_cls, **kw):
    opt = opt_cls(model.parameters(), **kw)
    _train(model, opt, x, y, 6)
    return opt


@pytest.mark.parametrize("opt_cls, kw", [(torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-3}),
                                         (torch.optim.AdamW, {"lr": 1e-2, "eps": 1e-3}),
                                         (torch.optim.RMSprop, {"lr": 1e-3, "eps": 1e-3})])
def test_preconditioned_operator_against_dense(opt_cls, kw):
    model, x, y = _problem(1)
    opt = _adam_state(model, x, y, opt_cls, **kw)
    H = _dense(model, [(x, y)])
    diag = []
    for p in model.parameters():
        st = opt.state[p]
        if opt_cls is torch.optim.RMSprop:
            diag.append(st["square_avg"].double().sqrt().reshape(-1) + kw["eps"])
        else:
            b1, b2 = opt.param_groups[0]["betas"]
            t = float(st["step"])
            vhat = st["exp_avg_sq"].double() / (1 - b2 ** t)
            diag.append(((1 - b1 ** t) * (vhat.sqrt() + kw["eps"])).reshape(-1))
    P = torch.cat(diag)
    M = torch.diag(P.rsqrt()) @ H @ torch.diag(P.rsqrt())
    d, beta1 = preconditioner_diagonal(opt, model, [n for n, _ in model.named_parameters()])
    assert beta1 == (0.0 if opt_cls is torch.optim.RMSprop else opt.param_groups[0]["betas"][0])
    dense_op = PreconditionedOperator(DenseOperator(H), d).to_dense()
    torch.testing.assert_close(dense_op, M, rtol=1e-10, atol=1e-12)
    tr = CurvatureTracker(model, _half_se, (x, y), every=1, quantities=("preconditioned_sharpness",),
                          tol=1e-8)
    rec = tr.step(0, optimizer=opt)
    lam = float(torch.linalg.eigvalsh(M)[-1])
    assert rec["quantities"]["preconditioned_sharpness"] == pytest.approx(lam, rel=1e-6)
    lr = kw["lr"]
    want = (2 + 2 * beta1) / ((1 - beta1) * lr)
    assert rec["thresholds"]["preconditioned_sharpness"] == pytest.approx(want)
    # the eigenvalues of P^{-1} H (not symmetric) are those of the symmetric form
    assert float(torch.linalg.eigvals(torch.diag(1 / P) @ H).real.max()) == pytest.approx(lam, rel=1e-8)


def test_batch_sharpness_overlap_and_trace_against_dense():
    model, x, y = _problem(2, n=18)
    batches = [(x[i:i + 6], y[i:i + 6]) for i in range(0, 18, 6)]
    q = ("batch_sharpness", "grad_overlap", "trace", "top_k")
    tr = CurvatureTracker(model, _half_se, batches, every=1, quantities=q, k=3, tol=1e-9, trace_probes=60,
                          lr=0.5)
    rec = tr.step(0)
    vals = []
    for b in batches:
        Hb, gb = _dense(model, [b]), _grad(model, *b)
        vals.append(float(gb @ Hb @ gb / (gb @ gb)))
    assert rec["quantities"]["batch_sharpness"] == pytest.approx(sum(vals) / 3, rel=1e-8)
    H = _dense(model, batches)
    ev, U = torch.linalg.eigh(H)
    g = _grad(model, x, y)
    V = U[:, -3:]
    overlap = float((V.T @ g).square().sum() / (g @ g))
    assert rec["quantities"]["grad_overlap"] == pytest.approx(overlap, rel=1e-6)
    assert rec["quantities"]["top_k"] == pytest.approx(ev.flip(0)[:3].tolist(), rel=1e-7)
    se = rec["quantities"]["trace_std_error"]
    assert 0 <= se and abs(rec["quantities"]["trace"] - float(H.trace())) <= 4 * se + 1e-8
    assert rec["thresholds"] == {"top_k": 4.0, "batch_sharpness": 4.0}
    with torch.no_grad():
        assert rec["loss"] == pytest.approx(float(_half_se(model(x), y)), rel=1e-12)


def test_file_survives_crash_and_reopening_continues(tmp_path):
    path = tmp_path / "track.jsonl"
    model, x, y = _problem(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = CurvatureTracker(model, _half_se, (x, y), every=10, path=path)
    with pytest.raises(RuntimeError, match="crash"):
        _train(model, opt, x, y, 100, trackers=(tr,), fail_at=35)
    recs = load_tracking(path)
    assert [r["step"] for r in recs] == [0, 10, 20, 30] and recs == tr.records
    with open(path, "ab") as fh:                       # a crash while writing the next line
        fh.write(b'{"step": 40, "quantities": {"lambda_m')
    assert [r["step"] for r in load_tracking(path)] == [0, 10, 20, 30]
    tr2 = CurvatureTracker(model, _half_se, (x, y), every=10, path=path)
    assert [r["step"] for r in tr2.records] == [0, 10, 20, 30]
    tr2.step(40, optimizer=opt)
    recs = load_tracking(path)
    assert [r["step"] for r in recs] == [0, 10, 20, 30, 40]
    assert open(path, "rb").read().endswith(b"\n")
    lam = float(torch.linalg.eigvalsh(_dense(model, [(x, y)]))[-1])
    assert recs[-1]["quantities"]["lambda_max"] == pytest.approx(lam, rel=4e-3)


def test_a_new_run_folder_is_created(tmp_path):
    path = tmp_path / "runs" / "first" / "curvature.jsonl"           # neither folder exists yet
    model, x, y = _problem(4)
    tr = CurvatureTracker(model, _half_se, (x, y), every=1, path=path)
    tr.step(0)
    assert [r["step"] for r in load_tracking(path)] == [0]


def test_model_optimizer_and_rng_untouched():
    model, x, y = _problem(4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, x, y, 3)
    model.train()
    opt.zero_grad()
    _half_se(model(x), y).backward()                   # live .grad the tracker must leave alone
    params = copy.deepcopy(dict(model.named_parameters()))
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    state = copy.deepcopy(opt.state_dict())
    rng = torch.get_rng_state()
    tr = CurvatureTracker(model, _half_se, [(x[:8], y[:8]), (x[8:], y[8:])], every=1, k=2,
                          quantities=("lambda_max", "top_k", "lambda_min", "trace", "batch_sharpness",
                                      "grad_overlap", "preconditioned_sharpness"), cold_every=1)
    rec = tr.step(7, optimizer=opt)
    assert set(rec["quantities"]) >= {"preconditioned_sharpness", "trace", "batch_sharpness"}
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]) and torch.equal(p.grad, grads[n])
    after = opt.state_dict()
    for i, st in state["state"].items():
        for key, v in st.items():
            assert torch.equal(after["state"][i][key], v), key
    assert after["param_groups"] == state["param_groups"]


def test_trainer_callback(monkeypatch):
    model, x, y = _problem(5)
    tr = CurvatureTracker(model, _half_se, (x, y), every=2)
    try:
        import transformers  # noqa: F401
        real = True
    except ImportError:
        real = False
        with pytest.raises(ImportError, match="transformers"):
            trainer_callback(tr)
        fake = types.ModuleType("transformers")
        fake.TrainerCallback = type("TrainerCallback", (), {})
        monkeypatch.setitem(sys.modules, "transformers", fake)
    cb = trainer_callback(tr)
    assert isinstance(cb, sys.modules["transformers"].TrainerCallback) or real
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for s in (1, 2, 3, 4):
        cb.on_step_end(None, types.SimpleNamespace(global_step=s), None, model=model, optimizer=opt)
    assert [r["step"] for r in tr.records] == [2, 4]
    assert tr.records[0]["optimizer"] == "SGD" and tr.records[0]["thresholds"] == {"lambda_max": 20.0}


def test_short_edge_of_stability_gd():
    """Full-batch GD on a small tanh MLP: λmax rises from well below 2/η and then stays within ±20 % of it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 10, generator=g, dtype=torch.float64)
    y = nn.functional.one_hot(torch.randint(0, 2, (100,), generator=g), 2).double()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 30), nn.Tanh(), nn.Linear(30, 30), nn.Tanh(),
                          nn.Linear(30, 2)).double()
    lr = 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tr = CurvatureTracker(model, _half_se, (x, y), every=10, lr=lr, cold_every=5)
    _train(model, opt, x, y, 800, trackers=(tr,))
    lam = [r["quantities"]["lambda_max"] * lr / 2 for r in tr.records]     # in units of 2/η
    assert lam[0] < 0.5 and max(lam) > 1.0
    tail = lam[len(lam) // 2:]
    assert 0.8 <= min(tail) and max(tail) <= 1.2, tail
    warm = sorted(r["matvecs"]["lambda_max"] for r in tr.records[1:])
    cold = sorted(r["cold_matvecs"]["lambda_max"] for r in tr.records if r["cold_matvecs"])
    assert warm[len(warm) // 2] <= 0.5 * cold[len(cold) // 2]
