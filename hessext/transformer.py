"""``project.transformer`` → ``hessext.transformer``: re-exports :mod:`hessext.models`."""
from __future__ import annotations

from .models import (
    DecoderOnlyTransformer,
    EncoderDecoderTransformer,
    EncoderOnlyTransformer,
    TransformerFactory,
)

__all__ = ["TransformerFactory", "DecoderOnlyTransformer", "EncoderOnlyTransformer",
           "EncoderDecoderTransformer"]
