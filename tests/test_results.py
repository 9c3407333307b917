"""Result files: results.json round trip, labels, fold spread, sibling runs, predictions and published targets."""
from __future__ import annotations

import json
import re
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


def _file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_results_that_are_not_json_objects_are_named_errors(tmp_path):
    for name, text, message in (("cut.json", '{"mean_test_r2": 0.3, "fo', "not a valid `percepiano cv` results file"),
                                ("null.json", "null", "expected a JSON object .*got null"),
                                ("list.json", "[1, 2]", r"expected a JSON object .*got \[1, 2\]")):
        with pytest.raises(ValueError, match=rf"{name}: {message}"):
            R.load_results(_file(tmp_path, name, text))


@pytest.mark.parametrize("field, edit, message", [
    ("mean_test_r2", lambda r: r.update(mean_test_r2=0.99), r"0.99 is not the mean of the folds' test_r2"),
    ("mean_test_r2", lambda r: r.update(mean_test_r2=float("inf")), "not a finite number"),
    ("mean_test_r2", lambda r: r.update(mean_test_r2=float("nan")), "not a finite number"),
    ("mean_test_r2", lambda r: r.update(mean_test_r2="0.2"), "expected a number"),
    ("folds[1].test_r2", lambda r: r["folds"][1].update(test_r2=float("-inf")), "not a finite number"),
    ("folds[0].per_label_test_r2[1]", lambda r: r["folds"][0]["per_label_test_r2"].__setitem__(1, float("nan")),
     "not a finite number"),
    ("folds[0].per_label_test_r2", lambda r: r["folds"][0].update(per_label_test_r2=[0.1]), "1 values for 2 label_names"),
    ("folds[1].test_r2", lambda r: r["folds"][1].pop("test_r2"), "expected a number, got None"),
    ("folds", lambda r: r.update(folds=[]), "expected a non-empty list"),
    ("folds[].fold", lambda r: r["folds"][1].pop("fold"), r"expected distinct fold numbers \(integers >= 0\), got \[0, None\]"),
    ("folds[].fold", lambda r: r["folds"][1].update(fold=0), r"expected distinct fold numbers .*got \[0, 0\]"),
    ("fold_std", lambda r: r.update(fold_std=float("nan")), "not a finite number"),
])
def test_results_whose_numbers_cannot_be_trusted_are_refused_naming_the_field(tmp_path, field, edit, message):
    """The gate took mean_test_r2 as written: 0.99 with folds at -7.85 passed, Infinity passed, NaN failed oddly."""
    res = _results("han", "performer", [-7.85, 0.3])
    edit(res)
    path = _file(tmp_path, "results.json", json.dumps(res))  # json writes NaN and Infinity as Python reads them
    with pytest.raises(ValueError, match=rf"results\.json: field '{re.escape(field)}': {message}"):
        R.load_results(path)
    with pytest.raises(ValueError, match=re.escape(field)):
        R.load_results(res)  # a dict is checked as well


def test_a_mean_within_float_rounding_of_the_folds_is_accepted(tmp_path):
    res = _results("han", "performer", [0.1, 0.2, 0.3])
    res["mean_test_r2"] = sum(f["test_r2"] for f in res["folds"]) / 3 + R.MEAN_TOLERANCE / 2
    assert R.metric_value(R.load_results(_file(tmp_path, "results.json", json.dumps(res)))) == pytest.approx(0.2)


def test_load_log_names_the_file_and_line(tmp_path):
    good = _file(tmp_path, "log.jsonl", '{"epoch": 1, "test_r2": null}\n\n{"epoch": 2, "test_r2": 0.1}\n')
    assert R.load_log(good) == [{"epoch": 1, "test_r2": None}, {"epoch": 2, "test_r2": 0.1}]
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        R.load_log(_file(tmp_path, "bad.jsonl", '{"epoch": 1}\n{"epoch": 2\n'))
    with pytest.raises(ValueError, match=r"null\.jsonl: line 1: expected a JSON object .*got null"):
        R.load_log(_file(tmp_path, "null.jsonl", "null\n"))
    # a reader of a log being appended to leaves out a cut-short last line, never one elsewhere
    assert R.load_log(tmp_path / "bad.jsonl", drop_cut_last_line=True) == [{"epoch": 1}]
    with pytest.raises(ValueError, match=r"mid\.jsonl: line 1 is not valid JSON"):
        R.load_log(_file(tmp_path, "mid.jsonl", '{"epoch": 1\n{"epoch": 2}\n'), drop_cut_last_line=True)


def test_load_predictions_names_an_unreadable_file(tmp_path):
    with pytest.raises(ValueError, match=r"test_predictions\.npz: not an npz archive.*a fold's test_predictions"):
        R.load_predictions(_file(tmp_path, "test_predictions.npz", "xx"))


@pytest.mark.parametrize("text, message", [
    ("{", "not a valid targets file"),
    ("null", "expected a JSON object .*got null"),
    ('{"targets": null}', "field 'targets': expected an object of splits"),
    ('{"targets": {"composition": {"han": "0.4"}}}', "field 'targets.composition.han': expected a finite number"),
    ('{"composition": {"han": [0.4]}}', "field 'composition.han': expected a finite number or null"),
    ('{"composition": {"han": {"r2": NaN}}}', "field 'composition.han.r2': expected a finite number or null, got NaN"),
    ('{"tolerance": Infinity, "composition": {"han": 0.4}}', "field 'tolerance'"),
    ('{"composition": {"han": {"r2": 0.4, "per_label": {"a": null, "b": "x"}}}}',
     "field 'composition.han.per_label.b': expected a finite number or null, got \"x\""),
])
def test_targets_files_that_cannot_be_used_are_named_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=rf"targets\.json: {message}"):
        R.load_targets(_file(tmp_path, "targets.json", text))


def test_sibling_results_finds_other_runs_of_the_split(tmp_path):
    for name, preset, split in (("han", "han", "composition"), ("ridge", "ridge", "composition"),
                                ("ridge_perf", "ridge", "performer"), ("mean", "mean", "composition")):
        (tmp_path / name).mkdir()
        R.write_results(_results(preset, split, [0.3]), tmp_path / name)
    # broken neighbours are skipped, not a failure of the run that looks for its baselines
    for name, text in (("broken", "{"), ("null", "null"),
                       ("lying", json.dumps({**_results("ridge", "composition", [0.3]), "mean_test_r2": 0.9}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
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


@pytest.mark.parametrize("index, message", [
    ({"seeds": [7, 7], "runs": ["seed7", "seed7b"]}, r"field 'seeds': expected distinct seeds, got \[7, 7\]"),
    ({"seeds": [7, 8], "runs": ["seed7", "seed7"]}, r"field 'runs': expected distinct folders"),
])
def test_a_seeds_index_that_counts_a_run_twice_is_refused(tmp_path, index, message):
    """The same run twice would make the seed spread 0 and the gate's interval too narrow."""
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps({**index, "preset": "han", "split": "performer"}))
    with pytest.raises(ValueError, match=message):
        R.load_seeds_index(path)
