"""Small transformers for Hessian analysis: ``TransformerFactory`` (API B's ``project.transformer``).

Three architectures with explicit, readable module names, so that every component name of
``hessext.analysis.components`` resolves on them:

```
embed            nn.Embedding(vocab, d_model, padding_idx=pad_idx)        -> "embeddings"
pos_embed        nn.Embedding(max_seq_length, d_model)                    -> "embeddings"
layers.{i}.norm1 / norm2 / norm (final)   nn.LayerNorm                    -> "norm"
layers.{i}.attn.q_proj / k_proj / v_proj  nn.Linear(d, d)                 -> "attention_query/key/value"
layers.{i}.attn.out_proj                  nn.Linear(d, d)                 -> "attention_output",
                                                                             "hidden_states"
layers.{i}.ffn.fc1 / fc2                  nn.Linear(d, d_ff) / (d_ff, d)  -> "ffn" (fc2 also "hidden_states")
lm_head                                   nn.Linear(d, vocab)             -> "output_projection"
```

Attention is written out (``softmax(QKᵀ/√d_h + mask) V``) rather than calling
``scaled_dot_product_attention``: every autograd mode (double backward, forward-over-reverse, vmap) works
on it, on every backend. Blocks are pre-norm: ``h = h + attn(norm1(h)); h = h + ffn(norm2(h))``.

A decoder-only model is called as ``model(input_ids)`` and returns logits ``[B, L, V]`` with causal masking
inside; position ``t`` of the logits is compared with position ``t`` of the labels (no shift), as in the
original code base.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ._checks import check_int

__all__ = [
    "TransformerFactory",
    "DecoderOnlyTransformer",
    "EncoderOnlyTransformer",
    "EncoderDecoderTransformer",
]


def _check_sizes(vocab_size: int, d_model: int, num_heads: int, num_layers: int, d_ff: int,
                 max_seq_length: int, dropout: float, pad_idx: Optional[int]) -> None:
    for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("num_heads", num_heads),
                        ("num_layers", num_layers), ("d_ff", d_ff), ("max_seq_length", max_seq_length)):
        check_int(name, value, minimum=1)
    if d_model % num_heads != 0:
        raise ValueError(f"d_model must be divisible by num_heads, got d_model={d_model}, "
                         f"num_heads={num_heads}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if pad_idx is not None and not 0 <= check_int("pad_idx", pad_idx) < vocab_size:
        raise ValueError(f"pad_idx must be None or an int in [0, vocab_size={vocab_size}), got {pad_idx!r}")


class Attention(nn.Module):
    """Multi-head attention with separate ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``.

    ``out = W_o · concat_h softmax(Q_h K_hᵀ / √d_h + M) V_h`` with ``M`` the additive mask (causal and/or
    key padding).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, L, dh]

    def forward(self, x: Tensor, memory: Optional[Tensor] = None, causal: bool = False,
                key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """x: [B, L, d]; memory: [B, S, d] (cross-attention) or None; key_padding_mask: [B, S], True = pad."""
        kv = x if memory is None else memory
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # [B, H, L, S]
        L, S = scores.shape[-2], scores.shape[-1]
        if causal:
            future = torch.ones(L, S, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :].to(torch.bool), float("-inf"))
        probs = self.dropout(torch.softmax(scores, dim=-1))
        out = (probs @ v).transpose(1, 2).reshape(x.shape[0], L, -1)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """``fc2(dropout(gelu(fc1(x))))``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(torch.nn.functional.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention, optional FFN, each with a residual."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float, cross: bool = False,
                 no_fnn: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, num_heads, dropout)
        if cross:
            self.norm_cross = nn.LayerNorm(d_model)
            self.cross_attn = Attention(d_model, num_heads, dropout)
        else:
            self.norm_cross = None
            self.cross_attn = None
        if no_fnn:
            self.norm2 = None
            self.ffn = None
        else:
            self.norm2 = nn.LayerNorm(d_model)
            self.ffn = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, causal: bool = False, key_padding_mask: Optional[Tensor] = None,
                memory: Optional[Tensor] = None, memory_padding_mask: Optional[Tensor] = None) -> Tensor:
        h = h + self.dropout(self.attn(self.norm1(h), causal=causal, key_padding_mask=key_padding_mask))
        if self.cross_attn is not None and memory is not None:
            h = h + self.dropout(self.cross_attn(self.norm_cross(h), memory=memory,
                                                 key_padding_mask=memory_padding_mask))
        if self.ffn is not None:
            h = h + self.dropout(self.ffn(self.norm2(h)))
        return h


class _Base(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, d_ff: int,
                 max_seq_length: int, dropout: float, pad_idx: Optional[int], no_fnn: bool) -> None:
        super().__init__()
        _check_sizes(vocab_size, d_model, num_heads, num_layers, d_ff, max_seq_length, dropout, pad_idx)
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.max_seq_length = max_seq_length
        self.pad_idx = pad_idx
        self.no_fnn = bool(no_fnn)
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_idx)
        self.pos_embed = nn.Embedding(max_seq_length, d_model)
        self.drop = nn.Dropout(dropout)

    def _embed(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(ids.shape)}")
        L = ids.shape[1]
        if L > self.max_seq_length:
            raise ValueError(f"sequence length {L} exceeds max_seq_length={self.max_seq_length}")
        pos = torch.arange(L, device=ids.device)
        return self.drop(self.embed(ids) + self.pos_embed(pos)[None])

    @staticmethod
    def _padding_mask(attention_mask: Optional[Tensor]) -> Optional[Tensor]:
        # HF convention: attention_mask 1 = keep, 0 = pad  ->  True = masked key.
        return None if attention_mask is None else attention_mask == 0


class _TokenStack(_Base):
    """Token and position embeddings, ``num_layers`` pre-norm blocks, a final norm and a token head:
    ``model(input_ids) -> logits [B, L, vocab]``; the subclass's ``causal`` says whether attention is masked
    to the past."""

    causal: bool = False

    def __init__(self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, d_ff: int,
                 max_seq_length: int, dropout: float, pad_idx: Optional[int], no_fnn: bool) -> None:
        super().__init__(vocab_size, d_model, num_heads, num_layers, d_ff, max_seq_length, dropout, pad_idx,
                         no_fnn)
        self.layers = nn.ModuleList(Block(d_model, num_heads, d_ff, dropout, no_fnn=no_fnn)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        h = self._embed(input_ids)
        pad = self._padding_mask(attention_mask)
        for layer in self.layers:
            h = layer(h, causal=self.causal, key_padding_mask=pad)
        return self.lm_head(self.norm(h))


class DecoderOnlyTransformer(_TokenStack):
    """GPT-style causal language model: ``model(input_ids) -> logits [B, L, vocab]``."""

    causal = True


class EncoderOnlyTransformer(_TokenStack):
    """BERT-style bidirectional encoder with a token head: ``model(input_ids) -> logits [B, L, vocab]``."""

    causal = False


class EncoderDecoderTransformer(_Base):
    """T5/BART-style sequence-to-sequence model with a shared token embedding.

    ``model(input_ids, decoder_input_ids) -> logits [B, L_dec, vocab]``. Without ``decoder_input_ids``
    the decoder reads ``input_ids`` itself (teacher forcing on the same sequence), so that a plain
    ``{"input_ids", "labels"}`` batch works.
    """

    def __init__(self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, d_ff: int,
                 max_seq_length: int, dropout: float, pad_idx: Optional[int], no_fnn: bool) -> None:
        super().__init__(vocab_size, d_model, num_heads, num_layers, d_ff, max_seq_length, dropout, pad_idx,
                         no_fnn)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(Block(d_model, num_heads, d_ff, dropout, no_fnn=no_fnn)
                                            for _ in range(num_layers))
        self.encoder.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(
            Block(d_model, num_heads, d_ff, dropout, cross=True, no_fnn=no_fnn) for _ in range(num_layers))
        self.decoder.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids: Tensor, decoder_input_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None,
                decoder_attention_mask: Optional[Tensor] = None) -> Tensor:
        src_pad = self._padding_mask(attention_mask)
        memory = self._embed(input_ids)
        for layer in self.encoder.layers:
            memory = layer(memory, causal=False, key_padding_mask=src_pad)
        memory = self.encoder.norm(memory)
        tgt = input_ids if decoder_input_ids is None else decoder_input_ids
        h = self._embed(tgt)
        tgt_pad = self._padding_mask(decoder_attention_mask)
        for layer in self.decoder.layers:
            h = layer(h, causal=True, key_padding_mask=tgt_pad, memory=memory, memory_padding_mask=src_pad)
        return self.lm_head(self.decoder.norm(h))


class TransformerFactory:
    """Factory of small transformers (``project.transformer.TransformerFactory``).

    Defaults (d_model 64, 2 heads, 2 layers, d_ff 128, max_seq_length 128, no dropout) give a model
    whose full Hessian analysis takes seconds on a CPU. Weights are initialised by PyTorch's default
    initialisers (seed them with ``torch.manual_seed`` for reproducibility).
    """

    @staticmethod
    def create_decoder_only_transformer(vocab_size: int = 1000, d_model: int = 64, num_heads: int = 2,
                                        num_layers: int = 2, d_ff: int = 128, max_seq_length: int = 128,
                                        dropout: float = 0.0, pad_idx: Optional[int] = None,
                                        no_fnn: bool = False) -> DecoderOnlyTransformer:
        """Causal LM: ``model(input_ids) -> logits [B, L, vocab_size]`` (causal mask inside).

        Args:
            vocab_size: Vocabulary size V.
            d_model: Residual width d.
            num_heads: Attention heads (must divide d_model).
            num_layers: Number of pre-norm blocks.
            d_ff: Hidden width of the feed-forward network.
            max_seq_length: Longest sequence (learned positional embedding table size).
            dropout: Dropout probability (analysis runs in eval mode, so it does not add noise).
            pad_idx: Padding token id (its embedding row gets no gradient); labels equal to it are
                ignored by the losses of ``hessext.data``.
            no_fnn: Build attention-only blocks (no feed-forward network).
        """
        return DecoderOnlyTransformer(vocab_size, d_model, num_heads, num_layers, d_ff, max_seq_length,
                                      dropout, pad_idx, no_fnn)

    @staticmethod
    def create_encoder_only_transformer(vocab_size: int = 1000, d_model: int = 64, num_heads: int = 2,
                                        num_layers: int = 2, d_ff: int = 128, max_seq_length: int = 128,
                                        dropout: float = 0.0, pad_idx: Optional[int] = None,
                                        no_fnn: bool = False) -> EncoderOnlyTransformer:
        """Bidirectional encoder with a token head: ``model(input_ids) -> logits [B, L, vocab_size]``.

        Same arguments as :meth:`create_decoder_only_transformer`.
        """
        return EncoderOnlyTransformer(vocab_size, d_model, num_heads, num_layers, d_ff, max_seq_length,
                                      dropout, pad_idx, no_fnn)

    @staticmethod
    def create_encoder_decoder_transformer(vocab_size: int = 1000, d_model: int = 64, num_heads: int = 2,
                                           num_layers: int = 2, d_ff: int = 128, max_seq_length: int = 128,
                                           dropout: float = 0.0, pad_idx: Optional[int] = None,
                                           no_fnn: bool = False) -> EncoderDecoderTransformer:
        """Encoder-decoder: ``model(input_ids, decoder_input_ids=None) -> logits [B, L_dec, vocab_size]``.

        ``num_layers`` blocks in each of the encoder and the decoder. Same arguments as
        :meth:`create_decoder_only_transformer`.
        """
        return EncoderDecoderTransformer(vocab_size, d_model, num_heads, num_layers, d_ff, max_seq_length,
                                         dropout, pad_idx, no_fnn)
