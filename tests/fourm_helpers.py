"""Helpers shared by the model tests (not a test module): a small caption -> depth 4M model and its batch."""

import torch

from open4m import modalities
from open4m.batch import make_batch
from open4m.model import FourM, preset

DOMAINS = ["tok_depth@64", "caption@64"]


def caption_depth_model(dim: int, depth: int = 2, **overrides) -> FourM:
    """A seeded tiny_gelu model over DOMAINS with tied heads, in eval mode."""
    torch.manual_seed(0)
    config = preset("tiny_gelu", domains_in=DOMAINS, domains_out=DOMAINS, dim=dim, encoder_depth=depth,
                    decoder_depth=depth, num_heads=2, tie_decoder_embeddings=True, **overrides)
    return FourM(config).eval()


def caption_to_depth_batch() -> dict:
    """Two rows: a random caption (64 ids) as input, every depth token (256) as target; same every call."""
    g = torch.Generator().manual_seed(1)
    depth = torch.randint(0, modalities.get("tok_depth@64").vocab_size, (2, 256), generator=g)
    caption = torch.randint(5, 200, (2, 64), generator=g)
    return make_batch({"tok_depth@64": depth, "caption@64": caption}, inputs={"caption@64": "all"},
                      targets={"tok_depth@64": "all"})


def depth_logits(model: FourM) -> torch.Tensor:
    """The model's depth logits (2, 256, V) for :func:`caption_to_depth_batch`, without gradients."""
    with torch.no_grad():
        return model.forward_logits(caption_to_depth_batch(), 64, 256)["tok_depth@64"]
