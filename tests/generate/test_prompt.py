"""The typed prompt API: conditions as data, raw images through a tokenizer mapping, clear errors."""

import numpy as np
import pytest
import torch

from generation_helpers import small_model, text_tokenizer
from open4m.generation import Partial, TargetSpec, generate


class GreyLevelTokenizer:
    """A stand-in image tokenizer: each 16x16 patch of a (B, 224, 224) float image in [0, 1] becomes
    ``round(mean * (V - 1))``; decoding paints each token's grey level back."""

    def __init__(self, vocab: int = 8192) -> None:
        self.vocab = vocab

    def encode(self, raw: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(raw, dtype=torch.float32)
        x = x[None] if x.ndim == 2 else x
        patches = x.reshape(x.shape[0], 14, 16, 14, 16).mean(dim=(2, 4))
        return (patches * (self.vocab - 1)).round().long()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        levels = tokens.float() / (self.vocab - 1)
        return levels.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def tok():
    return text_tokenizer()


def test_caption_to_depth_and_boxes_comes_back_as_tokens_and_decoded(model, tok):
    tokenizers = {"tok_depth@224": GreyLevelTokenizer()}
    result = generate(model, {"caption": "a small red sphere left of a blue cube"},
                      [TargetSpec("tok_depth@224", steps=3), TargetSpec("det", max_new_tokens=6)],
                      tokenizers=tokenizers, text_tokenizer=tok, seed=0)
    depth = result.tokens["tok_depth@224"]
    assert depth.shape == (1, 14, 14) and depth.dtype == torch.int64
    assert torch.equal(result.decoded["tok_depth@224"], tokenizers["tok_depth@224"].decode(depth))
    assert len(result.tokens["det"][0]) <= 6 and isinstance(result.decoded["det"][0], list)
    # the given caption is an input ending in [EOS], as the official init_full_input_modality builds it
    cap = result.state["caption"]
    assert cap["tensor"][0][~cap["input_mask"][0]].tolist() == tok.encode("a small red sphere left of a blue cube") + [
        tok.eos_id
    ]


def test_raw_image_condition_goes_through_its_tokenizer(model, tok):
    raw = np.linspace(0, 1, 224 * 224, dtype=np.float32).reshape(224, 224)
    tokenizers = {"tok_rgb@224": GreyLevelTokenizer(16384)}
    a = generate(model, {"tok_rgb@224": raw}, [TargetSpec("tok_depth@224", steps=2, temperature=0.0)],
                 tokenizers=tokenizers)
    b = generate(model, {"tok_rgb@224": tokenizers["tok_rgb@224"].encode(raw)},
                 [TargetSpec("tok_depth@224", steps=2, temperature=0.0)])
    assert torch.equal(a.tokens["tok_depth@224"], b.tokens["tok_depth@224"])
    assert torch.equal(a.state["tok_rgb@224"]["tensor"], tokenizers["tok_rgb@224"].encode(raw).reshape(1, 196))


def test_partial_image_is_inpainted_with_given_tokens_kept(model):
    given = torch.randint(0, 8192, (14, 14), generator=torch.Generator().manual_seed(0))
    known = torch.zeros(14, 14, dtype=torch.bool)
    known[:, :5] = True
    rgb = torch.randint(0, 16384, (2, 14, 14), generator=torch.Generator().manual_seed(1))
    out = generate(model, {"tok_rgb@224": rgb, "tok_depth@224": Partial(given, known)},
                   [TargetSpec("tok_depth@224", steps=4)], seed=[3, 4]).tokens["tok_depth@224"]
    assert out.shape == (2, 14, 14)
    assert torch.equal(out[:, known], given[known].expand(2, -1))
    assert not torch.equal(out[0], out[1])  # rows generated independently


def test_partial_caption_is_continued(model, tok):
    prefix = tok.encode("a red cube")
    result = generate(model, {"caption": Partial("a red cube")}, [TargetSpec("caption", max_new_tokens=5)],
                      text_tokenizer=tok, seed=1)
    tokens = result.tokens["caption"][0]
    assert tokens[: len(prefix)] == prefix and len(prefix) < len(tokens) <= len(prefix) + 5


def test_partial_caption_with_sentinels_is_filled_in(model, tok):
    """Each [S_k] of a Partial sequence is replaced by the span written after it; forced tokens make the
    spans known whatever the (untrained) model predicts: [S_1] blue [S_2] green [S_3]."""
    blue, green = tok.encode("blue"), tok.encode("green")
    s2, s3 = tok.sentinel_id(2), tok.sentinel_id(3)
    forced = [[*blue, s2, *green, s3]]
    result = generate(model, {"caption": Partial("a [S_1] cube left of a [S_2] sphere")},
                      [TargetSpec("caption", temperature=0.0, forced=forced)], text_tokenizer=tok, seed=0)
    assert result.tokens["caption"][0] == tok.encode("a blue cube left of a green sphere")
    assert result.decoded["caption"][0] == "a blue cube left of a green sphere"


def test_partial_caption_spans_left_empty_and_bad_sentinels(model, tok):
    s2 = tok.sentinel_id(2)  # the model writes [S_2] at once: span 1 is empty, and [S_2] ends the sequence
    result = generate(model, {"caption": Partial("a [S_1] cube")},
                      [TargetSpec("caption", temperature=0.0, forced=[[s2]])], text_tokenizer=tok, seed=0)
    assert result.tokens["caption"][0] == tok.encode("a cube")
    for text in ("a [S_2] cube", "a [S_1] cube [S_1]", "[S_2] a [S_1]"):
        with pytest.raises(ValueError, match=r"'caption': the sentinels of a sequence to fill in must be \[S_1\]"):
            generate(model, {"caption": Partial(text)}, ["caption"], text_tokenizer=tok)


@pytest.mark.parametrize(
    "conditions,targets,message",
    [
        ({"caption": "a cube"}, ["tok_normal@224"], "cannot generate 'tok_normal@224'"),
        ({"caption": "a cube"}, ["rgb@224"], "cannot generate 'rgb@224'"),
        ({"tok_rgb@224": torch.zeros(7, 7, dtype=torch.long)}, ["caption"],
         r"'tok_rgb@224': expected token ids \(14, 14\)"),
        ({"tok_rgb@224": np.zeros((224, 224), np.float32)}, ["caption"], "needs an image tokenizer"),
        ({"caption": "cube " * 300}, ["tok_depth@224"], "'caption': 300 tokens is too long"),
        ({"tok_rgb@224": torch.zeros(14, 14, dtype=torch.long)}, [TargetSpec("tok_depth@224", steps=0)],
         "positive int"),
        ({"tok_rgb@224": torch.zeros(14, 14, dtype=torch.long)}, [TargetSpec("tok_depth@224", steps=197)],
         "197 decoding steps for only 196 tokens"),
        ({"tok_rgb@224": torch.zeros(14, 14, dtype=torch.long) + 20000}, ["tok_depth@224"],
         r"must lie in \[0, 16384\)"),
        ({"tok_depth@224": Partial(torch.zeros(14, 14, dtype=torch.long), torch.ones(3, 3, dtype=torch.bool))},
         ["tok_depth@224"], "known mask must be"),
        ({"tok_depth@224": torch.zeros(14, 14, dtype=torch.long)}, ["tok_depth@224"], "give it as Partial"),
        ({"caption": ["a", "b"], "tok_rgb@224": torch.zeros(3, 14, 14, dtype=torch.long)}, ["tok_depth@224"],
         "disagree on the batch size"),
    ],
)
def test_bad_prompts_fail_with_clear_errors_before_any_compute(model, tok, conditions, targets, message,
                                                               monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(model, "encode", no_compute)
    with pytest.raises(ValueError, match=message):
        generate(model, conditions, targets, text_tokenizer=tok)


def test_image_targets_sample_only_ids_their_tokenizer_decodes():
    import numpy as np

    from open4m.generation import generate
    from open4m.model import FourM, preset

    class SmallCodebook:  # an FSQ-like tokenizer: 1000 codes in a 1024-id modality
        vocab_size = 1000

        def decode(self, tokens):
            assert np.asarray(tokens).max() < 1000
            return np.asarray(tokens, np.float32)

    torch.manual_seed(0)
    model = FourM(preset("tiny_gelu", ["tok_semseg@64"], ["tok_depth@64"], dim=32, encoder_depth=1,
                         decoder_depth=1, num_heads=1)).eval()
    bonus = torch.zeros(1024)
    bonus[1000:] = 100.0  # make the ids the tokenizer cannot decode by far the likeliest ones
    plain_logits = model.logits
    model.logits = lambda y, name: plain_logits(y, name) + bonus
    result = generate(model, {"tok_semseg@64": torch.zeros(16, 16, dtype=torch.long)}, ["tok_depth@64"],
                      tokenizers={"tok_depth@64": SmallCodebook()}, seed=0)
    assert int(result.tokens["tok_depth@64"].max()) < 1000
