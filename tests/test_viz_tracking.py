"""The curvature-tracking figure (hessext.viz.plot_curvature_tracking) and its place in the report, on
synthetic tracker records: λ_max rising to 2/η and hovering there, as under gradient descent at the edge of
stability (Cohen et al., ICLR 2021)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
from _plotcheck import legend_hits  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from hessext.viz import HessianVisualizer, create_comprehensive_report, plot_curvature_tracking  # noqa: E402

LR = 0.1


def eos_records(n: int = 40, every: int = 10, quantities=("lambda_max", "top_k", "trace", "grad_overlap"),
                cold_every: int = 5) -> list[dict]:
    """Synthetic records in the tracker's JSON-lines format: λ_max sharpens from 4 to 2/η = 20 by the middle
    of the run, then oscillates ±3 % around it; the trace with its standard error; warm matvecs far below the
    cold ones (present at every ``cold_every``-th checkpoint)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        step = i * every
        lam = 4 + 16 * min(1.0, i / (n / 2)) + (0.6 * math.sin(i) if i > n / 2 else 0.0)
        q: dict = {}
        if "lambda_max" in quantities:
            q["lambda_max"] = lam
        if "top_k" in quantities:
            q["top_k"] = [lam, 0.6 * lam, 0.3 * lam]
        if "trace" in quantities:
            q["trace"] = 3 * lam + float(rng.normal())
            q["trace_std_error"] = 1.5
        if "grad_overlap" in quantities:
            q["grad_overlap"] = 0.5 + 0.4 * min(1.0, i / n)
        rec = {"step": step, "loss": 1.0 / (1 + i), "lr": LR, "optimizer": "SGD", "quantities": q,
               "thresholds": {k: 2 / LR for k in ("lambda_max", "top_k") if k in q},
               "matvecs": {"lambda_max": 30 if i == 0 else 6 + i % 3},
               "cold_matvecs": {"lambda_max": 31 + i % 4} if i % cold_every == 0 else None,
               "residuals": {"lambda_max": 1e-4}, "warm_start": True, "time_s": 0.2}
        out.append(rec)
    return out


def write_jsonl(records, path, torn=False):
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
        if torn:
            fh.write('{"step": 9999, "quantities": {"lambda_')
    return path


def _axes(fig):
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def _data_lines(ax):
    return [ln for ln in ax.get_lines() if ln.get_gid() != "hessext-guide"]


def test_panels_threshold_and_values(tmp_path):
    recs = eos_records()
    fig = plot_curvature_tracking(recs, save_path=tmp_path, model_name="mlp")
    axes = _axes(fig)
    titles = set(axes)
    assert {"Sharpness λ_max(H)", "Top-k eigenvalues of H", "Trace of H (Hutchinson)",
            "Gradient overlap with the top-k eigenspace", "Hessian-vector products per checkpoint"} <= titles
    assert len(axes) == 5
    assert fig.hessext_files == [os.path.join(str(tmp_path), "mlp_curvature_tracking.png")]
    assert os.path.getsize(fig.hessext_files[0]) > 0
    ax = axes["Sharpness λ_max(H)"]
    # the data line carries the records' values at the records' steps
    line = _data_lines(ax)[0]
    assert list(line.get_xdata()) == [r["step"] for r in recs]
    assert list(line.get_ydata()) == pytest.approx([r["quantities"]["lambda_max"] for r in recs])
    # the threshold: a dashed guide line at 2/η, labelled
    guides = [ln for ln in ax.get_lines() if ln.get_gid() == "hessext-guide"]
    assert len(guides) == 1 and guides[0].get_linestyle() == "--"
    assert np.allclose(guides[0].get_ydata(), 2 / LR)
    assert guides[0].get_label() == "2/η = 20"
    # the trace panel has its ±SE band (a filled area spanning trace ± 1.5)
    tr = axes["Trace of H (Hutchinson)"]
    bands = [c for c in tr.collections if not isinstance(c, PathCollection)]
    assert len(bands) == 1
    ys = np.array([r["quantities"]["trace"] for r in recs])
    verts = bands[0].get_paths()[0].vertices
    assert verts[:, 1].max() == pytest.approx(ys.max() + 1.5)
    assert verts[:, 1].min() == pytest.approx(ys.min() - 1.5)
    # matvecs: warm solid at every checkpoint, cold as markers only where present
    mv = axes["Hessian-vector products per checkpoint"]
    warm = [ln for ln in mv.get_lines() if ln.get_label() == "lambda_max (warm start)"][0]
    cold = [ln for ln in mv.get_lines() if ln.get_label() == "lambda_max (cold)"][0]
    assert warm.get_linestyle() == "-" and cold.get_linestyle() in ("None", "none")
    cold_y = np.asarray(cold.get_ydata(), float)
    assert np.isfinite(cold_y).sum() == len([r for r in recs if r["cold_matvecs"]])
    assert np.nanmin(cold_y) > np.nanmax(np.asarray(warm.get_ydata(), float)[1:])
    # no gridded axes are left without a title (empty slots removed)
    assert all(a.get_title() for a in fig.axes)


def test_preconditioned_threshold_label():
    recs = []
    lr, beta1 = 2e-3, 0.9
    thr = (2 + 2 * beta1) / ((1 - beta1) * lr)
    for i in range(12):
        recs.append({"step": 10 * i, "lr": lr, "optimizer": "Adam",
                     "quantities": {"preconditioned_sharpness": thr * (0.5 + 0.5 * min(1, i / 6))},
                     "thresholds": {"preconditioned_sharpness": thr}, "matvecs": {}, "cold_matvecs": None})
    fig = plot_curvature_tracking(recs)
    ax = _axes(fig)["Preconditioned sharpness λ_max(P⁻¹H)"]
    g = [ln for ln in ax.get_lines() if ln.get_gid() == "hessext-guide"][0]
    assert np.allclose(g.get_ydata(), 19000.0)
    assert g.get_label().startswith("38/η")
    assert "Hessian-vector products per checkpoint" not in _axes(fig)  # no matvecs recorded


def test_matvec_panel_follows_the_solves():
    """top_k and grad_overlap are computed from the lambda_max solve: its matvecs are shown with them; a
    quantity that spent no products (zero throughout) gets no line."""
    recs = eos_records(n=10, quantities=("top_k", "grad_overlap"))
    for r in recs:
        r["matvecs"]["grad_overlap"] = 0
    mv = _axes(plot_curvature_tracking(recs))["Hessian-vector products per checkpoint"]
    labels = sorted(ln.get_label() for ln in mv.get_lines())
    assert labels == ["lambda_max (cold)", "lambda_max (warm start)"]
    for r in recs:
        r["warm_start"] = False
    mv = _axes(plot_curvature_tracking(recs))["Hessian-vector products per checkpoint"]
    assert "lambda_max (tracked)" in [ln.get_label() for ln in mv.get_lines()]


def test_threshold_follows_a_changed_learning_rate():
    recs = eos_records(n=20, quantities=("lambda_max",))
    for r in recs[10:]:
        r["lr"] = 0.05
        r["thresholds"] = {"lambda_max": 40.0}
    ax = _axes(plot_curvature_tracking(recs))["Sharpness λ_max(H)"]
    g = [ln for ln in ax.get_lines() if ln.get_gid() == "hessext-guide"][0]
    assert sorted(set(np.asarray(g.get_ydata(), float).tolist())) == [20.0, 40.0]


def test_legends_do_not_cover_data():
    fig = plot_curvature_tracking(eos_records(n=60, every=5))
    fig.draw_without_rendering()
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) >= 4
    hits = [ax.get_title() for ax, leg in legends if legend_hits(ax, leg)]
    assert hits == []


def test_legend_check_can_fail():
    """The check above detects a legend put on the data."""
    fig = plot_curvature_tracking(eos_records(quantities=("lambda_max",)))
    ax = _axes(fig)["Sharpness λ_max(H)"]
    leg = ax.legend(loc="center", bbox_to_anchor=(0.5, 0.5), fontsize=30)
    fig.draw_without_rendering()
    assert legend_hits(ax, leg)


def test_jsonl_path_equals_list(tmp_path):
    recs = eos_records()
    path = write_jsonl(recs, tmp_path / "track.jsonl", torn=True)  # a torn last line is skipped
    a = plot_curvature_tracking(recs)
    b = plot_curvature_tracking(str(path))
    c = HessianVisualizer.plot_curvature_tracking(path)
    for other in (b, c):
        ta, tb = _axes(a), _axes(other)
        assert set(ta) == set(tb)
        for title in ta:
            la, lb = ta[title].get_lines(), tb[title].get_lines()
            assert len(la) == len(lb)
            for x, y in zip(la, lb):
                assert x.get_label() == y.get_label()
                np.testing.assert_array_equal(np.asarray(x.get_xydata()), np.asarray(y.get_xydata()))


def test_bad_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 0, "quantities": {"lambda_max": 1}}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        plot_curvature_tracking(path)


def test_missing_quantities(tmp_path):
    recs = eos_records(quantities=("lambda_max",))
    for r in recs[::3]:  # some checkpoints lack the quantity (and matvecs) altogether
        r["quantities"] = {}
        r["matvecs"] = {}
        r.pop("thresholds")
    fig = plot_curvature_tracking(recs, quantities=("lambda_max", "trace", "batch_sharpness"))
    assert set(_axes(fig)) == {"Sharpness λ_max(H)", "Hessian-vector products per checkpoint"}
    ys = np.asarray(_data_lines(_axes(fig)["Sharpness λ_max(H)"])[0].get_ydata(), float)
    assert np.isnan(ys[::3]).all() and np.isfinite(np.delete(ys, np.s_[::3])).all()
    # nothing tracked at all: an explanatory empty figure, still saved
    empty = plot_curvature_tracking([{"step": 0, "quantities": {}}], save_path=tmp_path, model_name="e")
    assert "no tracked quantities" in empty.axes[0].texts[0].get_text()
    assert os.path.exists(tmp_path / "e_curvature_tracking.png")
    with pytest.raises(ValueError, match="quantities"):
        plot_curvature_tracking(recs, quantities=("sharpnes",))
    with pytest.raises(TypeError, match="records"):
        plot_curvature_tracking(42)


def test_report_links_the_figure(tmp_path):
    path = write_jsonl(eos_records(), tmp_path / "track.jsonl")
    out = create_comprehensive_report(save_path=tmp_path / "rep", model_name="mlp", tracking=str(path))
    assert out["failures"] == {}
    files = out["figures"]["curvature_tracking"]
    assert files == [os.path.join(str(tmp_path / "rep"), "mlp_curvature_tracking.png")]
    page = open(out["index"], encoding="utf-8").read()
    assert "src='mlp_curvature_tracking.png'" in page
    assert "id='curvature_tracking'" in page
    # without tracking=, no such figure (the existing calls are unchanged)
    out2 = create_comprehensive_report(save_path=tmp_path / "rep2", model_name="mlp")
    assert "curvature_tracking" not in out2["figures"]
