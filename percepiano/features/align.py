"""Score-to-performance note alignment without a score MIDI or the C++ Nakamura tool.

1. parangonar's ``DualDTWNoteMatcher`` (pin: parangonar 3.4.0, the ``features`` extra) on note arrays built from
   *our* score notes (ids = row indices, onsets in quarters) and performance notes (ids = performance indices);
2. a monotone filter: matched non-grace notes are grouped by score onset; notes more than ``outlier_s`` from their
   group's median performed onset are dropped, then the groups that do not belong to a maximum-weight
   non-decreasing chain of medians (``slack_s`` tolerance) are dropped. The original onset cleaning
   (:func:`~.performance.clean_pairs`) turns one out-of-order pair into a cascade of unmatched notes, so its input
   must be monotone;
3. repair: an unmatched score note takes the nearest unused performed note of the same pitch within
   ``repair_window_s`` of a piecewise-linear score-position -> time map through the kept group medians.

The output (performance index or None per score row) then goes through the original's cleaning like the
Nakamura pairs did.
"""
from __future__ import annotations

import logging
import statistics

import numpy as np


class AlignerUnavailableError(RuntimeError):
    """parangonar is not installed."""


def _matcher():
    try:
        from parangonar.match.matchers import DualDTWNoteMatcher
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AlignerUnavailableError(
            "score-to-performance alignment needs parangonar: pip install 'percepiano[features]'") from exc
    for name in ("parangonar", "partitura"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return DualDTWNoteMatcher()


def note_arrays(score_notes: list, perf_notes: list) -> tuple:
    s = np.zeros(len(score_notes), dtype=[("onset_beat", "f8"), ("duration_beat", "f8"), ("onset_quarter", "f8"),
                                           ("duration_quarter", "f8"), ("duration_div", "i8"), ("pitch", "i4"),
                                           ("is_grace", "?"), ("id", "U16")])
    for i, n in enumerate(score_notes):
        q = n.pos / n.divisions
        d = n.duration / n.divisions
        s[i] = (q, d, q, d, n.duration, n.pitch, n.is_grace, f"s{i}")
    p = np.zeros(len(perf_notes), dtype=[("onset_sec", "f8"), ("duration_sec", "f8"), ("pitch", "i4"),
                                          ("velocity", "i4"), ("id", "U16")])
    for j, m in enumerate(perf_notes):
        p[j] = (m.start, m.end - m.start, m.pitch, m.velocity, f"p{j}")
    return s, p


def dtw_pairs(score_notes: list, perf_notes: list) -> list:
    """Raw DualDTW matches: performance index (or None) per score row."""
    pairs: list = [None] * len(score_notes)
    if not score_notes or not perf_notes:
        return pairs
    s, p = note_arrays(score_notes, perf_notes)
    if not np.any(~s["is_grace"]):
        return pairs
    for a in _matcher()(s, p):
        if a.get("label") == "match":
            pairs[int(a["score_id"][1:])] = int(a["performance_id"][1:])
    return pairs


def monotone_filter(score_notes: list, perf_notes: list, pairs: list, slack_s: float = 0.05,
                    outlier_s: float = 0.5) -> list:
    pairs = list(pairs)
    groups: dict = {}
    for i, p in enumerate(pairs):
        if p is not None and not score_notes[i].is_grace:
            groups.setdefault(score_notes[i].pos, []).append(i)
    keys = sorted(groups)
    medians = []
    for k in keys:
        med = statistics.median(perf_notes[pairs[i]].start for i in groups[k])
        for i in groups[k]:
            if abs(perf_notes[pairs[i]].start - med) > outlier_s:
                pairs[i] = None
        groups[k] = [i for i in groups[k] if pairs[i] is not None]
        medians.append(med)
    weights = [len(groups[k]) for k in keys]
    # maximum-weight chain of non-decreasing medians (O(n^2); a few hundred onsets per excerpt)
    best = list(weights)
    back = [-1] * len(keys)
    for b in range(len(keys)):
        for a in range(b):
            if medians[b] >= medians[a] - slack_s and best[a] + weights[b] > best[b]:
                best[b], back[b] = best[a] + weights[b], a
    keep = set()
    if keys:
        b = max(range(len(keys)), key=lambda k: best[k])
        while b >= 0:
            keep.add(b)
            b = back[b]
    for idx, k in enumerate(keys):
        if idx not in keep:
            for i in groups[k]:
                pairs[i] = None
    return pairs


def repair(score_notes: list, perf_notes: list, pairs: list, window_s: float = 0.3) -> list:
    pairs = list(pairs)
    groups: dict = {}
    for i, p in enumerate(pairs):
        if p is not None and not score_notes[i].is_grace:
            groups.setdefault(score_notes[i].pos / score_notes[i].divisions, []).append(perf_notes[p].start)
    if len(groups) < 2:
        return pairs
    xs = sorted(groups)
    ys = np.maximum.accumulate([statistics.median(groups[x]) for x in xs])
    used = {p for p in pairs if p is not None}
    by_pitch: dict = {}
    for j, m in enumerate(perf_notes):
        by_pitch.setdefault(m.pitch, []).append(j)
    for i, n in enumerate(score_notes):
        if pairs[i] is not None:
            continue
        expected = float(np.interp(n.pos / n.divisions, xs, ys))
        cands = [j for j in by_pitch.get(n.pitch, []) if j not in used and abs(perf_notes[j].start - expected) < window_s]
        if cands:
            j = min(cands, key=lambda j: abs(perf_notes[j].start - expected))
            pairs[i] = j
            used.add(j)
    return pairs


def align(score_notes: list, perf_notes: list) -> list:
    """Performance index (or None) per score row: DualDTW + monotone filter + repair."""
    pairs = dtw_pairs(score_notes, perf_notes)
    pairs = monotone_filter(score_notes, perf_notes, pairs)
    return repair(score_notes, perf_notes, pairs)
