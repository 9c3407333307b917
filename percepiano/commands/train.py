"""``percepiano train | cv | evaluate | data-summary``: the original protocol from the command line.

    percepiano train --preset han --split performer --fold 0 --out runs/han_perf0
    percepiano cv --preset han --split composition --out runs/han_comp          # 4 folds -> results.json
    percepiano cv --preset ridge --split performer --out runs/ridge_perf        # baselines: mean, ridge
    percepiano evaluate runs/han_perf0/best.pt --split performer --fold 0
    percepiano data-summary

``--data`` defaults to the ``PERCEPIANO_DATA`` environment variable.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPLITS = ("composition", "performer")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="percepiano_vnet_m2pf.npz (default: $PERCEPIANO_DATA)")


def _add_run_options(p: argparse.ArgumentParser, presets: list[str]) -> None:
    _add_data(p)
    p.add_argument("--preset", required=True, choices=presets, help="model preset (or baseline for cv)")
    p.add_argument("--split", required=True, choices=SPLITS, help="split scheme")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 100, the original)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=None, help="seed (default 7, the original th_seed)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    p.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch.set_num_threads)")
    g = p.add_argument_group("small runs (deviate from the original protocol; recorded in the results)")
    g.add_argument("--limit-segments", type=int, default=None, help="first N segments of each of train/valid/test")
    g.add_argument("--max-batches", type=int, default=None, help="at most N training batches per epoch")
    g.add_argument("--hidden-size", type=int, default=None, help="override all LSTM sizes (ModelConfig.hidden_size)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default 2.5e-5)")
    g.add_argument("--no-epoch-test", action="store_true", help="skip the per-epoch test evaluation (log only)")


def register(subparsers) -> None:
    from ..baselines import BASELINES
    from ..config import PRESETS

    neural = sorted(PRESETS)
    p = subparsers.add_parser("train", help="train one fold with the original protocol")
    _add_run_options(p, neural)
    p.add_argument("--fold", type=int, required=True, choices=range(4), help="fold 0-3")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("cv", help="all 4 folds of a split -> OUT/results.json (neural presets or baselines)")
    _add_run_options(p, neural + list(BASELINES))
    p.add_argument("--folds", default="0,1,2,3", help="comma-separated folds (default all 4)")
    p.add_argument("--parallel-folds", type=int, default=1, metavar="K",
                   help="train K folds at once in worker processes on the same device (results unchanged)")
    p.set_defaults(func=cmd_cv)

    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint (best.pt / last.pt) on a split")
    p.add_argument("checkpoint", type=Path)
    _add_data(p)
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--fold", type=int, required=True, choices=range(4))
    p.add_argument("--part", default="test", choices=("train", "valid", "test"))
    p.add_argument("--batch-size", type=int, default=1, help="default 1, as the original eval script")
    p.add_argument("--device", default="auto")
    p.add_argument("--predictions", type=Path, default=None, help="write per-segment predictions (npz) here")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("data-summary", help="segments, notes, split sizes and label statistics")
    _add_data(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_data_summary)


def _train_config(args):
    from ..training import TrainConfig

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)

    changes = {}
    for field, value in (
        ("epochs", args.epochs), ("seed", args.seed), ("limit_segments", args.limit_segments),
        ("max_train_batches", args.max_batches), ("lr", args.lr),
    ):
        if value is not None:
            changes[field] = value
    if args.deterministic:
        changes["deterministic"] = True
    if args.no_epoch_test:
        changes["eval_test_every_epoch"] = False
    return TrainConfig(**changes)


def _overrides(args) -> dict:
    return {"hidden_size": args.hidden_size} if args.hidden_size is not None else {}


def cmd_train(args) -> int:
    from ..config import PRESET_FEATURES, get_preset
    from ..data import load_dataset
    from ..training import train_fold

    data = load_dataset(args.data)
    tcfg = _train_config(args)
    cfg = get_preset(args.preset, **_overrides(args))
    res = train_fold(
        cfg, tcfg, data, args.split, args.fold, args.out, feature_set=PRESET_FEATURES[args.preset],
        device=args.device, resume=args.resume, progress=not args.no_progress, log=_log,
        run_info={"preset": args.preset},
    )
    print(json.dumps({k: res[k] for k in ("fold", "best_epoch", "valid_loss", "test_r2", "test_mse")}, indent=1))
    return 0


def cmd_cv(args) -> int:
    from ..data import load_dataset
    from ..training import run_cv

    folds = [int(f) for f in str(args.folds).split(",") if f.strip() != ""]
    if not folds or any(f not in range(4) for f in folds) or len(set(folds)) != len(folds):
        raise ValueError(f"--folds: expected distinct folds from 0-3, got {args.folds!r}")
    data = load_dataset(args.data)
    res = run_cv(
        args.preset, args.split, data, args.out, tcfg=_train_config(args), model_overrides=_overrides(args),
        folds=folds, device=args.device, resume=args.resume, progress=not args.no_progress, log=_log,
        parallel_folds=args.parallel_folds,
    )
    print(format_results_table([res]))
    print(f"\nwrote {Path(args.out) / 'results.json'}")
    return 0


def cmd_evaluate(args) -> int:
    from ..data import feature_size, load_dataset
    from ..training import evaluate_model, load_checkpoint, model_from_checkpoint, resolve_device, save_predictions

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
        _log(f"note: checkpoint was trained on {run.get('split')} fold {run.get('fold')}; "
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


def cmd_data_summary(args) -> int:
    from ..data import format_summary, load_dataset, summary

    sm = summary(load_dataset(args.data))
    if args.json:
        sm["path"] = Path(sm["path"]).name
        print(json.dumps(sm, indent=1))
    else:
        print(format_summary(sm))
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
