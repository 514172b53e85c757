"""FSDP2-sharded Hessian analysis (issue 17): 2 and 4 gloo processes against one process on all the data.

Each world size is one spawn (module-scoped fixture) of tests/_sharded_worker.py; every rank passes its own
batches (uneven sizes, rank 0 one batch more) to ShardedHessianOperator on a tiny MLP sharded by
``fully_shard``. The reference is the exact (double-backward) HessianOperator on the concatenated data and
the dense float64 Hessian. The 4-process run also analyses a hybrid (2 replicas × 2 shards) mesh.
"""
from __future__ import annotations

import pytest
import torch
from _models import dense_hessian, tiny_mlp
from _sharded_worker import LOSS, all_data, analyse, facade_batch, facades, worker
from _spawn import run_ranks

from hessext.hvp import HessianOperator

pytestmark = pytest.mark.distributed

SPAWN_LIMIT_S = 400.0      # a hang guard, not a timing: spawns take ~20 s on a quiet 2-core machine


def _spawn(world: int, out_dir: str, hybrid: bool, facade: bool = False) -> list[dict]:
    return run_ranks(worker, lambda r, port: (r, world, port, out_dir, hybrid, facade), world, out_dir,
                     SPAWN_LIMIT_S)


@pytest.fixture(scope="module", params=[2, pytest.param(4, marks=pytest.mark.slow)], ids=["p2", "p4"])
def run(request, tmp_path_factory) -> tuple[int, list[dict]]:
    world = request.param
    return world, _spawn(world, str(tmp_path_factory.mktemp(f"sharded{world}")), hybrid=world == 4)


def _reference(world: int) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_mlp()
        data = all_data(world)
        H = dense_hessian(model, LOSS, data)
        op = HessianOperator(model, LOSS, data, dtype=torch.float64)
        return {"dense": H, "lam": torch.linalg.eigvalsh(H), "f64": analyse(op, 1e-10), "op": op}
    finally:
        torch.set_num_threads(threads)


_REF: dict = {}


def reference(world: int) -> dict:
    if world not in _REF:
        _REF[world] = _reference(world)
    return _REF[world]


def _only(run, world: int, why: str) -> tuple[list[dict], dict]:
    """The ranks' results and the single-process reference of the ``world``-process run; skip the others."""
    w, ranks = run
    if w != world:
        pytest.skip(why)
    return ranks, reference(w)


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


# ---------------------------------------------------------------------------------------------- layout
def test_vectors_are_the_local_shards(run):
    world, ranks = run
    n = reference(world)["dense"].shape[0]
    assert all(r["global_n"] == n for r in ranks)
    assert sum(r["n"] for r in ranks) == n                      # a partition of the whole vector
    for r in ranks:
        assert r["n"] == sum(r["local_numels"])                 # the local shards, nothing else
        # 1/p of the whole, up to one row of each parameter (torch.chunk padding)
        assert abs(r["n"] - n / world) <= 4 + 6 + 1 + 6         # rows of 0.weight, 0.bias, 2.bias, 2.weight


def test_global_probes_are_the_single_process_bits(run):
    world, ranks = run
    n = ranks[0]["global_n"]
    assert all(r["probe_equal"] for r in ranks)
    covered = torch.sort(torch.cat([r["probe_indices"] for r in ranks])).values
    assert torch.equal(covered, torch.arange(n))


# ---------------------------------------------------------------------------------------------- numbers
def test_eigenvalues_match_the_exact_hessian(run):
    world, ranks = run
    ref = reference(world)
    lam = ref["lam"]
    for r in ranks:
        assert _rel(r["f64"]["top"], lam[-3:]) < 1e-6
        assert _rel(r["f64"]["top"], ref["f64"]["top"]) < 1e-6
        if "min" in r["f64"]:
            assert _rel(r["f64"]["min"], lam[:1]) < 1e-6
            assert r["f64"]["top_conv"]


def test_trace_estimators_and_density_match_single_process(run):
    ranks, ref = _only(run, 2, "the 4-process run checks eigenvalues only (time)")
    ref = ref["f64"]
    for r in ranks:
        for key in ("hutchinson", "hutchpp", "xtrace"):
            assert _rel(r["f64"][key], ref[key]) < 1e-6, key     # the same probes, the same estimate
        d, dr = r["f64"]["density"], ref["density"]
        assert float((d - dr).abs().max()) < 1e-6 * float(dr.abs().max())


def test_every_rank_returns_the_same_numbers(run):
    _, ranks = run
    for r in ranks[1:]:
        for key, v in ranks[0]["f64"].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(r["f64"][key])), key
        if "f32_top" in r:
            assert torch.equal(r["f32_top"], ranks[0]["f32_top"])


def test_float32_top5_with_default_step(run):
    ranks, ref = _only(run, 2, "checked in the 2-process run")
    lam = ref["lam"]
    for r in ranks:
        assert _rel(r["f32_top"], lam[-5:]) < 1e-3


def test_richardson_and_error_estimate(run):
    world, ranks = run
    ref = reference(world)
    for r in ranks:
        if "richardson_top" in r:
            assert _rel(r["richardson_top"], ref["lam"][-3:]) < 1e-6
        # one product against the exact one; the error estimate is small and not an underestimate by 100x
        from hessext import ops
        v = ops.rademacher(r["global_n"], seed=2, dtype=torch.float64)
        exact = (ref["dense"] @ v)[r["product_idx"]]
        err = float((r["product"] - exact).norm() / (ref["dense"] @ v).norm())
        assert err < 1e-7
        assert float(r["product_err"].max()) < 1e-6


def test_hybrid_mesh(run):
    ranks, ref = _only(run, 4, "hybrid sharding needs 4 processes")
    lam = ref["lam"]
    for r in ranks:
        assert "Replicate" in r["hybrid_placements"] and "Shard(dim=0)" in r["hybrid_placements"]
        assert _rel(r["hybrid_top"], lam[-3:]) < 1e-6
        assert torch.equal(r["hybrid_top"], ranks[0]["hybrid_top"])
    n = ranks[0]["global_n"]
    assert sum(r["hybrid_n"] for r in ranks) == 2 * n          # two replicas of a 2-way sharded vector


# ---------------------------------------------------------------------------------------------- the model
def test_model_bitwise_unchanged(run):
    _, ranks = run
    for r in ranks:
        assert r["untouched"] and r["untouched_after_failure"] and r["untouched_end"]


def test_failure_on_one_rank_ends_every_rank_with_an_error(run):
    world, ranks = run
    for rank, r in enumerate(ranks):
        kind, msg = r["failure"]
        if rank == world - 1:
            assert kind == "ValueError" and "injected failure" in msg
        else:
            assert kind == "RuntimeError" and "another rank failed" in msg
        # the group still works afterwards, and gives the same product as before
        assert torch.equal(r["after_failure"], r["product"]) or float(
            (r["after_failure"] - r["product"]).abs().max()) < 1e-9


# ---------------------------------------------------------------------------------------------- facades
@pytest.fixture(scope="module")
def facade_run(tmp_path_factory) -> tuple[int, list[dict]]:
    """One spawn of 2 ranks running API A / API B on the FSDP2 model (tests/_sharded_worker.facade_checks)."""
    return 2, _spawn(2, str(tmp_path_factory.mktemp("facades")), hybrid=False, facade=True)


def test_facades_on_a_sharded_model_match_single_process(facade_run):
    """API A (both forms) and API B's minimal analyze_step + get_hessian_eigenvectors on the FSDP2 model,
    each rank with its own batch, against the same calls on one process with the concatenated batches."""
    world, ranks = facade_run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = [facade_batch(r) for r in range(world)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        ref = facades(tiny_mlp().double(), x, y)
        lam = torch.linalg.eigvalsh(dense_hessian(tiny_mlp(), LOSS, [(x, y)]))
    finally:
        torch.set_num_threads(threads)
    assert _rel(ref["a_min_max"], torch.stack([lam[0], lam[-1]])) < 1e-6     # the reference itself
    for r in ranks:
        f = r["facades"]
        assert f["b_errors"] == {}
        for key in ("a_min_max", "a_trace", "b_top", "b_scalars", "b_eig", "t_vals"):
            assert _rel(f[key], ref[key]) < 1e-6, key
        assert float((f["b_align"] - ref["b_align"]).abs().max()) < 1e-6
        assert int(f["b_scalars"][1]) == lam.numel()                       # num_parameters: the whole n
        # whole eigenvectors (gathered from the shards), the same directions as on one process
        for key in ("a_vecs", "b_vecs"):
            assert f[key].shape == ref[key].shape
            cos = (f[key] * ref[key]).sum(1).abs() / (f[key].norm(dim=1) * ref[key].norm(dim=1))
            assert float((cos - 1).abs().max()) < 1e-6, key
        assert r["untouched_facades"]
    for r in ranks[1:]:
        for key, v in ranks[0]["facades"].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, r["facades"][key]), key


def test_facades_refuse_what_a_sharded_model_cannot_take(facade_run):
    _, ranks = facade_run
    for r in ranks:
        kind, msg = r["refusals"]["float64"]
        assert kind == "ValueError" and "float64=True" in msg and "FSDP2" in msg
        kind, msg = r["refusals"]["mode"]
        assert kind == "ValueError" and "mode='double_backward'" in msg
        kind, msg = r["refusals"]["ggn"]
        assert kind == "ValueError" and "curvature='ggn'" in msg
        # sections that cannot run on shards are skipped with their reason, the others are kept
        assert set(r["skipped"]) == {"components", "train_val_divergence"}
        assert all("FSDP2-sharded" in v for v in r["skipped"].values())
