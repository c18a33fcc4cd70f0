"""Int8 weight storage for release files: group-wise symmetric quantization of the large weight matrices.

A weight ``W`` of shape ``(rows, *rest)`` is read as a matrix ``(rows, cols)``, ``cols = prod(rest)``, split
along ``cols`` into groups of ``group`` columns (one group per row when ``cols`` is not a multiple of
``group``), and stored as

- ``W_q``: int8, the same shape as ``W``, ``round(W / scale)`` clamped to [-127, 127];
- ``scale``: float16 ``(rows, cols // group)``, ``max |W|`` of the group / 127 (1 for an all-zero group).

``dequantize_int8(W_q, scale) = W_q * scale`` (float32) differs from ``W`` by at most ``scale / 2`` per
element, i.e. 1/254 of the largest magnitude of its group. It halves a float16 file (1 byte per weight plus
2 bytes per group). Only tensors named by :func:`int8_candidates` are quantized: floating point, at least
two dimensions and ``min_numel`` elements (projection matrices, token embeddings); biases, norms and small
tensors keep their float dtype.
"""

from __future__ import annotations

import torch

INT8_GROUP = 64
INT8_MIN_NUMEL = 4096


def int8_candidates(state: dict[str, torch.Tensor], min_numel: int = INT8_MIN_NUMEL) -> list[str]:
    """Keys of ``state`` worth storing as int8: floating point, ``ndim >= 2``, ``numel >= min_numel``."""
    return sorted(key for key, t in state.items()
                  if t.is_floating_point() and t.ndim >= 2 and t.numel() >= min_numel)


def quantize_int8(weight: torch.Tensor, group: int = INT8_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight (rows, *rest)`` → ``(int8 weight (rows, *rest), float16 scale (rows, groups))``."""
    if weight.ndim < 2 or not weight.is_floating_point():
        raise ValueError(f"int8 quantization needs a floating-point tensor of >= 2 dims, got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    rows = weight.shape[0]
    matrix = weight.detach().float().reshape(rows, -1)
    cols = matrix.shape[1]
    width = group if cols % group == 0 else cols
    grouped = matrix.reshape(rows, cols // width, width)
    amax = grouped.abs().amax(dim=2)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).half()
    # Quantize against the stored (float16-rounded) scale so that dequantizing reproduces the rounding exactly.
    scale_f = scale.float().unsqueeze(2)
    q = torch.round(grouped / scale_f).clamp_(-127, 127).to(torch.int8)
    return q.reshape(weight.shape).contiguous(), scale.contiguous()


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """Float32 weight of the shape of ``q`` from its int8 values and float scales ``(rows, groups)``;
    ValueError naming ``name`` when the two do not fit together."""
    if q.dtype != torch.int8:
        raise ValueError(f"{name}: stored as int8 per the file's metadata, but its dtype is {q.dtype}")
    if q.ndim < 2:
        raise ValueError(f"{name}: an int8 weight needs >= 2 dims, got shape {tuple(q.shape)}")
    rows = q.shape[0]
    cols = q[0].numel()
    if (scale.ndim != 2 or scale.shape[0] != rows or scale.shape[1] < 1 or cols % scale.shape[1] != 0
            or not scale.is_floating_point()):
        raise ValueError(f"{name}: its int8 scale has shape {tuple(scale.shape)} ({scale.dtype}), expected a float "
                         f"tensor ({rows}, groups) with groups dividing {cols}")
    groups = scale.shape[1]
    grouped = q.reshape(rows, groups, cols // groups).float() * scale.float().unsqueeze(2)
    return grouped.reshape(q.shape)
