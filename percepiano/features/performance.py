"""Score-aligned performance features (dims 3 and 77-91) from score notes, performance notes and note pairs.

Written from the behaviour of the original ``PerformExtractor``, ``xml_midi_matching`` (pair cleaning) and
``feature_utils`` (tempo grids, longer-level dynamics). Also holds the *original-pairs* path used as a test
oracle: XML notes → score-MIDI notes (``match_xml_to_midi``) → Nakamura ``*_infer_corresp.txt`` rows →
performance notes (``match_score_pair2perform``).

Quirks kept: the onset cleaning cascades (Q-CLEAN: one out-of-order pair can unmatch a run of notes; the last
chord group never anchors a tempo); longer-level dynamics (Q-LASTGROUP: the last group uses (sum+max)/2/n and the
group index only updates on a close); unmatched score notes carry the previous velocity and pedal values.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from ._search import binary_index
from .midi import pedal_sigmoid


class AlignmentError(ValueError):
    """Too few matched notes to compute tempi (the original raised IndexError and dropped the performance)."""


# ---------------------------------------------------------------------------------------------------------------
# the original-pairs path (test oracle)

def match_score_midi(xml_notes: list, midi_notes: list) -> list:
    """XML note -> score-MIDI note index (or None), within 0.1 s of the XML tempo-map time (match_xml_to_midi)."""
    candidates = []
    for n in xml_notes:
        start, thr = n.time_position, 0.1
        if n.preceded_by_grace:
            start += 0.5
            thr = 0.6
        elif n.is_arpeggiate:
            thr = 0.5
        candidates.append([i for i, m in enumerate(midi_notes) if abs(m.start - start) < thr and m.pitch == n.pitch])
    out: list = []
    for cands in candidates:
        if len(cands) == 1:
            out.append(cands[0])
        elif len(cands) > 1:
            out.append(next((c for c in cands if c not in out), None))
        else:
            out.append(None)
    return out


def read_corresp(path: str | Path) -> list:
    """Rows of a Nakamura ``*_infer_corresp.txt`` as (alignOntime, alignPitch, refOntime, refPitch)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if len(row) == 1:
                continue
            rows.append((float(row[1]), int(row[3]), float(row[6]), int(row[8])))
    return rows


def pairs_from_corresp(xml_notes: list, score_midi_match: list, score_midi_notes: list, corresp: list,
                       perf_notes: list) -> list:
    """Performance note index per XML note through the score MIDI and the corresp rows (first hits win)."""
    out = []
    for n, mi in zip(xml_notes, score_midi_match):
        if mi is None:
            out.append(None)
            continue
        ref = score_midi_notes[mi]
        row = next((r for r in corresp if abs(r[2] - ref.start) < 0.05 and r[3] == ref.pitch), None)
        if row is None:
            out.append(None)
            continue
        out.append(next((j for j, p in enumerate(perf_notes) if abs(p.start - row[0]) < 0.05 and p.pitch == row[1]),
                        None))
    return out


# ---------------------------------------------------------------------------------------------------------------
# onset cleaning (make_available_xml_midi_positions / make_average_onset_cleaned_pair / get_average_onset_time)

@dataclass
class Anchor:
    """A cleaned chord group: score position, mean performed onset, divisions."""
    pos: float
    time: float
    divisions: int
    index: int  # row of its first note


def _chord_mean(group: list, threshold: float = 0.2) -> tuple:
    notes = list(group)
    total = 0.0
    for g in notes:
        total += g["time"]
        if g["arp"]:
            threshold = 1
    mean = total / len(notes)
    devs = [abs(g["time"] - mean) for g in notes]
    if max(devs) > threshold:
        if len(notes) == 2:
            del notes[0:2]
        else:
            del notes[devs.index(max(devs))]
            notes, mean = _chord_mean(notes, threshold)
    return notes, mean


def clean_pairs(xml_notes: list, pairs: list, perf_notes: list, maximum_qpm: float = 600) -> tuple:
    """(anchors, cleaned pairs): flagged notes become unmatched everywhere."""
    cands = []
    for i, p in enumerate(pairs):
        if p is None:
            continue
        n = xml_notes[i]
        if n.is_grace:
            continue
        cands.append({"pos": n.pos, "time": perf_notes[p].start, "div": n.divisions, "index": i,
                      "arp": n.is_arpeggiate})
    anchors: list = []
    chord: list = []
    flagged: list = []
    prev_pos, prev_time, prev_i = -math.inf, -math.inf, 0
    for i, c in enumerate(cands):
        pos, t = c["pos"], c["time"]
        if pos > prev_pos >= 0:
            min_gap = (pos - prev_pos) / c["div"] / maximum_qpm * 60 + 0.01
        else:
            min_gap = 0
        if pos > prev_pos and t > prev_time + min_gap:
            if chord:
                first = chord[0]
                kept, mean = _chord_mean(chord)
                if not anchors or mean > anchors[-1].time + (
                        (first["pos"] - anchors[-1].pos) / first["div"] / maximum_qpm * 60 + 0.01):
                    anchors.append(Anchor(first["pos"], mean, first["div"], first["index"]))
                    flagged += [g["index"] for g in chord if not any(g is k for k in kept)]
                else:
                    flagged += [g["index"] for g in chord]
            chord = [c]
            prev_pos, prev_time, prev_i = pos, t, i
        elif pos == prev_pos:
            chord.append(c)
        else:
            flagged += [cands[prev_i]["index"], c["index"]]
    cleaned = list(pairs)
    for i in flagged:
        cleaned[i] = None
    return anchors, cleaned


# ---------------------------------------------------------------------------------------------------------------
# tempo grids and features

@dataclass
class TempoSegment:
    pos: float
    qpm: float
    time: float


def tempo_segments(grid: list, anchors: list) -> list:
    """Tempo per grid interval between the anchors at or before each grid point (cal_tempo_by_positions)."""
    if not anchors:
        raise AlignmentError("no matched score note survived the onset cleaning; cannot compute tempi")
    anchor_pos = [a.pos for a in anchors]
    out = []
    prev_end = 0
    for i in range(len(grid) - 1):
        cur = anchors[binary_index(anchor_pos, grid[i])]
        if cur.pos < prev_end:
            continue
        nxt = anchors[binary_index(anchor_pos, grid[i + 1])]
        if nxt.pos == prev_end:
            continue
        if cur is nxt:
            continue
        qpm = (nxt.pos - cur.pos) / (nxt.time - cur.time) / cur.divisions * 60
        out.append(TempoSegment(cur.pos, qpm, cur.time))
        prev_end = nxt.pos
    if not out:
        raise AlignmentError("fewer than two usable tempo anchors; cannot compute tempi")
    return out


def _segment_for(segments: list, pos: float) -> TempoSegment:
    return segments[binary_index([s.pos for s in segments], pos)]


def longer_level_dynamics(velocity: list, matched: list, locations: list, fix: bool = False) -> list:
    """(mean+max)/2 of matched velocities per beat/measure group (get_longer_level_dynamics), quirks included.

    ``fix`` (quirk fix ``longer_dynamics``): the first group starts at the first matched note's index and the last
    group uses (mean+max)/2 too.
    """
    out = [0] * len(velocity)
    prev_loc, start = 0, 0
    if fix:
        first = next((i for i, ok in enumerate(matched) if ok), None)
        if first is not None:
            prev_loc, start = locations[first], 0
    group: list = []
    for i, ok in enumerate(matched):
        if not ok:
            continue
        loc = locations[i]
        if loc > prev_loc and group:
            value = (sum(group) / len(group) + max(group)) / 2
            for j in range(start, i):
                out[j] = value
            group = []
            prev_loc, start = loc, i
        group.append(velocity[i])
    if group:
        if fix:
            value = (sum(group) / len(group) + max(group)) / 2
        else:
            value = (sum(group) + max(group)) / 2 / len(group)  # Q-LASTGROUP
        for j in range(start, len(velocity)):
            out[j] = value
    return out


def performance_features(xml_notes: list, locations: dict, grids: dict, perf_notes: list, pairs: list,
                         anchors: list, fixes=frozenset()) -> dict:
    """Per-score-note performance features (original key names); ``pairs`` are the cleaned pairs."""
    beat = tempo_segments(grids["beat"], anchors)
    measure = tempo_segments(grids["measure"], anchors)
    section = tempo_segments(grids["section"], anchors)
    f: dict = {"beat_tempo": [], "measure_tempo": [], "section_tempo": [], "velocity": [], "onset_deviation": [],
               "articulation": [], "pedal_refresh_time": [], "pedal_cut_time": [], "pedal_at_start": [],
               "pedal_at_end": [], "soft_pedal": [], "pedal_refresh": [], "pedal_cut": [], "align_matched": []}
    prev = {"velocity": 64, "pedal_at_start": 0, "pedal_at_end": 0, "soft_pedal": 0, "pedal_cut": 0}
    beat_pos = [s.pos for s in beat]
    for n, p in zip(xml_notes, pairs):
        seg = beat[binary_index(beat_pos, n.pos)]
        f["beat_tempo"].append(math.log10(seg.qpm))
        f["measure_tempo"].append(math.log10(_segment_for(measure, n.pos).qpm))
        f["section_tempo"].append(math.log10(_segment_for(section, n.pos).qpm))
        if p is None:
            f["align_matched"].append(0)
            for key in prev:
                f[key].append(prev[key])
            f["onset_deviation"].append(0)
            f["articulation"].append(0)
            f["pedal_refresh"].append(0)
            f["pedal_refresh_time"].append(0)
            f["pedal_cut_time"].append(0)
            continue
        m = perf_notes[p]
        f["align_matched"].append(1)
        prev["velocity"] = m.velocity
        prev["pedal_at_start"] = pedal_sigmoid(m.pedal_at_start)
        prev["pedal_at_end"] = pedal_sigmoid(m.pedal_at_end)
        prev["soft_pedal"] = pedal_sigmoid(m.soft_pedal)
        prev["pedal_cut"] = pedal_sigmoid(m.pedal_cut)
        for key in prev:
            f[key].append(prev[key])
        f["pedal_refresh"].append(pedal_sigmoid(m.pedal_refresh))
        f["pedal_refresh_time"].append(m.pedal_refresh_time)
        f["pedal_cut_time"].append(m.pedal_cut_time)
        div = n.divisions
        passed = n.pos - seg.pos
        actual = (m.start - seg.time) / 60 * seg.qpm * div
        f["onset_deviation"].append((actual - passed) / div)
        if n.duration == 0 or n.is_overlapped:
            ratio = 1
        else:
            in_tempo = n.duration / div / seg.qpm * 60
            played = in_tempo if n.is_trill else m.end - m.start
            ratio = played / in_tempo
            if played == 0:
                ratio = 1
        f["articulation"].append(math.log10(ratio))
    view = min(10, len(beat))
    total = 0
    for s in beat[:view]:
        total += s.qpm
    f["qpm_primo"] = math.log10(total / view)
    fix = "longer_dynamics" in fixes
    f["beat_dynamics"] = longer_level_dynamics(f["velocity"], f["align_matched"], locations["beat"], fix)
    f["measure_dynamics"] = longer_level_dynamics(f["velocity"], f["align_matched"], locations["measure"], fix)
    return f
