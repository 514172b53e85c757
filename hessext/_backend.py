"""The only place that knows whether the compiled extension ``hessext._C`` loaded.

If it did, the C++ side owns the ``hessext`` op namespace (schemas in ``csrc/hessext.cpp``, CPU kernels in
``csrc/cpu``, CUDA kernels in ``csrc/cuda`` when built with nvcc). If it is absent, fails to load (for example
a CUDA build on a machine without the CUDA runtime), or ``HESSEXT_FORCE_PYTHON=1`` is set, the same op names
are registered here with the pure-PyTorch kernels of ``_reference.py``. Importing hessext never fails
because of the extension.

Both backends get the same fake (meta) kernels, so ``torch.library.opcheck``, ``torch.compile`` and meta
tensors work on either.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from . import _reference

SCHEMAS = {
    "reorthogonalize": "reorthogonalize(Tensor w, Tensor basis, int passes=2) -> (Tensor, Tensor, Tensor)",
    "rademacher_": "rademacher_(Tensor(a!) out, int seed, int offset) -> ()",
}

LOAD_ERROR: str | None = None
_lib: torch.library.Library | None = None


def _ops_defined() -> bool:
    """Whether every hessext schema is already in the dispatcher (e.g. registered by a loaded ``_C``)."""
    try:
        return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"hessext::{name}", "CPU")
                   for name in SCHEMAS)
    except RuntimeError:
        return False


def _load_compiled() -> bool:
    global LOAD_ERROR
    if os.environ.get("HESSEXT_FORCE_PYTHON", "") not in ("", "0"):
        LOAD_ERROR = "HESSEXT_FORCE_PYTHON is set"
        return False
    try:
        from . import _C  # noqa: F401  (loading the .so runs the op registrations)
    except Exception as exc:  # ImportError, OSError (missing libcudart, ...), RuntimeError from registration
        LOAD_ERROR = f"{type(exc).__name__}: {exc}"
        # The shared object may have been loaded (and its ops registered) before the import failed; its
        # kernels are then usable and the namespace can no longer be defined from Python.
        return _ops_defined()
    return True


def _register_python() -> None:
    global _lib
    _lib = torch.library.Library("hessext", "DEF")
    for schema in SCHEMAS.values():
        _lib.define(schema)
    _lib.impl("reorthogonalize", _reference.reorthogonalize, "CompositeExplicitAutograd")
    _lib.impl("rademacher_", _reference.rademacher_, "CompositeExplicitAutograd")


def _reorthogonalize_fake(w: Tensor, basis: Tensor, passes: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    _reference.check_reorthogonalize_args(w, basis, passes)
    return w.new_empty(w.shape), w.new_empty((basis.shape[0],)), w.new_empty(())


def _rademacher_fake(out: Tensor, seed: int, offset: int) -> None:
    _reference.check_rademacher_args(out, offset)


def _register_fakes() -> None:
    torch.library.register_fake("hessext::reorthogonalize", _reorthogonalize_fake, lib=_lib)
    torch.library.register_fake("hessext::rademacher_", _rademacher_fake, lib=_lib)


COMPILED = _load_compiled()
if not COMPILED:
    _register_python()
_register_fakes()


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``hessext::op`` has a kernel registered for ``dispatch_key`` (``"CPU"``, ``"CUDA"``, ...)."""
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"hessext::{op}", dispatch_key))


def _has_cuda_kernel(op: str) -> bool:
    return has_kernel(op, "CUDA")


CUDA_KERNELS = COMPILED and _has_cuda_kernel("reorthogonalize") and _has_cuda_kernel("rademacher_")

if not COMPILED:
    BACKEND = "python"
elif torch.cuda.is_available() and CUDA_KERNELS:
    BACKEND = "cuda"
else:
    BACKEND = "cpu"


def build_info() -> dict[str, Any]:
    """The build configuration written by setup.py (``hessext/_build_info.py``), or ``{}`` if absent."""
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        return {}
    return dict(BUILD_INFO)


def info() -> dict[str, Any]:
    """Backend, torch, build and device facts, as printed by ``python -m hessext info``."""
    b = build_info()
    return {
        "backend": BACKEND,
        "compiled_extension_loaded": COMPILED,
        "load_error": LOAD_ERROR,
        "cuda_kernels_registered": CUDA_KERNELS,
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_isa_override": os.environ.get("HESSEXT_CPU_ISA") or None,
        "cpu_prefetch_override": os.environ.get("HESSEXT_CPU_PREFETCH") or None,
        "num_threads": torch.get_num_threads(),
        "built_extension": b.get("extension"),
        "built_with_cuda": b.get("cuda"),
        "cuda_archs": b.get("cuda_archs", []),
        "cuda_home": b.get("cuda_home"),
        "torch_built_against": b.get("torch_built_against"),
        "stable_abi_target": b.get("stable_abi_target"),
        "cxx_flags": b.get("cxx_flags", []),
        "nvcc_flags": b.get("nvcc_flags", []),
    }
