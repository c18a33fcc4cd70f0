"""The 4M encoder as an RGB ViT backbone, for transfer (the official ``FMViT``).

It keeps only ``encoder_embeddings.<rgb>``, ``encoder`` and ``encoder_norm`` of a 4M model, under the
same names, so the encoder part of any 4M checkpoint loads into it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from open4m import modalities
from open4m.model.checkpoint import (
    WEIGHTS_NAME,
    _load_config,
    config_from_dict,
    load_state_dict_strict,
    read_safetensors,
)
from open4m.model.config import FourMConfig
from open4m.model.embeddings import PixelEncoderEmbedding
from open4m.model.fourm import FourM, _norm_layer, block_kwargs
from open4m.model.layers import Block


class FourMViT(nn.Module):
    """RGB image (B, 3, H, W) → features (B, N, D) from the 4M encoder (N = (H/P)·(W/P) patches)."""

    def __init__(self, config: FourMConfig, rgb: str | None = None) -> None:
        super().__init__()
        rgb = rgb or _pixel_modality(config)
        self.rgb = rgb
        self.config = config
        self.encoder_embeddings = nn.ModuleDict({rgb: PixelEncoderEmbedding(modalities.get(rgb), config.dim)})
        self.encoder = nn.ModuleList([Block(**block_kwargs(config)) for _ in range(config.encoder_depth)])
        self.encoder_norm = _norm_layer(config.norm_bias)(config.dim)
        if config.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, config.dim))
        else:
            self.register_tokens = None

    def forward(self, image: torch.Tensor, pool: bool = False) -> torch.Tensor:
        """image (B, 3, H, W), normalised → features (B, N, D), or (B, D) averaged when ``pool``."""
        module = self.encoder_embeddings[self.rgb]
        mod = modalities.get(self.rgb)
        if image.ndim != 4 or tuple(image.shape[1:]) != (mod.num_channels, mod.image_size, mod.image_size):
            raise ValueError(
                f"modality {self.rgb!r}: expected an image (B, {mod.num_channels}, {mod.image_size}, "
                f"{mod.image_size}), got shape {tuple(image.shape)}"
            )
        x = module.proj(module.patches(image)) + module.pos_emb + module.mod_emb
        if self.register_tokens is not None:
            x = torch.cat([self.register_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.encoder:
            x = block(x)
        x = self.encoder_norm(x)
        if self.register_tokens is not None:
            x = x[:, self.register_tokens.shape[1]:]
        return x.mean(dim=1) if pool else x

    @classmethod
    def from_fourm(cls, model: FourM, rgb: str | None = None) -> FourMViT:
        """A backbone sharing nothing with ``model`` but holding copies of its encoder weights."""
        vit = cls(model.config, rgb)
        own = vit.state_dict()
        vit.load_state_dict({k: v for k, v in model.state_dict().items() if k in own}, strict=True)
        return vit

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, rgb: str | None = None) -> FourMViT:
        """Load the encoder part of a 4M model directory (strict on the keys the backbone needs)."""
        from pathlib import Path

        directory = Path(path)
        config = config_from_dict(_load_config(directory), str(directory))
        vit = cls(config, rgb)
        state, _ = read_safetensors(directory / WEIGHTS_NAME)
        own = vit.state_dict()
        load_state_dict_strict(vit, {k: v for k, v in state.items() if k in own}, str(directory / WEIGHTS_NAME))
        return vit


def _pixel_modality(config: FourMConfig) -> str:
    names = [n for n in config.domains_in if modalities.get(n).kind == "pixels"]
    if not names:
        raise ValueError(f"the model has no pixel input modality (domains_in: {config.domains_in}); no RGB backbone")
    return names[0]
