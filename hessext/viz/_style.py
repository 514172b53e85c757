"""What the figures of :mod:`hessext.viz` share besides the figure itself (:mod:`hessext.viz._figure`):
colours, reading the input dicts, axis scales and number formats.

The names here are public *within* the viz package (its modules import them); the package's own public names
are those of :mod:`hessext.viz`.
"""
from __future__ import annotations

import math
import re
import zlib
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .._checks import ArgumentTypeError

#: A positive series whose max/min ratio exceeds this is drawn on a log axis.
LOG_SPAN = 30.0

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


# ============================================================================ reading the input
def to_float(x: Any) -> float:
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


def to_array(x: Any) -> np.ndarray:
    """1-D float64 array from a list/array/tensor (empty for anything unusable)."""
    if x is None:
        return np.zeros(0)
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return np.zeros(0)


def get_field(obj: Any, name: str) -> Any:
    """``obj[name]`` of a mapping, ``obj.name`` of an object (a result dataclass), None if absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


_INT_RE = re.compile(r"^[+-]?\d+$")


def int_like(key: Any) -> bool:
    """Whether a history key names a step number (``40``, ``40.0``, ``"40"``; not ``True``/``"epoch_4"``)."""
    if isinstance(key, (bool, np.bool_)):
        return False
    if isinstance(key, (int, np.integer)):
        return True
    if isinstance(key, (float, np.floating)):
        return math.isfinite(float(key)) and float(key).is_integer()
    if isinstance(key, str):
        return bool(_INT_RE.match(key.strip()))
    return False


def step_key(k: Any) -> Any:
    """Int-like keys as ints, so that "40" and 40 name the same step."""
    if int_like(k):
        return int(k.strip()) if isinstance(k, str) else int(float(k))
    return k


def ordered_steps(history: Mapping) -> tuple[list[Any], np.ndarray, Optional[list[str]]]:
    """Keys in plotting order, their x positions, and tick labels (for non-numeric keys)."""
    keys = list(history.keys())
    if keys and all(int_like(k) for k in keys):
        keys.sort(key=step_key)
        xs = np.array([step_key(k) for k in keys], dtype=float)
        return keys, xs, None
    if keys and all(isinstance(k, (int, float, np.integer, np.floating)) and not isinstance(k, bool)
                    for k in keys):
        keys.sort(key=float)
        return keys, np.array([float(k) for k in keys]), None
    return keys, np.arange(len(keys), dtype=float), [str(k) for k in keys]


def section(history: Optional[Mapping], name: str) -> dict:
    """``{step: section metrics}``: unwraps full analyze_step results and drops failed steps."""
    if history is None:
        return {}
    if not isinstance(history, Mapping):
        raise ArgumentTypeError(f"history must be a dict {{step: metrics}}, got {type(history).__name__}")
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


def lookup(r: Any, key: str) -> Any:
    """``r[key]``; ``key`` may list alternative names separated by ``|`` (the first present wins)."""
    if not isinstance(r, Mapping):
        return None
    for k in key.split("|"):
        if k in r:
            return r[k]
    return None


def series(records: Sequence[Mapping], key: str) -> np.ndarray:
    """``records[i][key]`` as floats (NaN where missing)."""
    return np.array([to_float(lookup(r, key)) for r in records])


def finite(values: Iterable[float]) -> np.ndarray:
    """The finite entries of ``values`` as a 1-D float array."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).reshape(-1)
    return arr[np.isfinite(arr)]


# ============================================================================ axes
def apply_scale(ax: Any, values: Iterable[float], axis: str = "y", scale: str = "auto") -> str:
    """Choose linear / log / symlog from the data (see the package docstring) and apply it; return the scale.

    On a log or symlog axis the limits are padded in the axis' own scale (matplotlib's margins are linear in
    the data, which on such an axis leaves the extreme points on the frame)."""
    vals = finite(values)
    chosen = choose_scale(vals, scale)
    set_scale = ax.set_yscale if axis == "y" else ax.set_xscale
    if chosen == "symlog":
        set_scale("symlog", linthresh=linthresh(vals))
    elif chosen != "linear" or scale == "linear":
        set_scale(chosen)
    if chosen in ("log", "symlog"):
        pad_scaled(ax, vals, axis)
    return chosen


def choose_scale(vals: np.ndarray, scale: str) -> str:
    """``scale`` unless it is ``"auto"``: then ``"log"`` for a positive series spanning more than
    :data:`LOG_SPAN`, ``"symlog"`` for a signed one spanning more than 100× (or a non-positive one spanning
    more than :data:`LOG_SPAN`), else ``"linear"``."""
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


def pad_scaled(ax: Any, vals: np.ndarray, axis: str, frac: float = 0.06) -> None:
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


def linthresh(vals: np.ndarray) -> float:
    """The linear region of a symlog axis: the decade of the smallest magnitude, at most 10⁴ below the top."""
    mags = np.abs(vals[np.isfinite(vals) & (vals != 0)])
    if mags.size == 0:
        return 1.0
    lo = max(float(mags.min()), float(mags.max()) * 1e-4)
    return 10.0 ** math.floor(math.log10(lo))


def set_step_axis(ax: Any, xs: np.ndarray, labels: Optional[list[str]],
                  xlabel: str = "training step") -> None:
    """The x axis of a time series: its label, tick labels for named steps, a grid."""
    ax.set_xlabel(xlabel)
    if labels is not None and len(labels) <= 20:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=30 if max((len(s) for s in labels), default=0) > 4 else 0)
    if xs.size == 1:
        ax.set_xlim(xs[0] - 1, xs[0] + 1)
    ax.grid(True, alpha=0.3)


def empty_axes(ax: Any, text: str) -> None:
    """An axes that says there is nothing to show (``text``)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def marker(n: int) -> str:
    """Markers on a series of ``n`` points only while they stay readable."""
    return "o" if n <= 40 else ""


def format_value(x: Any, digits: int = 4) -> str:
    """A number (or short list) as text for labels, tables and summaries: ``digits`` significant digits,
    scientific notation outside ``[1e-3, 1e5)``, ``n/a`` for None."""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    f = to_float(x)
    if math.isnan(f):
        if isinstance(x, str):
            return x
        if isinstance(x, (list, tuple, np.ndarray)) or hasattr(x, "detach"):
            arr = to_array(x)
            if arr.size <= 6:
                return "[" + ", ".join(format_value(v, 3) for v in arr) + "]"
            return "[" + ", ".join(format_value(v, 3) for v in arr[:5]) + f", … ({arr.size} values)]"
        return "n/a" if x is None else str(x)[:60]
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == 0:
        return "0"
    if 1e-3 <= abs(f) < 1e5:
        return f"{f:.{digits}g}"
    return f"{f:.{max(digits - 1, 1)}e}"
