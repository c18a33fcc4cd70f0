"""Learned image tokenizers: conv VQ-VAEs with cosine-EMA VQ or FSQ, one per world image modality.

Public entry points: :class:`ImageTokenizer` (encode / decode / save / load), the quantizers
:class:`CosineVQ` and :class:`FSQ`, ``open4m.vq.train.train_tokenizer`` and
``open4m.vq.evaluate.evaluate_tokenizer``; ``open4m.vq.samples`` has the toy scenes and data sources.
"""

from open4m.vq.autoencoder import Autoencoder, TokenizerConfig
from open4m.vq.quantizers import FSQ, CosineVQ, Quantizer, QuantizerOutput
from open4m.vq.tokenizer import ImageTokenizer

__all__ = [
    "Autoencoder", "CosineVQ", "FSQ", "ImageTokenizer", "Quantizer", "QuantizerOutput", "TokenizerConfig",
]
