"""The official tiny checkpoint computes the official function: every intermediate of the stored forward pass."""

import pytest
import torch

from open4m.model import from_pretrained

ATOL = 1e-5


@pytest.fixture(scope="module")
def model(fixture_path):
    return from_pretrained(fixture_path("official-tiny")).eval()


@pytest.fixture(scope="module")
def run(model, official_io):
    """Our forward on the stored batch, with block outputs captured by hooks."""
    tensors, info, batch = official_io
    captured = {}
    hooks = []
    for side in ("encoder", "decoder"):
        for i, block in enumerate(getattr(model, side)):
            key = f"{side[:3]}.block{i}.output"
            hooks.append(block.register_forward_hook(lambda m, a, out, key=key: captured.__setitem__(key, out)))
    try:
        with torch.no_grad():
            enc = model.embed_encoder(batch, 32)
            dec = model.embed_decoder(batch, 32, order=info["decoder_modality_order"])
            encoded = model.encode(enc)
            context = model.context(encoded, enc)
            out = model.decode(dec, context, enc)
            loss_mod = model.loss(out, dec, info["decoder_modality_order"], "mod")
            loss_tok = model.loss(out, dec, info["decoder_modality_order"], "token")
    finally:
        for h in hooks:
            h.remove()
    return dict(enc=enc, dec=dec, encoded=encoded, context=context, out=out, loss_mod=loss_mod,
                loss_tok=loss_tok, blocks=captured)


def test_encoder_slots_match_exactly(run, official_io):
    tensors, _, _ = official_io
    enc = run["enc"]
    assert torch.equal(enc.mask, tensors["enc.mask"])
    assert torch.equal(enc.mod_ids, tensors["enc.mod_mask"])
    torch.testing.assert_close(enc.tokens, tensors["enc.tokens"], atol=ATOL, rtol=0)
    torch.testing.assert_close(enc.emb, tensors["enc.emb"], atol=ATOL, rtol=0)


def test_encoder_hidden_states(run, official_io):
    tensors, _, _ = official_io
    valid = ~tensors["enc.mask"]
    for key in ("enc.block0.output", "enc.block1.output"):
        torch.testing.assert_close(run["blocks"][key][valid], tensors[key][valid], atol=ATOL, rtol=0)
    torch.testing.assert_close(run["encoded"][valid], tensors["enc.output"][valid], atol=ATOL, rtol=0)
    torch.testing.assert_close(run["context"][valid], tensors["dec.context"][valid], atol=ATOL, rtol=0)


def test_decoder_slots_and_attention_mask_match_exactly(run, official_io):
    tensors, _, _ = official_io
    dec = run["dec"]
    assert torch.equal(dec.mask, tensors["dec.mask"])
    assert torch.equal(dec.mod_ids, tensors["dec.mod_mask"])
    assert torch.equal(dec.target_ids, tensors["dec.target_ids"])
    assert torch.equal(dec.attention_mask, tensors["dec.attention_mask"])
    torch.testing.assert_close(dec.tokens, tensors["dec.tokens"], atol=ATOL, rtol=0)
    torch.testing.assert_close(dec.emb, tensors["dec.emb"], atol=ATOL, rtol=0)


def test_decoder_hidden_states(run, official_io):
    tensors, _, _ = official_io
    valid = ~tensors["dec.mask"]
    for key in ("dec.block0.output", "dec.block1.output"):
        torch.testing.assert_close(run["blocks"][key][valid], tensors[key][valid], atol=ATOL, rtol=0)
    torch.testing.assert_close(run["out"][valid], tensors["dec.output"][valid], atol=ATOL, rtol=0)


def test_logits_statistics(model, run, official_io):
    tensors, info, _ = official_io
    flat = run["out"].reshape(-1, run["out"].shape[-1])
    for name in info["decoder_modality_order"]:
        rows = tensors[f"logits.{name}.row_index"]
        with torch.no_grad():
            logits = model.logits(flat[rows], name)
        targets = tensors[f"logits.{name}.targets"]
        assert torch.equal(run["dec"].target_ids.flatten()[rows], targets)
        torch.testing.assert_close(logits.logsumexp(-1), tensors[f"logits.{name}.logsumexp"], atol=ATOL, rtol=0)
        torch.testing.assert_close(logits.max(-1).values, tensors[f"logits.{name}.max"], atol=ATOL, rtol=0)
        torch.testing.assert_close(logits[0], tensors[f"logits.{name}.first_row"], atol=ATOL, rtol=0)
        assert torch.equal(logits.argmax(-1), tensors[f"logits.{name}.argmax"])


@pytest.mark.parametrize("kind", ["mod", "tok"])
def test_losses(run, official_io, kind):
    tensors, info, _ = official_io
    total, per_mod = run[f"loss_{kind}"]
    prefix = "loss" if kind == "mod" else "loss_token"
    assert abs(total.item() - tensors[f"{prefix}.total"].item()) < 1e-5
    for name in info["decoder_modality_order"]:
        assert abs(per_mod[name].item() - tensors[f"{prefix}.{name}"].item()) < 1e-5


def test_forward_entry_point_and_order_independence(model, official_io):
    """The plain forward (batch order, no shuffle) gives the same losses as the official shuffled layout."""
    tensors, _, batch = official_io
    with torch.no_grad():
        total, per_mod = model(batch, num_encoder_tokens=32, num_decoder_tokens=32)
    assert abs(total.item() - tensors["loss.total"].item()) < 1e-5
    for name, value in per_mod.items():
        assert abs(value.item() - tensors[f"loss.{name}"].item()) < 1e-5
