"""``percepiano data-summary``: segments, notes, split sizes and label statistics of the processed dataset.

    percepiano data-summary [--data NPZ] [--json]

``--data`` defaults to the ``PERCEPIANO_DATA`` environment variable.
"""
from __future__ import annotations

import json
from pathlib import Path

from ._options import add_data


def register(subparsers) -> None:
    p = subparsers.add_parser("data-summary", help="segments, notes, split sizes and label statistics")
    add_data(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_data_summary)


def cmd_data_summary(args) -> int:
    from ..data import format_summary, load_dataset, summary

    sm = summary(load_dataset(args.data))
    if args.json:
        sm["path"] = Path(sm["path"]).name  # no machine paths in shared output
        print(json.dumps(sm, indent=1))
    else:
        print(format_summary(sm))
    return 0
