"""PercePianoModel: the original ``VirtuosoNetMultiLevel`` with its ``HanEncoder``, batched.

Reads top-down as the data flows (docs/original.md#model):

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

from . import hierarchy as hier
from .config import ModelConfig
from .constants import CONTRACTED_LEVELS, LEVEL_LOCATIONS
from .layers import ContextAttention
from .lstm import bilstm, host_shortcuts, run_lstm, run_lstm_packed, run_voice_lstm


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, num_labels), before the sigmoid
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)


class PercePianoModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        # Input validation raises on note locations the original mishandles; data that percepiano.data
        # already validated may switch it off to avoid host syncs in the training loop.
        self.validate_inputs = True
        # CPU-only shortcuts (LSTM rows in length groups, beat attention scoring real notes only) read tensor
        # values on the host: free on a CPU, a sync elsewhere, so they apply to CPU tensors only. Off, a CPU
        # runs what a GPU runs (the tests compare the two paths).
        self.cpu_shortcuts = True
        # The seed-exact replay's engine: the note, beat and measure BiLSTMs run packed, as the original runs them
        # (lstm.run_lstm_packed), so that on a CPU with one thread their results are the original's to the last
        # bit; set by training with rng "original" (training.py). The voice LSTM stays batched.
        self.exact_lstm = False
        h_note, h_voice, h_beat, h_meas = cfg.note_size, cfg.voice_size, cfg.beat_size, cfg.measure_size
        level = cfg.level
        uses_voice = level in ("voice", "beat", "measure", "total_note_cat")
        uses_beat = level in ("beat", "measure", "total_note_cat")
        uses_measure = level in ("measure", "total_note_cat")

        self.embed = nn.Linear(cfg.input_size, h_note)
        self.note_lstm = bilstm(h_note, h_note, cfg.note_layers, cfg.dropout)
        if uses_voice:
            self.voice_lstm = bilstm(h_note, h_voice, cfg.voice_layers, cfg.dropout)
        if uses_beat:
            self.beat_attention = ContextAttention(2 * (h_note + h_voice), cfg.num_heads, cfg.attention_temperature)
            self.beat_lstm = bilstm(2 * (h_note + h_voice), h_beat, cfg.beat_layers, cfg.dropout)
        if uses_measure:
            self.measure_attention = ContextAttention(2 * h_beat, cfg.num_heads, cfg.attention_temperature)
            self.measure_lstm = bilstm(2 * h_beat, h_meas, cfg.measure_layers, 0.0)  # original: no dropout here

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
    def forward(self, x, lengths, note_locations, return_intermediates: bool = False, shapes: hier.BatchShapes | None = None,
                dropout_masks=None):
        """Logits (B, num_labels) of a zero-padded batch, or a :class:`ModelOutput` with every intermediate.

        ``shapes`` (:func:`hierarchy.batch_shapes` of the CPU batch) gives the data-dependent sizes so that
        the pass never reads from the device; without it they are read back (a sync on a GPU).
        ``dropout_masks`` (a :class:`percepiano.replay.DropoutMasks`, training only): the step's dropout, drawn in
        the original's order, applied instead of the model's own draws (the seed-exact replay).
        """
        cfg = self.config
        x, lengths, locations, full_length, shapes = self._prepare(x, lengths, note_locations, shapes)
        valid = hier.valid_mask(lengths, x.shape[1])  # (B, N)
        inter: dict[str, torch.Tensor] = {}

        grouped = host_shortcuts(self.cpu_shortcuts, x)
        embedded = self._embed_notes(x, lengths, valid, grouped)  # (B, N, H), zero on padding
        masks = dropout_masks
        note = self._lstm(self.note_lstm, embedded, lengths, grouped, masks and masks.note)  # (B, N, 2H)
        inter.update(embedded=embedded, note=note)

        if cfg.level == "note":
            pool_input = self.pool_contractor(note)  # (B, N, 2H); padded rows = bias, unmasked as in the original
        else:
            voice_shape = (shapes.voices, shapes.voice_sequences, shapes.voice_length)
            voice = run_voice_lstm(self.voice_lstm, embedded, locations["voice"], valid, voice_shape, grouped,
                                   masks and masks.voice)  # (B, N, 2H)
            note_voice = torch.cat([note, voice], dim=-1)  # (B, N, 4H), note first as in the original
            inter["voice"] = voice
            if cfg.level == "voice":
                pool_input = self.pool_contractor(note_voice)  # (B, N, 2H)
            else:
                nodes = hier.node_segments(locations, valid, cfg.boundary_rule, shapes.beats, shapes.measures)
                beat = self._beat_level(note_voice, nodes, valid, grouped, inter, masks and masks.beat)
                if cfg.level == "beat":
                    pool_input = beat
                else:
                    measure = self._measure_level(beat, nodes, grouped, inter)
                    if cfg.level == "measure":
                        pool_input = measure
                    else:  # total_note_cat
                        total = self._total_note_cat(note_voice, beat, measure, nodes, locations, valid)
                        pool_input = self.pool_contractor(total)  # (B, N, 2H)

        pooled, pool_weights = self.pool_attention(pool_input)  # (B, 2H), (B, T, h)
        logits = self.head(pooled) if masks is None else self._head_with_masks(pooled, masks.head)  # (B, num_labels)
        if not return_intermediates:
            return logits
        inter.update(pooled=pooled, pool_weights=pool_weights, logits=logits)
        note_axis = ["embedded", "note", "voice", "beat_weights"] + (["pool_weights"] if cfg.level in CONTRACTED_LEVELS else [])
        return ModelOutput(logits=logits, intermediates=self._pad_notes(inter, note_axis, full_length))

    def _lstm(self, lstm, x, lengths, grouped: bool, masks=None):
        """A BiLSTM over padded rows: packed as the original (``exact_lstm``, CPU) or by our faster engine."""
        if self.exact_lstm and x.device.type == "cpu":
            return run_lstm_packed(lstm, x, lengths, masks)
        return run_lstm(lstm, x, lengths, grouped, masks)

    def _embed_notes(self, x, lengths, valid, packed: bool):
        """The embedder on the real notes only, zero on padding (the original embeds packed data).

        ``packed`` (CPU): on the rows in the original's packed order, so that the weight gradient, a sum over
        notes, rounds as the original's does (the seed-exact replay of the bilstm, whose raw input dims make it
        large, depends on it). Otherwise every padded row is embedded and masked (no host read, the same
        values up to rounding; the tests compare the two).
        """
        if not packed:
            return self.embed(x) * valid[:, :, None].to(x.dtype)  # (B, N, H)
        batch, notes, features = x.shape
        rows = hier.packed_rows(lengths, notes)  # (P,) into the B * N note rows
        embedded = self.embed(x.reshape(batch * notes, features).index_select(0, rows))  # (P, H)
        padded = embedded.new_zeros(batch * notes, embedded.shape[-1]).index_copy(0, rows, embedded)  # (B * N, H)
        return padded.view(batch, notes, -1)  # (B, N, H)

    def _head_with_masks(self, pooled, head_masks):
        """``head`` with the two Dropouts' masks given (``out_fc``: Dropout, Linear, GELU, Dropout, Linear)."""
        if len(head_masks) != 2:
            raise ValueError(f"dropout_masks.head: expected the 2 masks of the head's Dropouts, got {len(head_masks)}")
        hidden = self.head[2](self.head[1](pooled * head_masks[0]))
        return self.head[4](hidden * head_masks[1])

    def _beat_level(self, note_voice, nodes: hier.NodeSegments, valid, grouped, inter, beat_masks=None):
        """Notes -> beat nodes -> beat BiLSTM (``make_higher_node`` + ``run_hierarchy_lstm_with_pack``)."""
        # padding's scores are dropped by the segment softmax: with the CPU shortcuts its matmul is skipped
        scores = self.beat_attention.similarity(note_voice, valid if grouped else None)  # (B, N, h)
        weights = hier.segment_softmax(scores, nodes.beat, nodes.beats, self.config.attention_temperature)
        pooled = hier.pool_segments(note_voice, weights, nodes.beat, nodes.beats)  # (B, Tb, 4H)
        beat = self._lstm(self.beat_lstm, pooled, nodes.beats_per_sample, grouped, beat_masks)  # (B, Tb, 2H)
        inter.update(beat_weights=weights, beat_nodes=pooled, beat=beat)
        return beat

    def _measure_level(self, beat, nodes: hier.NodeSegments, grouped, inter):
        """Beat nodes -> measure nodes -> measure BiLSTM; measure boundaries live in beat-node space."""
        if self.validate_inputs:
            self._check_measure_starts(nodes)
        scores = self.measure_attention.similarity(beat)  # (B, Tb, h)
        weights = hier.segment_softmax(scores, nodes.measure, nodes.measures, self.config.attention_temperature)
        pooled = hier.pool_segments(beat, weights, nodes.measure, nodes.measures)  # (B, Tm, 2H)
        measure = self._lstm(self.measure_lstm, pooled, nodes.measures_per_sample, grouped)  # (B, Tm, 2H)
        inter.update(measure_weights=weights, measure_nodes=pooled, measure=measure)
        return measure

    def _total_note_cat(self, note_voice, beat, measure, nodes: hier.NodeSegments, locations, valid):
        """[note, voice, beat spanned, measure spanned] per note (``span_beat_to_note_num``, its length quirk too).

        The original spans node ``index - first index`` to each note; for the contiguous indices that
        validation guarantees under ``diff_eq_1`` that is the note's segment id at that level, and the
        notes count as many measures as the beat nodes do (measures start where beats start).
        """
        length = nodes.beat.shape[1]
        num_measures = measure.shape[1]
        note_measure, _, _ = hier.segment_ids(nodes.measure_starts, valid, num_measures)  # (B, N) measure of each note
        beat_keep = hier.valid_mask(hier.lengths_from_padded_indices(locations["beat"]), length)  # (B, N)
        meas_keep = hier.valid_mask(hier.lengths_from_padded_indices(locations["measure"]), length)  # (B, N)
        beat_spanned = hier.span_to_notes(beat, nodes.beat, beat.shape[1], beat_keep)  # (B, N, 2H)
        meas_spanned = hier.span_to_notes(measure, note_measure, num_measures, meas_keep)  # (B, N, 2H)
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
            # (B, N): padding too, since the masked embedder (GPU) gives 0 * NaN = NaN
            finite = torch.isfinite(x).all(dim=-1)
            if not bool(finite.all()):
                row, col = (int(v) for v in torch.nonzero(~finite)[0])
                raise ValueError(f"x: row {row} position {col} holds a non-finite value (NaN or inf); the output "
                                 "would be NaN")
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
                self._check_measure_starts(hier.node_segments(locations, valid, self.config.boundary_rule))
        finally:
            self.validate_inputs = saved

    def _check_measure_starts(self, nodes: hier.NodeSegments):
        """The original maps each measure to the beat of its first note; two measures starting in one beat
        node (or a measure starting inside the first beat) give it empty segments and misaligned weights."""
        beat_seg, num_beats = nodes.beat, nodes.beats
        starts = torch.zeros(beat_seg.shape[0], num_beats + 1, dtype=torch.long, device=beat_seg.device)
        starts = starts.scatter_add(1, beat_seg, nodes.measure_starts.long())[:, :num_beats]  # (B, Tb)
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
        """Load weights saved by the original code (``VirtuosoNetMultiLevel.state_dict()``, original names).
        ``strict=False`` loads the keys that fit and leaves the other parameters as they are (torch's meaning)."""
        from .convert import from_original

        self.load_state_dict(from_original(state_dict, self, strict=strict), strict=strict)

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under the original parameter names."""
        from .convert import to_original

        return to_original(self.state_dict(), self.config.level)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
