"""Per-modality adapters: raw world arrays ↔ network tensors, input checks, pictures for previews.

Raw arrays follow the world sample contract, one image ``(H, W[, C])`` or a batch ``(B, H, W[, C])``:

=========  ===============  =================================================================
modality   dtype            values
=========  ===============  =================================================================
rgb        uint8 (H, W, 3)  colours
depth      float32 (H, W)   metres; 0 = sky / no hit (invalid)
normal     float32 (H, W,3) unit camera-frame normals; the zero vector for sky
semseg     uint8 (H, W)     class ids in [0, num_classes)
edges      uint8 (H, W)     0 or 255
=========  ===============  =================================================================

Each adapter turns a checked raw batch into the encoder input ``(B, C_in, H, W)`` and a target
dict for the loss, and turns decoder output ``(B, C_out, H, W)`` back into raw arrays.

- rgb: 3 channels in [-1, 1]; the decoder predicts them.
- depth: 1 channel, ``(log d - log_depth_mean) / log_depth_std`` on valid pixels and the constant
  ``sky_value`` on sky; the decoder predicts that channel and a validity logit (2 channels), and
  decoding writes 0 where the validity is below one half. Log depth makes reconstruction error
  relative, which is what abs-rel measures.
- normal: the 3 components as they are (sky stays 0); decoded vectors are renormalised and those
  shorter than 1/2 become the zero vector (sky).
- semseg: class ids are embedded by the autoencoder (``embed_dim`` channels); the decoder predicts
  ``num_classes`` logits.
- edges: 1 channel in {-1, 1}; the decoder predicts one logit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MODALITIES = ("rgb", "depth", "normal", "semseg", "edges")


class ModalityAdapter:
    """Base class: shapes, checks and conversions for one raw modality (see the module docstring)."""

    name: str
    channels: int  # raw channels per pixel (0 for (H, W) arrays)
    dtype: type
    in_channels: int  # encoder input channels
    out_channels: int  # decoder output channels

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def check(self, raw: np.ndarray) -> np.ndarray:
        """Validate one image or a batch; return it batched ``(B, H, W[, C])``. Errors name the modality."""
        raw = np.asarray(raw)
        s = self.image_size
        single = (s, s, self.channels) if self.channels else (s, s)
        if raw.shape == single:
            raw = raw[None]
        expect = f"{np.dtype(self.dtype).name} array of shape {single} or (B, {', '.join(map(str, single))})"
        if raw.ndim != len(single) + 1 or raw.shape[1:] != single:
            raise ValueError(f"{self.name}: expected a {expect}, got shape {raw.shape}")
        if raw.dtype != self.dtype:
            raise ValueError(f"{self.name}: expected a {expect}, got dtype {raw.dtype}")
        if raw.shape[0] == 0:
            raise ValueError(f"{self.name}: got an empty batch")
        self._check_values(raw)
        return raw

    def _check_values(self, raw: np.ndarray) -> None:
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            raise ValueError(f"{self.name}: input contains NaN or infinite values")

    def to_input(self, raw: np.ndarray) -> torch.Tensor:
        """Checked raw batch → encoder input ``(B, C_in, H, W)`` float32 (int64 ``(B, H, W)`` for semseg)."""
        raise NotImplementedError

    def to_target(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        """Checked raw batch → tensors the loss compares the decoder output with."""
        raise NotImplementedError

    def to_raw(self, out: torch.Tensor) -> np.ndarray:
        """Decoder output ``(B, C_out, H, W)`` → raw batch in the contract's dtype."""
        raise NotImplementedError

    def to_picture(self, raw: np.ndarray) -> np.ndarray:
        """Raw batch → uint8 ``(B, H, W, 3)`` picture for previews."""
        raise NotImplementedError


def _channels_first(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()


def _gray(x: np.ndarray) -> np.ndarray:
    """(B, H, W) in [0, 1] → uint8 (B, H, W, 3)."""
    return np.repeat((np.clip(x, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


class RGBAdapter(ModalityAdapter):
    name, channels, dtype, in_channels, out_channels = "rgb", 3, np.uint8, 3, 3

    def to_input(self, raw: np.ndarray) -> torch.Tensor:
        return _channels_first(raw) / 127.5 - 1.0

    def to_target(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        return {"rgb": self.to_input(raw)}

    def to_raw(self, out: torch.Tensor) -> np.ndarray:
        x = ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    def to_picture(self, raw: np.ndarray) -> np.ndarray:
        return raw


class DepthAdapter(ModalityAdapter):
    name, channels, dtype, in_channels, out_channels = "depth", 0, np.float32, 1, 2

    def __init__(self, image_size: int, log_depth_mean: float, log_depth_std: float, sky_value: float) -> None:
        super().__init__(image_size)
        self.mean, self.std, self.sky_value = log_depth_mean, log_depth_std, sky_value

    def _check_values(self, raw: np.ndarray) -> None:
        super()._check_values(raw)
        if (raw < 0).any():
            raise ValueError(f"depth: expected metres >= 0 (0 = sky), got a minimum of {raw.min()}")

    def to_input(self, raw: np.ndarray) -> torch.Tensor:
        return self.to_target(raw)["depth"][:, None]

    def to_target(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        d = torch.from_numpy(np.ascontiguousarray(raw)).float()
        valid = d > 0
        norm = (torch.log(d.clamp_min(1e-6)) - self.mean) / self.std
        return {"depth": torch.where(valid, norm, torch.full_like(norm, self.sky_value)), "valid": valid.float()}

    def to_raw(self, out: torch.Tensor) -> np.ndarray:
        out = out.float()
        depth = torch.exp(out[:, 0] * self.std + self.mean)
        return torch.where(out[:, 1] > 0, depth, torch.zeros_like(depth)).cpu().numpy().astype(np.float32)

    def to_picture(self, raw: np.ndarray) -> np.ndarray:
        inv = np.where(raw > 0, 1.0 / np.maximum(raw, 1e-6), 0.0)
        return _gray(inv / max(float(inv.max()), 1e-6))


class NormalAdapter(ModalityAdapter):
    name, channels, dtype, in_channels, out_channels = "normal", 3, np.float32, 3, 3

    def _check_values(self, raw: np.ndarray) -> None:
        super()._check_values(raw)
        norm = np.linalg.norm(raw, axis=-1)
        bad = (norm > 1e-3) & (np.abs(norm - 1) > 1e-2)
        if bad.any():
            raise ValueError(f"normal: expected unit vectors or the zero vector (sky), got norm {norm[bad][0]:.3f}")

    def to_input(self, raw: np.ndarray) -> torch.Tensor:
        return _channels_first(raw)

    def to_target(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        n = self.to_input(raw)
        return {"normal": n, "valid": (n.norm(dim=1) > 0.5).float()}

    def to_raw(self, out: torch.Tensor) -> np.ndarray:
        out = out.float()
        length = out.norm(dim=1, keepdim=True)
        unit = torch.where(length > 0.5, out / length.clamp_min(1e-6), torch.zeros_like(out))
        return unit.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)

    def to_picture(self, raw: np.ndarray) -> np.ndarray:
        return ((raw + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


class SemsegAdapter(ModalityAdapter):
    name, channels, dtype, in_channels = "semseg", 0, np.uint8, 0

    def __init__(self, image_size: int, num_classes: int) -> None:
        super().__init__(image_size)
        if not 2 <= num_classes <= 256:
            raise ValueError(f"semseg: num_classes must be in [2, 256] (uint8 ids), got {num_classes}")
        self.num_classes = self.out_channels = num_classes
        rng = np.random.default_rng(0)
        self.palette = rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)
        self.palette[0] = 0

    def _check_values(self, raw: np.ndarray) -> None:
        if raw.max() >= self.num_classes:
            raise ValueError(
                f"semseg: class ids must be in [0, {self.num_classes}) (num_classes in the config), "
                f"got {int(raw.max())}"
            )

    def to_input(self, raw: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(raw)).long()

    def to_target(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        return {"semseg": self.to_input(raw)}

    def to_raw(self, out: torch.Tensor) -> np.ndarray:
        return out.argmax(dim=1).to(torch.uint8).cpu().numpy()

    def to_picture(self, raw: np.ndarray) -> np.ndarray:
        return self.palette[raw]


class EdgesAdapter(ModalityAdapter):
    name, channels, dtype, in_channels, out_channels = "edges", 0, np.uint8, 1, 1

    def _check_values(self, raw: np.ndarray) -> None:
        if not np.isin(raw, (0, 255)).all():
            raise ValueError(f"edges: expected values 0 or 255, got {sorted(set(np.unique(raw)) - {0, 255})[:5]}")

    def to_input(self, raw: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(raw)).float()[:, None] / 127.5 - 1.0

    def to_target(self, raw: np.ndarray) -> dict[str, torch.Tensor]:
        return {"edges": torch.from_numpy(np.ascontiguousarray(raw > 0)).float()}

    def to_raw(self, out: torch.Tensor) -> np.ndarray:
        return ((out[:, 0] > 0).to(torch.uint8) * 255).cpu().numpy()

    def to_picture(self, raw: np.ndarray) -> np.ndarray:
        return _gray(raw / 255.0)


def build_adapter(
    modality: str,
    image_size: int,
    *,
    num_classes: int = 8,
    log_depth_mean: float = math.log(4.0),
    log_depth_std: float = 1.0,
    sky_value: float = 3.0,
) -> ModalityAdapter:
    """The adapter for ``modality`` (one of :data:`MODALITIES`) at ``image_size``."""
    if modality == "rgb":
        return RGBAdapter(image_size)
    if modality == "depth":
        return DepthAdapter(image_size, log_depth_mean, log_depth_std, sky_value)
    if modality == "normal":
        return NormalAdapter(image_size)
    if modality == "semseg":
        return SemsegAdapter(image_size, num_classes)
    if modality == "edges":
        return EdgesAdapter(image_size)
    raise ValueError(f"unknown image modality {modality!r}; expected one of {', '.join(MODALITIES)}")
