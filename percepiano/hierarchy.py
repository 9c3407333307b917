"""Pure, batched tensor functions for the note → beat → measure hierarchy.

Every function works on a whole padded batch at once (no Python loop over samples, voices or segments).
Conventions: ``indices`` are (B, N) int64 beat or measure numbers, zero-padded after ``lengths[b]`` real
notes, exactly as the original ``FeatureCollate`` pads them; ``valid`` is the (B, N) bool mask of real notes.

Node membership is expressed as *segment ids*: ``seg[b, t]`` is the node that position ``t`` belongs to
(0-based, consecutive), and padded positions get the id ``num_nodes`` ("the dustbin"), which every
function drops. One-hot membership matrices turn pooling and spanning into batched matmuls.

Boundary rules (a named deviation, see :mod:`percepiano.config`):
- ``"diff_eq_1"`` (original ``utils.find_boundaries_batch``): a node starts where the index steps by exactly 1.
  A jump of 2 or more does not start a node: the two groups are merged.
- ``"diff_gt_0"``: any increase starts a node.
"""
from __future__ import annotations

import torch

BOUNDARY_RULES = ("diff_eq_1", "diff_gt_0")


def valid_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool mask of real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def boundary_flags(indices: torch.Tensor, valid: torch.Tensor, rule: str = "diff_eq_1") -> torch.Tensor:
    """(B, N) bool: True at every real position t >= 1 that starts a new node.

    Mirrors the test inside ``utils.find_boundaries_batch`` (``idx[:, t+1] - idx[:, t] == 1``). Steps into
    the padding are never boundaries (both rules: the step is negative or the position is padding).
    """
    if rule not in BOUNDARY_RULES:
        raise ValueError(f"boundary rule: expected one of {BOUNDARY_RULES}, got {rule!r}")
    step = indices[:, 1:] - indices[:, :-1]  # (B, N-1): step into position t+1
    starts = step == 1 if rule == "diff_eq_1" else step > 0
    starts = starts & valid[:, 1:]
    first = torch.zeros(indices.shape[0], 1, dtype=torch.bool, device=indices.device)
    return torch.cat([first, starts], dim=1)  # (B, N): position 0 never flagged


def segment_ids(flags: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Segment id of every position from boundary flags.

    Returns ``seg`` (B, N) int64 with padded positions set to ``num_nodes`` (the dustbin id), ``counts``
    (B,) nodes per sample, and ``num_nodes`` = max over the batch (the padded node axis of the original's
    ``pad_sequence``).
    """
    seg = torch.cumsum(flags.long(), dim=1)  # (B, N)
    counts = torch.where(valid, seg + 1, torch.zeros_like(seg)).amax(dim=1)  # (B,)
    num_nodes = int(counts.max()) if counts.numel() else 0
    seg = torch.where(valid, seg, torch.full_like(seg, num_nodes))
    return seg, counts, num_nodes


def membership(seg: torch.Tensor, num_nodes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, N) segment ids -> (B, N, num_nodes) one-hot matrix; dustbin positions are all-zero rows."""
    one_hot = torch.nn.functional.one_hot(seg, num_nodes + 1)  # (B, N, num_nodes + 1)
    return one_hot[..., :num_nodes].to(dtype)


def segment_softmax(scores: torch.Tensor, seg: torch.Tensor, num_nodes: int, temperature: float = 1.0) -> torch.Tensor:
    """Softmax of ``scores`` (B, N, H) over the positions of each segment, independently per head.

    Mirrors ``utils.get_softmax_by_boundary`` applied per sample and the ``pad_sequence`` in
    ``model_utils.make_higher_node``: padded positions get weight 0. ``temperature`` = 1 is the original
    (no temperature); any other value is a named deviation.
    """
    if temperature != 1.0:
        scores = scores / temperature
    batch, _, heads = scores.shape
    index = seg[:, :, None].expand(-1, -1, heads)  # (B, N, H)
    seg_max = scores.new_full((batch, num_nodes + 1, heads), float("-inf"))
    seg_max = seg_max.scatter_reduce(1, index, scores, reduce="amax", include_self=True)  # (B, T+1, H)
    shifted = scores - seg_max.gather(1, index)  # (B, N, H), <= 0 inside each segment
    member = membership(seg, num_nodes, scores.dtype)  # (B, N, T)
    exp = torch.exp(shifted) * (seg < num_nodes)[:, :, None]  # dustbin positions contribute 0
    seg_sum = torch.bmm(member.transpose(1, 2), exp)  # (B, T, H)
    denom = torch.bmm(member, seg_sum)  # (B, N, H): each position's segment sum; 0 in the dustbin
    return torch.where(denom > 0, exp / denom.clamp_min(torch.finfo(exp.dtype).tiny), torch.zeros_like(exp))


def pool_segments(x: torch.Tensor, weights: torch.Tensor, seg: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Weighted sum of the positions of each segment: (B, N, D) -> (B, num_nodes, D).

    Head h of the weights (B, N, H) multiplies only the contiguous feature chunk ``[h*d, (h+1)*d)`` of
    ``x`` (d = D / H), as in ``model_utils.make_higher_node``. Nodes beyond a sample's count are 0.
    """
    batch, length, width = x.shape
    heads = weights.shape[-1]
    weighted = x.view(batch, length, heads, width // heads) * weights[..., None]  # (B, N, H, d)
    weighted = weighted.reshape(batch, length, width)  # (B, N, D)
    member = membership(seg, num_nodes, x.dtype)  # (B, N, T)
    return torch.bmm(member.transpose(1, 2), weighted)  # (B, T, D)


def span_to_notes(nodes: torch.Tensor, seg: torch.Tensor, num_nodes: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Copy every node's vector back to its positions: (B, T, C) -> (B, N, C); dustbin positions get 0.

    Mirrors ``model_utils.span_beat_to_note_num``. ``keep`` (B, N) bool zeroes further positions (the
    original keeps only the first ``cal_length_from_padded_beat_numbers`` notes, see
    :func:`lengths_from_padded_indices`).
    """
    member = membership(seg, num_nodes, nodes.dtype)  # (B, N, T)
    if keep is not None:
        member = member * keep[:, :, None].to(nodes.dtype)
    return torch.bmm(member, nodes[:, :num_nodes])  # (B, N, C)


def lengths_from_padded_indices(indices: torch.Tensor) -> torch.Tensor:
    """Mirror of ``utils.cal_length_from_padded_beat_numbers``, quirk included.

    length = 1 + position of the first minimum of the index steps; a result of 1 becomes N. Right for
    padded rows (the minimum is the drop into the padding), wrong for an unpadded row whose first two notes
    are in different beats: [0, 1, 1, 2, 2, 3] -> 2. Only the ``total_note_cat`` level depends on it.
    """
    length = indices.shape[1]
    if length < 2:
        return torch.full(indices.shape[:1], length, dtype=torch.long, device=indices.device)
    first_min = torch.min(torch.diff(indices, dim=1), dim=1).indices + 1  # (B,)
    return torch.where(first_min == 1, torch.full_like(first_min, length), first_min)


def higher_level_flags(
    lower_seg: torch.Tensor, higher_flags: torch.Tensor, num_lower: int
) -> torch.Tensor:
    """Boundaries of the higher level in the space of lower-level nodes (beat -> measure).

    ``higher_flags`` (B, N) marks the notes that start a measure; the beat node holding such a note starts
    a measure node. For contiguous beats this equals the original's ``beat[first note of measure] -
    beat[0]`` (``model_utils.make_higher_node`` with ``lower_is_note=False``). Returns (B, num_lower) bool.
    """
    batch = lower_seg.shape[0]
    out = torch.zeros(batch, num_lower + 1, dtype=torch.long, device=lower_seg.device)
    out = out.scatter_add(1, lower_seg, higher_flags.long())  # (B, Tb+1): measure starts per beat node
    return out[:, :num_lower] > 0


def boundaries_as_lists(indices: torch.Tensor, lengths: torch.Tensor, rule: str = "diff_eq_1") -> list[list[int]]:
    """The original's boundary lists ``[0, starts..., end]`` per sample (for tests, reports and parity).

    Mirrors ``utils.find_boundaries_batch``; ``end`` is the sample's length (= the original's "last non-zero
    index + 1" for every row that :func:`check_indices` accepts). Not used in the forward path.
    """
    valid = valid_mask(lengths, indices.shape[1])
    flags = boundary_flags(indices, valid, rule)
    return [
        [0] + torch.nonzero(flags[b]).flatten().tolist() + [int(lengths[b])] for b in range(indices.shape[0])
    ]


def check_indices(name: str, indices: torch.Tensor, valid: torch.Tensor, rule: str, allow_jumps: bool) -> None:
    """Raise ``ValueError`` (naming the row and the reason) for index rows the original mishandles.

    - padding must be 0 (the original collate pads with 0 and finds the end of a row by its last non-zero);
    - indices must not decrease within a segment;
    - under ``diff_eq_1`` a row whose real indices are all 0 makes the original crash (``torch.max`` of an
      empty tensor in ``find_boundaries``), and, when ``allow_jumps`` is False, a jump > 1 would make the
      original index beat nodes out of range (it maps measures to beats by index arithmetic).
    """
    if (indices[~valid] != 0).any():
        row = int(torch.nonzero((indices != 0) & ~valid)[0, 0])
        raise ValueError(f"note_locations[{name!r}] row {row}: padding after the segment's length must be 0")
    if (indices[valid] < 0).any():
        row = int(torch.nonzero((indices < 0) & valid)[0, 0])
        raise ValueError(f"note_locations[{name!r}] row {row}: indices must be >= 0")
    step = indices[:, 1:] - indices[:, :-1]  # (B, N-1)
    inside = valid[:, 1:]  # step into a real position
    bad = (step < 0) & inside
    if bad.any():
        row, col = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(
            f"note_locations[{name!r}] row {row}: indices decrease at position {col + 1} "
            f"({int(indices[row, col])} -> {int(indices[row, col + 1])}); they must be non-decreasing"
        )
    if rule == "diff_eq_1":
        all_zero = ~((indices != 0) & valid).any(dim=1)
        if all_zero.any():
            row = int(torch.nonzero(all_zero)[0, 0])
            raise ValueError(
                f"note_locations[{name!r}] row {row}: all indices are 0 (a single {name}); the original "
                f"find_boundaries crashes on such a row (boundary_rule='diff_eq_1')"
            )
        if not allow_jumps:
            jump = (step > 1) & inside
            if jump.any():
                row, col = (int(v) for v in torch.nonzero(jump)[0])
                raise ValueError(
                    f"note_locations[{name!r}] row {row}: index jumps by {int(step[row, col])} at position "
                    f"{col + 1}; under boundary_rule='diff_eq_1' the original merges the groups and then "
                    f"indexes nodes out of range. Make indices contiguous or use boundary_rule='diff_gt_0'"
                )


def check_voices(voice: torch.Tensor, valid: torch.Tensor) -> None:
    """Voice numbers: >= 0 on real notes (0 = a performance note without a score note), 0 on padding."""
    bad = ((voice < 0) & valid) | ((voice != 0) & ~valid)
    if bad.any():
        row, col = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(
            f"note_locations['voice'] row {row} position {col}: voice numbers must be >= 0 on real notes "
            f"and 0 on padding, got {int(voice[row, col])}"
        )
