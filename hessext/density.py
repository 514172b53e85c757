"""Spectral density by stochastic Lanczos quadrature (SLQ).

The spectral density of a symmetric ``A`` with eigenpairs ``(λ_k, u_k)`` is ``φ(t) = (1/n) Σ_k δ(t − λ_k)``.
For a unit probe ``v``, ``vᵀ f(A) v = Σ_k (u_kᵀv)² f(λ_k)`` is a Riemann–Stieltjes integral that m steps of
Lanczos started at ``v`` turn into an m-point Gauss quadrature: nodes ``θ_i`` = eigenvalues of ``T_m``,
weights ``τ_i = (e_1ᵀ s_i)²`` (squared first components of its eigenvectors), exact for polynomials of degree
``≤ 2m − 1`` (Golub & Meurant, *Matrices, Moments and Quadrature*, 2010). With Rademacher ``z``,
``E[(u_kᵀ z)²]/n = 1/n``, so averaging over p normalised probes and broadening each node with a Gaussian gives

    φ_σ(t) = (1/p) Σ_{c=1..p} Σ_{i=1..m} τ_{c,i} 𝒩(t; θ_{c,i}, σ²)

(Lin, Saad, Yang, SIAM Review 2016; Ghorbani, Krishnan, Xiao, ICML 2019). Lanczos runs with full
reorthogonalisation, so there are no ghost nodes.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from . import _memory
from ._checks import ArgumentTypeError, check_int, check_positive_float, check_seed, work_dtype
from ._memory import require_memory
from .lanczos import LanczosChains
from .linop import LinearOperator, as_operator, holds_session
from .restart import BASIS_MEMORY_SHARE
from .results import DensityResult

__all__ = ["spectral_density", "slq_quadrature"]


def _probe_group(p: int, m: int, n: int, num_iter: int, dtype: torch.dtype, device: torch.device) -> int:
    """How many of the ``p`` chains run at once: all of them when their bases (``p·m·n`` values) fit in half
    of the memory available on ``device`` (the Lanczos basis bound,
    :data:`hessext.lanczos.BASIS_MEMORY_SHARE`), else as many as fit, in groups (same probes, same
    numbers). Refuses ``num_iter`` when even one chain does not fit in all of the available memory; the error
    names ``num_iter``, ``num_probes`` and n."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    avail = _memory.available_memory(device)
    if avail is None:
        return p
    fit = int(BASIS_MEMORY_SHARE * avail) // (m * n * itemsize)
    if fit >= 1:
        return min(p, fit)
    require_memory(LanczosChains.nbytes(1, m, n, dtype), device,
                   f"num_iter={num_iter} with num_probes={p}, n={n}: one Lanczos basis of m·n = {m}·{n} "
                   f"{str(dtype).replace('torch.', '')} values (m = min(num_iter, n) = {m})",
                   lambda a: f"pass a smaller num_iter (at most {a // (n * itemsize)} fits now)")
    return 1


def _chain_group(op: LinearOperator, c0: int, g: int, m: int, seed: int, dtype: torch.dtype,
                 device: torch.device) -> Tensor:
    """Run chains ``c0 … c0+g−1`` (probe c: counter offset ``c·N``, N = ``op.global_n`` the size of the
    whole space); returns ``[3, g, m]`` = α, β, flags on the host (float64)."""
    n, gn = op.n, op.global_n
    chains = LanczosChains.allocate(g, m, n, dtype, device)
    Z = op.rademacher(g, seed=seed, offset=c0 * gn, dtype=dtype, device=device)
    chains.V[:, 0, :] = Z.T / math.sqrt(gn)
    eps = float(torch.finfo(dtype).eps)
    chains.advance(op, 0, m, eps ** (2.0 / 3.0))
    return torch.stack([chains.alpha, chains.beta, chains.flags.to(dtype)]).to("cpu", torch.float64)


@holds_session
def slq_quadrature(A: "LinearOperator | Tensor", *, num_probes: int = 4, num_iter: int = 30,
                   seed: int = 0) -> tuple[Tensor, Tensor, int]:
    """Gauss quadrature nodes and weights of ``p`` normalised Rademacher probes.

    All probes run as parallel Lanczos chains (:class:`hessext.lanczos.LanczosChains`): one ``A @ [n, p]``
    block product per step, full reorthogonalisation of each chain against its own basis, no host
    synchronisation until the end on accelerators. Memory: ``p · m · n`` values when that fits in half of the
    memory available on the device when the call starts (the Lanczos basis bound); otherwise the chains run in
    groups of as many as fit (the same probes: the result is the same up to the rounding of narrower block
    products). A chain whose Krylov space becomes invariant after
    ``j < m`` steps (``β_j ≈ 0``) is exact there; it is truncated to j nodes and its remaining slots get
    weight 0 (node = its last node).

    Args:
        A: operator or dense symmetric ``[n, n]`` tensor.
        num_probes: p ≥ 1; probe c is ``z_c / √n``, ``z_c = rademacher(n, seed=seed, offset=c·n)`` (n the size
            of the whole space; a sharded operator generates its slice of the same bits,
            :meth:`~hessext.linop.LinearOperator.rademacher`).
        num_iter: Lanczos steps m ≥ 1 per probe (clamped to n; with ``m ≥ n`` the quadrature is exact).
        seed: probe seed.

    Returns:
        ``(nodes [p, m], weights [p, m], num_matvecs)``, float64 on the CPU, each weight row summing to 1.

    Raises:
        ValueError: bad counts, or bases that do not fit in the device's memory (the message names
            ``num_iter``, ``num_probes``, n and the bytes needed and available).
    """
    op = as_operator(A)
    p = check_int("num_probes", num_probes, 1)
    m = min(check_int("num_iter", num_iter, 1), op.global_n)
    seed = check_seed(seed)
    n, dtype, device = op.n, work_dtype(op.dtype), op.device
    g = _probe_group(p, m, max(n, 1), num_iter, dtype, device)   # a rank of a sharded operator may hold none
    if op.sharded:      # every rank runs the same groups (memory and local sizes differ across ranks)
        g = int(op.allreduce_(torch.tensor([float(g)], dtype=torch.float64), "min")[0])
    start = op.num_matvecs
    host = torch.cat([_chain_group(op, c0, min(g, p - c0), m, seed, dtype, device)
                      for c0 in range(0, p, g)], dim=1).numpy()
    a_all, b_all, fl_all = host[0], host[1], host[2] > 0.5
    if not (np.all(np.isfinite(a_all)) and np.all(np.isfinite(b_all))):
        c, j = np.argwhere(~(np.isfinite(a_all) & np.isfinite(b_all)))[0]
        raise RuntimeError(f"spectral_density: non-finite value (NaN/Inf) in the Lanczos tridiagonal of "
                           f"probe {c} at step {j}: the operator returned NaN/Inf")
    nodes = np.zeros((p, m))
    weights = np.zeros((p, m))
    for c in range(p):
        hits = np.flatnonzero(fl_all[c])
        size = int(hits[0]) + 1 if hits.size else m
        theta, S = eigh_tridiagonal(a_all[c, :size], b_all[c, :size - 1])
        nodes[c, :size] = theta
        nodes[c, size:] = theta[-1]
        weights[c, :size] = S[0, :] ** 2
    return torch.from_numpy(nodes), torch.from_numpy(weights), op.num_matvecs - start


@holds_session
def spectral_density(A: "LinearOperator | Tensor", *, num_probes: int = 4, num_iter: int = 30,
                     sigma: Optional[float] = None, grid: Optional[Tensor] = None, num_grid: int = 400,
                     seed: int = 0) -> DensityResult:
    """Smoothed spectral density of a symmetric operator by stochastic Lanczos quadrature.

    Args:
        A: operator or dense symmetric ``[n, n]`` tensor.
        num_probes: number of Rademacher probes p (``p · num_iter`` matvecs, in ``num_iter`` block products).
        num_iter: Lanczos steps (quadrature nodes) per probe, clamped to n.
        sigma: Gaussian broadening width; default 1 % of the node range ``max θ − min θ`` (1 % of
            ``max(|θ|, 1)`` if all nodes coincide).
        grid: evaluation points ``[g]``; default ``num_grid`` points spanning ``[min θ − 5σ, max θ + 5σ]``.
        num_grid: size of the default grid (≥ 2).
        seed: probe seed.

    Returns:
        :class:`~hessext.results.DensityResult`. On the default grid the density is normalised to integrate to
        exactly 1 by the trapezoid rule (before normalisation it already does to ~1e-6, since the grid covers
        ±5σ around every node and σ spans ≥ 3.6 grid steps); on a user grid it is the plain SLQ density.
        ``trace_estimate = n · (1/p) Σ_c Σ_i τ_ci θ_ci`` (= ``(1/p) Σ_c z_cᵀ A z_c``, a Hutchinson estimate)
        with ``trace_std_error``; ``moment(k)`` estimates ``tr(A^k)/n``.
    """
    op = as_operator(A)
    num_grid = check_int("num_grid", num_grid, 2)
    if sigma is not None:
        sigma = check_positive_float("sigma", sigma)
    nodes, weights, matvecs = slq_quadrature(op, num_probes=num_probes, num_iter=num_iter, seed=seed)
    used = nodes[weights > 0] if bool((weights > 0).any()) else nodes.reshape(-1)
    lo, hi = float(used.min()), float(used.max())
    if sigma is None:
        width = hi - lo
        sigma = 0.01 * width if width > 0 else 0.01 * max(abs(hi), abs(lo), 1.0)
    sigma = float(sigma)
    user_grid = grid is not None
    if user_grid:
        if not isinstance(grid, Tensor):
            try:
                grid = torch.as_tensor(np.asarray(grid, dtype=np.float64))
            except (TypeError, ValueError) as e:
                raise ArgumentTypeError(f"grid must be a 1-D tensor of floats, got "
                                        f"{type(grid).__name__}") from e
        if grid.dim() != 1 or grid.numel() < 1:
            raise ValueError(f"grid must be a non-empty 1-D tensor, got shape {list(grid.shape)}")
        grid = grid.detach().to("cpu", torch.float64)
    else:
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, num_grid, dtype=torch.float64)
    p = nodes.shape[0]
    x = (grid[:, None] - nodes.reshape(1, -1)) / sigma
    dens = (torch.exp(-0.5 * x * x) * weights.reshape(1, -1)).sum(1) / (p * sigma * math.sqrt(2 * math.pi))
    if not user_grid:
        dens = dens / torch.trapezoid(dens, grid)
    return DensityResult(grid=grid, density=dens, nodes=nodes, weights=weights, num_matvecs=matvecs,
                         sigma=sigma, n=op.global_n)
