"""The original training and evaluation protocol (reference_spec §5-6), per fold and over 4 folds.

Per fold: Adam(lr 2.5e-5, weight_decay 1e-5, one group over all parameters) with StepLR(3000, 0.98) stepped
after every batch; loss = MSE(sigmoid(logits), labels); gradients clipped to global norm 2.0; batches of 8
shuffled per epoch; after every epoch the valid loss (Σ batch-mean MSE / n_valid, the original's formula) and
test metrics; the checkpoint with the strictly lowest valid loss is kept; finally that checkpoint is evaluated
on the fold's test split at batch size 1 (the original eval script). The reported number is the mean over the
4 fold models of their test R2 (:func:`run_cv`).

Files in a fold directory: ``log.jsonl`` (one JSON record per epoch), ``last.pt`` (everything needed to resume,
written atomically after every epoch), ``best.pt`` (the selected model), ``test_predictions.npz`` and
``fold_result.json``. Checkpoints are plain dicts of tensors and primitive values (``torch.load(...,
weights_only=True)``; no pickle of objects).

Resuming (``resume=True``) restores model, optimizer, scheduler, the RNG states and the history from
``last.pt``; the shuffle order is a function of (seed, epoch) only. On CPU a resumed run ends bitwise equal
to an uninterrupted one (tests/test_training.py). On CUDA, cuDNN keeps the LSTM-dropout RNG state internally,
where it cannot be saved, so a resumed GPU run is a valid continuation but not bitwise the same.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import PRESET_FEATURES, DictRoundTrip, ModelConfig, get_preset
from .data import N_FOLDS, Batch, PercePianoData, feature_size, iterate_batches, num_batches
from .hierarchy import BatchShapes
from .metrics import evaluate_predictions, r2

CHECKPOINT_FORMAT = "percepiano.train/1"
LAST, BEST, LOG = "last.pt", "best.pt", "log.jsonl"
PREDICTIONS, FOLD_RESULT, RESULTS = "test_predictions.npz", "fold_result.json", "results.json"


@dataclass(frozen=True)
class TrainConfig(DictRoundTrip):
    """Training protocol; defaults are the published runs (reference_spec §1.2, §5)."""

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
def predict(
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


# --------------------------------------------------------------------------------------------- state


def set_seed(seed: int) -> None:
    """The original seeds ``random``, ``numpy`` and ``torch`` (all devices) with ``th_seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_determinism(enabled: bool) -> None:
    """Deterministic mode: ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic and no benchmark,
    and the cuBLAS workspace setting CUDA needs for deterministic matmuls (set before CUDA initialises)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(enabled))
    torch.backends.cudnn.deterministic = bool(enabled)
    if enabled:
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """All RNG states a training epoch consumes (torch CPU + CUDA for dropout), plus numpy and ``random``."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by this module (no pickle: ``weights_only=True``), on CPU."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a percepiano training checkpoint (format {CHECKPOINT_FORMAT!r})")
    return ck


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def build_model(model_cfg: ModelConfig, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """Seed everything, then build the model (the original seeds before constructing it)."""
    from .model import PercePianoModel

    set_seed(seed)
    return PercePianoModel(model_cfg).to(device)


def validate_for_model(model: nn.Module, data: PercePianoData, indices, feature_set: str) -> None:
    """Run the model's input checks once over every segment it will see, then switch them off in the hot
    path (they cost host synchronisations on a GPU). Raises ``ValueError`` naming the segment."""
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
    model.validate_inputs = False


def model_from_checkpoint(ck: dict, device: torch.device | str = "cpu") -> nn.Module:
    from .model import PercePianoModel

    model = PercePianoModel(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model_state"])
    return model.to(device)


# --------------------------------------------------------------------------------------------- one fold


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fold_indices(data: PercePianoData, split: str, fold: int, tcfg: TrainConfig) -> dict[str, np.ndarray]:
    out = {p: data.split_indices(split, fold, p) for p in ("train", "valid", "test")}
    if tcfg.limit_segments is not None:
        out = {p: v[: tcfg.limit_segments] for p, v in out.items()}
    return out


class _Progress:
    """Per-batch progress on stderr: a tqdm bar when tqdm is installed, otherwise a plain line every ~10% of
    the epoch; nothing when disabled (epoch lines are printed by the caller either way)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar, self.total, self.desc, self.enabled, self.done = None, total, desc, enabled, 0
        self.every = max(1, total // 10)
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and (self.done % self.every == 0 or self.done == self.total):
            print(f"{self.desc}: batch {self.done}/{self.total}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


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
    validate_for_model(model, data, np.concatenate([idx[p] for p in ("train", "valid", "test")]), feature_set)
    n_train_batches = num_batches(len(idx["train"]), tcfg.batch_size)
    if tcfg.max_train_batches is not None:
        n_train_batches = min(n_train_batches, tcfg.max_train_batches)

    for epoch in range(start_epoch, tcfg.epochs):
        t0 = time.perf_counter()
        model.train()
        bar = _Progress(n_train_batches, f"fold {fold} epoch {epoch + 1}/{tcfg.epochs}", progress)
        loss_sum = torch.zeros((), device=device)
        for batch in iterate_batches(
            data, idx["train"], tcfg.batch_size, feature_set=feature_set, shuffle=True, seed=tcfg.seed,
            epoch=epoch, max_batches=tcfg.max_train_batches,
        ):
            batch, shapes = to_device(model, batch, device)
            loss_sum += train_step(model, batch, optimizer, scheduler, tcfg, shapes)
            bar.update()
        bar.close()
        train_loss = float(loss_sum) / n_train_batches  # one sync per epoch
        valid = predict(model, data, idx["valid"], feature_set=feature_set, batch_size=tcfg.eval_batch_size, device=device)
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
            test = predict(model, data, idx["test"], feature_set=feature_set, batch_size=tcfg.eval_batch_size, device=device)
            record["test_r2"], record["test_loss"] = r2(test.labels, test.predictions), test.loss
        if not np.isfinite(valid.loss):
            raise FloatingPointError(f"fold {fold} epoch {epoch + 1}: valid loss is {valid.loss}")
        is_best = valid.loss < best_loss  # strict: the first epoch reaching the minimum is kept
        record["is_best"] = bool(is_best)
        if is_best:
            best_epoch, best_loss = epoch + 1, valid.loss
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT, "kind": "best", "model_state": _cpu_state(model),
                    "model_config": model_cfg.to_dict(), "train_config": tcfg.to_dict(), "run": run,
                    "epoch": best_epoch, "valid_loss": best_loss,
                },
                best_path,
            )
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT, "kind": "last", "model_state": _cpu_state(model),
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
        **_test_fields(result["metrics"]),
        "epochs_trained": len(history),
        "train_seconds": float(sum(r["seconds"] for r in history)),
        "n_train": int(len(idx["train"])), "n_valid": int(len(idx["valid"])), "n_test": int(len(idx["test"])),
    }
    atomic_write_text(json.dumps(fold_result, indent=1) + "\n", out / FOLD_RESULT)
    return fold_result


def _test_fields(m: dict) -> dict:
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
    """Metrics (original §6.1 set) and predictions of ``model`` on ``indices``."""
    p = predict(model, data, indices, feature_set=feature_set, batch_size=batch_size, device=device)
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


# --------------------------------------------------------------------------------------------- 4 folds


def regression_targets() -> dict:
    """``percepiano/resources/regression_targets.json``: the R2 targets of the regression gates (with their source)
    and the measured baseline values."""
    from importlib import resources

    return json.loads((resources.files("percepiano") / "resources" / "regression_targets.json").read_text())


def environment_info(device: torch.device | str | None = None) -> dict:
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
    import hashlib

    digest = None
    if Path(data.path).is_file():
        h = hashlib.sha256()
        with open(data.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
    # the file name only: results must not carry machine paths
    return {"file": Path(data.path).name, "sha256": digest, "segments": len(data), "notes": data.num_notes}


def summarize_folds(folds: list[dict]) -> dict:
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
    from . import baselines

    t0 = time.perf_counter()
    tcfg = tcfg or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda s: None)
    folds = [int(f) for f in folds]
    is_baseline = preset in baselines.BASELINES
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
        for name in baselines.BASELINES:
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
    atomic_write_text(json.dumps(results, indent=1) + "\n", out / RESULTS)
    return results


def _fold_worker(job: dict) -> dict:
    """One fold in a worker process (top level so that ``spawn`` can import it)."""
    from .data import load_dataset

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


def _baseline_config(name: str) -> dict:
    from . import baselines

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
    from . import baselines

    fit = baselines.fit_predict(name, data, split, fold)
    va, te = data.split_indices(split, fold, "valid"), data.split_indices(split, fold, "test")
    m = evaluate_predictions(data.labels[te], fit["test_pred"], data.labels_std[te])
    res = {
        "fold": int(fold),
        "best_epoch": None,
        "valid_loss": original_valid_loss(data.labels[va], fit["valid_pred"], tcfg.eval_batch_size),
        "valid_r2": r2(data.labels[va], fit["valid_pred"]),
        **_test_fields(m),
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
