"""HessianConfig / HessianAnalyzer / legacy functions against a dense float64 Hessian of a tiny
transformer."""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import warnings
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest
import torch
from _models import dense_hessian, transformer_batch, transformer_loss  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset

from hessext.analysis import HessianAnalyzer, HessianConfig  # noqa: E402
from hessext.hessian import (  # noqa: E402
    compute_component_hessians,
    compute_hessian_gradient_alignment,
    get_hessian_eigenvectors,
    measure_train_val_landscape_divergence,
)
from hessext.models import TransformerFactory  # noqa: E402

TINY = dict(vocab_size=7, d_model=4, num_heads=2, num_layers=1, d_ff=6, max_seq_length=5)
CE = torch.nn.CrossEntropyLoss()


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return TransformerFactory.create_decoder_only_transformer(**{**TINY, **kw}).double()


def dict_batch(seed=1, n=3):
    ids, labels = transformer_batch(seed=seed, n=n)
    return {"input_ids": ids, "labels": labels}


def exact_config(**kw):
    base = dict(n_components=3, n_bottom=2, tolerance=1e-10, trace_probes=64,
                component_list=["attention", "ffn"])
    base.update(kw)
    return HessianConfig(**base)


@pytest.fixture(scope="module")
def case():
    model = tiny_model()
    train, val = dict_batch(1), dict_batch(2)
    pair = lambda b: (b["input_ids"], b["labels"])  # noqa: E731
    H = dense_hessian(model, transformer_loss, [pair(train)])
    Hv = dense_hessian(model, transformer_loss, [pair(val)])
    res = HessianAnalyzer(exact_config()).analyze_step(model, CE, train, val, "decoder_only", step=7)
    return model, train, val, H, Hv, res


def _grad(model, batch):
    m = copy.deepcopy(model)
    loss = transformer_loss(m(batch["input_ids"]), batch["labels"])
    gs = torch.autograd.grad(loss, [p for p in m.parameters()])
    return torch.cat([g.reshape(-1) for g in gs])


# ------------------------------------------------------------------ config
def test_config_validation():
    with pytest.raises(ValueError, match="n_components.*-1"):
        HessianConfig(n_components=-1)
    with pytest.raises(ValueError, match="tolerance"):
        HessianConfig(tolerance=0.0)
    with pytest.raises(ValueError, match="tolerance"):
        HessianConfig(tolerance=-1e-3)
    with pytest.raises(ValueError, match="unknown component names.*'mlp'"):
        HessianConfig(component_list=["attention", "mlp"])
    with pytest.raises(ValueError, match="num_batches"):
        HessianConfig(num_batches=0)
    with pytest.raises(ValueError, match="device"):
        HessianConfig(device="tpu7")
    with pytest.raises(TypeError, match="track_sharpness"):
        HessianConfig(track_sharpness="yes")
    with pytest.raises(ValueError, match="n_bottom"):  # min_eigenvalue needs the bottom of the spectrum
        HessianConfig(n_bottom=0)


def test_every_config_error_is_a_value_error_naming_the_field():
    # The document catches configuration errors with `except ValueError`: wrong types are caught too.
    from hessext.analysis import HessianConfigError
    for kw, field in [(dict(track_sharpness="yes"), "track_sharpness"), (dict(device=3), "device"),
                      (dict(component_list=[3]), "component_list"),
                      (dict(component_list="ffn"), "component_list"),
                      (dict(n_components=2.5), "n_components"), (dict(tolerance="1e-3"), "tolerance"),
                      (dict(pad_idx="0"), "pad_idx"), (dict(component_list=["attention", "mlp"]), "mlp")]:
        with pytest.raises(ValueError, match=field) as info:
            HessianConfig(**kw)
        assert isinstance(info.value, (HessianConfigError, TypeError))
    an = HessianAnalyzer()
    with pytest.raises(ValueError, match="track_gradient_alignment"):
        an.update_config(track_gradient_alignment=None)


def test_presets():
    m = HessianConfig.minimal(n_components=5)
    assert m.n_components == 5 and not m.track_component_hessian
    d = HessianConfig.default()
    assert d == HessianConfig()
    c = HessianConfig.comprehensive(n_components=50, component_list=["attention", "hidden_states"])
    assert c.n_components == 50 and c.component_list == ["attention", "hidden_states"]
    assert HessianConfig.comprehensive().component_list[0] == "attention"


def test_update_config_is_validated_and_atomic():
    an = HessianAnalyzer()
    an.update_config(n_components=25, component_list=["attention", "norm"])
    assert an.config.n_components == 25 and an.config.component_list == ["attention", "norm"]
    with pytest.raises(ValueError, match="n_components"):
        an.update_config(n_components=0, track_sharpness=False)
    assert an.config.n_components == 25 and an.config.track_sharpness
    with pytest.raises(ValueError, match="unknown HessianConfig fields.*colour"):
        an.update_config(colour="red")
    assert HessianAnalyzer.from_config(an.config).config is an.config
    with pytest.raises(TypeError):
        HessianAnalyzer(config={"n_components": 3})


# ------------------------------------------------------------------ analyze_step against dense ground truth
def test_full_model_spectrum(case):
    model, train, val, H, Hv, res = case
    evals = torch.linalg.eigvalsh(H)
    hs = res["hessian"]
    assert hs["max_eigenvalue"] == pytest.approx(evals[-1].item(), rel=1e-7)
    assert hs["min_eigenvalue"] == pytest.approx(evals[0].item(), rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(hs["top_eigenvalues"], evals.flip(0)[:3].numpy(), rtol=1e-7)
    np.testing.assert_allclose(hs["bottom_eigenvalues"], evals[:2].numpy(), rtol=1e-6, atol=1e-9)
    computed = torch.cat([evals.flip(0)[:3], evals[:2]])
    assert hs["negative_count"] == int((computed < 0).sum())
    assert hs["num_parameters"] == H.shape[0]
    assert hs["top_eigenvalues"] == sorted(hs["top_eigenvalues"], reverse=True)


def test_trace_is_stochastic_estimate_within_its_error(case):
    _, _, _, H, _, res = case
    hs = res["hessian"]
    exact = H.trace().item()
    assert 0 < hs["hessian_trace_std_error"]
    assert abs(hs["hessian_trace_estimate"] - exact) < 4 * hs["hessian_trace_std_error"]
    # Not the sum of the top-k eigenvalues.
    assert hs["hessian_trace_estimate"] != pytest.approx(sum(hs["top_eigenvalues"]), rel=1e-3)
    assert hs["complexity_score"] == pytest.approx(hs["hessian_trace_estimate"]
                                                   / hs["effective_rank_entropy"])


def test_alignment_uses_true_Hg(case):
    model, train, _, H, _, res = case
    g = _grad(model, train)
    Hg = H @ g
    al = res["alignment"]
    assert al["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-7)
    assert al["grad_Hg_ratio"] == pytest.approx((Hg.norm() / g.norm()).item(), rel=1e-6)
    assert al["grad_Hg_alignment"] == pytest.approx((abs(g @ Hg) / (g.norm() * Hg.norm())).item(), rel=1e-6)
    assert al["rayleigh_quotient"] == pytest.approx((g @ Hg / (g @ g)).item(), rel=1e-6)
    V = torch.linalg.eigh(H).eigenvectors[:, -3:]  # top-3 subspace
    assert al["top_subspace_fraction"] == pytest.approx(((V.T @ g) ** 2).sum().item() / (g @ g).item(),
                                                        rel=1e-5)
    assert res["meta"]["matvecs"]["alignment"] == 1  # one HVP: H g


def test_sharpness(case):
    _, _, _, H, _, res = case
    evals = torch.linalg.eigvalsh(H)
    sh = res["sharpness"]
    assert sh["max_sharpness"] == pytest.approx(evals[-1].item(), rel=1e-7)
    assert sh["spectral_norm"] == pytest.approx(evals.abs().max().item(), rel=1e-6)
    n = H.shape[0]
    assert abs(sh["mean_sharpness"] - H.trace().item() / n) < 4 * sh["mean_sharpness_std_error"]


def test_components_section(case):
    _, _, _, _, _, res = case
    comps = res["components"]
    assert set(comps) == {"attention", "ffn"}
    for c in comps.values():
        assert {"max_eigenvalue", "top_eigenvalues", "trace_estimate", "trace_std_error",
                "num_parameters", "effective_rank_95"} <= set(c)


def test_train_val_divergence(case):
    model, _, _, H, Hv, res = case
    dv = res["train_val_divergence"]
    ev_tr, ev_val = torch.linalg.eigvalsh(H), torch.linalg.eigvalsh(Hv)
    assert dv["max_eigenvalue_ratio"] == pytest.approx((ev_tr[-1] / ev_val[-1]).item(), rel=1e-6)
    assert dv["val_hessian"]["max_eigenvalue"] == pytest.approx(ev_val[-1].item(), rel=1e-7)
    Vt = torch.linalg.eigh(H).eigenvectors[:, -3:]
    Vv = torch.linalg.eigh(Hv).eigenvectors[:, -3:]
    assert dv["eigenspace_overlap"] == pytest.approx(((Vt.T @ Vv) ** 2).sum().item() / 3, rel=1e-5)
    for key in ("train_val_landscape_divergence_score", "trace_ratio", "eigenvalue_distribution_overlap"):
        assert math.isfinite(dv[key])


def test_same_train_and_val_give_no_divergence():
    model = tiny_model()
    b = dict_batch(1)
    res = HessianAnalyzer(exact_config(trace_probes=10, track_component_hessian=False)).analyze_step(
        model, CE, b, b)
    dv = res["train_val_divergence"]
    assert dv["trace_ratio"] == pytest.approx(1.0, rel=1e-9)  # same probes
    assert dv["eigenspace_overlap"] == pytest.approx(1.0, rel=1e-6)
    assert dv["eigenvalue_distribution_overlap"] == pytest.approx(1.0)
    assert dv["train_val_landscape_divergence_score"] == pytest.approx(math.log(2) / 2, rel=1e-6)


def test_no_repeated_work(case):
    meta = case[-1]["meta"]
    mv = meta["matvecs"]
    assert mv["sharpness"] == 0 and mv["alignment"] == 1
    assert mv["trace"] == 64  # one probe set serves the model trace and every component trace
    assert mv["total"] == sum(v for k, v in mv.items() if k != "total")
    # Every product the two operators counted belongs to a section: nothing runs outside the accounting.
    assert meta["operator_matvecs"] == mv["total"]
    lz = meta["lanczos_matvecs"]
    assert lz["hessian"] == mv["hessian_lanczos"]
    assert sum(lz["components"].values()) == mv["components"]  # one Lanczos run per component, nothing else
    assert mv["train_val_divergence"] == lz["val"] + 64  # val Lanczos + one probe set
    needed = lz["hessian"] + sum(lz["components"].values()) + lz["val"]
    assert mv["total"] == needed + 2 * 64 + 1  # the rest: two probe sets and H·g


def test_one_lanczos_run_and_one_gradient(monkeypatch):
    """The full-model spectrum is ONE Krylov run, the gradient is evaluated once, components reuse the
    probes."""
    from hessext.analysis import spectrum
    from hessext.hvp import HessianOperator
    calls = {"extreme_eigenpairs": 0, "lanczos": 0, "hutchinson": 0, "loss_and_grad": 0}

    def count(owner, name):
        f = getattr(owner, name)

        def counted(*a, **k):
            calls[name] += 1
            return f(*a, **k)
        monkeypatch.setattr(owner, name, counted)

    count(spectrum, "extreme_eigenpairs")  # every API B solve and probe set goes through analysis.spectrum
    count(spectrum, "lanczos")
    count(spectrum, "hutchinson")
    count(HessianOperator, "loss_and_grad")
    cfg = exact_config(trace_probes=4, tolerance=1e-6, component_list=["attention", "ffn", "norm"])
    res = HessianAnalyzer(cfg).analyze_step(tiny_model(), CE, dict_batch(1), dict_batch(2))
    assert "error" not in res, res.get("error")
    # Train and val: one both-ends run and one probe set each; one top-k run per component; one gradient.
    assert calls == {"extreme_eigenpairs": 2, "lanczos": 3, "hutchinson": 2, "loss_and_grad": 1}


# ------------------------------------------------------------------ data handling and model safety
def test_num_batches_is_honoured_for_a_dataloader(case):
    model, train, val, H, Hv, _ = case
    third = dict_batch(5)
    ids = torch.cat([train["input_ids"], val["input_ids"], third["input_ids"]])
    labels = torch.cat([train["labels"], val["labels"], third["labels"]])
    loader = DataLoader(TensorDataset(ids, labels), batch_size=3)  # batches: train, val, third
    cfg = exact_config(num_batches=2, track_component_hessian=False, track_gradient_alignment=False,
                       trace_probes=2)
    res = HessianAnalyzer(cfg).analyze_step(model, transformer_loss, loader, model_type=None)
    top2 = torch.linalg.eigvalsh((H + Hv) / 2)[-1].item()  # equal batch sizes: the plain mean
    assert res["hessian"]["max_eigenvalue"] == pytest.approx(top2, rel=1e-7)
    res1 = HessianAnalyzer(dataclasses_replace(cfg, num_batches=1)).analyze_step(
        model, transformer_loss, loader, model_type=None)
    assert res1["hessian"]["max_eigenvalue"] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-7)


def test_pad_labels_are_ignored():
    model = tiny_model(pad_idx=0)
    ids, labels = transformer_batch(seed=4)
    labels[:, :2] = 0
    H = dense_hessian(model, lambda out, y: torch.nn.functional.cross_entropy(
        out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=0), [(ids, labels)])
    cfg = exact_config(track_component_hessian=False, track_gradient_alignment=False, trace_probes=2)
    res = HessianAnalyzer(cfg).analyze_step(model, CE, {"input_ids": ids, "labels": labels})
    assert res["hessian"]["max_eigenvalue"] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-7)


def test_model_untouched_and_dropout_off(case):
    _, train, _, H, _, _ = case
    model = tiny_model(dropout=0.3)  # same parameters as the case's model (dropout has none)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cfg = exact_config(trace_probes=4, tolerance=1e-8, track_component_hessian=False)
    r1 = HessianAnalyzer(cfg).analyze_step(model, CE, train)
    r2 = HessianAnalyzer(cfg).analyze_step(model, CE, train)
    assert "error" not in r1
    assert r1["hessian"]["max_eigenvalue"] == r2["hessian"]["max_eigenvalue"]  # no dropout noise
    assert r1["hessian"]["max_eigenvalue"] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-7)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_section_failure_keeps_other_sections(monkeypatch):
    from hessext.analysis import components
    def boom(*a, **k):
        raise RuntimeError("component solver exploded")
    monkeypatch.setattr(components.ComponentAnalyzer, "analyze_all_components", boom)
    an = HessianAnalyzer(exact_config(trace_probes=2, tolerance=1e-4))
    res = an.analyze_step(tiny_model(), CE, dict_batch(1))
    assert "component solver exploded" in res["error"] and set(res["errors"]) == {"components"}
    assert "hessian" in res and "alignment" in res and "sharpness" in res and "components" not in res
    with pytest.raises(RuntimeError, match="exploded"):
        an.analyze_step(tiny_model(), CE, dict_batch(1), strict=True)


def test_failing_loss_is_reported_and_model_restored():
    model = tiny_model()
    model.train()
    bad = dict_batch(1)
    bad["labels"] = bad["labels"] + 100  # out of the vocabulary
    res = HessianAnalyzer(exact_config(trace_probes=2)).analyze_step(model, CE, bad)
    assert "hessian" in res["errors"] and "labels out of range" in res["error"]
    assert model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="labels out of range"):
        HessianAnalyzer(exact_config(trace_probes=2)).analyze_step(model, CE, bad, strict=True)
    with pytest.raises(ValueError, match="model_type"):
        HessianAnalyzer().analyze_step(model, CE, dict_batch(1), model_type="decoder")


def test_encoder_decoder_and_pair_batches(case):
    _, train, _, H, _, _ = case
    torch.manual_seed(0)
    model = TransformerFactory.create_encoder_decoder_transformer(**TINY).double()
    cfg = exact_config(trace_probes=2, track_component_hessian=False, n_components=2)
    res = HessianAnalyzer(cfg).analyze_step(model, CE, train, model_type="encoder_decoder")
    assert "error" not in res
    assert res["hessian"]["num_parameters"] == sum(p.numel() for p in model.parameters())
    # (inputs, targets) batches are always loss_fn(model(inputs), targets), whatever model_type says.
    res2 = HessianAnalyzer(cfg).analyze_step(tiny_model(), transformer_loss,
                                             (train["input_ids"], train["labels"]), model_type="encoder_only")
    assert res2["hessian"]["max_eigenvalue"] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-7)


def test_encoder_decoder_loss_matches_dense(case):
    """Dict batches of an encoder-decoder: decoder inputs are the labels shifted right (pad 0)."""
    _, train, _, _, _, _ = case
    torch.manual_seed(0)
    model = TransformerFactory.create_encoder_decoder_transformer(**TINY).double()
    labels = train["labels"]
    dec = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)

    class Teacher(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, ids):
            return self.inner(ids, dec)

    H = dense_hessian(Teacher(), transformer_loss, [(train["input_ids"], labels)])
    cfg = exact_config(trace_probes=2, track_component_hessian=False, n_components=2)
    res = HessianAnalyzer(cfg).analyze_step(model, CE, train, model_type="encoder_decoder", strict=True)
    assert res["hessian"]["max_eigenvalue"] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-7)


def test_encoder_only_logits_object_and_ignored_labels_match_dense():
    """A model returning an object with ``.logits``; labels -100 and the pad id are left out of the loss."""
    from types import SimpleNamespace
    torch.manual_seed(0)
    inner = TransformerFactory.create_encoder_only_transformer(**TINY, pad_idx=6).double()

    class HFStyle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = inner
            self.pad_idx = 6

        def forward(self, input_ids):
            return SimpleNamespace(logits=self.model(input_ids))

    ids, labels = transformer_batch(seed=3)
    labels[0, :2] = -100
    labels[1, 3] = 6
    H = dense_hessian(inner, lambda out, y: torch.nn.functional.cross_entropy(
        out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100),
        [(ids, labels.masked_fill(labels == 6, -100))])
    cfg = exact_config(trace_probes=2, track_component_hessian=False)
    res = HessianAnalyzer(cfg).analyze_step(HFStyle(), CE, {"input_ids": ids, "labels": labels},
                                            model_type="encoder_only", strict=True)
    evals = torch.linalg.eigvalsh(H)
    assert res["hessian"]["max_eigenvalue"] == pytest.approx(evals[-1].item(), rel=1e-7)
    assert res["hessian"]["min_eigenvalue"] == pytest.approx(evals[0].item(), rel=1e-6, abs=1e-9)


def test_bad_arguments_raise_naming_the_argument():
    model = tiny_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    an = HessianAnalyzer(exact_config(trace_probes=2, tolerance=1e-4))
    b = dict_batch(1)
    cases = [
        (dict(train_batch=None), ValueError, "train_batch: data is None"),
        (dict(train_batch=[]), ValueError, "train_batch: data is empty"),
        (dict(train_batch={"input_ids": b["input_ids"]}), ValueError, "train_batch: batch dict has keys"),
        (dict(train_batch={"input_ids": b["input_ids"].double(), "labels": b["labels"]}), TypeError,
         r"train_batch: batch\['input_ids'\] must be an integer tensor"),
        (dict(val_batch=5), TypeError, "val_batch: data must be"),
        (dict(val_batch=[b, {"labels": b["labels"]}]), ValueError, r"val_batch \(batch 1\): batch dict"),
        (dict(loss_fn="ce"), TypeError, "loss_fn must be callable"),
        (dict(model_type="gpt"), ValueError, "model_type"),
        (dict(model=lambda x: x), TypeError, "model must be a torch.nn.Module"),
    ]
    for kw, exc, msg in cases:
        args = dict(model=model, loss_fn=CE, train_batch=b, val_batch=None)
        args.update(kw)
        with pytest.raises(exc, match=msg):  # raised even without strict=True: not an analysis failure
            an.analyze_step(**args)
    with pytest.raises(TypeError, match="data_batches must be a list"):
        an.compute_batch_analysis(model, CE, b)  # a single batch
    with pytest.raises(TypeError, match="data_batches must be a list"):
        an.compute_batch_analysis(model, CE, 3)
    with pytest.raises(ValueError, match=r"data_batches\[1\]: batch dict has keys"):
        an.compute_batch_analysis(model, CE, [b, {"input_ids": b["input_ids"]}])
    with pytest.raises(ValueError, match="train_data_loader: data is empty"):
        get_hessian_eigenvectors(model, CE, [], None, None, 2)
    assert an.history == {}
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_request_without_gpu_falls_back():
    cfg = exact_config(trace_probes=2, device="cuda", track_component_hessian=False, tolerance=1e-4)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        res = HessianAnalyzer(cfg).analyze_step(tiny_model(), CE, dict_batch(1))
    assert "error" not in res


# ------------------------------------------------------------------ reporting, batches, persistence
def test_summary_text(case):
    text = HessianAnalyzer().get_analysis_summary(case[-1])
    assert "step 7" in text and "max eigenvalue" in text and "trace estimate" in text
    assert "attention" in text and "Alignment" in text and "Train/val" in text
    assert len(text.splitlines()) > 8


def test_compute_batch_analysis(case):
    model, train, val, H, Hv, _ = case
    cfg = exact_config(trace_probes=2, component_list=["ffn"])
    an = HessianAnalyzer(cfg)
    out = an.compute_batch_analysis(model, CE, [train, val], "decoder_only")
    tops = [torch.linalg.eigvalsh(H)[-1].item(), torch.linalg.eigvalsh(Hv)[-1].item()]
    assert out["num_batches"] == 2 and out["errors"] == {}
    assert out["max_eigenvalue_mean"] == pytest.approx(np.mean(tops), rel=1e-7)
    assert out["max_eigenvalue_std"] == pytest.approx(np.std(tops), rel=1e-5)
    for key in ("hessian_trace_estimate_mean", "grad_Hg_alignment_std", "max_sharpness_mean",
                "ffn_max_eigenvalue_mean"):
        assert key in out
    assert an.history == {}
    with pytest.raises(ValueError, match="empty"):
        an.compute_batch_analysis(model, CE, [])


def test_save_hessian_data_json_npz(tmp_path):
    cfg = exact_config(trace_probes=2, output_dir=str(tmp_path), save_hessian_data=True,
                       save_eigenvectors=True, model_name="tiny", track_component_hessian=False)
    model = tiny_model()
    res = HessianAnalyzer(cfg).analyze_step(model, CE, dict_batch(1), step=3)
    data = json.loads((tmp_path / "tiny_step3.json").read_text())
    assert data["hessian"]["max_eigenvalue"] == pytest.approx(res["hessian"]["max_eigenvalue"])
    npz = np.load(tmp_path / "tiny_step3.npz", allow_pickle=False)
    np.testing.assert_allclose(npz["top_eigenvalues"], res["hessian"]["top_eigenvalues"])
    n = sum(p.numel() for p in model.parameters())
    assert npz["top_eigenvectors"].shape == (3, n)
    assert sorted(os.listdir(tmp_path)) == ["tiny_step3.json", "tiny_step3.npz"]  # no temp files left


@pytest.mark.parametrize("model_dtype, cfg_dtype, saved", [
    (torch.float32, torch.float64, np.float64),   # a float64 analysis of a float32 model
    (torch.float64, None, np.float64),            # a float64 model
    (torch.float32, None, np.float32),            # a float32 analysis stays float32
])
def test_saved_eigenvectors_keep_the_analysis_dtype(tmp_path, model_dtype, cfg_dtype, saved):
    model = tiny_model().to(model_dtype)
    cfg = exact_config(trace_probes=2, output_dir=str(tmp_path), save_hessian_data=True,
                       save_eigenvectors=True, model_name="m", track_component_hessian=False,
                       track_gradient_alignment=False,
                       n_components=2, dtype=cfg_dtype, tolerance=1e-10 if saved == np.float64 else 1e-4)
    res = HessianAnalyzer(cfg).analyze_step(model, CE, dict_batch(1), step=0, strict=True)
    vecs = np.load(tmp_path / "m_step0.npz", allow_pickle=False)["top_eigenvectors"]
    assert vecs.dtype == saved
    if saved == np.float64:
        # Against the dense float64 Hessian: residuals a float32 copy of the vectors could not reach.
        batch = dict_batch(1)
        H = dense_hessian(tiny_model(), transformer_loss, [(batch["input_ids"], batch["labels"])])
        lam = torch.tensor(res["hessian"]["top_eigenvalues"], dtype=torch.float64)
        V = torch.from_numpy(vecs)
        resid = (V @ H - lam[:, None] * V).norm(dim=1) / lam.abs()
        assert float(resid.max()) < 1e-8
        assert float((V.float().double() @ H - lam[:, None] * V.float().double()).norm(dim=1).max()
                     / lam.abs().min()) > 1e-8  # (what float32 storage would have given)


def _save_case(tmp_path):
    cfg = exact_config(trace_probes=2, output_dir=str(tmp_path), save_eigenvectors=True, model_name="u",
                       track_component_hessian=False, track_gradient_alignment=False, n_components=2)
    an = HessianAnalyzer(cfg)
    return an, an.analyze_step(tiny_model(), CE, dict_batch(1), step=4, strict=True)


def _fail_second(monkeypatch, phase):
    """Make the second file of the next save fail: its write (phase 1) or its rename into place (phase 2)."""
    from hessext.analysis import persistence

    owner, name = (persistence, "atomic_write") if phase == "write" else (persistence.os, "replace")
    real, calls = getattr(owner, name), []

    def fails_second_time(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(f"injected failure in the second {phase}")
        return real(*args)

    monkeypatch.setattr(owner, name, fails_second_time)


@pytest.mark.parametrize("phase", ["write", "rename"])
def test_one_save_is_both_files_or_neither(tmp_path, monkeypatch, phase):
    """A failure of the second file (its write, or its rename into place) leaves the previous save intact
    and no new or temporary file behind; a first save that fails leaves nothing."""
    an, res = _save_case(tmp_path)
    paths = an.save_hessian_data(res)
    before = {p: open(p, "rb").read() for p in paths.values()}
    res2 = {**res, "hessian": {**res["hessian"], "max_eigenvalue": 123.0}}
    with monkeypatch.context() as m:
        _fail_second(m, phase)
        with pytest.raises(OSError, match="injected"):
            an.save_hessian_data(res2)
    assert sorted(os.listdir(tmp_path)) == ["u_step4.json", "u_step4.npz"]  # no temporary left
    assert {p: open(p, "rb").read() for p in paths.values()} == before      # the old pair, unchanged

    fresh = tmp_path / "fresh"
    an.update_config(output_dir=str(fresh), save_hessian_data=True)
    with monkeypatch.context() as m:
        _fail_second(m, phase)
        with pytest.warns(UserWarning, match="save_hessian_data failed.*injected"):
            out = an.analyze_step(tiny_model(), CE, dict_batch(1), step=4)
    assert "hessian" in out and "error" not in out     # the analysis itself is returned
    assert not fresh.exists() or os.listdir(fresh) == []
    an.save_hessian_data(res2)                         # and a later save writes both files
    assert sorted(os.listdir(fresh)) == ["u_step4.json", "u_step4.npz"]
    assert json.loads((fresh / "u_step4.json").read_text())["hessian"]["max_eigenvalue"] == 123.0


def test_create_plots(tmp_path):
    pytest.importorskip("matplotlib")
    cfg = exact_config(trace_probes=2, output_dir=str(tmp_path), model_name="tiny", tolerance=1e-4)
    an = HessianAnalyzer(cfg)
    for step in (0, 1):
        an.analyze_step(tiny_model(seed=step), CE, dict_batch(1), step=step)
    done = an.create_plots()
    assert "plot_eigenvalue_evolution" in done
    assert any(f.endswith(".png") for f in os.listdir(tmp_path / "plots"))


def test_create_plots_without_visualizer_warns(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "hessext.viz", None)  # import fails
    an = HessianAnalyzer(exact_config(output_dir=str(tmp_path)))
    with pytest.warns(UserWarning, match="create_plots skipped"):
        assert an.create_plots() == []


# ------------------------------------------------------------------ legacy functions
def test_get_hessian_eigenvectors(case):
    model, train, _, H, _, _ = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vals, vecs = get_hessian_eigenvectors(model, CE, train, num_batches=100, device="cuda",
                                              n_top_vectors=4, tol=1e-10)
    assert isinstance(vals, np.ndarray) and vals.shape == (4,) and vecs.shape == (4, H.shape[0])
    np.testing.assert_allclose(vals, torch.linalg.eigvalsh(H).flip(0)[:4].numpy(), rtol=1e-7)
    Hn = H.numpy()
    for lam, v in zip(vals, vecs):
        assert np.linalg.norm(Hn @ v - lam * v) < 1e-6 * abs(vals[0])


def test_legacy_alignment_and_components(case):
    model, train, val, H, _, _ = case
    al = compute_hessian_gradient_alignment(model, CE, train, "decoder_only", n_components=3)
    g = _grad(model, train)
    assert al["grad_Hg_ratio"] == pytest.approx(((H @ g).norm() / g.norm()).item(), rel=1e-6)
    comp = compute_component_hessians(model, CE, train, "decoder_only", components=["attention", "ffn"],
                                      n_components=2)
    assert set(comp) == {"attention", "ffn"}
    dv = measure_train_val_landscape_divergence(model, CE, train, val, "decoder_only", n_components=3,
                                                trace_probes=4)
    assert "train_val_landscape_divergence_score" in dv
