"""A tiny synthetic, learnable token dataset for smoke-testing training: "copy a colour across modalities".

Each sample has a hidden class ``c`` in ``[0, 8)`` (tokens use a vocabulary of 32):

- ``copy_src`` (image tokens, 4x4 grid, vocab 32): every token is ``c``, except ~25% replaced by noise;
- ``copy_dst`` (image tokens, 4x4 grid, vocab 32): every token is ``(7 * c + 3) % 32`` — predictable only
  from the other modalities;
- ``copy_txt`` (sequence, ids without EOS, vocab 64): three tokens ``20 + c``.

An untrained model pays ``ln 32 ≈ 3.47`` nats per ``copy_dst`` token, one that ignores its inputs at best
``ln 8 ≈ 2.08``, one that has learnt the mapping almost nothing. Write shards with
``python -m open4m.data.copy_task --out DIR [--shards 4 --per-shard 64 --seed 0]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from open4m import modalities
from open4m.data.shards import write_shard

NUM_CLASSES, NUM_HIDDEN, GRID = 32, 8, 4
MODALITIES = {
    "copy_src": {"kind": "image_tokens", "vocab_size": NUM_CLASSES, "image_size": GRID, "patch_size": 1},
    "copy_dst": {"kind": "image_tokens", "vocab_size": NUM_CLASSES, "image_size": GRID, "patch_size": 1},
    "copy_txt": {"kind": "sequence", "vocab_size": 64, "max_tokens": 8},
}
MIXTURE = {
    "input_tokens": 16, "target_tokens": 16,
    "modalities": MODALITIES,
    "alphas_mixture": {
        "copy_src": {"input_alphas": [1.0], "target_alphas": [0.0]},
        "copy_dst": {"input_alphas": [0.0], "target_alphas": [1.0]},
        "copy_txt": {"input_alphas": [0.5], "target_alphas": [0.5]},
    },
}


def register() -> None:
    """Register the three copy-task modalities (no-op when already registered identically)."""
    for name, spec in MODALITIES.items():
        if name not in modalities.names():
            modalities.register(modalities.Modality(name, **spec))


def make_sample(rng: np.random.Generator, key: str) -> dict:
    """One sample as :func:`open4m.data.shards.write_shard` takes it."""
    c = int(rng.integers(NUM_HIDDEN))
    src = np.full((GRID, GRID), c, np.int64)
    noise = rng.random((GRID, GRID)) < 0.25
    src[noise] = rng.integers(NUM_CLASSES, size=int(noise.sum()))
    dst = np.full((GRID, GRID), (7 * c + 3) % NUM_CLASSES, np.int64)
    return {"__key__": key, "copy_src.npy": src, "copy_dst.npy": dst,
            "copy_txt.npy": np.full(3, 20 + c, np.int64)}


def write_copy_shards(out: str | Path, num_shards: int = 4, per_shard: int = 64, seed: int = 0,
                      prefix: str = "copy") -> list[Path]:
    """Write ``num_shards`` shards of ``per_shard`` samples into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(num_shards):
        samples = [make_sample(rng, f"{prefix}{s:03d}x{i:05d}") for i in range(per_shard)]
        paths.append(write_shard(out / f"{prefix}-{s:04d}.tar", samples, overwrite=True))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for train/ and val/ shards")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train = write_copy_shards(Path(args.out) / "train", args.shards, args.per_shard, args.seed)
    val = write_copy_shards(Path(args.out) / "val", 1, args.per_shard, args.seed + 1000, prefix="val")
    print(f"wrote {len(train)} train and {len(val)} val shards to {args.out}")


if __name__ == "__main__":
    main()
