"""API A import path ``<package>.hessian.hessian_trace``.

Re-exports :func:`hessext.compat.api_a.hessian_trace` (documented form on a ModelWrapper, and the legacy
``(model, loss_fn, inputs, targets, ...)`` form).
"""
from __future__ import annotations

from ..compat.api_a import hessian_trace

__all__ = ["hessian_trace"]
