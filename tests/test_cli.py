"""The command line: every command is reachable in workflow order, and bad input of any kind (data, checkpoints,
result files, devices, a full disk, a closed pipe) ends in one clear line, never a traceback."""
from __future__ import annotations

import errno
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from percepiano import checkpoints as C
from percepiano import cli, commands
from percepiano.commands.evaluate import MAX_AUTO_THREADS, auto_threads
from percepiano.data import load_dataset
from percepiano.synthetic import dataset_arrays
from percepiano.training import evaluate_model

SYNTHETIC = Path(__file__).parent / "data" / "synthetic_m2pf.npz"
TINY = Path(__file__).parent / "data" / "tiny_runs"
TRAIN = ["--split", "composition", "--fold", "0", "--epochs", "1", "--limit-segments", "6", "--hidden-size", "8",
         "--threads", "1", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_command_module_is_a_command():
    modules = {m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}
    assert set(cli.COMMANDS) == modules
    assert len(cli.COMMANDS) == len(set(cli.COMMANDS))


def test_help_lists_the_commands_in_workflow_order(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    positions = [out.index(f"    {name.replace('_', '-')} ") if f"    {name.replace('_', '-')} " in out
                 else out.index(f"    {name.replace('_', '-')}\n") for name in cli.COMMANDS]
    assert positions == sorted(positions)


def test_no_command_is_an_error_with_the_usage(capsys):
    assert cli.main([]) == 2
    assert "usage: percepiano" in capsys.readouterr().err


def _error(capsys, command: str) -> str:
    """The one stderr line of a refused command (and nothing on stdout)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines and lines[-1].startswith(f"percepiano {command}: error: "), captured.err
    assert "Traceback" not in captured.err and not captured.out
    return lines[-1]


# ------------------------------------------------------------------------------------------ a closed pipe


def test_a_closed_stdout_pipe_exits_quietly():
    """``percepiano data-summary | head -1``: the reader has gone; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader exits before the first write
    try:
        proc = subprocess.run([sys.executable, "-m", "percepiano", "data-summary", "--data", str(SYNTHETIC)],
                              stdout=write_end, stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(write_end)
    assert proc.stderr.decode() == ""
    assert proc.returncode == cli.BROKEN_PIPE_EXIT


# ------------------------------------------------------------------------------------------ devices


@pytest.mark.parametrize("device, message", [
    ("gpu0", r"device 'gpu0': expected auto, cpu, cuda, cuda:N \(N a GPU index\) or mps"),
    ("meta", "device 'meta': expected auto, cpu, cuda"),
    ("cuda", "device 'cuda': no cuda device is available"),
    ("cuda:1", "device 'cuda:1': no cuda device is available"),
])
def test_devices_that_cannot_be_used_are_clear_errors(tmp_path, capsys, device, message):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert cli.main(["train", "--preset", "han", "--out", str(tmp_path / "run"), "--data", str(SYNTHETIC),
                     "--device", device, *TRAIN]) == 2
    assert re.search(message, _error(capsys, "train"))


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "han", "--seed", "-1", *TRAIN], r"TrainConfig\.seed: expected an integer in 0\.\.4294967295"),
    (["cv", "--preset", "han", "--seeds", "7,-1", "--split", "composition", "--folds", "0", "--epochs", "1"],
     r"--seeds: expected distinct comma-separated integers from 0-4294967295, got '7,-1'"),
    (["round", "--presets", "han", "--splits", "composition", "--seeds", f"{2**32}"],
     r"--seeds: expected distinct comma-separated integers from 0-4294967295"),
])
def test_a_seed_numpy_cannot_take_is_refused_before_anything_is_trained_or_written(tmp_path, capsys, argv, message):
    """numpy seeds only 0..2**32-1: a seed outside used to fail after the seeds before it had trained (hours),
    leaving a seeds.json that refused the corrected command."""
    assert cli.main([*argv, "--out", str(tmp_path / "run"), "--data", str(SYNTHETIC)]) == 2
    assert re.search(message, _error(capsys, argv[0]))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny han fold trained for 1 epoch on 6 segments per part: its best.pt, last.pt and the data file."""
    root = tmp_path_factory.mktemp("trained")
    assert cli.main(["train", "--preset", "han", "--out", str(root / "run"), "--data", str(SYNTHETIC), *TRAIN]) == 0
    return root / "run"


def _evaluate(checkpoint, *extra):
    return cli.main(["evaluate", str(checkpoint), "--split", "composition", "--fold", "0", "--data", str(SYNTHETIC),
                     "--threads", "1", *extra])


def test_evaluate_reports_the_checkpoint_metrics_with_progress_and_protocol_notes(trained, capsys):
    assert _evaluate(trained / "best.pt") == 0  # the progress bar on: its per-batch hook must not touch the output
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    model, _ = C.load_trained_model(trained / "best.pt")
    data = load_dataset(SYNTHETIC)
    want = evaluate_model(model, data, data.split_indices("composition", 0, "test"), feature_set="full")["metrics"]
    assert summary["r2"] == pytest.approx(want["r2"], abs=1e-12) and summary["n"] == want["n"]
    assert summary["protocol_notes"] == C.protocol_notes(torch.load(trained / "best.pt", weights_only=True))
    for text in ("note: trained on a subset: limit_segments=6", "note: trained for 1 epoch(s)", "note: hidden_size = 8",
                 "evaluating", "1 thread(s)", "6/6"):
        assert text in captured.err, text


def test_evaluate_refuses_non_finite_predictions(trained, capsys, monkeypatch):
    from percepiano import training

    real = training.predict_split

    def nan_predictions(*args, **kwargs):
        out = real(*args, **kwargs)
        out.predictions[1, 4] = np.nan
        return out

    monkeypatch.setattr(training, "predict_split", nan_predictions)
    assert _evaluate(trained / "best.pt", "--no-progress") == 2
    assert "predictions are not finite for 1 of 6 segments" in _error(capsys, "evaluate")


def _tampered(trained, tmp_path, name, kind="best"):
    """A copy of the trained checkpoint of ``kind``, broken as ``name`` says."""
    src = trained / f"{kind}.pt"
    path = tmp_path / f"{kind}.pt"
    ck = torch.load(src, weights_only=True)
    raw = src.read_bytes()
    if name == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif name == "empty":
        path.write_bytes(b"")
    elif name == "random":
        path.write_bytes(np.random.default_rng(1).bytes(2048))
    elif name == "pickle":
        torch.save({**ck, "extra": C.AtomicWriteError("a pickled object")}, path)
    elif name == "no-model-state":
        torch.save({k: v for k, v in ck.items() if k != "model_state"}, path)
    elif name == "wrong-shapes":
        torch.save({**ck, "model_state": {k: v[:1] if v.dim() else v for k, v in ck["model_state"].items()}}, path)
    elif name == "nan-weights":
        torch.save({**ck, "model_state": {k: v * float("nan") for k, v in ck["model_state"].items()}}, path)
    return path


BROKEN = {
    "truncated": "a truncated or damaged torch archive",
    "empty": r"empty file \(0 bytes\)",
    "random": "not a torch checkpoint",
    "pickle": r"holds pickled Python objects \(percepiano.checkpoints.AtomicWriteError\)",
    "no-model-state": r"checkpoint without \['model_state'\]",
    "wrong-shapes": r"the weights do not fit the model config .*shape mismatches",
    "nan-weights": r"non-finite weights \(NaN or inf\)",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_evaluate_names_what_is_wrong_with_a_checkpoint(trained, tmp_path, capsys, name):
    path = _tampered(trained, tmp_path, name)
    assert _evaluate(path, "--no-progress") == 2
    line = _error(capsys, "evaluate")
    assert f"error: {path}: " in line
    assert re.search(BROKEN[name], line), line
    assert "Weights only load failed" not in line


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_train_resume_names_what_is_wrong_with_last_pt(trained, tmp_path, capsys, name):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.copy(_tampered(trained, tmp_path, name, kind="last"), run / "last.pt")
    argv = ["train", "--preset", "han", "--out", str(run), "--data", str(SYNTHETIC), *TRAIN, "--resume"]
    argv[argv.index("--epochs") + 1] = "2"
    assert cli.main(argv) == 2
    line = _error(capsys, "train")
    assert f"{run / 'last.pt'}: " in line and re.search(BROKEN[name], line), line


def test_evaluate_takes_a_checkpoint_of_another_preset(tmp_path, capsys):
    """A bilstm checkpoint (9 inputs) is evaluated on its own feature set."""
    out = tmp_path / "bilstm"
    assert cli.main(["train", "--preset", "bilstm", "--out", str(out), "--data", str(SYNTHETIC), *TRAIN]) == 0
    capsys.readouterr()
    assert _evaluate(out / "best.pt", "--no-progress") == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6


def test_auto_threads_leaves_busy_cores_alone():
    assert auto_threads(cores=2, load=1.9) == 1  # a busy 2-core machine: one thread
    assert auto_threads(cores=2, load=0.2) == 2
    assert auto_threads(cores=1, load=0.0) == 1
    assert auto_threads(cores=16, load=0.5) == MAX_AUTO_THREADS
    assert auto_threads(cores=8, load=30.0) == 1
    assert 1 <= auto_threads() <= MAX_AUTO_THREADS


def test_evaluate_refuses_zero_threads(trained, capsys):
    assert _evaluate(trained / "best.pt", "--threads", "0") == 2
    assert "--threads: expected a positive number" in _error(capsys, "evaluate")


# ------------------------------------------------------------------------------------------ a full disk


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_a_full_disk_while_writing_a_checkpoint_is_a_clear_error(tmp_path, capsys, monkeypatch, where):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(*((torch, "save") if where == "torch.save" else (os, "replace")), no_space)
    run = tmp_path / "run"
    assert cli.main(["train", "--preset", "han", "--out", str(run), "--data", str(SYNTHETIC), *TRAIN]) == 2
    line = _error(capsys, "train")
    assert ".pt: could not be written (No space left on device); nothing was written there" in line
    assert not list(run.glob("*.pt")) and not list(run.glob(".*tmp*"))  # no partial checkpoint


# ------------------------------------------------------------------------------------------ data files


def test_a_plain_npy_as_data_is_a_clear_error(tmp_path, capsys):
    np.save(tmp_path / "input.npy", dataset_arrays(12, seed=1)["input"])
    assert cli.main(["evaluate", str(TINY / "han" / "results.json"), "--split", "composition", "--fold", "0",
                     "--data", str(tmp_path / "input.npy")]) == 2  # the checkpoint is read first
    assert "results.json: not a torch checkpoint" in _error(capsys, "evaluate")
    assert cli.main(["data-summary", "--data", str(tmp_path / "input.npy")]) == 2
    assert "input.npy: a single array (a plain .npy file)" in _error(capsys, "data-summary")


# ------------------------------------------------------------------------------------------ result files


def _copy_runs(tmp_path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(TINY, runs)
    return runs


@pytest.mark.parametrize("text", ["null", json.dumps({"preset": "ridge", "split": "composition", "mean_test_r2": 0.1,
                                                     "folds": "x"})])
def test_a_malformed_sibling_run_does_not_break_gate_label_or_report(tmp_path, capsys, text):
    runs = _copy_runs(tmp_path)
    (runs / "broken").mkdir()
    (runs / "broken" / "results.json").write_text(text)
    han = str(runs / "han" / "results.json")
    # per-label gating takes the ridge baseline from the sibling run directories, where the broken one lies too
    assert cli.main(["gate", han, "--against", han, "--label", "0"]) == 0
    assert "| vs ridge baseline" in capsys.readouterr().out  # found and compared, past the broken sibling
    if text == "null":  # the report looks for its mean/ridge baselines there too
        pytest.importorskip("matplotlib")
        assert cli.main(["report", str(runs / "han"), "--out", str(tmp_path / "report")]) == 0
        assert "report.md" in capsys.readouterr().out


def test_a_label_gate_on_results_without_per_label_r2_names_the_field(tmp_path, capsys):
    runs = _copy_runs(tmp_path)
    path = runs / "han" / "results.json"
    res = json.loads(path.read_text())
    for f in res["folds"]:
        del f["per_label_test_r2"]
    path.write_text(json.dumps(res))
    assert cli.main(["gate", str(path), "--against", str(path), "--label", "0"]) == 2
    assert re.search(r"han/results\.json: field 'folds\[0\]\.per_label_test_r2': missing, and label '\w+' needs it",
                     _error(capsys, "gate"))


@pytest.mark.parametrize("text, message", [
    ("null", "expected a JSON object .*got null"),
    ('{"mean_test_r2": 0.99', "not a valid `percepiano cv` results file"),
    ("mean", "field 'mean_test_r2': 0.99 is not the mean of the folds' test_r2"),
    ("inf", "field 'mean_test_r2': not a finite number"),
])
def test_gate_names_a_results_file_it_cannot_trust(tmp_path, capsys, text, message):
    runs = _copy_runs(tmp_path)
    path = runs / "han" / "results.json"
    res = json.loads(path.read_text())
    if text in ("mean", "inf"):
        res["mean_test_r2"] = 0.99 if text == "mean" else float("inf")
        text = json.dumps(res)
    path.write_text(text)
    assert cli.main(["gate", str(path)]) == 2
    line = _error(capsys, "gate")
    assert str(path) in line and re.search(message, line), line


@pytest.mark.parametrize("text", ["null", "{", '{"composition": {"han": "high"}}'])
def test_gate_names_a_targets_file_it_cannot_use(tmp_path, capsys, text):
    targets = tmp_path / "targets.json"
    targets.write_text(text)
    assert cli.main(["gate", str(TINY / "han" / "results.json"), "--targets", str(targets)]) == 2
    assert f"error: {targets}: " in _error(capsys, "gate")


@pytest.mark.parametrize("text, message", [("null\n", "line 1: expected a JSON object"),
                                           ('{"epoch": 1\n', "line 1 is not valid JSON")])
def test_report_names_a_broken_log(tmp_path, capsys, text, message):
    pytest.importorskip("matplotlib")
    runs = _copy_runs(tmp_path)
    log = runs / "han" / "fold0" / "log.jsonl"
    log.write_text(text)
    assert cli.main(["report", str(runs / "han"), "--out", str(tmp_path / "report"), "--no-find-baselines"]) == 2
    assert f"error: {log}: {message}" in _error(capsys, "report")
