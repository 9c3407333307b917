"""``percepiano predict | features-parity``: rate a performance; prove the feature pipeline equals the original.

    percepiano predict PERFORMANCE.mid --score SCORE.musicxml --checkpoint runs/han/best.pt [--format json]
    percepiano predict PERFORMANCE.mid --score SCORE.musicxml --features-only
    percepiano features-parity --data NPZ --raw RAWDIR --alignments DIR [--check score,corresp,aligner]

``--data`` defaults to ``$PERCEPIANO_DATA``, ``--raw`` to ``$PERCEPIANO_RAW``, ``--alignments`` to
``$PERCEPIANO_ALIGNMENTS``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

CHECKS = ("score", "corresp", "aligner", "e2e")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="rate a performance MIDI against its MusicXML score (19 PercePiano ratings)",
        description="Extract the 101-dim PercePiano features from a MusicXML score and a performance MIDI "
                    "(aligned with parangonar; needs the `features` extra) and print the 19 ratings of a "
                    "checkpoint trained with `percepiano train`.")
    p.add_argument("performance", type=Path, help="performance MIDI file")
    p.add_argument("--score", required=True, type=Path, help="MusicXML score (.musicxml, .xml or .mxl), one part")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint from `percepiano train` (best.pt)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    p.add_argument("--features-only", action="store_true",
                   help="no model: print the alignment and a summary of the extracted features")
    p.add_argument("--min-match", type=float, default=None,
                   help="refuse below this share of matched score notes (default 0.5; a warning below 0.8)")
    p.add_argument("--save-features", type=Path, default=None,
                   help="also write the features to this .npz (x, note locations, note_kind)")
    p.set_defaults(func=_predict)

    q = subparsers.add_parser(
        "features-parity", help="compare the pure-Python feature pipeline with the original's processed data",
        description="Score side on all excerpts, the whole matrix fed the original pairs, and our aligner "
                    "against the original final pairs (docs/features.md).")
    q.add_argument("--data", default=None, help="percepiano_vnet_m2pf.npz (default: $PERCEPIANO_DATA)")
    q.add_argument("--raw", default=None, help="raw/ folder of the dataset (default: $PERCEPIANO_RAW)")
    q.add_argument("--alignments", default=None,
                   help="folder of *_infer_corresp.txt files (default: $PERCEPIANO_ALIGNMENTS)")
    q.add_argument("--check", default="score,corresp,aligner",
                   help="comma-separated subset of score,corresp,aligner,e2e (default: score,corresp,aligner)")
    q.add_argument("--segments", default=None, help="comma-separated segment ids (default: all)")
    q.add_argument("--all-files", action="store_true",
                   help="aligner check: also run on every performance file in raw/ and count failures")
    q.add_argument("--checkpoint", type=Path, default=None,
                   help="e2e check (spec 7.5): a `percepiano train` checkpoint; predictions from the stored vs our "
                        "features on the test segments of --split/--fold")
    q.add_argument("--split", default="composition", choices=("composition", "performer"), help="e2e split")
    q.add_argument("--fold", type=int, default=0, help="e2e fold (default 0)")
    q.add_argument("--json", type=Path, default=None, help="write the full results to this JSON file")
    q.set_defaults(func=_parity)

    e = subparsers.add_parser(
        "features-extract", help="re-extract the whole dataset with this pipeline into a new npz (same format)",
        description="Per-note arrays from our pipeline (our aligner by default), labels/splits copied from --data; "
                    "train on the result with `percepiano train --data OUT` (spec 7.6 b).")
    e.add_argument("--data", default=None, help="reference percepiano_vnet_m2pf.npz (default: $PERCEPIANO_DATA)")
    e.add_argument("--raw", default=None, help="raw/ folder of the dataset (default: $PERCEPIANO_RAW)")
    e.add_argument("--out", required=True, type=Path, help="output .npz")
    e.add_argument("--fix", action="append", default=[], metavar="NAME",
                   help="quirk fix to apply (repeatable): " + ", ".join(_fix_names()))
    e.add_argument("--original-pairs", default=None, metavar="DIR",
                   help="use the original *_infer_corresp.txt pairs from DIR instead of our aligner")
    e.add_argument("--renormalize", action="store_true",
                   help="z-score with statistics of the re-extracted data (default: the original statistics)")
    e.set_defaults(func=_extract)


def _fix_names() -> list:
    from ..features.quirks import FIXES
    return sorted(FIXES)


def _extract(args: argparse.Namespace) -> int:
    from ..features.dataset import reextract
    data = _path_arg(args.data, "PERCEPIANO_DATA", "--data")
    raw = _path_arg(args.raw, "PERCEPIANO_RAW", "--raw")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    info = reextract(data, raw, args.out, fixes=args.fix, alignments=args.original_pairs,
                     renormalize=args.renormalize, log=log)
    print(json.dumps(info, indent=1))
    return 0


def _err(msg: str) -> None:
    print(f"percepiano predict: error: {msg}", file=sys.stderr)


def _predict(args: argparse.Namespace) -> int:
    from ..features.align import AlignerUnavailableError
    from ..features.midi import MidiFileError, read_midi
    from ..features.musicxml import UnsupportedScoreError
    from ..features.performance import AlignmentError
    from ..features.predict import CheckpointError, check_alignment, load_model, predict
    if args.checkpoint is None and not args.features_only:
        _err("a trained checkpoint is needed to rate a performance. Train one with\n"
             "    percepiano train --preset han --split composition --fold 0 --out runs/han\n"
             "and pass --checkpoint runs/han/best.pt (or use --features-only to see the extracted features).")
        return 2
    for path, what in ((args.performance, "performance MIDI"), (args.score, "score")):
        if not path.is_file():
            _err(f"no such {what} file: {path}")
            return 2
    try:
        model = load_model(args.checkpoint) if args.checkpoint is not None else None
        perf = read_midi(args.performance)
        if not perf.notes:
            raise MidiFileError(f"{args.performance}: the performance has no notes (in the piano range 21-108)")
        from ..features.pipeline import extract, load_score
        sf = load_score(args.score)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = extract(sf, perf)
        notes = check_alignment(result) if args.min_match is None else check_alignment(result, args.min_match)
    except (MidiFileError, UnsupportedScoreError, AlignmentError, CheckpointError, FileNotFoundError) as exc:
        _err(str(exc))
        return 2
    except AlignerUnavailableError as exc:
        _err(str(exc))
        return 3
    except Exception as exc:  # noqa: BLE001 - never a traceback for bad input
        _err(f"could not process {args.performance.name} with {args.score.name}: {type(exc).__name__}: {exc}")
        return 1
    for note in notes:
        print(f"percepiano predict: warning: {note}", file=sys.stderr)
    if args.save_features is not None:
        import numpy as np
        np.savez_compressed(args.save_features, x=result.x, note_kind=result.note_kind,
                            **{f"note_{k}": v for k, v in result.locations.items()})
    if model is None:
        return _print_features(result, notes, args.format)
    from ..features.predict import Prediction
    pred = Prediction(predict(model, result), result.match_rate, result.n_score_notes, result.n_perf_notes,
                      result.n_matched, notes)
    if args.format == "json":
        print(json.dumps(pred.as_dict(), indent=2))
    else:
        _print_table(pred)
    return 0


def _alignment_line(result) -> str:
    return (f"alignment: {result.n_matched} of {result.n_score_notes} score notes matched ({result.match_rate:.1%}); "
            f"{result.n_perf_notes} performed notes, {int((result.note_kind == 2).sum())} of them not in the score")


def _print_table(pred) -> None:
    from ..features.predict import LABELS
    print(f"{'rating':<52} {'1-7':>5}   scale (1 = first word, 7 = second)")
    for (name, _cat, lo, hi), v in zip(LABELS, pred.ratings):
        print(f"{name:<52} {v * 7:5.2f}   {lo} -> {hi}")
    d = pred.as_dict()["alignment"]
    print(f"\nalignment: {d['matched_score_notes']} of {d['score_notes']} score notes matched "
          f"({d['match_rate']:.1%}); {d['performance_notes']} performed notes")


def _print_features(result, notes: list, fmt: str) -> int:
    import numpy as np
    from ..features.assemble import feature_names
    names = feature_names()
    summary = {n: {"mean": float(np.mean(result.raw[:, i])), "min": float(np.min(result.raw[:, i])),
                   "max": float(np.max(result.raw[:, i]))} for i, n in enumerate(names)}
    if fmt == "json":
        print(json.dumps({"alignment": {"score_notes": result.n_score_notes, "performance_notes": result.n_perf_notes,
                                        "matched_score_notes": result.n_matched, "match_rate": result.match_rate},
                          "rows": int(result.x.shape[0]), "warnings": notes, "features_raw": summary}, indent=2))
        return 0
    print(_alignment_line(result))
    print(f"rows: {result.x.shape[0]} (score notes + performance-only notes); raw values before z-scoring:")
    print(f"{'feature':<28} {'mean':>10} {'min':>10} {'max':>10}")
    for n, s in summary.items():
        print(f"{n:<28} {s['mean']:10.4g} {s['min']:10.4g} {s['max']:10.4g}")
    return 0


def _path_arg(value: str | None, env: str, what: str) -> Path:
    value = value or os.environ.get(env)
    if not value:
        raise ValueError(f"{what} is required: pass it or set ${env}")
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _parity(args: argparse.Namespace) -> int:
    from ..features import parity
    checks = [c.strip() for c in args.check.split(",") if c.strip()]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown --check {unknown}; choose from {CHECKS}")
    data = _path_arg(args.data, "PERCEPIANO_DATA", "--data")
    raw = _path_arg(args.raw, "PERCEPIANO_RAW", "--raw")
    ref = parity.load_reference(data)
    limit = args.segments.split(",") if args.segments else None
    results: dict = {}
    ok = True
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if "score" in checks:
        r = parity.score_parity(ref, raw, limit=limit, log=log)
        results["score"] = r
        passed = r["identical_rows"] == r["score_rows"]
        ok &= passed
        print(f"score side: {r['identical_rows']}/{r['score_rows']} score-note rows identical "
              f"({r['excerpts']} excerpts) -> {'PASS' if passed else 'FAIL'}")
    if "corresp" in checks:
        alignments = _path_arg(args.alignments, "PERCEPIANO_ALIGNMENTS", "--alignments")
        r = parity.corresp_parity(ref, raw, alignments, limit=limit, log=log)
        results["corresp"] = r
        passed = r["identical_segments"] == r["segments"]
        ok &= passed
        print(f"original pairs: {r['identical_segments']}/{r['segments']} segments and {r['identical_rows']}/"
              f"{r['rows']} rows identical within {parity.REL_TOL:g} relative ({r['seconds']} s) "
              f"-> {'PASS' if passed else 'FAIL'}")
    if "aligner" in checks:
        r = parity.aligner_parity(ref, raw, limit=limit, all_files=args.all_files, log=log)
        results["aligner"] = r
        verdict = parity.aligner_verdict(r)
        ok &= all(v for _, v in verdict)
        print(f"aligner on {r['segments']} well-matched segments: precision {r['precision']:.4f} "
              f"(>= {parity.PAIR_PRECISION_TARGET}), recall {r['recall']:.4f} (>= {parity.PAIR_RECALL_TARGET}), "
              f"per-segment F1 median {r['f1_median']:.4f} / 5th pct {r['f1_p5']:.4f}; "
              f"{r['identical_matrices']} identical matrices; {len(r['errors'])} errors ({r['seconds']} s)")
        for name, f in r["features"].items():
            print(f"  {name:<20} pearson {f['pearson']:.4f} (>= {f['target']})  segment means "
                  f"{f['segment_mean_pearson']:.4f}  MAE {f['mae_z']:.3f} z  exact {f['exact']:.1%}")
        if "all_files" in r:
            a = r["all_files"]
            print(f"  all performance files: {a['files']} run, {len(a['failures'])} failed, "
                  f"{a['below_80_percent']} below 80 % matched (min {a['min_match_rate']:.1%})")
        for what, passed in verdict:
            if not passed:
                print(f"  FAIL: {what}")
        subset = " (the acceptance targets are set for the full 1117-segment set)" if limit else ""
        print(f"aligner -> {'PASS' if all(v for _, v in verdict) else 'FAIL'}{subset}")
    if "e2e" in checks:
        if args.checkpoint is None:
            raise ValueError("--check e2e needs --checkpoint (a model from `percepiano train`)")
        from ..features.predict import load_model
        r = parity.e2e_parity(ref, raw, load_model(args.checkpoint), args.split, args.fold, limit=limit, log=log)
        results["e2e"] = r
        for group in ("well", "poor"):
            if group in r:
                g = r[group]
                print(f"e2e {args.split} fold {args.fold}, {group}-matched test segments ({g['segments']}): mean "
                      f"|delta pred| {g['mean_abs_delta_sd']:.3f} label-SD, min label pearson "
                      f"{g['min_label_pearson']:.3f}, R2 stored {g['r2_stored_features']:.3f} / ours "
                      f"{g['r2_our_features']:.3f}")
        verdict = parity.e2e_verdict(r)
        ok &= all(v for _, v in verdict)
        for what, passed in verdict:
            if not passed:
                print(f"  FAIL: {what}")
        print(f"e2e -> {'PASS' if all(v for _, v in verdict) else 'FAIL'}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0 if ok else 1
