"""Options shared by ``percepiano train`` and ``percepiano cv`` (and ``--data`` by every data command), and
their translation into a :class:`~percepiano.training.TrainConfig` and model overrides."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..constants import SPLIT_SCHEMES


def log(msg: str) -> None:
    """Progress and notes go to stderr; stdout carries the command's result."""
    print(msg, file=sys.stderr, flush=True)


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="percepiano_vnet_m2pf.npz (default: $PERCEPIANO_DATA)")


def add_run_options(p: argparse.ArgumentParser, presets: list[str]) -> None:
    add_data(p)
    p.add_argument("--preset", required=True, choices=presets, help="model preset (or baseline for cv)")
    p.add_argument("--split", required=True, choices=SPLIT_SCHEMES, help="split scheme")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 100, the original)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=None, help="seed (default 7, the original th_seed)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    p.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch.set_num_threads)")
    g = p.add_argument_group("small runs (deviate from the original protocol; recorded in the results)")
    g.add_argument("--limit-segments", type=int, default=None, help="first N segments of each of train/valid/test")
    g.add_argument("--max-batches", type=int, default=None, help="at most N training batches per epoch")
    g.add_argument("--hidden-size", type=int, default=None, help="override all LSTM sizes (ModelConfig.hidden_size)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default 2.5e-5)")
    g.add_argument("--no-epoch-test", action="store_true", help="skip the per-epoch test evaluation (log only)")


def train_config(args):
    """The :class:`~percepiano.training.TrainConfig` of the run options (and ``--threads`` applied)."""
    from ..training import TrainConfig

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)

    changes = {}
    for field, value in (
        ("epochs", args.epochs), ("seed", args.seed), ("limit_segments", args.limit_segments),
        ("max_train_batches", args.max_batches), ("lr", args.lr),
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
