"""The original training and evaluation protocol of one fold (``train_m2pf.py``: ``train``).

Adam(lr 2.5e-5, weight_decay 1e-5, one group over all parameters) with StepLR(3000, 0.98) stepped after every
batch; loss = MSE(sigmoid(logits), labels); gradients clipped to global norm 2.0; batches of 8 shuffled per
epoch; after every epoch the valid loss (Σ batch-mean MSE / n_valid, the original's formula) and test metrics;
the checkpoint with the strictly lowest valid loss is kept; finally that checkpoint is evaluated on the fold's
test split at batch size 1 (the original eval script). The 4 folds of a split and the reported mean over
them are :func:`percepiano.cv.run_cv`.

Files in a fold directory: ``log.jsonl`` (one JSON record per epoch), ``last.pt`` (everything needed to resume,
written atomically after every epoch), ``best.pt`` (the selected model), ``test_predictions.npz`` and
``fold_result.json``. The checkpoints' format, the atomic writes and the RNG state are
:mod:`percepiano.checkpoints`.

Resuming (``resume=True``) restores model, optimizer, scheduler, the RNG states and the history from
``last.pt``; the shuffle order is a function of (seed, epoch) only. On CPU a resumed run ends bitwise equal
to an uninterrupted one (tests/test_training.py). On CUDA, cuDNN keeps the LSTM-dropout RNG state internally,
where it cannot be saved, so a resumed GPU run is a valid continuation but not bitwise the same.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .checkpoints import (
    CHECKPOINT_FORMAT,
    atomic_save,
    atomic_write_text,
    build_model,
    configure_determinism,
    cpu_state,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .config import DictRoundTrip, ModelConfig
from .constants import PARTS
from .data import Batch, PercePianoData, feature_size, iterate_batches, num_batches
from .hierarchy import BatchShapes
from .metrics import evaluate_predictions, r2

LAST, BEST, LOG = "last.pt", "best.pt", "log.jsonl"
PREDICTIONS, FOLD_RESULT = "test_predictions.npz", "fold_result.json"


@dataclass(frozen=True)
class TrainConfig(DictRoundTrip):
    """Training protocol; defaults are the published runs (docs/original.md#hyperparameters, #training-protocol)."""

    lr: float = 2.5e-5  # script flag --lr
    weight_decay: float = 1e-5  # argparse default; coupled L2 inside Adam (not AdamW)
    lr_step_size: int = 3000  # StepLR step_size, counted in optimizer steps (the scheduler steps per batch)
    lr_gamma: float = 0.98  # StepLR gamma
    grad_clip: float = 2.0  # clip_grad_norm_ over all parameters, global L2 norm
    batch_size: int = 8  # training batches (script flag), shuffled per epoch, last batch smaller
    eval_batch_size: int = 8  # in-training valid/test evaluation (the original's loaders use batch 8)
    final_eval_batch_size: int = 1  # test evaluation of the selected checkpoint (the original eval script: 1)
    epochs: int = 100  # argparse default
    seed: int = 7  # argparse th_seed: random, numpy and torch seeded before the model is built
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) (+ cuDNN/cuBLAS settings); original: off
    eval_test_every_epoch: bool = True  # the original computes (and only logs) test metrics after every epoch
    # --- small runs only (None = the original protocol) ---
    limit_segments: int | None = None  # keep only the first N segments of each of train/valid/test
    max_train_batches: int | None = None  # stop each training epoch after N batches

    def __post_init__(self):
        for name in ("lr_step_size", "batch_size", "eval_batch_size", "final_eval_batch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name}: expected >= 1, got {getattr(self, name)!r}")
        for name in ("limit_segments", "max_train_batches"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"TrainConfig.{name}: expected None or >= 1, got {v!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not self.grad_clip > 0 or not 0 < self.lr_gamma <= 1:
            raise ValueError(f"TrainConfig: invalid optimisation values {self}")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def is_original(self) -> bool:
        """True when the protocol is the published one (determinism and per-epoch test logging aside)."""
        ignore = {"deterministic", "eval_test_every_epoch"}
        mine, orig = self.to_dict(), TrainConfig().to_dict()
        return all(mine[k] == orig[k] for k in mine if k not in ignore)


# --------------------------------------------------------------------------------------------- pieces


def build_optimizer(model: nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over all ``model.parameters()`` in one group (the original; parameters without grad are skipped)."""
    return torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, tcfg: TrainConfig) -> torch.optim.lr_scheduler.StepLR:
    """StepLR(step_size, gamma), to be stepped after every optimizer step: lr_k = lr * gamma ** (k // step_size)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=tcfg.lr_step_size, gamma=tcfg.lr_gamma)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``nn.MSELoss()(sigmoid(logits), labels)``: mean over batch x labels."""
    return nn.functional.mse_loss(torch.sigmoid(logits), labels)


def _forward(model: nn.Module, batch, shapes=None) -> torch.Tensor:
    return model(batch.x, batch.lengths, batch.note_locations, shapes=shapes)


def to_device(model: nn.Module, batch: Batch, device: torch.device) -> tuple[Batch, BatchShapes]:
    """The batch on ``device`` and its :class:`~percepiano.hierarchy.BatchShapes`, worked out on the host
    first, so that the forward pass reads nothing back from the device. CUDA copies go through pinned
    memory and do not block the host."""
    shapes = model.batch_shapes(batch.lengths, batch.note_locations)
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True), shapes
    return batch.to(device), shapes


def train_step(model: nn.Module, batch, optimizer, scheduler, tcfg: TrainConfig, shapes=None) -> torch.Tensor:
    """One original training iteration; returns the detached loss tensor (on the model's device). With
    ``shapes`` (see :func:`to_device`) and a model that no longer validates its inputs, nothing in it waits
    for the device.

    train mode -> forward -> loss -> zero_grad -> backward -> clip_grad_norm_(all parameters) -> step ->
    scheduler.step().
    """
    model.train()
    loss = loss_fn(_forward(model, batch, shapes), batch.labels)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.detach()


@dataclass
class SplitPredictions:
    segment_ids: list[str]
    logits: np.ndarray  # (n, 19) float32
    predictions: np.ndarray  # (n, 19) float32 = sigmoid(logits)
    labels: np.ndarray  # (n, 19) float32
    loss: float  # the original's valid loss: (Σ over batches of the batch-mean MSE) / n


@torch.no_grad()
def predict_split(
    model: nn.Module,
    data: PercePianoData,
    indices,
    *,
    feature_set: str,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> SplitPredictions:
    """Eval-mode predictions over ``indices`` in order (the original ``get_validation_loss``); restores the
    model's train/eval mode afterwards. One host sync at the end."""
    was_training = model.training
    model.eval()
    logits, ids, loss_sum = [], [], None
    try:
        for batch in iterate_batches(data, indices, batch_size, feature_set=feature_set):
            batch, shapes = to_device(model, batch, torch.device(device))
            out = _forward(model, batch, shapes)
            batch_loss = loss_fn(out, batch.labels)
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            logits.append(out)
            ids.extend(batch.segment_ids)
    finally:
        model.train(was_training)
    idx = np.asarray(indices, dtype=np.int64)
    lg = torch.cat(logits).float()
    pred = torch.sigmoid(lg)
    return SplitPredictions(
        segment_ids=ids,
        logits=lg.cpu().numpy(),
        predictions=pred.cpu().numpy(),
        labels=data.labels[idx],
        loss=float(loss_sum) / len(idx),
    )


def original_valid_loss(labels: np.ndarray, predictions: np.ndarray, batch_size: int = 8) -> float:
    """The original's valid loss for given predictions: Σ over consecutive batches of the batch-mean squared
    error, divided by the number of samples (so it is about MSE / batch_size)."""
    y, p = np.asarray(labels, np.float64), np.asarray(predictions, np.float64)
    total = sum(((y[s : s + batch_size] - p[s : s + batch_size]) ** 2).mean() for s in range(0, len(y), batch_size))
    return float(total / len(y))


def check_data_for_model(model: nn.Module, data: PercePianoData, indices, feature_set: str) -> None:
    """Run the model's input checks (``check_note_locations``) over the segments ``indices``, 64 at a time;
    raises ``ValueError`` naming the first segment that fails. :func:`train_fold` runs this once over every
    segment of the fold and then switches the model's own per-forward checks off (``validate_inputs``: they
    cost host synchronisations on a GPU)."""
    if not hasattr(model, "check_note_locations"):
        return
    for start in range(0, len(indices), 64):
        chunk = [int(i) for i in indices[start : start + 64]]
        batch = data.batch(chunk, feature_set)
        try:
            model.check_note_locations(batch.lengths, batch.note_locations)
        except ValueError:
            for i in chunk:  # find the segment: checks are per row
                one = data.batch([i], feature_set)
                try:
                    model.check_note_locations(one.lengths, one.note_locations)
                except ValueError as exc:
                    raise ValueError(f"{data.path}: segment {one.segment_ids[0]} (index {i}): {exc}") from exc
            raise


# --------------------------------------------------------------------------------------------- one fold


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fold_indices(data: PercePianoData, split: str, fold: int, tcfg: TrainConfig) -> dict[str, np.ndarray]:
    out = {p: data.split_indices(split, fold, p) for p in PARTS}
    if tcfg.limit_segments is not None:
        out = {p: v[: tcfg.limit_segments] for p, v in out.items()}
    return out


def train_fold(
    model_cfg: ModelConfig,
    tcfg: TrainConfig,
    data: PercePianoData,
    split: str,
    fold: int,
    out_dir: str | os.PathLike,
    *,
    feature_set: str = "full",
    device: str | torch.device | None = "cpu",
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    run_info: dict | None = None,
) -> dict:
    """Train one fold with the original protocol and evaluate its best checkpoint on the test split.

    Writes the fold files (module docstring) into ``out_dir`` and returns the fold result dict.
    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint is on disk (tests use it to
    simulate an interruption). Refuses to overwrite an existing run unless ``resume``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda s: None)
    device = resolve_device(device)
    if feature_size(feature_set) != model_cfg.input_size:
        raise ValueError(
            f"feature set {feature_set!r} has {feature_size(feature_set)} dims, model input_size is {model_cfg.input_size}"
        )
    run = {"split": split, "fold": int(fold), "feature_set": feature_set, **(run_info or {})}
    last_path, best_path, log_path = out / LAST, out / BEST, out / LOG
    if last_path.exists() and not resume:
        raise ValueError(f"{out} already holds a run ({LAST}); pass --resume to continue it or choose another --out")

    configure_determinism(tcfg.deterministic)
    model = build_model(model_cfg, tcfg.seed, device)
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    history: list[dict] = []
    start_epoch, best_epoch, best_loss = 0, None, float("inf")

    if resume and last_path.exists():
        ck = load_checkpoint(last_path)
        _check_resume_compatible(ck, model_cfg, tcfg, run, last_path)
        model.load_state_dict(ck["model_state"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"])
        start_epoch = int(ck["epoch"])
        best_epoch, best_loss = ck["best"]["epoch"], float(ck["best"]["valid_loss"])
        history = list(ck["history"])
        atomic_write_text("".join(json.dumps(r) + "\n" for r in history), log_path)
        log(f"resumed {out} after epoch {start_epoch} (best epoch {best_epoch}, valid loss {best_loss:.6g})")
    elif log_path.exists():
        log_path.unlink()

    idx = fold_indices(data, split, fold, tcfg)
    check_data_for_model(model, data, np.concatenate([idx[p] for p in PARTS]), feature_set)
    model.validate_inputs = False  # checked once above: no host syncs for input checks in the steps
    n_train_batches = num_batches(len(idx["train"]), tcfg.batch_size)
    if tcfg.max_train_batches is not None:
        n_train_batches = min(n_train_batches, tcfg.max_train_batches)

    for epoch in range(start_epoch, tcfg.epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        with tqdm(total=n_train_batches, desc=f"fold {fold} epoch {epoch + 1}/{tcfg.epochs}", leave=False,
                  file=sys.stderr, dynamic_ncols=True, disable=not progress) as bar:  # the epoch's line is log()'s
            for batch in iterate_batches(
                data, idx["train"], tcfg.batch_size, feature_set=feature_set, shuffle=True, seed=tcfg.seed,
                epoch=epoch, max_batches=tcfg.max_train_batches,
            ):
                batch, shapes = to_device(model, batch, device)
                loss_sum += train_step(model, batch, optimizer, scheduler, tcfg, shapes)
                bar.update()
        train_loss = float(loss_sum) / n_train_batches  # one sync per epoch
        valid = predict_split(model, data, idx["valid"], feature_set=feature_set, batch_size=tcfg.eval_batch_size, device=device)
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "valid_loss": valid.loss,
            "valid_r2": r2(valid.labels, valid.predictions),
            "test_r2": None,
            "test_loss": None,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "step": int(scheduler.last_epoch),
        }
        if tcfg.eval_test_every_epoch:
            test = predict_split(model, data, idx["test"], feature_set=feature_set, batch_size=tcfg.eval_batch_size, device=device)
            record["test_r2"], record["test_loss"] = r2(test.labels, test.predictions), test.loss
        if not np.isfinite(valid.loss):
            raise FloatingPointError(f"fold {fold} epoch {epoch + 1}: valid loss is {valid.loss}")
        is_best = valid.loss < best_loss  # strict: the first epoch reaching the minimum is kept
        record["is_best"] = bool(is_best)
        if is_best:
            best_epoch, best_loss = epoch + 1, valid.loss
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT, "kind": "best", "model_state": cpu_state(model),
                    "model_config": model_cfg.to_dict(), "train_config": tcfg.to_dict(), "run": run,
                    "epoch": best_epoch, "valid_loss": best_loss,
                },
                best_path,
            )
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT, "kind": "last", "model_state": cpu_state(model),
                "model_config": model_cfg.to_dict(), "train_config": tcfg.to_dict(), "run": run,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1, "best": {"epoch": best_epoch, "valid_loss": best_loss},
                "rng": rng_state(), "history": history,
            },
            last_path,
        )
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        test_txt = f" test_r2 {record['test_r2']:.4f}" if record["test_r2"] is not None else ""
        log(
            f"fold {fold} epoch {epoch + 1}/{tcfg.epochs}: train_loss {train_loss:.5f} valid_loss {valid.loss:.6f} "
            f"valid_r2 {record['valid_r2']:.4f}{test_txt} lr {record['lr']:.3g} {record['seconds']:.1f}s"
            + (" *" if is_best else "")
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)

    if best_epoch is None:
        raise ValueError(f"{out}: no epoch was trained (epochs={tcfg.epochs})")
    best = load_checkpoint(best_path)
    model.load_state_dict(best["model_state"])
    result = evaluate_model(
        model, data, idx["test"], feature_set=feature_set, batch_size=tcfg.final_eval_batch_size, device=device
    )
    save_predictions(out / PREDICTIONS, result["predictions"])
    fold_result = {
        "fold": int(fold),
        "best_epoch": int(best_epoch),
        "valid_loss": float(best_loss),
        "valid_r2": float(history[best_epoch - 1]["valid_r2"]),  # in-training eval of the kept epoch
        **fold_test_fields(result["metrics"]),
        "epochs_trained": len(history),
        "train_seconds": float(sum(r["seconds"] for r in history)),
        "n_train": int(len(idx["train"])), "n_valid": int(len(idx["valid"])), "n_test": int(len(idx["test"])),
    }
    atomic_write_text(json.dumps(fold_result, indent=1) + "\n", out / FOLD_RESULT)
    return fold_result


def fold_test_fields(m: dict) -> dict:
    """The test-metric fields of a fold result (``fold_result.json``), from :func:`evaluate_predictions`' dict."""
    return {
        "test_r2": m["r2"],
        "test_mse": m["mse"],
        "test_r2_flat": m["r2_flat"],
        "per_label_test_r2": m["per_label_r2"],
        "per_label_test_mse": m["per_label_mse"],
        **{f"test_{k}": m[k] for k in ("std_score_1", "std_score_05", "std_score_01") if k in m},
    }


def _check_resume_compatible(ck: dict, model_cfg: ModelConfig, tcfg: TrainConfig, run: dict, path) -> None:
    if ck.get("kind") != "last":
        raise ValueError(f"{path}: not a resumable checkpoint (kind {ck.get('kind')!r})")
    if ck["model_config"] != model_cfg.to_dict():
        raise ValueError(f"{path}: model config differs from the requested one; cannot resume")
    saved = dict(ck["train_config"])
    want = tcfg.to_dict()
    saved.pop("epochs"), want.pop("epochs")  # a run may be extended to more epochs
    if saved != want:
        diff = sorted(k for k in want if saved.get(k) != want[k])
        raise ValueError(f"{path}: train config differs in {diff}; cannot resume")
    for key in ("split", "fold", "feature_set"):
        if ck["run"].get(key) != run.get(key):
            raise ValueError(f"{path}: run {key} is {ck['run'].get(key)!r}, requested {run.get(key)!r}")


def evaluate_model(
    model: nn.Module, data: PercePianoData, indices, *, feature_set: str, batch_size: int = 1,
    device: str | torch.device = "cpu",
) -> dict:
    """Metrics (the set the original logs, docs/original.md#metric) and predictions of ``model`` on ``indices``."""
    p = predict_split(model, data, indices, feature_set=feature_set, batch_size=batch_size, device=device)
    idx = np.asarray(indices, dtype=np.int64)
    metrics = evaluate_predictions(p.labels, p.predictions, data.labels_std[idx])
    metrics["loss"] = p.loss
    return {"metrics": metrics, "predictions": p}


def save_predictions(path: str | os.PathLike, p: SplitPredictions, extra: dict | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez_compressed(
        tmp,
        segment_ids=np.asarray(p.segment_ids, dtype=str),
        predictions=p.predictions.astype(np.float32),
        logits=p.logits.astype(np.float32),
        labels=p.labels.astype(np.float32),
        **(extra or {}),
    )
    os.replace(tmp, path)
