"""Benchmark batches: 8 real segments, or synthetic ones shaped like the dataset."""
from __future__ import annotations

import os

import numpy as np
import torch

from percepiano.data import Batch, Sample, collate, load_dataset

BATCH_SIZE = 8


def synthetic_segment(rng: np.random.Generator, input_size: int = 101) -> Sample:
    """51-413 notes (log-normal around the median of 116), 1-7 voices, 3-4 beats per measure."""
    n = int(np.clip(rng.lognormal(np.log(116), 0.5), 51, 413))
    beats_per_measure = int(rng.integers(3, 5))
    notes_per_beat = rng.integers(1, 7, size=n)  # upper bound; cut at n notes
    beat = np.repeat(np.arange(n), notes_per_beat)[:n]
    measure = beat // beats_per_measure
    voices = int(rng.integers(1, 8))
    voice = rng.integers(1, voices + 1, size=n)
    voice[rng.random(n) < 0.1] = 0  # performance notes without a score note
    locations = {"beat": beat, "measure": measure, "section": np.zeros(n, dtype=np.int64), "voice": voice}
    return Sample(
        x=torch.from_numpy(rng.standard_normal((n, input_size)).astype(np.float32)),
        note_locations={k: torch.from_numpy(v.astype(np.int64)) for k, v in locations.items()},
        labels=torch.from_numpy(rng.uniform(0.2, 0.9, 19).astype(np.float32)),
        segment_id=f"synthetic_{n}",
    )


def benchmark_batch(feature_set: str, seed: int = 0) -> tuple[Batch, str]:
    """One batch of 8 segments drawn at random (fixed seed): real when PERCEPIANO_DATA is set."""
    rng = np.random.default_rng(seed)
    if os.environ.get("PERCEPIANO_DATA"):
        data = load_dataset(os.environ["PERCEPIANO_DATA"])
        chosen = rng.choice(len(data), size=BATCH_SIZE, replace=False)
        return data.batch(sorted(chosen.tolist()), feature_set=feature_set), "dataset"
    size = 9 if feature_set == "performance_only" else 101
    return collate([synthetic_segment(rng, size) for _ in range(BATCH_SIZE)]), "synthetic"
