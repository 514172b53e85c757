"""Tiny models with dense float64 Hessians: the ground truth every estimator is tested against.

``dense_hessian`` flattens the Hessian in the order of ``model.named_parameters()`` restricted to the
trainable parameters (or to ``names``), which is ParamLayout's order.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call


def tiny_mlp(seed: int = 0, d_in: int = 4, hidden: int = 6, d_out: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))


class TinyCNN(nn.Module):
    """Conv + BatchNorm + linear head; ~150 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.conv(x)))
        return self.head(h.flatten(1))


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyCNN()
    # Non-trivial running statistics, so that eval-mode analysis differs from train mode.
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


class TinyTransformer(nn.Module):
    """One pre-norm decoder block over an embedding, with a linear head; vocab 7, d_model 4."""

    def __init__(self, vocab: int = 7, d_model: int = 4, heads: int = 2, seq: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d_model))
        self.layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=6, dropout=0.0,
                                                batch_first=True, norm_first=True)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        h = self.embed(ids) + self.pos[:L]
        mask = torch.triu(torch.full((L, L), float("-inf")), diagonal=1)
        return self.head(self.layer(h, src_mask=mask))


def tiny_transformer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyTransformer()


def mlp_batch(seed: int = 1, n: int = 8, d_in: int = 4, d_out: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randn(n, d_out, generator=g)


def cnn_batch(seed: int = 1, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 2, (n,), generator=g)


def transformer_batch(seed: int = 1, n: int = 3, seq: int = 5, vocab: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    labels = torch.randint(0, vocab, (n, seq), generator=g)
    return ids, labels


def transformer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def dense_hessian(
    model: nn.Module,
    loss_of_output: Callable[[torch.Tensor, object], torch.Tensor],
    batches: Sequence[tuple[torch.Tensor, object]],
    names: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    eval_mode: bool = True,
) -> torch.Tensor:
    """Dense float64 Hessian of the (batch-size weighted) mean loss over ``batches``.

    Each batch is ``(inputs, targets)`` and its loss is ``loss_of_output(model(inputs), targets)``.
    Works on a float64 deep copy, so the caller's model is untouched.
    """
    m = copy.deepcopy(model).double()
    m.train(not eval_mode)
    if names is None:
        names = [k for k, p in m.named_parameters() if p.requires_grad]
    params = {k: p.detach() for k, p in m.named_parameters()}
    fixed = {k: v for k, v in params.items() if k not in names}
    buffers = dict(m.named_buffers())
    if weights is None:
        weights = [float(len(b[0])) for b in batches]
    total = float(sum(weights))

    def as64(x):
        return x.double() if torch.is_tensor(x) and x.is_floating_point() else x

    def loss(flat: torch.Tensor) -> torch.Tensor:
        chunks, offset = {}, 0
        for k in names:
            numel = params[k].numel()
            chunks[k] = flat[offset:offset + numel].view_as(params[k])
            offset += numel
        out = 0.0
        for w, (x, y) in zip(weights, batches):
            pred = functional_call(m, {**fixed, **chunks, **buffers}, (as64(x),))
            out = out + (w / total) * loss_of_output(pred, as64(y))
        return out

    flat0 = torch.cat([params[k].reshape(-1) for k in names]).requires_grad_(True)
    # Row by row with plain double backward: works for every op that has a double backward (forward-mode
    # AD is missing for some, e.g. CPU flash attention), and n is tiny here.
    # The math attention backend: CPU flash attention has neither double backward nor forward-mode AD.
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        (grad,) = torch.autograd.grad(loss(flat0), flat0, create_graph=True)
    eye = torch.eye(flat0.numel(), dtype=flat0.dtype)
    rows = [torch.autograd.grad(grad, flat0, e, retain_graph=True)[0] for e in eye]
    H = torch.stack(rows)
    return (0.5 * (H + H.T)).detach()
