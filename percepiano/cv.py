"""Cross-validation: all folds of a split (sequential, or several at once in worker processes), the mean over
them, the honest baselines beside every neural run, and multi-seed rounds.

The reported number is the mean over the 4 fold models of their test R2 (``train_m2pf.py`` is run once per
fold; the paper reports the mean). ``OUT/fold{k}/`` holds each fold's files (:mod:`percepiano.training`),
``OUT/results.json`` the summary, the run's identity, the configs, the command line, the data file's hash and
the environment (:mod:`percepiano.provenance`), ``OUT/results.csv`` the per-fold table. With several seeds
(:func:`run_seeds`) each seed is such a run in ``OUT/seed{s}/``, indexed by ``OUT/seeds.json``.

A directory holding a run is never overwritten: without ``resume`` it is refused; with ``resume`` a finished
fold is reused and an unfinished one continued only when its identity is the requested run's
(:func:`percepiano.provenance.check_identity`), and anything else is refused with what differs.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from . import baselines
from .checkpoints import atomic_write_text, load_checkpoint
from .config import ModelConfig, get_preset
from .constants import BASELINES, N_FOLDS, PRESET_FEATURES
from .data import PercePianoData, load_dataset
from .metrics import evaluate_predictions, r2
from .provenance import check_identity, data_info, environment_info, fold_identity, run_identity
from .results import (RESULTS, SEEDS, fold_dir, load_results, load_seeds_index, read_json_object, write_results,
                      write_seeds_index)
from .training import (
    BEST,
    FOLD_FILES,
    FOLD_RESULT,
    KEEP_ALL,
    LAST,
    LOG,
    PREDICTIONS,
    STEPS,
    SplitPredictions,
    TrainConfig,
    existing_run_files,
    fold_summary_line,
    fold_test_fields,
    original_valid_loss,
    resolve_device,
    save_predictions,
    train_fold,
)

RESULTS_CSV = "results.csv"


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
    allow_code_change: bool = False,
    reuse_without_checkpoint: bool = False,
    keep: str = KEEP_ALL,
    command: str | None = None,
    step_log: bool = False,
) -> dict:
    """All folds of ``split`` for a neural preset (``han``, ``bilstm``, ``bilstm_sa``) or a baseline (``mean``,
    ``ridge``); writes ``OUT/fold{k}/...``, ``OUT/results.json`` and ``OUT/results.csv`` and returns the
    results dict.

    ``OUT`` must not hold a run unless ``resume``; with ``resume``, a fold whose ``fold_result.json`` (and
    ``best.pt``) carry this run's identity is reused, one with this run's ``last.pt`` is continued (also to
    more epochs), and any other is refused naming each differing field. ``allow_code_change`` lets the code
    version differ (recorded under ``code_changes``). ``reuse_without_checkpoint`` also reuses finished folds
    that kept only their small outputs (no ``best.pt``; :func:`fold_state`), listed in results.json's
    ``folds_without_checkpoint``: their numbers stand, but ``report`` and the paired gate, which read each
    fold's checkpoint or test predictions, cannot use them. ``keep="best"`` deletes each fold's ``last.pt``
    once it is finished. ``step_log`` writes each fold's ``steps.jsonl`` (:func:`percepiano.training.train_fold`).
    ``parallel_folds`` > 1 trains that many folds at once in worker processes on the same device
    (one GPU is far from saturated by one batch-8 fold); each fold is seeded as in a sequential run, so its
    result does not depend on this setting. ``command`` (the command line) is recorded in results.json.
    """
    t0 = time.perf_counter()
    log = log or (lambda s: None)
    folds = [int(f) for f in folds]
    is_baseline = preset in BASELINES
    if is_baseline:
        _check_baseline_settings(preset, tcfg, model_overrides, keep)
        if step_log:
            raise ValueError(f"baseline {preset!r} takes no optimizer steps: step_log does not apply")
        tcfg = TrainConfig()  # only for the valid-loss formula's batch size, which is the original's
        model_cfg, feature_set = None, "full"
        identity = run_identity(preset, split, feature_set, data, _baseline_config(preset), None)
    else:
        tcfg = tcfg or TrainConfig()
        model_cfg = get_preset(preset, **(model_overrides or {}))
        feature_set = PRESET_FEATURES[preset]
        identity = run_identity(preset, split, feature_set, data, model_cfg.to_dict(), tcfg.to_dict())
    dev = torch.device("cpu") if is_baseline else resolve_device(device)
    out = Path(out_dir)
    check_run_dir(out, identity, folds, resume, allow_code_change)
    out.mkdir(parents=True, exist_ok=True)

    fold_results, pending, code_changes, without_checkpoint = [], [], [], []
    for fold in folds:
        fdir = out / fold_dir(fold)
        how, saved, change = fold_state(fdir, fold_identity(identity, fold), is_baseline,
                                         allow_code_change, reuse_without_checkpoint) if resume else ("new", None, None)
        if how == "reuse":
            fold_results.append(saved)
            if not is_baseline and not (fdir / BEST).is_file():
                without_checkpoint.append(fold)
            log(f"already finished, reused: {fold_summary_line(saved)}")
            apply_keep(fdir, keep, lambda msg: log(f"fold {fold}: {msg}"))
            if change is not None:
                code_changes.append({"fold": fold, "how": "reused", **change})
        else:
            if how == "new" and resume:
                set_aside_lost_logs(fdir, log)
            pending.append((fold, how == "resume"))
    worker_threads = None  # torch threads of each worker process, when folds ran in parallel
    if parallel_folds > 1 and not is_baseline and len(pending) > 1:
        worker_threads = _worker_threads(dev, parallel_folds, len(pending))
        fold_results += _train_folds_in_parallel(
            model_cfg, tcfg, data, split, pending, out, feature_set, dev, parallel_folds, preset, log,
            allow_code_change, keep, step_log,
        )
        pending = []
    for fold, resume_fold in pending:
        fdir = out / fold_dir(fold)
        if is_baseline:
            res = run_baseline_fold(preset, data, split, fold, fdir, tcfg)
        else:
            res = train_fold(
                model_cfg, tcfg, data, split, fold, fdir, feature_set=feature_set, device=dev, resume=resume_fold,
                progress=progress, log=log, run_info={"preset": preset}, allow_code_change=allow_code_change,
                keep=keep, step_log=step_log,
            )
        log(fold_summary_line(res))
        fold_results.append(res)
    fold_results.sort(key=lambda r: r["fold"])
    for res in fold_results:
        res["dir"] = fold_dir(res["fold"])  # relative to results.json
        code_changes += [{"fold": res["fold"], "how": "resumed", **c} for c in res.get("code_changes") or []]
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
    threads = torch.get_num_threads()
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
        "seed": None if is_baseline else tcfg.seed,  # baselines are deterministic: no seed
        "feature_set": feature_set,
        "config": {
            "model": None if is_baseline else model_cfg.to_dict(),
            "model_overrides": dict(model_overrides or {}),
            "train": None if is_baseline else tcfg.to_dict(),
            "baseline": _baseline_config(preset) if is_baseline else None,
        },
        "protocol": "original" if (not is_baseline and tcfg.is_original() and not model_overrides
                                   and len(fold_results) == N_FOLDS) else "modified",
        "identity": identity,
        "code_changes": code_changes,  # folds reused or continued under another commit or (--allow-code-change) code
        "folds_without_checkpoint": sorted(without_checkpoint),  # reused from fold_result.json alone (no best.pt)
        "command": command,
        "threads": threads,  # torch.get_num_threads() of the process that ran the folds (or started the workers)
        "threads_per_worker": worker_threads,
        "keep": keep,
        "data": data_info(data),
        **environment_info(dev),
        "wall_seconds": time.perf_counter() - t0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_results(results, out)
    atomic_write_text(results_csv(results), out / RESULTS_CSV)
    return results


def run_seeds(
    preset: str,
    split: str,
    data: PercePianoData,
    out_dir: str | os.PathLike,
    seeds: Iterable[int],
    *,
    tcfg: TrainConfig | None = None,
    resume: bool = False,
    **kw,
) -> list[dict]:
    """:func:`run_cv` once per seed, into ``OUT/seed{s}/`` (each an ordinary single-seed run directory), and
    ``OUT/seeds.json`` (:func:`percepiano.results.write_seeds_index`) written first, so that an interrupted
    round is recognised on ``resume``. Returns the results of each seed, in order."""
    seeds = [int(s) for s in seeds]
    if preset in BASELINES:
        raise ValueError(f"baseline {preset!r} is deterministic: several seeds would give the same numbers")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds: expected distinct integers, got {seeds}")
    tcfg = tcfg or TrainConfig()
    out = Path(out_dir)
    runs = [f"seed{s}" for s in seeds]
    index = {"seeds": seeds, "runs": runs, "preset": preset, "split": split}
    found = existing_run_files(out)
    if found and not resume:
        raise ValueError(f"{out} already holds a run ({', '.join(found)}); pass --resume to continue it (only the "
                         f"same runs are continued) or choose another --out")
    single = [n for n in found if n != SEEDS and not n.startswith("seed")]
    if single:
        raise ValueError(f"{out} holds a single-seed run ({', '.join(single)}), not a multi-seed one: choose another --out")
    if (out / SEEDS).is_file():
        saved = load_seeds_index(out)
        diff = [f"{k}: saved {saved[k]!r}, requested {v!r}" for k, v in index.items() if saved.get(k) != v]
        if diff:
            raise ValueError(f"{out / SEEDS}: cannot continue it: it indexes another round:\n  " + "\n  ".join(diff)
                             + "\nrerun with the saved settings or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_seeds_index(index, out)
    return [run_cv(preset, split, data, out / run, tcfg=tcfg.replace(seed=s), resume=resume, **kw)
            for s, run in zip(seeds, runs)]


def _check_baseline_settings(preset: str, tcfg: TrainConfig | None, model_overrides: dict | None, keep: str) -> None:
    """A baseline trains nothing: refuse the settings it would ignore rather than record them."""
    if model_overrides:
        raise ValueError(f"baseline {preset!r} takes no model overrides (got {sorted(model_overrides)})")
    if tcfg is not None:
        default = TrainConfig().to_dict()
        changed = sorted(k for k, v in tcfg.to_dict().items() if v != default[k])
        if changed:
            raise ValueError(f"baseline {preset!r} trains nothing and would ignore the training settings {changed}")
    if keep != KEEP_ALL:
        raise ValueError(f"baseline {preset!r} writes no checkpoints: keep={keep!r} does not apply")


def check_run_dir(out: Path, identity: dict, folds: list[int], resume: bool, allow_code_change: bool) -> None:
    """``out`` holds no run, or (with ``resume``) a single-seed cv run with this identity whose results.json
    covers no fold outside ``folds`` (a resume may add folds; rewriting results.json without some would drop
    them from the reported mean)."""
    found = existing_run_files(out)
    if not found:
        return
    if not resume:
        raise ValueError(
            f"{out} already holds a run ({', '.join(found)}); pass --resume to reuse its finished folds and continue "
            f"the others (only if they are the same run), or choose another --out"
        )
    foreign = [n for n in found if n in FOLD_FILES or n == SEEDS or n.startswith("seed")]
    if foreign:
        raise ValueError(f"{out} holds {', '.join(foreign)}: a `percepiano train` fold or a multi-seed round, not a "
                         f"single-seed cv run; choose another --out")
    if (out / RESULTS).is_file():
        saved = load_results(out / RESULTS)
        check_identity(saved.get("identity"), identity, out / RESULTS, action="continue it",
                       epochs_may_grow=True, allow_code_change=allow_code_change)
        had = sorted(int(f["fold"]) for f in saved.get("folds") or [])
        if not set(had) <= set(folds):
            raise ValueError(f"{out / RESULTS}: cannot continue it: it covers folds {had}, requested {sorted(folds)}; "
                             f"a resume may add folds, not drop them: pass --folds {','.join(map(str, sorted(set(had) | set(folds))))} "
                             f"or choose another --out")


def fold_state(fdir: Path, identity: dict, is_baseline: bool, allow_code_change: bool,
               without_checkpoint: bool = False):
    """What ``cv --resume`` does with fold directory ``fdir``: ``("reuse", fold result, code change or None)``,
    ``("resume", None, None)`` (continue its last.pt: :func:`percepiano.training.train_fold` checks it) or
    ``("new", None, None)``; raises ``ValueError`` naming what differs for anything else.

    A finished fold is reused with its ``best.pt`` (whose identity must be the result's). ``without_checkpoint``
    also reuses a finished fold that has only its small outputs (``fold_result.json``, ``log.jsonl``: a round
    restored from ``round --export`` on another machine): its identity is checked all the same."""
    result_path, last_path, best_path = fdir / FOLD_RESULT, fdir / LAST, fdir / BEST
    if result_path.is_file():
        saved = read_json_object(result_path, "fold result")
        change = check_identity(saved.get("identity"), identity, result_path, action="reuse it",
                                epochs_may_grow=not is_baseline, allow_code_change=allow_code_change)
        epochs = [((i or {}).get("train_config") or {}).get("epochs") for i in (saved["identity"], identity)]
        if epochs[0] != epochs[1]:
            return "resume", None, None  # finished at fewer epochs: train on from last.pt
        if not is_baseline:
            if not best_path.is_file():
                if without_checkpoint:
                    return "reuse", saved, change
                raise ValueError(f"{fdir}: {FOLD_RESULT} without {BEST}: cannot reuse the fold; remove it to train "
                                 f"again, or pass --reuse-without-checkpoint to reuse its recorded result (a run "
                                 f"restored from its small outputs, e.g. `percepiano round --export`)")
            if load_checkpoint(best_path).get("identity") != saved["identity"]:
                raise ValueError(f"{best_path}: not the checkpoint of {result_path} (their identities differ); "
                                 f"cannot reuse the fold")
        return "reuse", saved, change
    if last_path.is_file():
        if is_baseline:  # a baseline never writes last.pt: say which run it belongs to
            check_identity(load_checkpoint(last_path).get("identity"), identity, last_path, action="reuse it")
            raise ValueError(f"{last_path}: a baseline cannot continue a training checkpoint")
        return "resume", None, None
    files = existing_run_files(fdir)
    if files and without_checkpoint and set(files) <= set(LOGS_OF_A_RUN):
        return "new", None, None  # the logs of a fold restored without its checkpoint: train it again
    if files:
        raise ValueError(f"{fdir} holds {', '.join(files)} but neither {FOLD_RESULT} nor {LAST}: nothing to reuse "
                         f"or resume; remove it to train the fold again"
                         + (" (or pass --reuse-without-checkpoint where it is a restored fold's logs)"
                            if set(files) <= set(LOGS_OF_A_RUN) else ""))
    return "new", None, None


def apply_keep(fdir: Path, keep: str, log: Callable[[str], None]) -> None:
    """What ``--keep`` asks of a finished fold that is reused: ``best`` removes its ``last.pt``."""
    if keep != KEEP_ALL and (fdir / LAST).is_file():
        (fdir / LAST).unlink()
        log(f"removed {LAST} (--keep {keep})")


# What a fold that was still training leaves in a restored round folder (`round --export` or `--mirror-to`
# copies log.jsonl; its checkpoint stays behind): a new start sets them aside (set_aside_lost_logs).
LOGS_OF_A_RUN = (LOG, STEPS)


def set_aside_lost_logs(fdir: Path, log: Callable[[str], None]) -> list[Path]:
    """Rename the logs of a fold that has no checkpoint (:data:`LOGS_OF_A_RUN`, what :func:`fold_state` calls
    "new" with ``without_checkpoint``) to ``lost-<UTC time>-<name>``, so that the fold can start again from
    epoch 0 and nothing is lost: the round and cv commands read, export and check only the fold's own files.
    Returns the new paths."""
    files = existing_run_files(fdir)
    if not set(files) <= set(LOGS_OF_A_RUN):
        raise ValueError(f"{fdir}: holds {', '.join(files)}: not only the logs of a lost run")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for name in LOGS_OF_A_RUN:
        if (fdir / name).is_file():
            target = fdir / f"lost-{stamp}-{name}"
            os.replace(fdir / name, target)
            moved.append(target)
    if moved:
        log(f"{fdir}: set aside {', '.join(p.name for p in moved)}: the logs of a run whose checkpoint is not "
            f"here (a restored round); the fold is trained again from epoch 0")
    return moved


def results_csv(results: dict) -> str:
    """The per-fold table of a results dict as CSV (``results.csv``): one row per fold, then the mean and the
    population std (ddof 0, the ``fold_std`` of results.json) over folds; columns fold, best_epoch, test_r2,
    test_mse, valid_loss and the test R2 of every label (``test_r2_<label>``). Full float precision."""
    names = list(results["label_names"])
    columns = ["fold", "best_epoch", "test_r2", "test_mse", "valid_loss", *[f"test_r2_{n}" for n in names]]
    rows = []
    for f in results["folds"]:
        per = f["per_label_test_r2"]
        per = [per[n] for n in names] if isinstance(per, dict) else list(per)
        rows.append([f["fold"], f.get("best_epoch"), f["test_r2"], f["test_mse"], f["valid_loss"], *per])
    values = np.array([[np.nan if v is None else float(v) for v in r[1:]] for r in rows], dtype=np.float64)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows([[("" if v is None else v) for v in r] for r in rows])
    for label, stat in (("mean", np.mean), ("std", np.std)):
        col = stat(values, axis=0)
        w.writerow([label, *["" if np.isnan(v) else float(v) for v in col]])
    return buf.getvalue()


def _worker_threads(device: torch.device, workers: int, n_folds: int) -> int:
    """Torch threads of each fold worker: the CPU's threads shared out (one each on a GPU)."""
    workers = max(1, min(int(workers), n_folds))
    return max(1, torch.get_num_threads() // workers) if device.type == "cpu" else 1


def _fold_worker(job: dict) -> dict:
    """One fold in a worker process (top level so that ``spawn`` can import it)."""
    torch.set_num_threads(job["threads"])
    data = load_dataset(job["data_path"])
    return train_fold(
        ModelConfig.from_dict(job["model_cfg"]), TrainConfig.from_dict(job["tcfg"]), data, job["split"], job["fold"],
        job["out"], feature_set=job["feature_set"], device=job["device"], resume=job["resume"], progress=False,
        run_info={"preset": job["preset"]}, allow_code_change=job["allow_code_change"], keep=job["keep"],
        step_log=job["step_log"],
    )


def _train_folds_in_parallel(model_cfg, tcfg, data, split, pending, out, feature_set, device, workers, preset, log,
                             allow_code_change, keep, step_log=False):
    import concurrent.futures
    import multiprocessing

    if not Path(data.path).is_file():
        raise ValueError("parallel folds reload the dataset in each worker: load it from a file (--data)")
    folds = [f for f, _ in pending]
    threads = _worker_threads(device, workers, len(folds))
    workers = min(int(workers), len(folds))
    jobs = [
        {"model_cfg": model_cfg.to_dict(), "tcfg": tcfg.to_dict(), "data_path": data.path, "split": split, "fold": f,
         "out": str(out / fold_dir(f)), "feature_set": feature_set, "device": str(device), "resume": resume_fold,
         "threads": threads, "preset": preset, "allow_code_change": allow_code_change, "keep": keep,
         "step_log": step_log}
        for f, resume_fold in pending
    ]
    log(f"training folds {folds} in {workers} worker processes on {device}")
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        results = list(pool.map(_fold_worker, jobs))
    for res in results:
        log(fold_summary_line(res))
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
    """A baseline fold in the neural fold-result format (best_epoch None); files written (with the fold's
    identity) when ``out_dir``."""
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
        res["identity"] = fold_identity(run_identity(name, split, "full", data, _baseline_config(name), None), fold)
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
