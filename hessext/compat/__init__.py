"""Compatibility surfaces on the hessext engine.

- API A (a loss-landscape package's Hessian module): :class:`ModelWrapper`, :func:`min_max_hessian_eigs`,
  :func:`hessian_trace` (implementation in :mod:`hessext.compat.api_a`; the import paths of that package's
  documentation are mirrored by :mod:`hessext.model_interface.model_wrapper`, :mod:`hessext.hessian.hessian`
  and :mod:`hessext.hessian.hessian_trace`).
"""
from __future__ import annotations

from .api_a import DEFAULT_TRACE_METHOD, TRACE_METHODS, ModelWrapper, hessian_trace, min_max_hessian_eigs

__all__ = ["ModelWrapper", "min_max_hessian_eigs", "hessian_trace", "DEFAULT_TRACE_METHOD", "TRACE_METHODS"]
