"""``percepiano cv``: all folds of a split -> ``OUT/results.json``, for a neural preset or a baseline.

    percepiano cv --preset han --split composition --out runs/han_comp          # 4 folds -> results.json
    percepiano cv --preset ridge --split performer --out runs/ridge_perf        # baselines: mean, ridge

``--data`` defaults to the ``PERCEPIANO_DATA`` environment variable.
"""
from __future__ import annotations

from pathlib import Path

from ..constants import BASELINES, N_FOLDS
from ._options import add_run_options, log, model_overrides, train_config


def register(subparsers) -> None:
    from ..config import PRESETS

    p = subparsers.add_parser(
        "cv", help=f"all {N_FOLDS} folds of a split -> OUT/results.json (neural presets or baselines)"
    )
    add_run_options(p, sorted(PRESETS) + list(BASELINES))
    p.add_argument("--folds", default=",".join(str(f) for f in range(N_FOLDS)),
                   help=f"comma-separated folds (default all {N_FOLDS})")
    p.add_argument("--parallel-folds", type=int, default=1, metavar="K",
                   help="train K folds at once in worker processes on the same device (results unchanged)")
    p.set_defaults(func=cmd_cv)


def cmd_cv(args) -> int:
    from ..cv import run_cv
    from ..data import load_dataset
    from ..results import RESULTS

    folds = [int(f) for f in str(args.folds).split(",") if f.strip() != ""]
    if not folds or any(f not in range(N_FOLDS) for f in folds) or len(set(folds)) != len(folds):
        raise ValueError(f"--folds: expected distinct folds from 0-{N_FOLDS - 1}, got {args.folds!r}")
    data = load_dataset(args.data)
    res = run_cv(
        args.preset, args.split, data, args.out, tcfg=train_config(args), model_overrides=model_overrides(args),
        folds=folds, device=args.device, resume=args.resume, progress=not args.no_progress, log=log,
        parallel_folds=args.parallel_folds,
    )
    print(format_results_table([res]))
    print(f"\nwrote {Path(args.out) / RESULTS}")
    return 0


def format_results_table(results: list[dict]) -> str:
    """One row per results.json: preset, split, mean test R2 +- fold std, per-fold R2."""
    lines = [f"{'preset':<10} {'split':<12} {'kind':<8} {'mean test R2':>12} {'fold std':>9}  per-fold test R2"]
    rows, seen = [], set()
    for r in results:
        rows.append((r["preset"], r["split"], r.get("kind", ""), r["mean_test_r2"], r["fold_std"],
                     [f["test_r2"] for f in r["folds"]]))
        seen.add((r["preset"], r["split"]))
    for r in results:  # baselines recorded beside each neural run, unless a baseline run is listed already
        for name, b in (r.get("baselines") or {}).items():
            if (name, r["split"]) not in seen:
                seen.add((name, r["split"]))
                rows.append((name, r["split"], "baseline", b["mean_test_r2"], b["fold_std"], b["per_fold_test_r2"]))
    for preset, split, kind, mean, std, per in rows:
        per_txt = " ".join(f"{v:.4f}" for v in per)
        lines.append(f"{preset:<10} {split:<12} {kind:<8} {mean:>12.4f} {std:>9.4f}  {per_txt}")
    return "\n".join(lines)
