"""Typed wrappers around the hessext kernels: the only caller of ``torch.ops.hessext.*``."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _backend  # noqa: F401  (registers the ops)

_INT64_MIN = -(1 << 63)


def _as_int64(seed: int) -> int:
    """Map any Python int to the int64 with the same low 64 bits (kernels read it as uint64)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s - (1 << 64) if s >= (1 << 63) else s


def reorthogonalize(w: Tensor, basis: Tensor, passes: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Remove from ``w`` its components along the orthonormal rows of ``basis`` (CGS2).

    Args:
        w: [n] vector, float32 or float64.
        basis: [k, n] with orthonormal rows, same dtype and device as ``w``; k may be 0.
        passes: 1 (CGS) or 2 (CGS2, the default; "twice is enough", Giraud et al. 2005).

    Returns:
        ``(w_out, coeffs, norm)``: ``w_out = w - basisᵀ coeffs`` [n], ``coeffs`` [k] the summed projection
        coefficients of all passes, and ``norm = ‖w_out‖₂`` as a 0-dim tensor on w's device.
    """
    return torch.ops.hessext.reorthogonalize(w, basis, passes)


def rademacher_(out: Tensor, seed: int, offset: int = 0) -> Tensor:
    """Fill ``out`` in place with counter-based Rademacher (±1) values and return it.

    Element (i, j) of an [n, m] block (or i of an [n] vector) is a pure function of
    ``(seed, offset + j*n + i)``: identical on every backend, every rank and any split of the range.
    """
    torch.ops.hessext.rademacher_(out, _as_int64(seed), int(offset))
    return out


def rademacher(n: int, m: int | None = None, *, seed: int, offset: int = 0,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """A new [n] (or [n, m]) tensor of counter-based ±1 probes; see :func:`rademacher_`."""
    shape = (n,) if m is None else (n, m)
    out = torch.empty(shape, dtype=dtype, device=device)
    return rademacher_(out, seed, offset)
