"""Curvature by component (attention, FFN, embeddings, …): the comparison over training and the bars of one
step. Colours are fixed per component (``COMPONENT_COLORS``)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .._checks import ArgumentTypeError
from ._figure import DPI, Figure, FormatsLike, PathLike, new_figure, write_figure
from ._style import (
    COMPONENT_COLORS,
    apply_scale,
    choose_scale,
    component_color,
    empty_axes,
    finite,
    format_value,
    int_like,
    linthresh,
    lookup,
    marker,
    ordered_steps,
    pad_scaled,
    set_step_axis,
    step_key,
    to_array,
    to_float,
)

__all__ = ["plot_component_comparison", "plot_component_bars", "normalize_components", "component_value"]

#: ``{component: [metrics per step, None where missing or failed]}``
ComponentTable = dict[str, list[Optional[Mapping]]]


# ============================================================================ reading component histories
def _unwrap(v: Mapping) -> Mapping:
    return v["components"] if isinstance(v.get("components"), Mapping) else v


def _nested(v: Mapping) -> bool:
    """``{key: {…}}``: one level deeper than a metrics dict ``{name: number}``."""
    vals = [x for x in _unwrap(v).values() if x is not None]
    return bool(vals) and all(isinstance(x, Mapping) for x in vals)


def _key_order(items: Mapping) -> str:
    """``"step-major"``, ``"component-major"`` or ``"snapshot"`` (see :func:`normalize_components`)."""
    two_level = all(_nested(v) for v in items.values())
    inner_keys = list(dict.fromkeys(ik for v in items.values() for ik in _unwrap(v))) if two_level else []
    if all(int_like(k) for k in items):
        return "step-major"
    if two_level and inner_keys and all(int_like(ik) for ik in inner_keys):
        return "component-major"
    if two_level:
        # neither level is numbered (e.g. "epoch_3"): the level whose keys are known component names is the
        # component level; the document's order {step: {component: …}} wins a tie
        known_outer = sum(str(k) in COMPONENT_COLORS for k in items)
        known_inner = sum(str(k) in COMPONENT_COLORS for k in inner_keys)
        return "step-major" if known_outer <= known_inner else "component-major"
    return "snapshot"


def normalize_components(component_history: Any) -> tuple[list[Any], np.ndarray, Optional[list[str]],
                                                           ComponentTable]:
    """Bring a component history into ``(step keys, x, tick labels, {component: [metrics per step]})``.

    Accepted: ``{step: {component: metrics}}`` (values may also be full analyze_step results with a
    ``"components"`` entry), ``{component: {step: metrics}}``, or one snapshot ``{component: metrics}``
    (drawn as a single step). Int-like keys are steps; when neither level is int-like (``"epoch_3"``), the
    level whose keys are known component names (``COMPONENT_COLORS``) is the component level.
    """
    if component_history is None:
        return [], np.zeros(0), None, {}
    if not isinstance(component_history, Mapping):
        raise ArgumentTypeError(f"component_history must be a dict, got {type(component_history).__name__}")
    items = {k: v for k, v in component_history.items() if isinstance(v, Mapping)}
    if not items:
        return [], np.zeros(0), None, {}
    mode = _key_order(items)
    if mode == "step-major":
        by_step = {k: _unwrap(v) for k, v in items.items()}
    elif mode == "component-major":
        by_step = {}
        for comp, per_step in items.items():
            for s, m in per_step.items():
                # int-like keys may mix "5" and 5: merge equal integers
                by_step.setdefault(step_key(s), {})[comp] = m
    else:
        by_step = {0: items}
    keys, xs, labels = ordered_steps(by_step)
    comps: list[str] = []
    for k in keys:
        for c, m in by_step[k].items():
            if isinstance(m, Mapping) and c not in comps:
                comps.append(str(c))
    table: ComponentTable = {}
    for c in comps:
        row = []
        for k in keys:
            m = by_step[k].get(c)
            row.append(m if isinstance(m, Mapping) and not ("error" in m and len(m) == 1) else None)
        table[c] = row
    return keys, xs, labels, table


def component_value(m: Optional[Mapping], key: str) -> float:
    """A metric of one component's metrics ``m`` (NaN if missing): ``trace`` (under any of its names),
    ``trace_per_parameter = tr H_c / n_c``, ``max_eigenvalue`` (else the largest of ``top_eigenvalues``),
    or any other key as it is."""
    if m is None:
        return float("nan")
    if key == "trace_per_parameter":
        t = to_float(lookup(m, "trace|trace_estimate|hessian_trace_estimate"))
        n = to_float(m.get("num_parameters"))
        return t / n if n and math.isfinite(n) and n > 0 else float("nan")
    if key == "trace":
        return to_float(lookup(m, "trace|trace_estimate|hessian_trace_estimate"))
    if key == "max_eigenvalue":
        v = to_float(m.get("max_eigenvalue"))
        if math.isnan(v):
            top = to_array(m.get("top_eigenvalues"))
            v = float(top.max()) if top.size else float("nan")
        return v
    return to_float(m.get(key))


# ============================================================================ bars
def bar_axis(ax: Any, values: Sequence[float], ends: Optional[Sequence[float]] = None,
             extra: Sequence[float] = ()) -> str:
    """Value axis of a horizontal bar chart: scale from the data, and every bar labelled with its value.

    On a log axis a bar's length depends on where the axis starts, so the axis starts a whole decade below
    the smallest bar (every bar visible, none of equal length by accident) and each bar carries its number.
    ``ends`` are where the labels go (bar end or error-bar end); ``extra`` are other values drawn on the axis.
    """
    vals = np.asarray(values, dtype=float)
    ends_arr = vals if ends is None else np.where(np.isfinite(np.asarray(ends, dtype=float)),
                                                  np.asarray(ends, dtype=float), vals)
    allv = finite(np.concatenate([vals, ends_arr, np.asarray(list(extra), dtype=float)]))
    scale = choose_scale(allv, "auto")
    if scale == "log":
        ax.set_xscale("log")
        lg_lo = math.floor(math.log10(allv.min()) - 1e-9)
        lg_hi = math.log10(allv.max())
        ax.set_xlim(10.0 ** lg_lo, 10.0 ** (lg_hi + 0.2 * (lg_hi - lg_lo)))
    elif scale == "symlog":
        ax.set_xscale("symlog", linthresh=linthresh(allv))
        pad_scaled(ax, allv, "x", frac=0.15)
    elif allv.size:
        lo, hi = min(0.0, float(allv.min())), max(0.0, float(allv.max()))
        span = hi - lo if hi > lo else 1.0
        ax.set_xlim(lo - (0.15 * span if lo < 0 else 0.0), hi + (0.15 * span if hi > 0 else 0.0))
    for j, (val, end) in enumerate(zip(vals, ends_arr)):
        if np.isfinite(val):
            at = end if np.isfinite(end) else val
            ax.annotate(format_value(val, 3), (at, j), xytext=(4 if at >= 0 else -4, 0),
                        textcoords="offset points", ha="left" if at >= 0 else "right", va="center",
                        fontsize=8, color="0.2")
    return scale


# ============================================================================ comparison over training
_SPECS = [("max_eigenvalue", "Largest eigenvalue of each block", "λ_max (loss / param²)"),
          ("trace", "Trace of each block", "tr H_c (loss / param²)"),
          ("trace_per_parameter", "Mean curvature per parameter", "tr H_c / n_c (loss / param²)")]


def _empty_figure(title: str, text: str, size: tuple[float, float] = (7, 3.5)) -> Figure:
    fig = new_figure(size)
    empty_axes(fig.add_subplot(1, 1, 1), text)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return fig


def _last_step_bars(ax: Any, last_vals: Mapping[str, float], handles: dict[str, Any],
                    step_label: str) -> None:
    """The comparison's last panel: ``λ_max`` of each component at the last step, as bars."""
    names = sorted(last_vals, key=lambda c: last_vals[c])
    vals = [last_vals[c] for c in names]
    bars = ax.barh(names, vals, color=[component_color(c) for c in names])
    for c, b in zip(names, bars):
        handles.setdefault(c, b)
    bar_axis(ax, vals)
    ax.set_title(f"λ_max by component (step {step_label})")
    ax.set_xlabel("λ_max (loss / param²)")
    ax.grid(True, axis="x", alpha=0.3)


def plot_component_comparison(component_history: Mapping, save_path: Optional[PathLike] = None,
                              model_name: str = "model", *, formats: FormatsLike = ("png",),
                              dpi: int = DPI) -> Figure:
    """Curvature per component (attention, FFN, embeddings, …) over training.

    Accepts ``{step: {component: metrics}}`` (what ``{s: r["components"] for s, r in history.items()}``
    gives), ``{component: {step: metrics}}``, a history of full results, or a single snapshot
    ``{component: metrics}``. Steps are recognised as int or int-like keys.

    Panels: ``λ_max`` of each component's Hessian block, its trace ``tr H_c``, the mean curvature per
    parameter ``tr H_c / n_c``, and a bar chart of ``λ_max`` at the last step. Colours are fixed per
    component (``COMPONENT_COLORS``); one legend beside the panels names them.
    """
    keys, xs, labels, table = normalize_components(component_history)
    title = f"{model_name}: curvature by component"
    active = [s for s in _SPECS
              if any(np.isfinite(component_value(m, s[0])) for row in table.values() for m in row)]
    last_vals = {c: component_value(row[-1], "max_eigenvalue") for c, row in table.items()} if keys else {}
    last_vals = {c: v for c, v in last_vals.items() if np.isfinite(v)}
    n_axes = len(active) + (1 if last_vals else 0)
    if n_axes == 0:
        fig = _empty_figure(title, "no component data in this history")
        write_figure(fig, save_path, model_name, "component_comparison", formats, dpi)
        return fig
    ncols = 2 if n_axes > 1 else 1
    nrows = math.ceil(n_axes / ncols)
    fig = new_figure((5.4 * ncols + 1.8, 3.6 * nrows + 0.6))
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    handles: dict[str, Any] = {}
    for ax, (key, ptitle, ylabel) in zip(axes, active):
        every = []
        for comp, row in table.items():
            ys = np.array([component_value(m, key) for m in row])
            if not finite(ys).size:
                continue
            (h,) = ax.plot(xs, ys, marker=marker(len(xs)), ms=4, lw=1.8, color=component_color(comp),
                           label=comp)
            handles.setdefault(comp, h)
            every.extend(ys.tolist())
        apply_scale(ax, every, "y")
        ax.set_title(ptitle)
        ax.set_ylabel(ylabel)
        set_step_axis(ax, xs, labels)
    used = len(active)
    if last_vals:
        _last_step_bars(axes[used], last_vals, handles, labels[-1] if labels else format_value(xs[-1]))
        used += 1
    for ax in axes[used:]:
        ax.remove()
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper", title="component",
                   fontsize=9)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    write_figure(fig, save_path, model_name, "component_comparison", formats, dpi)
    return fig


# ============================================================================ bars of one step
def _bar_labels(names: Sequence[str], snap: Mapping[str, Mapping]) -> list[str]:
    """Bar labels: the component and its number of parameters ``n_c`` when known."""
    out = []
    for c in names:
        npar = to_float(snap[c].get("num_parameters"))
        out.append(f"{c}\n({int(npar):,} params)" if np.isfinite(npar) else c)
    return out


def _trace_bars(ax: Any, names: Sequence[str], snap: Mapping[str, Mapping],
                traces: Mapping[str, float]) -> None:
    """``tr H_c`` of each block, with ``±2`` standard-error bars when the metrics carry them."""
    vals = np.array([traces[c] for c in names])
    err = np.array([2 * to_float(lookup(snap[c], "trace_std_error|hessian_trace_std_error")) for c in names])
    err = err if finite(err).size else None
    ax.barh(range(len(names)), np.nan_to_num(vals), xerr=None if err is None else np.nan_to_num(err),
            color=[component_color(c) for c in names], capsize=3)
    bar_axis(ax, vals, ends=None if err is None else vals + err)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(_bar_labels(names, snap), fontsize=9)
    ax.set_xlabel("trace tr H_c (loss / param²)" + ("  ± 2 s.e." if err is not None else ""))
    ax.set_title("Trace of each block")
    ax.grid(True, axis="x", alpha=0.3)


def _lmax_bars(ax: Any, names: Sequence[str], snap: Mapping[str, Mapping], lmax: Mapping[str, float],
               with_counts: bool) -> None:
    """``λ_max`` of each block as a bar, its other top eigenvalues as dots."""
    vals = np.array([lmax[c] for c in names])
    ax.barh(range(len(names)), np.nan_to_num(vals), color=[component_color(c) for c in names], alpha=0.85)
    every = list(vals)
    for j, c in enumerate(names):
        top = to_array(snap[c].get("top_eigenvalues"))
        if top.size > 1:
            ax.plot(top[1:], np.full(top.size - 1, j), "o", color="0.15", ms=3.5,
                    label="other top eigenvalues" if j == 0 else None)
            every.extend(top[1:].tolist())
    bar_axis(ax, vals, extra=every)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(_bar_labels(names, snap) if with_counts else list(names), fontsize=9)
    ax.set_xlabel("eigenvalue (loss / param²)")
    ax.set_title("Largest eigenvalue λ_max of each block")
    ax.grid(True, axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)


def plot_component_bars(components: Mapping, save_path: Optional[PathLike] = None, model_name: str = "model",
                        *, step: Any = None, formats: FormatsLike = ("png",), dpi: int = DPI) -> Figure:
    """Per-component trace and top eigenvalues at one step, as horizontal bars.

    Left: ``tr H_c`` of each component block (error bars ``±2`` standard errors when the metrics carry
    ``trace_std_error``). Right: ``λ_max`` of each block, with its other top eigenvalues as dots.
    Labels give the number of parameters ``n_c``.

    Args:
        components: ``{component: metrics}`` (one step), or a component history in either key order
            (the last step is drawn).
        step: the step shown in the title (default: the history's last step).
    """
    keys, xs, labels, table = normalize_components(components)
    if keys and step is None and len(keys) > 1:
        step = labels[-1] if labels else int(xs[-1])
    snap = {c: row[-1] for c, row in table.items() if row and row[-1] is not None}
    title = f"{model_name}: curvature by component" + (f" (step {step})" if step is not None else "")
    traces = {c: component_value(m, "trace") for c, m in snap.items()}
    lmax = {c: component_value(m, "max_eigenvalue") for c, m in snap.items()}
    has_t = any(np.isfinite(v) for v in traces.values())
    has_l = any(np.isfinite(v) for v in lmax.values())
    if not (has_t or has_l):
        fig = _empty_figure(title, "no component data", (7.0, 1.2 + 0.45 * max(len(snap), 1) + 0.8))
        write_figure(fig, save_path, model_name, "component_bars", formats, dpi)
        return fig
    fig = new_figure((11.5 if has_t and has_l else 7.0, 1.2 + 0.45 * max(len(snap), 1) + 0.8))
    axes = list(fig.subplots(1, int(has_t) + int(has_l), squeeze=False).ravel())
    names = sorted(snap, key=lambda c: -(lmax[c] if np.isfinite(lmax[c]) else -np.inf))[::-1]
    if has_t:
        _trace_bars(axes.pop(0), names, snap, traces)
    if has_l:
        _lmax_bars(axes.pop(0), names, snap, lmax, with_counts=not has_t)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    write_figure(fig, save_path, model_name, "component_bars", formats, dpi)
    return fig
