"""API A import path ``<package>.model_interface.model_wrapper``: re-exports
:class:`hessext.compat.api_a.ModelWrapper` (``ModelWrapper(model, loss_fn, X)``, ``loss_fn(model(X))`` scalar)."""
from __future__ import annotations

from ..compat.api_a import ModelWrapper

__all__ = ["ModelWrapper"]
