"""ParamLayout: order, offsets, views, index sets (names and row slices) and fingerprints."""
from __future__ import annotations

import pytest
import torch
from _models import tiny_mlp, tiny_transformer  # noqa: E402
from torch import nn

from hessext.layout import ParamLayout  # noqa: E402

IN_PROJ = "layer.self_attn.in_proj_weight"


def test_from_module_order_offsets_and_subset_order():
    model = tiny_transformer()
    lay = ParamLayout.from_module(model)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    assert lay.names == [k for k, _ in named]
    assert lay.shapes == [p.shape for _, p in named]
    assert lay.n == sum(p.numel() for _, p in named)
    assert lay.offsets[0] == 0 and all(lay.offsets[i + 1] == lay.offsets[i] + lay.numels[i]
                                       for i in range(len(lay) - 1))
    # A subset follows the module order whatever the order of `names`.
    sub = ParamLayout.from_module(model, ["head.bias", "embed.weight"])
    assert sub.names == ["embed.weight", "head.bias"]
    assert sub == ParamLayout.from_module(model, ["embed.weight", "head.bias"])


def test_from_module_skips_frozen_by_default():
    model = tiny_mlp()
    model[0].bias.requires_grad_(False)
    assert "0.bias" not in ParamLayout.from_module(model).names
    assert ParamLayout.from_module(model, ["0.bias"]).names == ["0.bias"]


def test_from_module_errors():
    model = tiny_transformer()
    with pytest.raises(ValueError, match="head.weight"):
        ParamLayout.from_module(model, ["head.weigth"])
    with pytest.raises(ValueError, match="duplicates"):
        ParamLayout.from_module(model, ["head.bias", "head.bias"])
    with pytest.raises(ValueError, match="empty"):
        ParamLayout.from_module(model, [])
    frozen = tiny_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ParamLayout.from_module(frozen)
    with pytest.raises(TypeError):
        ParamLayout.from_module("not a module")


def test_flatten_unflatten_roundtrip_and_views():
    model = tiny_transformer()
    lay = ParamLayout.from_module(model)
    params = [p.detach() for p in model.parameters()]
    flat = lay.flatten(params)
    assert flat.shape == (lay.n,)
    parts = lay.unflatten(flat)
    assert all(torch.equal(a, b) for a, b in zip(parts, params))
    # views: writing through a part changes the flat vector
    parts[2].fill_(7.0)
    a, b = lay.range_of(lay.names[2])
    assert torch.all(flat[a:b] == 7.0) and flat[a - 1] != 7.0
    assert all(p.data_ptr() == flat.data_ptr() + o * flat.element_size()
               for p, o in zip(parts, lay.offsets))


def test_block_unflatten_and_batched_forms():
    lay = ParamLayout.from_module(tiny_transformer())
    m = 3
    X = torch.randn(lay.n, m)
    parts = lay.unflatten(X)
    assert [tuple(p.shape) for p in parts] == [(*s, m) for s in lay.shapes]
    for j in range(m):
        assert torch.equal(lay.flatten([p[..., j] for p in parts]), X[:, j])
    assert torch.equal(lay.flatten(parts), X)
    rows = lay.unflatten_batched(X)
    assert [tuple(r.shape) for r in rows] == [(m, *s) for s in lay.shapes]
    for j in range(m):
        assert torch.equal(lay.flatten([r[j] for r in rows]), X[:, j])
    assert torch.equal(lay.flatten_batched(rows), X.T)
    # column-major input: the batched parts are views of it
    Xf = X.T.contiguous().T
    rows_f = lay.unflatten_batched(Xf)
    assert rows_f[0].data_ptr() == Xf.data_ptr()
    with pytest.raises(ValueError, match="shape"):
        lay.unflatten(torch.zeros(lay.n + 1))
    with pytest.raises(ValueError):
        lay.flatten([torch.zeros(1)] * len(lay))


def test_indices_names_and_query_rows_of_in_proj():
    model = tiny_transformer()
    lay = ParamLayout.from_module(model)
    d = model.layer.self_attn.embed_dim
    # Mark the entries of the query rows of in_proj_weight in a flat vector, then compare.
    parts = [torch.zeros(s) for s in lay.shapes]
    parts[lay.position(IN_PROJ)][:d] = 1.0
    marked = lay.flatten(parts).nonzero().reshape(-1)
    q = lay.indices([(IN_PROJ, slice(0, d))])
    assert torch.equal(q, marked)
    k = lay.indices((IN_PROJ, slice(d, 2 * d)))
    v = lay.indices([(IN_PROJ, slice(2 * d, None))])
    whole = lay.indices(IN_PROJ)
    assert torch.equal(torch.cat([q, k, v]), whole)
    # names in spec order, adjacent ranges merged
    a0, a1 = lay.range_of("head.weight")
    b0, b1 = lay.range_of("head.bias")
    assert lay.ranges(["head.weight", "head.bias"]) == [(a0, b1)] and a1 == b0
    assert lay.ranges(["head.bias", "embed.weight"]) == [(b0, b1), lay.range_of("embed.weight")]
    # strided rows and a single row
    row = lay.shapes[lay.position(IN_PROJ)][1]
    off = lay.offsets[lay.position(IN_PROJ)]
    assert lay.ranges([(IN_PROJ, slice(0, 3, 2))]) == [(off, off + row), (off + 2 * row, off + 3 * row)]
    assert lay.ranges([(IN_PROJ, -1)]) == [(off + lay.numels[lay.position(IN_PROJ)] - row,
                                             off + lay.numels[lay.position(IN_PROJ)])]


def test_indices_errors():
    lay = ParamLayout.from_module(tiny_transformer())
    with pytest.raises(ValueError, match="overlapping"):
        lay.indices([IN_PROJ, (IN_PROJ, slice(0, 2))])
    with pytest.raises(ValueError, match="empty"):
        lay.indices([(IN_PROJ, slice(5, 5))])
    with pytest.raises(ValueError, match="out of range"):
        lay.indices([(IN_PROJ, 100)])
    with pytest.raises(ValueError, match="in_proj_weight"):
        lay.indices(["layer.self_attn.in_proj_weigh"])
    with pytest.raises(TypeError):
        lay.indices([(IN_PROJ, 1.5)])
    with pytest.raises(ValueError, match="empty"):
        lay.indices([])


def test_fingerprint():
    a = ParamLayout.from_module(tiny_transformer(seed=0))
    b = ParamLayout.from_module(tiny_transformer(seed=1))
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    assert ParamLayout.from_module(tiny_transformer().double()).fingerprint() != a.fingerprint()
    assert ParamLayout.from_module(tiny_mlp(hidden=5)).fingerprint() != ParamLayout.from_module(
        tiny_mlp(hidden=6)).fingerprint()
    sub = ParamLayout.from_module(tiny_transformer(), ["head.bias"])
    assert sub.fingerprint() != a.fingerprint()
    assert ParamLayout.from_module(tiny_transformer(seed=1), ["head.bias"]) == sub


def test_from_named_parameters_and_shared_weights():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin)  # shared module: parameters listed once
    lay = ParamLayout.from_module(model)
    assert lay.names == ["0.weight", "0.bias"] and lay.n == 12
    lay2 = ParamLayout.from_named_parameters([("x", torch.zeros(2, 3)), ("y", torch.zeros(()))])
    assert lay2.n == 7 and lay2.offsets == [0, 6]
    with pytest.raises(TypeError):
        ParamLayout.from_named_parameters([("x", 3)])
