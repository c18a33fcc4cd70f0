"""Fingerprint of the world's output, to check that two machines render byte-identical scenes.

Run on each machine and compare the printed digests:
``PYTHONPATH=src python benchmarks/world_fingerprint.py``. Each digest covers every modality (array bytes
and the JSON of det, caption, palette, metadata and scene graph) of ``num`` scenes at one resolution.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform

import numpy as np

from open4m.data.world import WorldConfig, render_scene

ARRAYS = ("rgb", "depth", "normal", "semseg", "instance", "edges")
RECORDS = ("det", "caption", "color_palette", "metadata", "scene")


def fingerprint(resolution: int, num: int, stride: int = 7919) -> str:
    """SHA-256 over scenes ``0, stride, 2 stride, ...`` (``num`` of them) at ``resolution``."""
    config = dataclasses.replace(WorldConfig(), resolution=resolution)
    total = hashlib.sha256()
    for i in range(num):
        sample = render_scene(i * stride, config)
        for name in ARRAYS:
            total.update(sample[name].tobytes())
        total.update(json.dumps({k: sample[k] for k in RECORDS}, sort_keys=True).encode())
    return total.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-64", type=int, default=300)
    parser.add_argument("--num-224", type=int, default=30)
    args = parser.parse_args()
    print(f"{platform.machine()} python {platform.python_version()} numpy {np.__version__}")
    print("| resolution | scenes | sha256 |")
    print("|---:|---:|---|")
    for resolution, num in ((64, args.num_64), (224, args.num_224)):
        print(f"| {resolution} | {num} | {fingerprint(resolution, num)} |")


if __name__ == "__main__":
    main()
