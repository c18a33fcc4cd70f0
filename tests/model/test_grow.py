"""Depth growth: a deepened model computes what the trained one did, keeps its weights, and trains its new blocks."""

import pytest
import torch

from fourm_helpers import caption_depth_model, caption_to_depth_batch, depth_logits
from open4m.model import from_pretrained, save_pretrained
from open4m.model.grow import deepen, new_block_slots


def _model(**overrides):
    model = caption_depth_model(64, **overrides)
    with torch.no_grad():  # trained-looking weights: no zero biases or unit norms left from the init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_slots_keep_the_trained_blocks_in_order_and_spread_the_new_ones():
    assert new_block_slots(4, 8) == [0, None, 1, None, 2, None, 3, None]
    assert new_block_slots(4, 6) == [0, None, 1, None, 2, 3]
    assert new_block_slots(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="only grow deeper: 4 blocks -> 3 blocks"):
        new_block_slots(4, 3)


@pytest.mark.parametrize("overrides", [{}, {"gated_mlp": True, "proj_bias": False, "mlp_bias": False}])
def test_deepened_model_predicts_the_same_and_keeps_every_trained_tensor(overrides):
    model = _model(**overrides)
    grown = deepen(model, encoder_depth=5, decoder_depth=4).eval()
    assert (grown.config.encoder_depth, grown.config.decoder_depth) == (5, 4)
    assert len(grown.encoder) == 5 and len(grown.decoder) == 4
    before, after = depth_logits(model), depth_logits(grown)
    assert torch.allclose(after, before, atol=1e-5)
    old, new = model.state_dict(), grown.state_dict()
    for key, value in old.items():
        if key.startswith(("encoder.", "decoder.")):
            continue
        assert torch.equal(new[key], value), key
    assert torch.equal(new["encoder.3.attn.qkv.weight"], old["encoder.1.attn.qkv.weight"])  # 2 -> 5: [0, N, N, 1, N]
    assert torch.equal(new["decoder.2.mlp.fc1.weight"], old["decoder.1.mlp.fc1.weight"])  # 2 -> 4: [0, N, 1, N]
    assert new["encoder.1.mlp.fc2.weight"].abs().sum() == 0 and new["encoder.1.mlp.fc1.weight"].abs().sum() > 0
    head = grown.decoder_embeddings["tok_depth@64"]
    assert head.to_logits.weight is head.token_emb.weight  # ties survive
    with pytest.raises(ValueError, match="only grow deeper"):
        deepen(model, encoder_depth=1)


def test_new_blocks_learn_and_the_grown_model_round_trips(tmp_path):
    model = _model()
    grown = deepen(model, encoder_depth=3, decoder_depth=3).train()
    loss = grown(caption_to_depth_batch(), 64, 256)[0]
    loss.backward()
    assert grown.encoder[1].attn.proj.weight.grad.abs().sum() > 0
    assert grown.decoder[1].cross_attn.proj.weight.grad.abs().sum() > 0
    save_pretrained(grown, tmp_path / "grown", compact=True)
    again = from_pretrained(tmp_path / "grown", tie_decoder_embeddings=True).eval()
    assert again.config.encoder_depth == 3
    assert torch.allclose(depth_logits(again), depth_logits(model), atol=1e-5)
