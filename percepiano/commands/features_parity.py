"""``percepiano features-parity``: compare the pure-Python feature pipeline with the original's processed data.

    percepiano features-parity --data NPZ --raw RAWDIR --alignments DIR [--check score,corresp,aligner]

``--data`` defaults to ``$PERCEPIANO_DATA``, ``--raw`` to ``$PERCEPIANO_RAW``, ``--alignments`` to
``$PERCEPIANO_ALIGNMENTS``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..constants import SPLIT_SCHEMES
from ._options import add_data_and_raw, existing_path, log, raw_paths

CHECKS = ("score", "corresp", "aligner", "e2e")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "features-parity", help="compare the pure-Python feature pipeline with the original's processed data",
        description="Score side on all excerpts, the whole matrix fed the original pairs, and our aligner "
                    "against the original final pairs (docs/features.md).")
    add_data_and_raw(p)
    p.add_argument("--alignments", default=None,
                   help="folder of *_infer_corresp.txt files (default: $PERCEPIANO_ALIGNMENTS)")
    p.add_argument("--check", default="score,corresp,aligner",
                   help="comma-separated subset of score,corresp,aligner,e2e (default: score,corresp,aligner)")
    p.add_argument("--segments", default=None, help="comma-separated segment ids (default: all)")
    p.add_argument("--all-files", action="store_true",
                   help="aligner check: also run on every performance file in raw/ and count failures")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="e2e check: a `percepiano train` checkpoint; predictions from the stored vs our "
                        "features on the test segments of --split/--fold")
    p.add_argument("--split", default="composition", choices=SPLIT_SCHEMES, help="e2e split")
    p.add_argument("--fold", type=int, default=0, help="e2e fold (default 0)")
    p.add_argument("--json", type=Path, default=None, help="write the full results to this JSON file")
    p.set_defaults(func=_features_parity)


def _features_parity(args: argparse.Namespace) -> int:
    from ..features import agreement
    checks = [c.strip() for c in args.check.split(",") if c.strip()]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown --check {unknown}; choose from {CHECKS}")
    data, raw = raw_paths(args)
    ref = agreement.load_reference(data)
    limit = _segment_ids(args.segments, ref, data)
    results: dict = {}
    ok = True
    if "score" in checks:
        r = agreement.score_parity(ref, raw, limit=limit, log=log)
        results["score"] = r
        passed = r["score_rows"] > 0 and r["identical_rows"] == r["score_rows"]
        ok &= passed
        print(f"score side: {r['identical_rows']}/{r['score_rows']} score-note rows identical "
              f"({r['excerpts']} excerpts) -> {_word(passed, r['score_rows'])}")
    if "corresp" in checks:
        alignments = existing_path(args.alignments, "PERCEPIANO_ALIGNMENTS", "--alignments")
        r = agreement.corresp_parity(ref, raw, alignments, limit=limit, log=log)
        results["corresp"] = r
        passed = r["segments"] > 0 and r["identical_segments"] == r["segments"]
        ok &= passed
        print(f"original pairs: {r['identical_segments']}/{r['segments']} segments and {r['identical_rows']}/"
              f"{r['rows']} rows identical within {agreement.REL_TOL:g} relative ({r['seconds']} s) "
              f"-> {_word(passed, r['segments'])}")
    if "aligner" in checks:
        r = agreement.aligner_parity(ref, raw, limit=limit, all_files=args.all_files, log=log)
        results["aligner"] = r
        verdict = agreement.aligner_verdict(r)
        ok &= all(v for _, v in verdict)
        print(f"aligner on {r['segments']} well-matched segments: precision {r['precision']:.4f} "
              f"(>= {agreement.PAIR_PRECISION_TARGET}), recall {r['recall']:.4f} (>= {agreement.PAIR_RECALL_TARGET}), "
              f"per-segment F1 median {r['f1_median']:.4f} / 5th pct {r['f1_p5']:.4f}; "
              f"{r['identical_matrices']} identical matrices; {len(r['errors'])} errors ({r['seconds']} s)")
        for name, f in r["features"].items():
            print(f"  {name:<20} pearson {f['pearson']:.4f} (>= {f['target']})  segment means "
                  f"{f['segment_mean_pearson']:.4f}  MAE {f['mae_z']:.3f} z  exact {f['exact']:.1%}")
        if "all_files" in r:
            a = r["all_files"]
            print(f"  all performance files: {a['files']} run, {len(a['failures'])} failed, "
                  f"{a['below_80_percent']} below 80 % matched (min {a['min_match_rate']:.1%}); at most "
                  f"{a['max_notes_per_score_note']['value']:.3f} performed notes per score note "
                  f"({a['max_notes_per_score_note']['file']}), at most {a['max_unmatched_performed']['value']:.1%} "
                  f"performed notes unmatched ({a['max_unmatched_performed']['file']}; "
                  f"{a['max_unmatched_performed_accepted']['value']:.1%} among files not refused)")
        for what, passed in verdict:
            if not passed:
                print(f"  FAIL: {what}")
        subset = " (the acceptance targets are set for the full 1117-segment set)" if limit else ""
        print(f"aligner -> {'PASS' if all(v for _, v in verdict) else 'FAIL'}{subset}")
    if "e2e" in checks:
        if args.checkpoint is None:
            raise ValueError("--check e2e needs --checkpoint (a model from `percepiano train`)")
        from ..checkpoints import load_trained_model
        model, _ = load_trained_model(args.checkpoint)
        r = agreement.e2e_parity(ref, raw, model, args.split, args.fold, limit=limit, log=log)
        results["e2e"] = r
        for group in ("well", "poor"):
            if group in r:
                g = r[group]
                print(f"e2e {args.split} fold {args.fold}, {group}-matched test segments ({g['segments']}): mean "
                      f"|delta pred| {g['mean_abs_delta_sd']:.3f} label-SD, min label pearson "
                      f"{g['min_label_pearson']:.3f}, R2 stored {g['r2_stored_features']:.3f} / ours "
                      f"{g['r2_our_features']:.3f}")
        verdict = agreement.e2e_verdict(r)
        ok &= all(v for _, v in verdict)
        for what, passed in verdict:
            if not passed:
                print(f"  FAIL: {what}")
        print(f"e2e -> {'PASS' if all(v for _, v in verdict) else 'FAIL'}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0 if ok else 1


def _segment_ids(segments: str | None, ref, data) -> list | None:
    """The ``--segments`` ids, every one a segment of the reference (None: all segments)."""
    if segments is None:
        return None
    ids = [s.strip() for s in segments.split(",") if s.strip()]
    if not ids:
        raise ValueError("--segments is empty: give comma-separated segment ids, or leave it out to check all")
    unknown = [s for s in ids if s not in ref.index]
    if unknown:
        raise ValueError(f"--segments: {len(unknown)} of {len(ids)} ids are not segments of {data}: "
                         f"{', '.join(unknown[:10])}{', ...' if len(unknown) > 10 else ''}"
                         + (f" (segment ids look like {ref.segments[0]!r})" if ref.segments else ""))
    return ids


def _word(passed: bool, checked: int) -> str:
    """PASS only when something was checked: 0 of 0 is no evidence."""
    if checked == 0:
        return "FAIL (nothing checked)"
    return "PASS" if passed else "FAIL"
