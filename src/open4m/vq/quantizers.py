"""Quantizers: continuous latents ``(B, D, h, w)`` → discrete ids ``(B, h, w)`` and their codes.

Both quantizers share one interface, :class:`Quantizer`:

``forward(z) -> QuantizerOutput(z_q, ids, aux_loss, stats)`` with ``z`` of shape ``(B, D, h, w)``,
``z_q`` the quantized latent of the same shape (gradients pass straight through to ``z``),
``ids`` the code index per position ``(B, h, w)`` (int64), ``aux_loss`` a scalar added to the
training loss (zero for FSQ) and ``stats`` a few detached scalars for logging.
``codes_from_ids(ids) -> (B, D, h, w)`` is the inverse used when decoding tokens.

- :class:`CosineVQ`: nearest code by cosine similarity on l2-normalised latents and codes, codebook
  learned by exponential moving averages (van den Oord et al. 2017, "Neural Discrete Representation
  Learning", appendix; l2-normalised codes as in Yu et al. 2022, "Vector-quantized Image Modeling with
  Improved VQGAN"), dead codes restarted from random batch latents (Dhariwal et al. 2020, "Jukebox";
  Zeghidour et al. 2021, "SoundStream"). This is the quantizer of the official 4M tokenizers
  (OFFICIAL-4M-SPEC §6.3).
- :class:`FSQ`: finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
  Made Simple"): each latent channel is bounded and rounded to a few levels; the codebook is the
  implicit product grid, so there is nothing to learn and no auxiliary loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    """What every quantizer returns (shapes in the field comments)."""

    z_q: torch.Tensor  # (B, D, h, w) quantized latent, straight-through gradient to the input
    ids: torch.Tensor  # (B, h, w) int64 code indices in [0, codebook_size)
    aux_loss: torch.Tensor  # () scalar, zero when the quantizer has no auxiliary loss
    stats: dict[str, float]  # detached numbers for logging (batch usage, perplexity, restarts)


class Quantizer(nn.Module):
    """The shared interface; see the module docstring."""

    codebook_size: int
    dim: int

    def forward(self, z: torch.Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """``(B, h, w)`` int ids → ``(B, D, h, w)`` codes, exactly what ``forward`` outputs for them."""
        raise NotImplementedError

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}: expected latents (B, {self.dim}, h, w), got {tuple(z.shape)}")


def _usage_stats(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Fraction of the codebook used by ``ids`` and the perplexity of their histogram."""
    counts = torch.bincount(ids.flatten(), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return {"batch_usage": float((counts > 0).float().mean()), "perplexity": float(entropy.exp())}


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CosineVQ(Quantizer):
    """Cosine-similarity vector quantizer with an EMA codebook and dead-code restarts.

    Latents and codes are l2-normalised; each position takes the code of highest cosine similarity.
    In training, after quantizing with the current codebook, each used code moves towards the
    l2-normalised mean of the latents assigned to it
    (EMA with ``decay``; unused codes stay put), and a code whose EMA assignment count falls below
    ``dead_code_threshold`` is replaced by a random latent of the current batch. The codebook is
    initialised from batch latents on the first training step. The only loss is the commitment loss
    ``commitment_weight * MSE(normalised z, sg(code))``. Under ``torch.distributed`` the statistics are
    all-reduced and restarts broadcast from rank 0, so every rank keeps the same codebook.

    Buffers: ``initted`` (), ``cluster_size`` (K,), ``embed_sum`` (K, D), ``embed`` (K, D) unit rows.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        decay: float = 0.99,
        commitment_weight: float = 1.0,
        dead_code_threshold: float = 1.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if codebook_size < 2 or dim < 1:
            raise ValueError(f"CosineVQ: need codebook_size >= 2 and dim >= 1, got {codebook_size}, {dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"CosineVQ: decay must be in (0, 1), got {decay}")
        self.codebook_size, self.dim = codebook_size, dim
        self.decay, self.commitment_weight = decay, commitment_weight
        self.dead_code_threshold, self.eps = dead_code_threshold, eps
        embed = F.normalize(torch.randn(codebook_size, dim), dim=-1)
        self.register_buffer("initted", torch.tensor(False))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("embed", embed)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        self._check_latent(z)
        b, d, h, w = z.shape
        z = z.float()
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, d), dim=-1)  # (N, D)
        if self.training and not bool(self.initted):
            with torch.no_grad():
                self._init_codebook(flat)
        ids = (flat @ self.embed.t()).argmax(dim=-1)
        codes = self.embed[ids]  # (N, D), a copy: the updates below do not change it
        restarts = 0
        if self.training:
            with torch.no_grad():
                self._ema_update(flat, ids)
                restarts = self._restart_dead_codes(flat)
        aux = self.commitment_weight * F.mse_loss(flat, codes.detach()) if self.training else flat.new_zeros(())
        quantized = flat + (codes - flat).detach()
        z_q = quantized.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        ids = ids.reshape(b, h, w)
        stats = _usage_stats(ids, self.codebook_size)
        stats["restarts"] = float(restarts)
        return QuantizerOutput(z_q, ids, aux, stats)

    def codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed[ids].permute(0, 3, 1, 2).contiguous()

    def _sample_rows(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` random rows of ``flat`` (N, D), identical on every rank (rank 0's choice)."""
        rows = flat[torch.randint(0, flat.shape[0], (n,), device=flat.device)]
        if _is_distributed():
            dist.broadcast(rows, src=0)
        return rows

    def _init_codebook(self, flat: torch.Tensor) -> None:
        embed = self._sample_rows(flat, self.codebook_size)
        self.embed.copy_(embed)
        self.embed_sum.copy_(embed)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(True)

    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        onehot = F.one_hot(ids, self.codebook_size).type(flat.dtype)  # (N, K)
        counts = onehot.sum(0)  # (K,)
        sums = onehot.t() @ flat  # (K, D)
        if _is_distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        used = counts > 0
        target = F.normalize(sums, dim=-1)
        self.embed_sum[used] = self.embed_sum[used] * self.decay + target[used] * (1 - self.decay)
        self.embed.copy_(F.normalize(self.embed_sum, dim=-1))

    def _restart_dead_codes(self, flat: torch.Tensor) -> int:
        dead = self.cluster_size < self.dead_code_threshold
        n = int(dead.sum())
        if n == 0:
            return 0
        new = self._sample_rows(flat, n)
        self.embed[dead] = new
        self.embed_sum[dead] = new
        # A fresh code gets the average assignment count, so it has time to win latents before it
        # can be declared dead again.
        tokens = flat.shape[0] * (dist.get_world_size() if _is_distributed() else 1)
        self.cluster_size[dead] = tokens / self.codebook_size
        return n


class FSQ(Quantizer):
    """Finite scalar quantization (Mentzer et al. 2023).

    Channel ``i`` of the latent is bounded to ``(-(L_i - 1)/2, (L_i - 1)/2)`` with a shifted ``tanh``
    and rounded with a straight-through gradient, giving ``L_i`` levels; the code is the vector of
    levels rescaled to ``[-1, 1]``. The id is the mixed-radix number of the levels, so
    ``codebook_size = prod(levels)`` and ``dim = len(levels)``. No auxiliary loss, no learned state.
    """

    def __init__(self, levels: list[int], eps: float = 1e-3) -> None:
        super().__init__()
        if not levels or any(int(n) < 2 for n in levels):
            raise ValueError(f"FSQ: levels must be a non-empty list of integers >= 2, got {levels}")
        self.levels_list = [int(n) for n in levels]
        self.codebook_size, self.dim, self.eps = math.prod(self.levels_list), len(self.levels_list), eps
        levels_t = torch.tensor(self.levels_list, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1] + self.levels_list[:-1]), dim=0)
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) → values in (-(L-1)/2, (L-1)/2) per channel; even L are offset by 1/2."""
        half_l = (self.levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        self._check_latent(z)
        zl = z.float().permute(0, 2, 3, 1)  # (B, h, w, D)
        bounded = self._bound(zl)
        rounded = bounded + (bounded.round() - bounded).detach()
        half_width = torch.div(self.levels, 2, rounding_mode="floor")
        ids = ((rounded.detach() + half_width) * self.basis).sum(-1).round().long()  # (B, h, w)
        z_q = (rounded / half_width).permute(0, 3, 1, 2).contiguous()
        return QuantizerOutput(z_q, ids, z_q.new_zeros(()), _usage_stats(ids, self.codebook_size))

    def codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        digits = torch.div(ids.unsqueeze(-1), self.basis, rounding_mode="floor") % self.levels.long()
        half_width = torch.div(self.levels, 2, rounding_mode="floor")
        return ((digits.float() - half_width) / half_width).permute(0, 3, 1, 2).contiguous()


def build_quantizer(kind: str, *, codebook_size: int, dim: int, fsq_levels: list[int], **vq_kwargs) -> Quantizer:
    """``"vq"`` → :class:`CosineVQ` (``codebook_size`` codes of ``dim``), ``"fsq"`` → :class:`FSQ` (``fsq_levels``)."""
    if kind == "vq":
        return CosineVQ(codebook_size, dim, **vq_kwargs)
    if kind == "fsq":
        return FSQ(fsq_levels)
    raise ValueError(f"unknown quantizer {kind!r}; expected 'vq' or 'fsq'")
