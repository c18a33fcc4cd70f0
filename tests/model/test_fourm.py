"""Behaviour of the 4M model beyond the official fixture: masks, padding, variants, presets, errors."""

import pytest
import torch

from open4m import modalities
from open4m.batch import make_batch
from open4m.model import FourM, FourMConfig, FourMViT, preset, preset_names

IMG = modalities.image_tokens("tok_t@32", 64, 32, 8).name  # 4x4 grid
IMG2 = modalities.image_tokens("tok_u@32", 48, 32, 8).name
SEQ = modalities.sequence("seq_t", 100, 10).name  # 22 padded positions
RGB = modalities.pixels("rgb_t@32", 32, 8).name


def small(**kw) -> FourMConfig:
    args = dict(domains_in=[RGB, IMG, IMG2, SEQ], domains_out=[IMG, IMG2, SEQ], dim=32, num_heads=4,
                encoder_depth=2, decoder_depth=2)
    args.update(kw)
    return FourMConfig(**args)


def a_batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(7, 100, (b, 22), generator=g)
    return make_batch(
        {RGB: torch.randn(b, 3, 32, 32, generator=g), IMG: torch.randint(0, 64, (b, 16), generator=g),
         IMG2: torch.randint(0, 48, (b, 4, 4), generator=g), SEQ: seq},
        inputs={RGB: [0, 5, 9], IMG: [1, 2, 3], SEQ: list(range(4))},
        targets={IMG: [4, 6, 7, 8, 15], IMG2: list(range(10)), SEQ: list(range(11, 17))},
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FourM(small()).eval()


def test_make_batch_layout():
    batch = a_batch()
    d = batch[IMG]
    assert d["input_mask"].shape == (3, 16) and (~d["input_mask"]).sum(1).tolist() == [3, 3, 3]
    assert d["decoder_attention_mask"][0, 4] == 5 and d["decoder_attention_mask"][0].sum() == 5
    s = batch[SEQ]
    assert s["tensor"].shape == (3, 22) and s["tensor"].dtype == torch.int32
    assert s["decoder_attention_mask"][0, 11:17].tolist() == [1] * 6
    with pytest.raises(ValueError, match="both an input and a target"):
        make_batch({IMG: torch.zeros(1, 16, dtype=torch.long)}, inputs={IMG: [1]}, targets={IMG: [1]})


def test_losses_independent_of_target_modality_order(model):
    batch = a_batch()
    with torch.no_grad():
        enc = model.embed_encoder(batch, 16)
        ctx = model.context(model.encode(enc), enc)
        results = []
        for order in ([IMG, IMG2, SEQ], [SEQ, IMG2, IMG]):
            dec = model.embed_decoder(batch, 40, order=order)
            results.append(model.loss(model.decode(dec, ctx, enc), dec, order)[1])
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-6, rtol=0)


def test_sequence_targets_are_causal_and_modalities_apart(model):
    """Changing a later caption token or another modality's ids leaves earlier caption predictions unchanged."""
    batch = a_batch()
    with torch.no_grad():
        dec, y = model.forward_decoder_outputs(batch, 16, 40)
        batch2 = a_batch()
        batch2[SEQ]["tensor"][:, 15] = 3  # later target token (an input of decoder slot 15)
        batch2[IMG2]["tensor"] = (batch2[IMG2]["tensor"] + 1) % 48  # another modality's targets
        dec2, y2 = model.forward_decoder_outputs(batch2, 16, 40)
    seq_id = modalities.get(SEQ).id
    rows = (dec.mod_ids == seq_id).nonzero()
    early = rows[:, 1] < rows[:, 1].min() + 4  # decoder slots for positions 11..14
    r = rows[early]
    torch.testing.assert_close(y[r[:, 0], r[:, 1]], y2[r[:, 0], r[:, 1]], atol=1e-6, rtol=0)
    late = rows[~early]
    assert not torch.allclose(y[late[:, 0], late[:, 1]], y2[late[:, 0], late[:, 1]])


def test_padding_slots_change_nothing(model):
    batch = a_batch()
    with torch.no_grad():
        tight, per_tight = model(batch, num_encoder_tokens=10, num_decoder_tokens=20)
        loose, per_loose = model(batch, num_encoder_tokens=40, num_decoder_tokens=64)
    torch.testing.assert_close(tight, loose, atol=1e-6, rtol=0)


def test_token_budget_truncates_in_order(model):
    batch = a_batch()
    enc = model.embed_encoder(batch, 4)
    assert (~enc.mask).sum().item() == 4 * 3
    # batch order: the 3 rgb inputs first, then the first input of the next modality
    assert (enc.mod_ids[:, :3] == modalities.get(RGB).id).all()
    assert (enc.mod_ids[:, 3] == modalities.get(IMG).id).all()


def test_gradients_and_tied_heads():
    model = FourM(small(tie_decoder_embeddings=True))
    loss, _ = model(a_batch(), 16, 40)
    loss.backward()
    head = model.decoder_embeddings[SEQ]
    assert head.to_logits.weight is head.token_emb.weight and head.token_emb.weight.grad is not None
    assert model.mask_token.grad.abs().sum() > 0
    assert model.encoder_embeddings[RGB].proj.weight.grad.abs().sum() > 0
    # the zero-bias LayerNorm buffer never trains
    assert small(norm_bias=False) and not FourM(small(norm_bias=False)).encoder_norm.bias.requires_grad


VARIANTS = [dict(qk_norm=True), dict(num_register_tokens=3), dict(gated_mlp=True, act_layer="SiLU"),
            dict(decoder_causal_mask=True), dict(use_act_checkpoint=True)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_train(variant):
    torch.manual_seed(0)
    model = FourM(small(**variant)).train()
    loss, per_mod = model(a_batch(), 16, 40)
    loss.backward()
    assert torch.isfinite(loss) and set(per_mod) == {IMG, IMG2, SEQ}
    if variant.get("qk_norm"):
        assert "encoder.0.attn.q_norm.weight" in model.state_dict()
        assert "decoder.1.cross_attn.k_norm.weight" in model.state_dict()
    if variant.get("num_register_tokens"):
        assert model.register_tokens.grad is not None and model.embed_encoder(a_batch(), 5).mask.shape == (3, 8)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = FourM(small()).train()
    ckpt = FourM(small(use_act_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    for m in (plain, ckpt):
        m(a_batch(), 16, 40)[0].backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("loss_type", ["mod", "token"])
def test_bf16_cpu_logit_rows_are_padded_without_changing_the_loss(monkeypatch, loss_type):
    """In bf16 on the CPU each modality's logits rows are padded to a fixed multiple (oneDNN compiles a kernel
    per shape); the padding rows are left out of the loss, so loss and gradients equal the unpadded ones."""
    import open4m.model.fourm as fourm

    torch.manual_seed(0)
    model = FourM(small(tie_decoder_embeddings=True)).train()
    rows = []
    fused = fourm.linear_cross_entropy

    def counting(x, *args, **kwargs):
        rows.append(x.shape[0])
        return fused(x, *args, **kwargs)

    monkeypatch.setattr(fourm, "linear_cross_entropy", counting)
    results = {}
    for multiple in (1, 8):
        monkeypatch.setattr(fourm, "BF16_CPU_LOGIT_ROWS_MULTIPLE", multiple)
        model.zero_grad(set_to_none=True)
        rows.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, per_mod = model(a_batch(), 16, 40, loss_type=loss_type)
        loss.backward()
        results[multiple] = (loss, per_mod, {n: p.grad.clone() for n, p in model.named_parameters()
                                             if p.grad is not None}, list(rows))
    (loss1, mods1, grads1, rows1), (loss8, mods8, grads8, rows8) = results[1], results[8]
    assert rows1 == [15, 30, 15] and rows8 == [16, 32, 16]  # 3 rows x (5, 10, 5) targets; padded to 8s
    torch.testing.assert_close(loss8, loss1, atol=2e-3, rtol=2e-3)
    for name in mods1:
        torch.testing.assert_close(mods8[name], mods1[name], atol=2e-3, rtol=2e-3)
    assert grads8.keys() == grads1.keys()
    for name, g in grads1.items():
        torch.testing.assert_close(grads8[name], g, atol=2e-3, rtol=2e-2, msg=name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # inference: nothing to compile for
        assert fourm._logit_rows_multiple(torch.zeros(2, 4)) == 1
    assert fourm._logit_rows_multiple(torch.zeros(2, 4)) == 1  # fp32: MKL compiles nothing


def test_drop_path_is_stochastic_in_training_only():
    torch.manual_seed(0)
    model = FourM(small(drop_path_rate_encoder=0.5, drop_path_rate_decoder=0.5))
    batch = a_batch()
    model.train()
    torch.manual_seed(1)
    a = model(batch, 16, 40)[0]
    torch.manual_seed(2)
    b = model(batch, 16, 40)[0]
    assert a.item() != b.item()
    model.eval()
    assert model(batch, 16, 40)[0].item() == model(batch, 16, 40)[0].item()


def test_vit_backbone_equals_the_full_encoder(model):
    vit = FourMViT.from_fourm(model)
    image = torch.randn(2, 3, 32, 32)
    batch = make_batch({RGB: image}, inputs={RGB: "all"})
    with torch.no_grad():
        enc = model.embed_encoder(batch, 16)
        torch.testing.assert_close(vit(image), model.encode(enc), atol=1e-5, rtol=0)
        assert vit(image, pool=True).shape == (2, 32)
    with pytest.raises(ValueError, match="expected an image"):
        vit(torch.randn(2, 3, 16, 16))


def test_freezing_helpers():
    model = FourM(small())
    model.freeze_encoder()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not model.encoder_embeddings[IMG].token_emb.weight.requires_grad
    assert all(p.requires_grad for p in model.decoder.parameters())
    model.unfreeze_all()
    model.freeze_all_but_embeddings([IMG2])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".tok_u@32." in n for n in trainable)
    with pytest.raises(ValueError, match="no modality"):
        model.freeze_all_but_embeddings(["tok_nope"])


def test_every_preset_builds_with_official_trunk_sizes():
    trunk = {}
    for name in preset_names():
        with torch.device("meta"):
            m = FourM(preset(name, ["rgb@224", "tok_rgb@224", "caption"], ["tok_rgb@224", "caption"]))
        trunk[name] = sum(p.numel() for n, p in m.named_parameters() if "_embeddings." not in n)
    # trunk parameters of the released swiglu_nobias models (OFFICIAL-4M-SPEC §2.1, 3.4)
    assert trunk["base_swiglu_nobias"] == 198_830_592 or round(trunk["base_swiglu_nobias"] / 1e4) == 19883
    assert round(trunk["large_swiglu_nobias"] / 1e4) == 70574
    assert round(trunk["xlarge_swiglu_nobias"] / 1e4) == 282297
    assert preset("fm_tiny_6e_6d_gelu", ["caption"], ["caption"]) == preset("tiny_gelu", ["caption"], ["caption"])
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge_gelu", ["caption"], ["caption"])


def test_benchmark_model_size():
    """The Core benchmark's model: tiny GELU with tied decoder embeddings has 90.25M parameters."""
    with torch.device("meta"):
        m = FourM(preset("tiny_gelu", ["rgb@224", "tok_rgb@224", "tok_depth@224", "caption", "det"],
                         ["tok_rgb@224", "tok_depth@224", "caption", "det"], tie_decoder_embeddings=True))
    assert round(sum(p.numel() for p in m.parameters()) / 1e4) == 9025


# ------------------------------------------------------------------ bad input

def test_bad_batches_get_clear_errors(model):
    good = a_batch()
    with pytest.raises(KeyError, match="unknown modality 'tok_nope'"):
        model({**good, "tok_nope": good[IMG]}, 16, 40)
    broken = {k: dict(v) for k, v in good.items()}
    del broken[IMG]["target_mask"]
    with pytest.raises(ValueError, match=r"'tok_t@32': batch entry is missing \['target_mask'\]"):
        model(broken, 16, 40)
    broken = {k: dict(v) for k, v in good.items()}
    broken[IMG]["tensor"] = broken[IMG]["tensor"] + 64
    with pytest.raises(ValueError, match=r"'tok_t@32': token ids must lie in \[0, 64\)"):
        model(broken, 16, 40)
    broken = {k: dict(v) for k, v in good.items()}
    broken[RGB]["tensor"] = torch.randn(3, 3, 36, 36)
    with pytest.raises(ValueError, match="'rgb_t@32': image is 36x36, expected 32x32"):
        model(broken, 16, 40)
    broken = {k: dict(v) for k, v in good.items()}
    broken[IMG]["input_mask"] = broken[IMG]["input_mask"][:, :5]
    with pytest.raises(ValueError, match=r"input_mask has shape \(3, 5\), expected \(3, 16\)"):
        model(broken, 16, 40)
    with pytest.raises(ValueError, match="num_encoder_tokens must be a positive int"):
        model(good, 0, 40)
    with pytest.raises(ValueError, match="cannot be predicted"):
        small(domains_out=[RGB])


def test_float_embeddings_input_and_learned_global_positions():
    """t5_caption enters through a projection; the global-feature modalities have learned positions."""
    cfg = FourMConfig(domains_in=["t5_caption", "tok_dinov2_global"], domains_out=["tok_dinov2_global"], dim=32,
                      num_heads=4, encoder_depth=1, decoder_depth=1)
    model = FourM(cfg)
    state = model.state_dict()
    assert state["encoder_embeddings.t5_caption.emb_proj.weight"].shape == (32, 4096)
    params = dict(model.named_parameters())
    assert params["encoder_embeddings.tok_dinov2_global.pos_emb"].shape == (1, 16, 32)
    assert "decoder_embeddings.tok_dinov2_global.pos_emb" in params
    t5 = torch.randn(2, 77, 4096)
    valid = torch.zeros(2, 77, dtype=torch.bool)
    valid[:, :5] = True
    batch = make_batch({"t5_caption": t5, "tok_dinov2_global": torch.randint(0, 8192, (2, 4, 4))},
                       inputs={"t5_caption": valid}, targets={"tok_dinov2_global": "all"})
    loss, _ = model(batch, 8, 16)
    loss.backward()
    assert model.encoder_embeddings["t5_caption"].emb_proj.weight.grad.abs().sum() > 0
    # changing a vector that is not an input changes nothing
    t5b = t5.clone()
    t5b[:, 40] += 1
    batch2 = make_batch({"t5_caption": t5b, "tok_dinov2_global": batch["tok_dinov2_global"]["tensor"]},
                        inputs={"t5_caption": valid}, targets={"tok_dinov2_global": "all"})
    with torch.no_grad():
        assert model(batch2, 8, 16)[0].item() == model(batch, 8, 16)[0].item()
