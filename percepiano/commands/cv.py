"""``percepiano cv``: all folds of a split -> ``OUT/results.json`` and ``OUT/results.csv``, for a neural preset
or a baseline; with ``--seeds 7,8,9``, one such run per seed in ``OUT/seed7/``, ... and ``OUT/seeds.json``.

    percepiano cv --preset han --split composition --out runs/han_comp          # 4 folds -> results.json
    percepiano cv --preset ridge --split performer --out runs/ridge_perf        # baselines: mean, ridge
    percepiano cv --preset han --split performer --seeds 7,8,9 --out runs/han_perf_seeds
    percepiano cv --preset bilstm --split performer --step-log --out runs/bilstm_perf   # + foldK/steps.jsonl

``--data`` defaults to the ``PERCEPIANO_DATA`` environment variable. ``--out`` must not hold another run;
``--resume`` continues one only if it is the same run (:func:`percepiano.cv.run_cv`).
"""
from __future__ import annotations

from pathlib import Path

from ..constants import BASELINES, N_FOLDS, SEED_RANGE
from ._options import (
    add_run_options,
    add_reuse_without_checkpoint_option,
    add_step_log_option,
    check_run_options,
    command_line,
    int_list,
    log,
    model_overrides,
    refuse_training_options,
    train_config,
)


def register(subparsers) -> None:
    from ..config import PRESETS

    p = subparsers.add_parser(
        "cv", help=f"all {N_FOLDS} folds of a split -> OUT/results.json (neural presets or baselines)"
    )
    add_run_options(p, sorted(PRESETS) + list(BASELINES))
    p.add_argument("--folds", default=",".join(str(f) for f in range(N_FOLDS)),
                   help=f"comma-separated folds (default all {N_FOLDS})")
    p.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="train every seed: with more than one, OUT/seed{S}/ per seed and OUT/seeds.json")
    p.add_argument("--parallel-folds", type=int, default=1, metavar="K",
                   help="train K folds at once in worker processes on the same device (results unchanged)")
    add_step_log_option(p)
    add_reuse_without_checkpoint_option(p)
    p.set_defaults(func=cmd_cv)


def cmd_cv(args) -> int:
    from ..cv import run_cv, run_seeds
    from ..data import load_dataset
    from ..results import RESULTS, SEEDS

    check_run_options(args)
    folds = int_list(args.folds, "--folds", range(N_FOLDS))
    if args.parallel_folds < 1:
        raise ValueError(f"--parallel-folds: expected an integer >= 1, got {args.parallel_folds}")
    seeds = int_list(args.seeds, "--seeds", SEED_RANGE) if args.seeds is not None else None
    if seeds is not None and args.seed is not None:
        raise ValueError("--seed and --seeds: give one of them")
    if args.preset in BASELINES:
        refuse_training_options(args, args.preset, (("seeds", "--seeds", None), ("parallel_folds", "--parallel-folds", 1)))
    if seeds is not None and len(seeds) == 1:
        args.seed, seeds = seeds[0], None  # one seed: the ordinary layout
    data = load_dataset(args.data)
    tcfg = None if args.preset in BASELINES else train_config(args)
    kw = dict(model_overrides=model_overrides(args), folds=folds, device=args.device, resume=args.resume,
              progress=not args.no_progress, log=log, parallel_folds=args.parallel_folds,
              allow_code_change=args.allow_code_change, reuse_without_checkpoint=args.reuse_without_checkpoint,
              keep=args.keep, command=command_line(args),
              step_log=args.step_log)
    if seeds is None:
        results = [run_cv(args.preset, args.split, data, args.out, tcfg=tcfg, **kw)]
        written = Path(args.out) / RESULTS
    else:
        results = run_seeds(args.preset, args.split, data, args.out, seeds, tcfg=tcfg, **kw)
        written = Path(args.out) / SEEDS
    print(format_results_table(results, with_seed=seeds is not None))
    print(f"\nwrote {written}")
    return 0


def format_results_table(results: list[dict], with_seed: bool = False) -> str:
    """One row per results.json: preset, split (seed), mean test R2 +- fold std, per-fold R2; then the
    baselines recorded beside the neural runs."""
    seed_head = f" {'seed':>6}" if with_seed else ""
    lines = [f"{'preset':<10} {'split':<12}{seed_head} {'kind':<8} {'mean test R2':>12} {'fold std':>9}  per-fold test R2"]
    rows, seen = [], set()
    for r in results:
        rows.append((r["preset"], r["split"], r.get("seed"), r.get("kind", ""), r["mean_test_r2"], r["fold_std"],
                     [f["test_r2"] for f in r["folds"]]))
        seen.add((r["preset"], r["split"]))
    for r in results:  # baselines recorded beside each neural run, unless a baseline run is listed already
        for name, b in (r.get("baselines") or {}).items():
            if (name, r["split"]) not in seen:
                seen.add((name, r["split"]))
                rows.append((name, r["split"], None, "baseline", b["mean_test_r2"], b["fold_std"], b["per_fold_test_r2"]))
    for preset, split, seed, kind, mean, std, per in rows:
        per_txt = " ".join(f"{v:.4f}" for v in per)
        seed_txt = f" {'-' if seed is None else seed:>6}" if with_seed else ""
        lines.append(f"{preset:<10} {split:<12}{seed_txt} {kind:<8} {mean:>12.4f} {std:>9.4f}  {per_txt}")
    return "\n".join(lines)
