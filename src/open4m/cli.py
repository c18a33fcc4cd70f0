"""The ``open4m`` command line: wires subcommands to the library; no logic of its own."""

from __future__ import annotations

import argparse
import sys

from open4m import __version__


def _cmd_modalities(args: argparse.Namespace) -> int:
    from open4m import modalities

    for name in modalities.names():
        m = modalities.get(name)
        size = f"{m.grid_size}x{m.grid_size}" if m.is_image else f"<= {m.max_tokens}"
        print(f"{name:24s} {m.kind:13s} vocab={m.vocab_size!s:6s} tokens={size:8s} {m.tokenizer}")
    return 0


# --- tokenizer: learned image tokenizers (open4m.vq) ------------------------------------------------


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from open4m.vq.samples import open_samples
    from open4m.vq.train import load_config, train_tokenizer

    config, train, _ = load_config(args.config, args.modality)
    samples = open_samples(args.data, image_size=config.image_size, num_classes=config.num_classes)
    train_tokenizer(config, samples, args.out, train=train, resume=args.resume)
    print(f"tokenizer {config.modality} written to {args.out}")
    return 0


def _cmd_tokenizer_eval(args: argparse.Namespace) -> int:
    from open4m.vq.evaluate import evaluate_tokenizer, format_metrics
    from open4m.vq.samples import open_samples
    from open4m.vq.tokenizer import ImageTokenizer

    tokenizer = ImageTokenizer.load(args.tokenizer)
    samples = open_samples(args.data, image_size=tokenizer.config.image_size, num_classes=tokenizer.config.num_classes)
    print(format_metrics(evaluate_tokenizer(tokenizer, samples, args.num_samples)))
    return 0


def _add_tokenizer_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train and evaluate tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = tsub.add_parser("train", help="train an image tokenizer (VQ-VAE with cosine-EMA VQ or FSQ)")
    t.add_argument("--modality", required=True, choices=["rgb", "depth", "normal", "semseg", "edges"])
    t.add_argument("--config", required=True, help="YAML, e.g. configs/tokenizers/rgb.yaml")
    t.add_argument("--data", default="synthetic", help="'synthetic[:SEED]' toy scenes or a folder of *.npz samples")
    t.add_argument("--out", required=True, help="output folder (tokenizer, checkpoint, preview.png)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.set_defaults(func=_cmd_tokenizer_train)
    e = tsub.add_parser("eval", help="reconstruction metrics and codebook usage of an image tokenizer")
    e.add_argument("--tokenizer", required=True, help="folder written by `open4m tokenizer train`")
    e.add_argument("--data", default="synthetic:1", help="held-out data: 'synthetic[:SEED]' or a folder of *.npz")
    e.add_argument("--num-samples", type=int, default=1000)
    e.set_defaults(func=_cmd_tokenizer_eval)


# --- end tokenizer ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="open4m",
        description="open4m: train, run and evaluate 4M any-to-any models (Mizrahi, Bachmann et al. 2023).",
    )
    parser.add_argument("--version", action="version", version=f"open4m {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("modalities", help="list the registered modalities and their sizes")
    p.set_defaults(func=_cmd_modalities)
    _add_tokenizer_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"open4m {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
