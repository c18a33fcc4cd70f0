"""Vectorised numpy ray casting of a :class:`~open4m.data.world.scene.Scene`: rgb, depth, normals, labels.

How it stays fast: camera rays are never normalised (their forward component is 1, so the hit parameter
``t`` *is* the z-depth), each object is intersected only with the rays inside the screen rectangle of its
bounding sphere (array views, no copies), normals are computed once per visible pixel after the depth
test, shadow rays are culled per object by the light-aligned cylinder around its bounding sphere, and
everything runs in float32. Per-pixel work uses only ``+ - * /``, ``sqrt`` and comparisons, which are exact
IEEE operations, so a scene renders to the same bytes on any machine.

Camera frame (depth and normals): x to the right of the image, y up, z toward the viewer; a visible
surface has ``n_z > 0`` and a point at depth ``d`` has ``z = -d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from open4m.data.world.config import COLOR_RGB, WorldConfig
from open4m.data.world.scene import Scene, SceneObject

LABEL_SKY, LABEL_FLOOR, LABEL_FIRST_OBJECT = 0, 1, 2
FLOOR_ALBEDO = (0.62, 0.60, 0.56)
SKY_HORIZON = (0.80, 0.85, 0.92)
SKY_ZENITH = (0.42, 0.58, 0.85)
SHADOW_EPS = 1e-3
NEAR = 1e-3
SHINY_SPECULAR = 0.7
SHINY_DIFFUSE = 0.75
MATTE_SPECULAR = 0.04


@dataclass
class Rendering:
    """Aligned buffers of one view (H = W = resolution).

    Attributes:
        rgb: (H, W, 3) uint8 shaded colour.
        depth: (H, W) float32 camera z-depth in metres; 0 where no surface was hit.
        normal: (H, W, 3) float32 unit normals in the camera frame; the zero vector where nothing was hit.
        label: (H, W) uint8: 0 = sky/background, 1 = floor, 2 + k = object k (0-based scene order).
    """

    rgb: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    label: np.ndarray


@lru_cache(maxsize=8)
def _screen_grid(resolution: int, fov_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel image-plane coordinates at depth 1: (u, v), each (H, W) float32, u right, v up."""
    half = math.tan(math.radians(fov_deg) / 2.0)
    centres = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution * 2.0 - 1.0
    u = np.broadcast_to(centres[None, :] * half, (resolution, resolution)).astype(np.float32)
    v = np.broadcast_to(-centres[:, None] * half, (resolution, resolution)).astype(np.float32)
    u.flags.writeable = False
    v.flags.writeable = False
    return u, v


def pixel_rays(scene: Scene, resolution: int) -> tuple[tuple[float, float, float], list[np.ndarray]]:
    """Camera origin and per-pixel ray directions [dx, dy, dz], each (H, W) float32, with unit forward part.

    A hit at parameter ``t`` along a direction lies at z-depth ``t``.
    """
    u, v = _screen_grid(resolution, scene.camera.fov_deg)
    right, up, forward = scene.camera.basis()
    dirs = [right[i] * u + up[i] * v + forward[i] for i in range(3)]
    return tuple(float(c) for c in scene.camera.position), dirs


def _roots(a, b, c):
    """Both roots of ``a t^2 + b t + c`` in the numerically stable form (NaN where there are none)."""
    disc = b * b - 4.0 * a * c
    q = -0.5 * (b + np.copysign(np.sqrt(disc), b))
    return q / a, c / q


def _nearest(*candidates):
    """Elementwise smallest of (t, valid) candidates; inf where none is valid."""
    best = None
    for t, valid in candidates:
        t = np.where(valid & (t > NEAR), t, np.inf)
        best = t if best is None else np.minimum(best, t)
    return best


def _in_range(o, d, t, half):
    """Whether ``o + t d`` lies in ``[-half, half]``."""
    return np.abs(o + t * d) <= half


def intersect_local(obj: SceneObject, ox, oy, oz, dx, dy, dz) -> np.ndarray:
    """Ray parameter of the first hit of rays ``o + t d`` (object frame) with ``obj``; inf on a miss.

    Origins and directions broadcast: scalars and float32 arrays of any one shape.
    """
    r, h = obj.radius, obj.half_height
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if obj.shape == "sphere":
            t1, t2 = _roots(dx * dx + dy * dy + dz * dz, 2.0 * (ox * dx + oy * dy + oz * dz),
                            ox * ox + oy * oy + oz * oz - r * r)
            return _nearest((t1, True), (t2, True))
        if obj.shape == "cube":
            near, far = None, None
            for o, d, half in ((ox, dx, r), (oy, dy, h), (oz, dz, r)):
                inv = 1.0 / d
                ta, tb = (-half - o) * inv, (half - o) * inv
                lo, hi = np.minimum(ta, tb), np.maximum(ta, tb)
                near = lo if near is None else np.maximum(near, lo)
                far = hi if far is None else np.minimum(far, hi)
            return _nearest((near, near <= far))
        if obj.shape == "cylinder":
            t1, t2 = _roots(dx * dx + dz * dz, 2.0 * (ox * dx + oz * dz), ox * ox + oz * oz - r * r)
            caps = []
            for level in (h, -h):
                t = (level - oy) / dy
                x, z = ox + t * dx, oz + t * dz
                caps.append((t, x * x + z * z <= r * r))
            return _nearest((t1, _in_range(oy, dy, t1, h)), (t2, _in_range(oy, dy, t2, h)), *caps)
        if obj.shape == "cone":
            k2 = (r / (2.0 * h)) ** 2
            w = h - oy
            t1, t2 = _roots(dx * dx + dz * dz - k2 * dy * dy, 2.0 * (ox * dx + oz * dz + k2 * w * dy),
                            ox * ox + oz * oz - k2 * w * w)
            t_base = (-h - oy) / dy
            x, z = ox + t_base * dx, oz + t_base * dz
            return _nearest((t1, _in_range(oy, dy, t1, h)), (t2, _in_range(oy, dy, t2, h)),
                            (t_base, x * x + z * z <= r * r))
    raise ValueError(f"unknown shape {obj.shape!r}")


def normal_local(obj: SceneObject, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
    """Outward unit normals [nx, ny, nz] (object frame) at surface points (x, y, z), 1-D float32 arrays."""
    r, h = obj.radius, obj.half_height
    zero = np.zeros_like(x)
    if obj.shape == "sphere":
        return [x / r, y / r, z / r]
    if obj.shape == "cube":
        ax, ay, az = np.abs(x), np.abs(y) * (r / h), np.abs(z)
        on_x = (ax >= ay) & (ax >= az)
        on_y = ~on_x & (ay >= az)
        on_z = ~on_x & ~on_y
        return [np.where(on_x, np.sign(x), zero), np.where(on_y, np.sign(y), zero), np.where(on_z, np.sign(z), zero)]
    rho = np.maximum(np.sqrt(x * x + z * z), 1e-6)
    if obj.shape == "cylinder":
        on_cap = h - np.abs(y) < r - rho
        return [np.where(on_cap, zero, x / rho), np.where(on_cap, np.sign(y), zero), np.where(on_cap, zero, z / rho)]
    k = r / (2.0 * h)
    lateral_gap = (k * (h - y) - rho) / math.sqrt(1.0 + k * k)
    on_base = y + h < lateral_gap
    scale = 1.0 / math.sqrt(1.0 + k * k)
    return [np.where(on_base, zero, x / rho * scale), np.where(on_base, -1.0, k * scale + zero),
            np.where(on_base, zero, z / rho * scale)]


def _yaw(obj: SceneObject) -> tuple[float, float]:
    angle = math.radians(obj.yaw_deg)
    return math.cos(angle), math.sin(angle)


def _to_local(obj: SceneObject, px, py, pz, rotate_only: bool = False):
    """World points (or directions, ``rotate_only``) into the object's frame."""
    cos, sin = _yaw(obj)
    if not rotate_only:
        px, py, pz = px - obj.position[0], py - obj.position[1], pz - obj.position[2]
    return cos * px - sin * pz, py, sin * px + cos * pz


def _screen_rect(obj: SceneObject, scene: Scene, resolution: int) -> tuple[slice, slice] | None:
    """Pixel rows/cols that can see ``obj``'s bounding sphere (conservative); None when off-screen."""
    rel = [p - c for p, c in zip(obj.position, scene.camera.position, strict=True)]
    cx, cy, cz = (sum(r * a for r, a in zip(rel, axis, strict=True)) for axis in scene.camera.basis())
    radius = obj.bounding_radius * 1.01 + 1e-3
    full = (slice(0, resolution), slice(0, resolution))
    if cz - radius <= NEAR:
        return None if cz + radius <= NEAR else full
    half = math.tan(math.radians(scene.camera.fov_deg) / 2.0)
    us = [x / z / half for x in (cx - radius, cx + radius) for z in (cz - radius, cz + radius)]
    vs = [y / z / half for y in (cy - radius, cy + radius) for z in (cz - radius, cz + radius)]
    c0 = math.floor((min(us) + 1.0) / 2.0 * resolution - 0.5) - 1
    c1 = math.ceil((max(us) + 1.0) / 2.0 * resolution - 0.5) + 2
    r0 = math.floor((1.0 - max(vs)) / 2.0 * resolution - 0.5) - 1
    r1 = math.ceil((1.0 - min(vs)) / 2.0 * resolution - 0.5) + 2
    c0, c1, r0, r1 = max(c0, 0), min(c1, resolution), max(r0, 0), min(r1, resolution)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _cast_camera_rays(scene: Scene, config: WorldConfig, origin, dirs):
    """Z-buffer of the floor and every object: (t (H, W) float32 with inf = miss, label (H, W) uint8)."""
    ox, oy, oz = origin
    dx, dy, dz = dirs
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = -oy / dy
    fx, fz = ox + t_floor * dx, oz + t_floor * dz
    on_floor = (dy < 0) & (fx * fx + fz * fz <= config.floor_radius**2)
    t_buf = np.where(on_floor, t_floor, np.float32(np.inf))
    label = on_floor.astype(np.uint8)
    for k, obj in enumerate(scene.objects):
        rect = _screen_rect(obj, scene, config.resolution)
        if rect is None:
            continue
        lox, loy, loz = _to_local(obj, ox, oy, oz)
        ldx, ldy, ldz = _to_local(obj, dx[rect], dy[rect], dz[rect], rotate_only=True)
        t = intersect_local(obj, lox, loy, loz, ldx, ldy, ldz)
        closer = t < t_buf[rect]
        t_buf[rect] = np.where(closer, t, t_buf[rect])
        label[rect][closer] = LABEL_FIRST_OBJECT + k
    return t_buf, label


def _world_normals(scene: Scene, label_hit: np.ndarray, px, py, pz) -> list[np.ndarray]:
    """World-frame unit normals [nx, ny, nz] at the hit points (1-D arrays), per surface label."""
    normals = [np.zeros_like(px), np.ones_like(px), np.zeros_like(px)]  # the floor's normal is +y
    for k, obj in enumerate(scene.objects):
        sel = label_hit == LABEL_FIRST_OBJECT + k
        if not sel.any():
            continue
        lnx, lny, lnz = normal_local(obj, *_to_local(obj, px[sel], py[sel], pz[sel]))
        cos, sin = _yaw(obj)
        inv = 1.0 / np.sqrt(lnx * lnx + lny * lny + lnz * lnz)
        normals[0][sel] = (cos * lnx + sin * lnz) * inv
        normals[1][sel] = lny * inv
        normals[2][sel] = (-sin * lnx + cos * lnz) * inv
    return normals


def _shadowed(scene: Scene, light: tuple[float, float, float], label_hit, px, py, pz) -> np.ndarray:
    """Whether a ray from each point toward the light hits an object (1-D bool; objects are convex)."""
    lx, ly, lz = light
    shadow = np.zeros(px.shape, dtype=bool)
    for k, obj in enumerate(scene.objects):
        bx, by, bz = px - obj.position[0], py - obj.position[1], pz - obj.position[2]
        along = bx * lx + by * ly + bz * lz
        perp2 = bx * bx + by * by + bz * bz - along * along
        radius = obj.bounding_radius * 1.01
        cand = np.flatnonzero((perp2 < radius * radius) & (along < radius) & ~shadow
                              & (label_hit != LABEL_FIRST_OBJECT + k))
        if cand.size == 0:
            continue
        lo = _to_local(obj, px[cand], py[cand], pz[cand])
        ld = [np.float32(v) for v in _to_local(obj, lx, ly, lz, rotate_only=True)]  # 1/0 -> inf, not an error
        shadow[cand] = np.isfinite(intersect_local(obj, *lo, *ld))
    return shadow


def _shade(scene: Scene, label_hit, normals, dirs_hit, shadow, ndotl) -> np.ndarray:
    """Linear colour (N, 3) float32: albedo * (ambient + sun * lambert) + specular highlights."""
    albedo = np.zeros((len(scene.objects) + 2, 3), dtype=np.float32)
    specular = np.zeros(len(scene.objects) + 2, dtype=np.float32)
    albedo[LABEL_FLOOR] = FLOOR_ALBEDO
    for k, obj in enumerate(scene.objects):
        shiny = obj.material == "shiny"
        albedo[LABEL_FIRST_OBJECT + k] = np.asarray(COLOR_RGB[obj.color], dtype=np.float32) / 255.0 * (
            SHINY_DIFFUSE if shiny else 1.0)
        specular[LABEL_FIRST_OBJECT + k] = SHINY_SPECULAR if shiny else MATTE_SPECULAR
    light = scene.light
    lx, ly, lz = _light_direction(scene)
    lit = np.where(shadow, 0.0, np.maximum(ndotl, 0.0)).astype(np.float32)
    # Blinn-Phong half vector between the light and the direction back to the camera.
    vx, vy, vz = dirs_hit
    inv = 1.0 / np.sqrt(vx * vx + vy * vy + vz * vz)
    hx, hy, hz = lx - vx * inv, ly - vy * inv, lz - vz * inv
    inv = 1.0 / np.sqrt(hx * hx + hy * hy + hz * hz)
    nh = np.maximum((normals[0] * hx + normals[1] * hy + normals[2] * hz) * inv, 0.0)
    for _ in range(6):  # nh ** 64 by squaring: exact IEEE multiplies, the same bytes on every machine
        nh = nh * nh
    highlight = np.where(lit > 0, specular[label_hit] * nh * light.sun, 0.0)
    intensity = light.ambient + light.sun * lit
    return albedo[label_hit] * intensity[:, None] + highlight[:, None]


def _light_direction(scene: Scene) -> tuple[float, float, float]:
    lx, ly, lz = scene.light.direction
    norm = math.sqrt(lx * lx + ly * ly + lz * lz)
    return lx / norm, ly / norm, lz / norm


def _sky(dirs_sky) -> np.ndarray:
    """Background gradient (N, 3) float32 from the horizon colour to the zenith colour."""
    dx, dy, dz = dirs_sky
    up = np.clip(dy / np.sqrt(dx * dx + dy * dy + dz * dz) * 2.0, 0.0, 1.0)[:, None]
    horizon = np.asarray(SKY_HORIZON, dtype=np.float32)
    return horizon + (np.asarray(SKY_ZENITH, dtype=np.float32) - horizon) * up


def render(scene: Scene, config: WorldConfig) -> Rendering:
    """Ray cast ``scene`` at ``config.resolution``: shaded rgb with cast shadows, depth, normals, labels."""
    res = config.resolution
    origin, dirs = pixel_rays(scene, res)
    t_buf, label = _cast_camera_rays(scene, config, origin, dirs)
    flat_label = label.reshape(-1)
    hit = np.flatnonzero(flat_label != LABEL_SKY)
    label_hit = flat_label[hit]
    depth_hit = t_buf.reshape(-1)[hit]
    dirs_hit = [d.reshape(-1)[hit] for d in dirs]
    px, py, pz = (o + depth_hit * d for o, d in zip(origin, dirs_hit, strict=True))
    nx, ny, nz = _world_normals(scene, label_hit, px, py, pz)
    light = _light_direction(scene)
    ndotl = nx * light[0] + ny * light[1] + nz * light[2]
    facing = np.flatnonzero(ndotl > 0)
    shadow = np.ones(hit.shape, dtype=bool)
    shadow[facing] = _shadowed(scene, light, label_hit[facing], px[facing] + SHADOW_EPS * nx[facing],
                               py[facing] + SHADOW_EPS * ny[facing], pz[facing] + SHADOW_EPS * nz[facing])

    colour = np.zeros((res * res, 3), dtype=np.float32)
    colour[hit] = _shade(scene, label_hit, (nx, ny, nz), dirs_hit, shadow, ndotl)
    if config.sky:
        sky = np.flatnonzero(flat_label == LABEL_SKY)
        colour[sky] = _sky([d.reshape(-1)[sky] for d in dirs])
    rgb = np.floor(np.clip(colour, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(res, res, 3)

    depth = np.zeros(res * res, dtype=np.float32)
    depth[hit] = depth_hit
    right, up, forward = scene.camera.basis()
    normal = np.zeros((res * res, 3), dtype=np.float32)
    for axis, sign, column in ((right, 1.0, 0), (up, 1.0, 1), (forward, -1.0, 2)):
        normal[hit, column] = sign * (nx * axis[0] + ny * axis[1] + nz * axis[2])
    return Rendering(rgb=rgb, depth=depth.reshape(res, res), normal=normal.reshape(res, res, 3), label=label)
