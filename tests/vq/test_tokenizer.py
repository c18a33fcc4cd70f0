"""ImageTokenizer: the shared interface, save/load, and clear errors on bad input."""

import numpy as np
import pytest

from open4m import modalities
from open4m.vq.adapters import build_adapter
from open4m.vq.samples import synthetic_sample
from open4m.vq.tokenizer import ImageTokenizer
from vq_helpers import tiny_config

MODS = ["rgb", "depth", "normal", "semseg", "edges"]


@pytest.fixture(scope="module")
def batch():
    samples = [synthetic_sample(i, image_size=16) for i in range(3)]
    return {m: np.stack([s[m] for s in samples]) for m in MODS}


@pytest.mark.parametrize("modality", MODS)
def test_encode_decode_shapes_dtypes_and_registry_name(modality, batch):
    tok = ImageTokenizer(tiny_config(modality))
    tokens = tok.encode(batch[modality])
    assert tokens.shape == (3, 4, 4) and tokens.dtype == np.int64 and tok.token_grid == (4, 4)
    assert tokens.min() >= 0 and tokens.max() < tok.vocab_size == 64
    assert tok.modality == f"tok_{modality}@16"
    raw = tok.decode(tokens)
    assert raw.shape == batch[modality].shape and raw.dtype == batch[modality].dtype
    assert tok.encode(batch[modality][0]).shape == (1, 4, 4)  # one image is a batch of one
    assert np.array_equal(tok.decode(tokens.astype(np.int16)), raw)  # any integer dtype
    assert tok.decode(tokens[0]).shape == raw[:1].shape


def test_world_registry_matches_the_shipped_configs():
    from open4m.vq.train import load_config

    for m in MODS:
        config, _, _ = load_config(f"configs/tokenizers/{m}.yaml", m)
        tok = ImageTokenizer(config)
        record = modalities.get(tok.modality)
        assert record.kind == "image_tokens" and record.vocab_size == tok.vocab_size
        assert (record.grid_size, record.grid_size) == tok.token_grid
    assert modalities.get("rgb@64").patch_size == modalities.get("tok_rgb@64").patch_size


@pytest.mark.parametrize("modality", MODS)
def test_save_load_round_trip_gives_identical_tokens_and_outputs(modality, batch, tmp_path):
    tok = ImageTokenizer(tiny_config(modality))
    tok.save(tmp_path / "t")
    again = ImageTokenizer.load(tmp_path / "t")
    assert again.config == tok.config
    tokens = tok.encode(batch[modality])
    assert np.array_equal(again.encode(batch[modality]), tokens)
    assert np.array_equal(again.decode(tokens), tok.decode(tokens))
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["config.json", "model.safetensors"]


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        ImageTokenizer.load(tmp_path)
    ImageTokenizer(tiny_config("rgb")).save(tmp_path / "a")
    ImageTokenizer(tiny_config("rgb", codebook_size=32)).save(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").replace(tmp_path / "b" / "model.safetensors")
    with pytest.raises(ValueError, match="does not match config.json"):
        ImageTokenizer.load(tmp_path / "b")


@pytest.mark.parametrize(
    ("modality", "bad", "message"),
    [
        ("rgb", np.zeros((16, 16, 4), np.uint8), r"rgb: expected a uint8 array of shape \(16, 16, 3\)"),
        ("rgb", np.zeros((2, 32, 32, 3), np.uint8), r"rgb: expected .* got shape \(2, 32, 32, 3\)"),
        ("rgb", np.zeros((16, 16, 3), np.float32), "rgb: expected a uint8 .* got dtype float32"),
        ("depth", np.full((16, 16), np.nan, np.float32), "depth: input contains NaN"),
        ("depth", -np.ones((16, 16), np.float32), "depth: expected metres >= 0"),
        ("depth", np.zeros((16, 16, 1), np.float32), r"depth: expected a float32 array of shape \(16, 16\)"),
        ("normal", np.zeros((16, 16), np.float32), r"normal: expected a float32 array of shape \(16, 16, 3\)"),
        ("normal", np.full((16, 16, 3), 2.0, np.float32), "normal: expected unit vectors"),
        ("semseg", np.full((16, 16), 9, np.uint8), r"semseg: class ids must be in \[0, 8\)"),
        ("semseg", np.zeros((16, 16), np.int64), "semseg: expected a uint8 .* got dtype int64"),
        ("edges", np.full((16, 16), 7, np.uint8), "edges: expected values 0 or 255"),
    ],
)
def test_bad_raw_input_is_a_clear_error(modality, bad, message):
    with pytest.raises(ValueError, match=message):
        ImageTokenizer(tiny_config(modality)).encode(bad)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (np.zeros((2, 5, 4), np.int64), r"tok_depth@16: expected a token grid of shape \(4, 4\) or \(B, 4, 4\)"),
        (np.zeros((4, 4), np.float32), "tok_depth@16: expected integer token ids"),
        (np.full((4, 4), 64), r"tok_depth@16: token ids must be in \[0, 64\)"),
        (np.full((4, 4), -1), r"tok_depth@16: token ids must be in \[0, 64\)"),
    ],
)
def test_bad_tokens_are_a_clear_error(tokens, message):
    with pytest.raises(ValueError, match=message):
        ImageTokenizer(tiny_config("depth")).decode(tokens)


@pytest.mark.parametrize("modality", MODS)
def test_adapters_invert_a_perfect_decoder_output(modality, batch):
    """to_raw(the output an ideal decoder would give) recovers the raw input (up to float rounding)."""
    adapter = build_adapter(modality, 16)
    raw = adapter.check(batch[modality])
    target = adapter.to_target(raw)
    if modality == "depth":
        import torch

        ideal = torch.stack([target["depth"], target["valid"] * 20 - 10], dim=1)
    elif modality == "semseg":
        import torch

        ideal = torch.nn.functional.one_hot(target["semseg"], 8).permute(0, 3, 1, 2).float()
    elif modality == "edges":
        ideal = (target["edges"][:, None] * 20 - 10)
    else:
        ideal = target[modality]
    back = adapter.to_raw(ideal)
    if modality in ("depth", "normal"):
        np.testing.assert_allclose(back, raw, rtol=1e-5, atol=1e-6)
    else:
        assert np.array_equal(back, raw)
    pic = adapter.to_picture(raw)
    assert pic.shape == (3, 16, 16, 3) and pic.dtype == np.uint8
