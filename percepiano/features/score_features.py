"""Score-side features (77 of the 101 input dims) and the hierarchy indices, from a parsed :class:`Score`.

Written from the behaviour of the original ``ScoreExtractor`` and the helpers in ``feature_utils`` / ``xml_utils``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import directions as dirs
from ._search import binary_index
from .musicxml import Score, UnsupportedScoreError, beat_positions

COMPOSERS = ("Bach", "Balakirev", "Beethoven", "Brahms", "Chopin", "Debussy", "Glinka", "Haydn", "Liszt",
             "Mozart", "Prokofiev", "Rachmaninoff", "Ravel", "Schubert", "Schumann", "Scriabin")
#: The original m2pf scripts pass "Schubert" for every segment; the model never saw anything else.
DEFAULT_COMPOSER = "Schubert"


@dataclass
class ScoreFeatures:
    """Per-score-note feature lists (original key names) plus grids; rows follow ``score.notes``."""
    score: Score
    features: dict
    locations: dict          # beat / measure / section / voice index per note
    beat_grid: list
    measure_grid: list
    section_grid: list


def beat_importance(beat_position: float, numerator: int) -> float:
    """Metrical weight (feature_utils.cal_beat_importance): exact float tests on the fraction of the bar."""
    b = beat_position
    if b == 0:
        return 4
    if b == 0.5 and numerator in (2, 4, 6, 12):
        return 3
    if abs(b - (1 / 3)) < 0.001 and numerator in (3, 9):
        return 2
    if (b * 4) % 1 == 0 and numerator in (2, 4):
        return 1
    if (b * 5) % 1 == 0 and numerator == 5:
        return 2
    if (b * 6) % 1 == 0 and numerator in (3, 6, 12):
        return 1
    if (b * 8) % 1 == 0 and numerator in (2, 4):
        return 0.5
    if (b * 9) % 1 == 0 and numerator == 9:
        return 1
    if (b * 12) % 1 == 0 and numerator in (3, 6, 12):
        return 0.5
    if numerator == 7:
        if abs(b * 7 - 2) < 0.001 or abs(b * 5 - 2) < 0.001:
            return 2
        return 0
    return 0


def pitch_vector(pitch: int) -> list:
    vec = [0] * 13
    vec[0] = ((pitch // 12) - 1 - 4) / 4
    vec[pitch % 12 + 1] = 1
    return vec


def time_signature_vector(numerator: int, denominator: int) -> list:
    num = [0] * 5
    den = [0] * 4
    den[3 if denominator == 32 else (2, 4, 8, 16).index(denominator)] = 1
    hot = {2: (0,), 3: (1,), 4: (0, 2), 6: (0, 3), 9: (1, 3), 12: (0, 2, 3), 24: (0, 2, 3)}.get(numerator, (4,))
    for i in hot:
        num[i] = 1
    return num + den


def composer_vector(name: str = DEFAULT_COMPOSER) -> list:
    vec = [0] * (len(COMPOSERS) + 1)
    vec[COMPOSERS.index(name) if name in COMPOSERS else len(COMPOSERS)] = 1
    return vec


def make_index_continuous(indices: list) -> list:
    """Squeeze out empty beats/measures (feature_utils.make_index_continuous); the running start is 0."""
    prev, shift, out = 0, 0, []
    for idx in indices:
        if idx - prev > 1:
            shift -= (idx - prev) - 1
        prev = idx
        out.append(idx + shift)
    return out


def total_length(notes: list) -> float:
    """The original's backward scan for the score length (xml_utils.cal_total_xml_length); note 0 is never seen."""
    latest_end = 0
    latest_start = 0
    for i in range(1, len(notes)):
        n = notes[-i]
        end = n.pos + n.duration
        if end > latest_end:
            latest_end, latest_start = end, n.pos
        elif end < latest_start - n.duration * 4:
            break
    return latest_end


def section_positions(notes: list) -> list:
    """A new section wherever the absolute tempo word or the set of active relative tempi changes."""
    out = []
    prev_abs, prev_rel = None, None
    for n in notes:
        rel = n.tempo_relative
        same_rel = prev_rel is not None and len(rel) == len(prev_rel) and all(a is b for a, b in zip(rel, prev_rel))
        if prev_abs != n.tempo_absolute or not same_rel:
            out.append(n.pos)
            prev_abs, prev_rel = n.tempo_absolute, rel
    out.append(notes[-1].pos + 0.1)
    return out


def extract_score_features(score: Score, composer: str = DEFAULT_COMPOSER, fixes=frozenset()) -> ScoreFeatures:
    """``fixes``: quirk-fix names (:data:`percepiano.features.quirks.FIXES`); ``fp_order`` applies here."""
    notes = score.notes
    dirs.apply_directions(notes, score.directions, score.time_signatures, sort_absolute="fp_order" in fixes)
    measure_grid = score.measure_positions
    beat_grid = beat_positions(score)
    section_grid = section_positions(notes)

    def bar(n):
        mi = n.measure_index
        if mi + 1 < len(measure_grid):
            length = measure_grid[mi + 1] - measure_grid[mi]
        else:
            if mi == 0:
                raise UnsupportedScoreError("a one-measure score is not supported")
            length = measure_grid[mi] - measure_grid[mi - 1]  # Q-LASTBAR: the last bar uses the previous length
        if length == 0:
            raise UnsupportedScoreError("a measure of length 0")
        return measure_grid[mi], length

    total = total_length(notes)
    if total == 0:
        raise UnsupportedScoreError("the score has zero length")
    dyn_table, tempo_table = dirs.DYNAMIC_TABLE, dirs.TEMPO_TABLE
    f: dict = {k: [] for k in ("midi_pitch", "duration", "beat_importance", "measure_length", "following_rest",
                               "distance_from_abs_dynamic", "distance_from_recent_tempo", "beat_position",
                               "xml_position", "grace_order", "preceded_by_grace_note", "followed_by_fermata_rest",
                               "pitch", "tempo", "dynamic", "time_sig_vec", "slur_beam_vec", "notation")}
    for n in notes:
        start, length = bar(n)
        bpos = (n.pos - start) / length
        div = n.divisions
        f["midi_pitch"].append(n.pitch)
        f["duration"].append(n.duration / div)
        f["beat_position"].append(bpos)
        f["beat_importance"].append(beat_importance(bpos, n.time_signature.numerator))
        f["measure_length"].append(length / div)
        f["following_rest"].append(n.following_rest / div)
        f["distance_from_abs_dynamic"].append((n.pos - n.dyn_absolute_pos) / div)
        f["distance_from_recent_tempo"].append((n.pos - n.recent_tempo_pos) / div)
        f["xml_position"].append(n.pos / total)
        f["grace_order"].append(n.grace_order)
        f["preceded_by_grace_note"].append(int(n.preceded_by_grace))
        f["followed_by_fermata_rest"].append(int(n.followed_by_fermata_rest))
        f["pitch"].append(pitch_vector(n.pitch))
        f["tempo"].append(dirs.embed(dirs.flatten_words(n.tempo_absolute, n.tempo_relative), tempo_table, 5))
        f["dynamic"].append(dirs.embed(dirs.flatten_words(n.dyn_absolute, n.dyn_relative), dyn_table, 4))
        f["time_sig_vec"].append(time_signature_vector(n.time_signature.numerator, n.time_signature.denominator))
        f["slur_beam_vec"].append([int(n.slur_start), int(n.slur_continue), int(n.slur_stop),
                                   int(n.beam_start), int(n.beam_continue), int(n.beam_stop)])
        f["notation"].append([int(n.is_trill), int(n.is_tenuto), int(n.is_accent), int(n.is_staccato),
                              int(n.is_fermata), int(n.is_arpeggiate), int(n.is_strong_accent), int(n.is_cue),
                              int(n.is_slash)])
    first_words = dirs.flatten_words(notes[0].tempo_absolute, notes[0].tempo_relative)
    f["tempo_primo"] = dirs.embed(first_words, tempo_table, 5)[0:2] if first_words else [0, 0]
    f["composer_vec"] = composer_vector(composer)
    f["qpm_primo"] = math.log10(notes[0].qpm)  # score-side value; the performance's replaces it
    locations = {
        "beat": make_index_continuous([binary_index(beat_grid, n.pos) for n in notes]),
        "measure": make_index_continuous([binary_index(measure_grid, n.pos) for n in notes]),
        "section": [binary_index(section_grid, n.pos) for n in notes],
        "voice": [n.voice for n in notes],
    }
    return ScoreFeatures(score, f, locations, beat_grid, measure_grid, section_grid)
