"""Rate a performance: features from MusicXML + MIDI, then a trained checkpoint's 19 ratings.

Checkpoints are read by :func:`percepiano.checkpoints.load_trained_model` (the one loader); this module checks
that the performance fits the score and that the ratings are numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..constants import FEATURE_SETS, LABEL_NAMES, LABELS

#: below this share of matched score notes the features are unreliable (the original silently kept 75 such segments)
LOW_MATCH_WARNING = 0.8
#: below this share the performance is taken to be of another piece (or not a performance of the score at all).
#: Measured on the dataset: genuine performances match >= 58 % of their score notes except one known bad one
#: (24 %); performances of *other* excerpts match 5-32 %, and 45 % for an excerpt that covers half the score.
MIN_MATCH = 0.5
#: at or above this many performed notes per score note the MIDI holds more than one performance of the excerpt
#: (a repeat, a longer passage). Measured on all 1202 performances of the dataset with this pipeline
#: (docs/features.md, "Performances that do not fit the score"): at most 1.742 (Schubert_D960_mv3_8bars_8_19:
#: 108 performed notes for 62 score notes); a performance played twice reaches 2.
MAX_NOTES_PER_SCORE_NOTE = 2.0
#: above this share of performed notes left unmatched, much of what was played is not in the score. Measured on
#: the same 1202 performances: at most 0.644 (Schubert_D960_mv3_8bars_0_19) among the 1201 that MIN_MATCH
#: accepts; the one above, 0.776, is the known bad one (Beethoven_WoO80_var25_8bars_19_14, 24 % matched). Below
#: 0.75 on purpose: with MIN_MATCH matched and fewer than MAX_NOTES_PER_SCORE_NOTE notes per score note, at most
#: 1 - 0.5 / 2 = 0.75 of the performed notes can be unmatched, so a higher bound would never warn on its own.
MAX_UNMATCHED_PERFORMED = 0.7
# the input columns a model of each input size reads: the full model, the performance-only baseline
FEATURE_COLUMNS = {len(cols): list(cols) for cols in FEATURE_SETS.values()}


@dataclass
class Rating:
    ratings: np.ndarray                   # (19,) in [0, 1] (label scale: mean rating / 7)
    match_rate: float
    n_score_notes: int
    n_perf_notes: int
    n_matched: int
    warnings: list = field(default_factory=list)           # about the performance (alignment)
    protocol_notes: list = field(default_factory=list)     # about the checkpoint (checkpoints.protocol_notes)

    def as_dict(self) -> dict:
        return {
            "ratings": [{"name": name, "category": cat, "low": lo, "high": hi, "value": float(v),
                         "rating_1_to_7": float(v * 7)}
                        for (name, cat, lo, hi), v in zip(LABELS, self.ratings)],
            "alignment": {"score_notes": self.n_score_notes, "performance_notes": self.n_perf_notes,
                          "matched_score_notes": self.n_matched, "match_rate": self.match_rate},
            "warnings": list(self.warnings),
            "checkpoint_protocol_notes": list(self.protocol_notes),
        }


def check_alignment(result, min_match: float = MIN_MATCH) -> list:
    """Raise for a performance that does not fit the score; return warnings for a weak or partial fit."""
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
    # A match rate alone cannot see a MIDI that holds the excerpt many times over: every score note finds a
    # partner in one of the repeats, and the rest of the performance ends up as performance-only rows.
    per_score_note = result.n_perf_notes / max(1, result.n_score_notes)
    if per_score_note >= MAX_NOTES_PER_SCORE_NOTE:
        warnings.append(
            f"the performance has {result.n_perf_notes} notes for {result.n_score_notes} score notes "
            f"({per_score_note:.1f} per score note; every performance of the dataset has fewer than "
            f"{MAX_NOTES_PER_SCORE_NOTE:g}): it seems to hold more than one "
            "performance of the excerpt (a repeat or a longer passage); cut the MIDI to one performance of the "
            "score, or the ratings describe a mixture the model never saw")
    unmatched = result.n_perf_notes - result.n_matched
    if result.n_perf_notes and unmatched / result.n_perf_notes > MAX_UNMATCHED_PERFORMED:
        warnings.append(
            f"{unmatched} of the {result.n_perf_notes} performed notes ({unmatched / result.n_perf_notes:.0%}, above "
            f"{MAX_UNMATCHED_PERFORMED:.0%}) matched no score note: much of what was played is not in the score, "
            "and the ratings are unreliable")
    return warnings


class RatingError(ValueError):
    """The features or the model's ratings are not numbers (NaN or infinite)."""


def rate(model, result) -> np.ndarray:
    """The 19 ratings (sigmoid outputs, in (0, 1]: mean rating / 7) of ``model`` for one extracted performance.

    Raises :class:`RatingError` when the features or the ratings are not finite: a NaN rating is never returned.
    """
    import torch
    x, lengths, locs = result.model_inputs
    x = x[:, :, FEATURE_COLUMNS[model.config.input_size]]
    if not torch.isfinite(x).all():
        bad = sorted(set(torch.nonzero(~torch.isfinite(x[0]))[:, 1].tolist()))
        raise RatingError(f"the extracted features are not finite (NaN or inf in input columns {bad[:10]}): "
                          "nothing to rate")
    with torch.no_grad():
        ratings = torch.sigmoid(model(x, lengths, locs))[0].double().numpy()
    bad = [name for name, v in zip(LABEL_NAMES, ratings) if not np.isfinite(v)]
    if bad:
        raise RatingError(f"the model produced non-finite ratings for {len(bad)} of {len(ratings)} labels "
                          f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): its weights are probably NaN "
                          "or infinite (a diverged training run); retrain or pick another checkpoint")
    return ratings
