"""Bounding boxes by sampling consensus: several decodes of a det target fused into one scored box list.

A det sequence decoded once (greedy) gives each box the probability of its class token as its score
(:func:`open4m.generation.generate`), but a box the model was unsure about either appears or not.
:func:`detect` decodes the det target once greedily and ``samples`` more times at ``temperature``, then
:func:`fuse_boxes` clusters the boxes of all decodes (same class, IoU >= ``iou`` with the cluster's best
box, greedily in descending score) and gives each cluster

- **score** = (sum over decodes of the best member score that decode contributed) / number of decodes: a
  Monte-Carlo estimate of "the model writes this box, and with this confidence"; a box every decode agrees
  on keeps its class probability, one that a single decode wrote is scaled down by the number of decodes;
- **box** = the score-weighted mean of its members' coordinates (weighted box fusion).

With ``flip=True`` the same decodes run a second time on the mirrored image (test-time augmentation: the
model looks at the scene twice) and their boxes are mirrored back before the fusion. ``shifts`` adds one
greedy decode per shifted view: the image moved by ``(dx, dy)`` pixels (right and down; the vacated rows and
columns repeat the edge), its boxes moved back. Only image conditions can be mirrored or shifted (pixels, or
raw float images that a tokenizer encodes), never captions or token ids.

On the shipped world model this lifted RGB->boxes mAP@0.5 from 0.68 (one greedy decode, ranked by
class-token probability; 256 val scenes, ``open4m eval``) to 0.80 with greedy + 8 samples at temperature 0.7,
and on 512 test-split scenes from 0.82 (greedy + 8 samples) to 0.85 with ``flip`` (0.84 with greedy + 4
samples on each view, the same number of decodes). Greedy decodes of more views do as well as sampling, at a
third of the cost: the image, its mirror and the eight :data:`SHIFTS` (moved by 2 px, half a patch) gave 0.85
from ten greedy decodes on those 512 scenes (shifts of 3 px: 0.86; 4 px, a whole patch, along the axes only:
0.82), 0.87 with the eight shifts of 3 px as well. The decodes run in two ``generate`` calls: B x views greedy
rows, then B x (1 + flip) x samples sampled rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from open4m import modalities
from open4m.generation.prompt import generate
from open4m.generation.sampler import TargetSpec
from open4m.generation.views import View, neighbour_shifts, shifted_views, stack_views

DET_SAMPLES = 8
DET_TEMPERATURE = 0.7
FUSE_IOU = 0.5
# Sampled decodes of the mirrored view draw from seeds this far above the original view's.
MIRROR_SEED_OFFSET = 2**32
# Shifted views: the image moved by half a patch of the world models (4 px patches) in x and / or y, so that
# each view cuts the scene into patches halfway between the original's.
DET_SHIFT = 2
SHIFTS = neighbour_shifts(DET_SHIFT)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``(N, M)`` of boxes ``a (N, 4)`` and ``b (M, 4)`` given as ``[x0, y0, x1, y1]`` (continuous coordinates)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)


def fuse_boxes(decodes: Sequence[Sequence[Mapping]], iou: float = FUSE_IOU) -> list[dict]:
    """Fuse the box lists of several decodes of one image into one list (see the module docstring).

    Args:
        decodes: R box lists, each box ``{"box": [x0, y0, x1, y1], "class": str, "score": float}``.
        iou: the IoU at or above which a box joins a cluster of its class.

    Returns:
        boxes ``{"box", "class", "score"}`` in descending score.
    """
    if not decodes:
        raise ValueError("fuse_boxes needs at least one decode")
    entries = []
    for run, boxes in enumerate(decodes):
        for b in boxes:
            if "score" not in b:
                raise ValueError(f"fuse_boxes: a box of decode {run} has no 'score': {dict(b)}")
            entries.append((float(b["score"]), run, [float(c) for c in b["box"]], b["class"]))
    entries.sort(key=lambda e: -e[0])
    clusters: list[list[tuple]] = []
    for entry in entries:
        home = next((c for c in clusters if c[0][3] == entry[3] and box_iou(c[0][2], entry[2])[0, 0] >= iou), None)
        if home is None:
            clusters.append([entry])
        else:
            home.append(entry)
    fused = []
    for members in clusters:
        best_per_run: dict[int, float] = {}
        for score, run, _, _ in members:
            best_per_run[run] = max(best_per_run.get(run, 0.0), score)
        weights = np.array([m[0] for m in members])
        coords = np.array([m[2] for m in members])
        box = (coords * weights[:, None]).sum(0) / weights.sum() if weights.sum() > 0 else coords.mean(0)
        fused.append({"box": [float(c) for c in box], "class": members[0][3],
                      "score": sum(best_per_run.values()) / len(decodes)})
    fused.sort(key=lambda b: -b["score"])
    return fused


def detect(
    model,
    conditions: Mapping[str, object],
    target: str,
    *,
    text_tokenizer,
    tokenizers: Mapping[str, object] | None = None,
    samples: int = DET_SAMPLES,
    temperature: float = DET_TEMPERATURE,
    iou: float = FUSE_IOU,
    flip: bool = False,
    shifts: Sequence[tuple[int, int]] = (),
    seed: int | Sequence[int] = 0,
) -> list[list[dict]]:
    """Boxes of det modality ``target`` for every row of ``conditions`` (as for :func:`generate`, with a
    batch axis): one greedy decode plus ``samples`` at ``temperature`` (and as many again on the mirrored
    image with ``flip``), plus one greedy decode of each shifted view in ``shifts`` (``(dx, dy)`` pixels,
    e.g. :data:`SHIFTS`), fused by :func:`fuse_boxes`. ``samples=0`` without ``flip`` or ``shifts`` is the
    greedy decode alone. ``seed``: an int (row i uses seed + i) or one per row; sample j of row i draws
    from seed ``seed_i * (samples + 1) + j + 1`` (mirrored view: plus :data:`MIRROR_SEED_OFFSET`), so a
    row's boxes do not depend on its batch. With ``flip`` or ``shifts``, every condition must be an image
    with a batch axis: pixels (B, C, H, W) or raw float images (B, H, W[, C]) for a tokenizer in
    ``tokenizers``; shifted conditions must share one size."""
    if modalities.get(target).name.split("@")[0] != "det":
        raise ValueError(f"detect: {target!r} is not a det (bounding box) modality")
    if samples < 0:
        raise ValueError(f"detect: samples must be >= 0, got {samples}")
    if samples and temperature <= 0:
        raise ValueError(f"detect: sampled decodes need a temperature > 0, got {temperature}")
    shifted = shifted_views(conditions, shifts, tokenizers, "detect")
    views = [View()] + ([View(mirror=True)] if flip else [])
    sampled_views = len(views)
    views += shifted
    stacked = stack_views(conditions, views, tokenizers, "detect")
    greedy = generate(model, stacked, [TargetSpec(target, temperature=0.0)], tokenizers=tokenizers,
                      text_tokenizer=text_tokenizer, seed=seed if isinstance(seed, int) else list(seed) * len(views))
    rows = len(greedy.decoded[target]) // len(views)
    seeds = [seed + i for i in range(rows)] if isinstance(seed, int) else [int(s) for s in seed]
    decodes = [[] for _ in range(rows)]
    for r, boxes in enumerate(greedy.decoded[target]):
        decodes[r % rows].append(views[r // rows].boxes_back(_scored(boxes)))
    if samples:
        repeated = {name: _repeat(value[: rows * sampled_views], samples) for name, value in stacked.items()}
        sampled = generate(model, repeated, [TargetSpec(target, temperature=temperature)], tokenizers=tokenizers,
                           text_tokenizer=text_tokenizer,
                           seed=[s * (samples + 1) + j + 1 + v * MIRROR_SEED_OFFSET
                                 for v in range(sampled_views) for s in seeds for j in range(samples)])
        for r, boxes in enumerate(sampled.decoded[target]):
            decodes[(r // samples) % rows].append(views[r // (rows * samples)].boxes_back(_scored(boxes)))
    return [fuse_boxes(d, iou) for d in decodes]


def _scored(value) -> list[dict]:
    """A generated det row as scored boxes (an unparsable string is no boxes)."""
    return [b for b in value if isinstance(b, dict) and "score" in b] if isinstance(value, list) else []


def _repeat(value, times: int):
    """Each batch row of a condition ``times`` times in a row (rows i*times .. i*times + times - 1)."""
    if isinstance(value, torch.Tensor):
        return value.repeat_interleave(times, dim=0)
    if isinstance(value, np.ndarray):
        return np.repeat(value, times, axis=0)
    if isinstance(value, list):
        return [v for v in value for _ in range(times)]
    raise ValueError(f"detect: a condition needs a batch axis (a tensor, array or list of rows), got "
                     f"{type(value).__name__}")


__all__ = ["DET_SAMPLES", "DET_SHIFT", "DET_TEMPERATURE", "FUSE_IOU", "MIRROR_SEED_OFFSET", "SHIFTS", "box_iou",
           "detect", "fuse_boxes", "neighbour_shifts"]
