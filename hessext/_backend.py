"""The only place that knows whether the compiled extension ``hessext._C`` loaded.

If it did, the C++ side owns the ``hessext`` op namespace. If it is absent, fails to load (for example a
CUDA build on a machine without the CUDA runtime), or ``HESSEXT_FORCE_PYTHON=1`` is set, the same op names
are registered here with the pure-PyTorch kernels of ``_reference.py``. Importing hessext never fails
because of the extension.
"""
from __future__ import annotations

import os

import torch

from . import _reference

SCHEMAS = {
    "reorthogonalize": "reorthogonalize(Tensor w, Tensor basis, int passes=2) -> (Tensor, Tensor, Tensor)",
    "rademacher_": "rademacher_(Tensor(a!) out, int seed, int offset) -> ()",
}

LOAD_ERROR: str | None = None
_lib = None


def _load_compiled() -> bool:
    global LOAD_ERROR
    if os.environ.get("HESSEXT_FORCE_PYTHON", "") not in ("", "0"):
        LOAD_ERROR = "HESSEXT_FORCE_PYTHON is set"
        return False
    try:
        from . import _C  # noqa: F401  (loading the .so runs the op registrations)
    except (ImportError, OSError) as exc:
        LOAD_ERROR = f"{type(exc).__name__}: {exc}"
        return False
    return True


def _register_python() -> None:
    global _lib
    _lib = torch.library.Library("hessext", "DEF")
    for name, schema in SCHEMAS.items():
        _lib.define(schema)
    _lib.impl("reorthogonalize", _reference.reorthogonalize, "CompositeExplicitAutograd")
    _lib.impl("rademacher_", _reference.rademacher_, "CompositeExplicitAutograd")


COMPILED = _load_compiled()
if not COMPILED:
    _register_python()


def _has_cuda_kernel(op: str) -> bool:
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"hessext::{op}", "CUDA"))


if not COMPILED:
    BACKEND = "python"
elif torch.cuda.is_available() and _has_cuda_kernel("reorthogonalize"):
    BACKEND = "cuda"
else:
    BACKEND = "cpu"
