"""Reports: the plain-text summary of an analysis and the HTML report (``index.html``) that shows every
figure the given data allow, a table of the key metrics and the summary."""
from __future__ import annotations

import datetime as _dt
import html
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from .._checks import ArgumentTypeError
from .._io import atomic_write
from .._version import __version__
from . import components as component_plots
from . import history as history_plots
from . import landscape as landscape_plots
from . import spectrum as spectrum_plots
from . import tracking as tracking_plots
from ._figure import DPI, Figure, FormatsLike, PathLike, close_figure, safe_name
from ._style import component_color, format_value, int_like, ordered_steps, section, step_key
from .components import component_value, normalize_components

__all__ = ["create_comprehensive_report", "save_analysis_summary"]

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
    "curvature_tracking": "Curvature tracked over training (CurvatureTracker): each quantity with its "
                          "stability threshold (dashed: 2/η, or (2 + 2β₁)/((1 − β₁)η) for Adam's "
                          "preconditioned sharpness), and the matvecs per checkpoint, warm-started (solid) "
                          "and cold (markers).",
}
_COMPLEXITY_KEYS = ("condition_number", "effective_rank_95", "effective_rank_entropy", "complexity_score")


# ============================================================================ histories
def _looks_like_results(v: Mapping) -> bool:
    return any(k in v and isinstance(v[k], Mapping) for k in _SECTION_TITLES)


def _pick(history: Mapping, name: str) -> dict:
    return {s: r[name] for s, r in history.items()
            if isinstance(r, Mapping) and isinstance(r.get(name), Mapping)}


def _is_history(results: Mapping) -> bool:
    return bool(results) and all(int_like(k) or (isinstance(v, Mapping) and _looks_like_results(v))
                                 for k, v in results.items()) \
        and all(isinstance(v, Mapping) for v in results.values()) and not _looks_like_results(results)


def _assemble_history(hh: Mapping, ch: Any, ah: Mapping, mh: Mapping, sh: Mapping) -> dict:
    """Rebuild ``{step: results}`` from section histories (for the summary)."""
    out: dict[Any, dict] = {}

    def key(k: Any) -> Any:
        return int(float(k)) if int_like(k) and not isinstance(k, str) else (int(k) if int_like(k) else k)

    for name, h in (("hessian", hh), ("alignment", ah), ("train_val_divergence", mh), ("sharpness", sh)):
        for k, v in (h or {}).items():
            out.setdefault(key(k), {})[name] = v
    if ch:
        keys, _, _, table = normalize_components(ch)
        for i, k in enumerate(keys):
            comps = {c: row[i] for c, row in table.items() if row[i] is not None}
            if comps:
                out.setdefault(key(k), {})["components"] = comps
    return out


def _merge_training(history: Mapping, training: Mapping) -> dict:
    """``{step: results}`` with ``results["training"]`` from ``training`` (new dicts; inputs untouched)."""
    by_key = {step_key(k): v for k, v in training.items()}
    out = {}
    for s, r in history.items():
        t = by_key.get(step_key(s))
        out[s] = {**r, "training": t} if isinstance(r, Mapping) and isinstance(t, Mapping) else r
    return out


# ============================================================================ text summary
def _section_lines(name: str, sec: Mapping, indent: str = "  ") -> list[str]:
    if name == "components":
        rows = [(c, m) for c, m in sec.items() if isinstance(m, Mapping)]
        if not rows:
            return [indent + "(none)"]
        w = max(len(str(c)) for c, _ in rows)
        lines = [f"{indent}{'component':<{w}}  {'λ_max':>11}  {'trace':>11}  {'params':>9}"]
        for c, m in rows:
            if "error" in m and len(m) == 1:
                lines.append(f"{indent}{c:<{w}}  error: {m['error']}")
                continue
            lines.append(f"{indent}{c:<{w}}  {format_value(component_value(m, 'max_eigenvalue')):>11}  "
                         f"{format_value(component_value(m, 'trace')):>11}  "
                         f"{format_value(m.get('num_parameters')):>9}")
        return lines
    items = [(k, v) for k, v in sec.items() if not isinstance(v, Mapping)]
    if not items:
        return [indent + "(none)"]
    w = max(len(str(k)) for k, _ in items)
    return [f"{indent}{str(k):<{w}}  {format_value(v)}" for k, v in items]


def _key_columns(records: list) -> list[tuple[str, str, str]]:
    return [(sec, key, label) for sec, key, label in _KEY_METRICS
            if any(isinstance(r.get(sec), Mapping) and key in r[sec] for r in records)]


def _metric(r: Mapping, sec: str, key: str) -> Any:
    return r.get(sec, {}).get(key) if isinstance(r.get(sec), Mapping) else None


def _summary_text(results: Mapping, model_name: str) -> str:
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = [f"Hessian analysis summary: {model_name}", f"written {now} by hessext", ""]
    if not _is_history(results):
        out.extend(_result_lines(results))
        return "\n".join(out).rstrip() + "\n"
    keys, _, _ = ordered_steps(results)
    records = [results[k] for k in keys]
    out.append(f"{len(keys)} analysed steps: {', '.join(str(k) for k in keys[:12])}"
               + (" …" if len(keys) > 12 else ""))
    out.append("")
    cols = _key_columns(records)
    if cols:
        out.append("Key metrics over training")
        head = f"  {'step':>8}" + "".join(f"  {label:>14}" for _, _, label in cols)
        out += [head, "  " + "-" * (len(head) - 2)]
        for k, r in zip(keys, records):
            cells = "".join(f"  {format_value(_metric(r, s, m)):>14}" for s, m, _ in cols)
            out.append(f"  {str(k):>8}{cells}")
        out.append("")
    out.append(f"Latest step ({keys[-1]})")
    out.extend(_result_lines(records[-1]))
    return "\n".join(out).rstrip() + "\n"


def _cost_lines(meta: Mapping) -> list[str]:
    t, mv = meta.get("time_s", {}), meta.get("matvecs", {})
    if isinstance(t, Mapping) and isinstance(mv, Mapping) and ("total" in t or "total" in mv):
        return [f"[cost] {format_value(t.get('total'))} s, "
                f"{format_value(mv.get('total'))} Hessian-vector products", ""]
    return []


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
            out.extend(_cost_lines(results[s]))
            continue
        out.append(f"[{_SECTION_TITLES.get(s, s)}]")
        out.extend(_section_lines(s, results[s]))
        out.append("")
    scalars = [(k, v) for k, v in results.items() if not isinstance(v, Mapping) and k != "error"]
    if scalars:
        out.append("[other]")
        out.extend(_section_lines("other", dict(scalars)))
    return out


# ============================================================================ HTML
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}h1{font-size:1.6em;margin-bottom:.2em}.meta{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
figure{margin:2em 0;border-top:1px solid #eee;padding-top:1em}figure img{max-width:100%;height:auto}
figcaption{color:#444;margin-top:.4em}nav a{margin-right:1em}pre{background:#f8f8f8;padding:1em;
overflow-x:auto;font-size:.85em}.warn{color:#a33}
"""


def _figure_html(name: str, paths: list[str], caption: str, rel: Callable[[str], str]) -> Optional[str]:
    esc = html.escape
    pngs = [p for p in paths if p.lower().endswith((".png", ".jpg", ".jpeg", ".svg"))]
    if not pngs:
        return None
    img = pngs[0]
    others = " ".join(f"<a href='{esc(rel(p))}'>{esc(os.path.splitext(p)[1][1:])}</a>" for p in paths)
    return (f"<figure id='{esc(name)}'><a href='{esc(rel(img))}'><img src='{esc(rel(img))}' "
            f"alt='{esc(name)}'></a><figcaption><b>{esc(name.replace('_', ' '))}.</b> "
            f"{esc(caption)} <small>[{others}]</small></figcaption></figure>")


def _index_html(title: str, model_name: str, save_path: PathLike, figures: Mapping[str, list[str]],
                captions: Mapping[str, str], history: Mapping, summary_path: str,
                failures: Mapping[str, str]) -> str:
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
    links += [f"<a href='{esc(extra)}'>{esc(extra)}</a>" for extra in sorted(os.listdir(root))
              if extra.endswith(".json")]
    parts.append("<nav>" + " ".join(links) + "</nav>")
    parts.append(_summary_table_html(history))
    parts += [f for f in (_figure_html(n, p, captions.get(n, ""), rel) for n, p in figures.items()) if f]
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


def _components_table_html(comps: Mapping, step: Any) -> list[str]:
    esc = html.escape
    out = [f"<h3>Components at step {esc(str(step))}</h3><table><tr><th>component</th>"
           "<th>λ_max</th><th>trace</th><th>parameters</th></tr>"]
    for c, m in comps.items():
        if isinstance(m, Mapping):
            swatch = f"<span style='color:{component_color(str(c))}'>■</span>"
            out.append(f"<tr><td>{swatch} {esc(str(c))}</td>"
                       f"<td>{esc(format_value(component_value(m, 'max_eigenvalue')))}</td>"
                       f"<td>{esc(format_value(component_value(m, 'trace')))}</td>"
                       f"<td>{esc(format_value(m.get('num_parameters')))}</td></tr>")
    out.append("</table>")
    return out


def _summary_table_html(history: Mapping) -> str:
    esc = html.escape
    if not history:
        return "<p>No metrics were given.</p>"
    if not _is_history(history):
        keys, records = ["—"], [history]
    else:
        keys, _, _ = ordered_steps(history)
        records = [history[k] for k in keys]
    cols = _key_columns(records)
    out = []
    if cols:
        out.append("<h2>Summary</h2><table><tr><th>step</th>"
                   + "".join(f"<th>{esc(label)}</th>" for _, _, label in cols) + "</tr>")
        for k, r in zip(keys, records):
            out.append(f"<tr><td>{esc(str(k))}</td>" + "".join(
                f"<td>{esc(format_value(_metric(r, sec, key)))}</td>" if isinstance(r.get(sec), Mapping)
                else "<td></td>" for sec, key, _ in cols) + "</tr>")
        out.append("</table>")
    comps = records[-1].get("components") if isinstance(records[-1], Mapping) else None
    if isinstance(comps, Mapping) and comps:
        out += _components_table_html(comps, keys[-1])
    return "\n".join(out) if out else "<p>No key metrics in the given results.</p>"


# ============================================================================ the report
def save_analysis_summary(results: Mapping, save_path: Optional[PathLike] = "./hessian_plots",
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
        raise ArgumentTypeError(f"results must be a dict (one analyze_step result or {{step: results}}), got "
                                f"{type(results).__name__}")
    text = _summary_text(results, model_name)
    if save_path is not None:
        os.makedirs(save_path, exist_ok=True)
        path = os.path.join(os.fspath(save_path), f"{safe_name(model_name)}_analysis_summary.txt")
        atomic_write(path, text)
    return text


def _history_from_extra(history: Optional[Mapping], extra: Mapping[str, Any]) -> Optional[Mapping]:
    """Keyword arguments whose values are analyze_step results are entries of ``history``; any other is a
    ``TypeError``."""
    unknown = {}
    for k, v in extra.items():
        if isinstance(v, Mapping) and _looks_like_results(v):
            history = dict(history or {})
            history.setdefault(k, v)
        else:
            unknown[k] = v
    if unknown:
        raise TypeError(f"create_comprehensive_report() got unexpected keyword arguments {sorted(unknown)}; "
                        "pass a {step: results} history as history=...")
    if history is not None and not isinstance(history, Mapping):
        raise ArgumentTypeError(f"history must be a dict {{step: results}}, got {type(history).__name__}")
    return history


@dataclass
class _Histories:
    """The section histories a report draws from (``{step: metrics}``; components in any accepted form)."""
    training: dict
    hessian: dict
    components: Any
    alignment: dict
    memorization: dict
    sharpness: dict


def _histories(history: Optional[Mapping], training: Optional[Mapping], hessian: Optional[Mapping],
               components: Optional[Mapping], alignment: Optional[Mapping], memorization: Optional[Mapping],
               sharpness: Optional[Mapping]) -> _Histories:
    """Each section history as given, else taken from ``history`` (``{step: analyze_step results}``)."""
    if history:
        if hessian is None:
            hessian = section(history, "hessian")
        if components is None:
            components = {s: r["components"] for s, r in history.items()
                          if isinstance(r, Mapping) and isinstance(r.get("components"), Mapping)}
        alignment = _pick(history, "alignment") if alignment is None else alignment
        memorization = _pick(history, "train_val_divergence") if memorization is None else memorization
        sharpness = _pick(history, "sharpness") if sharpness is None else sharpness
    return _Histories(
        training=section(training, "training") if training else {},
        hessian=section(hessian, "hessian") if hessian else {},
        components=components,
        alignment=section(alignment, "alignment") if alignment else {},
        memorization=section(memorization, "train_val_divergence") if memorization else {},
        sharpness=section(sharpness, "sharpness") if sharpness else {})


#: ``(figure name, plot function, its data)``: the report calls ``function(data, save_path=…, …)``.
_Job = tuple[str, Callable[..., Figure], Any]


def _history_jobs(h: _Histories) -> list[_Job]:
    """The figures over training that the histories allow, in report order."""
    jobs: list[_Job] = []
    if h.training:
        jobs.append(("training_curves", history_plots.plot_training_curves, h.training))
    if h.hessian:
        jobs.append(("eigenvalue_evolution", history_plots.plot_eigenvalue_evolution, h.hessian))
        if any(k in r for r in h.hessian.values() for k in _COMPLEXITY_KEYS):
            jobs.append(("complexity_metrics", history_plots.plot_complexity_metrics, h.hessian))
    ckeys, _, _, ctable = normalize_components(h.components) if h.components else ([], None, None, {})
    if ctable:
        if len(ckeys) > 1:
            jobs.append(("component_comparison", component_plots.plot_component_comparison, h.components))
        jobs.append(("component_bars", component_plots.plot_component_bars, h.components))
    if h.alignment:
        jobs.append(("gradient_alignment", history_plots.plot_gradient_alignment, h.alignment))
    if h.memorization:
        jobs.append(("memorization_metrics", history_plots.plot_memorization_metrics, h.memorization))
    if h.sharpness:
        jobs.append(("sharpness", history_plots.plot_sharpness, h.sharpness))
    return jobs


def _result_jobs(eigen: Any, density: Any, landscape_1d: Any, landscape_2d: Any,
                 tracking: Any = None) -> list[_Job]:
    """The figures of results at one point (spectrum, density, landscapes) and of a tracked run that are
    given."""
    jobs: list[_Job] = []
    if tracking is not None:
        jobs.append(("curvature_tracking", tracking_plots.plot_curvature_tracking, tracking))
    if eigen is not None:
        jobs.append(("top_spectrum", spectrum_plots.plot_top_spectrum, eigen))
    items = spectrum_plots.density_items(density) if density is not None else []
    if len(items) == 1:
        jobs.append(("spectral_density", spectrum_plots.plot_spectral_density, items[0][1]))
    elif items:
        jobs.append(("spectral_density", spectrum_plots.plot_density_series, items))
    if landscape_1d is not None:
        jobs.append(("loss_landscape_1d", landscape_plots.plot_loss_landscape_1d, landscape_1d))
    if landscape_2d is not None:
        jobs.append(("loss_landscape_2d", landscape_plots.plot_loss_landscape_2d, landscape_2d))
    return jobs


def _draw_jobs(jobs: list[_Job], kw: Mapping[str, Any]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Draw and close every figure: ``({name: written paths}, {name: error of a figure that failed})``."""
    figures: dict[str, list[str]] = {}
    failures: dict[str, str] = {}
    for name, plot, data in jobs:
        try:
            fig = plot(data, **kw)
        except Exception as exc:  # noqa: BLE001 - one bad section must not lose the whole report
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        figures[name] = list(getattr(fig, "hessext_files", []))
        close_figure(fig)
    return figures, failures


def _write_summary(history: Optional[Mapping], h: _Histories, save_path: PathLike, model_name: str,
                   failures: Mapping[str, str]) -> tuple[str, Mapping]:
    """Write the text summary; returns its path and the ``{step: results}`` it was made of."""
    source: Mapping = dict(history) if history else _assemble_history(
        h.hessian, h.components, h.alignment, h.memorization, h.sharpness)
    if h.training and source and _is_history(source):
        source = _merge_training(source, h.training)
    text = _summary_text(source, model_name) if source else \
        f"Hessian analysis summary: {model_name}\n\n(no metrics given)\n"
    if failures:
        text += "\nFigures that could not be drawn:\n" + "".join(f"  {k}: {v}\n" for k, v in failures.items())
    path = os.path.join(os.fspath(save_path), f"{safe_name(model_name)}_analysis_summary.txt")
    atomic_write(path, text)
    return path, source


def create_comprehensive_report(hessian_history: Optional[Mapping] = None,
                                component_history: Optional[Mapping] = None,
                                alignment_history: Optional[Mapping] = None,
                                memorization_history: Optional[Mapping] = None,
                                sharpness_history: Optional[Mapping] = None,
                                save_path: PathLike = "./hessian_plots", model_name: str = "model", *,
                                history: Optional[Mapping] = None, training_history: Optional[Mapping] = None,
                                density: Any = None, eigen: Any = None, landscape_1d: Any = None,
                                landscape_2d: Any = None, formats: FormatsLike = ("png",), dpi: int = DPI,
                                title: Optional[str] = None, tracking: Any = None,
                                **extra: Any) -> dict[str, Any]:
    """Draw every figure the given data allow, a text summary, and ``index.html`` showing them all.

    All inputs are optional; each figure is drawn only from what is given. ``history`` (a dict
    ``{step: analyze_step results}``) fills every section history that is not given explicitly.
    ``density`` (a ``DensityResult``, or ``{step: DensityResult}``), ``eigen`` (an ``EigenResult`` or
    eigenvalues), ``landscape_1d`` and ``landscape_2d`` (``hessext.landscape`` results) add the corresponding
    figures. ``tracking`` (a :class:`hessext.CurvatureTracker`'s records, or the path of its JSON-lines file)
    adds the curvature-over-training figure (:func:`hessext.viz.plot_curvature_tracking`).

    About the API document's ``create_comprehensive_report(**landscape_evolution, …)`` with
    ``landscape_evolution = {epoch: results}``: Python rejects non-string keywords at the call site
    (``TypeError: keywords must be strings``) before this function runs, so that exact call cannot work
    in any implementation. Pass ``history=landscape_evolution`` instead. Keyword arguments that do reach
    ``**extra`` and whose values are analyze_step results (string keys such as ``"3"`` or
    ``"epoch_3"``) are treated as entries of ``history``; any other unknown keyword is a ``TypeError``.

    Figures are closed after saving (nothing accumulates in pyplot's registry); a figure that fails is
    listed in the report and under ``"failures"`` instead of stopping the report.

    Returns:
        ``{"figures": {quantity: [paths]}, "summary": path, "index": path, "failures": {quantity: error}}``.
    """
    history = _history_from_extra(history, extra)
    h = _histories(history, training_history, hessian_history, component_history, alignment_history,
                   memorization_history, sharpness_history)
    if not isinstance(save_path, (str, os.PathLike)):
        raise ArgumentTypeError(f"save_path must be a str or a path, got {type(save_path).__name__}")
    os.makedirs(save_path, exist_ok=True)
    kw = dict(save_path=save_path, model_name=model_name, formats=formats, dpi=dpi)
    jobs = _history_jobs(h) + _result_jobs(eigen, density, landscape_1d, landscape_2d, tracking)
    figures, failures = _draw_jobs(jobs, kw)
    summary_path, source = _write_summary(history, h, save_path, model_name, failures)
    index_path = os.path.join(os.fspath(save_path), "index.html")
    page = _index_html(title or f"Hessian analysis report: {model_name}", model_name, save_path, figures,
                       {n: _CAPTIONS.get(n, "") for n in figures}, source, summary_path, failures)
    atomic_write(index_path, page)
    return {"figures": figures, "summary": summary_path, "index": index_path, "failures": failures}
