"""The one reader and writer of a run's result files, and the one reader of the published targets.

- ``results.json``: what ``percepiano cv`` writes into its run directory (:func:`write_results`): the mean
  test R² over folds, every fold's test R² and per-label test R², the config and the environment.
  :func:`load_results` reads it back; :func:`fold_values`, :func:`fold_spread`, :func:`metric_value` and
  :func:`per_label_mean` are the numbers the gate, the report and the diagnostics take from it.
- ``test_predictions.npz`` of a fold directory: the per-segment test predictions (:func:`load_predictions`).
- ``percepiano/resources/regression_targets.json``: the published mean test R² of each preset and split
  (:func:`load_targets`, :func:`target_for`, :func:`target_tolerance`).
- :func:`sibling_results`: the runs of other presets saved next to a run (its baselines).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Collection, Iterable, Mapping

import numpy as np

RESULTS = "results.json"


# ---------------------------------------------------------------------------------------------------------
# results.json
# ---------------------------------------------------------------------------------------------------------
def write_results(results: Mapping, run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/results.json`` atomically (a reader never sees half a file); returns its path."""
    # imported here: the checkpoints module needs torch, and the readers below do not
    from .checkpoints import atomic_write_text

    path = Path(run_dir) / RESULTS
    atomic_write_text(json.dumps(results, indent=1) + "\n", path)
    return path


def load_results(path_or_results: str | os.PathLike | Mapping) -> dict:
    """A ``results.json`` as a dict; accepts the file, its run directory, or an already loaded dict.

    A loaded file gets its path under ``_path``.
    """
    if isinstance(path_or_results, Mapping):
        return dict(path_or_results)
    p = Path(path_or_results)
    if p.is_dir():
        p = p / RESULTS
    if not p.is_file():
        raise FileNotFoundError(f"results file not found: {p}")
    with open(p, encoding="utf-8") as fh:
        res = json.load(fh)
    for key in ("mean_test_r2", "folds"):
        if key not in res:
            raise ValueError(f"{p}: not a `percepiano cv` results file (missing {key!r})")
    res.setdefault("_path", str(p))
    return res


def sibling_results(run_dirs: Iterable[str | os.PathLike], presets: Collection[str], splits: Collection[str]) -> list[dict]:
    """The results of the run directories next to ``run_dirs`` (same parent folder, not one of them) whose
    preset is in ``presets`` and split in ``splits``, in path order; unreadable results files are skipped."""
    run_dirs = [Path(d) for d in run_dirs]
    have = {d.resolve() for d in run_dirs}
    found = []
    for parent in sorted({d.parent for d in run_dirs}):
        for cand in sorted(parent.glob(f"*/{RESULTS}")):
            if cand.parent.resolve() in have:
                continue
            try:
                res = load_results(cand)
            except (ValueError, OSError):
                continue
            if res.get("preset") in presets and res.get("split") in splits:
                found.append(res)
                have.add(cand.parent.resolve())
    return found


def fold_values(results: Mapping, label: str | None = None) -> np.ndarray:
    """Per-fold test R² (of one label when ``label`` is given), in fold order."""
    vals = []
    for f in results["folds"]:
        if label is None:
            vals.append(float(f["test_r2"]))
        else:
            per = f["per_label_test_r2"]
            vals.append(float(per[label] if isinstance(per, Mapping) else per[label_index(results, label)]))
    return np.asarray(vals, dtype=np.float64)


def fold_spread(results: Mapping, label: str | None = None) -> float:
    """Standard deviation over folds of the test R² (population std, ddof 0: the ``fold_std`` that
    ``percepiano cv`` writes into results.json); 0 for a single fold."""
    v = fold_values(results, label)
    return float(v.std()) if len(v) > 1 else 0.0


def metric_value(results: Mapping, label: str | None = None) -> float:
    """``mean_test_r2``, or the mean over folds of one label's test R²."""
    if label is None:
        return float(results["mean_test_r2"])
    return float(fold_values(results, label).mean())


def label_names_of(results: Mapping) -> list[str]:
    names = results.get("label_names")
    if names:
        return [str(n) for n in names]
    per = results["folds"][0].get("per_label_test_r2", {})
    return list(per) if isinstance(per, Mapping) else [str(i) for i in range(len(per))]


def resolve_label(results: Mapping, label: str) -> str:
    """The exact label name for ``label``: exact, case-insensitive, an index, or a unique substring."""
    names = label_names_of(results)
    if label in names:
        return label
    if label.isdigit() and int(label) < len(names):
        return names[int(label)]
    low = [n.lower() for n in names]
    if label.lower() in low:
        return names[low.index(label.lower())]
    hits = [n for n in names if label.lower() in n.lower()]
    if len(hits) == 1:
        return hits[0]
    what = f"matches several labels {hits}" if hits else "matches no label"
    raise ValueError(f"label {label!r} {what}; labels: {names}")


def label_index(results: Mapping, label: str) -> int:
    return label_names_of(results).index(resolve_label(results, label))


def per_label_mean(results: Mapping) -> dict[str, float]:
    """Mean over folds of every label's test R²."""
    return {n: metric_value(results, n) for n in label_names_of(results)}


# ---------------------------------------------------------------------------------------------------------
# Per-segment test predictions of a fold
# ---------------------------------------------------------------------------------------------------------
def load_predictions(path: str | os.PathLike) -> dict:
    """``{"segment_ids", "predictions" (n, L), "labels" (n, L)}`` from the npz that ``percepiano cv`` saves
    (:func:`percepiano.training.save_predictions`; no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("predictions", "labels") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: no {missing[0]} array (has {z.files})")
        out = {
            "predictions": np.asarray(z["predictions"], dtype=np.float64),
            "labels": np.asarray(z["labels"], dtype=np.float64),
        }
        ids = z["segment_ids"] if "segment_ids" in z.files else None
    out["segment_ids"] = [str(s) for s in ids] if ids is not None else [str(i) for i in range(len(out["labels"]))]
    if out["predictions"].shape != out["labels"].shape:
        raise ValueError(f"{path}: predictions {out['predictions'].shape} and labels {out['labels'].shape} differ")
    return out


# ---------------------------------------------------------------------------------------------------------
# Published targets
# ---------------------------------------------------------------------------------------------------------
def targets_path() -> Path:
    return Path(__file__).parent / "resources" / "regression_targets.json"


def load_targets(path: str | os.PathLike | None = None) -> dict:
    """The published R² targets (``percepiano/resources/regression_targets.json`` unless ``path`` is given)."""
    p = Path(path) if path is not None else targets_path()
    if not p.is_file():
        raise FileNotFoundError(f"regression targets not found: {p}")
    with open(p, encoding="utf-8") as fh:
        return json.load(fh)


def _targets_root(targets: Mapping) -> Mapping:
    """The ``targets`` section of a targets file (or the file itself when it has none)."""
    root = targets.get("targets", targets) if isinstance(targets, Mapping) else {}
    return root if isinstance(root, Mapping) else {}


def _target_entry(targets: Mapping, split: str, preset: str):
    """``targets[split][preset]``: a number, a dict, or None."""
    entry = _targets_root(targets).get(split, {})
    return entry.get(preset) if isinstance(entry, Mapping) else None


def target_for(targets: Mapping, split: str, preset: str, label: str | None = None) -> float | None:
    """Published mean test R² of ``preset`` on ``split`` (of one label with ``label``), or None when the paper
    gives none.

    Reads ``targets[split][preset]`` (a number, or a dict with ``r2``/``mean_test_r2``/``target`` and, for
    labels, ``per_label``), also under a top-level ``targets`` key.
    """
    val = _target_entry(targets, split, preset)
    if label is not None:
        per = val.get("per_label") if isinstance(val, Mapping) else None
        return float(per[label]) if isinstance(per, Mapping) and label in per else None
    if isinstance(val, Mapping):
        for key in ("mean_test_r2", "r2", "target"):
            if key in val:
                val = val[key]
                break
        else:
            val = None
    return None if val is None else float(val)


def target_tolerance(targets: Mapping, split: str, preset: str) -> float | None:
    """The allowed drop below the target of ``preset`` on ``split``: its own ``tolerance``, else the file's."""
    entry = _target_entry(targets, split, preset)
    entry = entry if isinstance(entry, Mapping) else {}
    tol = entry.get("tolerance", _targets_root(targets).get("tolerance"))
    return None if tol is None else float(tol)
