"""Command-line entry point: ``percepiano <command> ...``.

Each module in :mod:`percepiano.commands` contributes its subcommands through a ``register(subparsers)``
function that adds parsers and sets ``func`` (called with the parsed namespace, returning an exit code).
The library itself never parses arguments.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="percepiano",
        description="PercePiano: the original HAN / Bi-LSTM models, proven equal to the original code.",
    )
    parser.add_argument("--version", action="version", version=f"percepiano {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers of the commands, not a command
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
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
