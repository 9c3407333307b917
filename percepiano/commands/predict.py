"""``percepiano predict``: rate a performance MIDI against its MusicXML score with a trained checkpoint.

    percepiano predict PERFORMANCE.mid --score SCORE.musicxml --checkpoint runs/han/best.pt [--format json]
    percepiano predict PERFORMANCE.mid --score SCORE.musicxml --features-only
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ..constants import LABELS


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
                   help="no model (so no --checkpoint): print the alignment and a summary of the extracted features")
    p.add_argument("--min-match", type=float, default=None,
                   help="refuse below this share of matched score notes (default 0.5; a warning below 0.8)")
    p.add_argument("--save-features", type=Path, default=None,
                   help="also write the features to this .npz (x, note locations, note_kind)")
    p.set_defaults(func=_predict)


def _err(msg: str) -> None:
    print(f"percepiano predict: error: {msg}", file=sys.stderr)


def _predict(args: argparse.Namespace) -> int:
    from ..features.align import AlignerUnavailableError
    from ..features.midi import MidiFileError, read_midi
    from ..features.musicxml import UnsupportedScoreError
    from ..features.performance import AlignmentError
    from ..checkpoints import CheckpointError, load_trained_model, protocol_notes
    from ..features.rating import Rating, RatingError, check_alignment, rate
    if args.checkpoint is not None and args.features_only:
        _err(f"--features-only prints the extracted features and runs no model, so --checkpoint "
             f"{args.checkpoint} would be ignored: pass one or the other")
        return 2
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
        model, checkpoint = load_trained_model(args.checkpoint) if args.checkpoint is not None else (None, None)
        # a model trained on a subset, for a few epochs or under other settings rates differently from the
        # paper's: said with every rating, never only in the training log
        departures = protocol_notes(checkpoint) if checkpoint is not None else []
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
    for note in departures:
        print(f"percepiano predict: warning: checkpoint {args.checkpoint}: {note}", file=sys.stderr)
    if args.save_features is not None:
        import numpy as np
        np.savez_compressed(args.save_features, x=result.x, note_kind=result.note_kind,
                            **{f"note_{k}": v for k, v in result.locations.items()})
    if model is None:
        return _print_features(result, notes, args.format)
    try:
        ratings = rate(model, result)
    except RatingError as exc:
        _err(f"{args.checkpoint}: {exc}")
        return 2
    pred = Rating(ratings, result.match_rate, result.n_score_notes, result.n_perf_notes, result.n_matched, notes,
                  departures)
    if args.format == "json":
        print(json.dumps(pred.as_dict(), indent=2))
    else:
        _print_table(pred)
    return 0


def _alignment_line(result) -> str:
    return (f"alignment: {result.n_matched} of {result.n_score_notes} score notes matched ({result.match_rate:.1%}); "
            f"{result.n_perf_notes} performed notes, {int((result.note_kind == 2).sum())} of them not in the score")


def _print_table(pred) -> None:
    print(f"{'rating':<52} {'1-7':>5}   scale (1 = first word, 7 = second)")
    for (name, _cat, lo, hi), v in zip(LABELS, pred.ratings):
        print(f"{name:<52} {v * 7:5.2f}   {lo} -> {hi}")
    d = pred.as_dict()["alignment"]
    print(f"\nalignment: {d['matched_score_notes']} of {d['score_notes']} score notes matched "
          f"({d['match_rate']:.1%}); {d['performance_notes']} performed notes")
    if pred.protocol_notes:
        print(f"checkpoint: {len(pred.protocol_notes)} departure(s) from the original training protocol (warnings "
              "on stderr): these are not the ratings of the paper's model")


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
