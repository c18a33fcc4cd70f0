"""Tiny tokenizer settings shared by the vq tests: 16 px images, 4x4 token grids, narrow nets."""

from open4m.vq.autoencoder import TokenizerConfig
from open4m.vq.train import TrainConfig


def tiny_config(modality: str = "rgb", **kw) -> TokenizerConfig:
    base = dict(modality=modality, image_size=16, patch_size=4, codebook_size=64, latent_dim=8,
                channels=[8, 16, 32], res_blocks=[0, 1, 1])
    return TokenizerConfig(**{**base, **kw})


def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=4, batch_size=8, lr=3e-3, warmup_steps=2, checkpoint_every=2, preview_every=2, threads=1)
    return TrainConfig(**{**base, **kw})
