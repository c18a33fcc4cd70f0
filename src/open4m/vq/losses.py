"""Reconstruction losses per modality (OFFICIAL-4M-SPEC §6.4: MSE/L1 for rgb, depth and normals,
cross-entropy for semseg), on the decoder output ``(B, C_out, H, W)`` and the adapter's targets.

- rgb: MSE on [-1, 1] colours.
- depth: L1 on normalised log depth over valid pixels + BCE of the validity logit.
- normal: MSE over all pixels (sky's target is the zero vector) + ``1 - cos`` over valid pixels.
- semseg: cross-entropy over classes.
- edges: BCE of the edge logit, positives weighted by ``edge_pos_weight`` (edges are sparse).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def reconstruction_loss(
    modality: str, out: torch.Tensor, target: dict[str, torch.Tensor], *, edge_pos_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """The scalar loss for ``modality`` and its named parts (detached floats) for logging."""
    out = out.float()
    if modality == "rgb":
        parts = {"mse": F.mse_loss(out, target["rgb"])}
    elif modality == "depth":
        valid = target["valid"]
        parts = {
            "l1_log_depth": _masked_mean((out[:, 0] - target["depth"]).abs(), valid),
            "bce_valid": F.binary_cross_entropy_with_logits(out[:, 1], valid),
        }
    elif modality == "normal":
        n, valid = target["normal"], target["valid"]
        parts = {
            "mse": F.mse_loss(out, n),
            "cos": _masked_mean(1 - F.cosine_similarity(out, n, dim=1, eps=1e-6), valid),
        }
    elif modality == "semseg":
        parts = {"ce": F.cross_entropy(out, target["semseg"])}
    elif modality == "edges":
        pos_weight = torch.tensor(edge_pos_weight, device=out.device)
        parts = {"bce": F.binary_cross_entropy_with_logits(out[:, 0], target["edges"], pos_weight=pos_weight)}
    else:
        raise ValueError(f"no reconstruction loss for modality {modality!r}")
    loss = sum(parts.values())
    return loss, {k: float(v.detach()) for k, v in parts.items()}
