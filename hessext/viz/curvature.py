"""The curvature family's figures: the spectral densities of H, G and E = H − G on one log-scale plot
(outliers and bulk, Papyan 2019/2020; Sagun et al. 2017), the densities of the diagonal Hessian blocks as
small multiples, and the Jensen–Shannon distance heat-map between blocks (Zhang et al. 2024).

They draw results and dicts and compute nothing: densities are ``DensityResult``-like (``grid``, ``density``
and optionally ``nodes``; a dict with those keys; or a pair ``(grid, density)``), blockwise results are a
``BlockSpectraResult`` of :mod:`hessext.analysis.blocks`, its ``to_dict()``, or plain dicts.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .._checks import ArgumentTypeError
from ._figure import DPI, Figure, FormatsLike, PathLike, new_figure, write_figure
from ._legends import guide
from ._style import (
    component_color,
    empty_axes,
    finite,
    format_value,
    get_field,
    linthresh,
    to_array,
    to_float,
)
from .spectrum import density_arrays

__all__ = ["CURVATURE_COLORS", "curvature_color", "plot_curvature_densities", "plot_block_densities",
           "plot_block_js_heatmap"]

#: Fixed colours of the curvature matrices: H black, G blue, E red, Fisher green (by name or symbol).
CURVATURE_COLORS: dict[str, str] = {
    "H": "#000000", "hessian": "#000000",
    "G": "#1f77b4", "ggn": "#1f77b4", "gauss_newton": "#1f77b4", "gauss-newton": "#1f77b4",
    "E": "#d62728", "residual": "#d62728", "H-G": "#d62728", "H - G": "#d62728",
    "F": "#2ca02c", "fisher": "#2ca02c", "empirical_fisher": "#8c564b", "mc_fisher": "#2ca02c",
}
_LABELS = {"H": "H (Hessian)", "hessian": "H (Hessian)", "G": "G (Gauss–Newton)", "ggn": "G (Gauss–Newton)",
           "E": "E = H − G (residual)", "residual": "E = H − G (residual)"}
#: Largest Jensen–Shannon distance with the natural logarithm: √ln 2.
_JS_MAX = math.sqrt(math.log(2.0))


def curvature_color(name: str) -> str:
    """The fixed colour of a curvature matrix (``CURVATURE_COLORS``, case-insensitive for the names), else the
    component colour of ``name``."""
    for key in (name, str(name).lower()):
        if key in CURVATURE_COLORS:
            return CURVATURE_COLORS[key]
    return component_color(name)


def _curve(density: Any) -> Optional[tuple[np.ndarray, np.ndarray]]:
    grid, dens, _ = density_arrays(density)
    if grid.size > 1 and dens.size == grid.size and finite(dens).size and float(np.nanmax(dens)) > 0:
        return grid, dens
    return None


# ============================================================================ H, G, E
def plot_curvature_densities(densities: Mapping[str, Any], save_path: Optional[PathLike] = None,
                             model_name: str = "model", *,
                             top_eigenvalues: Optional[Mapping[str, Any]] = None, floor: float = 1e-8,
                             xscale: str = "linear", formats: FormatsLike = ("png",),
                             dpi: int = DPI) -> Figure:
    """Spectral densities of several curvature matrices (H, G, E = H − G, a Fisher) on one plot, density on a
    log axis: the outliers of H sit where those of G are, the bulk and the negative part come from E.

    Args:
        densities: name → density (``DensityResult``, dict with ``grid``/``density``, or ``(grid, density)``);
            the names ``"H"``/``"hessian"``, ``"G"``/``"ggn"``, ``"E"``/``"residual"`` get their fixed colours
            and long labels.
        top_eigenvalues: optional name → top eigenvalues (a list, or an ``EigenResult``-like object with
            ``eigenvalues``), marked as triangles along the top of the axes in the curve's colour.
        floor: densities below ``floor · max`` are clipped (log axis).
        xscale: ``"linear"`` (default) or ``"symlog"`` for the eigenvalue axis.
    """
    if not isinstance(densities, Mapping):
        raise ArgumentTypeError(f"densities must be a dict name -> density, got {type(densities).__name__}")
    if xscale not in ("linear", "symlog"):
        raise ValueError(f"xscale must be 'linear' or 'symlog', got {xscale!r}")
    curves = {str(k): c for k, v in densities.items() if (c := _curve(v)) is not None}
    fig = new_figure((8.5, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    if not curves:
        empty_axes(ax, "no spectral density data")
    else:
        top = max(float(np.nanmax(d)) for _, d in curves.values())
        lo = max(top * floor, np.finfo(float).tiny)
        for name, (g, d) in curves.items():   # H wider and below, so that G and E drawn over it show
            wide = name in ("H", "hessian")
            ax.plot(g, np.clip(d, lo, None), color=curvature_color(name), lw=3.0 if wide else 1.5,
                    alpha=0.55 if wide else 1.0, zorder=1.5 if wide else 2.0, label=_LABELS.get(name, name))
        ax.set_yscale("log")
        ax.set_ylim(lo, top * 30)
        if xscale == "symlog":
            ax.set_xscale("symlog", linthresh=linthresh(np.concatenate([g for g, _ in curves.values()])))
        _mark_tops(ax, curves, top_eigenvalues, top * 8)
        guide(ax.axvline(0.0, color="0.4", lw=1, ls="--"))
        ax.set_xlabel("eigenvalue λ (loss / param²)")
        ax.set_ylabel("density φ(λ) (log scale)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=9, framealpha=0.85)
    ax.set_title(f"{model_name}: spectral densities of the curvature matrices", fontsize=12,
                 fontweight="bold")
    write_figure(fig, save_path, model_name, "curvature_densities", formats, dpi)
    return fig


def _mark_tops(ax: Any, curves: Mapping[str, Any], tops: Optional[Mapping[str, Any]], y: float) -> None:
    """Triangles at the top eigenvalues of each matrix (a list, or an object/dict with ``eigenvalues``)."""
    for name, vals in (tops or {}).items():
        ev = get_field(vals, "eigenvalues") if not isinstance(vals, (list, tuple, np.ndarray)) else None
        arr = to_array(vals if ev is None else ev)
        arr = arr[np.isfinite(arr)]
        if arr.size:
            ax.plot(arr, np.full(arr.size, y), "v", color=curvature_color(str(name)), ms=6, alpha=0.8,
                    label=f"top eigenvalues of {name}")


# ============================================================================ blocks: small multiples
def _block_items(result: Any, normalized: bool) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                                         dict[str, float], dict[str, int]]:
    """name → (grid, density), top eigenvalues and sizes from a BlockSpectraResult, its ``to_dict()`` or a
    dict name → density."""
    tops = get_field(result, "top_eigenvalues") or {}
    sizes = get_field(result, "sizes") or {}
    items: dict[str, Any]
    if normalized and get_field(result, "grid") is not None and get_field(result, "densities") is not None:
        grid = to_array(get_field(result, "grid"))
        items = {k: (grid, v) for k, v in get_field(result, "densities").items()}
    elif get_field(result, "raw") is not None and not normalized:
        items = dict(get_field(result, "raw"))
    elif isinstance(result, Mapping) and not any(k in result for k in ("grid", "densities", "raw")):
        items = dict(result)
    else:
        items = {}
    curves = {str(k): c for k, v in items.items() if (c := _curve(v)) is not None}
    return curves, {str(k): to_float(v) for k, v in dict(tops).items()}, {str(k): v for k, v in sizes.items()}


def plot_block_densities(result: Any, save_path: Optional[PathLike] = None, model_name: str = "model", *,
                         normalized: bool = True, ncols: Optional[int] = None, floor: float = 1e-6,
                         formats: FormatsLike = ("png",), dpi: int = DPI) -> Figure:
    """The spectral density of every diagonal Hessian block as small multiples (one panel per block, density
    on a log axis, each block in its component colour).

    ``normalized=True`` (default) draws the densities over ``t = λ / |λ_top|`` of each block on the common
    grid with a shared x axis (Zhang et al. 2024 compare these shapes); ``False`` draws the raw densities over
    λ, each on its own axis. Panel titles give the block, its size and its top eigenvalue estimate.

    Args:
        result: a ``BlockSpectraResult``, its ``to_dict()``, or a dict name → density-like.
        ncols: panels per row (default up to 4).
        floor: densities below ``floor · max`` of the panel are clipped.
    """
    curves, tops, sizes = _block_items(result, normalized)
    K = len(curves)
    cols = min(K, 4) if ncols is None else max(1, int(ncols))
    rows = max(1, math.ceil(K / max(cols, 1)))
    fig = new_figure((min(3.2 * max(cols, 1) + 0.8, 16.0), 2.5 * rows + 0.9))
    if not curves:
        empty_axes(fig.add_subplot(1, 1, 1), "no block densities")
    else:
        axes = fig.subplots(rows, cols, sharex=normalized, squeeze=False).reshape(-1)
        for ax, (name, (g, d)) in zip(axes, curves.items()):
            lo = float(np.nanmax(d)) * floor
            shown = np.clip(d, lo, None)
            color = component_color(name)
            ax.fill_between(g, lo, shown, color=color, alpha=0.25, lw=0)
            ax.plot(g, shown, color=color, lw=1.3)
            ax.set_yscale("log")
            guide(ax.axvline(0.0, color="0.5", lw=0.8, ls="--"))
            title = name if name not in sizes else f"{name} (n={int(sizes[name])})"
            if math.isfinite(tops.get(name, float("nan"))):
                title += f"\nλ_top ≈ {format_value(tops[name], 3)}"
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(True, alpha=0.3)
        for ax in axes[K:]:
            ax.set_axis_off()
        fig.supxlabel("λ / |λ_top| of the block" if normalized else "eigenvalue λ (loss / param²)")
        fig.supylabel("density (log scale)")
    kind = "normalised by each block's top |eigenvalue|" if normalized else "raw"
    fig.suptitle(f"{model_name}: spectral densities of the Hessian blocks ({kind})", fontsize=12,
                 fontweight="bold")
    write_figure(fig, save_path, model_name, "block_densities", formats, dpi)
    return fig


# ============================================================================ JS heat-map
def _js_inputs(result: Any, names: Optional[Sequence[str]]) -> tuple[list[str], np.ndarray, float]:
    """(labels, matrix, mean over pairs) from a result, a dict or a bare matrix."""
    bare = isinstance(result, (np.ndarray, list, tuple)) or hasattr(result, "detach")
    matrix = result if bare else get_field(result, "js_matrix")
    if matrix is None:
        return [], np.zeros((0, 0)), float("nan")
    D = np.asarray(matrix.detach().cpu().double().numpy() if hasattr(matrix, "detach") else matrix, float)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"the JS matrix must be square [K, K], got shape {list(D.shape)}")
    labels = list(names) if names is not None else ([] if bare else list(get_field(result, "names") or []))
    labels = labels or [str(i) for i in range(D.shape[0])]
    if len(labels) != D.shape[0]:
        raise ValueError(f"names must have one entry per row of the JS matrix ({D.shape[0]}), got "
                         f"{len(labels)}")
    mean = float("nan") if bare else to_float(get_field(result, "mean_js"))
    if not math.isfinite(mean) and D.shape[0] > 1:
        mean = float(D[np.triu_indices(D.shape[0], 1)].mean())
    return [str(s) for s in labels], D, mean


def plot_block_js_heatmap(result: Any, save_path: Optional[PathLike] = None, model_name: str = "model", *,
                          names: Optional[Sequence[str]] = None, annotate: Optional[bool] = None,
                          formats: FormatsLike = ("png",), dpi: int = DPI) -> Figure:
    """The Jensen–Shannon distances between the normalised block densities as a heat-map, with the block
    names and (up to 20 blocks, or when ``annotate``) the values in the cells; the colour scale runs from 0
    (identical densities) to √ln 2 ≈ 0.833 (disjoint supports), the title gives the mean over pairs.

    Args:
        result: a ``BlockSpectraResult``, its ``to_dict()``, a dict with ``js_matrix`` (and ``names``,
            ``mean_js``), or the ``[K, K]`` matrix itself (then ``names`` labels it).
        names: block names (override those of ``result``).
        annotate: write the values into the cells (default: when K ≤ 20).
    """
    labels, D, mean = _js_inputs(result, names)
    K = D.shape[0]
    side = min(4.0 + 0.55 * K, 16.0)
    fig = new_figure((side + 1.6, side))
    ax = fig.add_subplot(1, 1, 1)
    if K == 0:
        empty_axes(ax, "no JS distances")
    else:
        im = ax.imshow(D, cmap="viridis", vmin=0.0, vmax=_JS_MAX, interpolation="nearest")
        ax.set_xticks(range(K))
        ax.set_yticks(range(K))
        ax.set_xticklabels(labels, rotation=45 if max(len(s) for s in labels) > 3 else 0, ha="right",
                           fontsize=8 if K > 10 else 9)
        ax.set_yticklabels(labels, fontsize=8 if K > 10 else 9)
        if annotate if annotate is not None else K <= 20:
            for i in range(K):
                for j in range(K):
                    v = D[i, j]
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7 if K > 10 else 8,
                            color="black" if v > 0.55 * _JS_MAX else "white")
        cb = fig.colorbar(im, ax=ax, shrink=0.85)
        cb.set_label("Jensen–Shannon distance (natural log; max √ln 2 ≈ 0.833)")
    title = f"{model_name}: JS distance between block spectra"
    if math.isfinite(mean):
        title += f"\nmean over pairs {mean:.3f}"
    ax.set_title(title, fontsize=12, fontweight="bold")
    write_figure(fig, save_path, model_name, "block_js_distance", formats, dpi)
    return fig
