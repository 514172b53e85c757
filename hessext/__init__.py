"""hessext: fast, exact-where-possible Hessian analysis for PyTorch models."""
from __future__ import annotations

from ._backend import BACKEND
from . import ops

__version__ = "0.1.0"
__all__ = ["BACKEND", "ops", "__version__"]
