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
"""
from __future__ import annotations

import datetime as _dt
import html
import math
import os
import re
import sys
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ._io import atomic_write

try:  # matplotlib is an optional dependency (extra "plot"); the import error is raised on first use.
    import matplotlib
    import matplotlib.transforms as mtransforms
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    _MPL_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
    matplotlib = None  # type: ignore[assignment]
    Figure = Any  # type: ignore[misc,assignment]
    FigureCanvasAgg = None  # type: ignore[assignment]
    _MPL_ERROR = exc

__all__ = ["HessianVisualizer", "COMPONENT_COLORS", "component_color", "USE_PYPLOT",
           "plot_spectral_density", "plot_top_spectrum", "plot_component_bars", "plot_training_curves",
           "plot_loss_landscape_1d", "plot_loss_landscape_2d"]

#: ``None``: use pyplot only if it is already imported; ``True``/``False``: always/never.
USE_PYPLOT: Optional[bool] = None
#: A positive series whose max/min ratio exceeds this is drawn on a log axis.
LOG_SPAN = 30.0
#: Default raster resolution.
DPI = 130
_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "eps")

#: Fixed colour per component name (attention family in warm colours, FFN green, embeddings blue, …).
COMPONENT_COLORS: dict[str, str] = {
    "full": "#000000",
    "model": "#000000",
    "all": "#000000",
    "embeddings": "#1f77b4",
    "attention": "#d62728",
    "attention_query": "#ff7f0e",
    "attention_key": "#e377c2",
    "attention_value": "#8c564b",
    "attention_output": "#f4a582",
    "ffn": "#2ca02c",
    "norm": "#9467bd",
    "hidden_states": "#17becf",
    "output_projection": "#7f7f7f",
    "lm_head": "#7f7f7f",
}
_SPARE_COLORS = ("#bcbd22", "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#dbdb8d", "#9edae5", "#393b79",
                 "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1")


def component_color(name: str) -> str:
    """The fixed colour of a component: ``COMPONENT_COLORS[name]`` or a colour chosen by a CRC32 hash of the
    name (the same in every process and run)."""
    if name in COMPONENT_COLORS:
        return COMPONENT_COLORS[name]
    return _SPARE_COLORS[zlib.crc32(str(name).encode()) % len(_SPARE_COLORS)]


# ============================================================================ small utilities
def _require_mpl() -> None:
    if _MPL_ERROR is not None:
        raise ImportError("hessext.viz needs matplotlib: pip install 'hessext[plot]'") from _MPL_ERROR


def _use_pyplot() -> bool:
    if USE_PYPLOT is not None:
        return bool(USE_PYPLOT)
    return "matplotlib.pyplot" in sys.modules


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure with constrained layout, through pyplot if it is in use, else a bare Agg figure."""
    _require_mpl()
    if _use_pyplot():
        import matplotlib.pyplot as plt
        return plt.figure(figsize=figsize, layout="constrained")
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _close(fig: Figure) -> None:
    """Release a figure made by :func:`_new_figure` (pyplot ones must leave pyplot's registry)."""
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt
        if fig.canvas.manager is not None:
            plt.close(fig)


def _safe_name(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return out or "model"


def _check_formats(formats: Union[str, Sequence[str]]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    try:
        fmts = tuple(str(f).lower().lstrip(".") for f in formats)
    except TypeError:
        raise TypeError(f"formats must be a string or a sequence of strings, got {type(formats).__name__}") \
            from None
    if not fmts:
        raise ValueError("formats is empty; pass e.g. ('png',) or ('png', 'svg')")
    bad = [f for f in fmts if f not in _FORMATS]
    if bad:
        raise ValueError(f"formats must be among {_FORMATS}, got {bad}")
    return fmts


def _save(fig: Figure, save_path: Optional[Union[str, os.PathLike]], model_name: str, quantity: str,
          formats: Union[str, Sequence[str]] = ("png",), dpi: int = DPI) -> list[str]:
    """Write ``{model_name}_{quantity}.{fmt}`` files; record and return their paths."""
    fmts = _check_formats(formats)
    _tidy_legends(fig)
    paths: list[str] = []
    if save_path is not None:
        if not isinstance(save_path, (str, os.PathLike)):
            raise TypeError(f"save_path must be a str, a path or None, got {type(save_path).__name__}")
        os.makedirs(save_path, exist_ok=True)
        stem = f"{_safe_name(model_name)}_{quantity}"
        for fmt in fmts:
            path = os.path.join(os.fspath(save_path), f"{stem}.{fmt}")
            fig.savefig(path, dpi=dpi, format=fmt, facecolor="white")
            paths.append(path)
    fig.hessext_files = paths  # type: ignore[attr-defined]
    return paths


def _to_float(x: Any) -> float:
    """A finite-or-not float from a number, 0-d array/tensor; NaN for anything else (missing)."""
    if x is None or isinstance(x, (bool, np.bool_, str, bytes)):
        return float("nan")
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
        if x.numel() != 1:
            return float("nan")
        return float(x.reshape(()).item())
    if isinstance(x, np.ndarray):
        return float(x.reshape(())) if x.size == 1 else float("nan")
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _to_array(x: Any) -> np.ndarray:
    """1-D float64 array from a list/array/tensor (empty for anything unusable)."""
    if x is None:
        return np.zeros(0)
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return np.zeros(0)
    return arr


_INT_RE = re.compile(r"^[+-]?\d+$")


def _int_like(key: Any) -> bool:
    if isinstance(key, (bool, np.bool_)):
        return False
    if isinstance(key, (int, np.integer)):
        return True
    if isinstance(key, (float, np.floating)):
        return math.isfinite(float(key)) and float(key).is_integer()
    if isinstance(key, str):
        return bool(_INT_RE.match(key.strip()))
    return False


def _ordered_steps(history: Mapping) -> tuple[list[Any], np.ndarray, Optional[list[str]]]:
    """Keys in plotting order, their x positions, and tick labels (for non-numeric keys)."""
    keys = list(history.keys())
    if keys and all(_int_like(k) for k in keys):
        keys.sort(key=_step_key)
        xs = np.array([_step_key(k) for k in keys], dtype=float)
        return keys, xs, None
    if keys and all(isinstance(k, (int, float, np.integer, np.floating)) and not isinstance(k, bool)
                    for k in keys):
        keys.sort(key=float)
        return keys, np.array([float(k) for k in keys]), None
    return keys, np.arange(len(keys), dtype=float), [str(k) for k in keys]


def _section(history: Optional[Mapping], name: str) -> dict:
    """``{step: section metrics}``: unwraps full analyze_step results and drops failed steps."""
    if history is None:
        return {}
    if not isinstance(history, Mapping):
        raise TypeError(f"history must be a dict {{step: metrics}}, got {type(history).__name__}")
    out = {}
    for k, v in history.items():
        if not isinstance(v, Mapping):
            continue
        if name in v and isinstance(v[name], Mapping):
            v = v[name]
        if "error" in v and len([x for x in v if x != "error"]) == 0:
            continue
        out[k] = v
    return out


def _lookup(r: Any, key: str) -> Any:
    """``r[key]``; ``key`` may list alternative names separated by ``|`` (the first present wins)."""
    if not isinstance(r, Mapping):
        return None
    for k in key.split("|"):
        if k in r:
            return r[k]
    return None


def _series(records: Sequence[Mapping], key: str) -> np.ndarray:
    return np.array([_to_float(_lookup(r, key)) for r in records])


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).reshape(-1)
    return arr[np.isfinite(arr)]


def _apply_scale(ax: Any, values: Iterable[float], axis: str = "y", scale: str = "auto") -> str:
    """Choose linear / log / symlog from the data (see module docstring) and apply it; returns the scale.

    On a log or symlog axis the limits are padded in the axis' own scale (matplotlib's margins are linear in
    the data, which on such an axis leaves the extreme points on the frame)."""
    vals = _finite(values)
    chosen = _choose_scale(vals, scale)
    set_scale = ax.set_yscale if axis == "y" else ax.set_xscale
    if chosen == "symlog":
        set_scale("symlog", linthresh=_linthresh(vals))
    elif chosen != "linear" or scale == "linear":
        set_scale(chosen)
    if chosen in ("log", "symlog"):
        _pad_scaled(ax, vals, axis)
    return chosen


def _choose_scale(vals: np.ndarray, scale: str) -> str:
    if scale != "auto":
        if scale == "log" and (vals.size == 0 or np.any(vals <= 0)):
            return "symlog" if vals.size else "linear"
        return scale
    if vals.size == 0:
        return "linear"
    mags = np.abs(vals[vals != 0])
    if mags.size == 0:
        return "linear"
    span = mags.max() / mags.min()
    if np.all(vals > 0):
        return "log" if span > LOG_SPAN else "linear"
    if np.any(vals < 0) and np.any(vals > 0) and span > 100:
        return "symlog"
    if np.all(vals <= 0) and span > LOG_SPAN:
        return "symlog"
    return "linear"


def _pad_scaled(ax: Any, vals: np.ndarray, axis: str, frac: float = 0.06) -> None:
    """Set the limits of a log/symlog ``axis`` to the data range padded by ``frac`` in the scaled space."""
    vals = vals[vals > 0] if (ax.get_yscale() if axis == "y" else ax.get_xscale()) == "log" else vals
    if vals.size == 0:
        return
    tr = (ax.yaxis if axis == "y" else ax.xaxis).get_transform()
    t = tr.transform(np.array([[vals.min()], [vals.max()]], dtype=float)).ravel()
    if not np.all(np.isfinite(t)):
        return
    pad = frac * (t[1] - t[0]) if t[1] > t[0] else 0.25
    lo, hi = tr.inverted().transform(np.array([[t[0] - pad], [t[1] + pad]])).ravel()
    (ax.set_ylim if axis == "y" else ax.set_xlim)(float(lo), float(hi))


def _linthresh(vals: np.ndarray) -> float:
    mags = np.abs(vals[np.isfinite(vals) & (vals != 0)])
    if mags.size == 0:
        return 1.0
    lo = max(float(mags.min()), float(mags.max()) * 1e-4)
    return 10.0 ** math.floor(math.log10(lo))


def _set_step_axis(ax: Any, xs: np.ndarray, labels: Optional[list[str]],
                   xlabel: str = "training step") -> None:
    ax.set_xlabel(xlabel)
    if labels is not None:
        if len(labels) <= 20:
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=30 if max((len(s) for s in labels), default=0) > 4 else 0)
    if xs.size == 1:
        ax.set_xlim(xs[0] - 1, xs[0] + 1)
    ax.grid(True, alpha=0.3)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _marker(n: int) -> str:
    return "o" if n <= 40 else ""


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    f = _to_float(x)
    if math.isnan(f):
        if isinstance(x, str):
            return x
        if isinstance(x, (list, tuple, np.ndarray)) or hasattr(x, "detach"):
            arr = _to_array(x)
            if arr.size <= 6:
                return "[" + ", ".join(_fmt(v, 3) for v in arr) + "]"
            return "[" + ", ".join(_fmt(v, 3) for v in arr[:5]) + f", … ({arr.size} values)]"
        return "n/a" if x is None else str(x)[:60]
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == 0:
        return "0"
    if 1e-3 <= abs(f) < 1e5:
        return f"{f:.{digits}g}"
    return f"{f:.{max(digits - 1, 1)}e}"


# ============================================================================ legends that never cover data
_GUIDE = "hessext-guide"  # gid of reference lines (y = 0, y = 1, …): a legend may lie over them
_LEGEND_LOCS = ("upper left", "upper right", "lower left", "lower right", "upper center", "lower center",
                "center left", "center right")


def _guide(artist: Any) -> Any:
    """Mark a reference line as a guide (not data) for the legend placement."""
    artist.set_gid(_GUIDE)
    return artist


def _data_points(axes: Sequence[Any], renderer: Any) -> tuple[np.ndarray, list[Any], list[Any]]:
    """Display coordinates of the data drawn on ``axes``: points (line vertices, points sampled along line
    segments, scatter offsets), filled paths (display-space), and bar/patch extents."""
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection
    from matplotlib.patches import Rectangle

    pts: list[np.ndarray] = []
    fills: list[Any] = []
    boxes: list[Any] = []

    def add_polyline(xy: np.ndarray) -> None:
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        good = np.all(np.isfinite(xy), axis=1)
        pts.append(xy[good])
        if xy.shape[0] > 1:  # sample along every segment whose ends are both finite
            seg = good[:-1] & good[1:]
            a, b = xy[:-1][seg], xy[1:][seg]
            if a.size:
                t = np.linspace(0.0, 1.0, 24)[None, :, None]
                pts.append((a[:, None, :] + t * (b - a)[:, None, :]).reshape(-1, 2))

    for ax in axes:
        for ln in ax.get_lines():
            if ln.get_gid() == _GUIDE or not ln.get_visible():
                continue
            xy = ln.get_transform().transform(np.asarray(ln.get_xydata(), dtype=float))
            if ln.get_linestyle() in ("None", "none", "", " "):
                pts.append(xy[np.all(np.isfinite(xy), axis=1)])
            else:
                add_polyline(xy)
        for col in ax.collections:
            if col.get_gid() == _GUIDE or not col.get_visible():
                continue
            if isinstance(col, PathCollection) and len(col.get_offsets()):
                off = col.get_offset_transform().transform(np.asarray(col.get_offsets(), dtype=float))
                pts.append(off[np.all(np.isfinite(off), axis=1)])
            elif isinstance(col, LineCollection):
                for seg in col.get_segments():
                    add_polyline(col.get_transform().transform(np.asarray(seg, dtype=float)))
            elif isinstance(col, PolyCollection):
                tr = col.get_transform()
                for p in col.get_paths():
                    fills.append(tr.transform_path(p))
        for patch in ax.patches:
            if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_gid() != _GUIDE:
                boxes.append(patch.get_window_extent(renderer))
    allpts = np.concatenate(pts) if pts else np.zeros((0, 2))
    return allpts, fills, boxes


def _covers_data(bbox: Any, data: tuple[np.ndarray, list[Any], list[Any]]) -> bool:
    pts, fills, boxes = data
    if pts.size and np.any((pts[:, 0] >= bbox.x0) & (pts[:, 0] <= bbox.x1)
                           & (pts[:, 1] >= bbox.y0) & (pts[:, 1] <= bbox.y1)):
        return True
    gx, gy = np.meshgrid(np.linspace(bbox.x0, bbox.x1, 7), np.linspace(bbox.y0, bbox.y1, 5))
    probe = np.column_stack([gx.ravel(), gy.ravel()])
    for path in fills:
        if np.any(path.contains_points(probe)):
            return True
        v = path.vertices
        if v.size and np.any((v[:, 0] > bbox.x0) & (v[:, 0] < bbox.x1) & (v[:, 1] > bbox.y0)
                             & (v[:, 1] < bbox.y1)):
            return True
    return any(b.width > 0 and b.height > 0 and b.overlaps(bbox) for b in boxes)


def _axes_group(ax: Any) -> list[Any]:
    """``ax`` and its twins (``twinx``/``twiny`` share the position, so their data share the area)."""
    try:
        return list(ax._twinned_axes.get_siblings(ax))
    except AttributeError:  # pragma: no cover - private API moved
        return [ax]


def _legend_overlaps(fig: Figure) -> list[tuple[Any, Any]]:
    """``(axes, legend)`` pairs whose legend (inside the axes) covers data, after laying the figure out."""
    renderer = fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else fig._get_renderer()
    out = []
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None or not leg.get_visible():
            continue
        lb = leg.get_window_extent(renderer)
        ab = ax.get_window_extent(renderer)
        if not (lb.x0 >= ab.x0 - 1 and lb.x1 <= ab.x1 + 1 and lb.y0 >= ab.y0 - 1 and lb.y1 <= ab.y1 + 1):
            continue  # placed outside the axes on purpose
        if _covers_data(lb.padded(2), _data_points(_axes_group(ax), renderer)):
            out.append((ax, leg))
    return out


def _raise_top(ax: Any, data: tuple[np.ndarray, list[Any], list[Any]], frac: float) -> None:
    """Raise the top of ``ax``'s y-axis (in the axis' own scale: linear, log or symlog) so that the data end
    ``frac`` of the axes height below the top."""
    ab = ax.get_window_extent()
    pts, fills, boxes = data
    tops = [float(pts[:, 1].max())] if pts.size else []
    tops += [float(p.vertices[:, 1].max()) for p in fills if p.vertices.size]
    tops += [b.y1 for b in boxes]
    if not tops or ab.height <= 0:
        return
    top_px = min(max(tops), ab.y1)
    scale_tr = ax.yaxis.get_transform()
    lo, hi = ax.get_ylim()
    t0, t1 = scale_tr.transform(np.array([[lo], [hi]], dtype=float)).ravel()
    tm = t0 + (top_px - ab.y0) / ab.height * (t1 - t0)
    new_t1 = t0 + (tm - t0) / (1.0 - frac)
    if np.isfinite(new_t1) and new_t1 > t1:
        ax.set_ylim(lo, float(scale_tr.inverted().transform(np.array([[new_t1]])).ravel()[0]))


def _relegend(ax: Any, leg: Any, **kw: Any) -> Any:
    """Replace ``leg`` by a legend of the same entries and style with other placement options."""
    title = leg.get_title().get_text()
    style = dict(fontsize=leg.texts[0].get_fontsize() if leg.texts else None,
                 framealpha=leg.get_frame().get_alpha(), title=title or None)
    style.update(kw)
    return ax.legend(leg.legend_handles, [t.get_text() for t in leg.texts], **style)


def _tidy_legends(fig: Figure) -> None:
    """Move every legend that covers data: first to another corner or edge of its axes, then (if all of
    them are taken) into headroom made above the data, finally outside the axes on the right."""
    if not any(ax.get_legend() is not None for ax in fig.axes):
        return
    if not _layout(fig):
        return
    bad = _legend_overlaps(fig)
    if not bad:
        return
    renderer = fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else fig._get_renderer()
    relayout = False
    for ax, leg in bad:
        data = _data_points(_axes_group(ax), renderer)
        placed = False
        for loc in _LEGEND_LOCS:
            leg.set_loc(loc)
            if not _covers_data(leg.get_window_extent(renderer).padded(2), data):
                placed = True
                break
        if placed:
            continue
        # headroom: raise the top of the y-axis (in the axis' own scale) so that the legend fits above the data
        group = _axes_group(ax)
        limits = [sib.get_ylim() for sib in group]
        old_leg = leg
        leg = _relegend(ax, old_leg, loc="upper center", ncols=min(len(old_leg.texts), 3))
        ab = ax.get_window_extent(renderer)
        lb = leg.get_window_extent(renderer)
        if lb.width < 0.95 * ab.width:
            frac = min((lb.height + 10.0) / max(ab.height, 1.0), 0.45)
            for sib in group:
                _raise_top(sib, _data_points([sib], renderer), frac)
            if not _covers_data(leg.get_window_extent(renderer).padded(2), _data_points(group, renderer)):
                continue
        # last resort: below the axes, under its tick labels and x label (data limits as they were)
        for sib, lim in zip(group, limits):
            sib.set_ylim(*lim)
        below = ab.y0 - min(ax.xaxis.get_tightbbox(renderer).y0, ab.y0)
        shift = mtransforms.ScaledTranslation(0.0, -(below + 4.0) / fig.dpi, fig.dpi_scale_trans)
        _relegend(ax, old_leg, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  bbox_transform=ax.transAxes + shift, ncols=min(len(old_leg.texts), 2), frameon=False)
        relayout = True
    if relayout:
        _layout(fig)


def _layout(fig: Figure) -> bool:
    """Run the figure's layout engine (positions of axes as they will be saved) without drawing."""
    try:
        engine = fig.get_layout_engine()
        if engine is not None:
            engine.execute(fig)
        return True
    except Exception:  # noqa: BLE001 - a figure that cannot be laid out is saved as it is
        return False


# ============================================================================ panel machinery
@dataclass
class _Panel:
    """One axes of a time-series figure: some keys of the per-step dicts, or a custom drawer."""
    title: str
    keys: Sequence[tuple[str, str]] = ()          # (key, legend label)
    ylabel: str = ""
    scale: str = "auto"
    ylim: Optional[tuple[float, float]] = None
    ref: Optional[float] = None                   # horizontal reference line
    ref_label: Optional[str] = None
    band: Optional[tuple[str, str, float]] = None  # (center key, std-error key, multiplier)
    draw: Optional[Callable[[Any, np.ndarray, list, Optional[list]], bool]] = None
    styles: Optional[Mapping[str, Mapping[str, Any]]] = None  # per key: plot kwargs (color, ls, marker, …)
    context: Sequence[tuple[str, str]] = ()       # drawn too, but only when one of ``keys`` has data

    def has_data(self, records: list) -> bool:
        if self.draw is not None:  # ``keys`` then only name the entries the drawer needs (any one suffices)
            return not self.keys or any(_lookup(r, k) is not None for k, _ in self.keys for r in records)
        return any(_finite(_series(records, k)).size for k, _ in self.keys)


def _draw_rank_lines(key: str, ylabel: str, first_label: str, ylim: Optional[tuple[float, float]] = None,
                     sort_desc: bool = False) -> Callable[..., bool]:
    """A panel drawer for a per-step list (``key``) indexed by eigenvalue rank: one line per rank, colour =
    rank (viridis), the first rank bold."""

    def draw(ax: Any, xs: np.ndarray, records: list, labels: Optional[list]) -> bool:
        rows = [_to_array(_lookup(r, key)) for r in records]
        if sort_desc:
            rows = [np.sort(row)[::-1] for row in rows]
        k = max((row.size for row in rows), default=0)
        if k == 0:
            return False
        mat = np.full((len(records), k), np.nan)
        for i, row in enumerate(rows):
            mat[i, :row.size] = row
        import matplotlib.cm as cm
        import matplotlib.colors as mcolors
        cmap = matplotlib.colormaps["viridis"]
        norm = mcolors.Normalize(vmin=1, vmax=max(k, 2))
        for j in range(k - 1, -1, -1):
            ax.plot(xs, mat[:, j], color=cmap(norm(j + 1)), lw=2.2 if j == 0 else 1.1,
                    marker=_marker(len(xs)) if j == 0 else "", ms=3.5, label=first_label if j == 0 else None)
        if ylim is None:
            _apply_scale(ax, mat.ravel(), "y")
        else:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        if k > 1:
            cb = ax.figure.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, fraction=0.05)
            cb.set_label("rank i")
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
        return True
    return draw


def _draw_series_panel(ax: Any, panel: _Panel, xs: np.ndarray, records: list, labels: Optional[list]) -> bool:
    if panel.draw is not None:
        ok = panel.draw(ax, xs, records, labels)
        if ok:
            _set_step_axis(ax, xs, labels)
            ax.set_title(panel.title)
        return ok
    every: list[float] = []
    drawn = 0
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
    for i, (key, label) in enumerate(list(panel.keys) + list(panel.context)):
        ys = _series(records, key)
        if not _finite(ys).size:
            continue
        # alternate solid / dashed so that coinciding series stay visible
        style = dict(marker=_marker(len(xs)), ms=4, lw=1.8, color=colors[i % len(colors)],
                     ls="-" if drawn % 2 == 0 else "--")
        style.update((panel.styles or {}).get(key, {}))
        if not _marker(len(xs)):
            style["marker"] = ""
        ax.plot(xs, ys, label=label, **style)
        every.extend(ys.tolist())
        drawn += 1
        if panel.band is not None and panel.band[0] == key:
            err = _series(records, panel.band[1]) * panel.band[2]
            if _finite(err).size:
                lo, hi = ys - err, ys + err
                ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.2, lw=0,
                                label=f"± {panel.band[2]:g} standard errors")
                every.extend(lo.tolist())
                every.extend(hi.tolist())
    if not drawn:
        return False
    if panel.ref is not None:
        _guide(ax.axhline(panel.ref, color="0.4", lw=1, ls="--", label=panel.ref_label))
        every.append(panel.ref)
    _apply_scale(ax, every, "y", panel.scale)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.set_title(panel.title)
    ax.set_ylabel(panel.ylabel)
    _set_step_axis(ax, xs, labels)
    if drawn > 1 or panel.band is not None or panel.ref_label:
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    return True


def _series_figure(history: Mapping, panels: Sequence[_Panel], title: str, empty_text: str,
                   ncols: int = 2, panel_size: tuple[float, float] = (5.6, 3.6)) -> Figure:
    keys, xs, labels = _ordered_steps(history)
    records = [history[k] for k in keys]
    active = [p for p in panels if p.has_data(records)] if records else []
    if not active:
        fig = _new_figure((7, 3.5))
        ax = fig.add_subplot(1, 1, 1)
        _empty(ax, empty_text)
        fig.suptitle(title, fontsize=13, fontweight="bold")
        return fig
    ncols = len(active) if len(active) <= 3 else (2 if len(active) == 4 else max(ncols, 3))
    nrows = math.ceil(len(active) / ncols)
    fig = _new_figure((panel_size[0] * ncols, panel_size[1] * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    used = 0
    for panel in active:
        if _draw_series_panel(axes[used], panel, xs, records, labels):
            used += 1
        else:
            axes[used].clear()
    for ax in axes[used:]:
        ax.remove()
    if used == 0:  # custom panels found nothing to draw after all
        _empty(fig.add_subplot(1, 1, 1), empty_text)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


# ============================================================================ component history
def _normalize_components(component_history: Any) -> tuple[list[Any], np.ndarray, Optional[list[str]],
                                                             dict[str, list[Optional[Mapping]]]]:
    """Bring a component history into ``(step keys, x, tick labels, {component: [metrics per step]})``.

    Accepted: ``{step: {component: metrics}}`` (values may also be full analyze_step results with a
    ``"components"`` entry), ``{component: {step: metrics}}``, or one snapshot ``{component: metrics}``
    (drawn as a single step). Int-like keys are steps; when neither level is int-like (``"epoch_3"``), the
    level whose keys are known component names (``COMPONENT_COLORS``) is the component level.
    """
    if component_history is None:
        return [], np.zeros(0), None, {}
    if not isinstance(component_history, Mapping):
        raise TypeError(f"component_history must be a dict, got {type(component_history).__name__}")
    items = {k: v for k, v in component_history.items() if isinstance(v, Mapping)}
    if not items:
        return [], np.zeros(0), None, {}

    def unwrap(v: Mapping) -> Mapping:
        return v["components"] if isinstance(v.get("components"), Mapping) else v

    def nested(v: Mapping) -> bool:  # {key: {…}}: one level deeper than a metrics dict {name: number}
        vals = [x for x in unwrap(v).values() if x is not None]
        return bool(vals) and all(isinstance(x, Mapping) for x in vals)

    two_level = all(nested(v) for v in items.values())
    inner_keys = list(dict.fromkeys(ik for v in items.values() for ik in unwrap(v))) if two_level else []
    if all(_int_like(k) for k in items):
        mode = "step-major"
    elif two_level and inner_keys and all(_int_like(ik) for ik in inner_keys):
        mode = "component-major"
    elif two_level:
        # neither level is numbered (e.g. "epoch_3"): the level whose keys are known component names is the
        # component level; the document's order {step: {component: …}} wins a tie
        known_outer = sum(str(k) in COMPONENT_COLORS for k in items)
        known_inner = sum(str(k) in COMPONENT_COLORS for k in inner_keys)
        mode = "step-major" if known_outer <= known_inner else "component-major"
    else:
        mode = "snapshot"
    if mode == "step-major":
        by_step = {k: unwrap(v) for k, v in items.items()}
    elif mode == "component-major":
        by_step = {}
        for comp, per_step in items.items():
            for s, m in per_step.items():
                # int-like keys may mix "5" and 5: merge equal integers
                by_step.setdefault(_step_key(s), {})[comp] = m
    else:
        by_step = {0: items}
    keys, xs, labels = _ordered_steps(by_step)
    comps: list[str] = []
    for k in keys:
        for c, m in by_step[k].items():
            if isinstance(m, Mapping) and c not in comps:
                comps.append(str(c))
    table: dict[str, list[Optional[Mapping]]] = {}
    for c in comps:
        row = []
        for k in keys:
            m = by_step[k].get(c)
            row.append(m if isinstance(m, Mapping) and not ("error" in m and len(m) == 1) else None)
        table[c] = row
    return keys, xs, labels, table


def _comp_value(m: Optional[Mapping], key: str) -> float:
    if m is None:
        return float("nan")
    if key == "trace_per_parameter":
        t = _to_float(_lookup(m, "trace|trace_estimate|hessian_trace_estimate"))
        n = _to_float(m.get("num_parameters"))
        return t / n if n and math.isfinite(n) and n > 0 else float("nan")
    if key == "trace":
        return _to_float(_lookup(m, "trace|trace_estimate|hessian_trace_estimate"))
    if key == "max_eigenvalue":
        v = _to_float(m.get("max_eigenvalue"))
        if math.isnan(v):
            top = _to_array(m.get("top_eigenvalues"))
            v = float(top.max()) if top.size else float("nan")
        return v
    return _to_float(m.get(key))


def _bar_axis(ax: Any, values: Sequence[float], ends: Optional[Sequence[float]] = None,
              extra: Sequence[float] = ()) -> str:
    """Value axis of a horizontal bar chart: scale from the data, and every bar labelled with its value.

    On a log axis a bar's length depends on where the axis starts, so the axis starts a whole decade below
    the smallest bar (every bar visible, none of equal length by accident) and each bar carries its number.
    ``ends`` are where the labels go (bar end or error-bar end); ``extra`` are other values drawn on the axis.
    """
    vals = np.asarray(values, dtype=float)
    ends_arr = vals if ends is None else np.where(np.isfinite(np.asarray(ends, dtype=float)),
                                                  np.asarray(ends, dtype=float), vals)
    allv = _finite(np.concatenate([vals, ends_arr, np.asarray(list(extra), dtype=float)]))
    scale = _choose_scale(allv, "auto")
    if scale == "log":
        ax.set_xscale("log")
        lg_lo = math.floor(math.log10(allv.min()) - 1e-9)
        lg_hi = math.log10(allv.max())
        ax.set_xlim(10.0 ** lg_lo, 10.0 ** (lg_hi + 0.2 * (lg_hi - lg_lo)))
    elif scale == "symlog":
        ax.set_xscale("symlog", linthresh=_linthresh(allv))
        _pad_scaled(ax, allv, "x", frac=0.15)
    elif allv.size:
        lo, hi = min(0.0, float(allv.min())), max(0.0, float(allv.max()))
        span = hi - lo if hi > lo else 1.0
        ax.set_xlim(lo - (0.15 * span if lo < 0 else 0.0), hi + (0.15 * span if hi > 0 else 0.0))
    for j, (val, end) in enumerate(zip(vals, ends_arr)):
        if np.isfinite(val):
            at = end if np.isfinite(end) else val
            ax.annotate(_fmt(val, 3), (at, j), xytext=(4 if at >= 0 else -4, 0), textcoords="offset points",
                        ha="left" if at >= 0 else "right", va="center", fontsize=8, color="0.2")
    return scale


# ============================================================================ the visualizer
class HessianVisualizer:
    """Matplotlib figures and reports of Hessian analyses (API B's ``HessianVisualizer``).

    All methods are static: call them on the class (``HessianVisualizer.plot_eigenvalue_evolution(...)``)
    or on an instance (``HessianVisualizer().create_comprehensive_report(...)``), as the API document does.
    Common keyword arguments of every ``plot_*`` method: ``formats`` (``("png",)``; add ``"svg"``/``"pdf"``)
    and ``dpi``. Every ``plot_*`` returns the figure; the caller may close it.
    """

    def __init__(self) -> None:
        _require_mpl()

    # ------------------------------------------------------------------ the document's plots
    @staticmethod
    def plot_eigenvalue_evolution(hessian_history: Mapping, save_path: Optional[str] = None,
                                  model_name: str = "model", *, formats: Union[str, Sequence[str]] = ("png",),
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
        hist = _section(hessian_history, "hessian")

        def draw_negative(ax: Any, xs: np.ndarray, records: list, labels: Optional[list]) -> bool:
            neg = _series(records, "negative_count")
            lmax, lmin = _series(records, "max_eigenvalue"), _series(records, "min_eigenvalue")
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where((lmin < 0) & (lmax > 0), np.abs(lmin) / lmax, np.nan)
            has_neg, has_ratio = _finite(neg).size > 0, _finite(ratio).size > 0
            if not (has_neg or has_ratio):
                return False
            handles = []
            if has_neg:
                width = 0.6 * (np.min(np.diff(xs)) if xs.size > 1 else 1.0)
                handles.append(ax.bar(xs, np.nan_to_num(neg), width=width, color="#9ecae1",
                                      label="negative eigenvalues found (count)"))
                ax.set_ylabel("count")
                ax.yaxis.get_major_locator().set_params(integer=True)
                ax.set_ylim(0, max(float(np.nanmax(neg)) if _finite(neg).size else 1.0, 1.0) * 1.45)
            if has_ratio:
                ax2 = ax.twinx() if has_neg else ax
                (line,) = ax2.plot(xs, ratio, color="#d62728", marker=_marker(len(xs)), ms=4,
                                   label="|λ_min| / λ_max")
                scale = _apply_scale(ax2, ratio, "y")
                r = _finite(ratio)
                if scale == "log":
                    ax2.set_ylim(r.min() / 1.3, r.max() * (r.max() / r.min()) ** 0.45)
                else:
                    ax2.set_ylim(0, r.max() * 1.45 if r.max() > 0 else 1.0)
                ax2.set_ylabel("|λ_min| / λ_max")
                handles.append(line)
            # headroom above the data keeps the legend off it
            ax.legend(handles=handles, loc="upper center", fontsize=8, framealpha=0.85, ncols=len(handles))
            return True

        panels = [
            _Panel("Top-k eigenvalues", keys=[("top_eigenvalues", "")], draw=_draw_rank_lines(
                "top_eigenvalues", "eigenvalue λᵢ (loss / param²)", "λ₁ (largest)", sort_desc=True)),
            _Panel("Extreme eigenvalues", keys=[("max_eigenvalue", "λ_max"), ("min_eigenvalue", "λ_min")],
                   ylabel="eigenvalue (loss / param²)", ref=0.0),
            _Panel("Hessian trace", keys=[("hessian_trace_estimate", "tr H (estimate)")],
                   ylabel="tr H (loss / param²)",
                   band=("hessian_trace_estimate", "hessian_trace_std_error", 2.0)),
            _Panel("Negative curvature", keys=[("negative_count", ""), ("min_eigenvalue", "")],
                   draw=draw_negative),
        ]
        fig = _series_figure(hist, panels, f"{model_name}: Hessian eigenvalue evolution",
                             "no Hessian eigenvalue data in this history")
        _save(fig, save_path, model_name, "eigenvalue_evolution", formats, dpi)
        return fig

    @staticmethod
    def plot_complexity_metrics(hessian_history: Mapping, save_path: Optional[str] = None,
                                model_name: str = "model", *, formats: Union[str, Sequence[str]] = ("png",),
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
        hist = _section(hessian_history, "hessian")
        panels = [
            _Panel("Condition number", keys=[("condition_number", "max|λ| / min|λ| (top-k)")],
                   ylabel="max|λᵢ| / min|λᵢ| over the top-k (ratio)"),
            _Panel("Effective rank", keys=[("effective_rank_95", "95% of Σ|λ|"),
                                           ("effective_rank_entropy", "entropy exp(H(p))")],
                   context=[("num_eigenvalues", "k (eigenvalues computed: the ceiling)")],
                   ylabel="effective rank (eigenvalues)",
                   styles={"num_eigenvalues": dict(color="0.45", ls=":", marker="", lw=1.4)}),
            _Panel("Complexity score", keys=[("complexity_score", "tr H / entropy rank")],
                   ylabel="complexity score (loss / param²)"),
            _Panel("Eigenvalue decay", keys=[("eigenvalue_decay_rate", "decay rate of sorted |λ|")],
                   ylabel="decay rate (log-units / rank)"),
            _Panel("Eigenvalue spread", keys=[("eigenvalue_std", "std of the top-k λ")],
                   ylabel="standard deviation (loss / param²)"),
            _Panel("Eigenvalue skewness", keys=[("eigenvalue_skew", "skewness of the top-k λ")],
                   ylabel="skewness (dimensionless)", ref=0.0),
        ]
        fig = _series_figure(hist, panels, f"{model_name}: Hessian complexity metrics",
                             "no complexity metrics in this history", ncols=3, panel_size=(4.8, 3.4))
        _save(fig, save_path, model_name, "complexity_metrics", formats, dpi)
        return fig

    @staticmethod
    def plot_component_comparison(component_history: Mapping, save_path: Optional[str] = None,
                                  model_name: str = "model", *, formats: Union[str, Sequence[str]] = ("png",),
                                  dpi: int = DPI) -> Figure:
        """Curvature per component (attention, FFN, embeddings, …) over training.

        Accepts ``{step: {component: metrics}}`` (what ``{s: r["components"] for s, r in history.items()}``
        gives), ``{component: {step: metrics}}``, a history of full results, or a single snapshot
        ``{component: metrics}``. Steps are recognised as int or int-like keys.

        Panels: ``λ_max`` of each component's Hessian block, its trace ``tr H_c``, the mean curvature per
        parameter ``tr H_c / n_c``, and a bar chart of ``λ_max`` at the last step. Colours are fixed per
        component (``COMPONENT_COLORS``).
        """
        keys, xs, labels, table = _normalize_components(component_history)
        title = f"{model_name}: curvature by component"
        specs = [("max_eigenvalue", "Largest eigenvalue of each block", "λ_max (loss / param²)"),
                 ("trace", "Trace of each block", "tr H_c (loss / param²)"),
                 ("trace_per_parameter", "Mean curvature per parameter", "tr H_c / n_c (loss / param²)")]
        active = [s for s in specs
                  if any(np.isfinite(_comp_value(m, s[0])) for row in table.values() for m in row)]
        last_vals = {c: _comp_value(row[-1], "max_eigenvalue") for c, row in table.items()} if keys else {}
        last_vals = {c: v for c, v in last_vals.items() if np.isfinite(v)}
        n_axes = len(active) + (1 if last_vals else 0)
        if n_axes == 0:
            fig = _new_figure((7, 3.5))
            _empty(fig.add_subplot(1, 1, 1), "no component data in this history")
            fig.suptitle(title, fontsize=13, fontweight="bold")
            _save(fig, save_path, model_name, "component_comparison", formats, dpi)
            return fig
        ncols = 2 if n_axes > 1 else 1
        nrows = math.ceil(n_axes / ncols)
        fig = _new_figure((5.4 * ncols + 1.8, 3.6 * nrows + 0.6))
        axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
        handles: dict[str, Any] = {}
        for ax, (key, ptitle, ylabel) in zip(axes, active):
            every = []
            for comp, row in table.items():
                ys = np.array([_comp_value(m, key) for m in row])
                if not _finite(ys).size:
                    continue
                (h,) = ax.plot(xs, ys, marker=_marker(len(xs)), ms=4, lw=1.8, color=component_color(comp),
                               label=comp)
                handles.setdefault(comp, h)
                every.extend(ys.tolist())
            _apply_scale(ax, every, "y")
            ax.set_title(ptitle)
            ax.set_ylabel(ylabel)
            _set_step_axis(ax, xs, labels)
        used = len(active)
        if last_vals:
            ax = axes[used]
            used += 1
            names = sorted(last_vals, key=lambda c: last_vals[c])
            vals = [last_vals[c] for c in names]
            bars = ax.barh(names, vals, color=[component_color(c) for c in names])
            for c, b in zip(names, bars):
                handles.setdefault(c, b)
            _bar_axis(ax, vals)
            last = labels[-1] if labels else _fmt(xs[-1])
            ax.set_title(f"λ_max by component (step {last})")
            ax.set_xlabel("λ_max (loss / param²)")
            ax.grid(True, axis="x", alpha=0.3)
        for ax in axes[used:]:
            ax.remove()
        if handles:
            fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper",
                       title="component", fontsize=9)
        fig.suptitle(title, fontsize=13, fontweight="bold")
        _save(fig, save_path, model_name, "component_comparison", formats, dpi)
        return fig

    @staticmethod
    def plot_gradient_alignment(alignment_history: Mapping, save_path: Optional[str] = None,
                                model_name: str = "model", *, formats: Union[str, Sequence[str]] = ("png",),
                                dpi: int = DPI) -> Figure:
        """Gradient–curvature alignment over training.

        Panels: ``grad_Hg_alignment = |cos∠(g, Hg)|`` and the eigenvalue-weighted alignment
        ``Σ_i w_i |cos∠(g, v_i)|`` (``w_i = |λ_i| / Σ|λ|``); the curvature seen by the gradient, the Rayleigh
        quotient ``gᵀHg / gᵀg`` (``rayleigh_quotient``) and ``‖Hg‖ / ‖g‖`` (``grad_Hg_ratio``); the fraction
        of ``‖g‖²`` in the top-k eigenspace (``top_k_gradient_fraction`` or ``top_subspace_fraction``);
        and ``|cos∠(g, v_i)|`` per top eigenvector (``eigenvector_alignments``, colour = rank).
        """
        hist = _section(alignment_history, "alignment")
        panels = [
            _Panel("Alignment of g and Hg", keys=[("grad_Hg_alignment", "|cos∠(g, Hg)|"),
                                                  ("weighted_alignment", "Σ wᵢ |cos∠(g, vᵢ)|")],
                   ylabel="alignment (|cosine|)", ref=0.0),
            _Panel("Curvature seen by the gradient", keys=[("rayleigh_quotient", "gᵀHg / gᵀg"),
                                                           ("grad_Hg_ratio", "‖Hg‖ / ‖g‖")],
                   ylabel="curvature (loss / param²)", ref=0.0),
            _Panel("Gradient in the top-k eigenspace",
                   keys=[("top_k_gradient_fraction|top_subspace_fraction", "‖P_k g‖² / ‖g‖²")],
                   ylabel="fraction of ‖g‖²", ylim=(-0.02, 1.02)),
            _Panel("Gradient vs each top eigenvector", keys=[("eigenvector_alignments", "")],
                   draw=_draw_rank_lines("eigenvector_alignments", "|cos∠(g, vᵢ)|", "v₁ (top eigenvector)",
                                         ylim=(-0.02, 1.02))),
        ]
        fig = _series_figure(hist, panels, f"{model_name}: gradient–Hessian alignment",
                             "no gradient-alignment data in this history")
        _save(fig, save_path, model_name, "gradient_alignment", formats, dpi)
        return fig

    @staticmethod
    def plot_memorization_metrics(memorization_history: Mapping, save_path: Optional[str] = None,
                                  model_name: str = "model", *, formats: Union[str, Sequence[str]] = ("png",),
                                  dpi: int = DPI) -> Figure:
        """Train/validation landscape divergence over training (memorization signals).

        Panels: the divergence score; ``trace_ratio = tr H_train / tr H_val`` (log axis, reference line at
        1: equal curvature); the overlaps of the eigenvalue distributions and of the top eigenspaces (both
        in [0, 1]; 1 = identical).
        """
        hist = _section(memorization_history, "train_val_divergence")
        panels = [
            _Panel("Landscape divergence score",
                   keys=[("train_val_landscape_divergence_score", "divergence")],
                   ylabel="divergence score (dimensionless)"),
            _Panel("Ratios train / validation", keys=[("trace_ratio", "tr H_train / tr H_val"),
                                                      ("max_eigenvalue_ratio", "λ_max train / val")],
                   ylabel="ratio", ref=1.0, ref_label="equal curvature"),
            _Panel("Curvature on train and validation data",
                   keys=[("train_max_eigenvalue", "λ_max train"), ("val_max_eigenvalue", "λ_max validation"),
                         ("train_trace", "tr H train"), ("val_trace", "tr H validation")],
                   ylabel="curvature (loss / param²)",
                   # colour = quantity, line style = data set (solid: training, dashed: validation)
                   styles={"train_max_eigenvalue": dict(color="#1f77b4", ls="-", marker="o"),
                           "val_max_eigenvalue": dict(color="#1f77b4", ls="--", marker="s", mfc="white"),
                           "train_trace": dict(color="#2ca02c", ls="-", marker="o"),
                           "val_trace": dict(color="#2ca02c", ls="--", marker="s", mfc="white")}),
            _Panel("Spectral overlap", keys=[("eigenvalue_distribution_overlap", "eigenvalue distributions"),
                                             ("eigenspace_overlap", "top eigenspaces")],
                   ylabel="overlap (0 = disjoint, 1 = identical)", ylim=(-0.02, 1.02)),
        ]
        fig = _series_figure(hist, panels, f"{model_name}: train/validation landscape divergence",
                             "no train/validation divergence data in this history")
        _save(fig, save_path, model_name, "memorization_metrics", formats, dpi)
        return fig

    @staticmethod
    def plot_sharpness(sharpness_history: Mapping, save_path: Optional[str] = None, model_name: str = "model",
                       *, formats: Union[str, Sequence[str]] = ("png",), dpi: int = DPI) -> Figure:
        """Sharpness over training: ``max_sharpness``, ``mean_sharpness`` and the spectral norm ``‖H‖₂``."""
        hist = _section(sharpness_history, "sharpness")
        panels = [
            _Panel("Sharpness", keys=[("max_sharpness", "max sharpness λ_max"),
                                      ("spectral_norm", "spectral norm ‖H‖₂"),
                                      ("top_k_mean_sharpness", "mean of the top-k eigenvalues"),
                                      ("mean_sharpness", "mean sharpness tr H / n")],
                   ylabel="sharpness (loss / param²)",
                   band=("mean_sharpness", "mean_sharpness_std_error", 2.0)),
        ]
        fig = _series_figure(hist, panels, f"{model_name}: sharpness", "no sharpness data in this history",
                             ncols=1, panel_size=(7.5, 4.0))
        _save(fig, save_path, model_name, "sharpness", formats, dpi)
        return fig

    # ------------------------------------------------------------------ beyond the document
    @staticmethod
    def plot_training_curves(training_history: Mapping, save_path: Optional[str] = None,
                             model_name: str = "model", *, formats: Union[str, Sequence[str]] = ("png",),
                             dpi: int = DPI) -> Figure:
        """Loss and accuracy over training, to read the curvature figures against.

        Args:
            training_history: ``{step: {"train_loss", "val_loss", "train_accuracy", "val_accuracy"}}`` (any
                subset of the keys).
        """
        hist = _section(training_history, "training")
        panels = [
            _Panel("Loss", keys=[("train_loss", "training"), ("val_loss", "validation")], ylabel="loss"),
            _Panel("Accuracy", keys=[("train_accuracy", "training"), ("val_accuracy", "validation")],
                   ylabel="accuracy (fraction correct)", ylim=(-0.02, 1.02)),
        ]
        fig = _series_figure(hist, panels, f"{model_name}: training curves", "no training metrics given")
        _save(fig, save_path, model_name, "training_curves", formats, dpi)
        return fig

    @staticmethod
    def plot_spectral_density(density: Any, save_path: Optional[str] = None, model_name: str = "model", *,
                              step: Any = None, floor: float = 1e-8,
                              formats: Union[str, Sequence[str]] = ("png",), dpi: int = DPI) -> Figure:
        """Spectral density of the Hessian from stochastic Lanczos quadrature, density on a log axis.

        ``φ(λ) ≈ (1/p) Σ_probes Σ_j w_j 𝒩(λ; θ_j, σ²)`` (Ghorbani et al. 2019): a smoothed eigenvalue
        histogram normalised to integrate to 1. The log axis shows both the bulk near zero and the outliers;
        densities below ``floor · max φ`` are clipped. The Ritz nodes ``θ_j`` are marked along the bottom.

        Args:
            density: a ``DensityResult`` (``grid``, ``density``, ``nodes``, ``weights``), a dict with those
                keys, or a pair ``(grid, density)``.
            step: optional training step shown in the title.
        """
        grid, dens, nodes = _density_arrays(density)
        title = f"{model_name}: Hessian spectral density" + (f" (step {step})" if step is not None else "")
        fig = _new_figure((8.5, 4.6))
        ax = fig.add_subplot(1, 1, 1)
        ok = grid.size > 1 and dens.size == grid.size and _finite(dens).size > 0
        if not ok:
            _empty(ax, "no spectral density data")
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
            _guide(ax.axvline(0.0, color="0.4", lw=1, ls="--"))
            ax.set_xlabel("eigenvalue λ (loss / param²)")
            ax.set_ylabel("density φ(λ) (1 / eigenvalue unit)")
            ax.grid(True, alpha=0.3)
            ax.legend(loc="upper right", fontsize=9, framealpha=0.85)
        ax.set_title(title, fontsize=12, fontweight="bold")
        _save(fig, save_path, model_name, "spectral_density", formats, dpi)
        return fig

    @staticmethod
    def plot_top_spectrum(eigen: Any, save_path: Optional[str] = None, model_name: str = "model", *,
                          residuals: Any = None, step: Any = None,
                          formats: Union[str, Sequence[str]] = ("png",), dpi: int = DPI) -> Figure:
        """The top-k Ritz values with error bars ``±‖H v − θ v‖`` (Ritz residual norms).

        For a symmetric ``H`` each Ritz value ``θ`` has an eigenvalue within ``‖H v − θ v‖`` (``v`` unit),
        so the bars bound the error of each point.

        Args:
            eigen: an ``EigenResult`` (eigenvalues ascending, residuals), a dict of results (its
                ``top_eigenvalues``), or a sequence of eigenvalues (any order).
            residuals: residual norms matching ``eigen`` when it is a plain sequence.
            step: optional training step shown in the title.
        """
        vals, res = _eigen_arrays(eigen, residuals)
        title = f"{model_name}: top-{vals.size} Hessian eigenvalues" + \
            (f" (step {step})" if step is not None else "")
        fig = _new_figure((8.0, 4.4))
        ax = fig.add_subplot(1, 1, 1)
        if vals.size == 0:
            _empty(ax, "no eigenvalues")
        else:
            order = np.argsort(vals)[::-1]
            vals = vals[order]
            res = res[order] if res is not None else None
            ranks = np.arange(1, vals.size + 1)
            colors = np.where(vals >= 0, "#1f77b4", "#d62728")
            eb = None
            if res is not None:
                eb = ax.errorbar(ranks, vals, yerr=res, fmt="none", ecolor="0.2", elinewidth=1.2, capsize=4,
                                 label="± Ritz residual ‖Hv − θv‖")
            ax.scatter(ranks, vals, c=list(colors), s=36, zorder=3, label="Ritz value θᵢ")
            ax.plot(ranks, vals, color="0.6", lw=0.8, zorder=2)
            every = list(vals) + (list(vals + res) + list(vals - res) if res is not None else [])
            _apply_scale(ax, every, "y")
            if np.any(vals < 0):
                _guide(ax.axhline(0.0, color="0.4", lw=1, ls="--"))
            ax.set_xlabel("rank i (1 = largest)")
            ax.set_ylabel("eigenvalue θᵢ (loss / param²)")
            ax.set_xticks(ranks if ranks.size <= 25 else ranks[:: max(1, ranks.size // 20)])
            ax.grid(True, alpha=0.3)
            if res is not None and res.size and eb is not None:
                lo_y, hi_y = ax.get_ylim()
                tr = ax.yaxis.get_transform()
                # error bars shorter than ~1% of the axis hide behind the markers: say so
                t = tr.transform(np.column_stack([vals - res, vals + res]).reshape(-1, 1)).reshape(-1, 2)
                t_ax = tr.transform(np.array([[lo_y], [hi_y]])).ravel()
                tiny = bool(np.all(np.abs(t[:, 1] - t[:, 0]) < 0.01 * abs(t_ax[1] - t_ax[0])))
                eb.set_label(f"± Ritz residual ‖Hv − θv‖ (max {_fmt(np.nanmax(res), 3)}"
                             + ("; bars smaller than the markers)" if tiny else ")"))
            ax.legend(loc="best", fontsize=9, framealpha=0.85)
        ax.set_title(title, fontsize=12, fontweight="bold")
        _save(fig, save_path, model_name, "top_spectrum", formats, dpi)
        return fig

    @staticmethod
    def plot_component_bars(components: Mapping, save_path: Optional[str] = None, model_name: str = "model",
                            *,
                            step: Any = None, formats: Union[str, Sequence[str]] = ("png",),
                            dpi: int = DPI) -> Figure:
        """Per-component trace and top eigenvalues at one step, as horizontal bars.

        Left: ``tr H_c`` of each component block (error bars ``±2`` standard errors when the metrics carry
        ``trace_std_error``). Right: ``λ_max`` of each block, with its other top eigenvalues as dots.
        Labels give the number of parameters ``n_c``.

        Args:
            components: ``{component: metrics}`` (one step), or a component history in either key order
                (the last step is drawn).
            step: the step shown in the title (default: the history's last step).
        """
        keys, xs, labels, table = _normalize_components(components)
        if keys and step is None and len(keys) > 1:
            step = labels[-1] if labels else int(xs[-1])
        snap = {c: row[-1] for c, row in table.items() if row and row[-1] is not None}
        title = f"{model_name}: curvature by component" + (f" (step {step})" if step is not None else "")
        traces = {c: _comp_value(m, "trace") for c, m in snap.items()}
        lmax = {c: _comp_value(m, "max_eigenvalue") for c, m in snap.items()}
        has_t = any(np.isfinite(v) for v in traces.values())
        has_l = any(np.isfinite(v) for v in lmax.values())
        n = max(len(snap), 1)
        fig = _new_figure((11.5 if has_t and has_l else 7.0, 1.2 + 0.45 * n + 0.8))
        if not (has_t or has_l):
            _empty(fig.add_subplot(1, 1, 1), "no component data")
            fig.suptitle(title, fontsize=13, fontweight="bold")
            _save(fig, save_path, model_name, "component_bars", formats, dpi)
            return fig
        axes = fig.subplots(1, int(has_t) + int(has_l), squeeze=False).ravel()
        names = sorted(snap, key=lambda c: -(lmax[c] if np.isfinite(lmax[c]) else -np.inf))[::-1]

        def ylabels() -> list[str]:
            out = []
            for c in names:
                npar = _to_float(snap[c].get("num_parameters"))
                out.append(f"{c}\n({int(npar):,} params)" if np.isfinite(npar) else c)
            return out

        i = 0
        if has_t:
            ax = axes[i]
            i += 1
            vals = np.array([traces[c] for c in names])
            err = np.array([2 * _to_float(_lookup(snap[c], "trace_std_error|hessian_trace_std_error"))
                            for c in names])
            err = err if _finite(err).size else None
            ax.barh(range(len(names)), np.nan_to_num(vals), xerr=None if err is None else np.nan_to_num(err),
                    color=[component_color(c) for c in names], capsize=3)
            _bar_axis(ax, vals, ends=None if err is None else vals + err)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(ylabels(), fontsize=9)
            ax.set_xlabel("trace tr H_c (loss / param²)" + ("  ± 2 s.e." if err is not None else ""))
            ax.set_title("Trace of each block")
            ax.grid(True, axis="x", alpha=0.3)
        if has_l:
            ax = axes[i]
            vals = np.array([lmax[c] for c in names])
            ax.barh(range(len(names)), np.nan_to_num(vals), color=[component_color(c) for c in names],
                    alpha=0.85)
            every = list(vals)
            for j, c in enumerate(names):
                top = _to_array(snap[c].get("top_eigenvalues"))
                if top.size > 1:
                    ax.plot(top[1:], np.full(top.size - 1, j), "o", color="0.15", ms=3.5,
                            label="other top eigenvalues" if j == 0 else None)
                    every.extend(top[1:].tolist())
            _bar_axis(ax, vals, extra=every)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(ylabels() if not has_t else names, fontsize=9)
            ax.set_xlabel("eigenvalue (loss / param²)")
            ax.set_title("Largest eigenvalue λ_max of each block")
            ax.grid(True, axis="x", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8, framealpha=0.85)
        fig.suptitle(title, fontsize=13, fontweight="bold")
        _save(fig, save_path, model_name, "component_bars", formats, dpi)
        return fig

    @staticmethod
    def plot_loss_landscape_1d(landscape: Any, save_path: Optional[str] = None, model_name: str = "model", *,
                               step: Any = None, formats: Union[str, Sequence[str]] = ("png",),
                               dpi: int = DPI) -> Figure:
        """Loss along one direction ``L(θ + α d)`` (``hessext.landscape.loss_landscape_1d``).

        Also draws the second-order Taylor model ``L(θ) + α gᵀd + ½ α² dᵀHd`` when the result carries the
        slope and the curvature: along the top eigenvector ``dᵀHd = λ_max``, and the gap between the curves
        shows where the quadratic picture stops holding.
        """
        alphas = _to_array(_get(landscape, "alphas"))
        losses = _to_array(_get(landscape, "losses"))
        label = _get(landscape, "label") or "d"
        symbol = str(label).split(" (")[0]
        fig = _new_figure((7.8, 4.6))
        ax = fig.add_subplot(1, 1, 1)
        title = f"{model_name}: loss along {label}" + (f" (step {step})" if step is not None else "")
        if alphas.size < 2 or losses.size != alphas.size:
            _empty(ax, "no loss-landscape data")
        else:
            ax.plot(alphas, losses, color="#1f77b4", lw=2, marker=_marker(alphas.size), ms=3.5,
                    label=f"loss L(θ + α·{symbol})")
            base = _to_float(_get(landscape, "base_loss"))
            slope = _to_float(_get(landscape, "slope"))
            curv = _to_float(_get(landscape, "curvature"))
            if np.isfinite(base) and np.isfinite(curv):
                s = slope if np.isfinite(slope) else 0.0
                fine = np.linspace(alphas.min(), alphas.max(), 200)
                quad = base + s * fine + 0.5 * curv * fine ** 2
                ax.plot(fine, quad, color="#d62728", lw=1.3, ls="--",
                        label=f"quadratic model L + α·gᵀ{symbol} + ½α²·{symbol}ᵀH{symbol} "
                              f"({symbol}ᵀH{symbol} = {_fmt(curv, 3)})")
                lo, hi = np.nanmin(losses), np.nanmax(losses)
                pad = 0.15 * (hi - lo if hi > lo else 1.0)
                ax.set_ylim(lo - pad, hi + pad)
            if np.isfinite(base):
                ax.plot([0.0], [base], "o", color="k", ms=6, zorder=4, label="current parameters θ")
            ax.set_xlabel(f"α: distance along {label} (parameter-space units)")
            ax.set_ylabel("loss")
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize=9, framealpha=0.85)
        ax.set_title(title, fontsize=12, fontweight="bold")
        _save(fig, save_path, model_name, "loss_landscape_1d", formats, dpi)
        return fig

    @staticmethod
    def plot_loss_landscape_2d(landscape: Any, save_path: Optional[str] = None, model_name: str = "model", *,
                               step: Any = None, levels: int = 20,
                               formats: Union[str, Sequence[str]] = ("png",), dpi: int = DPI) -> Figure:
        """Loss on the plane ``L(θ + α d₁ + β d₂)`` (``hessext.landscape.loss_landscape_2d``) as filled
        contours, with the current parameters marked at the origin."""
        alphas = _to_array(_get(landscape, "alphas"))
        betas = _to_array(_get(landscape, "betas"))
        losses = _get(landscape, "losses")
        losses = np.asarray(losses.detach().cpu() if hasattr(losses, "detach") else losses, dtype=float) \
            if losses is not None else np.zeros((0, 0))
        labels = _get(landscape, "labels") or ("d₁", "d₂")
        fig = _new_figure((7.2, 6.0))
        ax = fig.add_subplot(1, 1, 1)
        title = f"{model_name}: loss on the plane of {labels[0]}, {labels[1]}" + \
            (f" (step {step})" if step is not None else "")
        if alphas.size < 2 or betas.size < 2 or losses.shape != (alphas.size, betas.size) \
                or not _finite(losses.ravel()).size:
            _empty(ax, "no 2-D loss-landscape data")
        else:
            A, B = np.meshgrid(alphas, betas, indexing="ij")
            Z = np.where(np.isfinite(losses), losses, np.nan)
            lo, hi = np.nanmin(Z), np.nanmax(Z)
            norm = None
            if lo > 0 and hi / lo > LOG_SPAN:
                import matplotlib.colors as mcolors
                norm = mcolors.LogNorm(vmin=lo, vmax=hi)
                lev = np.geomspace(lo, hi, levels)
            else:
                from matplotlib.ticker import MaxNLocator
                lev = MaxNLocator(levels).tick_values(lo, hi if hi > lo else lo + 1e-12)
            cs = ax.contourf(A, B, Z, levels=lev, cmap="viridis", norm=norm)
            ax.contour(A, B, Z, levels=lev[::2], colors="white", linewidths=0.5, alpha=0.6)
            cb = fig.colorbar(cs, ax=ax, shrink=0.85)
            cb.set_label("loss")
            ax.plot([0], [0], marker="*", color="#d62728", ms=14, mec="white", label="current parameters θ")
            ax.set_xlabel(f"α along {labels[0]} (parameter-space units)")
            ax.set_ylabel(f"β along {labels[1]} (parameter-space units)")
            ax.set_aspect("equal" if _aspect_ok(alphas, betas) else "auto")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=9, frameon=False)
        ax.set_title(title, fontsize=12, fontweight="bold")
        _save(fig, save_path, model_name, "loss_landscape_2d", formats, dpi)
        return fig

    # ------------------------------------------------------------------ text and reports
    @staticmethod
    def save_analysis_summary(results: Mapping, save_path: Optional[str] = "./hessian_plots",
                              model_name: str = "model") -> str:
        """Write a plain-text summary ``{model_name}_analysis_summary.txt`` and return its text.

        Args:
            results: one ``analyze_step`` result (its sections are listed metric by metric), a history
                ``{step: results}`` (the latest step in full, then a table of the key metrics over steps),
                or a flat dict of metrics.
            save_path: directory (created); None: only return the text.
            model_name: used in the header and the file name.

        Returns:
            The summary text (written to ``{save_path}/{model_name}_analysis_summary.txt``).
        """
        if not isinstance(results, Mapping):
            raise TypeError(f"results must be a dict (one analyze_step result or {{step: results}}), got "
                            f"{type(results).__name__}")
        text = _summary_text(results, model_name)
        if save_path is not None:
            os.makedirs(save_path, exist_ok=True)
            path = os.path.join(os.fspath(save_path), f"{_safe_name(model_name)}_analysis_summary.txt")
            atomic_write(path, text)
        return text

    @staticmethod
    def create_comprehensive_report(hessian_history: Optional[Mapping] = None,
                                    component_history: Optional[Mapping] = None,
                                    alignment_history: Optional[Mapping] = None,
                                    memorization_history: Optional[Mapping] = None,
                                    sharpness_history: Optional[Mapping] = None,
                                    save_path: str = "./hessian_plots", model_name: str = "model", *,
                                    history: Optional[Mapping] = None,
                                    training_history: Optional[Mapping] = None,
                                    density: Any = None, eigen: Any = None,
                                    landscape_1d: Any = None, landscape_2d: Any = None,
                                    formats: Union[str, Sequence[str]] = ("png",), dpi: int = DPI,
                                    title: Optional[str] = None, **extra: Any) -> dict[str, Any]:
        """Draw every figure the given data allow, a text summary, and ``index.html`` showing them all.

        All inputs are optional; each figure is drawn only from what is given. ``history`` (a dict
        ``{step: analyze_step results}``) fills every section history that is not given explicitly.
        ``density`` (a ``DensityResult``), ``eigen`` (an ``EigenResult`` or eigenvalues), ``landscape_1d``
        and ``landscape_2d`` (``hessext.landscape`` results) add the corresponding figures.

        About the API document's ``create_comprehensive_report(**landscape_evolution, …)`` with
        ``landscape_evolution = {epoch: results}``: Python rejects non-string keywords at the call site
        (``TypeError: keywords must be strings``) before this function runs, so that exact call cannot work
        in any implementation. Pass ``history=landscape_evolution`` instead. Keyword arguments that do reach
        ``**extra`` and whose values are analyze_step results (string keys such as ``"3"`` or
        ``"epoch_3"``) are treated as entries of ``history``; any other unknown keyword is a ``TypeError``.

        Figures are closed after saving (nothing accumulates in pyplot's registry).

        Returns:
            ``{"figures": {quantity: [paths]}, "summary": path, "index": path}``.
        """
        unknown = {}
        for k, v in extra.items():
            if isinstance(v, Mapping) and _looks_like_results(v):
                history = dict(history or {})
                history.setdefault(k, v)
            else:
                unknown[k] = v
        if unknown:
            raise TypeError("create_comprehensive_report() got unexpected keyword arguments "
                            f"{sorted(unknown)}; "
                            "pass a {step: results} history as history=...")
        if history is not None and not isinstance(history, Mapping):
            raise TypeError(f"history must be a dict {{step: results}}, got {type(history).__name__}")
        if history:
            if hessian_history is None:
                hessian_history = _section(history, "hessian")
            if component_history is None:
                component_history = {s: r["components"] for s, r in history.items()
                                     if isinstance(r, Mapping) and isinstance(r.get("components"), Mapping)}
            if alignment_history is None:
                alignment_history = _pick(history, "alignment")
            if memorization_history is None:
                memorization_history = _pick(history, "train_val_divergence")
            if sharpness_history is None:
                sharpness_history = _pick(history, "sharpness")
        if not isinstance(save_path, (str, os.PathLike)):
            raise TypeError(f"save_path must be a str or a path, got {type(save_path).__name__}")
        os.makedirs(save_path, exist_ok=True)
        V = HessianVisualizer
        kw = dict(save_path=save_path, model_name=model_name, formats=formats, dpi=dpi)
        jobs: list[tuple[str, str, Callable[[], Figure]]] = []
        th = _section(training_history, "training") if training_history else {}
        if th:
            jobs.append(("training_curves", _CAPTIONS["training_curves"],
                         lambda: V.plot_training_curves(th, **kw)))
        hh = _section(hessian_history, "hessian") if hessian_history else {}
        if hh:
            jobs.append(("eigenvalue_evolution", _CAPTIONS["eigenvalue_evolution"],
                         lambda: V.plot_eigenvalue_evolution(hh, **kw)))
            if any(k in r for r in hh.values() for k in ("condition_number", "effective_rank_95",
                                                        "effective_rank_entropy", "complexity_score")):
                jobs.append(("complexity_metrics", _CAPTIONS["complexity_metrics"],
                             lambda: V.plot_complexity_metrics(hh, **kw)))
        ckeys, _, _, ctable = (_normalize_components(component_history) if component_history
                               else ([], 0, 0, {}))
        if ctable:
            if len(ckeys) > 1:
                jobs.append(("component_comparison", _CAPTIONS["component_comparison"],
                             lambda: V.plot_component_comparison(component_history, **kw)))
            jobs.append(("component_bars", _CAPTIONS["component_bars"],
                         lambda: V.plot_component_bars(component_history, **kw)))
        ah = _section(alignment_history, "alignment") if alignment_history else {}
        if ah:
            jobs.append(("gradient_alignment", _CAPTIONS["gradient_alignment"],
                         lambda: V.plot_gradient_alignment(ah, **kw)))
        mh = _section(memorization_history, "train_val_divergence") if memorization_history else {}
        if mh:
            jobs.append(("memorization_metrics", _CAPTIONS["memorization_metrics"],
                         lambda: V.plot_memorization_metrics(mh, **kw)))
        sh = _section(sharpness_history, "sharpness") if sharpness_history else {}
        if sh:
            jobs.append(("sharpness", _CAPTIONS["sharpness"], lambda: V.plot_sharpness(sh, **kw)))
        if eigen is not None:
            jobs.append(("top_spectrum", _CAPTIONS["top_spectrum"], lambda: V.plot_top_spectrum(eigen, **kw)))
        if density is not None:
            dens_items = _density_items(density)
            if len(dens_items) == 1:
                jobs.append(("spectral_density", _CAPTIONS["spectral_density"],
                             lambda: V.plot_spectral_density(dens_items[0][1], **kw)))
            elif dens_items:
                jobs.append(("spectral_density", _CAPTIONS["spectral_density"],
                             lambda: _plot_density_series(dens_items, **kw)))
        if landscape_1d is not None:
            jobs.append(("loss_landscape_1d", _CAPTIONS["loss_landscape_1d"],
                         lambda: V.plot_loss_landscape_1d(landscape_1d, **kw)))
        if landscape_2d is not None:
            jobs.append(("loss_landscape_2d", _CAPTIONS["loss_landscape_2d"],
                         lambda: V.plot_loss_landscape_2d(landscape_2d, **kw)))

        figures: dict[str, list[str]] = {}
        captions: dict[str, str] = {}
        failures: dict[str, str] = {}
        for name, caption, make in jobs:
            try:
                fig = make()
            except Exception as exc:  # one bad section must not lose the whole report
                failures[name] = f"{type(exc).__name__}: {exc}"
                continue
            figures[name] = list(getattr(fig, "hessext_files", []))
            captions[name] = caption
            _close(fig)

        summary_source: Mapping = dict(history) if history else _assemble_history(
            hh, component_history, ah, mh, sh)
        if th and summary_source and _is_history(summary_source):
            summary_source = _merge_training(summary_source, th)
        summary_text = _summary_text(summary_source, model_name) if summary_source else \
            f"Hessian analysis summary: {model_name}\n\n(no metrics given)\n"
        if failures:
            summary_text += "\nFigures that could not be drawn:\n" + "".join(
                f"  {k}: {v}\n" for k, v in failures.items())
        summary_path = os.path.join(os.fspath(save_path), f"{_safe_name(model_name)}_analysis_summary.txt")
        atomic_write(summary_path, summary_text)
        index_path = os.path.join(os.fspath(save_path), "index.html")
        page = _index_html(title or f"Hessian analysis report: {model_name}", model_name, save_path, figures,
                           captions, summary_source, summary_path, failures)
        atomic_write(index_path, page)
        return {"figures": figures, "summary": summary_path, "index": index_path, "failures": failures}


# ============================================================================ helpers of the extra plots
def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _aspect_ok(a: np.ndarray, b: np.ndarray) -> bool:
    ra, rb = np.ptp(a), np.ptp(b)
    return ra > 0 and rb > 0 and 0.5 <= ra / rb <= 2.0


def _density_arrays(density: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(density, (tuple, list)) and len(density) == 2:
        return _to_array(density[0]), _to_array(density[1]), np.zeros(0)
    return (_to_array(_get(density, "grid")), _to_array(_get(density, "density")),
            _to_array(_get(density, "nodes")))


def _density_items(density: Any) -> list[tuple[Any, Any]]:
    """One density, or ``{step: density}``."""
    if isinstance(density, Mapping) and "grid" not in density and "density" not in density:
        keys, _, _ = _ordered_steps(density)
        return [(k, density[k]) for k in keys]
    return [(None, density)]


def _plot_density_series(items: list[tuple[Any, Any]], save_path: Optional[str], model_name: str,
                         formats: Union[str, Sequence[str]] = ("png",), dpi: int = DPI) -> Figure:
    """Several spectral densities (one per step) overlaid, colour = training time."""
    fig = _new_figure((8.5, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["plasma"]
    top = 0.0
    curves = []
    for i, (label, d) in enumerate(items):
        g, dens, _ = _density_arrays(d)
        if g.size > 1 and dens.size == g.size and _finite(dens).size:
            curves.append((label, g, dens, cmap(0.1 + 0.8 * i / max(len(items) - 1, 1))))
            top = max(top, float(np.nanmax(dens)))
    if not curves:
        _empty(ax, "no spectral density data")
    else:
        lo = top * 1e-8
        for label, g, dens, c in curves:
            ax.plot(g, np.clip(dens, lo, None), color=c, lw=1.4, label=f"step {label}")
        ax.set_yscale("log")
        ax.set_ylim(lo, top * 3)
        _guide(ax.axvline(0.0, color="0.4", lw=1, ls="--"))
        ax.set_xlabel("eigenvalue λ (loss / param²)")
        ax.set_ylabel("density φ(λ) (1 / eigenvalue unit)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.85, ncols=1 + len(curves) // 8)
    ax.set_title(f"{model_name}: Hessian spectral density over training", fontsize=12, fontweight="bold")
    _save(fig, save_path, model_name, "spectral_density", formats, dpi)
    return fig


def _eigen_arrays(eigen: Any, residuals: Any) -> tuple[np.ndarray, Optional[np.ndarray]]:
    if isinstance(eigen, Mapping):
        if "hessian" in eigen and isinstance(eigen["hessian"], Mapping):
            eigen = eigen["hessian"]
        vals = _to_array(eigen.get("top_eigenvalues", eigen.get("eigenvalues")))
        res = eigen.get("residuals") if residuals is None else residuals
    elif hasattr(eigen, "eigenvalues"):
        vals = _to_array(eigen.eigenvalues)
        res = getattr(eigen, "residuals", None) if residuals is None else residuals
    else:
        vals = _to_array(eigen)
        res = residuals
    res_arr = _to_array(res) if res is not None else None
    if res_arr is not None and res_arr.size != vals.size:
        raise ValueError(f"residuals must have one entry per eigenvalue ({vals.size}), got {res_arr.size}")
    keep = np.isfinite(vals)
    return vals[keep], (np.abs(res_arr[keep]) if res_arr is not None else None)


# ============================================================================ summary text and HTML
_SECTION_TITLES = {
    "training": "Training",
    "hessian": "Hessian spectrum",
    "components": "Components",
    "alignment": "Gradient-Hessian alignment",
    "sharpness": "Sharpness",
    "train_val_divergence": "Train/validation landscape divergence",
}
_KEY_METRICS = [
    ("training", "train_loss", "train loss"),
    ("training", "val_loss", "val loss"),
    ("hessian", "max_eigenvalue", "λ_max"),
    ("hessian", "min_eigenvalue", "λ_min"),
    ("hessian", "hessian_trace_estimate", "trace"),
    ("hessian", "negative_count", "# negative"),
    ("hessian", "condition_number", "cond. (top-k)"),
    ("hessian", "effective_rank_entropy", "effective rank"),
    ("alignment", "grad_Hg_alignment", "cos(g, Hg)"),
    ("sharpness", "max_sharpness", "max sharpness"),
    ("train_val_divergence", "train_val_landscape_divergence_score", "divergence"),
]
_CAPTIONS = {
    "training_curves": "Training and validation loss and accuracy at the analysed steps.",
    "eigenvalue_evolution": "Top-k eigenvalues, extreme eigenvalues (symlog axis when signed), the trace "
                            "estimate with a ±2 standard-error band, and the negative curvature found.",
    "complexity_metrics": "Condition number, effective ranks and complexity score of the top-k spectrum.",
    "component_comparison": "Curvature of each component's Hessian block over training: λ_max, trace, and "
                            "trace per parameter. Colours are fixed per component.",
    "component_bars": "Per-component trace and largest eigenvalues at the last analysed step.",
    "gradient_alignment": "How the gradient lines up with the curvature: cos(g, Hg), gᵀHg/gᵀg, and the "
                          "share of the gradient in the top eigenspace.",
    "memorization_metrics": "Divergence between the training and validation Hessians: a widening gap is a "
                            "memorization signal.",
    "sharpness": "Sharpness measures over training.",
    "top_spectrum": "Top Ritz values with error bars ±‖Hv − θv‖: each bar contains a true eigenvalue.",
    "spectral_density": "Spectral density from stochastic Lanczos quadrature (log axis): the bulk near zero "
                        "and the outliers.",
    "loss_landscape_1d": "Loss along the top eigenvector, with the quadratic model from the gradient and "
                         "the curvature.",
    "loss_landscape_2d": "Loss on the plane of the two top eigenvectors.",
}


def _looks_like_results(v: Mapping) -> bool:
    return any(k in v and isinstance(v[k], Mapping) for k in _SECTION_TITLES)


def _pick(history: Mapping, name: str) -> dict:
    return {s: r[name] for s, r in history.items()
            if isinstance(r, Mapping) and isinstance(r.get(name), Mapping)}


def _assemble_history(hh: Mapping, ch: Any, ah: Mapping, mh: Mapping, sh: Mapping) -> dict:
    """Rebuild ``{step: results}`` from section histories (for the summary)."""
    out: dict[Any, dict] = {}

    def key(k: Any) -> Any:
        return int(float(k)) if _int_like(k) and not isinstance(k, str) else (int(k) if _int_like(k) else k)

    for name, h in (("hessian", hh), ("alignment", ah), ("train_val_divergence", mh), ("sharpness", sh)):
        for k, v in (h or {}).items():
            out.setdefault(key(k), {})[name] = v
    if ch:
        keys, _, _, table = _normalize_components(ch)
        for i, k in enumerate(keys):
            comps = {c: row[i] for c, row in table.items() if row[i] is not None}
            if comps:
                out.setdefault(key(k), {})["components"] = comps
    return out


def _step_key(k: Any) -> Any:
    """Int-like keys as ints, so that "40" and 40 name the same step."""
    if _int_like(k):
        return int(k.strip()) if isinstance(k, str) else int(float(k))
    return k


def _merge_training(history: Mapping, training: Mapping) -> dict:
    """``{step: results}`` with ``results["training"]`` from ``training`` (new dicts; inputs untouched)."""
    by_key = {_step_key(k): v for k, v in training.items()}
    out = {}
    for s, r in history.items():
        t = by_key.get(_step_key(s))
        out[s] = {**r, "training": t} if isinstance(r, Mapping) and isinstance(t, Mapping) else r
    return out


def _is_history(results: Mapping) -> bool:
    return bool(results) and all(_int_like(k) or (isinstance(v, Mapping) and _looks_like_results(v))
                                 for k, v in results.items()) \
        and all(isinstance(v, Mapping) for v in results.values()) and not _looks_like_results(results)


def _section_lines(name: str, sec: Mapping, indent: str = "  ") -> list[str]:
    lines = []
    if name == "components":
        rows = [(c, m) for c, m in sec.items() if isinstance(m, Mapping)]
        if not rows:
            return [indent + "(none)"]
        w = max(len(str(c)) for c, _ in rows)
        lines.append(f"{indent}{'component':<{w}}  {'λ_max':>11}  {'trace':>11}  {'params':>9}")
        for c, m in rows:
            if "error" in m and len(m) == 1:
                lines.append(f"{indent}{c:<{w}}  error: {m['error']}")
                continue
            lines.append(f"{indent}{c:<{w}}  {_fmt(_comp_value(m, 'max_eigenvalue')):>11}  "
                         f"{_fmt(_comp_value(m, 'trace')):>11}  {_fmt(m.get('num_parameters')):>9}")
        return lines
    items = [(k, v) for k, v in sec.items() if not isinstance(v, Mapping)]
    if not items:
        return [indent + "(none)"]
    w = max(len(str(k)) for k, _ in items)
    for k, v in items:
        lines.append(f"{indent}{str(k):<{w}}  {_fmt(v)}")
    return lines


def _summary_text(results: Mapping, model_name: str) -> str:
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = [f"Hessian analysis summary: {model_name}", f"written {now} by hessext", ""]
    if _is_history(results):
        keys, xs, labels = _ordered_steps(results)
        records = [results[k] for k in keys]
        out.append(f"{len(keys)} analysed steps: {', '.join(str(k) for k in keys[:12])}"
                   + (" …" if len(keys) > 12 else ""))
        out.append("")
        cols = [(sec, key, label) for sec, key, label in _KEY_METRICS
                if any(isinstance(r.get(sec), Mapping) and key in r[sec] for r in records)]
        if cols:
            out.append("Key metrics over training")
            head = f"  {'step':>8}" + "".join(f"  {label:>14}" for _, _, label in cols)
            out.append(head)
            out.append("  " + "-" * (len(head) - 2))
            for k, r in zip(keys, records):
                row = f"  {str(k):>8}"
                for sec, key, _ in cols:
                    v = r.get(sec, {}).get(key) if isinstance(r.get(sec), Mapping) else None
                    row += f"  {_fmt(v):>14}"
                out.append(row)
            out.append("")
        last = records[-1]
        out.append(f"Latest step ({keys[-1]})")
        out.extend(_result_lines(last))
    else:
        out.extend(_result_lines(results))
    return "\n".join(out).rstrip() + "\n"


def _result_lines(results: Mapping) -> list[str]:
    out = []
    if "error" in results:
        out.append(f"  analysis error: {results['error']}")
    sections = [k for k in results if isinstance(results[k], Mapping)]
    if not sections:
        return out + _section_lines("metrics", results)
    order = [s for s in _SECTION_TITLES if s in sections] + [s for s in sections if s not in _SECTION_TITLES]
    for s in order:
        if s == "meta":
            meta = results[s]
            t, mv = meta.get("time_s", {}), meta.get("matvecs", {})
            if isinstance(t, Mapping) and isinstance(mv, Mapping) and ("total" in t or "total" in mv):
                out.append(f"[cost] {_fmt(t.get('total'))} s, "
                           f"{_fmt(mv.get('total'))} Hessian-vector products")
                out.append("")
            continue
        out.append(f"[{_SECTION_TITLES.get(s, s)}]")
        out.extend(_section_lines(s, results[s]))
        out.append("")
    scalars = [(k, v) for k, v in results.items() if not isinstance(v, Mapping) and k != "error"]
    if scalars:
        out.append("[other]")
        out.extend(_section_lines("other", dict(scalars)))
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}h1{font-size:1.6em;margin-bottom:.2em}.meta{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
figure{margin:2em 0;border-top:1px solid #eee;padding-top:1em}figure img{max-width:100%;height:auto}
figcaption{color:#444;margin-top:.4em}nav a{margin-right:1em}pre{background:#f8f8f8;padding:1em;
overflow-x:auto;font-size:.85em}.warn{color:#a33}
"""


def _index_html(title: str, model_name: str, save_path: str, figures: Mapping[str, list[str]],
                captions: Mapping[str, str], history: Mapping, summary_path: str,
                failures: Mapping[str, str]) -> str:
    from . import __version__
    esc = html.escape
    root = os.path.abspath(save_path)

    def rel(p: str) -> str:
        return os.path.relpath(os.path.abspath(p), root).replace(os.sep, "/")

    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f"<p class='meta'>model <b>{esc(model_name)}</b> · hessext {esc(__version__)} · "
             f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>"]
    links = [f"<a href='#{esc(n)}'>{esc(n.replace('_', ' '))}</a>" for n in figures]
    links.append(f"<a href='{esc(rel(summary_path))}'>text summary</a>")
    for extra in sorted(os.listdir(root)):
        if extra.endswith(".json"):
            links.append(f"<a href='{esc(extra)}'>{esc(extra)}</a>")
    parts.append("<nav>" + " ".join(links) + "</nav>")
    parts.append(_summary_table_html(history))
    for name, paths in figures.items():
        pngs = [p for p in paths if p.lower().endswith((".png", ".jpg", ".jpeg", ".svg"))]
        if not pngs:
            continue
        img = pngs[0]
        others = " ".join(f"<a href='{esc(rel(p))}'>{esc(os.path.splitext(p)[1][1:])}</a>" for p in paths)
        parts.append(f"<figure id='{esc(name)}'><a href='{esc(rel(img))}'><img src='{esc(rel(img))}' "
                     f"alt='{esc(name)}'></a><figcaption><b>{esc(name.replace('_', ' '))}.</b> "
                     f"{esc(captions.get(name, ''))} <small>[{others}]</small></figcaption></figure>")
    if failures:
        parts.append("<h2>Figures that could not be drawn</h2><ul class='warn'>" + "".join(
            f"<li>{esc(k)}: {esc(v)}</li>" for k, v in failures.items()) + "</ul>")
    try:
        with open(summary_path, encoding="utf-8") as fh:
            parts.append("<h2>Text summary</h2><pre>" + esc(fh.read()) + "</pre>")
    except OSError:
        pass
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary_table_html(history: Mapping) -> str:
    esc = html.escape
    if not history:
        return "<p>No metrics were given.</p>"
    if not _is_history(history):
        history = {"—": history}
        keys, records = ["—"], [history["—"]]
    else:
        keys, _, _ = _ordered_steps(history)
        records = [history[k] for k in keys]
    cols = [(sec, key, label) for sec, key, label in _KEY_METRICS
            if any(isinstance(r.get(sec), Mapping) and key in r[sec] for r in records)]
    out = []
    if cols:
        out.append("<h2>Summary</h2><table><tr><th>step</th>"
                   + "".join(f"<th>{esc(label)}</th>" for _, _, label in cols)
                   + "</tr>")
        for k, r in zip(keys, records):
            out.append(f"<tr><td>{esc(str(k))}</td>" + "".join(
                f"<td>{esc(_fmt(r.get(sec, {}).get(key)))}</td>" if isinstance(r.get(sec), Mapping)
                else "<td></td>" for sec, key, _ in cols) + "</tr>")
        out.append("</table>")
    comps = records[-1].get("components") if isinstance(records[-1], Mapping) else None
    if isinstance(comps, Mapping) and comps:
        out.append(f"<h3>Components at step {esc(str(keys[-1]))}</h3><table><tr><th>component</th>"
                   "<th>λ_max</th><th>trace</th><th>parameters</th></tr>")
        for c, m in comps.items():
            if isinstance(m, Mapping):
                swatch = f"<span style='color:{component_color(str(c))}'>■</span>"
                out.append(f"<tr><td>{swatch} {esc(str(c))}</td>"
                           f"<td>{esc(_fmt(_comp_value(m, 'max_eigenvalue')))}</td>"
                           f"<td>{esc(_fmt(_comp_value(m, 'trace')))}</td>"
                           f"<td>{esc(_fmt(m.get('num_parameters')))}</td></tr>")
        out.append("</table>")
    return "\n".join(out) if out else "<p>No key metrics in the given results.</p>"


# Module-level aliases of the extra plots.
plot_spectral_density = HessianVisualizer.plot_spectral_density
plot_top_spectrum = HessianVisualizer.plot_top_spectrum
plot_component_bars = HessianVisualizer.plot_component_bars
plot_training_curves = HessianVisualizer.plot_training_curves
plot_loss_landscape_1d = HessianVisualizer.plot_loss_landscape_1d
plot_loss_landscape_2d = HessianVisualizer.plot_loss_landscape_2d
