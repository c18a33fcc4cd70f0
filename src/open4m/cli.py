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


# --- tokenizer train-text (text.py) ------------------------------------------------------------------


def _cmd_tokenizer_train_text(args: argparse.Namespace) -> int:
    from open4m.text import TextTokenizer, iter_corpus

    class_names = [c.strip() for c in args.class_names.split(",") if c.strip()] if args.class_names else []
    lines = list(iter_corpus(args.corpus))
    if not lines:
        raise ValueError(f"corpus {' '.join(args.corpus)} holds no text lines")
    tokenizer = TextTokenizer.train(lines, args.vocab_size, class_names=class_names, show_progress=False)
    path = tokenizer.save(args.out, overwrite=args.force)
    print(f"trained on {len(lines)} lines: vocab {tokenizer.vocab_size} ({len(class_names)} class names) -> {path}")
    return 0


def _add_tokenizer_text_parsers(tok_sub: argparse._SubParsersAction) -> None:
    p = tok_sub.add_parser(
        "train-text",
        help="train a WordPiece text tokenizer with the 4M special-token layout",
        description="Train a WordPiece text tokenizer with the official 4M layout: [PAD] [UNK] [SOS] [EOS], "
        "sentinels [S_0]..[S_199], value tokens v0=0..v3=999, then the class names as single tokens.",
    )
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE_OR_DIR",
                   help=".txt (one text per line), .jsonl (strings or {'caption': ...}), .tar shards (*.txt members), "
                   "or directories holding them")
    p.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, the 4204 special tokens included")
    p.add_argument("--out", required=True, help="directory to write tokenizer.json into")
    p.add_argument("--class-names", default="", help="comma-separated class names, e.g. 'sphere,cube,wine glass'")
    p.add_argument("--force", action="store_true", help="replace an existing tokenizer.json")
    p.set_defaults(func=_cmd_tokenizer_train_text)


# --- parser -------------------------------------------------------------------------------------------
# --- open4m world: the procedural dataset (open4m.data.world) ---------------------------------------------


def _cmd_world_render(args: argparse.Namespace) -> int:
    import dataclasses

    from open4m.data.world import WorldConfig
    from open4m.data.world.writer import write_world

    config = dataclasses.replace(WorldConfig(), resolution=args.resolution)
    report = write_world(args.out, args.num, split=args.split, config=config, workers=args.workers,
                         layout=args.layout, shard_size=args.shard_size, progress=args.progress)
    print(f"world {args.split}: rendered {report.rendered} scenes, {report.skipped} already done, "
          f"{len(report.paths)} {'shards' if args.layout == 'wds' else 'folders'} in {args.out}")
    return 0


def _cmd_world_preview(args: argparse.Namespace) -> int:
    from open4m.data.world.preview import write_preview

    path = write_preview(args.out, num_scenes=args.num, split=args.split, resolution=args.resolution)
    print(f"wrote {path}")
    return 0


def _add_world_parser(sub) -> None:
    world = sub.add_parser("world", help="render the procedural 3D world dataset (all modalities aligned)")
    world_sub = world.add_subparsers(dest="world_command", metavar="WORLD_COMMAND", required=True)
    p = world_sub.add_parser("render", help="write scenes of a split as WebDataset shards or official folders")
    p.add_argument("--out", required=True, help="output folder (created; a rerun resumes it)")
    p.add_argument("--num", type=int, required=True, help="number of scenes (the split's first N seeds)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--layout", default="wds", choices=["wds", "folders"],
                   help="wds: tar shards; folders: root/<modality>/<split>/<id>.<ext>")
    p.add_argument("--shard-size", type=int, default=500, help="scenes per shard / per job (default 500)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=_cmd_world_render)
    p = world_sub.add_parser("preview", help="write a PNG grid of every modality of a few scenes")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--num", type=int, default=4, help="number of scenes (rows, default 4)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--resolution", type=int, default=128, help="render resolution (default 128)")
    p.set_defaults(func=_cmd_world_preview)


# --- end of open4m world -----------------------------------------------------------------------------------


# --- open4m train: the training loop (open4m.train) ----------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from open4m import train_config
    from open4m.train import train

    config = train_config.load(args.config, args.overrides)
    result = train(config, resume=args.resume)
    if result["losses"] and result["rank"] == 0:
        print(f"trained {len(result['losses'])} steps: loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}; "
              f"checkpoint {result['checkpoint']}")
    return 0


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a 4M model on token shards (one process or torchrun: DDP / FSDP2)",
                       description="Train a 4M model. Run under torchrun for several processes, e.g. "
                       "`torchrun --nproc-per-node 2 -m open4m.cli train --config C distributed=fsdp`.")
    p.add_argument("--config", help="training YAML (see configs/train/); keys default as in open4m.train_config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. lr=3e-4 steps=100")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in out_dir")
    p.set_defaults(func=_cmd_train)


# --- end of open4m train -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="open4m",
        description="open4m: train, run and evaluate 4M any-to-any models (Mizrahi, Bachmann et al. 2023).",
    )
    parser.add_argument("--version", action="version", version=f"open4m {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("modalities", help="list the registered modalities and their sizes")
    p.set_defaults(func=_cmd_modalities)

    p = sub.add_parser("tokenizer", help="train and evaluate tokenizers")
    tok_sub = p.add_subparsers(dest="tokenizer_command", metavar="TOKENIZER_COMMAND")
    p.set_defaults(func=lambda args, p=p: p.print_help() or 0)
    _add_tokenizer_text_parsers(tok_sub)
    _add_world_parser(sub)
    _add_train_parser(sub)
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
