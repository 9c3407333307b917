"""The original training and evaluation protocol of one fold (``train_m2pf.py``: ``train``).

Adam(lr 2.5e-5, weight_decay 1e-5, one group over all parameters) with StepLR(3000, 0.98) stepped after every
batch; loss = MSE(sigmoid(logits), labels); gradients clipped to global norm 2.0; batches of 8 shuffled per
epoch; after every epoch the valid loss (Σ batch-mean MSE / n_valid, the original's formula) and test metrics;
the checkpoint with the strictly lowest valid loss is kept; finally that checkpoint is evaluated on the fold's
test split at batch size 1 (the original eval script). The 4 folds of a split and the reported mean over
them are :func:`percepiano.cv.run_cv`.

Files in a fold directory: ``log.jsonl`` (one JSON record per epoch), ``last.pt`` (everything needed to resume,
written atomically after every epoch; removed when the fold finishes with ``keep="best"``), ``best.pt`` (the
selected model, written after ``last.pt`` in an epoch that improves the valid loss, so that a run stopped
between the two finds the model in ``last.pt``: resume rebuilds ``best.pt`` from it), ``test_predictions.npz`` and ``fold_result.json``. The checkpoints' format, the atomic writes
and the RNG state are :mod:`percepiano.checkpoints`. ``last.pt``, ``best.pt`` and ``fold_result.json`` carry
the fold's identity (:mod:`percepiano.provenance`: preset, configs, seed, split, fold, code, dataset sha256).

A directory that holds a run is never overwritten. Resuming (``resume=True``) needs a ``last.pt`` whose
identity is the requested one (more epochs allowed; another code version only with ``allow_code_change``,
recorded under ``code_changes``); it restores model, optimizer, scheduler, the RNG states and the history;
the shuffle order is a function of (seed, epoch) only (rng "own") or of the saved global RNG state (rng
"original"). On CPU a resumed run ends bitwise equal to an uninterrupted one (tests/test_training.py). On CUDA,
cuDNN keeps the LSTM-dropout RNG state internally, where it cannot be saved, so a resumed GPU run is a valid
continuation but not bitwise the same.

Random draws (``TrainConfig.rng``): ``"own"`` shuffles with a generator seeded from (seed, epoch) and lets every
dropout draw from the global generator where our forward needs it; ``"original"`` replays the original's draws
(:mod:`percepiano.replay`: its initial weights, batch order and every dropout mask), so that on a CPU, with
the same seed, the run is the original's step for step (with ``"original"`` itself, rather than ``"auto"``,
also in its LSTM arithmetic: bit for bit where the whole model is packed, as the bilstm). ``step_log=True``
writes ``steps.jsonl``: one record per optimizer step (step, epoch, loss, grad_norm before clipping, the lr the
step used, the batch's segment ids).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
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
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)
from .config import DictRoundTrip, ModelConfig
from .constants import PARTS, SEED_RANGE
from .data import Batch, PercePianoData, feature_size, iterate_batches, num_batches
from .hierarchy import BatchShapes
from .metrics import evaluate_predictions, r2
from .provenance import check_identity, fold_identity, run_identity
from . import replay
from .results import RESULTS, SEEDS, load_log

LAST, BEST, LOG = "last.pt", "best.pt", "log.jsonl"
PREDICTIONS, FOLD_RESULT, STEPS = "test_predictions.npz", "fold_result.json", "steps.jsonl"
FOLD_FILES = (LAST, BEST, LOG, PREDICTIONS, FOLD_RESULT, STEPS)
# Random draws of a run (TrainConfig.rng, module docstring): our own plan, or the original's replayed; "auto"
# replays the draws on a CPU, where that costs under 5 % of a step (README.md, "Seed-exact replay"), with our
# faster LSTM engine, and uses our own plan elsewhere (the original's GPU dropout is cuDNN's: nothing to replay
# there); "original", asked for, also takes the original's packed LSTM arithmetic (build_training: exact_lstm).
RNG_AUTO, RNG_OWN, RNG_ORIGINAL = "auto", "own", "original"
RNG_CHOICES = (RNG_AUTO, RNG_OWN, RNG_ORIGINAL)
# Training precision (TrainConfig.dtype): the original trains in float32; float64 is for exact comparisons.
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# What a finished fold keeps: "all" (the original keeps checkpoint_last.pt too), or "best": last.pt (the model
# plus Adam's two moment buffers, 3x the size of best.pt) is deleted once the fold's result is written.
KEEP_ALL, KEEP_BEST = "all", "best"
KEEP_CHOICES = (KEEP_ALL, KEEP_BEST)
_RUN_DIR = re.compile(r"(fold\d+|seed-?\d+)")  # the fold and seed folders of a cv run


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
    rng: str = RNG_AUTO  # "own", "original" (replay the original's init, batch order, dropout) or "auto" (CPU: original)
    dtype: str = "float32"  # the original trains in float32; "float64" for exact comparisons with it
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
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or int(self.seed) not in SEED_RANGE:
            raise ValueError(f"TrainConfig.seed: expected an integer in 0..{SEED_RANGE.stop - 1} (numpy's seed range), "
                             f"got {self.seed!r}")
        if self.rng not in RNG_CHOICES:
            raise ValueError(f"TrainConfig.rng: expected one of {list(RNG_CHOICES)}, got {self.rng!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig.dtype: expected one of {list(DTYPES)}, got {self.dtype!r}")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def is_original(self) -> bool:
        """True when the protocol is the published one (determinism, per-epoch test logging and whose random
        draws aside: both rng plans follow the protocol)."""
        ignore = {"deterministic", "eval_test_every_epoch", "rng"}
        mine, orig = self.to_dict(), TrainConfig().to_dict()
        return all(mine[k] == orig[k] for k in mine if k not in ignore)


# --------------------------------------------------------------------------------------------- pieces


def build_optimizer(model: nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over all ``model.parameters()`` in one group (the original; parameters without grad are skipped)."""
    return torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, tcfg: TrainConfig) -> torch.optim.lr_scheduler.StepLR:
    """StepLR(step_size, gamma), to be stepped after every optimizer step: lr_k = lr * gamma ** (k // step_size)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=tcfg.lr_step_size, gamma=tcfg.lr_gamma)


def effective_rng(tcfg: TrainConfig, model_cfg: ModelConfig, device: torch.device | str) -> str:
    """The random-draw plan a run uses: ``tcfg.rng``, with "auto" resolved to "original" on a CPU for a model
    the replay covers (the original init), else to "own"."""
    if tcfg.rng != RNG_AUTO:
        return tcfg.rng
    replayable = torch.device(device).type == "cpu" and model_cfg.init == "pytorch_default"
    return RNG_ORIGINAL if replayable else RNG_OWN


def build_training(model_cfg: ModelConfig, tcfg: TrainConfig, device: torch.device | str = "cpu",
                   exact_lstm: bool | None = None):
    """(model, optimizer, scheduler) of a run, as the original's ``main`` and ``train`` make them: seeded and
    initialised (rng "own": our model's construction draws; "original": the original's, replayed), in
    ``tcfg.dtype``, then Adam and StepLR. ``exact_lstm`` (default: rng "original" asked for explicitly, not
    through "auto"): the model runs its note, beat and measure BiLSTMs packed, as the original does
    (``PercePianoModel.exact_lstm``; bit-exact on a CPU with one thread for the bilstm, 1.7-2.6x slower per
    step)."""
    if effective_rng(tcfg, model_cfg, device) == RNG_ORIGINAL:
        model = replay.build_model(model_cfg, tcfg.seed, device)
    else:
        model = build_model(model_cfg, tcfg.seed, device)
    model.exact_lstm = tcfg.rng == RNG_ORIGINAL if exact_lstm is None else bool(exact_lstm)
    model = model.to(DTYPES[tcfg.dtype])
    optimizer = build_optimizer(model, tcfg)
    return model, optimizer, build_scheduler(optimizer, tcfg)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``nn.MSELoss()(sigmoid(logits), labels)``: mean over batch x labels."""
    return nn.functional.mse_loss(torch.sigmoid(logits), labels)


def _forward(model: nn.Module, batch, shapes=None, dropout_masks=None) -> torch.Tensor:
    if dropout_masks is None:
        return model(batch.x, batch.lengths, batch.note_locations, shapes=shapes)
    return model(batch.x, batch.lengths, batch.note_locations, shapes=shapes, dropout_masks=dropout_masks)


def to_device(model: nn.Module, batch: Batch, device: torch.device) -> tuple[Batch, BatchShapes]:
    """The batch on ``device`` and its :class:`~percepiano.hierarchy.BatchShapes`, worked out on the host
    first, so that the forward pass reads nothing back from the device. CUDA copies go through pinned
    memory and do not block the host. Input and labels take the model's floating dtype (float64 training)."""
    shapes = model.batch_shapes(batch.lengths, batch.note_locations)
    dtype = next(model.parameters()).dtype
    if batch.x.dtype != dtype:
        batch = dataclasses.replace(batch, x=batch.x.to(dtype), labels=batch.labels.to(dtype))
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True), shapes
    return batch.to(device), shapes


def train_step(model: nn.Module, batch, optimizer, scheduler, tcfg: TrainConfig, shapes=None,
               dropout_masks: "replay.DropoutMasks | None" = None, record: dict | None = None) -> torch.Tensor:
    """One original training iteration; returns the detached loss tensor (on the model's device). With
    ``shapes`` (see :func:`to_device`) and a model that no longer validates its inputs, nothing in it waits
    for the device. ``dropout_masks``: the step's dropout, drawn by :func:`percepiano.replay.draw_step_masks`
    (rng "original"). ``record``: receives ``grad_norm`` (the tensor ``clip_grad_norm_`` returns: the norm before
    clipping) and ``lr`` (the learning rate this step used).

    train mode -> forward -> loss -> zero_grad -> backward -> clip_grad_norm_(all parameters) -> step ->
    scheduler.step().
    """
    model.train()
    loss = loss_fn(_forward(model, batch, shapes, dropout_masks), batch.labels)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
    if record is not None:
        record.update(grad_norm=grad_norm.detach(), lr=float(optimizer.param_groups[0]["lr"]))
    optimizer.step()
    scheduler.step()
    return loss.detach()


@dataclass
class SplitPredictions:
    segment_ids: list[str]
    logits: np.ndarray  # (n, 19) float32 (float64 for a float64 model)
    predictions: np.ndarray  # (n, 19) = sigmoid(logits), the same dtype
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
    lg = torch.cat(logits)
    lg = lg if lg.dtype == torch.float64 else lg.float()  # float64 training keeps its precision
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


def train_epoch(
    model: nn.Module, data: PercePianoData, train: np.ndarray, optimizer, scheduler, tcfg: TrainConfig, epoch: int,
    *, feature_set: str, device: torch.device, step_log: bool = False, on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """The training steps of epoch ``epoch`` (0-based) over the dataset rows ``train``: (Σ of the step losses
    as a device tensor, the step records if ``step_log``: step, epoch, loss, grad_norm and lr, as tensors and
    floats, and the batch's segment ids). Under rng "original" each step's dropout is drawn on the host, before its forward, in the
    original's order (:func:`percepiano.replay.draw_step_masks`); "auto" is resolved by :func:`effective_rng`."""
    tcfg = tcfg.replace(rng=effective_rng(tcfg, model.config, device))
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=next(model.parameters()).dtype)  # float64 runs sum in float64
    steps: list[dict] = []
    for batch in _train_batches(data, train, tcfg, feature_set, epoch):
        masks = None
        if tcfg.rng == RNG_ORIGINAL:
            masks = replay.draw_step_masks(model.config, batch.lengths, batch.note_locations, DTYPES[tcfg.dtype])
            masks = masks if masks is None or device.type == "cpu" else masks.to(device)
        segment_ids = batch.segment_ids
        batch, shapes = to_device(model, batch, device)
        record = {} if step_log else None
        loss = train_step(model, batch, optimizer, scheduler, tcfg, shapes, masks, record)
        loss_sum += loss
        if record is not None:
            steps.append({"step": int(scheduler.last_epoch), "epoch": epoch + 1, "loss": loss, **record,
                          "segment_ids": list(segment_ids)})
        if on_step is not None:
            on_step()
    return loss_sum, steps


def _train_batches(data: PercePianoData, train: np.ndarray, tcfg: TrainConfig, feature_set: str, epoch: int):
    """One epoch's training batches: shuffled by our (seed, epoch) generator (rng "own"), or in the order the
    original's train ``DataLoader`` draws from the global generator (rng "original", :func:`replay.train_order`);
    ``tcfg.rng`` is resolved (:func:`train_epoch`)."""
    if tcfg.rng == RNG_ORIGINAL:
        order = train[replay.train_order(len(train)).numpy()]
        return iterate_batches(data, order, tcfg.batch_size, feature_set=feature_set, max_batches=tcfg.max_train_batches)
    return iterate_batches(data, train, tcfg.batch_size, feature_set=feature_set, shuffle=True, seed=tcfg.seed,
                           epoch=epoch, max_batches=tcfg.max_train_batches)


def existing_run_files(out: str | os.PathLike) -> list[str]:
    """The names in ``out`` that belong to a run (fold files, ``results.json``, ``seeds.json``, ``fold{k}/``,
    ``seed{s}/``), sorted; [] when ``out`` does not exist. ``ValueError`` when ``out`` is not a directory."""
    out = Path(out)
    if not out.exists():
        return []
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not a run directory: choose another --out")
    names = set(FOLD_FILES) | {RESULTS, SEEDS}
    return sorted(
        p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
        if p.name in names or (p.is_dir() and _RUN_DIR.fullmatch(p.name))
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # a clear error here, not torch's parse error ("gpu0") or a failure at the first .to() ("cuda" without CUDA)
    forms = "auto, cpu, cuda, cuda:N (N a GPU index) or mps"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(device)!r}: expected {forms}") from None
    usable = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if dev.type not in usable:
        raise ValueError(f"device {str(device)!r}: expected {forms}")
    if not usable[dev.type]:
        raise ValueError(f"device {str(device)!r}: no {dev.type} device is available to this torch "
                         f"({torch.__version__}); use cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: there are {torch.cuda.device_count()} CUDA devices "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def steps_of_finished_epochs(path: str | os.PathLike, epochs_done: int) -> list[dict]:
    """The records of a ``steps.jsonl`` that belong to the first ``epochs_done`` epochs (what a resume from a
    ``last.pt`` after that epoch keeps). An epoch's steps are appended before its ``last.pt`` is written, so a
    last line cut short (a run killed while appending) belongs to an epoch that is trained again: dropped. Any
    other damaged line, or a record without an integer ``epoch``, is a ``ValueError`` naming file and line."""
    rows = load_log(path, drop_cut_last_line=True)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("epoch"), int):
            raise ValueError(f"{path}: record {number}: expected an integer 'epoch' (one step's record)")
    return [r for r in rows if r["epoch"] <= epochs_done]


def fold_indices(data: PercePianoData, split: str, fold: int, tcfg: TrainConfig) -> dict[str, np.ndarray]:
    """The dataset rows of each part of a fold: ascending, or, when replaying the original (rng "original"), in
    the order it lists their files (:func:`percepiano.replay.original_file_order`); then ``limit_segments``.
    ``tcfg.rng`` must be resolved (:func:`effective_rng`)."""
    if tcfg.rng == RNG_AUTO:
        raise ValueError("fold_indices: TrainConfig.rng 'auto' depends on the device; resolve it with effective_rng")
    out = {p: data.split_indices(split, fold, p) for p in PARTS}
    if tcfg.rng == RNG_ORIGINAL:
        out = {p: replay.original_file_order(data.segment_ids, v) for p, v in out.items()}
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
    allow_code_change: bool = False,
    keep: str = KEEP_ALL,
    step_log: bool = False,
) -> dict:
    """Train one fold with the original protocol and evaluate its best checkpoint on the test split.

    Writes the fold files (module docstring) into ``out_dir`` and returns the fold result dict.
    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint is on disk (tests use it to
    simulate an interruption). ``run_info["preset"]`` names the preset in the fold's identity. Refuses a
    directory that holds any run unless ``resume``; with ``resume``, continues the ``last.pt`` there if its
    identity is this run's (module docstring), and refuses otherwise. ``keep="best"`` deletes ``last.pt``
    once the fold is finished. ``step_log=True`` also writes ``steps.jsonl`` (module docstring).
    """
    out = Path(out_dir)
    log = log or (lambda s: None)
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep: expected one of {list(KEEP_CHOICES)}, got {keep!r}")
    device = resolve_device(device)
    if feature_size(feature_set) != model_cfg.input_size:
        raise ValueError(
            f"feature set {feature_set!r} has {feature_size(feature_set)} dims, model input_size is {model_cfg.input_size}"
        )
    rng = effective_rng(tcfg, model_cfg, device)
    exact_lstm = tcfg.rng == RNG_ORIGINAL  # asked for explicitly: the original's packed LSTM arithmetic too
    run = {"split": split, "fold": int(fold), "feature_set": feature_set, **(run_info or {}), "rng": rng,
           "exact_lstm": exact_lstm}
    identity = fold_identity(
        run_identity(run.get("preset"), split, feature_set, data, model_cfg.to_dict(), tcfg.to_dict()), fold
    )
    tcfg_run = tcfg.replace(rng=rng)  # what the steps below use; the identity keeps the requested value
    last_path, best_path, log_path = out / LAST, out / BEST, out / LOG
    found = existing_run_files(out)
    if resume and not last_path.is_file():
        gone = " (a finished fold whose last.pt was removed by --keep best cannot be trained further)" if (
            out / FOLD_RESULT).is_file() else ""
        raise ValueError(f"nothing to resume in {out}: no {LAST}{gone}")
    if found and not resume:
        raise ValueError(
            f"{out} already holds a run ({', '.join(found)}); pass --resume to continue it (only the same run "
            f"is continued) or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temporaries(out, FOLD_FILES):
        log(f"removed {path}: the temporary file of a write whose process was killed")

    configure_determinism(tcfg.deterministic)
    model, optimizer, scheduler = build_training(model_cfg, tcfg_run, device, exact_lstm=exact_lstm)
    history: list[dict] = []
    steps_path = out / STEPS
    start_epoch, best_epoch, best_loss = 0, None, float("inf")
    code_changes: list[dict] = []  # resumes under another code version (allow_code_change), in order

    def save_best(model_state: dict, epoch: int, valid_loss: float) -> None:
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT, "kind": "best", "model_state": model_state,
                "model_config": model_cfg.to_dict(), "train_config": tcfg.to_dict(), "run": run,
                "identity": identity, "code_changes": code_changes, "epoch": int(epoch), "valid_loss": float(valid_loss),
            },
            best_path,
        )

    if resume:
        ck = load_checkpoint(last_path)
        if ck.get("kind") != "last":
            raise ValueError(f"{last_path}: not a resumable checkpoint (kind {ck.get('kind')!r})")
        change = check_identity(ck.get("identity"), identity, last_path, action="resume it", epochs_may_grow=True,
                                allow_code_change=allow_code_change)
        saved_rng = (ck.get("run") or {}).get("rng", RNG_OWN)  # runs from before the replay drew our own
        if saved_rng != rng:
            raise ValueError(f"{last_path}: cannot resume it: it was trained with rng {saved_rng!r} (random draws: "
                             f"{'ours' if saved_rng == RNG_OWN else 'the original replayed'}), this run would use "
                             f"{rng!r} (rng {tcfg.rng!r} on {device.type}); pass --rng {saved_rng}")
        code_changes = list(ck.get("code_changes") or [])
        if change is not None:
            code_changes.append({"after_epoch": int(ck["epoch"]), **change})
            log(f"resuming {out} under another code record (recorded in code_changes): {change}")
        model.load_state_dict(ck["model_state"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"])
        start_epoch = int(ck["epoch"])
        best_epoch, best_loss = ck["best"]["epoch"], float(ck["best"]["valid_loss"])
        history = list(ck["history"])
        _reconcile_best_checkpoint(best_path, ck, save_best, log)
        atomic_write_text("".join(json.dumps(r) + "\n" for r in history), log_path)
        if steps_path.is_file():  # drop the steps of an epoch that did not finish
            kept = steps_of_finished_epochs(steps_path, start_epoch)
            logged = kept[-1].get("step") if kept else 0
            if logged != int(scheduler.last_epoch):  # e.g. a run resumed without --step-log before
                log(f"{steps_path}: holds the steps up to {logged}, {last_path.name} is after step "
                    f"{int(scheduler.last_epoch)}: the steps in between are missing from the step log")
            atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), steps_path)
        log(f"resumed {out} after epoch {start_epoch} (best epoch {best_epoch}, valid loss {best_loss:.6g})")

    idx = fold_indices(data, split, fold, tcfg_run)
    check_data_for_model(model, data, np.concatenate([idx[p] for p in PARTS]), feature_set)
    model.validate_inputs = False  # checked once above: no host syncs for input checks in the steps
    n_train_batches = num_batches(len(idx["train"]), tcfg.batch_size)
    if tcfg.max_train_batches is not None:
        n_train_batches = min(n_train_batches, tcfg.max_train_batches)

    for epoch in range(start_epoch, tcfg.epochs):
        t0 = time.perf_counter()
        with tqdm(total=n_train_batches, desc=f"fold {fold} epoch {epoch + 1}/{tcfg.epochs}", leave=False,
                  file=sys.stderr, dynamic_ncols=True, disable=not progress) as bar:  # the epoch's line is log()'s
            loss_sum, steps = train_epoch(model, data, idx["train"], optimizer, scheduler, tcfg_run, epoch,
                                          feature_set=feature_set, device=device, step_log=step_log,
                                          on_step=lambda: bar.update())
        train_loss = float(loss_sum) / n_train_batches  # one sync per epoch
        if rng == RNG_ORIGINAL:
            replay.loader_seed_draw()  # the valid loader's iterator; the test one's is drawn below, logged or not
        valid = predict_split(model, data, idx["valid"], feature_set=feature_set, batch_size=tcfg.eval_batch_size, device=device)
        if rng == RNG_ORIGINAL:
            replay.loader_seed_draw()
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
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        if step_log:  # before last.pt: a run stopped in between trains this epoch again (resume drops its steps)
            with open(steps_path, "a") as f:
                f.writelines(json.dumps({**r, "loss": float(r["loss"]), "grad_norm": float(r["grad_norm"])}) + "\n"
                             for r in steps)
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT, "kind": "last", "model_state": cpu_state(model),
                "model_config": model_cfg.to_dict(), "train_config": tcfg.to_dict(), "run": run,
                "identity": identity, "code_changes": code_changes,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1, "best": {"epoch": best_epoch, "valid_loss": best_loss},
                "rng": rng_state(), "history": history,
            },
            last_path,
        )
        if is_best:  # after last.pt: a run stopped in between finds the best model in last.pt (resume rebuilds it)
            save_best(cpu_state(model), best_epoch, best_loss)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        # in-training test metrics (the original logs them at the loaders' batch size); the reported number is
        # the final evaluation of the best checkpoint (fold_summary_line)
        test_txt = (f" test_r2@batch{tcfg.eval_batch_size} {record['test_r2']:.4f} (in-training eval, logged only)"
                    if record["test_r2"] is not None else "")
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
    if best.get("epoch") != best_epoch:  # never evaluate another epoch's model under this one's name
        raise ValueError(
            f"{best_path}: holds the model of epoch {best.get('epoch')}, but the run's best epoch (lowest valid loss, "
            f"{log_path.name}) is {best_epoch}: an older percepiano wrote {BEST} before {LAST} and was stopped "
            f"between the two, and the epoch trained again did not reach that valid loss; the fold's best model "
            f"is lost: train the fold again (remove {out})")
    if best.get("identity") != identity or best.get("code_changes") != code_changes:
        # selected by this run, extended to more epochs or continued under another code: say so in best.pt too
        best["identity"], best["code_changes"] = identity, code_changes
        atomic_save(best, best_path)
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
        "rng": rng,  # the random draws used (TrainConfig.rng resolved for the device)
        "identity": identity,
        "code_changes": code_changes,
    }
    atomic_write_text(json.dumps(fold_result, indent=1) + "\n", out / FOLD_RESULT)
    if keep == KEEP_BEST:
        last_path.unlink()  # the finished fold is reused from fold_result.json and best.pt
    return fold_result


def _reconcile_best_checkpoint(best_path: Path, ck: dict, save_best: Callable[[dict, int, float], None],
                               log: Callable[[str], None]) -> None:
    """Make ``best.pt`` hold the epoch that the resumed ``last.pt`` (``ck``) names as best, before training on.

    A new best epoch is written to ``last.pt`` first, then to ``best.pt``: a run stopped in between leaves a
    ``last.pt`` whose own model is the best one, and ``best.pt`` is rebuilt from it. An older ``best.pt`` that
    ``last.pt`` does not explain is refused (its best model is lost). A ``best.pt`` newer than ``last.pt``
    (written first by percepiano before this order) is the epoch about to be trained again: it is left for that
    epoch to overwrite, and ``train_fold`` checks at the end that ``best.pt`` holds the best epoch."""
    want, last_epoch = int(ck["best"]["epoch"]), int(ck["epoch"])
    have = load_checkpoint(best_path).get("epoch") if best_path.is_file() else None
    if have == want:
        return
    if want == last_epoch:
        save_best(ck["model_state"], want, float(ck["best"]["valid_loss"]))
        log(f"{best_path}: rebuilt from {LAST} (epoch {want}, its best; the run had stopped between writing the two)")
        return
    if have is not None and have > last_epoch:
        log(f"{best_path}: holds epoch {have}, after {LAST}'s epoch {last_epoch}: that epoch is trained again")
        return
    raise ValueError(
        f"{best_path}: holds {'no model' if have is None else f'the model of epoch {have}'}, but {LAST} (epoch "
        f"{last_epoch}) names epoch {want} as the best: cannot resume, the best model is lost; train the fold "
        f"again (remove {best_path.parent})")


def fold_summary_line(res: dict) -> str:
    """The console line of a finished fold, saying which test R2 is the reported one and how it is computed."""
    if res.get("best_epoch") is None:
        return f"fold {res['fold']}: test R2 {res['test_r2']:.4f} (baseline fitted on the fold's train split; the reported number)"
    batch = ((res.get("identity") or {}).get("train_config") or {}).get("final_eval_batch_size", "?")
    return (
        f"fold {res['fold']}: best epoch {res['best_epoch']} (lowest valid loss); test R2 of that checkpoint at "
        f"batch {batch}, as the original eval script (the reported number): {res['test_r2']:.4f}"
    )


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
