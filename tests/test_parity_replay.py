"""Seed-exact replay: ours reproduces the original's training run step for step (rng "original", CPU).

Recorded (reference_parity/fixtures/replay/, captured from the original by ``python -m
reference_parity.capture_training``): performer fold 0, seed 7, one epoch (104 steps) at the published settings,
for han and bilstm in float64 and float32.
- initial weights: sha256 of every tensor, for the recorded cases and for every preset at three seeds (no data);
- the first 10 steps of every case (``PERCEPIANO_DATA``): loss and grad norm per step, lr, batch order;
- the whole epoch with its valid / test loss and R² (``-m parity --run-slow``).
Live (``PERCEPIANO_UPSTREAM``): the original's state dicts against ours for every preset, and hypothesis-drawn
(preset, split, fold, seed) runs of both implementations side by side for a few steps on synthetic data.
Tolerances: reference_parity/tolerances.py (REPLAY_*).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percepiano import replay
from percepiano.checkpoints import set_seed
from percepiano.config import PRESETS, get_preset
from percepiano.constants import DATA_ENV, N_FOLDS
from percepiano.data import load_dataset
from percepiano.synthetic import dataset as synthetic_dataset
from reference_parity import recorded as R
from reference_parity import replay_compare as RC
from reference_parity import upstream as U

pytestmark = [pytest.mark.parity, pytest.mark.usefixtures("one_thread")]

HAS_FIXTURES = (R.REPLAY_DIR / "MANIFEST.json").is_file()
CASES = RC.cases() if HAS_FIXTURES else []
needs_data = pytest.mark.skipif(not os.environ.get(DATA_ENV),
                                reason=f"real data: set {DATA_ENV} to percepiano_vnet_m2pf.npz")
needs_upstream = pytest.mark.skipif(not U.available(), reason=f"live replay: set {R.UPSTREAM_ENV}=/path/to/PercePiano")
FIRST_STEPS = 10


def _ids(entry):
    return f"{entry['preset']}-{entry['dtype']}"


@pytest.fixture(scope="module")
def data():
    data = load_dataset()
    RC.check_data(data)
    return data


def _failures(rows):
    return [f"{r.name}: {r.error:.3g} > {r.tol:g} ({r.note})" for r in rows if not r.passed]


# --------------------------------------------------------------------------------------------- recorded


def test_replay_fixtures_are_as_recorded():
    assert HAS_FIXTURES, f"reference_parity/fixtures/replay/ is missing; regenerate with `{R.REPLAY_REGENERATE}`"
    assert R.integrity_problems(R.REPLAY_DIR) == []
    man = RC.manifest()
    assert man["regenerate"] == R.REPLAY_REGENERATE
    assert list(man["patches"]) == ["dataset.ScorePerformDataset.get_data_path"]  # the one patch, named
    assert {(e["preset"], e["dtype"]) for e in CASES} == {("han", "float64"), ("han", "float32"),
                                                           ("bilstm", "float64"), ("bilstm", "float32")}
    assert all(e["steps"] == -(-e["n_train"] // 8) == 104 for e in CASES)  # whole epochs: 828 segments, batch 8


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_initial_weights_are_the_originals_for_every_preset(preset):
    arrays = R.load("init_checksums.npz", R.REPLAY_DIR)
    seeds = RC.manifest()["files"][[e["file"] for e in RC.manifest()["files"]].index("init_checksums.npz")]["seeds"]
    for seed in seeds:
        set_seed(seed)
        ours = replay.weight_checksums(replay.draw_original_init(get_preset(preset)))
        names, sums = arrays[f"{preset}/seed{seed}/names"].tolist(), arrays[f"{preset}/seed{seed}/sha256"].tolist()
        assert list(ours) == names  # the same tensors, in the original's state-dict order
        assert [k for k in names if ours[k] != dict(zip(names, sums))[k]] == []


@pytest.mark.parametrize("entry", CASES, ids=_ids)
def test_recorded_cases_start_from_the_originals_weights(entry):
    arrays = R.load(entry["file"], R.REPLAY_DIR)
    ref = dict(zip(arrays["init/names"].tolist(), arrays["init/sha256"].tolist()))
    init = RC.initial_checksums(entry)
    assert init["drawn"] == ref
    assert {k: ref[k] for k in init["model"]} == init["model"]


@needs_data
@pytest.mark.parametrize("entry", CASES, ids=_ids)
def test_first_steps_are_the_originals(entry, data):
    arrays = R.load(entry["file"], R.REPLAY_DIR)
    rows = RC.compare_case(entry, arrays, RC.run_ours(entry, data, steps=FIRST_STEPS))
    assert _failures(rows) == []


# What does not meet its target over the whole epoch, and why (README.md, "Seed-exact replay"): nothing. The
# bilstm's run is the original's to the last bit (its model runs packed throughout); the han's voice LSTM runs
# batched, so its rounding differs by about an ulp, far inside the targets. Keep the entries for a drift that is
# understood and measured.
KNOWN_DRIFT: dict[tuple[str, str], set[str]] = {}


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("entry", CASES, ids=_ids)
def test_whole_epoch_is_the_originals(entry, data):
    arrays = R.load(entry["file"], R.REPLAY_DIR)
    rows = RC.compare_case(entry, arrays, RC.run_ours(entry, data))
    known = KNOWN_DRIFT.get((entry["preset"], entry["dtype"]), set())
    assert {r.name for r in rows if not r.passed} == known, _failures(rows)
    assert {r.name.split(" (")[0] for r in rows} >= {"epoch 1 valid R2", "epoch 1 test R2", "epoch 1 valid loss"}


# --------------------------------------------------------------------------------------------- live


@pytest.fixture(scope="module")
def up():
    return U.load()


@needs_upstream
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_initial_state_dicts_equal_the_originals(up, preset):
    cfg = get_preset(preset)
    torch.manual_seed(7)
    original = up.build_model(up.net_params(cfg.input_size, cfg.num_labels), cfg.level).state_dict()
    after_original = torch.rand(3)
    model = replay.build_model(cfg, 7)
    after_ours = torch.rand(3)
    ours = model.original_state_dict()
    assert set(ours) < set(original)
    assert [k for k in ours if not torch.equal(ours[k], original[k])] == []
    set_seed(7)
    assert [k for k, v in replay.draw_original_init(cfg).items() if not torch.equal(v, original[k])] == []
    assert torch.equal(after_ours, after_original)  # the same number of draws: what follows is the same too


@needs_upstream
@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # the original's loaders, on a CPU
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(preset=st.sampled_from(sorted(PRESETS)), split=st.sampled_from(["composition", "performer"]),
       fold=st.integers(0, N_FOLDS - 1), seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(["float64", "float32"]))
def test_side_by_side_with_the_original(up, preset, split, fold, seed, dtype):
    from reference_parity import capture_training as CT  # the live side

    data = synthetic_dataset(48, seed=seed % 1000, min_notes=10, max_notes=30)
    steps = 3
    res = CT.run_original(up, data, preset, dtype, split=split, fold=fold, seed=seed, max_steps=steps, hidden_size=8)
    entry = {"preset": preset, "hidden_size": 8, "dtype": dtype, "split": split, "fold": fold, "seed": seed,
             "epochs": 1}
    ours = RC.run_ours(entry, data, steps=steps)
    rows = RC.compare_case(entry, CT.fixture_arrays(res), ours)
    assert _failures(rows) == []
    assert len(ours["steps"]) == steps and np.isfinite([s["loss"] for s in ours["steps"]]).all()


# --------------------------------------------------------------------------------------------- the command


def test_parity_training_options_need_training(capsys):
    from percepiano.cli import main

    assert main(["parity", "--steps", "3"]) == 2
    assert "--steps applies only with --training" in capsys.readouterr().err


@needs_data
def test_parity_training_prints_the_step_table(capsys):
    from percepiano.cli import main

    assert main(["parity", "--training", "--steps", "2", "--cases", "bilstm:float64"]) == 0
    out = capsys.readouterr().out
    assert "== replay/bilstm/float64 (performer fold 0, seed 7)" in out
    assert "loss (relative)" in out and "first step over tol" not in out and "checks pass" in out
    assert main(["parity", "--training", "--cases", "han:float16"]) == 2
    assert "--cases: [('han', 'float16')] not recorded" in capsys.readouterr().err
