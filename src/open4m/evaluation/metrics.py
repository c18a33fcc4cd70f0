"""Metrics of predictions against the world's ground truth; pure numpy, ground truth first, prediction second.

Conventions (the world sample contract, :mod:`open4m.data.world.sample`):

- depth ``(B, H, W)`` metres, 0 on sky. Valid pixels: ``true > 0`` (non-sky). **abs-rel** =
  ``mean(|pred - true| / true)``; **δ<1.25** = fraction with ``max(pred / true, true / pred) < 1.25``
  (a prediction ``<= 0`` on a valid pixel fails it). Both pooled over every valid pixel of the batch.
- normals ``(B, H, W, 3)``, the zero vector on sky. Valid pixels: ``|true| > 0.5``. **angle** = mean
  angle in degrees; **within 11.25°** = fraction of valid pixels with an angle below 11.25°.
- semseg ``(B, H, W)`` ids into :data:`open4m.data.world.config.SEMSEG_CLASSES` (6 classes). **mIoU**
  over the classes present in the truth or the prediction, from a confusion matrix pooled over the set;
  predicted ids outside the classes count as wrong for their true class.
- boxes ``[{"box": [x0, y0, x1, y1], "class": str}, ...]`` per image, normalised to [0, 1].
  **mAP@0.5**: see :func:`detection_map`.

Each image metric also returns ``pixels``, the number of valid pixels, so batches pool exactly: the
mean over a set is the ``pixels``-weighted mean of the batch values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from open4m.data.world.config import SEMSEG_CLASSES, SHAPES
from open4m.generation.boxes import box_iou
from open4m.vq.evaluate import confusion_matrix, depth_abs_rel, mean_iou_from_confusion, normal_angles_deg

DELTA_THRESHOLD = 1.25
NORMAL_WITHIN_DEG = 11.25


def depth_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``abs_rel``, ``delta1`` (δ<1.25) and ``pixels`` (valid count) of depth maps ``(B, H, W)``."""
    _check_same_shape("depth", true, pred)
    valid = true > 0
    n = int(valid.sum())
    if n == 0:
        return {"abs_rel": 0.0, "delta1": 1.0, "pixels": 0}
    t, p = true[valid].astype(np.float64), pred[valid].astype(np.float64)
    with np.errstate(divide="ignore"):
        ratio = np.where(p > 0, np.maximum(p / t, t / np.maximum(p, 1e-300)), np.inf)
    return {"abs_rel": depth_abs_rel(true, pred), "delta1": float(np.mean(ratio < DELTA_THRESHOLD)), "pixels": n}


def normal_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``angle_deg`` (mean), ``within_11_25`` (fraction below 11.25°) and ``pixels`` of normals ``(B, H, W, 3)``."""
    _check_same_shape("normal", true, pred)
    angles = normal_angles_deg(true, pred)
    if angles.size == 0:
        return {"angle_deg": 0.0, "within_11_25": 1.0, "pixels": 0}
    return {"angle_deg": float(angles.mean()), "within_11_25": float(np.mean(angles < NORMAL_WITHIN_DEG)),
            "pixels": int(angles.size)}


def semseg_confusion(true: np.ndarray, pred: np.ndarray, num_classes: int = len(SEMSEG_CLASSES)) -> np.ndarray:
    """Confusion counts ``(K, K + 1)`` of label maps ``(B, H, W)`` (last column: predictions outside the classes);
    sum them over batches and pass the total to :func:`semseg_miou`."""
    _check_same_shape("semseg", true, pred)
    return confusion_matrix(true, pred, num_classes)


def semseg_miou(confusion: np.ndarray) -> float:
    """Mean IoU of a (pooled) :func:`semseg_confusion` matrix over the classes present in truth or prediction."""
    return mean_iou_from_confusion(confusion)


def average_precision(tp: Sequence[bool], num_truth: int) -> float:
    """All-point interpolated AP of ranked detections (``tp[i]``: the i-th ranked detection is a true positive).

    The precision envelope (precision at recall r = the best precision at any recall >= r) is integrated over
    recall, as in PASCAL VOC 2010+. ``num_truth`` > 0 ground-truth boxes; recall never reached counts as 0.
    """
    if num_truth <= 0:
        raise ValueError("average_precision needs at least one ground-truth box")
    tp = np.asarray(tp, dtype=bool)
    if tp.size == 0:
        return 0.0
    hits = np.cumsum(tp)
    recall = np.concatenate([[0.0], hits / num_truth, [1.0]])
    precision = np.concatenate([[0.0], hits / np.arange(1, tp.size + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def detection_map(
    predictions: Sequence[Sequence[dict]],
    truths: Sequence[Sequence[dict]],
    classes: Sequence[str] = tuple(SHAPES),
    iou_threshold: float = 0.5,
) -> dict:
    """Box mAP@``iou_threshold`` over images: ``predictions[i]`` and ``truths[i]`` are the boxes of image i.

    Detections are ranked by their ``"score"`` (highest first; ties by image, then generation order) when
    every predicted box has one -- :func:`open4m.generation.generate` scores a generated box by the
    probability of its class token, as Pix2Seq does. Without scores (the official sampler gives none) they
    are ranked by generation order: every image's first box above every image's second, and so on (ties by
    image index); a det sequence is generated in the serialisation order (ascending ``x0² + y0²``), so that
    ranking says nothing about confidence: a model is then judged only on wrong, missed and extra boxes.

    Matching is greedy in rank order: a detection is a true positive when some not-yet-matched ground-truth
    box of its class in its image has IoU >= ``iou_threshold`` (the best such box is taken); otherwise it is
    a false positive (a duplicate of a matched box is one). Per-class AP by :func:`average_precision`;
    classes without ground truth are left out of the mean (their AP is None). Predicted classes outside
    ``classes`` are false positives of no class (they cannot match).

    Returns ``{"map": float | None (None: no ground truth at all), "ap": {class: float | None}}``.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"detection_map: {len(predictions)} prediction lists for {len(truths)} images")
    flat = [(rank, image, box) for image, boxes in enumerate(predictions) for rank, box in enumerate(boxes)]
    if flat and all("score" in box for _, _, box in flat):
        ranked = sorted(flat, key=lambda r: (-float(r[2]["score"]), r[1], r[0]))
    else:
        ranked = sorted(flat, key=lambda r: (r[0], r[1]))
    ap: dict[str, float | None] = {}
    for cls in classes:
        gt = [np.array([b["box"] for b in boxes if b["class"] == cls], np.float64).reshape(-1, 4) for boxes in truths]
        num_truth = sum(len(g) for g in gt)
        if num_truth == 0:
            ap[cls] = None
            continue
        matched = [np.zeros(len(g), bool) for g in gt]
        tp = []
        for _, image, box in ranked:
            if box["class"] != cls:
                continue
            ious = box_iou(np.array([box["box"]]), gt[image])[0] if len(gt[image]) else np.zeros(0)
            ious = np.where(matched[image], -1.0, ious)
            best = int(np.argmax(ious)) if ious.size else -1
            hit = best >= 0 and ious[best] >= iou_threshold
            if hit:
                matched[image][best] = True
            tp.append(hit)
        ap[cls] = average_precision(tp, num_truth)
    scored = [v for v in ap.values() if v is not None]
    return {"map": float(np.mean(scored)) if scored else None, "ap": ap}


def jaccard(a: set, b: set) -> float:
    """``|a ∩ b| / |a ∪ b|``; 1.0 when both are empty."""
    return len(a & b) / len(a | b) if a | b else 1.0


def class_fractions(semseg: np.ndarray, num_classes: int = len(SEMSEG_CLASSES)) -> np.ndarray:
    """Fraction of pixels per class ``(K,)`` of one label map ``(H, W)``; ids outside ``[0, K)`` are not counted."""
    labels = semseg.astype(np.int64).ravel()
    counts = np.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes)[:num_classes]
    return counts / max(labels.size, 1)


def histogram_agreement(true: np.ndarray, pred: np.ndarray) -> float:
    """Histogram intersection ``sum(min(true, pred))`` of two class-fraction vectors ``(K,)``: 1 = same mix."""
    return float(np.minimum(true, pred).sum())


def _check_same_shape(name: str, true: np.ndarray, pred: np.ndarray) -> None:
    if np.shape(true) != np.shape(pred):
        raise ValueError(f"{name}: truth {np.shape(true)} and prediction {np.shape(pred)} differ in shape")
