"""API A import path ``<package>.model_interface.model_wrapper``.

Re-exports :class:`hessext.compat.api_a.ModelWrapper`: ``ModelWrapper(model, loss_fn, X)`` with
``loss_fn(model(X))`` a scalar.
"""
from __future__ import annotations

from ..compat.api_a import ModelWrapper

__all__ = ["ModelWrapper"]
