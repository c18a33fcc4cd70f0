"""Every default of the procedural world in one dataclass, plus the vocabularies and the split seed ranges.

A scene is a pure function of ``(seed, WorldConfig)``. Change a field with
``dataclasses.replace(WorldConfig(), resolution=224)``; :meth:`WorldConfig.validate` names the first
bad field. The vocabularies below are the label space every other module codes against.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SHAPES: list[str] = ["sphere", "cube", "cylinder", "cone"]
COLORS: list[str] = ["gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"]
SIZES: list[str] = ["small", "large"]
MATERIALS: list[str] = ["matte", "shiny"]

# semseg ids: 0 = sky/background (no hit), 1 = floor, 2.. = one class per shape (in SHAPES order).
SEMSEG_CLASSES: list[str] = ["background", "floor", *SHAPES]
# Box class (a shape) -> its semseg id, for relabelling object pixels by boxes.
SHAPE_LABELS: dict[str, int] = {shape: SEMSEG_CLASSES.index(shape) for shape in SHAPES}

# sRGB albedo of each colour name (the CLEVR palette), 0..255.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}

# Characteristic length (metres) of each size name: sphere radius; other shapes scale with it.
SIZE_SCALE: dict[str, float] = {"small": 0.35, "large": 0.7}

# Disjoint seed ranges per split: scene i of a split has seed ``SPLIT_SEEDS[split][0] + i``.
SPLIT_SEEDS: dict[str, tuple[int, int]] = {
    "train": (0, 10**9),
    "val": (10**9, 10**9 + 10**6),
    "test": (10**9 + 10**6, 10**9 + 2 * 10**6),
}

MAX_RESOLUTION = 2048
MAX_OBJECTS = 12


def seed_for(split: str, index: int) -> int:
    """The seed of scene ``index`` of ``split``; raises ValueError outside the split's range."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    start, stop = SPLIT_SEEDS[split]
    if not 0 <= index < stop - start:
        raise ValueError(f"scene index {index} is outside split {split!r}, which holds {stop - start} scenes")
    return start + index


@dataclass(frozen=True)
class WorldConfig:
    """All defaults of the world: image size, scene statistics, camera, light and label thresholds.

    Attributes:
        resolution: side of the square images in pixels (64 is the CPU-trainable default; 224 works too).
        min_objects / max_objects: object count range per scene (inclusive).
        shapes / colors / sizes / materials: the names a scene may draw from (subsets of the vocabularies).
        placement_extent: objects' centres lie in the square ``[-e, e]^2`` of the floor (metres).
        placement_gap: minimum floor distance between two objects' footprints (metres).
        max_yaw_deg: objects turn about the vertical axis by up to this angle.
        camera_distance / camera_elevation_deg: ranges of the camera's distance to its target and its
            elevation above the floor; azimuth is uniform over the full circle.
        target_jitter: the camera aims at a point within this distance of the floor's centre.
        fov_deg: full (horizontal = vertical) field of view.
        floor_radius: the floor is a disc of this radius; rays beyond it see the sky.
        light_elevation_deg: range of the directional light's elevation; its azimuth is uniform.
        ambient / sun: light intensities of the ambient term and of the directional light.
        sky: whether the background is a sky gradient (otherwise plain black).
        min_visible_pixels: an object with fewer visible pixels is "hidden": no box, not in the caption.
        relation_margin: a spatial relation is stated only when it holds by at least this many metres.
        max_relations: at most this many spatial relations per caption.
        edge_normal_deg: a normal turn between neighbouring pixels larger than this marks a crease edge.
        max_palette_colors: at most this many dominant colours (1..7).
    """

    resolution: int = 64
    min_objects: int = 1
    max_objects: int = 6
    shapes: tuple[str, ...] = tuple(SHAPES)
    colors: tuple[str, ...] = tuple(COLORS)
    sizes: tuple[str, ...] = tuple(SIZES)
    materials: tuple[str, ...] = tuple(MATERIALS)
    placement_extent: float = 3.0
    placement_gap: float = 0.1
    max_yaw_deg: float = 90.0
    camera_distance: tuple[float, float] = (8.0, 11.0)
    camera_elevation_deg: tuple[float, float] = (25.0, 55.0)
    target_jitter: float = 0.5
    fov_deg: float = 40.0
    floor_radius: float = 20.0
    light_elevation_deg: tuple[float, float] = (35.0, 70.0)
    ambient: float = 0.35
    sun: float = 0.75
    sky: bool = True
    min_visible_pixels: int = 1
    relation_margin: float = 0.3
    max_relations: int = 3
    edge_normal_deg: float = 30.0
    max_palette_colors: int = 7

    def validate(self) -> WorldConfig:
        """Raise ValueError naming the first bad field; return ``self`` when all are valid."""
        if not isinstance(self.resolution, int) or not 1 <= self.resolution <= MAX_RESOLUTION:
            raise ValueError(f"resolution must be an integer in 1..{MAX_RESOLUTION} pixels, got {self.resolution!r}")
        for name in ("min_objects", "max_objects"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= MAX_OBJECTS:
                raise ValueError(f"{name} must be an integer in 0..{MAX_OBJECTS}, got {value!r}")
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) is larger than max_objects ({self.max_objects})")
        for name, vocab in (("shapes", SHAPES), ("colors", COLORS), ("sizes", SIZES), ("materials", MATERIALS)):
            chosen = getattr(self, name)
            if isinstance(chosen, str) or not chosen:
                raise ValueError(f"{name} must be a non-empty list of names from {vocab}, got {chosen!r}")
            unknown = [n for n in chosen if n not in vocab]
            if unknown:
                raise ValueError(f"unknown {name[:-1]} name(s) {unknown}; expected names from {vocab}")
        for name in ("camera_distance", "camera_elevation_deg", "light_elevation_deg"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range (low, high) with 0 < low <= high, got {(low, high)}")
        if not self.camera_elevation_deg[1] < 90 or not self.light_elevation_deg[1] <= 90:
            raise ValueError("camera elevation must stay below 90 degrees and light elevation at most 90")
        if not 1.0 <= self.fov_deg <= 150.0:
            raise ValueError(f"fov_deg must be in 1..150 degrees, got {self.fov_deg}")
        if self.placement_extent <= 0 or self.placement_gap < 0 or self.floor_radius <= self.placement_extent:
            raise ValueError("need placement_extent > 0, placement_gap >= 0 and floor_radius > placement_extent")
        if self.min_visible_pixels < 1 or self.max_relations < 0 or not 1 <= self.max_palette_colors <= 7:
            raise ValueError("need min_visible_pixels >= 1, max_relations >= 0 and max_palette_colors in 1..7")
        return self

    def to_dict(self) -> dict:
        """JSON-ready copy of every field (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict) -> WorldConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown WorldConfig field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}).validate()
