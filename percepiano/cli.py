"""Command-line entry point: ``percepiano <command> ...``.

Each command is a module of :mod:`percepiano.commands` named after it, with a ``register(subparsers)`` that
adds its parser and sets ``func`` (called with the parsed namespace, returning an exit code). The library
itself never parses arguments.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

# The commands in the order of a user's workflow (the order of ``percepiano --help``).
COMMANDS = (
    "data_summary", "train", "cv", "round", "evaluate", "gate", "report",
    "parity", "predict", "features_parity", "features_extract",
)


# Exit status when the reader of stdout goes away (``percepiano data-summary | head -1``): what a process killed by
# SIGPIPE reports (128 + 13), as ``cat`` does; quietly, since it is not an error of the command.
BROKEN_PIPE_EXIT = 141


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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `percepiano cv` records as its command line
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        return code
    except BrokenPipeError:
        _discard_stdout()
        return BROKEN_PIPE_EXIT
    # bad input, or a file that cannot be read or written (a full disk): a clear message, no traceback
    except (ValueError, OSError) as exc:
        print(f"percepiano {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _discard_stdout() -> None:
    """Point stdout at the null device, so that flushing what is still buffered at exit does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a captured stdout in tests)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
