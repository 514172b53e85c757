"""Data-parallel Hessian analysis: 2 processes over gloo on localhost against one process on all the data.

One spawn of two ranks (module-scoped fixture) runs every distributed check and writes its results to a
temporary file per rank; the tests below compare them with a single-process run on the concatenated data
and with the dense float64 Hessian. A second, separate group with a 2 s timeout checks that a rank that
skips a collective makes the other fail with an error instead of hanging.
"""
from __future__ import annotations

import copy
import os
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _models import dense_hessian, mlp_batch, tiny_mlp, tiny_transformer, transformer_batch, transformer_loss  # noqa: E402
from _spawn import run_ranks
from torch import nn

from hessext.distributed import (  # noqa: E402
    DataParallelMean,
    DistributedHessianOperator,
    data_parallel,
    hessian_operator,
    init_from_env,
    shard,
)
from hessext.hvp import HessianOperator  # noqa: E402
from hessext.lanczos import lanczos  # noqa: E402

pytestmark = pytest.mark.distributed

WORLD = 2
GROUP_TIMEOUT_S = 30.0     # main group: generous, only bounds a failure of the test itself
SHORT_TIMEOUT_S = 2.0      # the group used for the timeout check
SPAWN_LIMIT_S = 120.0      # hard bound on the whole spawn (killed after this)
LOSS = nn.MSELoss()
# Uneven shards: rank 0 gets the batches of 8 and 5 samples, rank 1 the batch of 7.
SIZES = [(1, 8), (2, 5), (3, 7)]
BLOCKS = {"first": ["0.weight", "0.bias"], "second": ["2.weight", "2.bias"]}


def _data() -> list:
    return [mlp_batch(seed=s, n=n) for s, n in SIZES]


def _transformer() -> nn.Module:
    """tiny_transformer() seeds the global RNG: build it without touching the RNG state under test."""
    with torch.random.fork_rng():
        return tiny_transformer()


def _analyse(op: HessianOperator) -> dict:
    """Everything the algorithms return, run identically in the workers and in the single process."""
    from hessext.density import spectral_density
    from hessext.lanczos import lanczos
    from hessext.trace import estimate_trace, hutchpp

    out: dict = {}
    tol = 1e-10 if op.dtype == torch.float64 else 1e-6  # float32 cannot verify less than 4 eps ~ 5e-7
    top = lanczos(op, k=3, which="LA", tol=tol, seed=0)
    out["top"], out["top_vecs"] = top.eigenvalues, top.eigenvectors
    out["top_residuals"] = top.residuals
    out["min"] = lanczos(op, k=1, which="SA", tol=tol, seed=1).eigenvalues
    # partial reorthogonalisation ("auto" above 10⁶ unknowns): every rank takes the same branches (refused
    # in float32 on the pure-Python fallback)
    import hessext
    mode = "partial" if hessext.BACKEND != "python" or op.dtype == torch.float64 else "full"
    out["top_partial"] = lanczos(op, k=3, which="LA", tol=tol, seed=0, reorth=mode).eigenvalues
    out["trace"] = torch.tensor(hutchpp(op, 30, seed=3).estimate, dtype=torch.float64)
    blocks = {k: op.layout.indices(v) for k, v in BLOCKS.items()}
    bt = estimate_trace(op, 24, method="hutchinson", seed=5, blocks=blocks)
    out["block_traces"] = torch.tensor([bt.block_estimates[k] for k in BLOCKS], dtype=torch.float64)
    dens = spectral_density(op, num_probes=2, num_iter=8, seed=7)
    out["density"] = dens.density
    loss, grad = op.loss_and_grad()
    out["loss"], out["grad"] = torch.tensor(loss, dtype=torch.float64), grad
    return out


COMPONENTS = ["attention", "ffn", "embeddings", "norm"]


def _components(op: HessianOperator) -> dict:
    """API B's ComponentAnalyzer, unchanged, on a given operator: per-component top eigenvalues and traces."""
    from hessext.analysis import ComponentAnalyzer

    res = ComponentAnalyzer(tol=1e-9, trace_probes=8, seed=0).analyze_all_components(
        op.model, None, None, component_list=COMPONENTS, n_components=2, operator=op)
    return {k: torch.tensor([v["trace_estimate"], *v["top_eigenvalues"]], dtype=torch.float64)
            for k, v in res.items()}


def _api_a(model: nn.Module, batch: tuple) -> torch.Tensor:
    """API A's legacy functions, unchanged, on one batch: [trace, max eig, min eig]."""
    from hessext.compat import api_a

    x, y = batch
    tr = api_a.hessian_trace(model, LOSS, x, y, num_random_vectors=12, seed=0)
    lmax, lmin = api_a.min_max_hessian_eigs(model, x, y, LOSS, max_iter=44, tol=1e-6)[:2]
    return torch.tensor([tr, lmax, lmin], dtype=torch.float64)


def _api_a_batch() -> tuple:
    return mlp_batch(seed=9, n=10)


def _analyzer(batch: tuple) -> dict:
    """API B's HessianAnalyzer.analyze_step, unchanged, on the tiny transformer (float64)."""
    from hessext.analysis import HessianAnalyzer, HessianConfig

    cfg = HessianConfig(n_components=2, n_bottom=1, tolerance=1e-10, trace_probes=8, dtype=torch.float64,
                        component_list=["attention", "ffn"], track_train_val_landscape_divergence=False)
    res = HessianAnalyzer(cfg).analyze_step(_transformer(), transformer_loss, batch, None, None, strict=True)
    h = res["hessian"]
    out = {"top": torch.tensor(h["top_eigenvalues"], dtype=torch.float64),
           "min": torch.tensor([h["min_eigenvalue"]], dtype=torch.float64),
           "trace": torch.tensor([h["hessian_trace_estimate"]], dtype=torch.float64),
           "loss_grad_norm": torch.tensor([h["loss"], h["grad_norm"]], dtype=torch.float64)}
    for k, v in res["components"].items():
        out["component/" + k] = torch.tensor([v["trace_estimate"], *v["top_eigenvalues"]],
                                             dtype=torch.float64)
    return out


def _model_state(model: nn.Module) -> dict:
    return {
        "params": {k: p.detach().clone() for k, p in model.named_parameters()},
        "buffers": {k: b.detach().clone() for k, b in model.named_buffers()},
        "grads": {k: p.grad for k, p in model.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def _same_state(a: dict, b: dict) -> bool:
    return (a["grads"] == b["grads"] and a["requires_grad"] == b["requires_grad"]
            and a["training"] == b["training"] and torch.equal(a["rng"], b["rng"])
            and all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
            and all(torch.equal(a["buffers"][k], b["buffers"][k]) for k in a["buffers"]))


def _error(fn) -> tuple[str | None, str | None, float]:
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e), time.perf_counter() - t0
    return None, None, time.perf_counter() - t0


def _checks(rank: int, event, dead) -> dict:
    res: dict = {}
    t0 = time.perf_counter()
    model = tiny_mlp()
    model.train()  # a non-default flag that must survive
    before = _model_state(model)
    mine = shard(_data(), rank, WORLD)
    res["num_local_batches"] = len(mine)

    op = DistributedHessianOperator(model, LOSS, mine, dtype=torch.float64)
    res["dense64"] = op.to_dense()
    res["f64"] = _analyse(op)
    # one all-reduce per matmat block, whatever its width
    k0 = op.num_allreduces
    op.matmat(torch.ones(op.n, 5, dtype=torch.float64))
    res["allreduces_per_block"] = op.num_allreduces - k0

    op32 = DistributedHessianOperator(model, LOSS, mine)
    res["f32"] = _analyse(op32)
    # float32 products summed across ranks in float64
    op32r = DistributedHessianOperator(model, LOSS, mine, reduce_dtype=torch.float64)
    res["f32_reduce64_dense"] = op32r.to_dense()

    # a DDP-wrapped copy: its .module is analysed, nothing is synchronised or written
    ddp_model = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(ddp_model)
    ddp_before = _model_state(ddp_model)
    opd = DistributedHessianOperator(ddp, LOSS, mine, params=["module.0.weight", "module.2.weight"],
                                     dtype=torch.float64)
    res["ddp_names"] = opd.layout.names
    res["ddp_dense"] = opd.to_dense()
    res["ddp_top"] = lanczos(opd, k=3, which="LA", tol=1e-10, seed=0).eigenvalues
    res["ddp_untouched"] = _same_state(ddp_before, _model_state(ddp_model))
    # DDP's reducer was never armed: an ordinary training step still works and averages the gradients
    x, y = mine[0]
    res["ddp_train_step"] = _error(lambda: LOSS(ddp(x), y).backward())[:2]
    res["ddp_grad"] = ddp_model[0].weight.grad.clone()

    # API B components on a distributed operator (tiny transformer, the batch split by samples)
    tmodel = _transformer()
    tbatch = shard(transformer_batch(n=4), rank, WORLD)
    res["components"] = _components(DistributedHessianOperator(tmodel, transformer_loss, tbatch,
                                                               dtype=torch.float64))
    # API A's functions and API B's HessianAnalyzer build their operators with hessian_operator(): under
    # data_parallel() they are distributed ones, the facades' code is unchanged; outside the block they are
    # plain again.
    with data_parallel():
        res["api_a_class"] = type(hessian_operator(model, LOSS, mine)) is DistributedHessianOperator
        res["api_a"] = _api_a(model, shard(_api_a_batch(), rank, WORLD))
        res["analyzer"] = _analyzer(shard(transformer_batch(n=4), rank, WORLD))
    res["api_a_restored"] = type(hessian_operator(model, LOSS, mine)) is HessianOperator

    # layout mismatch: rank 1 analyses a subset
    res["mismatch"] = _error(lambda: DistributedHessianOperator(
        model, LOSS, mine, params=["0.weight", "2.weight"] if rank == 1 else None))
    # dtype mismatch of the operator
    res["dtype_mismatch"] = _error(lambda: DistributedHessianOperator(
        model, LOSS, mine, dtype=torch.float64 if rank == 0 else torch.float32))

    # parameter values: in sync here; a perturbed copy on rank 1 is detected on every rank
    res["in_sync"] = op.check_parameters_in_sync()
    drifted = copy.deepcopy(model)
    if rank == 1:
        with torch.no_grad():
            drifted[0].weight[0, 0] += 1e-3
    opx = DistributedHessianOperator(drifted, LOSS, mine)
    res["drift"] = _error(opx.check_parameters_in_sync)

    # rank 1 cannot build its operator (no data): it raises its own error, rank 0 is told at once
    res["build_failure"] = _error(lambda: DistributedHessianOperator(model, LOSS, mine if rank == 0 else []))
    # failure on one rank (NaN data on rank 1) -> an error on every rank, no waiting for the timeout
    bad = mine if rank == 0 else [(mine[0][0] * float("nan"), mine[0][1])]
    opb = DistributedHessianOperator(model, LOSS, bad, dtype=torch.float64)
    res["nan_matvec"] = _error(lambda: opb.matvec(torch.ones(opb.n, dtype=torch.float64)))
    res["nan_grad"] = _error(opb.loss_and_grad)
    # the group still works afterwards
    res["after_failure"] = op.matvec(torch.ones(op.n, dtype=torch.float64))

    res["untouched"] = _same_state(before, _model_state(model))

    # timeout: rank 0 skips the collective that rank 1 enters; rank 1 must fail after ~SHORT_TIMEOUT_S
    short = dist.new_group(timeout=timedelta(seconds=SHORT_TIMEOUT_S))
    opt = DistributedHessianOperator(model, LOSS, mine, process_group=short)
    # dead rank: a second short-timeout group, on which rank 1 will have died when rank 0 calls
    other = dist.new_group(timeout=timedelta(seconds=SHORT_TIMEOUT_S))
    opdead = DistributedHessianOperator(model, LOSS, mine, process_group=other)
    res["seconds_before_timeout_check"] = time.perf_counter() - t0
    if rank == 1:
        res["timeout"] = _error(lambda: opt.matvec(torch.ones(opt.n)))
        event.set()
        res["die"] = True  # _worker saves this and exits abruptly
    else:
        event.wait(SPAWN_LIMIT_S)
        dead.wait(SPAWN_LIMIT_S)  # rank 1 has saved its results and is exiting without any cleanup
        time.sleep(0.2)
        res["dead_rank"] = _error(lambda: lanczos(opdead, k=1, which="LA", tol=1e-6, seed=0))
    return res


def _worker(rank: int, port: int, out_dir: str, event, dead) -> None:
    torch.set_num_threads(1)
    res: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=GROUP_TIMEOUT_S))
        res = _checks(rank, event, dead)
    except BaseException:  # noqa: BLE001  report, do not hang the parent
        res["fatal"] = traceback.format_exc()
        event.set()
        dead.set()
    finally:
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        if res.get("die"):
            dead.set()
            os._exit(0)  # a dead rank: no destroy_process_group, sockets closed by the OS
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = str(tmp_path_factory.mktemp("dist"))
    ctx = mp.get_context("spawn")
    event, dead = ctx.Event(), ctx.Event()
    return run_ranks(_worker, lambda r, port: (r, port, out_dir, event, dead), WORLD, out_dir, SPAWN_LIMIT_S)


@pytest.fixture(scope="module")
def single() -> dict:
    """One process, all the data: the reference every rank must reproduce (1 thread, as the ranks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: more threads only spin on a busy machine
    try:
        return _single()
    finally:
        torch.set_num_threads(threads)


def _single() -> dict:
    model = tiny_mlp()
    return {
        "f64": _analyse(HessianOperator(model, LOSS, _data(), dtype=torch.float64)),
        "f32": _analyse(HessianOperator(model, LOSS, _data())),
        "dense": dense_hessian(model, LOSS, _data()),
        "components": _components(HessianOperator(tiny_transformer(), transformer_loss,
                                                  transformer_batch(n=4), dtype=torch.float64)),
        "api_a": _api_a(model, _api_a_batch()),
        "analyzer": _analyzer(transformer_batch(n=4)),
    }


def _rel(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    return float((a.double() - b.double()).abs().max()) / scale


# ---------------------------------------------------------------------------------------- equality
def test_shards_are_uneven(ranks):
    assert [r["num_local_batches"] for r in ranks] == [2, 1]


def test_operator_is_the_full_data_hessian(ranks, single):
    H = single["dense"]
    scale = float(H.abs().max())
    for r in ranks:
        assert _rel(r["dense64"], H, scale) < 1e-10
        assert _rel(r["f32_reduce64_dense"], H, scale) < 1e-5


@pytest.mark.parametrize("precision,tol", [("f64", 1e-10), ("f32", 1e-5)], ids=["float64", "float32"])
def test_matches_single_process(ranks, single, precision, tol):
    ref = single[precision]
    lam = torch.linalg.eigvalsh(single["dense"])
    scale = float(lam.abs().max())  # relative to the spectral norm
    for r in ranks:
        got = r[precision]
        assert _rel(got["top"], ref["top"], scale) < tol
        assert _rel(got["min"], ref["min"], scale) < tol
        assert _rel(got["top_partial"], ref["top_partial"], scale) < tol
        assert _rel(got["top_partial"], got["top"], scale) < 10 * tol
        assert _rel(got["trace"], ref["trace"], max(abs(float(ref["trace"])), scale)) < tol
        assert _rel(got["block_traces"], ref["block_traces"], scale) < tol
        assert _rel(got["density"], ref["density"], float(ref["density"].abs().max())) < 100 * tol
        assert _rel(got["grad"], ref["grad"], float(ref["grad"].abs().max())) < tol
        assert abs(float(got["loss"] - ref["loss"])) / abs(float(ref["loss"])) < tol
    # and the distributed float64 answer is the dense truth
    got = ranks[0]["f64"]
    assert _rel(got["top"], lam[-3:], scale) < 1e-8
    assert _rel(got["min"], lam[:1], scale) < 1e-8


def test_block_traces_are_the_dense_diagonal_blocks(ranks, single):
    H = single["dense"]
    layout = HessianOperator(tiny_mlp(), LOSS, _data()).layout
    exact = torch.stack([H.diagonal()[layout.indices(v)].sum() for v in BLOCKS.values()])
    est = ranks[0]["f64"]["block_traces"]
    # Hutchinson with 24 probes: unbiased, not exact; within a generous band of the truth.
    assert torch.allclose(est, exact, rtol=0.5, atol=0.5 * float(exact.abs().max()))


def test_facades_unchanged_match_single_process(ranks, single):
    ref = single["components"]
    assert sorted(ref) == sorted(COMPONENTS)
    for r in ranks:
        assert sorted(r["components"]) == sorted(ref)
        for k, v in ref.items():
            assert _rel(r["components"][k], v, float(v.abs().max())) < 1e-9, k
        a = single["api_a"]
        assert _rel(r["api_a"], a, float(a.abs().max())) < 1e-5  # API A runs in the model's float32
        assert r["api_a_class"] and r["api_a_restored"]
        an = single["analyzer"]
        assert sorted(r["analyzer"]) == sorted(an) and "component/attention" in an
        for k, v in an.items():
            assert _rel(r["analyzer"][k], v, float(v.abs().max())) < 1e-10, k
    a, b = ranks
    assert all(torch.equal(a["components"][k], b["components"][k]) for k in ref)
    assert torch.equal(a["api_a"], b["api_a"])
    assert all(torch.equal(a["analyzer"][k], b["analyzer"][k]) for k in a["analyzer"])


def test_bitwise_identical_on_every_rank(ranks):
    a, b = ranks
    for precision in ("f64", "f32"):
        for key, va in a[precision].items():
            assert torch.equal(va, b[precision][key]), f"{precision}/{key} differs across ranks"
    assert torch.equal(a["dense64"], b["dense64"])
    assert torch.equal(a["ddp_top"], b["ddp_top"])


def test_one_allreduce_per_block(ranks):
    assert all(r["allreduces_per_block"] == 1 for r in ranks)


# ---------------------------------------------------------------------------------------- DDP
def test_ddp_wrapped_model(ranks, single):
    H = single["dense"]
    layout = HessianOperator(tiny_mlp(), LOSS, _data()).layout
    idx = layout.indices(["0.weight", "2.weight"])
    sub = H[idx][:, idx]
    lam = torch.linalg.eigvalsh(sub)
    for r in ranks:
        assert r["ddp_names"] == ["0.weight", "2.weight"]
        assert _rel(r["ddp_dense"], sub, float(sub.abs().max())) < 1e-10
        assert _rel(r["ddp_top"], lam[-3:], float(lam.abs().max())) < 1e-8
        assert r["ddp_untouched"]
        assert r["ddp_train_step"] == (None, None)
    assert torch.equal(ranks[0]["ddp_grad"], ranks[1]["ddp_grad"])  # all-reduced by DDP's own backward


# ---------------------------------------------------------------------------------------- failures
def test_layout_mismatch_raises_on_every_rank(ranks):
    for r in ranks:
        kind, msg, _ = r["mismatch"]
        assert kind == "RuntimeError"
        assert "parameter layout differs across ranks" in msg
        assert "rank 0 has n=44" in msg and "rank 1 has n=36" in msg
        assert "0.bias" in msg
    assert ranks[0]["mismatch"][1] == ranks[1]["mismatch"][1]
    for r in ranks:
        kind, msg, _ = r["dtype_mismatch"]
        assert kind == "RuntimeError" and "torch.float64" in msg and "torch.float32" in msg


def test_build_failure_on_one_rank_raises_on_every_rank(ranks):
    kind1, msg1, _ = ranks[1]["build_failure"]
    assert kind1 == "ValueError" and "data is empty" in msg1
    kind0, msg0, secs0 = ranks[0]["build_failure"]
    assert kind0 == "RuntimeError" and "another rank failed" in msg0 and "rank 1: ValueError" in msg0
    assert secs0 < GROUP_TIMEOUT_S


def test_failure_on_one_rank_raises_on_every_rank(ranks):
    for key in ("nan_matvec", "nan_grad"):
        kind0, msg0, secs0 = ranks[0][key]
        kind1, msg1, _ = ranks[1][key]
        assert kind1 == "LossNotFiniteError"
        assert kind0 == "RuntimeError" and "1 other rank(s) failed" in msg0
        assert secs0 < GROUP_TIMEOUT_S  # told by the failing rank, not by the timeout
    H = ranks[0]["dense64"]
    for r in ranks:
        assert torch.allclose(r["after_failure"], H.sum(1), rtol=1e-12, atol=1e-12)


def test_hanging_rank_ends_in_timeout_error(ranks):
    kind, msg, secs = ranks[1]["timeout"]
    assert kind == "RuntimeError"
    assert "all-reduce of a Hessian-vector block failed on rank 1 of 2" in msg
    assert SHORT_TIMEOUT_S * 0.9 <= secs < GROUP_TIMEOUT_S


def test_dead_rank_ends_in_error_not_hang(ranks):
    kind, msg, secs = ranks[0]["dead_rank"]
    assert kind == "RuntimeError"
    assert "failed on rank 0 of 2" in msg
    assert secs < GROUP_TIMEOUT_S  # the short group's timeout (or the closed connection), never a hang


def test_parameter_sync_check(ranks):
    assert [r["in_sync"] for r in ranks] == [0.0, 0.0]
    for r in ranks:
        kind, msg, _ = r["drift"]
        assert kind == "RuntimeError" and "parameters differ across ranks" in msg


def test_model_untouched(ranks):
    assert all(r["untouched"] for r in ranks)


# ---------------------------------------------------------------------------------------- one process
def test_without_process_group_is_plain_operator(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.is_initialized()
    model = tiny_mlp()
    op = DistributedHessianOperator(model, LOSS, _data(), dtype=torch.float64)
    ref = HessianOperator(model, LOSS, _data(), dtype=torch.float64)
    assert (op.rank, op.world_size) == (0, 1)
    v = torch.randn(op.n, dtype=torch.float64)
    assert torch.equal(op.matvec(v), ref.matvec(v))
    assert op.num_allreduces == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="not initialised"):
        DistributedHessianOperator(model, LOSS, _data())


def test_data_parallel_without_process_group(monkeypatch):
    """Outside torch.distributed the block changes no number; operators hessian_operator() builds inside it
    are data-parallel ones (with the block's keywords, an explicit keyword winning), plain ones again after
    it, also after an exception inside the block; another thread is not affected; HessianOperator(...)
    itself is always the plain class (no ambient class swapping)."""
    import threading

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model, batch = tiny_mlp(), _api_a_batch()
    ref = _api_a(model, batch)
    x, y = mlp_batch(n=6)
    with data_parallel():
        op = hessian_operator(model, LOSS, (x, y))
        assert type(op) is DistributedHessianOperator and op.reduce_dtype is None
        assert isinstance(op._reducer, DataParallelMean) and not op._reducer.distributed
        assert type(HessianOperator(model, LOSS, (x, y))) is HessianOperator
        assert torch.equal(_api_a(model, batch), ref)
        seen = []
        t = threading.Thread(target=lambda: seen.append(type(hessian_operator(model, LOSS, (x, y)))))
        t.start()
        t.join()
        assert seen == [HessianOperator]
        with data_parallel(reduce_dtype=torch.float64):
            assert hessian_operator(model, LOSS, (x, y)).reduce_dtype == torch.float64
            explicit = hessian_operator(model, LOSS, (x, y), reduce_dtype=torch.float32)
            assert explicit.reduce_dtype == torch.float32
            assert DistributedHessianOperator(model, LOSS, (x, y)).reduce_dtype == torch.float64
        assert hessian_operator(model, LOSS, (x, y)).reduce_dtype is None
    with pytest.raises(KeyError):
        with data_parallel():
            raise KeyError("boom")
    assert type(hessian_operator(model, LOSS, (x, y))) is HessianOperator
    with pytest.raises(ValueError, match="reduce_dtype"):
        with data_parallel(reduce_dtype=torch.int32):
            pass
    with pytest.raises(TypeError, match="reducer"):
        DistributedHessianOperator(model, LOSS, (x, y), reducer=DataParallelMean())


def test_shard_lists_and_batches():
    data = list(range(5))
    parts = [shard(data, r, 2) for r in range(2)]
    assert parts == [[0, 1, 2], [3, 4]]
    x, y = mlp_batch(n=7)
    pieces = [shard((x, y), r, 3) for r in range(3)]
    assert [p[0].shape[0] for p in pieces] == [3, 2, 2]
    assert torch.equal(torch.cat([p[0] for p in pieces]), x)
    assert torch.equal(torch.cat([p[1] for p in pieces]), y)
    d = {"input_ids": torch.arange(12).reshape(4, 3), "labels": torch.arange(12).reshape(4, 3), "tag": "t"}
    assert shard(d, 1, 2)["input_ids"].tolist() == [[6, 7, 8], [9, 10, 11]] and shard(d, 1, 2)["tag"] == "t"
    with pytest.raises(ValueError, match="world_size"):
        shard(data, 0, 0)
    with pytest.raises(ValueError, match="rank"):
        shard(data, 2, 2)
    with pytest.raises(ValueError, match="3 batches"):
        shard([1, 2, 3], 0, 4)
    with pytest.raises(TypeError, match="data"):
        shard(3.0, 0, 1)


def test_init_from_env_validates(monkeypatch):
    with pytest.raises(TypeError, match="timeout"):
        init_from_env(timeout=5)
    with pytest.raises(ValueError, match="backend"):
        init_from_env(backend="tcp")
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_from_env()
