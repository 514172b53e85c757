"""hessext: fast, exact-where-possible Hessian analysis for PyTorch models.

The engine (flat vectors and symmetric operators):
    HessianOperator, ParamLayout, LinearOperator, hessext.lanczos.lanczos (also as eigsh) /
    extreme_eigenpairs, hutchinson / hutchpp / xtrace / adaptive_trace / estimate_trace, spectral_density,
    EigenResult / TraceResult / DensityResult.
API A (``oxford_loss_landscapes`` → ``hessext``): ModelWrapper, min_max_hessian_eigs, hessian_trace.
API B (``project.hessian`` → ``hessext.hessian``; implemented in ``hessext.analysis``): HessianAnalyzer,
    HessianConfig, ComponentAnalyzer, …
Pictures: HessianVisualizer (matplotlib, imported lazily), loss_landscape_1d / loss_landscape_2d.
Scale-out: DistributedHessianOperator (torch.distributed).

``BACKEND`` is ``"cuda"``, ``"cpu"`` (compiled kernels) or ``"python"`` (pure-PyTorch fallback).
"""
from __future__ import annotations

from typing import Any

from . import ops
from ._backend import BACKEND
from ._state import preserve_model_state
from ._version import __version__

# API B
from .analysis import (
    ComponentAnalyzer,
    ComponentSelector,
    CurvatureTracker,
    HessianAnalyzer,
    HessianConfig,
    HessianMetrics,
    compute_component_hessians,
    compute_detailed_hessian_metrics,
    compute_hessian_gradient_alignment,
    extract_component_parameters,
    get_hessian_eigenvectors,
    load_tracking,
    measure_train_val_landscape_divergence,
)

# API A
from .compat import ModelWrapper, hessian_trace, min_max_hessian_eigs
from .curvature import FisherOperator, GGNOperator
from .density import spectral_density
from .distributed import DistributedHessianOperator, init_from_env, shard
from .hvp import HessianOperator

# The function `lanczos` is not bound here: `hessext.lanczos` stays the module (import hessext.lanczos as L).
from .lanczos import eigsh, extreme_eigenpairs
from .landscape import loss_landscape_1d, loss_landscape_2d, random_direction, suggest_radius
from .layout import ParamLayout
from .linop import DenseOperator, LinearOperator, as_operator
from .models import TransformerFactory
from .results import DensityResult, EigenResult, TraceResult
from .trace import adaptive_trace, estimate_trace, hutchinson, hutchpp, xtrace

__all__ = [
    "BACKEND", "ops", "__version__", "preserve_model_state",
    "ParamLayout", "LinearOperator", "DenseOperator", "as_operator", "HessianOperator",
    "EigenResult", "TraceResult", "DensityResult",
    "eigsh", "extreme_eigenpairs", "hutchinson", "hutchpp", "xtrace", "adaptive_trace", "estimate_trace",
    "spectral_density", "loss_landscape_1d", "loss_landscape_2d", "random_direction", "suggest_radius",
    "DistributedHessianOperator", "init_from_env", "shard",
    "ModelWrapper", "min_max_hessian_eigs", "hessian_trace",
    "HessianAnalyzer", "HessianConfig", "ComponentAnalyzer", "ComponentSelector", "HessianMetrics",
    "HessianVisualizer", "TransformerFactory", "get_hessian_eigenvectors", "extract_component_parameters",
    "compute_component_hessians", "compute_hessian_gradient_alignment",
    "measure_train_val_landscape_divergence", "compute_detailed_hessian_metrics",
]
__all__ += ["CurvatureTracker", "load_tracking"]
__all__ += ["GGNOperator", "FisherOperator"]


def __getattr__(name: str) -> Any:
    # matplotlib is an optional dependency: the visualiser is imported on first use.
    if name == "HessianVisualizer":
        from .viz import HessianVisualizer
        return HessianVisualizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
