"""Re-extract the whole training set with this pipeline into an npz of the processed dataset's format.

For training on re-extracted features (docs/features.md): train on features extracted by the pipeline that
``predict`` uses (our aligner, optionally with quirk fixes) instead of the original npz. Labels, splits and all
other per-segment arrays are copied from the reference npz; the per-note arrays are replaced.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .assemble import norm_stats

PER_NOTE = ("input", "note_beat", "note_measure", "note_section", "note_voice", "align_matched",
            "articulation_loss_weight", "note_kind")


def articulation_loss_weight(features: dict, note_kind: np.ndarray) -> np.ndarray:
    """The original's VirtuosoNet weight (0 unmatched, 0.05 / 0.5 / 1 by sustain pedal at the offset)."""
    out = np.zeros(len(note_kind), dtype=np.float32)
    for i, kind in enumerate(note_kind):
        if kind == 2:  # performance-only rows are inserted with 0
            continue
        pedal, refresh = features["pedal_at_end"][i], features["pedal_refresh"][i]
        w = 0.0 if kind == 1 else 0.05 if pedal > 70 else 0.5 if pedal > 60 else 1.0
        if pedal > 64 and refresh < 64:  # applies to unmatched notes too (carried pedal, refresh 0), as originally
            w = 1.0
        out[i] = w
    return out


def reextract(reference: str | Path, raw: str | Path, out: str | Path, fixes=frozenset(),
              alignments: str | Path | None = None, renormalize: bool = False, log=print) -> dict:
    """Write ``out`` (npz); returns a summary. ``alignments`` given: use the original pairs instead of our aligner."""
    from . import parity
    from .assemble import to_matrix
    from .midi import read_midi
    from .performance import match_score_midi
    from .pipeline import extract, extract_with_corresp, load_score
    from .quirks import check_fixes
    fixes = check_fixes(fixes)
    ref = parity.load_reference(reference)
    with np.load(reference, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    raw = Path(raw)
    cache: dict = {}
    per_seg: list = []
    failed: list = []
    t0 = time.perf_counter()
    for n, seg in enumerate(ref.segments):
        xml = parity.score_xml_for(ref, seg, raw)
        try:
            if xml not in cache:
                sf = load_score(xml, fixes)
                smidi = match = None
                if alignments is not None:
                    smidi = read_midi(parity.score_midi_for(ref, seg, raw))
                    match = match_score_midi(sf.score.notes, smidi.notes)
                cache[xml] = (sf, smidi, match)
            sf, smidi, match = cache[xml]
            perf = parity.perf_midi_for(ref, seg, raw)
            if alignments is not None:
                res = extract_with_corresp(sf, perf, smidi, Path(alignments) / f"{seg}_infer_corresp.txt",
                                           score_midi_match=match)
            else:
                res = extract(sf, read_midi(perf, pedal_release_fix="pedal_release" in fixes), fixes=fixes)
            per_seg.append((res.features, res.locations, res.note_kind))
        except Exception as exc:  # noqa: BLE001 - reported; the stored rows are kept for that segment
            failed.append(seg)
            log(f"  {seg}: {exc!r}; keeping the stored rows")
            per_seg.append(None)
        if (n + 1) % 100 == 0:
            log(f"  {n + 1}/{len(ref.segments)} segments ({time.perf_counter() - t0:.0f} s)")
    stats = norm_stats()
    normalized = dict(stats["normalized"])
    if renormalize:
        for key in normalized:
            vals = []
            for item in per_seg:
                if item is None:
                    continue
                v = item[0][key]
                vals.extend(v if isinstance(v, list) else [v])
            v = np.asarray(vals, dtype=np.float64)
            std = float(v.std()) or 1.0
            normalized[key] = {"mean": float(v.mean()), "std": std}
    inputs, locs, kinds, matched, weights, offsets = [], {k: [] for k in ("beat", "measure", "section", "voice")}, \
        [], [], [], [0]
    for i, item in enumerate(per_seg):
        rows = ref.rows(ref.segments[i])
        if item is None:
            inputs.append(arrays["input"][rows])
            for k in locs:
                locs[k].append(arrays[f"note_{k}"][rows])
            kinds.append(arrays["note_kind"][rows])
            matched.append(arrays["align_matched"][rows])
            weights.append(arrays["articulation_loss_weight"][rows])
        else:
            feats, loc, kind = item
            x = to_matrix(feats, normalize=False)
            for key, (a, b) in stats["key_to_dim"].items():
                if key in normalized:
                    x[:, a:b] = (x[:, a:b] - normalized[key]["mean"]) / normalized[key]["std"]
            inputs.append(x.astype(np.float32))
            for k in locs:
                locs[k].append(np.asarray(loc[k], dtype=np.int32))
            kinds.append(np.asarray(kind, dtype=np.int8))
            matched.append((np.asarray(kind) == 0).astype(np.int8))
            weights.append(articulation_loss_weight(feats, np.asarray(kind)))
        offsets.append(offsets[-1] + len(inputs[-1]))
    arrays["input"] = np.concatenate(inputs)
    for k in locs:
        arrays[f"note_{k}"] = np.concatenate(locs[k])
    arrays["note_kind"] = np.concatenate(kinds)
    arrays["align_matched"] = np.concatenate(matched)
    arrays["articulation_loss_weight"] = np.concatenate(weights)
    arrays["offsets"] = np.asarray(offsets, dtype=np.int64)
    mean = np.zeros(101)
    std = np.ones(101)
    mask = np.zeros(101, dtype=bool)
    for key, (a, b) in stats["key_to_dim"].items():
        if key in normalized:
            mean[a:b], std[a:b], mask[a:b] = normalized[key]["mean"], normalized[key]["std"], True
    arrays["norm_mean"], arrays["norm_std"], arrays["norm_mask"] = mean, std, mask
    info = {"pipeline": "percepiano.features", "aligner": "original pairs" if alignments is not None else
            "parangonar DualDTW + monotone filter + repair", "fixes": sorted(fixes), "renormalized": renormalize,
            "failed_segments_kept_as_stored": failed}
    arrays["reextraction_info"] = np.asarray(json.dumps(info))
    np.savez_compressed(out, **arrays)
    info.update(segments=len(ref.segments), rows=int(offsets[-1]), seconds=round(time.perf_counter() - t0, 1))
    return info
