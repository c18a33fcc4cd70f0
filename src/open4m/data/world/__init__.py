"""The embedded default dataset: a procedural 3D world rendered to perfectly aligned modalities.

``render_scene(seed, config)`` returns one sample (contract in :mod:`open4m.data.world.sample`);
``write_world`` writes many as WebDataset shards or the official folder layout; ``iter_world_samples``
reads shards back. Splits are disjoint seed ranges (:data:`SPLIT_SEEDS`).
"""

from open4m.data.world.config import (
    COLORS,
    MATERIALS,
    SEMSEG_CLASSES,
    SHAPES,
    SIZES,
    SPLIT_SEEDS,
    WorldConfig,
    seed_for,
)
from open4m.data.world.sample import EXTENSIONS, MODALITIES, iter_world_samples, render_sample, render_scene
from open4m.data.world.scene import Scene, sample_scene
from open4m.data.world.writer import write_world

__all__ = [
    "COLORS", "EXTENSIONS", "MATERIALS", "MODALITIES", "SEMSEG_CLASSES", "SHAPES", "SIZES", "SPLIT_SEEDS", "Scene",
    "WorldConfig", "iter_world_samples", "render_sample", "render_scene", "sample_scene", "seed_for", "write_world",
]
