"""``percepiano report`` and ``percepiano gate``: look at a debugging round, then decide whether it passes."""
from __future__ import annotations

import argparse
import sys


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
    p.set_defaults(func=_report)

    g = sub.add_parser(
        "gate",
        help="compare a results.json with the published target or a previous round; exit 1 if worse",
        description="Print a comparison table. Exit 1 when mean_test_r2 (or --label's test R2) is below the "
        "published target by more than --tolerance, or below a previous round (--against OTHER.json) by more than "
        "that round's fold spread. Also says whether the run beats the ridge baseline of the same split. "
        "Exit 2 on bad input.",
    )
    g.add_argument("results", metavar="RESULTS.json", help="results.json (or its run directory) of the round to gate")
    g.add_argument("--against", default="targets", metavar="targets|OTHER_RESULTS.json",
                   help="`targets` (published values, default) or a previous round's results.json")
    g.add_argument("--tolerance", type=float, default=None,
                   help="allowed drop below the reference (default: targets file value or 0.02 for targets; "
                   "the previous round's fold std for a previous round)")
    g.add_argument("--label", default=None, metavar="NAME", help="gate one label's test R2 (name, index or unique part)")
    g.add_argument("--baseline", default=None, metavar="RESULTS.json",
                   help="ridge baseline results (default: a sibling run directory with preset ridge and the same split)")
    g.add_argument("--targets", default=None, metavar="JSON", help="targets file (default: the package's regression_targets.json)")
    g.add_argument("--require-baseline", action="store_true",
                   help="also fail when the run does not beat the ridge baseline (or none is found)")
    g.add_argument("--json", action="store_true", help="print the verdict as JSON instead of the table")
    g.set_defaults(func=_gate)


def _report(args: argparse.Namespace) -> int:
    from ..report import build_report

    data = None
    if args.data is not None:
        from ..data import load_dataset

        data = load_dataset(args.data)
    try:
        rep = build_report(args.run_dirs, args.out, segment=args.segment, data=data,
                           find_baselines=not args.no_find_baselines)
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


def _gate(args: argparse.Namespace) -> int:
    import json

    from ..gate import format_gate, gate

    res = gate(args.results, args.against, tolerance=args.tolerance, label=args.label, baseline=args.baseline,
               targets_file=args.targets, require_baseline=args.require_baseline)
    if args.json:
        print(json.dumps({
            "metric": res.metric, "value": res.value, "reference": res.reference, "reference_name": res.reference_name,
            "allowed_drop": res.allowed_drop, "passed": res.passed, "baseline": res.baseline,
            "baseline_failed": res.baseline_failed, "notes": res.notes, "exit_code": res.exit_code,
        }, indent=2))
    else:
        print(format_gate(res))
    return res.exit_code
