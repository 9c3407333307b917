"""CI-sized runs on the real dataset (PERCEPIANO_DATA): two epochs of small `han` and `bilstm` models on a slice
of one fold, on CPU. Checks the plumbing end to end, not the published numbers (tests/test_regression.py)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from percepiano import training as T
from percepiano.config import PRESET_FEATURES, get_preset
from percepiano.cv import run_cv
from percepiano.data import load_dataset
from percepiano.provenance import file_sha256

REAL = os.environ.get("PERCEPIANO_DATA")
pytestmark = [
    pytest.mark.skipif(not REAL, reason="set PERCEPIANO_DATA to percepiano_vnet_m2pf.npz for the real-data runs"),
    pytest.mark.usefixtures("one_thread"),
]

HIDDEN = 8  # the full han has 12.9M parameters; this keeps two epochs to about a second
# A raised learning rate (the original's is 2.5e-5) so that two epochs visibly lower the training loss.
SMALL = T.TrainConfig(epochs=2, lr=3e-3, limit_segments=24)
SPLIT, FOLD = "performer", 1


@pytest.fixture(scope="module")
def data():
    return load_dataset(REAL)


@pytest.mark.parametrize("preset", ["han", "bilstm"])
def test_two_epochs_on_a_slice(preset, data, tmp_path):
    out = tmp_path / "cv"
    res = run_cv(preset, SPLIT, data, out, tcfg=SMALL, model_overrides={"hidden_size": HIDDEN}, folds=[FOLD],
                 device="cpu", progress=False)

    # a well-formed results file
    on_disk = json.loads((out / "results.json").read_text())
    for key in ("preset", "split", "mean_test_r2", "fold_std", "folds", "label_names", "epochs", "seed", "config",
                "versions", "git_commit", "device", "wall_seconds", "baselines"):
        assert key in on_disk, key
    assert on_disk["preset"] == preset and on_disk["split"] == SPLIT and on_disk["protocol"] == "modified"
    assert on_disk["label_names"] == list(data.label_names) and on_disk["epochs"] == 2
    assert on_disk["feature_set"] == PRESET_FEATURES[preset]
    (fold,) = on_disk["folds"]
    assert fold["fold"] == FOLD and fold["best_epoch"] in (1, 2) and len(fold["per_label_test_r2"]) == 19
    assert np.isfinite([fold["test_r2"], fold["test_mse"], fold["valid_loss"], *fold["per_label_test_r2"]]).all()
    assert fold["n_train"] == fold["n_valid"] == fold["n_test"] == 24
    assert on_disk["baselines"]["ridge"]["mean_test_r2"] > on_disk["baselines"]["mean"]["mean_test_r2"]
    # the run's identity names the real file by its sha256, in results.json and in both checkpoints
    sha = file_sha256(REAL)
    assert on_disk["identity"]["data"]["sha256"] == on_disk["data"]["sha256"] == sha
    for name in ("best.pt", "last.pt"):
        ck = torch.load(out / f"fold{FOLD}" / name, weights_only=True)
        assert ck["identity"] == fold["identity"] == {**on_disk["identity"], "fold": FOLD}, name
    assert (out / "results.csv").read_text().splitlines()[0].startswith("fold,best_epoch,test_r2,test_mse,valid_loss,")

    # decreasing training loss, finite everywhere
    log = [json.loads(line) for line in (out / f"fold{FOLD}" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert np.isfinite([[r["train_loss"], r["valid_loss"], r["valid_r2"], r["test_r2"]] for r in log]).all()
    assert log[1]["train_loss"] < log[0]["train_loss"]
    pred = np.load(out / f"fold{FOLD}" / "test_predictions.npz", allow_pickle=False)
    assert pred["predictions"].shape == (24, 19) and np.isfinite(pred["logits"]).all()
    assert ((pred["predictions"] > 0) & (pred["predictions"] < 1)).all()

    # interrupted after epoch 1, then resumed: the same final state as the uninterrupted fold above
    class Interrupt(Exception):
        pass

    def stop(epoch, record):
        if epoch == 1:
            raise Interrupt

    cfg = get_preset(preset, hidden_size=HIDDEN)
    kw = dict(feature_set=PRESET_FEATURES[preset], device="cpu", progress=False, run_info={"preset": preset})
    with pytest.raises(Interrupt):
        T.train_fold(cfg, SMALL, data, SPLIT, FOLD, tmp_path / "resumed", on_epoch_end=stop, **kw)
    resumed = T.train_fold(cfg, SMALL, data, SPLIT, FOLD, tmp_path / "resumed", resume=True, **kw)
    a = torch.load(out / f"fold{FOLD}" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for k, v in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][k], v, rtol=0, atol=0)
    for pid, st in a["optimizer"]["state"].items():
        for name, v in st.items():
            torch.testing.assert_close(b["optimizer"]["state"][pid][name], v, rtol=0, atol=0)
    assert resumed["test_r2"] == fold["test_r2"] and resumed["best_epoch"] == fold["best_epoch"]
