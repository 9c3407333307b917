"""What a run is and what it ran on.

A run's **identity** decides whether a saved fold or checkpoint may be reused (``cv --resume``) or continued
(``train --resume``): the preset, the full model and training configs (the seed among them), the split, the
fold, the feature set, the code (package version, git commit and the sha256 of the package's source files,
which sees uncommitted edits) and the dataset (its sha256). It is built by
:func:`run_identity` / :func:`fold_identity` and compared by :func:`check_identity`, here and nowhere else;
``last.pt``, ``best.pt``, ``fold_result.json`` and ``results.json`` store it.

The **environment** (:func:`environment_info`, :func:`data_info`) is what ``results.json`` records beside it:
versions, git state, device, platform, the dataset's size. It is information, not identity: a run continued on
another machine or torch version is the same run.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from . import __version__

# --------------------------------------------------------------------------------------------- code


@functools.lru_cache(maxsize=None)
def _git(*args: str) -> str | None:
    """The output of ``git ARGS`` in this package's folder (once per process), None outside a checkout."""
    try:
        return subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


# what the package's source is: its modules and the data files it reads (norm stats, resources)
SOURCE_SUFFIXES = (".py", ".json")


def tree_sha256(root: str | os.PathLike, suffixes: tuple[str, ...] = SOURCE_SUFFIXES) -> str:
    """sha256 over every file under ``root`` whose name ends in one of ``suffixes`` (``__pycache__`` left
    out): each file's path relative to ``root``, its size and its bytes, in sorted path order. The same files
    give the same hash wherever the tree lies and however it was installed."""
    root = Path(root)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.suffix in suffixes and p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        data = p.read_bytes()
        h.update(f"{p.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def source_sha256() -> str:
    """:func:`tree_sha256` of this package's folder, once per process (the code a process runs is the code it
    imported): unlike the git commit it sees uncommitted edits, and an install without git."""
    return tree_sha256(Path(__file__).resolve().parent)


def code_version() -> dict:
    """``{"version": percepiano.__version__, "commit": the git commit or None, "source_sha256":
    source_sha256()}``. The commit says where the code came from; the version and source hash what it is
    (:func:`same_code`): a resume after an uncommitted edit of the package is a resume under another code
    version, one after a commit that left ``percepiano/`` alone is not."""
    commit = _git("rev-parse", "HEAD")
    return {"version": __version__, "commit": (commit.strip() or None) if commit is not None else None,
            "source_sha256": source_sha256()}


def same_code(a: Mapping, b: Mapping) -> bool:
    """Whether two :func:`code_version` records are the same code: equal version and source sha256 (the
    commit is not compared)."""
    return all(a.get(k) == b.get(k) for k in ("version", "source_sha256"))


# --------------------------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; cached by (path, size, mtime) so that a process hashes each file once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    p = Path(path).resolve()
    st = p.stat()
    return _file_sha256(str(p), st.st_size, st.st_mtime_ns)


def data_sha256(data) -> str:
    """sha256 of the dataset file a :class:`~percepiano.data.PercePianoData` was loaded from; for a dataset
    built in memory (no file), of its arrays (names, dtypes, shapes and bytes), so that it is identified too."""
    if Path(data.path).is_file():
        return file_sha256(data.path)
    h = hashlib.sha256()
    arrays = {
        "segment_ids": data.segment_ids, "offsets": data.offsets, "input": data.input, "labels": data.labels,
        "labels_std": data.labels_std, "label_names": np.asarray(data.label_names),
        **{f"note_{k}": v for k, v in data.note_locations.items()},
        **{f"{k}_split": v for k, v in data.splits.items()},
    }
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def data_info(data) -> dict:
    """The dataset a run read: file name, sha256, number of segments and notes."""
    # the file name only: results must not carry machine paths
    return {"file": Path(data.path).name, "sha256": data_sha256(data), "segments": len(data), "notes": data.num_notes}


# --------------------------------------------------------------------------------------------- environment


def environment_info(device: torch.device | str | None = None) -> dict:
    """Versions, git commit (and whether the tree has uncommitted changes), device and platform of a run."""
    info = {
        "versions": {
            "percepiano": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "git_commit": code_version()["commit"],
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
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        info["git_dirty"] = bool(status.strip())
    return info


# --------------------------------------------------------------------------------------------- identity


def run_identity(
    preset: str | None, split: str, feature_set: str, data, model_config: dict | None, train_config: dict | None
) -> dict:
    """The identity of a run (all folds): see the module docstring. ``model_config`` is the model's full
    config dict (a baseline's: its own config), ``train_config`` the full training config (None for a
    baseline, which trains nothing)."""
    return {
        "preset": preset,
        "model_config": None if model_config is None else dict(model_config),
        "train_config": None if train_config is None else dict(train_config),
        "split": split,
        "feature_set": feature_set,
        "code": code_version(),
        "data": {"file": Path(data.path).name, "sha256": data_sha256(data)},
    }


def fold_identity(run: Mapping, fold: int) -> dict:
    """The identity of one fold of the run ``run`` (:func:`run_identity`)."""
    out = {k: run[k] for k in ("preset", "model_config", "train_config", "split")}
    return {**out, "fold": int(fold), **{k: run[k] for k in ("feature_set", "code", "data")}}


# Recorded but not compared: the data file's name (the same bytes under another name are the same data) and
# the git commit (where the code came from; its version and source sha256 say what it is, so a commit that
# changes only docs or tests, or a copy of the package without git, runs the same code).
_NOT_COMPARED = {"data.file", "code.commit"}
_CODE = "code"
_EPOCHS = "train_config.epochs"


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out else {prefix: {}}
    return {prefix: value}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def identity_differences(saved: Mapping, requested: Mapping) -> dict[str, tuple]:
    """``{field: (saved value, requested value)}`` for every field (dotted, e.g. ``train_config.lr``) that
    differs. A whole section that is a dict on one side only (a baseline against a neural run) is one field."""
    a, b = _flatten(saved), _flatten(requested)
    diff = {}
    for key in list(a) + [k for k in b if k not in a]:
        if key in _NOT_COMPARED:
            continue
        if key in a and key in b:
            if a[key] != b[key]:
                diff[key] = (a[key], b[key])
            continue
        top = key.split(".")[0]  # present on one side only: report the section once
        if top not in diff:
            diff[top] = (saved.get(top), requested.get(top))
    return diff


def check_identity(
    saved: Mapping | None,
    requested: Mapping,
    where: str | os.PathLike,
    *,
    action: str,
    epochs_may_grow: bool = False,
    allow_code_change: bool = False,
) -> dict | None:
    """Refuse (``ValueError``) to ``action`` (e.g. "resume it") the run saved at ``where`` unless its identity
    ``saved`` matches ``requested`` in every field; the message lists each one as "field: saved X, requested
    Y". ``epochs_may_grow``: a resume may train to more epochs than planned. ``allow_code_change``: the code
    (version, source sha256) may differ. Whenever the code record differs, be it in the commit alone (always
    allowed: the same code) or with the flag, the change is returned (``{"saved": code, "requested": code}``)
    for the run to record; None when it is the same. Without a saved identity (a run from before identities
    were recorded) it refuses too."""
    if not isinstance(saved, Mapping):
        raise ValueError(
            f"{where}: written without a run identity (by an older percepiano, before runs recorded their preset, "
            f"configs, seed, code version and dataset sha256), so it cannot be checked against this run; "
            f"cannot {action}: choose another --out"
        )
    diff = identity_differences(saved, requested)
    if epochs_may_grow and _EPOCHS in diff:
        was, now = diff[_EPOCHS]
        if isinstance(was, int) and isinstance(now, int) and now >= was:
            del diff[_EPOCHS]
    code = {k: v for k, v in diff.items() if k == _CODE or k.startswith(_CODE + ".")}
    if allow_code_change:
        for k in code:
            del diff[k]
    if diff:
        lines = "".join(f"\n  {k}: saved {_short(v[0])}, requested {_short(v[1])}" for k, v in diff.items())
        hint = "rerun with the saved settings or choose another --out"
        if _EPOCHS in diff:
            hint += " (a resume may only raise --epochs)"
        if code and not allow_code_change:
            hint += "; pass --allow-code-change to continue it under the current code (recorded in the run)"
        raise ValueError(f"{where}: cannot {action}: it was written by a different run:{lines}\n{hint}")
    if saved.get(_CODE) != requested.get(_CODE):
        return {"saved": dict(saved.get(_CODE) or {}), "requested": dict(requested.get(_CODE) or {})}
    return None
