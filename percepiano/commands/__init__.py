"""CLI subcommands. Every module here exposes ``register(subparsers)``; :mod:`percepiano.cli` finds them all."""
