"""Result files: results.json round trip, labels, fold spread, sibling runs, predictions and published targets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from percepiano import results as R

EXACT = 1e-12
TINY = Path(__file__).parent / "data" / "tiny_runs"


def _results(preset, split, fold_r2):
    return {
        "preset": preset, "split": split, "mean_test_r2": float(np.mean(fold_r2)), "label_names": ["x_a", "y_b"],
        "folds": [{"fold": k, "test_r2": v, "per_label_test_r2": [v, 2 * v]} for k, v in enumerate(fold_r2)],
    }


def test_results_helpers(tmp_path):
    path = R.write_results(_results("han", "performer", [0.1, 0.3]), tmp_path)
    assert path == tmp_path / "results.json" and not list(tmp_path.glob(".*tmp*"))
    loaded = R.load_results(tmp_path)  # a run directory works as well as the file
    assert loaded["_path"] == str(path)
    assert R.metric_value(loaded) == pytest.approx(0.2, abs=EXACT)
    assert R.fold_spread(loaded) == pytest.approx(0.1, abs=EXACT)  # population std, as results.json's fold_std
    assert R.metric_value(loaded, "y_b") == pytest.approx(0.4, abs=EXACT)
    assert R.per_label_mean(loaded) == pytest.approx({"x_a": 0.2, "y_b": 0.4}, abs=EXACT)
    assert R.resolve_label(loaded, "Y_B") == "y_b" and R.resolve_label(loaded, "1") == "y_b"
    assert R.resolve_label(loaded, "_a") == "x_a"
    with pytest.raises(ValueError, match="matches no label"):
        R.resolve_label(loaded, "zzz")
    with pytest.raises(FileNotFoundError):
        R.load_results(tmp_path / "missing")
    (tmp_path / "other.json").write_text(json.dumps({"folds": []}))
    with pytest.raises(ValueError, match="missing 'mean_test_r2'"):
        R.load_results(tmp_path / "other.json")


def test_sibling_results_finds_other_runs_of_the_split(tmp_path):
    for name, preset, split in (("han", "han", "composition"), ("ridge", "ridge", "composition"),
                                ("ridge_perf", "ridge", "performer"), ("mean", "mean", "composition")):
        (tmp_path / name).mkdir()
        R.write_results(_results(preset, split, [0.3]), tmp_path / name)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    found = R.sibling_results([tmp_path / "han"], ("mean", "ridge"), {"composition"})
    assert [Path(r["_path"]).parent.name for r in found] == ["mean", "ridge"]
    assert R.sibling_results([tmp_path / "ridge"], ("ridge",), {"composition"}) == []  # never the run itself


def test_load_predictions_of_the_committed_tiny_run():
    p = R.load_predictions(TINY / "han" / "fold0" / "test_predictions.npz")
    assert p["predictions"].shape == p["labels"].shape and p["predictions"].dtype == np.float64
    assert len(p["segment_ids"]) == len(p["labels"])


def test_targets():
    targets = R.load_targets()
    assert R.target_for(targets, "composition", "han") == pytest.approx(0.397, abs=EXACT)
    assert R.target_tolerance(targets, "composition", "han") == pytest.approx(0.03, abs=EXACT)
    assert R.target_for(targets, "performer", "bilstm_sa") is None  # the paper gives none
    assert R.target_for(targets, "composition", "han", "Timing_Stable_Unstable") is None  # no per-label targets
    own = {"composition": {"han": {"r2": 0.4, "tolerance": 0.01, "per_label": {"a": 0.5}}}}
    assert R.target_for(own, "composition", "han") == pytest.approx(0.4, abs=EXACT)
    assert R.target_for(own, "composition", "han", "a") == pytest.approx(0.5, abs=EXACT)
    assert R.target_tolerance(own, "composition", "han") == pytest.approx(0.01, abs=EXACT)
    assert R.target_tolerance({"composition": {"han": 0.4}}, "composition", "han") is None
