"""Training under torchrun (2 processes, gloo): same result as one process for FSQ; the VQ syncs its codebook."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from open4m.cli import main

pytestmark = pytest.mark.slow


def _yaml(path, quantizer):
    path.write_text(yaml.safe_dump({
        "tokenizer": {"modality": "rgb", "image_size": 16, "patch_size": 4, "quantizer": quantizer,
                      "codebook_size": 32, "latent_dim": 8, "fsq_levels": [5, 5, 3],
                      "channels": [8, 8, 16], "res_blocks": [0, 1, 1]},
        "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "preview_every": 2, "threads": 1},
    }))
    return path


def _torchrun(cfg, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "open4m.cli", "tokenizer", "train", "--modality", "rgb", "--config", str(cfg), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_match_one_process_with_fsq(tmp_path):
    cfg = _yaml(tmp_path / "fsq.yaml", "fsq")
    assert main(["tokenizer", "train", "--modality", "rgb", "--config", str(cfg), "--out", str(tmp_path / "one")]) == 0
    _torchrun(cfg, tmp_path / "two")
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        np.testing.assert_allclose(two[k].numpy(), one[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["processes"] == 2


def test_vq_trains_under_torchrun(tmp_path):
    _torchrun(_yaml(tmp_path / "vq.yaml", "vq"), tmp_path / "vq")
    summary = json.loads((tmp_path / "vq" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    state = load_file(tmp_path / "vq" / "model.safetensors")
    assert bool(state["quantizer.initted"]) and float(state["quantizer.cluster_size"].sum()) > 0
