"""Tiny model configs and a hand-made batch, shared by the unit tests (built with percepiano.synthetic)."""
from __future__ import annotations

import torch

from percepiano import ModelConfig
from percepiano.constants import LEVELS  # noqa: F401 (the tests parametrize over it)
from percepiano.synthetic import Segment, stack, to_torch

# Mutually distinct sizes, so that a transposed or swapped axis cannot pass.
SIZES = dict(input_size=7, note_size=6, voice_size=10, beat_size=12, measure_size=8, num_heads=2)

# Three segments of different lengths (12, 9, 5 notes): voice-0 notes, missing voice numbers, a one-note beat,
# a one-beat measure, and indices that do not start at 0 (the second segment).
HAND_MADE = (
    Segment(((2, 2), (2, 3), (2, 1)), (1, 2, 1, 2, 0, 1, 1, 2, 3, 1, 2, 1), first_section=0),
    Segment(((2, 3), (1, 2), (1,)), (1, 1, 3, 3, 1, 1, 1, 3, 1), first_beat=2, first_measure=1, first_section=0),
    Segment(((1, 2), (2,)), (2, 2, 2, 0, 2), first_section=0),
)


def tiny(level, **kw) -> ModelConfig:
    """A small model config of ``level`` on ``make_batch``'s 7 input dims; no dropout."""
    return ModelConfig(**{**SIZES, "level": level, "dropout": 0.0, **kw})


def make_batch(input_size: int = 7, dtype=torch.float32, seed: int = 0):
    """(x, lengths, note_locations) of the :data:`HAND_MADE` segments, zero-padded."""
    x, lengths, locations, _ = to_torch(stack(HAND_MADE, input_size, num_labels=1, seed=seed), dtype)
    return x, lengths, locations
