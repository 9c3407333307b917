"""End-to-end feature extraction: MusicXML + performance MIDI -> (n, 101) model input and note locations."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .assemble import LOCATION_KEYS, assemble, to_matrix
from .midi import Performance, read_midi
from .musicxml import read_musicxml
from .quirks import check_fixes
from .performance import (clean_pairs, match_score_midi, pairs_from_corresp, performance_features,
                          read_corresp)
from .score_features import ScoreFeatures, extract_score_features


@dataclass
class FeatureResult:
    """The model input of one performance, plus what it took to get there."""
    x: np.ndarray                 # (n, 101) float32, normalised as the model expects
    raw: np.ndarray               # (n, 101) float64, before z-scoring
    locations: dict               # beat / measure / section / voice: (n,) int64
    note_kind: np.ndarray         # 0 matched score note, 1 unmatched score note, 2 performance-only note
    n_score_notes: int
    n_perf_notes: int
    n_matched: int                # score notes matched after cleaning
    n_aligned: int                # score notes the aligner paired (before cleaning)
    features: dict = field(repr=False, default_factory=dict)
    pairs: list = field(repr=False, default_factory=list)

    @property
    def match_rate(self) -> float:
        """Share of score notes matched to a performed note after cleaning."""
        return self.n_matched / self.n_score_notes if self.n_score_notes else 0.0

    @property
    def model_inputs(self) -> tuple:
        """(x, lengths, note_locations) batched as (1, n, ...) torch tensors for ``PercePianoModel``."""
        import torch
        x = torch.from_numpy(self.x).unsqueeze(0)
        lengths = torch.tensor([self.x.shape[0]], dtype=torch.int64)
        locs = {k: torch.from_numpy(v.astype(np.int64)).unsqueeze(0) for k, v in self.locations.items()}
        return x, lengths, locs


def load_score(path: str | Path, fixes=frozenset()) -> ScoreFeatures:
    """Parse a MusicXML file and compute its score features (reusable across performances of the piece)."""
    fixes = check_fixes(fixes)
    return extract_score_features(read_musicxml(path, fixes), fixes=fixes)


def _performance(performance, fixes: frozenset) -> Performance:
    if isinstance(performance, Performance):
        return performance
    return read_midi(performance, pedal_release_fix="pedal_release" in fixes)


def _finish(sf: ScoreFeatures, perf: Performance, pairs: list, fixes: frozenset = frozenset()) -> FeatureResult:
    notes = sf.score.notes
    anchors, cleaned = clean_pairs(notes, pairs, perf.notes)
    grids = {"beat": sf.beat_grid, "measure": sf.measure_grid, "section": sf.section_grid}
    pf = performance_features(notes, sf.locations, grids, perf.notes, cleaned, anchors, fixes=fixes)
    out = assemble(sf.features, sf.locations, pf, cleaned, perf.notes, fix_insert_index="insert_index" in fixes)
    raw = to_matrix(out["features"], normalize=False)
    x = to_matrix(out["features"], normalize=True).astype(np.float32)
    locs = {k: np.asarray(out["locations"][k], dtype=np.int64) for k in LOCATION_KEYS}
    return FeatureResult(x=x, raw=raw, locations=locs, note_kind=np.asarray(out["note_kind"], dtype=np.int8),
                         n_score_notes=len(notes), n_perf_notes=len(perf.notes),
                         n_matched=sum(p is not None for p in cleaned),
                         n_aligned=sum(p is not None for p in pairs), features=out["features"], pairs=cleaned)


def extract_with_corresp(score: str | Path | ScoreFeatures, performance: str | Path | Performance,
                         score_midi: str | Path | Performance, corresp: str | Path,
                         score_midi_match: list | None = None) -> FeatureResult:
    """The original pipeline's path, fed its own alignment (score MIDI + Nakamura corresp file): a test oracle."""
    sf = score if isinstance(score, ScoreFeatures) else load_score(score)
    perf = performance if isinstance(performance, Performance) else read_midi(performance)
    smidi = score_midi if isinstance(score_midi, Performance) else read_midi(score_midi)
    if score_midi_match is None:
        score_midi_match = match_score_midi(sf.score.notes, smidi.notes)
    pairs = pairs_from_corresp(sf.score.notes, score_midi_match, smidi.notes, read_corresp(corresp), perf.notes)
    return _finish(sf, perf, pairs)


def extract(score: str | Path | ScoreFeatures, performance: str | Path | Performance,
            fixes=frozenset()) -> FeatureResult:
    """MusicXML + performance MIDI -> model input, aligned with our aligner (needs the ``features`` extra).

    ``fixes``: quirk-fix names (:data:`percepiano.features.quirks.FIXES`); the default reproduces the original.
    Score-side fixes only apply when ``score`` is a path (a :class:`ScoreFeatures` is used as it was loaded), and
    the pedal fix only when ``performance`` is a path.
    """
    from .align import align
    fixes = check_fixes(fixes)
    sf = score if isinstance(score, ScoreFeatures) else load_score(score, fixes)
    perf = _performance(performance, fixes)
    pairs = align(sf.score.notes, perf.notes)
    return _finish(sf, perf, pairs, fixes)
