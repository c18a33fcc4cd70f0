"""Attention numerics: reduced-precision CPU attention with float32 masks."""

import torch


def test_float32_bias_with_reduced_precision_attention_keeps_blocked_rows_finite():
    from open4m.model.layers import attention, mask_to_bias

    q = k = v = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16)
    blocked = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    blocked[..., 0, :] = True  # query 0 may attend to nothing
    out = attention(q, k, v, mask_to_bias(blocked, torch.float32))
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, :, 0].float(), v.float().mean(dim=2), atol=2e-2)
