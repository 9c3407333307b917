"""Command-line entry point: ``percepiano <command> ...``.

Each command is a module of :mod:`percepiano.commands` named after it, with a ``register(subparsers)`` that
adds its parser and sets ``func`` (called with the parsed namespace, returning an exit code). The library
itself never parses arguments.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# The commands in the order of a user's workflow (the order of ``percepiano --help``).
COMMANDS = (
    "data_summary", "train", "cv", "evaluate", "gate", "report",
    "parity", "predict", "features_parity", "features_extract",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="percepiano",
        description="PercePiano: the original HAN / Bi-LSTM models, proven equal to the original code.",
    )
    parser.add_argument("--version", action="version", version=f"percepiano {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"percepiano.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad input: a clear message, no traceback
        print(f"percepiano {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
