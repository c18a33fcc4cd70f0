"""Masking throughput: samples/s per core for 4M-7-like, 4M-21-like and world modality sets.

Run:  PYTHONPATH=src python benchmarks/masking.py [--samples 2000] [--batch 64]

Times are CPU time of this one process (so "per core"), for masking alone and for masking plus
``collate`` into a torch batch. Sample contents are random token ids of realistic lengths
(captions 10-40 tokens, detections 5-80, metadata 20 chunks of 2, ...).
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


def measure(masking: UnifiedMasking, num_samples: int, batch: int) -> tuple[float, float]:
    """CPU microseconds per sample: masking alone, and masking + collate."""
    rng = np.random.default_rng(0)
    samples = [random_sample(masking.mixture.names, rng) for _ in range(64)]
    masking(samples[0], rng)  # warm-up
    start = time.process_time()
    masked = [masking(samples[i % len(samples)], rng) for i in range(num_samples)]
    mask_time = time.process_time() - start
    start = time.process_time()
    for i in range(0, num_samples - batch + 1, batch):
        collate(masked[i:i + batch])
    collate_time = (time.process_time() - start) / (num_samples // batch * batch)
    per_sample = mask_time / num_samples
    return per_sample * 1e6, (per_sample + collate_time) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    sets = [
        ("4M-7 (rgb2all+all2all a0.5, 128/128)",
         MaskingConfig(rgb2all_all2all(modalities.FOURM7_DOMAINS_IN, modalities.FOURM7_DOMAINS_OUT, "rgb@224"),
                       128, 128)),
        ("4M-21 (19 in / 17 out, a0.5, 256/256)",
         MaskingConfig(rgb2all_all2all(modalities.FOURM21_DOMAINS_IN, modalities.FOURM21_DOMAINS_OUT, "rgb@224"),
                       256, 256)),
        ("world (configs/mixtures/world.yaml)", MaskingConfig.from_yaml("configs/mixtures/world.yaml")),
    ]
    print(f"{'modality set':40s} {'mods':>4s} {'mask us/sample':>15s} {'samples/s/core':>15s} "
          f"{'+collate us':>12s} {'samples/s/core':>15s}")
    for label, config in sets:
        masking = UnifiedMasking(config)
        mask_us, total_us = measure(masking, args.samples, args.batch)
        print(f"{label:40s} {len(config.mixture.names):4d} {mask_us:15.0f} {1e6 / mask_us:15.0f} "
              f"{total_us:12.0f} {1e6 / total_us:15.0f}")


if __name__ == "__main__":
    main()
