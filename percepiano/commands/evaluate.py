"""``percepiano evaluate``: metrics of a checkpoint (``best.pt`` / ``last.pt``) on one part of a fold.

    percepiano evaluate runs/han_perf0/best.pt --split performer --fold 0

``--data`` defaults to the ``PERCEPIANO_DATA`` environment variable.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..constants import N_FOLDS, PARTS, SPLIT_SCHEMES
from ._options import add_data, log


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint (best.pt / last.pt) on a split")
    p.add_argument("checkpoint", type=Path)
    add_data(p)
    p.add_argument("--split", required=True, choices=SPLIT_SCHEMES)
    p.add_argument("--fold", type=int, required=True, choices=range(N_FOLDS))
    p.add_argument("--part", default="test", choices=tuple(PARTS))
    p.add_argument("--batch-size", type=int, default=1, help="default 1, as the original eval script")
    p.add_argument("--device", default="auto")
    p.add_argument("--predictions", type=Path, default=None, help="write per-segment predictions (npz) here")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ..checkpoints import load_checkpoint, model_from_checkpoint
    from ..data import feature_size, load_dataset
    from ..training import evaluate_model, resolve_device, save_predictions

    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    ck = load_checkpoint(args.checkpoint)
    data = load_dataset(args.data)
    device = resolve_device(args.device)
    model = model_from_checkpoint(ck, device)
    feature_set = ck.get("run", {}).get("feature_set")
    if feature_set is None:
        feature_set = "performance_only" if model.config.input_size == feature_size("performance_only") else "full"
    run = ck.get("run", {})
    if run.get("split") is not None and (run.get("split"), run.get("fold")) != (args.split, args.fold):
        log(f"note: checkpoint was trained on {run.get('split')} fold {run.get('fold')}; "
            f"evaluating on {args.split} fold {args.fold}")
    idx = data.split_indices(args.split, args.fold, args.part)
    out = evaluate_model(model, data, idx, feature_set=feature_set, batch_size=args.batch_size, device=device)
    if args.predictions is not None:
        save_predictions(args.predictions, out["predictions"])
    m = out["metrics"]
    summary = {
        "checkpoint": str(args.checkpoint), "epoch": ck.get("epoch"), "split": args.split, "fold": args.fold,
        "part": args.part, "n": m["n"], "r2": m["r2"], "mse": m["mse"], "r2_flat": m["r2_flat"],
        "std_score_1": m.get("std_score_1"), "std_score_05": m.get("std_score_05"),
        "std_score_01": m.get("std_score_01"),
        "per_label_r2": dict(zip(data.label_names, m["per_label_r2"])),
    }
    print(json.dumps(summary, indent=1))
    return 0
