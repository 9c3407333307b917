"""The gate of a debugging round: is this run at least as good as the paper, or as the previous round?

``percepiano gate RESULTS.json`` compares a ``percepiano cv`` result with a reference and fails (exit 1) when

- ``--against targets`` (default): the metric is below the published target of the run's preset and split
  (``percepiano/resources/regression_targets.json``) by more than ``--tolerance`` (default: the targets file's
  ``tolerance``, 0.03, else :data:`DEFAULT_TOLERANCE`);
- ``--against OTHER_RESULTS.json`` (a previous round): the metric is below the previous round's by more than
  that round's fold spread (population std over its folds of the same metric, the
  ``fold_std`` of results.json); ``--tolerance`` replaces the spread.

The metric is ``mean_test_r2`` (the paper's number: mean over folds of the test R²,
docs/original.md#reported-number), or with ``--label NAME`` the mean over folds of that label's test R².

Independently it says plainly whether the run beats the ``ridge`` baseline of the same split, taken from
``--baseline RESULTS.json``; by default from the ``baselines.ridge`` entry ``percepiano cv`` records in every
neural results.json (same split and folds; mean test R² only); for ``--label``, or when that entry is missing,
from the sibling run directories (same parent folder): the first ``*/results.json`` there whose preset is
``ridge`` and split is the run's. Not beating ridge fails the
gate only with ``--require-baseline``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from .constants import N_FOLDS, PROTOCOL_EPOCHS
from .results import (
    fold_spread,
    fold_values,
    load_results,
    load_targets,
    metric_value,
    resolve_label,
    sibling_results,
    target_for,
    target_tolerance,
)

# Allowed shortfall below a published target when neither --tolerance nor the targets file gives one.
DEFAULT_TOLERANCE = 0.02
# The baseline a run must beat (the stronger of constants.BASELINES).
BASELINE_PRESET = "ridge"


@dataclass
class GateResult:
    metric: str  # "mean_test_r2" or "test_r2[<label>]"
    run: dict
    value: float
    fold_values: list[float]
    reference_name: str  # "target han/composition" or the previous round's path
    reference: float | None
    allowed_drop: float
    allowed_from: str  # where allowed_drop came from
    passed: bool
    notes: list[str] = field(default_factory=list)
    baseline: dict | None = None  # {"path", "value", "beaten"}
    baseline_failed: bool = False

    @property
    def delta(self) -> float | None:
        return None if self.reference is None else self.value - self.reference

    @property
    def exit_code(self) -> int:
        return 0 if self.passed and not self.baseline_failed else 1


def find_baseline(results: Mapping, preset: str = BASELINE_PRESET) -> Path | None:
    """Default baseline: a sibling run directory of ``results`` whose results.json has ``preset`` and the same split."""
    path = results.get("_path")
    if not path:
        return None
    found = sibling_results([Path(path).parent], [preset], [results.get("split")])
    return Path(found[0]["_path"]) if found else None


def gate(
    results,
    against: str = "targets",
    *,
    tolerance: float | None = None,
    label: str | None = None,
    baseline=None,
    targets_file=None,
    require_baseline: bool = False,
) -> GateResult:
    """Compare ``results`` (path, run dir or dict) with the targets or a previous round; see the module doc."""
    run = load_results(results)
    split, preset = str(run.get("split")), str(run.get("preset"))
    name = resolve_label(run, label) if label is not None else None
    metric = "mean_test_r2" if name is None else f"test_r2[{name}]"
    value = metric_value(run, name)
    notes: list[str] = []

    if against == "targets":
        targets = load_targets(targets_file)
        reference = target_for(targets, split, preset, name)
        if reference is None:
            what = f"per-label target for {name!r}" if name else "target"
            raise ValueError(
                f"the targets file has no {what} for preset {preset!r} on split {split!r}; "
                "gate against a previous round's results.json instead"
            )
        file_tol = target_tolerance(targets, split, preset)
        if tolerance is not None:
            allowed, allowed_from = float(tolerance), "--tolerance"
        elif file_tol is not None:
            allowed, allowed_from = float(file_tol), "the targets file"
        else:
            allowed, allowed_from = DEFAULT_TOLERANCE, "default tolerance"
        ref_name = f"published {preset} on {split}"
    else:
        prev = load_results(against)
        if prev.get("split") != run.get("split"):
            raise ValueError(f"cannot compare across splits: this run is {split!r}, the previous round is {prev.get('split')!r}")
        if prev.get("preset") != run.get("preset"):
            notes.append(f"presets differ: this run is {preset!r}, the previous round is {prev.get('preset')!r}")
        prev_name = resolve_label(prev, name) if name is not None else None
        reference = metric_value(prev, prev_name)
        if tolerance is not None:
            allowed, allowed_from = float(tolerance), "--tolerance"
        else:
            allowed = fold_spread(prev, prev_name)
            allowed_from = f"previous round's fold spread (population std over {len(prev['folds'])} folds)"
            if len(prev["folds"]) < 2:
                notes.append("the previous round has a single fold: its spread is 0, any drop fails")
        ref_name = f"previous round {prev.get('_path', '<dict>')}"

    passed = value >= reference - allowed - 1e-12  # equal runs pass; tiny float noise ignored
    n_folds = len(run["folds"])
    if n_folds < N_FOLDS:
        notes.append(f"this run has {n_folds} fold(s), the original protocol {N_FOLDS}: not comparable with the paper")
    if run.get("epochs") is not None and int(run["epochs"]) < PROTOCOL_EPOCHS:
        notes.append(f"this run trained {run['epochs']} epochs, the original protocol {PROTOCOL_EPOCHS}")
    limit = ((run.get("config") or {}).get("train") or {}).get("limit_segments")
    if limit is not None:
        notes.append(f"this run used limit_segments={limit}: trained and tested on a subset of each split")

    result = GateResult(
        metric=metric, run=run, value=value, fold_values=fold_values(run, name).tolist(),
        reference_name=ref_name, reference=reference, allowed_drop=allowed, allowed_from=allowed_from,
        passed=passed, notes=notes,
    )

    _compare_baseline(result, run, name, baseline, require_baseline)
    return result


def _compare_baseline(result: GateResult, run: dict, name: str | None, baseline, require_baseline: bool) -> None:
    """Fill ``result.baseline``: from ``baseline`` (a results.json), else the ridge numbers ``percepiano cv``
    recorded in the run's own results.json (mean test R² only), else a sibling ridge run directory."""
    split = str(run.get("split"))
    if run.get("preset") == BASELINE_PRESET and baseline is None:
        result.notes.append(f"this run is the {BASELINE_PRESET} baseline itself")
        return
    recorded = (run.get("baselines") or {}).get(BASELINE_PRESET)
    if baseline is None and recorded is not None and name is None:
        bval, source = float(recorded["mean_test_r2"]), f"recorded in {run.get('_path', 'results.json')} (baselines.{BASELINE_PRESET})"
    else:
        base_path = baseline if baseline is not None else find_baseline(run)
        if base_path is None:
            why = " with per-label R²" if name is not None and recorded is not None else ""
            result.notes.append(
                f"no {BASELINE_PRESET} baseline{why} found for split {split!r} (pass --baseline RESULTS.json, or put the "
                f"`percepiano cv --preset {BASELINE_PRESET}` run directory next to this one)"
            )
            result.baseline_failed = require_baseline
            return
        base = load_results(base_path)
        if base.get("split") != run.get("split"):
            raise ValueError(f"the baseline is on split {base.get('split')!r}, this run on {split!r}")
        bval = metric_value(base, resolve_label(base, name) if name is not None else None)
        source = str(base.get("_path", "<dict>"))
    limit = ((run.get("config") or {}).get("train") or {}).get("limit_segments")
    if limit is not None and baseline is None and name is None and recorded is not None:
        result.notes.append(
            f"this run used limit_segments={limit}; the recorded {BASELINE_PRESET} baseline was fitted and tested on the "
            "full splits, so the comparison is only indicative"
        )
    beaten = result.value > bval
    result.baseline = {"path": source, "preset": BASELINE_PRESET, "value": bval, "beaten": beaten}
    result.baseline_failed = require_baseline and not beaten
    return result


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown pipe table with columns padded to their widest cell (first column left-aligned)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return [line(header), sep] + [line(r) for r in rows]


def format_gate(r: GateResult) -> str:
    """The comparison table and verdict lines printed by ``percepiano gate``."""
    run = r.run
    spread = float(np.std(r.fold_values)) if len(r.fold_values) > 1 else 0.0
    header = ["metric", "this run", "reference", "delta", "allowed drop", "verdict"]
    rows = [[r.metric, _fmt(r.value), _fmt(r.reference), _fmt(r.delta, True), _fmt(r.allowed_drop),
             "PASS" if r.passed else "FAIL"]]
    if r.baseline is not None:
        b = r.baseline
        rows.append([f"vs {b['preset']} baseline", _fmt(r.value), _fmt(b["value"]), _fmt(r.value - b["value"], True),
                     "must beat", "beats" if b["beaten"] else "BELOW"])
    lines = [f"gate: {run.get('preset')} on {run.get('split')} ({run.get('_path', '<dict>')})", ""]
    lines += _table(header, rows)
    lines += [
        "",
        f"folds: {', '.join(_fmt(v) for v in r.fold_values)} (std {spread:.4f})",
        f"reference: {r.reference_name}; allowed drop from {r.allowed_from}",
    ]
    if r.baseline is not None and not r.baseline["beaten"]:
        lines.append(
            f"THIS RUN DOES NOT BEAT THE {str(r.baseline['preset']).upper()} BASELINE of the same split "
            f"({_fmt(r.value)} <= {_fmt(r.baseline['value'])}, {r.baseline['path']})"
        )
    for note in r.notes:
        lines.append(f"note: {note}")
    if r.passed:
        lines.append(f"PASS: {r.metric} {_fmt(r.value)} is within {_fmt(r.allowed_drop)} of {_fmt(r.reference)} or above")
    else:
        lines.append(
            f"FAIL: {r.metric} {_fmt(r.value)} is {_fmt(r.reference - r.value)} below {_fmt(r.reference)}, "
            f"more than the allowed {_fmt(r.allowed_drop)}"
        )
    if r.baseline_failed:
        lines.append("FAIL: --require-baseline is set and the run does not beat the baseline (or none was found)")
    return "\n".join(lines)
