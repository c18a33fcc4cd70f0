"""Pictures of every modality for people, and grids of conditions and outputs.

- depth (H, W) float → a colour map (turbo, near = warm), normalised per image by the 2nd-98th percentiles;
- normals (3, H, W) or (H, W, 3) in [-1, 1] → RGB ``(n + 1) / 2``;
- semantic segmentation (H, W) int labels → a fixed palette, with a legend of the classes present;
- boxes ``[{"box": [x0, y0, x1, y1] in [0, 1], "class": str[, "score": float]}]`` → drawn on the RGB (or a blank
  canvas) with labels (and scores);
- captions (str) → wrapped text on a tile;
- image token grids (h, w) without an image tokenizer → each id in a colour of its own (a token map).

:func:`render` picks one of these from the modality name; :func:`save_grid` writes a PNG grid atomically.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from open4m.atomic import write_atomic

TILE = 224


def _font(size: int = 12):
    return ImageFont.load_default(size=size)


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def depth_image(depth, cmap: str = "turbo") -> Image.Image:
    """(H, W) depth → colour map, near = warm (the official plots use turbo)."""
    import matplotlib

    d = _array(depth).astype(np.float32).squeeze()
    if d.ndim != 2:
        raise ValueError(f"depth: expected (H, W), got shape {d.shape}")
    lo, hi = np.percentile(d, 2), np.percentile(d, 98)
    scaled = np.clip((d - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgba = matplotlib.colormaps[cmap](1.0 - scaled)
    return Image.fromarray((rgba[..., :3] * 255).astype(np.uint8))


def normals_image(normals) -> Image.Image:
    """Normals (3, H, W) or (H, W, 3) in [-1, 1] → RGB."""
    n = _array(normals).astype(np.float32)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
        n = n.transpose(1, 2, 0)
    if n.ndim != 3 or n.shape[-1] != 3:
        raise ValueError(f"normals: expected (3, H, W) or (H, W, 3), got shape {n.shape}")
    return Image.fromarray((np.clip((n + 1) / 2, 0, 1) * 255).astype(np.uint8))


def palette_colour(index: int) -> tuple[int, int, int]:
    """A fixed, well-spread colour for class / token ``index`` (the same in every picture)."""
    digest = hashlib.sha256(str(int(index)).encode()).digest()
    return int(64 + digest[0] % 192), int(64 + digest[1] % 192), int(64 + digest[2] % 192)


def _label_map(labels: np.ndarray) -> np.ndarray:
    table = {int(v): palette_colour(int(v)) for v in np.unique(labels)}
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    for value, colour in table.items():
        out[labels == value] = colour
    return out


def upscaled(picture: Image.Image, size: int = TILE) -> Image.Image:
    """``picture`` enlarged by the largest integer factor that fits ``size`` (nearest neighbour: pixels stay
    visible as pixels); pictures already larger than half of ``size`` are returned as they are."""
    factor = size // max(picture.size)
    if factor < 2:
        return picture
    return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)


def semseg_image(labels, class_names: Sequence[str] | None = None, legend: bool = True) -> Image.Image:
    """(H, W) int class ids → palette picture, with a legend strip of the classes present below it."""
    lab = _array(labels).astype(np.int64).squeeze()
    if lab.ndim != 2:
        raise ValueError(f"semseg: expected (H, W) labels, got shape {lab.shape}")
    picture = upscaled(Image.fromarray(_label_map(lab)))
    if not legend:
        return picture
    present = [int(v) for v in np.unique(lab)]
    rows = (len(present) + 1) // 2
    canvas = Image.new("RGB", (picture.width, picture.height + 16 * rows), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, value in enumerate(present):
        x, y = (k % 2) * picture.width // 2 + 2, picture.height + 16 * (k // 2) + 2
        draw.rectangle([x, y, x + 11, y + 11], fill=palette_colour(value))
        name = class_names[value] if class_names is not None and 0 <= value < len(class_names) else str(value)
        draw.text((x + 15, y - 1), name, fill="black", font=_font(11))
    return canvas


def token_map_image(tokens) -> Image.Image:
    """An image token grid (h, w) shown as colours (before image tokenizers can decode it), upscaled to a tile."""
    t = _array(tokens).astype(np.int64).squeeze()
    if t.ndim != 2:
        raise ValueError(f"token map: expected (h, w) ids, got shape {t.shape}")
    return Image.fromarray(_label_map(t)).resize((TILE, TILE), Image.NEAREST)


def rgb_image(rgb) -> Image.Image:
    """(3, H, W) or (H, W, 3) float in [0, 1] (or uint8) → RGB."""
    x = _array(rgb)
    if x.ndim == 3 and x.shape[0] == 3 and x.shape[-1] != 3:
        x = x.transpose(1, 2, 0)
    if x.dtype != np.uint8:
        x = (np.clip(x, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(x)


def boxes_image(boxes: Sequence[dict], background: Image.Image | None = None) -> Image.Image:
    """Boxes (normalised [x0, y0, x1, y1] + class) drawn with labels on ``background`` (or a blank tile); a box
    with a ``"score"`` (a generated one) is labelled with it too, e.g. ``cube 0.93``."""
    canvas = (background.copy() if background is not None else Image.new("RGB", (TILE, TILE), "white")).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    for item in boxes:
        x0, y0, x1, y1 = item["box"]
        colour = palette_colour(int(hashlib.sha256(item["class"].encode()).hexdigest(), 16) % 10_000)
        draw.rectangle([x0 * w, y0 * h, x1 * w, y1 * h], outline=colour, width=2)
        label = item["class"] + (f" {float(item['score']):.2f}" if "score" in item else "")
        draw.text((x0 * w + 2, y0 * h + 1), label, fill=colour, font=_font(11))
    return canvas


def text_image(text: str, width: int = TILE, height: int = TILE) -> Image.Image:
    """Text wrapped onto a white tile."""
    canvas = Image.new("RGB", (width, height), "white")
    lines = textwrap.wrap(text, width=max(8, width // 7)) or [""]
    ImageDraw.Draw(canvas).multiline_text((4, 4), "\n".join(lines), fill="black", font=_font(12))
    return canvas


def render(name: str, value, background: Image.Image | None = None, class_names: Sequence[str] | None = None):
    """A picture of one value of modality ``name`` (decoded data, or token ids when nothing decodes them)."""
    base = name.split("@")[0]
    if isinstance(value, str):
        return text_image(value)
    if base == "det" and isinstance(value, list):
        return boxes_image(value, upscaled(background) if background is not None else None)
    return upscaled(_render_array(base, value, class_names))


def _render_array(base: str, value, class_names: Sequence[str] | None) -> Image.Image:
    x = _array(value)
    if np.issubdtype(x.dtype, np.integer) and x.squeeze().ndim == 2 and base.startswith("tok_"):
        if base == "tok_semseg" and x.squeeze().shape[0] > 32:
            return semseg_image(x, class_names)
        return token_map_image(x)
    if "depth" in base:
        return depth_image(x)
    if "normal" in base:
        return normals_image(x)
    if "semseg" in base:
        return semseg_image(x, class_names)
    if base in ("rgb", "tok_rgb"):
        if np.issubdtype(x.dtype, np.floating) and x.min() < 0:  # ImageNet-normalised model input
            mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
            x = x * std[:, None, None] + mean[:, None, None] if x.shape[0] == 3 else x * std + mean
        return rgb_image(x)
    return text_image(str(value))


def grid_image(rows: Sequence[Sequence[tuple[str, Image.Image]]], tile: int = TILE) -> Image.Image:
    """Rows of (title, picture) as one image; each picture fitted into a ``tile`` square under its title."""
    cols = max(len(r) for r in rows)
    head = 16
    canvas = Image.new("RGB", (cols * (tile + 4) + 4, len(rows) * (tile + head + 4) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        for j, (title, picture) in enumerate(row):
            x, y = 4 + j * (tile + 4), 4 + i * (tile + head + 4)
            draw.text((x, y), title, fill="black", font=_font(12))
            fitted = picture.copy()
            fitted.thumbnail((tile, tile))
            canvas.paste(fitted, (x, y + head))
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``image`` as PNG atomically (temp file in the same folder, then rename); refuses to replace
    an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite / --force to replace it)")
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def save_grid(conditions: dict, result, path: str | os.PathLike, overwrite: bool = False,
              class_names: Sequence[str] | None = None) -> Path:
    """One row per batch item: the conditions (as given), then every target (decoded where possible).

    ``conditions``: name → the value given to :func:`open4m.generation.generate` (one per row or shared);
    ``result``: its :class:`~open4m.generation.GenerationResult`.
    """
    first = next(iter(result.tokens.values()))
    batch = first.shape[0] if hasattr(first, "shape") else len(first)
    rows = []
    for i in range(batch):
        row = []
        background = None  # boxes are drawn on the row's RGB (a given one first, else a generated one)
        for name, value in conditions.items():
            v = value.value if hasattr(value, "known") else value
            row.append((f"in: {name}", render(name, _row(v, i, name))))
            if name.split("@")[0] in ("rgb", "tok_rgb") and background is None:
                background = row[-1][1]
        for name in result.tokens:
            shown = result.decoded.get(name, result.tokens[name])  # outputs always have the batch axis
            picture = render(name, shown[i], background=background, class_names=class_names)
            row.append((f"out: {name}", picture))
            if name.split("@")[0] == "tok_rgb" and background is None:
                background = picture
        rows.append(row)
    return save_png(grid_image(rows), path, overwrite)


def _row(value, i: int, name: str):
    """Row ``i`` of a batched value, or the value itself when every row shares it.

    Batched forms: a list of per-row strings / lists, int grids (B, h, w), float images (B, C, H, W) or
    (B, H, W) with B != 3.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        per_row = value and all(isinstance(v, str | list) for v in value)
        return value[min(i, len(value) - 1)] if per_row else value
    x = _array(value)
    integer = np.issubdtype(x.dtype, np.integer)
    batched = x.ndim == 3 if integer else (x.ndim == 4 or (x.ndim == 3 and x.shape[0] != 3))
    return x[min(i, x.shape[0] - 1)] if batched else x
