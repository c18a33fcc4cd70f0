"""Speed of the procedural world: rendering scenes/s per core at 64 and 224 px, and writing shards.

Run: ``PYTHONPATH=src python benchmarks/world.py`` (add ``--write-num 0`` to skip the write test).
Targets (issue 3): >= 100 scenes/s per core at 64 px, >= 8 at 224 px (every modality, labels and
caption included); 10,000 scenes at 64 px with every modality written in < 2 minutes on 2 cores.
"Per core" is scenes divided by the process's CPU time, which stays meaningful on a busy machine;
wall-clock rates are printed beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from open4m.data.world import WorldConfig, render_scene
from open4m.data.world.writer import write_world


def time_rendering(resolution: int, num: int) -> tuple[float, float]:
    """(scenes per CPU-second, scenes per wall-second) rendering ``num`` train scenes in this process."""
    config = dataclasses.replace(WorldConfig(), resolution=resolution)
    render_scene(0, config)  # warm caches (pixel grid)
    wall, cpu = time.perf_counter(), time.process_time()
    for seed in range(1, num + 1):
        render_scene(seed, config)
    return num / (time.process_time() - cpu), num / (time.perf_counter() - wall)


def time_writing(num: int, workers: int, shard_size: int) -> tuple[float, float]:
    """(wall seconds, MB on disk) to write ``num`` scenes at 64 px as shards with ``workers`` processes."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        report = write_world(Path(folder) / "world", num, workers=workers, shard_size=shard_size)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in report.paths) / 1e6
    return seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-64", type=int, default=1000, help="scenes timed at 64 px")
    parser.add_argument("--num-224", type=int, default=100, help="scenes timed at 224 px")
    parser.add_argument("--write-num", type=int, default=10_000, help="scenes written (0 skips)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=500)
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| measurement | scenes | per core (CPU time) | wall clock | target |")
    print("|---|---:|---:|---:|---|")
    for resolution, num, target in ((64, args.num_64, ">= 100 scenes/s/core"), (224, args.num_224, ">= 8")):
        per_core, wall = time_rendering(resolution, num)
        print(f"| render every modality at {resolution} px | {num} | {per_core:.1f} scenes/s | {wall:.1f} scenes/s "
              f"| {target} |")
    if args.write_num:
        seconds, size = time_writing(args.write_num, args.workers, args.shard_size)
        print(f"| write {args.write_num} scenes at 64 px, {args.workers} workers ({size:.0f} MB of shards) | "
              f"{args.write_num} | | {seconds:.1f} s ({args.write_num / seconds:.0f} scenes/s) | < 120 s |")


if __name__ == "__main__":
    main()
