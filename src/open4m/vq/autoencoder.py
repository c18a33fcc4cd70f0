"""The image tokenizer network: conv encoder → low-dim codes → quantizer → conv decoder.

A small convolutional VQ-VAE (van den Oord et al. 2017) sized for CPU training at 64 px: the
encoder halves the resolution ``log2(patch_size)`` times, so one token covers a ``patch_size²``
patch, and projects to ``latent_dim`` channels (``len(fsq_levels)`` for FSQ); the decoder mirrors it.
The official 4M tokenizers use ViT encoders and diffusion decoders at 224 px (OFFICIAL-4M-SPEC §6);
this one keeps their quantizer and losses and trades the rest for speed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from open4m.vq.adapters import MODALITIES, ModalityAdapter, build_adapter
from open4m.vq.quantizers import Quantizer, QuantizerOutput, build_quantizer


def dataclass_from_dict(cls: type, d: dict, what: str):
    """``cls(**d)``, with a clear error naming ``what`` and the known keys when ``d`` has unknown ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)


@dataclass
class TokenizerConfig:
    """Everything needed to rebuild a tokenizer (saved as its ``config.json``).

    ``channels`` and ``res_blocks`` list the width and the number of residual blocks at each resolution,
    from full size down to the token grid; each has ``log2(patch_size) + 1`` entries.
    """

    modality: str = "rgb"
    image_size: int = 64
    patch_size: int = 4
    quantizer: str = "vq"  # "vq" (cosine EMA) or "fsq"
    codebook_size: int = 1024  # VQ only; FSQ's is prod(fsq_levels)
    latent_dim: int = 32  # VQ only; FSQ's is len(fsq_levels)
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    vq_decay: float = 0.99
    commitment_weight: float = 1.0
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    res_blocks: list[int] = field(default_factory=lambda: [0, 1, 2])
    num_classes: int = 8  # semseg
    embed_dim: int = 16  # semseg: class-id embedding width
    log_depth_mean: float = math.log(4.0)  # depth normalisation of log(metres)
    log_depth_std: float = 1.0
    sky_value: float = 3.0  # depth input value on sky pixels

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown image modality {self.modality!r}; expected one of {', '.join(MODALITIES)}")
        levels = math.log2(self.patch_size) if self.patch_size > 0 else -1
        if levels != int(levels) or self.image_size % self.patch_size:
            raise ValueError(
                f"{self.modality} tokenizer: patch_size must be a power of two dividing image_size, "
                f"got patch_size={self.patch_size}, image_size={self.image_size}"
            )
        for name in ("channels", "res_blocks"):
            if len(getattr(self, name)) != int(levels) + 1:
                raise ValueError(
                    f"{self.modality} tokenizer: {name} needs log2(patch_size) + 1 = {int(levels) + 1} entries "
                    f"(one per resolution), got {getattr(self, name)}"
                )

    @property
    def vocab_size(self) -> int:
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" else self.codebook_size

    @property
    def code_dim(self) -> int:
        return len(self.fsq_levels) if self.quantizer == "fsq" else self.latent_dim

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        return dataclass_from_dict(cls, d, "tokenizer config")

    def adapter(self) -> ModalityAdapter:
        return build_adapter(
            self.modality, self.image_size, num_classes=self.num_classes, log_depth_mean=self.log_depth_mean,
            log_depth_std=self.log_depth_std, sky_value=self.sky_value,
        )


class ResBlock(nn.Module):
    """``x + conv3x3(silu(conv3x3(silu(x))))`` at constant width ``(B, C, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class Encoder(nn.Module):
    """``(B, C_in, H, W)`` → ``(B, code_dim, H/P, W/P)``: stem, then residual blocks and stride-2 convs."""

    def __init__(self, in_channels: int, channels: list[int], res_blocks: list[int], code_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        for i, width in enumerate(channels):
            layers += [ResBlock(width) for _ in range(res_blocks[i])]
            if i + 1 < len(channels):
                layers.append(nn.Conv2d(width, channels[i + 1], 4, stride=2, padding=1))
        layers += [nn.SiLU(), nn.Conv2d(channels[-1], code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """``(B, code_dim, h, w)`` → ``(B, C_out, h·P, w·P)``: the encoder's mirror with nearest upsampling."""

    def __init__(self, code_dim: int, channels: list[int], res_blocks: list[int], out_channels: int) -> None:
        super().__init__()
        widths, blocks = channels[::-1], res_blocks[::-1]
        layers: list[nn.Module] = [nn.Conv2d(code_dim, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            layers += [ResBlock(width) for _ in range(blocks[i])]
            if i + 1 < len(widths):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, widths[i + 1], 3, padding=1)]
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Autoencoder(nn.Module):
    """Encoder, quantizer and decoder for one modality, built from a :class:`TokenizerConfig`.

    Semseg ids ``(B, H, W)`` are first embedded to ``embed_dim`` channels (``class_embed``); every
    other modality enters as ``(B, C_in, H, W)`` floats from its adapter.
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        adapter = config.adapter()
        in_channels = adapter.in_channels
        if config.modality == "semseg":
            self.class_embed = nn.Embedding(config.num_classes, config.embed_dim)
            in_channels = config.embed_dim
        self.encoder = Encoder(in_channels, config.channels, config.res_blocks, config.code_dim)
        self.quantizer: Quantizer = build_quantizer(
            config.quantizer, codebook_size=config.codebook_size, dim=config.latent_dim,
            fsq_levels=config.fsq_levels, decay=config.vq_decay, commitment_weight=config.commitment_weight,
        )
        self.decoder = Decoder(config.code_dim, config.channels, config.res_blocks, adapter.out_channels)

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        """Adapter input → ``(B, C, H, W)`` float (class ids are looked up in ``class_embed``)."""
        if self.config.modality == "semseg":
            return self.class_embed(x).permute(0, 3, 1, 2)
        return x

    def quantize(self, x: torch.Tensor) -> QuantizerOutput:
        """Adapter input → the quantizer's output on the encoded latent ``(B, D, h, w)``."""
        return self.quantizer(self.encoder(self.embed_input(x)))

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` ids → decoder output ``(B, C_out, H, W)``."""
        return self.decoder(self.quantizer.codes_from_ids(ids))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Adapter input → (decoder output ``(B, C_out, H, W)``, quantizer output)."""
        q = self.quantize(x)
        return self.decoder(q.z_q), q
