"""percepiano.data: validation on load, feature sets, splits, collate (== original FeatureCollate), batching."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_sequence

from percepiano import data as D
from percepiano import synthetic
from percepiano.cli import main
from percepiano.constants import MAX_VOICE

REAL = os.environ.get("PERCEPIANO_DATA")
needs_real = pytest.mark.skipif(not REAL, reason="set PERCEPIANO_DATA to percepiano_vnet_m2pf.npz for real-data tests")


def write(tmp_path, arrays, name="data.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.fixture
def arrays():
    return synthetic.dataset_arrays(n_segments=12, seed=1)


@pytest.fixture
def ds():
    return synthetic.dataset(n_segments=20, seed=2)


def test_synthetic_file_loads(tmp_path, arrays):
    d = D.load_dataset(write(tmp_path, arrays))
    assert len(d) == 12 and d.num_notes == int(arrays["offsets"][-1])
    np.testing.assert_array_equal(d.input, arrays["input"])
    assert d.note_locations["beat"].dtype == np.int64


def test_label_names_stored_as_bytes_read_as_text_and_the_percepiano_order_is_required(tmp_path, arrays):
    from percepiano.constants import LABEL_NAMES

    as_bytes = D.load_dataset(write(tmp_path, {**arrays, "label_names": arrays["label_names"].astype("S")}))
    assert as_bytes.label_names == [str(n) for n in arrays["label_names"]]
    real = D.load_dataset(write(tmp_path, {**arrays, "label_names": np.array(LABEL_NAMES).astype("S")}))
    assert real.label_names == list(LABEL_NAMES)
    swapped = list(LABEL_NAMES)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ValueError, match=rf"array 'label_names': PercePiano's 19 labels in another order \(column 0 is "
                                         rf"'{swapped[0]}', expected '{LABEL_NAMES[0]}'\)"):
        D.load_dataset(write(tmp_path, {**arrays, "label_names": np.array(swapped)}))


def _seg_rows(arrays, seg):
    return int(arrays["offsets"][seg]), int(arrays["offsets"][seg + 1])


# Each corruption: (array it breaks, function(arrays) -> segment index it broke, expected message fragment)
def _nonfinite(a):
    s, _ = _seg_rows(a, 3)
    a["input"][s + 2, 50] = np.nan
    return 3


def _label_zero(a):
    a["labels"][5, 0] = 0.0
    return 5


def _label_above_one(a):
    a["labels"][4, 7] = 1.01
    return 4


def _label_inf(a):
    a["labels"][2, 7] = np.inf
    return 2


def _beat_jump(a):
    _, e = _seg_rows(a, 6)
    a["note_beat"][e - 1] = a["note_beat"][e - 2] + 2
    return 6


def _beat_decrease(a):
    _, e = _seg_rows(a, 7)
    a["note_beat"][e - 1] = 0  # every synthetic segment reaches beat >= 3 before its last note
    return 7


def _measure_jump(a):
    s, e = _seg_rows(a, 8)
    a["note_measure"][e - 1] = a["note_measure"][e - 2] + 2
    return 8


def _measure_all_zero(a):
    s, e = _seg_rows(a, 9)
    a["note_measure"][s:e] = 0
    return 9


def _voice_negative(a):
    s, _ = _seg_rows(a, 1)
    a["note_voice"][s] = -1
    return 1


def _voice_too_large(a):
    s, _ = _seg_rows(a, 2)
    a["note_voice"][s + 1] = 2**31 - 1  # passed validation, then the voice LSTM asked for 17 GB
    return 2


def _zero_features(a):
    s, e = _seg_rows(a, 5)
    a["input"][s:e] = 0  # a whole segment without features (it trained as if it had notes)
    return 5


def _one_zero_row(a):
    s, _ = _seg_rows(a, 4)
    a["input"][s + 3] = 0
    return 4


def _split_value(a):
    a["performer_split"][10, 2] = 3
    return 10


def _test_differs(a):
    last = len(a["segment_ids"]) - 1
    a["composition_split"][last, 3] = 1  # the last segment is test in folds 0-2 but valid in fold 3
    return last


CORRUPTIONS = {
    "input": (_nonfinite, "non-finite"),
    "labels-zero": (_label_zero, "(0, 1]"),
    "labels-above-one": (_label_above_one, "(0, 1]"),
    "labels-inf": (_label_inf, "non-finite"),
    "note_beat-jump": (_beat_jump, "contiguous"),
    "note_beat-decrease": (_beat_decrease, "non-decreasing"),
    "note_measure-jump": (_measure_jump, "contiguous"),
    "note_measure-zero": (_measure_all_zero, "all indices are 0"),
    "note_voice": (_voice_negative, "negative"),
    "note_voice-too-large": (_voice_too_large, f"voice number 2147483647 at note 1 is above the maximum {MAX_VOICE}"),
    "input-zero-segment": (_zero_features, "note 0 of the segment has all 101 features 0"),
    "input-zero-row": (_one_zero_row, "note 3 of the segment has all 101 features 0"),
    "performer_split": (_split_value, "0 (train), 1 (valid) or 2 (test)"),
    "composition_split": (_test_differs, "test membership differs"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_bad_file_names_file_array_and_segment(tmp_path, arrays, case):
    corrupt, fragment = CORRUPTIONS[case]
    seg = corrupt(arrays)
    array = case.split("-")[0]
    path = write(tmp_path, arrays, "bad.npz")
    with pytest.raises(ValueError) as exc:
        D.load_dataset(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert f"'{array}'" in msg
    assert f"'{arrays['segment_ids'][seg]}' (index {seg})" in msg
    assert fragment in msg


@pytest.mark.parametrize(
    "mutate, array",
    [
        (lambda a: a.update(input=a["input"].astype(np.float64)), "input"),
        (lambda a: a.update(input=a["input"][:, :100]), "input"),
        (lambda a: a.update(offsets=a["offsets"][:-1]), "offsets"),
        (lambda a: a.update(labels=a["labels"][:, :18]), "labels"),
        (lambda a: a.update(composition_split=a["composition_split"][:, :3]), "composition_split"),
        (lambda a: a.pop("note_voice"), "note_voice"),
    ],
    ids=["dtype", "width", "offsets-shape", "labels-shape", "split-shape", "missing"],
)
def test_bad_shapes_and_dtypes(tmp_path, arrays, mutate, array):
    mutate(arrays)
    path = write(tmp_path, arrays)
    with pytest.raises(ValueError, match=array) as exc:
        D.load_dataset(path)
    assert str(path) in str(exc.value)


def test_empty_segment_in_offsets(tmp_path, arrays):
    arrays["offsets"][4] = arrays["offsets"][3]  # segment 3 gets no notes
    with pytest.raises(ValueError, match=r"'offsets', segment 'Synthetic_piece0_8bars_3_3' \(index 3\)"):
        D.load_dataset(write(tmp_path, arrays))


def test_object_arrays_are_refused_without_pickle(tmp_path, arrays):
    arrays["segment_ids"] = np.array(list(arrays["segment_ids"]), dtype=object)
    path = write(tmp_path, arrays)
    with pytest.raises(ValueError, match="pickle"):
        D.load_dataset(path)


def _crc_damaged(path):
    """The file with one byte of its ``input.npy`` member flipped (a bad copy): the zip CRC no longer matches."""
    import zipfile

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("input.npy")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("case", ["empty", "truncated", "crc", "npy", "text"])
def test_unreadable_files_are_value_errors_naming_the_file(tmp_path, arrays, case, capsys):
    good = write(tmp_path, arrays, "good.npz")
    bad = tmp_path / "bad.npz"
    if case == "npy":
        np.save(tmp_path / "bad.npy", arrays["input"])
        bad = tmp_path / "bad.npy"
    else:
        contents = {"empty": b"", "truncated": good.read_bytes()[:5000], "crc": _crc_damaged(good),
                    "text": b"segment_id,label\n"}[case]
        bad.write_bytes(contents)
    message = {"empty": "empty file", "truncated": "a truncated or damaged npz archive",
               "crc": "a damaged npz archive .*Bad CRC-32 for file 'input.npy'",
               "npy": r"a single array \(a plain .npy file\)",
               "text": "not an npz archive"}[case]
    with pytest.raises(ValueError, match=rf"{bad.name}: {message}.*expected the processed dataset") as exc:
        D.load_dataset(bad)
    assert "\n" not in str(exc.value)
    assert main(["data-summary", "--data", str(bad)]) == 2  # the CLI: one error line, no traceback
    err = capsys.readouterr().err
    assert err.startswith(f"percepiano data-summary: error: {bad}") and "Traceback" not in err


def test_an_all_zero_row_is_a_note_to_the_model_not_padding():
    """Why validation refuses it: the original masks no input row (only pooled hidden states whose features sum
    to 0), so a zero row inside a segment is embedded and run as a note: it changes the output."""
    from percepiano import ModelConfig, PercePianoModel

    sample = synthetic.dataset(n_segments=20, seed=2).sample(0)
    x, loc = sample.x.clone(), {k: v.clone() for k, v in sample.note_locations.items()}
    n = x.shape[0]
    torch.manual_seed(0)
    model = PercePianoModel(ModelConfig(hidden_size=8, dropout=0.0)).eval()
    with torch.no_grad():
        with_note = model(x[None], torch.tensor([n]), {k: v[None] for k, v in loc.items()})
        x[n - 1] = 0  # the last note's features zeroed: still a note
        zeroed = model(x[None], torch.tensor([n]), {k: v[None] for k, v in loc.items()})
        cut = model(x[None, : n - 1], torch.tensor([n - 1]), {k: v[None, : n - 1] for k, v in loc.items()})
    assert not torch.allclose(zeroed, cut, rtol=0, atol=1e-6)  # not the segment without that row
    assert not torch.allclose(zeroed, with_note, rtol=0, atol=1e-6)


def test_missing_data_path_names_the_env_var(monkeypatch):
    monkeypatch.delenv("PERCEPIANO_DATA", raising=False)
    with pytest.raises(ValueError, match="PERCEPIANO_DATA"):
        D.load_dataset(None)


def test_feature_sets(ds):
    assert D.feature_size("full") == 101 and D.feature_size("performance_only") == 9
    s_full, s_perf = ds.sample(3, "full"), ds.sample(3, "performance_only")
    torch.testing.assert_close(s_perf.x, s_full.x[:, 92:101], rtol=0, atol=0)
    assert s_full.x.shape == (int(ds.lengths[3]), 101)
    with pytest.raises(ValueError, match="feature set"):
        ds.sample(0, "score_only")


def test_split_indices(ds):
    for scheme in ds.splits:  # the shipped splits (a synthetic dataset has no work split)
        tests = [ds.split_indices(scheme, f, "test") for f in range(4)]
        for f in range(4):
            parts = [ds.split_indices(scheme, f, p) for p in ("train", "valid", "test")]
            np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(ds)))
            np.testing.assert_array_equal(parts[2], tests[0])
    with pytest.raises(ValueError, match="fold"):
        ds.split_indices("performer", 4, "train")
    with pytest.raises(ValueError, match="scheme"):
        ds.split_indices("random", 0, "train")


def test_collate_equals_original_feature_collate(ds):
    idx = [5, 0, 11, 7]
    samples = [ds.sample(i) for i in idx]
    b = D.collate(samples)
    lengths = [int(ds.lengths[i]) for i in idx]
    assert b.x.shape == (4, max(lengths), 101) and b.x.dtype == torch.float32
    assert b.lengths.dtype == torch.int64 and b.lengths.tolist() == lengths
    assert b.labels.shape == (4, 19) and b.labels.dtype == torch.float32
    assert b.segment_ids == [str(ds.segment_ids[i]) for i in idx]
    # Input: the original packs with pack_sequence(enforce_sorted=False); packing our padded x gives the same.
    ours = pack_padded_sequence(b.x, b.lengths, batch_first=True, enforce_sorted=False)
    orig = pack_sequence([s.x for s in samples], enforce_sorted=False)
    torch.testing.assert_close(ours.data, orig.data, rtol=0, atol=0)
    torch.testing.assert_close(ours.batch_sizes, orig.batch_sizes, rtol=0, atol=0)
    for i, n in enumerate(lengths):
        assert torch.count_nonzero(b.x[i, n:]) == 0
    # Locations: pad_sequence(batch_first=True) with 0, as int64.
    for k in D.LOCATION_KEYS:
        expect = pad_sequence([s.note_locations[k] for s in samples], batch_first=True).long()
        assert b.note_locations[k].dtype == torch.int64
        torch.testing.assert_close(b.note_locations[k], expect, rtol=0, atol=0)
    torch.testing.assert_close(b.labels, torch.from_numpy(ds.labels[idx]), rtol=0, atol=0)


def test_batch_is_frozen_and_moves(ds):
    b = ds.batch([0, 1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.x = b.x * 2
    moved = b.to("meta")
    for t in (moved.x, moved.lengths, moved.labels, *moved.note_locations.values()):
        assert t.device.type == "meta"
    assert b.x.device.type == "cpu" and moved.segment_ids == b.segment_ids


def test_eval_iteration_keeps_order(ds):
    idx = ds.split_indices("composition", 0, "train")
    batches = list(D.iterate_batches(ds, idx, 4))
    assert [len(b) for b in batches] == [4] * (len(idx) // 4) + ([len(idx) % 4] if len(idx) % 4 else [])
    assert sum((b.segment_ids for b in batches), []) == [str(ds.segment_ids[i]) for i in idx]


def test_training_shuffle_is_reproducible_per_epoch(ds):
    idx = np.arange(len(ds))

    def order(seed, epoch):
        return sum((b.segment_ids for b in D.iterate_batches(ds, idx, 8, shuffle=True, seed=seed, epoch=epoch)), [])

    a0, b0, a1, c0 = order(7, 0), order(7, 0), order(7, 1), order(8, 0)
    assert a0 == b0  # same seed + epoch -> same order
    assert a0 != a1 and a0 != c0  # a new epoch or seed reshuffles
    assert sorted(a0) == sorted(str(s) for s in ds.segment_ids)  # a permutation of the whole split
    assert a0 != [str(s) for s in ds.segment_ids]
    # The global torch RNG is neither used nor disturbed (dropout draws from it during training).
    state = torch.get_rng_state()
    order(7, 3)
    torch.testing.assert_close(torch.get_rng_state(), state, rtol=0, atol=0)
    assert len(list(D.iterate_batches(ds, idx, 8, shuffle=True, seed=7, max_batches=2))) == 2
    with pytest.raises(ValueError, match="seed"):
        next(D.iterate_batches(ds, idx, 8, shuffle=True))


def test_data_summary_command(tmp_path, arrays, capsys):
    path = write(tmp_path, arrays)
    assert main(["data-summary", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "segments: 12" in out and "composition" in out and "label_18" in out


def test_data_summary_reports_bad_file(tmp_path, arrays, capsys):
    arrays["labels"][0, 0] = 2.0
    assert main(["data-summary", "--data", str(write(tmp_path, arrays))]) == 2
    assert "labels" in capsys.readouterr().err


@needs_real
def test_real_dataset_counts():
    d = D.load_dataset(REAL)
    assert len(d) == 1192 and d.num_notes == 168677
    sizes = {
        "composition": [(745, 261, 186), (765, 241, 186), (746, 260, 186), (762, 244, 186)],
        "performer": [(828, 174, 190), (828, 174, 190), (840, 162, 190), (828, 174, 190)],
    }
    for scheme, rows in sizes.items():
        for fold, row in enumerate(rows):
            assert tuple(len(d.split_indices(scheme, fold, p)) for p in ("train", "valid", "test")) == row
    assert d.label_names[0] == "Timing_Stable_Unstable" and len(d.label_names) == 19
    assert d.feature_names[92] == "mmidi_pitch" and d.feature_names[100] == "following_rest_unnorm"
    # what validation refuses is absent: no all-zero feature row, voice numbers far below MAX_VOICE
    assert int((~d.input.any(axis=1)).sum()) == 0 and int((d.input != 0).sum(axis=1).min()) == 27
    assert int(d.note_locations["voice"].max()) == 7 < MAX_VOICE
