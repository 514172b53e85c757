"""API B surface (``project.hessian`` → ``hessext.hessian``); the API A modules live beside it.

``HessianVisualizer`` is imported lazily from :mod:`hessext.viz` (matplotlib is optional).
"""
from __future__ import annotations

from typing import Any

from ..alignment import compute_hessian_gradient_alignment
from ..analyzer import HessianAnalyzer, HessianConfig, HessianConfigError
from ..components import (ComponentAnalyzer, ComponentSelector, compute_component_hessians,
                          extract_component_parameters)
from ..legacy import get_hessian_eigenvectors, measure_train_val_landscape_divergence
from ..metrics import HessianMetrics, compute_detailed_hessian_metrics

__all__ = [
    "HessianAnalyzer", "HessianConfig", "HessianConfigError", "ComponentAnalyzer", "ComponentSelector", "HessianMetrics",
    "HessianVisualizer", "get_hessian_eigenvectors", "extract_component_parameters",
    "compute_component_hessians", "compute_hessian_gradient_alignment",
    "measure_train_val_landscape_divergence", "compute_detailed_hessian_metrics",
]


def __getattr__(name: str) -> Any:
    if name == "HessianVisualizer":
        from ..viz import HessianVisualizer
        return HessianVisualizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
