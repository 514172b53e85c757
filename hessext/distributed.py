"""Data-parallel Hessian analysis over ``torch.distributed``: one all-reduce per matvec block.

Every rank holds the same model (same parameters, same layout) and its own shard of the data. Rank ``r``
holds batches ``b ∈ B_r`` with weights ``w_b`` (the batch sizes) and computes, for a block ``X ∈ R^{n×m}``,

    S_r = Σ_{b ∈ B_r} w_b H_b X        and        W_r = Σ_{b ∈ B_r} w_b.

One all-reduce of the packed buffer ``[vec(S_r); W_r; f_r]`` (``n·m + 2`` numbers; ``f_r`` = 1 if rank ``r``
failed before reaching the collective, so that the others raise at once instead of waiting for the
timeout) gives every rank ``S = Σ_r S_r`` and ``W = Σ_r W_r``, and every rank returns

    H X = S / W = (Σ_b w_b H_b X) / (Σ_b w_b),

the weighted mean Hessian over **all** ranks' samples: exactly the operator a single process would build on
the concatenated data (up to floating-point summation order).

Why the algorithms need no further communication: an all-reduce hands the *same bits* to every rank (ring
and tree algorithms reduce each chunk on one rank, then broadcast it). Lanczos, the trace estimators and SLQ
are deterministic functions of the operator's outputs, of seeded start vectors and of counter-based probes
(:func:`hessext.ops.rademacher`), so every rank builds the same Krylov space, takes the same branches and
returns the same numbers, with no broadcast of probes or basis vectors. The cost of one Lanczos step on
``p`` ranks is ``T_hvp(N/p) + T_allreduce(n) + T_orth(n, k)``: the HVP work is divided among the ranks, the
communication is one all-reduce of ``n`` floats (ring: ``≈ 2n`` floats sent per rank, independent of
``p``), and the reorthogonalisation is replicated (it is O(n·k), small next to an HVP).

Requirements (checked where they can be):

- every rank analyses the same parameters with the same shapes and dtypes (checked once at construction
  by comparing :meth:`ParamLayout.fingerprint` on all ranks; a mismatch raises ``RuntimeError`` on every
  rank);
- every rank has the same parameter *values* (as after DDP's initial broadcast; not checked, it would cost
  an all-reduce of n floats — see :meth:`DistributedHessianOperator.check_parameters_in_sync`);
- every rank runs the same sequence of hessext calls with the same arguments (seeds, k, tolerances), as in
  any SPMD program; and ranks run on the same kind of hardware with the same number of threads (identical
  inputs then give identical bits; otherwise the ranks may drift apart in the last bits, and a convergence
  test that stops at different iterations desynchronises the collectives, which ends in a timeout error).

Facades: API A's functions and API B's ``HessianAnalyzer`` build their operators with
:func:`hessian_operator`; call them unchanged inside :func:`data_parallel`, and every operator they build is
a :class:`DistributedHessianOperator`. Your own code does the same by calling :func:`hessian_operator`
(``HessianOperator(...)`` itself always builds a single-process operator).

Timeouts: a rank that dies or hangs makes the others fail in the next collective after the process
group's timeout. Pass ``timeout=`` to :func:`torch.distributed.init_process_group` (or use
:func:`init_from_env`, or a dedicated group from ``dist.new_group(timeout=...)`` as ``process_group``).
Gloo collectives honour it directly; NCCL honours it through its watchdog
(``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default), which aborts the communicator and the process.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._checks import check_int
from .data import is_batch
from .hvp import HessianOperator
from .linop import LinearOperator
from .sharded import ShardedHessianOperator, is_fsdp_model

__all__ = ["DistributedHessianOperator", "DataParallelMean", "data_parallel", "hessian_operator",
           "init_from_env", "shard", "unwrap_model"]

#: The options of the innermost open :func:`data_parallel` block of this thread / asyncio task (None: none).
_DATA_PARALLEL: contextvars.ContextVar[dict | None] = contextvars.ContextVar("hessext_data_parallel",
                                                                             default=None)
_UNSET: Any = object()   # "keyword not given": take it from data_parallel(), else the default


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that holds the parameters: ``model.module`` for ``DistributedDataParallel`` (and
    ``DataParallel``) wrappers, repeatedly; ``model`` otherwise.

    hessext analyses the inner module through ``functional_call``; it never calls the wrapper's forward, so
    DDP's reducer (gradient buckets, all-reduce hooks) is never armed and no gradient is synchronised.
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _strip_module_prefix(params: Any, wrapped: bool) -> Any:
    """Parameter names given for a DDP-wrapped model may carry the wrapper's ``module.`` prefix."""
    if not wrapped or params is None or isinstance(params, (str, Tensor)):
        return params
    if isinstance(params, (list, tuple)) and params and all(isinstance(p, str) for p in params):
        return [p[len("module."):] if p.startswith("module.") else p for p in params]
    return params


def _check_reduce_dtype(reduce_dtype: Any) -> None:
    if reduce_dtype is not None and (not isinstance(reduce_dtype, torch.dtype)
                                     or not reduce_dtype.is_floating_point):
        raise ValueError(f"reduce_dtype must be a floating torch.dtype or None, got {reduce_dtype!r}")


def _describe_layout(layout: Any, dtype: torch.dtype) -> dict:
    return {
        "fingerprint": layout.fingerprint(),
        "n": int(layout.n),
        "dtype": str(dtype),
        "params": [(k, tuple(s), str(d)) for k, s, d in zip(layout.names, layout.shapes, layout.dtypes)],
    }


def _first_difference(r: int, a: dict, r0: int, b: dict) -> str:
    """The first difference between rank ``r``'s layout ``a`` and rank ``r0``'s layout ``b``, in words."""
    if a["dtype"] != b["dtype"]:
        return f"operator dtype {a['dtype']} on rank {r}, {b['dtype']} on rank {r0}"
    pa, pb = a["params"], b["params"]
    for i, (x, y) in enumerate(zip(pa, pb)):
        if x != y:
            return (f"parameter #{i} is {x[0]} {list(x[1])} {x[2]} on rank {r}, "
                    f"{y[0]} {list(y[1])} {y[2]} on rank {r0}")
    if len(pa) > len(pb):
        x = pa[len(pb)]
        return f"rank {r} has extra parameter {x[0]} {list(x[1])} {x[2]}"
    if len(pb) > len(pa):
        y = pb[len(pa)]
        return f"rank {r0} has extra parameter {y[0]} {list(y[1])} {y[2]}"
    return "fingerprints differ"


class DataParallelMean:
    """The data-parallel reducer: the weighted mean over all ranks of a process group, by ONE all-reduce of
    the packed buffer ``[vec(Σ_{b∈B_r} w_b x_b); Σ_{b∈B_r} w_b; failed_r]`` per reduced quantity.

    Args:
        process_group: the group (None: the default group). Outside torch.distributed (no group given, none
            initialised) the reducer is local (world size 1), unless ``WORLD_SIZE > 1`` says a launcher
            started several processes that never called ``init_process_group`` (``RuntimeError``).
        reduce_dtype: dtype the local sums are communicated and added in (None: the operator's).

    Attributes:
        rank, world_size: this process's rank and the group size (0 and 1 when not distributed).
        distributed: whether products are reduced over a group; ``local`` is its negation.
        num_allreduces: collectives issued by products and gradients so far.
    """

    def __init__(self, process_group: Any = None, reduce_dtype: torch.dtype | None = None) -> None:
        _check_reduce_dtype(reduce_dtype)
        if process_group is None and not (dist.is_available() and dist.is_initialized()):
            env_ws = os.environ.get("WORLD_SIZE", "1")
            if env_ws.isdigit() and int(env_ws) > 1:
                raise RuntimeError(
                    f"WORLD_SIZE={env_ws} but torch.distributed is not initialised: call "
                    "torch.distributed.init_process_group(...) or hessext.distributed.init_from_env() on "
                    "every rank before building a DistributedHessianOperator")
            self.distributed, self.rank, self.world_size = False, 0, 1
        else:
            self.distributed = True
            self.rank = dist.get_rank(group=process_group)
            self.world_size = dist.get_world_size(group=process_group)
            if self.rank < 0:
                raise ValueError("process_group does not contain this process (dist.get_rank returned -1)")
        self.local = not self.distributed
        self.process_group, self.reduce_dtype = process_group, reduce_dtype
        self.num_allreduces = 0
        self.dtype, self.device = torch.float32, torch.device("cpu")
        self._done = True           # False while a quantity is computed and its collective not yet issued
        self._comm: torch.device | None = None

    def attach(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device

    def comm_device(self) -> torch.device:
        """Where the reduced buffer lives: the operator's CUDA device for NCCL, the CPU for gloo."""
        if self._comm is None:
            backend = str(dist.get_backend(self.process_group)).lower()
            if backend == "nccl":
                self._comm = self.device if self.device.type == "cuda" else torch.device(
                    "cuda", torch.cuda.current_device())
            else:
                self._comm = torch.device("cpu")
        return self._comm

    def collective(self, fn: Callable[[], Any], what: str) -> None:
        """Run one collective; its failure becomes a ``RuntimeError`` that says which and why it may be."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001  (gloo raises RuntimeError, NCCL DistBackendError, ...)
            raise RuntimeError(
                f"hessext: {what} failed on rank {self.rank} of {self.world_size}: a rank died, hung past "
                f"the process group's timeout, or ran a different sequence of hessext calls "
                f"({type(exc).__name__}: {exc})") from exc

    def _allreduce_packed(self, local_sum: Tensor, weight_sum: float, failed: bool, what: str) -> Tensor:
        """All-reduce ``[vec(local_sum); weight_sum; failed]`` in ONE collective; returns the reduced buffer
        (the last entry counts the ranks that failed before reaching this collective)."""
        self._done = True  # from here on, a failure must not issue another collective
        numel = local_sum.numel()
        buf = torch.zeros(numel + 2, dtype=self.reduce_dtype or self.dtype, device=self.comm_device())
        if not failed:
            buf[:numel].view(local_sum.shape).copy_(local_sum)
            buf[numel] = float(weight_sum)
        else:
            buf[numel + 1] = 1.0
        self.collective(lambda: dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.process_group), what)
        self.num_allreduces += 1
        return buf

    def reduce(self, total: Tensor, weight_sum: float) -> Tensor:
        """``(Σ_r total_r) / (Σ_r weight_sum_r)`` by one all-reduce; same shape, dtype and device as
        ``total``, bitwise identical on every rank. Raises ``RuntimeError`` when another rank failed while
        computing its share, or the collective failed / timed out."""
        if not self.distributed:
            return total / weight_sum
        numel = total.numel()
        buf = self._allreduce_packed(total, weight_sum, False, "all-reduce of a Hessian-vector block")
        failed = int(buf[numel + 1].item())
        if failed:
            raise RuntimeError(f"hessext: {failed} other rank(s) failed while computing their share of this "
                               f"product (rank {self.rank} of {self.world_size} is fine); see the error on "
                               "the failing rank(s)")
        out = buf[:numel].view(total.shape) / buf[numel]
        return out.to(dtype=total.dtype, device=total.device)

    @contextlib.contextmanager
    def guard(self, numel: int) -> Iterator[None]:
        """Around the computation of one reduced quantity of ``numel`` numbers: if this rank raises before
        its collective, it joins the collective the others wait in with a failure flag (so that they raise
        at once instead of waiting for the timeout), then raises its own error."""
        if not self.distributed:
            yield
            return
        self._done = False
        try:
            yield
        except Exception:
            if not self._done:
                try:
                    self._allreduce_packed(torch.zeros(numel, dtype=self.dtype), 0.0, True,
                                           "all-reduce announcing a failure")
                except RuntimeError:
                    pass  # the original error is what matters; the others end in their timeout
            raise
        finally:
            self._done = True


class DistributedHessianOperator(HessianOperator):
    """:class:`~hessext.hvp.HessianOperator` whose products are averaged over all ranks of a process group
    (its reducer is a :class:`DataParallelMean`).

    Each rank passes **its own shard** of the data; the operator is the weighted mean (weight = batch size,
    or the ``batch_loss`` weight) of the per-batch Hessians over the union of all shards:

        H = (Σ_r Σ_{b ∈ B_r} w_b H_b) / (Σ_r Σ_{b ∈ B_r} w_b).

    Each ``matmat`` costs one HVP pass over the local shard and **one** all-reduce of ``n·m + 2`` numbers
    (the local weighted sum, the local weight and a failure flag, packed); :meth:`loss_and_grad` likewise.
    Every rank gets bitwise the same result, so any hessext algorithm run on every rank with the same
    arguments returns the same numbers everywhere without further communication.

    Args:
        model: the model on this rank; a ``DistributedDataParallel`` wrapper is unwrapped (its ``.module``
            is analysed, its forward is never called, no gradient is synchronised, nothing is written).
        loss_fn, data, params: as for :class:`HessianOperator`; ``data`` is this rank's shard (see
            :func:`shard`). Parameter names may carry DDP's ``module.`` prefix.
        process_group: the group to reduce over; ``None`` → the default group (see :class:`DataParallelMean`
            for the case without torch.distributed). Not given: the enclosing :func:`data_parallel` block's.
        reduce_dtype: dtype in which the local sums are communicated and added across ranks (e.g.
            ``torch.float64`` with a float32 operator, for float64 accumulation across ranks); ``None`` →
            the operator's dtype. ``dtype=torch.float64`` makes every step float64.
        check_layout: compare the parameter layout fingerprint across ranks at construction (one all-gather
            of 32 bytes; on mismatch one more all-gather of the layouts for the error message).
        **kwargs: every keyword of :class:`HessianOperator` (``num_batches``, ``model_type``,
            ``batch_loss``, ``mode``, ``dtype``, ``device``, ``eval_mode``, ``progress``, ``cache_graph``).

    Attributes:
        process_group: the group (``None`` for the default group or when not distributed).
        rank, world_size: this process's rank and the group size (0 and 1 when not distributed).
        reduce_dtype, num_allreduces: as for :class:`DataParallelMean`.

    Raises:
        RuntimeError: the parameter layouts differ across ranks (raised on every rank, naming each rank's
            layout and the first difference); a collective failed or timed out (a rank died, hung, or ran a
            different sequence of calls).
    """

    def __init__(self, model: nn.Module, loss_fn: Any, data: Any, params: Any = None, *,
                 process_group: Any = _UNSET, reduce_dtype: Any = _UNSET, check_layout: Any = _UNSET,
                 **kwargs: Any) -> None:
        ctx = _DATA_PARALLEL.get() or {}
        process_group = ctx.get("process_group") if process_group is _UNSET else process_group
        reduce_dtype = ctx.get("reduce_dtype") if reduce_dtype is _UNSET else reduce_dtype
        check_layout = ctx.get("check_layout", True) if check_layout is _UNSET else check_layout
        if "reducer" in kwargs:
            raise TypeError("DistributedHessianOperator builds its own reducer; pass process_group= instead")
        inner = unwrap_model(model) if isinstance(model, nn.Module) else model
        params = _strip_module_prefix(params, inner is not model)
        # the group is resolved before the (possibly expensive) base construction: a misconfiguration
        # fails fast
        reducer = DataParallelMean(process_group, reduce_dtype)
        if not (reducer.distributed and check_layout):
            super().__init__(inner, loss_fn, data, params, reducer=reducer, **kwargs)
            return
        try:
            super().__init__(inner, loss_fn, data, params, reducer=reducer, **kwargs)
        except Exception as exc:
            # The other ranks are about to wait in the layout check: join it with a failure marker so that
            # they raise at once, then raise this rank's own error.
            try:
                self._check_layout(reducer, failure=f"{type(exc).__name__}: {exc}")
            except RuntimeError:
                pass  # the collective failed too: this rank's own error is what matters
            raise
        self._check_layout(reducer)

    # ------------------------------------------------------------------ the reducer's state
    @property
    def process_group(self) -> Any:
        return self._reducer.process_group

    @property
    def rank(self) -> int:
        return self._reducer.rank

    @property
    def world_size(self) -> int:
        return self._reducer.world_size

    @property
    def reduce_dtype(self) -> torch.dtype | None:
        return self._reducer.reduce_dtype

    @property
    def num_allreduces(self) -> int:
        return self._reducer.num_allreduces

    # ------------------------------------------------------------------ construction-time check
    def _check_layout(self, reducer: DataParallelMean, failure: str | None = None) -> None:
        """Compare the layout fingerprint (names, shapes, dtypes of the analysed parameters, and the
        operator dtype) across ranks; raise the same ``RuntimeError`` on every rank if any differs.

        Args:
            reducer: this operator's reducer (its group and collectives).
            failure: this rank could not build its operator (the error text): take part in the collectives
                with a marker that no layout matches, and let the caller raise its own error.
        """
        if failure is None:
            mine = _describe_layout(self.layout, self.dtype)
            digest = bytes.fromhex(mine["fingerprint"]) + str(self.dtype).encode().ljust(32, b" ")[:32]
        else:
            mine = {"failure": failure}
            digest = b"\xff" * 64
        local = torch.tensor(list(digest), dtype=torch.uint8, device=reducer.comm_device())
        gathered = [torch.empty_like(local) for _ in range(reducer.world_size)]
        group = reducer.process_group
        reducer.collective(lambda: dist.all_gather(gathered, local, group=group),
                           "all-gather of the parameter layout fingerprint")
        if all(torch.equal(g, gathered[0]) for g in gathered) and failure is None:
            return
        # Every rank saw the same gathered digests, so every rank takes this branch: the second collective
        # is matched on all ranks.
        layouts: list[Any] = [None] * reducer.world_size
        reducer.collective(lambda: dist.all_gather_object(layouts, mine, group=group),
                           "all-gather of the parameter layouts")
        if failure is not None:
            return
        failed = [f"rank {r}: {lay['failure']}" for r, lay in enumerate(layouts) if "failure" in lay]
        if failed:
            raise RuntimeError("another rank failed to build its DistributedHessianOperator ("
                               + "; ".join(failed) + f"); rank {reducer.rank} stops too")
        ref = layouts[0]
        parts = [f"rank {r} has n={lay['n']}, {len(lay['params'])} parameters, dtype {lay['dtype']}, "
                 f"fingerprint {lay['fingerprint'][:12]}" for r, lay in enumerate(layouts)]
        diffs = [_first_difference(r, lay, 0, ref)
                 for r, lay in enumerate(layouts) if lay["fingerprint"] != ref["fingerprint"]
                 or lay["dtype"] != ref["dtype"]]
        raise RuntimeError("parameter layout differs across ranks: " + "; ".join(parts)
                           + ". First differences: " + "; ".join(diffs)
                           + ". Every rank must analyse the same parameters (same names, shapes, dtypes) "
                             "with the same operator dtype.")

    # ------------------------------------------------------------------ diagnostics
    def check_parameters_in_sync(self, rtol: float = 0.0) -> float:
        """Relative deviation ``‖θ_r − θ_0‖ / ‖θ_0‖`` of this rank's analysed parameters from rank 0's.

        A collective (call it on every rank): one broadcast of n float64 numbers and one all-reduce of one
        number, so that every rank raises or none does.

        Args:
            rtol: raise ``RuntimeError`` on every rank if any rank deviates by more than this (``0.0``: the
                parameters must be bitwise equal; ``float('inf')``: only measure).

        Returns:
            This rank's deviation (0.0 when in sync).
        """
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
            raise ValueError(f"rtol must be a non-negative number, got {rtol!r}")
        red: DataParallelMean = self._reducer
        named = dict(self.model.named_parameters())
        flat = torch.cat([named[k].detach().reshape(-1).to(torch.float64) for k in self.layout.names])
        dev = red.comm_device() if red.distributed else flat.device
        flat = flat.to(dev)
        ref = flat.clone()
        if red.distributed:
            src = dist.get_global_rank(red.process_group, 0) if red.process_group is not None else 0
            red.collective(lambda: dist.broadcast(ref, src=src, group=red.process_group),
                           "broadcast of the parameters")
        dev_rel = float(((flat - ref).norm() / ref.norm().clamp_min(1e-300)).item())
        # Make the decision collectively so that every rank raises or none does.
        flag = torch.tensor([1.0 if dev_rel > rtol else 0.0], dtype=torch.float64, device=dev)
        if red.distributed:
            red.collective(lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=red.process_group),
                           "all-reduce of the parameter check")
        if flag.item() > 0:
            raise RuntimeError(f"parameters differ across ranks: rank {red.rank} deviates from rank 0 by "
                               f"{dev_rel:.3e} (relative); at least one rank exceeds rtol={rtol}")
        return dev_rel

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, dtype={self.dtype}, rank={self.rank}, "
                f"world_size={self.world_size})")


@contextlib.contextmanager
def data_parallel(process_group: Any = None, *, reduce_dtype: torch.dtype | None = None,
                  check_layout: bool = True) -> Iterator[None]:
    """Run hessext's facades **unchanged** on every rank: inside the block, every operator that
    :func:`hessian_operator` builds — API A's ``hessian_trace`` / ``min_max_hessian_eigs`` /
    ``ModelWrapper.operator``, API B's ``HessianAnalyzer.analyze_step``,
    ``ComponentAnalyzer.analyze_all_components``, ``get_hessian_eigenvectors`` — is a
    :class:`DistributedHessianOperator` over ``process_group``. Each rank passes its own shard of the data;
    every rank gets the full-data answer.

    ::

        with data_parallel():                                    # the default group
            tr = api_a.hessian_trace(model, loss_fn, x_shard, y_shard, num_random_vectors=100)
            res = HessianAnalyzer(cfg).analyze_step(model, loss_fn, shard(batches, rank, world))
            H = hessian_operator(model, loss_fn, shard(batches, rank, world))   # your own operator

    The block sets a :class:`contextvars.ContextVar` that :func:`hessian_operator` (and
    :class:`DistributedHessianOperator`, for keywords not given) reads, so it is local to the current thread
    (and asyncio task); nothing is rebound or patched, and ``HessianOperator(...)`` itself is unaffected.
    Blocks may nest (the innermost wins). Outside torch.distributed (no process group, ``WORLD_SIZE`` unset
    or 1) the operators are plain single-process ones, so one script serves ``python`` and ``torchrun``.

    Args:
        process_group, reduce_dtype, check_layout: passed to every :class:`DistributedHessianOperator` built
            inside the block (an explicit keyword of the call wins).
    """
    _check_reduce_dtype(reduce_dtype)
    token = _DATA_PARALLEL.set({"process_group": process_group, "reduce_dtype": reduce_dtype,
                                "check_layout": check_layout})
    try:
        yield
    finally:
        _DATA_PARALLEL.reset(token)


def hessian_operator(model: nn.Module, loss_fn: Any, data: Any, params: Any = None,
                     **kwargs: Any) -> LinearOperator:
    """The operator of ``model``'s loss the way hessext's facades build it: a
    :class:`~hessext.sharded.ShardedHessianOperator` for a model wrapped by FSDP2's ``fully_shard`` (vectors
    are this rank's local shards; inside or outside :func:`data_parallel`, whose group does not apply: the
    model's mesh does), a :class:`DistributedHessianOperator` (with the block's group and options; explicit
    keywords win) inside :func:`data_parallel`, a plain :class:`~hessext.hvp.HessianOperator` otherwise.

    Args:
        model, loss_fn, data, params: as for :class:`~hessext.hvp.HessianOperator`.
        **kwargs: its keywords (``num_batches``, ``model_type``, ``batch_loss``, ``mode``, ``dtype``,
            ``device``, ``eval_mode``, ``progress``, ``cache_graph``); inside :func:`data_parallel` also
            ``process_group``, ``reduce_dtype``, ``check_layout``. For an FSDP2 model: ``num_batches``,
            ``model_type``, ``batch_loss``, ``eval_mode``, ``loss_source``, ``pad_idx``, ``cache_graph``
            (no graph is cached: ignored), ``mode="auto"``, ``dtype``/``device`` only as None or the
            parameters' own, and the sharded keywords (``step``, ``scheme``, ``mesh``, ``estimate_error``,
            ``batch_weights``); anything else raises ``ValueError`` naming the keyword.
    """
    if is_fsdp_model(model):
        return _sharded_operator(model, loss_fn, data, params, kwargs)
    if _DATA_PARALLEL.get() is None:
        return HessianOperator(model, loss_fn, data, params, **kwargs)
    return DistributedHessianOperator(model, loss_fn, data, params, **kwargs)


_SHARDED_KEYWORDS = ("num_batches", "model_type", "batch_loss", "eval_mode", "loss_source", "pad_idx", "step",
                     "scheme", "mesh", "estimate_error", "batch_weights")


def _sharded_operator(model: nn.Module, loss_fn: Any, data: Any, params: Any,
                      kwargs: dict) -> ShardedHessianOperator:
    """:func:`hessian_operator` for an FSDP2 model: the keywords a :class:`ShardedHessianOperator` can honour
    are passed, the ones it cannot are refused (never silently dropped)."""
    kw = dict(kwargs)
    mode = kw.pop("mode", "auto")
    if mode != "auto":
        raise ValueError(f"mode={mode!r} is not available for an FSDP2-sharded model: its Hessian-vector "
                         "products are finite differences of FSDP gradients (pass mode='auto')")
    kw.pop("cache_graph", None)
    if kw.pop("progress", None):
        raise ValueError("progress=True is not supported for an FSDP2-sharded model")
    first = next((p for p in model.parameters() if p.requires_grad), None)
    dtype, device = kw.pop("dtype", None), kw.pop("device", None)
    if dtype is not None and (first is None or dtype != first.dtype):
        raise ValueError(f"dtype={dtype} differs from the FSDP2 model's parameter dtype "
                         f"{None if first is None else first.dtype}: a sharded operator computes in the "
                         "parameters' own dtype (shard the model in the dtype you want analysed)")
    if device is not None and (first is None or torch.device(device) != first.device):
        raise ValueError(f"device={device} differs from the FSDP2 model's device "
                         f"{None if first is None else first.device}: a sharded operator computes where the "
                         "shards are")
    for key in ("process_group", "reduce_dtype", "check_layout"):
        if kw.pop(key, None) is not None and key != "check_layout":
            raise ValueError(f"{key}= does not apply to an FSDP2-sharded model: its DeviceMesh defines the "
                             "groups (pass mesh= to check it)")
    unknown = sorted(set(kw) - set(_SHARDED_KEYWORDS))
    if unknown:
        raise ValueError(f"keywords {unknown} are not supported for an FSDP2-sharded model "
                         f"(ShardedHessianOperator takes {list(_SHARDED_KEYWORDS)})")
    if kw.get("loss_source") is None:
        kw.pop("loss_source", None)
    return ShardedHessianOperator(model, loss_fn, data, params, **kw)


def init_from_env(backend: str | None = None, timeout: timedelta = timedelta(minutes=10),
                  **kwargs: Any) -> tuple[int, int]:
    """Initialise the default process group from the launcher's environment (torchrun, SLURM + torchrun).

    Reads ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` (and ``LOCAL_RANK``) as torchrun sets
    them. Picks ``"nccl"`` when CUDA is available (and binds this process to GPU ``LOCAL_RANK``), ``"gloo"``
    otherwise. Does nothing if the default group already exists.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``None`` (auto).
        timeout: how long any collective may wait for the other ranks before raising; a dead or hung rank
            ends the analysis with an error after this long instead of hanging.
        **kwargs: passed to :func:`torch.distributed.init_process_group`.

    Returns:
        ``(rank, world_size)``.
    """
    if not isinstance(timeout, timedelta):
        raise TypeError(f"timeout must be a datetime.timedelta, got {type(timeout).__name__}")
    if timeout.total_seconds() <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if backend is not None and backend not in ("gloo", "nccl", "mpi", "ucc", "xccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' (or another torch backend) or None, "
                         f"got {backend!r}")
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k not in os.environ]
    if missing and "init_method" not in kwargs:
        raise RuntimeError(f"environment variables {missing} are not set: launch with torchrun "
                           "(e.g. `torchrun --nproc_per_node=2 script.py`) or pass init_method=")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return dist.get_rank(), dist.get_world_size()


def _split_sizes(total: int, world_size: int) -> list[int]:
    base, extra = divmod(total, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def shard(data: Any, rank: int, world_size: int) -> Any:
    """This rank's contiguous share of ``data``, for examples and tests.

    The batch/list distinction follows :func:`hessext.data.is_batch` (the same rule the operator uses):

    - **one batch** — a ``Tensor``, a mapping of tensors (``input_ids``/``labels``/...), or an
      ``(inputs, targets)`` pair: every tensor with a leading dimension is split along dim 0 into contiguous
      chunks (the first ``N % world_size`` ranks get one sample more); other entries are passed through.
    - **a list/tuple of batches**: contiguous chunks of the list (the first ``len % world_size`` ranks get
      one batch more). Needs at least ``world_size`` batches.

    Concatenating the shards of ranks ``0 … world_size−1`` gives back ``data``. With batch-size weights
    and a loss that is a mean over the samples of a batch, the sharded operator equals the full-data one.

    Args:
        data: one batch, or a list/tuple of batches.
        rank: in ``[0, world_size)``.
        world_size: >= 1.

    Raises:
        ValueError: fewer samples (or batches) than ranks, or tensors of one batch with different dim 0.
        TypeError: ``data`` is neither a batch nor a list/tuple of batches.
    """
    world_size = check_int("world_size", world_size, minimum=1)
    rank = check_int("rank", rank, minimum=0, maximum=world_size - 1)

    def chunk(total: int) -> slice:
        sizes = _split_sizes(total, world_size)
        start = sum(sizes[:rank])
        return slice(start, start + sizes[rank])

    if is_batch(data):
        if isinstance(data, Mapping):
            vals = list(data.values())
        else:
            vals = [data] if isinstance(data, Tensor) else list(data)
        sizes = sorted({v.shape[0] for v in vals if isinstance(v, Tensor) and v.dim() > 0})
        if len(sizes) != 1:
            raise ValueError(f"data is one batch whose tensors must share dim 0, got dim-0 sizes {sizes}")
        if sizes[0] < world_size:
            raise ValueError(f"cannot split a batch of {sizes[0]} samples over world_size={world_size} ranks")
        sl = chunk(sizes[0])

        def cut(v: Any) -> Any:
            return v[sl] if isinstance(v, Tensor) and v.dim() > 0 else v

        if isinstance(data, Tensor):
            return data[sl]
        if isinstance(data, Mapping):
            return type(data)((k, cut(v)) for k, v in data.items()) if isinstance(data, dict) else \
                {k: cut(v) for k, v in data.items()}
        return type(data)(cut(v) for v in data)
    if isinstance(data, (list, tuple)):
        if len(data) < world_size:
            raise ValueError(f"cannot shard {len(data)} batches over world_size={world_size} ranks: every "
                             "rank needs at least one batch (split one batch by samples instead: "
                             "shard(batch, ...))")
        return data[chunk(len(data))]
    raise TypeError(f"data must be one batch (Tensor, dict, (inputs, targets)) or a list of batches, got "
                    f"{type(data).__name__}")
