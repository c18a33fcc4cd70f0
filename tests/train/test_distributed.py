"""DDP and FSDP2 with 2 gloo processes train the same model as one process with 2 accumulated micro-batches.

Why that is the right reference: with ``loss_type: mod`` the loss of a batch is a mean of per-modality
means, so it is not the mean over its halves; what DDP computes is the average of the two ranks'
gradients, and that is exactly what one process accumulating the same two micro-batches (each scaled by
1/2) computes. Tolerance: rtol 1e-5 / atol 1e-6 on per-step losses and final weights after 4 AdamW steps.
The gradients differ only by fp32 rounding of the summation order (all-reduce vs local accumulation,
relative ~1e-7), and 4 AdamW steps keep that far below 1e-5 -- with one exception: the attention *key*
biases get a gradient that is exactly 0 in real arithmetic (softmax is shift-invariant per query), so
what they get is rounding noise, which Adam normalises into steps of up to ``lr``. Those slices are only
checked against that bound (``steps * lr``); every other weight must agree to rtol 1e-5 / atol 1e-6.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from open4m.data.copy_task import MIXTURE, make_sample, register
from open4m.data.loader import decode_sample
from open4m.masking import UnifiedMasking
from open4m.mixtures import MaskingConfig
from open4m.train import train
from train_helpers import tiny_config

STEPS, MICRO = 4, 3


def micro_batches(count: int):
    """Fixed masked copy-task batches (micro-batch ``i`` is the same in every process)."""
    register()
    masking = UnifiedMasking(MaskingConfig.from_dict(MIXTURE))
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        samples = [decode_sample(make_sample(rng, f"k{i}x{j}"), masking.mixture.names, "test")
                   for j in range(MICRO)]
        out.append(masking.mask_batch(samples, np.random.default_rng(i)))
    return out


def _worker(rank: int, world: int, port: int, root: str, strategy: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    config = tiny_config(Path(root), f"distributed={strategy}", f"steps={STEPS}",
                         f"batch_size={MICRO}", "device=cpu", "threads=1", "val_data=[]", f"out_dir={root}/{strategy}")
    batches = micro_batches(2 * STEPS)
    train(config, batches=batches[rank::2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    config = tiny_config(root, f"steps={STEPS}", f"batch_size={MICRO}", "accum_steps=2", "threads=1",
                         "val_data=[]", f"out_dir={root}/single")
    train(config, batches=micro_batches(2 * STEPS))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_the_same_model_as_one(single, strategy):
    mp.spawn(_worker, args=(2, _free_port(), str(single), strategy), nprocs=2, join=True)
    ref, got = _losses(single / "single"), _losses(single / strategy)
    assert len(got) == STEPS
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert ref[-1] < ref[0]  # it trained at all
    step = f"checkpoints/step-{STEPS:08d}/model.safetensors"
    ref_w, got_w = load_file(str(single / "single" / step)), load_file(str(single / strategy / step))
    assert ref_w.keys() == got_w.keys()
    dim = ref_w["mask_token"].shape[-1]
    for key in ref_w:
        ref_t, got_t = ref_w[key].clone(), got_w[key].clone()
        noise = {"qkv.bias": slice(dim, 2 * dim), "kv.bias": slice(0, dim)}
        for suffix, keys in noise.items():
            if key.endswith(suffix):
                assert (got_t[keys] - ref_t[keys]).abs().max() <= STEPS * 2e-3
                got_t[keys] = ref_t[keys]
                break
        torch.testing.assert_close(got_t, ref_t, rtol=1e-5, atol=1e-6, msg=key)
