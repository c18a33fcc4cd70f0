"""Sample sources for tokenizer training and evaluation: iterables of world-contract sample dicts.

- :func:`synthetic_samples`: toy scenes drawn with numpy (sky, a floor plane, spheres and boxes)
  with consistent ``rgb``, ``depth``, ``normal``, ``semseg`` and ``edges``; deterministic per index,
  for tests and smoke runs until the world's renderer is plugged in.
- :func:`npz_samples`: a folder of ``*.npz`` files, one sample each (keys as in the contract).
- :func:`world_shard_samples`: a folder of world shards (``open4m world render``), streamed and re-iterable.
- :func:`open_samples`: the ``--data`` argument of the CLI: ``synthetic[:SEED]``, a folder of world shards
  (``*.tar``) or a folder of ``*.npz``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


def synthetic_sample(index: int, *, image_size: int = 64, num_classes: int = 8, seed: int = 0) -> dict:
    """One toy scene, a pure function of ``(seed, index)``.

    A pinhole camera looks at a floor plane under a sky, with 1–4 spheres and boxes (boxes face the
    camera) at random depths, z-buffered. Classes: 0 sky, 1 floor, 2.. shapes. Edges mark pixels whose
    object differs from a right or lower neighbour.

    Returns: ``rgb`` uint8 (S, S, 3), ``depth`` float32 (S, S) metres (0 on sky), ``normal`` float32
    (S, S, 3) unit vectors (0 on sky), ``semseg`` uint8 (S, S), ``edges`` uint8 (S, S) in {0, 255}.
    """
    rng = np.random.default_rng([seed, index])
    s = image_size
    focal = 0.9 * s
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    depth = np.zeros((s, s))
    normal = np.zeros((s, s, 3))
    semseg = np.zeros((s, s), np.uint8)
    instance = np.zeros((s, s), np.int32)
    albedo = np.zeros((s, s, 3))

    horizon = rng.uniform(0.3, 0.5) * s
    cam_height = rng.uniform(1.0, 2.0)
    floor = ys > horizon + 0.5
    depth[floor] = np.minimum(cam_height * focal / (ys[floor] - horizon), 40.0)
    normal[floor] = (0.0, 1.0, 0.0)
    semseg[floor], instance[floor] = 1, 1
    floor_colour = rng.uniform(0.3, 0.8, 3)
    checker = ((np.floor(xs / s * 8 * 4 / np.maximum(depth, 1)) + np.floor(depth)) % 2)[..., None]
    albedo[floor] = (floor_colour * (0.75 + 0.25 * checker))[floor]

    for k in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(2, num_classes))
        colour = rng.uniform(0.1, 1.0, 3)
        z = rng.uniform(2.0, 10.0)
        cx, cy = rng.uniform(0.15, 0.85) * s, rng.uniform(0.3, 0.85) * s
        if rng.random() < 0.5:  # sphere of image radius r
            r = rng.uniform(0.07, 0.2) * s
            nx, ny = (xs - cx) / r, -(ys - cy) / r
            inside = nx**2 + ny**2 < 1
            nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, 1))
            shape_depth = z - (r * z / focal) * nz
            shape_normal = np.stack([nx, ny, nz], -1)
        else:  # box facing the camera
            hw, hh = rng.uniform(0.06, 0.2, 2) * s
            inside = (np.abs(xs - cx) < hw) & (np.abs(ys - cy) < hh)
            shape_depth = np.full((s, s), z)
            shape_normal = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (s, s, 3))
        front = inside & ((depth == 0) | (shape_depth < depth))
        depth[front], normal[front] = shape_depth[front], shape_normal[front]
        semseg[front], instance[front], albedo[front] = cls, k + 2, colour

    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    light = np.array([0.4, 0.7, 0.6]) / np.linalg.norm([0.4, 0.7, 0.6])
    shade = 0.35 + 0.65 * np.clip(normal @ light, 0, 1)[..., None]
    sky = np.linspace([0.45, 0.65, 0.95], [0.8, 0.9, 1.0], s)[:, None, :] * np.ones((1, s, 1))
    rgb = np.where((depth > 0)[..., None], albedo * shade, sky)

    edge = np.zeros((s, s), bool)
    edge[:, :-1] |= instance[:, :-1] != instance[:, 1:]
    edge[:-1, :] |= instance[:-1, :] != instance[1:, :]
    return {
        "rgb": (rgb * 255).round().clip(0, 255).astype(np.uint8),
        "depth": depth.astype(np.float32),
        "normal": normal.astype(np.float32),
        "semseg": semseg,
        "edges": (edge * 255).astype(np.uint8),
    }


def synthetic_samples(*, image_size: int = 64, num_classes: int = 8, seed: int = 0, start: int = 0) -> Iterator[dict]:
    """An endless stream of :func:`synthetic_sample` for indices ``start, start + 1, ...``."""
    for index in itertools.count(start):
        yield synthetic_sample(index, image_size=image_size, num_classes=num_classes, seed=seed)


def npz_samples(folder: str | Path) -> list[dict]:
    """Every ``*.npz`` in ``folder`` (sorted by name), loaded without pickle, as sample dicts."""
    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no *.npz samples in {folder}")
    samples = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            samples.append({k: z[k] for k in z.files})
    return samples


def world_shard_samples(folder: str | Path) -> Iterable[dict]:
    """The samples of every world shard (``*.tar``) in ``folder``, decoded to the world sample contract.

    Re-iterable: each pass streams the shards again in name order (nothing is held in memory).
    """
    from open4m.data.shards import list_shards
    from open4m.data.world.sample import iter_world_samples

    shards = list_shards(folder)
    if not shards:
        raise FileNotFoundError(f"no world shards (*.tar) in {folder}")
    return _Restartable(lambda: iter_world_samples(shards))


def open_samples(spec: str, *, image_size: int = 64, num_classes: int = 8) -> Iterable[dict]:
    """The CLI's ``--data``: ``synthetic`` / ``synthetic:SEED`` (endless toy scenes), a folder of world shards
    (``*.tar``, as ``open4m world render`` writes them) or a folder of ``*.npz``."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        seed_text = spec.partition(":")[2] or "0"
        if not seed_text.isdigit():
            raise ValueError(f"--data {spec!r}: expected synthetic or synthetic:SEED with an integer seed")
        return _Restartable(lambda: synthetic_samples(image_size=image_size, num_classes=num_classes,
                                                      seed=int(seed_text)))
    if Path(spec).is_dir():
        if any(Path(spec).glob("*.tar")):
            return world_shard_samples(spec)
        return npz_samples(spec)
    raise FileNotFoundError(f"--data {spec!r}: not 'synthetic[:SEED]' and not a folder of world shards or *.npz")


class _Restartable:
    """An iterable that starts a fresh iterator from ``factory`` each time it is iterated."""

    def __init__(self, factory) -> None:
        self.factory = factory

    def __iter__(self) -> Iterator[dict]:
        return self.factory()
