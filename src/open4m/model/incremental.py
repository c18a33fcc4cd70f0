"""Token-by-token decoding of the 4M decoder (the autoregressive sampler's inner loop).

:class:`IncrementalDecoder` computes, for one new causal token per row and step, exactly what
:meth:`open4m.model.FourM.decode` computes for the last row of the whole prefix under a causal
self-attention mask, but it only runs the new token through the blocks:

- the cross-attention keys/values of the encoder context are computed once, at the start;
- each block's self-attention keys/values live in buffers of fixed size (R, H, max_tokens, hd),
  written in place at step t (no re-allocation, no concatenation per token);
- the work per token is a few dozen small kernels, so at batch 1 on a CPU their fixed cost decides
  the speed. In bfloat16 on the CPU (under ``torch.autocast("cpu", dtype=torch.bfloat16)`` or with
  bf16 weights) on a CPU with native bf16 units each linear layer runs on a weight matrix packed once
  for oneDNN's bf16 kernels (an AVX2-only CPU has none: oneDNN refuses to pack there and the plain bf16
  weights are used), with the GELU fused into ``fc1`` and the logits head packed on first use (packed
  weights are kept for the next generation call while the weights stay unchanged): PyTorch's plain bf16
  ``linear`` re-lays-out the weight on every call, which made bf16 decoding ~3x slower per token than fp32.
  In float32 on the CPU a layer with more outputs than inputs (``fc1``, ``qkv``, the logits heads) keeps a
  transposed (D_in, D_out) copy of its weight for calls of at most :data:`TRANSPOSED_MAX_ROWS` rows: a
  matrix-vector product streams the weight from memory (the decoder's weights do not fit in the caches), and
  MKL reads the (D_in, D_out) layout about twice as fast as PyTorch's (D_out, D_in) one (30000 x 384 head:
  18 vs 7-9 GB/s on this project's 2-core CPU; the layers with fewer outputs than inputs are faster as they
  are). Elsewhere (CUDA, a torch build without oneDNN) the module weights are used as they are.
- Greedy steps in float32 on an x86 CPU (:meth:`IncrementalDecoder.greedy`) take the argmax of a large
  logits head without reading its float32 weight: an int8 copy (a quarter of the bytes) gives every logit to
  within a bound computed per row and vocabulary entry (:class:`_ScreenedHead`), and only the entries whose
  upper bound reaches the best lower bound (and each row's few largest, for the token's probability) are
  computed in float32. The token is the float32 argmax; a step streams ~35 % fewer bytes (the tiny preset's
  30000 x 384 caption head is half of what a token reads in float32).

The arithmetic follows autocast: the residual stream, the norms and the softmax statistics stay in
float32 and the linear layers and attention run in bf16, so results match the autocast reference
to bf16 rounding (see ``tests/model/test_incremental.py``).

Shapes: R rows (batch x guidance branches), n context slots, D width, H heads, hd = D / H.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from open4m.model.layers import GatedMlp, LayerNorm, mask_to_bias
from open4m.runtime import native_bf16


def compute_dtype(module: nn.Module, device: torch.device) -> torch.dtype:
    """The dtype the linear layers of ``module`` compute in on ``device``: autocast's when it is enabled
    there, else the weights' own dtype."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(module.parameters()).dtype


def _packing_available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether bf16 weights can be packed for oneDNN: its packed bf16 path needs native bf16 units (AVX-512 or
    AVX-NE-CONVERT); on an AVX2-only CPU ``_reorder_linear_weight`` refuses, so the plain bf16 weight is used."""
    return (device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and native_bf16("cpu"))


# A float32 CPU call with at most this many rows uses a wide layer's transposed weight copy; more rows make a
# matrix-matrix product, which MKL runs as fast (or faster) on the layer's own layout.
TRANSPOSED_MAX_ROWS = 16

# Prepared (cast, packed or transposed) weights of linear layers, reused by later decoders while the layer's weight and
# bias are the same tensors, unmodified (PyTorch bumps a tensor's ``_version`` on every in-place change).
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _version_key(layer: nn.Linear, dtype: torch.dtype, packed: bool) -> tuple:
    tensors = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    return (dtype, packed, *[(t.data_ptr(), t._version) for t in tensors])


class _Linear:
    """One linear layer in the compute dtype: a packed oneDNN weight (bf16 on CPU), the plain weight, and for a
    wide float32 CPU layer also its transposed copy (used for calls of few rows, see the module docstring).

    ``fuse_gelu`` folds an exact (erf) GELU into the layer's output. Cast, packed or transposed copies are
    kept for the next decoder of the same, unchanged layer (:data:`_PREPARED`)."""

    def __init__(self, layer: nn.Linear, dtype: torch.dtype, packed: bool, fuse_gelu: bool = False) -> None:
        self.fuse_gelu = fuse_gelu
        self.packed = packed
        key = _version_key(layer, dtype, packed)
        cached = _PREPARED.get(layer)
        if cached is not None and cached[0] == key:
            self.weight, self.bias, self.weight_t = cached[1]
            return
        weight = layer.weight.detach()
        self.bias = None if layer.bias is None else layer.bias.detach().to(dtype)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), 1) if packed else weight.to(dtype)
        wide = weight.shape[0] > weight.shape[1]
        self.weight_t = (self.weight.t().contiguous() if not packed and wide and dtype == torch.float32
                         and weight.device.type == "cpu" else None)
        if packed or dtype != weight.dtype or self.weight_t is not None:
            _PREPARED[layer] = (key, (self.weight, self.bias, self.weight_t))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D_in) in the compute dtype → (..., D_out)."""
        if self.packed:
            if self.fuse_gelu:
                return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "gelu", [], "none")
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        rows = x.numel() // x.shape[-1]
        if self.weight_t is not None and rows <= TRANSPOSED_MAX_ROWS:
            flat = x.reshape(rows, x.shape[-1])
            out = flat @ self.weight_t if self.bias is None else torch.addmm(self.bias, flat, self.weight_t)
            out = out.view(*x.shape[:-1], out.shape[-1])
        else:
            out = F.linear(x, self.weight, self.bias)
        return F.gelu(out) if self.fuse_gelu else out


# Heads with at least this many entries are screened by greedy float32 steps; smaller ones are cheap to read.
SCREEN_MIN_VOCAB = 4096
# A screened step also computes the float32 logits of each row's this many largest screened entries, so that the
# token's probability is exact up to the rest of the softmax's mass.
SCREEN_EXACT_TOP = 64
# Unit roundoff of bfloat16 (8 significant bits) and float32 (24).
_BF16_U, _FP32_U = 2.0**-8, 2.0**-24

# Screens of logits heads, reused while the head's weight is unchanged (as :data:`_PREPARED`).
_SCREENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _screening_available(dtype: torch.dtype, device: torch.device, dim: int) -> bool:
    """Whether greedy steps screen their heads: float32 on an x86 CPU with AVX2 / AVX-512 kernels for
    ``aten._weight_int8pack_mm``, whose vector loops read the width in whole blocks (a multiple of 32 here)."""
    return (dtype == torch.float32 and device.type == "cpu" and dim % 32 == 0
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            and hasattr(torch.ops.aten, "_weight_int8pack_mm"))


class _ScreenedHead:
    """Exact greedy tokens of a float32 logits head ``layer`` (V, D) from an int8 screen.

    The weight is quantized once per row (``q_j`` int8, ``c_j`` a bf16 scale: ``d_j = q_j c_j``, a quarter of
    the float32 bytes) and ``aten._weight_int8pack_mm`` gives the screen ``s = xb d^T`` for the bf16 rounding
    ``xb`` of a row ``x`` (float32 accumulation; some builds round ``d_j`` to bf16 first; bf16 output). It
    differs from the float32 logit ``l_j = x . w_j`` by at most

        ``|x - xb| |w_j| + |xb| (r_j + D u32 (|w_j| + r_j)) + 2 u16 |s_j|``,

    ``r_j = |w_j - d_j| + |d_j - bf16(d_j)|`` (Cauchy-Schwarz on the rounding of x and of w_j, the float32
    accumulation, the bf16 output; the norms per row are computed once). Every entry whose upper bound
    reaches the largest lower bound is computed in float32 from the weight's rows, so the argmax among them is
    the argmax of all V logits (up to float32 rounding: those dot products run in another kernel than the
    full head's). The returned probability of the token takes the float32 logits of those candidates and of
    each row's :data:`SCREEN_EXACT_TOP` largest screened entries, and the screen's values for the rest: only
    that remainder of the softmax's mass is off, each entry by at most its bound (~0.1 nats for layer-normed
    rows). Nearly exact for a trained model's peaked distributions; ~1e-2 relative for an untrained one's
    flat ones."""

    def __init__(self, layer: nn.Linear) -> None:
        weight = layer.weight.detach().float()
        self.weight = weight
        self.bias = None if layer.bias is None else layer.bias.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
        self.quantized = (weight / scale.float()[:, None]).round_().clamp_(-128, 127).to(torch.int8)
        self.scale = scale
        dequantized = self.quantized.float() * scale.float()[:, None]
        residual = (weight - dequantized).norm(dim=1) + (dequantized - dequantized.bfloat16().float()).norm(dim=1)
        self.norm = weight.norm(dim=1)
        self.residual = residual + weight.shape[1] * _FP32_U * (self.norm + residual)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, D) float32 → (tokens (R,) int64, probability of each token (R,) float32)."""
        xb = x.to(torch.bfloat16).contiguous()  # a fresh, aligned row-major buffer, as the kernel needs
        screen = torch.ops.aten._weight_int8pack_mm(xb, self.quantized, self.scale).float()  # (R, V)
        rounded = xb.float()
        x_error = (x - rounded).norm(dim=1, keepdim=True)
        bound = (x_error * self.norm).addcmul_(rounded.norm(dim=1, keepdim=True), self.residual)
        bound.add_(screen.abs(), alpha=2 * _BF16_U)
        if self.bias is not None:
            screen += self.bias
        best_lower = (screen - bound).amax(dim=1, keepdim=True)
        chosen = (screen + bound) >= best_lower  # (R, V): every entry that may be the largest
        top = screen.topk(min(SCREEN_EXACT_TOP, screen.shape[1]), dim=1).indices  # most of the softmax's mass
        chosen.scatter_(1, top, True)
        candidates = chosen.any(dim=0).nonzero()[:, 0]  # (C,) ascending
        exact = F.linear(x, self.weight.index_select(0, candidates),
                         None if self.bias is None else self.bias.index_select(0, candidates))  # (R, C)
        best, k = exact.max(dim=1)
        screen.index_copy_(1, candidates, exact)
        prob = (screen - best[:, None]).exp_().sum(dim=1).reciprocal_()
        return candidates[k], prob


def _norm(norm: LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """The block's LayerNorm in float32 (as autocast runs it)."""
    bias = norm.bias if norm.has_bias else None
    return F.layer_norm(x.float(), norm.weight.shape, norm.weight.float(), None if bias is None else bias.float(),
                        norm.eps)


class _Block:
    """One :class:`open4m.model.layers.DecoderBlock` prepared for incremental decoding."""

    def __init__(self, block: nn.Module, context: torch.Tensor, rows: int, max_tokens: int, dtype: torch.dtype,
                 packed: bool) -> None:
        self.block = block
        self.dtype = dtype
        sa, xa = block.self_attn, block.cross_attn
        self.heads = sa.num_heads
        mlp = block.mlp
        exact_gelu = isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"
        gated = isinstance(mlp, GatedMlp)
        fuse = exact_gelu and not gated
        self.qkv = _Linear(sa.qkv, dtype, packed)
        self.sa_proj = _Linear(sa.proj, dtype, packed)
        self.q = _Linear(xa.q, dtype, packed)
        self.xa_proj = _Linear(xa.proj, dtype, packed)
        self.fc1 = _Linear(mlp.fc1, dtype, packed, fuse_gelu=fuse)
        self.fc2 = _Linear(mlp.fc2, dtype, packed)
        self.fc3 = _Linear(mlp.fc3, dtype, packed) if gated else None
        self.act = None if fuse else mlp.act
        with torch.autocast(context.device.type, dtype=dtype, enabled=dtype != torch.float32):
            k, v = block.cross_kv(context)
        self.cross_k, self.cross_v = k.to(dtype), v.to(dtype)
        hd = k.shape[-1]
        self.k = torch.empty(rows, self.heads, max_tokens, hd, dtype=dtype, device=context.device)
        self.v = torch.empty_like(self.k)

    def __call__(self, y: torch.Tensor, t: int, xa_bias: torch.Tensor | None) -> torch.Tensor:
        """y (R, 1, D) float32 residual stream at step t → (R, 1, D)."""
        block, dtype, h = self.block, self.dtype, self.heads
        r, _, d = y.shape
        qkv = self.qkv(_norm(block.norm1, y).to(dtype)).view(r, 3, h, 1, d // h)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        if block.self_attn.qk_norm:
            q, k = block.self_attn.q_norm(q).to(dtype), block.self_attn.k_norm(k).to(dtype)
        self.k[:, :, t] = k[:, :, 0]
        self.v[:, :, t] = v[:, :, 0]
        a = F.scaled_dot_product_attention(q, self.k[:, :, : t + 1], self.v[:, :, : t + 1])
        y = y + self.sa_proj(a.reshape(r, 1, d))
        q = self.q(_norm(block.query_norm, y).to(dtype)).view(r, h, 1, d // h)
        if block.cross_attn.qk_norm:
            q = block.cross_attn.q_norm(q).to(dtype)
        a = F.scaled_dot_product_attention(q, self.cross_k, self.cross_v, attn_mask=xa_bias)
        y = y + self.xa_proj(a.reshape(r, 1, d))
        x = _norm(block.norm2, y).to(dtype)
        hidden = self.fc1(x)
        if self.act is not None:
            hidden = self.act(hidden)
        if self.fc3 is not None:
            hidden = hidden * self.fc3(x)
        return y + self.fc2(hidden)


class IncrementalDecoder:
    """Decode causal tokens one step at a time against a fixed encoder context.

    Args:
        model: the :class:`open4m.model.FourM` (its decoder blocks, final norm and logits heads are used).
        context: the decoder context (R, n, D), ``model.context(model.encode(enc), enc)``.
        context_mask: (R, n) bool, True = padding slot the decoder may not attend (``enc.mask``).
        max_tokens: the most steps that will be decoded (size of the self-attention buffers).

    The compute dtype is autocast's when autocast is enabled on the context's device at construction,
    else the weights' dtype; :meth:`step` and :meth:`logits` may run outside the autocast region.
    """

    def __init__(self, model: nn.Module, context: torch.Tensor, context_mask: torch.Tensor, max_tokens: int) -> None:
        if context.dim() != 3 or context_mask.shape != context.shape[:2]:
            raise ValueError(f"context must be (R, n, D) with a (R, n) mask, got {tuple(context.shape)} and "
                             f"{tuple(context_mask.shape)}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        device = context.device
        self.model = model
        self.dtype = compute_dtype(model, device)
        self.packed = _packing_available(self.dtype, device)
        self.max_tokens = max_tokens
        self.t = 0
        rows = context.shape[0]
        self.blocks = [_Block(b, context, rows, max_tokens, self.dtype, self.packed) for b in model.decoder]
        self.xa_bias = mask_to_bias(context_mask[:, None, None, :], self.dtype) if context_mask.any() else None
        self.heads: dict[str, _Linear] = {}
        self.screens: dict[str, _ScreenedHead] = {}
        self.screening = _screening_available(self.dtype, device, context.shape[-1])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode the next token of every row: ``tokens`` (R, 1, D) (content + position/modality embedding)
        → the decoder's normed outputs (R, D) in float32. Raises when ``max_tokens`` steps were taken."""
        if self.t >= self.max_tokens:
            raise ValueError(f"the incremental decoder was sized for {self.max_tokens} tokens")
        if tokens.dim() != 3 or tokens.shape[1] != 1:
            raise ValueError(f"step takes one token per row, (R, 1, D); got {tuple(tokens.shape)}")
        y = tokens.float()
        for block in self.blocks:
            y = block(y, self.t, self.xa_bias)
        self.t += 1
        return _norm(self.model.decoder_norm, y)[:, 0]

    @torch.no_grad()
    def logits(self, y: torch.Tensor, name: str) -> torch.Tensor:
        """Logits (R, V) in float32 of modality ``name`` for decoder outputs ``y`` (R, D); the head's weight is
        prepared (cast / packed) on first use."""
        if name not in self.heads:
            self.heads[name] = _Linear(self.model.decoder_embeddings[name].to_logits, self.dtype, self.packed)
        return self.heads[name](y.to(self.dtype)).float()

    @torch.no_grad()
    def greedy(self, y: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The argmax token of modality ``name``'s logits for decoder outputs ``y`` (R, D) and its probability:
        (tokens (R,) int64, probability (R,) float32), as ``logits(y, name).softmax(-1).max(-1)`` gives them.

        In float32 on an x86 CPU a head of at least :data:`SCREEN_MIN_VOCAB` entries is screened with an int8
        copy of its weight (:class:`_ScreenedHead`): the same tokens, a quarter of the head's bytes read."""
        head = self.model.decoder_embeddings[name].to_logits
        if not self.screening or head.out_features < SCREEN_MIN_VOCAB:
            prob, tokens = self.logits(y, name).softmax(dim=-1).max(dim=-1)
            return tokens, prob
        if name not in self.screens:
            key = _version_key(head, torch.int8, False)  # weight and bias unchanged since the screen was made
            cached = _SCREENS.get(head)
            if cached is None or cached[0] != key:
                cached = _SCREENS[head] = (key, _ScreenedHead(head))
            self.screens[name] = cached[1]
        return self.screens[name](y.float())
