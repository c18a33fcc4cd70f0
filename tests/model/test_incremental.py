"""IncrementalDecoder: one token per step equals the full decoder over the prefix under a causal mask."""

import pytest
import torch

from open4m.model import FourM, preset
from open4m.model.fourm import DecoderInput, EncoderInput
from open4m.runtime import native_bf16

DOMAINS = ["tok_rgb@224", "caption"]


def _model(flavour: str, seed: int = 0) -> FourM:
    torch.manual_seed(seed)
    config = preset(f"tiny_{flavour}", DOMAINS, DOMAINS, dim=64, encoder_depth=1, decoder_depth=3, num_heads=4)
    model = FourM(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a skipped term shows
        for name, p in model.named_parameters():
            if "decoder." in name and p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _context(model: FourM, rows: int = 3, slots: int = 7) -> tuple[torch.Tensor, EncoderInput]:
    g = torch.Generator().manual_seed(1)
    context = torch.randn(rows, slots, model.config.dim, generator=g)
    mask = torch.zeros(rows, slots, dtype=torch.bool)
    mask[1, 5:] = True  # padding slots in one row
    mask[2, 2:] = True
    enc = EncoderInput(context, torch.zeros_like(context), mask, torch.zeros(rows, slots, dtype=torch.int16))
    return context, enc


def _full_decode(model: FourM, tokens: torch.Tensor, context: torch.Tensor, enc: EncoderInput) -> torch.Tensor:
    r, t, _ = tokens.shape
    causal = torch.ones(t, t, dtype=torch.bool).triu(1).expand(r, t, t)
    zeros = torch.zeros(r, t, dtype=torch.bool)
    dec = DecoderInput(tokens, torch.zeros_like(tokens), zeros, zeros.short(), zeros.long(), causal)
    return model.decode(dec, context, enc)


def _stepwise(model: FourM, tokens: torch.Tensor, context: torch.Tensor, enc: EncoderInput):
    """The incremental decoder's outputs (R, t, D) for tokens (R, t, D), one step per token, and the decoder."""
    decoder = model.incremental_decoder(context, enc, max_tokens=tokens.shape[1])
    return torch.stack([decoder.step(tokens[:, t : t + 1]) for t in range(tokens.shape[1])], dim=1), decoder


@pytest.mark.parametrize("flavour", ["gelu", "swiglu_qknorm_nobias"])
def test_steps_equal_full_decoder_over_the_prefix_fp32(flavour):
    model = _model(flavour)
    context, enc = _context(model)
    tokens = torch.randn(3, 6, model.config.dim, generator=torch.Generator().manual_seed(2))
    steps, decoder = _stepwise(model, tokens, context, enc)
    full = _full_decode(model, tokens, context, enc)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decoder.logits(steps[:, -1], "caption"), model.logits(full[:, -1], "caption"),
                               atol=1e-4, rtol=1e-5)


def test_fp32_wide_layers_use_a_transposed_copy_for_few_rows_with_the_same_result():
    from open4m.model.incremental import TRANSPOSED_MAX_ROWS, _Linear

    model = _model("gelu")
    context, enc = _context(model)
    decoder = model.incremental_decoder(context, enc, max_tokens=1)
    block = decoder.blocks[0]
    assert block.fc1.weight_t is not None and block.qkv.weight_t is not None  # more outputs than inputs
    assert block.fc2.weight_t is None and block.sa_proj.weight_t is None      # the rest stay as they are
    layer = model.decoder_embeddings["caption"].to_logits
    head = _Linear(layer, torch.float32, packed=False)
    assert head.weight_t.shape == layer.weight.shape[::-1] and head.weight_t.is_contiguous()
    for rows in (1, TRANSPOSED_MAX_ROWS, TRANSPOSED_MAX_ROWS + 1):
        x = torch.randn(rows, 1, model.config.dim, generator=torch.Generator().manual_seed(rows))
        torch.testing.assert_close(head(x), layer(x), atol=1e-5, rtol=1e-5)
    assert _Linear(layer, torch.float32, packed=False).weight_t is head.weight_t  # prepared once, reused


def test_bf16_autocast_matches_the_autocast_reference_and_packs_weights_where_the_cpu_can():
    model = _model("gelu")
    context, enc = _context(model)
    tokens = torch.randn(3, 5, model.config.dim, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steps, decoder = _stepwise(model, tokens, context, enc)
        full = _full_decode(model, tokens, context, enc).float()
        logits = decoder.logits(steps[:, -1], "caption")
        reference = model.logits(full[:, -1], "caption").float()
    assert decoder.dtype == torch.bfloat16
    # oneDNN packs bf16 weights only where the CPU has native bf16 units; elsewhere the plain bf16 weight is used.
    assert decoder.packed == (torch.backends.mkldnn.is_available() and native_bf16("cpu"))
    fp32 = _full_decode(model, tokens, context, enc)
    # Both are bf16 computations of the fp32 result: the same size of error, far below the signal.
    err_steps, err_ref = (steps - fp32).abs().max(), (full - fp32).abs().max()
    assert err_steps < 3 * err_ref + 1e-3, (err_steps, err_ref)
    assert err_steps < 0.05 * fp32.abs().max()
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()


def test_bf16_without_native_units_uses_the_plain_weights(monkeypatch):
    """On an AVX2-only CPU oneDNN refuses to pack bf16 weights; the decoder must fall back, not fail."""
    import open4m.model.incremental as incremental

    monkeypatch.setattr(incremental, "native_bf16", lambda device="cpu": False)
    model = _model("gelu", seed=5)
    context, enc = _context(model)
    tokens = torch.randn(3, 4, model.config.dim, generator=torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steps, decoder = _stepwise(model, tokens, context, enc)
    assert decoder.dtype == torch.bfloat16 and not decoder.packed
    fp32 = _full_decode(model, tokens, context, enc)
    assert (steps.float() - fp32).abs().max() < 0.05 * fp32.abs().max()


def test_bad_use_is_named():
    model = _model("gelu")
    context, enc = _context(model)
    decoder = model.incremental_decoder(context, enc, max_tokens=1)
    with pytest.raises(ValueError, match="one token per row"):
        decoder.step(torch.zeros(3, 2, model.config.dim))
    decoder.step(torch.zeros(3, 1, model.config.dim))
    with pytest.raises(ValueError, match="sized for 1 tokens"):
        decoder.step(torch.zeros(3, 1, model.config.dim))
    with pytest.raises(ValueError, match="max_tokens"):
        model.incremental_decoder(context, enc, max_tokens=0)


def test_prepared_weights_are_reused_only_while_the_weights_are_unchanged():
    model = _model("gelu")
    context, enc = _context(model)
    x = torch.randn(3, 1, model.config.dim, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = model.incremental_decoder(context, enc, max_tokens=1)
        again = model.incremental_decoder(context, enc, max_tokens=1)
        assert again.blocks[0].fc1.weight is first.blocks[0].fc1.weight
        before = again.step(x)
        with torch.no_grad():
            model.decoder[0].mlp.fc1.weight.mul_(-1.0)  # an in-place change (what an optimizer step does)
        changed = model.incremental_decoder(context, enc, max_tokens=1)
        assert changed.blocks[0].fc1.weight is not first.blocks[0].fc1.weight
        after = changed.step(x)
        reference = _full_decode(model, x, context, enc).float()[:, 0]
    assert (after - before).abs().max() > 10 * (after - reference).abs().max()


# ------------------------------------------------------------------ greedy steps screened in bf16

int8_kernels = pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                                  reason="the int8 screen runs on x86 CPUs with AVX2 / AVX-512")


def _head(vocab: int, dim: int, bias: bool, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(dim, vocab, bias=bias)
    with torch.no_grad():
        head.weight.mul_(torch.rand(vocab, 1) * 4)  # rows of different norms: different bounds per entry
        # near-ties the bf16 screen cannot separate: rows equal up to 1e-6 relative, and an exact duplicate
        head.weight[7] = head.weight[3] * (1 + 1e-6)
        head.weight[11] = head.weight[3]
    return head


@int8_kernels
@pytest.mark.parametrize("bias", [False, True])
def test_screened_head_gives_the_float32_argmax_and_its_probability(bias):
    from open4m.model.incremental import _ScreenedHead

    head = _head(5000, 96, bias, seed=0)
    screened = _ScreenedHead(head)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 96, generator=g) * torch.rand(64, 1, generator=g) * 8  # logits up to ~100
    x[:8] = head.weight[3].detach() * 5  # rows whose best entries are the near-tied 3, 7 and 11
    tokens, prob = screened(x)
    reference = head(x)
    assert torch.equal(tokens, reference.argmax(dim=-1))
    assert set(tokens[:8].tolist()) <= {3, 7, 11}
    # the probability: exact candidates, the screen for the rest (rows of large norm: ~1e-2 relative)
    torch.testing.assert_close(prob, reference.softmax(-1).amax(-1), rtol=5e-2, atol=0)
    # decoder outputs are layer-normed (|x| ~ sqrt(D)): there, for these flat distributions, within 1e-2
    x = torch.nn.functional.layer_norm(torch.randn(64, 96, generator=g), (96,))
    tokens, prob = screened(x)
    assert torch.equal(tokens, head(x).argmax(dim=-1))
    torch.testing.assert_close(prob, head(x).softmax(-1).amax(-1), rtol=1e-2, atol=0)
    # a peaked distribution (what a trained model mostly gives) has its mass in the exact entries
    x = x * 6
    torch.testing.assert_close(screened(x)[1], head(x).softmax(-1).amax(-1), rtol=1e-5, atol=0)


@int8_kernels
def test_screened_head_computes_few_entries_in_float32(monkeypatch):
    from open4m.model import incremental

    head = _head(5000, 96, False, seed=2)
    screened = incremental._ScreenedHead(head)
    rows = []
    real_linear = incremental.F.linear
    monkeypatch.setattr(incremental.F, "linear", lambda x, w, b=None: rows.append(w.shape[0]) or real_linear(x, w, b))
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(3)) * 4
    tokens, _ = screened(x)
    assert torch.equal(tokens, head(x).argmax(-1)) and rows and rows[0] < 4 * (incremental.SCREEN_EXACT_TOP + 10)


@int8_kernels
def test_greedy_steps_equal_the_argmax_of_the_logits(monkeypatch):
    from open4m.model import incremental

    monkeypatch.setattr(incremental, "SCREEN_MIN_VOCAB", 1)
    model = _model("gelu")
    context, enc = _context(model)
    tokens = torch.randn(3, 4, model.config.dim, generator=torch.Generator().manual_seed(2))
    steps, decoder = _stepwise(model, tokens, context, enc)
    assert decoder.screening
    for t in range(steps.shape[1]):
        ids, prob = decoder.greedy(steps[:, t], "caption")
        logits = decoder.logits(steps[:, t], "caption")
        assert torch.equal(ids, logits.argmax(-1))
        torch.testing.assert_close(prob, logits.softmax(-1).amax(-1), rtol=1e-3, atol=0)
    assert "caption" in decoder.screens


def test_greedy_steps_without_a_screen_take_the_argmax_of_the_logits():
    model = _model("gelu")
    context, enc = _context(model)
    tokens = torch.randn(3, 2, model.config.dim, generator=torch.Generator().manual_seed(2))
    steps, decoder = _stepwise(model, tokens, context, enc)
    decoder.screening = False
    ids, prob = decoder.greedy(steps[:, -1], "caption")
    logits = decoder.logits(steps[:, -1], "caption")
    assert torch.equal(ids, logits.argmax(-1)) and not decoder.screens
    torch.testing.assert_close(prob, logits.softmax(-1).amax(-1))
