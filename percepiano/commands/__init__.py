"""CLI subcommands. Every module here not named ``_*`` exposes ``register(subparsers)``; :mod:`percepiano.cli` finds them all."""
