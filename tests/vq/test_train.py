"""Tokenizer training: it learns, resumes exactly, checkpoints without pickle, refuses to overwrite."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from open4m.vq.evaluate import evaluate_tokenizer
from open4m.vq.samples import synthetic_sample
from open4m.vq.tokenizer import ImageTokenizer
from open4m.vq.train import train_tokenizer
from vq_helpers import tiny_config, tiny_train


@pytest.fixture(scope="module")
def held_out():
    return [synthetic_sample(i, image_size=16, seed=1) for i in range(32)]


@pytest.mark.parametrize(
    ("modality", "metric", "better"),
    [("rgb", "psnr_db", 6.0), ("semseg", "miou", 0.15), ("depth", "abs_rel", -0.2)],
)
def test_training_improves_reconstruction_and_codebook_usage(modality, metric, better, tiny_samples, held_out,
                                                            tmp_path):
    """200 steps on 16 px toy scenes: the metric improves by a stated margin, more codes come into use."""
    config = tiny_config(modality)
    before = evaluate_tokenizer(ImageTokenizer(config), held_out)
    tok = train_tokenizer(config, tiny_samples, tmp_path, train=tiny_train(steps=200, checkpoint_every=1000,
                                                                           preview_every=1000), progress=False)
    after = evaluate_tokenizer(tok, held_out)
    if better > 0:
        assert after[metric] >= before[metric] + better, (before, after)
    else:
        assert after[metric] <= before[metric] + better, (before, after)
    assert after["codebook_usage"] > before["codebook_usage"]


def test_fsq_tokenizer_trains(tiny_samples, held_out, tmp_path):
    config = tiny_config("rgb", quantizer="fsq", fsq_levels=[5, 5, 3])
    before = evaluate_tokenizer(ImageTokenizer(config), held_out)
    tok = train_tokenizer(config, tiny_samples, tmp_path, train=tiny_train(steps=200, checkpoint_every=1000,
                                                                           preview_every=1000), progress=False)
    after = evaluate_tokenizer(tok, held_out)
    assert tok.vocab_size == 75 and after["psnr_db"] >= before["psnr_db"] + 6.0, (before, after)


class _Crashing:
    """Yields ``samples`` but raises after ``limit`` items, like a run killed mid-way."""

    def __init__(self, samples, limit):
        self.samples, self.limit = samples, limit

    def __iter__(self):
        for i, s in enumerate(self.samples):
            if i == self.limit:
                raise KeyboardInterrupt("simulated kill")
            yield s


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_samples, tmp_path):
    config = tiny_config("rgb", vq_decay=0.5)  # fast decay: dead-code restarts (random draws) happen
    train = tiny_train(steps=6, checkpoint_every=3, preview_every=100)
    straight = train_tokenizer(config, tiny_samples, tmp_path / "a", train=train, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(config, _Crashing(tiny_samples, 5 * 8), tmp_path / "b", train=train, progress=False)
    with safe_open(str(tmp_path / "b" / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["state"])["step"] == 3
    resumed = train_tokenizer(config, tiny_samples, tmp_path / "b", train=train, resume=True, progress=False)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert float(straight.model.quantizer.cluster_size.sum()) == float(resumed.model.quantizer.cluster_size.sum())


def test_outputs_checkpoint_preview_and_summary(tiny_samples, tmp_path):
    train_tokenizer(tiny_config("normal"), tiny_samples, tmp_path, train=tiny_train(), progress=False)
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json", "model.safetensors", "checkpoint.safetensors", "preview.png", "train_summary.json"}
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        keys = set(f.keys())
    assert state["step"] == 4 and state["samples_seen"] == 32 and state["tokenizer"]["modality"] == "normal"
    assert "rng.torch" in keys
    assert any(k.startswith("optim.") for k in keys) and any(k.startswith("model.") for k in keys)
    assert Image.open(tmp_path / "preview.png").size == (8 * 16, 2 * 16)  # 8 inputs over 8 reconstructions
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["train_seconds"] > 0
    assert ImageTokenizer.load(tmp_path).config == tiny_config("normal")


def test_refuses_to_overwrite_and_checks_resume(tiny_samples, tmp_path):
    train_tokenizer(tiny_config("edges"), tiny_samples, tmp_path, train=tiny_train(steps=2), progress=False)
    with pytest.raises(ValueError, match="already holds a tokenizer run"):
        train_tokenizer(tiny_config("edges"), tiny_samples, tmp_path, train=tiny_train(steps=2), progress=False)
    with pytest.raises(ValueError, match="tokenizer config differs"):
        train_tokenizer(tiny_config("edges", codebook_size=32), tiny_samples, tmp_path, train=tiny_train(steps=2),
                        resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint.safetensors"):
        train_tokenizer(tiny_config("edges"), tiny_samples, tmp_path / "new", resume=True, progress=False)


def test_bad_training_data_is_a_clear_error(tiny_samples, tmp_path):
    with pytest.raises(ValueError, match="ran out after 3 samples"):
        train_tokenizer(tiny_config("rgb"), iter(tiny_samples[:3]), tmp_path / "a", train=tiny_train(),
                        progress=False)
    with pytest.raises(ValueError, match="has no 'semseg'"):
        train_tokenizer(tiny_config("semseg"), [{"rgb": s["rgb"]} for s in tiny_samples], tmp_path / "b",
                        train=tiny_train(), progress=False)
    wrong = [{**s, "rgb": s["rgb"][..., :1]} for s in tiny_samples]
    with pytest.raises(ValueError, match=r"rgb: expected a uint8 array of shape \(16, 16, 3\)"):
        train_tokenizer(tiny_config("rgb"), wrong, tmp_path / "c", train=tiny_train(), progress=False)
