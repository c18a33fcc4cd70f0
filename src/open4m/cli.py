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
