"""The curvature-family figures (hessext.viz.curvature): H/G/E densities on one log plot, block densities as
small multiples, the JS heat-map. They draw what they are given (checked against the input arrays), keep
legends off the data (checked independently by tests/_plotcheck.py) and write every requested format."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.image as mpimg  # noqa: E402
from _plotcheck import legend_hits  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hessext.analysis.blocks import block_spectra  # noqa: E402
from hessext.results import DensityResult  # noqa: E402
from hessext.viz import (  # noqa: E402
    CURVATURE_COLORS,
    HessianVisualizer,
    plot_block_densities,
    plot_block_js_heatmap,
    plot_curvature_densities,
)

DPI = 60
FMTS = ("png", "svg", "pdf")


def mixture(grid, centres, widths, masses):
    d = sum(m * np.exp(-0.5 * ((grid - c) / w) ** 2) / (w * math.sqrt(2 * math.pi))
            for c, w, m in zip(centres, widths, masses))
    return d / np.trapezoid(d, grid)


@pytest.fixture(scope="module")
def hge():
    """Papyan's picture: G = bulk near 0 + outliers at 8 and 20; E symmetric around 0; H = both."""
    g = np.linspace(-3, 24, 600)
    G = mixture(g, [0.05, 8, 20], [0.1, 0.3, 0.4], [0.96, 0.03, 0.01])
    E = mixture(g, [0.0], [0.6], [1.0])
    H = mixture(g, [0.0, 8, 20], [0.6, 0.3, 0.4], [0.96, 0.03, 0.01])
    dens = {"H": {"grid": g, "density": H}, "G": (g, G),
            "E": DensityResult(grid=torch.from_numpy(g), density=torch.from_numpy(E),
                               nodes=torch.zeros(1, 1, dtype=torch.float64),
                               weights=torch.ones(1, 1, dtype=torch.float64), num_matvecs=0)}
    return g, dens


@pytest.fixture(scope="module")
def blocks_result():
    """A real BlockSpectraResult: four blocks of different shapes and scales."""
    gen = torch.Generator().manual_seed(0)
    parts = [torch.linspace(0.0, 1.0, 12), torch.cat([torch.zeros(10), torch.tensor([30.0, 50.0])]),
             torch.linspace(-2.0, 2.0, 12), torch.full((12,), 3.0) + 0.01 * torch.arange(12.0)]
    mats = []
    for ev in parts:
        Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
        mats.append((Q * ev.double()) @ Q.T)
    A = torch.block_diag(*mats)
    blocks = {name: torch.arange(12 * i, 12 * (i + 1)) for i, name in
              enumerate(["attention", "ffn", "embeddings", "norm"])}
    return block_spectra(A, blocks, num_probes=4, num_iter=12, seed=1)


def assert_files(fig, tmp_path, stem, fmts=FMTS):
    paths = sorted(Path(p) for p in fig.hessext_files)
    assert paths == sorted(tmp_path / f"{stem}.{f}" for f in fmts)
    for p in paths:
        head = p.read_bytes()[:400]
        assert p.stat().st_size > 1500, p
        if p.suffix == ".png":
            assert head[:8] == b"\x89PNG\r\n\x1a\n"
            img = mpimg.imread(str(p))
            assert float(img[..., :3].std()) > 0.02 and min(img.shape[:2]) >= 150
        elif p.suffix == ".svg":
            assert b"<svg" in head
        else:
            assert head[:5] == b"%PDF-"


def legends_clear(fig):
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:
            assert not legend_hits(ax, leg), f"legend on data in {ax.get_title()!r}"


# ----------------------------------------------------------------------------- H, G, E
def test_curvature_densities_draw_the_input(hge, tmp_path):
    g, dens = hge
    tops = {"H": [20.1, 8.0], "G": torch.tensor([19.9, 7.9])}
    fig = plot_curvature_densities(dens, tmp_path, "mlp", top_eigenvalues=tops, formats=FMTS, dpi=DPI)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    curves = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_linestyle() == "-"}
    assert set(curves) == {"H (Hessian)", "G (Gauss–Newton)", "E = H − G (residual)"}
    lo = ax.get_ylim()[0]
    for label, key in (("H (Hessian)", "H"), ("E = H − G (residual)", "E")):
        d = dens[key]["density"] if key == "H" else dens[key].density.numpy()
        assert np.allclose(curves[label].get_xdata(), g)
        assert np.allclose(curves[label].get_ydata(), np.clip(d, lo, None))
    assert curves["H (Hessian)"].get_color() == CURVATURE_COLORS["H"]
    marks = [ln for ln in ax.get_lines() if ln.get_marker() == "v"]
    xs = sorted(np.concatenate([m.get_xdata() for m in marks]).tolist())
    assert xs == pytest.approx([7.9, 8.0, 19.9, 20.1], rel=1e-6)   # float32 tensor input
    legends_clear(fig)
    assert_files(fig, tmp_path, "mlp_curvature_densities")


def test_curvature_densities_symlog_and_empty(hge, tmp_path):
    _, dens = hge
    fig = plot_curvature_densities(dens, None, xscale="symlog")
    assert fig.axes[0].get_xscale() == "symlog" and fig.hessext_files == []
    empty = plot_curvature_densities({"H": {"grid": [], "density": []}}, tmp_path, "e", dpi=DPI)
    assert any("no spectral density data" in t.get_text() for t in empty.axes[0].texts)
    with pytest.raises(ValueError, match="xscale must be"):
        plot_curvature_densities(dens, None, xscale="log")
    with pytest.raises(TypeError, match="densities must be a dict"):
        plot_curvature_densities([1, 2], None)
    with pytest.raises(ValueError, match="formats must be among"):
        plot_curvature_densities(dens, tmp_path, formats=("bmp",))


# ----------------------------------------------------------------------------- blocks
def test_block_densities_small_multiples(blocks_result, tmp_path):
    res = blocks_result
    fig = plot_block_densities(res, tmp_path, "toy", formats=FMTS, dpi=DPI)
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 4
    for ax, name in zip(panels, res.names):
        assert ax.get_title().startswith(f"{name} (n=12)")
        assert ax.get_yscale() == "log"
        (line,) = [ln for ln in ax.get_lines() if ln.get_gid() != "hessext-guide"]
        d = res.densities[name].numpy()
        assert np.allclose(line.get_xdata(), res.grid.numpy())
        assert np.allclose(line.get_ydata(), np.clip(d, d.max() * 1e-6, None))
    # shared normalised axis: every panel spans the common grid
    assert len({ax.get_xlim() for ax in panels}) == 1
    assert_files(fig, tmp_path, "toy_block_densities")
    raw = plot_block_densities(res, None, normalized=False, ncols=2)
    for ax, name in zip([a for a in raw.axes if a.axison], res.names):
        (line,) = [ln for ln in ax.get_lines() if ln.get_gid() != "hessext-guide"]
        assert np.allclose(line.get_xdata(), res.raw[name].grid.numpy())
    # the same figure from the JSON form, and from a plain dict of densities
    from_dict = plot_block_densities(res.to_dict(), None)
    assert len([a for a in from_dict.axes if a.axison]) == 4
    plain = plot_block_densities({k: res.raw[k] for k in res.names[:3]}, None)
    assert len([a for a in plain.axes if a.axison]) == 3
    assert any("no block densities" in t.get_text() for t in plot_block_densities({}, None).axes[0].texts)


def test_js_heatmap_values_and_names(blocks_result, tmp_path):
    res = blocks_result
    fig = HessianVisualizer.plot_block_js_heatmap(res, tmp_path, "toy", formats=FMTS, dpi=DPI)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(res.names)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(res.names)
    img = ax.get_images()[0]
    assert np.allclose(np.asarray(img.get_array()), res.js_matrix.numpy())
    assert img.get_clim() == pytest.approx((0.0, math.sqrt(math.log(2))))
    cells = [t.get_text() for t in ax.texts]
    assert cells == [f"{v:.2f}" for v in res.js_matrix.numpy().reshape(-1)]
    assert f"mean over pairs {res.mean_js:.3f}" in ax.get_title()
    assert_files(fig, tmp_path, "toy_block_js_distance")
    # a bare matrix with names; the mean computed from it
    D = np.array([[0.0, 0.3, 0.5], [0.3, 0.0, 0.1], [0.5, 0.1, 0.0]])
    bare = plot_block_js_heatmap(D, None, names=["a", "b", "c"], annotate=False)
    assert not bare.axes[0].texts and "mean over pairs 0.300" in bare.axes[0].get_title()
    with pytest.raises(ValueError, match="one entry per row"):
        plot_block_js_heatmap(D, None, names=["a"])
    with pytest.raises(ValueError, match="must be square"):
        plot_block_js_heatmap(np.zeros((2, 3)), None)


def test_visualizer_has_the_new_figures(hge, blocks_result):
    V = HessianVisualizer
    for fig in (V.plot_curvature_densities(hge[1]), V.plot_block_densities(blocks_result),
                V.plot_block_js_heatmap(blocks_result.to_dict())):
        assert isinstance(fig, Figure) and fig.hessext_files == []
        legends_clear(fig)
