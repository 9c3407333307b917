"""The one synthetic-data generator: segments described by their structure, then batches and datasets of them.

Nothing here comes from PercePiano. A :class:`Segment` is described by its first beat / measure index and, per
measure, the number of notes of each of its beats; its note locations are then contiguous (consecutive notes
differ by 0 or +1, as the original's data pipeline makes them, ``docs/original.md``), and voices are given per note
(0 = a performance note inserted without a score note). Everything else is built from segments:

- :func:`stack`: a zero-padded numpy batch of given segments (the parity fixtures, hand-made test batches);
- :func:`random_segment` / :func:`random_sample`: segments shaped like the dataset (benchmarks, host-sync tests);
- :func:`dataset_arrays` / :func:`dataset`: a whole dataset in the ``percepiano_vnet_m2pf.npz`` layout (tests,
  notebooks; ``python -m percepiano.synthetic OUT.npz`` writes the committed ``tests/data/synthetic_m2pf.npz``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from .constants import INPUT_DIM, LOCATION_KEYS, N_FOLDS, NUM_LABELS, PARTS, RATING_SCALE


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
        """The segment's note locations, each (num_notes,) int64."""
        notes_per_beat = [n for m in self.measures for n in m]
        beats_per_measure = [len(m) for m in self.measures]
        beat = self.first_beat + np.repeat(np.arange(len(notes_per_beat)), notes_per_beat)
        notes_per_measure = [sum(m) for m in self.measures]
        measure = self.first_measure + np.repeat(np.arange(len(beats_per_measure)), notes_per_measure)
        return {
            "beat": beat.astype(np.int64),
            "measure": measure.astype(np.int64),
            "section": np.full(self.num_notes, self.first_section, dtype=np.int64),
            "voice": np.asarray(self.voices, dtype=np.int64),
        }


def cycle_voices(n: int, pattern: tuple[int, ...]) -> tuple[int, ...]:
    """``n`` voice numbers repeating ``pattern``."""
    return tuple(pattern[i % len(pattern)] for i in range(n))


# ------------------------------------------------------------------ batches of given segments


def stack(segments, input_size: int, num_labels: int, seed: int, label_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Zero-padded numpy batch: x (B,N,F) float64, lengths (B,), beat/measure/section/voice (B,N), labels (B,L).

    Features are N(0, 1) (padding exactly 0); labels are U(0.15, 0.95) like the real 1-7 ratings / 7
    (times ``label_scale``; a large scale makes the loss gradient large, e.g. to make the clip bind).
    """
    rng = np.random.default_rng(seed)
    b, n = len(segments), max(s.num_notes for s in segments)
    out = {
        "x": np.zeros((b, n, input_size)),
        "lengths": np.array([s.num_notes for s in segments], dtype=np.int64),
        **{k: np.zeros((b, n), dtype=np.int64) for k in LOCATION_KEYS},
    }
    for i, s in enumerate(segments):
        out["x"][i, : s.num_notes] = rng.standard_normal((s.num_notes, input_size))
        for k, v in s.locations().items():
            out[k][i, : s.num_notes] = v
    # labels are float32 values (the original's collate makes them float32), kept as float64 arrays
    out["labels"] = (rng.uniform(0.15, 0.95, size=(b, num_labels)) * label_scale).astype(np.float32).astype(np.float64)
    return out


def to_torch(batch: dict, dtype=torch.float32):
    """(x, lengths, note_locations, labels) of a :func:`stack` batch as torch tensors for our model."""
    x = torch.as_tensor(batch["x"], dtype=dtype)
    locs = {k: torch.as_tensor(batch[k], dtype=torch.int64) for k in LOCATION_KEYS}
    return x, torch.as_tensor(batch["lengths"]), locs, torch.as_tensor(batch["labels"], dtype=dtype)


# ------------------------------------------------------------------ segments shaped like the dataset


def random_segment(rng: np.random.Generator) -> Segment:
    """51-413 notes (log-normal around the dataset's median of 116), 1-7 voices with 10 % voice-0 notes,
    3-4 beats per measure, 1-6 notes per beat."""
    n = int(np.clip(rng.lognormal(np.log(116), 0.5), 51, 413))
    beats_per_measure = int(rng.integers(3, 5))
    notes_per_beat = rng.integers(1, 7, size=n)  # an upper bound: the last beat is cut at n notes
    ends = np.cumsum(notes_per_beat)
    beats = int(np.searchsorted(ends, n)) + 1
    notes_per_beat = notes_per_beat[:beats].copy()
    notes_per_beat[-1] -= int(ends[beats - 1]) - n
    measures = tuple(
        tuple(int(v) for v in notes_per_beat[i : i + beats_per_measure]) for i in range(0, beats, beats_per_measure)
    )
    num_voices = int(rng.integers(1, 8))
    voice = rng.integers(1, num_voices + 1, size=n)
    voice[rng.random(n) < 0.1] = 0
    return Segment(measures, tuple(int(v) for v in voice), first_section=0, name=f"synthetic_{n}")


def random_sample(rng: np.random.Generator, input_size: int = INPUT_DIM):
    """A :class:`percepiano.data.Sample` of a :func:`random_segment` with N(0, 1) features."""
    from .data import Sample

    segment = random_segment(rng)
    return Sample(
        x=torch.from_numpy(rng.standard_normal((segment.num_notes, input_size)).astype(np.float32)),
        note_locations={k: torch.from_numpy(v) for k, v in segment.locations().items()},
        labels=torch.from_numpy(rng.uniform(0.2, 0.9, NUM_LABELS).astype(np.float32)),
        segment_id=segment.name,
    )


# ------------------------------------------------------------------ whole datasets


def dataset_arrays(n_segments: int = 32, seed: int = 0, min_notes: int = 12, max_notes: int = 40) -> dict[str, np.ndarray]:
    """A small dataset in the ``percepiano_vnet_m2pf.npz`` layout.

    Features mostly 0 with a few small rounded values (so that a file of it compresses to a few kB), at least 4
    contiguous beats per segment and a new measure every 3 beats, voices 0-3, labels in [1/7, 1] rounded to
    ratings / 7 that depend on the segment's mean features (so a model can learn a little), segment ids named
    like the real ones (8 segments per synthetic piece). Splits (both schemes alike): the last
    ``n_segments * 3 // 16`` segments are test in every fold, and as many per fold are valid (fold ``k``: the
    ``k``-th such block from the start); the rest is train.
    """
    if min_notes < 10 or max_notes < min_notes:
        raise ValueError(f"segments need 10 <= min_notes <= max_notes notes, got {min_notes}..{max_notes}")
    block = max(1, n_segments * 3 // 16)
    if (N_FOLDS + 1) * block > n_segments:
        raise ValueError(f"n_segments={n_segments} is too small for {N_FOLDS} valid blocks and a test block")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_notes, max_notes + 1, size=n_segments)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    x = np.zeros((n, INPUT_DIM), dtype=np.float32)
    active = rng.random((n, INPUT_DIM)) < 0.1
    x[active] = np.round(rng.normal(size=int(active.sum())), 1)
    # a note needs a nonzero feature (the data validation refuses all-zero rows); no draw, so other seeds' data stay
    x[~x.any(axis=1), 0] = 0.5
    beat, measure, voice = (np.zeros(n, dtype=np.int32) for _ in range(3))
    for i in range(n_segments):
        s, e = offsets[i], offsets[i + 1]
        steps = rng.random(e - s) < 0.4  # a new beat with probability 0.4 (contiguous: steps of 0 or 1)
        steps[[3, 6, 9]] = True  # at least 4 beats, hence at least 2 measures
        steps[0] = False
        b = np.cumsum(steps)
        beat[s:e] = b
        first_of_beat = np.concatenate([[False], np.diff(b) == 1])
        measure[s:e] = np.cumsum(first_of_beat & (b % 3 == 0))  # a new measure at the first note of beats 3, 6, ...
        voice[s:e] = rng.integers(0, 4, size=e - s)
    seg_mean = np.stack([x[offsets[i] : offsets[i + 1]].mean(axis=0) for i in range(n_segments)])
    w = rng.normal(scale=3.0, size=(INPUT_DIM, NUM_LABELS))
    labels = 1.0 / (1.0 + np.exp(-(seg_mean @ w + rng.normal(scale=0.3, size=(n_segments, NUM_LABELS)))))
    top = RATING_SCALE[1]
    labels = np.clip(np.round(labels * top) / top, RATING_SCALE[0] / top, 1.0).astype(np.float32)
    split = np.full((n_segments, N_FOLDS), PARTS["train"], dtype=np.int8)
    split[-block:] = PARTS["test"]
    for fold in range(N_FOLDS):
        split[fold * block : (fold + 1) * block, fold] = PARTS["valid"]
    return {
        "segment_ids": np.array([f"Synthetic_piece{i // 8}_8bars_{i % 8}_{i}" for i in range(n_segments)]),
        "offsets": offsets,
        "input": x,
        "feature_names": np.array([f"synthetic_{j}" for j in range(INPUT_DIM)]),
        "note_beat": beat,
        "note_measure": measure,
        "note_section": np.zeros(n, dtype=np.int32),
        "note_voice": voice,
        "labels": labels,
        "labels_std": np.full((n_segments, NUM_LABELS), 0.1, dtype=np.float32),
        "label_names": np.array([f"label_{j:02d}" for j in range(NUM_LABELS)]),
        "composition_split": split,
        "performer_split": split.copy(),
    }


def dataset(n_segments: int = 32, seed: int = 0, **kw):
    """:func:`dataset_arrays` loaded (and validated) as a :class:`percepiano.data.PercePianoData`."""
    from .data import PercePianoData

    return PercePianoData(dataset_arrays(n_segments, seed, **kw), f"<synthetic n={n_segments} seed={seed}>")


def main(argv: list[str] | None = None) -> int:
    """``python -m percepiano.synthetic OUT.npz``: write the default :func:`dataset_arrays` (deterministic)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m percepiano.synthetic OUT.npz", file=sys.stderr)
        return 2
    np.savez_compressed(argv[0], **dataset_arrays())
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
