"""Typed wrappers around the hessext kernels: the only caller of ``torch.ops.hessext.*``.

The wrappers validate their arguments in Python first, so a bad call raises ``ValueError``/``TypeError``
naming the argument and what was received on every backend (the compiled kernels check again and raise
``RuntimeError`` with the same text when called through ``torch.ops.hessext`` directly).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _backend  # noqa: F401  (registers the ops)
from ._reference import check_rademacher_args, check_reorthogonalize_args

_INT64_MIN = -(1 << 63)


def _as_int64(seed: int) -> int:
    """Map any Python int to the int64 with the same low 64 bits (kernels read it as uint64)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s - (1 << 64) if s >= (1 << 63) else s


def reorthogonalize(w: Tensor, basis: Tensor, passes: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Remove from ``w`` its components along the orthonormal rows of ``basis`` (CGS2).

    With B = ``basis`` and w⁽⁰⁾ = ``w``, each pass computes h⁽ᵖ⁾ = B w⁽ᵖ⁻¹⁾ and w⁽ᵖ⁾ = w⁽ᵖ⁻¹⁾ - Bᵀ h⁽ᵖ⁾;
    two passes ("twice is enough", Giraud et al. 2005) leave ‖B w⁽²⁾‖ at rounding level even when w is
    nearly in the span of B.

    Memory traffic: the compiled kernels read the basis 3 times for 2 passes (sweep 1: h1 = B w; sweep 2,
    fused per L2-sized column tile: subtract Bᵀ h1, then accumulate h2 = B w' from cache; sweep 3: subtract
    Bᵀ h2 and compute the norm), and 2 times for 1 pass; the two-GEMV-per-pass composition reads it 4 times.

    Args:
        w: [n] vector, float32 or float64; not modified.
        basis: [k, n] with orthonormal rows, same dtype and device as ``w``; k may be 0. Non-contiguous
            inputs are made contiguous (a copy).
        passes: 1 (CGS) or 2 (CGS2, the default).

    Returns:
        ``(w_out, coeffs, norm)``: ``w_out = w - basisᵀ coeffs`` [n], ``coeffs`` [k] the summed projection
        coefficients of all passes, and ``norm = ‖w_out‖₂`` as a 0-dim tensor on w's device.

    Raises:
        ValueError: wrong ranks, mismatched n, different devices, passes not in {1, 2}.
        TypeError: non-float dtype or dtypes that differ.

    Inputs may share memory with each other (``w`` a row of ``basis``' storage, stride-0 views): nothing is
    written to them, and the three outputs are freshly allocated.
    """
    check_reorthogonalize_args(w, basis, passes)
    return torch.ops.hessext.reorthogonalize(w, basis, int(passes))


def rademacher_(out: Tensor, seed: int, offset: int = 0) -> Tensor:
    """Fill ``out`` in place with counter-based Rademacher (±1) values and return it.

    Element (i, j) of an [n, m] block (or i of an [n] vector) is ``+1`` if the top bit of
    ``hash(seed, offset + j*n + i)`` is clear, else ``-1`` (hash: ``csrc/include/hessext/hash.h``): a pure
    function of the counter, identical on every backend, every rank and any split of the range, so
    ``rademacher_(x[a:b], seed, offset + a)`` reproduces a slice of the whole vector.

    Args:
        out: [n] or [n, m], float32 or float64, any strides.
        seed: any int (its low 64 bits are used).
        offset: first counter, >= 0.

    Raises:
        ValueError: wrong rank, negative offset, an ``out`` whose elements share memory (an ``expand``-ed
            or otherwise overlapping view: each element is written, so shared locations would be raced on).
        TypeError: non-float dtype.
    """
    offset = int(offset)
    check_rademacher_args(out, offset)
    torch.ops.hessext.rademacher_(out, _as_int64(seed), offset)
    return out


def rademacher(n: int, m: int | None = None, *, seed: int, offset: int = 0,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """A new contiguous [n] (or [n, m]) tensor of counter-based ±1 probes; see :func:`rademacher_`."""
    if n < 0 or (m is not None and m < 0):
        raise ValueError(f"rademacher: n and m must be >= 0, got n={n}, m={m}")
    shape = (n,) if m is None else (n, m)
    out = torch.empty(shape, dtype=dtype, device=device)
    return rademacher_(out, seed, offset)
