"""Time of `open4m eval` per task on rendered held-out world scenes, for a model folder or a random model.

Without ``--model`` a randomly initialised model of the ``tiny`` preset (dim 384, 6+6 layers, or ``--dim`` /
``--depth`` to shrink it; heads of 64 dims) with every world modality is evaluated: its scores are an
untrained baseline. An untrained model's sequences may run to their maximum length (128 caption / 64 det
tokens) or stop at once, so the sequence tasks' times vary from one random model to another.

    PYTHONPATH=src python -m benchmarks.evaluation [--scenes 32] [--batch-size 16] [--steps 8] [--model DIR]
"""

from __future__ import annotations

import argparse
import time

import torch

from open4m.data.world import SPLIT_SEEDS, render_scene
from open4m.evaluation import evaluate_model, format_table
from open4m.evaluation.run import load_model_and_tokenizers
from open4m.model import FourM, preset
from open4m.shipped import world_tokenizers_dir
from open4m.tokenizer_set import TokenizerSet

DOMAINS_IN = ["rgb@64", "tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "caption@64", "det@64"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", help="model folder (default: a random tiny model)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--depth", type=int, default=6, help="encoder and decoder layers of the random model")
    args = parser.parse_args()
    if args.model:
        model, tokenizers = load_model_and_tokenizers(args.model)
        name = args.model
    else:
        torch.manual_seed(0)
        model = FourM(preset("tiny_gelu", DOMAINS_IN, DOMAINS_IN[1:], dim=args.dim, encoder_depth=args.depth,
                             decoder_depth=args.depth, num_heads=max(1, args.dim // 64))).eval()
        tokenizers = TokenizerSet.load(world_tokenizers_dir())
        name = f"random tiny_gelu dim {args.dim}, {args.depth}+{args.depth} layers"
    start = time.perf_counter()
    samples = [render_scene(SPLIT_SEEDS["val"][0] + i) for i in range(args.scenes)]
    render = time.perf_counter() - start
    results = evaluate_model(model, tokenizers, samples, args.scenes, args.batch_size, steps=args.steps)
    print(f"model: {name}; {args.scenes} scenes, batch {args.batch_size}, {args.steps} MaskGIT steps, "
          f"torch threads {torch.get_num_threads()}; rendering took {render:.1f} s\n")
    print("| task | seconds | per scene |\n|---|---:|---:|")
    for task, seconds in results["seconds"].items():
        print(f"| {task} | {seconds:.1f} | {seconds / args.scenes:.3f} |")
    print()
    print(format_table(results))


if __name__ == "__main__":
    main()
