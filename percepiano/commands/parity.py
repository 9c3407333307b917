"""``percepiano parity``: prove our implementation equal to the original PercePiano code, layer by layer.

    percepiano parity                                  # from the recorded fixtures (no original needed)
    percepiano parity --preset han                     # + the deviations of a configuration (none for presets)
    percepiano parity --boundary-rule diff_gt_0 --attention-temperature 0.5 --init orthogonal_lstm
    percepiano parity --upstream /path/to/PercePiano   # live: re-record from the original, then compare
    percepiano parity --training                       # the whole training run, step by step (needs --data)
    percepiano parity --training --steps 10 --upstream /path/to/PercePiano   # ... live, first 10 steps

Prints a table per level and tensor (max abs error, tolerance, pass/fail) for the recorded cases (every level
in float64 and float32, hierarchy utilities, ContextAttention, training steps, init laws, published config),
then the deviations of the chosen configuration and what each one changes. Exits 1 if any parity check fails
(deviations of the chosen configuration are reported, not failures).

Only ``--upstream`` needs the original checkout: it records fresh fixtures with ``reference_parity.capture``
(the live side) into a temporary directory; everything else reads the recorded fixtures
(``reference_parity.recorded``, ``reference_parity.compare``).

``--training`` compares a whole training run instead (the seed-exact replay, :mod:`percepiano.replay`): ours,
replaying the original's random draws, against the original's recorded run of performer fold 0 with seed 7
(``reference_parity/fixtures/replay/``), per step (loss, grad norm before clipping, lr), the batch order, the
initial weights and the epoch's valid / test loss and R²: the maximum error of each, its tolerance and the
first step where it exceeds it. It trains on the processed data (``--data`` / ``PERCEPIANO_DATA``); with
``--upstream`` the original's runs are recorded afresh (``reference_parity.capture_training``) first.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def register(subparsers) -> None:
    from ..config import PRESETS
    from ..constants import BOUNDARY_RULES, INITS, LEVELS

    p = subparsers.add_parser("parity", help="layer-by-layer comparison with the original code (recorded fixtures)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="configuration whose deviations to report (default han)")
    p.add_argument("--boundary-rule", choices=BOUNDARY_RULES, default=None, help="deviation: beat/measure boundary rule")
    p.add_argument("--attention-temperature", type=float, default=None, help="deviation: softmax temperature")
    p.add_argument("--init", choices=INITS, default=None, help="deviation: parameter initialisation")
    p.add_argument("--levels", default=",".join(LEVELS), help="comma-separated levels to compare (default all)")
    p.add_argument("--dtypes", default="float64,float32", help="comma-separated dtypes (default float64,float32)")
    p.add_argument("--fixtures", type=Path, default=None, help="fixture directory (default: the recorded ones)")
    p.add_argument("--upstream", default=None, help="original checkout: record fresh fixtures from it first (live)")
    p.add_argument("--failures-only", action="store_true", help="print only failing rows")
    g = p.add_argument_group("training run (seed-exact replay)")
    g.add_argument("--training", action="store_true",
                   help="compare the whole training run with the original's, step by step (instead of the layers)")
    g.add_argument("--data", default=None, help="with --training: percepiano_vnet_m2pf.npz (default: $PERCEPIANO_DATA)")
    g.add_argument("--steps", type=int, default=None,
                   help="with --training: only the first N steps (default: the whole recorded epoch, with its "
                        "valid / test metrics)")
    g.add_argument("--cases", default=None, metavar="PRESET:DTYPE,...",
                   help="with --training: the recorded cases to run (default all: han and bilstm, float64 and float32)")
    p.set_defaults(func=cmd_parity)


def cmd_parity(args) -> int:
    import torch

    if args.training:
        return cmd_parity_training(args)
    for option, value in (("--data", args.data), ("--steps", args.steps), ("--cases", args.cases)):
        if value is not None:
            raise ValueError(f"{option} applies only with --training")

    from reference_parity import compare as C
    from reference_parity import recorded
    from reference_parity.tolerances import DTYPES

    from ..config import describe_deviations, get_preset
    from ..constants import LEVELS

    levels = [lv for lv in args.levels.split(",") if lv]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for lv in levels:
        if lv not in LEVELS:
            raise ValueError(f"--levels: unknown level {lv!r}; expected some of {LEVELS}")
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"--dtypes: unknown dtype {d!r}; expected some of {sorted(DTYPES)}")
    overrides = {k: v for k, v in (("boundary_rule", args.boundary_rule), ("attention_temperature", args.attention_temperature),
                                   ("init", args.init)) if v is not None}
    cfg = get_preset(args.preset or "han", **overrides)  # raises ValueError on invalid values

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only costs time, and single-threaded is reproducible
    tmp = None
    try:
        fixture_dir = args.fixtures
        if args.upstream:
            from reference_parity import capture  # the live side: needs the original checkout

            tmp = tempfile.TemporaryDirectory(prefix="percepiano-parity-")
            print(f"recording fresh fixtures from the original at {args.upstream} ...", file=sys.stderr)
            if capture.main(["--upstream", args.upstream, "--out", tmp.name]) != 0:
                print("percepiano parity: recording from the original failed", file=sys.stderr)
                return 2
            fixture_dir = Path(tmp.name)
        elif fixture_dir is not None and not (fixture_dir / "MANIFEST.json").is_file():
            raise FileNotFoundError(f"--fixtures {fixture_dir}: no MANIFEST.json there")
        man = recorded.manifest(fixture_dir)
        print(f"percepiano parity: original {man['original']['repo']} @ {man['original']['commit']} "
              f"({'live' if args.upstream else 'recorded'} fixtures; recorded with torch {man['versions']['torch']})")
        report = C.run_all(fixture_dir, levels=levels, dtypes=dtypes)
        rows = report.failures if args.failures_only else report.rows
        print(C.Report(rows).table())
        n, bad = len(report.rows), len(report.failures)
        print(f"\n{n - bad}/{n} checks pass" + (f"; {bad} FAIL" if bad else ""))

        print(f"\n== configuration: preset {args.preset or 'han'}" + (f" + {overrides}" if overrides else ""))
        lines = describe_deviations(cfg)
        print("deviations from the original: " + ("none" if not lines else ""))
        for line in lines:
            print(f"  - {line}")
        if lines:
            effects = C.deviation_effects(cfg, fixture_dir, levels=levels)
            print(C.Report(effects).table())
        return 1 if bad else 0
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            tmp.cleanup()


def cmd_parity_training(args) -> int:
    """``--training``: the replay comparison (reference_parity/replay_compare.py), recorded or live."""
    import torch

    from reference_parity import recorded
    from reference_parity import replay_compare as RC

    from ..data import load_dataset

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps: expected an integer >= 1, got {args.steps}")
    only = None
    if args.cases:
        only = set()
        for case in args.cases.split(","):
            preset, _, dtype = case.partition(":")
            if not dtype:
                raise ValueError(f"--cases: expected PRESET:DTYPE items (e.g. han:float64), got {case!r}")
            only.add((preset, dtype))
    data = load_dataset(args.data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recorded runs are single-threaded
    tmp = None
    try:
        fixture_dir = args.fixtures
        if args.upstream:
            from reference_parity import capture_training  # the live side: needs the original checkout

            tmp = tempfile.TemporaryDirectory(prefix="percepiano-replay-")
            argv = ["--upstream", args.upstream, "--data", data.path, "--out", tmp.name]
            if args.steps is not None:
                argv += ["--steps", str(args.steps)]
            if args.cases:
                argv += ["--cases", args.cases]
            print(f"recording the original's training runs at {args.upstream} (minutes per case) ...", file=sys.stderr)
            if capture_training.main(argv) != 0:
                print("percepiano parity: recording from the original failed", file=sys.stderr)
                return 2
            fixture_dir = Path(tmp.name)
        elif fixture_dir is None:
            fixture_dir = recorded.REPLAY_DIR
        if not (Path(fixture_dir) / "MANIFEST.json").is_file():
            raise FileNotFoundError(f"{fixture_dir}: no MANIFEST.json (replay fixtures); regenerate with "
                                    f"`{recorded.REPLAY_REGENERATE}`")
        known = {(e["preset"], e["dtype"]) for e in RC.cases(fixture_dir)}
        if only is not None and not only <= known:
            raise ValueError(f"--cases: {sorted(only - known)} not recorded; recorded: {sorted(known)}")
        man = RC.manifest(fixture_dir)
        print(f"percepiano parity --training: original {man['original']['repo']} @ {man['original']['commit']} "
              f"({'live' if args.upstream else 'recorded'} runs; recorded with torch {man['versions']['torch']}, "
              f"{man['threads']} thread, {man['device']}); ours replays its random draws and its packed LSTM "
              f"arithmetic (--rng original)")
        report = RC.run_all(data, fixture_dir, steps=args.steps, only=only)
        rows = report.failures if args.failures_only else report.rows
        from reference_parity import compare as C

        print(C.Report(rows).table())
        n, bad = len(report.rows), len(report.failures)
        print(f"\n{n - bad}/{n} checks pass" + (f"; {bad} FAIL" if bad else ""))
        return 1 if bad else 0
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            tmp.cleanup()
