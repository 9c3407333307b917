"""Parity of the re-implemented feature pipeline against the original's processed dataset.

Three checks (docs/features.md):

* ``score``: every excerpt's score-note rows, in the 76 score columns (0-76 less ``qpm_primo``), the 5
  ``*_unnorm`` copies and the 4 index arrays;
* ``corresp``: the whole 101-dim matrix of every segment, fed the original's own score-MIDI/performance pairs
  (``*_infer_corresp.txt`` + the score MIDI), against the stored matrix;
* ``aligner``: our aligner's final pairs against the original's final pairs, and per-feature agreement.

"Identical" means ``|ours - ref| <= 1e-4 * max(1, |ref|)`` (the npz is float32) in every compared column.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .assemble import norm_stats, to_matrix

#: relative tolerance of "identical" (float32 storage of float64 values)
REL_TOL = 1e-4
SCORE_COLUMNS = [c for c in range(77) if c != 3] + list(range(96, 101))
PERF_SCORE_ROW_COLUMNS = list(range(77, 96)) + [3]


@dataclass
class Reference:
    npz: dict
    segments: list            # segment ids
    offsets: np.ndarray
    meta: dict = field(default_factory=dict)  # segment id -> segments.csv row

    def rows(self, seg: str) -> slice:
        i = self.index[seg]
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def __post_init__(self):
        self.index = {s: i for i, s in enumerate(self.segments)}


def load_reference(npz_path: str | Path, segments_csv: str | Path | None = None) -> Reference:
    npz_path = Path(npz_path)
    z = np.load(npz_path, allow_pickle=False)
    keys = ("input", "note_beat", "note_measure", "note_section", "note_voice", "note_kind", "offsets",
            "segment_ids")
    data = {k: z[k] for k in keys}
    if segments_csv is None:
        segments_csv = npz_path.parent / "segments.csv"
    meta = {}
    if Path(segments_csv).is_file():
        with open(segments_csv, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                meta[row["segment_id"]] = row
    return Reference(data, [str(s) for s in data["segment_ids"]], data["offsets"], meta)


def identical(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Row-wise: every column within REL_TOL relative (absolute below 1)."""
    return np.all(np.abs(ours - ref) <= REL_TOL * np.maximum(1.0, np.abs(ref)), axis=-1)


def score_xml_for(ref: Reference, seg: str, raw: Path) -> Path:
    row = ref.meta.get(seg)
    if row is not None:
        name = row["score_xml"]
    else:  # "<piece>_<bars>_<performer>_<segment>" -> "<piece>_<bars>_Score_<segment>.musicxml"
        parts = seg.split("_")
        name = "_".join(parts[:-2] + ["Score", parts[-1]]) + ".musicxml"
    return raw / "virtuoso" / "data" / "score_xml" / name


def perf_midi_for(ref: Reference, seg: str, raw: Path) -> Path:
    row = ref.meta.get(seg)
    name = row["perform_midi"] if row is not None else seg + ".mid"
    return raw / "virtuoso" / "data" / "all_2rounds" / name


def excerpts(ref: Reference, raw: Path) -> dict:
    """score path -> segment ids using it."""
    out: dict = {}
    for seg in ref.segments:
        out.setdefault(score_xml_for(ref, seg, raw), []).append(seg)
    return out


def _score_matrix(path: Path) -> tuple:
    from .score_features import extract_score_features
    from .musicxml import read_musicxml
    sf = extract_score_features(read_musicxml(path))
    feats = dict(sf.features)
    n = len(sf.score.notes)
    for key in ("midi_pitch", "duration", "beat_importance", "measure_length", "following_rest"):
        feats[key + "_unnorm"] = list(feats[key])
    for key in norm_stats()["key_to_dim"]:
        feats.setdefault(key, 0)
    feats["num_notes"] = n
    locs = np.stack([np.asarray(sf.locations[k]) for k in ("beat", "measure", "section", "voice")], axis=1)
    return to_matrix(feats), locs


def score_parity(ref: Reference, raw: Path, limit: list | None = None, log=print) -> dict:
    """Score-side check on one segment per excerpt (its score-note rows)."""
    groups = excerpts(ref, raw)
    total = same = 0
    bad: dict = {}
    for path, segs in sorted(groups.items()):
        if limit is not None and path.stem not in limit and not any(s in limit for s in segs):
            continue
        seg = segs[0]
        rows = ref.rows(seg)
        kind = ref.npz["note_kind"][rows]
        ref_x = ref.npz["input"][rows][kind != 2].astype(np.float64)
        ref_loc = np.stack([ref.npz[f"note_{k}"][rows][kind != 2] for k in ("beat", "measure", "section", "voice")], 1)
        try:
            x, loc = _score_matrix(path)
        except Exception as exc:  # noqa: BLE001 - reported, counted as failures
            bad[path.stem] = f"error: {exc!r}"
            total += len(ref_x)
            continue
        if x.shape[0] != ref_x.shape[0]:
            bad[path.stem] = f"{x.shape[0]} score notes, reference has {ref_x.shape[0]}"
            total += len(ref_x)
            continue
        ok = identical(x[:, SCORE_COLUMNS], ref_x[:, SCORE_COLUMNS]) & np.all(loc == ref_loc, axis=1)
        total += len(ok)
        same += int(ok.sum())
        if not ok.all():
            cols = np.where(~np.all(np.abs(x - ref_x) <= REL_TOL * np.maximum(1, np.abs(ref_x)), axis=0))[0]
            cols = [int(c) for c in cols if c in SCORE_COLUMNS]
            loc_bad = [k for j, k in enumerate(("beat", "measure", "section", "voice"))
                       if not np.all(loc[:, j] == ref_loc[:, j])]
            bad[path.stem] = f"{int((~ok).sum())} rows differ; columns {cols}; indices {loc_bad}"
    for k, v in bad.items():
        log(f"  score {k}: {v}")
    return {"excerpts": sum(1 for p, s in groups.items() if limit is None or p.stem in limit
                            or any(x in limit for x in s)),
            "score_rows": total, "identical_rows": same, "differing_excerpts": bad}


def _alignment_path(alignments: Path, seg: str) -> Path:
    return alignments / f"{seg}_infer_corresp.txt"


def score_midi_for(ref: Reference, seg: str, raw: Path) -> Path:
    xml = score_xml_for(ref, seg, raw)
    return raw / "virtuoso" / "data" / "score_midi" / (xml.stem + ".mid")


def corresp_parity(ref: Reference, raw: Path, alignments: Path, limit: list | None = None, log=print) -> dict:
    """Whole-matrix check on every segment (or those in ``limit``), fed the original pairs."""
    from .midi import read_midi
    from .performance import match_score_midi
    from .pipeline import extract_with_corresp, load_score
    cache: dict = {}
    segs = [s for s in ref.segments if limit is None or s in limit]
    rows_total = rows_same = segs_same = 0
    bad: dict = {}
    t0 = time.perf_counter()
    for seg in segs:
        rows = ref.rows(seg)
        ref_x = ref.npz["input"][rows].astype(np.float64)
        ref_loc = np.stack([ref.npz[f"note_{k}"][rows] for k in ("beat", "measure", "section", "voice")], 1)
        xml = score_xml_for(ref, seg, raw)
        try:
            if xml not in cache:
                sf = load_score(xml)
                smidi = read_midi(score_midi_for(ref, seg, raw))
                cache[xml] = (sf, smidi, match_score_midi(sf.score.notes, smidi.notes))
            sf, smidi, smatch = cache[xml]
            res = extract_with_corresp(sf, perf_midi_for(ref, seg, raw), smidi, _alignment_path(alignments, seg),
                                       score_midi_match=smatch)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            bad[seg] = f"error: {exc!r}"
            rows_total += len(ref_x)
            continue
        rows_total += len(ref_x)
        if res.x.shape[0] != len(ref_x):
            bad[seg] = f"{res.x.shape[0]} rows, reference has {len(ref_x)}"
            continue
        loc = np.stack([res.locations[k] for k in ("beat", "measure", "section", "voice")], 1)
        ok = identical(res.x.astype(np.float64), ref_x) & np.all(loc == ref_loc, axis=1)
        rows_same += int(ok.sum())
        if ok.all():
            segs_same += 1
        else:
            diff = np.abs(res.x - ref_x) > REL_TOL * np.maximum(1, np.abs(ref_x))
            bad[seg] = f"{int((~ok).sum())} rows differ; columns {sorted(set(np.where(diff)[1].tolist()))}"
    for k, v in list(bad.items())[:50]:
        log(f"  corresp {k}: {v}")
    return {"segments": len(segs), "identical_segments": segs_same, "rows": rows_total,
            "identical_rows": rows_same, "seconds": round(time.perf_counter() - t0, 1),
            "differing_segments": bad}
