"""``percepiano train``: one fold with the original protocol.

    percepiano train --preset han --split performer --fold 0 --out runs/han_perf0
    percepiano train --preset han --split performer --fold 0 --rng original --dtype float64 --step-log --out runs/replay

``--rng original`` replays the original's random draws (:mod:`percepiano.replay`); ``--step-log`` writes
``steps.jsonl`` beside ``log.jsonl``.
``--data`` defaults to the ``PERCEPIANO_DATA`` environment variable. ``--out`` must not hold another run;
``--resume`` continues the ``last.pt`` there only if it is the same run (:func:`percepiano.training.train_fold`).
"""
from __future__ import annotations

import json

from ..constants import N_FOLDS
from ._options import add_run_options, add_step_log_option, check_run_options, log, model_overrides, train_config


def register(subparsers) -> None:
    from ..config import PRESETS

    p = subparsers.add_parser("train", help="train one fold with the original protocol")
    add_run_options(p, sorted(PRESETS))
    p.add_argument("--fold", type=int, required=True, choices=range(N_FOLDS), help=f"fold 0-{N_FOLDS - 1}")
    add_step_log_option(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..config import PRESET_FEATURES, get_preset
    from ..data import load_dataset
    from ..training import fold_summary_line, train_fold

    check_run_options(args)
    data = load_dataset(args.data)
    tcfg = train_config(args)
    cfg = get_preset(args.preset, **model_overrides(args))
    res = train_fold(
        cfg, tcfg, data, args.split, args.fold, args.out, feature_set=PRESET_FEATURES[args.preset],
        device=args.device, resume=args.resume, progress=not args.no_progress, log=log,
        run_info={"preset": args.preset}, allow_code_change=args.allow_code_change, keep=args.keep,
        step_log=args.step_log,
    )
    log(fold_summary_line(res))
    print(json.dumps({k: res[k] for k in ("fold", "best_epoch", "valid_loss", "test_r2", "test_mse")}, indent=1))
    return 0
