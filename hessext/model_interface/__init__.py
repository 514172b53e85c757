"""API A import path ``<package>.model_interface``: re-exports :class:`hessext.compat.api_a.ModelWrapper`."""
from __future__ import annotations

from .model_wrapper import ModelWrapper

__all__ = ["ModelWrapper"]
