"""Options shared by ``percepiano train`` and ``percepiano cv`` (and ``--data`` by every data command), and
their translation into a :class:`~percepiano.training.TrainConfig` and model overrides."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ..constants import SPLIT_SCHEMES


def log(msg: str) -> None:
    """Progress and notes go to stderr; stdout carries the command's result."""
    print(msg, file=sys.stderr, flush=True)


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="percepiano_vnet_m2pf.npz (default: $PERCEPIANO_DATA)")


def add_data_and_raw(p: argparse.ArgumentParser) -> None:
    """``--data`` (the reference processed npz) and ``--raw`` (the dataset's raw/ folder): the feature commands."""
    add_data(p)
    p.add_argument("--raw", default=None, help="raw/ folder of the dataset (default: $PERCEPIANO_RAW)")


def raw_paths(args) -> tuple:
    """The ``--data`` and ``--raw`` of :func:`add_data_and_raw` (or their environment variables), both existing."""
    return (existing_path(args.data, "PERCEPIANO_DATA", "--data"), existing_path(args.raw, "PERCEPIANO_RAW", "--raw"))


DEFAULT_DEVICE = "auto"


def add_run_options(p: argparse.ArgumentParser, presets: list[str]) -> None:
    add_data(p)
    p.add_argument("--preset", required=True, choices=presets, help="model preset (or baseline for cv)")
    p.add_argument("--split", required=True, choices=SPLIT_SCHEMES, help="split scheme")
    p.add_argument("--out", required=True, type=Path, help="output directory (refused if it holds another run)")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=None, help="seed (default 7, the original th_seed)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out; only a run with the same preset, configs, seed, split, code and "
                        "data is continued (--epochs may grow), anything else is refused with what differs")
    add_reuse_options(p)
    p.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch.set_num_threads), >= 1")
    add_protocol_options(p)


def add_reuse_options(p: argparse.ArgumentParser) -> None:
    """``--allow-code-change`` and ``--keep``: how saved folds are reused and what a finished fold keeps."""
    from ..training import KEEP_ALL, KEEP_CHOICES

    p.add_argument("--allow-code-change", action="store_true",
                   help="continue or reuse a run written by other percepiano code: another version or edited "
                        "source of the package (recorded in the run; with --resume for train and cv). Another git "
                        "commit of the same source needs no flag: the commit is recorded, not compared")
    p.add_argument("--keep", choices=KEEP_CHOICES, default=KEEP_ALL,
                   help="what a finished fold keeps: all (best.pt and last.pt, the default) or best (last.pt, "
                        "3x the size of best.pt, is deleted; the fold is still reused by --resume)")


def add_reuse_without_checkpoint_option(p: argparse.ArgumentParser) -> None:
    """``--reuse-without-checkpoint`` (``cv`` and ``round``): folds restored from their small outputs."""
    p.add_argument("--reuse-without-checkpoint", action="store_true",
                   help="also reuse finished folds that kept only their small outputs (fold_result.json, no best.pt: "
                        "a run restored from `percepiano round --export` on another machine); their identity is "
                        "checked as usual and results.json lists them under folds_without_checkpoint (report and "
                        "the paired gate cannot read them)")


def add_protocol_options(p: argparse.ArgumentParser) -> None:
    """The options :func:`train_config` and :func:`model_overrides` read (``train``, ``cv``, ``round``)."""
    from ..training import DTYPES, RNG_CHOICES

    p.add_argument("--epochs", type=int, default=None, help="epochs (default 100, the original)")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    p.add_argument("--rng", choices=RNG_CHOICES, default=None,
                   help="random draws: original (replay the original's init, batch order and dropout: with the "
                        "same seed, on a CPU, the original's run step for step), own (our faster plan) or auto "
                        "(the default: original on a CPU, own on a GPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="training precision (default float32, the original's; float64 for exact comparisons)")
    add_small_run_options(p)


def add_comparison_options(p: argparse.ArgumentParser) -> None:
    """How two rounds are compared (``gate`` and ``report``): the paired cluster bootstrap of
    :mod:`percepiano.paired` and the margin of :mod:`percepiano.gate`."""
    from ..constants import BOOTSTRAP_SEED, CLUSTERINGS, DEFAULT_CLUSTERING, DEFAULT_LEVEL, DEFAULT_MARGIN, DEFAULT_RESAMPLES

    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help=f"largest tolerated drop of R2 against a previous round (default {DEFAULT_MARGIN}: below half "
                   "the smallest gap between two published models on one split)")
    p.add_argument("--level", type=float, default=DEFAULT_LEVEL, help=f"interval level (default {DEFAULT_LEVEL})")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                   help=f"bootstrap replicates (default {DEFAULT_RESAMPLES}; RNG seed fixed at {BOOTSTRAP_SEED})")
    p.add_argument("--cluster", default=DEFAULT_CLUSTERING, choices=CLUSTERINGS,
                   help=f"how test segments are resampled together (default {DEFAULT_CLUSTERING}: the performances "
                   "of one score excerpt)")


def add_step_log_option(p: argparse.ArgumentParser) -> None:
    """``--step-log`` (``train`` and ``cv``): ``steps.jsonl`` in each fold directory."""
    p.add_argument("--step-log", action="store_true",
                   help="write steps.jsonl in each fold directory: one record per optimizer step (step, epoch, "
                        "loss, grad_norm before clipping, lr)")


def add_small_run_options(p: argparse.ArgumentParser) -> None:
    """The options of small runs, each a departure from the original protocol."""
    g = p.add_argument_group("small runs (deviate from the original protocol; recorded in the results)")
    g.add_argument("--limit-segments", type=int, default=None, help="first N segments of each of train/valid/test")
    g.add_argument("--max-batches", type=int, default=None, help="at most N training batches per epoch")
    g.add_argument("--hidden-size", type=int, default=None, help="override all LSTM sizes (ModelConfig.hidden_size)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default 2.5e-5)")
    g.add_argument("--no-epoch-test", action="store_true", help="skip the per-epoch test evaluation (log only)")


_POSITIVE = (("threads", "--threads"), ("epochs", "--epochs"), ("limit_segments", "--limit-segments"),
             ("max_batches", "--max-batches"), ("hidden_size", "--hidden-size"))


def check_run_options(args) -> None:
    """Refuse run options that would be ignored or fail later: counts below 1, a learning rate <= 0, an
    ``--out`` that is (or lies inside) a file, ``--allow-code-change`` without ``--resume``."""
    for field, option in _POSITIVE:
        value = getattr(args, field, None)
        if value is not None and value < 1:
            raise ValueError(f"{option}: expected an integer >= 1, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr: expected a number > 0, got {args.lr}")
    for path in (args.out, *args.out.parents):
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"--out {args.out}: {path} is a file; expected a directory or a path that does not exist")
            break
    if args.allow_code_change and not args.resume:
        raise ValueError("--allow-code-change only applies with --resume")
    if getattr(args, "reuse_without_checkpoint", False) and not args.resume:
        raise ValueError("--reuse-without-checkpoint only applies with --resume")


def refuse_training_options(args, preset: str, extra: tuple = ()) -> None:
    """A baseline trains nothing: name every training option set on the command line (it would ignore it).
    ``extra``: more ``(namespace field, option, default)`` of the command's own."""
    from ..training import KEEP_ALL

    training_only = (
        ("epochs", "--epochs", None), ("seed", "--seed", None), ("lr", "--lr", None),
        ("hidden_size", "--hidden-size", None), ("max_batches", "--max-batches", None),
        ("limit_segments", "--limit-segments", None), ("deterministic", "--deterministic", False),
        ("no_epoch_test", "--no-epoch-test", False), ("device", "--device", DEFAULT_DEVICE),
        ("threads", "--threads", None), ("keep", "--keep", KEEP_ALL), ("rng", "--rng", None),
        ("dtype", "--dtype", None), ("step_log", "--step-log", False), *extra,
    )
    given = [option for field, option, default in training_only if getattr(args, field, default) != default]
    if given:
        raise ValueError(f"{', '.join(given)}: the {preset} baseline trains nothing and would ignore "
                         f"{'it' if len(given) == 1 else 'them'}")


def int_list(text: str, option: str, allowed: range | None = None) -> list[int]:
    """``"0,2"`` -> ``[0, 2]``: distinct integers (from ``allowed``), or a ``ValueError`` naming ``option``."""
    expected = f"distinct comma-separated integers{f' from {allowed.start}-{allowed.stop - 1}' if allowed is not None else ''}"
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{option}: expected {expected}, got {text!r}") from None
    if len(set(values)) != len(values) or (allowed is not None and any(v not in allowed for v in values)):
        raise ValueError(f"{option}: expected {expected}, got {text!r}")
    return values


def command_line(args) -> str | None:
    """The command line as typed (``cli.main`` stores its argv on the namespace), quoted for a shell."""
    argv = getattr(args, "argv", None)
    return None if argv is None else shlex.join(["percepiano", *argv])


def train_config(args):
    """The :class:`~percepiano.training.TrainConfig` of the run options (and ``--threads`` applied)."""
    from ..training import TrainConfig

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    changes = {}
    for field, value in (
        ("epochs", args.epochs), ("seed", args.seed), ("limit_segments", args.limit_segments),
        ("max_train_batches", args.max_batches), ("lr", args.lr), ("rng", args.rng), ("dtype", args.dtype),
    ):
        if value is not None:
            changes[field] = value
    if args.deterministic:
        changes["deterministic"] = True
    if args.no_epoch_test:
        changes["eval_test_every_epoch"] = False
    return TrainConfig(**changes)


def model_overrides(args) -> dict:
    return {"hidden_size": args.hidden_size} if args.hidden_size is not None else {}


def existing_path(value: str | None, env: str, what: str) -> Path:
    """``value``, else ``$env``, as a path that exists (a file or a folder); a clear error naming ``what``."""
    value = value or os.environ.get(env)
    if not value:
        raise ValueError(f"{what} is required: pass it or set ${env}")
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path
