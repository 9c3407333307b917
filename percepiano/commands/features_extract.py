"""``percepiano features-extract``: re-extract the whole dataset with this pipeline into a new npz (same format).

    percepiano features-extract --data NPZ --raw RAWDIR --out OUT.npz [--fix NAME ...] [--original-pairs DIR]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._options import add_data_and_raw, log, raw_paths


def register(subparsers) -> None:
    e = subparsers.add_parser(
        "features-extract", help="re-extract the whole dataset with this pipeline into a new npz (same format)",
        description="Per-note arrays from our pipeline (our aligner by default), labels/splits copied from --data; "
                    "train on the result with `percepiano train --data OUT`.")
    add_data_and_raw(e)
    e.add_argument("--out", required=True, type=Path, help="output .npz")
    e.add_argument("--fix", action="append", default=[], metavar="NAME",
                   help="quirk fix to apply (repeatable): " + ", ".join(_fix_names()))
    e.add_argument("--original-pairs", default=None, metavar="DIR",
                   help="use the original *_infer_corresp.txt pairs from DIR instead of our aligner")
    e.add_argument("--renormalize", action="store_true",
                   help="z-score with statistics of the re-extracted data (default: the original statistics)")
    e.set_defaults(func=_extract)


def _fix_names() -> list:
    from ..features.quirks import FIXES
    return sorted(FIXES)


def _extract(args: argparse.Namespace) -> int:
    from ..features.dataset import reextract
    data, raw = raw_paths(args)
    info = reextract(data, raw, args.out, fixes=args.fix, alignments=args.original_pairs,
                     renormalize=args.renormalize, log=log)
    print(json.dumps(info, indent=1))
    return 0
