"""Small hand-made batches with realistic note locations, shared by the tests."""
from __future__ import annotations

import torch

from percepiano import ModelConfig

LEVELS = ["note", "voice", "beat", "measure", "total_note_cat"]
# Mutually distinct sizes, so that a transposed or swapped axis cannot pass.
SIZES = dict(input_size=7, note_size=6, voice_size=10, beat_size=12, measure_size=8, num_heads=2)


def tiny(level, **kw) -> ModelConfig:
    """A small model config of ``level`` on ``make_batch``'s 7 input dims; no dropout."""
    return ModelConfig(**{**SIZES, "level": level, "dropout": 0.0, **kw})


def make_batch(input_size: int = 7, dtype=torch.float32, seed: int = 0):
    """Three segments of different lengths: voice-0 notes, missing voice numbers, one-note beats,
    one-beat measures, and indices that do not start at 0 (segment 1)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([12, 9, 5])
    beat = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5], [2, 2, 3, 3, 3, 4, 5, 5, 6, 0, 0, 0], [0, 1, 1, 2, 2, 0, 0, 0, 0, 0, 0, 0]])
    measure = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 2, 2, 2, 3, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
    voice = torch.tensor([[1, 2, 1, 2, 0, 1, 1, 2, 3, 1, 2, 1], [1, 1, 3, 3, 1, 1, 1, 3, 1, 0, 0, 0], [2, 2, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0]])
    x = torch.randn(3, 12, input_size, generator=gen, dtype=dtype)
    x = x * (torch.arange(12)[None, :] < lengths[:, None])[:, :, None]
    locations = {"beat": beat, "measure": measure, "section": torch.zeros_like(beat), "voice": voice}
    return x, lengths, locations

