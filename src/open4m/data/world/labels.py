"""Labels derived from a :class:`~open4m.data.world.render.Rendering`: semseg, instances, boxes, edges,
dominant colours and image statistics.
"""

from __future__ import annotations

import numpy as np

from open4m.data.world.config import SHAPES, WorldConfig
from open4m.data.world.render import LABEL_FIRST_OBJECT, Rendering
from open4m.data.world.scene import Scene

PALETTE_LEVELS = 4  # per channel, for grouping pixels into colour bins
PALETTE_MIN_SHARE = 0.01  # a dominant colour covers at least this fraction of the image


def semseg_map(scene: Scene, label: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids: 0 background, 1 floor, 2 + SHAPES.index(shape) for object pixels."""
    table = np.zeros(256, dtype=np.uint8)
    table[1] = 1
    for k, obj in enumerate(scene.objects):
        table[LABEL_FIRST_OBJECT + k] = 2 + SHAPES.index(obj.shape)
    return table[label]


def instance_map(label: np.ndarray) -> np.ndarray:
    """(H, W) uint8: 0 for sky and floor, k for the k-th object of the scene graph (1-based)."""
    return np.where(label >= LABEL_FIRST_OBJECT, label - (LABEL_FIRST_OBJECT - 1), 0).astype(np.uint8)


def visible_objects(instance: np.ndarray, num_objects: int, min_pixels: int) -> list[int]:
    """0-based indices of the objects with at least ``min_pixels`` pixels in the instance map."""
    counts = np.bincount(instance.reshape(-1), minlength=num_objects + 1)
    return [k for k in range(num_objects) if counts[k + 1] >= min_pixels]


def boxes(scene: Scene, instance: np.ndarray, visible: list[int]) -> list[dict]:
    """One tight box per visible object, from its visible pixels (so occlusion-aware).

    Returns ``[{"box": [x0, y0, x1, y1], "class": shape, "instance": k}]`` in scene order, coordinates
    normalised to [0, 1] with the pixel-edge convention: ``x0 = min_col / W``, ``x1 = (max_col + 1) / W``.
    """
    height, width = instance.shape
    out = []
    for k in visible:
        mask = instance == k + 1
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = [int(cols[0]) / width, int(rows[0]) / height, (int(cols[-1]) + 1) / width, (int(rows[-1]) + 1) / height]
        out.append({"box": box, "class": scene.objects[k].shape, "instance": k + 1})
    return out


def edge_map(rendering: Rendering, config: WorldConfig) -> np.ndarray:
    """(H, W) uint8 in {0, 255}: both pixels of every 4-neighbour pair across a discontinuity.

    Depth discontinuities (occlusion boundaries) in this world are exactly the changes of surface label,
    since objects are convex and never occlude themselves, and the floor is one plane; crease edges
    (cube edges, cylinder and cone rims) are where the normal turns by more than ``edge_normal_deg``.
    """
    label, normal = rendering.label, rendering.normal
    cos_limit = np.float32(np.cos(np.radians(config.edge_normal_deg)))
    edges = np.zeros(label.shape, dtype=bool)
    for axis in (0, 1):
        n = label.shape[axis]
        a, b = (slice(None),) * axis + (slice(0, n - 1),), (slice(None),) * axis + (slice(1, n),)
        na, nb = normal[a], normal[b]
        turn = na[..., 0] * nb[..., 0] + na[..., 1] * nb[..., 1] + na[..., 2] * nb[..., 2] < cos_limit
        change = (label[a] != label[b]) | (turn & (label[a] > 0))
        edges[a] |= change
        edges[b] |= change
    return np.where(edges, 255, 0).astype(np.uint8)


def color_palette(rgb: np.ndarray, max_colors: int) -> list[list[int]]:
    """Dominant colours, most frequent first: 1..max_colors of [r, g, b] ints 0..255.

    Pixels are grouped into ``PALETTE_LEVELS^3`` colour bins; each bin covering at least
    ``PALETTE_MIN_SHARE`` of the image (and always the largest) gives the mean colour of its pixels.
    """
    pixels = rgb.reshape(-1, 3)
    step = 256 // PALETTE_LEVELS
    q = pixels // step
    bins = (q[:, 0].astype(np.intp) * PALETTE_LEVELS + q[:, 1]) * PALETTE_LEVELS + q[:, 2]
    counts = np.bincount(bins, minlength=PALETTE_LEVELS**3)
    sums = [np.bincount(bins, weights=pixels[:, c], minlength=PALETTE_LEVELS**3) for c in range(3)]
    order = np.argsort(-counts, kind="stable")
    keep = [int(b) for b in order[:max_colors] if counts[b] >= PALETTE_MIN_SHARE * len(pixels)] or [int(order[0])]
    return [[int(np.floor(sums[c][b] / counts[b] + 0.5)) for c in range(3)] for b in keep]


def image_metadata(rgb: np.ndarray, semseg: np.ndarray, instance: np.ndarray, scene: Scene, visible: list[int],
                   caption: str) -> dict:
    """Image statistics (floats rounded to 6 decimals) and counts, named like the 4M-21 metadata where one exists.

    Keys: ``n_objects`` (visible), ``n_objects_total`` (in the scene graph), ``n_shapes`` / ``n_colors``
    (distinct among visible objects), ``semantic_diversity`` (distinct semseg classes in the image),
    ``brightness`` (mean luma in [0, 1]), ``contrast`` (luma standard deviation), ``saturation`` (mean HSV
    saturation), ``colorfulness`` (Hasler & Suesstrunk 2003, on a 0..1 scale), ``entropy`` (bits of the
    256-bin luma histogram), ``object_coverage`` (fraction of object pixels), ``caption_n_chars`` /
    ``caption_n_words`` / ``caption_n_sentences``, ``width``, ``height``.
    """
    rgbf = rgb.reshape(-1, 3).astype(np.float64) * (1.0 / 255.0)
    r, g, b = rgbf[:, 0], rgbf[:, 1], rgbf[:, 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    high, low = rgbf.max(axis=1), rgbf.min(axis=1)
    saturation = (high - low) / np.maximum(high, 1e-12)
    rg, yb = r - g, 0.5 * (r + g) - b
    colorfulness = np.sqrt(rg.var() + yb.var()) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    hist = np.bincount(np.floor(luma * 255.0 + 0.5).astype(np.intp), minlength=256)
    p = hist[hist > 0] / luma.size
    objects = [scene.objects[k] for k in visible]
    stats = {
        "brightness": luma.mean(), "contrast": luma.std(), "saturation": saturation.mean(),
        "colorfulness": colorfulness, "entropy": 0.0 - (p * np.log2(p)).sum(),
        "object_coverage": (instance > 0).mean(),
    }
    return {
        "n_objects": len(visible),
        "n_objects_total": len(scene.objects),
        "n_shapes": len({o.shape for o in objects}),
        "n_colors": len({o.color for o in objects}),
        "semantic_diversity": int(np.count_nonzero(np.bincount(semseg.reshape(-1)))),
        **{k: round(float(v), 6) for k, v in stats.items()},
        "caption_n_chars": len(caption),
        "caption_n_words": len(caption.split()),
        "caption_n_sentences": caption.count("."),
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
    }
