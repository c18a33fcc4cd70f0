"""RGB images ↔ the model's pixel input: the one normalisation every pixel modality uses.

The official 4M normalises ``rgb@224`` with the ImageNet mean and standard deviation; the world's ``rgb@64``
does the same, so loaders, pretokenized shards and generation prompts all go through these two functions.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_model_pixels(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` or ``(B, H, W, 3)`` → ImageNet-normalised float32 ``(3, H, W)`` / ``(B, 3, H, W)``."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"pixels: expected a uint8 RGB image (H, W, 3) or (B, H, W, 3), "
                         f"got {image.dtype} {tuple(image.shape)}")
    x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def from_model_pixels(pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_model_pixels`: float ``(3, H, W)`` / ``(B, 3, H, W)`` → uint8 ``(H, W, 3)`` (or batched)."""
    x = pixels.detach().cpu().float().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels, np.float32)
    x = np.moveaxis(x, -3, -1) * IMAGENET_STD + IMAGENET_MEAN
    return (x * 255.0).round().clip(0, 255).astype(np.uint8)
