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

Facades: API A's functions and API B's ``HessianAnalyzer`` build their own operators; call them unchanged
inside :func:`data_parallel`, which makes every ``HessianOperator`` hessext builds in the block a
:class:`DistributedHessianOperator`.

Timeouts: a rank that dies or hangs makes the others fail in the next collective after the process
group's timeout. Pass ``timeout=`` to :func:`torch.distributed.init_process_group` (or use
:func:`init_from_env`, or a dedicated group from ``dist.new_group(timeout=...)`` as ``process_group``).
Gloo collectives honour it directly; NCCL honours it through its watchdog
(``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default), which aborts the communicator and the process.
"""
from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .data import is_batch
from . import hvp as _hvp
from .hvp import HessianOperator

__all__ = ["DistributedHessianOperator", "data_parallel", "init_from_env", "shard", "unwrap_model"]


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


class DistributedHessianOperator(HessianOperator):
    """:class:`~hessext.hvp.HessianOperator` whose products are averaged over all ranks of a process group.

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
        process_group: the group to reduce over; ``None`` → the default group. If torch.distributed is not
            initialised and no group is given, the operator is a plain single-process operator (world size
            1), unless the environment says ``WORLD_SIZE > 1`` (a launcher started several processes but
            nobody called ``init_process_group``), which raises ``RuntimeError``.
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
        num_allreduces: collectives issued by products and gradients so far.

    Raises:
        RuntimeError: the parameter layouts differ across ranks (raised on every rank, naming each rank's
            layout and the first difference); a collective failed or timed out (a rank died, hung, or ran a
            different sequence of calls).
    """

    def __init__(self, model: nn.Module, loss_fn: Any, data: Any, params: Any = None, *,
                 process_group: Any = _UNSET, reduce_dtype: Any = _UNSET, check_layout: Any = _UNSET,
                 **kwargs: Any) -> None:
        # Keywords not given come from an enclosing data_parallel() block, else the defaults.
        ctx = _hvp.DATA_PARALLEL.get() or {}
        process_group = ctx.get("process_group") if process_group is _UNSET else process_group
        reduce_dtype = ctx.get("reduce_dtype") if reduce_dtype is _UNSET else reduce_dtype
        check_layout = ctx.get("check_layout", True) if check_layout is _UNSET else check_layout
        if reduce_dtype is not None and (not isinstance(reduce_dtype, torch.dtype)
                                         or not reduce_dtype.is_floating_point):
            raise ValueError(f"reduce_dtype must be a floating torch.dtype or None, got {reduce_dtype!r}")
        inner = unwrap_model(model) if isinstance(model, nn.Module) else model
        params = _strip_module_prefix(params, inner is not model)
        # Resolve the group before the (possibly expensive) base construction, so a misconfiguration
        # fails fast.
        if process_group is None and not (dist.is_available() and dist.is_initialized()):
            env_ws = os.environ.get("WORLD_SIZE", "1")
            if env_ws.isdigit() and int(env_ws) > 1:
                raise RuntimeError(
                    f"WORLD_SIZE={env_ws} but torch.distributed is not initialised: call "
                    "torch.distributed.init_process_group(...) or hessext.distributed.init_from_env() on "
                    "every rank before building a DistributedHessianOperator")
            self._distributed = False
            self.rank, self.world_size = 0, 1
        else:
            self._distributed = True
            self.rank = dist.get_rank(group=process_group)
            self.world_size = dist.get_world_size(group=process_group)
            if self.rank < 0:
                raise ValueError("process_group does not contain this process (dist.get_rank returned -1)")
        self.process_group = process_group
        self.reduce_dtype = reduce_dtype
        self.num_allreduces = 0
        self._collective_done = True
        if not (self._distributed and check_layout):
            super().__init__(inner, loss_fn, data, params, **kwargs)
            return
        try:
            super().__init__(inner, loss_fn, data, params, **kwargs)
        except Exception as exc:
            # The other ranks are about to wait in the layout check: join it with a failure marker so that
            # they raise at once, then raise this rank's own error.
            try:
                self._check_layout(failure=f"{type(exc).__name__}: {exc}")
            except RuntimeError:
                pass  # the collective failed too: this rank's own error is what matters
            raise
        self._check_layout()

    # ------------------------------------------------------------------ construction-time check
    def _comm_device(self) -> torch.device:
        """Where the reduced buffer lives: the operator's CUDA device for NCCL, the CPU for gloo."""
        dev = getattr(self, "_comm_dev", None)
        if dev is None:
            backend = str(dist.get_backend(self.process_group)).lower()
            own = getattr(self, "device", None)
            if backend == "nccl":
                dev = own if own is not None and own.type == "cuda" else torch.device(
                    "cuda", torch.cuda.current_device())
            else:
                dev = torch.device("cpu")
            self._comm_dev = dev
        return dev

    def _check_layout(self, failure: str | None = None) -> None:
        """Compare the layout fingerprint (names, shapes, dtypes of the analysed parameters, and the
        operator dtype) across ranks; raise the same ``RuntimeError`` on every rank if any differs.

        Args:
            failure: this rank could not build its operator (the error text): take part in the collectives
                with a marker that no layout matches, and let the caller raise its own error.
        """
        if failure is None:
            mine = _describe_layout(self.layout, self.dtype)
            digest = bytes.fromhex(mine["fingerprint"]) + str(self.dtype).encode().ljust(32, b" ")[:32]
        else:
            mine = {"failure": failure}
            digest = b"\xff" * 64
        local = torch.tensor(list(digest), dtype=torch.uint8, device=self._comm_device())
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        self._collective(lambda: dist.all_gather(gathered, local, group=self.process_group),
                         "all-gather of the parameter layout fingerprint")
        if all(torch.equal(g, gathered[0]) for g in gathered) and failure is None:
            return
        # Every rank saw the same gathered digests, so every rank takes this branch: the second collective
        # is matched on all ranks.
        layouts: list[Any] = [None] * self.world_size
        self._collective(lambda: dist.all_gather_object(layouts, mine, group=self.process_group),
                         "all-gather of the parameter layouts")
        if failure is not None:
            return
        failed = [f"rank {r}: {lay['failure']}" for r, lay in enumerate(layouts) if "failure" in lay]
        if failed:
            raise RuntimeError("another rank failed to build its DistributedHessianOperator ("
                               + "; ".join(failed) + f"); rank {self.rank} stops too")
        ref = layouts[0]
        parts = []
        for r, lay in enumerate(layouts):
            parts.append(f"rank {r} has n={lay['n']}, {len(lay['params'])} parameters, dtype {lay['dtype']}, "
                         f"fingerprint {lay['fingerprint'][:12]}")
        diffs = [_first_difference(r, lay, 0, ref)
                 for r, lay in enumerate(layouts) if lay["fingerprint"] != ref["fingerprint"]
                 or lay["dtype"] != ref["dtype"]]
        raise RuntimeError("parameter layout differs across ranks: " + "; ".join(parts)
                           + ". First differences: " + "; ".join(diffs)
                           + ". Every rank must analyse the same parameters (same names, shapes, dtypes) "
                             "with the same operator dtype.")

    # ------------------------------------------------------------------ communication
    def _collective(self, fn: Any, what: str) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001  (gloo raises RuntimeError, NCCL DistBackendError, ...)
            raise RuntimeError(
                f"hessext: {what} failed on rank {self.rank} of {self.world_size}: a rank died, hung past "
                f"the process group's timeout, or ran a different sequence of hessext calls "
                f"({type(exc).__name__}: {exc})") from exc

    def _allreduce_packed(self, local_sum: Tensor, weight_sum: float, failed: bool, what: str) -> Tensor:
        """All-reduce ``[vec(local_sum); weight_sum; failed]`` in ONE collective.

        Returns the reduced buffer ``[numel + 2]`` (in the reduce dtype, on the communication device). The
        last entry counts the ranks that failed before reaching this collective.
        """
        self._collective_done = True  # from here on, a failure must not issue another collective
        rdtype = self.reduce_dtype or self.dtype
        numel = local_sum.numel()
        buf = torch.zeros(numel + 2, dtype=rdtype, device=self._comm_device())
        if not failed:
            buf[:numel].view(local_sum.shape).copy_(local_sum)
            buf[numel] = float(weight_sum)
        else:
            buf[numel + 1] = 1.0
        self._collective(lambda: dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.process_group), what)
        self.num_allreduces += 1
        return buf

    def _reduce(self, hv_sum: Tensor, weight_sum: float) -> Tensor:
        """Weighted mean over all ranks, ``(Σ_r hv_sum_r) / (Σ_r weight_sum_r)``, by one all-reduce.

        Args:
            hv_sum: ``[n, m]`` (a matmat block) or ``[n + 1]`` (``loss_and_grad``), this rank's weighted sum
                ``Σ_{b ∈ B_r} w_b (·)_b``.
            weight_sum: this rank's ``Σ_{b ∈ B_r} w_b``.

        Returns:
            Same shape, dtype and device as ``hv_sum``; bitwise identical on every rank.

        Raises:
            RuntimeError: another rank failed while computing its share (it raises its own error), or the
                collective failed / timed out.
        """
        if not self._distributed:
            return super()._reduce(hv_sum, weight_sum)
        numel = hv_sum.numel()
        buf = self._allreduce_packed(hv_sum, weight_sum, False, "all-reduce of a Hessian-vector block")
        failed = int(buf[numel + 1].item())
        if failed:
            raise RuntimeError(f"hessext: {failed} other rank(s) failed while computing their share of this "
                               f"product (rank {self.rank} of {self.world_size} is fine); see the error on "
                               "the failing rank(s)")
        out = buf[:numel].view(hv_sum.shape) / buf[numel]
        return out.to(dtype=hv_sum.dtype, device=hv_sum.device)

    def _signal_failure(self, numel: int) -> None:
        """This rank raised before its collective: join the collective the other ranks are waiting in with a
        failure flag, so that they raise too instead of waiting for the timeout."""
        try:
            self._allreduce_packed(torch.zeros(numel, dtype=self.dtype), 0.0, True,
                                   "all-reduce announcing a failure")
        except RuntimeError:
            pass  # the original error is what matters; the others end in their timeout

    def _apply(self, X: Tensor, use_cache: bool = True) -> Tensor:
        if not self._distributed:
            return super()._apply(X, use_cache)
        self._collective_done = False
        try:
            return super()._apply(X, use_cache)
        except Exception:
            if not self._collective_done:
                self._signal_failure(self.n * X.shape[1])
            raise

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """Weighted mean loss and gradient ``[n]`` over all ranks' batches (one all-reduce of n + 2 numbers);
        the same on every rank."""
        if not self._distributed:
            return super().loss_and_grad()
        self._collective_done = False
        try:
            return super().loss_and_grad()
        except Exception:
            if not self._collective_done:
                self._signal_failure(self.n + 1)
            raise

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
        model = self.model
        named = dict(model.named_parameters())
        flat = torch.cat([named[k].detach().reshape(-1).to(torch.float64) for k in self.layout.names])
        dev = self._comm_device() if self._distributed else flat.device
        flat = flat.to(dev)
        ref = flat.clone()
        if self._distributed:
            src = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
            self._collective(lambda: dist.broadcast(ref, src=src, group=self.process_group),
                             "broadcast of the parameters")
        dev_rel = float(((flat - ref).norm() / ref.norm().clamp_min(1e-300)).item())
        # Make the decision collectively so that every rank raises or none does.
        flag = torch.tensor([1.0 if dev_rel > rtol else 0.0], dtype=torch.float64, device=dev)
        if self._distributed:
            self._collective(lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.process_group),
                             "all-reduce of the parameter check")
        if flag.item() > 0:
            raise RuntimeError(f"parameters differ across ranks: rank {self.rank} deviates from rank 0 by "
                               f"{dev_rel:.3e} (relative); at least one rank exceeds rtol={rtol}")
        return dev_rel

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, dtype={self.dtype}, rank={self.rank}, "
                f"world_size={self.world_size})")


@contextlib.contextmanager
def data_parallel(process_group: Any = None, *, reduce_dtype: torch.dtype | None = None,
                  check_layout: bool = True) -> Iterator[None]:
    """Run hessext's facades **unchanged** on every rank: inside the block, every ``HessianOperator`` that
    hessext builds (API A's ``hessian_trace`` / ``min_max_hessian_eigs`` / ``ModelWrapper.operator``, API
    B's ``HessianAnalyzer.analyze_step``, ``ComponentAnalyzer.analyze_all_components``,
    ``get_hessian_eigenvectors``, ``hessext.HessianOperator(...)``) is a :class:`DistributedHessianOperator`
    over ``process_group``. Each rank passes its own shard of the data; every rank gets the full-data answer.

    ::

        with data_parallel():                                    # the default group
            tr = api_a.hessian_trace(model, loss_fn, x_shard, y_shard, num_random_vectors=100)
            res = HessianAnalyzer(cfg).analyze_step(model, loss_fn, shard(batches, rank, world))

    Mechanism: the block sets a :class:`contextvars.ContextVar` that ``HessianOperator.__new__`` reads, so it
    is local to the current thread (and asyncio task) and nothing is rebound or patched. Blocks may nest (the
    innermost wins). Outside torch.distributed (no process group, ``WORLD_SIZE`` unset or 1) the operators
    are plain single-process ones, so one script serves ``python`` and ``torchrun``.

    Args:
        process_group, reduce_dtype, check_layout: passed to every :class:`DistributedHessianOperator` built
            inside the block (an explicit keyword of the call wins).
    """
    if reduce_dtype is not None and (not isinstance(reduce_dtype, torch.dtype)
                                     or not reduce_dtype.is_floating_point):
        raise ValueError(f"reduce_dtype must be a floating torch.dtype or None, got {reduce_dtype!r}")
    token = _hvp.DATA_PARALLEL.set({"cls": DistributedHessianOperator, "process_group": process_group,
                                    "reduce_dtype": reduce_dtype, "check_layout": check_layout})
    try:
        yield
    finally:
        _hvp.DATA_PARALLEL.reset(token)


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
    for name, val in (("rank", rank), ("world_size", world_size)):
        if isinstance(val, bool) or not isinstance(val, int):
            raise TypeError(f"{name} must be an int, got {type(val).__name__}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")

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
