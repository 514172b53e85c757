"""Plots and reports of Hessian analyses: :class:`HessianVisualizer` (API B's ``project.hessian`` plots).

Every plot function takes results (dicts of numbers as produced by ``HessianAnalyzer.analyze_step``, or
the engine's result dataclasses), never operators or models, and

- returns its :class:`matplotlib.figure.Figure` (close it with ``plt.close(fig)`` if you made it through
  pyplot; see *Backends* below);
- writes ``{model_name}_{quantity}.{fmt}`` into ``save_path`` for every ``fmt`` in ``formats`` (default
  ``("png",)``; ``"svg"``, ``"pdf"``, ``"jpg"``, ``"eps"`` too), creating the directory; with
  ``save_path=None`` nothing is written. The written paths are also stored on the figure as
  ``fig.hessext_files``;
- skips whatever the input lacks: a missing metric, a step that failed (its dict has an ``"error"`` key) or
  a whole missing section only removes a panel, never raises. A figure with nothing to show says so.

Histories are dicts keyed by training step: ``{step: metrics}``. Steps are ints or int-like strings
(``"100"``); other keys (``"epoch_3"``) are plotted in insertion order and used as tick labels. A history
of full ``analyze_step`` results (``{step: results}``) is accepted everywhere: each function picks its own
section (``results["hessian"]``, ``results["alignment"]``, …).

Scales: a quantity that is positive and spans more than ``LOG_SPAN`` (30×) is drawn on a log axis; a signed
quantity spanning decades (Hessian eigenvalues: a large positive top and small negative bottom) on a
``symlog`` axis whose linear region is set by the smallest magnitude in the data.

Legends never cover data: matplotlib places them (``loc="best"``) or the figure puts them where it made room;
a legend that still lies on the data of its axes (or of a twin axis) is moved below the axes before the
figure is saved (:mod:`hessext.viz._legends`).

Backends
--------
hessext never calls ``matplotlib.use``. If ``matplotlib.pyplot`` has already been imported (by you, by
Jupyter's ``%matplotlib``, …), figures are created through pyplot, so they live in your backend and
``plt.show()`` / inline display work as usual; the caller owns them (close them in loops; the report
functions close the figures they make). Otherwise figures are created directly as
``matplotlib.figure.Figure`` objects drawn by the Agg canvas: no GUI, no global state, no pyplot figure
registry, so nothing leaks and nothing changes for code that imports pyplot later. Set the module
attribute ``hessext.viz.USE_PYPLOT`` to ``True``/``False`` to force one of the two.

Colours: each component has a fixed colour (``COMPONENT_COLORS``; unknown names get a deterministic
colour from a hash of the name), so that "ffn" is green in every figure of every report.

Modules: ``_figure`` (figures and their files), ``_style`` (colours, input dicts, scales, number formats),
``_legends`` (legends off the data), ``history`` (series over training), ``components``, ``spectrum``,
``landscape``, ``tracking`` (curvature tracked over training), ``curvature`` (H/G/E densities, blockwise
densities, the JS heat-map between blocks) and ``report`` (the text summary and
``index.html``).
"""
from __future__ import annotations

import sys
import types
from typing import Optional

from . import _figure
from ._figure import DPI, check_formats, require_mpl
from ._style import COMPONENT_COLORS, LOG_SPAN, component_color
from .components import plot_component_bars, plot_component_comparison
from .curvature import (
    CURVATURE_COLORS,
    curvature_color,
    plot_block_densities,
    plot_block_js_heatmap,
    plot_curvature_densities,
)
from .history import (
    plot_complexity_metrics,
    plot_eigenvalue_evolution,
    plot_gradient_alignment,
    plot_memorization_metrics,
    plot_sharpness,
    plot_training_curves,
)
from .landscape import plot_loss_landscape_1d, plot_loss_landscape_2d
from .report import create_comprehensive_report, save_analysis_summary
from .spectrum import plot_spectral_density, plot_top_spectrum
from .tracking import plot_curvature_tracking

__all__ = ["HessianVisualizer", "COMPONENT_COLORS", "component_color", "USE_PYPLOT", "LOG_SPAN", "DPI",
           "check_formats", "plot_eigenvalue_evolution", "plot_complexity_metrics",
           "plot_component_comparison", "plot_gradient_alignment", "plot_memorization_metrics",
           "plot_sharpness",
           "create_comprehensive_report", "save_analysis_summary",
           "plot_spectral_density", "plot_top_spectrum", "plot_component_bars", "plot_training_curves",
           "plot_loss_landscape_1d", "plot_loss_landscape_2d", "plot_curvature_tracking",
           "CURVATURE_COLORS", "curvature_color", "plot_curvature_densities", "plot_block_densities",
           "plot_block_js_heatmap"]


class HessianVisualizer:
    """Matplotlib figures and reports of Hessian analyses (API B's ``HessianVisualizer``).

    All methods are static: call them on the class (``HessianVisualizer.plot_eigenvalue_evolution(...)``)
    or on an instance (``HessianVisualizer().create_comprehensive_report(...)``), as the API document does.
    Common keyword arguments of every ``plot_*`` method: ``formats`` (``("png",)``; add ``"svg"``/``"pdf"``)
    and ``dpi``. Every ``plot_*`` returns the figure; the caller may close it.
    """

    def __init__(self) -> None:
        require_mpl()

    # the document's plots
    plot_eigenvalue_evolution = staticmethod(plot_eigenvalue_evolution)
    plot_complexity_metrics = staticmethod(plot_complexity_metrics)
    plot_component_comparison = staticmethod(plot_component_comparison)
    plot_gradient_alignment = staticmethod(plot_gradient_alignment)
    plot_memorization_metrics = staticmethod(plot_memorization_metrics)
    plot_sharpness = staticmethod(plot_sharpness)
    # beyond the document
    plot_training_curves = staticmethod(plot_training_curves)
    plot_spectral_density = staticmethod(plot_spectral_density)
    plot_top_spectrum = staticmethod(plot_top_spectrum)
    plot_component_bars = staticmethod(plot_component_bars)
    plot_loss_landscape_1d = staticmethod(plot_loss_landscape_1d)
    plot_loss_landscape_2d = staticmethod(plot_loss_landscape_2d)
    plot_curvature_tracking = staticmethod(plot_curvature_tracking)
    # the curvature family (H, G, E) and blockwise spectra
    plot_curvature_densities = staticmethod(plot_curvature_densities)
    plot_block_densities = staticmethod(plot_block_densities)
    plot_block_js_heatmap = staticmethod(plot_block_js_heatmap)
    # text and reports
    save_analysis_summary = staticmethod(save_analysis_summary)
    create_comprehensive_report = staticmethod(create_comprehensive_report)


class _VizModule(types.ModuleType):
    """``hessext.viz`` itself: ``hessext.viz.USE_PYPLOT`` reads and sets the setting the figure helpers use
    (``hessext.viz._figure.USE_PYPLOT``), so that ``hessext.viz.USE_PYPLOT = False`` keeps working."""

    @property
    def USE_PYPLOT(self) -> Optional[bool]:
        return _figure.USE_PYPLOT

    @USE_PYPLOT.setter
    def USE_PYPLOT(self, value: Optional[bool]) -> None:
        _figure.USE_PYPLOT = value


sys.modules[__name__].__class__ = _VizModule
