"""HessianVisualizer and hessext.landscape: files, pixels, key orders, reports, backends, model safety."""
from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import dense_hessian, tiny_mlp  # noqa: E402

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.image as mpimg  # noqa: E402
from _plotcheck import legend_hits  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hessext.landscape import (  # noqa: E402
    Landscape1D,
    loss_landscape_1d,
    loss_landscape_2d,
    random_direction,
    suggest_radius,
)
from hessext.viz import COMPONENT_COLORS, HessianVisualizer, component_color  # noqa: E402
from hessext.viz._style import format_value  # noqa: E402

DPI = 60  # small files, quick tests
COMPS = ["attention", "ffn", "embeddings", "norm"]


# ----------------------------------------------------------------------------- synthetic data
def synth_history(steps=(0, 10, 20, 30), k=6, seed=0):
    """{step: analyze_step-like results} with a signed spectrum spanning decades."""
    rng = np.random.default_rng(seed)
    hist = {}
    for i, s in enumerate(steps):
        top = np.sort(np.abs(rng.normal(size=k)) * (5 + 10 * i) * np.logspace(0, -2, k))[::-1]
        top[-1] = -0.05 * (i + 1)
        hist[s] = {
            "hessian": {"max_eigenvalue": float(top[0]), "min_eigenvalue": float(top[-1]),
                        "top_eigenvalues": top.tolist(), "hessian_trace_estimate": 50.0 + 30 * i,
                        "hessian_trace_std_error": 5.0 + i, "negative_count": i % 3,
                        "condition_number": 10.0 ** (1 + 0.7 * i), "effective_rank_95": 3 + i % 2,
                        "effective_rank_entropy": 2.5 + 0.3 * i, "complexity_score": 10.0 + 3 * i},
            "components": {c: {"max_eigenvalue": (j + 1) * 10.0 ** (j - 1) * (1 + 0.2 * i),
                               "top_eigenvalues": [(j + 1) * 10.0 ** (j - 1) * (1 + 0.2 * i) * f
                                                   for f in (1, .5)],
                               "trace": 20.0 * (j + 1) * (1 + 0.1 * i), "num_parameters": 1000 * (j + 1)}
                           for j, c in enumerate(COMPS)},
            "alignment": {"grad_Hg_alignment": math.tanh(0.3 * i), "weighted_alignment": 0.2 + 0.05 * i,
                          "grad_Hg_ratio": 3.0 * (i + 1), "top_k_gradient_fraction": 0.1 * i},
            "sharpness": {"max_sharpness": 10.0 + i, "mean_sharpness": 2.0 + 0.5 * i,
                          "spectral_norm": float(top[0])},
            "train_val_divergence": {"train_val_landscape_divergence_score": 0.05 * i,
                                     "trace_ratio": 1 + 0.3 * i,
                                     "eigenvalue_distribution_overlap": 1 - 0.1 * i,
                                     "eigenspace_overlap": 0.9 - 0.1 * i},
        }
    return hist


def section(hist, name):
    return {s: r[name] for s, r in hist.items()}


def assert_png(path, min_side=150, min_std=0.02):
    """A real, non-blank PNG: signature, decodable, sensible size, pixel variance above a floor."""
    path = Path(path)
    assert path.is_file(), f"missing {path}"
    assert path.stat().st_size > 3000, f"{path} is suspiciously small ({path.stat().st_size} bytes)"
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side, f"{path}: shape {img.shape}"
    rgb = img[..., :3]
    assert float(rgb.std()) > min_std, f"{path} looks blank (pixel std {rgb.std():.4f})"
    # not a single flat colour plus noise: a noticeable share of non-white pixels
    assert float((rgb.mean(axis=2) < 0.9).mean()) > 0.01, f"{path} is almost entirely white"


def _cases(hist):
    V = HessianVisualizer
    return {
        "eigenvalue_evolution": lambda **kw: V.plot_eigenvalue_evolution(section(hist, "hessian"), **kw),
        "complexity_metrics": lambda **kw: V.plot_complexity_metrics(section(hist, "hessian"), **kw),
        "component_comparison": lambda **kw: V.plot_component_comparison(section(hist, "components"), **kw),
        "gradient_alignment": lambda **kw: V.plot_gradient_alignment(section(hist, "alignment"), **kw),
        "memorization_metrics": lambda **kw: V.plot_memorization_metrics(
            section(hist, "train_val_divergence"), **kw),
        "sharpness": lambda **kw: V.plot_sharpness(section(hist, "sharpness"), **kw),
        "component_bars": lambda **kw: V.plot_component_bars(hist[30]["components"], **kw),
        "top_spectrum": lambda **kw: V.plot_top_spectrum(hist[30]["hessian"]["top_eigenvalues"],
                                                         residuals=np.full(6, 0.1), **kw),
        "spectral_density": lambda **kw: V.plot_spectral_density(
            {"grid": np.linspace(-1, 20, 200), "density": np.exp(-np.linspace(-1, 20, 200) ** 2) + 1e-5,
             "nodes": np.array([0.0, 0.3, 18.0])}, **kw),
        "loss_landscape_1d": lambda **kw: V.plot_loss_landscape_1d(
            {"alphas": np.linspace(-1, 1, 11), "losses": 1 + np.linspace(-1, 1, 11) ** 2, "base_loss": 1.0,
             "slope": 0.0, "curvature": 2.0}, **kw),
        "loss_landscape_2d": lambda **kw: V.plot_loss_landscape_2d(
            {"alphas": np.linspace(-1, 1, 7), "betas": np.linspace(-1, 1, 7),
             "losses": 1 + np.add.outer(np.linspace(-1, 1, 7) ** 2, 3 * np.linspace(-1, 1, 7) ** 2)}, **kw),
        "training_curves": lambda **kw: V.plot_training_curves(
            {s: {"train_loss": 2.0 / (i + 1), "val_loss": 2.5 / (i + 1) + 0.3, "val_accuracy": 0.2 * i}
             for i, s in enumerate(hist)}, **kw),
    }


@pytest.fixture(scope="module")
def hist():
    return synth_history()


# ----------------------------------------------------------------------------- every plot function
@pytest.mark.parametrize("quantity", list(_cases(synth_history())))
def test_every_plot_writes_a_nonblank_png(tmp_path, hist, quantity):
    fig = _cases(hist)[quantity](save_path=str(tmp_path / "sub"), model_name="my model", dpi=DPI)
    assert isinstance(fig, Figure)
    path = tmp_path / "sub" / f"my_model_{quantity}.png"  # directory created, name says model + quantity
    assert fig.hessext_files == [str(path)]
    assert_png(path)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert titled or fig.get_suptitle()
    for ax in titled:  # every panel says what its axes are
        assert ax.get_xlabel(), ax.get_title()
        assert ax.get_ylabel() or any(t.get_text() for t in ax.get_yticklabels()), ax.get_title()


def test_static_and_instance_calls_agree(tmp_path, hist):
    a = HessianVisualizer.plot_eigenvalue_evolution(section(hist, "hessian"), None, "m")
    b = HessianVisualizer().plot_eigenvalue_evolution(section(hist, "hessian"), None, "m")
    assert a.hessext_files == [] and b.hessext_files == []  # save_path=None writes nothing
    assert len(a.axes) == len(b.axes)
    assert not list(tmp_path.iterdir())


def test_formats_png_svg_pdf(tmp_path, hist):
    HessianVisualizer.plot_gradient_alignment(section(hist, "alignment"), str(tmp_path), "m",
                                              formats=("png", "svg", "pdf"), dpi=DPI)
    assert_png(tmp_path / "m_gradient_alignment.png")
    svg = (tmp_path / "m_gradient_alignment.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert (tmp_path / "m_gradient_alignment.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="formats"):
        HessianVisualizer.plot_gradient_alignment(section(hist, "alignment"), str(tmp_path), "m",
                                                  formats=("bmp",))


def test_full_results_history_is_unwrapped(hist):
    """The document passes {step: full results} to the individual plots: each picks its own section."""
    full = HessianVisualizer.plot_eigenvalue_evolution(hist, None, "m")
    part = HessianVisualizer.plot_eigenvalue_evolution(section(hist, "hessian"), None, "m")
    def lines(f):
        return [tuple(np.asarray(ln.get_ydata(), float)) for ax in f.axes for ln in ax.get_lines()]
    assert lines(full) == lines(part) and len(lines(full)) > 4


def test_scales_follow_the_data(hist):
    fig = HessianVisualizer.plot_eigenvalue_evolution(section(hist, "hessian"), None, "m")
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert by_title["Extreme eigenvalues"].get_yscale() == "symlog"  # signed, spanning decades
    assert by_title["Hessian trace"].get_yscale() == "linear"
    fig = HessianVisualizer.plot_complexity_metrics(section(hist, "hessian"), None, "m")
    assert {ax.get_title(): ax for ax in fig.axes}["Condition number"].get_yscale() == "log"


def test_missing_keys_drop_panels_without_crashing(tmp_path):
    sparse = {0: {"max_eigenvalue": 2.0}, "5": {"max_eigenvalue": 3.0, "min_eigenvalue": -0.1},
              10: {"error": "hessian: boom"}, 15: {"unrelated": "text"}}
    fig = HessianVisualizer.plot_eigenvalue_evolution(sparse, str(tmp_path), "m", dpi=DPI)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == ["Extreme eigenvalues", "Negative curvature"]  # |λ_min|/λ_max exists at step 5 only
    line = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "λ_max"][0]
    assert list(line.get_xdata()) == [0, 5, 15]  # int-like "5" sorted numerically; the error step dropped
    assert_png(tmp_path / "m_eigenvalue_evolution.png")
    for fn in (HessianVisualizer.plot_gradient_alignment, HessianVisualizer.plot_memorization_metrics,
               HessianVisualizer.plot_complexity_metrics, HessianVisualizer.plot_component_comparison,
               HessianVisualizer.plot_sharpness, HessianVisualizer.plot_component_bars):
        for empty in ({}, None, {0: {}}):
            f = fn(empty, None, "m")
            assert isinstance(f, Figure) and any("no " in t.get_text() for ax in f.axes for t in ax.texts)


def test_alignment_reads_the_analyzer_key_names():
    """hessext's analyzer writes top_subspace_fraction, rayleigh_quotient and eigenvector_alignments."""
    hist = {s: {"top_subspace_fraction": 0.1 * s, "rayleigh_quotient": 2.0 + s,
                "eigenvector_alignments": [0.5, 0.25, 0.125]} for s in range(3)}
    fig = HessianVisualizer.plot_gradient_alignment(hist, None, "m")
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(by_title) == {"Curvature seen by the gradient", "Gradient in the top-k eigenspace",
                             "Gradient vs each top eigenvector"}
    frac = by_title["Gradient in the top-k eigenspace"].get_lines()[0]
    np.testing.assert_allclose(frac.get_ydata(), [0.0, 0.1, 0.2])
    ranks = by_title["Gradient vs each top eigenvector"].get_lines()
    assert len(ranks) == 3
    assert sorted(round(float(ln.get_ydata()[0]), 3) for ln in ranks) == [0.125, 0.25, 0.5]


def test_non_numeric_step_keys_become_tick_labels():
    fig = HessianVisualizer.plot_gradient_alignment({"epoch_a": {"grad_Hg_ratio": 1.0},
                                                     "epoch_b": {"grad_Hg_ratio": 2.0}}, None, "m")
    ax = [a for a in fig.axes if a.get_title()][0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["epoch_a", "epoch_b"]


def test_bad_history_type():
    with pytest.raises(TypeError, match="history"):
        HessianVisualizer.plot_gradient_alignment([1, 2, 3], None, "m")
    with pytest.raises(TypeError, match="component_history"):
        HessianVisualizer.plot_component_comparison("attention", None, "m")


# ----------------------------------------------------------------------------- component key orders, colours
def _component_lines(fig):
    return {(ax.get_title(), ln.get_label()): (tuple(ln.get_xdata()), tuple(np.round(ln.get_ydata(), 12)))
            for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def test_component_comparison_accepts_both_key_orders(tmp_path, hist):
    step_major = section(hist, "components")
    comp_major = {c: {s: step_major[s][c] for s in step_major} for c in COMPS}
    str_steps = {c: {str(s): m for s, m in per.items()} for c, per in comp_major.items()}
    figs = [HessianVisualizer.plot_component_comparison(h, str(tmp_path / name), "m", dpi=DPI)
            for name, h in (("a", step_major), ("b", comp_major), ("c", str_steps), ("d", hist))]
    ref = _component_lines(figs[0])
    assert len(ref) == 3 * len(COMPS)  # λ_max, trace, trace per parameter for every component
    for f in figs[1:]:
        assert _component_lines(f) == ref
    # the values are the right ones: the trace of "ffn" at step 20
    assert ref[("Trace of each block", "ffn")][1][2] == pytest.approx(step_major[20]["ffn"]["trace"])
    assert ref[("Trace of each block", "ffn")][0] == (0, 10, 20, 30)
    for name in "abcd":
        assert_png(tmp_path / name / "m_component_comparison.png")


def test_component_snapshot_and_fixed_colours(hist):
    fig = HessianVisualizer.plot_component_comparison(hist[30]["components"], None, "m")  # one step
    colors = {ln.get_label(): matplotlib.colors.to_hex(ln.get_color())
              for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert colors == {c: COMPONENT_COLORS[c] for c in COMPS}
    assert component_color("my_custom_block") == component_color("my_custom_block")
    assert component_color("my_custom_block") not in (COMPONENT_COLORS["ffn"], COMPONENT_COLORS["attention"])


def test_component_bars_values_and_errors(hist):
    comps = copy.deepcopy(hist[30]["components"])
    comps["ffn"]["trace_std_error"] = 1.5
    comps["broken"] = {"error": "failed"}
    fig = HessianVisualizer.plot_component_bars(comps, None, "m")
    trace_ax = [ax for ax in fig.axes if ax.get_title() == "Trace of each block"][0]
    widths = sorted(round(p.get_width(), 9) for p in trace_ax.patches)
    assert widths == sorted(round(comps[c]["trace"], 9) for c in COMPS)


# ----------------------------------------------------------------------------- spectrum plots
def test_top_spectrum_from_eigenresult_like_object():
    class EigenLike:  # the EigenResult fields the plot reads
        eigenvalues = torch.tensor([-0.5, 0.2, 3.0, 40.0])
        residuals = torch.tensor([1e-3, 1e-2, 1e-4, 1e-5])

    fig = HessianVisualizer.plot_top_spectrum(EigenLike(), None, "m")
    ax = fig.axes[0]
    ys = ax.collections[-1].get_offsets()[:, 1]
    assert list(np.round(ys, 6)) == [40.0, 3.0, 0.2, -0.5]  # descending, rank 1 = largest
    assert ax.get_yscale() == "symlog"
    with pytest.raises(ValueError, match="residuals"):
        HessianVisualizer.plot_top_spectrum([1.0, 2.0], None, "m", residuals=[0.1])


def test_spectral_density_is_on_a_log_axis():
    grid = np.linspace(0, 1, 50)
    fig = HessianVisualizer.plot_spectral_density((grid, np.exp(-grid)), None, "m")
    assert fig.axes[0].get_yscale() == "log"


# ----------------------------------------------------------------------------- summary and report
def test_save_analysis_summary(tmp_path, hist):
    text = HessianVisualizer.save_analysis_summary(hist[20], str(tmp_path), "m")
    path = tmp_path / "m_analysis_summary.txt"
    assert path.read_text() == text
    assert "[Hessian spectrum]" in text and "max_eigenvalue" in text and "[Components]" in text
    assert format_value(hist[20]["hessian"]["max_eigenvalue"]) in text
    text = HessianVisualizer.save_analysis_summary(hist, None, "m")  # a history: table over steps
    assert "4 analysed steps" in text and "Latest step (30)" in text


def _links(html_text):
    return re.findall(r"(?:src|href)='([^'#]+)'", html_text)


def test_comprehensive_report_and_index(tmp_path, hist):
    out = tmp_path / "report"
    report = HessianVisualizer().create_comprehensive_report(
        hessian_history=section(hist, "hessian"),
        component_history=section(hist, "components"),
        alignment_history=section(hist, "alignment"),
        memorization_history=section(hist, "train_val_divergence"),
        save_path=str(out), model_name="my_transformer", dpi=DPI)
    assert report["failures"] == {}
    expected = {"eigenvalue_evolution", "complexity_metrics", "component_comparison", "component_bars",
                "gradient_alignment", "memorization_metrics"}
    assert set(report["figures"]) == expected
    for paths in report["figures"].values():
        for p in paths:
            assert_png(p)
    page = Path(report["index"]).read_text()
    links = _links(page)
    for name in expected:
        assert f"my_transformer_{name}.png" in links
    for link in links:
        assert not os.path.isabs(link)
        assert (out / link).is_file(), f"index.html links a missing file: {link}"
    assert "<table>" in page and "λ_max" in page
    assert Path(report["summary"]).is_file()


def test_report_from_history_only_draws_what_is_given(tmp_path, hist):
    only_hessian = {s: {"hessian": r["hessian"]} for s, r in hist.items()}
    report = HessianVisualizer.create_comprehensive_report(history=only_hessian, save_path=str(tmp_path),
                                                           model_name="m", dpi=DPI)
    assert set(report["figures"]) == {"eigenvalue_evolution", "complexity_metrics"}
    report = HessianVisualizer.create_comprehensive_report(save_path=str(tmp_path / "empty"), model_name="m")
    assert report["figures"] == {} and Path(report["index"]).is_file()


def test_report_keyword_forms_of_the_document(tmp_path, hist):
    # The document's `create_comprehensive_report(**{epoch: results})` with int keys is rejected by Python
    # itself before the call: the supported spelling is history=.
    with pytest.raises(TypeError, match="keywords must be strings"):
        HessianVisualizer.create_comprehensive_report(**{0: hist[0]}, save_path=str(tmp_path))
    # String keys do reach **extra and are taken as history entries.
    two = {"0": {"hessian": hist[0]["hessian"]}, "10": {"hessian": hist[10]["hessian"]}}
    report = HessianVisualizer.create_comprehensive_report(**two, save_path=str(tmp_path), model_name="kw",
                                                           dpi=DPI)
    assert "eigenvalue_evolution" in report["figures"]
    with pytest.raises(TypeError, match="unexpected keyword"):
        HessianVisualizer.create_comprehensive_report(save_path=str(tmp_path), colour="red")


# ----------------------------------------------------------------------------- backend policy
def test_backend_is_never_forced(tmp_path):
    """Without pyplot: bare Agg figures, no pyplot import, rcParams backend untouched. With a backend
    chosen by the user: it is kept, figures go through pyplot, and the report closes what it made."""
    code = textwrap.dedent(f"""
        import sys, matplotlib
        before = dict.__getitem__(matplotlib.rcParams, "backend")
        from hessext.viz import HessianVisualizer as V
        h = {{0: {{"max_sharpness": 1.0}}, 1: {{"max_sharpness": 2.0}}}}
        fig = V.plot_sharpness(h, r"{tmp_path}", "a")
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        assert dict.__getitem__(matplotlib.rcParams, "backend") is before, "backend changed"
        assert fig.canvas.manager is None
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        fig = V.plot_sharpness({{0: {{"max_sharpness": 1.0}}}}, r"{tmp_path}", "b")
        assert fig.canvas.manager is not None and plt.get_fignums() == [fig.number]
        plt.close(fig)
        V.create_comprehensive_report(sharpness_history={{0: {{"max_sharpness": 1.0}}}},
                                      save_path=r"{tmp_path}", model_name="c")
        assert plt.get_fignums() == [], plt.get_fignums()
        assert matplotlib.get_backend().lower() == "svg"
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    env.pop("MPLBACKEND", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr
    assert_png(tmp_path / "a_sharpness.png")


def test_use_pyplot_setting_is_the_one_the_figures_read(monkeypatch):
    """``hessext.viz.USE_PYPLOT`` is documented as the switch: setting it on the package reaches the figure
    helpers in the package's modules."""
    import hessext.viz as viz
    from hessext.viz import _figure
    assert viz.USE_PYPLOT is None and _figure.USE_PYPLOT is None
    monkeypatch.setattr(viz, "USE_PYPLOT", False)
    assert _figure.USE_PYPLOT is False
    fig = HessianVisualizer.plot_sharpness({0: {"max_sharpness": 1.0}}, None, "m")
    assert fig.canvas.manager is None  # a bare Agg figure, whatever pyplot's state
    monkeypatch.setattr(viz, "USE_PYPLOT", None)
    assert _figure.USE_PYPLOT is None


def test_check_formats_is_public_and_names_the_argument():
    from hessext.viz import check_formats
    assert check_formats("PNG") == ("png",) and check_formats([".svg", "pdf"]) == ("svg", "pdf")
    with pytest.raises(ValueError, match=r"formats must be among .* got \['bmp'\]"):
        check_formats(("png", "bmp"))
    with pytest.raises(ValueError, match="formats is empty"):
        check_formats(())
    with pytest.raises(TypeError, match="formats must be a string or a sequence of strings, got int 3"):
        check_formats(3)


# ----------------------------------------------------------------------------- loss landscapes
def _flat_loss(model, X, Y, loss_fn):
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def f(theta):
        out, o = {}, 0
        for k, s in zip(names, shapes):
            n = int(np.prod(s))
            out[k] = theta[o:o + n].reshape(s)
            o += n
        return loss_fn(torch.func.functional_call(model, out, (X,)), Y)
    return f


def _snapshot(model):
    return ([p.detach().clone() for p in model.parameters()], [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()], torch.get_rng_state())


def _assert_same(model, snap):
    params, modes, req, rng = snap
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == req
    assert torch.equal(torch.get_rng_state(), rng)


def test_landscape_1d_matches_direct_evaluation_and_dense_hessian():
    model = tiny_mlp().double()
    model.train()  # the user's mode must survive
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randint(0, 2, (12,), generator=g)
    ce = torch.nn.CrossEntropyLoss()
    n = sum(p.numel() for p in model.parameters())
    d = torch.randn(n, generator=g, dtype=torch.float64)
    snap = _snapshot(model)
    res = loss_landscape_1d(model, ce, (X, Y), d, radius=0.7, num_points=9)
    _assert_same(model, snap)
    assert isinstance(res, Landscape1D) and res.alphas[4] == 0.0
    assert res.num_evaluations == 9 + 1  # the grid, plus the forward of the Taylor terms
    f = _flat_loss(model, X, Y, ce)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    u = d / d.norm()
    for a, val in zip(res.alphas, res.losses):
        assert val == pytest.approx(float(f(theta + a * u)), rel=1e-12, abs=1e-12)
    H = dense_hessian(model, ce, [(X, Y)])
    grad = torch.func.grad(f)(theta)
    assert res.slope == pytest.approx(float(grad @ u), rel=1e-9, abs=1e-12)
    assert res.curvature == pytest.approx(float(u @ H @ u), rel=1e-9, abs=1e-12)
    assert res.direction_norm == pytest.approx(float(d.norm()))


def test_landscape_along_eigenvector_has_eigenvalue_curvature():
    model = tiny_mlp().double()
    g = torch.Generator().manual_seed(4)
    X, Y = torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randint(0, 2, (12,), generator=g)
    ce = torch.nn.CrossEntropyLoss()
    H = dense_hessian(model, ce, [(X, Y)])
    evals, evecs = torch.linalg.eigh(H)

    class EigenLike:
        eigenvalues = evals[-3:]
        eigenvectors = evecs[:, -3:].T.contiguous()  # rows, ascending like EigenResult

    res = loss_landscape_1d(model, ce, (X, Y), EigenLike(), radius=suggest_radius(evals[-1], 1.0),
                            num_points=5)
    assert res.curvature == pytest.approx(float(evals[-1]), rel=1e-8)
    assert res.label.startswith("v₁")
    res2 = loss_landscape_2d(model, ce, (X, Y), EigenLike(), radius=0.3, num_points=5)
    assert res2.losses.shape == (5, 5) and abs(res2.cos_angle) < 1e-10
    assert res2.losses[2, 2] == pytest.approx(res.base_loss)
    # the alpha axis of the plane is the 1-D slice along v1
    res1 = loss_landscape_1d(model, ce, (X, Y), evecs[:, -1], radius=0.3, num_points=5, taylor=False)
    np.testing.assert_allclose(res2.losses[:, 2], res1.losses, rtol=1e-12)
    assert res1.slope is None and res1.curvature is None


def test_landscape_2d_orthogonalises_and_never_touches_a_transformer():
    from hessext.models import TransformerFactory
    torch.manual_seed(0)
    model = TransformerFactory.create_decoder_only_transformer(vocab_size=7, d_model=8, num_heads=2,
                                                               num_layers=1, d_ff=8, max_seq_length=5,
                                                               dropout=0.1)
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    grads = [p.grad for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 7, (3, 5), generator=g),
             "labels": torch.randint(0, 7, (3, 5), generator=g)}
    n = sum(p.numel() for p in model.parameters())
    d1 = torch.randn(n, generator=g)
    d2 = d1 + 0.5 * torch.randn(n, generator=g)  # far from orthogonal
    snap = _snapshot(model)
    res = loss_landscape_2d(model, torch.nn.CrossEntropyLoss(), batch, torch.stack([d1, d2]), radius=0.2,
                            num_points=3, model_type="decoder_only")
    _assert_same(model, snap)
    for p, gr in zip(model.parameters(), grads):
        assert p.grad is gr and torch.equal(gr, torch.ones_like(gr))
    assert res.cos_angle > 0.5 and np.all(np.isfinite(res.losses))
    with pytest.raises(ValueError, match="parallel"):
        loss_landscape_2d(model, None, batch, [d1, 2 * d1], model_type="decoder_only")


def test_landscape_argument_errors():
    model = tiny_mlp()
    X, Y = torch.randn(4, 4), torch.randint(0, 2, (4,))
    ce = torch.nn.CrossEntropyLoss()
    n = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="radius"):
        loss_landscape_1d(model, ce, (X, Y), torch.ones(n), radius=-1.0)
    with pytest.raises(ValueError, match="length n="):
        loss_landscape_1d(model, ce, (X, Y), torch.ones(n + 1))
    with pytest.raises(ValueError, match="nonzero"):
        loss_landscape_1d(model, ce, (X, Y), torch.zeros(n))
    with pytest.raises(TypeError, match="num_points"):
        loss_landscape_1d(model, ce, (X, Y), torch.ones(n), num_points=2.5)
    with pytest.raises(TypeError, match="model"):
        loss_landscape_1d("not a model", ce, (X, Y), torch.ones(n))


def test_random_direction_filter_normalised_and_rng_free():
    model = tiny_mlp()
    state = torch.get_rng_state()
    d = random_direction(model, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(d, random_direction(model, seed=5))
    offset = 0
    for _, p in model.named_parameters():
        block = d[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()
        if p.dim() == 1:
            assert torch.count_nonzero(block) == 0
        else:
            torch.testing.assert_close(block.norm(dim=1), p.detach().norm(dim=1))


# ----------------------------------------------------------------------------- a real analysis
@pytest.fixture
def one_thread():
    """Matrices this small run fastest on one thread (and the suite may share its cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_plots_of_a_real_tiny_analysis(tmp_path, one_thread):
    from hessext.analysis import HessianAnalyzer, HessianConfig
    from hessext.models import TransformerFactory
    torch.manual_seed(0)
    model = TransformerFactory.create_decoder_only_transformer(vocab_size=7, d_model=8, num_heads=2,
                                                               num_layers=1, d_ff=8, max_seq_length=5)
    g = torch.Generator().manual_seed(1)
    mk = lambda: {"input_ids": torch.randint(0, 7, (4, 5), generator=g),  # noqa: E731
                  "labels": torch.randint(0, 7, (4, 5), generator=g)}
    train, val = mk(), mk()
    analyzer = HessianAnalyzer(HessianConfig(n_components=4, trace_probes=4,
                                             component_list=["attention", "ffn"]))
    ce = torch.nn.CrossEntropyLoss()
    history = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(2):
        history[step] = analyzer.analyze_step(model, ce, train, val, model_type="decoder_only", step=step)
        loss = ce(model(train["input_ids"]).reshape(-1, 7), train["labels"].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all("error" not in r for r in history.values()), [r.get("error") for r in history.values()]
    report = HessianVisualizer.create_comprehensive_report(history=history, save_path=str(tmp_path),
                                                           model_name="real", dpi=DPI)
    assert report["failures"] == {}
    assert {"eigenvalue_evolution", "component_comparison", "gradient_alignment",
            "memorization_metrics", "sharpness"} <= set(report["figures"])
    for paths in report["figures"].values():
        for p in paths:
            assert_png(p)
    page = Path(report["index"]).read_text()
    assert all((tmp_path / link).is_file() for link in _links(page))
    # the plotted λ_max is the analysis' λ_max
    fig = HessianVisualizer.plot_eigenvalue_evolution(history, None, "real")
    ax = [a for a in fig.axes if a.get_title() == "Extreme eigenvalues"][0]
    line = [ln for ln in ax.get_lines() if ln.get_label() == "λ_max"][0]
    assert list(line.get_ydata()) == pytest.approx([history[s]["hessian"]["max_eigenvalue"] for s in (0, 1)])


# ----------------------------------------------------------------------------- readability at a glance
def _drawn(fig):
    """Lay the figure out as it is saved (so that display coordinates are final)."""
    fig.draw_without_rendering()
    return fig


def _inner_legends(fig):
    out = []
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:
            lb, ab = leg.get_window_extent(), ax.get_window_extent()
            if lb.x0 >= ab.x0 - 1 and lb.x1 <= ab.x1 + 1 and lb.y0 >= ab.y0 - 1 and lb.y1 <= ab.y1 + 1:
                out.append((ax, leg))
    return out


def crowded_history():
    """The demo's worst case: λ_max along the top and λ_min along the bottom of a symlog panel, and series
    that fill every corner of a linear panel."""
    steps = range(0, 241, 40)
    lmax = [4.8, 4.4, 6.4, 8.0, 21.0, 30.1, 25.8]
    lmin = [-1.0, -0.18, -0.64, -1.0, -2.6, -7.2, -7.1]
    hist = {}
    for i, s in enumerate(steps):
        hist[s] = {"hessian": {"max_eigenvalue": lmax[i], "min_eigenvalue": lmin[i]},
                   "alignment": {"grad_Hg_alignment": [0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9][i],
                                 "weighted_alignment": [0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1][i]},
                   "sharpness": {"max_sharpness": 1.0 + i, "spectral_norm": 7.0 - i,
                                 "top_k_mean_sharpness": 4.0 + (-1) ** i * 3, "mean_sharpness": 4.0}}
    return hist


def test_legends_never_cover_data(tmp_path, hist):
    crowded = crowded_history()
    figs = {q: make(save_path=str(tmp_path), model_name="m", dpi=DPI) for q, make in _cases(hist).items()}
    V = HessianVisualizer
    figs["crowded_extremes"] = V.plot_eigenvalue_evolution(crowded, str(tmp_path), "c", dpi=DPI)
    figs["crowded_alignment"] = V.plot_gradient_alignment(crowded, str(tmp_path), "c", dpi=DPI)
    figs["crowded_sharpness"] = V.plot_sharpness(crowded, str(tmp_path), "c", dpi=DPI)
    checked = 0
    for name, fig in figs.items():
        _drawn(fig)
        for ax, leg in _inner_legends(fig):
            checked += 1
            assert not legend_hits(ax, leg), f"{name}: the legend of {ax.get_title()!r} covers data"
    assert checked >= 12
    # the crowded panels keep all their data in view (the legend got room, not the data cut)
    ax = {a.get_title(): a for a in figs["crowded_sharpness"].axes}["Sharpness"]
    lo, hi = ax.get_ylim()
    assert lo <= 1.0 and hi >= 7.0


def test_log_axes_keep_the_extreme_points_off_the_frame(hist):
    fig = _drawn(HessianVisualizer.plot_eigenvalue_evolution(crowded_history(), None, "m"))
    ax = {a.get_title(): a for a in fig.axes}["Extreme eigenvalues"]
    assert ax.get_yscale() == "symlog"
    box = ax.get_window_extent()
    for ln in ax.get_lines():
        if ln.get_gid() == "hessext-guide":
            continue
        y = ln.get_transform().transform(np.asarray(ln.get_xydata(), float))[:, 1]
        # at least 3 % of the axes height between every point and the frame (the markers stay whole)
        margin = 0.03 * box.height
        assert np.all(y > box.y0 + margin) and np.all(y < box.y1 - margin), ln.get_label()


def test_bars_on_a_log_axis_start_a_decade_down_and_carry_their_values(hist):
    comps = hist[30]["components"]  # λ_max spans 0.1 … 40: a log axis
    fig = HessianVisualizer.plot_component_bars(comps, None, "m")
    ax = [a for a in fig.axes if a.get_title().startswith("Largest eigenvalue")][0]
    assert ax.get_xscale() == "log"
    lo = ax.get_xlim()[0]
    lmax = [comps[c]["max_eigenvalue"] for c in COMPS]
    assert lo <= min(lmax) / 1.2 and math.log10(lo) == int(math.log10(lo))  # a round decade below the data
    texts = {t.get_text() for t in ax.texts}
    assert {format_value(v, 3) for v in lmax} <= texts  # every bar says its value
    fig = HessianVisualizer.plot_component_comparison(section(hist, "components"), None, "m")
    ax = [a for a in fig.axes if a.get_title().startswith("λ_max by component")][0]
    assert ax.get_xscale() == "log" and {format_value(v, 3) for v in lmax} <= {t.get_text() for t in ax.texts}


def test_component_history_with_named_steps_in_both_orders(tmp_path, hist):
    step_major = {f"epoch_{i}": hist[s]["components"] for i, s in enumerate(hist)}
    comp_major = {c: {e: per[c] for e, per in step_major.items()} for c in COMPS}
    ref = None
    for h in (step_major, comp_major):
        fig = HessianVisualizer.plot_component_comparison(h, str(tmp_path), "m", dpi=DPI)
        lines = _component_lines(fig)
        assert {label for _, label in lines} == set(COMPS)
        ax = [a for a in fig.axes if a.get_title() == "Trace of each block"][0]
        assert [t.get_text() for t in ax.get_xticklabels()] == list(step_major)
        ref = ref or lines
        assert lines == ref
    assert ref[("Trace of each block", "ffn")][1][2] == pytest.approx(hist[20]["components"]["ffn"]["trace"])


def test_train_and_validation_share_a_colour_per_quantity():
    h = {s: {"train_max_eigenvalue": 5.0 + s, "val_max_eigenvalue": 4.0 + s, "train_trace": 50.0 * (s + 1),
             "val_trace": 40.0 * (s + 1)} for s in range(4)}
    fig = HessianVisualizer.plot_memorization_metrics(h, None, "m")
    ax = [a for a in fig.axes if a.get_title() == "Curvature on train and validation data"][0]
    st = {ln.get_label(): (matplotlib.colors.to_hex(ln.get_color()), ln.get_linestyle())
          for ln in ax.get_lines()}
    lt, lv, tt, tv = (st[k] for k in ("λ_max train", "λ_max validation", "tr H train", "tr H validation"))
    assert lt[0] == lv[0] != tt[0] == tv[0]  # colour = quantity
    assert lt[1] == tt[1] != lv[1] == tv[1]  # line style = data set


def test_one_unit_per_axis_in_the_complexity_figure(hist):
    h = {s: {**r["hessian"], "eigenvalue_std": 1.0 + s, "eigenvalue_skew": 0.1 * s, "num_eigenvalues": 6}
         for s, r in hist.items()}
    fig = HessianVisualizer.plot_complexity_metrics(h, None, "m")
    by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert by_title["Eigenvalue spread"].get_ylabel().startswith("standard deviation")
    assert by_title["Eigenvalue skewness"].get_ylabel().startswith("skewness")
    labels = [ln.get_label() for ln in by_title["Effective rank"].get_lines()]
    assert any(lab.startswith("k (") for lab in labels)  # the ceiling the effective ranks cannot pass
    # without effective ranks the ceiling alone draws no panel
    fig = HessianVisualizer.plot_complexity_metrics({0: {"num_eigenvalues": 6, "condition_number": 3.0}},
                                                    None, "m")
    assert "Effective rank" not in {ax.get_title() for ax in fig.axes}


def test_report_files_have_ordinary_permissions(tmp_path, hist):
    umask = os.umask(0o022)
    try:
        report = HessianVisualizer.create_comprehensive_report(history=hist, save_path=str(tmp_path),
                                                               model_name="m", dpi=DPI)
        text_path = tmp_path / "solo" / "x_analysis_summary.txt"
        HessianVisualizer.save_analysis_summary(hist[0], str(text_path.parent), "x")
    finally:
        os.umask(umask)
    for p in (report["index"], report["summary"], text_path, report["figures"]["eigenvalue_evolution"][0]):
        assert os.stat(p).st_mode & 0o777 == 0o644, p  # readable by a web server like the PNGs beside them


def test_every_plot_of_a_real_engine_run(tmp_path, one_thread):
    """Top-k spectrum, spectral density, loss landscapes and component bars from the engine's own results,
    and nothing of the model changes."""
    from hessext.density import spectral_density
    from hessext.hvp import HessianOperator
    from hessext.lanczos import lanczos
    model = tiny_mlp().double()
    model.train()
    g = torch.Generator().manual_seed(5)
    X, Y = torch.randn(16, 4, generator=g, dtype=torch.float64), torch.randint(0, 2, (16,), generator=g)
    ce = torch.nn.CrossEntropyLoss()
    snap = _snapshot(model)
    H = HessianOperator(model, ce, (X, Y))
    eig = lanczos(H, k=4, which="LA", tol=1e-8, seed=0, compute_residuals=True)
    dens = spectral_density(H, num_probes=2, num_iter=12, seed=0)
    l1 = loss_landscape_1d(model, ce, (X, Y), eig, radius=0.5, num_points=7)
    l2 = loss_landscape_2d(model, ce, (X, Y), eig, radius=0.5, num_points=5)
    _assert_same(model, snap)
    dense = torch.linalg.eigvalsh(dense_hessian(model, ce, [(X, Y)]))
    V = HessianVisualizer
    figs = {"top_spectrum": V.plot_top_spectrum(eig, str(tmp_path), "real", step=3, dpi=DPI),
            "spectral_density": V.plot_spectral_density(dens, str(tmp_path), "real", dpi=DPI),
            "loss_landscape_1d": V.plot_loss_landscape_1d(l1, str(tmp_path), "real", dpi=DPI),
            "loss_landscape_2d": V.plot_loss_landscape_2d(l2, str(tmp_path), "real", dpi=DPI)}
    for q in figs:
        assert_png(tmp_path / f"real_{q}.png")
    _assert_same(model, snap)
    # the plotted Ritz values are the true top eigenvalues, within the plotted error bars
    ys = np.sort(figs["top_spectrum"].axes[0].collections[-1].get_offsets()[:, 1])[::-1]
    np.testing.assert_allclose(ys, np.sort(dense.numpy())[::-1][:4], rtol=1e-6, atol=1e-8)
    assert "step 3" in figs["top_spectrum"].axes[0].get_title()
    # the 1-D slice's marked base point is the model's loss
    base = [ln for ln in figs["loss_landscape_1d"].axes[0].get_lines()
            if ln.get_label() == "current parameters θ"]
    with torch.no_grad():
        loss0 = float(ce(model(X), Y))
    assert base and float(base[0].get_ydata()[0]) == pytest.approx(loss0, rel=1e-9)
    report = V.create_comprehensive_report(eigen=eig, density=dens, landscape_1d=l1, landscape_2d=l2,
                                           save_path=str(tmp_path / "rep"), model_name="real", dpi=DPI)
    assert report["failures"] == {} and set(report["figures"]) == set(figs)
    page = Path(report["index"]).read_text()
    assert all((tmp_path / "rep" / link).is_file() for link in _links(page))
