"""Write ``synthetic_m2pf.npz``: a tiny, fully synthetic dataset in the format of ``percepiano_vnet_m2pf.npz``.

Used by the tests and notebooks that must run without the real data (no ``PERCEPIANO_DATA``). Nothing in it
comes from PercePiano: 32 segments of 12-40 notes, features mostly 0 with a few small rounded values (so the
file compresses to a few kB), contiguous beat/measure indices, voices 0-3, labels in (0, 1] that depend on
the segment's mean features (so a model can learn a little), and both split schemes with 4 folds.

Run ``python tests/data/make_synthetic_data.py`` to regenerate; the output is deterministic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

N_SEGMENTS = 32
N_FEATURES = 101
N_LABELS = 19
OUT = Path(__file__).with_name("synthetic_m2pf.npz")


def make(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(12, 41, size=N_SEGMENTS)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    x = np.zeros((n, N_FEATURES), dtype=np.float32)
    active = rng.random((n, N_FEATURES)) < 0.1
    x[active] = np.round(rng.normal(size=int(active.sum())), 1)
    beat, measure, voice = (np.zeros(n, dtype=np.int32) for _ in range(3))
    for i in range(N_SEGMENTS):
        s, e = offsets[i], offsets[i + 1]
        steps = rng.random(e - s) < 0.4  # a new beat with probability 0.4 (contiguous: steps of 0 or 1)
        steps[[3, 6, 9]] = True  # at least 4 beats, hence at least 2 measures
        steps[0] = False
        b = np.cumsum(steps)
        beat[s:e] = b
        m_starts = np.zeros(e - s, dtype=bool)  # a new measure every 3 beats, at the first note of that beat
        first_of_beat = np.concatenate([[False], np.diff(b) == 1])
        m_starts[first_of_beat & (b % 3 == 0)] = True  # beats 3, 6, ...
        measure[s:e] = np.cumsum(m_starts)
        voice[s:e] = rng.integers(0, 4, size=e - s)
    seg_mean = np.stack([x[offsets[i] : offsets[i + 1]].mean(axis=0) for i in range(N_SEGMENTS)])
    w = rng.normal(scale=3.0, size=(N_FEATURES, N_LABELS))
    labels = 1.0 / (1.0 + np.exp(-(seg_mean @ w + rng.normal(scale=0.3, size=(N_SEGMENTS, N_LABELS)))))
    labels = np.clip(np.round(labels * 7) / 7, 1 / 7, 1.0).astype(np.float32)  # ratings / 7, like the real labels
    split = np.zeros((N_SEGMENTS, 4), dtype=np.int8)
    split[-6:] = 2  # the same 6 test segments in every fold
    for fold in range(4):
        split[fold * 6 : fold * 6 + 6, fold] = 1  # 6 valid segments per fold
    return {
        "segment_ids": np.array([f"Synthetic_piece{i // 8}_8bars_{i % 8}_{i}" for i in range(N_SEGMENTS)]),
        "offsets": offsets,
        "input": x,
        "feature_names": np.array([f"synthetic_{j}" for j in range(N_FEATURES)]),
        "note_beat": beat,
        "note_measure": measure,
        "note_section": np.zeros(n, dtype=np.int32),
        "note_voice": voice,
        "labels": labels,
        "labels_std": np.full((N_SEGMENTS, N_LABELS), 0.1, dtype=np.float32),
        "label_names": np.array([f"label_{j:02d}" for j in range(N_LABELS)]),
        "composition_split": split,
        "performer_split": split.copy(),
    }


if __name__ == "__main__":
    np.savez_compressed(OUT, **make())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
