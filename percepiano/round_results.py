"""What a round folder holds, read from its files (no Ray, no training; docs/rounds.md): ``round.json`` (every
cell's summary over seeds and the record of every invocation), the status of each cell's folds (README.md's R²
table, ``percepiano round --status``) and the copy of its small outputs (``percepiano round --export``).
:mod:`percepiano.round` runs the round and writes the folder."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from .checkpoints import atomic_write_text
from .constants import BASELINES, N_FOLDS, PROTOCOL_EPOCHS
from .results import RESULTS, fold_dir, load_log, load_results, read_json_object, seed_of_dir
from .training import FOLD_RESULT, LOG

ROUND_JSON = "round.json"
ROUND_FORMAT = "percepiano.round/1"


def cell_path(preset: str, split: str, seed: int) -> str:
    """A cell's folder relative to the round folder: ``{preset}-{split}/seed{S}``, a ``percepiano cv`` run."""
    return f"{preset}-{split}/seed{int(seed)}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def load_history(root: Path) -> list[dict]:
    """The invocations recorded in ``root/round.json`` ([] without one)."""
    path = root / ROUND_JSON
    if not path.is_file():
        return []
    saved = read_json_object(path, "round summary")
    if saved.get("format") != ROUND_FORMAT or not isinstance(saved.get("invocations"), list):
        raise ValueError(f"{path}: not a round summary written by `percepiano round` (format {ROUND_FORMAT}, "
                         f"field 'invocations'); move it away to start the summary again")
    return list(saved["invocations"])


def find_cells(root: str | os.PathLike) -> list[tuple[str, dict]]:
    """Every cell of a round folder that has a ``results.json``: ``(path relative to root, results)``, sorted.
    Only the folders named as :func:`cell_path` names them count; ``ValueError`` for a results.json in the
    folder of another cell (its preset, split or seed differ from the folder's name)."""
    root = Path(root)
    found = []
    for path in sorted(root.glob(f"*-*/seed*/{RESULTS}")):
        if seed_of_dir(path.parent.name) is None:
            continue  # not a cell's folder (cell_path): e.g. a copy a user set aside as seed7_old
        res = load_results(path)
        want = cell_path(res["preset"], res["split"], int(res["seed"]))
        rel = path.parent.relative_to(root).as_posix()
        if rel != want:
            raise ValueError(f"{path}: the results of preset {res['preset']!r}, split {res['split']!r}, seed "
                             f"{res['seed']} in the folder of another cell ({rel}; expected {want}): move it there")
        found.append((rel, res))
    return found


def fold_numbers(res: Mapping) -> dict:
    """What a round reports of one finished fold, read the same way from its ``fold_result.json`` (``--status``)
    and from its entry in the cell's ``results.json`` (``round.json``)."""
    return {"fold": int(res["fold"]), "test_r2": float(res["test_r2"]), "best_epoch": res.get("best_epoch"),
            "epochs_trained": res.get("epochs_trained"), "train_seconds": float(res.get("train_seconds") or 0.0)}


def summarize_round(root: str | os.PathLike, request: Mapping | None = None) -> dict:
    """Per (preset, split) of the round folder ``root``: every seed's mean test R2 and fold spread, their mean,
    the seed spread (population std over seeds; None for one seed), the baselines of the same split and folds,
    the devices and the training time (sum of the folds' epoch times). Seeds of ``request`` without a
    ``results.json`` yet are listed as pending."""
    cells: dict[str, dict] = {}
    for rel, res in find_cells(root):
        name = f"{res['preset']}-{res['split']}"
        entry = cells.setdefault(name, {"preset": res["preset"], "split": res["split"], "seeds": {}})
        folds = [fold_numbers(f) for f in res["folds"]]
        entry["seeds"][str(res["seed"])] = {
            "dir": rel,
            "mean_test_r2": res["mean_test_r2"],
            "fold_std": res["fold_std"],
            "folds": [f["fold"] for f in folds],
            "per_fold_test_r2": [f["test_r2"] for f in folds],
            "best_epochs": [f["best_epoch"] for f in folds],
            "epochs": res.get("epochs"),
            "protocol": res.get("protocol"),
            "device": res.get("device"),
            "device_name": res.get("device_name"),
            "train_seconds": float(sum(f["train_seconds"] for f in folds)),
            "git_commit": res.get("git_commit"),
            "baselines": {k: {"mean_test_r2": v["mean_test_r2"], "fold_std": v["fold_std"]}
                          for k, v in (res.get("baselines") or {}).items()},
        }
    for entry in cells.values():
        seeds = entry["seeds"]
        means = np.array([s["mean_test_r2"] for s in seeds.values()], dtype=np.float64)
        first = next(iter(seeds.values()))
        entry.update(
            mean_test_r2=float(means.mean()),
            fold_std=float(np.mean([s["fold_std"] for s in seeds.values()])),  # mean over seeds of the fold std
            seed_std=float(means.std()) if len(means) > 1 else None,  # population std over seeds (ddof 0)
            n_seeds=len(means),
            baselines=first["baselines"],
            devices=sorted({str(s["device"]) for s in seeds.values()}),
            train_seconds=float(sum(s["train_seconds"] for s in seeds.values())),
        )
        # seeds averaged although their runs differ in length or folds (a short test run at another seed, a
        # seed with half its folds): said beside the numbers, not hidden in them
        differ = [f"{what} {sorted({str(s[what]) for s in seeds.values()})}" for what in ("epochs", "folds")
                  if len({str(s[what]) for s in seeds.values()}) > 1]
        if differ:
            entry["seeds_differ"] = "; ".join(differ)
    if request is not None:
        for preset in request["presets"]:
            for split in request["splits"]:
                entry = cells.setdefault(f"{preset}-{split}", {"preset": preset, "split": split, "seeds": {}})
                entry["pending_seeds"] = [s for s in request["seeds"] if str(s) not in entry["seeds"]
                                          or entry["seeds"][str(s)]["folds"] != sorted(request["folds"])]
    return {k: cells[k] for k in sorted(cells)}


def write_round_json(root: str | os.PathLike, request: Mapping, invocations: list[dict]) -> dict:
    """Write ``root/round.json`` (atomically) from the cells on disk and the invocations; returns it."""
    root = Path(root)
    cells = summarize_round(root, request)
    for name, entry in cells.items():  # the tasks' wall time, over every invocation recorded
        entry["task_wall_seconds"] = float(sum(
            t.get("wall_seconds") or 0.0 for inv in invocations for t in inv.get("tasks", [])
            if str(t.get("cell", "")).split("/")[0] == name))
    summary = {"format": ROUND_FORMAT, "request": dict(request), "cells": cells,
               "baselines_note": f"{', '.join(BASELINES)} on the same split and folds, from each cell's results.json",
               "invocations": invocations, "updated": now()}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(summary, indent=1) + "\n", root / ROUND_JSON)
    return summary


def format_round_table(summary: Mapping) -> str:
    """One row per (preset, split): seeds, mean test R2 over seeds, mean fold std, seed std, ridge, device."""
    lines = [f"{'cell':<24} {'seeds':>5} {'mean test R2':>12} {'fold std':>9} {'seed std':>9} {'ridge':>7}  "
             f"device, train time"]
    for name, c in summary["cells"].items():
        if not c["seeds"]:
            lines.append(f"{name:<24} {0:>5} {'-':>12} {'-':>9} {'-':>9} {'-':>7}  pending seeds "
                         f"{c.get('pending_seeds')}")
            continue
        ridge = (c["baselines"].get("ridge") or {}).get("mean_test_r2")
        seed_std = "-" if c["seed_std"] is None else f"{c['seed_std']:.4f}"
        lines.append(
            f"{name:<24} {c['n_seeds']:>5} {c['mean_test_r2']:>12.4f} {c['fold_std']:>9.4f} {seed_std:>9} "
            f"{'-' if ridge is None else format(ridge, '.4f'):>7}  {'/'.join(c['devices'])}, "
            f"{c['train_seconds'] / 3600:.2f} h" + (f"; pending seeds {c['pending_seeds']}" if c.get("pending_seeds") else "")
            + (f"; seeds differ in {c['seeds_differ']}" if c.get("seeds_differ") else "")
        )
    return "\n".join(lines)



# --------------------------------------------------------------------------------------------- status


# --status gives a training fold's pace as the mean time of its last few epochs (recent load, not the start's)
RATE_EPOCHS = 5


def round_status(root: str | os.PathLike, request: Mapping | None = None) -> list[dict]:
    """What a round folder holds now, read from its files (no Ray, no data): one entry per cell and seed
    (``ROUND/{preset}-{split}/seed{S}/``, those of ``request`` included when they hold nothing yet) with each
    fold's state: ``done`` (its ``fold_result.json``: test R2, best epoch), ``training`` (epochs logged so far
    in ``log.jsonl``, of the run's total, the mean seconds of its last :data:`RATE_EPOCHS` epochs and the
    seconds left at that pace) or ``pending``; and the finished folds' mean test R2 and fold std
    (population, as results.json), the published target and the ridge baseline of the split."""
    from .results import load_targets

    root = Path(root)
    targets = load_targets()
    wanted = set()
    if request is not None:
        wanted = {(p, s, int(seed)) for p in request["presets"] for s in request["splits"] for seed in request["seeds"]}
    found = set()
    for seed_dir in root.glob("*-*/seed*"):
        preset, _, split = seed_dir.parent.name.partition("-")
        seed = seed_of_dir(seed_dir.name)
        if seed_dir.is_dir() and seed is not None:
            found.add((preset, split, seed))
    folds = [int(f) for f in (request or {}).get("folds", range(N_FOLDS))]
    epochs = ((request or {}).get("train_config") or {}).get("epochs", PROTOCOL_EPOCHS)
    rows = []
    for preset, split, seed in sorted(wanted | found):
        cell_dir = root / cell_path(preset, split, seed)
        states = {}
        for fold in sorted(set(folds) | {int(p.name[4:]) for p in cell_dir.glob("fold*") if p.name[4:].isdigit()}):
            fdir = cell_dir / fold_dir(fold)
            if (fdir / FOLD_RESULT).is_file():
                res = fold_numbers(read_json_object(fdir / FOLD_RESULT, "fold result"))
                states[fold] = {"state": "done", "test_r2": res["test_r2"], "best_epoch": res["best_epoch"],
                                "epochs": res["epochs_trained"] or epochs}
            elif (fdir / LOG).is_file():
                records = load_log(fdir / LOG, drop_cut_last_line=True)  # the round may be appending to it
                recent = [r["seconds"] for r in records[-RATE_EPOCHS:] if r.get("seconds") is not None]
                done = int(records[-1]["epoch"]) if records else 0
                rate = float(np.mean(recent)) if recent else None
                states[fold] = {"state": "training", "epochs_done": done, "epochs": epochs,
                                "seconds_per_epoch": rate,
                                # at the recent pace; the final test evaluation adds about one epoch's eval
                                "seconds_left": None if rate is None else max(epochs - done, 0) * rate}
            else:
                states[fold] = {"state": "pending"}
        r2 = np.array([s["test_r2"] for s in states.values() if s["state"] == "done"], dtype=np.float64)
        split_targets = (targets.get("targets") or {}).get(split) or {}
        ridge = (((targets.get("baselines") or {}).get(split) or {}).get("ridge") or {}).get("mean_test_r2")
        rows.append({"preset": preset, "split": split, "seed": seed, "folds": states,
                     "n_done": int(r2.size), "mean_test_r2": float(r2.mean()) if r2.size else None,
                     "fold_std": float(r2.std()) if r2.size else None,
                     "paper": split_targets.get(preset), "ridge": ridge,
                     "complete": (cell_dir / RESULTS).is_file()})
    return rows


def format_status_markdown(rows: list[dict]) -> str:
    """The R2 table of README.md: per cell, the measured mean +- fold std of its finished folds, folds x
    seeds, the paper's value, ridge on the split and each fold's state."""
    lines = ["| cell | measured mean test R² ± fold std | folds × seeds | paper | ridge | folds |",
             "|---|---|---|---|---|---|"]
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["preset"], r["split"]), []).append(r)
    for (preset, split), seeds in cells.items():
        done = [r for r in seeds if r["n_done"]]
        if done:
            means = [r["mean_test_r2"] for r in done]
            measured = " / ".join(f"{r['mean_test_r2']:.3f} ± {r['fold_std']:.3f}" if r["n_done"] > 1
                                  else f"{r['mean_test_r2']:.3f} (one fold)" for r in done)
            if len(done) > 1:
                measured = f"{np.mean(means):.3f} (seeds: {measured})"
        else:
            measured = "-"
        counts = sorted({r["n_done"] for r in seeds})
        folds_x_seeds = " / ".join(f"{r['n_done']}" for r in seeds) + f" × {len(seeds)}" if len(counts) > 1 else \
            f"{counts[0]} × {len(seeds)}"
        states = []
        for r in seeds:
            parts = []
            for fold, s in r["folds"].items():
                if s["state"] == "done":
                    parts.append(f"{fold}: {s['test_r2']:.3f} (best epoch {s['best_epoch']})")
                elif s["state"] == "training":
                    rate = "" if s.get("seconds_per_epoch") is None else \
                        f" ({s['seconds_per_epoch']:.0f} s/epoch, {s['seconds_left'] / 3600:.1f} h left)"
                    parts.append(f"{fold}: epoch {s['epochs_done']}/{s['epochs']}{rate}")
                else:
                    parts.append(f"{fold}: pending")
            states.append(f"seed {r['seed']}: " + ", ".join(parts))
        paper = seeds[0]["paper"]
        ridge = seeds[0]["ridge"]
        paper_text = "-" if paper is None else f"{paper:.3f}"
        ridge_text = "-" if ridge is None else f"{ridge:.3f}"
        lines.append(f"| `{preset}` {split} | {measured} | {folds_x_seeds} | {paper_text} | {ridge_text} | "
                     f"{'; '.join(states)} |")
    return "\n".join(lines)


# The small outputs of a round, what a repository may keep of it (checkpoints and predictions stay behind).
EXPORTED_FILES = (ROUND_JSON, RESULTS, "results.csv", FOLD_RESULT, LOG, "gates.json")


def export_results(root: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Copy the small outputs of the round folder ``root`` (:data:`EXPORTED_FILES`, at their relative paths)
    into ``dest``; returns the files written (those not already there with the same text). Checkpoints and
    test predictions are never copied, nor the log of a fold still training (its checkpoint is not copied, so a
    restore from ``dest`` trains it again). The round
    folder's own path, which the recorded command lines hold (``--out``), is written ``ROUND``, and ``dest``'s
    (``--mirror-to``) ``MIRROR``: published outputs name no path of the machine that ran them. Only absolute
    spellings are replaced: a relative one names no machine, and a short one (``--export r``) would match
    inside other words."""
    root, dest = Path(root), Path(dest)
    if not root.is_dir():
        raise ValueError(f"{root}: no such round folder")

    def spellings_of(path: Path, placeholder: str) -> list[tuple[str, str]]:
        return [(s, placeholder) for s in {str(path.resolve()), str(path.absolute())}]

    # Longest first, so that a folder inside the other is replaced whole.
    spellings = sorted(spellings_of(root, "ROUND") + spellings_of(dest, "MIRROR"), key=lambda p: len(p[0]),
                       reverse=True)
    written = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name not in EXPORTED_FILES:
            continue
        if path.name == LOG and not (path.parent / FOLD_RESULT).is_file():
            continue  # a fold still training: without its last.pt a restore trains it again from epoch 0
        text = path.read_text()
        for spelling, placeholder in spellings:
            text = text.replace(spelling, placeholder)
        target = dest / path.relative_to(root)
        if target.is_file() and target.read_text() == text:
            continue  # unchanged: not rewritten (a mirror is written after every task)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(text, target)  # a copy stopped half-way never replaces a whole one
        written.append(target)
    return written
