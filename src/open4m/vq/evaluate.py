"""Reconstruction metrics of image tokenizers on held-out samples, and codebook usage.

Metrics on raw arrays (world sample contract), ground truth first, reconstruction second:

- rgb: PSNR in dB over all pixels and channels (peak 255), from the mean squared error of the set.
- depth: abs-rel ``mean(|pred - true| / true)`` over pixels valid in the ground truth (true > 0),
  plus the accuracy of the sky/valid mask.
- normal: mean angle in degrees between true and predicted normals over valid pixels (true ≠ 0);
  a predicted zero vector there counts as 90°.
- semseg: mean IoU over the classes present in the ground truth or the prediction, and pixel accuracy.
- edges: F1 and IoU of the edge pixels.

Codebook usage is the fraction of the vocabulary that occurs at least once in the tokens of the
whole evaluation set.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import numpy as np

from open4m.vq.tokenizer import ImageTokenizer


def psnr(true: np.ndarray, pred: np.ndarray) -> float:
    """PSNR in dB of uint8 images of any equal shape (peak 255)."""
    mse = float(np.mean((true.astype(np.float64) - pred.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def depth_abs_rel(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean ``|pred - true| / true`` over pixels with ``true > 0``; ``(B, H, W)`` metres."""
    valid = true > 0
    if not valid.any():
        return 0.0
    return float(np.mean(np.abs(pred[valid].astype(np.float64) - true[valid]) / true[valid]))


def normal_angles_deg(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Angles in degrees ``(P,)`` between normals ``(..., 3)`` at the P pixels where ``true`` is not the zero
    vector (norm > 0.5); a predicted zero vector there counts as 90°."""
    valid = np.linalg.norm(true, axis=-1) > 0.5
    t, p = true[valid].astype(np.float64), pred[valid].astype(np.float64)
    cos = np.sum(t * p, axis=-1) / (np.linalg.norm(t, axis=-1) * np.maximum(np.linalg.norm(p, axis=-1), 1e-12))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def normal_angle_deg(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean angle in degrees between normals ``(..., 3)`` over pixels where ``true`` is not the zero vector."""
    angles = normal_angles_deg(true, pred)
    return float(angles.mean()) if angles.size else 0.0


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel counts ``(K, K + 1)``: row = true class in ``[0, K)``, column = predicted class; the last column
    counts predictions outside ``[0, K)`` (a tokenizer with more classes than the labels may emit them).
    ``true`` and ``pred`` are integer label maps of any equal shape."""
    t = true.astype(np.int64).ravel()
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"semseg: true labels must lie in [0, {num_classes}), got [{t.min()}, {t.max()}]")
    p = pred.astype(np.int64).ravel()
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)
    return np.bincount(t * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1)).reshape(
        num_classes, num_classes + 1)


def mean_iou_from_confusion(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the prediction of a ``(K, K[+1])`` confusion matrix
    (rows true, columns predicted; an extra last column = predictions outside the classes); 1.0 if none."""
    k = confusion.shape[0]
    inter = np.diag(confusion[:, :k])
    union = confusion.sum(1) + confusion[:, :k].sum(0) - inter
    present = union > 0
    return float(np.mean(inter[present] / union[present])) if present.any() else 1.0


def mean_iou(true: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes in ``[0, num_classes)`` present in ``true`` or ``pred``."""
    return mean_iou_from_confusion(confusion_matrix(true, pred, num_classes))


def edge_f1_iou(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(F1, IoU) of edge pixels (``> 0``); both 1.0 when neither has an edge."""
    t, p = true > 0, pred > 0
    tp = int(np.sum(t & p))
    fp, fn = int(np.sum(~t & p)), int(np.sum(t & ~p))
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def reconstruction_metrics(modality: str, true: np.ndarray, pred: np.ndarray, num_classes: int = 8) -> dict:
    """The metrics of ``modality`` (see the module docstring) for raw batches ``true`` and ``pred``."""
    if modality == "rgb":
        return {"psnr_db": psnr(true, pred)}
    if modality == "depth":
        return {"abs_rel": depth_abs_rel(true, pred), "valid_mask_acc": float(np.mean((true > 0) == (pred > 0)))}
    if modality == "normal":
        return {"angle_deg": normal_angle_deg(true, pred)}
    if modality == "semseg":
        return {"miou": mean_iou(true, pred, num_classes), "pixel_acc": float(np.mean(true == pred))}
    if modality == "edges":
        f1, iou = edge_f1_iou(true, pred)
        return {"f1": f1, "iou": iou}
    raise ValueError(f"no reconstruction metrics for modality {modality!r}")


HEADLINE = {"rgb": "psnr_db", "depth": "abs_rel", "normal": "angle_deg", "semseg": "miou", "edges": "f1"}


def evaluate_tokenizer(tokenizer: ImageTokenizer, samples: Iterable[dict], num_samples: int = 1000) -> dict:
    """Reconstruct the first ``num_samples`` samples' ``tokenizer.config.modality`` and measure it.

    Metrics are computed over the whole set at once (PSNR from the pooled MSE, mIoU from the pooled
    confusion matrix). Returns the metrics plus ``codebook_usage`` (fraction of the vocabulary used),
    ``num_samples`` and ``modality``.
    """
    key = tokenizer.config.modality
    raws = [tokenizer.adapter.check(s[key]) for s in itertools.islice(samples, num_samples)]
    if not raws:
        raise ValueError(f"no samples to evaluate the {tokenizer.modality} tokenizer on")
    true = np.concatenate(raws)
    tokens = tokenizer.encode(true)
    pred = tokenizer.decode(tokens)
    used = np.unique(tokens).size
    return {
        "modality": tokenizer.modality,
        "num_samples": len(true),
        **reconstruction_metrics(key, true, pred, tokenizer.config.num_classes),
        "codebook_usage": used / tokenizer.vocab_size,
    }


def format_metrics(metrics: dict) -> str:
    """One line ``name=value`` per metric, floats to 4 significant digits."""
    return "\n".join(f"{k:16s} {v:.4g}" if isinstance(v, float) else f"{k:16s} {v}" for k, v in metrics.items())
