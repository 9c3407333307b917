"""Hierarchy utilities: literal cases from docs/original.md#invariants and hypothesis properties."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_sequence

from percepiano import hierarchy as hier
from percepiano.constants import MAX_VOICE

# float64 sums of at most a few dozen terms: a handful of ulps.
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _pad(rows, fill=0):
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [fill] * (width - len(r)) for r in rows]), torch.tensor([len(r) for r in rows])


# ---------------------------------------------------------------- literal cases (docs/original.md, invariants 11, 13, 18)
@pytest.mark.parametrize(
    "row, expected",
    [
        ([0, 0, 1, 1, 3, 3, 4, 5, 5], [0, 2, 6, 7, 9]),  # a jump of 2 merges two beats
        ([0, 1, 1, 2, 2], [0, 1, 3, 5]),
        ([2, 2, 3, 3, 4], [0, 2, 4, 5]),  # indices need not start at 0
    ],
)
def test_boundaries_diff_eq_1(row, expected):
    indices, lengths = _pad([row, [0, 1, 2]])
    indices = torch.cat([indices, torch.zeros(2, 2, dtype=torch.long)], dim=1)  # two padding columns
    assert hier.boundaries_as_lists(indices, lengths)[0] == expected


def test_boundaries_diff_gt_0_splits_at_jumps():
    indices, lengths = _pad([[0, 0, 1, 1, 3, 3, 4, 5, 5]])
    assert hier.boundaries_as_lists(indices, lengths, "diff_gt_0")[0] == [0, 2, 4, 6, 7, 9]


def _beats_for_measures(measure_starts, beat_starts, length):
    """Note-level beat/measure rows: measure k spans notes [m_k, m_k+1) and beats [b_k, b_k+1)."""
    beat, measure = [], []
    bounds = list(measure_starts) + [length]
    beat_bounds = list(beat_starts)
    for k in range(len(measure_starts)):
        n = bounds[k + 1] - bounds[k]
        k_beats = beat_bounds[k + 1] - beat_bounds[k]
        for j in range(n):
            beat.append(beat_bounds[k] + (j * k_beats) // n)
            measure.append(k)
    return torch.tensor([beat]), torch.tensor([measure])


def test_measure_boundaries_in_beat_space():
    # docs/original.md, invariant 13: measure note boundaries [0,11,21,29,34,44,58,60] -> beat nodes
    # [0,4,7,11,14,18,21] + [23]
    beat, measure = _beats_for_measures([0, 11, 21, 29, 34, 44, 58], [0, 4, 7, 11, 14, 18, 21, 23], 60)
    valid = torch.ones_like(beat, dtype=torch.bool)
    beat_seg, beat_counts, num_beats = hier.segment_ids(hier.boundary_flags(beat, valid), valid)
    assert int(beat_counts[0]) == 23 == num_beats
    starts = hier.higher_level_flags(beat_seg, hier.boundary_flags(measure, valid), num_beats)
    assert [0] + torch.nonzero(starts[0]).flatten().tolist() + [num_beats] == [0, 4, 7, 11, 14, 18, 21, 23]


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([[0, 1, 1, 2, 2, 3]], [2]),  # the original's quirk: unpadded row whose first two notes differ
        ([[0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1, 2, 0, 0, 0]], [8, 5]),
        ([[0, 1, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1, 2, 0, 0, 0]], [2, 5]),
    ],
)
def test_lengths_from_padded_indices_quirk(rows, expected):
    assert hier.lengths_from_padded_indices(torch.tensor(rows)).tolist() == expected


# ---------------------------------------------------------------- validation errors
@pytest.mark.parametrize(
    "row, length, rule, allow_jumps, message",
    [
        ([0, 0, 0, 0], 4, "diff_eq_1", True, "all indices are 0"),
        ([0, 1, 0, 1], 4, "diff_eq_1", True, "decrease"),
        ([0, 1, 3, 3], 4, "diff_eq_1", False, "jumps by 2"),
        ([0, 1, 1, 2], 3, "diff_eq_1", True, "padding"),
        ([0, -1, 1, 2], 4, "diff_gt_0", True, ">= 0"),
    ],
)
def test_check_indices_names_row_and_reason(row, length, rule, allow_jumps, message):
    indices = torch.tensor([[0, 1, 1, 2], row])
    valid = hier.valid_mask(torch.tensor([4, length]), 4)
    with pytest.raises(ValueError, match=rf"row 1\b.*{message}"):
        hier.check_indices("beat", indices, valid, rule, allow_jumps)


def test_check_indices_accepts_what_each_rule_handles():
    valid = hier.valid_mask(torch.tensor([4]), 4)
    hier.check_indices("beat", torch.tensor([[0, 0, 0, 0]]), valid, "diff_gt_0", allow_jumps=False)  # one beat
    hier.check_indices("beat", torch.tensor([[0, 1, 3, 3]]), valid, "diff_gt_0", allow_jumps=False)  # jump is a boundary
    hier.check_indices("beat", torch.tensor([[0, 1, 3, 3]]), valid, "diff_eq_1", allow_jumps=True)


def test_voice_numbers_above_the_maximum_are_refused_before_anything_is_sized_by_them():
    valid = hier.valid_mask(torch.tensor([4, 3]), 4)
    ok = torch.tensor([[1, 2, 0, MAX_VOICE], [3, 1, 1, 0]])
    hier.check_voices(ok, valid)
    assert hier.voice_shapes(ok, valid) == (MAX_VOICE, 5, 2)  # sequences: row 0 voices 1, 2, 64; row 1 voices 1, 3
    huge = ok.clone()
    huge[1, 2] = 2**31 - 1  # the (B, N, voices) masks of voice_shapes would take 17 GB
    with pytest.raises(ValueError, match=rf"row 1 position 2: voice numbers must be 0 to {MAX_VOICE}.*got 2147483647"):
        hier.check_voices(huge, valid)
    with pytest.raises(ValueError, match=rf"voice number 2147483647 is above the maximum {MAX_VOICE}"):
        hier.voice_shapes(huge, valid)  # also without input validation (a training loop switches it off)


# ---------------------------------------------------------------- a loop reference (what the original does, sample by sample)
def naive_nodes(x, scores, row_indices, length, rule):
    """Per-sample loops over boundaries, as utils.get_softmax_by_boundary + make_higher_node do."""
    bounds = [0]
    for t in range(1, length):
        step = row_indices[t] - row_indices[t - 1]
        if (step == 1) if rule == "diff_eq_1" else (step > 0):
            bounds.append(t)
    bounds.append(length)
    heads = scores.shape[-1]
    d = x.shape[-1] // heads
    nodes, weights = [], torch.zeros(x.shape[0], heads, dtype=x.dtype)
    for s, e in zip(bounds[:-1], bounds[1:]):
        w = torch.softmax(scores[s:e], dim=0)  # (len, H)
        weights[s:e] = w
        nodes.append((x[s:e].view(e - s, heads, d) * w[..., None]).sum(0).reshape(-1))
    return torch.stack(nodes), weights


@st.composite
def index_batches(draw, allow_jumps=False):
    batch = draw(st.integers(1, 4))
    rows = []
    for _ in range(batch):
        length = draw(st.integers(1, 12))
        start = draw(st.integers(0, 3))
        steps = draw(st.lists(st.sampled_from([0, 1] + ([2, 3] if allow_jumps else [])), min_size=length - 1, max_size=length - 1))
        row = [start]
        for s in steps:
            row.append(row[-1] + s)
        rows.append(row)
    extra_padding = draw(st.integers(0, 3))
    indices, lengths = _pad(rows)
    indices = torch.cat([indices, torch.zeros(batch, extra_padding, dtype=torch.long)], dim=1)
    heads = draw(st.sampled_from([1, 2, 3]))
    seed = draw(st.integers(0, 2**16))
    return indices, lengths, heads, seed


def _features(indices, lengths, heads, seed, width_per_head=2):
    gen = torch.Generator().manual_seed(seed)
    batch, length = indices.shape
    x = torch.randn(batch, length, heads * width_per_head, generator=gen, dtype=torch.float64)
    scores = torch.randn(batch, length, heads, generator=gen, dtype=torch.float64) * 3
    return x, scores


@settings(max_examples=60, deadline=None)
@given(index_batches(allow_jumps=True), st.sampled_from(hier.BOUNDARY_RULES))
def test_batched_pooling_equals_per_sample_loops(case, rule):
    indices, lengths, heads, seed = case
    x, scores = _features(indices, lengths, heads, seed)
    valid = hier.valid_mask(lengths, indices.shape[1])
    seg, counts, num_nodes = hier.segment_ids(hier.boundary_flags(indices, valid, rule), valid)
    weights = hier.segment_softmax(scores, seg, num_nodes)
    nodes = hier.pool_segments(x, weights, seg, num_nodes)
    for b in range(indices.shape[0]):
        n = int(lengths[b])
        ref_nodes, ref_weights = naive_nodes(x[b, :n], scores[b, :n], indices[b, :n].tolist(), n, rule)
        assert int(counts[b]) == ref_nodes.shape[0]
        torch.testing.assert_close(nodes[b, : ref_nodes.shape[0]], ref_nodes, **TIGHT)
        torch.testing.assert_close(weights[b, :n], ref_weights, **TIGHT)
        assert bool((nodes[b, ref_nodes.shape[0]:] == 0).all()) and bool((weights[b, n:] == 0).all())


@settings(max_examples=60, deadline=None)
@given(index_batches())
def test_softmax_sums_to_one_per_segment_and_head(case):
    indices, lengths, heads, seed = case
    _, scores = _features(indices, lengths, heads, seed)
    valid = hier.valid_mask(lengths, indices.shape[1])
    seg, counts, num_nodes = hier.segment_ids(hier.boundary_flags(indices, valid), valid)
    weights = hier.segment_softmax(scores, seg, num_nodes)
    sums = torch.bmm(hier.membership(seg, num_nodes, weights.dtype).transpose(1, 2), weights)  # (B, T, H)
    real = hier.valid_mask(counts, num_nodes)
    torch.testing.assert_close(sums[real], torch.ones_like(sums[real]), **TIGHT)
    assert bool((sums[~real] == 0).all())


@settings(max_examples=60, deadline=None)
@given(index_batches())
def test_node_count_and_one_note_nodes(case):
    indices, lengths, heads, seed = case
    x, scores = _features(indices, lengths, heads, seed)
    valid = hier.valid_mask(lengths, indices.shape[1])
    seg, counts, num_nodes = hier.segment_ids(hier.boundary_flags(indices, valid), valid)
    nodes = hier.pool_segments(x, hier.segment_softmax(scores, seg, num_nodes), seg, num_nodes)
    for b in range(indices.shape[0]):
        real = indices[b, : int(lengths[b])]
        assert int(counts[b]) == len(torch.unique(real)) == int(real[-1] - real[0]) + 1
        for node in range(int(counts[b])):
            members = torch.nonzero(seg[b] == node).flatten()
            if len(members) == 1:  # a one-note beat is exactly that note's vector
                assert torch.equal(nodes[b, node], x[b, members[0]])


@settings(max_examples=60, deadline=None)
@given(index_batches(allow_jumps=True))
def test_rules_agree_on_contiguous_and_differ_exactly_at_jumps(case):
    indices, lengths, _, _ = case
    valid = hier.valid_mask(lengths, indices.shape[1])
    eq1 = hier.boundary_flags(indices, valid, "diff_eq_1")
    gt0 = hier.boundary_flags(indices, valid, "diff_gt_0")
    step = torch.cat([torch.zeros_like(indices[:, :1]), indices[:, 1:] - indices[:, :-1]], dim=1)
    jumps = (step > 1) & valid
    assert torch.equal(eq1 ^ gt0, jumps)


@settings(max_examples=40, deadline=None)
@given(index_batches(), st.integers(1, 4))
def test_padding_never_changes_real_outputs(case, more):
    indices, lengths, heads, seed = case
    x, scores = _features(indices, lengths, heads, seed)
    valid = hier.valid_mask(lengths, indices.shape[1])
    seg, _, num_nodes = hier.segment_ids(hier.boundary_flags(indices, valid), valid)
    nodes = hier.pool_segments(x, hier.segment_softmax(scores, seg, num_nodes), seg, num_nodes)
    # extra padding columns holding garbage features and scores
    batch = indices.shape[0]
    indices2 = torch.cat([indices, torch.zeros(batch, more, dtype=torch.long)], 1)
    x2 = torch.cat([x, torch.full((batch, more, x.shape[-1]), 7.0, dtype=x.dtype)], 1)
    scores2 = torch.cat([scores, torch.full((batch, more, heads), 50.0, dtype=x.dtype)], 1)
    x2[~torch.cat([valid, torch.zeros(batch, more, dtype=torch.bool)], 1)] = 3.0
    scores2[:, : indices.shape[1]][~valid] = 40.0
    valid2 = hier.valid_mask(lengths, indices2.shape[1])
    seg2, _, num2 = hier.segment_ids(hier.boundary_flags(indices2, valid2), valid2)
    nodes2 = hier.pool_segments(x2, hier.segment_softmax(scores2, seg2, num2), seg2, num2)
    torch.testing.assert_close(nodes2, nodes, **TIGHT)


def test_span_to_notes_inverts_membership():
    indices, lengths = _pad([[3, 3, 4, 5, 5], [0, 1, 1]])
    valid = hier.valid_mask(lengths, 5)
    seg, _, num = hier.segment_ids(hier.boundary_flags(indices, valid), valid)
    nodes = torch.arange(2 * num * 2, dtype=torch.float64).view(2, num, 2)
    spanned = hier.span_to_notes(nodes, seg, num)
    expected_node = [[0, 0, 1, 2, 2], [0, 1, 1, None, None]]
    for b, row in enumerate(expected_node):
        for t, node in enumerate(row):
            assert torch.equal(spanned[b, t], nodes[b, node] if node is not None else torch.zeros(2, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=9), st.integers(0, 3))
def test_packed_rows_are_pack_sequence_order(lengths, extra):
    """The rows the CPU embedder reads, in the order the original's ``pack_sequence(enforce_sorted=False)``
    lays them out (ties in length included: both sort with ``torch.sort``)."""
    lengths = torch.tensor(lengths)
    width = int(lengths.max()) + extra  # padding beyond the longest row too
    x = torch.arange(len(lengths) * width * 2, dtype=torch.float64).reshape(len(lengths), width, 2)
    packed = pack_sequence([x[b, : int(n)] for b, n in enumerate(lengths)], enforce_sorted=False)
    rows = hier.packed_rows(lengths, width)
    assert torch.equal(x.reshape(-1, 2)[rows], packed.data)
