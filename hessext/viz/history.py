"""Time series over training: eigenvalue evolution, complexity metrics, gradient alignment, memorization
(train/validation divergence), sharpness and training curves.

Each figure is a grid of panels; a panel is drawn only when its data exist (:class:`Panel`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ._figure import DPI, Figure, FormatsLike, PathLike, new_figure, write_figure
from ._legends import guide
from ._style import (
    apply_scale,
    empty_axes,
    finite,
    lookup,
    marker,
    ordered_steps,
    section,
    series,
    set_step_axis,
    to_array,
)

__all__ = ["plot_eigenvalue_evolution", "plot_complexity_metrics", "plot_gradient_alignment",
           "plot_memorization_metrics", "plot_sharpness", "plot_training_curves"]

Drawer = Callable[[Any, np.ndarray, list, Optional[list]], bool]
_SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


# ============================================================================ panel machinery
@dataclass
class Panel:
    """One axes of a time-series figure: some keys of the per-step dicts, or a custom drawer."""
    title: str
    keys: Sequence[tuple[str, str]] = ()          # (key, legend label)
    ylabel: str = ""
    scale: str = "auto"
    ylim: Optional[tuple[float, float]] = None
    ref: Optional[float] = None                   # horizontal reference line
    ref_label: Optional[str] = None
    band: Optional[tuple[str, str, float]] = None  # (center key, std-error key, multiplier)
    draw: Optional[Drawer] = None
    styles: Optional[Mapping[str, Mapping[str, Any]]] = None  # per key: plot kwargs (color, ls, marker, …)
    context: Sequence[tuple[str, str]] = ()       # drawn too, but only when one of ``keys`` has data

    def has_data(self, records: list) -> bool:
        if self.draw is not None:  # ``keys`` then only name the entries the drawer needs (any one suffices)
            return not self.keys or any(lookup(r, k) is not None for k, _ in self.keys for r in records)
        return any(finite(series(records, k)).size for k, _ in self.keys)


def rank_lines(key: str, ylabel: str, first_label: str, ylim: Optional[tuple[float, float]] = None,
               sort_desc: bool = False) -> Drawer:
    """A panel drawer for a per-step list (``key``) indexed by eigenvalue rank: one line per rank, colour =
    rank (viridis), the first rank bold."""

    def draw(ax: Any, xs: np.ndarray, records: list, labels: Optional[list]) -> bool:
        rows = [to_array(lookup(r, key)) for r in records]
        if sort_desc:
            rows = [np.sort(row)[::-1] for row in rows]
        k = max((row.size for row in rows), default=0)
        if k == 0:
            return False
        mat = np.full((len(records), k), np.nan)
        for i, row in enumerate(rows):
            mat[i, :row.size] = row
        import matplotlib
        import matplotlib.cm as cm
        import matplotlib.colors as mcolors
        cmap = matplotlib.colormaps["viridis"]
        norm = mcolors.Normalize(vmin=1, vmax=max(k, 2))
        for j in range(k - 1, -1, -1):
            ax.plot(xs, mat[:, j], color=cmap(norm(j + 1)), lw=2.2 if j == 0 else 1.1,
                    marker=marker(len(xs)) if j == 0 else "", ms=3.5, label=first_label if j == 0 else None)
        if ylim is None:
            apply_scale(ax, mat.ravel(), "y")
        else:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        if k > 1:
            cb = ax.figure.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, fraction=0.05)
            cb.set_label("rank i")
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
        return True
    return draw


def _draw_keys(ax: Any, panel: Panel, xs: np.ndarray, records: list) -> tuple[int, list[float]]:
    """The lines (and the error band) of a key panel; returns how many series were drawn and every value."""
    every: list[float] = []
    drawn = 0
    for i, (key, label) in enumerate(list(panel.keys) + list(panel.context)):
        ys = series(records, key)
        if not finite(ys).size:
            continue
        # alternate solid / dashed so that coinciding series stay visible
        style = dict(marker=marker(len(xs)), ms=4, lw=1.8, color=_SERIES_COLORS[i % len(_SERIES_COLORS)],
                     ls="-" if drawn % 2 == 0 else "--")
        style.update((panel.styles or {}).get(key, {}))
        if not marker(len(xs)):
            style["marker"] = ""
        ax.plot(xs, ys, label=label, **style)
        every.extend(ys.tolist())
        drawn += 1
        if panel.band is not None and panel.band[0] == key:
            err = series(records, panel.band[1]) * panel.band[2]
            if finite(err).size:
                lo, hi = ys - err, ys + err
                ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.2, lw=0,
                                label=f"± {panel.band[2]:g} standard errors")
                every.extend(lo.tolist())
                every.extend(hi.tolist())
    return drawn, every


def draw_panel(ax: Any, panel: Panel, xs: np.ndarray, records: list, labels: Optional[list]) -> bool:
    """Draw ``panel`` on ``ax``; False if it had nothing to draw."""
    if panel.draw is not None:
        ok = panel.draw(ax, xs, records, labels)
        if ok:
            set_step_axis(ax, xs, labels)
            ax.set_title(panel.title)
        return ok
    drawn, every = _draw_keys(ax, panel, xs, records)
    if not drawn:
        return False
    if panel.ref is not None:
        guide(ax.axhline(panel.ref, color="0.4", lw=1, ls="--", label=panel.ref_label))
        every.append(panel.ref)
    apply_scale(ax, every, "y", panel.scale)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.set_title(panel.title)
    ax.set_ylabel(panel.ylabel)
    set_step_axis(ax, xs, labels)
    if drawn > 1 or panel.band is not None or panel.ref_label:
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    return True


def series_figure(history: Mapping, panels: Sequence[Panel], title: str, empty_text: str, ncols: int = 2,
                  panel_size: tuple[float, float] = (5.6, 3.6)) -> Figure:
    """A grid of the ``panels`` that have data in ``history`` (``{step: metrics}``)."""
    keys, xs, labels = ordered_steps(history)
    records = [history[k] for k in keys]
    active = [p for p in panels if p.has_data(records)] if records else []
    if not active:
        fig = new_figure((7, 3.5))
        empty_axes(fig.add_subplot(1, 1, 1), empty_text)
        fig.suptitle(title, fontsize=13, fontweight="bold")
        return fig
    ncols = len(active) if len(active) <= 3 else (2 if len(active) == 4 else max(ncols, 3))
    nrows = math.ceil(len(active) / ncols)
    fig = new_figure((panel_size[0] * ncols, panel_size[1] * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    used = 0
    for panel in active:
        if draw_panel(axes[used], panel, xs, records, labels):
            used += 1
        else:
            axes[used].clear()
    for ax in axes[used:]:
        ax.remove()
    if used == 0:  # custom panels found nothing to draw after all
        empty_axes(fig.add_subplot(1, 1, 1), empty_text)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


# ============================================================================ the figures
#: Grid layouts of :func:`series_figure` other than its default (2 columns of 5.6 × 3.6 inch panels).
_SIX_PANELS = dict(ncols=3, panel_size=(4.8, 3.4))
_ONE_PANEL = dict(ncols=1, panel_size=(7.5, 4.0))


def _plot(history: Mapping, panels: Sequence[Panel], quantity: str, title: str, empty_text: str,
          save_path: Optional[PathLike], model_name: str, formats: FormatsLike, dpi: int,
          **layout: Any) -> Figure:
    """:func:`series_figure` titled ``{model_name}: {title}``, written as ``{model_name}_{quantity}.*``."""
    fig = series_figure(history, panels, f"{model_name}: {title}", empty_text, **layout)
    write_figure(fig, save_path, model_name, quantity, formats, dpi)
    return fig


def _draw_negative(ax: Any, xs: np.ndarray, records: list, labels: Optional[list]) -> bool:
    """Negative curvature: bars of the negative Ritz values found, and ``|λ_min| / λ_max`` on a twin axis."""
    neg = series(records, "negative_count")
    lmax, lmin = series(records, "max_eigenvalue"), series(records, "min_eigenvalue")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((lmin < 0) & (lmax > 0), np.abs(lmin) / lmax, np.nan)
    has_neg, has_ratio = finite(neg).size > 0, finite(ratio).size > 0
    if not (has_neg or has_ratio):
        return False
    handles = []
    if has_neg:
        width = 0.6 * (np.min(np.diff(xs)) if xs.size > 1 else 1.0)
        handles.append(ax.bar(xs, np.nan_to_num(neg), width=width, color="#9ecae1",
                              label="negative eigenvalues found (count)"))
        ax.set_ylabel("count")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(0, max(float(np.nanmax(neg)) if finite(neg).size else 1.0, 1.0) * 1.45)
    if has_ratio:
        ax2 = ax.twinx() if has_neg else ax
        (line,) = ax2.plot(xs, ratio, color="#d62728", marker=marker(len(xs)), ms=4, label="|λ_min| / λ_max")
        scale = apply_scale(ax2, ratio, "y")
        r = finite(ratio)
        if scale == "log":
            ax2.set_ylim(r.min() / 1.3, r.max() * (r.max() / r.min()) ** 0.45)
        else:
            ax2.set_ylim(0, r.max() * 1.45 if r.max() > 0 else 1.0)
        ax2.set_ylabel("|λ_min| / λ_max")
        handles.append(line)
    # headroom above the data keeps the legend off it
    ax.legend(handles=handles, loc="upper center", fontsize=8, framealpha=0.85, ncols=len(handles))
    return True


def plot_eigenvalue_evolution(hessian_history: Mapping, save_path: Optional[PathLike] = None,
                              model_name: str = "model", *, formats: FormatsLike = ("png",),
                              dpi: int = DPI) -> Figure:
    """Evolution of the Hessian spectrum over training.

    Panels (each only if its data exist): the top-k eigenvalues ``λ_1 ≥ … ≥ λ_k`` per step (colour =
    rank), the extreme eigenvalues ``λ_max`` and ``λ_min`` (symlog: signed, spanning decades), the
    trace estimate ``tr H`` with a ±2 standard-error band, and negative curvature: the number of
    negative Ritz values found and ``|λ_min| / λ_max``.

    Args:
        hessian_history: ``{step: results["hessian"]}`` or ``{step: results}``.
        save_path: directory for ``{model_name}_eigenvalue_evolution.png`` (None: do not write).
        model_name: used in the title and the file name.

    Returns:
        The figure.
    """
    hist = section(hessian_history, "hessian")
    panels = [
        Panel("Top-k eigenvalues", keys=[("top_eigenvalues", "")], draw=rank_lines(
            "top_eigenvalues", "eigenvalue λᵢ (loss / param²)", "λ₁ (largest)", sort_desc=True)),
        Panel("Extreme eigenvalues", keys=[("max_eigenvalue", "λ_max"), ("min_eigenvalue", "λ_min")],
              ylabel="eigenvalue (loss / param²)", ref=0.0),
        Panel("Hessian trace", keys=[("hessian_trace_estimate", "tr H (estimate)")],
              ylabel="tr H (loss / param²)", band=("hessian_trace_estimate", "hessian_trace_std_error", 2.0)),
        Panel("Negative curvature", keys=[("negative_count", ""), ("min_eigenvalue", "")],
              draw=_draw_negative),
    ]
    return _plot(hist, panels, "eigenvalue_evolution", "Hessian eigenvalue evolution",
                 "no Hessian eigenvalue data in this history", save_path, model_name, formats, dpi)


def plot_complexity_metrics(hessian_history: Mapping, save_path: Optional[PathLike] = None,
                            model_name: str = "model", *, formats: FormatsLike = ("png",),
                            dpi: int = DPI) -> Figure:
    """Complexity of the spectrum over training (``HessianMetrics`` of the top-k eigenvalues).

    Panels: condition number ``max|λ| / min|λ|`` (log), effective ranks (``effective_rank_95``: the
    number of eigenvalues holding 95% of ``Σ|λ|``; ``effective_rank_entropy = exp(H(p))``,
    ``p_i = |λ_i| / Σ|λ|``), ``complexity_score = tr H / effective_rank_entropy``, the decay rate of the
    sorted magnitudes, and the spread (std, skewness) of the eigenvalues.

    Args:
        hessian_history: ``{step: results["hessian"]}`` or ``{step: results}``.
        save_path: directory for ``{model_name}_complexity_metrics.png`` (None: do not write).
        model_name: used in the title and the file name.
    """
    hist = section(hessian_history, "hessian")
    panels = [
        Panel("Condition number", keys=[("condition_number", "max|λ| / min|λ| (top-k)")],
              ylabel="max|λᵢ| / min|λᵢ| over the top-k (ratio)"),
        Panel("Effective rank", keys=[("effective_rank_95", "95% of Σ|λ|"),
                                      ("effective_rank_entropy", "entropy exp(H(p))")],
              context=[("num_eigenvalues", "k (eigenvalues computed: the ceiling)")],
              ylabel="effective rank (eigenvalues)",
              styles={"num_eigenvalues": dict(color="0.45", ls=":", marker="", lw=1.4)}),
        Panel("Complexity score", keys=[("complexity_score", "tr H / entropy rank")],
              ylabel="complexity score (loss / param²)"),
        Panel("Eigenvalue decay", keys=[("eigenvalue_decay_rate", "decay rate of sorted |λ|")],
              ylabel="decay rate (log-units / rank)"),
        Panel("Eigenvalue spread", keys=[("eigenvalue_std", "std of the top-k λ")],
              ylabel="standard deviation (loss / param²)"),
        Panel("Eigenvalue skewness", keys=[("eigenvalue_skew", "skewness of the top-k λ")],
              ylabel="skewness (dimensionless)", ref=0.0),
    ]
    return _plot(hist, panels, "complexity_metrics", "Hessian complexity metrics",
                 "no complexity metrics in this history", save_path, model_name, formats, dpi, **_SIX_PANELS)


def plot_gradient_alignment(alignment_history: Mapping, save_path: Optional[PathLike] = None,
                            model_name: str = "model", *, formats: FormatsLike = ("png",),
                            dpi: int = DPI) -> Figure:
    """Gradient–curvature alignment over training.

    Panels: ``grad_Hg_alignment = |cos∠(g, Hg)|`` and the eigenvalue-weighted alignment
    ``Σ_i w_i |cos∠(g, v_i)|`` (``w_i = |λ_i| / Σ|λ|``); the curvature seen by the gradient, the Rayleigh
    quotient ``gᵀHg / gᵀg`` (``rayleigh_quotient``) and ``‖Hg‖ / ‖g‖`` (``grad_Hg_ratio``); the fraction
    of ``‖g‖²`` in the top-k eigenspace (``top_k_gradient_fraction`` or ``top_subspace_fraction``);
    and ``|cos∠(g, v_i)|`` per top eigenvector (``eigenvector_alignments``, colour = rank).
    """
    hist = section(alignment_history, "alignment")
    panels = [
        Panel("Alignment of g and Hg", keys=[("grad_Hg_alignment", "|cos∠(g, Hg)|"),
                                             ("weighted_alignment", "Σ wᵢ |cos∠(g, vᵢ)|")],
              ylabel="alignment (|cosine|)", ref=0.0),
        Panel("Curvature seen by the gradient", keys=[("rayleigh_quotient", "gᵀHg / gᵀg"),
                                                      ("grad_Hg_ratio", "‖Hg‖ / ‖g‖")],
              ylabel="curvature (loss / param²)", ref=0.0),
        Panel("Gradient in the top-k eigenspace",
              keys=[("top_k_gradient_fraction|top_subspace_fraction", "‖P_k g‖² / ‖g‖²")],
              ylabel="fraction of ‖g‖²", ylim=(-0.02, 1.02)),
        Panel("Gradient vs each top eigenvector", keys=[("eigenvector_alignments", "")],
              draw=rank_lines("eigenvector_alignments", "|cos∠(g, vᵢ)|", "v₁ (top eigenvector)",
                              ylim=(-0.02, 1.02))),
    ]
    return _plot(hist, panels, "gradient_alignment", "gradient–Hessian alignment",
                 "no gradient-alignment data in this history", save_path, model_name, formats, dpi)


def plot_memorization_metrics(memorization_history: Mapping, save_path: Optional[PathLike] = None,
                              model_name: str = "model", *, formats: FormatsLike = ("png",),
                              dpi: int = DPI) -> Figure:
    """Train/validation landscape divergence over training (memorization signals).

    Panels: the divergence score; ``trace_ratio = tr H_train / tr H_val`` (log axis, reference line at
    1: equal curvature); the overlaps of the eigenvalue distributions and of the top eigenspaces (both
    in [0, 1]; 1 = identical).
    """
    hist = section(memorization_history, "train_val_divergence")
    panels = [
        Panel("Landscape divergence score", keys=[("train_val_landscape_divergence_score", "divergence")],
              ylabel="divergence score (dimensionless)"),
        Panel("Ratios train / validation", keys=[("trace_ratio", "tr H_train / tr H_val"),
                                                 ("max_eigenvalue_ratio", "λ_max train / val")],
              ylabel="ratio", ref=1.0, ref_label="equal curvature"),
        Panel("Curvature on train and validation data",
              keys=[("train_max_eigenvalue", "λ_max train"), ("val_max_eigenvalue", "λ_max validation"),
                    ("train_trace", "tr H train"), ("val_trace", "tr H validation")],
              ylabel="curvature (loss / param²)",
              # colour = quantity, line style = data set (solid: training, dashed: validation)
              styles={"train_max_eigenvalue": dict(color="#1f77b4", ls="-", marker="o"),
                      "val_max_eigenvalue": dict(color="#1f77b4", ls="--", marker="s", mfc="white"),
                      "train_trace": dict(color="#2ca02c", ls="-", marker="o"),
                      "val_trace": dict(color="#2ca02c", ls="--", marker="s", mfc="white")}),
        Panel("Spectral overlap", keys=[("eigenvalue_distribution_overlap", "eigenvalue distributions"),
                                        ("eigenspace_overlap", "top eigenspaces")],
              ylabel="overlap (0 = disjoint, 1 = identical)", ylim=(-0.02, 1.02)),
    ]
    return _plot(hist, panels, "memorization_metrics", "train/validation landscape divergence",
                 "no train/validation divergence data in this history", save_path, model_name, formats, dpi)


def plot_sharpness(sharpness_history: Mapping, save_path: Optional[PathLike] = None,
                   model_name: str = "model", *, formats: FormatsLike = ("png",), dpi: int = DPI) -> Figure:
    """Sharpness over training: ``max_sharpness``, ``mean_sharpness`` and the spectral norm ``‖H‖₂``."""
    hist = section(sharpness_history, "sharpness")
    panels = [
        Panel("Sharpness", keys=[("max_sharpness", "max sharpness λ_max"),
                                 ("spectral_norm", "spectral norm ‖H‖₂"),
                                 ("top_k_mean_sharpness", "mean of the top-k eigenvalues"),
                                 ("mean_sharpness", "mean sharpness tr H / n")],
              ylabel="sharpness (loss / param²)", band=("mean_sharpness", "mean_sharpness_std_error", 2.0)),
    ]
    return _plot(hist, panels, "sharpness", "sharpness",
                 "no sharpness data in this history", save_path, model_name, formats, dpi, **_ONE_PANEL)


def plot_training_curves(training_history: Mapping, save_path: Optional[PathLike] = None,
                         model_name: str = "model", *, formats: FormatsLike = ("png",),
                         dpi: int = DPI) -> Figure:
    """Loss and accuracy over training, to read the curvature figures against.

    Args:
        training_history: ``{step: {"train_loss", "val_loss", "train_accuracy", "val_accuracy"}}`` (any
            subset of the keys).
    """
    hist = section(training_history, "training")
    panels = [
        Panel("Loss", keys=[("train_loss", "training"), ("val_loss", "validation")], ylabel="loss"),
        Panel("Accuracy", keys=[("train_accuracy", "training"), ("val_accuracy", "validation")],
              ylabel="accuracy (fraction correct)", ylim=(-0.02, 1.02)),
    ]
    return _plot(hist, panels, "training_curves", "training curves",
                 "no training metrics given", save_path, model_name, formats, dpi)
