"""percepiano.checkpoints: atomic writes, RNG state, determinism, and the one checkpoint reader (CPU)."""
from __future__ import annotations

import errno
import os
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch

from percepiano import checkpoints as C
from percepiano.config import get_preset
from percepiano.constants import PROTOCOL_EPOCHS
from percepiano.training import TrainConfig

EXACT = dict(rtol=0, atol=0)


class NotAllowed:
    """A class a weights-only load must refuse to rebuild (a checkpoint carrying pickled objects)."""


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    C.atomic_save({"a": torch.ones(2)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        C.atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    torch.testing.assert_close(torch.load(path, weights_only=True)["a"], torch.ones(2), **EXACT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_a_full_disk_leaves_no_partial_file_and_names_the_path(tmp_path, monkeypatch, where):
    path = tmp_path / "last.pt"
    monkeypatch.setattr(*((torch, "save") if where == "torch.save" else (os, "replace")), _disk_full)
    with pytest.raises(C.AtomicWriteError, match=r"last\.pt: could not be written \(No space left on device\)") as exc:
        C.atomic_save({"a": torch.zeros(2)}, path)
    assert exc.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its temporary file


def test_a_failed_archive_write_is_reported_with_the_system_reason(tmp_path, monkeypatch):
    """torch.save writing to a Python file object reports a failed write of its zip archive as a RuntimeError
    whose context is the OSError (ENOSPC on a full disk), as torch 2.13 does."""
    def archive_write_fails(obj, f):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")  # noqa: B904

    monkeypatch.setattr(torch, "save", archive_write_fails)
    with pytest.raises(C.AtomicWriteError, match=r"best\.pt: could not be written \(No space left on device\)") as exc:
        C.atomic_save({"a": torch.zeros(1000)}, tmp_path / "best.pt")
    assert exc.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


def test_atomic_write_text_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _disk_full)
    with pytest.raises(C.AtomicWriteError, match=r"results\.json: could not be written"):
        C.atomic_write_text("{}", tmp_path / "results.json")
    assert list(tmp_path.iterdir()) == []


def test_the_temporaries_of_killed_writers_are_removed_and_no_others(tmp_path):
    """A worker SIGKILLed inside atomic_save leaves its temporary file (155 MB for a han last.pt): the next
    run removes those of this fold's files whose writer is gone, never a live writer's or another file's."""
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(child.stdout), os.getppid()
    names = [f".last.pt.tmp{dead}", f".test_predictions.tmp{dead}.npz", f".best.pt.tmp{alive}",
             f".last.pt.tmp{os.getpid()}", f".notes.txt.tmp{dead}", "last.pt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = C.remove_stale_temporaries(tmp_path, ["last.pt", "best.pt", "test_predictions.npz"])
    assert [p.name for p in removed] == [f".last.pt.tmp{dead}", f".test_predictions.tmp{dead}.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    assert C.remove_stale_temporaries(tmp_path / "absent", ["last.pt"]) == []


def test_rng_state_roundtrip():
    C.set_seed(3)
    state = C.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    C.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(a[0], b[0], **EXACT)
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


def test_deterministic_mode_toggles():
    try:
        C.configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        C.configure_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()


# --------------------------------------------------------------------------------------------- reading


def _model(preset="han"):
    return C.build_model(get_preset(preset, hidden_size=8), seed=0)


def _checkpoint(tmp_path, model, name="best.pt", **changes):
    ck = {"format": C.CHECKPOINT_FORMAT, "kind": "best", "model_state": C.cpu_state(model),
          "model_config": model.config.to_dict(), **changes}
    C.atomic_save({k: v for k, v in ck.items() if v is not ...}, tmp_path / name)
    return tmp_path / name


def test_load_trained_model_is_the_saved_model_in_eval_mode(tmp_path):
    model = _model()
    path = _checkpoint(tmp_path, model)
    loaded, ck = C.load_trained_model(path)
    assert loaded.config == model.config and ck["kind"] == "best"
    assert not loaded.training  # evaluate and predict run the model in eval mode
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, **EXACT)
    # model_from_checkpoint gives the same model from the loaded dict
    again = C.model_from_checkpoint(C.load_checkpoint(path))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, **EXACT)
    # seeded construction: the same seed builds the same weights
    for k, v in _model().state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, **EXACT)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_unreadable_files_are_named_checkpoint_errors(tmp_path):
    good = _checkpoint(tmp_path, _model(), "good.pt").read_bytes()
    torch.save({"format": C.CHECKPOINT_FORMAT, "kind": "best", "what": NotAllowed()}, tmp_path / "pickle.pt")
    cases = {
        _write(tmp_path / "empty.pt", b""): r"empty\.pt: empty file \(0 bytes\)",
        _write(tmp_path / "truncated.pt", good[: len(good) // 2]): r"truncated\.pt: a truncated or damaged torch archive",
        _write(tmp_path / "random.pt", np.random.default_rng(0).bytes(4096)): r"random\.pt: not a torch checkpoint",
        _write(tmp_path / "plain.pkl", pickle.dumps({"a": NotAllowed()})): r"plain\.pkl: not a torch checkpoint",
        tmp_path / "pickle.pt": r"pickle\.pt: holds pickled Python objects \(.*NotAllowed\).*refused, not run",
    }
    for path, message in cases.items():
        with pytest.raises(C.CheckpointError, match=message) as exc:
            C.load_checkpoint(path)
        assert "\n" not in str(exc.value) and "Weights only load failed" not in str(exc.value)
        assert isinstance(exc.value, ValueError)  # the CLI reports ValueErrors as `error:` lines, exit 2
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        C.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(C.CheckpointError, match="not a file"):
        C.load_checkpoint(tmp_path)


@pytest.mark.parametrize("member", ["tensor", "data.pkl"])
def test_a_damaged_member_of_the_archive_is_a_checkpoint_error(tmp_path, member):
    """torch.load reads a flipped byte in a tensor's data without a word; the archive's CRCs tell."""
    path = _checkpoint(tmp_path, _model())
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    tensors = [i for i in infos if "/data/" in i.filename]
    if member == "tensor":
        info = max(tensors, key=lambda i: i.file_size)
    else:
        info = next(i for i in infos if i.filename.endswith(member))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # 30: the local header
    data[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    damaged = rf"best\.pt: a damaged torch archive \(CRC mismatch in {info.filename}\)"
    with pytest.raises(C.CheckpointError, match=damaged):
        C.load_checkpoint(path)


def test_foreign_and_incomplete_checkpoints_are_named_errors(tmp_path):
    model = _model()
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(C.CheckpointError, match=r"foreign\.pt: not a percepiano training checkpoint"):
        C.load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(C.CheckpointError, match=r"a 'best' checkpoint without \['model_state'\]"):
        C.load_checkpoint(_checkpoint(tmp_path, model, model_state=...))
    with pytest.raises(C.CheckpointError, match="'model_state' is a NoneType, expected dict"):
        C.load_checkpoint(_checkpoint(tmp_path, model, model_state=None))
    with pytest.raises(C.CheckpointError, match="kind 'other'"):
        C.load_checkpoint(_checkpoint(tmp_path, model, kind="other"))
    with pytest.raises(C.CheckpointError, match=r"a 'last' checkpoint without \['train_config', 'run', 'optimizer'"):
        C.load_checkpoint(_checkpoint(tmp_path, model, kind="last"))
    with pytest.raises(C.CheckpointError, match="model config is not usable: .*unknown fields"):
        C.load_checkpoint(_checkpoint(tmp_path, model, model_config={"no_such_field": 1}))
    with pytest.raises(C.CheckpointError, match="run feature set 'performance_only', but the model reads 101"):
        C.load_checkpoint(_checkpoint(tmp_path, model, run={"feature_set": "performance_only"}))


def test_weights_that_do_not_fit_or_are_not_finite_are_refused(tmp_path):
    model = _model()
    other = get_preset("han", hidden_size=16).to_dict()
    with pytest.raises(C.CheckpointError, match=r"best\.pt: the weights do not fit .*shape mismatches \(\d+\): embed"):
        C.load_checkpoint(_checkpoint(tmp_path, model, model_config=other))
    state = C.cpu_state(model)
    del state["head.4.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(C.CheckpointError, match=r"missing \(1\): head\.4\.bias; unexpected \(1\): extra\.weight"):
        C.load_checkpoint(_checkpoint(tmp_path, model, model_state=state))
    with pytest.raises(C.CheckpointError, match="the weights do not fit"):  # a dict not read from a file
        C.model_from_checkpoint({**torch.load(_checkpoint(tmp_path, model), weights_only=True), "model_state": state})
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in C.cpu_state(model).items()}
    with pytest.raises(C.CheckpointError, match=r"non-finite weights \(NaN or inf\) in \d+ of \d+ tensors: embed"):
        C.load_trained_model(_checkpoint(tmp_path, model, model_state=nan))
    one_inf = C.cpu_state(model)
    one_inf["head.4.bias"][3] = float("inf")
    with pytest.raises(C.CheckpointError, match=r"in 1 of \d+ tensors: head\.4\.bias"):
        C.load_trained_model(_checkpoint(tmp_path, model, model_state=one_inf))


def test_a_checkpoint_of_another_preset_than_requested(tmp_path):
    han = _checkpoint(tmp_path, _model("han"), "han.pt", run={"preset": "han", "feature_set": "full"})
    bilstm = _checkpoint(tmp_path, _model("bilstm"), "bilstm.pt")  # no preset recorded: told by level and inputs
    assert C.load_trained_model(han, expect_preset="han")[1]["run"]["preset"] == "han"
    assert C.checkpoint_preset(C.load_checkpoint(bilstm)) == "bilstm"
    with pytest.raises(C.CheckpointError, match=r"bilstm\.pt: a checkpoint of preset 'bilstm' \(level 'note', 9 "
                                                r"inputs\), not of the requested 'han'"):
        C.load_trained_model(bilstm, expect_preset="han")


def test_protocol_notes_say_how_training_departed_from_the_protocol(tmp_path):
    model = _model()
    published = {**C.load_checkpoint(_checkpoint(tmp_path, model)), "train_config": TrainConfig().to_dict(),
                 "model_config": get_preset("han").to_dict(), "run": {"preset": "han"}}
    assert C.protocol_notes(published) == []
    small = TrainConfig(epochs=1, limit_segments=12, max_train_batches=2, lr=1e-3).to_dict()
    notes = C.protocol_notes({**published, "train_config": small, "model_config": model.config.to_dict()})
    text = "\n".join(notes)
    assert "limit_segments=12" in text and f"1 epoch(s); the original protocol trains {PROTOCOL_EPOCHS}" in text
    assert "at most 2 training batches" in text and "lr = 0.001 (the original protocol: 2.5e-05)" in text
    assert "hidden_size = 8 (preset han: note/voice/beat/measure sizes 256/256/256/256)" in text
    assert len(notes) == 5
    deviating = get_preset("han", attention_temperature=2.0).to_dict()
    assert C.protocol_notes({**published, "model_config": deviating}) == [
        "named deviation: attention_temperature = 2.0 (original: 1.0; original ContextAttention / "
        "get_softmax_by_boundary apply no temperature)"]
    unfinished = {**published, "kind": "last", "epoch": 3}
    assert C.protocol_notes(unfinished) == [f"a last.pt after epoch 3 of {PROTOCOL_EPOCHS}: an unfinished run, and "
                                            "the last epoch's weights, not the selected (best) ones"]
    untracked = {k: v for k, v in published.items() if k != "train_config"}
    assert "no train_config recorded" in C.protocol_notes(untracked)[0]
