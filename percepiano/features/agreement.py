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


@dataclass
class Reference:
    npz: dict
    segments: list            # segment ids
    offsets: np.ndarray
    meta: dict = field(default_factory=dict)  # segment id -> segments.csv row
    meta_path: Path | None = None            # the npz path (labels and splits are read from it on demand)

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
    return Reference(data, [str(s) for s in data["segment_ids"]], data["offsets"], meta, npz_path)


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


#: performance feature columns compared on score-note rows, with the Pearson targets listed in docs/features.md
PERF_TARGETS = {
    "qpm_primo": (3, 0.985), "beat_tempo": (77, 0.985), "measure_tempo": (78, 0.985), "section_tempo": (79, 0.985),
    "velocity": (80, 0.985), "onset_deviation": (81, 0.80), "beat_dynamics": (82, 0.985),
    "measure_dynamics": (83, 0.985), "articulation": (84, 0.95), "pedal_refresh_time": (85, 0.985),
    "pedal_cut_time": (86, 0.985), "pedal_at_start": (87, 0.985), "pedal_at_end": (88, 0.985),
    "soft_pedal": (89, 0.985), "pedal_refresh": (90, 0.97), "pedal_cut": (91, 0.985),
}
SEGMENT_MEAN_TARGET = 0.99
SEGMENT_MEAN_TARGET_ONSET = 0.95
ONSET_MAE_TARGET = 0.1
PAIR_PRECISION_TARGET = 0.985
PAIR_RECALL_TARGET = 0.970
F1_MEDIAN_TARGET = 0.99
F1_P5_TARGET = 0.88
WELL_MATCHED = 0.5


def well_matched(ref: Reference, seg: str) -> bool:
    row = ref.meta.get(seg)
    if row is None:
        return False
    m, so = int(row["n_matched"]), int(row["n_score_only"])
    return m / max(1, m + so) >= WELL_MATCHED


def original_pairs(ref: Reference, seg: str, perf_notes: list) -> set:
    """The original's final pairs (score row, performance index), read back from the npz matched rows."""
    rows = ref.rows(seg)
    kind = ref.npz["note_kind"][rows]
    x = ref.npz["input"][rows]
    index = {}
    for j, m in enumerate(perf_notes):
        index.setdefault((m.pitch, round(m.start, 4)), j)
    out = set()
    score_row = 0
    for k, row in zip(kind, x):
        if k == 2:
            continue
        if k == 0:
            j = index.get((int(round(row[92])), round(float(row[94]), 4)))
            if j is None:  # float32 rounding at the 4th decimal: fall back to nearest same-pitch onset
                cands = [i for i, m in enumerate(perf_notes) if m.pitch == int(round(row[92]))]
                j = min(cands, key=lambda i: abs(perf_notes[i].start - float(row[94])))
            out.add((score_row, j))
        score_row += 1
    return out


def aligner_parity(ref: Reference, raw: Path, limit: list | None = None, all_files: bool = False,
                   log=print) -> dict:
    """Our aligner vs the original final pairs (well-matched segments) and per-feature agreement."""
    from .midi import read_midi
    from .pipeline import extract, load_score
    segs = [s for s in ref.segments if (limit is None or s in limit) and well_matched(ref, s)]
    cache: dict = {}
    n_orig = n_ours = n_common = 0
    f1s = []
    ours_cols, ref_cols, seg_means_ours, seg_means_ref = [], [], [], []
    identical_segments = 0
    errors: dict = {}
    t0 = time.perf_counter()
    for seg in segs:
        xml = score_xml_for(ref, seg, raw)
        try:
            if xml not in cache:
                cache[xml] = load_score(xml)
            perf = read_midi(perf_midi_for(ref, seg, raw))
            res = extract(cache[xml], perf)
        except Exception as exc:  # noqa: BLE001
            errors[seg] = repr(exc)
            continue
        orig = original_pairs(ref, seg, perf.notes)
        ours = {(i, p) for i, p in enumerate(res.pairs) if p is not None}
        common = len(orig & ours)
        n_orig, n_ours, n_common = n_orig + len(orig), n_ours + len(ours), n_common + common
        f1s.append(2 * common / max(1, len(orig) + len(ours)))
        rows = ref.rows(seg)
        kind = ref.npz["note_kind"][rows]
        rx = ref.npz["input"][rows][kind != 2].astype(np.float64)
        ox = res.x[res.note_kind != 2].astype(np.float64)
        cols = [c for c, _ in PERF_TARGETS.values()]
        ours_cols.append(ox[:, cols])
        ref_cols.append(rx[:, cols])
        seg_means_ours.append(ox[:, cols].mean(0))
        seg_means_ref.append(rx[:, cols].mean(0))
        if res.x.shape == ref.npz["input"][rows].shape and identical(res.x.astype(np.float64),
                                                                      ref.npz["input"][rows]).all():
            identical_segments += 1
    precision = n_common / max(1, n_ours)
    recall = n_common / max(1, n_orig)
    result: dict = {"segments": len(segs), "errors": errors, "original_pairs": n_orig, "our_pairs": n_ours,
                    "common_pairs": n_common, "precision": precision, "recall": recall,
                    "f1_median": float(np.median(f1s)) if f1s else 0.0,
                    "f1_p5": float(np.percentile(f1s, 5)) if f1s else 0.0,
                    "identical_matrices": identical_segments, "features": {}}
    if ours_cols:
        O, R = np.concatenate(ours_cols), np.concatenate(ref_cols)
        MO, MR = np.stack(seg_means_ours), np.stack(seg_means_ref)
        for j, (name, (_, target)) in enumerate(PERF_TARGETS.items()):
            r = float(np.corrcoef(O[:, j], R[:, j])[0, 1])
            rm = float(np.corrcoef(MO[:, j], MR[:, j])[0, 1])
            exact = float(np.mean(np.abs(O[:, j] - R[:, j]) <= REL_TOL * np.maximum(1, np.abs(R[:, j]))))
            result["features"][name] = {"pearson": r, "target": target, "segment_mean_pearson": rm,
                                        "mae_z": float(np.mean(np.abs(O[:, j] - R[:, j]))), "exact": exact}
    if all_files:
        result["all_files"] = run_all_files(raw, log=log)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def run_all_files(raw: Path, log=print) -> dict:
    """Run the aligner pipeline on every performance MIDI file (no reference needed): count failures, and the
    extremes the warnings of :func:`percepiano.features.rating.check_alignment` are set above."""
    from .pipeline import extract, load_score
    from .rating import MIN_MATCH
    perf_dir = raw / "virtuoso" / "data" / "all_2rounds"
    xml_dir = raw / "virtuoso" / "data" / "score_xml"
    cache: dict = {}
    failures: dict = {}
    counts: dict = {}  # file name -> (score notes, performed notes, matched score notes)
    files = sorted(perf_dir.glob("*.mid"))
    for f in files:
        parts = f.stem.strip().split("_")
        xml = xml_dir / ("_".join(parts[:-2] + ["Score", parts[-1]]) + ".musicxml")
        try:
            if xml not in cache:
                cache[xml] = load_score(xml)
            res = extract(cache[xml], f)
            counts[f.name] = (res.n_score_notes, res.n_perf_notes, res.n_matched)
        except Exception as exc:  # noqa: BLE001
            failures[f.name] = repr(exc)
    for k, v in failures.items():
        log(f"  failed {k}: {v}")
    rates = {k: m / s for k, (s, _, m) in counts.items()}
    per_score_note = {k: p / s for k, (s, p, _) in counts.items()}
    unmatched = {k: (p - m) / p for k, (_, p, m) in counts.items()}
    accepted = {k: v for k, v in unmatched.items() if rates[k] >= MIN_MATCH}

    def top(values: dict) -> dict:
        name = max(values, key=values.get) if values else None
        return {"value": values[name] if name else 0.0, "file": name}

    return {"files": len(files), "failures": failures, "min_match_rate": min(rates.values()) if rates else 0.0,
            "below_80_percent": sum(r < 0.8 for r in rates.values()),
            "max_notes_per_score_note": top(per_score_note), "max_unmatched_performed": top(unmatched),
            "max_unmatched_performed_accepted": top(accepted)}


def aligner_verdict(r: dict) -> list:
    """(what, passed) for each acceptance number of the aligner check (docs/features.md)."""
    out = [("at least one well-matched segment checked", r["segments"] > 0), ("no errors", not r["errors"]),
           (f"pair precision >= {PAIR_PRECISION_TARGET}", r["precision"] >= PAIR_PRECISION_TARGET),
           (f"pair recall >= {PAIR_RECALL_TARGET}", r["recall"] >= PAIR_RECALL_TARGET),
           (f"per-segment F1 median >= {F1_MEDIAN_TARGET}", r["f1_median"] >= F1_MEDIAN_TARGET),
           (f"per-segment F1 5th percentile >= {F1_P5_TARGET}", r["f1_p5"] >= F1_P5_TARGET)]
    for name, f in r["features"].items():
        out.append((f"{name} pearson >= {f['target']}", f["pearson"] >= f["target"]))
        seg_target = SEGMENT_MEAN_TARGET_ONSET if name == "onset_deviation" else SEGMENT_MEAN_TARGET
        out.append((f"{name} segment-mean pearson >= {seg_target}", f["segment_mean_pearson"] >= seg_target))
    if "onset_deviation" in r["features"]:
        out.append((f"onset_deviation MAE <= {ONSET_MAE_TARGET} z",
                    r["features"]["onset_deviation"]["mae_z"] <= ONSET_MAE_TARGET))
    if "all_files" in r:
        from .rating import MAX_NOTES_PER_SCORE_NOTE, MAX_UNMATCHED_PERFORMED
        a = r["all_files"]
        out.append(("no failure on any performance file", not a["failures"]))
        # the predict warnings must stay silent on every genuine performance
        out.append((f"every performance file below {MAX_NOTES_PER_SCORE_NOTE:g} performed notes per score note",
                    a["max_notes_per_score_note"]["value"] < MAX_NOTES_PER_SCORE_NOTE))
        out.append((f"every performance file not refused at most {MAX_UNMATCHED_PERFORMED:.0%} unmatched performed "
                    "notes", a["max_unmatched_performed_accepted"]["value"] <= MAX_UNMATCHED_PERFORMED))
    return out


#: end-to-end acceptance on well-matched test segments (docs/features.md)
E2E_MEAN_ABS_DELTA_SD = 0.06
E2E_MIN_LABEL_PEARSON = 0.97
E2E_MAX_R2_DROP = 0.02


def e2e_parity(ref: Reference, raw: Path, model, scheme: str = "composition", fold: int = 0,
               limit: list | None = None, log=print) -> dict:
    """End-to-end check: the model's predictions from the stored features vs from our re-extracted features.

    Test segments of ``scheme``/``fold`` (or ``limit``); well-matched and poorly matched ones reported apart.
    Deltas are in units of each label's standard deviation across all segments.
    """
    import torch
    from .pipeline import extract, load_score
    from .rating import FEATURE_COLUMNS
    from ..metrics import r2
    z = np.load(ref_path(ref), allow_pickle=False)
    labels = z["labels"].astype(np.float64)
    split = z[f"{scheme}_split"][:, int(fold)]
    label_sd = labels.std(0)
    segs = [s for i, s in enumerate(ref.segments) if (limit is not None and s in limit)
            or (limit is None and split[i] == 2)]
    cols = FEATURE_COLUMNS[model.config.input_size]

    def run(x, locs):
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x[:, cols], dtype=np.float32)).unsqueeze(0)
            lt = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)).unsqueeze(0) for k, v in locs.items()}
            return torch.sigmoid(model(xt, torch.tensor([x.shape[0]]), lt))[0].double().numpy()

    cache: dict = {}
    rows = {"well": [], "poor": []}
    errors: dict = {}
    for seg in segs:
        r = ref.rows(seg)
        x_ref = ref.npz["input"][r]
        loc_ref = {k: ref.npz[f"note_{k}"][r] for k in ("beat", "measure", "section", "voice")}
        xml = score_xml_for(ref, seg, raw)
        try:
            if xml not in cache:
                cache[xml] = load_score(xml)
            res = extract(cache[xml], perf_midi_for(ref, seg, raw))
        except Exception as exc:  # noqa: BLE001
            errors[seg] = repr(exc)
            continue
        p_ref, p_new = run(x_ref, loc_ref), run(res.x, res.locations)
        rows["well" if well_matched(ref, seg) else "poor"].append((p_ref, p_new, labels[ref.index[seg]]))
    out: dict = {"scheme": scheme, "fold": int(fold), "errors": errors}
    for group, items in rows.items():
        if not items:
            continue
        P0 = np.stack([a for a, _, _ in items])
        P1 = np.stack([b for _, b, _ in items])
        Y = np.stack([y for _, _, y in items])
        delta = np.abs(P1 - P0) / label_sd
        corr = [float(np.corrcoef(P0[:, j], P1[:, j])[0, 1]) if len(items) > 2 else float("nan")
                for j in range(P0.shape[1])]
        out[group] = {"segments": len(items), "mean_abs_delta_sd": float(delta.mean()),
                      "min_label_pearson": float(np.nanmin(corr)) if len(items) > 2 else float("nan"),
                      "label_pearson": corr,
                      "r2_stored_features": float(r2(Y, P0)) if len(items) > 1 else float("nan"),
                      "r2_our_features": float(r2(Y, P1)) if len(items) > 1 else float("nan")}
    return out


def e2e_verdict(r: dict) -> list:
    w = r.get("well")
    if not w:
        return [("well-matched test segments present", False)]
    return [(f"mean |delta prediction| <= {E2E_MEAN_ABS_DELTA_SD} label-SD",
             w["mean_abs_delta_sd"] <= E2E_MEAN_ABS_DELTA_SD),
            (f"every label's pearson(pred_stored, pred_ours) >= {E2E_MIN_LABEL_PEARSON}",
             w["min_label_pearson"] >= E2E_MIN_LABEL_PEARSON),
            (f"R2 drop <= {E2E_MAX_R2_DROP}", w["r2_stored_features"] - w["r2_our_features"] <= E2E_MAX_R2_DROP)]


def ref_path(ref: Reference) -> Path:
    return ref.meta_path
