"""API A import path ``<package>.hessian.hessian``.

Re-exports :func:`hessext.compat.api_a.min_max_hessian_eigs` (documented form on a ModelWrapper, and the
legacy ``(net, inputs, targets, criterion, ...)`` form).
"""
from __future__ import annotations

from ..compat.api_a import ModelWrapper, min_max_hessian_eigs

__all__ = ["min_max_hessian_eigs", "ModelWrapper"]
