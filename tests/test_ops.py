"""The hessext kernels on every available backend against the pure-PyTorch reference.

Implementations under test ("impl"):
- ``ops-cpu``: ``torch.ops.hessext.*`` on CPU tensors: the compiled C++ kernel, or the Python reference
  registered as the op when ``_C`` is absent / ``HESSEXT_FORCE_PYTHON=1`` (CI runs this file both ways);
- ``reference``: ``hessext._reference`` called directly (the oracle itself, checked against an independent
  integer implementation of the hash and against float64 linear algebra);
- ``ops-cuda``: the op on CUDA tensors (skipped without a GPU).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.library import opcheck

import hessext
from hessext import _backend, _reference, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CUDA = torch.cuda.is_available() and _backend.CUDA_KERNELS

IMPLS = [
    pytest.param("ops-cpu", id="ops-cpu"),
    # without the compiled extension, ops-cpu *is* the reference: do not run the same code twice
    pytest.param("reference", id="reference",
                 marks=pytest.mark.skipif(not _backend.COMPILED, reason="same kernel as ops-cpu here")),
    pytest.param("ops-cuda", id="ops-cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")),
]
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]


def _device(impl: str) -> str:
    return "cuda" if impl == "ops-cuda" else "cpu"


def _rademacher_impl(impl: str, out: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    if impl == "reference":
        _reference.rademacher_(out, seed, offset)
    else:
        torch.ops.hessext.rademacher_(out, ops._as_int64(seed), offset)
    return out


def _reorth_impl(impl: str, w: torch.Tensor, basis: torch.Tensor, passes: int = 2):
    if impl == "reference":
        return _reference.reorthogonalize(w, basis, passes)
    return torch.ops.hessext.reorthogonalize(w, basis, passes)


def _orthonormal_rows(k: int, n: int, dtype: torch.dtype, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q.T.contiguous().to(dtype=dtype, device=device)


def _randn(n: int, dtype: torch.dtype, seed: int = 1, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------------------

def test_backend_matches_environment():
    forced = os.environ.get("HESSEXT_FORCE_PYTHON", "") not in ("", "0")
    assert hessext.BACKEND in ("cuda", "cpu", "python")
    if forced:
        assert hessext.BACKEND == "python" and not _backend.COMPILED
    else:
        assert (hessext.BACKEND == "python") == (not _backend.COMPILED)
    info = _backend.info()
    assert info["backend"] == hessext.BACKEND and info["torch_version"] == torch.__version__


def _run_python(code: str, env_extra: dict[str, str] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "HESSEXT_FORCE_PYTHON"}
    env.update(env_extra or {})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_fallback_when_extension_fails_to_load():
    """A `_C` that raises on import (e.g. a CUDA build without libcudart) leaves hessext importable and
    served by the Python kernels under the same op names."""
    out = _run_python("""
        import sys, importlib.abc
        class Broken(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "hessext._C":
                    raise ImportError("libcudart.so.13: cannot open shared object file (simulated)")
        sys.meta_path.insert(0, Broken())
        import torch, hessext
        from hessext import _backend, ops, _reference
        assert hessext.BACKEND == "python", hessext.BACKEND
        assert "simulated" in _backend.LOAD_ERROR
        x = ops.rademacher(100, seed=3)
        ref = torch.empty(100); _reference.rademacher_(ref, 3, 0)
        assert torch.equal(x, ref)
        print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.skipif(not _backend.COMPILED, reason="compiled extension not loaded")
def test_compiled_baseline_isa_matches_reference():
    """The CPU inner loops exist for the baseline ISA and for AVX2; CI machines pick AVX2, so run the
    baseline loops once in a subprocess."""
    out = _run_python("""
        import torch, hessext
        from hessext import _reference
        assert hessext.BACKEND != "python"
        for dt, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
            q, _ = torch.linalg.qr(torch.randn(3001, 37, dtype=torch.float64))
            B = q.T.contiguous().to(dt); w = torch.randn(3001, dtype=dt)
            a = torch.ops.hessext.reorthogonalize(w, B, 2); b = _reference.reorthogonalize(w, B, 2)
            for x, y in zip(a, b):
                assert (x - y).abs().max() <= tol * w.norm(), (dt, (x - y).abs().max())
            o = torch.empty(5000, 3, dtype=dt); torch.ops.hessext.rademacher_(o, 9, 2**32 - 77)
            r = torch.empty_like(o); _reference.rademacher_(r, 9, 2**32 - 77)
            assert torch.equal(o, r)
        print("ok")
    """, {"HESSEXT_CPU_ISA": "baseline"})
    assert out.strip().endswith("ok")


@pytest.mark.skipif(not _backend.COMPILED, reason="compiled extension not loaded")
@pytest.mark.parametrize("isa", ["baseline", "auto"])
def test_compiled_software_prefetch_changes_no_bits(tmp_path, isa):
    """The CPU loops prefetch the next row block in software on AMD only (HESSEXT_CPU_PREFETCH overrides):
    with and without, every sweep (tiles of 64K columns, several row blocks, remainder rows, two threads'
    column ranges, 1 and 2 passes) gives the same bits."""
    code = """
        import sys, torch, hessext
        assert hessext.BACKEND != "python"
        torch.set_num_threads(2)
        out = {}
        for dt in (torch.float32, torch.float64):
            g = torch.Generator().manual_seed(5)
            B = torch.randn(13, 300_007, generator=g, dtype=torch.float64).to(dt)
            w = torch.randn(300_007, generator=g, dtype=torch.float64).to(dt)
            for passes in (1, 2):
                out[str(dt), passes] = torch.ops.hessext.reorthogonalize(w, B, passes)
        torch.save(out, PATH)
    """
    results = []
    for flag in ("0", "1"):
        path = tmp_path / f"prefetch{flag}.pt"
        env = {"HESSEXT_CPU_PREFETCH": flag}
        if isa == "baseline":
            env["HESSEXT_CPU_ISA"] = "baseline"
        _run_python(code.replace("PATH", repr(str(path))), env)
        results.append(torch.load(path))
    assert results[0].keys() == results[1].keys() and len(results[0]) == 4
    for key in results[0]:
        for a, b in zip(results[0][key], results[1][key]):
            assert torch.equal(a, b), key


# --------------------------------------------------------------------------------------------------------
# rademacher_
# --------------------------------------------------------------------------------------------------------

def _hash_int(seed: int, counter: int) -> int:
    """Independent integer transcription of the hash in csrc/include/hessext/hash.h."""
    def fmix(x: int) -> int:
        x &= 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & 0xFFFFFFFF
        return x ^ (x >> 16)
    s = seed % (1 << 64)
    k1 = fmix((s & 0xFFFFFFFF) ^ 0x9E3779B9)
    k2 = fmix((s >> 32) ^ k1 ^ 0x85EBCA6B)
    return fmix((fmix((counter & 0xFFFFFFFF) ^ k1) + ((counter >> 32) ^ k2)) & 0xFFFFFFFF)


@pytest.mark.parametrize("seed", [0, 1, -1, 2**63 - 1, 123456789012345])
def test_reference_hash_matches_integer_transcription(seed):
    counters = [0, 1, 2, 1000, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40 + 12345, 2**62 + 7]
    bits = _reference.rademacher_bits(torch.tensor(counters, dtype=torch.int64), ops._as_int64(seed))
    assert bits.tolist() == [_hash_int(seed, c) >> 31 for c in counters]


SHAPES = [
    pytest.param((1,), id="n1"),
    pytest.param((1000,), id="1d"),
    pytest.param((70_001,), id="1d-parallel"),
    pytest.param((37, 5), id="2d-rowmajor"),
    pytest.param((1, 4), id="2d-onerow"),
    pytest.param((4099, 3), id="2d-rowmajor-blocks"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed,offset", [(0, 0), (-5, 7), (2**64 - 3, 2**32 - 1000), (17, 3 * 2**32 + 5)])
def test_rademacher_bitwise(impl, dtype, shape, seed, offset):
    out = torch.full(shape, 7.0, dtype=dtype, device=_device(impl))
    _rademacher_impl(impl, out, seed, offset)
    n = shape[0]
    m = shape[1] if len(shape) == 2 else 1
    # expected values from the integer transcription on a sample of elements (all of them when small)
    idx = sorted(set(range(min(n * m, 40))) | set(range(0, n * m, max(1, n * m // 60))) | {n * m - 1})
    flat_t = out.t().reshape(-1) if len(shape) == 2 else out  # column-major: flat index = j*n + i
    got = flat_t.cpu()
    for f in idx:
        expect = -1.0 if _hash_int(seed, offset + f) >> 31 else 1.0
        assert got[f].item() == expect, (f, got[f].item())
    # and the whole tensor against the reference
    ref = torch.empty(shape, dtype=dtype)
    _reference.rademacher_(ref, ops._as_int64(seed), offset)
    assert torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rademacher_layouts_and_splits(impl, dtype):
    dev = _device(impl)
    n, m, seed, off = 3001, 4, 99, 2**32 - 5000
    full = torch.empty(n, m, dtype=dtype, device=dev)
    _rademacher_impl(impl, full, seed, off)
    # column-major storage, a strided view, and each column as a 1-D vector give the same values
    colmajor = torch.empty(m, n, dtype=dtype, device=dev).t()
    _rademacher_impl(impl, colmajor, seed, off)
    assert torch.equal(colmajor, full)
    big = torch.zeros(2 * n, 3 * m, dtype=dtype, device=dev)
    view = big[::2, ::3]
    _rademacher_impl(impl, view, seed, off)
    assert torch.equal(view, full)
    assert torch.count_nonzero(big).item() == n * m  # nothing written outside the view
    for j in range(m):
        col = torch.empty(n, dtype=dtype, device=dev)
        _rademacher_impl(impl, col, seed, off + j * n)
        assert torch.equal(col, full[:, j])
    # any split of a 1-D range reproduces the whole (as ranks of a distributed run would)
    whole = torch.empty(n * m, dtype=dtype, device=dev)
    _rademacher_impl(impl, whole, seed, off)
    assert torch.equal(whole, full.t().reshape(-1))
    cuts = [0, 1, 2, 1000, 2**12 + 3, 9000, n * m]
    for a, b in zip(cuts[:-1], cuts[1:]):
        piece = torch.empty(b - a, dtype=dtype, device=dev)
        _rademacher_impl(impl, piece, seed, off + a)
        assert torch.equal(piece, whole[a:b])
    # strided 1-D destination
    strided = torch.zeros(2 * n, dtype=dtype, device=dev)[::2]
    _rademacher_impl(impl, strided, seed, off)
    assert torch.equal(strided, whole[:n])


# Destination layouts of rademacher_ as (name, make(dtype, device) -> out): every walk order of the kernels
# (CPU: columns or row tiles of 256 x 16 within blocks of 2048 rows, one parallel task each; CUDA: the flat
# kernel or the (outer, inner) walk with the smaller stride inner), with remainders in every tile dimension.
LAYOUTS = [
    ("1d", lambda dt, dev: torch.empty(5000, dtype=dt, device=dev)),
    ("1d-stride3", lambda dt, dev: torch.empty(3 * 5000, dtype=dt, device=dev)[::3]),
    ("colmajor", lambda dt, dev: torch.empty(7, 3001, dtype=dt, device=dev).t()),
    ("colmajor-padded", lambda dt, dev: torch.empty(7, 3010, dtype=dt, device=dev).t()[:3001]),
    ("colmajor-odd-strides", lambda dt, dev: torch.empty(7, 2 * 3001 + 1, dtype=dt, device=dev).t()[::2]),
    ("rowmajor-m3", lambda dt, dev: torch.empty(4099, 3, dtype=dt, device=dev)),
    ("rowmajor-m16", lambda dt, dev: torch.empty(513, 16, dtype=dt, device=dev)),
    ("rowmajor-m37-parallel", lambda dt, dev: torch.empty(5000, 37, dtype=dt, device=dev)),
    ("rowmajor-padded", lambda dt, dev: torch.empty(700, 40, dtype=dt, device=dev)[:, 3:22]),
    ("rowmajor-odd-strides", lambda dt, dev: torch.empty(3 * 300, 5 * 21, dtype=dt, device=dev)[::3, ::5]),
    ("one-row", lambda dt, dev: torch.empty(1, 3000, dtype=dt, device=dev)),
    ("one-row-strided", lambda dt, dev: torch.empty(2, 6000, dtype=dt, device=dev)[:1, ::2]),
    ("one-col-strided", lambda dt, dev: torch.empty(3000, 4, dtype=dt, device=dev)[:, 1:2]),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,make", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_rademacher_every_layout_bitwise(impl, dtype, name, make):
    """Each layout holds the reference's bits (element (i, j) from counter offset + j*n + i, the counters
    crossing a 2**32 boundary) and writes nothing outside its view."""
    seed, off = -12345, 2**32 - 7000
    out = make(dtype, _device(impl))
    base = out
    while base._base is not None:
        base = base._base
    base.fill_(7.0)
    _rademacher_impl(impl, out, seed, off)
    ref = torch.empty(out.shape, dtype=dtype)
    _reference.rademacher_(ref, seed, off)
    assert torch.equal(out.cpu(), ref), name
    n = out.shape[0]
    m = out.shape[1] if out.dim() == 2 else 1
    flat = out.t().reshape(-1) if out.dim() == 2 else out
    for f in (0, 1, n - 1, n, n * m // 2, n * m - 1):
        f = min(f, n * m - 1)
        assert flat[f].item() == (-1.0 if _hash_int(seed, off + f) >> 31 else 1.0), (name, f)
    assert torch.count_nonzero(base != 7.0).item() == n * m, name  # nothing outside the view


@pytest.mark.parametrize("impl", IMPLS)
def test_rademacher_empty(impl):
    for shape in [(0,), (0, 3), (5, 0)]:
        out = torch.empty(shape, device=_device(impl))
        _rademacher_impl(impl, out, 1, 0)
        assert out.shape == shape


@pytest.mark.parametrize("impl", IMPLS)
def test_rademacher_moments(impl):
    """Mean, lag correlations, correlation between columns, seeds and high counter words: each within 5σ
    of zero (σ = 1/√N for an average of N independent ±1 products)."""
    dev = _device(impl)
    n = 1 << 17
    five_sigma = 5.0 / math.sqrt(n)

    def draw(seed: int, offset: int, m: int | None = None) -> torch.Tensor:
        out = torch.empty((n,) if m is None else (n, m), dtype=torch.float64, device=dev)
        return _rademacher_impl(impl, out, seed, offset).cpu()

    x = draw(2024, 0)
    assert set(x.unique().tolist()) == {-1.0, 1.0}
    assert abs(x.mean().item()) < five_sigma
    for lag in (1, 2, 3, 7, 32, 1024):
        assert abs((x[:-lag] * x[lag:]).mean().item()) < 5.0 / math.sqrt(n - lag), lag
    block = draw(2024, 5, m=4)
    for i in range(4):
        for j in range(i + 1, 4):
            assert abs((block[:, i] * block[:, j]).mean().item()) < five_sigma
    for other in (draw(2025, 0), draw(2024 + 2**32, 0), draw(-2024, 0), draw(2024, 2**32)):
        assert abs((x * other).mean().item()) < five_sigma
    # bits of the hash beyond the one used: its top bit is fair for consecutive counters (checked above);
    # the 4 pairwise patterns of neighbours appear equally often
    pairs = (x[:-1] > 0).long() * 2 + (x[1:] > 0).long()
    counts = torch.bincount(pairs, minlength=4).double()
    expected = (n - 1) / 4
    assert ((counts - expected).abs() < 5 * math.sqrt(expected * 0.75)).all(), counts


def test_rademacher_wrappers():
    x = ops.rademacher(1000, seed=5, offset=10)
    y = ops.rademacher(1000, seed=5 + 2**64, offset=10)  # only the seed's low 64 bits matter
    assert torch.equal(x, y) and x.dtype == torch.float32 and x.is_contiguous()
    b = ops.rademacher(100, 3, seed=5, offset=10, dtype=torch.float64)
    assert b.shape == (100, 3) and b.dtype == torch.float64 and b.is_contiguous()
    assert torch.equal(b[:, 0].float(), x[:100])
    z = torch.empty(50)
    assert ops.rademacher_(z, seed=1) is z
    with pytest.raises(ValueError, match="n and m must be >= 0"):
        ops.rademacher(-1, seed=0)


# --------------------------------------------------------------------------------------------------------
# reorthogonalize
# --------------------------------------------------------------------------------------------------------

TOL = {torch.float32: 2e-6, torch.float64: 1e-13}       # agreement with the reference, relative to ‖w‖
ORTH = {torch.float32: 1e-6, torch.float64: 1e-13}      # ‖B w'‖ / ‖w‖


def _check_against_reference(impl, w, basis, passes):
    out, coeffs, norm = _reorth_impl(impl, w, basis, passes)
    r_out, r_coeffs, r_norm = _reference.reorthogonalize(w.cpu(), basis.cpu(), passes)
    scale = max(w.norm().item(), 1e-300)
    tol = TOL[w.dtype] * scale
    assert out.shape == w.shape and coeffs.shape == (basis.shape[0],) and norm.shape == ()
    assert out.dtype == coeffs.dtype == norm.dtype == w.dtype
    assert out.device == coeffs.device == norm.device == w.device
    assert (out.cpu() - r_out).abs().max().item() <= tol if w.numel() else True
    if basis.shape[0]:
        assert (coeffs.cpu() - r_coeffs).abs().max().item() <= tol
    assert abs(norm.item() - r_norm.item()) <= tol
    assert abs(norm.item() - out.double().norm().item()) <= tol
    return out, coeffs, norm


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", [(1, 1), (3, 7), (8, 1000), (33, 5000), (5, 70_001), (130, 2000)])
@pytest.mark.parametrize("passes", [1, 2])
def test_reorthogonalize_matches_reference(impl, dtype, k, n, passes):
    dev = _device(impl)
    basis = _orthonormal_rows(k, n, dtype, seed=k + n, device=dev)
    w = _randn(n, dtype, seed=n, device=dev)
    w_before = w.clone()
    out, coeffs, norm = _check_against_reference(impl, w, basis, passes)
    assert torch.equal(w, w_before)  # w is not modified
    # w_out = w - Bᵀ coeffs
    recon = (w.double() - basis.double().T @ coeffs.double()).cpu()
    assert (out.double().cpu() - recon).abs().max().item() <= TOL[dtype] * w.norm().item() * 10
    if passes == 2:
        assert (basis.double() @ out.double()).norm().item() <= ORTH[dtype] * w.norm().item()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [1e-3, 1e-6, 0.0], ids=["near-1e-3", "near-1e-6", "in-span"])
def test_reorthogonalize_nearly_dependent(impl, dtype, eps):
    """w = Bᵀc + eps·noise: one CGS pass loses orthogonality in floating point, CGS2 restores it."""
    dev = _device(impl)
    k, n = 24, 3000
    basis = _orthonormal_rows(k, n, dtype, seed=7, device=dev)
    c = _randn(k, torch.float64, seed=8)
    w64 = basis.double().cpu().T @ c + eps * _randn(n, torch.float64, seed=9)
    w = w64.to(dtype=dtype, device=dev)
    out, coeffs, norm = _reorth_impl(impl, w, basis, 2)
    wn = w.double().norm().item()
    assert (basis.double() @ out.double()).norm().item() <= ORTH[dtype] * wn
    exact = basis.double().cpu() @ w64  # the projection coefficients of w, = c + eps·B·noise
    assert (coeffs.double().cpu() - exact).abs().max().item() <= 10 * TOL[dtype] * wn
    if eps == 0.0:
        # in the span: what is left is rounding, and the returned norm says so
        assert norm.item() <= 100 * ORTH[dtype] * wn
    else:
        expected = math.sqrt(max(w64.norm().item() ** 2 - (basis.double().cpu() @ w64).norm().item() ** 2, 0))
        assert abs(norm.item() - expected) <= 0.05 * expected + 10 * ORTH[dtype] * wn


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reorthogonalize_edge_cases(impl, dtype):
    dev = _device(impl)
    # k = 0: a copy of w and its norm
    w = _randn(513, dtype, device=dev)
    out, coeffs, norm = _check_against_reference(impl, w, torch.empty(0, 513, dtype=dtype, device=dev), 2)
    assert torch.equal(out, w) and coeffs.shape == (0,)
    assert out.data_ptr() != w.data_ptr()
    # n = 1: the only unit vector is ±e1, so w_out = 0 and coeffs = ±w
    w1 = torch.tensor([3.5], dtype=dtype, device=dev)
    for s in (1.0, -1.0):
        unit = torch.tensor([[s]], dtype=dtype, device=dev)
        out, coeffs, norm = _check_against_reference(impl, w1, unit, 2)
        assert out.item() == 0.0 and coeffs.item() == s * 3.5 and norm.item() == 0.0
    out, coeffs, norm = _check_against_reference(impl, w1, torch.empty(0, 1, dtype=dtype, device=dev), 1)
    assert out.item() == 3.5 and norm.item() == 3.5
    # w = 0
    z = torch.zeros(100, dtype=dtype, device=dev)
    out, coeffs, norm = _reorth_impl(impl, z, _orthonormal_rows(4, 100, dtype, device=dev))
    assert out.abs().max().item() == 0.0 and coeffs.abs().max().item() == 0.0 and norm.item() == 0.0
    # n = 0
    out, coeffs, norm = _reorth_impl(impl, torch.empty(0, dtype=dtype, device=dev),
                                     torch.empty(3, 0, dtype=dtype, device=dev))
    assert out.shape == (0,) and coeffs.tolist() == [0.0, 0.0, 0.0] and norm.item() == 0.0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reorthogonalize_non_contiguous(impl, dtype):
    dev = _device(impl)
    k, n = 9, 2501
    basis = _orthonormal_rows(k, n, dtype, device=dev)
    w = _randn(n, dtype, device=dev)
    expected = _reorth_impl(impl, w, basis)
    w_strided = torch.zeros(2 * n, dtype=dtype, device=dev)
    w_strided[::2] = w
    basis_colmajor = basis.T.contiguous().T          # [k, n] with strides (1, k)
    basis_slice = torch.zeros(k + 3, 2 * n, dtype=dtype, device=dev)
    basis_slice[1:k + 1, ::2] = basis
    for ww, bb in [(w_strided[::2], basis), (w, basis_colmajor), (w_strided[::2], basis_slice[1:k + 1, ::2])]:
        assert not (ww.is_contiguous() and bb.is_contiguous())
        got = _reorth_impl(impl, ww, bb)
        for g, e in zip(got, expected):
            assert (g - e).abs().max().item() <= TOL[dtype] * w.norm().item()
    # a basis that is a prefix view of a larger one (Lanczos's basis[:j]) is contiguous: same numbers
    big = _orthonormal_rows(20, n, dtype, device=dev)
    got = _reorth_impl(impl, w, big[:k])
    ref = _reference.reorthogonalize(w.cpu(), big[:k].contiguous().cpu())
    assert (got[0].cpu() - ref[0]).abs().max().item() <= TOL[dtype] * w.norm().item()


def test_reorthogonalize_wrapper_contract():
    basis = _orthonormal_rows(5, 300, torch.float64)
    w = _randn(300, torch.float64)
    out, coeffs, norm = ops.reorthogonalize(w, basis)
    assert (out - (w - basis.T @ coeffs)).abs().max().item() < 1e-13
    o1, c1, n1 = ops.reorthogonalize(w, basis, passes=1)
    assert (c1 - basis @ w).abs().max().item() < 1e-12


# --------------------------------------------------------------------------------------------------------
# Bad input: every backend raises, naming the argument and what it received
# --------------------------------------------------------------------------------------------------------

BAD_REORTH = [
    ("w-rank", lambda: (torch.zeros(3, 4), torch.zeros(2, 4), 2), r"w must be 1-D \[n\], got 2-D .*3, 4"),
    ("basis-rank", lambda: (torch.zeros(4), torch.zeros(4), 2), r"basis must be 2-D \[k, n\], got 1-D .*4"),
    ("mismatched-n", lambda: (torch.zeros(4), torch.zeros(2, 5), 2), r"n = len\(w\) = 4, got .*2, 5"),
    ("int-dtype", lambda: (torch.zeros(4, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.int64), 2),
     r"w must be float32 or float64, got torch.int64"),
    ("dtype-mismatch", lambda: (torch.zeros(4), torch.zeros(2, 4, dtype=torch.float64), 2),
     r"basis dtype torch.float64 differs from w dtype torch.float32"),
    ("mixed-devices", lambda: (torch.zeros(4), torch.zeros(2, 4, device="meta"), 2),
     r"same device, got basis on meta.* and w on cpu"),
    ("passes", lambda: (torch.zeros(4), torch.zeros(2, 4), 3), r"passes must be 1 or 2, got 3"),
]


@pytest.mark.parametrize("case,make,match", BAD_REORTH, ids=[c[0] for c in BAD_REORTH])
def test_reorthogonalize_bad_input(case, make, match):
    w, basis, passes = make()
    with pytest.raises((ValueError, TypeError), match=match):
        ops.reorthogonalize(w, basis, passes)
    with pytest.raises((ValueError, TypeError), match=match):
        _reference.reorthogonalize(w, basis, passes)
    # the registered op itself (the compiled kernel raises RuntimeError from STD_TORCH_CHECK)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        torch.ops.hessext.reorthogonalize(w, basis, passes)


BAD_RADEMACHER = [
    ("rank", lambda: (torch.zeros(2, 3, 4), 0), r"out must be 1-D \[n\] or 2-D \[n, m\], got 3-D .*2, 3, 4"),
    ("scalar", lambda: (torch.zeros(()), 0), r"got 0-D"),
    ("int-dtype", lambda: (torch.zeros(5, dtype=torch.int32), 0), r"float32 or float64, got torch.int32"),
    ("negative-offset", lambda: (torch.zeros(5), -1), r"offset must be >= 0, got -1"),
    ("offset-overflow", lambda: (torch.zeros(5), 2**63 - 3), r"offset \+ out.numel\(\) must be < 2\*\*63"),
    ("expanded-1d", lambda: (torch.zeros(1).expand(7), 0),
     r"out must not have elements that share memory .*shape \[7\], strides \[0\]"),
    ("expanded-2d", lambda: (torch.zeros(5, 1).expand(5, 3), 0),
     r"out must not have elements that share memory .*shape \[5, 3\], strides \[1, 0\]"),
    ("overlapping-as-strided", lambda: (torch.zeros(20).as_strided((4, 4), (2, 1)), 0),
     r"out must not have elements that share memory .*shape \[4, 4\], strides \[2, 1\]"),
]


@pytest.mark.parametrize("case,make,match", BAD_RADEMACHER, ids=[c[0] for c in BAD_RADEMACHER])
def test_rademacher_bad_input(case, make, match):
    out, offset = make()
    with pytest.raises((ValueError, TypeError), match=match):
        ops.rademacher_(out, 0, offset)
    with pytest.raises((ValueError, TypeError), match=match):
        _reference.rademacher_(out, 0, offset)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        torch.ops.hessext.rademacher_(out, 0, offset)


# --------------------------------------------------------------------------------------------------------
# Overlap: an output whose elements share memory is refused before anything is written; inputs may alias
# --------------------------------------------------------------------------------------------------------

def _brute_force_overlap(sizes: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    offsets = [0]
    for size, stride in zip(sizes, strides):
        offsets = [o + i * stride for o in offsets for i in range(size)]
    return len(set(offsets)) < len(offsets)


def test_has_internal_overlap_is_exact_in_2d_and_safe_beyond():
    import itertools
    for a, b, p, q in itertools.product(range(6), range(6), range(7), range(7)):
        assert _reference.has_internal_overlap((a, b), (p, q)) == _brute_force_overlap((a, b), (p, q)), \
            (a, b, p, q)
    for n, st in itertools.product(range(4), range(3)):
        assert _reference.has_internal_overlap((n,), (st,)) == _brute_force_overlap((n,), (st,))
    assert not _reference.has_internal_overlap((), ())
    # beyond 2-D the test may refuse a non-overlapping layout, but never accepts an overlapping one
    for sizes in itertools.product(range(1, 4), repeat=3):
        for strides in itertools.product(range(5), repeat=3):
            if _brute_force_overlap(sizes, strides):
                assert _reference.has_internal_overlap(sizes, strides), (sizes, strides)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rademacher_refuses_overlapping_out(impl, dtype):
    """Every 2-D layout (sizes 1..4, strides 0..5) over a buffer of sevens: an overlapping one raises,
    naming ``out`` and its layout, and leaves the buffer untouched; any other one gets the reference's
    bits. The compiled check (checks.h) and the Python one agree on all of them."""
    import itertools
    dev = _device(impl)
    refused = 0
    for a, b, p, q in itertools.product(range(1, 5), range(1, 5), range(6), range(6)):
        buf = torch.full((4 * 5 + 4 * 5 + 1,), 7.0, dtype=dtype, device=dev)
        out = buf.as_strided((a, b), (p, q))
        if _brute_force_overlap((a, b), (p, q)):
            refused += 1
            with pytest.raises((ValueError, RuntimeError), match=r"rademacher_: out must not have elements "
                               rf"that share memory .*shape \[{a}, {b}\], strides \[{p}, {q}\]"):
                _rademacher_impl(impl, out, 3, 11)
            assert bool((buf == 7.0).all()), (a, b, p, q)
        else:
            _rademacher_impl(impl, out, 3, 11)
            ref = torch.empty(a, b, dtype=dtype)
            _reference.rademacher_(ref, 3, 11)
            assert torch.equal(out.cpu(), ref), (a, b, p, q)
    assert refused > 100  # the grid does exercise the refusal (expanded rows/columns, interleavings)
    with pytest.raises((ValueError, RuntimeError), match=r"out must not have elements that share memory"):
        _rademacher_impl(impl, torch.zeros(1, dtype=dtype, device=dev).expand(1000), 0, 0)


def test_rademacher_wrappers_refuse_overlapping_out():
    with pytest.raises(ValueError, match=r"rademacher_: out must not have elements that share memory"):
        ops.rademacher_(torch.zeros(3, 1).expand(3, 4), seed=0)
    # the fake (meta) kernel applies the same check, so tracing refuses it too
    with pytest.raises((ValueError, RuntimeError), match=r"out must not have elements that share memory"):
        torch.ops.hessext.rademacher_(torch.empty(3, 1, device="meta").expand(3, 4), 0, 0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reorthogonalize_accepts_aliasing_inputs(impl, dtype):
    """reorthogonalize writes only tensors it allocates, so inputs that share memory (w a row of the basis'
    storage, a stride-0 w or basis) are legitimate: the outputs own fresh memory and the numbers equal those
    of the same call on copies; the inputs stay unchanged."""
    dev = _device(impl)
    k, n = 6, 3001
    store = _orthonormal_rows(k + 1, n, dtype, seed=5, device=dev)
    before = store.clone()
    cases = [
        (store[2], store[:k]),                        # w is row 2 of the basis it is taken against
        (store[k], store[:k]),                        # w is the next row of the same storage
        (torch.full((1,), 0.25, dtype=dtype, device=dev).expand(n), store[:k]),   # stride-0 w
        (store[0], store[1:2].expand(3, n)),          # stride-0 basis (repeated rows)
    ]
    for w, basis in cases:
        got = _reorth_impl(impl, w, basis)
        expected = _reorth_impl(impl, w.clone(), basis.clone())
        for g, e in zip(got, expected):
            assert torch.equal(g, e)
            assert all(g.data_ptr() != t.data_ptr() for t in (store, w, basis)) or g.numel() == 0
        _check_against_reference(impl, w, basis, 2)
    assert torch.equal(store, before)
    out, coeffs, norm = _reorth_impl(impl, store[2], store[:k])
    assert norm.item() <= 100 * ORTH[dtype]  # a basis vector has nothing left outside the basis


# --------------------------------------------------------------------------------------------------------
# opcheck (schema, fake/meta kernels, autograd registration, AOT dispatch) and meta tensors
# --------------------------------------------------------------------------------------------------------

OPCHECK_DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.mark.parametrize("device", OPCHECK_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(device, dtype):
    basis = _orthonormal_rows(6, 200, dtype, device=device)
    w = _randn(200, dtype, device=device)
    for passes in (1, 2):
        opcheck(torch.ops.hessext.reorthogonalize.default, (w, basis, passes))
    opcheck(torch.ops.hessext.reorthogonalize.default, (w, basis[:0], 2))
    opcheck(torch.ops.hessext.rademacher_.default, (torch.empty(300, dtype=dtype, device=device), 7, 11))
    opcheck(torch.ops.hessext.rademacher_.default, (torch.empty(40, 3, dtype=dtype, device=device), -2, 0))


def test_meta_tensors():
    out, coeffs, norm = torch.ops.hessext.reorthogonalize(torch.empty(10, device="meta"),
                                                          torch.empty(3, 10, device="meta"), 2)
    assert out.shape == (10,) and coeffs.shape == (3,) and norm.shape == () and out.device.type == "meta"
    torch.ops.hessext.rademacher_(torch.empty(4, 2, device="meta"), 1, 0)


# --------------------------------------------------------------------------------------------------------
# GPU-only: 64-bit indexing, streams, devices, determinism, float32 accuracy at scale (skipped without CUDA;
# `make gpu-check` runs them with `-k cuda`)
# --------------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
INT32_MAX = 2**31 - 1


def _need_cuda_bytes(nbytes: int) -> None:
    """Skip when the current CUDA device has less than ``nbytes`` (+ 10 %) free."""
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    if free < 1.1 * nbytes:
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")


def _expected_probes(seed: int, counters: list[int]) -> torch.Tensor:
    return torch.tensor([-1.0 if _hash_int(seed, c) >> 31 else 1.0 for c in counters])


def _sample(total: int, around: list[int], count: int = 64) -> list[int]:
    """Indices: the first and last 32, 20 on each side of every point in ``around``, ``count`` spread."""
    picks = set(range(min(32, total))) | set(range(max(0, total - 32), total))
    for a in around:
        picks |= set(range(max(0, a - 20), min(total, a + 20)))
    picks |= set(range(0, total, max(1, total // count)))
    return sorted(picks)


@needs_cuda
def test_cuda_rademacher_beyond_int32_elements():
    """Counters and indices past 2**31 elements: a 1-D vector, a column-major block (the flat kernel) and a
    row-major block (the strided kernel), sampled against the integer transcription of the hash."""
    seed, offset = 77, 2**32 - 123
    n = 2**31 + 4099
    _need_cuda_bytes(4 * n)
    out = torch.empty(n, dtype=torch.float32, device="cuda")
    ops.rademacher_(out, seed, offset)
    idx = _sample(n, [INT32_MAX, 2**31 + 2048])
    got = out[torch.tensor(idx, device="cuda")].cpu()
    assert torch.equal(got, _expected_probes(seed, [offset + f for f in idx]))
    del out
    for rows, cols, colmajor in ((2**30 + 5, 3, True), (2**29 + 3, 5, False)):
        _need_cuda_bytes(4 * rows * cols)
        block = (torch.empty(cols, rows, device="cuda").t() if colmajor
                 else torch.empty(rows, cols, device="cuda"))
        ops.rademacher_(block, seed, offset)
        flat = _sample(rows * cols, [INT32_MAX, rows * cols - 2**30])
        i = [f % rows for f in flat]
        j = [f // rows for f in flat]
        got = block[torch.tensor(i, device="cuda"), torch.tensor(j, device="cuda")].cpu()
        assert torch.equal(got, _expected_probes(seed, [offset + f for f in flat])), (rows, cols)
        del block
    torch.cuda.empty_cache()


@needs_cuda
@pytest.mark.parametrize("n,k", [(2**31 + 1001, 2), (2**30 + 77, 3)], ids=["n>2^31", "k*n>2^31"])
def test_cuda_reorthogonalize_beyond_int32_elements(n, k):
    """One-hot basis rows whose nonzero lies past element 2**31 of w or of the flattened basis: every
    output is known exactly (coefficients = the picked entries of w, w_out = w with them zeroed)."""
    _need_cuda_bytes(4 * n * (k + 3))
    picks = [n - 1, 3, n // 2][:k]
    basis = torch.zeros(k, n, dtype=torch.float32, device="cuda")
    basis[torch.arange(k, device="cuda"), torch.tensor(picks, device="cuda")] = 1.0
    w = torch.empty(n, dtype=torch.float32, device="cuda")
    ops.rademacher_(w, 5, 0)
    w.mul_(0.5)
    w[torch.tensor(picks, device="cuda")] = torch.tensor([3.0, -7.0, 11.0][:k], device="cuda")
    out, coeffs, norm = ops.reorthogonalize(w, basis)
    assert coeffs.tolist() == [3.0, -7.0, 11.0][:k]
    expect = w.clone()
    expect[torch.tensor(picks, device="cuda")] = 0.0
    assert torch.equal(out, expect)
    # every other entry is ±0.5: ‖w_out‖² = (n - k) / 4 exactly
    assert norm.item() == pytest.approx(math.sqrt((n - k) / 4), rel=1e-6)
    del basis, w, out, expect
    torch.cuda.empty_cache()


@needs_cuda
def test_cuda_kernels_run_on_the_current_stream():
    """Inputs written on a side stream after a GPU-side delay: a kernel launched on any other stream than
    the current one would read them (or write its output) before that stream's work is done."""
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is None:
        pytest.skip("torch.cuda._sleep is not available")
    k, n = 16, 1_000_003
    basis = _orthonormal_rows(k, n, torch.float32, device="cuda")
    w_true = _randn(n, torch.float32, device="cuda")
    expected = ops.reorthogonalize(w_true, basis)
    ref_probes = ops.rademacher(n, 4, seed=3, device="cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    w = torch.zeros_like(w_true)
    probes = torch.empty(n, 4, device="cuda")
    with torch.cuda.stream(side):
        sleep(200_000_000)                       # ~0.1 s of GPU time before the inputs are ready
        w.copy_(w_true)
        got = ops.reorthogonalize(w, basis)
        sleep(200_000_000)
        probes.zero_()
        ops.rademacher_(probes, 3)
    side.synchronize()
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    assert torch.equal(probes, ref_probes)


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
def test_cuda_second_device():
    """Tensors on cuda:1 while cuda:0 is current: the kernels run on the tensors' device and stream."""
    k, n = 8, 300_001
    basis = _orthonormal_rows(k, n, torch.float64)
    w = _randn(n, torch.float64)
    expected = _reference.reorthogonalize(w, basis)
    with torch.cuda.device(0):
        got = ops.reorthogonalize(w.to("cuda:1"), basis.to("cuda:1"))
        probes = ops.rademacher(n, 3, seed=9, dtype=torch.float64, device="cuda:1")
    assert all(t.device == torch.device("cuda:1") for t in (*got, probes))
    for g, e in zip(got, expected):
        assert (g.cpu() - e).abs().max().item() <= TOL[torch.float64] * w.norm().item()
    ref = torch.empty(n, 3, dtype=torch.float64)
    _reference.rademacher_(ref, 9, 0)
    assert torch.equal(probes.cpu(), ref)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_bitwise_deterministic(dtype):
    """Two identical calls give identical bits (fixed-order reductions, no atomics)."""
    k, n = 32, 10_000_019
    _need_cuda_bytes(8 * k * n * 2)
    basis = torch.empty(k, n, dtype=dtype, device="cuda")
    ops.rademacher_(basis.view(-1), 11)
    basis.mul_(n ** -0.5)
    w = _randn(n, dtype, device="cuda")
    first = ops.reorthogonalize(w, basis)
    second = ops.reorthogonalize(w, basis)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert torch.equal(ops.rademacher(n, 3, seed=4, dtype=dtype, device="cuda"),
                       ops.rademacher(n, 3, seed=4, dtype=dtype, device="cuda"))
    del basis
    torch.cuda.empty_cache()


@needs_cuda
def test_cuda_float32_accuracy_at_1e8():
    """At n = 1e8, float32 results against the float64 kernel on the same (float32) inputs: dots, norms and
    their reductions are kept in double, so only the float32 subtraction and the final roundings remain."""
    k, n = 4, 100_000_000
    _need_cuda_bytes(k * n * (4 + 8) + n * 4 * (4 + 8))
    basis = torch.empty(k, n, dtype=torch.float32, device="cuda")
    ops.rademacher_(basis.view(-1), 21)
    basis.mul_(n ** -0.5)                       # unit rows, nearly orthogonal (inner products ~1e-4)
    w = torch.empty(n, dtype=torch.float32, device="cuda")
    ops.rademacher_(w, 22)
    w.add_(basis[0] * 5e3)                      # a large component along the basis
    out32, c32, n32 = ops.reorthogonalize(w, basis)
    out64, c64, n64 = ops.reorthogonalize(w.double(), basis.double())
    wn = w.double().norm().item()
    assert (c32.double() - c64).abs().max().item() <= 1e-6 * wn
    assert abs(n32.item() - n64.item()) <= 1e-6 * n64.item()
    assert (out32.double() - out64).norm().item() <= 1e-6 * wn
    # the float32 norm is the double norm of the float32 output rounded once: within one float32 ulp
    assert abs(n32.item() - out32.double().norm().item()) <= 2**-23 * n32.item()
    del basis, w, out32, out64
    torch.cuda.empty_cache()


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", [(1, 2000), (130, 2000), (32, 1_000_003), (128, 3_000_001)])
def test_cuda_reorthogonalize_independent_of_launch_plan(dtype, k, n, monkeypatch):
    """Sweep 2 fused through L2 or through shared memory, or split (HESSEXT_REORTH_FUSE=always / smem /
    never / auto; odd n: rows not 16-byte aligned, a partial last chunk), reductions folded into the sweeps
    or launched on their own (HESSEXT_REORTH_FOLD), tiles and grids from the device: every partial covers a
    fixed 128-column chunk and the chunks are summed in a fixed order, so all plans give the same bits, for
    one pass and two; and they match the reference."""
    _need_cuda_bytes(8 * k * n * 2)
    basis = torch.empty(k, n, dtype=dtype, device="cuda")
    ops.rademacher_(basis.view(-1), 5)
    basis.mul_(n ** -0.5)
    w = _randn(n, dtype, device="cuda")
    for passes in (1, 2):
        results = {}
        for fuse in ("auto", "always", "smem", "never"):
            for fold in ("auto", "always", "never"):
                monkeypatch.setenv("HESSEXT_REORTH_FUSE", fuse)
                monkeypatch.setenv("HESSEXT_REORTH_FOLD", fold)
                results[fuse, fold] = ops.reorthogonalize(w, basis, passes)
        for mode, result in results.items():
            for a, b in zip(results["auto", "auto"], result):
                assert torch.equal(a, b), (passes, mode)
    monkeypatch.delenv("HESSEXT_REORTH_FOLD")
    if k * n <= 4_000_000:
        _check_against_reference("ops-cuda", w, basis, 2)
    for name in ("HESSEXT_REORTH_FUSE", "HESSEXT_REORTH_FOLD"):
        monkeypatch.setenv(name, "sometimes")
        with pytest.raises(RuntimeError, match=name):
            ops.reorthogonalize(w, basis)
        monkeypatch.setenv(name, "auto")
    del basis, results
    torch.cuda.empty_cache()
