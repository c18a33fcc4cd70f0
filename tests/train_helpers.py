"""Shared helpers of the training tests: the shipped tiny copy-task config pointed at shards written in tmp."""

from __future__ import annotations

from pathlib import Path

from open4m import train_config
from open4m.data.copy_task import register, write_copy_shards

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny_copy.yaml"


def copy_data(root: Path, num_shards: int = 4, per_shard: int = 32) -> tuple[Path, Path]:
    """Write train/ and val/ copy-task shards under ``root`` (once); returns the two folders."""
    register()
    train, val = root / "train", root / "val"
    if not train.exists():
        write_copy_shards(train, num_shards, per_shard, seed=0)
        write_copy_shards(val, 1, per_shard, seed=1000, prefix="val")
    return train, val


def tiny_config(root: Path, *overrides: str) -> train_config.TrainConfig:
    """The shipped tiny config on data under ``root``, quiet and small, with ``key=value`` overrides."""
    train, val = copy_data(root / "data")
    base = [f"train_data=[{{shards: {train}}}]", f"val_data=[{{shards: {val}}}]", f"out_dir={root / 'run'}",
            "progress=false", "plot=false", "workers=0", "steps=6", "batch_size=4", "save_every=0", "val_every=0",
            "log_every=1", "warmup_steps=2", "val_batches=2"]
    return train_config.load(CONFIG, [*base, *overrides])
