"""`ImageTokenizer`: the public face of a trained image tokenizer.

The interface every open4m tokenizer shares::

    tok = ImageTokenizer.load("tokenizers/rgb")
    tokens = tok.encode(sample["rgb"])      # (H, W, 3) uint8 or (B, H, W, 3) → int64 (B, h, w)
    rgb = tok.decode(tokens)                # (B, h, w) ids → (B, H, W, 3) uint8
    tok.save("somewhere")                   # config.json + model.safetensors
    tok.vocab_size, tok.modality, tok.token_grid   # 1024, "tok_rgb@64", (16, 16)

Raw arrays follow the world sample contract (:mod:`open4m.vq.adapters`); bad input raises a
``ValueError`` naming the modality and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from open4m.atomic import write_atomic, write_json_atomic
from open4m.vq.autoencoder import Autoencoder, TokenizerConfig

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT = "open4m-image-tokenizer/1"


class ImageTokenizer:
    """A trained (or freshly initialised) autoencoder plus its modality adapter; numpy in, numpy out.

    Args:
        config: the architecture and modality settings.
        model: the network; a new randomly initialised one when omitted.
        batch_size: images per forward pass in :meth:`encode` / :meth:`decode`.
    """

    def __init__(self, config: TokenizerConfig, model: Autoencoder | None = None, batch_size: int = 64) -> None:
        self.config = config
        self.adapter = config.adapter()
        self.model = (model or Autoencoder(config)).eval()
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def modality(self) -> str:
        """The registry name of the tokens, e.g. ``"tok_rgb@64"``."""
        return f"tok_{self.config.modality}@{self.config.image_size}"

    @property
    def token_grid(self) -> tuple[int, int]:
        """Tokens per image as ``(h, w)``."""
        return (self.config.grid_size, self.config.grid_size)

    @torch.no_grad()
    def encode(self, raw: np.ndarray) -> np.ndarray:
        """One raw image or a batch (see :mod:`open4m.vq.adapters`) → int64 tokens ``(B, h, w)``."""
        raw = self.adapter.check(raw)
        self.model.eval()
        ids = [
            self.model.quantize(self.adapter.to_input(raw[i : i + self.batch_size]).to(self.device)).ids.cpu()
            for i in range(0, len(raw), self.batch_size)
        ]
        return torch.cat(ids).numpy()

    @torch.no_grad()
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens ``(h, w)`` or ``(B, h, w)`` of any integer dtype → the raw batch ``(B, H, W[, C])``."""
        tokens = self.check_tokens(tokens)
        self.model.eval()
        ids = torch.from_numpy(tokens)
        out = [
            self.adapter.to_raw(self.model.decode_ids(ids[i : i + self.batch_size].to(self.device)))
            for i in range(0, len(ids), self.batch_size)
        ]
        return np.concatenate(out)

    @torch.no_grad()
    def reconstruct(self, raw: np.ndarray) -> np.ndarray:
        """``decode(encode(raw))``."""
        return self.decode(self.encode(raw))

    def check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Validate a token grid; return it batched ``(B, h, w)``."""
        tokens = np.asarray(tokens)
        h, w = self.token_grid
        if tokens.shape == (h, w):
            tokens = tokens[None]
        if tokens.ndim != 3 or tokens.shape[1:] != (h, w) or tokens.shape[0] == 0:
            raise ValueError(f"{self.modality}: expected a token grid of shape ({h}, {w}) or (B, {h}, {w}), "
                             f"got {tokens.shape}")
        if tokens.dtype.kind not in "iu":
            raise ValueError(f"{self.modality}: expected integer token ids, got dtype {tokens.dtype}")
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise ValueError(f"{self.modality}: token ids must be in [0, {self.vocab_size}), "
                             f"got [{tokens.min()}, {tokens.max()}]")
        return tokens.astype(np.int64)

    def save(self, directory: str | Path, half: bool = False) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (config also in its metadata) atomically.

        ``half`` stores floating-point weights as float16 (half the size, for shipping); :meth:`load`
        reads them back into float32.
        """
        directory = Path(directory)
        config = {"format": FORMAT, **self.config.to_dict()}
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        metadata = {"config": json.dumps(config)}
        write_atomic(directory / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata=metadata))
        write_json_atomic(directory / CONFIG_FILE, config)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ImageTokenizer:
        """Read a tokenizer written by :meth:`save`; weights must match the config exactly."""
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"image tokenizer {directory}: missing {name} (expected {CONFIG_FILE} and "
                                        f"{WEIGHTS_FILE}, as written by ImageTokenizer.save)")
        config = json.loads((directory / CONFIG_FILE).read_text())
        if config.pop("format", None) != FORMAT:
            raise ValueError(f"image tokenizer {directory}: {CONFIG_FILE} is not an {FORMAT} config")
        tokenizer = cls(TokenizerConfig.from_dict(config))
        state = load_file(directory / WEIGHTS_FILE)
        try:
            tokenizer.model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"image tokenizer {directory}: {WEIGHTS_FILE} does not match {CONFIG_FILE}: {err}") \
                from None
        return tokenizer
