"""Diagnostics: entropy against hand-computed values, the collapse detector, hierarchy gain, deviations and
the boundary-rule comparison."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from percepiano import PercePianoModel, get_preset
from percepiano import diagnostics as diag
from percepiano import hierarchy as hier
from percepiano.results import targets_path

EXACT = 1e-12  # float64 arithmetic on a handful of numbers
FLOAT32 = 1e-5  # weights produced by a float32 forward pass
DATA = Path(__file__).parent / "data"


# ----------------------------------------------------------------------------------------------- entropy
def test_normalized_entropy_hand_values():
    assert diag.normalized_entropy([0.25] * 4) == pytest.approx(1.0, abs=EXACT)
    assert diag.normalized_entropy([1.0, 0.0, 0.0]) == pytest.approx(0.0, abs=EXACT)
    # [1/2, 1/2, 0]: H = ln 2, normalized by ln 3
    assert diag.normalized_entropy([0.5, 0.5, 0.0]) == pytest.approx(math.log(2) / math.log(3), abs=EXACT)
    # [0.9, 0.1]: H = -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.325083..., / ln 2 = 0.468996
    assert diag.normalized_entropy([0.9, 0.1]) == pytest.approx(0.4689955935892812, abs=EXACT)
    assert math.isnan(diag.normalized_entropy([1.0]))  # a single position: undefined, not 0 or 1


def test_segment_entropies_hand_values():
    # one sample, two segments: positions {0, 1} and {2, 3, 4}; position 5 is padding (dustbin id 2)
    seg = torch.tensor([[0, 0, 1, 1, 1, 2]])
    w = torch.tensor([[[0.5, 0.9], [0.5, 0.1], [1.0, 1 / 3], [0.0, 1 / 3], [0.0, 1 / 3], [0.0, 0.0]]], dtype=torch.float64)
    ent, sizes = diag.segment_entropies(w, seg, num_nodes=2)
    assert sizes.tolist() == [[2, 3]]
    expected = [[1.0, 0.4689955935892812], [0.0, 1.0]]
    np.testing.assert_allclose(ent[0].numpy(), expected, atol=EXACT)


def test_singletons_are_excluded_and_counted():
    acc = diag.LevelEntropy("beat", num_heads=1)
    acc.add(np.array([[0.5], [np.nan], [1.0]]), np.array([3, 1, 2]))
    assert acc.n_segments == 2
    assert acc.n_singletons == 1
    assert acc.mean == pytest.approx(0.75, abs=EXACT)  # the singleton is neither 0 nor 1 in the mean
    empty = diag.LevelEntropy("measure", num_heads=2)
    empty.add(np.array([[np.nan, np.nan]]), np.array([1]))
    assert math.isnan(empty.mean) and empty.summary()["mean"] is None and empty.n_singletons == 1


def _batch():
    """Two segments with one-note beats, a one-beat measure, and padding."""
    lengths = torch.tensor([9, 6])
    beat = torch.tensor([[0, 0, 1, 1, 1, 2, 3, 3, 4], [0, 1, 1, 2, 2, 2, 0, 0, 0]])
    measure = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 1, 1, 0, 0, 0]])
    valid = hier.valid_mask(lengths, 9)
    voice = torch.where(valid, torch.tensor([[1, 2, 1, 2, 1, 1, 2, 1, 1]]), torch.zeros_like(beat))
    x = torch.randn(2, 9, 101, generator=torch.Generator().manual_seed(0)) * valid[:, :, None]
    return x, lengths, {"beat": beat, "measure": measure, "section": torch.zeros_like(beat), "voice": voice}


def _tiny(**over):
    torch.manual_seed(0)
    return PercePianoModel(get_preset("han", hidden_size=8, **over)).eval()


def test_model_entropy_matches_a_per_segment_loop():
    x, lengths, locs = _batch()
    model = _tiny()
    with torch.no_grad():
        out = model(x, lengths, locs, return_intermediates=True)
    got = diag.entropy_from_intermediates(out.intermediates, lengths, locs, pool_level="measure")
    # independent computation of the beat level: boundary lists of the original, then one softmax per span
    w = out.intermediates["beat_weights"].double()
    expected, singletons = [], 0
    for b, bounds in enumerate(hier.boundaries_as_lists(locs["beat"], lengths)):
        for s, e in zip(bounds[:-1], bounds[1:]):
            if e - s == 1:
                singletons += 1
                continue
            for h in range(w.shape[-1]):
                p = w[b, s:e, h].numpy()
                assert p.sum() == pytest.approx(1.0, abs=FLOAT32)  # a softmax over the span
                expected.append(diag.normalized_entropy(p))
    beat = got["beat"]
    # one-note beats: beats 2 and 4 of sample 0, beat 0 of sample 1
    assert beat.n_singletons == singletons == 3
    assert beat.n_segments * model.config.num_heads == len(expected)
    assert beat.mean == pytest.approx(float(np.mean(expected)), abs=FLOAT32)
    # measures in beat-node space: sample 0 beats {0,1} {2,3} {4}; sample 1 beats {0,1} {2}
    meas = got["measure"]
    assert (meas.n_segments, meas.n_singletons) == (3, 2)
    assert set(got) == {"beat", "measure", "pool"}
    assert got["pool"].n_segments == 2 and got["pool"].summary()["max_weight_on_padding"] < FLOAT32


def test_sample_attention_returns_the_spans_of_the_original():
    x, lengths, locs = _batch()
    with torch.no_grad():
        out = _tiny()(x, lengths, locs, return_intermediates=True)
    weights, bounds = diag.sample_attention(out.intermediates, lengths, locs, index=1)
    assert bounds["beat"] == hier.boundaries_as_lists(locs["beat"], lengths)[1] == [0, 1, 3, 6]
    assert bounds["measure"] == [0, 2, 3]  # beat nodes {0, 1} and {2}
    assert weights["beat"].shape == (6, 8) and weights["measure"].shape == (3, 8)
    for level in ("beat", "measure"):
        b = bounds[level]
        sums = np.stack([weights[level][s:e].sum(axis=0) for s, e in zip(b[:-1], b[1:])])
        np.testing.assert_allclose(sums, 1.0, atol=FLOAT32)


def test_entropy_at_init_is_near_uniform_and_temperature_sharpens_it():
    x, lengths, locs = _batch()
    plain = diag.attention_entropy(_tiny(), [(x, lengths, locs)])
    sharp = diag.attention_entropy(_tiny(attention_temperature=0.01), [(x, lengths, locs)])
    # the original starts near-uniform (docs/original.md#behaviour-at-init): entropy close to 1 at every level
    for level in ("beat", "measure", "pool"):
        assert plain[level].mean > 0.9
    assert sharp["beat"].mean < plain["beat"].mean - 0.1
    assert "beat" in diag.format_entropy(plain)


def test_attention_entropy_accepts_data_batches_and_restores_mode():
    from percepiano.data import iterate_batches, load_dataset

    data = load_dataset(DATA / "synthetic_m2pf.npz")
    model = _tiny()
    model.train()
    ent = diag.attention_entropy(model, iterate_batches(data, range(8), 4), max_batches=1)
    assert model.training
    assert ent["beat"].n_segments + ent["beat"].n_singletons == sum(
        len(set(data.note_locations["beat"][data.offsets[i] : data.offsets[i + 1]])) for i in range(4)
    )


# ----------------------------------------------------------------------------------------------- collapse
def test_collapse_detector():
    rng = np.random.default_rng(0)
    labels = rng.uniform(0.2, 0.9, size=(50, 3))
    preds = np.stack([labels[:, 0], 0.5 + 0.1 * (labels[:, 1] - 0.5), np.full(50, 0.5)], axis=1)
    rows = diag.prediction_spread(preds, labels, ["a", "b", "c"])
    assert [r.ratio for r in rows] == pytest.approx([1.0, 0.1, 0.0], abs=EXACT)
    assert diag.collapsed_labels(rows) == ["b", "c"]
    # threshold is a parameter; ratio exactly equal to the threshold is not collapsed
    assert diag.collapsed_labels(diag.prediction_spread(preds, labels, threshold=0.1)) == ["2"]


def test_collapse_detector_per_fold_ignores_fold_to_fold_differences():
    labels = np.array([[0.2], [0.5], [0.8]])
    # a "model" predicting one constant per fold: stacked, the folds would look spread out; per fold it is collapsed
    folds = [(np.full((3, 1), 0.3), labels), (np.full((3, 1), 0.7), labels)]
    stacked = diag.prediction_spread(np.concatenate([f[0] for f in folds]), np.concatenate([f[1] for f in folds]))
    assert not stacked[0].collapsed
    per_fold = diag.prediction_spread_by_fold(folds)
    assert per_fold[0].ratio == pytest.approx(0.0, abs=EXACT) and per_fold[0].collapsed
    alive = diag.prediction_spread_by_fold([(labels * 0.5, labels), (labels, labels)])
    assert alive[0].ratio == pytest.approx(0.75, abs=EXACT) and not alive[0].collapsed


def test_collapse_detector_constant_labels_and_bad_shapes():
    labels = np.array([[0.5, 0.1], [0.5, 0.9]])
    rows = diag.prediction_spread(np.array([[0.4, 0.5], [0.6, 0.5]]), labels)
    assert math.isnan(rows[0].ratio) and not rows[0].collapsed
    assert rows[1].collapsed
    with pytest.raises(ValueError, match="must both be"):
        diag.prediction_spread(np.zeros((3, 2)), np.zeros((3, 3)))


# ----------------------------------------------------------------------------------------------- results
def _results(preset, split, fold_r2, per_label=None):
    per_label = per_label or [[v, v] for v in fold_r2]
    return {
        "preset": preset, "split": split, "mean_test_r2": float(np.mean(fold_r2)), "label_names": ["x_a", "y_b"],
        "folds": [{"fold": k, "test_r2": v, "per_label_test_r2": per_label[k]} for k, v in enumerate(fold_r2)],
    }


def test_hierarchy_gain_is_han_minus_bilstm_sa_same_split():
    han = _results("han", "composition", [0.40, 0.42, 0.38, 0.40], [[0.5, 0.3]] * 4)
    sa = _results("bilstm_sa", "composition", [0.30, 0.31, 0.29, 0.30], [[0.2, 0.4]] * 4)
    targets = json.loads(targets_path().read_text())
    g = diag.hierarchy_gain(han, sa, targets=targets)
    assert g.gain == pytest.approx(0.10, abs=EXACT)
    assert g.per_label_gain == pytest.approx({"x_a": 0.3, "y_b": -0.1}, abs=EXACT)
    assert g.paper_gain == pytest.approx(0.397 - 0.304, abs=EXACT)
    assert g.han_fold_std == pytest.approx(np.std([0.40, 0.42, 0.38, 0.40]), abs=EXACT)
    with pytest.raises(ValueError, match="same split"):
        diag.hierarchy_gain(han, _results("bilstm_sa", "performer", [0.3]))
    with pytest.raises(ValueError, match="han minus bilstm_sa"):
        diag.hierarchy_gain(sa, han)
    two = _results("bilstm_sa", "composition", [0.30, 0.31])  # a cell with 2 of its 4 folds
    with pytest.raises(ValueError, match=r"same folds: the han run \(<dict>\) covers folds \[0, 1, 2, 3\], the "
                                         r"bilstm_sa run \(<dict>\) \[0, 1\]"):
        diag.hierarchy_gain(han, two)


# ----------------------------------------------------------------------------------------------- deviations
def test_config_deviations():
    assert diag.config_deviations(get_preset("han")) == []
    devs = diag.config_deviations(get_preset("han", attention_temperature=0.5, init="orthogonal_lstm"))
    assert {d.field: (d.value, d.original) for d in devs} == {
        "attention_temperature": (0.5, 1.0), "init": ("orthogonal_lstm", "pytorch_default")}
    assert all(d.note and d.field in d.line for d in devs)
    # a results.json config: {"model": ModelConfig.to_dict(), "train": ...}
    cfg = {"model": get_preset("han", boundary_rule="diff_gt_0").to_dict(), "train": {"epochs": 100}}
    assert [d.field for d in diag.config_deviations(cfg)] == ["boundary_rule"]
    with pytest.raises(ValueError, match="no model config"):
        diag.config_deviations({"model": None, "baseline": {"name": "ridge"}})


def test_run_deviations_lists_sizes_protocol_and_folds():
    from percepiano.training import TrainConfig

    res = {
        "preset": "han", "folds": [{}, {}],
        "config": {"model": get_preset("han", hidden_size=8, attention_temperature=0.5).to_dict(),
                   "train": TrainConfig(epochs=2, deterministic=True).to_dict()},
    }
    rows = {(d.scope, d.field): (d.value, d.original) for d in diag.run_deviations(res)}
    assert rows[("model (named deviation)", "attention_temperature")] == (0.5, 1.0)
    assert rows[("model (size/structure)", "beat_size")] == (8, 256)
    assert rows[("training protocol", "epochs")] == (2, 100)
    assert rows[("folds", "n_folds")] == (2, 4)
    assert not any(f == "deterministic" for _, f in rows)  # does not change what is computed
    faithful = {"preset": "han", "folds": [{}] * 4,
                "config": {"model": get_preset("han").to_dict(), "train": TrainConfig().to_dict()}}
    assert diag.run_deviations(faithful) == []


# ----------------------------------------------------------------------------------------------- boundaries
def test_boundary_differences_find_jumps_only():
    lengths = torch.tensor([5, 5, 3])
    beat = torch.tensor([[0, 0, 2, 2, 3], [0, 1, 1, 2, 2], [0, 1, 3, 0, 0]])  # row 1 contiguous; row 2 padded
    measure = torch.tensor([[0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 1, 0, 0]])
    diffs = diag.boundary_differences({"beat": beat, "measure": measure}, lengths, ["a", "b", "c"])
    assert [(d.segment, d.level) for d in diffs] == [("a", "beat"), ("c", "beat")]
    a, c = diffs
    assert (a.nodes_diff_eq_1, a.nodes_diff_gt_0, a.jumps) == (2, 3, ((2, 2),))  # [0,0 | 2,2,3] vs [0,0|2,2|3]
    assert (c.nodes_diff_eq_1, c.nodes_diff_gt_0, c.jumps) == (2, 3, ((2, 2),))  # the drop into padding is no jump


class _FakeData:
    """The three attributes dataset_boundary_differences reads (real data validation forbids jumps)."""

    def __init__(self, rows):
        self.segment_ids = np.array([f"s{i}" for i in range(len(rows))])
        self.offsets = np.concatenate([[0], np.cumsum([len(r[0]) for r in rows])])
        self.note_locations = {"beat": np.concatenate([r[0] for r in rows]), "measure": np.concatenate([r[1] for r in rows])}

    def __len__(self):
        return len(self.segment_ids)


def test_dataset_boundary_differences_reports_decreasing_and_single_nodes():
    data = _FakeData([
        ([0, 1, 1, 2], [0, 0, 1, 1]),  # fine
        ([0, 0, 2, 3], [0, 0, 0, 1]),  # beat jump of 2
        ([0, 1, 0, 1], [0, 0, 0, 0]),  # decreasing beats, one measure
    ])
    rep = diag.dataset_boundary_differences(data, chunk=2)
    assert rep["n_segments"] == 3
    assert [(d.segment, d.level) for d in rep["differences"]] == [("s1", "beat")]
    assert rep["decreasing"] == [("s2", "beat")]
    assert rep["single_node"] == [("s2", "measure")]


@pytest.mark.skipif(not os.environ.get("PERCEPIANO_DATA"), reason="real data: set PERCEPIANO_DATA to percepiano_vnet_m2pf.npz")
def test_real_data_has_no_boundary_rule_differences():
    from percepiano.data import load_dataset

    data = load_dataset(None)
    rep = diag.dataset_boundary_differences(data)
    assert rep["n_segments"] == len(data) > 1000
    # indices are made contiguous by the original pipeline, so the two rules agree on every segment
    assert rep["differences"] == [] and rep["decreasing"] == [] and rep["single_node"] == []
