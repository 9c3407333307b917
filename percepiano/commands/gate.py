"""``percepiano gate``: decide whether a debugging round passes (against the published target or a previous round)."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "gate",
        help="compare a results.json with the published target or a previous round; exit 1 if worse",
        description="Print a comparison table. Exit 1 when mean_test_r2 (or --label's test R2) is below the "
        "published target by more than --tolerance, or below a previous round (--against OTHER.json) by more than "
        "that round's fold spread. Also says whether the run beats the ridge baseline of the same split. "
        "Exit 2 on bad input.",
    )
    p.add_argument("results", metavar="RESULTS.json", help="results.json (or its run directory) of the round to gate")
    p.add_argument("--against", default="targets", metavar="targets|OTHER_RESULTS.json",
                   help="`targets` (published values, default) or a previous round's results.json")
    p.add_argument("--tolerance", type=float, default=None,
                   help="allowed drop below the reference (default: targets file value or 0.02 for targets; "
                   "the previous round's fold std for a previous round)")
    p.add_argument("--label", default=None, metavar="NAME", help="gate one label's test R2 (name, index or unique part)")
    p.add_argument("--baseline", default=None, metavar="RESULTS.json",
                   help="ridge baseline results (default: a sibling run directory with preset ridge and the same split)")
    p.add_argument("--targets", default=None, metavar="JSON", help="targets file (default: the package's regression_targets.json)")
    p.add_argument("--require-baseline", action="store_true",
                   help="also fail when the run does not beat the ridge baseline (or none is found)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON instead of the table")
    p.set_defaults(func=_gate)


def _gate(args: argparse.Namespace) -> int:
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
