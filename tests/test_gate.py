"""`percepiano gate`: a paired verdict against a previous round (not worse / worse / inconclusive) from the saved
test predictions, checked inputs, seeds rounds; the published-target gate with its interval; ridge said plainly."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_paired import synthetic_folds

from percepiano import paired as P
from percepiano.cli import main
from percepiano.gate import (
    DEFAULT_MARGIN,
    DEFAULT_TOLERANCE,
    EXIT_FAIL,
    EXIT_INCONCLUSIVE,
    EXIT_PASS,
    format_gate,
    gate,
    gate_json,
    load_round,
    verdict_line,
)
from percepiano.metrics import r2, r2_per_label
from percepiano.results import write_seeds_index

EXACT = 1e-12
TINY = Path(__file__).parent / "data" / "tiny_runs"
LABELS = ["Timing_Stable_Unstable", "Pedal_Clean_Blurred"]
TRAIN = {"lr": 2.5e-5, "epochs": 100, "seed": 7, "limit_segments": None}


def write_run(root: Path, name: str, preset: str, split: str, fold_r2, per_label=None, **extra) -> Path:
    """A minimal results.json in ``root/name`` (the fields the gate reads), without predictions."""
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


def write_pred_run(root: Path, name: str, folds, seed: int = 7, preset: str = "han", split: str = "performer",
                   train: dict | None = None, seeds_index: bool = False, label_names=None) -> Path:
    """A run directory as `percepiano cv` writes it: fold{k}/test_predictions.npz (float32) and a results.json
    whose test R² are those of the saved predictions. ``folds``: paired.FoldPredictions (one seed each)."""
    d = root / name
    rows = []
    for k, f in enumerate(folds):
        fd = d / f"fold{k}"
        fd.mkdir(parents=True, exist_ok=True)
        pred, lab = f.predictions[0].astype(np.float32), f.labels.astype(np.float32)
        np.savez(fd / "test_predictions.npz", segment_ids=np.asarray(f.segment_ids), predictions=pred, labels=lab,
                 logits=pred)
        rows.append({"fold": k, "dir": f"fold{k}", "test_r2": r2(lab, pred), "per_label_test_r2": r2_per_label(lab, pred).tolist()})
    names = list(label_names) if label_names is not None else [f"label{j}" for j in range(folds[0].labels.shape[1])]
    res = {"preset": preset, "kind": "neural", "split": split, "mean_test_r2": float(np.mean([r["test_r2"] for r in rows])),
           "folds": rows, "label_names": names, "epochs": 100, "seed": seed, "feature_set": "full",
           "config": {"model": {"level": "measure"}, "model_overrides": {}, "train": {**TRAIN, **(train or {}), "seed": seed}}}
    (d / "results.json").write_text(json.dumps(res))
    return d


def write_seeds_round(root: Path, name: str, folds_by_seed, seeds, **kw) -> Path:
    d = root / name
    for s, folds in zip(seeds, folds_by_seed):
        write_pred_run(d, f"seed{s}", folds, seed=s, **kw)
    write_seeds_index({"seeds": list(seeds), "runs": [f"seed{s}" for s in seeds], "preset": kw.get("preset", "han"),
                       "split": kw.get("split", "performer")}, d)
    return d


def shifted(folds, fn):
    return [P.FoldPredictions(f.segment_ids, f.labels, fn(f.predictions, f.labels)) for f in folds]


@pytest.fixture
def base():
    """A synthetic test set of 40 excerpts x 3 players, 4 labels, 4 folds: one round's predictions."""
    return synthetic_folds(n_excerpts=40, players=3, labels=4, folds=4, seed=21)


# ----------------------------------------------------------------------------------------------- verdicts
def test_a_round_against_itself_is_not_worse(tmp_path, base, capsys):
    run = write_pred_run(tmp_path, "round15", base)
    r = gate(run, run)
    assert r.verdict == "not worse" and r.exit_code == EXIT_PASS == 0
    c = r.comparison
    assert (c.overall.value, c.overall.low, c.overall.high) == (0.0, 0.0, 0.0)
    assert r.differences == []
    assert main(["gate", str(run), "--against", str(run), "--margin", "0"]) == 0  # even at margin 0
    out = capsys.readouterr().out
    assert out.startswith("gate: han on performer\nverdict: NOT WORSE (exit 0)")
    assert "one seed in either round: the interval covers test-segment sampling only" in out


def test_worse_not_worse_and_inconclusive(tmp_path, base, capsys):
    old = write_pred_run(tmp_path, "round15", base)
    rng = np.random.default_rng(0)
    bad = write_pred_run(tmp_path, "bad", P.noise_added(base, 0.6, rng))  # costs about 0.36 of R²
    slight = write_pred_run(tmp_path, "slight", P.noise_added(base, 0.05, rng))  # about 0.0025
    r_bad, r_slight = gate(bad, old), gate(slight, old)
    assert r_bad.verdict == "worse" and r_bad.exit_code == EXIT_FAIL == 1
    assert r_bad.comparison.overall.high < -DEFAULT_MARGIN
    assert r_slight.verdict == "not worse" and r_slight.comparison.overall.low >= -DEFAULT_MARGIN
    # a drop near the margin, with an interval around it: inconclusive, and the verdict says what would decide
    mid = write_pred_run(tmp_path, "mid", P.noise_added(base, 0.16, rng))
    r_mid = gate(mid, old)
    c = r_mid.comparison.overall
    assert r_mid.verdict == "inconclusive" and r_mid.exit_code == EXIT_INCONCLUSIVE == 3
    assert c.low < -DEFAULT_MARGIN <= c.high
    assert main(["gate", str(mid), "--against", str(old)]) == 3
    out = capsys.readouterr().out
    assert "INCONCLUSIVE (exit 3)" in out and "minimum detectable effect:" in out and "seeds needed:" in out
    p = r_mid.planning
    assert p.mde == pytest.approx(P.z_sum() * r_mid.comparison.overall.se, abs=EXACT)
    # a larger margin tolerates the same drop
    assert gate(mid, old, margin=0.1).verdict == "not worse"


def test_the_verdict_interval_is_the_paired_bootstrap(tmp_path, base):
    old = write_pred_run(tmp_path, "old", base)
    new = write_pred_run(tmp_path, "new", shifted(base, lambda p, y: p + 0.02))
    r = gate(new, old, resamples=500, level=0.9, clustering="segment")
    # the same numbers as percepiano.paired on the saved (float32) predictions
    want = P.paired_comparison(load_folds(new), load_folds(old), "segment", resamples=500, level=0.9).overall
    assert r.comparison.overall == want
    assert r.value - r.reference == pytest.approx(want.value, abs=1e-9)
    assert r.comparison.n_segments == 120 and r.comparison.clusters == (120,)
    assert gate(new, old).comparison.clusters == (40,)  # default: excerpt clusters


def load_folds(run_dir):
    from percepiano.gate import round_predictions

    return round_predictions(load_round(run_dir))


def test_config_differences_are_listed(tmp_path, base, capsys):
    old = write_pred_run(tmp_path, "round15", base)
    new = write_pred_run(tmp_path, "round16", base, train={"lr": 1e-3})
    r = gate(new, old)
    assert r.differences == ["train_config.lr: 2.5e-05 -> 0.001"]
    main(["gate", str(new), "--against", str(old)])
    assert "config differences (old -> new): train_config.lr: 2.5e-05 -> 0.001" in capsys.readouterr().out


def test_per_label_gate(tmp_path, base):
    old = write_pred_run(tmp_path, "old", base)
    new = write_pred_run(tmp_path, "new", shifted(base, lambda p, y: np.concatenate([p[..., :1] + 0.1, p[..., 1:]], -1)))
    hit, other = gate(new, old, label="label0"), gate(new, old, label="label1")
    assert hit.metric == "test_r2[label0]" and hit.verdict == "worse"
    assert other.verdict == "not worse" and other.comparison.overall.value == 0.0


# ----------------------------------------------------------------------------------------- checked inputs
def test_inputs_are_checked_before_any_verdict(tmp_path, base, capsys):
    old = write_pred_run(tmp_path, "old", base)
    # predictions missing
    four = [f"label{j}" for j in range(4)]
    bare = write_run(tmp_path, "bare", "han", "performer", [0.3] * 4, per_label=[[0.3] * 4] * 4, label_names=four)
    assert main(["gate", str(bare), "--against", str(old)]) == 2
    assert "no per-segment test predictions" in capsys.readouterr().err
    # other labels: the paired difference subtracts them column by column
    two = write_run(tmp_path, "two", "han", "performer", [0.3] * 4)
    assert main(["gate", str(two), "--against", str(old)]) == 2
    assert re.search(r"two: field 'label_names': 2 labels .* has 4 .*: a paired comparison needs the same labels in "
                     r"the same order", capsys.readouterr().err)
    # the predictions are not the ones the fold was scored on
    edited = write_pred_run(tmp_path, "edited", base)
    res = json.loads((edited / "results.json").read_text())
    res["folds"][2]["test_r2"] += 0.01
    res["mean_test_r2"] = float(np.mean([f["test_r2"] for f in res["folds"]]))
    (edited / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match=r"fold2/test_predictions\.npz: R² recomputed .* field 'folds\[2\]\.test_r2'"):
        gate(edited, old)
    # other test segments
    fewer = write_pred_run(tmp_path, "fewer", [P.FoldPredictions(f.segment_ids[:-3], f.labels[:-3], f.predictions[:, :-3]) for f in base])
    with pytest.raises(ValueError, match="fold 0: the test segment ids differ .*117 vs 120 segments"):
        gate(fewer, old)
    # other labels for the same segments
    relabelled = write_pred_run(tmp_path, "relabelled", [P.FoldPredictions(f.segment_ids, f.labels + 0.01, f.predictions) for f in base])
    with pytest.raises(ValueError, match="the labels of segment .* differ .*different data"):
        gate(relabelled, old)
    # other folds
    three = write_pred_run(tmp_path, "three", base[:3])
    with pytest.raises(ValueError, match=r"folds \[0, 1, 2\], but .* has folds \[0, 1, 2, 3\]"):
        gate(three, old)
    # other split
    other_split = write_pred_run(tmp_path, "comp", base, split="composition")
    assert main(["gate", str(other_split), "--against", str(old)]) == 2
    assert "across splits" in capsys.readouterr().err
    # a tolerance belongs to the targets gate
    with pytest.raises(ValueError, match="--tolerance applies to --against targets"):
        gate(old, old, tolerance=0.05)
    with pytest.raises(ValueError, match="margin"):
        gate(old, old, margin=-0.01)


def test_a_results_file_with_nan_is_refused_naming_file_and_field(tmp_path, base, capsys):
    old = write_pred_run(tmp_path, "old", base)
    res = json.loads((old / "results.json").read_text())
    res["folds"][1]["per_label_test_r2"][0] = float("nan")
    (tmp_path / "nan").mkdir()
    shutil.copytree(old / "fold0", tmp_path / "nan" / "fold0")
    (tmp_path / "nan" / "results.json").write_text(json.dumps(res))
    assert main(["gate", str(tmp_path / "nan"), "--against", str(old)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nan" / "results.json") in err and "folds[1].per_label_test_r2[0]" in err


# -------------------------------------------------------------------------------------------------- seeds
def test_seeds_rounds(tmp_path, base, capsys):
    rng = np.random.default_rng(3)
    seeds = [7, 8, 9]

    def seed_runs(delta):  # each seed: the round's predictions with its own model-level error
        return [P.noise_added(shifted(base, lambda p, y: p + delta), 0.1, rng, per="model") for _ in seeds]

    old = write_seeds_round(tmp_path, "round15", seed_runs(0.0), seeds)
    new = write_seeds_round(tmp_path, "round16", seed_runs(0.0), seeds)
    rnd = load_round(old)
    assert rnd.n_seeds == 3 and rnd.seeds == seeds and rnd.name == "round15"
    r = gate(new, old)
    c = r.comparison
    assert c.n_seeds_new == c.n_seeds_old == 3 and c.paired_seeds
    assert c.seed_var_new is not None and "measured from the 3 paired seeds" in r.planning.seed_var_from
    assert r.planning.seed_var_sum == c.seed_delta_var
    assert r.value == pytest.approx(np.mean([json.loads((new / f"seed{s}" / "results.json").read_text())["mean_test_r2"]
                                             for s in seeds]), abs=EXACT)
    assert not any("one seed" in n for n in r.notes)
    main(["gate", str(new), "--against", str(old)])
    out = capsys.readouterr().out
    assert "common seeds resampled as pairs" in out and "rounds: round16 (seeds 7, 8, 9), round15 (seeds 7, 8, 9)" in out
    # the seed noise is in the interval: wider than the test-segment part alone
    assert c.overall.se > 1.2 * c.se_test
    # a single-seed round against a seeds round
    single = write_pred_run(tmp_path, "single", base)
    r1 = gate(single, old)
    assert not r1.comparison.paired_seeds and any("one seed in round single" in n for n in r1.notes)
    # a seeds.json that does not match its runs is refused
    bad = tmp_path / "bad"
    shutil.copytree(old, bad)
    write_seeds_index({"seeds": [7, 8, 10], "runs": ["seed7", "seed8", "seed9"], "preset": "han", "split": "performer"}, bad)
    with pytest.raises(ValueError, match=r"seed9/results\.json: field 'seed' is 9, but .*seeds\.json indexes it as seed 10"):
        load_round(bad)
    mixed = tmp_path / "mixed"
    shutil.copytree(old, mixed)
    write_pred_run(mixed, "seed8", base, seed=8, train={"lr": 1e-3})
    with pytest.raises(ValueError, match="repeat one configuration.*train_config.lr"):
        load_round(mixed)


def test_a_percepiano_round_cell_is_a_seeds_round(tmp_path, base):
    """`percepiano round` writes ROUND/{preset}-{split}/seed{S}/ run directories and no seeds.json."""
    for rnd in ("round15", "round16"):
        for s in (7, 8):
            write_pred_run(tmp_path / rnd / "han-performer", f"seed{s}", base, seed=s)
    (tmp_path / "round16" / "round.json").write_text("{}")
    cell = load_round(tmp_path / "round16" / "han-performer")
    assert cell.seeds == [7, 8] and cell.name == "han-performer"
    r = gate(tmp_path / "round16" / "han-performer", tmp_path / "round15" / "han-performer")
    assert r.verdict == "not worse" and r.comparison.n_seeds_new == 2 and r.names == ("round16/han-performer", "round15/han-performer")
    with pytest.raises(ValueError, match=r"a folder of rounds' cells \(han-performer\): gate one of them"):
        load_round(tmp_path / "round16")
    write_pred_run(tmp_path / "round16" / "han-performer", "seed9", base, seed=10)
    with pytest.raises(ValueError, match="field 'seed' is 10, but its folder is seed9"):
        load_round(tmp_path / "round16" / "han-performer")


def test_cv_seeds_output_is_gated(tmp_path, capsys):
    """`percepiano cv --seeds` end to end on the synthetic dataset (1 epoch, hidden size 4, 2 folds)."""
    data = Path(__file__).parent / "data" / "synthetic_m2pf.npz"
    args = ["cv", "--preset", "bilstm", "--split", "composition", "--data", str(data), "--epochs", "1",
            "--hidden-size", "4", "--folds", "0,1", "--device", "cpu", "--threads", "1", "--no-progress"]
    assert main(args + ["--seeds", "7,8", "--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--seeds", "7,8", "--lr", "1e-3", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    code = main(["gate", str(tmp_path / "b"), "--against", str(tmp_path / "a"), "--json"])
    v = json.loads(capsys.readouterr().out)
    assert code == v["exit_code"] and v["verdict"] in P.VERDICTS
    assert v["seeds"] == {"new": [7, 8], "old": [7, 8]} and v["config_differences"] == ["train_config.lr: 2.5e-05 -> 0.001"]


# ------------------------------------------------------------------------------------------------ targets
def test_against_published_targets(tmp_path):
    # composition han target 0.397, tolerance 0.03 in percepiano/resources/regression_targets.json
    ok = write_run(tmp_path, "ok", "han", "composition", [0.37, 0.37, 0.37, 0.37])
    bad = write_run(tmp_path, "bad", "han", "composition", [0.36, 0.36, 0.36, 0.36])
    r_ok, r_bad = gate(ok), gate(bad)
    assert r_ok.reference == pytest.approx(0.397, abs=EXACT) and r_ok.allowed_drop == pytest.approx(0.03, abs=EXACT)
    assert r_ok.passed and not r_bad.passed and r_ok.exit_code == 0 and r_bad.exit_code == 1
    assert r_ok.interval is None and any("no interval" in n for n in r_ok.notes)  # no predictions saved
    assert gate(bad, tolerance=0.05).passed
    # performer bilstm_sa has no published number: the gate refuses rather than inventing one
    none = write_run(tmp_path, "none", "bilstm_sa", "performer", [0.3] * 4)
    with pytest.raises(ValueError, match="has no target for preset 'bilstm_sa' on split 'performer'"):
        gate(none)


def test_targets_gate_reports_the_interval(tmp_path, base, capsys):
    run = write_pred_run(tmp_path, "han", base)  # performer han: target 0.285
    r = gate(run)
    iv = r.interval.overall
    assert iv.value == pytest.approx(r.value, abs=1e-9) and iv.low < r.value < iv.high
    inside = iv.contains(0.285)
    assert main(["gate", str(run)]) == r.exit_code
    out = capsys.readouterr().out
    assert f"target 0.2850 is {'inside' if inside else 'outside'} it" in out
    v = gate_json(r)
    assert v["interval"]["target_inside"] is inside and v["interval"]["level"] == 0.95


def test_default_tolerance_when_the_targets_file_has_none(tmp_path):
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({"targets": {"composition": {"han": 0.40}}}))
    run = write_run(tmp_path, "r", "han", "composition", [0.39] * 4)
    r = gate(run, targets_file=targets)
    assert r.allowed_drop == DEFAULT_TOLERANCE and r.passed


def test_per_label_targets_are_refused(tmp_path):
    run = write_run(tmp_path, "r", "han", "composition", [0.3] * 4, per_label=[[0.10, 0.40]] * 4)
    with pytest.raises(ValueError, match="per-label target"):
        gate(run, label="timing")  # the paper gives no per-label targets


# ------------------------------------------------------------------------------------------------- ridge
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


def test_a_baseline_must_be_ridge_on_the_same_split_and_folds(tmp_path):
    run = write_run(tmp_path, "han", "han", "composition", [0.45] * 4)
    neural = write_run(tmp_path / "x", "bilstm_sa", "bilstm_sa", "composition", [0.3] * 4)
    with pytest.raises(ValueError, match=r"bilstm_sa/results\.json: field 'preset': a baseline is a `percepiano cv "
                                         r"--preset ridge` run, this is 'bilstm_sa'"):
        gate(run, baseline=neural, require_baseline=True)
    two_folds = write_run(tmp_path / "y", "ridge", "ridge", "composition", [0.5] * 2)
    with pytest.raises(ValueError, match=r"field 'folds': the baseline covers folds \[0, 1\], this run \[0, 1, 2, 3\]"):
        gate(run, baseline=two_folds)
    beside = write_run(tmp_path / "z", "ridge", "ridge", "composition", [0.5] * 2)  # next to the run below
    lonely = write_run(tmp_path / "z", "han", "han", "composition", [0.45] * 4)
    r = gate(lonely, require_baseline=True)
    assert r.baseline is None and r.exit_code == 1
    assert any(f"({beside}) covers folds [0, 1], this run [0, 1, 2, 3]: not compared" in n for n in r.notes), r.notes


def test_require_baseline_fails_the_whole_gate_in_its_json_and_first_words(tmp_path):
    """--require-baseline with a comparison that passes: exit 1, and the JSON's passed and the verdict line say
    the gate failed (a CI job reading either merged a round the gate had failed)."""
    run = write_run(tmp_path, "han", "han", "composition", [0.40] * 4)
    write_run(tmp_path, "ridge", "ridge", "composition", [0.42] * 4)
    r = gate(run, require_baseline=True)
    assert r.passed and r.exit_code == 1
    assert gate_json(r)["passed"] is False and gate_json(r)["comparison_passed"] is True
    assert verdict_line(r).startswith("FAIL (exit 1): --require-baseline and the run does not beat the baseline")
    assert "the comparison alone: PASS: mean_test_r2 0.4000" in verdict_line(r)
    assert gate_json(gate(run))["passed"] is True  # informative by default


@pytest.mark.parametrize("option, value, message", [
    ("tolerance", -0.01, r"--tolerance: expected a number >= 0, got -0\.01"),
    ("training_sd", -0.1, r"--training-sd: expected a number >= 0, got -0\.1"),
    ("level", 1.5, r"--level: expected a number between 0 and 1, got 1\.5"),
    ("resamples", 0, r"--resamples: expected an integer >= 1, got 0"),
    ("training_sd", 0.05, r"--training-sd applies to --against OLD_RUN"),
])
def test_gate_options_out_of_range_or_out_of_place_are_refused(tmp_path, option, value, message):
    """Before: a negative --tolerance silently tightened the targets gate, and --training-sd, --level and
    --resamples went unchecked (or unused) against the targets of a run without predictions."""
    run = write_run(tmp_path, "han", "han", "composition", [0.40] * 4)
    with pytest.raises(ValueError, match=message):
        gate(run, **{option: value})


def test_a_round_cell_with_a_seed_still_training_is_gated_on_the_finished_seeds_and_says_so(tmp_path, base):
    cell = tmp_path / "han-performer"
    for s in (7, 8):
        write_pred_run(cell, f"seed{s}", base, seed=s)
    (cell / "seed9" / "fold0").mkdir(parents=True)  # training: no results.json yet
    r = gate(cell, cell)
    assert r.round.seeds == [7, 8]
    assert "seed folder(s) without results.json, not gated: seed9" in r.notes


def test_a_seeds_round_finds_the_ridge_run_next_to_it(tmp_path, base):
    old = write_seeds_round(tmp_path, "round15", [base, base], [7, 8])
    write_run(tmp_path, "ridge", "ridge", "performer", [0.9] * 4)
    r = gate(old, old)
    assert r.baseline["value"] == pytest.approx(0.9, abs=EXACT) and not r.baseline["beaten"]


def test_gate_on_the_committed_tiny_run(capsys):
    """The committed tiny real run (2-3 epochs, hidden 8) is far below the paper: the gate must say so."""
    assert main(["gate", str(TINY / "han"), "--against", "targets"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT BEAT THE RIDGE BASELINE" in out
    assert "limit_segments=32" in out and "original protocol 100" in out
    assert "only 3 excerpt clusters in the test set" in out  # 32 test segments of 3 excerpts
    assert main(["gate", str(TINY / "han"), "--against", str(TINY / "han" / "results.json")]) == 0
    capsys.readouterr()
    assert main(["gate", str(TINY / "bilstm_sa"), "--against", str(TINY / "han" / "results.json"), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["passed"] is False and verdict["exit_code"] == 1 and verdict["verdict"] == "worse"
    assert verdict["config_differences"] == ["preset: 'han' -> 'bilstm_sa'", "model_config.level: 'measure' -> 'note'"]
    # ridge was tested on the full test split, the tiny run on its first 32 segments: no paired comparison
    assert main(["gate", str(TINY / "han"), "--against", str(TINY / "ridge")]) == 2
    assert "the test segment ids differ" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ real saved predictions
@pytest.mark.skipif(not os.environ.get("PERCEPIANO_DATA"), reason="real data: set PERCEPIANO_DATA to percepiano_vnet_m2pf.npz")
def test_known_effects_on_the_real_ridge_predictions(tmp_path):
    """The ridge baseline's real per-segment test predictions (performer split, 190 segments of 98 excerpts):
    itself -> not worse; noise costing 0.09 of R² -> worse; under the null a false-alarm rate at most nominal."""
    pytest.importorskip("sklearn")
    assert main(["cv", "--preset", "ridge", "--split", "performer", "--out", str(tmp_path / "ridge")]) == 0
    ridge = load_folds(tmp_path / "ridge")
    assert gate(tmp_path / "ridge", tmp_path / "ridge").verdict == "not worse"
    names = json.loads((tmp_path / "ridge" / "results.json").read_text())["label_names"]
    noisy = write_pred_run(tmp_path, "noisy", P.noise_added(ridge, 0.3, np.random.default_rng(0)), preset="ridge",
                           label_names=names)
    r = gate(noisy, tmp_path / "ridge")
    assert r.verdict == "worse" and r.comparison.overall.value == pytest.approx(-0.09, abs=0.02)
    assert r.comparison.clusters == (98,) and r.comparison.n_segments == 190
    experiments, nominal = 100, (1 - P.DEFAULT_LEVEL) / 2
    null = lambda rng, f: P.noise_added(f, 0.2, rng)  # noqa: E731
    sim = P.simulate_verdicts(ridge, null, experiments, 0.0, make_old=null, resamples=400)
    assert sim.fractions["worse"] <= nominal + 2 * np.sqrt(nominal * (1 - nominal) / experiments)
