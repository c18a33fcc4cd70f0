"""Shared pieces of the generation tests: a small random 4M model with varied outputs and prompt builders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from open4m.batch import make_batch
from open4m.model import FourM, preset

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
DOMAINS = ["tok_rgb@224", "tok_depth@224", "caption", "det"]


def text_tokenizer():
    """The official 30k WordPiece tokenizer (skips when the fixture is absent)."""
    from open4m.text import TextTokenizer

    path = FIXTURES / "official-text-tokenizer-wordpiece-30k.json"
    if not path.exists():
        pytest.skip("official text tokenizer fixture not available (../shared/fixtures)")
    return TextTokenizer.load(path)


def small_model(seed: int = 0, dim: int = 32) -> FourM:
    """A 2+2-layer model whose embeddings and heads are scaled up so greedy outputs vary by prompt."""
    torch.manual_seed(seed)
    model = FourM(preset("tiny_gelu", DOMAINS, DOMAINS, dim=dim, encoder_depth=2, decoder_depth=2, num_heads=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "emb" in name or "to_logits" in name:
                p.mul_(20)
    return model.eval()


def caption_state(tok, rgb: torch.Tensor, det_lengths: list[int], stop: list[int] | None = None, length: int = 24):
    """State for captioning from rgb tokens (B, 196) and det inputs of different lengths per row.

    The caption target is ``[S_1] [PAD]... <stop>`` (stop defaults to ``[S_2]``) within ``length`` slots.
    """
    b = rgb.shape[0]
    n = 2 * (256 + 1)
    cap = torch.zeros(b, n, dtype=torch.long)
    cap[:, 0] = cap[:, 1] = tok.sentinel_id(1)
    cap[:, length] = torch.tensor(stop) if stop is not None else tok.sentinel_id(2)
    cap_in = torch.zeros(b, n, dtype=torch.bool)
    cap_in[:, 0] = True
    cap_tgt = torch.zeros(b, n, dtype=torch.bool)
    cap_tgt[:, 1 : length + 1] = True
    det = torch.zeros(b, n, dtype=torch.long)
    det_in = torch.zeros(b, n, dtype=torch.bool)
    gen = torch.Generator().manual_seed(1)
    for i, k in enumerate(det_lengths):
        det[i, :k] = torch.randint(4300, 20000, (k,), generator=gen)
        det_in[i, :k] = True
    return make_batch(
        {"tok_rgb@224": rgb, "caption": cap, "det": det},
        inputs={"tok_rgb@224": "all", "caption": cap_in, "det": det_in},
        targets={"caption": cap_tgt},
    )


def image_state(rgb: torch.Tensor, target: str = "tok_depth@224", known: torch.Tensor | None = None,
                given: torch.Tensor | None = None):
    """State for generating an image target from rgb tokens; ``known`` (B, 196) bool marks given tokens."""
    b = rgb.shape[0]
    tokens = given if given is not None else torch.zeros(b, 196, dtype=torch.long)
    known = known if known is not None else torch.zeros(b, 196, dtype=torch.bool)
    return make_batch({"tok_rgb@224": rgb, target: tokens.masked_fill(~known, 0)},
                      inputs={"tok_rgb@224": "all", target: known}, targets={target: ~known})


def moved_image(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Images (B, H, W[, C]) moved dx columns right and dy rows down, the vacated ones repeating the edge (what
    ``detect(shifts=...)`` decodes), built independently of the library."""
    h, w = images.shape[1:3]
    padded = np.pad(images, [(0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx))] + [(0, 0)] * (images.ndim - 3),
                    mode="edge")
    return padded[:, abs(dy) - dy: abs(dy) - dy + h, abs(dx) - dx: abs(dx) - dx + w]
