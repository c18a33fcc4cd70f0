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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="open4m",
        description="open4m: train, run and evaluate 4M any-to-any models (Mizrahi, Bachmann et al. 2023).",
    )
    parser.add_argument("--version", action="version", version=f"open4m {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("modalities", help="list the registered modalities and their sizes")
    p.set_defaults(func=_cmd_modalities)
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
