"""One aligned sample per scene (:func:`render_scene`) and its shard encoding (:func:`iter_world_samples`).

Sample contract (the dict :func:`render_scene` returns; H = W = ``config.resolution``):

- ``rgb``: uint8 (H, W, 3).
- ``depth``: float32 (H, W), camera z-depth in metres (distance along the optical axis); 0.0 where no
  surface is hit (sky/background).
- ``normal``: float32 (H, W, 3), unit surface normals in the camera frame: x to the image's right, y up,
  z toward the viewer (OpenGL convention; visible surfaces have z > 0); the zero vector on sky pixels.
- ``semseg``: uint8 (H, W), index into :data:`SEMSEG_CLASSES`: 0 sky/background, 1 floor, 2.. shapes.
- ``instance``: uint8 (H, W), 0 = no object, k = the k-th object of ``scene["objects"]`` (1-based).
- ``edges``: uint8 (H, W) in {0, 255}.
- ``det``: ``[{"box": [x0, y0, x1, y1], "class": shape, "instance": k}]`` for visible objects only, boxes
  normalised to [0, 1] with the pixel-edge convention (``x0 = min_col / W``, ``x1 = (max_col + 1) / W``).
- ``caption``: str.
- ``color_palette``: 1..7 dominant colours ``[[r, g, b], ...]``, ints 0..255.
- ``metadata``: dict[str, float | int] (see :func:`open4m.data.world.labels.image_metadata`).
- ``scene``: the JSON scene graph (:meth:`open4m.data.world.scene.Scene.to_json`).

An object is *visible* when it covers at least ``config.min_visible_pixels`` pixels; hidden objects have
no box and are not named in the caption.

Shard members per sample ``<key>``: ``rgb.png``, ``depth.npy`` (float32), ``normal.npy`` (float16, decoded
back to float32), ``semseg.png``, ``instance.png``, ``edges.png``, ``det.json``, ``caption.txt``,
``color_palette.json``, ``metadata.json``, ``scene.json``. Decoding is lossless except for the float16
normals (error below 1e-3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from open4m.data.shards import iter_shard
from open4m.data.world.captions import make_caption
from open4m.data.world.config import WorldConfig
from open4m.data.world.labels import (
    boxes,
    color_palette,
    edge_map,
    image_metadata,
    instance_map,
    semseg_map,
    visible_objects,
)
from open4m.data.world.render import render
from open4m.data.world.scene import Scene, sample_scene

MODALITIES: list[str] = ["rgb", "depth", "normal", "semseg", "instance", "edges", "det", "caption",
                         "color_palette", "metadata", "scene"]
# Member extension of each modality in shards (and file extension in the folder layout).
EXTENSIONS: dict[str, str] = {"rgb": "png", "depth": "npy", "normal": "npy", "semseg": "png", "instance": "png",
                              "edges": "png", "det": "json", "caption": "txt", "color_palette": "json",
                              "metadata": "json", "scene": "json"}


def render_sample(scene: Scene, config: WorldConfig | None = None) -> dict:
    """Every modality of ``scene`` as the sample contract in the module docstring."""
    config = (config or WorldConfig()).validate()
    view = render(scene, config)
    instance = instance_map(view.label)
    visible = visible_objects(instance, len(scene.objects), config.min_visible_pixels)
    semseg = semseg_map(scene, view.label)
    caption = make_caption(scene, visible, config)
    return {
        "rgb": view.rgb,
        "depth": view.depth,
        "normal": view.normal,
        "semseg": semseg,
        "instance": instance,
        "edges": edge_map(view, config),
        "det": boxes(scene, instance, visible),
        "caption": caption,
        "color_palette": color_palette(view.rgb, config.max_palette_colors),
        "metadata": image_metadata(view.rgb, semseg, instance, scene, visible, caption),
        "scene": scene.to_json(),
    }


def render_scene(seed: int, config: WorldConfig | None = None) -> dict:
    """Sample the scene of ``seed`` and render every modality: a pure function of ``(seed, config)``."""
    config = (config or WorldConfig()).validate()
    return render_sample(sample_scene(seed, config), config)


def encode_sample(sample: dict) -> dict:
    """Shard entries ``{"<modality>.<ext>": value}`` of a sample (normals stored as float16)."""
    out = {f"{name}.{EXTENSIONS[name]}": sample[name] for name in MODALITIES}
    out["normal.npy"] = sample["normal"].astype(np.float16)
    return out


def decode_sample(entries: dict, where: str = "sample") -> dict:
    """Inverse of :func:`encode_sample`; raises ValueError naming ``where`` and any missing modality."""
    missing = [name for name in MODALITIES if f"{name}.{EXTENSIONS[name]}" not in entries]
    if missing:
        raise ValueError(f"{where} lacks modalities {missing}")
    sample = {name: entries[f"{name}.{EXTENSIONS[name]}"] for name in MODALITIES}
    sample["normal"] = sample["normal"].astype(np.float32)
    return sample


def iter_world_samples(shard_paths: Iterable[str | Path]) -> Iterator[dict]:
    """Decode world shards back to the sample contract, adding ``"__key__"``, in shard and file order."""
    for path in shard_paths:
        for entries in iter_shard(path):
            sample = decode_sample(entries, where=f"sample {entries['__key__']!r} of shard {path}")
            sample["__key__"] = entries["__key__"]
            yield sample
