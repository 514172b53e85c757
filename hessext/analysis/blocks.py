"""Blockwise spectra: the spectral densities of the diagonal blocks ``H_CC`` of a Hessian, and how much they
differ (Zhang et al. 2024, "Why Transformers Need Adam: A Hessian Perspective", NeurIPS 2024).

A *block* is an index subset ``C ⊂ {0 … n−1}`` of the flat parameter vector: a component of
:mod:`hessext.analysis.components`, a parameter tensor (:func:`parameter_blocks`), a layer
(:func:`layer_blocks`) or any dict ``name → index set``. ``P_C ∈ R^{n×|C|}`` embeds ``R^{|C|}`` into ``R^n``
(zero outside C) and ``H_CC = P_Cᵀ H P_C`` is the principal block: the curvature when only C moves.

Stochastic Lanczos quadrature per block
---------------------------------------
The density of ``H_CC`` (eigenvalues ``λ_1 … λ_|C|``), ``ρ_C(λ) = (1/|C|) Σ_k δ(λ − λ_k)``, is estimated as in
:func:`hessext.density.spectral_density`: p normalised Rademacher probes, m Lanczos steps each with full
reorthogonalisation (:class:`hessext.lanczos.LanczosChains`), Gauss quadrature nodes ``θ_ci`` and weights
``τ_ci`` per probe, and a Gaussian broadening ``ρ_C(λ) ≈ (1/p) Σ_c Σ_i τ_ci 𝒩(λ; θ_ci, σ²)``. With
``m = |C|`` steps the quadrature of each probe is exact: its moments ``Σ_i τ_ci θ_ci^k`` equal
``z_cᵀ H_CC^k z_c / ‖z_c‖²`` for every k.

One operator call per Lanczos step for all blocks
-------------------------------------------------
Every block needs its own Krylov chains (the Krylov space of ``H_CC`` is not that of H), but the products of
all chains of all blocks at step j go through ONE call of the operator. Stack the current Lanczos vectors of
the K blocks as the columns of a block-diagonal matrix (column ``(i, c)`` is chain c of block ``C_i``,
embedded in ``R^n`` and zero outside ``C_i``):

    X = [P_{C_1} Q_1, …, P_{C_K} Q_K] ∈ R^{n × pK},     Q_i = [q_{i,1} … q_{i,p}] ∈ R^{|C_i| × p}.

Then ``(H X)[C_i, columns of block i] = P_{C_i}ᵀ H P_{C_i} Q_i = H_{C_i C_i} Q_i`` exactly: each column sees
only its own block, whatever the other columns hold. So a step is one ``H @ X`` of width ``p·K`` (columns
of finished blocks, whose ``m_i = min(m, |C_i|)`` steps are done, are left out), i.e. ``max_i m_i`` operator
calls for the whole analysis instead of K·m calls of width p (one ``restrict`` + SLQ per block) or Zhang et
al.'s one backward pass per block, per probe and per step. The number of Hessian-vector *columns* is the same,
``p · Σ_i m_i``: no exact method can do with fewer, because one column carrying probes of several blocks,
``x = Σ_i P_{C_i} z_i``, gives ``(H x)[C_i] = H_{C_i C_i} z_i + Σ_{j≠i} H_{C_i C_j} z_j``, and the cross terms
would enter the Krylov chains (they average out in a trace estimate, not in a Lanczos recurrence). The gain
is in the calls: one forward pass / gradient graph and one (on accelerators batched) backward per step, for
all blocks. ``max_columns`` splits a step into several calls when ``n · p · K`` values do not fit.

The probes are shared across blocks where this changes nothing: one Rademacher draw ``Z ∈ {±1}^{n×p}``
(``rademacher(n, p, seed)``), and block C starts from the restrictions ``Z[C, c] / √|C|`` (still Rademacher
on C). Each block's chains still run on their own, in a basis of ``|C_i|`` rows (memory ``p · Σ_i m_i·|C_i|``
values, checked before allocating).

Normalised densities (Zhang et al.'s convention)
------------------------------------------------
Blocks differ in scale by orders of magnitude, and Zhang et al. compare the *shapes* of their spectra: each
block's spectrum is divided by its own scale before the densities are compared (their Fig. 3 plots spectra
normalised by the block's 10th largest eigenvalue; its JS⁰ is the Jensen–Shannon distance averaged over all
pairs of blocks). hessext normalises by the block's own top ``|eigenvalue|`` estimate

    s_C = max_{c, i} |θ_ci|     (the largest |Ritz value| of the block's chains: a lower bound on ‖H_CC‖
                                 that converges first in Lanczos; SLQ does not resolve the 10th eigenvalue),

so that the normalised eigenvalues ``t = λ / s_C`` lie in ``[−1, 1]`` and the normalised density is
``ρ̃_C(t) = s_C · ρ_C(s_C t)`` (a block whose nodes are all 0 keeps ``s_C = 1``). All blocks share one width
``σ`` in normalised units (default 1 % of the range of all normalised nodes) and one grid; the raw density
over λ is the same smoothed density in λ units, ``σ_λ = σ · s_C``, on the block's own grid.

Jensen–Shannon distance
-----------------------
On the common grid ``t_1 … t_g`` (uniform), block densities become probability vectors ``P_g = ρ̃(t_g) /
Σ_h ρ̃(t_h)`` (the mass of each grid cell; a Riemann sum of the continuous densities, each of which is
normalised to integrate to 1 by the trapezoid rule). With ``M = (P + Q)/2`` and the **natural** logarithm,

    JS(P, Q) = ½ Σ_g P_g ln(P_g / M_g) + ½ Σ_g Q_g ln(Q_g / M_g),      d_JS(P, Q) = √JS(P, Q),

(``0 ln 0 = 0``), so ``0 ≤ d_JS ≤ √ln 2 ≈ 0.8326``, the maximum reached by densities with disjoint supports
(``scipy.spatial.distance.jensenshannon`` with its default base computes the same). The mean JS distance is
the average over the ``K(K−1)/2`` pairs of blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from .. import ops
from .._checks import (
    ArgumentTypeError,
    IndexLike,
    check_bool,
    check_int,
    check_positive_float,
    check_seed,
    index_set,
    json_safe,
    work_dtype,
)
from .._memory import require_memory
from ..lanczos import LanczosChains
from ..layout import ParamLayout
from ..linop import LinearOperator, as_operator, holds_session
from ..results import DensityResult

__all__ = ["BlockSpectraResult", "block_spectra", "block_index_sets", "parameter_blocks", "layer_blocks",
           "jensen_shannon_distance", "js_distance_matrix", "mean_pairwise"]

#: √ln 2: the largest Jensen–Shannon distance (natural logarithm), reached by disjoint supports.
JS_MAX = math.sqrt(math.log(2.0))


@dataclass(frozen=True)
class BlockSpectraResult:
    """Spectral densities of the diagonal Hessian blocks, raw and normalised, and their JS distances.

    Attributes:
        names: block names, in the order of the rows of :attr:`js_matrix`.
        grid: ``[g]`` common grid of normalised eigenvalues ``t = λ / s_C`` (float64, CPU).
        normalized: name → :class:`~hessext.results.DensityResult` on :attr:`grid` (nodes ``θ/s_C``,
            width ``sigma``), integrating to 1.
        raw: name → DensityResult over λ on the block's own grid (width ``sigma · s_C``), integrating to 1;
            ``raw[name].trace_estimate`` is the Hutchinson estimate of ``tr H_CC`` from the block's probes.
        top_eigenvalues: name → the Ritz value of largest magnitude (signed); ``s_C`` is its ``|·|``.
        sizes: name → ``|C|``.
        js_matrix: ``[K, K]`` Jensen–Shannon distances (natural log) between the normalised densities.
        mean_js: mean of ``js_matrix`` over the pairs ``i < j`` (NaN for a single block).
        num_matvecs: Hessian-vector columns spent, ``p · Σ_C min(num_iter, |C|)``.
        num_calls: operator calls (Lanczos steps, times the splits of ``max_columns``).
        sigma: broadening width in normalised units.
        num_probes, num_iter: the SLQ settings.
    """

    names: tuple[str, ...]
    grid: Tensor
    normalized: dict[str, DensityResult]
    raw: dict[str, DensityResult]
    top_eigenvalues: dict[str, float]
    sizes: dict[str, int]
    js_matrix: Tensor
    mean_js: float
    num_matvecs: int
    num_calls: int
    sigma: float
    num_probes: int
    num_iter: int
    log_base: str = field(default="e")

    @property
    def densities(self) -> dict[str, Tensor]:
        """name → normalised density ``[g]`` on :attr:`grid`."""
        return {k: d.density for k, d in self.normalized.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (what an ``analyze_step`` section holds): the grids and densities, the top
        eigenvalues, the JS matrix and its mean, the settings and the cost."""
        return json_safe({
            "names": list(self.names), "sizes": self.sizes, "grid": self.grid,
            "densities": self.densities,
            "raw": {k: {"grid": d.grid, "density": d.density, "sigma": d.sigma,
                        "trace_estimate": d.trace_estimate} for k, d in self.raw.items()},
            "top_eigenvalues": self.top_eigenvalues, "js_matrix": self.js_matrix, "mean_js": self.mean_js,
            "num_matvecs": self.num_matvecs, "num_calls": self.num_calls, "sigma": self.sigma,
            "num_probes": self.num_probes, "num_iter": self.num_iter, "log_base": self.log_base,
        })


# ============================================================================ blocks
def block_index_sets(blocks: Mapping[str, IndexLike], n: int, *, allow_overlap: bool = False
                     ) -> dict[str, Tensor]:
    """Validate ``blocks`` (name → LongTensor / sequence of ints / bool mask ``[n]`` / slice) as index sets of
    ``range(n)``: each non-empty, without repeated indices, and pairwise disjoint unless ``allow_overlap``.

    Overlapping blocks are refused by default: the mean JS distance of Zhang et al. is over a partition of the
    parameters, and an overlap ("attention" with "attention_query") is usually a mistake. Each block's chains
    are exact either way (its columns never carry another block), so ``allow_overlap=True`` is sound.

    Raises:
        TypeError: ``blocks`` is not a mapping, a name is not a str, an index set has a wrong type.
        ValueError: no block, an empty block, indices out of range or repeated, overlapping blocks.
    """
    if not isinstance(blocks, Mapping):
        raise ArgumentTypeError(f"blocks must be a dict name -> index set, got {type(blocks).__name__}")
    if not blocks:
        raise ValueError("blocks is empty: pass at least one block (name -> index set)")
    out: dict[str, Tensor] = {}
    for name, idx in blocks.items():
        if not isinstance(name, str):
            raise ArgumentTypeError(f"block names must be str, got {type(name).__name__} {name!r}")
        out[name] = index_set(idx, n, f"blocks[{name!r}]")
        if out[name].numel() == 0:
            raise ValueError(f"blocks[{name!r}] is empty: every block needs at least one index")
    if not check_bool("allow_overlap", allow_overlap):
        owner = torch.full((n,), -1, dtype=torch.long)
        for b, (name, idx) in enumerate(out.items()):
            prev = owner[idx]
            hit = prev[prev >= 0]
            if hit.numel():
                other = list(out)[int(hit[0])]
                raise ValueError(f"blocks {other!r} and {name!r} overlap ({int(hit.numel())} shared "
                                 f"indices); pass disjoint blocks, or allow_overlap=True")
            owner[idx] = b
    return out


def parameter_blocks(layout: ParamLayout, *, min_numel: int = 1, matrices_only: bool = False
                     ) -> dict[str, Tensor]:
    """One block per parameter tensor (Zhang et al.'s blocks): name → its flat index range on ``layout``.

    Args:
        layout: the operator's :class:`~hessext.layout.ParamLayout` (``HessianOperator.layout``).
        min_numel: leave out tensors with fewer elements.
        matrices_only: keep only tensors of 2 or more dimensions (weights; no biases, no norm gains).
    """
    if not isinstance(layout, ParamLayout):
        raise ArgumentTypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
    min_numel = check_int("min_numel", min_numel, 1)
    check_bool("matrices_only", matrices_only)
    out = {}
    for name, shape, off, k in zip(layout.names, layout.shapes, layout.offsets, layout.numels):
        if k >= min_numel and (len(shape) >= 2 or not matrices_only):
            out[name] = torch.arange(off, off + k, dtype=torch.long)
    return out


def layer_blocks(layout: ParamLayout) -> dict[str, Tensor]:
    """One block per module (a parameter name without its last segment: ``"layers.0.fc1.weight"`` and
    ``".bias"`` form ``"layers.0.fc1"``), in layout order; parameters registered on the root module form the
    block of their own name."""
    if not isinstance(layout, ParamLayout):
        raise ArgumentTypeError(f"layout must be a ParamLayout, got {type(layout).__name__}")
    groups: dict[str, list[Tensor]] = {}
    for name, off, k in zip(layout.names, layout.offsets, layout.numels):
        key = name.rsplit(".", 1)[0] if "." in name else name
        groups.setdefault(key, []).append(torch.arange(off, off + k, dtype=torch.long))
    return {k: torch.cat(v) for k, v in groups.items()}


# ============================================================================ batched chains
class _Replay(LinearOperator):
    """The product one :meth:`LanczosChains.advance` step of one block asks for, already computed in the
    batched call: returns ``Y`` for exactly the vectors ``X`` it was computed from (anything else raises)."""

    def __init__(self, X: Tensor, Y: Tensor) -> None:
        super().__init__(X.shape[0], X.dtype, X.device)
        self.X, self.Y = X, Y

    def _matmat(self, X: Tensor) -> Tensor:
        same = X.shape == self.X.shape and bool(((X == self.X) | (X.isnan() & self.X.isnan())).all())
        if not same:
            raise RuntimeError("block_spectra: a Lanczos step asked for the product of other vectors than "
                               "the block's current ones (LanczosChains.advance changed its contract)")
        return self.Y


def _require_memory(sizes: Sequence[int], p: int, m: int, n: int, width: int, dtype: torch.dtype,
                    device: torch.device) -> None:
    itemsize = torch.empty((), dtype=dtype).element_size()
    bases = sum(LanczosChains.nbytes(p, min(m, s), s, dtype) for s in sizes)
    need = bases + 3 * n * width * itemsize + n * p * itemsize

    def advice(avail: int) -> str:
        return "pass a smaller num_iter, fewer num_probes, a smaller max_columns, or fewer/smaller blocks"
    require_memory(need, device, f"block_spectra with num_probes={p}, num_iter={m}, {len(sizes)} blocks "
                   f"({sum(sizes)} of n={n} coordinates), {width} columns per call", advice)


def _run_chains(op: LinearOperator, index_sets: Mapping[str, Tensor], p: int, m: int, seed: int,
                max_columns: int) -> tuple[dict[str, LanczosChains], int]:
    """Advance p chains per block, all blocks' products of a step in ``⌈p·K_active / max_columns⌉`` calls."""
    n, dtype, device = op.n, work_dtype(op.dtype), op.device
    names = list(index_sets)
    idx = {k: v.to(device) for k, v in index_sets.items()}
    steps = {k: min(m, int(v.numel())) for k, v in idx.items()}
    per_call = max(1, max_columns // p)           # blocks per operator call
    _require_memory([int(v.numel()) for v in idx.values()], p, m, n, min(p * len(names), per_call * p),
                    dtype, device)
    Z = ops.rademacher(n, p, seed=seed, dtype=dtype, device=device)
    chains = {}
    for k in names:
        chains[k] = LanczosChains.allocate(p, steps[k], int(idx[k].numel()), dtype, device)
        chains[k].V[:, 0, :] = Z[idx[k]].T / math.sqrt(int(idx[k].numel()))
    del Z
    btol = float(torch.finfo(dtype).eps) ** (2.0 / 3.0)
    calls = 0
    for j in range(max(steps.values())):
        active = [k for k in names if j < steps[k]]
        for g0 in range(0, len(active), per_call):
            group = active[g0:g0 + per_call]
            X = torch.zeros(n, p * len(group), dtype=dtype, device=device)
            cur = {k: chains[k].V[:, j, :].T.contiguous() for k in group}     # [|C|, p]
            for s, k in enumerate(group):
                X[idx[k], s * p:(s + 1) * p] = cur[k]
            Y = op.matmat(X)
            calls += 1
            del X
            for s, k in enumerate(group):
                chains[k].advance(_Replay(cur[k], Y[idx[k], s * p:(s + 1) * p]), j, j + 1, btol)
    return chains, calls


def _quadrature(name: str, chains: LanczosChains) -> tuple[Tensor, Tensor]:
    """Gauss quadrature ``(nodes [p, m], weights [p, m])`` of each chain (float64, CPU): eigenvalues of its
    tridiagonal ``T`` and the squared first components of their eigenvectors. A chain that broke down at
    step j (its Krylov space is invariant: the quadrature is exact there) keeps j + 1 nodes, the rest
    weight 0."""
    dtype = chains.alpha.dtype
    host = torch.stack([chains.alpha, chains.beta, chains.flags.to(dtype)]).to("cpu", torch.float64).numpy()
    a_all, b_all, fl_all = host[0], host[1], host[2] > 0.5
    if not (np.all(np.isfinite(a_all)) and np.all(np.isfinite(b_all))):
        c, j = np.argwhere(~(np.isfinite(a_all) & np.isfinite(b_all)))[0]
        raise RuntimeError(f"block_spectra: non-finite value (NaN/Inf) in the Lanczos tridiagonal of block "
                           f"{name!r}, probe {c}, step {j}: the operator returned NaN/Inf")
    p, m = a_all.shape
    nodes, weights = np.zeros((p, m)), np.zeros((p, m))
    for c in range(p):
        hits = np.flatnonzero(fl_all[c])
        size = int(hits[0]) + 1 if hits.size else m
        theta, S = eigh_tridiagonal(a_all[c, :size], b_all[c, :size - 1])
        nodes[c, :size], nodes[c, size:] = theta, theta[-1]
        weights[c, :size] = S[0, :] ** 2
    return torch.from_numpy(nodes), torch.from_numpy(weights)


def _broaden(nodes: Tensor, weights: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """``(1/p) Σ_c Σ_i τ_ci 𝒩(grid; θ_ci, σ²)``, then scaled to integrate to 1 (trapezoid rule)."""
    x = (grid[:, None] - nodes.reshape(1, -1)) / sigma
    dens = (torch.exp(-0.5 * x * x) * weights.reshape(1, -1)).sum(1) / (nodes.shape[0] * sigma
                                                                       * math.sqrt(2 * math.pi))
    area = float(torch.trapezoid(dens, grid))
    return dens / area if area > 0 else dens


def _used(nodes: Tensor, weights: Tensor) -> Tensor:
    return nodes[weights > 0] if bool((weights > 0).any()) else nodes.reshape(-1)


def _densities(quad: Mapping[str, tuple[Tensor, Tensor]], sizes: Mapping[str, int], sigma: Optional[float],
               num_grid: int) -> tuple[Tensor, dict[str, DensityResult], dict[str, DensityResult],
                                       dict[str, float], float]:
    """From each block's quadrature: the common normalised grid, the normalised and raw densities, the top
    eigenvalue estimates and the width σ (normalised units)."""
    top, scale = {}, {}
    for k, (nodes, weights) in quad.items():
        used = _used(nodes, weights)
        top[k] = float(used[int(used.abs().argmax())])
        scale[k] = abs(top[k]) if top[k] != 0 else 1.0
    pooled = torch.cat([_used(nodes, weights) / scale[k] for k, (nodes, weights) in quad.items()])
    lo, hi = float(pooled.min()), float(pooled.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 0.01
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, num_grid, dtype=torch.float64)
    normalized, raw = {}, {}
    for k, (nodes, weights) in quad.items():
        s, p, steps = scale[k], nodes.shape[0], nodes.shape[1]
        t_nodes = nodes / s
        normalized[k] = DensityResult(grid=grid, density=_broaden(t_nodes, weights, grid, sigma),
                                      nodes=t_nodes, weights=weights, num_matvecs=p * steps, sigma=sigma,
                                      n=sizes[k])
        u = _used(nodes, weights)
        g_k = torch.linspace(float(u.min()) - 5 * sigma * s, float(u.max()) + 5 * sigma * s, num_grid,
                             dtype=torch.float64)
        raw[k] = DensityResult(grid=g_k, density=_broaden(nodes, weights, g_k, sigma * s), nodes=nodes,
                               weights=weights, num_matvecs=p * steps, sigma=sigma * s, n=sizes[k])
    return grid, normalized, raw, top, float(sigma)


# ============================================================================ Jensen–Shannon
def jensen_shannon_distance(p: Any, q: Any) -> float:
    """``√JS(P, Q)`` with the natural logarithm between two non-negative vectors on the same grid, each scaled
    to sum to 1 (see the module docstring); in ``[0, √ln 2]``.

    Raises:
        ValueError: shapes differ, a vector is empty, negative, non-finite or all zero.
    """
    P, Q = _probability(p, "p"), _probability(q, "q")
    if P.shape != Q.shape:
        raise ValueError(f"p and q must have the same shape, got {list(P.shape)} and {list(Q.shape)}")
    M = 0.5 * (P + Q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kp = np.where(P > 0, P * np.log(P / M), 0.0).sum()
        kq = np.where(Q > 0, Q * np.log(Q / M), 0.0).sum()
    return float(math.sqrt(max(0.5 * (kp + kq), 0.0)))


def _probability(x: Any, name: str) -> np.ndarray:
    arr = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, Tensor) else np.asarray(x, np.float64)
    arr = arr.reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be a non-empty vector of finite non-negative values")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"{name} is all zero: not a density")
    return arr / total


def js_distance_matrix(densities: Mapping[str, Any]) -> tuple[tuple[str, ...], Tensor]:
    """``(names, D)``: ``D[i, j]`` = :func:`jensen_shannon_distance` of the densities (on one common grid)
    of blocks i and j; symmetric with a zero diagonal, float64 ``[K, K]``."""
    if not isinstance(densities, Mapping) or not densities:
        raise ValueError("densities must be a non-empty dict name -> density on a common grid")
    names = tuple(densities)
    K = len(names)
    D = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(i + 1, K):
            D[i, j] = D[j, i] = jensen_shannon_distance(densities[names[i]], densities[names[j]])
    return names, D


def mean_pairwise(matrix: Tensor) -> float:
    """Mean of a symmetric ``[K, K]`` matrix over the pairs ``i < j`` (NaN when K < 2)."""
    K = matrix.shape[0]
    if K < 2:
        return float("nan")
    iu = torch.triu_indices(K, K, offset=1)
    return float(matrix[iu[0], iu[1]].mean())


# ============================================================================ the analysis
@holds_session
def block_spectra(operator: "LinearOperator | Tensor", blocks: Mapping[str, IndexLike], *,
                  num_probes: int = 8, num_iter: int = 30, seed: int = 0, sigma: Optional[float] = None,
                  num_grid: int = 400, max_columns: Optional[int] = None,
                  allow_overlap: bool = False) -> BlockSpectraResult:
    """Spectral densities of the diagonal blocks ``H_CC`` by batched stochastic Lanczos quadrature, raw and
    normalised by each block's top ``|eigenvalue|``, with the Jensen–Shannon distances between blocks.

    See the module docstring for the mathematics (one operator call per Lanczos step for all blocks, the
    normalisation, the JS distance). The operator's session is held for the whole call.

    Args:
        operator: a symmetric :class:`~hessext.linop.LinearOperator` (``HessianOperator``, a GGN, …) or a
            dense ``[n, n]`` tensor.
        blocks: name → index set (see :func:`block_index_sets`; :func:`parameter_blocks`,
            :func:`layer_blocks` and ``ComponentAnalyzer.component_index_sets`` make them).
        num_probes: p ≥ 1 Rademacher probes per block (restrictions of one shared draw).
        num_iter: Lanczos steps per probe, clamped to each block's size (with ``num_iter ≥ |C|`` each probe's
            quadrature is exact).
        seed: probe seed.
        sigma: broadening width in normalised units (``t = λ / s_C``); default 1 % of the range of all
            normalised nodes.
        num_grid: points of the common normalised grid and of each raw grid (≥ 2).
        max_columns: the most Hessian-vector columns per operator call (default: all blocks at once,
            ``p · K``); at least p.
        allow_overlap: accept overlapping blocks.

    Returns:
        :class:`BlockSpectraResult`.
    """
    op = as_operator(operator)
    p = check_int("num_probes", num_probes, 1)
    m = check_int("num_iter", num_iter, 1)
    seed = check_seed(seed)
    num_grid = check_int("num_grid", num_grid, 2)
    if sigma is not None:
        sigma = check_positive_float("sigma", sigma)
    sets = block_index_sets(blocks, op.n, allow_overlap=allow_overlap)
    width = p * len(sets) if max_columns is None else check_int("max_columns", max_columns, p)
    start = op.num_matvecs
    chains, calls = _run_chains(op, sets, p, m, seed, width)
    quad = {k: _quadrature(k, c) for k, c in chains.items()}
    del chains
    sizes = {k: int(v.numel()) for k, v in sets.items()}
    grid, normalized, raw, top, sigma = _densities(quad, sizes, sigma, num_grid)
    names, D = js_distance_matrix({k: normalized[k].density for k in sets})
    return BlockSpectraResult(names=names, grid=grid, normalized=normalized, raw=raw, top_eigenvalues=top,
                              sizes=sizes, js_matrix=D,
                              mean_js=mean_pairwise(D), num_matvecs=op.num_matvecs - start, num_calls=calls,
                              sigma=float(sigma), num_probes=p, num_iter=m)
