"""Assembly of the 101-dim model input: performance-only rows, ``*_unnorm`` copies, z-scoring, column layout.

Written from the behaviour of the original ``ScorePerformPairData`` (``align_different_length``,
``insert_unaligned_midi_features``) and ``FeatureConverter``. Quirk Q-INSERT: the insert position of a
performance-only note is counted over *matched* pairs but used as a row index, so it lands too early whenever
unmatched score notes come before it; ``fix_insert_index=True`` uses the true row instead.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

#: per-row keys whose inserted rows copy the row they are inserted before (the last row at the end)
COPY_KEYS = ("beat_position", "xml_position", "measure_length")
UNNORM_KEYS = ("midi_pitch", "duration", "beat_importance", "measure_length", "following_rest")
LOCATION_KEYS = ("beat", "measure", "section", "voice")


@lru_cache(maxsize=1)
def norm_stats() -> dict:
    """The original normalisation statistics and column layout (package data ``norm_stats.json``)."""
    text = resources.files(__package__).joinpath("norm_stats.json").read_text(encoding="utf-8")
    return json.loads(text)


def feature_names() -> list:
    names = []
    for key, (a, b) in norm_stats()["key_to_dim"].items():
        names += [key] if b - a == 1 else [f"{key}[{i}]" for i in range(b - a)]
    return names


def insert_positions(pairs: list, n_perf: int, fix_insert_index: bool = False) -> tuple:
    """(row index per performance-only note, their performance indices), highest performance index first.

    ``pairs[i]`` is the performance index matched to score row ``i`` or None.
    """
    matched = [p for p in pairs if p is not None]
    matched_set = set(matched)
    unmatched = [j for j in range(n_perf - 1, -1, -1) if j not in matched_set]
    if fix_insert_index:
        rows = [i for i, p in enumerate(pairs) if p is not None]
    out = []
    for j in unmatched:
        k = next((k for k, m in enumerate(matched) if j < m), len(matched))
        if fix_insert_index:
            k = rows[k] if k < len(rows) else len(pairs)
        out.append(k)
    return out, unmatched


def _insert(values: list, targets: list, fill) -> list:
    """Sequential list inserts as the original does; ``fill='copy'`` copies the row at the target (or the last)."""
    values = list(values)
    for t in targets:
        if fill == "copy":
            item = values[-1] if t >= len(values) else values[t]
        elif isinstance(values[0], list):
            item = [fill] * len(values[0])
        else:
            item = fill
        values.insert(t, item)
    return values


def assemble(score_feats: dict, locations: dict, perf_feats: dict, pairs: list, perf_notes: list,
             fix_insert_index: bool = False) -> dict:
    """Merge score and performance features, insert performance-only rows; returns per-row feature lists.

    ``score_feats`` / ``perf_feats``: per-score-note lists (or per-segment scalars/vectors), original key names.
    ``pairs``: performance index per score row (None if unmatched). ``perf_notes``: the performance notes.
    """
    n_score = len(pairs)
    targets, sources = insert_positions(pairs, len(perf_notes), fix_insert_index)
    merged: dict = {}
    for key, val in score_feats.items():
        if key in COPY_KEYS:
            merged[key] = _insert(val, targets, "copy")
        elif isinstance(val, list) and len(val) == n_score:
            merged[key] = _insert(val, targets, 0)
        else:
            merged[key] = val
    for key, val in perf_feats.items():  # performance last: its qpm_primo wins
        merged[key] = _insert(val, targets, 0) if isinstance(val, list) and len(val) == n_score else val
    raw = {"mmidi_pitch": [n.pitch for n in perf_notes], "mmidi_velocity": [n.velocity for n in perf_notes],
           "mmidi_start_time": [n.start for n in perf_notes], "mmidi_end_time": [n.end for n in perf_notes]}
    for key, vals in raw.items():
        col = [vals[p] if p is not None else 0 for p in pairs]
        for t, s in zip(targets, sources):
            col.insert(t, vals[s])
        merged[key] = col
    locs = {k: (_insert(v, targets, 0) if k == "voice" else _insert(v, targets, "copy")) for k, v in locations.items()}
    kind = [0 if p is not None else 1 for p in pairs]
    for t in targets:
        kind.insert(t, 2)
    for key in UNNORM_KEYS:
        merged[key + "_unnorm"] = list(merged[key])
    merged["num_notes"] = n_score + len(targets)
    return {"features": merged, "locations": locs, "note_kind": kind}


def to_matrix(features: dict, normalize: bool = True) -> np.ndarray:
    """The (n, 101) float64 input matrix in the original's column order, z-scored when ``normalize``."""
    stats = norm_stats()
    n = features["num_notes"]
    out = np.zeros((n, 101), dtype=np.float64)
    for key, (a, b) in stats["key_to_dim"].items():
        val = features[key]
        if not isinstance(val, list) or len(val) != n:  # per-segment constants are broadcast
            val = [val] * n
        arr = np.asarray(val, dtype=np.float64).reshape(n, b - a)
        if normalize and key in stats["normalized"]:
            s = stats["normalized"][key]
            arr = (arr - s["mean"]) / s["std"]
        out[:, a:b] = arr
    return out
