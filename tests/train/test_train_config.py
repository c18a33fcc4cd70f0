"""Bad training configs fail early with a message that names the problem; the CLI prints it cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from open4m import cli, train_config
from open4m.train import masking_config, train
from train_helpers import CONFIG, copy_data, tiny_config


def test_the_shipped_config_loads_and_overrides_apply():
    c = train_config.load(CONFIG, ["lr=5e-4", "model_overrides.dim=32", "domains_in=[copy_src]"])
    assert c.lr == 5e-4 and c.model_overrides == {"dim": 32, "encoder_depth": 2, "decoder_depth": 2, "num_heads": 2}
    assert c.domains_in == ["copy_src"] and c.steps == 150


@pytest.mark.parametrize("path", sorted(Path("configs/train").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_in_the_repository_loads_with_its_mixture(path):
    """The configs the README and the configs' own comments tell people to run are valid as written."""
    c = train_config.load(path)
    assert set(c.domains_in) | set(c.domains_out) <= set(masking_config(c).mixture.names)


@pytest.mark.parametrize("override, message", [
    ("learning_rate=1e-3", r"unknown key 'learning_rate'"),
    ("step=10", r"unknown key 'step' \(did you mean 'steps'\?\)"),
    ("steps=ten", r"key 'steps' must be int, got 'ten'"),
    ("clip_grad=[1]", r"key 'clip_grad' must be float"),
    ("progress=3", r"key 'progress' must be bool"),
    ("lr=0", r"key 'lr' \(the learning rate\) must be > 0, got 0.0"),
    ("dtype=fp16", r"key 'dtype' must be one of \['fp32', 'bf16'\]"),
    ("train_data=[]", r"key 'train_data' must list at least one dataset"),
    ("train_data=[{shards: []}]", r"train_data\[0\].shards must be a non-empty"),
    ("train_data=[{shard: x}]", r"train_data\[0\] has unknown keys \['shard'\]"),
    ("lr", r"override 'lr' must look like key=value"),
    ("grow_pretrained=true", r"key 'grow_pretrained' needs pretrained"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        train_config.load(CONFIG, [override])


def test_step_in_backward_needs_no_clipping():
    with pytest.raises(ValueError, match="step_in_backward.*clip_grad 0"):
        train_config.load(CONFIG, ["step_in_backward=true", "clip_grad=1.0"])


def test_data_problems_are_reported_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size 500 × 1 rank\(s\) is larger than the data: train_data holds "
                                         r"128 samples"):
        train(tiny_config(tmp_path, "batch_size=500"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match=r"train_data\[0\]: the shard list is empty"):
        train(tiny_config(tmp_path, f"train_data=[{{shards: {tmp_path / 'nothing'}}}]"))
    with pytest.raises(ValueError, match=r"domains \['caption'\] are not in the masking mixture"):
        train(tiny_config(tmp_path, "domains_in=[copy_src, caption]"))


def test_cli_trains_and_reports_errors_cleanly(tmp_path, capsys):
    train_dir, _ = copy_data(tmp_path / "data")
    args = ["train", "--config", str(CONFIG), f"train_data=[{{shards: {train_dir}}}]", "val_data=[]",
            f"out_dir={tmp_path / 'run'}", "steps=2", "warmup_steps=1", "batch_size=2", "progress=false",
            "plot=false", "workers=0"]
    assert cli.main(args) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert cli.main([*args, "steps=3", "--resume"]) == 0  # later overrides win
    assert "resumed from" in capsys.readouterr().out
    assert cli.main([*args, "lr=-1"]) == 2
    assert "open4m train: error:" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
