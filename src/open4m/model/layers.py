"""Transformer building blocks of 4M: LayerNorm, attention, MLPs, encoder and decoder blocks.

Module and parameter names follow the official implementation so that its checkpoints load
unchanged (OFFICIAL-4M-SPEC §2.2, §3.3). Attention runs through
``torch.nn.functional.scaled_dot_product_attention``.

Attention runs through ``scaled_dot_product_attention``, except for reduced-precision inputs on
the CPU: there, at 4M's sequence lengths (~128-256 tokens), an explicit ``softmax(q k^T) v`` on
bf16 matrix units was 4x faster than SDPA's CPU kernels for forward + backward (5.9 ms vs 24.8 ms for
8x6x128x64 in bf16, one thread), while in fp32 the two are within 20%.

Masks: every ``attn_bias`` below is an *additive* float tensor broadcastable to
``(B, heads, N_query, N_key)``, ``0`` where attention is allowed and a large negative finite
number where it is blocked (see :func:`mask_to_bias`). A finite value keeps a row whose keys are
all blocked uniform instead of NaN, which is what the official ``masked_fill(-finfo.max)`` does.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention. q (B, H, N, hd), k/v (B, H, M, hd), bias broadcastable to (B, H, N, M)."""
    if bias is not None and bias.dtype != q.dtype:
        # finfo(float32).min rounds to -inf in bf16/fp16; clamp so fully blocked rows stay finite (uniform)
        bias = bias.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if bias is not None:
            scores = scores + bias
        return torch.matmul(scores.softmax(dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def mask_to_bias(blocked: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Turn a boolean "blocked" mask into an additive attention bias of ``dtype``.

    Args:
        blocked: bool, True = may not attend; shape broadcastable to ``(B, 1, Nq, Nk)``, or None.
        dtype: dtype of the attention scores (the bias must match it for SDPA).

    Returns:
        Float tensor of the same shape (0 / very negative), or None when nothing is blocked.
    """
    if blocked is None:
        return None
    bias = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device)
    return bias.masked_fill_(blocked, torch.finfo(dtype).min)


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off while keeping the ``bias`` key.

    With ``bias=False`` the bias is a zero *buffer* (so official state dicts, which store it,
    load strictly); it is skipped in the computation, which changes nothing numerically.
    """

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        if bias:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_buffer("bias", torch.zeros(dim))
        self.has_bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) → (..., D)."""
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias if self.has_bias else None, self.eps)


class Mlp(nn.Module):
    """fc1 → activation → fc2, storing one hidden activation for backward instead of two.

    Autograd would keep both the activation's input ``h = fc1(x)`` (for the activation's gradient)
    and its output ``act(h)`` (for fc2's weight gradient), two (..., hidden) tensors per block. Here
    fc2 saves a reference to ``h`` instead and backward recomputes ``act(h)`` from it: the same
    elementwise op on the same tensor, so outputs and gradients are bitwise those of the plain
    module, at the cost of one activation pass. For the tiny 4M benchmark model (batch 8, 128+128
    tokens) this keeps 72 MB less in fp32 until backward.
    """

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module], bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) → (..., dim)."""
        h = self.fc1(x)
        a = self.act(h)
        with recompute_saved((a, self.act, h)):
            return self.fc2(a)


class _RecomputeSaved:
    """Saved-tensor pack hook: a view of a recipe's ``out = fn(*args)`` (``linear`` saves a 2-D view of a
    3-D input) is saved as (fn, args, view geometry); any other saved tensor (a weight) as itself.

    Autograd keeps the hook object as long as the graph, so it holds the addresses of the outputs, not them.
    """

    def __init__(self, recipes: tuple[tuple, ...]) -> None:
        self.recipes = {out.untyped_storage().data_ptr(): (out.dtype, fn, args) for out, fn, *args in recipes}

    def pack(self, t: torch.Tensor):
        recipe = self.recipes.get(t.untyped_storage().data_ptr())
        if recipe is not None and t.dtype == recipe[0]:
            return recipe[1], recipe[2], t.shape, t.stride(), t.storage_offset()
        return t


def _unpack(saved):
    if isinstance(saved, torch.Tensor):
        return saved
    fn, args, shape, stride, offset = saved
    return fn(*args).as_strided(shape, stride, offset)


def recompute_saved(*recipes: tuple):
    """A context in which autograd keeps each recipe ``(out, fn, *args)`` instead of ``out = fn(*args)``.

    An op run inside the context that would keep ``out`` (or a view of it) for backward -- a linear
    layer consuming a norm's or an activation's output -- keeps the recipe, and backward recomputes
    ``fn(*args)``. The recipe references only ``args``, which autograd keeps anyway (a norm's input, an
    activation's input), so ``out`` is freed after the forward pass. ``fn`` must be deterministic and
    read only ``args`` and values that do not change before backward (module weights: the optimizer
    steps after the gradients it needs), so the recomputed tensor equals ``out`` bitwise. Recipes whose
    ``out`` needs no gradient are dropped; without grad the context does nothing, and neither does it
    inside another saved-tensor scheme (activation checkpointing saves nothing and reruns the block, so
    its hooks must see every tensor). Nested contexts: only the innermost one applies.
    """
    recipes = tuple(r for r in recipes if r[0].requires_grad)
    if not (torch.is_grad_enabled() and recipes) or _foreign_hooks():
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_RecomputeSaved(recipes).pack, _unpack)


def _foreign_hooks() -> bool:
    """Whether saved-tensor hooks other than :func:`recompute_saved`'s are active (e.g. checkpointing's)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None:  # another torch: play safe
        return True
    hooks = top(False)
    return hooks is not None and hooks[1] is not _unpack


class GatedMlp(nn.Module):
    """Gated feed-forward (SwiGLU with SiLU): ``fc2(act(fc1 x) * fc3 x)``.

    The hidden width is ``int(2 * hidden / 3)`` as in the official code (2048 for dim 768).
    """

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module], bias: bool = True) -> None:
        super().__init__()
        hidden = int(2 * hidden / 3)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act_layer()
        self.fc3 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)) * self.fc3(x))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, D) → (B, heads, N, D/heads)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, hd) → (B, N, heads*hd)."""
    b, h, n, hd = x.shape
    return x.transpose(1, 2).reshape(b, n, h * hd)


class _MultiHead(nn.Module):
    """What self- and cross-attention share: the head split, the output ``proj`` and optional QK-norm.

    Subclasses register their input projections first, then call :meth:`_add_output` (module order
    fixes the initialisation order, which seeded results depend on).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads

    def _add_output(self, dim: int, proj_bias: bool, qk_norm: bool, norm_layer) -> None:
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        if qk_norm:
            self.q_norm = norm_layer(dim // self.num_heads)
            self.k_norm = norm_layer(dim // self.num_heads)
        self.qk_norm = qk_norm

    def _output(self, heads: torch.Tensor) -> torch.Tensor:
        """(B, H, N, hd) attention output → ``proj`` of the merged heads (B, N, D).

        SDPA keeps ``heads`` for its own backward; ``proj`` would keep the merged copy too, so that copy is
        recomputed from ``heads`` in backward instead. (The explicit bf16 CPU attention does not keep its
        output: there the recipe keeps ``heads`` in place of the copy, the same size.)
        """
        merged = _merge_heads(heads)
        with recompute_saved((merged, _merge_heads, heads)):
            return self.proj(merged)


class Attention(_MultiHead):
    """Multi-head self-attention with a fused ``qkv`` projection and optional QK-norm."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__(dim, num_heads)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self._add_output(dim, proj_bias, qk_norm, norm_layer)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, N, D) → q, k, v, each (B, H, N, D/H), QK-normed when enabled."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D), attn_bias broadcastable to (B, H, N, N) → (B, N, D)."""
        q, k, v = self._qkv(x)
        return self._output(attention(q, k, v, attn_bias))


class CrossAttention(_MultiHead):
    """Multi-head cross-attention: queries from ``x``, keys/values from ``context``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__(dim, num_heads)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self._add_output(dim, proj_bias, qk_norm, norm_layer)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``context`` (B, M, D), each (B, H, M, D/H); cacheable across decoding steps."""
        b, m, d = context.shape
        kv = self.kv(context).view(b, m, 2, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        if self.qk_norm:
            k = self.k_norm(k)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, N, D), context (B, M, D), attn_bias → (B, N, D)."""
        q = _split_heads(self.q(x), self.num_heads)
        if self.qk_norm:
            q = self.q_norm(q)
        k, v = self.context_kv(context)
        return self._output(attention(q, k, v, attn_bias))


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at rate 0 or in eval mode)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


def _mlp(dim: int, mlp_ratio: float, act_layer, gated: bool, bias: bool) -> nn.Module:
    hidden = int(dim * mlp_ratio)
    return GatedMlp(dim, hidden, act_layer, bias) if gated else Mlp(dim, hidden, act_layer, bias)


class _PreNormBlock(nn.Module):
    """What encoder and decoder blocks share: settings, ``norm1``, ``norm2``, the MLP and drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        mlp_bias: bool = True,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        gated_mlp: bool = False,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.build_attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = _mlp(dim, mlp_ratio, act_layer, gated_mlp, mlp_bias)

    def build_attention(self, dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer) -> None:
        raise NotImplementedError


class Block(_PreNormBlock):
    """Pre-norm encoder block: ``x += attn(norm1 x); x += mlp(norm2 x)``."""

    def build_attention(self, dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer) -> None:
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D) → (B, N, D)."""
        h = self.norm1(x)
        with recompute_saved((h, self.norm1, x)):
            x = x + self.drop_path(self.attn(h, attn_bias))
        h = self.norm2(x)
        with recompute_saved((h, self.norm2, x)):
            return x + self.drop_path(self.mlp(h))


class DecoderBlock(_PreNormBlock):
    """Pre-norm decoder block: self-attention, cross-attention to the encoder output, MLP."""

    def build_attention(self, dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer) -> None:
        self.self_attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer)
        self.query_norm = norm_layer(dim)
        self.context_norm = norm_layer(dim)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_layer)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        sa_bias: torch.Tensor | None = None,
        xa_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, N, D), context (B, M, D) → (B, N, D)."""
        h = self.norm1(x)
        with recompute_saved((h, self.norm1, x)):
            x = x + self.drop_path(self.self_attn(h, sa_bias))
        h, c = self.query_norm(x), self.context_norm(context)
        with recompute_saved((h, self.query_norm, x), (c, self.context_norm, context)):
            x = x + self.drop_path(self.cross_attn(h, c, xa_bias))
        h = self.norm2(x)
        with recompute_saved((h, self.norm2, x)):
            return x + self.drop_path(self.mlp(h))

    def cross_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values (each (B, H, M, hd)) of the context (B, M, D); reusable for every step."""
        return self.cross_attn.context_kv(self.context_norm(context))
