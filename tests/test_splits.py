"""The work-held-out split (percepiano/splits.py): the rule on hand-made ids, its invariants, the recorded
resource and how percepiano.data exposes it; on the real data (PERCEPIANO_DATA) the recorded split is the
rule's, no work straddles two parts, and the composition split's test works are trained on."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from percepiano import splits, synthetic
from percepiano.constants import N_FOLDS, PARTS
from percepiano.data import PercePianoData, load_dataset, summary
from percepiano.provenance import file_sha256

TRAIN, VALID, TEST = PARTS["train"], PARTS["valid"], PARTS["test"]
# works of 30, 12, 5, 4 x 5, 3, 3 segments (performers 0..n-1, one segment number each)
SIZES = {"Big_op1": 30, "Mid_op2": 12, "W_a": 5, "W_b": 4, "W_c": 4, "W_d": 4, "W_e": 4, "W_f": 4, "W_g": 3,
         "W_h": 3}


def ids_of(sizes: dict) -> list[str]:
    return [f"{work}_8bars_{p}_{i}" for i, (work, n) in enumerate(sizes.items()) for p in range(n)]


def reference(n: int, test: int) -> np.ndarray:
    ref = np.zeros((n, N_FOLDS), dtype=np.int8)
    ref[:test] = TEST
    return ref


def parts_by_work(ids, split) -> dict[str, tuple]:
    out = {}
    for work, row in zip(splits.works_of(ids), split):
        out.setdefault(work, tuple(int(c) for c in row))
        assert out[work] == tuple(int(c) for c in row), f"{work} is in two parts"
    return out


def test_work_of_reads_the_original_naming():
    assert splits.work_of("Schubert_D960_mv3_8bars_3_12") == "Schubert_D960_mv3"
    assert splits.work_of("Beethoven_WoO80_var8_8bars_Score2_3") == "Beethoven_WoO80_var8"
    with pytest.raises(ValueError, match=r"segment id 'piece_3_12': expected <work>_<bars>bars_<performer>_<segment>"):
        splits.work_of("piece_3_12")


def test_the_rule_on_hand_made_works():
    """target 10 (the reference's test size): Big (30) and Mid (12) are larger, train everywhere; test takes W_a
    (5), W_b (4), W_c (4) -> 13 >= 10; W_d..W_h go to the emptiest valid part in turn (ties: lowest fold)."""
    ids = ids_of(SIZES)
    split = splits.work_split(ids, reference(len(ids), 10))
    assert split.dtype == np.int8 and split.shape == (len(ids), N_FOLDS)
    got = parts_by_work(ids, split)
    t, v, r = TEST, VALID, TRAIN
    assert got == {
        "Big_op1": (r, r, r, r), "Mid_op2": (r, r, r, r),
        "W_a": (t, t, t, t), "W_b": (t, t, t, t), "W_c": (t, t, t, t),
        "W_d": (v, r, r, r), "W_e": (r, v, r, r), "W_f": (r, r, v, r), "W_g": (r, r, r, v),
        "W_h": (r, r, r, v),  # fold 3 held 3 segments (W_g), the fewest
    }
    assert splits.works_across_parts(ids, split) == [{}] * N_FOLDS


def test_the_rule_depends_on_the_ids_not_their_order():
    ids = ids_of(SIZES)
    split = splits.work_split(ids, reference(len(ids), 10))
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = splits.work_split([ids[i] for i in order], reference(len(ids), 10))
    np.testing.assert_array_equal(shuffled, split[order])


def test_too_few_works_is_an_error():
    ids = ids_of({"A": 4, "B": 4, "C": 4, "D": 4})  # test + 4 valid parts need 5 works
    with pytest.raises(ValueError, match="4 works .* too few for a test part of 4 segments and 4 disjoint valid"):
        splits.work_split(ids, reference(len(ids), 4))
    with pytest.raises(ValueError, match=r"composition split: expected an integer \(16, 4\) split"):
        splits.work_split(ids, np.zeros((16, 3), dtype=np.int8))


def test_works_across_parts_finds_an_excerpt_split():
    ids = ids_of({"A": 3, "B": 3})
    split = np.zeros((6, N_FOLDS), dtype=np.int8)
    split[0] = TEST
    assert splits.works_across_parts(ids, split)[0] == {"A": ["train", "test"]}
    assert splits.trained_test_works(ids, split) == (["A"], ["A"])


def test_record_round_trip_and_matching_by_ids(tmp_path):
    ids = ids_of(SIZES)
    split = splits.work_split(ids, reference(len(ids), 10))
    record = splits.work_split_record(ids, split, {"file": "x.npz", "sha256": "0" * 64, "segments": len(ids)})
    assert record["test_segments"] == 13 and len(record["valid"]) == N_FOLDS
    assert record["works"]["W_d"] == {"segments": 4, "parts": ["valid", "train", "train", "train"]}
    order = np.random.default_rng(1).permutation(len(ids))
    np.testing.assert_array_equal(splits.split_from_record([ids[i] for i in order], record), split[order])
    with pytest.raises(ValueError, match="fold 0 test: segment 'W_a_8bars_0_2' is not in the dataset"):
        splits.split_from_record([s for s in ids if not s.startswith("W_a")], record)
    path = tmp_path / "work_split.json"
    path.write_text(json.dumps({**record, "valid": record["valid"][:3]}))
    with pytest.raises(ValueError, match="field 'valid': expected 4 non-empty lists"):
        splits.load_work_split_record(str(path))


def test_a_dataset_without_a_work_split_says_so():
    ds = synthetic.dataset(n_segments=20, seed=2)
    assert set(ds.splits) == {"composition", "performer"} and "work" not in summary(ds)["splits"]
    with pytest.raises(ValueError, match="no 'work' split: the file has no work_split array and its segment ids are "
                                         "not those of percepiano/resources/work_split.json"):
        ds.split_indices("work", 0, "test")


def test_a_work_split_array_in_the_file_is_used_and_checked():
    """A work_split stored in the file is used as given, once it is a split of the works: another scheme's
    split (pieces in two parts), folds that share valid segments and test sets that differ are refused."""
    arrays = synthetic.dataset_arrays(n_segments=64, seed=0)
    work = splits.work_split(arrays["segment_ids"], arrays["composition_split"])
    ds = PercePianoData({**arrays, "work_split": work})
    np.testing.assert_array_equal(ds.split_indices("work", 2, "valid"), np.flatnonzero(work[:, 2] == VALID))
    leaks = splits.works_across_parts(arrays["segment_ids"], arrays["composition_split"])
    assert any(leaks)  # the synthetic composition split holds out segments, not pieces
    fold = next(k for k, f in enumerate(leaks) if f)
    with pytest.raises(ValueError, match=rf"array 'work_split': fold {fold}: work 'Synthetic_piece\d+' has segments in "
                                         r"\w+ and \w+ .*keeps every work in one part"):
        PercePianoData({**arrays, "work_split": arrays["composition_split"]})
    copied = work.copy()
    copied[:, 1] = copied[:, 0]  # fold 1 is fold 0 again
    with pytest.raises(ValueError, match=r"array 'work_split', segment .*: valid in folds \[0, 1\]: a segment may be "
                                         r"in the valid part of one fold only"):
        PercePianoData({**arrays, "work_split": copied})
    bad = work.copy()
    bad[0, 1] = TRAIN if bad[0, 1] == TEST else TEST
    with pytest.raises(ValueError, match="array 'work_split'.*test membership differs across folds"):
        PercePianoData({**arrays, "work_split": bad})


# --------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real():
    path = os.environ.get("PERCEPIANO_DATA")
    if not path:
        pytest.skip("set PERCEPIANO_DATA to percepiano_vnet_m2pf.npz")
    return load_dataset(path)


def test_the_recorded_split_is_the_rules_on_the_real_data(real):
    record = splits.load_work_split_record()
    assert record["dataset"]["sha256"] == file_sha256(real.path) and record["rule"] == splits.RULE
    np.testing.assert_array_equal(real.splits["work"],
                                  splits.work_split(real.segment_ids, real.splits["composition"]))
    assert splits.works_across_parts(real.segment_ids, real.splits["work"]) == [{}] * N_FOLDS
    sizes = {p: [len(real.split_indices("work", f, p)) for f in range(N_FOLDS)] for p in PARTS}
    assert sizes == {"train": [959, 959, 959, 973], "valid": [42, 42, 42, 28], "test": [191] * 4}
    test_works = sorted({splits.work_of(s) for s in real.segment_ids[real.split_indices("work", 0, "test")]})
    assert test_works == ["Beethoven_WoO80_thema", "Beethoven_WoO80_var10", "Beethoven_WoO80_var12",
                          "Beethoven_WoO80_var15", "Beethoven_WoO80_var17", "Beethoven_WoO80_var18",
                          "Schubert_D935_no.3"]


def test_the_composition_split_holds_out_excerpts_not_works(real):
    """3 of the 5 works in the composition test set have segments in training (docs/rounds.md)."""
    test, trained = splits.trained_test_works(real.segment_ids, real.splits["composition"])
    assert len(test) == 5 and trained == ["Schubert_D935_no.3", "Schubert_D960_mv2", "Schubert_D960_mv3"]
    assert all(across for across in splits.works_across_parts(real.segment_ids, real.splits["composition"]))


def test_the_resource_is_what_the_rule_writes_for_the_real_data(real, tmp_path):
    out = tmp_path / "work_split.json"
    assert splits.main([real.path, str(out)]) == 0
    assert out.read_text() == splits.WORK_SPLIT_RESOURCE.read_text()
    assert splits.main([]) == 2


def test_the_split_command_reports_a_file_it_cannot_use_in_one_line(tmp_path, capsys):
    arrays = synthetic.dataset_arrays(n_segments=32, seed=0)
    del arrays["composition_split"]
    path = tmp_path / "no_composition.npz"
    np.savez(path, **arrays)
    assert splits.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m percepiano.splits: error: ") and str(path) in err and "\n" not in err
    assert splits.main([str(tmp_path / "absent.npz")]) == 2
    assert "absent.npz" in capsys.readouterr().err
