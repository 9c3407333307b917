"""Synthetic segments with realistic note locations, and the padded batches both implementations are fed.

A segment is described by its first beat / measure index and, per measure, the number of notes of each of its
beats. Note locations are then contiguous (consecutive notes differ by 0 or +1, as the original's data pipeline
produces, reference_spec §2.3); voices are given per note (0 = an inserted unmatched performance note).
Everything here is our own code: it describes inputs, it does not reproduce the original.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Segment:
    measures: tuple[tuple[int, ...], ...]  # per measure, notes per beat
    voices: tuple[int, ...]  # per note
    first_beat: int = 0
    first_measure: int = 0
    first_section: int = 1
    name: str = field(default="", compare=False)

    def __post_init__(self):
        if any(n < 1 for m in self.measures for n in m) or any(len(m) < 1 for m in self.measures) or not self.measures:
            raise ValueError("every measure needs >= 1 beat and every beat >= 1 note")
        if len(self.voices) != self.num_notes:
            raise ValueError(f"{len(self.voices)} voices for {self.num_notes} notes")

    @property
    def num_notes(self) -> int:
        return int(sum(sum(m) for m in self.measures))

    def locations(self) -> dict[str, np.ndarray]:
        beat, measure = [], []
        b = self.first_beat
        for k, m in enumerate(self.measures):
            for notes in m:
                beat += [b] * notes
                measure += [self.first_measure + k] * notes
                b += 1
        n = self.num_notes
        return {
            "beat": np.asarray(beat, dtype=np.int64),
            "measure": np.asarray(measure, dtype=np.int64),
            "section": np.full(n, self.first_section, dtype=np.int64),
            "voice": np.asarray(self.voices, dtype=np.int64),
        }


def _voices(n: int, pattern: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(pattern[i % len(pattern)] for i in range(n))


# The batch of the recorded model fixtures: 5 segments of lengths 22, 15, 7, 4, 3 (deliberately not sorted).
# - "pickup": first measure is a single one-note beat (one-beat measure, one-note beat; its first two notes lie in
#   different beats, which trips the original's cal_length bug in span_beat_to_note_num, spec §3.3), voices {1, 3}
#   only (voice 2 empty) and two voice-0 notes, another one-beat measure in the middle; starts at beat/measure 0.
# - "offset": starts at beat 10 / measure 3, voices {1, 2}.
# - "short": starts at 0, voice 1 plus a voice-0 note.
# - "one_measure": a single measure of two beats starting at measure 5 / beat 17, only voice 3.
# - "one_beat": a single beat (one measure) of 3 notes at beat 6 / measure 2, voice 1.
MODEL_SEGMENTS: tuple[Segment, ...] = (
    Segment(((2, 2), (3,)), (1, 1, 0, 1, 1, 1, 1), name="short"),
    Segment(
        ((1,), (2, 3, 1, 2), (1,), (2, 2, 3, 1), (2, 2)),
        (1, 3, 1, 3, 3, 1, 0, 1, 3, 1, 1, 3, 1, 3, 1, 3, 0, 1, 3, 1, 3, 1),
        name="pickup",
    ),
    Segment(((2,), ), (1, 1), first_beat=6, first_measure=2, name="one_beat_tiny"),
    Segment(((2, 1, 2), (3, 2), (1, 1, 1, 2)), _voices(15, (1, 2, 2, 1, 1)), first_beat=10, first_measure=3, name="offset"),
    Segment(((3, 1),), (3, 3, 3, 3), first_beat=17, first_measure=5, name="one_measure"),
)


def stack(segments, input_size: int, num_labels: int, seed: int, label_scale: float = 1.0):
    """Zero-padded numpy batch: x (B,N,F) float64, lengths (B,), beat/measure/section/voice (B,N), labels (B,L).

    Features are N(0, 1) (padding exactly 0); labels are U(0.15, 0.95) like the real 1-7 ratings / 7
    (times ``label_scale``; a large scale makes the loss gradient large, e.g. to make the clip bind).
    """
    rng = np.random.default_rng(seed)
    b, n = len(segments), max(s.num_notes for s in segments)
    out = {
        "x": np.zeros((b, n, input_size)),
        "lengths": np.array([s.num_notes for s in segments], dtype=np.int64),
        **{k: np.zeros((b, n), dtype=np.int64) for k in ("beat", "measure", "section", "voice")},
    }
    for i, s in enumerate(segments):
        out["x"][i, : s.num_notes] = rng.standard_normal((s.num_notes, input_size))
        for k, v in s.locations().items():
            out[k][i, : s.num_notes] = v
    # labels are float32 values (the original's collate makes them float32), kept as float64 arrays
    out["labels"] = (rng.uniform(0.15, 0.95, size=(b, num_labels)) * label_scale).astype(np.float32).astype(np.float64)
    return out


def to_torch(batch: dict, dtype):
    """(x, lengths, note_locations, labels) as torch tensors for our model."""
    import torch

    x = torch.as_tensor(batch["x"], dtype=dtype)
    locs = {k: torch.as_tensor(batch[k], dtype=torch.int64) for k in ("beat", "measure", "section", "voice")}
    return x, torch.as_tensor(batch["lengths"]), locs, torch.as_tensor(batch["labels"], dtype=dtype)


def original_samples(batch: dict, dtype):
    """Per-segment 10-item samples in the layout the original ``ScorePerformDataset.__getitem__`` returns.

    Fed to the original ``FeatureCollate`` (which packs ``x`` with ``pack_sequence(enforce_sorted=False)`` and
    zero-pads the note locations). Only ``x``, the note locations and the labels matter to the models; the
    other items are zeros of the right length.
    """
    import torch

    samples = []
    for i, n in enumerate(batch["lengths"].tolist()):
        locs = {k: torch.as_tensor(batch[k][i, :n]).to(torch.int32) for k in ("beat", "measure", "section", "voice")}
        z = torch.zeros(n, 1)
        samples.append([
            torch.as_tensor(batch["x"][i, :n], dtype=dtype), z, z, z, locs,
            torch.zeros(n), torch.zeros(n), None, batch["labels"][i].tolist(), np.zeros(batch["labels"].shape[1]),
        ])
    return samples
