"""TransformerFactory: shapes, masking, options and argument validation."""
from __future__ import annotations

import pytest
import torch

from hessext.models import TransformerFactory as F
from hessext.transformer import TransformerFactory as F2

SMALL = dict(vocab_size=11, d_model=8, num_heads=2, num_layers=1, d_ff=12, max_seq_length=6)


def test_transformer_module_reexports_factory():
    assert F2 is F


def test_default_decoder_only_is_small_and_returns_logits():
    torch.manual_seed(0)
    model = F.create_decoder_only_transformer(vocab_size=1000)
    n = sum(p.numel() for p in model.parameters())
    assert 50_000 < n < 400_000  # analysable in seconds on a CPU
    ids = torch.randint(0, 1000, (4, 20))
    assert model(ids).shape == (4, 20, 1000)


@pytest.mark.parametrize("make", [F.create_decoder_only_transformer, F.create_encoder_only_transformer,
                                  F.create_encoder_decoder_transformer],
                         ids=["decoder_only", "encoder_only", "encoder_decoder"])
def test_shapes(make):
    torch.manual_seed(0)
    model = make(**SMALL)
    ids = torch.randint(0, 11, (3, 5))
    assert model(ids).shape == (3, 5, 11)


def _changed_positions(model, ids, t, **kw):
    ids2 = ids.clone()
    ids2[:, t] = (ids2[:, t] + 1) % 11
    with torch.no_grad():
        a, b = model(ids, **kw), model(ids2, **kw)
    return [(a[:, i] - b[:, i]).abs().max().item() > 1e-7 for i in range(ids.shape[1])]


def test_decoder_only_is_causal():
    torch.manual_seed(0)
    model = F.create_decoder_only_transformer(**SMALL).eval()
    ids = torch.randint(0, 11, (2, 6))
    changed = _changed_positions(model, ids, 3)
    assert changed == [False, False, False, True, True, True]


def test_encoder_only_is_bidirectional():
    torch.manual_seed(0)
    model = F.create_encoder_only_transformer(**SMALL).eval()
    ids = torch.randint(0, 11, (2, 6))
    assert all(_changed_positions(model, ids, 3))


def test_encoder_decoder_decoder_is_causal_in_its_inputs():
    torch.manual_seed(0)
    model = F.create_encoder_decoder_transformer(**SMALL).eval()
    src = torch.randint(0, 11, (2, 6))
    dec = torch.randint(0, 11, (2, 6))
    dec2 = dec.clone()
    dec2[:, 4] = (dec2[:, 4] + 1) % 11
    with torch.no_grad():
        a, b = model(src, dec), model(src, dec2)
    diff = (a - b).abs().amax(dim=(0, 2))
    assert torch.all(diff[:4] < 1e-7) and torch.all(diff[4:] > 1e-7)
    # Every decoder position sees the whole source.
    src2 = src.clone()
    src2[:, 5] = (src2[:, 5] + 1) % 11
    with torch.no_grad():
        c = model(src2, dec)
    assert torch.all((a - c).abs().amax(dim=(0, 2)) > 1e-7)


def test_no_fnn_has_no_feed_forward():
    model = F.create_decoder_only_transformer(no_fnn=True, **SMALL)
    names = [k for k, _ in model.named_parameters()]
    assert not any("ffn" in k for k in names)
    assert model(torch.randint(0, 11, (1, 4))).shape == (1, 4, 11)


def test_pad_idx_row_gets_no_gradient():
    torch.manual_seed(0)
    model = F.create_decoder_only_transformer(pad_idx=0, **SMALL)
    ids = torch.tensor([[0, 3, 4, 0]])
    model(ids).sum().backward()
    assert model.embed.weight.grad[0].abs().max() == 0
    assert model.embed.weight.grad[3].abs().max() > 0
    assert model.pad_idx == 0


def test_attention_mask_masks_padded_keys():
    torch.manual_seed(0)
    model = F.create_encoder_only_transformer(**SMALL).eval()
    ids = torch.randint(0, 11, (1, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    ids2 = ids.clone()
    ids2[0, 4] = (ids2[0, 4] + 1) % 11
    with torch.no_grad():
        a = model(ids, attention_mask=mask)
        b = model(ids2, attention_mask=mask)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    model = F.create_decoder_only_transformer(dropout=0.5, **SMALL)
    ids = torch.randint(0, 11, (2, 5))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(ids), model(ids))


@pytest.mark.parametrize("kw, match", [
    (dict(d_model=10, num_heads=3), "divisible"),
    (dict(num_layers=0), "num_layers"),
    (dict(dropout=1.5), "dropout"),
    (dict(pad_idx=11), "pad_idx"),
    (dict(vocab_size=-1), "vocab_size"),
])
def test_invalid_arguments(kw, match):
    args = {**SMALL, **kw}
    with pytest.raises(ValueError, match=match):
        F.create_decoder_only_transformer(**args)


def test_too_long_sequence_is_rejected():
    model = F.create_decoder_only_transformer(**SMALL)
    with pytest.raises(ValueError, match="max_seq_length"):
        model(torch.zeros(1, 7, dtype=torch.long))
