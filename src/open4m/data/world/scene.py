"""Sampling a scene graph from ``(seed, WorldConfig)``: objects on a floor, a camera and a light.

World frame: metres, y up, the floor is the plane ``y = 0``. Every object rests on the floor and turns
only about the vertical axis, so two objects cannot interpenetrate when their floor footprints (circles
that contain the object's whole horizontal extent) are apart; the sampler enforces that with a gap.

Object geometry in its own frame (origin at the object's centre, ``s`` = the size's scale):

- sphere: radius ``s``;
- cube: half-extent ``0.8 s`` on every axis;
- cylinder: radius ``0.8 s``, half-height ``0.8 s``;
- cone: base radius ``0.9 s`` at the bottom, apex at the top, half-height ``s``.

Every number is rounded when sampled, so the JSON scene graph alone determines the rendering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

from open4m.data.world.config import SIZE_SCALE, WorldConfig

PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class SceneObject:
    """One object: its names, centre ``position`` (x, y, z) and ``yaw_deg`` about the vertical axis.

    ``radius`` is the horizontal radius (half-extent for cubes), ``half_height`` half the vertical extent.
    """

    shape: str
    color: str
    size: str
    material: str
    position: tuple[float, float, float]
    yaw_deg: float
    radius: float
    half_height: float

    @property
    def footprint(self) -> float:
        """Radius of the floor circle that contains the object's whole horizontal extent."""
        return self.radius * math.sqrt(2.0) if self.shape == "cube" else self.radius

    @property
    def bounding_radius(self) -> float:
        """Radius of a sphere about ``position`` that contains the whole object."""
        if self.shape == "sphere":
            return self.radius
        if self.shape == "cube":
            return self.radius * math.sqrt(3.0)
        return math.hypot(self.radius, self.half_height)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at ``position`` looking at ``target``, world up = +y, square ``fov_deg``."""

    position: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_deg: float

    def basis(self) -> tuple[tuple[float, float, float], ...]:
        """(right, up, forward) unit vectors in world coordinates, each a tuple of 3 floats."""
        return _look_at(self.position, self.target)

    def to_camera(self, point) -> np.ndarray:
        """World point(s) (..., 3) to the camera frame: x right, y up, z toward the viewer (depth = -z)."""
        right, up, forward = (np.asarray(axis) for axis in self.basis())
        rel = np.asarray(point, dtype=np.float64) - np.asarray(self.position)
        return np.stack([rel @ right, rel @ up, -(rel @ forward)], axis=-1)


@lru_cache(maxsize=64)
def _look_at(position: tuple[float, float, float], target: tuple[float, float, float]):
    fx, fy, fz = (t - p for t, p in zip(target, position, strict=True))
    norm = math.sqrt(fx * fx + fy * fy + fz * fz)
    fx, fy, fz = fx / norm, fy / norm, fz / norm
    rx, rz = -fz, fx  # forward x (0, 1, 0)
    norm = math.sqrt(rx * rx + rz * rz)
    rx, rz = rx / norm, rz / norm
    up = (-rz * fy, rz * fx - rx * fz, rx * fy)  # right x forward
    return (rx, 0.0, rz), up, (fx, fy, fz)


@dataclass(frozen=True)
class Light:
    """A directional light: unit ``direction`` pointing from the scene toward the light, plus ambient."""

    direction: tuple[float, float, float]
    sun: float
    ambient: float


@dataclass(frozen=True)
class Scene:
    """The scene graph: its seed, objects (their order defines instance ids 1..N), camera and light."""

    seed: int
    objects: tuple[SceneObject, ...]
    camera: Camera
    light: Light

    def to_json(self) -> dict:
        """JSON-serialisable dict (lists instead of tuples)."""
        return {
            "seed": self.seed,
            "objects": [_listify(o) for o in self.objects],
            "camera": _listify(self.camera),
            "light": _listify(self.light),
        }

    @classmethod
    def from_json(cls, data: dict) -> Scene:
        """Inverse of :meth:`to_json`."""
        return cls(
            seed=int(data["seed"]),
            objects=tuple(SceneObject(**_tuplify(o)) for o in data["objects"]),
            camera=Camera(**_tuplify(data["camera"])),
            light=Light(**_tuplify(data["light"])),
        )


def _listify(record) -> dict:
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _tuplify(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def make_object(shape: str, color: str, size: str, material: str, x: float, z: float, yaw_deg: float) -> SceneObject:
    """An object of the given names resting on the floor at ``(x, z)``; sizes follow the module docstring."""
    s = SIZE_SCALE[size]
    radius, half_height = {
        "sphere": (s, s),
        "cube": (0.8 * s, 0.8 * s),
        "cylinder": (0.8 * s, 0.8 * s),
        "cone": (0.9 * s, s),
    }[shape]
    return SceneObject(shape, color, size, material, (round(x, 4), round(half_height, 4), round(z, 4)),
                       round(yaw_deg, 2), round(radius, 4), round(half_height, 4))


def _direction(azimuth_deg: float, elevation_deg: float) -> tuple[float, float, float]:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))


def sample_scene(seed: int, config: WorldConfig | None = None) -> Scene:
    """Draw the scene graph of ``seed``: a pure function of ``(seed, config)``.

    Raises ValueError for a negative seed, an invalid config, or a config whose objects cannot be placed.
    """
    config = (config or WorldConfig()).validate()
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.Generator(np.random.PCG64(seed))
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects: list[SceneObject] = []
    for _ in range(count):
        names = [v[int(rng.integers(len(v)))] for v in (config.shapes, config.colors, config.sizes, config.materials)]
        yaw = float(rng.uniform(-config.max_yaw_deg, config.max_yaw_deg))
        for _ in range(PLACEMENT_TRIES):
            x, z = (float(v) for v in rng.uniform(-config.placement_extent, config.placement_extent, size=2))
            candidate = make_object(*names, x, z, yaw)
            if all(_apart(candidate, other, config.placement_gap) for other in objects):
                objects.append(candidate)
                break
    if len(objects) < config.min_objects:
        raise ValueError(f"could not place {config.min_objects} objects without overlap for seed {seed}; "
                         f"increase placement_extent (now {config.placement_extent})")
    azimuth = float(rng.uniform(0.0, 360.0))
    elevation = float(rng.uniform(*config.camera_elevation_deg))
    distance = float(rng.uniform(*config.camera_distance))
    jx, jz = (float(v) for v in rng.uniform(-config.target_jitter, config.target_jitter, size=2))
    target = (round(jx, 4), 0.5, round(jz, 4))
    offset = _direction(azimuth, elevation)
    position = tuple(round(t + distance * o, 4) for t, o in zip(target, offset, strict=True))
    light_dir = _direction(float(rng.uniform(0.0, 360.0)), float(rng.uniform(*config.light_elevation_deg)))
    return Scene(
        seed=seed,
        objects=tuple(objects),
        camera=Camera(position=position, target=target, fov_deg=float(config.fov_deg)),
        light=Light(direction=tuple(round(v, 6) for v in light_dir), sun=config.sun, ambient=config.ambient),
    )


def _apart(a: SceneObject, b: SceneObject, gap: float) -> bool:
    dx, dz = a.position[0] - b.position[0], a.position[2] - b.position[2]
    return math.hypot(dx, dz) >= a.footprint + b.footprint + gap
