"""Speed of pretokenization (`open4m tokenize`): scenes/s turning raw world shards into token shards.

Run: ``PYTHONPATH=src python benchmarks/pretokenize.py`` (``--num 500 --workers 1 2`` by default). Renders
``--num`` train scenes at 64 px into a temporary folder, then tokenizes them with the shipped world tokenizers
(4 image tokenizers, caption, boxes) once per worker count. Wall-clock rates include starting the workers and
loading the tokenizers; CPU seconds of this process (the one-worker case) are printed beside them. On a
shared machine the numbers move with the load: the load average is printed first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from open4m.data.pretokenize import pretokenize
from open4m.data.world.writer import write_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=500, help="scenes to tokenize")
    parser.add_argument("--shard-size", type=int, default=50, help="scenes per raw shard (one worker job each)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time")
    parser.add_argument("--batch-size", type=int, default=64, help="images per tokenizer forward")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "raw"
        start = time.perf_counter()
        write_world(raw, args.num, shard_size=args.shard_size, workers=min(2, max(args.workers)))
        print(f"rendered {args.num} scenes in {time.perf_counter() - start:.1f} s "
              f"({args.shard_size} per shard)")
        print("| workers | scenes | wall s | scenes/s (wall) | CPU s of the main process |")
        print("|---:|---:|---:|---:|---:|")
        for workers in args.workers:
            cpu = time.process_time()
            report = pretokenize(raw, Path(folder) / f"tok-{workers}", workers=workers, batch_size=args.batch_size)
            cpu = time.process_time() - cpu
            print(f"| {workers} | {report.samples} | {report.seconds:.1f} | {report.samples / report.seconds:.1f} "
                  f"| {cpu:.1f} |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
