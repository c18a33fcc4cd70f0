"""FourM: the 4M encoder-decoder (embed → pick inputs → encode → decode targets → logits / loss).

One forward pass, following OFFICIAL-4M-SPEC §2.5 and computing the same function as the
official ``FourM.forward``:

1. **Encoder tokens.** Input positions of all input modalities, in batch order, are ranked valid
   first (stable) and the first ``num_encoder_tokens`` kept; only those are embedded. Slots left
   over are padding (zeros, masked as keys).
2. **Decoder tokens.** Target positions likewise, up to ``num_decoder_tokens``: image targets are the
   mask token, sequence targets are the previous token (teacher forcing), each plus position and
   modality embeddings.
3. Encoder blocks over ``tokens + emb``; context = ``decoder_proj_context(encoder output) + emb``.
4. Decoder blocks with the 4M self-attention mask (image targets attend within their modality,
   sequence targets causally, modalities apart) and cross-attention to the context.
5. One logits head per target modality on its rows; cross-entropy averaged per modality (official
   ``'mod'``) or weighted per token (official ``'token'``). Each head and its loss run as one step
   (:mod:`open4m.model.head_loss`) that, in training, builds their gradients chunk by chunk.

Shapes: B batch, n encoder slots, m decoder slots, D width.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from open4m import modalities
from open4m.batch import validate_batch
from open4m.model.config import FourMConfig
from open4m.model.embeddings import TokenEncoderEmbedding, decoder_embedding, encoder_embedding
from open4m.model.head_loss import linear_cross_entropy
from open4m.model.layers import Block, DecoderBlock, LayerNorm, mask_to_bias


@dataclass
class EncoderInput:
    """The encoder's slots.

    tokens, emb (B, n, D); mask (B, n) bool, True = padding; mod_ids (B, n) int16, -1 = padding.
    """

    tokens: torch.Tensor
    emb: torch.Tensor
    mask: torch.Tensor
    mod_ids: torch.Tensor


@dataclass
class DecoderInput:
    """The decoder's slots.

    tokens, emb (B, m, D); mask (B, m) bool, True = padding; mod_ids (B, m) int16, -1 = padding;
    target_ids (B, m) int64, 0 at padding; attention_mask (B, m, m) bool, True = blocked.
    """

    tokens: torch.Tensor
    emb: torch.Tensor
    mask: torch.Tensor
    mod_ids: torch.Tensor
    target_ids: torch.Tensor
    attention_mask: torch.Tensor


def _rank_valid_first(invalid: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (B, keep) of the first ``keep`` slots once valid ones are moved first (stable)."""
    order = torch.sort(invalid.to(torch.uint8), dim=1, stable=True).indices
    return order[:, :keep]


# Rows of the logits matrices in bf16 on the CPU are padded to a multiple of this (see _logit_rows_multiple).
BF16_CPU_LOGIT_ROWS_MULTIPLE = 64


def _logit_rows_multiple(y: torch.Tensor) -> int:
    """How many rows each modality's logits matrix is padded to a multiple of in the loss: 1 (no padding), or
    :data:`BF16_CPU_LOGIT_ROWS_MULTIPLE` for bf16 on the CPU.

    There oneDNN builds (JIT-compiles) a kernel for every new matrix shape, ~1-3 ms each, 2-3x the product
    itself at these sizes; the number of target rows of each modality changes with every masked batch, so
    without padding the heads' products (forward and both backward products, every modality) met a new shape
    nearly every step. Padded, the shapes repeat and the kernels are reused. The padding rows repeat a real
    row and are cut off before the cross-entropy, so the loss and gradients are those of the unpadded rows.
    """
    bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if y.device.type == "cpu" and (bf16 or y.dtype == torch.bfloat16) and torch.is_grad_enabled():
        return BF16_CPU_LOGIT_ROWS_MULTIPLE
    return 1


class FourM(nn.Module):
    """The 4M model. Build it from a :class:`FourMConfig`; names of submodules match the official ones."""

    def __init__(self, config: FourMConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        dim = c.dim
        norm_layer = _norm_layer(c.norm_bias)

        inputs = [name for name in c.domains_in if modalities.get(name).has_encoder]
        self.encoder_embeddings = nn.ModuleDict({name: encoder_embedding(modalities.get(name), dim) for name in inputs})
        self.decoder_embeddings = nn.ModuleDict(
            {name: decoder_embedding(modalities.get(name), dim, c.tie_decoder_embeddings) for name in c.domains_out}
        )
        if c.share_modality_embeddings:
            for name in self.encoder_embeddings.keys() & self.decoder_embeddings.keys():
                self.decoder_embeddings[name].mod_emb = self.encoder_embeddings[name].mod_emb

        total = c.encoder_depth + c.decoder_depth
        if c.shared_drop_path:
            dpr_enc = _linspace(c.drop_path_rate_encoder, total)[: c.encoder_depth]
            dpr_dec = _linspace(c.drop_path_rate_decoder, total)[c.encoder_depth :]
        else:
            dpr_enc = _linspace(c.drop_path_rate_encoder, c.encoder_depth)
            dpr_dec = _linspace(c.drop_path_rate_decoder, c.decoder_depth)
        block_args = block_kwargs(c)
        self.encoder = nn.ModuleList([Block(drop_path=dpr_enc[i], **block_args) for i in range(c.encoder_depth)])
        self.encoder_norm = norm_layer(dim)
        self.decoder_proj_context = nn.Linear(dim, dim)
        self.decoder = nn.ModuleList([DecoderBlock(drop_path=dpr_dec[i], **block_args) for i in range(c.decoder_depth)])
        self.decoder_norm = norm_layer(dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        if c.num_register_tokens > 0:
            self.register_tokens = nn.Parameter(torch.zeros(1, c.num_register_tokens, dim))
        else:
            self.register_tokens = None
        self.init_weights()

    # ------------------------------------------------------------------ setup
    def init_weights(self, std: float = 0.02) -> None:
        """MAE-style init, as the official model: xavier linears (q/k/v treated apart), N(0, std) embeddings."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if "qkv" in name:
                    bound = (6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1])) ** 0.5
                    nn.init.uniform_(m.weight, -bound, bound)
                elif "kv" in name:
                    bound = (6.0 / (m.weight.shape[0] // 2 + m.weight.shape[1])) ** 0.5
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, LayerNorm):
                nn.init.ones_(m.weight)
                m.bias.data.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
        for name, p in self.named_parameters():
            if name.endswith("mod_emb") or name.endswith("pos_emb") or name in ("mask_token", "register_tokens"):
                nn.init.normal_(p, std=std)

    @property
    def modality_ids(self) -> dict[str, int]:
        return {name: modalities.get(name).id for name in {*self.encoder_embeddings, *self.decoder_embeddings}}

    # ------------------------------------------------------------------ encoder side
    def embed_encoder(self, batch: dict, num_encoder_tokens: int) -> EncoderInput:
        """Pick and embed the encoder tokens of ``batch`` (see module docstring, step 1)."""
        names = [name for name in batch if name in self.encoder_embeddings]
        if not names:
            raise ValueError(
                f"the batch has no input modality of this model; batch: {sorted(batch)}, "
                f"model inputs: {sorted(self.encoder_embeddings)}"
            )
        masks = [batch[name]["input_mask"] for name in names]
        invalid = torch.cat(masks, dim=1)
        keep = _rank_valid_first(invalid, num_encoder_tokens)
        b, n = keep.shape
        dim = self.config.dim
        pad = invalid.gather(1, keep)
        flat_keep, flat_pad = keep.flatten(), pad.flatten()
        bounds = torch.tensor([m.shape[1] for m in masks], device=keep.device).cumsum(0)
        owner = torch.bucketize(flat_keep, bounds, right=True)  # which modality each slot comes from
        device = keep.device
        dtype = self.mask_token.dtype
        tokens = torch.zeros(b * n, dim, device=device, dtype=dtype)
        emb = torch.zeros(b * n, dim, device=device, dtype=dtype)
        mod_ids = torch.full((b * n,), -1, dtype=torch.int16, device=device)
        start = 0
        for k, name in enumerate(names):
            slots = ((owner == k) & ~flat_pad).nonzero().squeeze(1)
            if slots.numel():
                module = self.encoder_embeddings[name]
                rows, local = slots // n, flat_keep[slots] - start
                pos = module.position_ids(masks[k])[rows, local]
                tokens = tokens.index_copy(0, slots, module.content(batch[name]["tensor"], rows, local).to(dtype))
                emb = emb.index_copy(0, slots, module.pos_mod(pos))
                mod_ids[slots] = modalities.get(name).id
            start += masks[k].shape[1]
        enc = EncoderInput(tokens.view(b, n, dim), emb.view(b, n, dim), pad, mod_ids.view(b, n))
        if self.register_tokens is not None:
            r = self.register_tokens.shape[1]
            enc = EncoderInput(
                torch.cat([self.register_tokens.expand(b, -1, -1), enc.tokens], dim=1),
                torch.cat([enc.emb.new_zeros(b, r, dim), enc.emb], dim=1),
                torch.cat([pad.new_zeros(b, r), pad], dim=1),
                torch.cat([enc.mod_ids.new_full((b, r), -1), enc.mod_ids], dim=1),
            )
        return enc

    def encode(self, enc: EncoderInput) -> torch.Tensor:
        """Encoder blocks and final norm: (B, n, D) → (B, n, D)."""
        x = enc.tokens + enc.emb
        bias = mask_to_bias(enc.mask[:, None, None, :], x.dtype) if enc.mask.any() else None
        for block in self.encoder:
            x = self._run(block, x, bias)
        return self.encoder_norm(x)

    def context(self, encoded: torch.Tensor, enc: EncoderInput) -> torch.Tensor:
        """Decoder context: ``decoder_proj_context(encoded) + emb`` (B, n, D)."""
        return self.decoder_proj_context(encoded) + enc.emb

    # ------------------------------------------------------------------ decoder side
    def embed_decoder(self, batch: dict, num_decoder_tokens: int, order: list[str] | None = None) -> DecoderInput:
        """Pick and embed the decoder tokens of ``batch`` (see module docstring, step 2).

        Target modalities are laid out in batch order, or in ``order`` when given (the official model
        shuffles them; with its default masks only the slot order changes, not the results).
        """
        names = [name for name in (order or batch) if name in self.decoder_embeddings and name in batch]
        parts = []  # per modality: (invalid (B, L), codes (B, L))
        for name in names:
            d = batch[name]
            tm = d["target_mask"]
            codes = d["decoder_attention_mask"]
            if modalities.get(name).kind == "sequence":
                parts.append((tm[:, 1:] | tm[:, :-1], codes[:, :-1]))
            else:
                parts.append((tm, codes))
        if not parts:
            raise ValueError(
                f"the batch has no target modality of this model; batch: {sorted(batch)}, "
                f"model targets: {sorted(self.decoder_embeddings)}"
            )
        invalid = torch.cat([p[0] for p in parts], dim=1)
        keep = _rank_valid_first(invalid, num_decoder_tokens)
        b, m = keep.shape
        dim = self.config.dim
        pad = invalid.gather(1, keep)
        codes = torch.cat([p[1] for p in parts], dim=1).gather(1, keep)
        flat_keep, flat_pad = keep.flatten(), pad.flatten()
        bounds = torch.tensor([p[0].shape[1] for p in parts], device=keep.device).cumsum(0)
        owner = torch.bucketize(flat_keep, bounds, right=True)
        ids_table = torch.tensor([modalities.get(name).id for name in names], dtype=torch.int16, device=keep.device)
        slot_mod = ids_table[owner].view(b, m)  # modality of every slot, padding included (for the sep mask)
        dtype = self.mask_token.dtype
        tokens = torch.zeros(b * m, dim, device=keep.device, dtype=dtype)
        emb = torch.zeros(b * m, dim, device=keep.device, dtype=dtype)
        targets = torch.zeros(b * m, dtype=torch.long, device=keep.device)
        start = 0
        for k, name in enumerate(names):
            slots = ((owner == k) & ~flat_pad).nonzero().squeeze(1)
            if slots.numel():
                module = self.decoder_embeddings[name]
                ids = batch[name]["tensor"]
                rows, local = slots // m, flat_keep[slots] - start
                pos = module.position_ids(batch[name]["target_mask"])[rows, local]
                if modalities.get(name).kind == "sequence":
                    content = module.content(ids, rows, local).to(dtype)
                    targets[slots] = ids[rows, local + 1].long()
                else:
                    content = self.mask_token[0].expand(slots.numel(), -1)
                    targets[slots] = ids.reshape(b, -1)[rows, local].long()
                tokens = tokens.index_copy(0, slots, content)
                emb = emb.index_copy(0, slots, module.pos_mod(pos))
            start += parts[k][0].shape[1]
        attention = self.decoder_attention_mask(codes, slot_mod)
        mod_ids = slot_mod.masked_fill(pad, -1)
        return DecoderInput(tokens.view(b, m, dim), emb.view(b, m, dim), pad, mod_ids, targets.view(b, m), attention)

    def decoder_attention_mask(self, codes: torch.Tensor, slot_mod: torch.Tensor) -> torch.Tensor:
        """Decoder self-attention mask (B, m, m), True = blocked, from compressed codes (B, m).

        ``blocked[i, j] = j >= cumsum(codes)[i]`` (or plain causal), and with ``decoder_sep_mask``
        also between slots of different modalities.
        """
        b, m = codes.shape
        arange = torch.arange(m, device=codes.device)
        if self.config.decoder_causal_mask:
            blocked = (arange[None, :] > arange[:, None]).expand(b, m, m)
        else:
            blocked = arange[None, None, :] >= codes.cumsum(dim=1)[:, :, None]
        if self.config.decoder_sep_mask:
            blocked = blocked | (slot_mod[:, :, None] != slot_mod[:, None, :])
        return blocked

    def decode(self, dec: DecoderInput, context: torch.Tensor, enc: EncoderInput) -> torch.Tensor:
        """Decoder blocks and final norm: (B, m, D) → (B, m, D)."""
        y = dec.tokens + dec.emb
        sa_bias = mask_to_bias(dec.attention_mask[:, None], y.dtype)
        xa_bias = mask_to_bias(enc.mask[:, None, None, :], y.dtype) if enc.mask.any() else None
        for block in self.decoder:
            y = self._run(block, y, context, sa_bias, xa_bias)
        return self.decoder_norm(y)

    def incremental_decoder(self, context: torch.Tensor, enc: EncoderInput, max_tokens: int):
        """An :class:`open4m.model.incremental.IncrementalDecoder` for token-by-token decoding of up to
        ``max_tokens`` causal tokens against ``context`` (B, n, D); its steps equal :meth:`decode` on the whole
        prefix under a causal self-attention mask, for the new row."""
        from open4m.model.incremental import IncrementalDecoder

        return IncrementalDecoder(self, context, enc.mask, max_tokens)

    def _run(self, block: nn.Module, *args) -> torch.Tensor:
        if self.config.use_act_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    # ------------------------------------------------------------------ heads and loss
    def logits(self, y: torch.Tensor, name: str) -> torch.Tensor:
        """Logits of modality ``name`` for decoder outputs y (..., D) → (..., V)."""
        return self.decoder_embeddings[name](y)

    def loss(self, y: torch.Tensor, dec: DecoderInput, names: Iterable[str], loss_type: str = "mod"):
        """Cross-entropy of the decoder outputs ``y`` (B, m, D) against ``dec.target_ids``.

        ``loss_type="mod"``: mean over ``names`` of each modality's mean loss (a modality without
        targets adds 0 and still counts, as in the official code). ``"token"``: weighted by the
        number of logits of each modality (the official weighting). Returns (total, {name: loss}).
        """
        if loss_type not in ("mod", "modality", "token"):
            raise ValueError(f"loss_type must be 'mod' or 'token', got {loss_type!r}")
        flat_y = y.reshape(-1, y.shape[-1])
        flat_mod = dec.mod_ids.flatten()
        flat_tgt = dec.target_ids.flatten()
        multiple = _logit_rows_multiple(flat_y)
        losses, weights = {}, {}
        for name in names:
            rows = (flat_mod == modalities.get(name).id).nonzero().squeeze(1)
            n = rows.numel()
            if n == 0:
                losses[name] = flat_y.new_zeros((), dtype=torch.float32)
                weights[name] = 0
                continue
            if n % multiple:  # repeat the first row; the extra logits are computed and then left out
                rows = torch.cat([rows, rows[:1].expand(multiple - n % multiple)])
            head = self.decoder_embeddings[name].to_logits.weight
            # head + cross-entropy in one step; with gradients needed they are built chunk by chunk here and no
            # (n, V) tensor is kept for backward (see head_loss)
            losses[name] = linear_cross_entropy(flat_y.index_select(0, rows), head,
                                                flat_tgt.index_select(0, rows[:n]), n)
            weights[name] = n * head.shape[0]
        if not losses:
            raise ValueError("no target modality to compute a loss for")
        if loss_type == "token":
            total_weight = sum(weights.values())
            if total_weight == 0:
                total = sum(losses.values())
            else:
                total = sum(losses[k] * weights[k] for k in losses) / total_weight
        else:
            total = sum(losses.values()) / len(losses)
        return total, losses

    # ------------------------------------------------------------------ entry points
    def forward(self, batch: dict, num_encoder_tokens: int, num_decoder_tokens: int, loss_type: str = "mod"):
        """Training forward: returns ``(loss, {modality: loss})`` for a :mod:`open4m.batch` ModDict."""
        dec, y = self.forward_decoder_outputs(batch, num_encoder_tokens, num_decoder_tokens)
        names = [name for name in batch if name in self.decoder_embeddings]
        return self.loss(y, dec, names, loss_type)

    def forward_decoder_outputs(self, batch: dict, num_encoder_tokens: int, num_decoder_tokens: int):
        """Run encoder and decoder; return the decoder slots and outputs ``(DecoderInput, y (B, m, D))``."""
        self.check_batch(batch, num_encoder_tokens, num_decoder_tokens)
        enc = self.embed_encoder(batch, num_encoder_tokens)
        dec = self.embed_decoder(batch, num_decoder_tokens)
        encoded = self.encode(enc)
        y = self.decode(dec, self.context(encoded, enc), enc)
        return dec, y

    def forward_logits(self, batch: dict, num_encoder_tokens: int, num_decoder_tokens: int) -> dict:
        """Logits of every target head on every decoder slot: {name: (B, m, V)} (the official ``return_logits``)."""
        _, y = self.forward_decoder_outputs(batch, num_encoder_tokens, num_decoder_tokens)
        return {name: self.logits(y, name) for name in batch if name in self.decoder_embeddings}

    def check_batch(self, batch: dict, num_encoder_tokens: int, num_decoder_tokens: int) -> None:
        """Validate a batch for this model (see :func:`open4m.batch.validate_batch`)."""
        for label, value in (("num_encoder_tokens", num_encoder_tokens), ("num_decoder_tokens", num_decoder_tokens)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{label} must be a positive int, got {value!r}")
        validate_batch(batch, needs_targets=[n for n in batch if n in self.decoder_embeddings])

    def use_sparse_embedding_grads(self, enabled: bool = True) -> list[str]:
        """Let the encoder's token embeddings return sparse gradients (the looked-up rows only).

        A dense gradient of a (V, D) table is allocated at the very end of backward, when the blocks'
        gradients already sit between the freed activations; for 30k-token vocabularies (46 MB each at
        D=384) these allocations find no hole and grow the heap. A sparse gradient is a few rows; the
        optimizer makes it dense one table at a time. Needs an optimizer that takes sparse gradients --
        :class:`open4m.optim.AdamW` / :func:`open4m.optim.adamw` / :class:`open4m.optim.StepInBackward`
        do, giving the same update bit for bit; torch's fused AdamW does not -- and clipping through
        :func:`open4m.optim.clip_grad_norm_`. Returns the names of the switched embeddings.
        """
        names = []
        for name, module in self.encoder_embeddings.items():
            if isinstance(module, TokenEncoderEmbedding):
                module.sparse_grad = enabled
                names.append(name)
        return names

    # ------------------------------------------------------------------ freezing
    def freeze_encoder(self, include_embeddings: bool = True) -> None:
        """Stop gradients to the encoder blocks and norm (and the encoder embeddings)."""
        _set_grad([self.encoder, self.encoder_norm] + ([self.encoder_embeddings] if include_embeddings else []), False)

    def freeze_decoder(self, include_embeddings: bool = True) -> None:
        """Stop gradients to the decoder blocks, norm, context projection (and decoder embeddings/heads)."""
        parts = [self.decoder, self.decoder_norm, self.decoder_proj_context]
        _set_grad(parts + ([self.decoder_embeddings] if include_embeddings else []), False)

    def freeze_all_but_embeddings(self, names: Iterable[str]) -> None:
        """Train only the encoder/decoder embeddings of ``names`` (e.g. a newly added modality)."""
        names = set(names)
        unknown = names - set(self.encoder_embeddings) - set(self.decoder_embeddings)
        if unknown:
            raise ValueError(f"freeze_all_but_embeddings: the model has no modality {sorted(unknown)}")
        _set_grad([self], False)
        for table in (self.encoder_embeddings, self.decoder_embeddings):
            _set_grad([table[n] for n in names if n in table], True)

    def unfreeze_all(self) -> None:
        _set_grad([self], True)


def block_kwargs(c: FourMConfig) -> dict:
    """Keyword arguments shared by every encoder and decoder block of a model with config ``c``."""
    return dict(
        dim=c.dim, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, proj_bias=c.proj_bias,
        mlp_bias=c.mlp_bias, act_layer=c.activation(), norm_layer=_norm_layer(c.norm_bias), gated_mlp=c.gated_mlp,
        qk_norm=c.qk_norm,
    )


def _linspace(end: float, n: int) -> list[float]:
    """n evenly spaced stochastic-depth rates from 0 to ``end`` (the usual decay rule)."""
    return [end * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def _set_grad(modules: list[nn.Module], flag: bool) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(flag)


def _norm_layer(bias: bool):
    def make(dim: int) -> LayerNorm:
        return LayerNorm(dim, eps=1e-6, bias=bias)

    return make
