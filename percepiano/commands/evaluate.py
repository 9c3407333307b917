"""``percepiano evaluate``: metrics of a checkpoint (``best.pt`` / ``last.pt``) on one part of a fold.

    percepiano evaluate runs/han_perf0/best.pt --split performer --fold 0 [--threads N]

``--data`` defaults to the ``PERCEPIANO_DATA`` environment variable. The metrics go to stdout as JSON; what
the checkpoint is, how its training departed from the original protocol and a progress bar go to stderr.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..constants import N_FOLDS, PARTS, SPLIT_SCHEMES
from ._options import add_data, log

# The most CPU threads evaluate picks by itself: batch-1 evaluation of one segment gains little beyond this.
MAX_AUTO_THREADS = 4


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint (best.pt / last.pt) on a split")
    p.add_argument("checkpoint", type=Path)
    add_data(p)
    p.add_argument("--split", required=True, choices=SPLIT_SCHEMES)
    p.add_argument("--fold", type=int, required=True, choices=range(N_FOLDS))
    p.add_argument("--part", default="test", choices=tuple(PARTS))
    p.add_argument("--batch-size", type=int, default=1, help="default 1, as the original eval script")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the idle cores, 1 to 4: 1 on a busy or small machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--predictions", type=Path, default=None, help="write per-segment predictions (npz) here")
    p.set_defaults(func=cmd_evaluate)


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """The cores the 1-minute load average leaves idle, rounded, between 1 and :data:`MAX_AUTO_THREADS`.

    torch's default (every core) makes its threads wait on each other when other processes hold the cores:
    on a busy 2-core machine 2 threads took 3.6x as long as 1 (docs/results.md, "`percepiano evaluate`: CPU
    threads")."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(MAX_AUTO_THREADS, round(cores - load)))


def cmd_evaluate(args) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..checkpoints import INPUT_SIZES, load_trained_model, protocol_notes
    from ..data import load_dataset, num_batches
    from ..training import evaluate_model, resolve_device, save_predictions

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected a positive number of threads, got {args.threads}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected >= 1, got {args.batch_size}")
    threads = args.threads or auto_threads()
    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    model, ck = load_trained_model(args.checkpoint, device)
    data = load_dataset(args.data)
    run = ck.get("run", {})
    feature_set = INPUT_SIZES[model.config.input_size]  # the checkpoint's run feature set, if any, agrees
    notes = protocol_notes(ck)
    if run.get("split") is not None and (run.get("split"), run.get("fold")) != (args.split, args.fold):
        notes.append(f"trained on {run.get('split')} fold {run.get('fold')}; "
                     f"evaluated on {args.split} fold {args.fold}")
    for note in notes:
        log(f"note: {note}")
    idx = data.split_indices(args.split, args.fold, args.part)
    log(f"evaluating {args.checkpoint} ({ck['kind']}, epoch {ck.get('epoch')}) on {args.split} fold {args.fold} "
        f"{args.part}: {len(idx)} segments, batch size {args.batch_size}, {device}"
        + (f", {threads} thread(s)" if device.type == "cpu" else ""))
    with tqdm(total=num_batches(len(idx), args.batch_size), desc="evaluate", unit="batch", file=sys.stderr,
              dynamic_ncols=True, disable=args.no_progress) as bar:
        def one_batch(*_) -> None:  # a forward hook that returns something replaces the model's output
            bar.update()

        hook = model.register_forward_hook(one_batch)  # one forward call per batch
        try:
            out = evaluate_model(model, data, idx, feature_set=feature_set, batch_size=args.batch_size, device=device)
        finally:
            hook.remove()
    pred = out["predictions"]
    finite = np.isfinite(pred.predictions).all(axis=1)
    if not finite.all():  # finite weights can still overflow; a NaN metric is never printed as a result
        first = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{args.checkpoint}: the model's predictions are not finite for {int((~finite).sum())} of "
                         f"{len(finite)} segments (first: {pred.segment_ids[first]}); no metrics")
    if args.predictions is not None:
        save_predictions(args.predictions, pred)
    m = out["metrics"]
    summary = {
        "checkpoint": str(args.checkpoint), "epoch": ck.get("epoch"), "split": args.split, "fold": args.fold,
        "part": args.part, "n": m["n"], "r2": m["r2"], "mse": m["mse"], "r2_flat": m["r2_flat"],
        "std_score_1": m.get("std_score_1"), "std_score_05": m.get("std_score_05"),
        "std_score_01": m.get("std_score_01"),
        "per_label_r2": dict(zip(data.label_names, m["per_label_r2"])),
        "protocol_notes": notes,
    }
    print(json.dumps(summary, indent=1))
    return 0
