"""API B surface (``project.hessian`` → ``hessext.hessian``); the API A modules live beside it.

``HessianVisualizer`` is imported lazily from :mod:`hessext.viz` (matplotlib is optional).
"""
from __future__ import annotations

from typing import Any

from ..analysis.alignment import compute_hessian_gradient_alignment
from ..analysis.analyzer import HessianAnalyzer
from ..analysis.components import (
    ComponentAnalyzer,
    ComponentSelector,
    compute_component_hessians,
    extract_component_parameters,
)
from ..analysis.config import HessianConfig, HessianConfigError
from ..analysis.legacy import get_hessian_eigenvectors, measure_train_val_landscape_divergence
from ..analysis.metrics import HessianMetrics, compute_detailed_hessian_metrics

__all__ = [
    # the API B document's classes
    "HessianAnalyzer", "HessianConfig", "HessianConfigError", "ComponentAnalyzer", "ComponentSelector",
    "HessianMetrics", "HessianVisualizer",
    # its legacy functions
    "get_hessian_eigenvectors", "extract_component_parameters", "compute_component_hessians",
    "compute_hessian_gradient_alignment", "measure_train_val_landscape_divergence",
    "compute_detailed_hessian_metrics",
]


def __getattr__(name: str) -> Any:
    """``HessianVisualizer`` on first use: it needs matplotlib, an optional dependency."""
    if name != "HessianVisualizer":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ..viz import HessianVisualizer
    return HessianVisualizer
