"""PercePianoModel: the original ``VirtuosoNetMultiLevel`` with its ``HanEncoder``, batched.

Reads top-down as the data flows (reference_spec §3):

    x (B, N, F) --embed--> (B, N, H) --note BiLSTM--> note (B, N, 2H)
                          \\-voice BiLSTM per voice--> voice (B, N, 2H)
    [note, voice] --beat attention, per beat--> beat nodes (B, Tb, 4H) --beat BiLSTM--> beat (B, Tb, 2H)
    beat --measure attention, per measure--> measure nodes (B, Tm, 2H) --measure BiLSTM--> measure (B, Tm, 2H)
    level input --(contractor)--> ContextAttention pooling --> (B, 2H) --head--> logits (B, num_labels)

Only the modules the configured level uses are built, so every parameter influences the output (the
original also builds, but never trains, a ``performance_encoder`` and the unused encoder branches; the
weight converter accepts and ignores them). The level decides what is pooled:

| level | pooled | contractor |
| note | note (B, N, 2H) | Linear(2H, 2H) |
| voice | [note, voice] (B, N, 4H) | Linear(4H, 2H) |
| beat | beat (B, Tb, 2H) | none |
| measure | measure (B, Tm, 2H) | none (the published HAN) |
| total_note_cat | [note, voice, beat→notes, measure→notes] (B, N, 8H) | Linear(8H, 2H) |
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import hierarchy as hier
from .config import ModelConfig
from .layers import ContextAttention

LOCATION_KEYS = ("beat", "measure", "section", "voice")
# the note locations each level reads
LEVEL_LOCATIONS = {"note": (), "voice": ("voice",), "beat": ("voice", "beat"), "measure": ("voice", "beat", "measure")}
LEVEL_LOCATIONS["total_note_cat"] = LEVEL_LOCATIONS["measure"]
CONTRACTED_LEVELS = ("note", "voice", "total_note_cat")


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, num_labels), before the sigmoid
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)


def _bilstm(input_size: int, hidden: int, layers: int, dropout: float) -> nn.LSTM:
    return nn.LSTM(input_size, hidden, layers, batch_first=True, bidirectional=True, dropout=dropout if layers > 1 else 0.0)


# On a CPU the recurrence costs about (rows + STEP_COST_ROWS) per time step: splitting the rows into a few
# groups of similar length (each run to its own longest) saves the work spent on padding.
STEP_COST_ROWS = 4
MAX_LENGTH_GROUPS = 4
# CPU-only shortcuts (length groups, scoring real rows only) read tensor values on the host, which is free on
# a CPU and a sync on a GPU. Off, a CPU runs the device path: tests compare the two.
CPU_SHORTCUTS = True


def _cpu_shortcuts(t: torch.Tensor) -> bool:
    return CPU_SHORTCUTS and t.device.type == "cpu"


def length_groups(lengths: list[int], max_groups: int = MAX_LENGTH_GROUPS, step_cost: int = STEP_COST_ROWS) -> list[list[int]]:
    """Partition row indices, sorted by decreasing length, into at most ``max_groups`` contiguous groups that
    minimise sum over groups of (rows + step_cost) * longest (dynamic programming over <= a few dozen rows)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sorted_len = [lengths[i] for i in order]
    n = len(order)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]  # best[k][i]: first i rows in k groups
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for k in range(1, max_groups + 1):
        for i in range(1, n + 1):
            for j in range(k - 1, i):  # group = rows j..i-1, its longest is sorted_len[j]
                cost = best[k - 1][j] + (i - j + step_cost) * sorted_len[j]
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    k = min(range(1, max_groups + 1), key=lambda g: best[g][n])
    groups, i = [], n
    while k > 0:
        j = cut[k][i]
        groups.append(order[j:i])
        i, k = j, k - 1
    return groups[::-1]


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Run a bidirectional ``lstm`` on the first ``lengths[b]`` rows of each sample; padded rows are 0.

    On a CPU the rows run in a few groups of similar length (:func:`length_groups`); each group's result is
    the same as running the whole batch (rows are independent sequences).
    """
    if not _cpu_shortcuts(x) or x.shape[0] < 2:
        return _run_lstm_unpacked(lstm, x, lengths)
    groups = length_groups(lengths.tolist())
    if len(groups) == 1:
        return _run_lstm_unpacked(lstm, x, lengths)
    out = x.new_zeros(x.shape[0], x.shape[1], 2 * lstm.hidden_size)  # (B, N, 2H)
    for rows in groups:
        index = torch.tensor(rows, device=x.device)
        longest = int(lengths[index].max())
        out[index, :longest] = _run_lstm_unpacked(lstm, x[index, :longest], lengths[index])  # (b, L, 2H)
    return out


def _run_lstm_unpacked(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Run a bidirectional ``lstm`` on the first ``lengths[b]`` rows of each sample; padded rows are 0.

    Same result as packing (the original's ``pack_padded_sequence`` → LSTM → ``pad_packed_sequence``),
    computed without packing, which on CPU runs the recurrence about twice as fast: the forward direction
    reads the padded batch as is (padding comes after every real row, so it cannot reach them), and the
    backward direction reads each sample reversed within its own length. Layers run one at a time with the
    LSTM's own weights; dropout between layers as in ``nn.LSTM``. Samples of length 0 stay 0.
    """
    batch, length, _ = x.shape
    valid = (torch.arange(length, device=x.device)[None, :] < lengths[:, None])[:, :, None]  # (B, N, 1)
    # reversal within each length; an involution, so the same index maps outputs back
    reverse = (lengths[:, None] - 1 - torch.arange(length, device=x.device)[None, :])  # (B, N)
    reverse = torch.where(reverse >= 0, reverse, torch.arange(length, device=x.device)[None, :].expand(batch, -1))
    reverse = reverse[:, :, None]  # (B, N, 1)
    hidden = lstm.hidden_size
    out = x
    for layer in range(lstm.num_layers):
        if layer > 0 and lstm.dropout > 0 and lstm.training:
            out = torch.nn.functional.dropout(out, lstm.dropout, training=True)
        directions = []
        for suffix in ("", "_reverse"):
            weights = [getattr(lstm, f"{kind}_l{layer}{suffix}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            inp = out if not suffix else out.gather(1, reverse.expand(-1, -1, out.shape[-1]))  # (B, N, C)
            state = inp.new_zeros(1, batch, hidden)
            res = torch._VF.lstm(inp, (state, state), weights, True, 1, 0.0, lstm.training, False, True)[0]  # (B, N, H)
            directions.append(res if not suffix else res.gather(1, reverse.expand(-1, -1, hidden)))
        out = torch.cat(directions, dim=-1) * valid  # (B, N, 2H), zero at padding
    return out


def run_lstm_packed(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The original's way (pack, run, unpack); kept as the reference that :func:`run_lstm` is tested against."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    hidden, _ = lstm(packed)
    hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=x.shape[1])  # (B, N, 2H)
    return hidden


def run_voice_lstm(
    lstm: nn.LSTM,
    x: torch.Tensor,
    voice: torch.Tensor,
    valid: torch.Tensor,
    shape: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Mirror of ``HanEncoder.run_voice_net``: each (sample, voice) is its own sequence, in note order.

    All non-empty (sample, voice) sequences run as one LSTM batch. Voice-0 notes (performance notes
    inserted without a score note) and padding get an all-zero output. ``shape`` is
    :func:`hierarchy.voice_shapes` when the caller knows it on the host; otherwise it is read from the
    device. Notes move in and out by index lookups (no ``nonzero``), so with ``shape`` given nothing here
    waits for the device. Returns (B, N, 2 * hidden).
    """
    batch, length, width = x.shape
    num_voices, num_sequences, longest = hier.voice_shapes(voice, valid) if shape is None else shape
    if num_voices < 1:
        return x.new_zeros(batch, length, 2 * lstm.hidden_size)  # (B, N, 2Hv)
    in_voice = (voice[:, :, None] == torch.arange(1, num_voices + 1, device=voice.device)) & valid[:, :, None]  # (B, N, V)
    counts = in_voice.sum(dim=1).flatten()  # (B*V,) notes per (sample, voice)
    sequence_of = torch.cumsum(counts > 0, dim=0) - 1  # (B*V,) row among the non-empty sequences
    voice_index = (voice - 1).clamp(0, num_voices - 1)  # (B, N) 0-based; clamped rows are masked below
    seq = sequence_of.view(batch, num_voices).gather(1, voice_index)  # (B, N) the note's sequence
    pos = (torch.cumsum(in_voice.long(), dim=1) - 1).gather(2, voice_index[:, :, None])[:, :, 0]  # (B, N) rank in it
    has_voice = valid & (voice > 0)  # (B, N)
    dustbin = num_sequences * longest
    slot = torch.where(has_voice, seq * longest + pos, torch.full_like(seq, dustbin)).flatten()  # (B*N,)
    # source[s]: 1 + the flat note index that fills sequence slot s, 0 for padding (slots are unique per
    # note; the accumulated dustbin entry is dropped)
    notes = torch.arange(1, batch * length + 1, device=x.device)  # (B*N,)
    source = torch.zeros(dustbin + 1, dtype=torch.long, device=x.device).index_put_((slot,), notes, accumulate=True)
    padded_x = torch.cat([x.new_zeros(1, width), x.reshape(batch * length, width)])  # (1 + B*N, H)
    sequences = padded_x[source[:dustbin]].view(num_sequences, longest, width)  # (K, L, H)
    target = torch.where(counts > 0, sequence_of, torch.full_like(sequence_of, num_sequences))  # (B*V,)
    seq_lengths = torch.zeros(num_sequences + 1, dtype=torch.long, device=x.device)
    seq_lengths = seq_lengths.index_put_((target,), counts, accumulate=True)[:num_sequences]  # (K,)
    hidden = run_lstm(lstm, sequences, seq_lengths)  # (K, L, 2Hv)
    hidden = torch.cat([hidden.reshape(dustbin, -1), hidden.new_zeros(1, hidden.shape[-1])])  # (K*L + 1, 2Hv)
    return hidden[slot].view(batch, length, -1)  # (B, N, 2Hv)


class PercePianoModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        # Input validation raises on note locations the original mishandles; data that percepiano.data
        # already validated may switch it off to avoid host syncs in the training loop.
        self.validate_inputs = True
        h_note, h_voice, h_beat, h_meas = cfg.note_size, cfg.voice_size, cfg.beat_size, cfg.measure_size
        level = cfg.level
        uses_voice = level in ("voice", "beat", "measure", "total_note_cat")
        uses_beat = level in ("beat", "measure", "total_note_cat")
        uses_measure = level in ("measure", "total_note_cat")

        self.embed = nn.Linear(cfg.input_size, h_note)
        self.note_lstm = _bilstm(h_note, h_note, cfg.note_layers, cfg.dropout)
        if uses_voice:
            self.voice_lstm = _bilstm(h_note, h_voice, cfg.voice_layers, cfg.dropout)
        if uses_beat:
            self.beat_attention = ContextAttention(2 * (h_note + h_voice), cfg.num_heads, cfg.attention_temperature)
            self.beat_lstm = _bilstm(2 * (h_note + h_voice), h_beat, cfg.beat_layers, cfg.dropout)
        if uses_measure:
            self.measure_attention = ContextAttention(2 * h_beat, cfg.num_heads, cfg.attention_temperature)
            self.measure_lstm = _bilstm(2 * h_beat, h_meas, cfg.measure_layers, 0.0)  # original: no dropout here

        pooled_width = 2 * cfg.encoder_size
        contractor_in = {
            "note": 2 * h_note,
            "voice": 2 * (h_note + h_voice),
            "total_note_cat": 2 * (h_note + h_voice + h_beat + h_meas),
        }
        if level in CONTRACTED_LEVELS:
            self.pool_contractor = nn.Linear(contractor_in[level], pooled_width)
        elif level == "beat":
            pooled_width = 2 * h_beat
        self.pool_attention = ContextAttention(pooled_width, cfg.num_heads, cfg.attention_temperature)
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(pooled_width, 2 * cfg.encoder_size),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * cfg.encoder_size, cfg.num_labels),
        )
        from .initialization import apply_init  # local import: initialization.py names modules of this file

        apply_init(self, cfg.init)

    # ------------------------------------------------------------------ forward
    def forward(self, x, lengths, note_locations, return_intermediates: bool = False, shapes: hier.BatchShapes | None = None):
        """Logits (B, num_labels) of a zero-padded batch, or a :class:`ModelOutput` with every intermediate.

        ``shapes`` (:func:`hierarchy.batch_shapes` of the CPU batch) gives the data-dependent sizes so that
        the pass never reads from the device; without it they are read back (a sync on a GPU).
        """
        cfg = self.config
        x, lengths, locations, full_length, shapes = self._prepare(x, lengths, note_locations, shapes)
        valid = hier.valid_mask(lengths, x.shape[1])  # (B, N)
        inter: dict[str, torch.Tensor] = {}

        embedded = self.embed(x) * valid[:, :, None].to(x.dtype)  # (B, N, H): the original embeds packed data only
        note = run_lstm(self.note_lstm, embedded, lengths)  # (B, N, 2H)
        inter.update(embedded=embedded, note=note)

        if cfg.level == "note":
            pool_input = self.pool_contractor(note)  # (B, N, 2H); padded rows = bias, unmasked as in the original
        else:
            voice_shape = (shapes.voices, shapes.voice_sequences, shapes.voice_length)
            voice = run_voice_lstm(self.voice_lstm, embedded, locations["voice"], valid, voice_shape)  # (B, N, 2H)
            note_voice = torch.cat([note, voice], dim=-1)  # (B, N, 4H), note first as in the original
            inter["voice"] = voice
            if cfg.level == "voice":
                pool_input = self.pool_contractor(note_voice)  # (B, N, 2H)
            else:
                beat, beat_seg, beats_per_sample = self._beat_level(note_voice, locations, valid, shapes.beats, inter)
                if cfg.level == "beat":
                    pool_input = beat
                else:
                    measure = self._measure_level(beat, beat_seg, beats_per_sample, locations, valid, shapes.measures, inter)
                    if cfg.level == "measure":
                        pool_input = measure
                    else:  # total_note_cat
                        total = self._total_note_cat(note_voice, beat, beat_seg, measure, locations, valid)
                        pool_input = self.pool_contractor(total)  # (B, N, 2H)

        pooled, pool_weights = self.pool_attention(pool_input)  # (B, 2H), (B, T, h)
        logits = self.head(pooled)  # (B, num_labels)
        if not return_intermediates:
            return logits
        inter.update(pooled=pooled, pool_weights=pool_weights, logits=logits)
        note_axis = ["embedded", "note", "voice", "beat_weights"] + (["pool_weights"] if cfg.level in CONTRACTED_LEVELS else [])
        return ModelOutput(logits=logits, intermediates=self._pad_notes(inter, note_axis, full_length))

    def _beat_level(self, note_voice, locations, valid, num_beats, inter):
        """Notes -> beat nodes -> beat BiLSTM (``make_higher_node`` + ``run_hierarchy_lstm_with_pack``)."""
        flags = hier.boundary_flags(locations["beat"], valid, self.config.boundary_rule)
        beat_seg, num_per_sample, _ = hier.segment_ids(flags, valid, num_beats)
        # padding's scores are dropped by the segment softmax: on a CPU (where reading the mask costs no
        # device sync) its matmul is skipped
        rows = valid if _cpu_shortcuts(note_voice) else None
        scores = self.beat_attention.similarity(note_voice, rows)  # (B, N, h)
        weights = hier.segment_softmax(scores, beat_seg, num_beats, self.config.attention_temperature)
        nodes = hier.pool_segments(note_voice, weights, beat_seg, num_beats)  # (B, Tb, 4H)
        beat = run_lstm(self.beat_lstm, nodes, num_per_sample)  # (B, Tb, 2H)
        inter.update(beat_weights=weights, beat_nodes=nodes, beat=beat)
        return beat, beat_seg, num_per_sample

    def _measure_level(self, beat, beat_seg, beats_per_sample, locations, valid, num_measures, inter):
        """Beat nodes -> measure nodes -> measure BiLSTM; measure boundaries live in beat-node space."""
        num_beats = beat.shape[1]
        note_flags = hier.boundary_flags(locations["measure"], valid, self.config.boundary_rule)
        beat_flags = hier.higher_level_flags(beat_seg, note_flags, num_beats)  # (B, Tb)
        beat_valid = hier.valid_mask(beats_per_sample, num_beats)  # (B, Tb)
        if self.validate_inputs:
            self._check_measure_starts(note_flags, beat_seg, num_beats)
        meas_seg, num_per_sample, _ = hier.segment_ids(beat_flags, beat_valid, num_measures)
        scores = self.measure_attention.similarity(beat)  # (B, Tb, h)
        weights = hier.segment_softmax(scores, meas_seg, num_measures, self.config.attention_temperature)
        nodes = hier.pool_segments(beat, weights, meas_seg, num_measures)  # (B, Tm, 2H)
        measure = run_lstm(self.measure_lstm, nodes, num_per_sample)  # (B, Tm, 2H)
        inter.update(measure_weights=weights, measure_nodes=nodes, measure=measure)
        return measure

    def _total_note_cat(self, note_voice, beat, beat_seg, measure, locations, valid):
        """[note, voice, beat spanned, measure spanned] per note (``span_beat_to_note_num``, its length quirk too).

        The original spans node ``index - first index`` to each note; for the contiguous indices that
        validation guarantees under ``diff_eq_1`` that is the note's segment id at that level, and the
        notes count as many measures as the beat nodes do (measures start where beats start).
        """
        length = beat_seg.shape[1]
        num_measures = measure.shape[1]
        meas_flags = hier.boundary_flags(locations["measure"], valid, self.config.boundary_rule)
        meas_seg, _, _ = hier.segment_ids(meas_flags, valid, num_measures)  # note-level measure ids
        beat_keep = hier.valid_mask(hier.lengths_from_padded_indices(locations["beat"]), length)  # (B, N)
        meas_keep = hier.valid_mask(hier.lengths_from_padded_indices(locations["measure"]), length)  # (B, N)
        beat_spanned = hier.span_to_notes(beat, beat_seg, beat.shape[1], beat_keep)  # (B, N, 2H)
        meas_spanned = hier.span_to_notes(measure, meas_seg, num_measures, meas_keep)  # (B, N, 2H)
        return torch.cat([note_voice, beat_spanned, meas_spanned], dim=-1)  # (B, N, 8H)

    # ------------------------------------------------------------------ input handling
    def _prepare(self, x, lengths, note_locations, shapes=None):
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.input_size:
            raise ValueError(f"x: expected (B, N, {cfg.input_size}) float tensor, got shape {tuple(x.shape)}")
        batch, full_length, _ = x.shape
        lengths = torch.as_tensor(lengths, device=x.device).long()
        if lengths.shape != (batch,):
            raise ValueError(f"lengths: expected shape ({batch},), got {tuple(lengths.shape)}")
        if self.validate_inputs and (bool((lengths < 1).any()) or bool((lengths > full_length).any())):
            raise ValueError(f"lengths: every length must be in [1, {full_length}], got {lengths.tolist()}")
        # The original pads every level to the longest segment of the batch; extra padding is cut here and
        # restored on the note-level intermediates (it would otherwise change the unmasked note-level pooling).
        used = int(lengths.max()) if shapes is None else shapes.notes
        if self.validate_inputs and shapes is not None and used != int(lengths.max()):
            raise ValueError(f"shapes: given {shapes}, but the longest segment has notes={int(lengths.max())}")
        locations = {}
        for key in LEVEL_LOCATIONS[cfg.level]:
            if key not in note_locations:
                raise ValueError(f"note_locations: missing {key!r} (level {cfg.level!r} needs {LEVEL_LOCATIONS[cfg.level]})")
            loc = torch.as_tensor(note_locations[key], device=x.device)
            if loc.shape != (batch, full_length) or loc.dtype.is_floating_point:
                raise ValueError(f"note_locations[{key!r}]: expected ({batch}, {full_length}) integer tensor, got {tuple(loc.shape)} {loc.dtype}")
            locations[key] = loc[:, :used].long()
        x = x[:, :used]
        if self.validate_inputs:
            valid = hier.valid_mask(lengths, used)
            for key in ("beat", "measure"):
                if key in locations:
                    hier.check_indices(key, locations[key], valid, cfg.boundary_rule, allow_jumps=False)
            if "voice" in locations:
                hier.check_voices(locations["voice"], valid)
            if cfg.level == "total_note_cat" and bool((lengths == 1).any()):
                row = int(torch.nonzero(lengths == 1)[0, 0])
                raise ValueError(
                    f"lengths: row {row} has one note; the original's cal_length_from_padded_beat_numbers then "
                    f"counts its padding as notes and spans beat and measure nodes to it by negative indices "
                    f"(level 'total_note_cat'; alone in a batch it crashes). Segments need >= 2 notes at this level"
                )
        if shapes is None or self.validate_inputs:
            actual = hier.batch_shapes(lengths, locations, cfg.boundary_rule)
            if shapes is not None and shapes != actual:
                raise ValueError(f"shapes: given {shapes}, but the batch has {actual}")
            shapes = actual
        return x, lengths, locations, full_length, shapes

    def batch_shapes(self, lengths, note_locations) -> hier.BatchShapes:
        """The ``shapes`` argument of :meth:`forward` for a batch: call it on the CPU copy, before moving
        the batch to the device (only the locations this model's level reads are looked at)."""
        keys = LEVEL_LOCATIONS[self.config.level]
        return hier.batch_shapes(lengths, {k: note_locations[k] for k in keys}, self.config.boundary_rule)

    @torch.no_grad()
    def check_note_locations(self, lengths, note_locations) -> None:
        """Every input check of :meth:`forward` without the forward pass: raises ``ValueError`` on what the
        original mishandles. A training loop validates its data once with this, then sets
        ``validate_inputs = False`` so that the hot path has no host synchronisation."""
        lengths = torch.as_tensor(lengths)
        width = int(next(iter(note_locations.values())).shape[1])
        x = torch.zeros(lengths.shape[0], width, self.config.input_size, device=lengths.device)
        saved, self.validate_inputs = self.validate_inputs, True
        try:
            _, lengths, locations, _, _ = self._prepare(x, lengths, note_locations)
            if "measure" in locations:
                valid = hier.valid_mask(lengths, locations["beat"].shape[1])
                flags = hier.boundary_flags(locations["beat"], valid, self.config.boundary_rule)
                beat_seg, _, num_beats = hier.segment_ids(flags, valid)
                note_flags = hier.boundary_flags(locations["measure"], valid, self.config.boundary_rule)
                self._check_measure_starts(note_flags, beat_seg, num_beats)
        finally:
            self.validate_inputs = saved

    def _check_measure_starts(self, note_flags, beat_seg, num_beats):
        """The original maps each measure to the beat of its first note; two measures starting in one beat
        node (or a measure starting inside the first beat) give it empty segments and misaligned weights."""
        starts = torch.zeros(beat_seg.shape[0], num_beats + 1, dtype=torch.long, device=beat_seg.device)
        starts = starts.scatter_add(1, beat_seg, note_flags.long())[:, :num_beats]  # (B, Tb)
        bad = starts > 1  # two measures start in one beat node
        bad[:, 0] |= starts[:, 0] > 0  # a measure starts inside the first beat
        if bool(bad.any()):
            row, node = (int(v) for v in torch.nonzero(bad)[0])
            raise ValueError(
                f"note_locations['measure'] row {row}: a measure starts inside beat node {node} that already "
                f"starts a measure (or the first beat); measures must start where beats start"
            )

    @staticmethod
    def _pad_notes(inter, note_axis, full_length):
        for key in note_axis:
            if key in inter and inter[key].shape[1] < full_length:
                pad = inter[key].new_zeros(inter[key].shape[0], full_length - inter[key].shape[1], inter[key].shape[2])
                inter[key] = torch.cat([inter[key], pad], dim=1)  # (B, N, C)
        return inter

    # ------------------------------------------------------------------ original weights
    def load_original_state_dict(self, state_dict, strict: bool = True) -> None:
        """Load weights saved by the original code (``VirtuosoNetMultiLevel.state_dict()``, original names)."""
        from .convert import from_original

        self.load_state_dict(from_original(state_dict, self, strict=strict))

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under the original parameter names."""
        from .convert import to_original

        return to_original(self.state_dict(), self.config.level)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
