"""Layer 5, analysis: what API B computes on top of the engine.

=====================  ======================================================================================
module                 what lives there
=====================  ======================================================================================
``spectrum``           the operator of a model's loss with API B conventions (``make_operator``), extreme Ritz
                       pairs with API B's iteration cap, whole-model and per-block traces from one probe set
``metrics``            scalar summaries of a set of eigenvalues (``HessianMetrics``)
``blocks``             blockwise SLQ densities of diagonal Hessian blocks and the Jensen–Shannon distances
                       between them (``block_spectra``, Zhang et al. 2024)
``components``         transformer components as parameter subsets and their Hessian blocks
                       (``ComponentAnalyzer``)
``alignment``          gradient–curvature alignment, sharpness, train/val landscape divergence
``config``             ``HessianConfig`` and ``HessianConfigError``
``persistence``        one step's JSON + NPZ files, written as one unit
``analyzer``           ``HessianAnalyzer``: one call analyses one training step, every section at once
``legacy``             the one-call legacy functions of API B
``tracking``           curvature over training: ``CurvatureTracker`` (warm-started), JSON-lines records
=====================  ======================================================================================

Imports go one way: ``spectrum`` and ``metrics`` first, then ``blocks``, then ``components`` and
``alignment``, then ``config``, ``persistence``, ``analyzer`` and ``legacy``. The API B import path
(``project.hessian`` → ``hessext.hessian``) re-exports the public names.
"""
from __future__ import annotations

from .alignment import (
    compute_hessian_gradient_alignment,
    eigenspace_overlap,
    eigenvalue_distribution_overlap,
    gradient_alignment,
    sharpness_metrics,
    train_val_divergence,
)
from .analyzer import HessianAnalyzer
from .blocks import (
    BlockSpectraResult,
    block_index_sets,
    block_spectra,
    jensen_shannon_distance,
    js_distance_matrix,
    layer_blocks,
    parameter_blocks,
)
from .components import (
    COMPONENT_NAMES,
    ComponentAnalyzer,
    ComponentSelector,
    ParamPart,
    component_indices,
    compute_component_hessians,
    extract_component_parameters,
    resolve_component,
)
from .config import HessianConfig, HessianConfigError
from .legacy import get_hessian_eigenvectors, measure_train_val_landscape_divergence
from .metrics import HessianMetrics, compute_detailed_hessian_metrics
from .spectrum import clustered_spectrum_max_iter, extreme_ritz_pairs, make_operator, shared_probe_traces
from .tracking import CurvatureTracker, load_tracking, trainer_callback

__all__ = [
    "HessianAnalyzer", "HessianConfig", "HessianConfigError",
    "COMPONENT_NAMES", "ParamPart", "ComponentAnalyzer", "ComponentSelector", "resolve_component",
    "component_indices", "extract_component_parameters", "compute_component_hessians",
    "HessianMetrics", "compute_detailed_hessian_metrics",
    "gradient_alignment", "sharpness_metrics", "train_val_divergence", "eigenvalue_distribution_overlap",
    "eigenspace_overlap", "compute_hessian_gradient_alignment",
    "get_hessian_eigenvectors", "measure_train_val_landscape_divergence",
    "make_operator", "extreme_ritz_pairs", "clustered_spectrum_max_iter", "shared_probe_traces",
]
__all__ += ["CurvatureTracker", "load_tracking", "trainer_callback"]
__all__ += ["BlockSpectraResult", "block_spectra", "block_index_sets", "parameter_blocks", "layer_blocks",
            "jensen_shannon_distance", "js_distance_matrix"]
