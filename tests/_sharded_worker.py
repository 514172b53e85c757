"""Worker of tests/test_sharded.py: one rank of an FSDP2 (gloo, CPU) run of ShardedHessianOperator.

Each rank builds the tiny MLP of tests/_models.py, shards it with ``fully_shard`` (every Linear, then the
root), passes ITS OWN batches (uneven sizes, and on rank 0 one batch more than the others) and records what
the algorithms return, the local layout, the probe slices and the model state; the test compares them with
one process on all the data (exact double-backward HessianOperator) and with the dense float64 Hessian.
"""
from __future__ import annotations

import time

import torch
from _models import mlp_batch, tiny_mlp
from _spawn import run_rank
from torch import nn

GROUP_TIMEOUT_S = 30.0
LOSS = nn.MSELoss()


def rank_data(rank: int, world: int) -> list:
    """Rank r's batches: sizes 5 + r (seed 10 + r); rank 0 also has a second batch of 3 samples."""
    out = [mlp_batch(seed=10 + rank, n=5 + rank)]
    if rank == 0:
        out.append(mlp_batch(seed=99, n=3))
    return out


def all_data(world: int) -> list:
    return [b for r in range(world) for b in rank_data(r, world)]


def _as(batches: list, dtype: torch.dtype) -> list:
    return [(x.to(dtype), y.to(dtype)) for x, y in batches]


def _sharded_model(mesh, dtype: torch.dtype) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    with torch.random.fork_rng():
        model = tiny_mlp().to(dtype)
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _state(model: nn.Module) -> dict:
    return {"shards": [p.to_local().detach().clone() for p in model.parameters()],
            "grads": [p.grad for p in model.parameters()],
            "training": [m.training for m in model.modules()],
            "rng": torch.get_rng_state()}


def _same(a: dict, b: dict) -> bool:
    return (all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a["shards"], b["shards"]))
            and all(x is y for x, y in zip(a["grads"], b["grads"])) and a["training"] == b["training"]
            and torch.equal(a["rng"], b["rng"]))


def _error(fn) -> tuple:
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e)
    return None, None


def analyse(op, tol: float, k: int = 3) -> dict:
    """The algorithms on an operator (sharded or not): the same calls in the workers and the test."""
    from hessext.density import spectral_density
    from hessext.lanczos import lanczos
    from hessext.trace import hutchinson, hutchpp, xtrace

    top = lanczos(op, k=k, which="LA", tol=tol, seed=0)
    return {"top": top.eigenvalues, "top_conv": top.converged,
            "min": lanczos(op, k=1, which="SA", tol=tol, seed=1).eigenvalues,
            "hutchinson": torch.tensor(hutchinson(op, 12, seed=3).estimate, dtype=torch.float64),
            "hutchpp": torch.tensor(hutchpp(op, 15, seed=5).estimate, dtype=torch.float64),
            "xtrace": torch.tensor(xtrace(op, 20, seed=4).estimate, dtype=torch.float64),
            "density": spectral_density(op, num_probes=2, num_iter=6, seed=7).density}


def _probe_check(op) -> dict:
    """This rank's slice of the global probes and the global indices it covers."""
    from hessext import ops

    local = op.rademacher(3, seed=11, offset=5, dtype=torch.float64)
    idx = torch.cat([torch.arange(s0, s0 + c) for s0, c in op.local_ranges()]) if op.n else \
        torch.zeros(0, dtype=torch.long)
    ref = ops.rademacher(op.global_n, 3, seed=11, offset=5, dtype=torch.float64)
    return {"probe_equal": bool(torch.equal(local, ref[idx])), "probe_indices": idx}


def _failing_loss(rank: int, bad_rank: int, at_call: int):
    calls = {"n": 0}

    def loss(out, y):
        calls["n"] += 1
        if rank == bad_rank and calls["n"] == at_call:
            raise ValueError("injected failure in the loss")
        return LOSS(out, y)
    return loss


def checks(rank: int, world: int, hybrid: bool) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    from hessext.sharded import ShardedHessianOperator

    res: dict = {}
    mesh = init_device_mesh("cpu", (world,))
    model = _sharded_model(mesh, torch.float64)
    model.train()                                   # a non-default flag that must survive
    before = _state(model)
    mine = _as(rank_data(rank, world), torch.float64)
    op = ShardedHessianOperator(model, LOSS, mine)
    res["n"], res["global_n"] = op.n, op.global_n
    res["local_numels"] = [p.to_local().numel() for p in model.parameters()]
    res["f64"] = analyse(op, 1e-10) if world == 2 else {"top": analyse_top(op)}
    res.update(_probe_check(op))
    res["untouched"] = _same(before, _state(model))
    if world == 2:
        rich = ShardedHessianOperator(model, LOSS, mine, scheme="richardson")
        res["richardson_top"] = analyse_top(rich)
    est = ShardedHessianOperator(model, LOSS, mine, estimate_error=True)
    v = est.rademacher(seed=2, dtype=torch.float64)
    res["product"], res["product_err"] = est.matvec(v), est.last_error.clone()
    res["product_idx"] = _probe_check(est)["probe_indices"]
    # a failure on one rank: every rank raises, the model is unchanged, the group still works
    bad = ShardedHessianOperator(model, _failing_loss(rank, world - 1, 3), mine)
    t0 = time.perf_counter()
    res["failure"] = _error(lambda: bad.matvec(v))
    res["failure_seconds"] = time.perf_counter() - t0
    res["untouched_after_failure"] = _same(before, _state(model))
    res["after_failure"] = op.matvec(v)
    res["untouched_end"] = _same(before, _state(model))
    if world == 2:      # float32: the model in float32, the default step
        m32 = _sharded_model(mesh, torch.float32)
        res["f32_top"] = analyse_top(ShardedHessianOperator(m32, LOSS, _as(mine, torch.float32)), k=5,
                                     tol=1e-5)
    if hybrid:
        hmesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
        hm = _sharded_model(hmesh, torch.float64)
        hop = ShardedHessianOperator(hm, LOSS, mine)
        res["hybrid_n"], res["hybrid_top"] = hop.n, analyse_top(hop)
        res["hybrid_placements"] = str(next(hm.parameters()).placements)
    return res


def facade_batch(rank: int) -> tuple:
    """Rank r's batch for the facade checks (float64): equal sizes, so that API A's weight 1 per rank and
    API B's batch-size weights both give the mean over the concatenated data."""
    x, y = mlp_batch(seed=20 + rank, n=6)
    return x.double(), y.double()


def facades(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """API A and API B on ``model`` (sharded or not): the same calls in the workers and in the test."""
    import warnings

    from hessext.analysis import CurvatureTracker, HessianAnalyzer, HessianConfig, get_hessian_eigenvectors
    from hessext.compat.api_a import ModelWrapper, hessian_trace, min_max_hessian_eigs

    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a residual floor of the FD products at tol 1e-9
        lo, hi, vlo, vhi = min_max_hessian_eigs(ModelWrapper(model, lambda o: LOSS(o, y), x), max_iter=44,
                                                tol=1e-9)
    out["a_min_max"] = torch.tensor([lo, hi], dtype=torch.float64)
    out["a_vecs"] = torch.stack([torch.from_numpy(vlo), torch.from_numpy(vhi)])
    out["a_trace"] = torch.tensor([hessian_trace(model, LOSS, x, y, num_random_vectors=8, seed=3)],
                                  dtype=torch.float64)
    cfg = HessianConfig.minimal(n_components=3, trace_probes=4, tolerance=1e-10,
                                track_gradient_alignment=True)
    res = HessianAnalyzer(cfg).analyze_step(model, LOSS, (x, y), model_type=None)
    out["b_errors"] = res.get("errors", {})
    hs, al = res["hessian"], res["alignment"]
    out["b_top"] = torch.tensor(hs["top_eigenvalues"], dtype=torch.float64)
    out["b_scalars"] = torch.tensor([hs["hessian_trace_estimate"], hs["num_parameters"], al["loss"],
                                     al["grad_norm"], al["rayleigh_quotient"], al["top_subspace_fraction"]],
                                    dtype=torch.float64)
    out["b_align"] = torch.tensor(al["eigenvector_alignments"], dtype=torch.float64)
    vals, vecs = get_hessian_eigenvectors(model, LOSS, (x, y), n_top_vectors=2, model_type=None, tol=1e-10)
    out["b_eig"], out["b_vecs"] = torch.from_numpy(vals), torch.from_numpy(vecs)
    rec = CurvatureTracker(model, LOSS, (x, y), every=1, k=1, tol=1e-10,
                           quantities=("top_k", "grad_overlap", "batch_sharpness")).step(0)
    q = rec["quantities"]
    out["t_vals"] = torch.tensor([*q["top_k"], q["grad_overlap"], q["batch_sharpness"], rec["loss"]],
                                 dtype=torch.float64)
    return out


def facade_checks(rank: int, world: int, hybrid: bool) -> dict:
    """API A and API B facades on the sharded model (issue 17, item 4): the numbers, the model state, the
    refusals and the skipped sections (a spawn of its own: tests/test_sharded.py::facade_run)."""
    from torch.distributed.device_mesh import init_device_mesh

    from hessext.analysis import HessianAnalyzer, HessianConfig
    from hessext.compat.api_a import min_max_hessian_eigs
    from hessext.distributed import hessian_operator

    res: dict = {}
    mesh = init_device_mesh("cpu", (world,))
    model = _sharded_model(mesh, torch.float64)
    model.train()                                   # a non-default flag that must survive
    m32 = _sharded_model(mesh, torch.float32)
    fstate, t_facades = _state(model), time.perf_counter()
    res["facades"] = facades(model, *facade_batch(rank))
    res["untouched_facades"] = _same(fstate, _state(model))
    res["refusals"] = {"float64": _error(lambda: min_max_hessian_eigs(m32, *_as([facade_batch(rank)],
                                                                              torch.float32)[0], LOSS,
                                                                   float64=True)),
                       "mode": _error(lambda: hessian_operator(model, LOSS, [facade_batch(rank)],
                                                               mode="double_backward")),
                       "ggn": _error(lambda: HessianAnalyzer(HessianConfig.minimal(curvature="ggn"))
                                     .analyze_step(model, LOSS, facade_batch(rank), model_type=None))}
    cfg = HessianConfig.minimal(n_components=1, trace_probes=1, tolerance=1e-3,
                                track_component_hessian=True, track_train_val_landscape_divergence=True)
    skipped = HessianAnalyzer(cfg).analyze_step(model, LOSS, facade_batch(rank), facade_batch(rank),
                                                model_type=None)
    res["skipped"] = skipped.get("errors", {})
    res["untouched_facades"] &= _same(fstate, _state(model))
    res["facades_seconds"] = time.perf_counter() - t_facades
    return res


def analyse_top(op, k: int = 3, tol: float = 1e-10) -> torch.Tensor:
    from hessext.lanczos import lanczos

    return lanczos(op, k=k, which="LA", tol=tol, seed=0).eigenvalues


def worker(rank: int, world: int, port: int, out_dir: str, hybrid: bool, facade: bool = False) -> None:
    run_rank(rank, world, port, out_dir, GROUP_TIMEOUT_S,
             lambda: (facade_checks if facade else checks)(rank, world, hybrid))
