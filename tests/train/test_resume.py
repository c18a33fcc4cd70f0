"""Exact resume: a run killed with SIGKILL and resumed logs bit-identical per-step losses (CPU, fp32)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from open4m import train_config, train_state
from open4m.train import train
from train_helpers import CONFIG, copy_data

SRC = Path(__file__).resolve().parents[2] / "src"
STEPS = 30


def _overrides(root: Path, run: str) -> list[str]:
    train, val = copy_data(root / "data")
    # 2 workers and a checkpoint every 3 steps: resuming after an odd batch count rotates the workers' roles.
    return [f"train_data=[{{shards: {train}}}]", "val_data=[]", f"out_dir={root / run}", "progress=false",
            "plot=false", "workers=2", f"steps={STEPS}", "batch_size=4", "save_every=3", "keep_last=2",
            "log_every=1", "warmup_steps=3", "threads=1", "shuffle_buffer=16"]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_gives_bitwise_identical_losses(tmp_path):
    reference = train(train_config.load(CONFIG, _overrides(tmp_path, "ref")))["losses"]
    assert len(reference) == STEPS

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "open4m.cli", "train", "--config", str(CONFIG), *_overrides(tmp_path, "run")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert done < STEPS

    # A checkpoint interrupted while being written, and a directory without its state.json, are never used.
    ckpts = train_state.checkpoint_dir(tmp_path / "run")
    (ckpts / ".tmp-step-00000099-1").mkdir()
    (ckpts / ".tmp-step-00000099-1" / "model.safetensors").write_bytes(b"half")
    (ckpts / "step-00000098").mkdir()
    resumed_from = train_state.latest_checkpoint(tmp_path / "run")
    assert resumed_from is not None and resumed_from.name != "step-00000098"

    result = train(train_config.load(CONFIG, _overrides(tmp_path, "run")), resume=True)
    assert not (ckpts / ".tmp-step-00000099-1").exists()
    assert len(result["losses"]) == STEPS - int(resumed_from.name.split("-")[1])
    assert _losses(tmp_path / "run") == reference  # bitwise: float == float, every step
    assert _losses(tmp_path / "ref") == reference
    assert [p.name for p in train_state.list_checkpoints(tmp_path / "run")] == ["step-00000027", "step-00000030"]


def test_a_new_run_refuses_an_out_dir_with_checkpoints(tmp_path):
    overrides = _overrides(tmp_path, "run") + ["steps=3", "workers=0"]
    train(train_config.load(CONFIG, overrides))
    with pytest.raises(ValueError, match="--resume"):
        train(train_config.load(CONFIG, overrides))
