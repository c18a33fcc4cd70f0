"""Turning logits into tokens: top-k / top-p filtering and sampling with per-row generators.

Every random draw takes a ``torch.Generator`` per batch row, so a row's result depends only on its
own seed (not on the batch it sits in) and the global RNG is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

ZERO_TEMPERATURE = 1e-10


def filter_logits(logits: torch.Tensor, top_k: int | float = 0, top_p: float = 0.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf (a new tensor). logits (..., V).

    ``top_k``: an int count, or a float fraction of V (the official convention); 0 = off.
    ``top_p``: keep the smallest set of most likely tokens whose probability reaches ``top_p``
    (the first token above the threshold is kept); 0 = off.
    """
    v = logits.shape[-1]
    if top_k:
        k = int(top_k * v) if isinstance(top_k, float) else int(top_k)
        k = max(1, min(k, v))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p and top_p > 0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


def make_generators(seed: int | Sequence[int] | None, batch_size: int, device: torch.device | str = "cpu") -> list:
    """One ``torch.Generator`` per row: ``seed`` (rows get seed, seed+1, ...), a list of per-row seeds, or
    None (fresh random seeds drawn from the OS, not from the global RNG)."""
    if seed is None:
        seeds = [int.from_bytes(os.urandom(8), "little") >> 1 for _ in range(batch_size)]
    elif isinstance(seed, int):
        seeds = [seed + i for i in range(batch_size)]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != batch_size:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch_size}")
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def sample(
    logits: torch.Tensor, temperature: float, generators: Sequence[torch.Generator], top_k: int | float = 0,
    top_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per position. logits (B, N, V) → (tokens (B, N) int64, confidence (B, N) float32).

    Temperature ~0 takes the argmax. The confidence is the probability of the chosen token under
    ``softmax(filtered / T)`` (at T=0 under ``softmax(logits)``); MaskGIT keeps the most confident.
    The official sampler reports confidence 1 for every argmax token, which leaves the order of
    temperature-0 MaskGIT to ``topk`` tie-breaking; the true probability makes it well defined.
    """
    logits = logits.float()
    if abs(temperature) < ZERO_TEMPERATURE:
        probs = logits.softmax(dim=-1)
        conf, tokens = probs.max(dim=-1)
        return tokens, conf
    probs = (filter_logits(logits, top_k, top_p) / temperature).softmax(dim=-1)
    b, n, v = probs.shape
    # Inverse-CDF draw (one uniform per position from the row's generator): the same distribution as
    # torch.multinomial, several times faster for MaskGIT's (N, V) draws. right=True never lands on a
    # zero-probability token (its cumulative sum equals its predecessor's).
    cdf = probs.cumsum(dim=-1)
    u = torch.stack([torch.rand(n, 1, generator=g, device=probs.device) for g in generators[:b]])
    tokens = torch.searchsorted(cdf, u * cdf[..., -1:], right=True)[..., 0].clamp_(max=v - 1)
    return tokens, probs.gather(-1, tokens[..., None])[..., 0]


def random_order(available: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Random priorities (B, N) float: available positions (True) in a random order per row, others +inf last."""
    keys = torch.stack([torch.rand(available.shape[1], generator=g, device=available.device) for g in generators])
    return keys.masked_fill(~available, float("inf"))
