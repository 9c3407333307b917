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

from dataclasses import dataclass

import torch

from .constants import BOUNDARY_RULES, MAX_VOICE


def valid_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool mask of real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def packed_rows(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (P,) flat indices into the (B * max_len) note rows of the real notes, in the order of
    ``pack_sequence(..., enforce_sorted=False).data``: time step by time step, each step's rows by decreasing
    length (``torch.sort(lengths, descending=True)``, as ``pack_padded_sequence`` sorts them).

    The original embeds that packed data (``note_embedder.NoteEmbedder.forward``); a sum over the notes in this
    order (the embedder's weight gradient) rounds as the original's does. Reads ``lengths`` on the host.
    """
    _, order = torch.sort(lengths, descending=True)  # (B,) rows by decreasing length, ties as torch breaks them
    step, rank = torch.nonzero(valid_mask(lengths[order], max_len).T, as_tuple=True)  # (P,), (P,): time-major
    return order[rank] * max_len + step  # (P,)


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


def segment_ids(
    flags: torch.Tensor, valid: torch.Tensor, num_nodes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Segment id of every position from boundary flags.

    Returns ``seg`` (B, N) int64 with padded positions set to ``num_nodes`` (the dustbin id), ``counts``
    (B,) nodes per sample, and ``num_nodes`` = max over the batch (the padded node axis of the original's
    ``pad_sequence``). Pass ``num_nodes`` when it is known on the host (:class:`BatchShapes`): reading the
    maximum back from the device is a host synchronisation.
    """
    seg = torch.cumsum(flags.long(), dim=1)  # (B, N)
    counts = torch.where(valid, seg + 1, torch.zeros_like(seg)).amax(dim=1)  # (B,)
    if num_nodes is None:
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
    """Voice numbers: 0 to ``MAX_VOICE`` on real notes (0 = a performance note without a score note), 0 on
    padding."""
    bad = (((voice < 0) | (voice > MAX_VOICE)) & valid) | ((voice != 0) & ~valid)
    if bad.any():
        row, col = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(
            f"note_locations['voice'] row {row} position {col}: voice numbers must be 0 to {MAX_VOICE} "
            f"(constants.MAX_VOICE) on real notes and 0 on padding, got {int(voice[row, col])}"
        )


def voice_shapes(voice: torch.Tensor, valid: torch.Tensor) -> tuple[int, int, int]:
    """(number of voices, non-empty (sample, voice) sequences, notes in the longest) of a voice batch.

    Voice numbers are 1-based; 0 marks a note without a voice. These are the sizes ``run_voice_net`` of the
    original gets from its per-sample loop; here they size one batched voice LSTM call.
    """
    num_voices = int(torch.where(valid, voice, torch.zeros_like(voice)).max()) if voice.numel() else 0
    if num_voices < 1:
        return 0, 0, 0
    if num_voices > MAX_VOICE:  # checked even without input validation: the masks below are (B, N, num_voices)
        raise ValueError(f"note_locations['voice']: voice number {num_voices} is above the maximum {MAX_VOICE} "
                         "(constants.MAX_VOICE)")
    in_voice = (voice[:, :, None] == torch.arange(1, num_voices + 1, device=voice.device)) & valid[:, :, None]  # (B, N, V)
    counts = in_voice.sum(dim=1)  # (B, V)
    return num_voices, int((counts > 0).sum()), int(counts.max())


@dataclass(frozen=True)
class NodeSegments:
    """Beat nodes in note space and measure nodes in beat-node space, as the model builds them.

    The original makes beat nodes from notes and measure nodes from beat nodes (``model_utils.py``:
    ``make_higher_node``); the measure fields are ``None`` / 0 when no measure indices were given.
    """

    beat: torch.Tensor  # (B, N) beat node of every note; padding = ``beats`` (the dustbin)
    beats_per_sample: torch.Tensor  # (B,)
    beats: int  # beat nodes of the sample with the most
    measure_starts: torch.Tensor | None = None  # (B, N) bool: the notes that start a measure
    measure: torch.Tensor | None = None  # (B, beats) measure node of every beat node; padding = ``measures``
    measures_per_sample: torch.Tensor | None = None  # (B,)
    measures: int = 0  # measure nodes of the sample with the most


def node_segments(
    indices: dict, valid: torch.Tensor, rule: str = "diff_eq_1", num_beats: int | None = None, num_measures: int | None = None
) -> NodeSegments:
    """The one derivation of beat and measure nodes from (B, N) ``indices["beat"]`` (and ``["measure"]``).

    ``num_beats`` / ``num_measures`` are the node counts when known on the host (:class:`BatchShapes`);
    otherwise they are read back from the tensors.
    """
    beat, beats_per_sample, beats = segment_ids(boundary_flags(indices["beat"], valid, rule), valid, num_beats)
    if "measure" not in indices:
        return NodeSegments(beat, beats_per_sample, beats)
    starts = boundary_flags(indices["measure"], valid, rule)  # (B, N)
    beat_flags = higher_level_flags(beat, starts, beats)  # (B, Tb)
    measure, measures_per_sample, measures = segment_ids(beat_flags, valid_mask(beats_per_sample, beats), num_measures)
    return NodeSegments(beat, beats_per_sample, beats, starts, measure, measures_per_sample, measures)


@dataclass(frozen=True)
class BatchShapes:
    """The data-dependent sizes of one forward pass, as host integers.

    The forward needs them to allocate its node and voice axes. Read back from a GPU they would cost a
    host synchronisation each, so a training loop works them out with :func:`batch_shapes` on the CPU copy
    of the batch and passes them in; a wrong value is caught when the model validates its inputs.
    """

    notes: int  # longest segment: the note axis is cut to it
    voices: int = 0  # highest voice number (0: no voice level, or no note has a voice)
    voice_sequences: int = 0  # non-empty (sample, voice) sequences, run as one LSTM batch
    voice_length: int = 0  # notes in the longest of them
    beats: int = 0  # beat nodes of the sample with the most (0: no beat level)
    measures: int = 0  # measure nodes of the sample with the most (0: no measure level)


def batch_shapes(lengths: torch.Tensor, note_locations: dict, rule: str = "diff_eq_1") -> BatchShapes:
    """:class:`BatchShapes` of a batch, computed exactly as the forward computes them.

    ``note_locations`` holds the (B, N) index tensors of the levels wanted (``voice``, ``beat``,
    ``measure``; measures need beats, because measure nodes are made of beat nodes). Call it on CPU tensors.
    """
    lengths = torch.as_tensor(lengths).long()
    notes = int(lengths.max()) if lengths.numel() else 0
    valid = valid_mask(lengths, notes)  # (B, notes)
    loc = {k: torch.as_tensor(v)[:, :notes].long() for k, v in note_locations.items()}
    sizes = {"notes": notes}
    if "voice" in loc:
        sizes["voices"], sizes["voice_sequences"], sizes["voice_length"] = voice_shapes(loc["voice"], valid)
    if "beat" in loc:
        nodes = node_segments(loc, valid, rule)
        sizes["beats"], sizes["measures"] = nodes.beats, nodes.measures
    elif "measure" in loc:
        raise ValueError("batch_shapes: measure nodes are made of beat nodes; note_locations needs 'beat' too")
    return BatchShapes(**sizes)
