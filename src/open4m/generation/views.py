"""Views of image conditions for test-time augmentation: the image itself, its mirror, or the image moved by a few
pixels, stacked along the batch axis so that one ``generate`` call decodes every view.

:func:`open4m.generation.boxes.detect` fuses the boxes decoded from each view (mapped back with
:meth:`View.boxes_back`); :func:`open4m.generation.describe.describe` decodes one sequence from all views at
once. Only image conditions can be mirrored or shifted: pixels ``(B, C, H, W)``, or raw float images
``(B, H, W[, C])`` that a tokenizer encodes; never captions or token ids. A shifted view moves the image by
``(dx, dy)`` pixels (right and down when positive); the vacated rows and columns repeat the edge. Boxes given as
a condition (``det``: one list of ``{"box": [x0, y0, x1, y1], "class": ...}`` per row, normalised) move with the
image (:meth:`View.boxes_forward`), so that a caption decoded from the image and its boxes sees both alike in
every view.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from open4m import modalities


def neighbour_shifts(pixels: int) -> tuple[tuple[int, int], ...]:
    """The eight ``(dx, dy)`` shifts of a 3 x 3 grid of step ``pixels`` around the image (the image itself
    left out); none for 0."""
    if pixels < 0:
        raise ValueError(f"shifted views: the shift must be a whole number of pixels >= 0, got {pixels}")
    steps = (-pixels, 0, pixels)
    return tuple((dx, dy) for dy in steps for dx in steps if (dx, dy) != (0, 0)) if pixels else ()


@dataclass(frozen=True)
class View:
    """One view of the conditions: the image itself, mirrored left-right, or moved by (dx, dy) pixels of a
    (height, width) image; :meth:`apply` makes it from a condition, :meth:`boxes_back` maps its boxes to the
    original image."""

    mirror: bool = False
    dx: int = 0
    dy: int = 0
    width: int = 1
    height: int = 1

    @property
    def identity(self) -> bool:
        return not (self.mirror or self.dx or self.dy)

    def apply(self, name: str, value, tokenizers: Mapping[str, object] | None, caller: str = "views"):
        """Condition ``value`` of modality ``name`` (with a batch axis) as this view sees it."""
        if self.identity:
            return value
        if is_boxes_condition(name):
            return [self.boxes_forward(_box_row(row, name, caller)) for row in value]
        h_axis, w_axis = image_axes(name, value, tokenizers, "mirrored" if self.mirror else "shifted", caller)
        if self.mirror:
            return value.flip(w_axis) if isinstance(value, torch.Tensor) else np.flip(value, w_axis).copy()
        return _shifted(_shifted(value, self.dx, w_axis), self.dy, h_axis)

    def boxes_forward(self, boxes: list[dict]) -> list[dict]:
        """Boxes (normalised ``[x0, y0, x1, y1]``) of the original image where this view sees them (clipped to
        the image); the inverse of :meth:`boxes_back` up to that clipping."""
        if self.mirror or self.identity:
            return self.boxes_back(boxes)  # a mirror is its own inverse
        return View(dx=-self.dx, dy=-self.dy, width=self.width, height=self.height).boxes_back(boxes)

    def boxes_back(self, boxes: list[dict]) -> list[dict]:
        """Boxes (normalised ``[x0, y0, x1, y1]``) found in this view, in the original image's coordinates."""
        if self.mirror:
            return [{**b, "box": [1.0 - b["box"][2], b["box"][1], 1.0 - b["box"][0], b["box"][3]]} for b in boxes]
        if self.identity:
            return boxes
        ox, oy = self.dx / self.width, self.dy / self.height
        return [{**b, "box": [min(max(c - o, 0.0), 1.0) for c, o in zip(b["box"], (ox, oy, ox, oy), strict=True)]}
                for b in boxes]


def shifted_views(conditions: Mapping[str, object], shifts: Sequence, tokenizers: Mapping[str, object] | None,
                  caller: str = "views") -> list[View]:
    """One :class:`View` per shift ``(dx, dy)`` of the image conditions, which must share one size."""
    shifts = [checked_shift(s, caller) for s in shifts]
    if not shifts:
        return []
    height, width = image_size(conditions, tokenizers, caller)
    return [View(dx=dx, dy=dy, width=width, height=height) for dx, dy in shifts]


def stack_views(conditions: Mapping[str, object], views: Sequence[View], tokenizers: Mapping[str, object] | None,
                caller: str = "views") -> dict:
    """Every condition as each view in turn sees it, stacked along the batch axis: rows ``v * B + i`` are
    view ``v`` of row ``i``."""
    return {name: concat([view.apply(name, value, tokenizers, caller) for view in views])
            for name, value in conditions.items()}


def checked_shift(shift, caller: str = "views") -> tuple[int, int]:
    """``shift`` as a nonzero pair of whole pixels, else a ValueError naming ``caller``."""
    try:
        dx, dy = shift
    except (TypeError, ValueError):
        raise ValueError(f"{caller}: a shift is a pair (dx, dy) of pixels, got {shift!r}") from None
    whole = all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in (dx, dy))
    if not whole or (dx, dy) == (0, 0):
        raise ValueError(f"{caller}: a shift is a nonzero pair (dx, dy) of whole pixels, got {shift!r}")
    return int(dx), int(dy)


def image_size(conditions: Mapping[str, object], tokenizers: Mapping[str, object] | None,
               caller: str = "views") -> tuple[int, int]:
    """The (height, width) every image condition shares (shifted views need one; boxes conditions have none)."""
    sizes = {}
    for name, value in conditions.items():
        if is_boxes_condition(name):
            continue
        h_axis, w_axis = image_axes(name, value, tokenizers, "shifted", caller)
        sizes[name] = (int(value.shape[h_axis]), int(value.shape[w_axis]))
    if not sizes:
        raise ValueError(f"{caller}(shifts=...) needs an image condition to shift, got only {sorted(conditions)}")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{caller}(shifts=...) needs image conditions of one size, got (height, width) {sizes}")
    return next(iter(sizes.values()))


def image_axes(name: str, value, tokenizers: Mapping[str, object] | None, what: str,
               caller: str = "views") -> tuple[int, int]:
    """The (height, width) axes of image condition ``value`` of modality ``name``: pixels (B, C, H, W) or raw
    float images (B, H, W[, C]) that a tokenizer encodes; anything else raises a ValueError."""
    mod = modalities.get(name)
    floating = (value.is_floating_point() if isinstance(value, torch.Tensor)
                else isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating))
    if mod.kind == "pixels" and floating and value.ndim == 4:
        return 2, 3
    if mod.kind == "image_tokens" and floating and value.ndim in (3, 4) and name in (tokenizers or {}):
        return 1, 2
    raise ValueError(f"{caller}: only image conditions can be {what}: pixels (B, C, H, W) or raw float images "
                     f"(B, H, W[, C]) with a tokenizer; {name!r} ({mod.kind}) cannot be {what}")


def is_boxes_condition(name: str) -> bool:
    """Whether modality ``name`` holds boxes (``det``, ``det@64``, ...), which views move with the image."""
    return name.split("@")[0] == "det"


def _box_row(row, name: str, caller: str) -> list[dict]:
    if isinstance(row, str) or not all(isinstance(b, Mapping) and "box" in b for b in row):
        raise ValueError(f"{caller}: {name!r} can be shifted or mirrored only as boxes, one list of "
                         f"{{'box': [x0, y0, x1, y1], 'class': ...}} per row; got a row {str(row)[:60]!r}")
    return list(row)


def concat(parts: list):
    """Batches of one condition, the rows of each part in turn."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], list):
        return [row for part in parts for row in part]
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def _shifted(value, offset: int, axis: int):
    """``value`` moved by ``offset`` along ``axis`` (towards higher indices when positive), edges repeated."""
    if not offset:
        return value
    n = value.shape[axis]
    index = np.clip(np.arange(n) - offset, 0, n - 1)
    if isinstance(value, torch.Tensor):
        return value.index_select(axis, torch.as_tensor(index, device=value.device))
    return np.take(value, index, axis=axis)


__all__ = ["View", "checked_shift", "concat", "image_axes", "image_size", "is_boxes_condition", "neighbour_shifts",
           "shifted_views", "stack_views"]
