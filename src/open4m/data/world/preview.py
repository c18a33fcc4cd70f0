"""A PNG grid showing every modality of a few scenes side by side (``open4m world preview``)."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from open4m.data.world.config import SPLIT_SEEDS, WorldConfig
from open4m.data.world.sample import render_scene

COLUMNS = ["rgb", "depth", "normal", "semseg", "instance", "edges", "det"]
# Distinct colours for label maps (index = label id; 0 is black).
LABEL_COLORS = np.array([[0, 0, 0], [150, 150, 150], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                         [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60],
                         [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40]], dtype=np.uint8)
DEPTH_RAMP = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], dtype=np.float64)
CAPTION_HEIGHT = 40


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
    """(H, W) metres → (H, W, 3) uint8: near bright, far dark (a plasma-like ramp); no-hit pixels black."""
    hit = depth > 0
    out = np.zeros(depth.shape + (3,), dtype=np.uint8)
    if hit.any():
        inverse = np.where(hit, 1.0 / np.where(hit, depth, 1.0), 0.0)
        low, high = inverse[hit].min(), inverse[hit].max()
        x = (inverse - low) / max(high - low, 1e-9) * (len(DEPTH_RAMP) - 1)
        ramp = np.stack([np.interp(x, np.arange(len(DEPTH_RAMP)), DEPTH_RAMP[:, c]) for c in range(3)], axis=-1)
        out[hit] = np.floor(ramp[hit] + 0.5).astype(np.uint8)
    return out


def modality_to_rgb(name: str, sample: dict) -> np.ndarray:
    """(H, W, 3) uint8 picture of one image modality of a sample (``det`` draws boxes on rgb)."""
    if name == "rgb":
        return sample["rgb"]
    if name == "depth":
        return depth_to_rgb(sample["depth"])
    if name == "normal":
        n = sample["normal"]
        return np.where((n != 0).any(axis=-1, keepdims=True), np.floor((n + 1.0) * 127.5 + 0.5), 0).astype(np.uint8)
    if name in ("semseg", "instance"):
        return LABEL_COLORS[sample[name] % len(LABEL_COLORS)]
    if name == "edges":
        return np.repeat(sample["edges"][..., None], 3, axis=-1)
    raise ValueError(f"no picture for modality {name!r}")


def preview_grid(seeds: list[int], config: WorldConfig, cell: int = 128) -> Image.Image:
    """One row per seed: the image modalities at ``cell`` pixels each, the caption underneath."""
    return samples_grid([render_scene(seed, config) for seed in seeds], cell)


def samples_grid(samples: list[dict], cell: int = 128) -> Image.Image:
    """One row per sample (dicts of the world's sample contract, e.g. pseudo-labels): the :data:`COLUMNS` every
    sample has (``det``: boxes drawn on ``rgb``) at ``cell`` pixels each, the caption (if any) underneath."""
    if not samples:
        raise ValueError("samples_grid needs at least one sample")
    columns = [name for name in COLUMNS if all(name in s and (name != "det" or "rgb" in s) for s in samples)]
    rows = []
    for sample in samples:
        cells = [Image.fromarray(modality_to_rgb(name, sample)).resize((cell, cell), Image.NEAREST)
                 for name in columns if name != "det"]
        if "det" in columns:
            boxed = Image.fromarray(sample["rgb"]).resize((cell, cell), Image.NEAREST)
            draw = ImageDraw.Draw(boxed)
            for det in sample["det"]:
                x0, y0, x1, y1 = (v * cell for v in det["box"])
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255))
                draw.text((x0 + 2, y0 + 1), det["class"], fill=(255, 255, 255))
            cells.append(boxed)
        row = Image.new("RGB", (cell * len(columns), cell + CAPTION_HEIGHT), (255, 255, 255))
        for i, image in enumerate(cells):
            row.paste(image, (i * cell, 0))
        wrapped = textwrap.wrap(sample.get("caption", ""), width=cell * len(columns) // 6)[:3]
        ImageDraw.Draw(row).multiline_text((4, cell + 2), "\n".join(wrapped), fill=(0, 0, 0), spacing=1)
        rows.append(row)
    header = Image.new("RGB", (cell * len(columns), 14), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    for i, name in enumerate(columns):
        draw.text((i * cell + 4, 1), name, fill=(0, 0, 0))
    grid = Image.new("RGB", (header.width, header.height + sum(r.height for r in rows)), (255, 255, 255))
    grid.paste(header, (0, 0))
    y = header.height
    for row in rows:
        grid.paste(row, (0, y))
        y += row.height
    return grid


def write_preview(out: str | Path, num_scenes: int = 4, split: str = "val", resolution: int = 128,
                  cell: int = 128) -> Path:
    """Render the first ``num_scenes`` scenes of ``split`` and save the grid as a PNG (atomically)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"preview output {out} is a directory; expected a .png file path")
    if out.suffix.lower() != ".png":
        raise ValueError(f"preview output must end in .png, got {out.name!r}")
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    if not 1 <= num_scenes <= 32:
        raise ValueError(f"preview shows 1..32 scenes, got {num_scenes}")
    config = dataclasses.replace(WorldConfig(), resolution=resolution).validate()
    start = SPLIT_SEEDS[split][0]
    grid = preview_grid(list(range(start, start + num_scenes)), config, cell)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    grid.save(temp, format="PNG", optimize=True)
    os.replace(temp, out)
    return out
