"""The synthetic-data generator: segment structure, dataset layout, and the committed file it regenerates."""
from pathlib import Path

import numpy as np
import pytest

from percepiano import synthetic
from percepiano.data import PercePianoData

COMMITTED = Path(__file__).parent / "data" / "synthetic_m2pf.npz"


def test_segment_locations_follow_its_measures_and_beats():
    seg = synthetic.Segment(((2, 1), (3,)), (1, 0, 2, 1, 1, 1), first_beat=4, first_measure=2, first_section=1)
    loc = seg.locations()
    np.testing.assert_array_equal(loc["beat"], [4, 4, 5, 6, 6, 6])
    np.testing.assert_array_equal(loc["measure"], [2, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(loc["section"], [1] * 6)
    np.testing.assert_array_equal(loc["voice"], [1, 0, 2, 1, 1, 1])
    with pytest.raises(ValueError, match="5 voices for 6 notes"):
        synthetic.Segment(((2, 1), (3,)), (1, 0, 2, 1, 1))


def test_stack_pads_with_zeros_after_each_length():
    segs = [synthetic.Segment(((1, 1),), (1, 1)), synthetic.Segment(((2, 1), (1,)), (1, 2, 1, 1))]
    b = synthetic.stack(segs, input_size=3, num_labels=2, seed=0)
    np.testing.assert_array_equal(b["lengths"], [2, 4])
    assert b["x"].shape == (2, 4, 3) and not b["x"][0, 2:].any() and b["x"][0, :2].all()
    np.testing.assert_array_equal(b["beat"][0], [0, 1, 0, 0])


def test_random_segments_are_shaped_like_the_dataset():
    rng = np.random.default_rng(0)
    for _ in range(50):
        seg = synthetic.random_segment(rng)
        loc = seg.locations()
        assert 51 <= seg.num_notes <= 413
        assert set(np.diff(loc["beat"]).tolist()) <= {0, 1} and set(np.diff(loc["measure"]).tolist()) <= {0, 1}
        assert 3 <= max(len(m) for m in seg.measures) <= 4


def test_dataset_is_valid_and_split_as_documented():
    data = PercePianoData(synthetic.dataset_arrays(40, seed=1))  # validates on construction
    test = data.split_indices("composition", 0, "test")
    np.testing.assert_array_equal(test, np.arange(33, 40))  # 40 * 3 // 16 = 7 test segments at the end
    np.testing.assert_array_equal(data.split_indices("performer", 2, "valid"), np.arange(14, 21))


def test_committed_file_is_the_default_dataset():
    committed = np.load(COMMITTED, allow_pickle=False)
    fresh = synthetic.dataset_arrays()
    assert set(committed.files) == set(fresh)
    for key, value in fresh.items():
        assert committed[key].dtype == value.dtype, key
        np.testing.assert_array_equal(committed[key], value, err_msg=key)
