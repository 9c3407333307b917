"""``percepiano gate``: decide whether a debugging round is not worse than the previous one (a paired,
cluster-bootstrap comparison of the saved test predictions), and how it stands against the published target."""
from __future__ import annotations

import argparse
import json

from ._options import add_comparison_options


def register(sub) -> None:
    from ..gate import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS

    p = sub.add_parser(
        "gate",
        help="is a round not worse than the previous one (paired bootstrap of the test predictions), or than the paper?",
        description="Against a previous round (--against RUN): per fold, the difference of test R2 on the same test "
        "segments, with an interval from a bootstrap over test-segment clusters (and over seeds, for rounds of several "
        f"seeds). Exit {EXIT_PASS}: not worse (the interval excludes a drop larger than --margin); exit {EXIT_FAIL}: "
        f"worse (the interval lies below -margin); exit {EXIT_INCONCLUSIVE}: inconclusive (prints the minimum "
        "detectable effect and the seeds needed). Against the published target (--against targets, default): exit "
        f"{EXIT_FAIL} when mean_test_r2 is below the target by more than --tolerance; the measured mean is shown with "
        f"its interval. Also says whether the run beats the ridge baseline of the same split (exit {EXIT_FAIL} only "
        "with --require-baseline). Exit 2 on bad input. See docs/debugging_rounds.md.",
    )
    p.add_argument("results", metavar="RUN",
                   help="the round to gate: a run directory, its results.json, a seeds directory (`cv --seeds`) or "
                   "a `percepiano round` cell (ROUND/PRESET-SPLIT)")
    p.add_argument("--against", default="targets", metavar="targets|OLD_RUN",
                   help="`targets` (published values, default) or the previous round (run directory, results.json "
                   "or seeds directory)")
    add_comparison_options(p)
    p.add_argument("--training-sd", type=float, default=None, metavar="SD",
                   help="for the seeds-needed estimate: the standard deviation of one fold model's test R2 across "
                   "seeds (default: measured from the seeds, else from the per-fold differences)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="--against targets: allowed drop below the target (default: the targets file's, else 0.02)")
    p.add_argument("--label", default=None, metavar="NAME", help="gate one label's test R2 (name, index or unique part)")
    p.add_argument("--baseline", default=None, metavar="RESULTS.json",
                   help="ridge baseline results (default: recorded in results.json, else a sibling run directory)")
    p.add_argument("--targets", default=None, metavar="JSON", help="targets file (default: the package's regression_targets.json)")
    p.add_argument("--require-baseline", action="store_true",
                   help="also fail when the run does not beat the ridge baseline (or none is found)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON instead of the tables")
    p.set_defaults(func=_gate)


def _gate(args: argparse.Namespace) -> int:
    from ..gate import format_gate, gate, gate_json

    res = gate(args.results, args.against, tolerance=args.tolerance, label=args.label, baseline=args.baseline,
               targets_file=args.targets, require_baseline=args.require_baseline, margin=args.margin,
               clustering=args.cluster, resamples=args.resamples, level=args.level, training_sd=args.training_sd)
    print(json.dumps(gate_json(res), indent=2) if args.json else format_gate(res))
    return res.exit_code
