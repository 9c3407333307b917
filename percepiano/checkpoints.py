"""Checkpoints and the state around them: atomic file writes, RNG state, seeding, checkpoint -> model.

A checkpoint is a plain dict of tensors and primitive values, read with ``torch.load(..., weights_only=True)``
(no pickle of objects). Its ``format`` is :data:`CHECKPOINT_FORMAT`; ``kind`` is ``"best"`` (the selected
model: ``model_state``, ``model_config``, ``train_config``, ``run``, ``identity`` and ``code_changes``
(:mod:`percepiano.provenance`), ``epoch``, ``valid_loss``) or ``"last"``
(everything needed to resume: also ``optimizer``, ``scheduler``, ``best``, ``rng`` and ``history``);
:func:`percepiano.training.train_fold` writes both. :func:`load_checkpoint` is the one reader: it checks the
file (empty, truncated, random bytes, pickled objects), the keys its kind needs, its model config, that the
weights fit that config and that they are finite, and raises :class:`CheckpointError` (a ``ValueError``) naming
the file and the problem. :func:`load_trained_model` is the one way to get a model from a file (``percepiano
evaluate``, ``percepiano predict``, notebooks); :func:`protocol_notes` says how its training departed from the
original protocol.
"""
from __future__ import annotations

import math
import os
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .config import ORIGINAL_BEHAVIOUR, PRESETS, ModelConfig, describe_deviations
from .constants import FEATURE_SETS, NUM_LABELS, PROTOCOL_EPOCHS
from .data import ZIP_MAGIC  # torch.save writes a zip archive too; anything else is not one of ours
from .model import PercePianoModel

CHECKPOINT_FORMAT = "percepiano.train/1"
# What each kind of checkpoint must hold (train_fold writes them), with the type each value must have.
REQUIRED_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "best": {"model_state": dict, "model_config": dict},
    "last": {"model_state": dict, "model_config": dict, "train_config": dict, "run": dict, "optimizer": dict,
             "scheduler": dict, "epoch": int, "best": dict, "rng": dict, "history": list},
}
# Keys a best checkpoint has when train_fold wrote it; older or hand-made ones may lack them.
OPTIONAL_KEYS: dict[str, type | tuple[type, ...]] = {"train_config": dict, "run": dict, "epoch": int,
                                                     "valid_loss": (int, float)}
# Model input sizes the data offers (its feature sets) -> the feature set's name.
INPUT_SIZES = {len(cols): name for name, cols in FEATURE_SETS.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


class AtomicWriteError(OSError):
    """A file could not be written (a full disk, say); nothing partial was left at its path."""


# --------------------------------------------------------------------------------------------- files


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


# ours (_tmp_path) and training.save_predictions' (``.test_predictions.tmp{pid}.npz``: numpy adds the suffix)
_TMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>\d+)(?P<suffix>\.npz)?")


def remove_stale_temporaries(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files that the atomic writes of ``names`` in ``directory`` left behind when their
    process was killed mid-write (SIGKILL skips the clean-up: a ``han`` ``last.pt``'s is 155 MB); only those
    whose process is gone from this machine. Returns the removed paths."""
    names, removed = set(names), []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        m = _TMP_NAME.fullmatch(path.name)
        if m is None or m["name"] + (m["suffix"] or "") not in names or not path.is_file():
            continue
        pid = int(m["pid"])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # alive: still writing it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        path.unlink(missing_ok=True)
        removed.append(path)
    return sorted(removed)


def _write_error(path: Path, exc: BaseException) -> AtomicWriteError:
    """The error of a failed write, naming ``path`` and the system's reason. torch.save reports a failed
    write of its archive as a RuntimeError whose context is the OSError (ENOSPC for a full disk)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    reason = (cause.strerror or str(cause)) if cause is not None else f"{type(exc).__name__}: {exc}"
    err = AtomicWriteError(f"{path}: could not be written ({reason}); nothing was written there "
                           "(a previous file at that path is unchanged)")
    err.errno = cause.errno if cause is not None else None
    return err


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``: a reader sees the
    old file or the new one, never part of one. A failed write leaves no partial file and raises
    :class:`AtomicWriteError` naming ``path``."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - every failure: the same named error, no partial file
        raise _write_error(path, exc) from exc
    finally:
        _remove(tmp)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` through a temporary file and ``os.replace`` (as :func:`atomic_save`)."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001
        raise _write_error(path, exc) from exc
    finally:
        _remove(tmp)


# --------------------------------------------------------------------------------------------- reading


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by :func:`percepiano.training.train_fold`, on CPU (no pickle: ``weights_only=True``),
    checked by :func:`check_checkpoint`. Raises ``FileNotFoundError`` for a missing file and
    :class:`CheckpointError` naming the file for one that is empty, truncated, not a torch archive, holds
    pickled objects, or is not a usable percepiano checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (a checkpoint is a best.pt or last.pt file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint (an interrupted copy?)")
    damaged = _damaged_member(path)
    if damaged is not None:  # torch reads a flipped byte in a tensor's data without a word
        raise CheckpointError(f"{path}: a damaged torch archive (CRC mismatch in {damaged}): the file was altered "
                              "after it was written (a bad copy or disk)")
    try:
        with warnings.catch_warnings():  # a plain pickle makes torch warn about its protocol before it refuses
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file (a truncated one can be an OSError): told apart below
        raise CheckpointError(f"{path}: {_unreadable(path, exc)}") from None
    check_checkpoint(ck, path)
    return ck


def _damaged_member(path: Path) -> str | None:
    """The first member of a zip archive whose CRC does not match its data; None for an intact archive and
    for a file that is not a readable zip (torch.load then says why)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch could not read ``path``, in one line."""
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        return ("not a torch checkpoint: percepiano checkpoints are torch zip archives and this file is not one "
                "(random bytes, a plain pickle or another format)")
    refused = re.search(r"GLOBAL (\S+)", str(exc))  # the weights-only unpickler names what it refused
    if isinstance(exc, pickle.UnpicklingError) and (refused or "Weights only load failed" in str(exc)):
        what = f" ({refused.group(1)})" if refused else ""
        return (f"holds pickled Python objects{what} besides tensors and plain values; they are refused, not run "
                "(torch.load(weights_only=True)). Checkpoints of `percepiano train` hold none: this file was "
                "written by other code (for an original PercePiano checkpoint see "
                "percepiano.convert.load_original_checkpoint)")
    first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
    return f"a truncated or damaged torch archive ({first})"  # torch's first sentence; the rest is advice


def check_checkpoint(ck, path: str | os.PathLike = "<checkpoint>") -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless ``ck`` is a usable percepiano checkpoint: its
    format and kind, the keys of that kind (with their types), a model config this package can build, an
    input size of one of the data's feature sets, 19 labels, and weights that fit the config and are finite."""
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a percepiano training checkpoint (format {CHECKPOINT_FORMAT!r})")
    kind = ck.get("kind")
    if kind not in REQUIRED_KEYS:
        raise CheckpointError(f"{path}: kind {kind!r}, expected one of {sorted(REQUIRED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS[kind] if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: a {kind!r} checkpoint without {missing} (train_fold writes them all)")
    for key, want in {**OPTIONAL_KEYS, **REQUIRED_KEYS[kind]}.items():
        if key in ck and not isinstance(ck[key], want):
            raise CheckpointError(f"{path}: {key!r} is a {type(ck[key]).__name__}, expected {_type_name(want)}")
    try:
        cfg = ModelConfig.from_dict(ck["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its model config is not usable: {exc}") from None
    if cfg.input_size not in INPUT_SIZES:
        raise CheckpointError(f"{path}: model input size {cfg.input_size}, expected one of the data's feature set "
                              f"sizes {INPUT_SIZES}")
    if cfg.num_labels != NUM_LABELS:
        raise CheckpointError(f"{path}: the model predicts {cfg.num_labels} labels, expected {NUM_LABELS}")
    feature_set = ck.get("run", {}).get("feature_set")
    if feature_set is not None and INPUT_SIZES[cfg.input_size] != feature_set:
        raise CheckpointError(f"{path}: run feature set {feature_set!r}, but the model reads {cfg.input_size} "
                              f"inputs ({INPUT_SIZES[cfg.input_size]!r})")
    _check_weights(ck["model_state"], cfg, path)
    if kind == "last":
        for key, fields in (("best", ("epoch", "valid_loss")), ("rng", ("torch", "numpy", "python")),
                            ("optimizer", ("state", "param_groups"))):
            absent = [f for f in fields if f not in ck[key]]
            if absent:
                raise CheckpointError(f"{path}: {key!r} lacks {absent}; cannot resume from it")


def _type_name(t) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def _check_weights(state: dict, cfg: ModelConfig, path) -> None:
    """The weights have exactly the model's keys and shapes (the model is built on the meta device: no memory,
    no init) and every floating value is finite."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in PercePianoModel(cfg).state_dict().items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: model_state values that are not tensors: {_few(not_tensors)}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {expected[k]} for the config"
              for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        parts = [f"{what} ({len(keys)}): {_few(keys)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes)) if keys]
        raise CheckpointError(f"{path}: the weights do not fit the model config (level {cfg.level!r}, "
                              f"{cfg.input_size} inputs, sizes {cfg.note_size}/{cfg.voice_size}/{cfg.beat_size}/"
                              f"{cfg.measure_size}): " + "; ".join(parts))
    # a float64 sum is NaN or inf exactly when a value is (float32 values cannot overflow it), in one cheap pass
    bad = [k for k, v in state.items()
           if v.is_floating_point() and not math.isfinite(float(v.sum(dtype=torch.float64)))]
    if bad:
        raise CheckpointError(f"{path}: non-finite weights (NaN or inf) in {len(bad)} of {len(state)} tensors: "
                              f"{_few(bad)} (a diverged run?); its predictions would be NaN")


def _few(items: list, n: int = 5) -> str:
    return ", ".join(str(i) for i in items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def checkpoint_preset(ck: Mapping) -> str | None:
    """The preset a checkpoint was trained as: the one its run records, else the published preset with its
    level and input size; None when none fits."""
    recorded = (ck.get("run") or {}).get("preset")
    if recorded is not None:
        return str(recorded)
    cfg = ck["model_config"]
    fits = [name for name, p in PRESETS.items()
            if (p.level, p.input_size) == (cfg.get("level"), cfg.get("input_size"))]
    return fits[0] if len(fits) == 1 else None


def load_trained_model(path: str | os.PathLike, device: torch.device | str = "cpu",
                       expect_preset: str | None = None) -> tuple[PercePianoModel, dict]:
    """``(model in eval mode on device, checkpoint dict)`` of a ``percepiano train`` checkpoint
    (:func:`load_checkpoint`'s checks). With ``expect_preset``, a checkpoint of another preset is a
    :class:`CheckpointError`."""
    ck = load_checkpoint(path)
    if expect_preset is not None:
        got = checkpoint_preset(ck)
        if got != expect_preset:
            cfg = ck["model_config"]
            raise CheckpointError(
                f"{path}: a checkpoint of preset {got!r} (level {cfg.get('level')!r}, {cfg.get('input_size')} "
                f"inputs), not of the requested {expect_preset!r}")
    model = _build_model(ck, device)  # load_checkpoint checked it
    model.eval()
    return model, ck


def protocol_notes(ck: Mapping) -> list[str]:
    """One line per way the checkpoint's training departed from the original protocol: a subset of the
    segments, fewer epochs than the protocol's, capped batches, other optimisation values, an unfinished run,
    model sizes other than its preset's, a named deviation. Empty for a published-protocol checkpoint."""
    from .training import TrainConfig  # training imports this module

    notes = []
    tc = ck.get("train_config")
    if not isinstance(tc, Mapping):
        notes.append("no train_config recorded: whether it followed the original protocol is unknown")
        tc = {}
    limit = tc.get("limit_segments")
    if limit is not None:
        notes.append(f"trained on a subset: limit_segments={limit} (the first {limit} segments of each of "
                     "train/valid/test)")
    epochs = tc.get("epochs") if isinstance(tc.get("epochs"), int) else None
    if epochs is not None and epochs < PROTOCOL_EPOCHS:
        notes.append(f"trained for {epochs} epoch(s); the original protocol trains {PROTOCOL_EPOCHS}")
    if tc.get("max_train_batches") is not None:
        notes.append(f"at most {tc['max_train_batches']} training batches per epoch (max_batches)")
    own = {"epochs", "limit_segments", "max_train_batches", "deterministic", "eval_test_every_epoch", "rng"}
    for key, original in TrainConfig().to_dict().items():
        if key not in own and key in tc and tc[key] != original:
            notes.append(f"{key} = {tc[key]!r} (the original protocol: {original!r})")
    if ck.get("kind") == "last" and epochs is not None and isinstance(ck.get("epoch"), int) and ck["epoch"] < epochs:
        notes.append(f"a last.pt after epoch {ck['epoch']} of {epochs}: an unfinished run, and the last epoch's "
                     "weights, not the selected (best) ones")
    cfg = ModelConfig.from_dict(ck["model_config"])
    preset = checkpoint_preset(ck)
    if preset in PRESETS:
        base, mine = PRESETS[preset].to_dict(), cfg.to_dict()
        sizes = ("note_size", "voice_size", "beat_size", "measure_size")
        if cfg.hidden_size is not None:
            notes.append(f"hidden_size = {cfg.hidden_size} (preset {preset}: note/voice/beat/measure sizes "
                         f"{'/'.join(str(base[k]) for k in sizes)})")
        for key in base:
            skip = key in ORIGINAL_BEHAVIOUR or key == "hidden_size" or (cfg.hidden_size is not None and key in sizes)
            if not skip and mine[key] != base[key]:
                notes.append(f"{key} = {mine[key]!r} (preset {preset}: {base[key]!r})")
    else:
        notes.append(f"its model config matches no published preset (level {cfg.level!r}, {cfg.input_size} inputs)")
    notes += [f"named deviation: {line}" for line in describe_deviations(cfg)]
    return notes


# --------------------------------------------------------------------------------------------- models


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's ``state_dict`` on the CPU (what a checkpoint stores)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def build_model(model_cfg: ModelConfig, seed: int, device: torch.device | str = "cpu") -> PercePianoModel:
    """Seed everything, then build the model (the original seeds before constructing it)."""
    set_seed(seed)
    return PercePianoModel(model_cfg).to(device)


def model_from_checkpoint(ck: dict, device: torch.device | str = "cpu") -> PercePianoModel:
    """The model of a loaded checkpoint (:func:`load_checkpoint`), with its weights, on ``device``. A dict that
    did not come through :func:`load_checkpoint` is checked first (:class:`CheckpointError`)."""
    check_checkpoint(ck)
    return _build_model(ck, device)


def _build_model(ck: Mapping, device) -> PercePianoModel:
    """The model of a checked checkpoint."""
    model = PercePianoModel(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model_state"])
    return model.to(device)


# --------------------------------------------------------------------------------------------- RNG state


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
    """All RNG states a training epoch consumes (torch CPU + CUDA for dropout), plus numpy and ``random``, as
    tensors and primitive values (so that a ``weights_only`` load reads them back)."""
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
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
