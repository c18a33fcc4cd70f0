"""End-to-end training throughput (shards → samples → masking → step) next to the model-only step.

Model and batch as benchmarks/train_step.py (tiny 4M, GELU, tied heads, batch 8, 128 input + 128 target
tokens, inputs {rgb@224, tok_rgb@224, tok_depth@224, caption, det}). The data are synthetic token shards
written once into --data (rgb@224 as float32 (3, 224, 224) .npy, tokens as int .npy, captions 10-40 and
detections 5-80 token ids), masked with a two-component rgb2all / all2all mixture (alphas 0.5).

Rows:
- model-only: ``benchmarks/train_step.py``'s fixed batch, forward + backward + AdamW step, median; measured
  before and after the end-to-end run, because on a shared machine the load drifts;
- data path: reading + decoding + ``mask_batch`` of one batch in this process (what a step would pay
  without workers), median, and its share of (data path + model step);
- end-to-end: ``open4m.train.train`` with ``--workers`` loader processes, median of the per-step
  tokens/s it logs (its first steps dropped as warm-up).

Run:  PYTHONPATH=src python benchmarks/train.py [--steps 8] [--workers 1] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from open4m import modalities  # noqa: E402
from open4m.data.loader import DatasetSpec, MaskedBatches, expand_shards  # noqa: E402
from open4m.data.shards import write_shard  # noqa: E402
from open4m.mixtures import MaskingConfig, Mixture  # noqa: E402
from open4m.runtime import tune_allocator  # noqa: E402
from train_step import BATCH, DOMAINS_IN, DOMAINS_OUT, N_IN, N_OUT, make_batch  # noqa: E402

SEQ_LENGTHS = {"caption": (10, 40), "det": (5, 80)}


def write_data(folder: Path, num_shards: int = 4, per_shard: int = 16) -> list[str]:
    """Synthetic token shards with every modality of the benchmark model (written once, reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s in range(num_shards):
        path = folder / f"bench-{s:04d}.tar"
        if path.exists():
            continue
        samples = []
        for i in range(per_shard):
            sample = {"__key__": f"s{s:03d}x{i:04d}",
                      "rgb@224.npy": rng.standard_normal((3, 224, 224), np.float32)}
            for name in ("tok_rgb@224", "tok_depth@224"):
                sample[f"{name}.npy"] = rng.integers(0, modalities.get(name).vocab_size, (14, 14))
            for name, (lo, hi) in SEQ_LENGTHS.items():
                sample[f"{name}.npy"] = rng.integers(4300, modalities.get(name).vocab_size, rng.integers(lo, hi + 1))
            samples.append(sample)
        write_shard(path, samples)
    return expand_shards(str(folder))


def mixture_config() -> MaskingConfig:
    names = sorted(set(DOMAINS_IN) | set(DOMAINS_OUT))
    mixture = Mixture.from_dict({n: {"input_alphas": [1000.0 if n == "rgb@224" else 0.0, 0.5],
                                     "target_alphas": [0.5 if n in DOMAINS_OUT else 0.0] * 2} for n in names})
    return MaskingConfig(mixture, (N_IN, N_IN), (N_OUT, N_OUT))


def model_only(steps: int, dtype: str) -> float:
    """Median seconds of one training step on the fixed batch of benchmarks/train_step.py."""
    from open4m.model import FourM, preset
    from open4m.optim import adamw

    torch.manual_seed(0)
    model = FourM(preset("tiny_gelu", DOMAINS_IN, DOMAINS_OUT, tie_decoder_embeddings=True)).train()
    opt = adamw(model, lr=1e-4)
    batch = make_batch()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss, _ = model(batch, N_IN, N_OUT)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def data_path(shards: list[str], batches: int) -> float:
    """Median seconds to read, decode and mask one batch in this process."""
    source = iter(MaskedBatches([DatasetSpec(shards)], mixture_config(), BATCH, shuffle_buffer=16))
    next(source)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        next(source)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def end_to_end(shards: list[str], steps: int, workers: int, dtype: str, out: Path) -> float:
    """Median tokens/s that ``open4m.train.train`` logs per step (first two steps dropped)."""
    from open4m.train import train
    from open4m.train_config import from_dict

    masking = mixture_config().to_dict()
    config = from_dict({"model": "tiny_gelu", "domains_in": DOMAINS_IN, "domains_out": DOMAINS_OUT,
                        "masking": masking, "input_tokens": N_IN, "target_tokens": N_OUT,
                        "train_data": [{"shards": shards}], "steps": steps + 2, "batch_size": BATCH, "lr": 1e-4,
                        "workers": workers, "shuffle_buffer": 16, "dtype": dtype, "log_every": 1,
                        "progress": False, "plot": False, "out_dir": str(out), "keep_last": 1})
    train(config)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_s"] for r in records[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--data", default=None, help="folder for the synthetic shards (default: a temp dir)")
    args = parser.parse_args()
    tune_allocator()  # as benchmarks/train_step.py and open4m.train do
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_data(Path(args.data or tmp) / "shards")
        tokens = BATCH * (N_IN + N_OUT)
        before = model_only(args.steps, args.dtype)
        data = data_path(shards, max(8, args.steps))
        e2e = end_to_end(shards, args.steps, args.workers, args.dtype, Path(tmp) / "run")
        after = model_only(args.steps, args.dtype)  # again: on a shared machine the load drifts
    step = (before + after) / 2
    print(f"tiny 4M (GELU, tied heads), batch {BATCH}, {N_IN}+{N_OUT} tokens, {args.dtype}, "
          f"{torch.get_num_threads()} threads, loader workers {args.workers}, torch {torch.__version__}")
    print(f"{'what':34s} | {'seconds/step':>12s} | {'tokens/s':>9s}")
    print(f"{'model-only step, before':34s} | {before:12.3f} | {tokens / before:9.0f}")
    print(f"{'model-only step, after':34s} | {after:12.3f} | {tokens / after:9.0f}")
    print(f"{'data path (read+decode+mask_batch)':34s} | {data:12.4f} | {tokens / data:9.0f}")
    print(f"{'end-to-end open4m.train':34s} | {tokens / e2e:12.3f} | {e2e:9.0f}")
    print(f"data-path share of a step without workers: {100 * data / (data + step):.1f}%; "
          f"end-to-end vs mean model-only: {100 * e2e * step / tokens:.0f}%")


if __name__ == "__main__":
    main()
