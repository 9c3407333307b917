"""The gate of a debugging round: is this round not worse than the previous one, and how far is it from the paper?

``percepiano gate NEW --against OLD`` compares two rounds on the same split segment by segment
(:mod:`percepiano.paired`): per fold, ΔR² = R²(new) − R²(old) on the same test segments; the verdict's number
is the mean over folds (and seeds) of that difference, with an interval from a bootstrap over test-segment
clusters (``--cluster``, default ``excerpt``) and, for rounds of several seeds, over seeds. Three outcomes
(docs/debugging_rounds.md#the-verdict):

- **not worse** (exit :data:`EXIT_PASS`, 0): the interval excludes every drop larger than ``--margin``
  (default :data:`~percepiano.constants.DEFAULT_MARGIN`);
- **worse** (exit :data:`EXIT_FAIL`, 1): the whole interval lies below ``−margin``;
- **inconclusive** (exit :data:`EXIT_INCONCLUSIVE`, 3): neither; the verdict prints the minimum detectable
  effect at the rounds' seeds and segments and how many seeds would make the verdict conclusive.

A round is a ``percepiano cv`` run directory (or its results.json), a seeds directory (``cv --seeds``:
``seeds.json`` and one run directory per seed) or a cell of a ``percepiano round`` folder
(``ROUND/{preset}-{split}/``: one ``seed{S}/`` run directory per seed). Before any verdict: every results.json is checked
(:func:`percepiano.results.load_results`), both rounds must be on the same split with the same folds and, per
fold, the same test segment ids with the same labels, every fold's R² recomputed from its saved predictions
must equal the results.json's ``test_r2``, and the configurations' differences are listed in the verdict.

``--against targets`` (default) compares the round's ``mean_test_r2`` (mean over seeds) with the published
target of its preset and split (``percepiano/resources/regression_targets.json``): it fails (exit 1) when the
value is below the target by more than ``--tolerance`` (default: the targets file's ``tolerance``, 0.03, else
:data:`~percepiano.constants.DEFAULT_TOLERANCE`). The paper has no per-segment predictions, so there is no paired comparison: the
gate reports the measured mean with its bootstrap interval beside the target and says whether the target lies
inside it.

The metric is ``mean_test_r2`` (the paper's number: mean over folds of the test R²,
docs/original.md#reported-number), or with ``--label NAME`` that label's test R² (mean over folds).

Independently it says plainly whether the round beats the ``ridge`` baseline of the same split, taken from
``--baseline RESULTS.json``; by default from the ``baselines.ridge`` entry ``percepiano cv`` records in every
neural results.json (same split and folds; mean test R² only); for ``--label``, or when that entry is missing,
from the sibling run directories (same parent folder): the first ``*/results.json`` there whose preset is
``ridge`` and split is the run's. Not beating ridge fails the gate (exit 1) only with ``--require-baseline``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import paired
from .constants import (
    BASELINE_PRESET,
    BOOTSTRAP_SEED,
    DEFAULT_CLUSTERING,
    DEFAULT_LEVEL,
    DEFAULT_MARGIN,
    DEFAULT_RESAMPLES,
    DEFAULT_TOLERANCE,
    MAX_PLANNED_SEEDS,
    N_FOLDS,
    POWER,
    PROTOCOL_EPOCHS,
)
from .metrics import r2
from .results import (
    RESULTS,
    SEEDS,
    fold_dir,
    fold_values,
    label_index,
    label_names_of,
    load_predictions,
    load_results,
    load_seeds_index,
    load_targets,
    metric_value,
    resolve_label,
    seed_of_dir,
    sibling_results,
    target_for,
    target_tolerance,
)

# Exit codes of `percepiano gate` (2 is every command's "bad input", percepiano.cli).
EXIT_PASS, EXIT_FAIL, EXIT_INCONCLUSIVE = 0, 1, 3
# A fold's R² recomputed from its saved predictions (float32 in the npz) must match results.json's test_r2 to
# this: float32 rounding of the predictions moves R² by about 1e-7; anything larger means the predictions are
# not the ones the fold was scored on (a file from another run, a rerun fold).
PREDICTION_R2_TOLERANCE = 1e-5
# The same segment's label in the two rounds' prediction files (float32 copies of the dataset's labels).
LABEL_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------------------
# Rounds
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Round:
    """One debugging round: the results.json of each of its seeds (one for a single-seed run directory)."""

    dir: Path | None  # the run directory or seeds directory; None for a results dict given in memory
    runs: list[dict]
    seeds: list[int | None]
    name: str = ""
    notes: list[str] = field(default_factory=list)  # what loading it found, printed with the verdict

    @property
    def first(self) -> dict:
        return self.runs[0]

    @property
    def preset(self) -> str:
        return str(self.first.get("preset"))

    @property
    def split(self) -> str:
        return str(self.first.get("split"))

    @property
    def n_seeds(self) -> int:
        return len(self.runs)

    @property
    def fold_ids(self) -> list[int]:
        return [int(f.get("fold", i)) for i, f in enumerate(self.first["folds"])]

    def value(self, label: str | None = None) -> float:
        """The metric, mean over seeds (``mean_test_r2``, or one label's mean over folds)."""
        return float(np.mean([metric_value(r, label) for r in self.runs]))

    def seeds_text(self) -> str:
        known = [s for s in self.seeds if s is not None]
        if not known:
            return "seed unknown" if self.n_seeds == 1 else f"{self.n_seeds} seeds"
        return ("seed " if len(known) == 1 else "seeds ") + ", ".join(str(s) for s in known)


def load_round(path_or_results) -> Round:
    """A round from a run directory, its results.json, a seeds directory (or its seeds.json), a folder of
    ``seed{S}/`` run directories without an index (a cell of a ``percepiano round`` folder,
    ``ROUND/{preset}-{split}/``), or a results dict."""
    if isinstance(path_or_results, Mapping):
        res = load_results(path_or_results)
        d = Path(res["_path"]).parent if res.get("_path") else None
        return Round(d, [res], [res.get("seed")], d.name if d else "run")
    p = Path(path_or_results)
    seeds_file = p if p.name == SEEDS else p / SEEDS
    if seeds_file.is_file() and not (p.is_dir() and (p / RESULTS).is_file()):
        return _load_seeds_round(seeds_file)
    if p.is_dir() and not (p / RESULTS).is_file():
        found = _seed_folders(p)
        if found:
            rnd = _seeds_round(p, [s for s, _ in found], [name for _, name in found], seeds_file)
            unfinished = sorted(d.name for d in p.glob("seed*") if d.is_dir() and seed_of_dir(d.name) is not None
                                and not (d / RESULTS).is_file())
            if unfinished:  # a round cell with a seed still training: gated on the finished ones, and said so
                rnd.notes.append(f"seed folder(s) without results.json, not gated: {', '.join(unfinished)}")
            return rnd
        cells = sorted(c.parent.parent.name for c in p.glob(f"*/seed*/{RESULTS}"))
        if cells:
            raise ValueError(f"{p}: a folder of rounds' cells ({', '.join(sorted(set(cells)))}): gate one of them, "
                             f"e.g. {p / cells[0]}")
    res = load_results(p)
    d = Path(res["_path"]).parent
    return Round(d, [res], [res.get("seed")], d.name)


def _seed_folders(d: Path) -> list[tuple[int, str]]:
    """(seed, folder name) of the ``seed{S}/`` run directories in ``d``, by seed."""
    found = []
    for cand in d.glob(f"seed*/{RESULTS}"):
        seed = seed_of_dir(cand.parent.name)
        if seed is not None:
            found.append((seed, cand.parent.name))
    return sorted(found)


def _load_seeds_round(seeds_file: Path) -> Round:
    index = load_seeds_index(seeds_file)
    return _seeds_round(seeds_file.parent, index["seeds"], index["runs"], seeds_file, index)


def _seeds_round(d: Path, seeds: list[int], names: list[str], where_index: Path, index: Mapping | None = None) -> Round:
    """The round of the seed runs ``names`` (folders of ``d``); ``index``: what seeds.json says of them."""
    runs = [load_results(d / name) for name in names]
    first = runs[0]
    expected = index if index is not None else {"preset": first.get("preset"), "split": first.get("split")}
    source = str(where_index) if index is not None else f"{first['_path']} (the first seed folder of {d})"
    for seed, name, res in zip(seeds, names, runs):
        where = res["_path"]
        if res.get("seed") is not None and int(res["seed"]) != int(seed):
            what = f"{where_index} indexes it as seed {seed}" if index is not None else f"its folder is {name}"
            raise ValueError(f"{where}: field 'seed' is {res['seed']!r}, but {what}")
        for key in ("preset", "split"):
            if res.get(key) != expected[key]:
                raise ValueError(f"{where}: field {key!r} is {res.get(key)!r}, {source} says {expected[key]!r}")
        folds = [int(f.get("fold", i)) for i, f in enumerate(res["folds"])]
        if folds != [int(f.get("fold", i)) for i, f in enumerate(first["folds"])]:
            raise ValueError(f"{where}: folds {folds} differ from {first['_path']}'s: the seeds of a round run the same folds")
        diff = config_differences(first, res)
        if diff:
            raise ValueError(f"{where}: the seeds of a round repeat one configuration, but it differs from "
                             f"{first['_path']} in " + "; ".join(diff))
    return Round(d, runs, [int(s) for s in seeds], d.name)


def round_names(rounds: Sequence[Round]) -> list[str]:
    """Short distinct names for tables: the directory name, with its parents where two would be equal."""
    return distinct_names([list(r.dir.parts) if r.dir is not None else [r.name or f"run{i}"]
                           for i, r in enumerate(rounds)])


def distinct_names(parts: Sequence[Sequence[str]]) -> list[str]:
    """The last path part of each, with as many parents as make them distinct (``a/ridge``, ``b/ridge``)."""
    parts = [list(p) for p in parts]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def fold_directory(run_dir: Path, fold_entry: Mapping) -> Path | None:
    """The fold's directory as results.json names it (``dir``, relative to the run), if it is there."""
    d = run_dir / fold_entry["dir"] if fold_entry.get("dir") else None
    return d if d is not None and d.is_dir() else None


def round_predictions(rnd: Round) -> list[paired.FoldPredictions]:
    """Every fold's test predictions for every seed of ``rnd``, segments sorted by id. Refuses (``ValueError``,
    naming the file) a missing predictions file, duplicate or differing segment ids, and predictions whose R²
    is not the fold's ``test_r2``."""
    from .training import PREDICTIONS  # the file name training writes (imported here: training imports torch)

    per_fold: list[list[dict]] = [[] for _ in rnd.fold_ids]
    for res in rnd.runs:
        if not res.get("_path"):
            raise ValueError("a results dict without its run directory has no per-segment test predictions")
        run_dir = Path(res["_path"]).parent
        for k, entry in enumerate(res["folds"]):
            d = fold_directory(run_dir, entry)
            npz = (d / PREDICTIONS) if d is not None else run_dir / str(entry.get("dir", fold_dir(entry.get("fold", k)))) / PREDICTIONS
            if not npz.is_file():
                raise FileNotFoundError(
                    f"no per-segment test predictions: {npz} (the paired gate needs every fold's {PREDICTIONS}, "
                    "which `percepiano cv` writes)")
            p = load_predictions(npz)
            ids = p["segment_ids"]
            if len(set(ids)) != len(ids):
                dup = sorted({s for s in ids if ids.count(s) > 1})[:3]
                raise ValueError(f"{npz}: field 'segment_ids': duplicate ids {dup}")
            recomputed = r2(p["labels"], p["predictions"])
            if abs(recomputed - float(entry["test_r2"])) > PREDICTION_R2_TOLERANCE:
                raise ValueError(
                    f"{npz}: R² recomputed from the predictions is {recomputed:.6f}, but {res['_path']} field "
                    f"'folds[{k}].test_r2' is {float(entry['test_r2']):.6f}: the predictions are not the ones this fold was scored on")
            order = np.argsort(np.asarray(ids))
            per_fold[k].append({"path": npz, "ids": tuple(ids[i] for i in order), "labels": p["labels"][order],
                                "predictions": p["predictions"][order]})
    out = []
    for k, seeds in zip(rnd.fold_ids, per_fold):
        ref = seeds[0]
        for s in seeds[1:]:
            _check_same_segments(s["path"], s["ids"], s["labels"], ref["path"], ref["ids"], ref["labels"], f"fold {k}")
        out.append(paired.FoldPredictions(ref["ids"], ref["labels"], np.stack([s["predictions"] for s in seeds])))
    return out


def _check_same_segments(path_a, ids_a, labels_a, path_b, ids_b, labels_b, what: str) -> None:
    if ids_a != ids_b:
        only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
        raise ValueError(
            f"{path_a}: {what}: the test segment ids differ from {path_b} ({len(ids_a)} vs {len(ids_b)} segments; "
            f"only in the first: {only_a[:3]}{' ...' if len(only_a) > 3 else ''}; only in the second: "
            f"{only_b[:3]}{' ...' if len(only_b) > 3 else ''}): a paired comparison needs the same test segments")
    bad = np.nonzero(np.abs(labels_a - labels_b).max(axis=1) > LABEL_TOLERANCE)[0]
    if len(bad):
        raise ValueError(f"{path_a}: {what}: the labels of segment {ids_a[bad[0]]!r} (and {len(bad) - 1} more) differ "
                         f"from {path_b}: the rounds read different data")


def check_comparable(new: Round, old: Round, new_folds=None, old_folds=None) -> None:
    """Same split and folds; with predictions, per fold the same test segment ids and labels."""
    if new.split != old.split:
        raise ValueError(f"cannot compare across splits: this run ({_where(new)}) is {new.split!r}, the previous round "
                         f"({_where(old)}) is {old.split!r}")
    names_new, names_old = label_names_of(new.first), label_names_of(old.first)
    if names_new and names_old and names_new != names_old:  # the paired ΔR² subtracts label column by column
        raise ValueError(f"{_where(new)}: field 'label_names': {len(names_new)} labels {names_new[:3]}..., but "
                         f"{_where(old)} has {len(names_old)} {names_old[:3]}...: a paired comparison needs the same "
                         f"labels in the same order")
    if new.fold_ids != old.fold_ids:
        raise ValueError(f"{_where(new)}: folds {new.fold_ids}, but {_where(old)} has folds {old.fold_ids}: "
                         "a paired comparison needs the same folds")
    if new_folds is not None and old_folds is not None:
        for k, a, b in zip(new.fold_ids, new_folds, old_folds):
            _check_same_segments(_where(new), a.segment_ids, a.labels, _where(old), b.segment_ids, b.labels, f"fold {k}")


def _where(rnd: Round) -> str:
    return str(rnd.dir) if rnd.dir is not None else rnd.name


def _comparable_identity(res: Mapping) -> dict:
    """What makes a run the run it is, seed aside: its recorded identity, or for results.json files written
    before identities were recorded, the same fields from its config."""
    ident = res.get("identity")
    if not isinstance(ident, Mapping):
        cfg = res.get("config") or {}
        ident = {
            "preset": res.get("preset"),
            "model_config": cfg.get("model") if cfg.get("model") is not None else cfg.get("baseline"),
            "train_config": cfg.get("train"),
            "model_overrides": cfg.get("model_overrides") or None,
            "split": res.get("split"),
            "feature_set": res.get("feature_set"),
            "data": {"sha256": (res.get("data") or {}).get("sha256")},
        }
    ident = {k: v for k, v in ident.items() if k != "code"}  # the code version is provenance, listed apart
    if isinstance(ident.get("train_config"), Mapping):
        ident["train_config"] = {k: v for k, v in ident["train_config"].items() if k != "seed"}
    return ident


def config_differences(old: Mapping, new: Mapping) -> list[str]:
    """``field: old -> new`` for every configuration field (model, training, preset, feature set, data) that
    differs, the seed aside (seeds are listed with the rounds)."""
    from .provenance import identity_differences  # imported here: provenance imports torch

    diff = identity_differences(_comparable_identity(old), _comparable_identity(new))
    return [f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items()]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Planning:
    """How far the current seeds and segments see, and how many seeds a conclusive verdict needs."""

    mde: float  # minimum detectable effect with the interval's SE (seeds resampled where there are several)
    seed_var_sum: float | None  # training noise: variance of one seed's ΔR² (var_new + var_old, less 2 cov with paired seeds), None if unknown
    seed_var_from: str  # how seed_var_sum was obtained
    mde_with_training: float | None  # the MDE at the current seeds, training noise included
    seeds_needed: int | None  # seeds per round for MDE <= margin; None: not reachable (see why)
    why: str  # one sentence on seeds_needed
    distance: float = math.nan  # |ΔR² + margin|: how far the estimate lies from the decision boundary
    resolve_seeds: int | None = None  # seeds per round for MDE <= distance (None: not reachable)


@dataclass
class GateResult:
    metric: str  # "mean_test_r2" or "test_r2[<label>]"
    run: dict  # the first (or only) seed's results.json of the gated round
    value: float
    fold_values: list[float]
    reference_name: str  # "published han on composition" or "previous round <name>"
    reference: float | None
    allowed_drop: float
    allowed_from: str  # where allowed_drop came from
    passed: bool
    notes: list[str] = field(default_factory=list)
    baseline: dict | None = None  # {"path", "preset", "value", "beaten"}
    baseline_failed: bool = False
    verdict: str = ""  # "pass"/"fail" (targets) or one of paired.VERDICTS (a previous round)
    round: Round | None = None
    reference_round: Round | None = None
    names: tuple[str, str] = ("", "")  # (this round, the reference round) in tables
    comparison: paired.PairedComparison | None = None
    interval: paired.RoundInterval | None = None  # --against targets, when predictions were saved
    label_names: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    planning: Planning | None = None

    @property
    def delta(self) -> float | None:
        return None if self.reference is None else self.value - self.reference

    @property
    def exit_code(self) -> int:
        if self.baseline_failed or self.verdict in ("fail", "worse"):
            return EXIT_FAIL
        return EXIT_INCONCLUSIVE if self.verdict == "inconclusive" else EXIT_PASS


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
    margin: float = DEFAULT_MARGIN,
    clustering: str = DEFAULT_CLUSTERING,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    training_sd: float | None = None,
) -> GateResult:
    """Gate the round ``results`` (run directory, results.json, seeds directory or results dict) against the
    targets or a previous round (``against``: a path or a loaded :class:`Round`); see the module doc."""
    for option, value, ok, expected in (
        ("--tolerance", tolerance, tolerance is None or tolerance >= 0, "a number >= 0"),
        ("--training-sd", training_sd, training_sd is None or training_sd >= 0, "a number >= 0"),
        ("--level", level, 0 < level < 1, "a number between 0 and 1"),
        ("--resamples", resamples, isinstance(resamples, int) and resamples >= 1, "an integer >= 1"),
    ):
        if not ok:  # checked here, whatever the mode: some are read only when predictions were saved
            raise ValueError(f"{option}: expected {expected}, got {value!r}")
    if against == "targets" and training_sd is not None:
        raise ValueError("--training-sd applies to --against OLD_RUN (the seeds-needed estimate of a comparison)")
    rnd = results if isinstance(results, Round) else load_round(results)
    run = rnd.first
    name = resolve_label(run, label) if label is not None else None
    metric = "mean_test_r2" if name is None else f"test_r2[{name}]"
    notes = _protocol_notes(rnd)
    if against == "targets":
        result = _against_targets(rnd, name, metric, tolerance, targets_file, clustering, resamples, level, notes)
    else:
        if tolerance is not None:
            raise ValueError("--tolerance applies to --against targets; against a previous round the allowed drop is --margin")
        old = against if isinstance(against, Round) else load_round(against)
        result = _against_round(rnd, old, name, metric, margin, clustering, resamples, level, training_sd, notes)
    _compare_baseline(result, run, name, baseline, require_baseline)
    return result


def _protocol_notes(rnd: Round) -> list[str]:
    run = rnd.first
    notes = list(rnd.notes)
    n_folds = len(run["folds"])
    if n_folds < N_FOLDS:
        notes.append(f"this run has {n_folds} fold(s), the original protocol {N_FOLDS}: not comparable with the paper")
    if run.get("epochs") is not None and int(run["epochs"]) < PROTOCOL_EPOCHS:
        notes.append(f"this run trained {run['epochs']} epochs, the original protocol {PROTOCOL_EPOCHS}")
    limit = ((run.get("config") or {}).get("train") or {}).get("limit_segments")
    if limit is not None:
        notes.append(f"this run used limit_segments={limit}: trained and tested on a subset of each split")
    return notes


def _label_column(folds: list[paired.FoldPredictions], run: Mapping, name: str | None) -> list[paired.FoldPredictions]:
    if name is None:
        return folds
    j = label_index(run, name)
    return [paired.FoldPredictions(f.segment_ids, f.labels[:, j:j + 1], f.predictions[:, :, j:j + 1]) for f in folds]


def _fold_means(rnd: Round, name: str | None) -> list[float]:
    return np.mean([fold_values(r, name) for r in rnd.runs], axis=0).tolist()


def _against_targets(rnd, name, metric, tolerance, targets_file, clustering, resamples, level, notes) -> GateResult:
    split, preset = rnd.split, rnd.preset
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
    value = rnd.value(name)
    passed = value >= reference - allowed - 1e-12  # equal values pass; tiny float noise ignored
    interval = None
    if rnd.dir is not None:
        try:
            folds = round_predictions(rnd)
        except FileNotFoundError as exc:
            notes.append(f"no interval: {exc}")
        else:
            interval = paired.round_interval(_label_column(folds, rnd.first, name), clustering,
                                             resamples=resamples, level=level)
    if rnd.n_seeds == 1 and interval is not None and not _deterministic(rnd):
        notes.append("one seed: the interval covers test-segment sampling only; a second seed would show the training noise")
    if interval is not None and min(interval.clusters) < paired.MIN_RELIABLE_CLUSTERS:
        notes.append(f"only {' x '.join(map(str, interval.clusters))} {clustering} clusters in the test set: too few "
                     f"for a trustworthy bootstrap interval (fewer than {paired.MIN_RELIABLE_CLUSTERS})")
    return GateResult(
        metric=metric, run=rnd.first, value=value, fold_values=_fold_means(rnd, name),
        reference_name=f"published {preset} on {split}", reference=reference, allowed_drop=allowed,
        allowed_from=allowed_from, passed=passed, notes=notes, verdict="pass" if passed else "fail", round=rnd,
        names=(rnd.name, "published"), interval=interval, label_names=label_names_of(rnd.first),
    )


def _against_round(new, old, name, metric, margin, clustering, resamples, level, training_sd, notes) -> GateResult:
    if margin is None or not margin >= 0:
        raise ValueError(f"--margin: expected a number >= 0, got {margin!r}")
    check_comparable(new, old)
    if old.preset != new.preset:
        notes.append(f"presets differ: this run is {new.preset!r}, the previous round is {old.preset!r}")
    old_name = resolve_label(old.first, name) if name is not None else None
    new_folds, old_folds = round_predictions(new), round_predictions(old)
    check_comparable(new, old, new_folds, old_folds)
    same_seeds = new.n_seeds > 1 and None not in new.seeds and new.seeds == old.seeds
    cmp = paired.paired_comparison(_label_column(new_folds, new.first, name), _label_column(old_folds, old.first, old_name),
                                   clustering, resamples=resamples, level=level, paired_seeds=same_seeds)
    verdict = paired.decide(cmp.overall, margin)
    names = tuple(round_names([new, old]))
    single = [n for n, r in zip(names, (new, old)) if r.n_seeds == 1 and not _deterministic(r)]
    if single:
        which = "either round" if len(single) == 2 else f"round {single[0]}"
        notes.append(f"one seed in {which}: the interval covers test-segment sampling only, not training noise; "
                     "a seed is the unit of replication of training noise, and one seed cannot show it")
    if min(cmp.clusters) < paired.MIN_RELIABLE_CLUSTERS:
        notes.append(f"only {' x '.join(map(str, cmp.clusters))} {clustering} clusters in the test set: too few for a "
                     f"trustworthy bootstrap interval (fewer than {paired.MIN_RELIABLE_CLUSTERS})")
    return GateResult(
        metric=metric, run=new.first, value=new.value(name), fold_values=_fold_means(new, name),
        reference_name=f"previous round {names[1]}", reference=old.value(old_name), allowed_drop=float(margin),
        allowed_from="--margin", passed=verdict == "not worse", notes=notes, verdict=verdict, round=new,
        reference_round=old, names=names, comparison=cmp,
        label_names=[name] if name is not None else label_names_of(new.first),
        differences=config_differences(old.first, new.first),
        planning=plan(cmp, margin, training_sd, _deterministic(new) and _deterministic(old)),
    )


def _deterministic(rnd: Round) -> bool:
    """A baseline round (``mean``, ``ridge``) trains nothing: the same data give the same numbers, no seed noise."""
    return rnd.first.get("kind") == "baseline"


def plan(cmp: paired.PairedComparison, margin: float, training_sd: float | None = None,
         deterministic: bool = False) -> Planning:
    """The minimum detectable effect at the rounds' seeds and segments and the seeds per round a conclusive
    verdict needs. The training noise (the variance of one seed's ΔR²: ``var_new + var_old`` of one seed's mean
    R², less twice their covariance with paired seeds) is measured from the seeds where a round has several (with
    paired seeds as the variance of the per-seed ΔR²); else from ``training_sd`` (the standard deviation of one fold model's test R²
    across seeds: var = 2 sd² / folds); else from the spread of the per-fold ΔR² (each fold trains both rounds
    anew, so var_k(ΔR²_k) ≈ 2 sd², ddof 1). ``deterministic``: both rounds are baselines (no training noise)."""
    level, k = cmp.level, cmp.n_folds
    measured = [v for v in (cmp.seed_var_new, cmp.seed_var_old) if v is not None]
    if deterministic:
        var_sum, source = 0.0, "none: both rounds are deterministic baselines"
    elif training_sd is not None:
        var_sum, source = 2 * float(training_sd) ** 2 / k, f"--training-sd {training_sd:g} (one fold model's test R² sd across seeds)"
    elif cmp.seed_delta_var is not None:
        var_sum = cmp.seed_delta_var
        source = (f"measured from the {cmp.n_seeds_new} paired seeds: variance of the per-seed ΔR² "
                  f"{cmp.seed_delta_var:.3g} (var_new + var_old = {sum(measured):.3g})")
    elif len(measured) == 2:
        var_sum, source = sum(measured), f"measured from the seeds ({cmp.n_seeds_new} and {cmp.n_seeds_old})"
    elif measured:
        var_sum, source = 2 * measured[0], "measured from the seeds of one round, assumed equal in the other"
    elif cmp.per_fold_delta_var is not None:
        var_sum = cmp.per_fold_delta_var / k
        source = f"estimated from the spread of the per-fold ΔR² (sd {math.sqrt(cmp.per_fold_delta_var):.4f} over {k} folds)"
    else:
        var_sum, source = None, "unknown (one fold, one seed: give --training-sd)"
    mde = paired.minimum_detectable_effect(cmp.overall.se, level)
    distance = abs(cmp.overall.value + margin)
    if var_sum is None:
        return Planning(mde, None, source, None, None, "the training noise is unknown", distance)
    # the seed part already in the interval where a round has several seeds; the estimated one where it has one
    missing = sum(var_sum / 2 / s for s, v in ((cmp.n_seeds_new, cmp.seed_var_new), (cmp.n_seeds_old, cmp.seed_var_old)) if v is None)
    mde_training = paired.minimum_detectable_effect(math.sqrt(cmp.overall.se ** 2 + missing), level)
    need = paired.seeds_needed(cmp.se_test, var_sum, margin, level)
    if need is not None:
        why = (f"{need} seed(s) per round bring the minimum detectable effect to the margin {margin:g} or below: a round "
               f"truly equal to the previous one is then called not worse, and one worse by {2 * margin:g} called worse, "
               f"{POWER:.0%} of the time")
    elif margin <= 0:
        why = "a margin of 0 is never reachable: every interval has a width"
    elif paired.minimum_detectable_effect(cmp.se_test, level) >= margin:
        why = (f"the test segments alone give a minimum detectable effect of "
               f"{paired.minimum_detectable_effect(cmp.se_test, level):.4f} >= margin {margin:g}: no number of seeds suffices")
    else:
        why = f"more than {MAX_PLANNED_SEEDS} seeds per round would be needed"
    return Planning(mde, var_sum, source, mde_training, need, why, distance,
                    paired.seeds_needed(cmp.se_test, var_sum, distance, level))


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
        base_path = baseline if baseline is not None else find_baseline(_outer_results(result, run))
        if base_path is None:
            why = " with per-label R²" if name is not None and recorded is not None else ""
            result.notes.append(
                f"no {BASELINE_PRESET} baseline{why} found for split {split!r} (pass --baseline RESULTS.json, or put the "
                f"`percepiano cv --preset {BASELINE_PRESET}` run directory next to this one)"
            )
            result.baseline_failed = require_baseline
            return
        base = load_results(base_path)
        where = base.get("_path", base_path)
        if base.get("preset") != BASELINE_PRESET:
            raise ValueError(f"{where}: field 'preset': a baseline is a `percepiano cv --preset {BASELINE_PRESET}` "
                             f"run, this is {base.get('preset')!r}")
        if base.get("split") != run.get("split"):
            raise ValueError(f"{where}: field 'split': the baseline is on split {base.get('split')!r}, this run on "
                             f"{split!r}")
        base_folds, run_folds = (sorted(int(f["fold"]) for f in r["folds"]) for r in (base, run))
        if base_folds != run_folds:
            if baseline is not None:
                raise ValueError(f"{where}: field 'folds': the baseline covers folds {base_folds}, this run "
                                 f"{run_folds}: a baseline is compared on the same folds")
            result.notes.append(f"the {BASELINE_PRESET} run next to this one ({where}) covers folds {base_folds}, "
                                f"this run {run_folds}: not compared (a baseline is compared on the same folds)")
            result.baseline_failed = require_baseline
            return
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


def _outer_results(result: GateResult, run: dict) -> dict:
    """Where to look for sibling baselines: next to the seeds directory of a seeds round, else next to the run."""
    rnd = result.round
    if rnd is not None and rnd.n_seeds > 1 and rnd.dir is not None:
        return {"_path": str(rnd.dir / RESULTS), "split": run.get("split")}
    return run


# ---------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------
def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _iv(e: paired.Estimate) -> str:
    return f"[{e.low:+.4f}, {e.high:+.4f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown pipe table with columns padded to their widest cell (first column left-aligned)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return [line(header), sep] + [line(r) for r in rows]


def verdict_line(r: GateResult) -> str:
    """The one-line verdict (first line of ``percepiano gate``'s output and of the report)."""
    if r.comparison is not None:
        c = r.comparison.overall
        lvl = f"{r.comparison.level:.0%}"
        rel = {"not worse": f"excludes a drop larger than the margin {r.allowed_drop:g}",
               "worse": f"lies below -{r.allowed_drop:g}, the margin",
               "inconclusive": f"straddles -{r.allowed_drop:g}, the margin"}[r.verdict]
        text = (f"{r.verdict.upper()} (exit {r.exit_code}): {r.names[0]} vs {r.names[1]}, {r.metric} ΔR² {c.value:+.4f}, "
                f"{lvl} interval {_iv(c)} {rel}")
    else:
        text = (f"{'PASS' if r.passed else 'FAIL'} (exit {r.exit_code}): {r.metric} {_fmt(r.value)} against the "
                f"{r.reference_name} {_fmt(r.reference)} (allowed drop {_fmt(r.allowed_drop)})")
        if r.interval is not None:
            iv = r.interval.overall
            where = "inside" if iv.contains(r.reference) else ("above" if r.reference > iv.high else "below")
            text += f"; target {where} the {r.interval.level:.0%} interval [{iv.low:.4f}, {iv.high:.4f}]"
    if r.baseline_failed:  # the gate fails whatever the comparison says: said first
        text = ("FAIL (exit 1): --require-baseline and the run does not beat the baseline (or none was found); "
                f"the comparison alone: {text.replace(f' (exit {r.exit_code})', '', 1)}")
    return text


def format_gate(r: GateResult) -> str:
    """The verdict, the comparison tables and the notes printed by ``percepiano gate``."""
    rnd = r.round
    title = f"{rnd.preset} on {rnd.split}" if rnd is not None else f"{r.run.get('preset')} on {r.run.get('split')}"
    lines = [f"gate: {title}", f"verdict: {verdict_line(r)}", ""]
    lines += _format_paired(r) if r.comparison is not None else _format_targets(r)
    if r.baseline is not None and not r.baseline["beaten"]:
        lines.append(
            f"THIS RUN DOES NOT BEAT THE {str(r.baseline['preset']).upper()} BASELINE of the same split "
            f"({_fmt(r.value)} <= {_fmt(r.baseline['value'])}, {r.baseline['path']})"
        )
    for note in r.notes:
        lines.append(f"note: {note}")
    if r.comparison is None:
        if r.passed:
            lines.append(f"PASS: {r.metric} {_fmt(r.value)} is within {_fmt(r.allowed_drop)} of {_fmt(r.reference)} or above")
        else:
            lines.append(f"FAIL: {r.metric} {_fmt(r.value)} is {_fmt(r.reference - r.value)} below {_fmt(r.reference)}, "
                         f"more than the allowed {_fmt(r.allowed_drop)}")
    if r.baseline_failed:
        lines.append("FAIL: --require-baseline is set and the run does not beat the baseline (or none was found)")
    return "\n".join(lines)


def _baseline_row(r: GateResult, name: str) -> list[str] | None:
    if r.baseline is None:
        return None
    b = r.baseline
    return [f"vs {b['preset']} baseline", name, _fmt(r.value), _fmt(b["value"]), _fmt(r.value - b["value"], True),
            "must beat", "beats" if b["beaten"] else "BELOW"]


def _format_targets(r: GateResult) -> list[str]:
    header = ["metric", "run", "this run", "reference", "delta", "allowed drop", "verdict"]
    rows = [[r.metric, r.names[0], _fmt(r.value), _fmt(r.reference), _fmt(r.delta, True), _fmt(r.allowed_drop),
             "PASS" if r.passed else "FAIL"]]
    base = _baseline_row(r, r.names[0])
    if base:
        rows.append(base)
    lines = _table(header, rows)
    spread = float(np.std(r.fold_values)) if len(r.fold_values) > 1 else 0.0
    lines += ["", f"folds: {', '.join(_fmt(v) for v in r.fold_values)} (std {spread:.4f})",
              f"reference: {r.reference_name}; allowed drop from {r.allowed_from}"]
    if r.interval is not None:
        iv = r.interval
        lines.append(f"measured {_fmt(iv.overall.value)}, {iv.level:.0%} interval [{iv.overall.low:.4f}, "
                     f"{iv.overall.high:.4f}] ({_bootstrap_text(iv.resamples, iv.clusters, iv.clustering, iv.n_segments)}); "
                     f"target {_fmt(r.reference)} is {'inside' if iv.overall.contains(r.reference) else 'outside'} it")
    return lines


def _bootstrap_text(resamples: int, clusters: Sequence[int], clustering: str, n_segments: int) -> str:
    counts = " x ".join(str(c) for c in clusters)
    return (f"bootstrap: {resamples} resamples (RNG seed {BOOTSTRAP_SEED}) of {counts} {clustering} clusters, "
            f"{n_segments} test segments")


def _format_paired(r: GateResult) -> list[str]:
    c = r.comparison
    new, old = r.names
    lvl = f"{c.level:.0%} interval"
    header = ["metric", "run", "seeds", r.metric, f"ΔR² vs {old}", lvl, "margin", "verdict"]
    rows = [
        [r.metric, old, str(c.n_seeds_old), _fmt(c.old_value), "", "", "", "reference"],
        [r.metric, new, str(c.n_seeds_new), _fmt(c.new_value), _fmt(c.overall.value, True), _iv(c.overall),
         f"{r.allowed_drop:g}", r.verdict],
    ]
    lines = _table(header, rows)
    base = _baseline_row(r, new)
    if base:
        lines += ["", *_table(["baseline", "run", "this run", "baseline R²", "delta", "rule", "verdict"], [base])]
    fold_rows = [[str(k), new, _fmt(e.value, True), _iv(e)] for k, e in zip(r.round.fold_ids, c.per_fold)]
    lines += ["", f"per fold (the same {c.n_segments} test segments in both rounds):"]
    lines += _table(["fold", "run", f"ΔR² vs {old}", lvl], fold_rows)
    worse_labels = [f"{n} {e.value:+.3f}" for n, e in zip(r.label_names, c.per_label) if e.high < -r.allowed_drop]
    if len(r.label_names) > 1:
        lines.append(f"labels whose interval lies below -margin: {'; '.join(worse_labels) if worse_labels else 'none'}")
    if c.paired_seeds:
        seeds = f"the rounds' {c.n_seeds_new} common seeds resampled as pairs"
    elif max(c.n_seeds_new, c.n_seeds_old) > 1:
        seeds = f"seeds resampled within each round ({c.n_seeds_new} and {c.n_seeds_old})"
    else:
        seeds = "one seed per round"
    lines += [
        f"{_bootstrap_text(c.resamples, c.clusters, c.clustering, c.n_segments)}, shared by the {c.n_folds} fold(s); {seeds}",
        f"rounds: {new} ({r.round.seeds_text()}), {old} ({r.reference_round.seeds_text()})",
        "config differences (old -> new): " + ("; ".join(r.differences) if r.differences else "none (same configuration)"),
    ]
    code = [(x.first.get("identity") or {}).get("code", {}).get("commit") or x.first.get("git_commit")
            for x in (r.reference_round, r.round)]
    if code[0] != code[1] and any(code):
        lines.append(f"code (old -> new): {str(code[0])[:12]} -> {str(code[1])[:12]}")
    p = r.planning
    if p is not None:
        lines.append(f"minimum detectable effect: {p.mde:.4f} (= {paired.z_sum(c.level):.2f} x SE {c.overall.se:.4f}, power "
                     f"{POWER:.0%}) at {c.n_seeds_new} and {c.n_seeds_old} seed(s) and {c.n_segments} segments; "
                     f"a true drop of {paired.detectable_drop(c.overall, r.allowed_drop):.4f} or more is called worse "
                     f"{POWER:.0%} of the time")
        lines.append(f"training noise: {p.seed_var_from}"
                     + (f"; minimum detectable effect with it: {p.mde_with_training:.4f}" if p.mde_with_training is not None else ""))
        if r.verdict == "inconclusive":
            lines.append(f"seeds needed: {p.why}")
            resolve = (f"{p.resolve_seeds} seed(s) per round" if p.resolve_seeds is not None
                       else "more seeds and test segments than any run has")
            lines.append(f"this estimate lies {p.distance:.4f} from -margin: resolving a true drop that close to the "
                         f"margin ({POWER:.0%} power) needs {resolve}")
    return lines


def gate_json(r: GateResult) -> dict:
    """The verdict as a JSON-ready dict (``percepiano gate --json``)."""
    out = {
        "verdict": r.verdict, "exit_code": r.exit_code, "metric": r.metric, "value": r.value, "reference": r.reference,
        # passed: the gate as a whole (the exit code 0), --require-baseline included; the comparison alone is
        # "verdict" (and "comparison_passed")
        "reference_name": r.reference_name, "allowed_drop": r.allowed_drop, "passed": r.exit_code == EXIT_PASS,
        "comparison_passed": r.passed,
        "baseline": r.baseline, "baseline_failed": r.baseline_failed, "notes": r.notes,
        "runs": list(r.names), "fold_values": r.fold_values,
    }

    def est(e: paired.Estimate) -> dict:
        return {"value": e.value, "low": e.low, "high": e.high, "se": e.se}

    if r.interval is not None:
        out["interval"] = {**est(r.interval.overall), "level": r.interval.level, "target_inside": r.interval.overall.contains(r.reference)}
    c = r.comparison
    if c is not None:
        out.update({
            "margin": r.allowed_drop, "delta": est(c.overall), "level": c.level, "clustering": c.clustering,
            "clusters": list(c.clusters), "segments": c.n_segments, "resamples": c.resamples,
            "seeds": {"new": r.round.seeds, "old": r.reference_round.seeds},
            "per_fold": {str(k): est(e) for k, e in zip(r.round.fold_ids, c.per_fold)},
            "per_label": {n: est(e) for n, e in zip(r.label_names, c.per_label)},
            "config_differences": r.differences,
        })
        if r.planning is not None:
            p = r.planning
            out["planning"] = {"minimum_detectable_effect": p.mde, "with_training_noise": p.mde_with_training,
                               "detectable_drop": paired.detectable_drop(c.overall, r.allowed_drop),
                               "training_noise_variance": p.seed_var_sum, "training_noise_from": p.seed_var_from,
                               "seeds_needed": p.seeds_needed, "why": p.why, "distance_to_margin": p.distance,
                               "seeds_to_resolve": p.resolve_seeds}
    return out
