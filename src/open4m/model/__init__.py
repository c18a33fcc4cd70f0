"""The 4M model: configuration, modules, and the official checkpoint format."""

from open4m.model.checkpoint import CheckpointMismatch, from_pretrained, save_pretrained
from open4m.model.config import FourMConfig, preset, preset_names
from open4m.model.fourm import DecoderInput, EncoderInput, FourM
from open4m.model.vit import FourMViT

__all__ = [
    "CheckpointMismatch", "DecoderInput", "EncoderInput", "FourM", "FourMConfig", "FourMViT", "from_pretrained",
    "preset", "preset_names", "save_pretrained",
]
