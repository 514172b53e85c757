"""Loss landscapes (results of :mod:`hessext.landscape`): the loss along one direction with its quadratic
model, and the loss on a plane as filled contours."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._figure import DPI, Figure, FormatsLike, PathLike, new_figure, write_figure
from ._style import LOG_SPAN, empty_axes, finite, format_value, get_field, marker, to_array, to_float

__all__ = ["plot_loss_landscape_1d", "plot_loss_landscape_2d"]


def _quadratic_model(ax: Any, landscape: Any, alphas: np.ndarray, losses: np.ndarray, symbol: str) -> None:
    """The second-order Taylor model ``L + α gᵀd + ½ α² dᵀHd`` when the result carries the curvature (the
    y range stays that of the measured loss)."""
    base = to_float(get_field(landscape, "base_loss"))
    slope = to_float(get_field(landscape, "slope"))
    curv = to_float(get_field(landscape, "curvature"))
    if not (np.isfinite(base) and np.isfinite(curv)):
        return
    s = slope if np.isfinite(slope) else 0.0
    fine = np.linspace(alphas.min(), alphas.max(), 200)
    quad = base + s * fine + 0.5 * curv * fine ** 2
    ax.plot(fine, quad, color="#d62728", lw=1.3, ls="--",
            label=f"quadratic model L + α·gᵀ{symbol} + ½α²·{symbol}ᵀH{symbol} "
                  f"({symbol}ᵀH{symbol} = {format_value(curv, 3)})")
    lo, hi = np.nanmin(losses), np.nanmax(losses)
    pad = 0.15 * (hi - lo if hi > lo else 1.0)
    ax.set_ylim(lo - pad, hi + pad)


def plot_loss_landscape_1d(landscape: Any, save_path: Optional[PathLike] = None, model_name: str = "model", *,
                           step: Any = None, formats: FormatsLike = ("png",), dpi: int = DPI) -> Figure:
    """Loss along one direction ``L(θ + α d)`` (``hessext.landscape.loss_landscape_1d``).

    Also draws the second-order Taylor model ``L(θ) + α gᵀd + ½ α² dᵀHd`` when the result carries the
    slope and the curvature: along the top eigenvector ``dᵀHd = λ_max``, and the gap between the curves
    shows where the quadratic picture stops holding.
    """
    alphas = to_array(get_field(landscape, "alphas"))
    losses = to_array(get_field(landscape, "losses"))
    label = get_field(landscape, "label") or "d"
    symbol = str(label).split(" (")[0]
    fig = new_figure((7.8, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    title = f"{model_name}: loss along {label}" + (f" (step {step})" if step is not None else "")
    if alphas.size < 2 or losses.size != alphas.size:
        empty_axes(ax, "no loss-landscape data")
    else:
        ax.plot(alphas, losses, color="#1f77b4", lw=2, marker=marker(alphas.size), ms=3.5,
                label=f"loss L(θ + α·{symbol})")
        _quadratic_model(ax, landscape, alphas, losses, symbol)
        base = to_float(get_field(landscape, "base_loss"))
        if np.isfinite(base):
            ax.plot([0.0], [base], "o", color="k", ms=6, zorder=4, label="current parameters θ")
        ax.set_xlabel(f"α: distance along {label} (parameter-space units)")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=9, framealpha=0.85)
    ax.set_title(title, fontsize=12, fontweight="bold")
    write_figure(fig, save_path, model_name, "loss_landscape_1d", formats, dpi)
    return fig


def _aspect_ok(a: np.ndarray, b: np.ndarray) -> bool:
    ra, rb = np.ptp(a), np.ptp(b)
    return ra > 0 and rb > 0 and 0.5 <= ra / rb <= 2.0


def _contours(fig: Figure, ax: Any, alphas: np.ndarray, betas: np.ndarray, losses: np.ndarray,
              levels: int) -> None:
    """Filled contours of the loss (log colour scale when it spans more than ``LOG_SPAN``) and a colour
    bar."""
    import matplotlib.colors as mcolors
    from matplotlib.ticker import MaxNLocator

    A, B = np.meshgrid(alphas, betas, indexing="ij")
    Z = np.where(np.isfinite(losses), losses, np.nan)
    lo, hi = np.nanmin(Z), np.nanmax(Z)
    norm = None
    if lo > 0 and hi / lo > LOG_SPAN:
        norm = mcolors.LogNorm(vmin=lo, vmax=hi)
        lev = np.geomspace(lo, hi, levels)
    else:
        lev = MaxNLocator(levels).tick_values(lo, hi if hi > lo else lo + 1e-12)
    cs = ax.contourf(A, B, Z, levels=lev, cmap="viridis", norm=norm)
    ax.contour(A, B, Z, levels=lev[::2], colors="white", linewidths=0.5, alpha=0.6)
    cb = fig.colorbar(cs, ax=ax, shrink=0.85)
    cb.set_label("loss")


def plot_loss_landscape_2d(landscape: Any, save_path: Optional[PathLike] = None, model_name: str = "model", *,
                           step: Any = None, levels: int = 20, formats: FormatsLike = ("png",),
                           dpi: int = DPI) -> Figure:
    """Loss on the plane ``L(θ + α d₁ + β d₂)`` (``hessext.landscape.loss_landscape_2d``) as filled
    contours, with the current parameters marked at the origin (the legend below the axes: the contours
    fill them)."""
    alphas = to_array(get_field(landscape, "alphas"))
    betas = to_array(get_field(landscape, "betas"))
    losses = get_field(landscape, "losses")
    losses = np.asarray(losses.detach().cpu() if hasattr(losses, "detach") else losses, dtype=float) \
        if losses is not None else np.zeros((0, 0))
    labels = get_field(landscape, "labels") or ("d₁", "d₂")
    fig = new_figure((7.2, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    title = f"{model_name}: loss on the plane of {labels[0]}, {labels[1]}" + \
        (f" (step {step})" if step is not None else "")
    if alphas.size < 2 or betas.size < 2 or losses.shape != (alphas.size, betas.size) \
            or not finite(losses.ravel()).size:
        empty_axes(ax, "no 2-D loss-landscape data")
    else:
        _contours(fig, ax, alphas, betas, losses, levels)
        ax.plot([0], [0], marker="*", color="#d62728", ms=14, mec="white", label="current parameters θ")
        ax.set_xlabel(f"α along {labels[0]} (parameter-space units)")
        ax.set_ylabel(f"β along {labels[1]} (parameter-space units)")
        ax.set_aspect("equal" if _aspect_ok(alphas, betas) else "auto")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=9, frameon=False)
    ax.set_title(title, fontsize=12, fontweight="bold")
    write_figure(fig, save_path, model_name, "loss_landscape_2d", formats, dpi)
    return fig
