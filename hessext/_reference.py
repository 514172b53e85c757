"""Pure-PyTorch reference of every hessext op.

This module is both the fallback that serves ``torch.ops.hessext.*`` when the compiled extension is absent
and the oracle the tests compare the compiled kernels against. It must reproduce the compiled kernels'
numbers: bitwise for ``rademacher_``, to rounding for ``reorthogonalize``.

The probe hash is the one in ``csrc/include/hessext/hash.h``; keep the two in step. For a 64-bit seed s and
a counter c >= 0 (both split into 32-bit words)::

    k1 = fmix32(lo(s) ^ 0x9E3779B9),   k2 = fmix32(hi(s) ^ k1 ^ 0x85EBCA6B)
    hash(s, c) = fmix32((fmix32(lo(c) ^ k1) + (hi(c) ^ k2)) mod 2^32)
    value(s, c) = +1 if hash(s, c) < 2^31 else -1

with ``fmix32`` MurmurHash3's 32-bit finaliser.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
C1 = 0x85EBCA6B
C2 = 0xC2B2AE35
INT64_MAX = (1 << 63) - 1


def fmix32_int(x: int) -> int:
    """MurmurHash3's 32-bit finaliser on a Python int (host-side key derivation)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * C1) & MASK32
    x ^= x >> 13
    x = (x * C2) & MASK32
    x ^= x >> 16
    return x


def probe_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit keys derived from a 64-bit seed (the seed's two's-complement bits)."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    k1 = fmix32_int((s & MASK32) ^ GOLDEN)
    k2 = fmix32_int(((s >> 32) & MASK32) ^ k1 ^ C1)
    return k1, k2


def _fmix32(x: Tensor) -> Tensor:
    # int64 arithmetic, reduced mod 2^32 after each multiply: exact, since int64 products wrap mod 2^64.
    x = x ^ (x >> 16)
    x = (x * C1) & MASK32
    x = x ^ (x >> 13)
    x = (x * C2) & MASK32
    return x ^ (x >> 16)


def rademacher_bits(counters: Tensor, seed: int) -> Tensor:
    """Top bit of hash(seed, c) for int64 counters c >= 0 (as an int64 tensor of 0/1)."""
    k1, k2 = probe_keys(seed)
    lo = counters & MASK32
    hi = (counters >> 32) & MASK32
    h = _fmix32((_fmix32(lo ^ k1) + (hi ^ k2)) & MASK32)
    return h >> 31


def has_internal_overlap(sizes: tuple[int, ...] | torch.Size, strides: tuple[int, ...]) -> bool:
    """Whether two elements of a tensor with these sizes and (non-negative) strides share a memory location.

    Exact for 0-, 1- and 2-D layouts (``torch._debug_has_internal_overlap`` gives up on most 2-D ones):
    dimensions of size 1 are ignored; a stride of 0 under a size > 1 overlaps; for two dimensions (a, p) and
    (b, q) (size, stride), i p = j q has a solution with 0 < i < a, 0 < j < b exactly when q / g < a and
    p / g < b, g = gcd(p, q). Higher ranks fall back to the sufficient test "each stride exceeds the extent of
    the smaller ones" (a layout failing it is reported as overlapping). Keep in step with
    ``csrc/include/hessext/checks.h``.
    """
    if any(s == 0 for s in sizes):
        return False  # no elements
    dims = sorted((abs(st), s) for s, st in zip(sizes, strides) if s > 1)
    if any(st == 0 for st, _ in dims):
        return True
    if len(dims) <= 1:
        return False
    if len(dims) == 2:
        (p, a), (q, b) = dims
        g = math.gcd(p, q)
        return q // g < a and p // g < b
    extent = 0
    for st, s in dims:
        if st <= extent:
            return True
        extent += st * (s - 1)
    return False


def _layout_str(t: Tensor) -> str:
    """``shape [5, 3], strides [1, 0]``: the same text the C++ checks print."""
    return (f"shape [{', '.join(map(str, t.shape))}], strides [{', '.join(map(str, t.stride()))}]")


def check_no_internal_overlap(op: str, name: str, t: Tensor) -> None:
    """Refuse an output argument ``name`` of ``op`` whose elements share memory (an ``expand``-ed or
    stride-0 view, an overlapping ``as_strided``): every element is written, so shared locations would end
    up holding whichever write came last (a race on the parallel backends)."""
    if has_internal_overlap(tuple(t.shape), tuple(t.stride())):
        raise ValueError(f"{op}: {name} must not have elements that share memory (an expanded or "
                         f"overlapping view), got {_layout_str(t)}; write into a tensor that owns its "
                         f"elements (e.g. {name}.clone()) instead")


def check_rademacher_args(out: Tensor, offset: int) -> None:
    """Validate ``rademacher_``'s arguments; errors name the argument and what was received."""
    if not isinstance(out, Tensor):
        raise TypeError(f"rademacher_: out must be a Tensor, got {type(out).__name__}")
    if out.dim() not in (1, 2):
        raise ValueError(
            f"rademacher_: out must be 1-D [n] or 2-D [n, m], got {out.dim()}-D {tuple(out.shape)}"
        )
    if out.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"rademacher_: out must be float32 or float64, got {out.dtype}")
    if offset < 0:
        raise ValueError(f"rademacher_: offset must be >= 0, got {offset}")
    if offset > INT64_MAX - out.numel():
        raise ValueError(f"rademacher_: offset + out.numel() must be < 2**63, got offset={offset} "
                         f"and {out.numel()} elements")
    check_no_internal_overlap("rademacher_", "out", out)


def rademacher_(out: Tensor, seed: int, offset: int) -> None:
    """Fill ``out`` ([n] or [n, m]) with ±1 in place; element (i, j) uses counter offset + j*n + i.

    Args:
        out: [n] or [n, m], float32 or float64, any strides (written through ``copy_``).
        seed: any int; only its low 64 bits matter.
        offset: first counter, >= 0.
    """
    check_rademacher_args(out, offset)
    n = out.shape[0]
    m = out.shape[1] if out.dim() == 2 else 1
    counters = offset + torch.arange(n * m, dtype=torch.int64, device=out.device)
    if out.dim() == 2:
        counters = counters.view(m, n).t()  # column-major: column j continues at offset + j*n
    bits = rademacher_bits(counters, seed)
    out.copy_((1 - 2 * bits).to(out.dtype))


def reorthogonalize(w: Tensor, basis: Tensor, passes: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Classical Gram-Schmidt against the rows of ``basis``, applied ``passes`` times (CGS2 by default).

    With B = basis [k, n] (orthonormal rows) and w⁽⁰⁾ = w, pass p computes h⁽ᵖ⁾ = B w⁽ᵖ⁻¹⁾ and
    w⁽ᵖ⁾ = w⁽ᵖ⁻¹⁾ - Bᵀ h⁽ᵖ⁾. Returns (w⁽ᵖᵃˢˢᵉˢ⁾, Σ_p h⁽ᵖ⁾, ‖w⁽ᵖᵃˢˢᵉˢ⁾‖₂ as a 0-dim tensor). This reference
    makes two GEMVs per pass (4 sweeps over B for CGS2); the compiled kernels fuse them into 3.
    """
    check_reorthogonalize_args(w, basis, passes)
    k = basis.shape[0]
    coeffs = torch.zeros(k, dtype=w.dtype, device=w.device)
    out = w.clone(memory_format=torch.contiguous_format)
    if k > 0 and w.shape[0] > 0:
        for _ in range(passes):
            h = basis.mv(out)
            out = out - basis.t().mv(h)
            coeffs = coeffs + h
    return out, coeffs, torch.linalg.vector_norm(out)


def check_reorthogonalize_args(w: Tensor, basis: Tensor, passes: int) -> None:
    """Validate ``reorthogonalize``'s arguments; errors name the argument and what was received."""
    if not isinstance(w, Tensor):
        raise TypeError(f"reorthogonalize: w must be a Tensor, got {type(w).__name__}")
    if not isinstance(basis, Tensor):
        raise TypeError(f"reorthogonalize: basis must be a Tensor, got {type(basis).__name__}")
    if w.dim() != 1:
        raise ValueError(f"reorthogonalize: w must be 1-D [n], got {w.dim()}-D {tuple(w.shape)}")
    if basis.dim() != 2:
        raise ValueError(
            f"reorthogonalize: basis must be 2-D [k, n], got {basis.dim()}-D {tuple(basis.shape)}"
        )
    if basis.shape[1] != w.shape[0]:
        raise ValueError(
            f"reorthogonalize: basis must be [k, n] with n = len(w) = {w.shape[0]}, got {tuple(basis.shape)}"
        )
    if w.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"reorthogonalize: w must be float32 or float64, got {w.dtype}")
    if basis.dtype != w.dtype:
        raise TypeError(f"reorthogonalize: basis dtype {basis.dtype} differs from w dtype {w.dtype}")
    if basis.device != w.device:
        raise ValueError(f"reorthogonalize: basis and w must be on the same device, got basis on "
                         f"{basis.device} and w on {w.device}")
    if passes not in (1, 2):
        raise ValueError(f"reorthogonalize: passes must be 1 or 2, got {passes}")
