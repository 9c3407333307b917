"""`percepiano cv` runs and their directories: a run is reused or continued only when its identity (preset,
configs, seed, split, fold, code, dataset sha256) is the requested one; results.json / results.csv; multi-seed
rounds; the option errors. Tiny bilstm folds on a synthetic dataset file, CPU, one thread."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from percepiano.cli import main
from percepiano.results import load_seeds_index
from percepiano.synthetic import dataset_arrays as synthetic_arrays

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.npz"
    np.savez(path, **synthetic_arrays(40, seed=0))
    return path


@pytest.fixture
def cv(data_file, capsys):
    """``cv(out, *args)``: `percepiano cv` on the synthetic file -> (exit code, stderr); neural by default a
    1-epoch bilstm of hidden size 8 on fold 0."""

    def run(out, *args, preset="bilstm", small=True):
        neural = ["--epochs", "1", "--hidden-size", "8", "--device", "cpu", "--threads", "1", "--no-progress"]
        argv = ["cv", "--preset", preset, "--split", "performer", "--out", str(out), "--data", str(data_file),
                *(["--folds", "0"] if "--folds" not in args else []), *(neural if small and preset != "ridge" else []),
                *args]
        code = main(argv)
        return code, capsys.readouterr().err

    return run


def _results(out):
    return json.loads((out / "results.json").read_text())


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_ridge_then_han_resume_is_refused(cv, tmp_path):
    """A finished ridge fold is not "the han fold": cv --preset han --resume refuses it, naming what differs,
    and leaves the ridge run as it was (before: results.json said han with ridge's numbers)."""
    out = tmp_path / "run"
    assert cv(out, preset="ridge")[0] == 0
    before = _snapshot(out)
    code, err = cv(out, "--resume", preset="han")
    assert code == 2
    assert err.startswith("percepiano cv: error: ") and "cannot continue it" in err
    assert "preset: saved 'ridge', requested 'han'" in err and "train_config: saved None" in err
    assert _snapshot(out) == before and _results(out)["preset"] == "ridge"


def test_resume_refuses_changed_settings_and_extends_epochs(cv, tmp_path):
    out = tmp_path / "run"
    assert cv(out)[0] == 0
    for args, field in ((["--lr", "1e-3"], "train_config.lr: saved 2.5e-05, requested 0.001"),
                        (["--hidden-size", "16"], "model_config.hidden_size: saved 8, requested 16"),
                        (["--seed", "8"], "train_config.seed: saved 7, requested 8")):
        code, err = cv(out, "--resume", *args)
        assert code == 2 and field in err, args
    # more epochs: the finished fold continues from its last.pt
    code, err = cv(out, "--resume", "--epochs", "2")
    assert code == 0, err
    res = _results(out)
    assert res["epochs"] == 2 and res["folds"][0]["epochs_trained"] == 2
    assert res["identity"]["train_config"]["epochs"] == 2
    code, err = cv(out, "--resume", "--epochs", "2")  # the same request again: reused as it is
    assert code == 0 and "already finished, reused: fold 0" in err
    assert _results(out)["folds"] == res["folds"]


def test_cv_into_a_directory_holding_another_run_is_refused(cv, tmp_path):
    """Before: a neural cv over a baseline run replaced fold 0 and results.json and left folds 1-3."""
    out = tmp_path / "run"
    assert cv(out, "--folds", "0,1,2,3", preset="ridge")[0] == 0
    before = _snapshot(out)
    code, err = cv(out)
    assert code == 2
    assert "already holds a run (fold0/, fold1/, fold2/, fold3/, results.json); pass --resume" in err
    assert _snapshot(out) == before


def test_resume_may_add_folds_but_not_drop_them(cv, tmp_path):
    out = tmp_path / "run"
    assert cv(out, "--folds", "0,1", preset="ridge")[0] == 0
    code, err = cv(out, "--resume", "--folds", "0", preset="ridge")
    assert code == 2 and "it covers folds [0, 1], requested [0]; a resume may add folds, not drop them: pass --folds 0,1" in err
    code, err = cv(out, "--resume", "--folds", "0,1,2", preset="ridge")
    assert code == 0 and err.count("already finished, reused") == 2
    assert [f["fold"] for f in _results(out)["folds"]] == [0, 1, 2]


def test_cv_resume_refuses_a_fold_without_identity(cv, tmp_path):
    out = tmp_path / "run"
    assert cv(out, preset="ridge")[0] == 0
    for path in (out / "results.json", out / "fold0" / "fold_result.json"):
        saved = json.loads(path.read_text())
        del saved["identity"]
        path.write_text(json.dumps(saved))
    code, err = cv(out, "--resume", preset="ridge")
    assert code == 2 and "results.json: written without a run identity" in err
    (out / "results.json").unlink()
    code, err = cv(out, "--resume", preset="ridge")
    assert code == 2 and "fold_result.json: written without a run identity" in err


def test_cv_resume_refuses_a_fold_with_nothing_to_resume(cv, tmp_path):
    out = tmp_path / "run"
    (out / "fold0").mkdir(parents=True)
    (out / "fold0" / "best.pt").write_bytes(b"")
    code, err = cv(out, "--resume")
    assert code == 2 and "fold0 holds best.pt but neither fold_result.json nor last.pt" in err


def test_keep_best_then_resume_reuses_the_fold(cv, tmp_path):
    out = tmp_path / "run"
    assert cv(out, "--keep", "best")[0] == 0
    assert sorted(p.name for p in (out / "fold0").iterdir()) == [
        "best.pt", "fold_result.json", "log.jsonl", "test_predictions.npz"]
    first = _results(out)
    assert first["keep"] == "best"
    code, err = cv(out, "--resume")
    assert code == 0 and "already finished, reused: fold 0" in err
    assert _results(out)["folds"] == first["folds"]
    code, err = cv(out, "--resume", "--epochs", "2")  # its last.pt is gone: it cannot train further
    assert code == 2 and "was removed by --keep best cannot be trained further" in err


def test_reuse_under_another_code_version_is_recorded(cv, tmp_path, monkeypatch):
    from percepiano import provenance

    out = tmp_path / "run"
    assert cv(out)[0] == 0
    old = provenance.code_version()
    new = {"version": "9.9.9", "commit": old["commit"]}
    monkeypatch.setattr(provenance, "code_version", lambda: dict(new))
    code, err = cv(out, "--resume")
    assert code == 2 and "code.version: saved '" in err and "--allow-code-change" in err
    code, err = cv(out, "--resume", "--allow-code-change")
    assert code == 0, err
    res = _results(out)
    assert res["code_changes"] == [{"fold": 0, "how": "reused", "saved": old, "requested": new}]
    assert res["identity"]["code"] == new and res["folds"][0]["identity"]["code"] == old


def test_a_run_restored_from_its_small_outputs_is_reused_only_when_asked(cv, tmp_path):
    """A run copied to another machine without its checkpoints and predictions (what `round --export` keeps):
    `--resume` refuses its folds and names the option; with `--reuse-without-checkpoint` they are reused, their
    numbers unchanged, and results.json lists them."""
    import shutil

    out, restored = tmp_path / "run", tmp_path / "restored"
    assert cv(out, "--folds", "0,1")[0] == 0
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl"):
            (restored / path.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, restored / path.relative_to(out))
    code, err = cv(restored, "--folds", "0,1", "--resume")
    assert code == 2 and "fold_result.json without best.pt" in err and "--reuse-without-checkpoint" in err
    code, err = cv(restored, "--folds", "0,1", "--resume", "--reuse-without-checkpoint")
    assert code == 0, err
    assert err.count("already finished, reused") == 2 and not (restored / "fold0" / "best.pt").exists()
    again, first = _results(restored), _results(out)
    assert again["folds_without_checkpoint"] == [0, 1] and first["folds_without_checkpoint"] == []
    assert [{k: v for k, v in f.items() if k != "dir"} for f in again["folds"]] == [
        {k: v for k, v in f.items() if k != "dir"} for f in first["folds"]]
    assert again["mean_test_r2"] == first["mean_test_r2"]


def test_results_record_command_threads_and_csv(cv, tmp_path):
    out = tmp_path / "run"
    assert cv(out, "--folds", "0,2")[0] == 0
    res = _results(out)
    assert res["command"].startswith("percepiano cv --preset bilstm --split performer --out ")
    assert res["command"].endswith("--epochs 1 --hidden-size 8 --device cpu --threads 1 --no-progress --folds 0,2")
    assert res["threads"] == 1 == torch.get_num_threads()
    ident = res["identity"]
    assert set(ident) == {"preset", "model_config", "train_config", "split", "feature_set", "code", "data"}
    assert ident["preset"] == "bilstm" and ident["train_config"] == res["config"]["train"]
    assert ident["data"]["sha256"] == res["data"]["sha256"]
    assert [f["identity"]["fold"] for f in res["folds"]] == [0, 2]

    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    labels = res["label_names"]
    assert rows[0] == ["fold", "best_epoch", "test_r2", "test_mse", "valid_loss", *[f"test_r2_{n}" for n in labels]]
    assert [r[0] for r in rows[1:]] == ["0", "2", "mean", "std"]
    table = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    folds = np.array([[f["best_epoch"], f["test_r2"], f["test_mse"], f["valid_loss"], *f["per_label_test_r2"]]
                      for f in res["folds"]])
    np.testing.assert_array_equal(table[:2], folds)  # full precision
    np.testing.assert_allclose(table[2], folds.mean(axis=0), rtol=1e-15, atol=0)
    np.testing.assert_allclose(table[3], folds.std(axis=0), rtol=1e-12, atol=1e-17)
    assert table[2, 1] == pytest.approx(res["mean_test_r2"], abs=1e-15)
    assert table[3, 1] == pytest.approx(res["fold_std"], abs=1e-15)


def test_baseline_results_csv_has_no_best_epoch(cv, tmp_path):
    out = tmp_path / "ridge"
    assert cv(out, "--folds", "0,1", preset="ridge")[0] == 0
    rows = list(csv.reader(open(out / "results.csv", newline="")))
    assert [r[1] for r in rows[1:]] == ["", "", "", ""]  # no epochs: no best epoch, no mean of one
    assert float(rows[3][2]) == pytest.approx(_results(out)["mean_test_r2"], abs=1e-15)
    assert _results(out)["seed"] is None


def test_seeds_train_every_seed_into_its_own_run(cv, tmp_path):
    out = tmp_path / "round"
    code, err = cv(out, "--seeds", "7,8")
    assert code == 0, err
    index = load_seeds_index(out)
    assert index == {"seeds": [7, 8], "runs": ["seed7", "seed8"], "preset": "bilstm", "split": "performer"}
    assert json.loads((out / "seeds.json").read_text()) == index
    assert sorted(p.name for p in out.iterdir()) == ["seed7", "seed8", "seeds.json"]
    runs = [_results(out / run) for run in index["runs"]]
    assert [r["seed"] for r in runs] == [7, 8] and [r["identity"]["train_config"]["seed"] for r in runs] == [7, 8]
    assert runs[0]["folds"][0]["test_r2"] != runs[1]["folds"][0]["test_r2"]  # really another seed
    for run in index["runs"]:
        assert (out / run / "results.csv").is_file() and (out / run / "fold0" / "best.pt").is_file()
    # resume: every seed reused; another set of seeds is refused
    code, err = cv(out, "--seeds", "7,8", "--resume")
    assert code == 0 and err.count("already finished, reused") == 2
    code, err = cv(out, "--seeds", "7,9", "--resume")
    assert code == 2 and "seeds: saved [7, 8], requested [7, 9]" in err
    # one seed: the ordinary layout
    assert cv(tmp_path / "one", "--seeds", "8")[0] == 0
    timeless = lambda folds: [{k: v for k, v in f.items() if k != "train_seconds"} for f in folds]  # noqa: E731
    assert timeless(_results(tmp_path / "one")["folds"]) == timeless(runs[1]["folds"])


def test_seeds_and_single_runs_do_not_mix(cv, tmp_path):
    single = tmp_path / "single"
    assert cv(single)[0] == 0
    code, err = cv(single, "--seeds", "7,8", "--resume")
    assert code == 2 and "holds a single-seed run (fold0/, results.json)" in err
    multi = tmp_path / "multi"
    assert cv(multi, "--seeds", "7,8")[0] == 0
    code, err = cv(multi, "--resume")
    assert code == 2 and "seed7/, seed8/, seeds.json: a `percepiano train` fold or a multi-seed round" in err


@pytest.mark.parametrize("args, preset, message", [
    (["--threads", "0"], "bilstm", "--threads: expected an integer >= 1, got 0"),
    (["--threads", "-2"], "bilstm", "--threads: expected an integer >= 1, got -2"),
    (["--folds", "a,b"], "bilstm", "--folds: expected distinct comma-separated integers from 0-3, got 'a,b'"),
    (["--folds", "0,0"], "bilstm", "--folds: expected distinct comma-separated integers from 0-3, got '0,0'"),
    (["--folds", "4"], "bilstm", "--folds: expected distinct comma-separated integers from 0-3, got '4'"),
    (["--seeds", "7,x"], "bilstm", "--seeds: expected distinct comma-separated integers from 0-4294967295, got '7,x'"),
    (["--seeds", "7,8", "--seed", "7"], "bilstm", "--seed and --seeds: give one of them"),
    (["--allow-code-change"], "bilstm", "--allow-code-change only applies with --resume"),
    (["--reuse-without-checkpoint"], "bilstm", "--reuse-without-checkpoint only applies with --resume"),
    (["--epochs", "0"], "bilstm", "--epochs: expected an integer >= 1, got 0"),
    (["--epochs", "3"], "ridge", "--epochs: the ridge baseline trains nothing and would ignore it"),
    (["--lr", "1e-3", "--max-batches", "2"], "mean", "--lr, --max-batches: the mean baseline trains nothing"),
    (["--hidden-size", "8", "--seeds", "7,8"], "ridge", "--hidden-size, --seeds: the ridge baseline"),
    (["--parallel-folds", "2"], "ridge", "--parallel-folds: the ridge baseline trains nothing"),
])
def test_option_errors(cv, tmp_path, args, preset, message):
    code, err = cv(tmp_path / "run", *args, preset=preset, small=False)
    assert code == 2 and err.startswith(f"percepiano cv: error: {message}"), err
    assert not (tmp_path / "run").exists()


def test_out_naming_a_file_is_an_error(cv, tmp_path):
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        code, err = cv(out, small=False, preset="ridge")
        assert code == 2 and f"percepiano cv: error: --out {out}: {tmp_path / 'file'} is a file" in err


def test_train_resume_on_an_empty_directory_is_refused(data_file, tmp_path, capsys):
    """Before: `train --resume` on a directory without last.pt trained from scratch."""
    code = main(["train", "--preset", "bilstm", "--split", "performer", "--fold", "0", "--out", str(tmp_path / "run"),
                 "--data", str(data_file), "--epochs", "1", "--hidden-size", "8", "--device", "cpu", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and f"percepiano train: error: nothing to resume in {tmp_path / 'run'}: no last.pt" in err
    assert not (tmp_path / "run").exists()
