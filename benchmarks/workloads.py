"""Benchmark batches: 8 real segments, or synthetic ones shaped like the dataset (percepiano.synthetic)."""
from __future__ import annotations

import os

import numpy as np

from percepiano.data import Batch, collate, load_dataset
from percepiano.synthetic import random_sample

BATCH_SIZE = 8


def benchmark_batch(feature_set: str, seed: int = 0) -> tuple[Batch, str]:
    """One batch of 8 segments drawn at random (fixed seed): real when PERCEPIANO_DATA is set."""
    rng = np.random.default_rng(seed)
    if os.environ.get("PERCEPIANO_DATA"):
        data = load_dataset(os.environ["PERCEPIANO_DATA"])
        chosen = rng.choice(len(data), size=BATCH_SIZE, replace=False)
        return data.batch(sorted(chosen.tolist()), feature_set=feature_set), "dataset"
    size = 9 if feature_set == "performance_only" else 101
    return collate([random_sample(rng, size) for _ in range(BATCH_SIZE)]), "synthetic"
