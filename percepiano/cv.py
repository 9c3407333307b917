"""Cross-validation: all folds of a split (sequential, or several at once in worker processes), the mean over
them, the honest baselines beside every neural run, and the provenance recorded in ``results.json``.

The reported number is the mean over the 4 fold models of their test R2 (``train_m2pf.py`` is run once per
fold; the paper reports the mean). ``OUT/fold{k}/`` holds each fold's files (:mod:`percepiano.training`),
``OUT/results.json`` the summary, the configs, the data file's hash and the environment (versions, git
commit, device).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from . import __version__, baselines
from .checkpoints import atomic_write_text
from .config import ModelConfig, get_preset
from .constants import BASELINES, N_FOLDS, PRESET_FEATURES
from .data import PercePianoData, load_dataset
from .metrics import evaluate_predictions, r2
from .results import write_results
from .training import (
    FOLD_RESULT,
    PREDICTIONS,
    SplitPredictions,
    TrainConfig,
    fold_test_fields,
    original_valid_loss,
    resolve_device,
    save_predictions,
    train_fold,
)


# --------------------------------------------------------------------------------------------- provenance


def environment_info(device: torch.device | str | None = None) -> dict:
    """Versions, git commit (and whether the tree has uncommitted changes), device and platform of a run."""
    info = {
        "versions": {
            "percepiano": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "git_commit": None,
        "git_dirty": None,
        "device": str(device) if device is not None else None,
        "device_name": None,
        "platform": platform.platform(),
    }
    try:
        import sklearn

        info["versions"]["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    if device is not None and torch.device(device).type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["device_name"] = platform.processor() or platform.machine()
    here = Path(__file__).resolve().parent
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip() or None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout
        info["git_dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def data_info(data: PercePianoData) -> dict:
    """The dataset a run read: file name, sha256, number of segments and notes."""
    digest = None
    if Path(data.path).is_file():
        h = hashlib.sha256()
        with open(data.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
    # the file name only: results must not carry machine paths
    return {"file": Path(data.path).name, "sha256": digest, "segments": len(data), "notes": data.num_notes}


# --------------------------------------------------------------------------------------------- folds


def summarize_folds(folds: list[dict]) -> dict:
    """The reported numbers of a set of fold results: mean test R2 over the fold models, its spread, MSE."""
    r = np.array([f["test_r2"] for f in folds], dtype=np.float64)
    per_label = np.array([f["per_label_test_r2"] for f in folds], dtype=np.float64)
    return {
        "mean_test_r2": float(r.mean()),
        "fold_std": float(r.std()),  # population std over folds (ddof 0)
        "fold_min": float(r.min()),
        "fold_max": float(r.max()),
        "mean_test_mse": float(np.mean([f["test_mse"] for f in folds])),
        "per_label_mean_test_r2": per_label.mean(axis=0).tolist(),
    }


def run_cv(
    preset: str,
    split: str,
    data: PercePianoData,
    out_dir: str | os.PathLike,
    *,
    tcfg: TrainConfig | None = None,
    model_overrides: dict | None = None,
    folds: Iterable[int] = range(N_FOLDS),
    device: str | torch.device | None = "auto",
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    parallel_folds: int = 1,
) -> dict:
    """All folds of ``split`` for a neural preset (``han``, ``bilstm``, ``bilstm_sa``) or a baseline (``mean``,
    ``ridge``); writes ``OUT/fold{k}/...`` and ``OUT/results.json`` and returns the results dict.

    With ``resume``, a fold whose ``fold_result.json`` exists is not re-run and an interrupted fold continues
    from its ``last.pt``. ``parallel_folds`` > 1 trains that many folds at once in worker processes on the
    same device (one GPU is far from saturated by one batch-8 fold); each fold is seeded as in a sequential
    run, so its result does not depend on this setting.
    """
    t0 = time.perf_counter()
    tcfg = tcfg or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda s: None)
    folds = [int(f) for f in folds]
    is_baseline = preset in BASELINES
    dev = torch.device("cpu") if is_baseline else resolve_device(device)
    fold_results = []
    if is_baseline:
        if model_overrides:
            raise ValueError(f"baseline {preset!r} takes no model overrides")
        model_cfg, feature_set = None, "full"
    else:
        model_cfg = get_preset(preset, **(model_overrides or {}))
        feature_set = PRESET_FEATURES[preset]
    pending = []
    for fold in folds:
        done = out / f"fold{fold}" / FOLD_RESULT
        if resume and done.exists():
            fold_results.append(json.loads(done.read_text()))
            log(f"fold {fold}: already finished, test_r2 {fold_results[-1]['test_r2']:.4f}")
        else:
            pending.append(fold)
    if parallel_folds > 1 and not is_baseline and len(pending) > 1:
        fold_results += _train_folds_in_parallel(
            model_cfg, tcfg, data, split, pending, out, feature_set, dev, resume, parallel_folds, preset, log
        )
        pending = []
    for fold in pending:
        fdir = out / f"fold{fold}"
        if is_baseline:
            res = run_baseline_fold(preset, data, split, fold, fdir, tcfg)
        else:
            res = train_fold(
                model_cfg, tcfg, data, split, fold, fdir, feature_set=feature_set, device=dev, resume=resume,
                progress=progress, log=log, run_info={"preset": preset},
            )
        log(f"fold {fold}: best epoch {res['best_epoch']}, test_r2 {res['test_r2']:.4f}")
        fold_results.append(res)
    fold_results.sort(key=lambda r: r["fold"])
    for res in fold_results:
        res["dir"] = f"fold{res['fold']}"  # relative to results.json
    # Every results table shows the honest baselines beside a neural model: same split, same folds.
    baseline_summary = None
    if not is_baseline:
        baseline_summary = {}
        for name in BASELINES:
            try:
                rows = [run_baseline_fold(name, data, split, f, None, tcfg) for f in folds]
            except ValueError as exc:  # e.g. scikit-learn missing for ridge
                log(f"baseline {name} skipped: {exc}")
                continue
            baseline_summary[name] = {k: v for k, v in summarize_folds(rows).items() if k != "per_label_mean_test_r2"}
            baseline_summary[name]["per_fold_test_r2"] = [r["test_r2"] for r in rows]
    results = {
        "preset": preset,
        "kind": "baseline" if is_baseline else "neural",
        "split": split,
        **summarize_folds(fold_results),
        "n_folds": len(fold_results),
        "folds": fold_results,
        "baselines": baseline_summary,  # mean/ridge on the same split and folds (full splits, no limits)
        "label_names": list(data.label_names),
        "epochs": None if is_baseline else tcfg.epochs,
        "seed": tcfg.seed,
        "feature_set": feature_set,
        "config": {
            "model": None if is_baseline else model_cfg.to_dict(),
            "model_overrides": dict(model_overrides or {}),
            "train": None if is_baseline else tcfg.to_dict(),
            "baseline": _baseline_config(preset) if is_baseline else None,
        },
        "protocol": "original" if (not is_baseline and tcfg.is_original() and not model_overrides
                                   and len(fold_results) == N_FOLDS) else "modified",
        "data": data_info(data),
        **environment_info(dev),
        "wall_seconds": time.perf_counter() - t0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_results(results, out)
    return results


def _fold_worker(job: dict) -> dict:
    """One fold in a worker process (top level so that ``spawn`` can import it)."""
    torch.set_num_threads(job["threads"])
    data = load_dataset(job["data_path"])
    return train_fold(
        ModelConfig.from_dict(job["model_cfg"]), TrainConfig.from_dict(job["tcfg"]), data, job["split"], job["fold"],
        job["out"], feature_set=job["feature_set"], device=job["device"], resume=job["resume"], progress=False,
        run_info={"preset": job["preset"]},
    )


def _train_folds_in_parallel(model_cfg, tcfg, data, split, folds, out, feature_set, device, resume, workers, preset, log):
    import concurrent.futures
    import multiprocessing

    if not Path(data.path).is_file():
        raise ValueError("parallel folds reload the dataset in each worker: load it from a file (--data)")
    workers = min(int(workers), len(folds))
    threads = max(1, torch.get_num_threads() // workers) if device.type == "cpu" else 1
    jobs = [
        {"model_cfg": model_cfg.to_dict(), "tcfg": tcfg.to_dict(), "data_path": data.path, "split": split, "fold": f,
         "out": str(out / f"fold{f}"), "feature_set": feature_set, "device": str(device), "resume": resume,
         "threads": threads, "preset": preset}
        for f in folds
    ]
    log(f"training folds {folds} in {workers} worker processes on {device}")
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        results = list(pool.map(_fold_worker, jobs))
    for res in results:
        log(f"fold {res['fold']}: best epoch {res['best_epoch']}, test_r2 {res['test_r2']:.4f}")
    return results


# --------------------------------------------------------------------------------------------- baselines


def _baseline_config(name: str) -> dict:
    if name == "mean":
        return {"name": "mean", "description": "per-label mean of the fold's train labels"}
    return {
        "name": "ridge",
        "description": "sklearn Ridge on per-segment mean/std/p10/p90 of the 101 inputs (train-standardised); "
        "alpha by lowest valid MSE, refit on train",
        "alphas": list(baselines.RIDGE_ALPHAS),
    }


def run_baseline_fold(name: str, data: PercePianoData, split: str, fold: int, out_dir, tcfg: TrainConfig) -> dict:
    """A baseline fold in the neural fold-result format (best_epoch None); files written when ``out_dir``."""
    fit = baselines.fit_predict(name, data, split, fold)
    va, te = data.split_indices(split, fold, "valid"), data.split_indices(split, fold, "test")
    m = evaluate_predictions(data.labels[te], fit["test_pred"], data.labels_std[te])
    res = {
        "fold": int(fold),
        "best_epoch": None,
        "valid_loss": original_valid_loss(data.labels[va], fit["valid_pred"], tcfg.eval_batch_size),
        "valid_r2": r2(data.labels[va], fit["valid_pred"]),
        **fold_test_fields(m),
        "chosen": fit["chosen"],
        "n_train": int(len(data.split_indices(split, fold, "train"))), "n_valid": int(len(va)), "n_test": int(len(te)),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pred = SplitPredictions(
            segment_ids=[str(s) for s in data.segment_ids[te]],
            logits=np.full(fit["test_pred"].shape, np.nan, dtype=np.float32),  # baselines have no logits
            predictions=fit["test_pred"].astype(np.float32),
            labels=data.labels[te],
            loss=original_valid_loss(data.labels[te], fit["test_pred"], tcfg.eval_batch_size),
        )
        save_predictions(out / PREDICTIONS, pred)
        atomic_write_text(json.dumps(res, indent=1) + "\n", out / FOLD_RESULT)
    return res
