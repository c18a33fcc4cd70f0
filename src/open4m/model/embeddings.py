"""Per-modality embeddings of the 4M encoder and decoder.

Each module turns one modality's batch tensor into token content vectors and position +
modality embeddings. Unlike the official modules, which embed every position of every modality
and then keep a few, these embed only the positions the model keeps: the model calls

- ``content(tensor, b, i)`` → ``(n, D)`` for the tokens at batch rows ``b`` and positions ``i``;
- ``position_ids(mask)`` → ``(B, L)`` position ids (sequences count only unmasked tokens);
- ``pos_mod(pos)`` → ``(n, D)`` position embedding + modality embedding.

Parameter and buffer names (``token_emb``, ``pos_emb``, ``mod_emb``, ``proj``, ``emb_proj``,
``to_logits``) and shapes match the official checkpoints (OFFICIAL-4M-SPEC §2.3, §3.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from open4m.modalities import SEQUENCE_POS_EMB_ROWS, Modality


def sincos_1d(length: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos table ``(1, length, dim)``: ``[sin(p w_k), cos(p w_k)]``, ``w_k = 10000^(-k/(dim/2))``."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos embeddings need an even dim, got {dim}")
    pos = torch.arange(length, dtype=torch.float32)
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2.0))
    out = torch.einsum("p,k->pk", pos, omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)[None]


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table ``(1, h*w, dim)`` in row-major token order.

    The first half of the channels encodes the row and the second half the column, each as
    ``[sin, cos]`` with ``w_k = 10000^(-k/(dim/4))`` (the official layout, OFFICIAL-4M-SPEC §2.2).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embeddings need dim divisible by 4, got {dim}")
    # The official grid is meshgrid(arange(w), arange(h), indexing='ij') flattened: a = n // h, b = n % h.
    grid_a, grid_b = torch.meshgrid(
        torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim / 4.0))
    out_a = torch.einsum("n,k->nk", grid_a.flatten(), omega)
    out_b = torch.einsum("n,k->nk", grid_b.flatten(), omega)
    return torch.cat([torch.sin(out_a), torch.cos(out_a), torch.sin(out_b), torch.cos(out_b)], dim=1)[None]


def valid_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position of each unmasked token among the unmasked ones; 0 at masked slots.

    mask (B, L) bool, True = masked → (B, L) int64.
    """
    pos = (~mask).long().cumsum(dim=1) - 1
    return pos.masked_fill_(mask, 0)


class _Embedding(nn.Module):
    """Shared parts: the position table and the modality embedding."""

    def __init__(self, modality: Modality, dim: int) -> None:
        super().__init__()
        self.modality = modality
        self.dim = dim
        self.mod_emb = nn.Parameter(torch.zeros(1, 1, dim))
        if modality.is_image:
            g = modality.grid_size
            if modality.sincos_pos_emb:
                self.register_buffer("pos_emb", sincos_2d(g, g, dim))
            else:
                self.pos_emb = nn.Parameter(torch.zeros(1, g * g, dim))
        else:
            if modality.pos_max_length > SEQUENCE_POS_EMB_ROWS:
                raise ValueError(
                    f"modality {modality.name!r}: max length {modality.pos_max_length} exceeds the "
                    f"{SEQUENCE_POS_EMB_ROWS} sin-cos positions"
                )
            self.register_buffer("pos_emb", sincos_1d(SEQUENCE_POS_EMB_ROWS, dim))

    def pos_mod(self, pos: torch.Tensor) -> torch.Tensor:
        """Position ids (n,) → position + modality embedding (n, D)."""
        return self.pos_emb[0].index_select(0, pos) + self.mod_emb[0]

    def position_ids(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) position ids for a modality mask (True = not used by this side)."""
        if self.modality.is_image:
            return torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)
        return valid_position_ids(mask)


class TokenEncoderEmbedding(_Embedding):
    """Discrete tokens (image grids or sequences) into the encoder."""

    def __init__(self, modality: Modality, dim: int) -> None:
        super().__init__(modality, dim)
        padding_idx = 0 if modality.kind == "sequence" else None
        self.token_emb = nn.Embedding(modality.vocab_size, dim, padding_idx=padding_idx)
        self.sparse_grad = False  # see FourM.use_sparse_embedding_grads

    def content(self, tensor: torch.Tensor, b: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """tensor (B, L) or (B, h, w) ids; b, i (n,) → (n, D)."""
        ids = tensor.reshape(tensor.shape[0], -1)[b, i]
        return F.embedding(ids, self.token_emb.weight, self.token_emb.padding_idx, sparse=self.sparse_grad)


class PixelEncoderEmbedding(_Embedding):
    """RGB pixels (B, C, H, W), cut into P×P patches flattened in (ph, pw, c) order, then projected."""

    def __init__(self, modality: Modality, dim: int) -> None:
        super().__init__(modality, dim)
        p = modality.patch_size
        self.proj = nn.Linear(modality.num_channels * p * p, dim, bias=False)

    def patches(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, N, P*P*C) in row-major patch order, channel fastest."""
        b, c, h, w = image.shape
        p = self.modality.patch_size
        x = image.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def content(self, tensor: torch.Tensor, b: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.proj(self.patches(tensor)[b, i])


class VectorEncoderEmbedding(_Embedding):
    """Sequences of float vectors (e.g. T5 caption embeddings (B, L, E)) projected to D."""

    def __init__(self, modality: Modality, dim: int) -> None:
        super().__init__(modality, dim)
        self.emb_proj = nn.Linear(modality.embedding_dim, dim)

    def content(self, tensor: torch.Tensor, b: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.emb_proj(tensor[b, i])


class TokenDecoderEmbedding(_Embedding):
    """Decoder side of a token modality: input embedding (teacher forcing) and the logits head.

    ``token_emb`` feeds sequence decoders; image decoders take the model's mask token instead and
    keep ``token_emb`` only for checkpoint compatibility. With ``tie=True`` the head ``to_logits``
    shares its weight with ``token_emb`` (the official trainer's choice).
    """

    def __init__(self, modality: Modality, dim: int, tie: bool = False) -> None:
        super().__init__(modality, dim)
        padding_idx = 0 if modality.kind == "sequence" else None
        self.token_emb = nn.Embedding(modality.vocab_size, dim, padding_idx=padding_idx)
        self.to_logits = nn.Linear(dim, modality.vocab_size, bias=False)
        if tie:
            self.to_logits.weight = self.token_emb.weight

    def content(self, tensor: torch.Tensor, b: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        ids = tensor.reshape(tensor.shape[0], -1)[b, i]
        weight = self.token_emb.weight
        if weight is self.to_logits.weight and torch.is_grad_enabled() and weight.requires_grad:
            # Tied: the head gives this weight a dense (V, D) gradient anyway, so the lookup's few rows go in as
            # a sparse gradient that autograd adds into the head's in place, instead of a second dense (V, D)
            # tensor (46 MB for a 30k vocabulary at D=384) that exists only to be added. Same sum, same dense .grad.
            return F.embedding(ids, weight, self.token_emb.padding_idx, sparse=True)
        return self.token_emb(ids)

    def position_ids(self, mask: torch.Tensor) -> torch.Tensor:
        pos = super().position_ids(mask)
        if not self.modality.is_image:
            pos = pos.masked_fill(pos >= self.modality.pos_max_length, 0)
        return pos

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (..., D) → logits (..., V)."""
        return self.to_logits(y)


def encoder_embedding(modality: Modality, dim: int) -> nn.Module:
    """The encoder embedding module for ``modality``."""
    if modality.kind == "pixels":
        return PixelEncoderEmbedding(modality, dim)
    if modality.kind == "embeddings":
        return VectorEncoderEmbedding(modality, dim)
    return TokenEncoderEmbedding(modality, dim)


def decoder_embedding(modality: Modality, dim: int, tie: bool = False) -> nn.Module:
    """The decoder embedding module (inputs + logits head) for ``modality``."""
    if not modality.has_decoder:
        raise ValueError(f"modality {modality.name!r} ({modality.kind}) cannot be a decoder target")
    return TokenDecoderEmbedding(modality, dim, tie)
