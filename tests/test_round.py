"""`percepiano round` on a real local Ray cluster: the same per-fold results as `percepiano train` task by task,
a killed worker retried from last.pt to a bitwise-equal result, a finished round rerun without training, a
mismatched finished task refused, a cell started by `percepiano cv` adopted; the slow test spreads tasks over
two Ray nodes (`ray start --head` + `ray start --address`, one CPU each). Tiny models (hidden size 8, 2
epochs) on the committed synthetic dataset, CPU, one thread per task."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from percepiano.checkpoints import load_checkpoint
from percepiano.cli import main
from percepiano.data import load_dataset
from percepiano.round import RoundFailed, RoundSpec, plan_round, resolve_resources, run_round
from percepiano.round_results import ROUND_JSON, summarize_round
from percepiano.training import TrainConfig

HAS_RAY = importlib.util.find_spec("ray") is not None
TINY_RUNS = Path(__file__).parent / "data" / "tiny_runs"

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).parent / "data" / "synthetic_m2pf.npz"
EPOCHS, HIDDEN = 2, 8
SMALL = ["--epochs", str(EPOCHS), "--hidden-size", str(HIDDEN)]
# results of a fold that do not depend on when or how long it ran
FOLD_NUMBERS = ("best_epoch", "valid_loss", "valid_r2", "test_r2", "test_mse", "per_label_test_r2", "epochs_trained")
# Ray on a 2-core machine without a GPU: sockets on loopback, no token handshake between test processes
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module; run_round uses the connected instance."""
    if not HAS_RAY:
        pytest.skip("percepiano round needs Ray: pip install 'percepiano[round]'")
    import ray

    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def spec(**kw) -> RoundSpec:
    base = dict(presets=("bilstm", "han"), splits=("performer",), seeds=(7, 8), folds=(0, 1),
                train_config=TrainConfig(epochs=EPOCHS), model_overrides={"hidden_size": HIDDEN})
    return RoundSpec(**{**base, **kw})


def fold_numbers(fold_dir: Path) -> dict:
    res = json.loads((fold_dir / "fold_result.json").read_text())
    return {k: res[k] for k in FOLD_NUMBERS}


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["model_state"], load_checkpoint(b)["model_state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{a} and {b} differ in {k}"


def mtimes(root: Path) -> dict:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ROUND_JSON}


@pytest.fixture(scope="module")
def finished_round(local_ray, tmp_path_factory):
    """A round of 2 presets x 1 split x 2 seeds x 2 folds, run once for the module."""
    root = tmp_path_factory.mktemp("round") / "R"
    summary = run_round(spec(), DATA, root, threads_per_task=1, gpus_per_task=0)
    return root, summary


def test_round_equals_percepiano_train_task_by_task(finished_round, tmp_path, capsys):
    root, summary = finished_round
    for preset in ("bilstm", "han"):
        for seed in (7, 8):
            cell = root / f"{preset}-performer" / f"seed{seed}"
            res = json.loads((cell / "results.json").read_text())
            assert (res["preset"], res["split"], res["seed"], res["epochs"]) == (preset, "performer", seed, EPOCHS)
            assert [f["fold"] for f in res["folds"]] == [0, 1] and (cell / "results.csv").is_file()
            assert set(res["baselines"]) == {"mean", "ridge"}
            for fold in (0, 1):
                ref = tmp_path / f"{preset}-{seed}-{fold}"
                argv = ["train", "--preset", preset, "--split", "performer", "--fold", str(fold), "--seed", str(seed),
                        *SMALL, "--threads", "1", "--device", "cpu", "--no-progress", "--data", str(DATA),
                        "--out", str(ref)]
                assert main(argv) == 0, capsys.readouterr().err
                assert fold_numbers(cell / f"fold{fold}") == fold_numbers(ref)
                assert_same_weights(cell / f"fold{fold}" / "best.pt", ref / "best.pt")
                np.testing.assert_array_equal(np.load(cell / f"fold{fold}" / "test_predictions.npz")["predictions"],
                                              np.load(ref / "test_predictions.npz")["predictions"])
            entry = summary["cells"][f"{preset}-performer"]
            means = [summary["cells"][f"{preset}-performer"]["seeds"][str(s)]["mean_test_r2"] for s in (7, 8)]
            assert entry["seeds"][str(seed)]["mean_test_r2"] == res["mean_test_r2"]
            assert entry["mean_test_r2"] == pytest.approx(np.mean(means), abs=1e-12)
            assert entry["seed_std"] == pytest.approx(np.std(means), abs=1e-12) and entry["pending_seeds"] == []
            assert entry["baselines"]["ridge"]["mean_test_r2"] == res["baselines"]["ridge"]["mean_test_r2"]
    tasks = summary["invocations"][-1]["tasks"]
    assert sorted((t["cell"], t["fold"]) for t in tasks if t["kind"] == "fold") == sorted(
        (f"{p}-performer/seed{s}", f) for p in ("bilstm", "han") for s in (7, 8) for f in (0, 1))
    assert all(t["how"] == "new" and t["threads"] == 1 and t["device"] == "cpu" for t in tasks if t["kind"] == "fold")
    assert json.loads((root / ROUND_JSON).read_text())["cells"] == summary["cells"]


def test_rerunning_a_finished_round_trains_nothing(finished_round, monkeypatch):
    root, _ = finished_round
    before = mtimes(root)
    monkeypatch.setitem(sys.modules, "ray", None)  # a finished round must not even start Ray
    again = run_round(spec(), DATA, root)
    assert mtimes(root) == before
    last = again["invocations"][-1]
    assert last["tasks"] == [] and "nothing to train" in last["note"]
    assert len(again["invocations"]) == 2  # the first run's record is kept


def test_a_mismatched_finished_task_is_refused(finished_round, capsys):
    root, _ = finished_round
    before = mtimes(root)
    with pytest.raises(ValueError) as err:
        run_round(spec(train_config=TrainConfig(epochs=EPOCHS, lr=1e-3)), DATA, root)
    text = str(err.value)
    assert "4 cell(s)" in text and "nothing was started" in text
    assert "bilstm-performer/seed7" in text and "train_config.lr: saved 2.5e-05, requested 0.001" in text
    # through the command line: exit 2 and the same reason
    code = main(["round", "--presets", "han", "--splits", "performer", "--seeds", "7", "--folds", "0,1",
                 "--epochs", str(EPOCHS), "--hidden-size", "16", "--data", str(DATA), "--out", str(root)])
    err_text = capsys.readouterr().err
    assert code == 2 and err_text.startswith("percepiano round: error: ")
    assert "model_config.hidden_size: saved 8, requested 16" in err_text
    assert mtimes(root) == before


def test_a_fold_of_another_code_version_is_refused(finished_round, tmp_path):
    root, _ = finished_round
    copy = tmp_path / "R"
    shutil.copytree(root, copy)
    path = copy / "han-performer" / "seed8" / "fold1" / "fold_result.json"
    res = json.loads(path.read_text())
    res["identity"]["code"]["version"] = "0.0.1"
    path.write_text(json.dumps(res))
    with pytest.raises(ValueError, match=r"(?s)han-performer/seed8: .*code.version: saved '0.0.1'.*--allow-code-change"):
        plan_round(spec(), load_dataset(DATA), copy)


def test_a_cell_trained_from_a_copy_without_git_is_adopted(finished_round, tmp_path):
    """A cell trained from the same package source in a checkout without git (no commit recorded; how a GPU
    box is used, docs/rounds.md) is the same code: the plan reuses it, finished, without --allow-code-change."""
    from percepiano.checkpoints import atomic_save

    root, _ = finished_round
    copy = tmp_path / "R"
    shutil.copytree(root, copy)
    cell = copy / "han-performer" / "seed8"
    for path in cell.rglob("*.json"):
        res = json.loads(path.read_text())
        for record in [res, *res.get("folds", [])]:
            if "identity" in record:
                record["identity"]["code"]["commit"] = None
        path.write_text(json.dumps(res))
    for path in cell.rglob("*.pt"):
        ck = torch.load(path, weights_only=True)
        ck["identity"]["code"]["commit"] = None
        atomic_save(ck, path)
    plans = {p.cell.path: p for p in plan_round(spec(), load_dataset(DATA), copy)}
    adopted = plans["han-performer/seed8"]
    assert adopted.up_to_date and adopted.reuse == [0, 1] and adopted.train == []


def test_a_worker_running_other_source_is_refused(monkeypatch):
    """A task checks that its node runs the driver's code: an edited copy of the package (same version and
    commit, other source sha256) is refused, naming the node."""
    from percepiano import provenance
    from percepiano.round import _worker_dataset

    job = {"data_path": str(DATA), "code": provenance.code_version(), "data_sha256": provenance.file_sha256(DATA)}
    assert len(_worker_dataset(job)) == len(load_dataset(DATA))
    monkeypatch.setattr(provenance, "source_sha256", lambda: "0" * 64)
    with pytest.raises(ValueError, match=rf"node {socket.gethostname()} \(pid {os.getpid()}\) runs .*'0{{64}}'.*same source"):
        _worker_dataset(job)


def test_a_worker_on_another_commit_of_the_same_source_runs_the_task():
    """A node whose checkout sits at another commit (or has no git) but holds the same package source runs the
    driver's code: its task is accepted."""
    from percepiano import provenance
    from percepiano.round import _worker_dataset

    job = {"data_path": str(DATA), "code": {**provenance.code_version(), "commit": None},
           "data_sha256": provenance.file_sha256(DATA)}
    assert len(_worker_dataset(job)) == len(load_dataset(DATA))


def test_a_lone_best_pt_of_the_fold_is_planned_as_new_and_removed_when_it_starts(finished_round, tmp_path):
    """A fold holding only its own best.pt (an older percepiano stopped between the checkpoint writes of epoch
    1) is trained again: the plan says so, and the task's start removes it; another run's lone best.pt is
    refused."""
    from percepiano.round import _start_state

    root, _ = finished_round
    copy = tmp_path / "R"
    shutil.copytree(root, copy)
    cell = copy / "bilstm-performer" / "seed7"
    (cell / "results.json").unlink()
    fold1 = cell / "fold1"
    for path in fold1.iterdir():
        if path.name != "best.pt":
            path.unlink()
    one_cell = dict(presets=("bilstm",), seeds=(7,))
    [plan] = plan_round(spec(**one_cell), load_dataset(DATA), copy)
    assert plan.reuse == [0] and plan.train == [(1, "new")]
    identity = load_checkpoint(fold1 / "best.pt")["identity"]
    lines = []
    assert _start_state(fold1, identity, False, False, lines.append) == "new"
    assert list(fold1.iterdir()) == []
    shutil.copy(root / "bilstm-performer" / "seed8" / "fold1" / "best.pt", fold1 / "best.pt")  # seed 8's
    with pytest.raises(ValueError, match=r"(?s)1 cell\(s\) cannot be continued as asked; nothing was started:\n"
                                         r"bilstm-performer/seed7: .*fold1 holds best\.pt but neither"):
        plan_round(spec(**one_cell), load_dataset(DATA), copy)


def test_keep_best_on_a_finished_round_removes_every_last_pt_and_trains_nothing(finished_round, tmp_path):
    root, _ = finished_round
    copy = tmp_path / "R"
    shutil.copytree(root, copy)
    lines = []
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("best.pt")}
    summary = run_round(dataclasses.replace(spec(), keep="best"), DATA, copy, log=lines.append)
    assert summary["invocations"][-1]["tasks"] == [] and not list(copy.rglob("last.pt"))
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("best.pt")} == before and len(before) == 8
    assert sum("removed last.pt (--keep best)" in line for line in lines) == 8


def test_a_checkpoint_mirror_that_cannot_be_written_stops_the_round_before_it_starts(finished_round, tmp_path):
    """--mirror-checkpoints into a path that is a file: the copy of the folds finished before fails, and the
    round stops with the OSError before any task or round.json is written (a mirror that cannot be written would
    lose what it is for); the round folder is left as it was."""
    root, _ = finished_round
    copy = tmp_path / "R"
    shutil.copytree(root, copy)
    before = {**mtimes(copy), ROUND_JSON: (copy / ROUND_JSON).read_text()}
    not_a_folder = tmp_path / "mirror"
    not_a_folder.write_text("a file, not a folder\n")
    with pytest.raises(OSError, match=re.escape(str(not_a_folder))):  # the mirror's copy, nothing else
        run_round(spec(), DATA, copy, mirror_to=not_a_folder, mirror_checkpoints=True)
    assert {**mtimes(copy), ROUND_JSON: (copy / ROUND_JSON).read_text()} == before


def test_a_round_restored_from_its_export_reuses_its_finished_folds(finished_round, tmp_path):
    """The round's machine is gone; its exported small outputs are all that is left, and one fold was still
    training when they were copied (its log only): the restored round refuses to reuse folds without
    checkpoints unless asked, then trains only that fold, from epoch 0, bitwise as the first time (CPU), with
    the lost run's log set aside, and lists the reused folds under folds_without_checkpoint."""
    from percepiano.round_results import export_results

    root, _ = finished_round
    restored = tmp_path / "R"
    export_results(root, restored)
    cell = "bilstm-performer/seed7"
    lost_log = (restored / cell / "fold1" / "log.jsonl").read_text()
    (restored / cell / "fold1" / "fold_result.json").unlink()  # what a mirror of a fold mid-training holds
    one_cell = dict(presets=("bilstm",), seeds=(7,))
    with pytest.raises(ValueError, match=r"(?s)bilstm-performer/seed7: .*fold0: fold_result.json without best.pt.*"
                                         r"--reuse-without-checkpoint"):
        plan_round(spec(**one_cell), load_dataset(DATA), restored)
    summary = run_round(spec(**one_cell, reuse_without_checkpoint=True), DATA, restored, threads_per_task=1,
                        gpus_per_task=0)
    assert [(t["fold"], t["how"]) for t in summary["invocations"][-1]["tasks"] if t["kind"] == "fold"] == [(1, "new")]
    assert fold_numbers(restored / cell / "fold1") == fold_numbers(root / cell / "fold1")
    [set_aside] = (restored / cell / "fold1").glob("lost-*-log.jsonl")
    assert set_aside.read_text() == lost_log
    again, first = (json.loads((r / cell / "results.json").read_text()) for r in (restored, root))
    assert again["folds_without_checkpoint"] == [0] and first["folds_without_checkpoint"] == []
    assert again["mean_test_r2"] == first["mean_test_r2"]
    assert len(summary["invocations"]) == len(json.loads((root / ROUND_JSON).read_text())["invocations"]) + 1


def test_a_cell_started_by_cv_is_adopted(local_ray, tmp_path, capsys):
    root = tmp_path / "R"
    cell = root / "bilstm-performer" / "seed7"
    argv = ["cv", "--preset", "bilstm", "--split", "performer", "--seed", "7", "--folds", "1", *SMALL,
            "--threads", "1", "--device", "cpu", "--no-progress", "--data", str(DATA), "--out", str(cell)]
    assert main(argv) == 0, capsys.readouterr().err
    fold1 = (cell / "fold1" / "best.pt").stat().st_mtime_ns
    summary = run_round(spec(presets=("bilstm",), seeds=(7,)), DATA, root, threads_per_task=1, gpus_per_task=0)
    assert (cell / "fold1" / "best.pt").stat().st_mtime_ns == fold1  # reused, not trained again
    assert [(t["fold"], t["how"]) for t in summary["invocations"][-1]["tasks"] if t["kind"] == "fold"] == [(0, "new")]
    res = json.loads((cell / "results.json").read_text())
    assert [f["fold"] for f in res["folds"]] == [0, 1]


# How long a held task waits: the cell task it waits for loads the dataset and fits the ridge baselines, over
# 60 s when the 2 cores were shared with a training round (a clean-clone run, 2026-12-04); a cell task that
# never runs while the CPUs are held (what the test catches) makes the test this much slower before it fails.
HELD_TASK_TIMEOUT_S = 300.0


def _wait_in_last_epoch_for(prefix: str, path: Path, marker_dir: Path, timeout: float = HELD_TASK_TIMEOUT_S):
    """An on_epoch_end hook: after the last epoch of each task whose key starts with ``prefix``, wait (holding
    its CPU) until ``path`` exists or ``timeout`` passes, and write whether it appeared into ``marker_dir``. A
    closure: Ray's workers cannot import this test module, so the hook travels by value."""

    def hook(key: str, epoch: int) -> None:
        if key.startswith(prefix) and epoch == EPOCHS:
            deadline = time.monotonic() + timeout
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            (marker_dir / key.replace("/", "_").replace(" ", "_")).write_text(str(path.exists()))

    return hook


def test_a_cells_results_do_not_wait_for_other_cells_folds(local_ray, tmp_path):
    """2 CPUs: bilstm's two folds train first, then han's two take both CPUs and hold them until bilstm's
    results.json appears (at most HELD_TASK_TIMEOUT_S): it must appear while they hold them."""
    root, markers = tmp_path / "R", tmp_path / "markers"
    markers.mkdir()
    bilstm_results = root / "bilstm-performer" / "seed7" / "results.json"
    run_round(spec(seeds=(7,)), DATA, root, threads_per_task=1, gpus_per_task=0,
              on_epoch_end=_wait_in_last_epoch_for("han-", bilstm_results, markers))
    seen = {p.name: p.read_text() for p in markers.iterdir()}
    assert sorted(seen) == ["han-performer_seed7_fold_0", "han-performer_seed7_fold_1"]
    assert set(seen.values()) == {"True"}, seen


def test_mirror_to_copies_the_small_outputs_while_the_round_runs(local_ray, tmp_path):
    """bilstm's folds finish first; han's folds, still training, wait for bilstm's fold result in the mirror;
    at the end the mirror is what --export copies (no checkpoints, no predictions)."""
    from percepiano.round_results import export_results

    root, mirror, markers = tmp_path / "R", tmp_path / "mirror", tmp_path / "markers"
    markers.mkdir()
    with pytest.raises(ValueError, match="inside the round folder"):
        run_round(spec(), DATA, root, mirror_to=root / "copy")
    mirrored_fold = mirror / "bilstm-performer" / "seed7" / "fold0" / "fold_result.json"
    run_round(spec(seeds=(7,)), DATA, root, threads_per_task=1, gpus_per_task=0, mirror_to=mirror,
              on_epoch_end=_wait_in_last_epoch_for("han-", mirrored_fold, markers))
    assert {p.read_text() for p in markers.iterdir()} == {"True"} and len(list(markers.iterdir())) == 2
    export_results(root, tmp_path / "exported")
    files = lambda d: {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    assert files(mirror) == files(tmp_path / "exported")
    assert not any(name.endswith((".pt", ".npz")) for name in files(mirror))


def _kill_after_first_epoch(marker_dir: Path):
    """An on_epoch_end hook that kills its own Ray worker (SIGKILL) after epoch 1 of each task, once."""

    def hook(key: str, epoch: int) -> None:
        marker = marker_dir / key.replace("/", "_").replace(" ", "_")
        if epoch == 1 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def test_a_killed_worker_is_retried_from_last_pt_bitwise(local_ray, tmp_path, capsys):
    one = spec(presets=("han",), seeds=(7,), folds=(1,))
    killed, clean, markers = tmp_path / "killed", tmp_path / "clean", tmp_path / "markers"
    markers.mkdir()
    summary = run_round(one, DATA, killed, threads_per_task=1, gpus_per_task=0, max_retries=2,
                        on_epoch_end=_kill_after_first_epoch(markers))
    [marker] = list(markers.iterdir())
    task = [t for t in summary["invocations"][-1]["tasks"] if t["kind"] == "fold"]
    assert len(task) == 1 and task[0]["how"] == "resume" and task[0]["pid"] != int(marker.read_text())
    run_round(one, DATA, clean, threads_per_task=1, gpus_per_task=0)
    a, b = killed / "han-performer" / "seed7" / "fold1", clean / "han-performer" / "seed7" / "fold1"
    assert fold_numbers(a) == fold_numbers(b)
    for name in ("best.pt", "last.pt"):
        assert_same_weights(a / name, b / name)
    opt_a, opt_b = load_checkpoint(a / "last.pt")["optimizer"], load_checkpoint(b / "last.pt")["optimizer"]
    for k in opt_a["state"]:
        for name, value in opt_a["state"][k].items():
            assert torch.equal(value, opt_b["state"][k][name])
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    logs = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] for d in (a, b)]
    assert drop(logs[0]) == drop(logs[1]) and len(logs[0]) == EPOCHS


def test_mirrored_checkpoints_continue_a_fold_on_a_new_machine_bitwise(local_ray, tmp_path):
    """--mirror-checkpoints: a fold's worker dies after epoch 1 for good and the round folder is lost with its
    machine; a new round folder made from the mirror alone continues the fold from epoch 1 to the result of an
    uninterrupted run (CPU, bitwise). A finished fold's mirror holds what --keep best keeps, nothing stale; a
    round started with the option mirrors the folds it finished before."""
    one = spec(presets=("han",), seeds=(7,), folds=(1,))
    root, mirror, markers = tmp_path / "R", tmp_path / "mirror", tmp_path / "markers"
    markers.mkdir()
    with pytest.raises(RoundFailed):
        run_round(one, DATA, root, threads_per_task=1, gpus_per_task=0, max_retries=0, mirror_to=mirror,
                  mirror_checkpoints=True, on_epoch_end=_kill_after_first_epoch(markers))
    fold = Path("han-performer") / "seed7" / "fold1"
    assert load_checkpoint(mirror / fold / "last.pt")["epoch"] == 1
    assert_same_weights(mirror / fold / "last.pt", root / fold / "last.pt")
    assert not list((mirror / fold).glob("*.partial"))

    restored = tmp_path / "new-machine"
    shutil.copytree(mirror, restored)
    summary = run_round(one, DATA, restored, threads_per_task=1, gpus_per_task=0)
    assert [t["how"] for t in summary["invocations"][-1]["tasks"] if t["kind"] == "fold"] == ["resume"]
    late = tmp_path / "mirror-of-the-finished-round"  # nothing to train: the finished folds are mirrored
    run_round(one, DATA, restored, threads_per_task=1, gpus_per_task=0, mirror_to=late, mirror_checkpoints=True)
    for name in ("best.pt", "last.pt", "test_predictions.npz"):
        assert (late / fold / name).read_bytes() == (restored / fold / name).read_bytes()

    clean, clean_mirror = tmp_path / "clean", tmp_path / "clean-mirror"
    run_round(dataclasses.replace(one, keep="best"), DATA, clean, threads_per_task=1, gpus_per_task=0,
              mirror_to=clean_mirror, mirror_checkpoints=True)
    assert fold_numbers(restored / fold) == fold_numbers(clean / fold)
    assert_same_weights(restored / fold / "best.pt", clean / fold / "best.pt")
    kept = sorted(p.name for p in (clean_mirror / fold).iterdir() if p.suffix in (".pt", ".npz", ".partial"))
    assert kept == ["best.pt", "test_predictions.npz"]  # last.pt removed, as --keep best removed it
    assert (clean_mirror / fold / "best.pt").read_bytes() == (clean / fold / "best.pt").read_bytes()


def test_mirror_fold_checkpoints_copies_what_changed_and_removes_what_is_gone(tmp_path):
    from percepiano.round import mirror_fold_checkpoints

    fold, dest = tmp_path / "fold1", tmp_path / "mirror" / "fold1"
    fold.mkdir()
    (fold / "best.pt").write_bytes(b"best of epoch 1")
    (fold / "last.pt").write_bytes(b"last of epoch 1")
    mirror_fold_checkpoints(fold, dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == {"best.pt": b"best of epoch 1",
                                                               "last.pt": b"last of epoch 1"}
    unchanged = (dest / "best.pt").stat().st_ino
    (fold / "last.pt").write_bytes(b"last of epoch 2")  # epoch 2: no better valid loss, best.pt stays
    later = (dest / "last.pt").stat().st_mtime_ns + 10**9  # an epoch later, whatever the clock's resolution
    os.utime(fold / "last.pt", ns=(later, later))
    mirror_fold_checkpoints(fold, dest)
    assert (dest / "best.pt").stat().st_ino == unchanged  # not copied again
    assert (dest / "last.pt").read_bytes() == b"last of epoch 2"
    (fold / "last.pt").unlink()  # --keep best, once the fold is finished
    mirror_fold_checkpoints(fold, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["best.pt"]


def test_resources_are_checked_against_the_cluster():
    cpu_node = [{"CPU": 2.0}]
    assert resolve_resources("auto", "auto", None, cpu_node).device == "cpu"
    with pytest.raises(ValueError, match="no GPU"):
        resolve_resources(1, 0.25, None, cpu_node)
    with pytest.raises(ValueError, match="no node of this Ray cluster can run a task of 4 CPU"):
        resolve_resources(4, 0, None, cpu_node)
    gpu = resolve_resources("auto", "auto", None, [{"CPU": 16.0, "GPU": 1.0}])
    assert (gpu.gpus, gpu.threads, gpu.device) == (0.25, 1, "cuda")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resolve_resources(1, 2, None, [{"CPU": 16.0, "GPU": 2.0}])


def test_round_option_errors(tmp_path, capsys):
    base = ["round", "--data", str(DATA), "--out", str(tmp_path / "R"), "--splits", "performer"]
    for extra, message in (
        (["--presets", "ridge"], "--presets: expected distinct comma-separated names"),
        (["--presets", "han", "--seeds", "7,7"], "--seeds: expected distinct"),
        (["--presets", "han", "--folds", "4"], "--folds: expected distinct comma-separated integers from 0-3"),
        (["--presets", "han", "--gpus-per-task", "half"], "--gpus-per-task: expected 'auto' or a number"),
        (["--presets", "han", "--mirror-checkpoints"], "--mirror-checkpoints: copies the checkpoints into the "
                                                      "--mirror-to folder; give --mirror-to"),
    ):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "R").exists()


def test_without_ray_the_command_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["round", "--presets", "bilstm", "--splits", "performer", "--folds", "0", *SMALL, "--data", str(DATA),
                 "--out", str(tmp_path / "R")])
    assert code == 2 and "percepiano round: error: Ray is not installed: pip install 'percepiano[round]'" in (
        capsys.readouterr().err)


@pytest.mark.skipif(not HAS_RAY, reason="percepiano round needs Ray: pip install 'percepiano[round]'")
def test_a_cluster_that_refuses_the_connection_is_explained(tmp_path, monkeypatch):
    import ray

    def refuse(**kw):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kw['address']}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ValueError, match=r"--address 10.0.0.1:6379: Failed to connect .* RAY_AUTH_MODE=token"):
        run_round(spec(presets=("bilstm",), seeds=(7,), folds=(0,)), DATA, tmp_path / "R", address="10.0.0.1:6379")


def test_a_second_driver_on_the_same_round_folder_is_refused(tmp_path, monkeypatch):
    """While one `percepiano round` trains into a folder, another on it is refused, naming the holder, before
    Ray starts or a fold is touched; once the first has let go, the folder is free."""
    from percepiano.round import _round_lock

    monkeypatch.setitem(sys.modules, "ray", None)  # refused before Ray would start
    root = tmp_path / "R"
    with _round_lock(root):
        with pytest.raises(ValueError, match=rf"another `percepiano round` is training into this folder \(pid "
                                             rf"{os.getpid()} on .*\.round\.lock\)"):
            run_round(spec(), DATA, root)
        assert sorted(p.name for p in root.iterdir()) == [".round.lock"]
    with _round_lock(root):  # let go: the folder is free
        pass


def test_a_cv_run_directory_is_not_a_round(tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(["cv", "--preset", "ridge", "--split", "performer", "--folds", "0", "--data", str(DATA),
                 "--out", str(out)]) == 0
    with pytest.raises(ValueError, match="a `percepiano cv` or `train` run, not a round"):
        run_round(spec(), DATA, out)


def test_summary_lists_the_pending_seeds(finished_round):
    root, _ = finished_round
    cells = summarize_round(root, {"presets": ["han"], "splits": ["performer", "composition"], "seeds": [7, 9],
                                   "folds": [0, 1]})
    assert cells["han-performer"]["pending_seeds"] == [9] and cells["han-composition"]["pending_seeds"] == [7, 9]
    assert cells["han-composition"]["seeds"] == {}


def test_summary_reads_only_the_cells_folders_and_refuses_results_in_another_cells(tmp_path):
    """A copy set aside beside a seed's folder (seed7_old) is not a seed of the cell; a results.json in the
    folder of another seed is refused, naming the file, rather than averaged under the wrong seed."""
    root = _status_round(tmp_path)
    cell = root / "han-composition"
    shutil.copytree(cell / "seed7", cell / "seed7_old")
    summary = summarize_round(root)
    assert list(summary["han-composition"]["seeds"]) == ["7"]
    assert summary["han-composition"]["seeds"]["7"]["dir"] == "han-composition/seed7"
    shutil.move(cell / "seed7_old", cell / "seed8")
    with pytest.raises(ValueError, match=r"han-composition/seed8/results\.json: the results of preset 'han', split "
                                         r"'composition', seed 7 in the folder of another cell"):
        summarize_round(root)


def test_a_cell_whose_seeds_ran_different_epochs_says_so_beside_its_mean(tmp_path):
    from percepiano.round_results import format_round_table

    root = _status_round(tmp_path)
    cell = root / "han-composition"
    shutil.copytree(cell / "seed7", cell / "seed8")
    res = json.loads((cell / "seed8" / "results.json").read_text())
    (cell / "seed8" / "results.json").write_text(json.dumps({**res, "seed": 8}))
    assert "seeds_differ" not in summarize_round(root)["han-composition"]  # the same run at another seed
    (cell / "seed8" / "results.json").write_text(json.dumps({**res, "seed": 8, "epochs": res["epochs"] + 2}))
    summary = summarize_round(root)
    entry = summary["han-composition"]
    assert entry["n_seeds"] == 2 and entry["seeds_differ"] == f"epochs {sorted([str(res['epochs']), str(res['epochs'] + 2)])}"
    row = [line for line in format_round_table({"cells": summary}).splitlines() if line.startswith("han-composition")]
    assert row and row[0].endswith(f"; seeds differ in {entry['seeds_differ']}")


def _status_round(tmp_path) -> Path:
    """A round folder as one looks mid-way: a finished cell (4 folds), a cell with one fold done, one fold
    training (6 epochs logged) and two not begun."""
    root = tmp_path / "R"
    shutil.copytree(TINY_RUNS / "han", root / "han-composition" / "seed7")
    partial = root / "bilstm-performer" / "seed7"
    shutil.copytree(TINY_RUNS / "han" / "fold1", partial / "fold3")
    (partial / "fold0").mkdir()
    seconds = (900.0, 100.0, 110.0, 120.0, 130.0, 140.0)  # the pace is the last 5 epochs' mean: 120 s
    (partial / "fold0" / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "valid_loss": 0.1, "seconds": t})
                                                         + "\n" for e, t in enumerate(seconds, start=1)))
    return root


def test_status_reads_every_cells_folds_without_ray(tmp_path, capsys, monkeypatch):
    root = _status_round(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # no Ray needed, nothing trained
    assert main(["round", "--status", "--out", str(root), "--presets", "bilstm,han",
                 "--splits", "performer,composition"]) == 0
    rows = {line.split(" | ")[0]: line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| `")}
    finished = json.loads((TINY_RUNS / "han" / "results.json").read_text())
    han = rows["| `han` composition"]
    assert han[1] == f"{finished['mean_test_r2']:.3f} ± {finished['fold_std']:.3f}" and han[2] == "4 × 1"
    assert han[3] == "0.397" and han[4] == "0.420"  # the paper's value and ridge on the split
    assert han[5].startswith("seed 7: 0: ") and "(best epoch 3)" in han[5]
    bilstm = rows["| `bilstm` performer"]
    fold1 = finished["folds"][1]["test_r2"]
    assert bilstm[1] == f"{fold1:.3f} (one fold)" and bilstm[2] == "1 × 1"
    # fold 0: the last 5 epochs' mean pace, and 94 epochs left at it (11,280 s)
    assert bilstm[5] == (f"seed 7: 0: epoch 6/100 (120 s/epoch, 3.1 h left), 1: pending, 2: pending, 3: {fold1:.3f} "
                         f"(best epoch 3) |")
    assert rows["| `han` performer"][1:3] == ["-", "0 × 1"]  # asked for, nothing there yet


def test_status_counts_a_training_folds_epochs_from_the_rounds_request(tmp_path, capsys):
    """A round run with --epochs 30: --status --presets shows its folds out of 30 epochs (hours left too)
    without being told --epochs again; --epochs still overrides it."""
    root = _status_round(tmp_path)
    (root / ROUND_JSON).write_text(json.dumps({"request": {"presets": ["bilstm"], "splits": ["performer"],
                                                           "seeds": [7], "folds": [0, 1, 2, 3],
                                                           "train_config": {"epochs": 30}}, "invocations": []}))
    status = ["round", "--status", "--out", str(root), "--presets", "bilstm", "--splits", "performer"]
    assert main(status) == 0
    assert "0: epoch 6/30 (120 s/epoch, 0.8 h left)" in capsys.readouterr().out  # 24 epochs x 120 s
    assert main(status + ["--epochs", "10"]) == 0
    assert "0: epoch 6/10 (120 s/epoch, 0.1 h left)" in capsys.readouterr().out


def test_status_reads_past_a_line_being_written_and_names_a_damaged_one(tmp_path, capsys):
    root = _status_round(tmp_path)
    log = root / "bilstm-performer" / "seed7" / "fold0" / "log.jsonl"
    records = log.read_text()
    log.write_text(records + '{"epoch": 7, "valid_lo')  # the round is appending epoch 7 (or was killed doing so)
    assert main(["round", "--status", "--out", str(root)]) == 0
    assert "0: epoch 6/100 (120 s/epoch, 3.1 h left)" in capsys.readouterr().out
    log.write_text('{"epoch": 1, "valid_lo\n' + records)  # damaged where no writer can be
    assert main(["round", "--status", "--out", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(log) in err and "line 1 is not valid JSON" in err


def test_export_copies_the_small_outputs_only(tmp_path, capsys):
    root = _status_round(tmp_path)
    (root / "bilstm-performer" / "seed7" / "fold0" / "last.pt").write_bytes(b"checkpoint")
    assert main(["round", "--export", str(tmp_path / "published"), "--out", str(root)]) == 0
    copied = sorted(p.relative_to(tmp_path / "published").as_posix() for p in (tmp_path / "published").rglob("*")
                    if p.is_file())
    assert "bilstm-performer/seed7/fold3/log.jsonl" in copied and "han-composition/seed7/results.json" in copied
    assert "bilstm-performer/seed7/fold0/log.jsonl" not in copied  # still training: restored, it starts again
    assert not [p for p in copied if p.endswith((".pt", ".npz"))]
    assert (tmp_path / "published" / "han-composition/seed7/fold2/fold_result.json").read_bytes() == (
        root / "han-composition/seed7/fold2/fold_result.json").read_bytes()
    assert f"copied {len(copied)} new or changed files" in capsys.readouterr().out
    before = {p: p.stat().st_ino for p in (tmp_path / "published").rglob("*") if p.is_file()}
    assert main(["round", "--export", str(tmp_path / "published"), "--out", str(root)]) == 0
    assert "copied 0 new or changed files" in capsys.readouterr().out
    assert {p: p.stat().st_ino for p in (tmp_path / "published").rglob("*") if p.is_file()} == before


def test_export_writes_the_round_and_mirror_folders_as_ROUND_and_MIRROR(tmp_path):
    """The command lines a round records hold its --out and --mirror-to paths: the published copy names no
    machine path."""
    root = _status_round(tmp_path)
    published_at = tmp_path / "published"
    command = f"percepiano round --presets han --splits composition --mirror-to {published_at} --out {root.resolve()}"
    (root / ROUND_JSON).write_text(json.dumps({"request": {}, "invocations": [{"command": command}]}))
    from percepiano.round_results import export_results

    export_results(root, published_at)
    published = json.loads((published_at / ROUND_JSON).read_text())
    assert published["invocations"][0]["command"] == (
        "percepiano round --presets han --splits composition --mirror-to MIRROR --out ROUND")
    assert str(tmp_path) not in "".join(p.read_text() for p in (tmp_path / "published").rglob("*") if p.is_file())


def test_export_to_a_relative_folder_leaves_the_other_text_alone(tmp_path, monkeypatch):
    """A relative --export path names no machine and is not replaced: a short one would match inside words."""
    root = _status_round(tmp_path)
    command = f"percepiano round --presets han --splits composition --folds 0,1 --out {root.resolve()}"
    (root / ROUND_JSON).write_text(json.dumps({"request": {}, "invocations": [{"command": command}]}))
    from percepiano.round_results import export_results

    monkeypatch.chdir(tmp_path)
    export_results(root, Path("o"))
    published = json.loads((tmp_path / "o" / ROUND_JSON).read_text())
    assert published["invocations"][0]["command"] == (
        "percepiano round --presets han --splits composition --folds 0,1 --out ROUND")
    log = "bilstm-performer/seed7/fold3/log.jsonl"
    assert (tmp_path / "o" / log).read_bytes() == (root / log).read_bytes()


def test_status_of_a_missing_round_folder_is_an_error(tmp_path, capsys):
    assert main(["round", "--status", "--out", str(tmp_path / "none")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["round", "--out", str(tmp_path / "R"), "--presets", "han"]) == 2
    assert "--splits: required to run a round (only --status goes without)" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- two nodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="percepiano round needs Ray: pip install 'percepiano[round]'")
def test_tasks_spread_over_two_ray_nodes(tmp_path):
    """A head and a second node (`ray start`, one CPU each, on this machine) and `percepiano round --address`
    from another process: the fold tasks run on both nodes."""
    port = _free_port()
    env = {**os.environ, **RAY_ENV}
    nodes = []
    try:
        for args in (["--head", "--port", str(port), "--include-dashboard", "false"],
                     ["--address", f"127.0.0.1:{port}"]):
            nodes.append(subprocess.Popen(["ray", "start", *args, "--num-cpus", "1", "--block",
                                           "--disable-usage-stats"], env=env, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(5)
        root = tmp_path / "R"
        cmd = [sys.executable, "-m", "percepiano", "round", "--address", f"127.0.0.1:{port}", "--presets", "han",
               "--splits", "performer", "--seeds", "7,8", "--folds", "0,1", *SMALL, "--threads-per-task", "1",
               "--data", str(DATA), "--out", str(root)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        tasks = json.loads((root / ROUND_JSON).read_text())["invocations"][-1]["tasks"]
        assert json.loads((root / ROUND_JSON).read_text())["invocations"][-1]["resources"]["nodes"] == 2
        assert len({t["node_id"] for t in tasks if t["kind"] == "fold"}) == 2
    finally:
        for p in nodes:  # `ray start --block` stops the processes it started when it is terminated
            p.send_signal(signal.SIGTERM)
        for p in nodes:
            p.wait(60)
