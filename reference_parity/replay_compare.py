"""Our training run against the original's, step by step: the replay fixtures (``fixtures/replay/``).

Recorded side: reads what :mod:`reference_parity.capture_training` recorded from the original (per step: loss,
gradient norm before clipping, learning rate; the train set's visiting order; a sha256 of every initial weight;
the epoch's valid / test loss and R²) and runs ours with ``TrainConfig(rng="original")`` on the same data, fold,
seed and dtype (:func:`run_ours`). :func:`compare_case` reports per quantity the maximum error, its tolerance
(:mod:`reference_parity.tolerances`) and the first step where the error exceeds it; ``percepiano parity
--training`` prints it (:func:`run_all`).
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from percepiano import replay
from percepiano.checkpoints import set_seed
from percepiano.config import PRESET_FEATURES, get_preset
from percepiano.training import TrainConfig, build_training, fold_indices, train_epoch, train_fold

from . import recorded
from .compare import Report, Row
from .tolerances import REPLAY_CHECKED_STEPS, REPLAY_R2_ATOL, REPLAY_RTOL


def manifest(fixture_dir: Path | None = None) -> dict:
    return recorded.manifest(fixture_dir or recorded.REPLAY_DIR)


def cases(fixture_dir: Path | None = None) -> list[dict]:
    """The MANIFEST entries of the replay fixtures (preset, dtype, split, fold, seed, epochs, steps, file)."""
    return [e for e in manifest(fixture_dir)["files"] if e["kind"] == "replay"]


def check_data(data, fixture_dir: Path | None = None) -> None:
    """``ValueError`` unless ``data`` is the file the fixtures were recorded on (its sha256)."""
    want = manifest(fixture_dir)["data"]
    got = recorded.sha256(Path(data.path))
    if got != want["sha256"]:
        raise ValueError(f"{data.path}: sha256 {got[:12]}..., but the replay fixtures were recorded on "
                         f"{want['file']} with sha256 {want['sha256'][:12]}...; use that file")


def model_config(entry: dict):
    """The model of a case: its preset (with ``hidden_size`` when the case has one: small live runs)."""
    return get_preset(entry["preset"], **({"hidden_size": entry["hidden_size"]} if entry.get("hidden_size") else {}))


def train_config(entry: dict, steps: int | None = None) -> TrainConfig:
    """Our training config of a recorded case: the published protocol, replaying the original's draws."""
    return TrainConfig(rng="original", dtype=entry["dtype"], seed=int(entry["seed"]), epochs=int(entry["epochs"]),
                       max_train_batches=steps)


def initial_checksums(entry: dict) -> dict[str, dict[str, str]]:
    """sha256 of the initial weights of the case: ``drawn`` (the whole original module tree, as the replay draws
    it after seeding) and ``model`` (our model's weights, under the original names)."""
    cfg, tcfg = model_config(entry), train_config(entry)
    set_seed(tcfg.seed)
    drawn = replay.weight_checksums(replay.draw_original_init(cfg))
    model, _, _ = build_training(cfg, tcfg.replace(dtype="float32"))
    return {"drawn": drawn, "model": replay.weight_checksums(model.original_state_dict())}


def run_ours(entry: dict, data, steps: int | None = None) -> dict:
    """Our run of a recorded case: ``steps`` (step records), ``order`` (train positions in the original's file
    order, visited), ``init`` (:func:`initial_checksums`) and, for the whole run (``steps=None``, through
    :func:`percepiano.training.train_fold`), ``epochs`` (valid / test loss and R² per epoch)."""
    cfg, tcfg = model_config(entry), train_config(entry, steps)
    feature_set = PRESET_FEATURES[entry["preset"]]
    split, fold = entry["split"], int(entry["fold"])
    train = fold_indices(data, split, fold, tcfg)["train"]
    epochs = None
    if steps is None:
        with tempfile.TemporaryDirectory(prefix="percepiano-replay-") as tmp:
            train_fold(cfg, tcfg, data, split, fold, tmp, feature_set=feature_set, progress=False, step_log=True)
            records = [json.loads(line) for line in (Path(tmp) / "steps.jsonl").read_text().splitlines()]
            epochs = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    else:
        model, optimizer, scheduler = build_training(cfg, tcfg)
        model.validate_inputs = False  # the dataset was validated when loaded
        _, records = train_epoch(model, data, train, optimizer, scheduler, tcfg, 0, feature_set=feature_set,
                                 device=torch.device("cpu"), step_log=True)
        records = [{**r, "loss": float(r["loss"]), "grad_norm": float(r["grad_norm"])} for r in records]
    position = {str(data.segment_ids[i]): p for p, i in enumerate(train)}
    order = [position[s] for r in records for s in r["segment_ids"]]
    return {"steps": records, "order": order, "init": initial_checksums(entry), "epochs": epochs}


def _relative(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(ours - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)


def _series_row(group: str, name: str, err: np.ndarray, tol: float, what: str, checked: str = "every") -> Row:
    """A per-step quantity: its maximum error over the steps, and the first step over ``tol``; it passes when
    every step (``checked="every"``) or the last one (``"last"``) is within ``tol``."""
    over = np.flatnonzero(~(err <= tol))  # NaN counts as over
    worst = float(np.nanmax(err)) if len(err) and not np.isnan(err).all() else math.nan
    note = (f"{what}; first step over tol: {int(over[0]) + 1}" if len(over)
            else f"{what}; all {len(err)} steps within tol")
    if checked == "last":
        passed = len(err) > 0 and bool(err[-1] <= tol)
        note += f"; checked at the last step: {err[-1]:.2e}" if len(err) else ""
    else:
        passed = len(over) == 0 and len(err) > 0
    return Row(group, name, worst, tol, passed, note)


def compare_case(entry: dict, arrays: dict, ours: dict) -> list[Row]:
    """Rows of one case: per-step loss / grad norm / lr, batch order, initial weights, epoch metrics."""
    dtype = entry["dtype"]
    group = f"replay/{entry['preset']}/{dtype} ({entry['split']} fold {entry['fold']}, seed {entry['seed']})"
    n = len(ours["steps"])
    rows = []
    if n > len(arrays["step/loss"]):
        return [Row(group, "steps", math.nan, math.nan, False, f"ours ran {n} steps, the original {len(arrays['step/loss'])}")]
    for key, name in (("loss", "loss (relative)"), ("grad_norm", "grad norm before clipping (relative)")):
        err = _relative(np.asarray([s[key] for s in ours["steps"]], np.float64), arrays[f"step/{key}"][:n])
        rows.append(_series_row(group, name, err, REPLAY_RTOL[dtype][key], f"{n} of {len(arrays['step/loss'])} steps",
                                REPLAY_CHECKED_STEPS[dtype]))
    err = _relative(np.asarray([s["lr"] for s in ours["steps"]], np.float64), arrays["step/lr"][:n])
    rows.append(_series_row(group, "learning rate (relative)", err, 0.0, "StepLR per step"))
    ref_order = arrays["order"][: len(ours["order"])]
    wrong = np.flatnonzero(np.asarray(ours["order"]) != ref_order)
    batch = TrainConfig().batch_size
    rows.append(Row(group, "batch order (train positions visited)", float(len(wrong)), 0.0, len(wrong) == 0,
                    f"{len(ref_order)} positions" + (f"; first differing at step {int(wrong[0]) // batch + 1}"
                                                      if len(wrong) else ", identical")))
    ref_init = dict(zip(arrays["init/names"].tolist(), arrays["init/sha256"].tolist()))
    for kind, label in (("drawn", "init: original module tree drawn"), ("model", "init: our model's weights")):
        got = ours["init"][kind]
        names = set(ref_init) | set(got) if kind == "drawn" else set(got)  # the whole tree, or what ours has
        bad = sorted(k for k in names if ref_init.get(k) != got.get(k))
        rows.append(Row(group, f"{label} (sha256)", float(len(bad)), 0.0, not bad,
                        f"{len(got)} tensors bit-identical" if not bad else f"{len(bad)} differ, first {bad[0]}"))
    if ours["epochs"] is not None and len(arrays["epoch/valid_r2"]):
        for part in ("valid", "test"):
            e_ours = ours["epochs"][0]
            err = abs(e_ours[f"{part}_r2"] - float(arrays[f"epoch/{part}_r2"][0]))
            rows.append(Row(group, f"epoch 1 {part} R2 (absolute)", err, REPLAY_R2_ATOL[dtype], err <= REPLAY_R2_ATOL[dtype],
                            f"ours {e_ours[f'{part}_r2']:.6f}, original {float(arrays[f'epoch/{part}_r2'][0]):.6f}"))
            ref_loss = float(arrays[f"epoch/{part}_loss"][0])
            err, tol = abs(e_ours[f"{part}_loss"] - ref_loss) / ref_loss, REPLAY_RTOL[dtype]["loss"]
            rows.append(Row(group, f"epoch 1 {part} loss (relative)", err, tol, err <= tol,
                            f"ours {e_ours[f'{part}_loss']:.7g}, original {ref_loss:.7g}"))
    return rows


def run_all(data, fixture_dir: Path | None = None, steps: int | None = None, only=None) -> Report:
    """Compare every recorded case (or ``only``: (preset, dtype) pairs) for ``steps`` steps (None: the whole run,
    with its epoch metrics)."""
    check_data(data, fixture_dir)
    report = Report()
    for entry in cases(fixture_dir):
        if only is not None and (entry["preset"], entry["dtype"]) not in only:
            continue
        arrays = recorded.load(entry["file"], fixture_dir or recorded.REPLAY_DIR)
        report.add(compare_case(entry, arrays, run_ours(entry, data, steps)))
    return report
