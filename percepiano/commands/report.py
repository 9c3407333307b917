"""``percepiano report``: look at a debugging round (Markdown, HTML and plots of one or more runs)."""
from __future__ import annotations

import argparse
import sys

from ._options import add_comparison_options


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="Markdown + HTML report with plots for one or more `percepiano cv` run directories",
        description="Write report.md, report.html and PNG plots (training curves, per-label test R2 against the "
        "published targets and the mean/ridge baselines, predicted vs true, attention of one segment, deviations "
        "from the original). Needs matplotlib (pip install 'percepiano[report]').",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by `percepiano cv --out`")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report of the first run)")
    p.add_argument("--segment", default=None, metavar="ID",
                   help="segment id for the attention heatmaps (default: the first test segment of the fold)")
    p.add_argument("--data", default=None, metavar="NPZ",
                   help="dataset for the attention heatmaps (default: $PERCEPIANO_DATA; skipped without one)")
    p.add_argument("--no-find-baselines", action="store_true",
                   help="do not look for mean/ridge runs of the same split next to the given runs")
    add_comparison_options(p)
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from ..report import build_report

    data = None
    if args.data is not None:
        from ..data import load_dataset

        data = load_dataset(args.data)
    try:
        rep = build_report(args.run_dirs, args.out, segment=args.segment, data=data,
                           find_baselines=not args.no_find_baselines, margin=args.margin, clustering=args.cluster,
                           resamples=args.resamples, level=args.level)
    except ImportError as exc:  # matplotlib is an optional extra
        print(f"percepiano report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {rep.markdown}")
    print(f"wrote {rep.html}")
    for img in rep.images:
        print(f"wrote {img}")
    for section, reason in rep.skipped.items():
        print(f"skipped {section}: {reason}")
    return 0
