"""Checkpoints and the state around them: atomic file writes, RNG state, seeding, checkpoint -> model.

A checkpoint is a plain dict of tensors and primitive values, read with ``torch.load(..., weights_only=True)``
(no pickle of objects). Its ``format`` is :data:`CHECKPOINT_FORMAT`; ``kind`` is ``"best"`` (the selected
model: ``model_state``, ``model_config``, ``train_config``, ``run``, ``epoch``, ``valid_loss``) or ``"last"``
(everything needed to resume: also ``optimizer``, ``scheduler``, ``best``, ``rng`` and ``history``);
:func:`percepiano.training.train_fold` writes both. :func:`load_checkpoint` and :func:`model_from_checkpoint`
are the one way to read one back into a model (``percepiano evaluate``, ``percepiano predict``, the report).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .model import PercePianoModel

CHECKPOINT_FORMAT = "percepiano.train/1"


# --------------------------------------------------------------------------------------------- files


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
    """A checkpoint written by :func:`percepiano.training.train_fold`, on CPU (no pickle: ``weights_only=True``).
    Raises ``ValueError`` for a file torch cannot read or one that is not such a checkpoint (``OSError``, e.g.
    a missing file, as it is)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file: not a zip, truncated, not weights-only
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a percepiano training checkpoint (format {CHECKPOINT_FORMAT!r})")
    return ck


# --------------------------------------------------------------------------------------------- models


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's ``state_dict`` on the CPU (what a checkpoint stores)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def build_model(model_cfg: ModelConfig, seed: int, device: torch.device | str = "cpu") -> PercePianoModel:
    """Seed everything, then build the model (the original seeds before constructing it)."""
    set_seed(seed)
    return PercePianoModel(model_cfg).to(device)


def model_from_checkpoint(ck: dict, device: torch.device | str = "cpu") -> PercePianoModel:
    """The model of a loaded checkpoint (:func:`load_checkpoint`), with its weights, on ``device``. Raises
    ``ValueError`` when the checkpoint has no usable model config or its weights do not fit that config."""
    cfg, state = ck.get("model_config"), ck.get("model_state")
    if not isinstance(cfg, dict) or not isinstance(state, dict):
        raise ValueError("no model config / model state in the checkpoint")
    try:
        model = PercePianoModel(ModelConfig.from_dict(cfg))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"its model config is not usable: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"the weights do not fit the model config: {exc}") from None
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
