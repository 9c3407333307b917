"""``percepiano round``: presets x splits x seeds x folds as Ray tasks into one resumable folder
(docs/rounds.md; :mod:`percepiano.round`, :mod:`percepiano.round_results`).

    percepiano round --presets han,bilstm,bilstm_sa --splits composition,performer,work --seeds 7,8,9 --out runs/round16
    percepiano round ... --address auto                      # the Ray cluster `ray start` runs on this machine
    percepiano round ... --gpus-per-task 0.25                # 4 folds share each GPU
    percepiano round --status --out runs/round16             # every cell's folds, as README.md's R2 table
    percepiano round --export results/round16 --out runs/round16   # its small outputs, to commit (no checkpoints)
    percepiano round ... --mirror-to results/round16         # the same copy after every finished task

``ROUND/{preset}-{split}/seed{S}/`` is a ``percepiano cv`` run directory; ``ROUND/round.json`` the summary.
Rerun the same command to continue: finished folds are reused (same preset, configs, seed, code, data),
others continue from their ``last.pt``; anything else is refused before a task starts. A round restored from
its exported small outputs on another machine reuses its finished folds with ``--reuse-without-checkpoint``. Needs
``pip install 'percepiano[round]'``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..constants import N_FOLDS, SEED_RANGE, SPLIT_SCHEMES
from ._options import (
    add_data,
    add_protocol_options,
    add_reuse_options,
    add_reuse_without_checkpoint_option,
    check_run_options,
    command_line,
    int_list,
    log,
    model_overrides,
    train_config,
)


def register(subparsers) -> None:
    from ..config import PRESETS

    p = subparsers.add_parser("round", help="a debugging round on Ray: presets x splits x seeds x folds -> "
                                            "ROUND/{preset}-{split}/seed{S}/ and ROUND/round.json")
    add_data(p)
    p.add_argument("--presets", help=f"comma-separated neural presets ({', '.join(sorted(PRESETS))})")
    p.add_argument("--splits", help=f"comma-separated split schemes ({', '.join(SPLIT_SCHEMES)})")
    p.add_argument("--seeds", default="7", help="comma-separated seeds (default 7, the original th_seed)")
    p.add_argument("--folds", default=",".join(str(f) for f in range(N_FOLDS)),
                   help=f"comma-separated folds (default all {N_FOLDS})")
    p.add_argument("--out", required=True, type=Path, help="the round folder (ROUND)")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="train nothing: copy the round's small outputs (round.json, results.json/.csv, "
                        "fold_result.json, log.jsonl, gates.json; no checkpoints) into DIR, e.g. to commit them")
    p.add_argument("--mirror-to", type=Path, default=None, metavar="DIR",
                   help="while the round runs, copy its small outputs (what --export copies) into DIR after every "
                        "finished task: on a machine that may not last, at most the running folds are lost")
    p.add_argument("--mirror-checkpoints", action="store_true",
                   help="with --mirror-to: also copy every training fold's best.pt and last.pt into DIR after each "
                        "epoch (the workers must see DIR), so that at most an epoch per fold is lost; DIR then "
                        "holds checkpoints (207 MB per han fold): not a folder you commit")
    p.add_argument("--status", action="store_true",
                   help="train nothing: print every cell's folds (done with test R2, training at epoch E, pending) "
                        "as the Markdown R2 table of README.md, from the files in ROUND (no Ray needed)")
    g = p.add_argument_group("Ray")
    g.add_argument("--address", default=None,
                   help="an existing Ray cluster (HOST:PORT, or auto: the one `ray start` runs on this machine); "
                        "default: a new Ray instance on this machine")
    g.add_argument("--threads-per-task", default="auto",
                   help="CPU threads of each task (Ray num_cpus); auto: 1 with GPUs, else the measured faster "
                        "setting for CPUs (constants.ROUND_CPU_THREADS_PER_TASK)")
    g.add_argument("--gpus-per-task", default="auto",
                   help="share of one GPU per task, e.g. 0.25 packs 4 folds on a GPU; auto: 0.25 where the "
                        "cluster has GPUs, else 0 (CPU)")
    g.add_argument("--max-retries", type=int, default=None,
                   help="restarts of a task whose worker died, each from the fold's last.pt (default 3)")
    add_reuse_options(p)
    add_reuse_without_checkpoint_option(p)
    add_protocol_options(p)
    p.set_defaults(func=cmd_round)


def cmd_round(args) -> int:
    from ..config import PRESETS
    from ..data import resolve_data_path
    from ..round import RoundFailed, RoundSpec, run_round
    from ..round_results import ROUND_JSON, format_round_table

    if args.export is not None:
        from ..round_results import export_results

        written = export_results(args.out, args.export)
        print(f"copied {len(written)} new or changed files of {args.out} into {args.export}")
        if not args.status:
            return 0
    if args.status:
        return _print_status(args)
    missing = [o for o, v in (("--presets", args.presets), ("--splits", args.splits)) if not v]
    if missing:
        raise ValueError(f"{' and '.join(missing)}: required to run a round (only --status goes without)")
    args.resume, args.seed, args.threads = True, None, None  # a round always continues; seeds and threads are its own
    check_run_options(args)
    spec = RoundSpec(
        presets=_names(args.presets, "--presets", sorted(PRESETS)),
        splits=_names(args.splits, "--splits", SPLIT_SCHEMES),
        seeds=tuple(int_list(args.seeds, "--seeds", SEED_RANGE)),
        folds=tuple(int_list(args.folds, "--folds", range(N_FOLDS))),
        train_config=train_config(args),
        model_overrides=model_overrides(args),
        keep=args.keep,
        allow_code_change=args.allow_code_change,
        reuse_without_checkpoint=args.reuse_without_checkpoint,
    )
    try:
        summary = run_round(
            spec, resolve_data_path(args.data), args.out, address=args.address,
            threads_per_task=args.threads_per_task if args.threads_per_task == "auto" else _number(
                args.threads_per_task, "--threads-per-task", int),
            gpus_per_task=args.gpus_per_task if args.gpus_per_task == "auto" else _number(
                args.gpus_per_task, "--gpus-per-task", float),
            max_retries=args.max_retries, log=log, command=command_line(args), mirror_to=args.mirror_to,
            mirror_checkpoints=args.mirror_checkpoints,
        )
    except RoundFailed as exc:
        print(f"percepiano round: error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        if exc.name != "ray":
            raise
        raise ValueError("Ray is not installed: pip install 'percepiano[round]'") from None
    print(format_round_table(summary))
    print(f"\nwrote {args.out / ROUND_JSON}")
    return 0


def _print_status(args) -> int:
    """``--status``: the cells asked for (``--presets``/``--splits``/``--seeds``/``--folds``, else the request
    of ROUND/round.json) and every cell found in ROUND."""
    from ..config import PRESETS
    from ..results import read_json_object
    from ..round_results import ROUND_JSON, format_status_markdown, round_status

    if not args.out.is_dir():
        raise ValueError(f"--out {args.out}: no such round folder")
    saved = None
    if (args.out / ROUND_JSON).is_file():
        saved = read_json_object(args.out / ROUND_JSON, "round summary").get("request")
    request = saved
    if args.presets or args.splits:
        # the epochs of a training fold: --epochs, else those the round was last run with
        epochs = args.epochs or ((saved or {}).get("train_config") or {}).get("epochs")
        request = {"presets": _names(args.presets or "", "--presets", sorted(PRESETS)),
                   "splits": _names(args.splits or "", "--splits", SPLIT_SCHEMES),
                   "seeds": int_list(args.seeds, "--seeds", SEED_RANGE), "folds": int_list(args.folds, "--folds", range(N_FOLDS)),
                   "train_config": {"epochs": epochs} if epochs else {}}
    print(format_status_markdown(round_status(args.out, request)))
    return 0


def _names(text: str, option: str, allowed) -> tuple[str, ...]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"{option}: expected distinct comma-separated names from {', '.join(allowed)}, got {text!r}")
    return tuple(names)


def _number(text: str, option: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{option}: expected 'auto' or a {'whole ' if kind is int else ''}number, got {text!r}") from None
