"""Rate a performance: features from MusicXML + MIDI, then a trained checkpoint's 19 ratings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import FEATURE_SETS, LABELS

#: below this share of matched score notes the features are unreliable (the original silently kept 75 such segments)
LOW_MATCH_WARNING = 0.8
#: below this share the performance is taken to be of another piece (or not a performance of the score at all).
#: Measured on the dataset: genuine performances match >= 58 % of their score notes except one known bad one
#: (24 %); performances of *other* excerpts match 5-32 %, and 45 % for an excerpt that covers half the score.
MIN_MATCH = 0.5
# the input columns a model of each input size reads: the full model, the performance-only baseline
FEATURE_COLUMNS = {len(cols): list(cols) for cols in FEATURE_SETS.values()}


class CheckpointError(ValueError):
    """The checkpoint cannot be used for prediction."""


@dataclass
class Rating:
    ratings: np.ndarray                   # (19,) in [0, 1] (label scale: mean rating / 7)
    match_rate: float
    n_score_notes: int
    n_perf_notes: int
    n_matched: int
    warnings: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "ratings": [{"name": name, "category": cat, "low": lo, "high": hi, "value": float(v),
                         "rating_1_to_7": float(v * 7)}
                        for (name, cat, lo, hi), v in zip(LABELS, self.ratings)],
            "alignment": {"score_notes": self.n_score_notes, "performance_notes": self.n_perf_notes,
                          "matched_score_notes": self.n_matched, "match_rate": self.match_rate},
            "warnings": list(self.warnings),
        }


def load_model(path: str | Path):
    """Model from a ``percepiano train`` checkpoint (:mod:`percepiano.checkpoints`; no pickle)."""
    from ..checkpoints import load_checkpoint, model_from_checkpoint
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        ck = load_checkpoint(path)  # its messages name the file
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        model = model_from_checkpoint(ck)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.eval()
    if model.config.input_size not in FEATURE_COLUMNS:
        raise CheckpointError(f"{path}: model input size {model.config.input_size} is neither 101 nor 9")
    if model.config.num_labels != len(LABELS):
        raise CheckpointError(f"{path}: model predicts {model.config.num_labels} labels, expected {len(LABELS)}")
    return model


def check_alignment(result, min_match: float = MIN_MATCH) -> list:
    """Raise for a performance that does not fit the score; return warnings for a weak fit."""
    from .performance import AlignmentError
    rate = result.match_rate
    if rate < min_match:
        raise AlignmentError(
            f"only {result.n_matched} of {result.n_score_notes} score notes ({rate:.0%}) matched a performed note: "
            "the MIDI file does not look like a performance of this score (lower --min-match to rate it anyway)")
    warnings = []
    if rate < LOW_MATCH_WARNING:
        warnings.append(f"only {rate:.0%} of the score notes matched a performed note (below "
                        f"{LOW_MATCH_WARNING:.0%}): the features, and so the ratings, are unreliable")
    return warnings


def rate(model, result) -> np.ndarray:
    """The 19 ratings (sigmoid outputs, in (0, 1]: mean rating / 7) of ``model`` for one extracted performance."""
    import torch
    x, lengths, locs = result.model_inputs
    x = x[:, :, FEATURE_COLUMNS[model.config.input_size]]
    with torch.no_grad():
        logits = model(x, lengths, locs)
    return torch.sigmoid(logits)[0].double().numpy()
