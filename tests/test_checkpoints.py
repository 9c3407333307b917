"""percepiano.checkpoints: atomic writes, RNG state, determinism, and checkpoint -> model (CPU)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from percepiano import checkpoints as C
from percepiano.config import get_preset
from percepiano.features.rating import CheckpointError, load_model

EXACT = dict(rtol=0, atol=0)


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


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a percepiano training checkpoint"):
        C.load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        C.load_checkpoint(tmp_path / "junk.pt")


def _checkpoint(tmp_path, model, **changes):
    ck = {"format": C.CHECKPOINT_FORMAT, "kind": "best", "model_state": C.cpu_state(model),
          "model_config": model.config.to_dict(), **changes}
    C.atomic_save(ck, tmp_path / "best.pt")
    return tmp_path / "best.pt"


def test_model_from_checkpoint_is_the_saved_model_for_evaluate_and_predict(tmp_path):
    cfg = get_preset("han", hidden_size=8)
    model = C.build_model(cfg, seed=0)
    path = _checkpoint(tmp_path, model)
    for loaded in (C.model_from_checkpoint(C.load_checkpoint(path)), load_model(path)):
        assert loaded.config == cfg
        for k, v in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[k], v, **EXACT)
    assert not load_model(path).training  # `percepiano predict` rates in eval mode
    # seeded construction: the same seed builds the same weights
    again = C.build_model(cfg, seed=0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, **EXACT)


def test_unusable_checkpoints_are_named_errors(tmp_path):
    model = C.build_model(get_preset("han", hidden_size=8), seed=0)
    other = get_preset("han", hidden_size=16).to_dict()
    with pytest.raises(ValueError, match="do not fit the model config"):
        C.model_from_checkpoint(C.load_checkpoint(_checkpoint(tmp_path, model, model_config=other)))
    with pytest.raises(CheckpointError, match="best.pt: the weights do not fit"):
        load_model(tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="no model config / model state"):
        load_model(_checkpoint(tmp_path, model, model_state=None))
    with pytest.raises(CheckpointError, match="model config is not usable"):
        load_model(_checkpoint(tmp_path, model, model_config={"no_such_field": 1}))
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a percepiano training checkpoint"):
        load_model(tmp_path / "foreign.pt")
