"""Tokenizer sets: save/load round trip, fingerprints, float16 shipping, the shipped world set, bad folders."""

import json

import numpy as np
import pytest

from open4m.data.world import render_scene
from open4m.shipped import world_tokenizers_dir
from open4m.text import TextTokenizer
from open4m.tokenizer_set import MANIFEST, TokenizerSet
from open4m.vq.autoencoder import TokenizerConfig
from open4m.vq.evaluate import depth_abs_rel, mean_iou, normal_angle_deg, psnr
from open4m.vq.tokenizer import ImageTokenizer


def _small_set() -> TokenizerSet:
    config = TokenizerConfig(modality="depth", image_size=64, patch_size=4, channels=[8, 8, 8], res_blocks=[0, 0, 0])
    text = TextTokenizer.train(["a red cube", "two blue spheres"], vocab_size=4300, class_names=["cube"])
    return TokenizerSet({"tok_depth@64": ImageTokenizer(config)}, text, ["caption@64"])


def test_round_trip_keeps_tokens_and_fingerprints(tmp_path):
    tokens = _small_set()
    tokens.save(tmp_path / "set")
    loaded = TokenizerSet.load(tmp_path / "set")
    depth = render_scene(3)["depth"]
    assert np.array_equal(loaded.image["tok_depth@64"].encode(depth), tokens.image["tok_depth@64"].encode(depth))
    assert loaded.text.encode("a red cube") == tokens.text.encode("a red cube")
    assert loaded.sha256 == tokens.sha256 and len(set(loaded.sha256.values())) == 2
    assert loaded.for_modality("caption@64") is loaded.text
    with pytest.raises(ValueError, match="no tokenizer for 'tok_rgb@64'"):
        loaded.for_modality("tok_rgb@64")


def test_half_precision_halves_the_weights_and_changes_the_fingerprint(tmp_path):
    tokens = _small_set()
    tokens.save(tmp_path / "full")
    full_sha = dict(tokens.sha256)
    tokens.save(tmp_path / "half", half=True)
    size = {k: (tmp_path / k / "depth" / "model.safetensors").stat().st_size for k in ("full", "half")}
    assert size["half"] < 0.6 * size["full"]
    assert tokens.sha256["tok_depth@64"] != full_sha["tok_depth@64"]
    loaded = TokenizerSet.load(tmp_path / "half").image["tok_depth@64"]
    assert next(loaded.model.parameters()).dtype.is_floating_point


def test_save_refuses_to_overwrite_and_load_names_bad_folders(tmp_path):
    tokens = _small_set()
    tokens.save(tmp_path / "set")
    with pytest.raises(FileExistsError, match="already holds a tokenizer set"):
        tokens.save(tmp_path / "set")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        TokenizerSet.load(tmp_path)
    (tmp_path / "set" / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TokenizerSet.load(tmp_path / "set")
    (tmp_path / "set" / MANIFEST).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not an open4m-tokenizer-set/1 manifest"):
        TokenizerSet.load(tmp_path / "set")


def test_shipped_world_tokenizers_reconstruct_world_scenes():
    tokens = TokenizerSet.load(world_tokenizers_dir())
    assert tokens.modalities == ["tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "caption@64",
                                 "det@64"]
    samples = [render_scene(10**9 + 500_000 + i) for i in range(8)]  # val-split seeds
    batch = {key: np.stack([s[key] for s in samples]) for key in ("rgb", "depth", "normal", "semseg")}
    assert psnr(batch["rgb"], tokens.image["tok_rgb@64"].reconstruct(batch["rgb"])) > 28
    assert depth_abs_rel(batch["depth"], tokens.image["tok_depth@64"].reconstruct(batch["depth"])) < 0.03
    assert normal_angle_deg(batch["normal"], tokens.image["tok_normal@64"].reconstruct(batch["normal"])) < 4
    assert mean_iou(batch["semseg"], tokens.image["tok_semseg@64"].reconstruct(batch["semseg"]), 6) > 0.9
    assert tokens.text.token_to_id("[UNK]") not in tokens.text.encode(samples[0]["caption"])
