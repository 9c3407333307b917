"""``percepiano train``: one fold with the original protocol.

    percepiano train --preset han --split performer --fold 0 --out runs/han_perf0

``--data`` defaults to the ``PERCEPIANO_DATA`` environment variable.
"""
from __future__ import annotations

import json

from ..constants import N_FOLDS
from ._options import add_run_options, log, model_overrides, train_config


def register(subparsers) -> None:
    from ..config import PRESETS

    p = subparsers.add_parser("train", help="train one fold with the original protocol")
    add_run_options(p, sorted(PRESETS))
    p.add_argument("--fold", type=int, required=True, choices=range(N_FOLDS), help=f"fold 0-{N_FOLDS - 1}")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..config import PRESET_FEATURES, get_preset
    from ..data import load_dataset
    from ..training import train_fold

    data = load_dataset(args.data)
    tcfg = train_config(args)
    cfg = get_preset(args.preset, **model_overrides(args))
    res = train_fold(
        cfg, tcfg, data, args.split, args.fold, args.out, feature_set=PRESET_FEATURES[args.preset],
        device=args.device, resume=args.resume, progress=not args.no_progress, log=log,
        run_info={"preset": args.preset},
    )
    print(json.dumps({k: res[k] for k in ("fold", "best_epoch", "valid_loss", "test_r2", "test_mse")}, indent=1))
    return 0
