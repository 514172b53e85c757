"""Hugging Face transformers models analysed on the loss they report, ``model(**batch).loss``.

Real transformers models built from tiny config objects (no downloads, random init, eval mode, float64):
GPT-2 (tied embeddings, packed ``c_attn`` Conv1D), Llama (grouped-query attention, RMSNorm), BERT masked-LM
(labels -100 except the masked positions) and T5 (encoder-decoder: the model builds ``decoder_input_ids``
from ``labels``). Ground truth is built independently with ``torch.func`` on a copy of each model that runs
the *eager* attention implementation (hessext analyses the original, which runs SDPA): the loss,
dense float64 Hessians over a small parameter subset, one Hessian-vector product over all parameters by
``jvp(grad)``, and the top eigenvalue by ``torch.linalg.eigh``.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

transformers = pytest.importorskip("transformers")

from hessext.analysis import HessianAnalyzer, HessianConfig, get_hessian_eigenvectors  # noqa: E402
from hessext.analysis.components import COMPONENT_NAMES, component_indices, resolve_component  # noqa: E402
from hessext.data import LOSS_SOURCES, computes_own_loss  # noqa: E402
from hessext.evaluator import FunctionalEvaluator  # noqa: E402
from hessext.hvp import HessianOperator  # noqa: E402
from hessext.lanczos import lanczos  # noqa: E402

transformers.logging.set_verbosity_error()
F64 = torch.float64
V = 50          # vocabulary
D = 16          # hidden size


# ------------------------------------------------------------------------------------------------ models
def gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=8, n_embd=D, n_layer=2, n_head=2, bos_token_id=0,
                                  eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def llama() -> nn.Module:
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


def bert() -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, pad_token_id=0)
    return transformers.BertForMaskedLM(cfg)


def t5() -> nn.Module:
    cfg = transformers.T5Config(vocab_size=V, d_model=D, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
                                num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.T5ForConditionalGeneration(cfg)


def batch_for(name: str) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, V, (2, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0                                   # right padding on the second sequence
    if name in ("gpt2", "llama"):                      # causal LM: labels = ids, the model shifts them
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if name == "bert":                                 # masked LM: -100 except the masked positions
        masked = torch.zeros_like(ids, dtype=torch.bool)
        masked[0, [1, 4]] = True
        masked[1, [2, 3, 5]] = True
        labels = ids.masked_fill(~masked, -100)
        return {"input_ids": ids.masked_fill(masked, 1), "attention_mask": mask, "labels": labels}
    tgt = torch.randint(2, V, (2, 5), generator=g)     # T5: target length differs from the source's
    tgt[1, -1] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": tgt}


MAKERS = {"gpt2": gpt2, "llama": llama, "bert": bert, "t5": t5}

#: A small subset per model for the dense Hessian (~100-200 parameters), each with a feature of the model.
SUBSETS = {
    "gpt2": ["transformer.wpe.weight", "transformer.h.1.attn.c_attn.bias", "transformer.ln_f.weight"],
    "llama": ["model.layers.1.self_attn.k_proj.weight",           # [8, 16]: 2 key/value heads of 4 query
              "model.layers.0.input_layernorm.weight", "model.norm.weight"],         # RMSNorm
    "bert": ["bert.embeddings.LayerNorm.weight", "bert.encoder.layer.1.attention.self.query.bias",
             "bert.encoder.layer.0.attention.output.dense.bias", "cls.predictions.bias"],
    "t5": ["encoder.block.1.layer.0.layer_norm.weight", "encoder.final_layer_norm.weight",
           "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           "decoder.final_layer_norm.weight"],
}

_CACHE: dict[str, tuple] = {}


def model_case(name: str) -> tuple[nn.Module, dict[str, Tensor], nn.Module]:
    """(model, batch, reference copy running eager attention); float64, eval mode, seeded."""
    if name not in _CACHE:
        torch.manual_seed(0)
        model = MAKERS[name]().double().eval()
        ref = copy.deepcopy(model)
        ref.set_attn_implementation("eager")
        _CACHE[name] = (model, batch_for(name), ref)
    return _CACHE[name]


def reference_loss(ref: nn.Module, batch: dict, names: list[str]):
    """``x ↦ ref(**batch).loss`` with the parameters ``names`` read from the flat vector ``x``, and ``x0``."""
    base = {k: p.detach() for k, p in ref.named_parameters()}
    shapes = [base[k].shape for k in names]
    sizes = [base[k].numel() for k in names]

    def f(x: Tensor) -> Tensor:
        sub = {k: c.view(s) for k, c, s in zip(names, torch.split(x, sizes), shapes)}
        return functional_call(ref, {**base, **sub}, args=(), kwargs=batch).loss

    return f, torch.cat([base[k].reshape(-1) for k in names])


def in_layout_order(model: nn.Module, names: list[str]) -> list[str]:
    return [k for k, _ in model.named_parameters() if k in names]


def dense_of(f, x0: Tensor) -> Tensor:
    """The dense Hessian of ``f`` at ``x0`` by reverse-over-reverse (``jacrev(grad)``), cross-checked with
    forward-over-reverse (``jacfwd(grad)``). (``torch.func.hessian``, i.e. ``jacfwd(jacrev(f))``, is not
    used: through GPT-2's loss its nested vmap of a vjp disagrees with both, and with a loop of ``jvp``s, by
    up to 2 % on torch 2.13 + transformers 5.)"""
    g = torch.func.grad(f)
    H = torch.func.jacrev(g)(x0).to(F64)
    H_fwd = torch.func.jacfwd(g)(x0).to(F64)
    assert rel_err(H, H_fwd) < 1e-6
    return (H + H.T) / 2


def dense_hessian(name: str, names: list[str]) -> Tensor:
    """Over ``names`` in layout (``named_parameters``) order."""
    model, batch, ref = model_case(name)
    f, x0 = reference_loss(ref, batch, in_layout_order(model, names))
    return dense_of(f, x0)


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.to(F64) - b.to(F64)).norm() / b.to(F64).norm())


def state_of(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in list(model.named_parameters()) + list(model.named_buffers())}


# ------------------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("name", list(MAKERS))
def test_detected_and_loss_is_the_models_own(name: str) -> None:
    model, batch, _ = model_case(name)
    assert computes_own_loss(model)
    op = HessianOperator(model, None, batch)
    assert op.loss_source_used == "model" and op.dtype == F64
    with torch.no_grad():
        own = float(model(**batch).loss)
    loss, _ = op.loss_and_grad()
    assert loss == pytest.approx(own, rel=1e-12, abs=0)
    ev = FunctionalEvaluator(model, None, batch, loss_source="model")
    assert float(ev.mean_loss(ev.leaves).detach()) == pytest.approx(own, rel=1e-12, abs=0)


def test_causal_lm_loss_is_the_shifted_one_not_the_aligned_one() -> None:
    """The issue's case: GPT-2 with {input_ids, labels=ids}: the analysed loss shifts (the model's), while
    loss_source='loss_fn' keeps the seed convention (labels aligned with the logits, no shift)."""
    model, batch, _ = model_case("gpt2")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shifted = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V),
                                              batch["labels"][:, 1:].reshape(-1))
        aligned = nn.functional.cross_entropy(logits.reshape(-1, V), batch["labels"].reshape(-1))
    assert abs(float(shifted) - float(aligned)) > 1e-2            # the two conventions differ here
    op = HessianOperator(model, None, batch, loss_source="auto")
    assert op.loss_and_grad()[0] == pytest.approx(float(shifted), rel=1e-6)
    op = HessianOperator(model, nn.CrossEntropyLoss(), batch, loss_source="loss_fn")
    assert op.loss_source_used == "loss_fn"
    assert op.loss_and_grad()[0] == pytest.approx(float(aligned), rel=1e-12)


# ------------------------------------------------------------------------------------------------ HVPs
@pytest.mark.parametrize("name", list(MAKERS))
def test_hvp_on_subset_equals_dense_hessian_and_top_eigenvalue(name: str) -> None:
    model, batch, _ = model_case(name)
    names = SUBSETS[name]
    H = dense_hessian(name, names)
    op = HessianOperator(model, None, batch, params=names)
    assert op.n == H.shape[0]
    X = torch.randn(op.n, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    # the causal/masked-LM losses of transformers upcast the logits to float32: agreement to float32 rounding
    assert rel_err(op @ X, H @ X) < 1e-5
    top = float(torch.linalg.eigvalsh(H)[-1])
    res = lanczos(op, k=1, which="LA", tol=1e-8, seed=0)
    assert float(res.eigenvalues[-1]) == pytest.approx(top, rel=1e-4)


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("mode", ["double_backward", "forward_over_reverse"])
def test_hvp_on_all_parameters_equals_jvp_of_grad(name: str, mode: str) -> None:
    model, batch, ref = model_case(name)
    names = [k for k, _ in model.named_parameters()]
    f, x0 = reference_loss(ref, batch, names)
    v = torch.randn(x0.numel(), dtype=F64, generator=torch.Generator().manual_seed(3))
    _, expected = torch.func.jvp(torch.func.grad(f), (x0,), (v,))
    op = HessianOperator(model, None, batch, mode=mode)
    assert op.layout.names == names          # tied weights (GPT-2 wte / lm_head, T5 shared) appear once
    assert rel_err(op @ v, expected) < 1e-5


# ------------------------------------------------------------------------------------------------ choice
def test_ambiguous_case_warns_once_per_class_and_is_overridable() -> None:
    model, batch, _ = model_case("llama")

    class MyLlama(type(model)):        # a fresh class: the warning is once per model class
        pass

    mine = MyLlama(model.config).double().eval()
    mine.load_state_dict(model.state_dict())
    with pytest.warns(UserWarning, match=r"MyLlama computes its own loss.*loss_source='loss_fn'"):
        op = HessianOperator(mine, nn.CrossEntropyLoss(), batch)
        op @ torch.ones(op.n, dtype=F64)
    assert op.loss_source_used == "model"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*computes its own loss")   # not twice for this class
        op2 = HessianOperator(mine, nn.CrossEntropyLoss(), batch)
        op2 @ torch.ones(op2.n, dtype=F64)
        explicit = HessianOperator(mine, nn.CrossEntropyLoss(), batch, loss_source="loss_fn")
        assert explicit.loss_source_used == "loss_fn"
        with torch.no_grad():
            own = float(mine(**batch).loss)
        assert op2.loss_and_grad()[0] == pytest.approx(own, rel=1e-12)
        assert abs(explicit.loss_and_grad()[0] - own) > 1e-3


def test_loss_source_errors_name_the_argument() -> None:
    model, batch, _ = model_case("gpt2")
    with pytest.raises(ValueError, match=r"loss_source must be one of .*'fn'"):
        HessianOperator(model, None, batch, loss_source="fn")
    assert LOSS_SOURCES == ("auto", "model", "loss_fn")
    with pytest.raises(ValueError, match=r"loss_source='model'.*dict batches"):
        HessianOperator(nn.Linear(2, 1), None, (torch.ones(3, 2), torch.ones(3, 1)), loss_source="model")
    with pytest.raises(ValueError, match=r"loss_source='model' does not apply with batch_loss"):
        HessianOperator(model, None, batch, batch_loss=lambda call, b: call(**b).loss, loss_source="model")
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    op = HessianOperator(model, None, no_labels, loss_source="model")
    with pytest.raises(ValueError, match=r"carries no loss \(does the batch hold 'labels'\?\)"):
        op @ torch.ones(op.n, dtype=F64)


def test_model_without_labels_keeps_the_seed_convention() -> None:
    """A bare GPT2Model-like model (no ``labels`` in forward): the dict-batch loss_fn convention."""
    model, batch, _ = model_case("gpt2")

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
            return self.body(input_ids=input_ids, attention_mask=attention_mask).logits

    head = Head()
    assert not computes_own_loss(head)
    op = HessianOperator(head, nn.CrossEntropyLoss(), batch)
    assert op.loss_source_used == "loss_fn"
    batch_op = HessianOperator(head, None, batch, batch_loss=lambda call, b: call(b["input_ids"]).sum())
    assert batch_op.loss_source_used == "batch_loss"


def test_model_state_is_untouched_in_train_mode_with_dropout() -> None:
    """BERT in train mode with dropout 0.1: analysed in eval mode (the eval-mode loss), and its parameters,
    mode, .grad and the global RNG are as before."""
    model, batch, _ = model_case("bert")
    m = copy.deepcopy(model).train()
    before, rng = state_of(m), torch.get_rng_state()
    op = HessianOperator(m, None, batch)
    loss, _ = op.loss_and_grad()
    op @ torch.ones(op.n, dtype=F64)
    assert m.training and all(p.grad is None for p in m.parameters())
    assert all(torch.equal(before[k], v) for k, v in state_of(m).items())
    assert torch.equal(torch.get_rng_state(), rng)
    with torch.no_grad():
        assert loss == pytest.approx(float(model(**batch).loss), rel=1e-12)


# ------------------------------------------------------------------------------------------------ API B
def test_api_b_analyses_the_models_loss_and_resolves_every_component() -> None:
    """analyze_step and get_hessian_eigenvectors on GPT-2 with API B's usual arguments (a criterion and
    model_type='decoder_only'): the top eigenvalue is the one of the model's own loss (an operator built with
    an explicit batch_loss = model(**batch).loss as reference), and every component resolves."""
    model, batch, _ = model_case("gpt2")
    ref = HessianOperator(model, None, batch, batch_loss=lambda call, b: (call(**b).loss, 1.0))
    top = float(lanczos(ref, k=1, which="LA", tol=1e-8).eigenvalues[-1])
    wrong = HessianOperator(model, nn.CrossEntropyLoss(), batch, loss_source="loss_fn")
    assert abs(float(lanczos(wrong, k=1, tol=1e-6).eigenvalues[-1]) / top - 1) > 1e-2   # it can fail
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vals, vecs = get_hessian_eigenvectors(model, nn.CrossEntropyLoss(), batch, n_top_vectors=1, tol=1e-8)
        cfg = HessianConfig.minimal(n_components=1, trace_probes=0, track_component_hessian=True,
                                    component_list=[c for c in COMPONENT_NAMES if c != "output_projection"])
        res = HessianAnalyzer(cfg).analyze_step(model, nn.CrossEntropyLoss(), batch,
                                                model_type="decoder_only", strict=True)
    assert float(vals[0]) == pytest.approx(top, rel=1e-4)
    assert res["hessian"]["max_eigenvalue"] == pytest.approx(top, rel=1e-4)
    assert set(res["components"]) == set(COMPONENT_NAMES) - {"output_projection"}
    assert res["meta"]["loss_source"] == "model" and res["meta"]["compute_dtype"] == "float64"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = HessianConfig.minimal(n_components=1, trace_probes=0, loss_source="loss_fn")
        res = HessianAnalyzer(cfg).analyze_step(model, nn.CrossEntropyLoss(), batch,
                                                model_type="decoder_only", strict=True)
    assert res["meta"]["loss_source"] == "loss_fn"
    assert abs(res["hessian"]["max_eigenvalue"] / top - 1) > 1e-2      # the config's choice is what runs
    with pytest.raises(ValueError, match="loss_source must be one of"):
        HessianConfig(loss_source="labels")


def test_get_hessian_eigenvectors_refuses_more_vectors_than_parameters() -> None:
    lin = nn.Linear(2, 1).double()
    batch = (torch.ones(3, 2, dtype=F64), torch.zeros(3, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"n_top_vectors must be <= n = 3 .*got n_top_vectors=4"):
        get_hessian_eigenvectors(lin, nn.MSELoss(), batch, n_top_vectors=4)
    vals, vecs = get_hessian_eigenvectors(lin, nn.MSELoss(), batch, n_top_vectors=3, tol=1e-10)
    assert vals.shape == (3,) and vecs.shape == (3, 3)
    x = torch.ones(3, 3, dtype=F64)
    x[:, 2] = 1.0
    dense = 2 * x.T @ x / 3                  # the Hessian of the mean squared error of w·x + b
    assert torch.allclose(torch.as_tensor(vals), torch.linalg.eigvalsh(dense).flip(0), atol=1e-8)


# ------------------------------------------------------------------------------------------------ components
def _flat_ids(op: HessianOperator) -> dict[str, Tensor]:
    """Each parameter's flat layout indices, shaped like the parameter."""
    views = op.layout.unflatten(torch.arange(op.n, dtype=F64))
    return {k: v.long() for k, v in zip(op.layout.names, views)}


def _expected(name: str, component: str) -> list[tuple[str, int | None, int, int]]:
    """(parameter, dim, start, stop) of each component, written out from each architecture's definition."""
    L = range(2)
    if name == "gpt2":
        blk = "transformer.h.{}."
        qkv = {"attention_query": 0, "attention_key": 1, "attention_value": 2}
        if component in qkv:          # Conv1D weight [d, 3d]: q | k | v along the columns
            j = qkv[component]
            return [(blk.format(i) + "attn.c_attn.weight", 1, j * D, (j + 1) * D) for i in L]
        table = {
            "attention_output": ["attn.c_proj.weight"],
            "ffn": ["mlp.c_fc.weight", "mlp.c_proj.weight"],
            "norm": ["ln_1.weight", "ln_2.weight"],
            "hidden_states": ["attn.c_proj.weight", "mlp.c_proj.weight"],
        }
        if component == "attention":
            return [e for c in qkv for e in _expected(name, c)] + _expected(name, "attention_output")
        if component == "embeddings":
            return [("transformer.wte.weight", None, 0, 0), ("transformer.wpe.weight", None, 0, 0)]
        if component == "output_projection":
            return []                 # lm_head is tied to wte: no parameter of its own
        extra = [("transformer.ln_f.weight", None, 0, 0)] if component == "norm" else []
        return [(blk.format(i) + s, None, 0, 0) for i in L for s in table[component]] + extra
    if name == "llama":
        blk = "model.layers.{}."
        table = {
            "attention_query": ["self_attn.q_proj.weight"], "attention_key": ["self_attn.k_proj.weight"],
            "attention_value": ["self_attn.v_proj.weight"], "attention_output": ["self_attn.o_proj.weight"],
            "attention": [f"self_attn.{p}_proj.weight" for p in "qkvo"],
            "ffn": ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"],
            "norm": ["input_layernorm.weight", "post_attention_layernorm.weight"],
            "hidden_states": ["self_attn.o_proj.weight", "mlp.down_proj.weight"],
        }
        if component == "embeddings":
            return [("model.embed_tokens.weight", None, 0, 0)]
        if component == "output_projection":
            return [("lm_head.weight", None, 0, 0)]
        extra = [("model.norm.weight", None, 0, 0)] if component == "norm" else []
        return [(blk.format(i) + s, None, 0, 0) for i in L for s in table[component]] + extra
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("component", COMPONENT_NAMES)
def test_component_slices_are_right(name: str, component: str) -> None:
    """Each API B component resolves, on the operator's layout, to exactly the flat indices of the
    parameter slices the architecture defines (GPT-2's packed c_attn split by columns)."""
    model, batch, _ = model_case(name)
    op = HessianOperator(model, None, batch)
    ids = _flat_ids(op)
    want = [ids[k] if dim is None else ids[k].narrow(dim, a, b - a)
            for k, dim, a, b in _expected(name, component)]
    want_idx = (torch.cat([w.reshape(-1) for w in want]).sort().values if want
                else torch.empty(0, dtype=torch.long))
    got = component_indices(op.layout, resolve_component(model, component))
    assert torch.equal(got, want_idx)


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_components_resolve_on_bert_and_t5(name: str) -> None:
    """Every component except the (tied) output projection is non-empty, and the query/key/value/output and
    FFN components pick the architecture's own layers."""
    model, batch, _ = model_case(name)
    names = {c: [p.name for p in resolve_component(model, c)] for c in COMPONENT_NAMES}
    assert all(names[c] for c in COMPONENT_NAMES if c != "output_projection"), names
    q, k, v, o = {"bert": ("self.query", "self.key", "self.value", "attention.output.dense"),
                  "t5": ("Attention.q", "Attention.k", "Attention.v", "Attention.o")}[name]
    for comp, pat in (("attention_query", q), ("attention_key", k), ("attention_value", v),
                      ("attention_output", o)):
        assert names[comp] and all(pat + ".weight" in n for n in names[comp]), (comp, names[comp])
    n_ffn = {"bert": 4, "t5": 8}[name]        # 2 per block: intermediate/output dense (BERT), wi/wo (T5)
    assert len(names["ffn"]) == n_ffn


def test_packed_query_block_of_gpt2_matches_dense_hessian() -> None:
    """The Hessian block of GPT-2's packed query columns (API B's 'attention_query'): the top eigenvalue of
    the restricted operator equals eigh of the dense Hessian over those columns only."""
    model, batch, ref = model_case("gpt2")
    op = HessianOperator(model, None, batch)
    idx = component_indices(op.layout, resolve_component(model, "attention_query"))
    base = {k: p.detach() for k, p in ref.named_parameters()}
    keys = [f"transformer.h.{i}.attn.c_attn.weight" for i in range(2)]

    def f(x: Tensor) -> Tensor:
        sub = {k: torch.cat([q.view(D, D), base[k][:, D:]], dim=1) for k, q in zip(keys, x.split(D * D))}
        return functional_call(ref, {**base, **sub}, args=(), kwargs=batch).loss

    x0 = torch.cat([base[k][:, :D].reshape(-1) for k in keys])
    top = float(torch.linalg.eigvalsh(dense_of(f, x0))[-1])
    res = lanczos(op.restrict(idx), k=1, which="LA", tol=1e-8)
    assert float(res.eigenvalues[-1]) == pytest.approx(top, rel=1e-4)


# ------------------------------------------------------------------------------------------------ half
def test_bfloat16_gpt2_is_analysed_on_float32_copies() -> None:
    model, batch, _ = model_case("gpt2")
    half = copy.deepcopy(model).to(torch.bfloat16)
    before = state_of(half)
    op = HessianOperator(half, None, batch)
    assert op.dtype == torch.float32 and op.evaluator.upcast
    up = copy.deepcopy(half).float()               # the float32-upcast model: what is analysed
    with torch.no_grad():
        own = float(up(**batch).loss)
    assert op.loss_and_grad()[0] == pytest.approx(own, rel=1e-6)
    names = SUBSETS["gpt2"]
    up.set_attn_implementation("eager")
    f, x0 = reference_loss(up, batch, names)
    H = dense_of(f, x0)
    sub = HessianOperator(half, None, batch, params=names)
    X = torch.randn(sub.n, 2, generator=torch.Generator().manual_seed(4))
    assert rel_err(sub @ X, H @ X.double()) < 1e-4
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert all(torch.equal(before[k], v) for k, v in state_of(half).items())
