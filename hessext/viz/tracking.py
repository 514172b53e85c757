"""Curvature tracked over training (:class:`hessext.CurvatureTracker` records): one panel per tracked
quantity over steps with its stability threshold, and the matvecs each checkpoint's solves cost.

The input is the tracker's records (one dict per checkpoint, the JSON-lines format of
``hessext.analysis.tracking``) or the path of its JSON-lines file. This module reads that file with plain
:mod:`json` (viz is below analysis in the layer table and must not import it): blank lines and a torn last
line (a crash while appending) are skipped, as ``hessext.load_tracking`` does.

Thresholds are those stored in the records (``record["thresholds"][quantity]``): ``2/η`` for
``lambda_max``, ``top_k`` and ``batch_sharpness`` (gradient descent with step size η is stable along an
eigendirection of curvature λ iff ``λ < 2/η``), and ``(2 + 2β₁)/((1 − β₁)η)`` for the preconditioned
sharpness ``λ_max(P⁻¹H)`` of Adam (``38/η`` for β₁ = 0.9).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .._checks import ArgumentTypeError
from ._figure import DPI, Figure, FormatsLike, PathLike, new_figure, write_figure
from ._legends import guide
from ._style import apply_scale, empty_axes, finite, format_value, marker, set_step_axis

__all__ = ["plot_curvature_tracking", "read_tracking_records", "TRACKED_QUANTITIES"]

#: The tracker's quantities, in panel order, with their panel titles and axis labels.
TRACKED_QUANTITIES: dict[str, tuple[str, str]] = {
    "lambda_max": ("Sharpness λ_max(H)", "λ_max"),
    "top_k": ("Top-k eigenvalues of H", "λ_i"),
    "lambda_min": ("Smallest eigenvalue λ_min(H)", "λ_min"),
    "trace": ("Trace of H (Hutchinson)", "tr H"),
    "batch_sharpness": ("Batch sharpness E_B[g_BᵀH_Bg_B/‖g_B‖²]", "batch sharpness"),
    "grad_overlap": ("Gradient overlap with the top-k eigenspace", "‖P_k g‖² / ‖g‖²"),
    "preconditioned_sharpness": ("Preconditioned sharpness λ_max(P⁻¹H)", "λ_max(P⁻¹H)"),
}
_COLORS = {"lambda_max": "#1f77b4", "top_k": "#9467bd", "lambda_min": "#d62728", "trace": "#2ca02c",
           "batch_sharpness": "#ff7f0e", "grad_overlap": "#8c564b", "preconditioned_sharpness": "#17becf"}
#: The quantities solved by Lanczos (warm-started by the tracker; their ``cold_matvecs`` compare).
_LANCZOS = ("lambda_max", "lambda_min", "preconditioned_sharpness")
RecordsLike = Union[Sequence[Mapping[str, Any]], str, os.PathLike]


# ============================================================================ input
def read_tracking_records(records: RecordsLike) -> list[dict]:
    """The records as a list of dicts, sorted by step: ``records`` itself (a list of dicts) or the lines of
    the JSON-lines file at the path ``records`` (blank lines and an unparsable last line are skipped; an
    unparsable line elsewhere is a ``ValueError`` naming the file and the line)."""
    if isinstance(records, (str, os.PathLike)):
        with open(records, encoding="utf-8") as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if i == len(lines) - 1:  # torn by a crash while appending
                    break
                raise ValueError(f"records file {os.fspath(records)!r}: line {i + 1} is not JSON ({exc})") \
                    from None
    elif isinstance(records, Sequence) and all(isinstance(r, Mapping) for r in records):
        out = list(records)
    else:
        raise ArgumentTypeError(f"records must be a list of tracking record dicts or the path of a "
                                f"JSON-lines file, got {type(records).__name__} {records!r:.80}")
    good = [r for r in out if isinstance(r, Mapping) and _num(r.get("step")) is not None]
    return sorted(good, key=lambda r: float(r["step"]))


def _num(x: Any) -> Optional[float]:
    """``x`` as a finite float, else None (None, NaN, text, lists)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _get(r: Mapping, group: str, key: str) -> Any:
    g = r.get(group)
    return g.get(key) if isinstance(g, Mapping) else None


def _column(records: list, group: str, key: str) -> np.ndarray:
    """``record[group][key]`` over the records, NaN where missing or not a number."""
    vals = [_num(_get(r, group, key)) for r in records]
    return np.array([np.nan if v is None else v for v in vals], dtype=float)


def _present(records: list, quantities: Optional[Sequence[str]]) -> list[str]:
    """The quantities to draw: those asked for (checked against :data:`TRACKED_QUANTITIES`), else every
    one that some record has; only those with data."""
    if quantities is None:
        asked = list(TRACKED_QUANTITIES)
    else:
        if isinstance(quantities, str):
            quantities = (quantities,)
        asked = list(quantities)
        bad = [q for q in asked if q not in TRACKED_QUANTITIES]
        if bad:
            raise ValueError(f"quantities must be among {tuple(TRACKED_QUANTITIES)}, got {bad}")
    return [q for q in asked if any(_get(r, "quantities", q) is not None for r in records)]


# ============================================================================ panels
def _threshold_label(q: str, thr: float, lr: Optional[float]) -> str:
    """``2/η = 20`` or, for the preconditioned sharpness, ``38/η = 1.9e4`` (the numerator ``thr·η``)."""
    if lr:
        return f"{format_value(thr * lr, 3)}/η = {format_value(thr)}"
    return f"threshold = {format_value(thr)}"


def _draw_threshold(ax: Any, q: str, xs: np.ndarray, records: list) -> list[float]:
    """The stability threshold of ``q`` as a dashed guide line (a step line if the learning rate changed)."""
    thr = _column(records, "thresholds", q)
    if q == "top_k" and not finite(thr).size:
        thr = _column(records, "thresholds", "lambda_max")
    vals = finite(thr)
    if not vals.size:
        return []
    lrs = [_num(r.get("lr")) for r in records if _num(_get(r, "thresholds", q)) is not None]
    label = _threshold_label(q, float(vals[-1]), lrs[-1] if lrs else None)
    if np.allclose(vals, vals[0], rtol=1e-12, atol=0):
        guide(ax.axhline(float(vals[0]), color="0.3", lw=1.2, ls="--", label=label))
    else:
        guide(ax.plot(xs, thr, color="0.3", lw=1.2, ls="--", drawstyle="steps-post", label=label)[0])
    return vals.tolist()


def _draw_quantity(ax: Any, q: str, xs: np.ndarray, records: list) -> None:
    """One tracked quantity over steps: its line(s), the trace's ±1 standard-error band, its threshold."""
    title, ylabel = TRACKED_QUANTITIES[q]
    color, mk = _COLORS[q], marker(len(xs))
    every: list[float] = []
    if q == "top_k":
        rows = [np.atleast_1d(np.asarray(_get(r, "quantities", q) or [], dtype=float)) for r in records]
        k = max(row.size for row in rows)
        mat = np.full((len(records), k), np.nan)
        for i, row in enumerate(rows):
            mat[i, :row.size] = row
        for j in range(k):
            ax.plot(xs, mat[:, j], color=color, alpha=1.0 if j == 0 else max(0.25, 0.8 - 0.1 * j),
                    lw=2.0 if j == 0 else 1.0, marker=mk if j == 0 else "", ms=3.5,
                    label="λ_1" if j == 0 else ("λ_2 … λ_k" if j == 1 else None))
        every.extend(mat.ravel().tolist())
    else:
        ys = _column(records, "quantities", q)
        ax.plot(xs, ys, color=color, lw=1.8, marker=mk, ms=3.5, label=ylabel)
        every.extend(ys.tolist())
        if q == "trace":
            se = _column(records, "quantities", "trace_std_error")
            if finite(se).size:
                ax.fill_between(xs, ys - se, ys + se, color=color, alpha=0.25, lw=0,
                                label="± 1 standard error")
                every.extend((ys - se).tolist() + (ys + se).tolist())
    every.extend(_draw_threshold(ax, q, xs, records))
    scale = "linear" if q in ("grad_overlap", "lambda_min") else "auto"
    apply_scale(ax, every, "y", scale)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    set_step_axis(ax, xs, None)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)


def _draw_matvecs(ax: Any, shown: Sequence[str], xs: np.ndarray, records: list) -> bool:
    """Matvecs per checkpoint of the solves behind the shown quantities (``top_k`` and ``grad_overlap``
    reuse the ``lambda_max`` solve): the tracked solve as a solid line (warm-started where the records say
    so and the quantity is a Lanczos solve), the cold comparison solve (``cold_matvecs``, where present) as
    markers of the same colour. A series that is zero throughout (no products spent) is left out."""
    names = list(shown)
    if {"top_k", "grad_overlap"} & set(shown) and "lambda_max" not in names:
        names.insert(0, "lambda_max")
    warm_run = any(r.get("warm_start") for r in records)
    every: list[float] = []
    for q in names:
        warm, cold = _column(records, "matvecs", q), _column(records, "cold_matvecs", q)
        if np.any(finite(warm) != 0):
            kind = "warm start" if warm_run and q in _LANCZOS else "tracked"
            ax.plot(xs, warm, color=_COLORS[q], lw=1.6, ls="-", label=f"{q} ({kind})")
            every.extend(warm.tolist())
        if finite(cold).size:
            ax.plot(xs, cold, color=_COLORS[q], ls="none", marker="x", ms=6, mew=1.5, label=f"{q} (cold)")
            every.extend(cold.tolist())
    if not every:
        return False
    apply_scale(ax, every, "y")
    ax.set_title("Hessian-vector products per checkpoint", fontsize=10)
    ax.set_ylabel("matvecs")
    set_step_axis(ax, xs, None)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    return True


# ============================================================================ the figure
def plot_curvature_tracking(records: RecordsLike, save_path: Optional[PathLike] = None,
                            model_name: str = "model", quantities: Optional[Sequence[str]] = None, *,
                            formats: FormatsLike = ("png",), dpi: int = DPI) -> Figure:
    """Curvature over training from :class:`hessext.CurvatureTracker` records.

    One panel per tracked quantity over steps (``lambda_max``, ``top_k``, ``lambda_min``, ``trace`` with a
    ±1 standard-error band, ``batch_sharpness``, ``grad_overlap``, ``preconditioned_sharpness``), each with
    its stability threshold as a labelled dashed line when the records have one (``2/η``; ``38/η`` for
    Adam's preconditioned sharpness at β₁ = 0.9), and a last panel of the matvecs each checkpoint cost:
    the tracked (warm-started) solve solid, a cold solve's as markers where ``cold_matvecs`` is present.

    Args:
        records: a list of record dicts or the path of the tracker's JSON-lines file.
        save_path: directory for ``{model_name}_curvature_tracking.{fmt}`` (None: nothing is written).
        model_name: title and file-name stem.
        quantities: the quantities to show (default: every one the records have); one that no record has
            is skipped.
        formats, dpi: as for every hessext figure.

    Returns:
        The figure (written paths in ``fig.hessext_files``).
    """
    recs = read_tracking_records(records)
    shown = _present(recs, quantities)
    xs = np.array([float(r["step"]) for r in recs], dtype=float)
    solves = set(shown) | ({"lambda_max"} if {"top_k", "grad_overlap"} & set(shown) else set())
    has_mv = any(np.any(finite(_column(recs, "matvecs", q)) != 0)
                 or finite(_column(recs, "cold_matvecs", q)).size for q in solves)
    n = len(shown) + int(has_mv)
    if n == 0:
        fig = new_figure((7, 3.5))
        empty_axes(fig.add_subplot(1, 1, 1), "no tracked quantities in the records")
    else:
        ncols = min(n, 3) if n != 4 else 2
        nrows = math.ceil(n / ncols)
        fig = new_figure((5.0 * ncols, 3.5 * nrows + 0.6))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, q in zip(axes, shown):
            _draw_quantity(ax, q, xs, recs)
        if has_mv:
            _draw_matvecs(axes[len(shown)], shown, xs, recs)
        for ax in axes[n:]:
            ax.remove()
    fig.suptitle(f"{model_name}: curvature over training", fontsize=13, fontweight="bold")
    write_figure(fig, save_path, model_name, "curvature_tracking", formats, dpi)
    return fig
