"""Hessian analysis of FSDP2-sharded models, with every vector sharded like the parameters (issue 17).

A model wrapped by :func:`torch.distributed.fsdp.fully_shard` (FSDP2) over a ``DeviceMesh`` holds each
parameter as a ``DTensor`` sharded along dim 0: rank ``r`` of the shard dimension (size ``S``) keeps rows
``[r·c, min((r+1)·c, R))`` of a parameter with ``R`` rows, ``c = ⌈R/S⌉`` (``torch.chunk``; a rank past the
end keeps none). :class:`ShardedHessianOperator` works on vectors laid out the same way: a vector on rank
``r`` is the concatenation of its local shards in parameter order (``layout``, a :class:`ParamLayout` of the
local shards), of length ``n ≈ N/S`` for a model of ``N`` parameters, and is never gathered.

Hessian–vector products by central differences of FSDP's own gradients (no double backward):

    H v ≈ D(h) = (g(θ + h v) − g(θ − h v)) / (2h),          error  h²/6 · ∇³L[v, v, ·] + O(ε ‖g‖ / h),

``g`` the gradient that ``loss.backward()`` leaves in the sharded ``.grad`` (FSDP all-gathers the perturbed
shards in the forward and reduce-scatters the gradient), and ``θ ± h v`` applied to the local shards only.
The step balances the two error terms (truncation ``∝ h²``, rounding ``∝ ε/h``):

    h = ε^{1/3} · (1 + θ_rms) / ‖v‖,   θ_rms = ‖θ‖/√N   (``scheme="central"``, 2 gradient evaluations),

ε the machine epsilon of the parameters' dtype, ‖θ‖, ‖v‖ global norms (all-reduced). The scale is the RMS
parameter magnitude, not ‖θ‖ itself: ‖θ‖ grows as √N, and ``(1 + ‖θ‖)`` (the textbook scale) made the step
of a 5.7k-parameter float32 transformer 0.15, whose truncation error along the top eigenvector moved the
top eigenvalue by 2e-3 (measured, benchmarks/bench_sharded.py); with the RMS scale it is 7e-3 and the top-5
agree with the exact float64 values to ~1e-4. The 4-point Richardson scheme
``R = (4 D(h) − D(2h)) / 3 = (8(g₊₁ − g₋₁) − (g₊₂ − g₋₂)) / (12 h)`` has error ``O(h⁴)`` and uses
``h = ε^{1/5} (1 + θ_rms) / ‖v‖`` (4 evaluations). Every product records
``last_step`` (the h of each column) and ``last_error`` (relative error estimate of each column,
``‖error‖ / ‖H v‖``): with D(2h) available (``scheme="richardson"`` or ``estimate_error=True``) the
step-doubling estimate ``‖D(h) − D(2h)‖ / 3`` of the central difference's truncation error (for
``"richardson"`` a bound on its own, higher-order error), plus in every case the rounding estimate
``ε (‖g₊‖ + ‖g₋‖) / (2 h)``.

Data: each rank passes **its own** batches. FSDP averages gradients over all ``P`` ranks of the mesh (the
reduce-scatter, and the all-reduce across replicas of a hybrid mesh), so each local batch's loss enters the
backward scaled by ``P · w_b / W`` (``w_b`` its batch size, ``W`` the sum over all ranks' batches): the
operator is the weighted mean Hessian over the union of all ranks' data,

    H = Σ_r Σ_{b∈B_r} w_b H_b / Σ_r Σ_{b∈B_r} w_b,

the same operator as :class:`~hessext.distributed.DistributedHessianOperator` on the same shards. Ranks with
fewer batches run zero-weight repeats of their last one (every backward is a collective of all ranks).

Hybrid sharding (HSDP, ``fully_shard(mesh=init_device_mesh(..., (replicas, shards)))`` with placements
``(Replicate(), Shard(0))``): vectors are sharded over the shard dimension and identical across replicas;
dot products are all-reduced over the shard dimension only, agreements over the whole mesh, and FSDP's
all-reduce across replicas is the data-parallel reduction.

The vector-space hooks of :class:`~hessext.linop.LinearOperator` (``dot``, ``norm``, ``allreduce_``,
``reorthogonalize``, ``rademacher``, ``qr``, ``global_n``) are implemented here with local work plus
all-reduces, so :func:`hessext.lanczos.lanczos`, the trace estimators and SLQ run unchanged and every rank
gets the same numbers. Probes are the same bits as on one process (:meth:`ShardedHessianOperator.rademacher`).
:meth:`~ShardedHessianOperator.loss_and_grad` gives the global mean loss and this rank's gradient shard
(API B's alignment); :meth:`~ShardedHessianOperator.gather` assembles whole vectors for results that a facade
returns in full (API A's eigenvectors, ``get_hessian_eigenvectors``).
:func:`hessext.distributed.hessian_operator` builds this operator for every FSDP2 model, so API A and API B
facades run on sharded models unchanged.

The model is left as it was: every product restores the local shards **bitwise** from a saved copy (never by
subtracting ``h v``), ``.grad`` (the same objects), the training flags, the global RNG (reset before every
gradient evaluation, so train-mode dropout draws the same masks at ``θ ± h v``) and FSDP's sharded state
(``reshard()``). A failure on one rank — its loss raises or is not finite — is announced in a small
all-reduce before the backward that would otherwise wait for it, so every rank raises (the failing rank its
own error, the others a ``RuntimeError`` naming it) instead of hanging. A rank that dies or raises inside the
model's forward (between FSDP's own collectives) still ends the others only at the process group's timeout.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import ops
from ._checks import check_bool, check_positive_float
from .data import batch_size, check_loss, check_loss_finite, make_batch_loss, normalize_data
from .layout import ParamLayout
from .linop import LinearOperator

__all__ = ["ShardedHessianOperator", "fd_step", "is_fsdp_model", "SCHEMES"]

SCHEMES = ("central", "richardson")
_REDUCE = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def is_fsdp_model(model: Any) -> bool:
    """Whether ``model`` was wrapped by FSDP2's ``fully_shard`` (its root is an ``FSDPModule``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch build without distributed
        return False
    return isinstance(model, FSDPModule)


def fd_step(dtype: torch.dtype, theta_rms: float, v_norm: float, scheme: str = "central",
            factor: float | None = None) -> float:
    """The finite-difference step ``h = s (1 + θ_rms) / ‖v‖`` with ``s = ε^{1/3}`` (central) or ``ε^{1/5}``
    (richardson), ε the machine epsilon of ``dtype`` (or ``s = factor``): the step that balances truncation
    (``∝ h²`` resp. ``h⁴``) against rounding (``∝ ε/h``) at the scale of one parameter, ``θ_rms = ‖θ‖/√N``."""
    if factor is None:
        factor = float(torch.finfo(dtype).eps) ** (1.0 / 3.0 if scheme == "central" else 1.0 / 5.0)
    return factor * (1.0 + theta_rms) / v_norm


@dataclass(frozen=True)
class _Shard:
    """One parameter's local shard: its place in the local vector and in the global flat vector."""

    name: str
    global_shape: torch.Size
    local_shape: torch.Size
    global_offset: int      # start of the parameter in the global flat vector
    row_start: int          # first global row held here
    row_numel: int          # elements per row (numel of dims 1…)
    local_offset: int       # start in the local vector

    @property
    def local_numel(self) -> int:
        return int(math.prod(self.local_shape))

    @property
    def counter(self) -> int:
        """Global flat index of the first local element (``global_offset + row_start·row_numel``)."""
        return self.global_offset + self.row_start * self.row_numel


def _batch_weights(batches: list, batch_weights: Sequence[float] | None) -> list[float]:
    """The weight of each local batch: ``batch_weights`` (checked: one positive finite number per batch) or
    the batch sizes."""
    if batch_weights is None:
        return [float(batch_size(b)) for b in batches]
    if isinstance(batch_weights, (str, bytes)) or not isinstance(batch_weights, Sequence):
        raise TypeError(f"batch_weights must be None or a sequence of numbers, got {batch_weights!r}")
    if len(batch_weights) != len(batches):
        raise ValueError(f"batch_weights has {len(batch_weights)} entries for {len(batches)} local batches")
    out = [float(w) for w in batch_weights]
    if not all(math.isfinite(w) and w > 0 for w in out):
        raise ValueError(f"batch_weights must be positive and finite, got {list(batch_weights)}")
    return out


def _mesh_and_shard_dim(params: Sequence[tuple[str, Tensor]], mesh: Any) -> tuple[Any, int]:
    """The parameters' common DeviceMesh and its one dimension with placement ``Shard(0)`` (FSDP2 and HSDP);
    ``TypeError``/``ValueError`` naming the parameter otherwise."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    found = None
    for name, p in params:
        if not isinstance(p, DTensor):
            raise TypeError(f"parameter {name!r} is a plain {type(p).__name__}, not a DTensor: wrap the "
                            "model with torch.distributed.fsdp.fully_shard (FSDP2) so that every analysed "
                            "parameter is sharded")
        pl = tuple(p.placements)
        dims = [i for i, q in enumerate(pl) if isinstance(q, Shard)]
        if len(dims) != 1 or pl[dims[0]].dim != 0 or any(
                not isinstance(q, (Shard, Replicate)) for q in pl):
            raise ValueError(f"parameter {name!r} has placements {pl}: only FSDP2's dim-0 sharding "
                             "(Shard(0), optionally with Replicate() on a hybrid mesh) is supported")
        if found is None:
            found = (p.device_mesh, dims[0])
        elif p.device_mesh != found[0] or dims[0] != found[1]:
            raise ValueError(f"parameter {name!r} is sharded on a different mesh or mesh dimension than "
                             f"{params[0][0]!r}: all analysed parameters must share one FSDP mesh")
    if found is None:
        raise ValueError("the model has no parameter to analyse (none requires grad)")
    if mesh is not None and mesh != found[0]:
        raise ValueError(f"mesh={mesh} is not the mesh the parameters are sharded on ({found[0]})")
    return found


def _shards(params: Sequence[tuple[str, Tensor]], coord: int, size: int) -> list[_Shard]:
    """Where each parameter's local shard lies (``torch.chunk`` rows, as FSDP2 shards), checked against the
    local tensor's shape."""
    out, goff, loff = [], 0, 0
    for name, p in params:
        shape = torch.Size(p.shape)
        local = p.to_local()
        rows = shape[0] if len(shape) else 1
        rest = int(math.prod(shape[1:])) if len(shape) else 1
        c = -(-rows // size)
        r0, r1 = min(coord * c, rows), min((coord + 1) * c, rows)
        lshape = torch.Size(local.shape)
        if len(shape) == 0 or lshape[0] != r1 - r0 or lshape[1:] != shape[1:]:
            raise ValueError(f"parameter {name!r}: local shard of shape {list(lshape)} on shard rank {coord} "
                             f"of {size}, expected rows [{r0}, {r1}) of {list(shape)} (torch.chunk sharding)")
        out.append(_Shard(name, shape, lshape, goff, r0, rest, loff))
        goff += int(math.prod(shape))
        loff += int(math.prod(lshape))
    return out


class ShardedHessianOperator(LinearOperator):
    """The Hessian of an FSDP2-sharded model's loss as an operator on sharded vectors (module docstring).

    Args:
        model: the root module wrapped by ``fully_shard`` (FSDP2), on this rank.
        loss_fn, data: as for :class:`~hessext.hvp.HessianOperator` (``(inputs, targets)``, bare tensors,
            dicts with ``input_ids``/``labels``); ``data`` is **this rank's** batch or list of batches.
        params: None (every parameter that requires grad) or a list of parameter names.
        step: the step factor ``s`` of ``h = s (1 + θ_rms)/‖v‖`` (:func:`fd_step`); None: ``ε^{1/3}``
            (central) or ``ε^{1/5}`` (richardson).
        scheme: ``"central"`` (2 gradient evaluations per column) or ``"richardson"`` (4, error ``O(h⁴)``).
        mesh: the DeviceMesh (checked against the parameters'; None: theirs).
        estimate_error: with ``"central"``, also evaluate ``D(2h)`` (2 more evaluations) for the
            step-doubling error estimate in :attr:`last_error`.
        num_batches, model_type, loss_source, pad_idx: as for :class:`~hessext.hvp.HessianOperator`.
        eval_mode: run the model in eval mode during products (flags restored afterwards).
        batch_loss: custom ``(model_call, batch) -> (loss, weight)`` as for
            :class:`~hessext.hvp.HessianOperator`; ``model_call`` is the FSDP model itself.
        batch_weights: the weight ``w_b`` of each local batch (None: its batch size). The weights must be
            known before the first product (they fix the scales ``P·w_b/W``), so a weight that a (custom)
            batch loss returns is checked against them: a mismatch raises ``ValueError`` on that rank (and a
            ``RuntimeError`` on the others) instead of weighting wrongly.

    Attributes:
        layout: :class:`ParamLayout` of the local shards (``n = layout.n`` is the local vector length).
        global_layout: the parameters' full shapes (``global_n = global_layout.n``).
        world_size: ranks of the mesh; ``shard_rank``, ``num_shards``: this rank's place on the shard dim.
        theta_norm, theta_rms: ``‖θ‖`` and ``‖θ‖/√N`` (global). last_step, last_error: ``[m]`` of the latest
            product (float64, CPU): the step h and the relative error estimate of each column.
        num_gradient_evals: gradient evaluations (forward + backward over the local batches) so far.
    """

    sharded = True

    def __init__(self, model: nn.Module, loss_fn: Any, data: Any, params: Sequence[str] | None = None, *,
                 step: float | None = None, scheme: str = "central", mesh: Any = None,
                 estimate_error: bool = False, num_batches: int | None = None, model_type: str | None = None,
                 loss_source: str = "auto", pad_idx: int | None = None, eval_mode: bool = True,
                 batch_loss: Any = None, batch_weights: Sequence[float] | None = None) -> None:
        if not is_fsdp_model(model):
            raise TypeError(f"model must be wrapped by torch.distributed.fsdp.fully_shard (FSDP2), got "
                            f"{type(model).__name__}; for an unsharded model use HessianOperator or, with "
                            "replicated models, hessext.distributed.DistributedHessianOperator")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        self.model, self.scheme = model, scheme
        self.estimate_error = check_bool("estimate_error", estimate_error)
        self.eval_mode = check_bool("eval_mode", eval_mode)
        named = self._select(model, params)
        self.mesh, self._shard_dim = _mesh_and_shard_dim(named, mesh)
        self._params = [p for _, p in named]
        self._dot_group = self.mesh.get_group(self._shard_dim)
        self._all_groups = [self.mesh.get_group(d) for d in range(self.mesh.ndim)]
        self.shard_rank = self.mesh.get_local_rank(self._shard_dim)
        self.num_shards = self.mesh.size(self._shard_dim)
        self.world_size = self.mesh.size()
        self._shards = _shards(named, self.shard_rank, self.num_shards)
        dtypes = {p.dtype for p in self._params}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise TypeError("all analysed parameters must share one floating dtype, got "
                            f"{sorted(map(str, dtypes))}")
        dtype = next(iter(dtypes))
        local0 = self._params[0].to_local()
        names, dts = [s.name for s in self._shards], [dtype] * len(self._shards)
        self.layout = ParamLayout(names, [s.local_shape for s in self._shards], dts)
        self.global_layout = ParamLayout(names, [s.global_shape for s in self._shards], dts)
        super().__init__(self.layout.n, dtype, local0.device)
        self.step_factor = None if step is None else check_positive_float("step", step)
        self._fsdp_modules = [m for m in model.modules() if is_fsdp_model(m)]
        self._setup_data(loss_fn, data, num_batches, model_type, loss_source, pad_idx, batch_loss,
                         batch_weights)
        sq = torch.stack([p.to_local().detach().to(torch.float64).pow(2).sum() for p in self._params]).sum()
        self.theta_norm = float(self.allreduce_(sq.reshape(1)).sqrt()[0])
        self.theta_rms = self.theta_norm / math.sqrt(max(self.global_n, 1))
        self.last_step = torch.zeros(0, dtype=torch.float64)
        self.last_error = torch.zeros(0, dtype=torch.float64)
        self.num_gradient_evals = 0
        self._loss_part = 0.0            # this rank's Σ_b (w_b/W) L_b of the latest gradient evaluation

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _select(model: nn.Module, params: Sequence[str] | None) -> list[tuple[str, Tensor]]:
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if params is None:
            return named
        if isinstance(params, str) or not all(isinstance(k, str) for k in params):
            raise TypeError(f"params must be None or a list of parameter names, got {params!r}")
        have = dict(named)
        missing = [k for k in params if k not in have]
        if missing:
            raise ValueError(f"params names {missing} are not trainable parameters of the model")
        return [(k, have[k]) for k in params]

    def _setup_data(self, loss_fn: Any, data: Any, num_batches: int | None, model_type: str | None,
                    loss_source: str, pad_idx: int | None, batch_loss: Any = None,
                    batch_weights: Sequence[float] | None = None) -> None:
        """Batches, their loss and the scale ``P·w_b/W`` of each (all ranks agree on W and the count)."""
        err: BaseException | None = None
        try:
            self._batches = normalize_data(data, num_batches, custom=batch_loss is not None)
            self._batch_loss = make_batch_loss(loss_fn, self.model, model_type=model_type, pad_idx=pad_idx,
                                               loss_source=loss_source, batch_loss=batch_loss)
            self.loss_source_used = "batch_loss" if batch_loss is not None and not hasattr(
                batch_loss, "source_for") else self._loss_source(batch_loss or self._batch_loss)
            weights = _batch_weights(self._batches, batch_weights)
        except Exception as exc:  # noqa: BLE001  announced to the other ranks, then raised
            err, weights = exc, []
        self._agree(err, "building its ShardedHessianOperator")
        tot = torch.tensor([sum(weights)], dtype=torch.float64, device=self._comm_device())
        cnt = torch.tensor([float(len(weights))], dtype=torch.float64, device=self._comm_device())
        self._reduce_all(tot, "sum")
        self._reduce_all(cnt, "max")
        # FSDP's mean over the P ranks times P·w_b/W gives the weighted mean over every rank's batches
        self._weights = weights
        self._fractions = [w / float(tot[0]) for w in weights]       # w_b / W: this batch's share of the mean
        self._scales = [self.world_size * w / float(tot[0]) for w in weights]
        self._num_passes = int(cnt[0])
        self.num_batches = len(self._batches)

    def _loss_source(self, fn: Any) -> str:
        """Which loss the built-in batch loss analyses (``"model"`` or ``"loss_fn"``)."""
        try:
            return str(fn.source_for(self._batches))
        except Exception:  # noqa: BLE001  only a label for reports
            return "loss_fn"

    # ------------------------------------------------------------------ collectives
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type != "cpu" else torch.device("cpu")

    def _reduce(self, t: Tensor, reduce: str, groups: list) -> Tensor:
        if reduce not in _REDUCE:
            raise ValueError(f"reduce must be one of {sorted(_REDUCE)}, got {reduce!r}")
        op = getattr(dist.ReduceOp, _REDUCE[reduce])
        buf = t if t.device == self._comm_device() else t.to(self._comm_device())
        for g in groups:
            dist.all_reduce(buf, op=op, group=g)
        if buf is not t:
            t.copy_(buf)
        return t

    def _reduce_all(self, t: Tensor, reduce: str) -> Tensor:
        """Combine ``t`` over every rank of the mesh (sum over each mesh dimension in turn)."""
        return self._reduce(t, reduce, self._all_groups)

    def _agree(self, error: BaseException | None, what: str) -> None:
        """One small all-reduce over the whole mesh: if any rank failed, every rank raises (this rank its own
        error, the others a ``RuntimeError``), before any collective that could wait for the failed rank."""
        flag = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=self._comm_device())
        self._reduce_all(flag, "max")
        if error is not None:
            raise error
        if float(flag[0]) > 0:
            raise RuntimeError(f"hessext: another rank failed while {what} (rank {dist.get_rank()} is fine); "
                               "see the error on the failing rank")

    # ------------------------------------------------------------------ vector-space hooks
    @property
    def global_n(self) -> int:
        return self.global_layout.n

    def allreduce_(self, t: Tensor, reduce: str = "sum") -> Tensor:
        """Sums over the shard dimension (partial dot products of the local slices; replicas of a hybrid mesh
        hold the same slices); ``"max"``/``"min"`` over the whole mesh (agreements)."""
        return self._reduce(t, reduce, [self._dot_group] if reduce == "sum" else self._all_groups)

    def dot(self, x: Tensor, y: Tensor) -> Tensor:
        return self.allreduce_(torch.dot(x, y).reshape(1)).reshape(())

    def norm(self, x: Tensor, dim: int | None = None) -> Tensor:
        sq = (x * x).sum() if dim is None else (x * x).sum(dim)
        return self.allreduce_(sq.reshape(-1)).reshape(sq.shape).sqrt()

    def reorthogonalize(self, w: Tensor, basis: Tensor, passes: int = 2) -> tuple[Tensor, Tensor, Tensor]:
        """Classical Gram–Schmidt on the local slices: per pass the local partial coefficients ``B_r w_r``,
        ONE all-reduce of the k coefficients, the local subtraction ``w_r − B_rᵀ c``; then the all-reduced
        norm. (The fused kernel cannot be used: it subtracts local coefficients.)"""
        if passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, got {passes!r}")
        k = basis.shape[0]
        coeffs = torch.zeros(k, dtype=w.dtype, device=w.device)
        out = w.clone()
        for _ in range(passes if k else 0):
            c = self.allreduce_(torch.mv(basis, out))
            out = torch.addmv(out, basis.T, c, alpha=-1)
            coeffs += c
        return out, coeffs, self.norm(out)

    def rademacher(self, m: int | None = None, *, seed: int, offset: int = 0,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """This rank's slice of the global probes ``hessext.ops.rademacher(global_n, m, seed, offset)``, bit
        for bit: local element e of parameter i, column j, has counter
        ``offset + j·global_n + global_offset_i + row_start_i·row_numel_i + e``."""
        cols = 1 if m is None else m
        out = torch.empty(self.n, cols, dtype=dtype, device=device)
        for j in range(cols):
            for s in self._shards:
                if s.local_numel:
                    seg = out[s.local_offset:s.local_offset + s.local_numel, j]
                    ops.rademacher_(seg, seed, offset + j * self.global_n + s.counter)
        return out[:, 0] if m is None else out

    def qr(self, Y: Tensor) -> tuple[Tensor, Tensor]:
        """CholeskyQR2 with all-reduced Gram matrices (shifted on the first pass when the Gram matrix is
        numerically singular, Fukaya et al. 2020): ``Q`` with orthonormal columns over the whole space (the
        local rows here) and the same ``R`` on every rank."""
        Q, R = self._cholqr(Y, shift_ok=True)
        Q, R2 = self._cholqr(Q, shift_ok=True)
        return Q, R2 @ R

    def _cholqr(self, Y: Tensor, shift_ok: bool) -> tuple[Tensor, Tensor]:
        G = self.allreduce_(Y.T @ Y).to(torch.float64)
        L, info = torch.linalg.cholesky_ex(G)
        if int(info) != 0 and shift_ok:
            m = G.shape[0]
            shift = 11 * (self.global_n * m + m * (m + 1)) * float(torch.finfo(Y.dtype).eps) * float(
                G.diagonal().sum().clamp_min(torch.finfo(torch.float64).tiny))
            L, info = torch.linalg.cholesky_ex(G + shift * torch.eye(m, dtype=G.dtype, device=G.device))
        if int(info) != 0:
            raise RuntimeError("ShardedHessianOperator.qr: the block is numerically zero (Cholesky failed)")
        R = L.T.to(Y.dtype)
        return torch.linalg.solve_triangular(R, Y, upper=True, left=False), R

    def local_ranges(self) -> list[tuple[int, int]]:
        """``(global start, count)`` of each parameter's local elements in the global flat vector (in local
        order; ``count`` may be 0): local element ``local_offset + e`` is global element ``start + e``."""
        return [(s.counter, s.local_numel) for s in self._shards]

    def to_dense(self, block_size: int | None = None) -> Tensor:
        """Refused: the dense Hessian of a model too large for one device cannot be gathered."""
        raise ValueError("to_dense() of a sharded operator would gather the whole n × n Hessian on every "
                         "rank; apply the operator to vectors instead")

    # ------------------------------------------------------------------ products
    @contextlib.contextmanager
    def _restoring(self) -> Iterator[list[Tensor]]:
        """Save the local shards, ``.grad`` objects, training flags and the global RNG; yield the saved
        shards; restore everything (bitwise) and reshard FSDP's modules afterwards, also on an exception."""
        saved = [p.to_local().detach().clone() for p in self._params]
        grads = [p.grad for p in self._params]
        flags = [(m, m.training) for m in self.model.modules()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        try:
            if self.eval_mode:
                self.model.eval()
            yield saved
        finally:
            with torch.no_grad():
                for p, s in zip(self._params, saved):
                    p.to_local().copy_(s)
            for p, g in zip(self._params, grads):
                p.grad = g
            for m, t in flags:
                m.training = t
            for m in self._fsdp_modules:
                m.reshard()
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)

    def _gradient(self, saved: list[Tensor], v: Tensor | None, c: float, rng: Tensor) -> Tensor:
        """The local shard ``[n]`` of the gradient at ``θ + c v`` (local shards ``saved + c·v``), over all
        local batches, each rank agreeing after every loss that it can go on into the backward."""
        with torch.no_grad():
            for p, s, sh in zip(self._params, saved, self._shards):
                if v is None:
                    p.to_local().copy_(s)
                else:
                    part = v[sh.local_offset:sh.local_offset + sh.local_numel].view(sh.local_shape)
                    p.to_local().copy_(torch.add(s, part.to(s.dtype), alpha=c))
        for p in self._params:
            p.grad = None
        self._loss_part = 0.0
        for i in range(self._num_passes):
            torch.set_rng_state(rng)
            b = min(i, len(self._batches) - 1)
            scale = self._scales[b] if i < len(self._batches) else 0.0
            err, loss = None, None
            try:
                loss, w = self._batch_loss(self.model, self._batches[b])
                loss = check_loss(loss, b)
                check_loss_finite(loss, b)
                self._check_weight(b, w)
            except Exception as exc:  # noqa: BLE001  announced to the other ranks first
                err = exc
            self._agree(err, f"computing the loss of batch {b}")
            (loss * scale).backward()
            if i < len(self._batches):
                self._loss_part += float(loss.detach()) * self._fractions[b]
        self.num_gradient_evals += 1
        parts = [p.grad.to_local().reshape(-1) if p.grad is not None else
                 torch.zeros(sh.local_numel, dtype=self.dtype, device=self.device)
                 for p, sh in zip(self._params, self._shards)]
        return torch.cat(parts).to(self.dtype)

    def _check_weight(self, b: int, w: Any) -> None:
        """The weight the batch loss returned must be the one the scales were fixed with."""
        w, ref = float(w), self._weights[b]
        if not abs(w - ref) <= 1e-12 * max(abs(ref), 1.0):
            raise ValueError(f"the batch loss returned weight {w} for local batch {b}, but the sharded "
                             f"operator fixed its weights at construction to {ref} (the batch size, or "
                             "batch_weights=): pass batch_weights= with the weights your batch_loss returns")

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """The weighted mean loss over every rank's batches (a float, the same on every rank) and THIS
        rank's shard ``[n]`` of its gradient (in :attr:`layout` order): ``L = Σ_r Σ_b w_b L_b / W``,
        ``∇L`` as FSDP reduce-scatters it. One gradient evaluation; the model is restored as for products."""
        rng = torch.get_rng_state()
        with torch.inference_mode(False), torch.enable_grad(), self._restoring() as saved:
            g = self._gradient(saved, None, 0.0, rng)
        part = torch.tensor([self._loss_part], dtype=torch.float64, device=self._comm_device())
        self._reduce_all(part, "sum")
        return float(part[0]), g

    def gather(self, X: Tensor) -> Tensor:
        """The whole vector(s) ``[global_n]`` / ``[global_n, m]`` (global flat parameter order) from this
        rank's shards ``X`` (``[n]`` / ``[n, m]``): ONE all-reduce of ``global_n·m`` numbers over the shard
        dimension, each element with exactly one non-zero contribution, so the result is exact and the same
        bits on every rank. It materialises whole vectors: for results that a caller asks for in full (API
        eigenvectors), never inside the algorithms."""
        if X.dim() not in (1, 2) or X.shape[0] != self.n:
            raise ValueError(f"X must have shape [{self.n}] or [{self.n}, m], got {list(X.shape)}")
        out = torch.zeros((self.global_n,) + tuple(X.shape[1:]), dtype=X.dtype, device=self._comm_device())
        for s in self._shards:
            out[s.counter:s.counter + s.local_numel] = X[s.local_offset:s.local_offset + s.local_numel]
        self.allreduce_(out)
        return out.to(X.device)

    def _matmat(self, X: Tensor) -> Tensor:
        m = X.shape[1]
        norms = self.norm(X, dim=0).to(torch.float64)
        out = torch.zeros_like(X)
        steps = torch.zeros(m, dtype=torch.float64)
        stats = torch.zeros(3 * m, dtype=torch.float64, device=self._comm_device())
        rng = torch.get_rng_state()
        with torch.inference_mode(False), torch.enable_grad(), self._restoring() as saved:
            for j in range(m):
                nv = float(norms[j])
                if nv == 0.0:
                    continue
                h = fd_step(self.dtype, self.theta_rms, nv, self.scheme, self.step_factor)
                steps[j] = h
                out[:, j], stats[3 * j:3 * j + 3] = self._column(saved, X[:, j], h, rng)
        self.allreduce_(stats)
        st = stats.to("cpu").view(m, 3).sqrt()
        rel_round = float(torch.finfo(self.dtype).eps) * st[:, 2] / (2 * steps.clamp_min(1e-300))
        self.last_step = steps
        self.last_error = (st[:, 1] + rel_round) / st[:, 0].clamp_min(1e-300)
        return out

    def _column(self, saved: list[Tensor], v: Tensor, h: float, rng: Tensor) -> tuple[Tensor, Tensor]:
        """``H v`` by the operator's scheme, and the local parts of ``[‖Hv‖², ‖truncation error‖²,
        2(‖g₊‖² + ‖g₋‖²)]`` (summed over the shard dimension by the caller)."""
        gp = self._gradient(saved, v, h, rng)
        gm = self._gradient(saved, v, -h, rng)
        d1 = (gp - gm) / (2 * h)
        gsum = 2 * (gp.double().pow(2).sum() + gm.double().pow(2).sum())   # ≥ (‖g₊‖ + ‖g₋‖)² globally
        err = torch.zeros((), dtype=torch.float64)
        res = d1
        if self.scheme == "richardson" or self.estimate_error:
            d2 = (self._gradient(saved, v, 2 * h, rng) - self._gradient(saved, v, -2 * h, rng)) / (4 * h)
            err = ((d1 - d2).double().norm() / 3) ** 2
            if self.scheme == "richardson":
                res = (4 * d1 - d2) / 3
        stats = torch.stack([res.double().pow(2).sum(), err.to(res.device), gsum])
        return res, stats.to(self._comm_device())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, global_n={self.global_n}, dtype={self.dtype}, "
                f"shard {self.shard_rank} of {self.num_shards}, world_size={self.world_size}, "
                f"scheme={self.scheme!r})")
