"""The one reader and writer of a run's result files, and the one reader of the published targets.

- ``results.json``: what ``percepiano cv`` writes into its run directory (:func:`write_results`): the mean
  test R² over folds, every fold's test R² and per-label test R², the config and the environment.
  :func:`load_results` reads it back and checks it (:func:`check_results`: the fields the readers use, every
  number finite, ``mean_test_r2`` equal to the mean of the folds' ``test_r2``); :func:`fold_values`,
  :func:`fold_spread`, :func:`metric_value` and :func:`per_label_mean` are the numbers the gate, the report
  and the diagnostics take from it.
- ``log.jsonl`` of a fold directory: one JSON object per epoch (:func:`load_log`).
- ``test_predictions.npz`` of a fold directory: the per-segment test predictions (:func:`load_predictions`).
- ``percepiano/resources/regression_targets.json``: the published mean test R² of each preset and split
  (:func:`load_targets`, :func:`target_for`, :func:`target_tolerance`).
- :func:`sibling_results`: the runs of other presets saved next to a run (its baselines).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Collection, Iterable, Mapping

import numpy as np

RESULTS = "results.json"


def fold_dir(fold: int) -> str:
    """The folder of fold ``fold`` in a run directory (a ``percepiano cv`` run, a round's cell): ``fold{k}``."""
    return f"fold{int(fold)}"


def seed_of_dir(name: str) -> int | None:
    """The seed of a ``seed{S}`` folder (``cv --seeds``, a round's cell); None for any other name (``seed7_old``)."""
    digits = name[len("seed"):] if name.startswith("seed") else ""
    return int(digits) if digits.isdigit() else None


# How far results.json's mean_test_r2 may be from the mean of its folds' test_r2 (float rounding only: cv
# writes float(np.mean(...)) of the same numbers).
MEAN_TOLERANCE = 1e-9


# ---------------------------------------------------------------------------------------------------------
# JSON files
# ---------------------------------------------------------------------------------------------------------
def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """The JSON object in ``path``; ``ValueError`` naming the file when it is not valid JSON (or not UTF-8)
    or holds something other than an object (``null``, a list, a number)."""
    p = Path(path)
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not a valid {what} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{p}: expected a JSON object ({what}), got {json.dumps(value)[:40]}")
    return value


def _non_finite(value, where: str):
    """The path of the first non-finite number (NaN, Infinity: Python's json reads them) under ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]")
        if found:
            return found
    return None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
    """A ``results.json`` as a dict, checked by :func:`check_results`; accepts the file, its run directory,
    or an already loaded dict (checked too).

    A loaded file gets its path under ``_path``.
    """
    if isinstance(path_or_results, Mapping):
        res = dict(path_or_results)
        check_results(res, res.get("_path", "<results>"))
        return res
    p = Path(path_or_results)
    if p.is_dir():
        p = p / RESULTS
    if not p.is_file():
        raise FileNotFoundError(f"results file not found: {p}")
    res = read_json_object(p, "`percepiano cv` results file")
    check_results(res, p)
    res.setdefault("_path", str(p))
    return res


def check_results(res: Mapping, where: str | os.PathLike = "<results>") -> None:
    """``ValueError`` naming ``where`` and the field unless ``res`` is a usable results.json: ``mean_test_r2``
    a number, ``folds`` a non-empty list of objects each with its distinct ``fold`` number and a number
    ``test_r2`` (and ``per_label_test_r2``,
    where given, one number per label), no NaN or Infinity anywhere, and ``mean_test_r2`` the mean of the
    folds' ``test_r2`` (within :data:`MEAN_TOLERANCE`): the gate and the report read the mean as written."""
    def fail(field: str, what: str):
        return ValueError(f"{where}: field {field!r}: {what}")

    for key in ("mean_test_r2", "folds"):
        if key not in res:
            raise ValueError(f"{where}: not a `percepiano cv` results file (missing {key!r})")
    if not _is_number(res["mean_test_r2"]):
        raise fail("mean_test_r2", f"expected a number, got {res['mean_test_r2']!r}")
    folds = res["folds"]
    if not isinstance(folds, list) or not folds or not all(isinstance(f, Mapping) for f in folds):
        raise fail("folds", "expected a non-empty list of fold objects")
    names = res.get("label_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise fail("label_names", "expected a list of label names")
    numbers = [f.get("fold") for f in folds]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers) or len(set(numbers)) != len(numbers):
        raise fail("folds[].fold", f"expected distinct fold numbers (integers >= 0), got {numbers!r}")
    for i, fold in enumerate(folds):
        if not _is_number(fold.get("test_r2")):
            raise fail(f"folds[{i}].test_r2", f"expected a number, got {fold.get('test_r2')!r}")
        per = fold.get("per_label_test_r2")
        if per is None:
            continue
        values = list(per.values()) if isinstance(per, Mapping) else per if isinstance(per, list) else None
        if values is None or not all(_is_number(v) for v in values):
            raise fail(f"folds[{i}].per_label_test_r2", "expected one number per label (a list or an object)")
        if names is not None and len(values) != len(names):
            raise fail(f"folds[{i}].per_label_test_r2", f"{len(values)} values for {len(names)} label_names")
    bad = _non_finite({k: v for k, v in res.items() if k != "_path"}, "")
    if bad:
        raise fail(bad.lstrip("."), "not a finite number (NaN or Infinity): a diverged or broken run")
    mean = float(np.mean([float(f["test_r2"]) for f in folds]))
    if abs(float(res["mean_test_r2"]) - mean) > MEAN_TOLERANCE:
        raise fail("mean_test_r2", f"{res['mean_test_r2']!r} is not the mean of the folds' test_r2 "
                   f"({[f['test_r2'] for f in folds]} -> {mean!r}): the file was edited or is not from `percepiano cv`")


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
            except (ValueError, OSError):  # a broken neighbour is not this run's problem: skip it
                continue
            if res.get("preset") in presets and res.get("split") in splits:
                found.append(res)
                have.add(cand.parent.resolve())
    return found


def fold_values(results: Mapping, label: str | None = None) -> np.ndarray:
    """Per-fold test R² (of one label when ``label`` is given), in fold order."""
    vals = []
    for i, f in enumerate(results["folds"]):
        if label is None:
            vals.append(float(f["test_r2"]))
        else:
            per = f.get("per_label_test_r2")
            if per is None:
                raise ValueError(f"{results.get('_path', '<results>')}: field 'folds[{i}].per_label_test_r2': missing, "
                                 f"and label {label!r} needs it (a results.json without per-label R²)")
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
    raise ValueError(f"{results.get('_path', '<results>')}: label {label!r} {what}; labels: {names}")


def label_index(results: Mapping, label: str) -> int:
    return label_names_of(results).index(resolve_label(results, label))


def per_label_mean(results: Mapping) -> dict[str, float]:
    """Mean over folds of every label's test R²."""
    return {n: metric_value(results, n) for n in label_names_of(results)}


# ---------------------------------------------------------------------------------------------------------
# The per-epoch log of a fold
# ---------------------------------------------------------------------------------------------------------
def load_log(path: str | os.PathLike, drop_cut_last_line: bool = False) -> list[dict]:
    """The records of a JSON-lines log (a fold's ``log.jsonl``, ``steps.jsonl``: one JSON object per line; blank
    lines skipped); ``ValueError`` naming the file and the line for a line that is not valid JSON or not an
    object (``null``, say). ``drop_cut_last_line``: a last line that is not valid JSON is left out instead, for
    readers of a log that training appends to (read while a line is being written, or after a run was killed
    while writing one: resume rewrites or trims it)."""
    rows = []
    p = Path(path)
    try:
        lines = [(n, ln) for n, ln in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1) if ln.strip()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not a text file ({exc})") from None
    for i, (number, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if drop_cut_last_line and i == len(lines) - 1:
                break
            raise ValueError(f"{p}: line {number} is not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{p}: line {number}: expected a JSON object (one epoch's record), "
                             f"got {line.strip()[:40]}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Per-segment test predictions of a fold
# ---------------------------------------------------------------------------------------------------------
def load_predictions(path: str | os.PathLike) -> dict:
    """``{"segment_ids", "predictions" (n, L), "labels" (n, L)}`` from the npz that ``percepiano cv`` saves
    (:func:`percepiano.training.save_predictions`; no pickle); ``ValueError`` naming the file for one that is
    not a readable npz or lacks those arrays."""
    from .data import read_npz  # the one npz reader; imported here: percepiano.data imports torch

    z = read_npz(path, "expected a fold's test_predictions.npz")
    missing = [k for k in ("predictions", "labels") if k not in z]
    if missing:
        raise ValueError(f"{path}: no {missing[0]} array (has {sorted(z)})")
    out = {
        "predictions": np.asarray(z["predictions"], dtype=np.float64),
        "labels": np.asarray(z["labels"], dtype=np.float64),
    }
    ids = z.get("segment_ids")
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
    """The published R² targets (``percepiano/resources/regression_targets.json`` unless ``path`` is given);
    ``ValueError`` naming the file and the field for one that is not JSON, not an object, or whose targets
    and tolerances are not finite numbers (``null``: no target)."""
    p = Path(path) if path is not None else targets_path()
    if not p.is_file():
        raise FileNotFoundError(f"regression targets not found: {p}")
    targets = read_json_object(p, "targets file")
    root = targets.get("targets", targets)
    if not isinstance(root, Mapping):
        raise ValueError(f"{p}: field 'targets': expected an object of splits, got {json.dumps(root)[:40]}")
    prefix = "targets." if "targets" in targets else ""
    checks = [(f"{prefix}tolerance", root.get("tolerance"))]
    for split, entries in root.items():
        if not isinstance(entries, Mapping):
            continue  # a description (source, rule, notes)
        for preset, entry in entries.items():
            field = f"{prefix}{split}.{preset}"
            if isinstance(entry, Mapping):
                checks += [(f"{field}.{k}", entry.get(k)) for k in ("mean_test_r2", "r2", "target", "tolerance")]
                per = entry.get("per_label", {})
                if not isinstance(per, Mapping):
                    raise ValueError(f"{p}: field {field + '.per_label'!r}: expected an object of label -> R²")
                checks += [(f"{field}.per_label.{k}", v) for k, v in per.items()]
            else:
                checks.append((field, entry))
    for field, value in checks:
        if value is not None and not (_is_number(value) and math.isfinite(value)):
            raise ValueError(f"{p}: field {field!r}: expected a finite number or null, got {json.dumps(value)}")
    return targets


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


# ---------------------------------------------------------------------------------------------------------
# seeds.json: the index of a multi-seed `percepiano cv --seeds` run
# ---------------------------------------------------------------------------------------------------------
SEEDS = "seeds.json"


def write_seeds_index(index: Mapping, run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/seeds.json`` (``{"seeds", "runs", "preset", "split"}``: ``runs[i]`` is the folder of
    ``seeds[i]``'s single-seed run, relative to ``run_dir``) atomically; returns its path."""
    from .checkpoints import atomic_write_text

    path = Path(run_dir) / SEEDS
    atomic_write_text(json.dumps(dict(index), indent=1) + "\n", path)
    return path


def load_seeds_index(path: str | os.PathLike) -> dict:
    """A ``seeds.json`` (the file or its run directory) as a dict; ``ValueError`` naming the field that is not
    what :func:`write_seeds_index` writes."""
    p = Path(path) / SEEDS if Path(path).is_dir() else Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"seeds index not found: {p}")
    index = read_json_object(p, "seeds index")
    seeds, runs = index.get("seeds"), index.get("runs")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{p}: field 'seeds': expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):  # one run counted twice would shrink the seed spread to nothing
        raise ValueError(f"{p}: field 'seeds': expected distinct seeds, got {seeds!r}")
    if not isinstance(runs, list) or len(runs) != len(seeds) or not all(isinstance(r, str) for r in runs):
        raise ValueError(f"{p}: field 'runs': expected {len(seeds)} folder names (one per seed), got {runs!r}")
    if len(set(runs)) != len(runs):
        raise ValueError(f"{p}: field 'runs': expected distinct folders (one per seed), got {runs!r}")
    for key in ("preset", "split"):
        if not isinstance(index.get(key), str):
            raise ValueError(f"{p}: field {key!r}: expected a string, got {index.get(key)!r}")
    return index
