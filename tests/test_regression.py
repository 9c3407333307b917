"""Full-protocol regression gates: 100 epochs x 4 folds of each published model on every split, asserting the
paper's mean test R2 (percepiano/resources/regression_targets.json, with its source and tolerance; the work
split has no published value: there, and where the paper gives none, the run must beat the mean baseline).

Selected only with ``pytest -m gpu_regression`` (``tox -e gpu_regression``); they need ``PERCEPIANO_DATA``.

``PERCEPIANO_REGRESSION_OUT`` names a round folder (``percepiano round --out``, docs/rounds.md; default:
pytest's temporary directory). A cell the round has measured at the protocol
(``{preset}-{split}/seed{S}/results.json`` with 4 folds, 100 epochs, protocol "original") is gated from its
results, without training and without a GPU: over all its measured seeds, on the mean over seeds. A cell not
measured yet is trained into ``{preset}-{split}/seed7/`` (the round's layout, so the round adopts it; resumed
if interrupted), which needs CUDA or ``PERCEPIANO_REGRESSION_DEVICE=cpu`` (or another torch device string),
and is skipped otherwise. Each cell gets ``{preset}-{split}/gate.json`` (the measured value, its fold and
seed spread, the target, the mean/ridge baselines of the same split, the verdict), and ``gates.json`` in the
folder collects every verdict so far.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from percepiano.checkpoints import atomic_write_text
from percepiano.config import PRESETS
from percepiano.constants import N_FOLDS, PROTOCOL_EPOCHS, SPLIT_SCHEMES
from percepiano.cv import run_cv
from percepiano.data import load_dataset
from percepiano.results import load_targets, read_json_object
from percepiano.round_results import find_cells
from percepiano.training import TrainConfig

TARGETS = load_targets()["targets"]
CASES = [(split, preset) for split in SPLIT_SCHEMES for preset in sorted(PRESETS)]
GATES = "gates.json"
TRAIN_SEED = TrainConfig().seed  # the seed a cell the round has not measured is trained with


def _device() -> str:
    dev = os.environ.get("PERCEPIANO_REGRESSION_DEVICE")
    if dev:
        return dev
    if not torch.cuda.is_available():
        pytest.skip("not measured in the round yet, and no CUDA device to train it: the full-protocol gates need "
                    "a GPU (or set PERCEPIANO_REGRESSION_DEVICE=cpu)")
    return "cuda"


def is_measured(res: dict) -> bool:
    """A results.json of the full original protocol: 4 folds, 100 epochs."""
    return res.get("protocol") == "original" and len(res["folds"]) == N_FOLDS and res.get("epochs") == PROTOCOL_EPOCHS


def measured_seeds(root: Path, preset: str, split: str) -> list[dict]:
    """The results of every seed of (preset, split) the round folder ``root`` holds at the full protocol."""
    return [res for _, res in find_cells(root) if res["preset"] == preset and res["split"] == split
            and is_measured(res)] if root.is_dir() else []


def verdict(preset: str, split: str, seeds: list[dict]) -> dict:
    """The gate record of a cell from its measured seeds: the mean over seeds of their mean test R2 against
    the published target (or, without one, against the mean baseline of the same split and folds)."""
    means = np.array([r["mean_test_r2"] for r in seeds], dtype=np.float64)
    value = float(means.mean())
    baselines = seeds[0]["baselines"]
    target = TARGETS[split].get(preset) if isinstance(TARGETS.get(split), dict) else None
    tol = float(TARGETS["tolerance"])
    if target is not None:
        passed, rule = value >= target - tol, f"mean over seeds of mean_test_r2 >= {target} - {tol}"
    else:
        passed = value > baselines["mean"]["mean_test_r2"]
        rule = "no published target; mean over seeds of mean_test_r2 > mean baseline"
    return {
        "preset": preset, "split": split, "mean_test_r2": value,
        "seeds": [r["seed"] for r in seeds],
        "per_seed_mean_test_r2": means.tolist(),
        "seed_std": float(means.std()) if len(means) > 1 else None,  # population std over seeds (ddof 0)
        "fold_std": [r["fold_std"] for r in seeds],
        "per_fold_test_r2": [[f["test_r2"] for f in r["folds"]] for r in seeds],
        "device": sorted({str(r.get("device")) for r in seeds}), "git_commit": sorted({str(r.get("git_commit")) for r in seeds}),
        "target": target, "tolerance": tol, "target_source": TARGETS["source"], "rule": rule, "passed": bool(passed),
        "baselines": {k: {"mean_test_r2": v["mean_test_r2"], "fold_std": v["fold_std"]} for k, v in baselines.items()},
    }


def record_verdict(root: Path, record: dict) -> None:
    """``{preset}-{split}/gate.json`` and the collected ``gates.json`` of the round folder."""
    cell = root / f"{record['preset']}-{record['split']}"
    cell.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(record, indent=1) + "\n", cell / "gate.json")
    gates = read_json_object(root / GATES, "gate verdicts") if (root / GATES).is_file() else {}
    gates[f"{record['preset']}-{record['split']}"] = record
    atomic_write_text(json.dumps(dict(sorted(gates.items())), indent=1) + "\n", root / GATES)


@pytest.mark.gpu_regression
@pytest.mark.parametrize("split, preset", CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_full_protocol_reaches_target(split, preset, tmp_path_factory):
    data_path = os.environ.get("PERCEPIANO_DATA")
    if not data_path:
        pytest.skip("set PERCEPIANO_DATA to percepiano_vnet_m2pf.npz for the regression gates")
    env_root = os.environ.get("PERCEPIANO_REGRESSION_OUT")
    root = Path(env_root) if env_root else tmp_path_factory.mktemp("regression")
    seeds = measured_seeds(root, preset, split)
    if not seeds:  # not measured by the round: train it, in the round's layout
        device = _device()
        out = root / f"{preset}-{split}" / f"seed{TRAIN_SEED}"
        res = run_cv(preset, split, load_dataset(data_path), out, tcfg=TrainConfig(), device=device, resume=True,
                     progress=False, log=lambda s: print(s, flush=True))
        assert is_measured(res)
        seeds = [res]
    record = verdict(preset, split, seeds)
    record_verdict(root, record)
    print(json.dumps(record, indent=1))
    ridge = record["baselines"].get("ridge", {}).get("mean_test_r2")
    assert record["passed"], (
        f"{preset} on {split}: mean test R2 {record['mean_test_r2']:.4f} over seeds {record['seeds']} (fold std "
        f"{record['fold_std']}, seed std {record['seed_std']}) fails {record['rule']}; ridge {ridge}, mean "
        f"{record['baselines']['mean']['mean_test_r2']:.4f}; see {root / f'{preset}-{split}'}"
    )


def test_measured_cells_are_gated_from_the_round_without_training(tmp_path, capsys):
    """Two seeds of a cell "measured" at the protocol (tiny cv runs whose results.json is marked as the full
    protocol), one seed short of it: the gate reads the two, records gate.json and gates.json, trains nothing."""
    from percepiano.cli import main
    from percepiano.results import write_results

    root = tmp_path / "ROUND"
    data = Path(__file__).parent / "data" / "synthetic_m2pf.npz"
    for seed, full in ((7, True), (8, True), (9, False)):
        out = root / "bilstm-composition" / f"seed{seed}"
        assert main(["cv", "--preset", "bilstm", "--split", "composition", "--seed", str(seed), "--epochs", "1",
                     "--hidden-size", "8", "--limit-segments", "4", "--threads", "1", "--device", "cpu",
                     "--no-progress", "--data", str(data), "--out", str(out)]) == 0, capsys.readouterr().err
        if full:
            res = json.loads((out / "results.json").read_text())
            write_results({**res, "epochs": PROTOCOL_EPOCHS, "protocol": "original"}, out)
    seeds = measured_seeds(root, "bilstm", "composition")
    assert [r["seed"] for r in seeds] == [7, 8] and measured_seeds(root, "han", "composition") == []
    record = verdict("bilstm", "composition", seeds)
    means = [r["mean_test_r2"] for r in seeds]
    assert record["mean_test_r2"] == pytest.approx(np.mean(means), abs=1e-12)
    assert record["seed_std"] == pytest.approx(np.std(means), abs=1e-12)
    assert record["target"] == TARGETS["composition"]["bilstm"] and record["passed"] is False  # 1 tiny epoch
    record_verdict(root, record)
    record_verdict(root, {**record, "preset": "han"})
    assert json.loads((root / "bilstm-composition" / "gate.json").read_text()) == record
    assert sorted(json.loads((root / GATES).read_text())) == ["bilstm-composition", "han-composition"]
    work = verdict("bilstm", "work", seeds)
    assert work["target"] is None and "mean baseline" in work["rule"]
