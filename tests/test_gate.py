"""`percepiano gate`: fails on a worse round, passes on an equal one, says when ridge is not beaten."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from percepiano.cli import main
from percepiano.gate import DEFAULT_TOLERANCE, format_gate, gate

EXACT = 1e-12
TINY = Path(__file__).parent / "data" / "tiny_runs"
LABELS = ["Timing_Stable_Unstable", "Pedal_Clean_Blurred"]


def write_run(root: Path, name: str, preset: str, split: str, fold_r2, per_label=None, **extra) -> Path:
    """A minimal results.json in ``root/name`` (the fields the gate reads)."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    per_label = per_label if per_label is not None else [[v, v] for v in fold_r2]
    res = {
        "preset": preset, "split": split, "mean_test_r2": float(np.mean(fold_r2)), "fold_std": float(np.std(fold_r2)),
        "label_names": LABELS, "epochs": 100,
        "folds": [{"fold": k, "test_r2": v, "per_label_test_r2": per_label[k]} for k, v in enumerate(fold_r2)],
        **extra,
    }
    (d / "results.json").write_text(json.dumps(res))
    return d / "results.json"


def test_worse_round_fails_equal_round_passes(tmp_path):
    prev = write_run(tmp_path, "round1", "han", "composition", [0.30, 0.34, 0.32, 0.36])  # mean 0.33, std 0.02236
    same = write_run(tmp_path, "round2_same", "han", "composition", [0.30, 0.34, 0.32, 0.36])
    worse = write_run(tmp_path, "round2_worse", "han", "composition", [0.28, 0.30, 0.30, 0.32])  # mean 0.30
    slightly = write_run(tmp_path, "round2_within", "han", "composition", [0.31, 0.32, 0.32, 0.33])  # mean 0.32
    r_same = gate(same, str(prev))
    assert r_same.passed and r_same.exit_code == 0
    assert r_same.allowed_drop == pytest.approx(np.std([0.30, 0.34, 0.32, 0.36]), abs=EXACT)
    assert gate(slightly, str(prev)).passed  # 0.01 below, within the previous round's fold spread 0.022
    r_worse = gate(worse, str(prev))
    assert not r_worse.passed and r_worse.exit_code == 1
    assert r_worse.delta == pytest.approx(-0.03, abs=EXACT)
    assert "FAIL" in format_gate(r_worse)
    # an explicit tolerance replaces the fold spread
    assert gate(worse, str(prev), tolerance=0.05).passed


def test_cli_exit_codes(tmp_path, capsys):
    prev = write_run(tmp_path, "a", "han", "composition", [0.30, 0.34, 0.32, 0.36])
    worse = write_run(tmp_path, "b", "han", "composition", [0.1, 0.1, 0.1, 0.1])
    assert main(["gate", str(prev), "--against", str(prev)]) == 0
    assert main(["gate", str(worse), "--against", str(prev)]) == 1
    out = capsys.readouterr().out
    assert "| mean_test_r2" in out and "FAIL" in out
    other_split = write_run(tmp_path, "c", "han", "performer", [0.3])
    assert main(["gate", str(other_split), "--against", str(prev)]) == 2  # bad input: a clear error, not a verdict
    assert "across splits" in capsys.readouterr().err


def test_against_published_targets(tmp_path):
    # composition han target 0.397, tolerance 0.03 in percepiano/resources/regression_targets.json
    ok = write_run(tmp_path, "ok", "han", "composition", [0.37, 0.37, 0.37, 0.37])
    bad = write_run(tmp_path, "bad", "han", "composition", [0.36, 0.36, 0.36, 0.36])
    r_ok, r_bad = gate(ok), gate(bad)
    assert r_ok.reference == pytest.approx(0.397, abs=EXACT) and r_ok.allowed_drop == pytest.approx(0.03, abs=EXACT)
    assert r_ok.passed and not r_bad.passed
    assert gate(bad, tolerance=0.05).passed
    # performer bilstm_sa has no published number: the gate refuses rather than inventing one
    none = write_run(tmp_path, "none", "bilstm_sa", "performer", [0.3] * 4)
    with pytest.raises(ValueError, match="has no target for preset 'bilstm_sa' on split 'performer'"):
        gate(none)


def test_default_tolerance_when_the_targets_file_has_none(tmp_path):
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({"targets": {"composition": {"han": 0.40}}}))
    run = write_run(tmp_path, "r", "han", "composition", [0.39] * 4)
    r = gate(run, targets_file=targets)
    assert r.allowed_drop == DEFAULT_TOLERANCE and r.passed


def test_per_label_gate(tmp_path):
    prev = write_run(tmp_path, "p", "han", "composition", [0.3] * 4, per_label=[[0.20, 0.40]] * 4)
    run = write_run(tmp_path, "r", "han", "composition", [0.3] * 4, per_label=[[0.10, 0.40]] * 4)
    r = gate(run, str(prev), label="timing")  # a unique part of the name
    assert r.metric == "test_r2[Timing_Stable_Unstable]"
    assert r.value == pytest.approx(0.10, abs=EXACT) and not r.passed  # spread of a constant label is 0
    assert gate(run, str(prev), label="Pedal_Clean_Blurred").passed
    with pytest.raises(ValueError, match="per-label target"):
        gate(run, label="timing")  # the paper gives no per-label targets


def test_says_plainly_when_ridge_is_not_beaten(tmp_path):
    run = write_run(tmp_path, "han", "han", "composition", [0.40] * 4)
    write_run(tmp_path, "ridge", "ridge", "composition", [0.42] * 4)  # found as a sibling directory
    write_run(tmp_path, "ridge_perf", "ridge", "performer", [0.10] * 4)  # other split: ignored
    r = gate(run)
    assert r.passed and r.baseline["value"] == pytest.approx(0.42, abs=EXACT) and not r.baseline["beaten"]
    assert "DOES NOT BEAT THE RIDGE BASELINE" in format_gate(r)
    assert r.exit_code == 0  # informative by default ...
    assert gate(run, require_baseline=True).exit_code == 1  # ... a failure on request


def test_recorded_baseline_and_explicit_baseline(tmp_path):
    run = write_run(tmp_path, "han", "han", "composition", [0.45] * 4,
                    baselines={"ridge": {"mean_test_r2": 0.42, "fold_std": 0.03, "per_fold_test_r2": [0.42] * 4}})
    r = gate(run)
    assert r.baseline["beaten"] and "baselines.ridge" in r.baseline["path"]
    explicit = write_run(tmp_path / "elsewhere", "ridge", "ridge", "composition", [0.5] * 4)
    assert not gate(run, baseline=explicit).baseline["beaten"]
    lonely = write_run(tmp_path / "alone", "han", "han", "composition", [0.45] * 4)
    r = gate(lonely)
    assert r.baseline is None and any("no ridge baseline" in n for n in r.notes)
    assert gate(lonely, require_baseline=True).exit_code == 1


def test_gate_on_the_committed_tiny_run(capsys):
    """The committed tiny real run (2-3 epochs, hidden 8) is far below the paper: the gate must say so."""
    assert main(["gate", str(TINY / "han"), "--against", "targets"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT BEAT THE RIDGE BASELINE" in out
    assert "limit_segments=32" in out and "original protocol 100" in out
    assert main(["gate", str(TINY / "han"), "--against", str(TINY / "han" / "results.json")]) == 0
    capsys.readouterr()
    assert main(["gate", str(TINY / "han"), "--against", str(TINY / "ridge" / "results.json"), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["passed"] is False and verdict["exit_code"] == 1
