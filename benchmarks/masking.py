"""Masking throughput: samples/s per core for 4M-7-like, 4M-21-like and world modality sets.

Run:  PYTHONPATH=src python benchmarks/masking.py [--samples 2000] [--batch 64]

Times are CPU time of this one process (so "per core"): ``mask_sample`` per sample, then ``collate``
into a torch batch, and ``mask_batch`` (budgets and image positions drawn for the whole batch).
Sample contents are random token ids of realistic lengths (captions 10-40 tokens, detections 5-80,
metadata 5-18 chunks of 2, ...).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from open4m import modalities
from open4m.masking import UnifiedMasking, collate
from open4m.mixtures import MaskingConfig, Mixture

SEQUENCE_LENGTHS = {"caption": (10, 40), "det": (5, 80), "human_poses": (1, 120), "color_palette": (4, 22),
                    "sam_instance": (50, 280)}


def rgb2all_all2all(domains_in: list[str], domains_out: list[str], pixels: str) -> Mixture:
    """Two components: only ``pixels`` as input (alpha 1000) -> all targets (0.5); all -> all (0.5)."""
    names = set(domains_in) | set(domains_out)
    return Mixture.from_dict({n: {"input_alphas": [1000.0 if n == pixels else 0.0, 0.5 if n in domains_in else 0.0],
                                  "target_alphas": [0.5 if n in domains_out else 0.0] * 2} for n in names})


def random_sample(names, rng: np.random.Generator) -> dict:
    sample = {}
    for name in names:
        info = modalities.get(name)
        if info.kind == "image_tokens":
            sample[name] = rng.integers(0, info.vocab_size, info.max_tokens).astype(np.int16)  # as stored in shards
        elif info.kind == "pixels":
            sample[name] = rng.standard_normal((info.num_channels, info.image_size, info.image_size), np.float32)
        elif info.kind == "embeddings":
            sample[name] = rng.standard_normal((int(rng.integers(5, 40)), info.embedding_dim), np.float32)
        elif name == "metadata":
            sample[name] = [[1204 + k, 204 + int(rng.integers(0, 50))] for k in range(int(rng.integers(5, 19)))]
        else:
            lo, hi = SEQUENCE_LENGTHS.get(name, (5, 40))
            sample[name] = rng.integers(300, 4000, int(rng.integers(lo, min(hi, info.max_tokens - 1))))
    return sample


def measure(masking: UnifiedMasking, num_samples: int, batch: int) -> tuple[float, float, float]:
    """CPU microseconds per sample: masking alone, masking + collate, and ``mask_batch``."""
    rng = np.random.default_rng(0)
    samples = [random_sample(masking.mixture.names, rng) for _ in range(batch)]
    masking(samples[0], rng)  # warm-up
    num_batches = max(1, num_samples // batch)
    start = time.process_time()
    masked = [[masking(s, rng) for s in samples] for _ in range(num_batches)]
    mask_time = time.process_time() - start
    start = time.process_time()
    for mod_dicts in masked:
        collate(mod_dicts)
    collate_time = time.process_time() - start
    start = time.process_time()
    for _ in range(num_batches):
        masking.mask_batch(samples, rng)
    batch_time = time.process_time() - start
    per = 1e6 / (num_batches * batch)
    return mask_time * per, (mask_time + collate_time) * per, batch_time * per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    sets = [
        ("4M-7 (rgb2all+all2all a0.5, 128/128)",
         MaskingConfig(rgb2all_all2all(modalities.FOURM7_DOMAINS_IN, modalities.FOURM7_DOMAINS_OUT, "rgb@224"),
                       128, 128)),
        ("4M-7 without rgb@224 pixels",
         MaskingConfig(rgb2all_all2all(modalities.FOURM7_DOMAINS_OUT, modalities.FOURM7_DOMAINS_OUT, "tok_rgb@224"),
                       128, 128)),
        ("4M-21 (19 in / 17 out, a0.5, 256/256)",
         MaskingConfig(rgb2all_all2all(modalities.FOURM21_DOMAINS_IN, modalities.FOURM21_DOMAINS_OUT, "rgb@224"),
                       256, 256)),
        ("world (configs/mixtures/world.yaml)", MaskingConfig.from_yaml("configs/mixtures/world.yaml")),
    ]
    print(f"CPU time per sample, batches of {args.batch}; samples/s per core in brackets\n")
    print(f"{'modality set':40s} {'mods':>4s} {'mask_sample':>16s} {'+ collate':>16s} {'mask_batch':>16s}")
    for label, config in sets:
        masking = UnifiedMasking(config)
        timings = measure(masking, args.samples, args.batch)
        cells = " ".join(f"{f'{us:.0f} us ({1e6 / us:.0f})':>16s}" for us in timings)
        print(f"{label:40s} {len(config.mixture.names):4d} {cells}")


if __name__ == "__main__":
    main()
