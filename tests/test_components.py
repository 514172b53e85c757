"""Component name resolution on several naming schemes, and component Hessians against dense blocks."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from _models import dense_hessian, tiny_transformer, transformer_batch, transformer_loss  # noqa: E402
from torch import nn

from hessext.analysis.components import (  # noqa: E402
    COMPONENT_NAMES,
    ComponentAnalyzer,
    ComponentSelector,
    component_indices,
    extract_component_parameters,
    resolve_component,
)
from hessext.layout import ParamLayout  # noqa: E402
from hessext.models import TransformerFactory  # noqa: E402

TINY = dict(vocab_size=7, d_model=4, num_heads=2, num_layers=1, d_ff=6, max_seq_length=5)


def names(model, comp, include_bias=False):
    return [(p.name, p.dim, p.start, p.stop) if p.dim is not None else p.name
            for p in resolve_component(model, comp, include_bias)]


# ------------------------------------------------------------------ naming schemes (structure only)
class Conv1D(nn.Module):
    """GPT-2's transposed linear layer: weight [in, out]."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.3 * torch.randn(nx, nf))
        self.bias = nn.Parameter(0.1 * torch.randn(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class GPT2Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d
        self.c_attn = Conv1D(3 * d, d)
        self.c_proj = Conv1D(d, d)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(self.d, dim=-1)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.d)
        L = x.shape[1]
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
        return self.c_proj(torch.softmax(s, -1) @ v)


class GPT2MLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.c_fc = Conv1D(2 * d, d)
        self.c_proj = Conv1D(d, 2 * d)

    def forward(self, x):
        return self.c_proj(torch.tanh(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), GPT2Attention(d)
        self.ln_2, self.mlp = nn.LayerNorm(d), GPT2MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """GPT-2 naming with a tied LM head (lm_head.weight is wte.weight)."""

    def __init__(self, vocab: int = 7, d: int = 4, seq: int = 5) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab, d)
        self.transformer.wpe = nn.Embedding(seq, d)
        self.transformer.h = nn.ModuleList([GPT2Block(d)])
        self.transformer.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, ids):
        t = self.transformer
        x = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))
        for blk in t.h:
            x = blk(x)
        return self.lm_head(t.ln_f(x))


class LlamaRMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


def llama_like(d: int = 4, vocab: int = 7) -> nn.Module:
    m = nn.Module()
    m.model = nn.Module()
    m.model.embed_tokens = nn.Embedding(vocab, d)
    layer = nn.Module()
    layer.self_attn = nn.Module()
    for k in ("q_proj", "k_proj", "v_proj", "o_proj"):
        setattr(layer.self_attn, k, nn.Linear(d, d, bias=False))
    layer.mlp = nn.Module()
    layer.mlp.gate_proj, layer.mlp.up_proj = nn.Linear(d, 8, bias=False), nn.Linear(d, 8, bias=False)
    layer.mlp.down_proj = nn.Linear(8, d, bias=False)
    layer.input_layernorm, layer.post_attention_layernorm = LlamaRMSNorm(d), LlamaRMSNorm(d)
    m.model.layers = nn.ModuleList([layer])
    m.model.norm = LlamaRMSNorm(d)
    m.lm_head = nn.Linear(d, vocab, bias=False)
    return m


def bert_like(d: int = 4, vocab: int = 7) -> nn.Module:
    m = nn.Module()
    m.bert = nn.Module()
    e = m.bert.embeddings = nn.Module()
    e.word_embeddings, e.position_embeddings = nn.Embedding(vocab, d), nn.Embedding(5, d)
    e.token_type_embeddings, e.LayerNorm = nn.Embedding(2, d), nn.LayerNorm(d)
    layer = nn.Module()
    layer.attention = nn.Module()
    layer.attention.self = nn.Module()
    for k in ("query", "key", "value"):
        setattr(layer.attention.self, k, nn.Linear(d, d))
    layer.attention.output = nn.Module()
    layer.attention.output.dense, layer.attention.output.LayerNorm = nn.Linear(d, d), nn.LayerNorm(d)
    layer.intermediate = nn.Module()
    layer.intermediate.dense = nn.Linear(d, 8)
    layer.output = nn.Module()
    layer.output.dense, layer.output.LayerNorm = nn.Linear(8, d), nn.LayerNorm(d)
    m.bert.encoder = nn.Module()
    m.bert.encoder.layer = nn.ModuleList([layer])
    m.bert.pooler = nn.Module()
    m.bert.pooler.dense = nn.Linear(d, d)
    m.cls = nn.Module()
    m.cls.predictions = nn.Module()
    m.cls.predictions.decoder = nn.Linear(d, vocab)
    return m


def test_factory_model_names():
    m = TransformerFactory.create_decoder_only_transformer(**TINY)
    assert names(m, "attention_query") == ["layers.0.attn.q_proj.weight"]
    assert names(m, "attention") == [f"layers.0.attn.{k}.weight"
                                     for k in ("q_proj", "k_proj", "v_proj", "out_proj")]
    assert names(m, "ffn") == ["layers.0.ffn.fc1.weight", "layers.0.ffn.fc2.weight"]
    assert names(m, "hidden_states") == ["layers.0.attn.out_proj.weight", "layers.0.ffn.fc2.weight"]
    assert names(m, "embeddings") == ["embed.weight", "pos_embed.weight"]
    assert names(m, "norm") == ["layers.0.norm1.weight", "layers.0.norm2.weight", "norm.weight"]
    assert names(m, "output_projection") == ["lm_head.weight"]
    assert "layers.0.ffn.fc1.bias" in names(m, "ffn", include_bias=True)


def test_torch_multihead_attention_packed_slices():
    m = tiny_transformer()  # nn.TransformerEncoderLayer, d_model 4
    p = "layer.self_attn.in_proj_weight"
    assert names(m, "attention_query") == [(p, 0, 0, 4)]
    assert names(m, "attention_key") == [(p, 0, 4, 8)]
    assert names(m, "attention_value") == [(p, 0, 8, 12)]
    assert names(m, "attention_value", True)[-1] == ("layer.self_attn.in_proj_bias", 0, 8, 12)
    assert names(m, "attention_output") == ["layer.self_attn.out_proj.weight"]
    assert names(m, "ffn") == ["layer.linear1.weight", "layer.linear2.weight"]
    assert names(m, "embeddings") == ["pos", "embed.weight"]
    assert names(m, "output_projection") == ["head.weight"]
    q = extract_component_parameters(m, "attention_query")
    assert len(q) == 1 and q[0].shape == (4, 4)
    assert q[0].data_ptr() == m.layer.self_attn.in_proj_weight.data_ptr()  # a view, not a copy
    # Full attention = the whole packed weight + out_proj.
    att = extract_component_parameters(m, "attention")
    assert sum(t.numel() for t in att) == 3 * 16 + 16


def test_gpt2_names_and_column_slices():
    torch.manual_seed(0)
    m = GPT2()
    w = "transformer.h.0.attn.c_attn.weight"
    assert names(m, "attention_query") == [(w, 1, 0, 4)]
    assert names(m, "attention_key") == [(w, 1, 4, 8)]
    assert names(m, "attention_output") == ["transformer.h.0.attn.c_proj.weight"]
    assert names(m, "ffn") == ["transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"]
    assert names(m, "hidden_states") == ["transformer.h.0.attn.c_proj.weight",
                                         "transformer.h.0.mlp.c_proj.weight"]
    assert names(m, "embeddings") == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert names(m, "norm") == ["transformer.h.0.ln_1.weight", "transformer.h.0.ln_2.weight",
                                "transformer.ln_f.weight"]
    assert names(m, "output_projection") == []  # tied to wte
    # The flat indices of the key slice are exactly the columns 4:8 of the [d, 3d] Conv1D weight.
    layout = ParamLayout.from_module(m)
    for comp, cols in (("attention_query", slice(0, 4)), ("attention_key", slice(4, 8)),
                       ("attention_value", slice(8, 12))):
        v = torch.zeros(layout.n)
        v[component_indices(layout, resolve_component(m, comp, include_bias=True))] = 1
        parts = layout.as_dict(v)
        expect_w = torch.zeros(4, 12)
        expect_w[:, cols] = 1
        expect_b = torch.zeros(12)
        expect_b[cols] = 1
        assert torch.equal(parts[w], expect_w)
        assert torch.equal(parts["transformer.h.0.attn.c_attn.bias"], expect_b)
        assert v.sum() == 16 + 4


def test_llama_names():
    m = llama_like()
    a = "model.layers.0.self_attn."
    assert names(m, "attention_query") == [a + "q_proj.weight"]
    assert names(m, "attention_output") == [a + "o_proj.weight"]
    assert names(m, "ffn") == [f"model.layers.0.mlp.{k}.weight"
                               for k in ("gate_proj", "up_proj", "down_proj")]
    assert names(m, "hidden_states") == [a + "o_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    assert names(m, "norm") == ["model.layers.0.input_layernorm.weight",
                                "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"]
    assert names(m, "embeddings") == ["model.embed_tokens.weight"]
    assert names(m, "output_projection") == ["lm_head.weight"]


def test_bert_names():
    m = bert_like()
    L = "bert.encoder.layer.0."
    assert names(m, "attention_query") == [L + "attention.self.query.weight"]
    assert names(m, "attention_key") == [L + "attention.self.key.weight"]
    assert names(m, "attention_value") == [L + "attention.self.value.weight"]
    assert names(m, "attention_output") == [L + "attention.output.dense.weight"]
    assert names(m, "ffn") == [L + "intermediate.dense.weight", L + "output.dense.weight"]
    assert names(m, "hidden_states") == [L + "attention.output.dense.weight", L + "output.dense.weight"]
    assert names(m, "embeddings") == [f"bert.embeddings.{k}.weight" for k in
                                      ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    assert set(names(m, "norm")) == {"bert.embeddings.LayerNorm.weight",
                                     L + "attention.output.LayerNorm.weight", L + "output.LayerNorm.weight"}
    assert names(m, "output_projection") == ["cls.predictions.decoder.weight"]
    # The pooler belongs to no component.
    every = {n for c in COMPONENT_NAMES for n in names(m, c)}
    assert "bert.pooler.dense.weight" not in every


def test_component_lists():
    assert ComponentSelector.get_minimal_components() == ["attention", "ffn"]
    std = ComponentSelector.get_standard_components()
    assert "ffn" in std and "ffn" not in ComponentSelector.get_standard_components(no_fnn=True)
    comp = ComponentSelector.get_comprehensive_components()
    for n in ("attention", "attention_query", "attention_key", "attention_value", "ffn", "embeddings", "norm",
              "hidden_states", "output_projection"):
        assert n in comp


def test_validate_components_warns_and_raises():
    m = TransformerFactory.create_decoder_only_transformer(no_fnn=True, **TINY)
    with pytest.warns(UserWarning, match=r"\['ffn'\].*dropped"):
        valid = ComponentSelector.validate_components(m, ["attention", "ffn", "attention_query"])
    assert valid == ["attention", "attention_query"]
    with pytest.raises(ValueError, match="unknown component names.*'mlp_blocks'"):
        ComponentSelector.validate_components(m, ["attention", "mlp_blocks"])
    with pytest.raises(TypeError):
        ComponentSelector.validate_components(m, [3])
    with pytest.warns(UserWarning, match="output_projection"):
        assert ComponentSelector.validate_components(GPT2(), ["output_projection"]) == []
    with pytest.warns(UserWarning, match="matches no parameter"):
        assert extract_component_parameters(m, "ffn") == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ComponentSelector.validate_components(m, ["attention"]) == ["attention"]


def test_frozen_parameters_are_not_valid_components():
    m = TransformerFactory.create_decoder_only_transformer(**TINY)
    for p in m.lm_head.parameters():
        p.requires_grad_(False)
    with pytest.warns(UserWarning, match="output_projection"):
        assert ComponentSelector.validate_components(m, ["output_projection", "norm"]) == ["norm"]


def test_compare_and_summary():
    res = {"attention": {"max_eigenvalue": 3.0, "num_parameters": 10, "model_parameters": 40,
                         "parameter_names": ["a", "b"], "trace_estimate": 1.0},
           "ffn": {"max_eigenvalue": 5.0, "num_parameters": 20, "model_parameters": 40,
                   "parameter_names": ["c"]},
           "norm": {"max_eigenvalue": float("nan"), "num_parameters": 4, "model_parameters": 40,
                    "parameter_names": ["b"]}}
    c = ComponentAnalyzer.compare_components(res, "max_eigenvalue")
    assert c["max_component"] == "ffn" and c["min_component"] == "attention"
    assert c["ranking"] == ["ffn", "attention"] and c["skipped"] == ["norm"]
    assert c["values"] == {"attention": 3.0, "ffn": 5.0} and c["ratio"] == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="missing_metric"):
        ComponentAnalyzer.compare_components(res, "missing_metric")
    with pytest.raises(ValueError, match="empty"):
        ComponentAnalyzer.compare_components({}, "max_eigenvalue")
    s = ComponentAnalyzer.get_component_summary(res)
    assert s["total_parameters"] == 34 and s["component_parameters"]["ffn"] == 20
    assert s["model_parameters"] == 40 and s["unique_parameter_tensors"] == 3
    assert s["sharpest_component"] == "ffn" and s["parameter_fraction"]["attention"] == 0.25


# ------------------------------------------------------------------ component Hessians against dense blocks
def _dict_batches(seed=1, n=3, seq=5, vocab=7):
    ids, labels = transformer_batch(seed=seed, n=n, seq=seq, vocab=vocab)
    return {"input_ids": ids, "labels": labels}, (ids, labels)


@pytest.fixture(scope="module")
def factory_case():
    torch.manual_seed(0)
    model = TransformerFactory.create_decoder_only_transformer(**TINY).double()
    batch, pair = _dict_batches()
    H = dense_hessian(model, transformer_loss, [pair])
    return model, batch, H


def _block_eigs(H, idx):
    return torch.linalg.eigvalsh(H[idx][:, idx]).flip(0)


def test_component_eigenvalues_match_dense_blocks(factory_case):
    model, batch, H = factory_case
    comps = ["attention", "attention_query", "ffn", "embeddings", "norm", "hidden_states",
             "output_projection"]
    an = ComponentAnalyzer(tol=1e-9, trace_probes=0)
    res = an.analyze_all_components(model, torch.nn.CrossEntropyLoss(), batch, "decoder_only",
                                    component_list=comps, n_components=3)
    assert list(res) == comps
    layout = ParamLayout.from_module(model)
    for comp in comps:
        idx = component_indices(layout, resolve_component(model, comp))
        exact = _block_eigs(H, idx)
        got = res[comp]
        assert got["num_parameters"] == idx.numel()
        torch.testing.assert_close(torch.tensor(got["top_eigenvalues"], dtype=torch.float64), exact[:3],
                                   rtol=1e-6, atol=1e-8, msg=comp)
        # min_eigenvalue describes the top-3 values (as the original): the third largest
        assert got["min_eigenvalue"] == pytest.approx(exact[2].item(), rel=1e-6, abs=1e-8), comp
        assert got["max_eigenvalue"] == got["top_eigenvalues"][0]


def test_packed_query_block_matches_dense():
    torch.manual_seed(0)
    model = tiny_transformer().double()
    ids, labels = transformer_batch()
    H = dense_hessian(model, transformer_loss, [(ids, labels)])
    res = ComponentAnalyzer(tol=1e-9, trace_probes=0, include_bias=True).analyze_all_components(
        model, transformer_loss, (ids, labels), None, component_list=["attention_query", "attention_value"],
        n_components=2)
    layout = ParamLayout.from_module(model)
    for comp in ("attention_query", "attention_value"):
        idx = component_indices(layout, resolve_component(model, comp, include_bias=True))
        assert idx.numel() == 16 + 4
        torch.testing.assert_close(torch.tensor(res[comp]["top_eigenvalues"], dtype=torch.float64),
                                   _block_eigs(H, idx)[:2], rtol=1e-6, atol=1e-8)


def test_gpt2_query_columns_block_matches_dense():
    torch.manual_seed(0)
    model = GPT2().double()
    ids, labels = transformer_batch()
    H = dense_hessian(model, transformer_loss, [(ids, labels)])
    res = ComponentAnalyzer(tol=1e-9, trace_probes=0).analyze_all_components(
        model, transformer_loss, (ids, labels), None, component_list=["attention_query"], n_components=2)
    idx = component_indices(ParamLayout.from_module(model), resolve_component(model, "attention_query"))
    torch.testing.assert_close(torch.tensor(res["attention_query"]["top_eigenvalues"], dtype=torch.float64),
                               _block_eigs(H, idx)[:2], rtol=1e-6, atol=1e-8)


def test_component_traces_from_one_probe_set_are_unbiased(factory_case):
    model, batch, H = factory_case
    an = ComponentAnalyzer(tol=1e-6, trace_probes=100)
    comps = ["attention", "ffn", "hidden_states"]  # overlapping blocks
    res = an.analyze_all_components(model, None, batch, "decoder_only", component_list=comps, n_components=1)
    layout = ParamLayout.from_module(model)
    for c in comps:
        idx = component_indices(layout, resolve_component(model, c))
        exact = H[idx][:, idx].trace().item()
        se = res[c]["trace_std_error"]
        assert 0 < se < abs(exact) + 1
        assert abs(res[c]["trace_estimate"] - exact) < 4 * se + 1e-9, (c, res[c]["trace_estimate"], exact, se)


def test_component_analysis_does_not_touch_the_model(factory_case):
    model, batch, _ = factory_case
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ComponentAnalyzer(trace_probes=2).analyze_all_components(model, None, batch, component_list=["norm"],
                                                             n_components=1)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
