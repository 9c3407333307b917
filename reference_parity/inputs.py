"""The inputs both implementations are fed: the segments of the recorded model fixtures, and a padded batch
laid out per sample as the original's ``ScorePerformDataset.__getitem__`` returns it.

Segments and padded batches come from the one generator, :mod:`percepiano.synthetic`. Everything here is our
own code: it describes inputs, it does not reproduce the original.
"""
from __future__ import annotations

import numpy as np

from percepiano.synthetic import Segment, cycle_voices


# The batch of the recorded model fixtures: 5 segments of lengths 22, 15, 7, 4, 3 (deliberately not sorted).
# - "pickup": first measure is a single one-note beat (one-beat measure, one-note beat; its first two notes lie in
#   different beats, which trips the original's cal_length bug in span_beat_to_note_num,
#   docs/original.md#boundary-utilities), voices {1, 3} only (voice 2 empty) and two voice-0 notes, another
#   one-beat measure in the middle; starts at beat/measure 0.
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
    Segment(((2, 1, 2), (3, 2), (1, 1, 1, 2)), cycle_voices(15, (1, 2, 2, 1, 1)), first_beat=10, first_measure=3, name="offset"),
    Segment(((3, 1),), (3, 3, 3, 3), first_beat=17, first_measure=5, name="one_measure"),
)


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
