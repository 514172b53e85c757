"""Blockwise spectra (hessext.analysis.blocks) against dense float64 truth: each block's Gauss quadrature
against the same probes' quadratic forms ``zᵀ H_CC^k z`` computed densely (exact up to rounding), the
densities' moments against the dense blocks' eigenvalues, the batched products against separate restricted
products, the JS distances against scipy, and the errors."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from _models import (  # noqa: E402
    dense_hessian,
    mlp_batch,
    tiny_mlp,
    tiny_transformer,
    transformer_batch,
    transformer_loss,
)
from scipy.spatial.distance import jensenshannon

from hessext import ops
from hessext.analysis.blocks import (
    JS_MAX,
    block_index_sets,
    block_spectra,
    jensen_shannon_distance,
    js_distance_matrix,
    layer_blocks,
    mean_pairwise,
    parameter_blocks,
)
from hessext.analysis.components import ComponentAnalyzer
from hessext.hvp import HessianOperator
from hessext.linop import DenseOperator, LinearOperator

F64 = torch.float64


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def transformer():
    """A tiny transformer's float64 HessianOperator, its dense Hessian and its component blocks."""
    model = tiny_transformer()
    batch = transformer_batch()
    H = HessianOperator(model, transformer_loss, batch, dtype=F64)
    Hd = dense_hessian(model, transformer_loss, [batch])
    sets = ComponentAnalyzer().component_index_sets(model, H.layout, ["attention", "ffn", "embeddings",
                                                                      "norm", "output_projection"])
    return model, batch, H, Hd, sets


@pytest.fixture(scope="module")
def mlp():
    model = tiny_mlp()
    X, y = mlp_batch()
    loss = torch.nn.MSELoss()
    H = HessianOperator(model, loss, (X, y), dtype=F64)
    return H, dense_hessian(model, loss, [(X, y)])


class Recording(LinearOperator):
    """A dense operator that records the width of every call."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__(A.shape[0], A.dtype)
        self.A, self.widths = A, []

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        self.widths.append(X.shape[1])
        return self.A @ X


def probes(n, p, seed, idx):
    """The probes of one block: the restriction of the shared draw, normalised."""
    Z = ops.rademacher(n, p, seed=seed, dtype=F64)
    return Z[idx] / math.sqrt(idx.numel())


def random_symmetric(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=F64)
    return (A + A.T) / 2


# ----------------------------------------------------------------------------- quadrature: exact
@pytest.mark.parametrize("num_iter", [100, 3])
def test_quadrature_moments_equal_dense_quadratic_forms(transformer, num_iter):
    """Σ_i τ_ci θ_ci^k = z_cᵀ H_CC^k z_c for k ≤ 2m − 1: exact (rounding only), per block and per probe,
    with full Krylov spaces (num_iter ≥ |C|) and with m = 3 nodes (exact up to degree 5)."""
    _, _, H, Hd, sets = transformer
    p, seed = 3, 11
    res = block_spectra(H, sets, num_probes=p, num_iter=num_iter, seed=seed)
    assert res.names == tuple(sets)
    kmax = 5 if num_iter == 3 else 6
    for name, idx in sets.items():
        A = Hd[idx][:, idx]
        V = probes(H.n, p, seed, idx)
        d = res.raw[name]
        assert d.nodes.shape == (p, min(num_iter, idx.numel()))
        for c in range(p):
            for k in range(kmax + 1):
                exact = float(V[:, c] @ torch.linalg.matrix_power(A, k) @ V[:, c])
                got = float((d.weights[c] * d.nodes[c] ** k).sum())
                scale = float(torch.linalg.eigvalsh(A).abs().max()) ** k
                assert got == pytest.approx(exact, abs=1e-10 * scale), (name, c, k)


def test_full_krylov_nodes_are_the_block_eigenvalues(transformer):
    """With num_iter ≥ |C| the Ritz values are eigenvalues of H_CC, and the top |eigenvalue| estimate is the
    dense block's largest |λ| (the normalisation scale)."""
    _, _, H, Hd, sets = transformer
    res = block_spectra(H, sets, num_probes=2, num_iter=200, seed=3)
    for name, idx in sets.items():
        ev = torch.linalg.eigvalsh(Hd[idx][:, idx])
        d = res.raw[name]
        used = d.nodes[d.weights > 1e-14]
        dist = (used[:, None] - ev[None, :]).abs().min(1).values
        scale = float(ev.abs().max())
        assert float(dist.max()) < 1e-9 * scale, name
        assert abs(res.top_eigenvalues[name]) == pytest.approx(scale, rel=1e-10)
        # normalised nodes are the raw ones over |top|; the largest magnitude is exactly 1
        assert torch.allclose(res.normalized[name].nodes, d.nodes / scale, rtol=1e-10, atol=0)
        assert float(res.normalized[name].nodes.abs().max()) == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- densities: moments
def test_density_moments_against_dense_eigenvalues():
    """∫λ^k ρ_C for k = 0, 1, 2 against the dense block's eigenvalue moments (1/|C|) Σ λ^k: the smoothed
    density adds σ² to the second moment; the probe average is within 5 exact standard errors of
    Rademacher Hutchinson (Var zᵀBz = 2 Σ_{i≠j} B_ij²)."""
    n, p = 60, 400
    A = random_symmetric(n, seed=4) + torch.diag(torch.linspace(0, 6, n, dtype=F64))
    blocks = {"a": torch.arange(0, 25), "b": torch.arange(25, 45), "c": torch.arange(45, 60)}
    res = block_spectra(A, blocks, num_probes=p, num_iter=60, seed=5)
    for name, idx in blocks.items():
        B = A[idx][:, idx]
        size = idx.numel()
        d = res.raw[name]
        m0 = float(torch.trapezoid(d.density, d.grid))
        m1 = float(torch.trapezoid(d.grid * d.density, d.grid))
        m2 = float(torch.trapezoid(d.grid ** 2 * d.density, d.grid))
        assert m0 == pytest.approx(1.0, abs=1e-12)
        # grid integration of the Gaussian mixture = quadrature moments (+ σ² for k = 2)
        assert m1 == pytest.approx(d.moment(1), abs=1e-6 * float(B.norm()))
        assert m2 == pytest.approx(d.moment(2) + d.sigma ** 2, rel=1e-6)
        for k, got in ((1, d.moment(1)), (2, d.moment(2))):
            Bk = torch.linalg.matrix_power(B, k)
            off = Bk - torch.diag(torch.diag(Bk))
            se = math.sqrt(2 * float((off ** 2).sum()) / p) / size
            truth = float((torch.linalg.eigvalsh(B) ** k).mean())
            assert abs(got - truth) < 5 * se, (name, k, got, truth, se)


# ----------------------------------------------------------------------------- batching
def test_batched_products_equal_separate_restricted_products(transformer):
    """(H X)[C_i, columns of i] = H_{C_i C_i} Q_i for the block-diagonal stack X, against restrict()."""
    _, _, H, _, sets = transformer
    n, p = H.n, 2
    g = torch.Generator().manual_seed(0)
    Q = {k: torch.randn(v.numel(), p, generator=g, dtype=F64) for k, v in sets.items()}
    X = torch.zeros(n, p * len(sets), dtype=F64)
    for s, (k, idx) in enumerate(sets.items()):
        X[idx, s * p:(s + 1) * p] = Q[k]
    Y = H @ X
    for s, (k, idx) in enumerate(sets.items()):
        sep = H.restrict(idx) @ Q[k]
        assert torch.allclose(Y[idx, s * p:(s + 1) * p], sep, rtol=1e-12, atol=1e-13), k


def test_all_blocks_together_equal_each_block_alone(transformer):
    """The batched run gives each block the quadrature it gets alone (same shared probes), and it needs
    max_i m_i calls of width p·K_active, p·Σ m_i columns in all."""
    _, _, H, Hd, sets = transformer
    p, m = 3, 20
    together = block_spectra(H, sets, num_probes=p, num_iter=m, seed=2)
    for name, idx in sets.items():
        alone = block_spectra(H, {name: idx}, num_probes=p, num_iter=m, seed=2)
        assert torch.allclose(alone.raw[name].nodes, together.raw[name].nodes, rtol=1e-10, atol=1e-12)
        assert torch.allclose(alone.raw[name].weights, together.raw[name].weights, rtol=1e-9, atol=1e-12)
    steps = {k: min(m, v.numel()) for k, v in sets.items()}
    assert together.num_matvecs == p * sum(steps.values())
    rec = Recording(Hd)
    dense = block_spectra(rec, sets, num_probes=p, num_iter=m, seed=2)
    assert dense.num_calls == len(rec.widths) == max(steps.values())
    assert rec.widths == [p * sum(1 for s in steps.values() if j < s) for j in range(max(steps.values()))]
    for name in sets:   # the model's operator and its dense matrix agree
        assert torch.allclose(dense.raw[name].nodes, together.raw[name].nodes, rtol=1e-9, atol=1e-11)


def test_max_columns_splits_calls_without_changing_results():
    A = random_symmetric(30, seed=1)
    blocks = {"a": torch.arange(0, 10), "b": torch.arange(10, 20), "c": torch.arange(20, 30)}
    full = block_spectra(A, blocks, num_probes=2, num_iter=10, seed=0)
    rec = Recording(A)
    split = block_spectra(rec, blocks, num_probes=2, num_iter=10, seed=0, max_columns=3)
    assert max(rec.widths) == 2 and split.num_calls == 30      # one block (2 columns) per call
    for k in blocks:
        assert torch.allclose(split.raw[k].nodes, full.raw[k].nodes, rtol=1e-12, atol=1e-13)
    assert torch.allclose(split.js_matrix, full.js_matrix, atol=1e-12)


def test_overlapping_blocks_when_allowed_are_each_exact(mlp):
    H, Hd = mlp
    blocks = {"first": torch.arange(0, 20), "overlap": torch.arange(10, 30)}
    with pytest.raises(ValueError, match="'first' and 'overlap' overlap \\(10 shared"):
        block_spectra(H, blocks)
    res = block_spectra(H, blocks, num_probes=2, num_iter=30, seed=1, allow_overlap=True)
    for name, idx in blocks.items():
        V = probes(H.n, 2, 1, idx)
        A = Hd[idx][:, idx]
        for c in range(2):
            exact = float(V[:, c] @ A @ A @ V[:, c])
            d = res.raw[name]
            assert float((d.weights[c] * d.nodes[c] ** 2).sum()) == pytest.approx(exact, rel=1e-10)


# ----------------------------------------------------------------------------- Jensen–Shannon
def test_js_matrix_against_scipy(transformer):
    _, _, H, _, sets = transformer
    res = block_spectra(H, sets, num_probes=3, num_iter=15, seed=0)
    K = len(res.names)
    assert res.js_matrix.shape == (K, K)
    for i, a in enumerate(res.names):
        assert float(res.js_matrix[i, i]) == 0.0
        for j, b in enumerate(res.names):
            ref = jensenshannon(res.densities[a].numpy(), res.densities[b].numpy())   # natural log
            assert float(res.js_matrix[i, j]) == pytest.approx(float(ref), abs=1e-12)
    iu = np.triu_indices(K, 1)
    assert res.mean_js == pytest.approx(float(res.js_matrix.numpy()[iu].mean()), abs=1e-15)
    assert 0 < res.mean_js < JS_MAX
    # the normalised densities integrate to 1 on the common grid
    for d in res.densities.values():
        assert float(torch.trapezoid(d, res.grid)) == pytest.approx(1.0, abs=1e-12)


def test_js_of_identical_and_disjoint_densities():
    x = np.linspace(-1, 1, 201)
    a = np.exp(-0.5 * ((x + 0.5) / 0.05) ** 2)
    assert jensen_shannon_distance(a, 3 * a) == 0.0
    left, right = (x < 0).astype(float), (x > 0).astype(float)
    assert jensen_shannon_distance(left, right) == pytest.approx(math.sqrt(math.log(2)), abs=1e-15)
    assert JS_MAX == pytest.approx(math.sqrt(math.log(2)))
    names, D = js_distance_matrix({"l": left, "r": right, "l2": 2 * left})
    assert names == ("l", "r", "l2")
    assert torch.allclose(D, D.T) and float(D[0, 2]) == 0.0
    assert mean_pairwise(D) == pytest.approx(2 * math.sqrt(math.log(2)) / 3, abs=1e-15)
    assert math.isnan(mean_pairwise(torch.zeros(1, 1)))
    # identical blocks give identical normalised densities: JS 0
    A = torch.block_diag(torch.diag(torch.arange(1.0, 6.0, dtype=F64)),
                         torch.diag(10 * torch.arange(1.0, 6.0, dtype=F64)))
    res = block_spectra(A, {"x": torch.arange(5), "y": torch.arange(5, 10)}, num_probes=4, num_iter=5)
    assert float(res.js_matrix[0, 1]) < 1e-7
    assert res.top_eigenvalues == pytest.approx({"x": 5.0, "y": 50.0}, rel=1e-12)


def test_js_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        jensen_shannon_distance([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-negative"):
        jensen_shannon_distance([1.0, -2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="all zero"):
        jensen_shannon_distance([0.0, 0.0], [1.0, 2.0])


# ----------------------------------------------------------------------------- errors
def test_errors(mlp):
    H, _ = mlp
    good = {"a": torch.arange(0, 10), "b": torch.arange(10, 20)}
    with pytest.raises(ValueError, match=r"blocks\['e'\] is empty"):
        block_spectra(H, {"a": torch.arange(3), "e": torch.arange(0)})
    with pytest.raises(ValueError, match="blocks is empty"):
        block_spectra(H, {})
    with pytest.raises(TypeError, match="blocks must be a dict"):
        block_spectra(H, [torch.arange(3)])
    with pytest.raises(ValueError, match=r"blocks\['a'\] must lie in"):
        block_spectra(H, {"a": [0, H.n]})
    with pytest.raises(ValueError, match=r"blocks\['a'\] must be unique"):
        block_spectra(H, {"a": [1, 1]})
    for bad in (0, -2):
        with pytest.raises(ValueError, match="num_probes must be >= 1"):
            block_spectra(H, good, num_probes=bad)
    for bad in (2.5, True, "4"):
        with pytest.raises(TypeError, match="num_probes must be an int"):
            block_spectra(H, good, num_probes=bad)
    with pytest.raises(ValueError, match="num_iter must be >= 1"):
        block_spectra(H, good, num_iter=0)
    with pytest.raises(ValueError, match="max_columns must be >= 4"):
        block_spectra(H, good, num_probes=4, max_columns=3)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        block_spectra(H, good, sigma=-1.0)
    with pytest.raises(TypeError, match="allow_overlap must be a bool"):
        block_index_sets(good, H.n, allow_overlap=1)


def test_nan_operator_is_reported():
    A = torch.eye(6, dtype=F64)
    A[2, 2] = float("nan")
    with pytest.raises(RuntimeError, match="block 'b'"):
        block_spectra(DenseOperator(A), {"a": [0, 1], "b": [2, 3]}, num_probes=1, num_iter=2)


# ----------------------------------------------------------------------------- blocks and the analyzer
def test_parameter_and_layer_blocks_partition_the_layout(transformer):
    _, _, H, _, _ = transformer
    for blocks in (parameter_blocks(H.layout), layer_blocks(H.layout)):
        allidx = torch.sort(torch.cat(list(blocks.values()))).values
        assert torch.equal(allidx, torch.arange(H.n))
    pb = parameter_blocks(H.layout, matrices_only=True)
    assert all(len(H.layout.shapes[H.layout.position(k)]) >= 2 for k in pb)
    assert "layer.linear1" in layer_blocks(H.layout)
    big = {k for k, s in zip(H.layout.names, H.layout.numels) if s >= 20}
    assert set(parameter_blocks(H.layout, min_numel=20)) == big


def test_component_analyzer_block_spectra(transformer):
    model, batch, H, _, sets = transformer
    before = copy.deepcopy(model.state_dict())
    training = model.training
    ca = ComponentAnalyzer(seed=4)
    res = ca.block_spectra(model, transformer_loss, batch, num_probes=2, num_iter=6, operator=H)
    direct = block_spectra(H, sets, num_probes=2, num_iter=6, seed=4)
    assert res.names == direct.names
    assert torch.equal(res.js_matrix, direct.js_matrix)
    per_param = ca.block_spectra(model, transformer_loss, batch, num_probes=2, num_iter=4,
                                 blocks="parameters")
    assert per_param.names == tuple(H.layout.names)
    assert ca.block_spectra(model, transformer_loss, batch, num_probes=1, num_iter=2,
                            blocks="layers").names == tuple(layer_blocks(H.layout))
    with pytest.raises(ValueError, match="blocks must be None, 'parameters', 'layers'"):
        ca.block_spectra(model, transformer_loss, batch, blocks="heads")
    mlp_model, (X, y) = tiny_mlp(), mlp_batch()
    with pytest.warns(UserWarning, match="attention"), pytest.raises(ValueError, match="resolves to no"):
        ca.block_spectra(mlp_model, torch.nn.MSELoss(), (X, y), component_list=["attention"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training == training and all(p.grad is None for p in model.parameters())


def test_to_dict_is_strict_json(transformer):
    _, _, H, _, sets = transformer
    res = block_spectra(H, {k: sets[k] for k in list(sets)[:1]}, num_probes=2, num_iter=4)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["mean_js"] is None                          # one block: no pair
    assert d["names"] == list(res.names) and len(d["grid"]) == 400
    assert d["num_matvecs"] == res.num_matvecs


def test_analyze_step_block_spectra_section_equals_the_function() -> None:
    """HessianConfig(track_block_spectra=True) adds results["block_spectra"]: the same numbers as
    block_spectra() on the same operator and components."""
    import hessext
    from hessext.analysis import block_spectra, make_operator
    model, batch = tiny_transformer(), transformer_batch()
    cfg = hessext.HessianConfig.minimal(n_components=1, trace_probes=0, track_component_hessian=True,
                                        track_block_spectra=True, block_spectra_probes=2,
                                        block_spectra_iter=5)
    res = hessext.HessianAnalyzer(cfg).analyze_step(model, transformer_loss, batch, strict=True)
    sec = res["block_spectra"]
    H = make_operator(model, transformer_loss, batch, "decoder_only")
    from hessext.analysis import ComponentAnalyzer
    sets = ComponentAnalyzer().component_index_sets(model, H.layout, cfg.component_list)
    sets = {k: v for k, v in sets.items() if v.numel() > 0}
    ref = block_spectra(H, sets, num_probes=2, num_iter=5, seed=cfg.seed, allow_overlap=True).to_dict()
    assert sec.keys() == ref.keys()
    assert np.allclose(np.asarray(sec["js_matrix"], float), np.asarray(ref["js_matrix"], float), atol=1e-12)
    with pytest.raises(ValueError, match="block_spectra_probes"):
        hessext.HessianConfig(block_spectra_probes=0)
