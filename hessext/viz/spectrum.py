"""The spectrum at one point of training: the top-k Ritz values with their error bars, and the spectral
density from stochastic Lanczos quadrature (one step, or several overlaid)."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ._figure import DPI, Figure, FormatsLike, PathLike, new_figure, write_figure
from ._legends import guide
from ._style import apply_scale, empty_axes, finite, format_value, get_field, ordered_steps, to_array

__all__ = ["plot_spectral_density", "plot_density_series", "plot_top_spectrum", "density_items"]

_X_LABEL = "eigenvalue λ (loss / param²)"
_Y_LABEL = "density φ(λ) (1 / eigenvalue unit)"


# ============================================================================ spectral density
def density_arrays(density: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grid, density, Ritz nodes)`` of a ``DensityResult``, a dict with those keys, or a pair
    ``(grid, density)`` (no nodes)."""
    if isinstance(density, (tuple, list)) and len(density) == 2:
        return to_array(density[0]), to_array(density[1]), np.zeros(0)
    return (to_array(get_field(density, "grid")), to_array(get_field(density, "density")),
            to_array(get_field(density, "nodes")))


def density_items(density: Any) -> list[tuple[Any, Any]]:
    """``[(step, density)]``: one density (step None), or the entries of ``{step: density}`` in step order."""
    if isinstance(density, Mapping) and "grid" not in density and "density" not in density:
        keys, _, _ = ordered_steps(density)
        return [(k, density[k]) for k in keys]
    return [(None, density)]


def _density_axes(ax: Any) -> None:
    guide(ax.axvline(0.0, color="0.4", lw=1, ls="--"))
    ax.set_xlabel(_X_LABEL)
    ax.set_ylabel(_Y_LABEL)
    ax.grid(True, alpha=0.3)


def plot_spectral_density(density: Any, save_path: Optional[PathLike] = None, model_name: str = "model", *,
                          step: Any = None, floor: float = 1e-8, formats: FormatsLike = ("png",),
                          dpi: int = DPI) -> Figure:
    """Spectral density of the Hessian from stochastic Lanczos quadrature, density on a log axis.

    ``φ(λ) ≈ (1/p) Σ_probes Σ_j w_j 𝒩(λ; θ_j, σ²)`` (Ghorbani et al. 2019): a smoothed eigenvalue
    histogram normalised to integrate to 1. The log axis shows both the bulk near zero and the outliers;
    densities below ``floor · max φ`` are clipped. The Ritz nodes ``θ_j`` are marked along the bottom.

    Args:
        density: a ``DensityResult`` (``grid``, ``density``, ``nodes``, ``weights``), a dict with those
            keys, or a pair ``(grid, density)``.
        step: optional training step shown in the title.
    """
    grid, dens, nodes = density_arrays(density)
    title = f"{model_name}: Hessian spectral density" + (f" (step {step})" if step is not None else "")
    fig = new_figure((8.5, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    if not (grid.size > 1 and dens.size == grid.size and finite(dens).size > 0):
        empty_axes(ax, "no spectral density data")
    else:
        top = float(np.nanmax(dens))
        lo = max(top * floor, np.finfo(float).tiny)
        shown = np.clip(dens, lo, None)
        ax.fill_between(grid, lo, shown, color="#1f77b4", alpha=0.25, lw=0)
        ax.plot(grid, shown, color="#1f77b4", lw=1.6, label="density φ(λ) (SLQ)")
        ax.set_yscale("log")
        ax.set_ylim(lo, top * 3)
        if nodes.size:
            nodes = nodes[np.isfinite(nodes)]
            ax.plot(nodes, np.full(nodes.size, lo * 1.6), "|", color="#d62728", ms=9, alpha=0.6,
                    label="Ritz nodes θⱼ")
        _density_axes(ax)
        ax.legend(loc="best", fontsize=9, framealpha=0.85)
    ax.set_title(title, fontsize=12, fontweight="bold")
    write_figure(fig, save_path, model_name, "spectral_density", formats, dpi)
    return fig


def plot_density_series(items: Sequence[tuple[Any, Any]], save_path: Optional[PathLike] = None,
                        model_name: str = "model", *, formats: FormatsLike = ("png",),
                        dpi: int = DPI) -> Figure:
    """Several spectral densities ``[(step, density)]`` (:func:`density_items`) overlaid, colour = training
    time, density on a log axis (clipped 10⁻⁸ below the highest peak)."""
    import matplotlib

    fig = new_figure((8.5, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["plasma"]
    top = 0.0
    curves = []
    for i, (label, d) in enumerate(items):
        g, dens, _ = density_arrays(d)
        if g.size > 1 and dens.size == g.size and finite(dens).size:
            curves.append((label, g, dens, cmap(0.1 + 0.8 * i / max(len(items) - 1, 1))))
            top = max(top, float(np.nanmax(dens)))
    if not curves:
        empty_axes(ax, "no spectral density data")
    else:
        lo = top * 1e-8
        for label, g, dens, c in curves:
            ax.plot(g, np.clip(dens, lo, None), color=c, lw=1.4, label=f"step {label}")
        ax.set_yscale("log")
        ax.set_ylim(lo, top * 3)
        _density_axes(ax)
        ax.legend(loc="best", fontsize=8, framealpha=0.85, ncols=1 + len(curves) // 8)
    ax.set_title(f"{model_name}: Hessian spectral density over training", fontsize=12, fontweight="bold")
    write_figure(fig, save_path, model_name, "spectral_density", formats, dpi)
    return fig


# ============================================================================ top-k Ritz values
def eigen_arrays(eigen: Any, residuals: Any) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The finite eigenvalues of ``eigen`` (an ``EigenResult``, a results dict, or numbers) and their
    residual norms ``|r|`` (None when unknown); ``residuals`` overrides those ``eigen`` carries."""
    if isinstance(eigen, Mapping):
        if "hessian" in eigen and isinstance(eigen["hessian"], Mapping):
            eigen = eigen["hessian"]
        vals = to_array(eigen.get("top_eigenvalues", eigen.get("eigenvalues")))
        res = eigen.get("residuals") if residuals is None else residuals
    elif hasattr(eigen, "eigenvalues"):
        vals = to_array(eigen.eigenvalues)
        res = getattr(eigen, "residuals", None) if residuals is None else residuals
    else:
        vals = to_array(eigen)
        res = residuals
    res_arr = to_array(res) if res is not None else None
    if res_arr is not None and res_arr.size != vals.size:
        raise ValueError(f"residuals must have one entry per eigenvalue ({vals.size}), got {res_arr.size}")
    keep = np.isfinite(vals)
    return vals[keep], (np.abs(res_arr[keep]) if res_arr is not None else None)


def _residual_label(ax: Any, vals: np.ndarray, res: np.ndarray) -> str:
    """The error bars' legend entry; it says so when every bar is shorter than ~1% of the axis (then they
    hide behind the markers)."""
    lo_y, hi_y = ax.get_ylim()
    tr = ax.yaxis.get_transform()
    t = tr.transform(np.column_stack([vals - res, vals + res]).reshape(-1, 1)).reshape(-1, 2)
    t_ax = tr.transform(np.array([[lo_y], [hi_y]])).ravel()
    tiny = bool(np.all(np.abs(t[:, 1] - t[:, 0]) < 0.01 * abs(t_ax[1] - t_ax[0])))
    return (f"± Ritz residual ‖Hv − θv‖ (max {format_value(np.nanmax(res), 3)}"
            + ("; bars smaller than the markers)" if tiny else ")"))


def _draw_ritz(ax: Any, vals: np.ndarray, res: Optional[np.ndarray]) -> None:
    """Ritz values by rank (largest first), blue ≥ 0 and red < 0, with their residual error bars."""
    order = np.argsort(vals)[::-1]
    vals = vals[order]
    res = res[order] if res is not None else None
    ranks = np.arange(1, vals.size + 1)
    eb = None
    if res is not None:
        eb = ax.errorbar(ranks, vals, yerr=res, fmt="none", ecolor="0.2", elinewidth=1.2, capsize=4,
                         label="± Ritz residual ‖Hv − θv‖")
    ax.scatter(ranks, vals, c=list(np.where(vals >= 0, "#1f77b4", "#d62728")), s=36, zorder=3,
               label="Ritz value θᵢ")
    ax.plot(ranks, vals, color="0.6", lw=0.8, zorder=2)
    apply_scale(ax, list(vals) + (list(vals + res) + list(vals - res) if res is not None else []), "y")
    if np.any(vals < 0):
        guide(ax.axhline(0.0, color="0.4", lw=1, ls="--"))
    ax.set_xlabel("rank i (1 = largest)")
    ax.set_ylabel("eigenvalue θᵢ (loss / param²)")
    ax.set_xticks(ranks if ranks.size <= 25 else ranks[:: max(1, ranks.size // 20)])
    ax.grid(True, alpha=0.3)
    if res is not None and res.size and eb is not None:
        eb.set_label(_residual_label(ax, vals, res))
    ax.legend(loc="best", fontsize=9, framealpha=0.85)


def plot_top_spectrum(eigen: Any, save_path: Optional[PathLike] = None, model_name: str = "model", *,
                      residuals: Any = None, step: Any = None, formats: FormatsLike = ("png",),
                      dpi: int = DPI) -> Figure:
    """The top-k Ritz values with error bars ``±‖H v − θ v‖`` (Ritz residual norms).

    For a symmetric ``H`` each Ritz value ``θ`` has an eigenvalue within ``‖H v − θ v‖`` (``v`` unit),
    so the bars bound the error of each point.

    Args:
        eigen: an ``EigenResult`` (eigenvalues ascending, residuals), a dict of results (its
            ``top_eigenvalues``), or a sequence of eigenvalues (any order).
        residuals: residual norms matching ``eigen`` when it is a plain sequence.
        step: optional training step shown in the title.
    """
    vals, res = eigen_arrays(eigen, residuals)
    title = f"{model_name}: top-{vals.size} Hessian eigenvalues" + \
        (f" (step {step})" if step is not None else "")
    fig = new_figure((8.0, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    if vals.size == 0:
        empty_axes(ax, "no eigenvalues")
    else:
        _draw_ritz(ax, vals, res)
    ax.set_title(title, fontsize=12, fontweight="bold")
    write_figure(fig, save_path, model_name, "top_spectrum", formats, dpi)
    return fig
