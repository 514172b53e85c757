"""Trace estimators: exact pieces, unbiasedness, calibrated standard errors, per-block traces."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _models import dense_hessian, mlp_batch, tiny_mlp  # noqa: E402

from hessext import ops  # noqa: E402
from hessext.linop import DenseOperator  # noqa: E402
from hessext.trace import adaptive_trace, estimate_trace, hutchinson, hutchpp, xtrace  # noqa: E402

F64 = torch.float64
ESTIMATORS = {"hutchinson": hutchinson, "hutchpp": hutchpp, "xtrace": xtrace, "adaptive": adaptive_trace}


def with_spectrum(evals, seed: int = 0) -> torch.Tensor:
    evals = torch.as_tensor(np.asarray(evals, dtype=np.float64))
    n = evals.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return (Q * evals) @ Q.T


N = 60
SPECTRA = {
    "indefinite": np.random.default_rng(2).standard_normal(N),
    "decaying": 1.0 / np.arange(1, N + 1) ** 2 + 0.05 * np.random.default_rng(4).standard_normal(N),
}


def test_hutchinson_matches_its_definition_and_blocks_are_free():
    A = with_spectrum(SPECTRA["indefinite"])
    m = 7
    Z = ops.rademacher(N, m, seed=11, dtype=F64)
    vals = ((A @ Z) * Z).sum(0)
    blocks = {"a": slice(0, 20), "b": torch.arange(20, 45), "c": torch.arange(45, N)}
    op = DenseOperator(A)
    r = hutchinson(op, m, seed=11, blocks=blocks, block_size=3)
    assert r.estimate == pytest.approx(float(vals.mean()), rel=1e-12)
    assert r.std_error == pytest.approx(float(vals.std() / np.sqrt(m)), rel=1e-12)
    assert r.num_matvecs == m and op.num_matvecs == m             # blocks cost nothing extra
    assert sum(r.block_estimates.values()) == pytest.approx(r.estimate, rel=1e-12)
    za = ((A @ Z) * Z)[:20].sum(0)
    assert r.block_estimates["a"] == pytest.approx(float(za.mean()), rel=1e-12)
    # probes do not depend on the blocking
    assert hutchinson(A, m, seed=11, block_size=7).estimate == pytest.approx(r.estimate, rel=1e-12)
    json.dumps(r.to_dict())


def test_xtrace_efficient_form_equals_leave_one_out_definition():
    A = with_spectrum(SPECTRA["indefinite"])
    s = 6
    Om = ops.rademacher(N, s, seed=3, dtype=F64)
    Y = A @ Om
    eye = torch.eye(N, dtype=F64)
    t = []
    for i in range(s):
        Qi, _ = torch.linalg.qr(torch.cat([Y[:, :i], Y[:, i + 1:]], 1))
        P = Qi @ Qi.T
        w = Om[:, i]
        t.append(float(torch.trace(Qi.T @ A @ Qi) + w @ (eye - P) @ A @ (eye - P) @ w))
    r = xtrace(A, 2 * s, seed=3)
    assert r.estimate == pytest.approx(np.mean(t), rel=1e-10)
    assert r.num_matvecs == 2 * s


def test_exact_cases():
    A = with_spectrum(SPECTRA["indefinite"])
    tr = float(A.trace())
    # sketch spans the space
    assert hutchpp(A, 3 * N, seed=0).estimate == pytest.approx(tr, rel=1e-10)
    assert hutchpp(A, 3 * N, seed=0).std_error == 0.0
    assert xtrace(A, 2 * N, seed=0).estimate == pytest.approx(tr, rel=1e-10)
    # low rank: rank 4 < s, the deflated part captures everything
    L = with_spectrum(np.r_[[3.0, -2.0, 1.0, 0.5], np.zeros(N - 4)])
    for f in (hutchpp, xtrace):
        r = f(L, 30, seed=1)
        assert r.estimate == pytest.approx(2.5, abs=1e-9), f.__name__
        assert r.std_error < 1e-9


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_unbiased_and_calibrated(method, spectrum):
    A = with_spectrum(SPECTRA[spectrum])
    tr = float(A.trace())
    m = 48   # Hutch++: 16 residual probes; with fewer the t-distribution of the SE alone costs > 5 % coverage
    runs = [ESTIMATORS[method](A, m, seed=1000 + s) for s in range(200)]
    est = np.array([r.estimate for r in runs])
    se = np.array([r.std_error for r in runs])
    assert all(r.num_matvecs == m for r in runs)
    assert np.all(se > 0)
    # unbiased: the mean over 200 seeds is within 4 standard errors of the exact trace
    assert abs(est.mean() - tr) <= 4 * est.std(ddof=1) / np.sqrt(len(est))
    # calibrated: the truth lies within ±2 SE in at least 90 % of the runs ...
    cover = np.mean(np.abs(est - tr) <= 2 * se)
    assert cover >= 0.90, cover
    # ... and the SE is not wildly conservative either
    rmse = np.sqrt(np.mean((est - tr) ** 2))
    assert 0.7 * rmse <= np.mean(se) <= 3.0 * rmse


def test_xtrace_beats_hutchinson_on_decaying_spectrum():
    A = with_spectrum(1.0 / np.arange(1, N + 1) ** 2)
    tr = float(A.trace())
    err = {name: np.sqrt(np.mean([(f(A, 20, seed=s).estimate - tr) ** 2 for s in range(40)]))
           for name, f in ESTIMATORS.items()}
    assert err["xtrace"] < err["hutchpp"] < err["hutchinson"] / 5
    assert err["adaptive"] == err["xtrace"]             # it recognises the decay and takes XTrace


@pytest.mark.parametrize("spectrum,expect", [("flat", "hutchinson"), ("indefinite", "hutchinson"),
                                             ("one_over_k2", "xtrace"), ("spikes", "xtrace")])
def test_adaptive_trace_picks_the_better_estimator(spectrum, expect):
    """The adaptive estimator is exactly Hutchinson or XTrace with the same probes, and it picks the one with
    the lower error at this budget (checked by RMSE over 40 seeds against the exact trace)."""
    rng = np.random.default_rng(7)
    evals = {"flat": 0.5 + rng.random(200), "indefinite": rng.standard_normal(200),
             "one_over_k2": 1.0 / np.arange(1, 201) ** 2,
             "spikes": np.concatenate([[50.0, 20.0, 10.0, 5.0], 0.1 * rng.standard_normal(196)])}[spectrum]
    A = with_spectrum(evals, seed=1)
    tr = float(A.trace())
    m = 30
    picked = set()
    errs = {"adaptive": [], "hutchinson": [], "xtrace": []}
    for s in range(40):
        r = adaptive_trace(A, m, seed=s)
        same = {"hutchinson": hutchinson, "xtrace": xtrace}[r.method](A, m, seed=s)
        assert r.estimate == pytest.approx(same.estimate, rel=1e-12)
        assert r.std_error == pytest.approx(same.std_error, rel=1e-9)
        assert r.num_matvecs == m
        picked.add(r.method)
        errs["adaptive"].append(r.estimate - tr)
        errs["hutchinson"].append(hutchinson(A, m, seed=s).estimate - tr)
        errs["xtrace"].append(xtrace(A, m, seed=s).estimate - tr)
    assert picked == {expect}
    rmse = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errs.items()}
    other = "xtrace" if expect == "hutchinson" else "hutchinson"
    assert rmse[expect] < rmse[other], rmse


def test_block_traces_against_exact_diagonal_blocks():
    model, batch = tiny_mlp(), mlp_batch()
    H = dense_hessian(model, lambda o, y: ((o - y) ** 2).mean(), [batch])
    n = H.shape[0]
    blocks = {"w1": slice(0, 24), "b1": slice(24, 30), "w2": torch.arange(30, 42), "b2": torch.arange(42, n)}
    exact = {k: float(H.diagonal()[torch.arange(n)[v] if isinstance(v, slice) else v].sum())
             for k, v in blocks.items()}
    for f in (hutchinson, hutchpp):
        runs = [f(H, 30, seed=s, blocks=blocks) for s in range(100)]
        for k in blocks:
            e = np.array([r.block_estimates[k] for r in runs])
            se = np.array([r.block_std_errors[k] for r in runs])
            assert abs(e.mean() - exact[k]) <= 4 * e.std(ddof=1) / 10 + 1e-12, (f.__name__, k)
            assert np.mean(np.abs(e - exact[k]) <= 2 * se + 1e-12) >= 0.85, (f.__name__, k)
    # with a huge budget Hutch++ is exact blockwise (sketch spans the space)
    r = hutchpp(H, 3 * n, blocks=blocks)
    for k in blocks:
        assert r.block_estimates[k] == pytest.approx(exact[k], abs=1e-10)


def test_estimate_trace_modes():
    A = with_spectrum(SPECTRA["indefinite"] + 1.0)
    tr = float(A.trace())
    assert estimate_trace(A, 30).method == "hutchinson"          # a flat-ish spectrum: adaptive → Hutchinson
    assert estimate_trace(with_spectrum(1.0 / np.arange(1, N + 1) ** 2), 30).method == "xtrace"
    assert estimate_trace(A, 1).method == "hutchinson"
    assert estimate_trace(A, 30, blocks={"x": slice(0, 10)}).method == "hutchpp"
    assert estimate_trace(A, 30, method="hutchpp").method == "hutchpp"
    op = DenseOperator(A)
    r = estimate_trace(op, rtol=0.02, max_matvecs=2000, seed=3)
    assert r.method == "hutchinson" and r.relative_std_error < 0.02
    assert r.num_matvecs == op.num_matvecs < 2000
    assert abs(r.estimate - tr) < 5 * r.std_error
    capped = estimate_trace(A, rtol=1e-9, max_matvecs=40)
    assert capped.num_matvecs == 40 and capped.relative_std_error > 1e-9


@pytest.mark.parametrize("call,exc,match", [
    (lambda A: hutchinson(A, 0), ValueError, "num_matvecs must be >= 1"),
    (lambda A: hutchpp(A, 2), ValueError, "num_matvecs must be >= 3"),
    (lambda A: xtrace(A, 1), ValueError, "num_matvecs must be >= 2"),
    (lambda A: estimate_trace(A, 10, method="magic"), ValueError, "method must be one of"),
    (lambda A: estimate_trace(A, 10, rtol=0.1), ValueError, "not both"),
    (lambda A: estimate_trace(A, rtol=-1.0), ValueError, "rtol must be a positive"),
    (lambda A: estimate_trace(A, rtol=0.1, method="xtrace"), ValueError, "adaptive"),
    (lambda A: estimate_trace(A, 10, method="xtrace", blocks={"a": slice(0, 3)}), ValueError, "blocks"),
    (lambda A: hutchinson(A, 5, blocks={"a": torch.tensor([0, N])}), ValueError, r"\[0, 60\)"),
    (lambda A: hutchinson(A, 5, blocks={"a": torch.tensor([0.5])}), TypeError, "integer"),
    (lambda A: hutchinson(A, 2.5), TypeError, "num_matvecs must be an int"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call(with_spectrum(SPECTRA["indefinite"]))


def test_nan_operator_raises():
    A = with_spectrum(SPECTRA["indefinite"])
    A[0, 0] = float("nan")
    for f in ESTIMATORS.values():
        with pytest.raises(RuntimeError, match="NaN"):
            f(A, 12)


def test_hessian_operator_trace():
    from hessext.hvp import HessianOperator

    model, batch = tiny_mlp(), mlp_batch()
    loss = lambda o, y: ((o - y) ** 2).mean()  # noqa: E731
    H = dense_hessian(model, loss, [batch])
    op = HessianOperator(model, loss, batch, dtype=F64)
    n = H.shape[0]
    # exact when the budget covers the space
    assert xtrace(op, 2 * n).estimate == pytest.approx(float(H.trace()), rel=1e-10)
    # same probes, same numbers as on the dense matrix
    assert hutchinson(op, 8, seed=4).estimate == pytest.approx(hutchinson(H, 8, seed=4).estimate, rel=1e-10)
    assert xtrace(op, 20, seed=4).estimate == pytest.approx(xtrace(H, 20, seed=4).estimate, rel=1e-8)


def test_repeated_index_in_a_block_is_refused():
    """A block is a set of coordinates: a repeated index would count its diagonal entry twice."""
    A = with_spectrum(SPECTRA["indefinite"])
    for call in (lambda b: hutchinson(A, 4, blocks=b), lambda b: hutchpp(A, 6, blocks=b),
                 lambda b: estimate_trace(A, 6, blocks=b), lambda b: estimate_trace(A, rtol=0.5, blocks=b)):
        with pytest.raises(ValueError, match=r"blocks\['w'\] must be unique"):
            call({"ok": slice(0, 5), "w": [3, 7, 3]})
        with pytest.raises(ValueError, match=r"blocks\['w'\] must be unique"):
            call({"w": torch.tensor([1, 1])})
    # the same indices once each (any of the accepted forms) give the block's trace exactly at full budget
    idx = [3, 7, 11]
    mask = torch.zeros(N, dtype=torch.bool)
    mask[idx] = True
    r = hutchpp(A, 3 * N, blocks={"list": idx, "mask": mask, "array": np.array(idx)})
    exact = float(A.diagonal()[idx].sum())
    for name in ("list", "mask", "array"):
        assert r.block_estimates[name] == pytest.approx(exact, abs=1e-10)


def test_auto_falls_back_to_hutchinson_when_sketches_do_not_fit(monkeypatch):
    """The low-rank sketches (4·n·m values) must fit in half of the available memory; otherwise "auto" uses
    Hutchinson, whose probes go in bounded blocks: the same numbers as hutchinson() itself."""
    import hessext._memory as M
    from hessext.trace import estimate_trace, hutchinson, sketch_fits

    A = with_spectrum(1.0 / np.arange(1, 61) ** 2)       # decaying: the adaptive choice is XTrace
    assert estimate_trace(A, 20).method != "hutchinson"
    monkeypatch.setattr(M, "available_memory", lambda device: 2 * 4 * 60 * 20 * 8 - 16)
    from hessext.linop import as_operator
    assert not sketch_fits(as_operator(A), 20)
    got, ref = estimate_trace(A, 20), hutchinson(A, 20)
    assert got.method == "hutchinson" and got.estimate == ref.estimate and got.std_error == ref.std_error
    assert abs(got.estimate - float(torch.trace(A))) < 5 * got.std_error
