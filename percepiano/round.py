"""Rounds at scale: every (preset, split, seed, fold) of a debugging round as one Ray task, in one folder that
survives interruptions (docs/rounds.md).

Layout: ``ROUND/{preset}-{split}/seed{S}/`` is exactly the ``percepiano cv`` run directory of that preset,
split and seed (``results.json``, ``results.csv``, ``fold{k}/``), so a cell started by ``percepiano cv --seed
S --out ROUND/P-S/seedS`` is adopted, and any cell can be read by ``percepiano gate`` and ``report``.
``ROUND/round.json`` summarises every cell (mean over seeds, fold and seed spread, baselines, device, time)
and keeps a record of every invocation and its tasks.

What :func:`run_round` does:

1. **plan** (here, before any task starts): for each cell the identity of its run
   (:func:`percepiano.provenance.run_identity`, as ``percepiano cv`` computes it), and per fold what ``cv
   --resume`` does with its directory (``percepiano.cv``'s own checks): reuse a finished fold, continue its
   ``last.pt``, or train it. A fold or cell written by another run (preset, configs, seed, code version,
   dataset sha256) is refused, every such cell named at once, before anything runs.
2. **fold tasks** (Ray): one per fold to train, :func:`percepiano.training.train_fold` with resume into its
   fold directory, on ``threads`` CPU threads and a ``gpus`` share of a GPU. A task whose worker dies (killed,
   out of memory, node lost) is retried by Ray and continues from the fold's ``last.pt``: on CPU the result is
   bitwise the uninterrupted run's (:mod:`percepiano.training`). A worker running other code or reading other
   data than this process refuses to train.
3. **cell task**, once a cell's folds are done: :func:`percepiano.cv.run_cv` with ``resume`` on the same
   resources: it reuses every fold, computes the mean/ridge baselines and writes ``results.json`` and
   ``results.csv`` exactly as ``percepiano cv`` (the device recorded is the workers').

Ray is imported only here, inside :func:`run_round` (``pip install 'percepiano[round]'``); planning needs no
Ray, and reading a round folder (``round.json``, ``--status``, ``--export``) is :mod:`percepiano.round_results`.
Every node must see ``ROUND`` and the dataset at the same paths (a shared filesystem) and run the same
percepiano checkout.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from .checkpoints import load_checkpoint
from .config import ModelConfig, get_preset
from .constants import (
    N_FOLDS,
    PRESET_FEATURES,
    ROUND_CPU_THREADS_PER_TASK,
    ROUND_GPUS_PER_TASK,
    ROUND_MAX_RETRIES,
    SPLIT_SCHEMES,
)
from .cv import apply_keep, check_run_dir, fold_state, run_cv, set_aside_lost_logs
from .data import load_dataset
from .provenance import code_version, data_sha256, fold_identity, identity_differences, run_identity, same_code
from .results import RESULTS, fold_dir, load_results, read_json_object
from .round_results import ROUND_JSON, cell_path, export_results, load_history, now, write_round_json
from .training import (
    BEST, FOLD_RESULT, KEEP_ALL, KEEP_CHOICES, LAST, LOG, PREDICTIONS, TrainConfig, existing_run_files, train_fold,
)

AUTO = "auto"


@dataclass(frozen=True)
class RoundSpec:
    """What a round trains: every (preset, split, seed, fold), each under ``train_config`` with its seed."""

    presets: tuple[str, ...]
    splits: tuple[str, ...]
    seeds: tuple[int, ...]
    folds: tuple[int, ...] = tuple(range(N_FOLDS))
    train_config: TrainConfig = TrainConfig()  # its seed is replaced by each of ``seeds``
    model_overrides: Mapping = dataclasses.field(default_factory=dict)
    keep: str = KEEP_ALL
    allow_code_change: bool = False
    reuse_without_checkpoint: bool = False  # reuse finished folds that kept only fold_result.json (restored)

    def __post_init__(self):
        def distinct(name, values, allowed=None):
            values = tuple(values)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"round {name}: expected distinct values, got {list(values)}")
            bad = [v for v in values if allowed is not None and v not in allowed]
            if bad:
                raise ValueError(f"round {name}: {bad} not in {list(allowed)}")
            object.__setattr__(self, name, values)

        distinct("presets", self.presets, sorted(PRESET_FEATURES))
        distinct("splits", self.splits, SPLIT_SCHEMES)
        distinct("seeds", [int(s) for s in self.seeds])
        distinct("folds", [int(f) for f in self.folds], range(N_FOLDS))
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"round keep: expected one of {list(KEEP_CHOICES)}, got {self.keep!r}")
        object.__setattr__(self, "model_overrides", dict(self.model_overrides))

    def cells(self) -> list["Cell"]:
        return [Cell(p, s, seed) for p in self.presets for s in self.splits for seed in self.seeds]

    def tcfg(self, seed: int) -> TrainConfig:
        return self.train_config.replace(seed=int(seed))


@dataclass(frozen=True)
class Cell:
    """One ``percepiano cv`` run of a round: a preset on a split with one seed."""

    preset: str
    split: str
    seed: int

    @property
    def name(self) -> str:  # the (preset, split) entry of round.json
        return f"{self.preset}-{self.split}"

    @property
    def path(self) -> str:  # relative to ROUND
        return cell_path(self.preset, self.split, self.seed)

    def fold_path(self, fold: int) -> str:  # a fold's folder relative to ROUND (the same in the round's mirror)
        return f"{self.path}/{fold_dir(fold)}"


@dataclass
class CellPlan:
    cell: Cell
    identity: dict
    reuse: list[int]  # folds finished by this run
    train: list[tuple[int, str]]  # (fold, "new" | "resume")
    up_to_date: bool  # results.json covers exactly the requested folds, all reused: nothing to do


# --------------------------------------------------------------------------------------------- plan


def cell_identity(spec: RoundSpec, cell: Cell, data) -> dict:
    """The run identity of a cell: what ``percepiano cv --preset P --split S --seed S`` with the same options
    records (:func:`percepiano.cv.run_cv` computes it from the same arguments)."""
    model_cfg = get_preset(cell.preset, **spec.model_overrides)
    return run_identity(cell.preset, cell.split, PRESET_FEATURES[cell.preset], data, model_cfg.to_dict(),
                        spec.tcfg(cell.seed).to_dict())


def plan_round(spec: RoundSpec, data, root: str | os.PathLike) -> list[CellPlan]:
    """What each cell of ``spec`` needs under ``root``: the folds to reuse and to train, by ``percepiano cv
    --resume``'s checks. Raises one ``ValueError`` naming every refused cell and why (another run's folds, a
    damaged fold, folds that a resume would drop)."""
    root = Path(root)
    foreign = existing_run_files(root)
    if foreign:
        raise ValueError(f"{root} holds {', '.join(foreign)}: a `percepiano cv` or `train` run, not a round "
                         f"(a round holds {{preset}}-{{split}}/seed{{S}}/ folders and {ROUND_JSON}); choose another --out")
    plans, refused = [], []
    for cell in spec.cells():
        cdir = root / cell.path
        identity = cell_identity(spec, cell, data)
        try:
            check_run_dir(cdir, identity, list(spec.folds), True, spec.allow_code_change)
            reuse, train = [], []
            for fold in spec.folds:
                how = _fold_start(cdir / fold_dir(fold), fold_identity(identity, fold), spec.allow_code_change,
                                  spec.reuse_without_checkpoint)
                (reuse.append(fold) if how == "reuse" else train.append((fold, how)))
        except ValueError as exc:
            refused.append(f"{cell.path}: {exc}")
            continue
        covered = _results_folds(cdir)
        plans.append(CellPlan(cell, identity, reuse, train,
                              up_to_date=not train and covered == sorted(spec.folds)))
    if refused:
        raise ValueError(f"{root}: {len(refused)} cell(s) cannot be continued as asked; nothing was started:\n"
                         + "\n".join(refused))
    return plans


def _results_folds(cell_dir: Path) -> list[int] | None:
    """The folds a cell's results.json covers (None without one)."""
    if not (cell_dir / RESULTS).is_file():
        return None
    return sorted(int(f["fold"]) for f in load_results(cell_dir / RESULTS)["folds"])


# --------------------------------------------------------------------------------------------- tasks


@functools.lru_cache(maxsize=2)
def _cached_dataset(path: str, size: int, mtime_ns: int):
    return load_dataset(path)


def _worker_dataset(job: Mapping):
    """The dataset of a task (loaded once per worker process), checked to be the driver's: same code version
    and dataset sha256, else ``ValueError`` naming the node."""
    st = Path(job["data_path"]).stat()
    data = _cached_dataset(job["data_path"], st.st_size, st.st_mtime_ns)
    here = f"node {socket.gethostname()} (pid {os.getpid()})"
    if not same_code(code_version(), job["code"]):
        raise ValueError(f"{here} runs percepiano {code_version()}, the round's driver {job['code']}: every node "
                         f"must run the same source (version and source sha256)")
    if data_sha256(data) != job["data_sha256"]:
        raise ValueError(f"{here}: {job['data_path']} has sha256 {data_sha256(data)}, the driver's "
                         f"{job['data_sha256']}: every node must read the same dataset file")
    return data


def _task_log(key: str) -> Callable[[str], None]:
    return lambda msg: print(f"[{key}] {msg}", file=sys.stderr, flush=True)


def _where() -> dict:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}


def _fold_start(fdir: Path, identity: dict, allow_code_change: bool, without_checkpoint: bool) -> str:
    """What a fold of the round does with its directory ("reuse", "resume", "new"): :func:`percepiano.cv.
    fold_state`, and "new" for a lone ``best.pt`` of this very fold, what percepiano before the last.pt-first
    write order left when stopped between the two checkpoint writes of epoch 1 (no epoch of it was recorded;
    :func:`_start_state` removes it)."""
    try:
        return fold_state(fdir, identity, False, allow_code_change, without_checkpoint)[0]
    except ValueError:
        if _lone_best(fdir, identity):
            return "new"
        raise


def _lone_best(fdir: Path, identity: dict) -> bool:
    if existing_run_files(fdir) != [BEST]:
        return False
    saved = load_checkpoint(fdir / BEST).get("identity")
    return isinstance(saved, Mapping) and not identity_differences(saved, identity)  # the commit may have moved


def _start_state(fdir: Path, identity: dict, allow_code_change: bool, without_checkpoint: bool,
                 log: Callable[[str], None]) -> str:
    """:func:`_fold_start` when the fold's task starts (the plan's check again, since a retried task finds what
    its killed attempt left), with a lone ``best.pt`` removed and a lost run's logs set aside."""
    how = _fold_start(fdir, identity, allow_code_change, without_checkpoint)
    if how == "new":
        if _lone_best(fdir, identity):
            (fdir / BEST).unlink()
        set_aside_lost_logs(fdir, log)
    return how


def train_task(job: Mapping) -> dict:
    """One fold of a round in a Ray worker: :func:`percepiano.training.train_fold` into ``job["dir"]``,
    continuing its ``last.pt`` if there is one. Returns the fold's numbers, how it started and where it ran."""
    t0 = time.perf_counter()
    torch.set_num_threads(int(job["threads"]))
    data = _worker_dataset(job)
    model_cfg, tcfg = ModelConfig.from_dict(job["model_config"]), TrainConfig.from_dict(job["train_config"])
    identity = fold_identity(run_identity(job["preset"], job["split"], job["feature_set"], data,
                                          model_cfg.to_dict(), tcfg.to_dict()), job["fold"])
    fdir = Path(job["dir"])
    key = f"{job['cell']} fold {job['fold']}"
    log = _task_log(key)
    how = _start_state(fdir, identity, job["allow_code_change"], job["reuse_without_checkpoint"], log)
    mirror = None if job.get("mirror_dir") is None else Path(job["mirror_dir"])
    if how == "reuse":  # an earlier attempt finished it and died before returning
        result = read_json_object(fdir / FOLD_RESULT, "fold result")
    else:
        hook = job.get("on_epoch_end")

        def on_epoch_end(epoch: int, record: dict) -> None:
            if mirror is not None:  # before the hook: a test's hook may kill this worker
                try:
                    mirror_fold_checkpoints(fdir, mirror)
                except OSError as exc:  # the fold itself is fine: train on, the next epoch copies again
                    log(f"--mirror-checkpoints: could not copy epoch {epoch}'s checkpoints to {mirror} ({exc})")
            if hook is not None:
                hook(key, epoch)

        result = train_fold(
            model_cfg, tcfg, data, job["split"], job["fold"], fdir, feature_set=job["feature_set"],
            device=job["device"], resume=how == "resume", progress=False, log=log, on_epoch_end=on_epoch_end,
            run_info={"preset": job["preset"]}, allow_code_change=job["allow_code_change"], keep=job["keep"],
        )
    if mirror is not None:  # the finished fold: --keep best's removal of last.pt, its test predictions
        mirror_fold_checkpoints(fdir, mirror, FINISHED_FOLD_MIRROR)
    return {
        "kind": "fold", "cell": job["cell"], "fold": int(job["fold"]), "how": how,
        "test_r2": result["test_r2"], "best_epoch": result["best_epoch"],
        "epochs_trained": result.get("epochs_trained"), "train_seconds": result.get("train_seconds"),
        "device": str(job["device"]), "threads": torch.get_num_threads(),
        "wall_seconds": time.perf_counter() - t0, **_where(),
    }


# What --mirror-checkpoints keeps of a training fold, in this order: last.pt before best.pt, the order in which
# train_fold writes them, so that a mirror caught between the two copies holds what a run stopped between the
# two writes leaves: a last.pt whose own model is the best one where best.pt is older, which resume rebuilds
# best.pt from (the other order could pair a new best.pt with the last.pt before it: that epoch would be trained
# again, off the CPU not bitwise, and might not select it).
MIRRORED_CHECKPOINTS = (LAST, BEST)
# A finished fold: its model, predictions, result and log first, then last.pt (which --keep best removes), so
# that the mirror holds, at every moment, either a resumable last.pt or a reusable fold_result.json and best.pt.
FINISHED_FOLD_MIRROR = (BEST, PREDICTIONS, FOLD_RESULT, LOG, LAST)


def mirror_fold_checkpoints(fdir: Path, dest: Path, names: tuple[str, ...] = MIRRORED_CHECKPOINTS) -> None:
    """Make ``dest`` hold the files ``names`` of the fold directory ``fdir`` as they are now, in that order:
    each copied where it is new or changed (size or modification time: the fold's checkpoints are rewritten
    whole once an epoch, so a changed one has a later time; through a temporary file and a rename,
    so that ``dest`` never holds half a checkpoint), removed where ``fdir`` no longer has it (``--keep best``
    deletes ``last.pt``). Called by the fold's worker after every epoch (``round --mirror-checkpoints``)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src, target = fdir / name, dest / name
        if not src.is_file():
            target.unlink(missing_ok=True)
            continue
        st = src.stat()
        if target.is_file() and (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns):
            continue
        partial = target.with_name(target.name + ".partial")
        shutil.copy2(src, partial)  # keeps the modification time: the next call sees it unchanged
        os.replace(partial, target)


def cell_task(job: Mapping) -> dict:
    """A cell's ``results.json`` and ``results.csv`` in a Ray worker: :func:`percepiano.cv.run_cv` with resume
    over its finished folds (reused, not trained), with the baselines of the same split and folds."""
    t0 = time.perf_counter()
    torch.set_num_threads(int(job["threads"]))
    data = _worker_dataset(job)
    res = run_cv(
        job["preset"], job["split"], data, job["dir"], tcfg=TrainConfig.from_dict(job["train_config"]),
        model_overrides=job["model_overrides"], folds=job["folds"], device=job["device"], resume=True,
        progress=False, log=_task_log(job["cell"]), allow_code_change=job["allow_code_change"], keep=job["keep"],
        reuse_without_checkpoint=job["reuse_without_checkpoint"], command=job["command"],
    )
    return {"kind": "cell", "cell": job["cell"], "mean_test_r2": res["mean_test_r2"], "fold_std": res["fold_std"],
            "device": res["device"], "wall_seconds": time.perf_counter() - t0, **_where()}


# --------------------------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resources:
    """What each task asks Ray for, and the device it trains on."""

    threads: int  # CPU threads (Ray num_cpus and torch.set_num_threads)
    gpus: float  # share of one GPU (Ray num_gpus); 0 = CPU
    max_retries: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def resolve_resources(threads: int | str | None, gpus: float | str | None, max_retries: int | None,
                      nodes: list[dict]) -> Resources:
    """The task resources: ``gpus`` "auto" -> :data:`~percepiano.constants.ROUND_GPUS_PER_TASK` where the
    cluster has GPUs, else 0; ``threads`` "auto" -> 1 on GPUs, :data:`~percepiano.constants.
    ROUND_CPU_THREADS_PER_TASK` on CPUs. ``nodes``: the alive nodes' resources (``{"CPU": 2.0, "GPU": 1.0}``);
    ``ValueError`` when no node can run one task (Ray would wait for ever)."""
    has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
    gpus = (ROUND_GPUS_PER_TASK if has_gpu else 0.0) if gpus in (None, AUTO) else float(gpus)
    if not 0 <= gpus <= 1 or (gpus > 0 and not has_gpu):
        raise ValueError(f"--gpus-per-task {gpus:g}: expected a share of one GPU in [0, 1]"
                         + ("" if has_gpu else "; this Ray cluster has no GPU (use 0)"))
    if threads in (None, AUTO):
        threads = 1 if gpus > 0 else ROUND_CPU_THREADS_PER_TASK
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"--threads-per-task: expected an integer >= 1, got {threads}")
    retries = ROUND_MAX_RETRIES if max_retries is None else int(max_retries)
    if retries < 0:
        raise ValueError(f"--max-retries: expected an integer >= 0, got {retries}")
    if not any(n.get("CPU", 0) >= threads and n.get("GPU", 0) >= gpus for n in nodes):
        have = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in nodes) or "no alive node"
        raise ValueError(f"no node of this Ray cluster can run a task of {threads} CPU thread(s) and {gpus:g} "
                         f"GPU ({have}): lower --threads-per-task or --gpus-per-task")
    return Resources(threads, gpus, retries)


# --------------------------------------------------------------------------------------------- the round


def run_round(
    spec: RoundSpec,
    data_path: str | os.PathLike,
    root: str | os.PathLike,
    *,
    address: str | None = None,
    threads_per_task: int | str | None = AUTO,
    gpus_per_task: float | str | None = AUTO,
    max_retries: int | None = None,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
    on_epoch_end: Callable[[str, int], None] | None = None,
    mirror_to: str | os.PathLike | None = None,
    mirror_checkpoints: bool = False,
) -> dict:
    """Run (or continue) the round ``spec`` into ``root`` on Ray and return ``round.json``'s dict.

    ``address``: an existing Ray cluster (``ray start --head`` prints it); None starts Ray on this machine,
    unless this process is already connected. A finished round starts no Ray at all. ``mirror_to``: after every
    finished task, copy the round's small outputs there (:func:`percepiano.round_results.export_results`), so
    that a round on a machine that may not last loses at most its running folds; ``mirror_checkpoints`` also
    copies every training fold's ``best.pt`` and ``last.pt`` there after each of its epochs
    (:func:`mirror_fold_checkpoints`; the workers must see ``mirror_to``), so that it loses at most an epoch
    of each, and those of the folds finished before, with their test predictions, at the start.
    ``on_epoch_end(task key, epoch)`` runs in the worker after each epoch's checkpoints are written (tests interrupt workers with it).
    Raises ``ValueError`` for a refused plan (nothing is started) and :class:`RoundFailed` when tasks failed
    (after their retries); the others finish and ``round.json`` records both.
    """
    log = log or (lambda s: None)
    root = Path(root)
    if mirror_to is not None and Path(mirror_to).resolve().is_relative_to(root.resolve()):
        raise ValueError(f"--mirror-to {mirror_to}: inside the round folder {root}; choose a folder outside it")
    if mirror_checkpoints and mirror_to is None:
        raise ValueError("--mirror-checkpoints: copies the checkpoints into the --mirror-to folder; give --mirror-to")
    mirror_root = None if not mirror_checkpoints else Path(mirror_to).resolve()
    data_path = Path(data_path).resolve()
    data = load_dataset(data_path)
    plans = plan_round(spec, data, root)
    history = load_history(root)
    pending = [p for p in plans if not p.up_to_date]
    n_fold_tasks = sum(len(p.train) for p in pending)
    log(f"round {root}: {len(plans)} cells, {sum(len(p.reuse) for p in plans)} folds finished already, "
        f"{n_fold_tasks} to train, {len(pending)} results.json to write")
    request = _request(spec, command)
    invocation = {"started": now(), "request": request, "address": address, "tasks": [], "failed": []}
    for plan in plans:  # what --keep asks of every finished fold, those of finished cells too
        for fold in plan.reuse:
            where = f"{plan.cell.path} fold {fold}"
            apply_keep(root / plan.cell.fold_path(fold), spec.keep, lambda msg: log(f"{where}: {msg}"))
    if mirror_root is not None:  # the folds finished before: the mirror holds every fold's checkpoints
        for plan in plans:
            for fold in plan.reuse:
                sub = plan.cell.fold_path(fold)
                mirror_fold_checkpoints(root / sub, mirror_root / sub, FINISHED_FOLD_MIRROR)
    if not pending:
        invocation.update(finished=now(), wall_seconds=0.0, note="nothing to train: every cell is finished")
        return _record(root, request, history + [invocation], mirror_to, log)

    # one driver per round folder (two would train the same folds into the same files), then Ray
    with _round_lock(root), _ray_session(address) as ray:
        t0 = time.perf_counter()
        try:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            res = resolve_resources(threads_per_task, gpus_per_task, max_retries, nodes)
            cluster = ray.cluster_resources()
            invocation["resources"] = {"threads_per_task": res.threads, "gpus_per_task": res.gpus,
                                       "device": res.device, "max_retries": res.max_retries,
                                       "cluster": {k: v for k, v in cluster.items() if k in ("CPU", "GPU", "memory")},
                                       "nodes": len(nodes)}
            log(f"ray: {len(nodes)} node(s), {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; "
                f"each task {res.threads} thread(s), {res.gpus:g} GPU ({res.device})")
            common = {"data_path": str(data_path), "code": code_version(), "data_sha256": data_sha256(data),
                      "device": res.device, "threads": res.threads, "allow_code_change": spec.allow_code_change,
                      "reuse_without_checkpoint": spec.reuse_without_checkpoint,
                      "keep": spec.keep, "command": command, "on_epoch_end": on_epoch_end, "mirror_root": mirror_root}

            def record_progress() -> None:  # round.json after each task, this invocation still running
                _record(root, request, history + [{**invocation, "finished": None}], mirror_to, log)

            _run_tasks(ray, spec, pending, common, res, root, invocation, record_progress, log)
        finally:
            invocation.update(finished=now(), wall_seconds=time.perf_counter() - t0)
            summary = _record(root, request, history + [invocation], mirror_to, log)
    if invocation["failed"]:
        raise RoundFailed(invocation["failed"], root / ROUND_JSON)
    return summary


def _run_tasks(ray, spec: RoundSpec, pending: list[CellPlan], common: Mapping, res: Resources, root: Path,
               invocation: dict, record_progress: Callable[[], None], log: Callable[[str], None]) -> None:
    """Submit a fold task per fold to train, then, as the last fold of a cell finishes, its cell task; wait for
    all of them, logging each as it ends and recording it in ``invocation`` (``tasks`` or ``failed``: a task that
    failed after its retries does not stop the others; its cell gets no cell task)."""
    opts = dict(num_cpus=res.threads, num_gpus=res.gpus, max_retries=res.max_retries, retry_exceptions=[OSError])
    remote_fold, remote_cell = ray.remote(train_task), ray.remote(cell_task)
    # A cell task reuses its finished folds and fits the baselines: seconds of work, so it asks for no CPU and
    # does not queue behind the fold tasks that hold every CPU (its results.json appears as soon as its folds are
    # done). It keeps its GPU share: the device it records is the folds'.
    cell_opts = {**opts, "num_cpus": 0}
    futures: dict = {}  # Ray future -> (its cell's plan, its fold, or None for the cell task)

    def submit_cell(plan: CellPlan):
        futures[remote_cell.options(name=plan.cell.path, **cell_opts).remote(
            _cell_job(common, spec, plan, root))] = (plan, None)

    waiting: dict[str, set[int]] = {}  # cell path -> its folds still training
    for plan in pending:
        waiting[plan.cell.path] = {f for f, _ in plan.train}
        for fold, _ in plan.train:
            job = _fold_job(common, spec, plan, fold, root)
            futures[remote_fold.options(name=plan.cell.fold_path(fold), **opts).remote(job)] = (plan, fold)
        if not plan.train:
            submit_cell(plan)
    total, done = len(futures) + sum(1 for p in pending if p.train), 0
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        plan, fold = futures.pop(ready[0])
        what = plan.cell.path + ("" if fold is None else f" fold {fold}")
        done += 1
        try:
            out = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            reason = _failure_reason(exc)
            invocation["failed"].append({"cell": plan.cell.path, "fold": fold, "error": reason})
            waiting.pop(plan.cell.path, None)
            log(f"[{done}/{total}] {what}: FAILED: {reason}")
        else:
            invocation["tasks"].append(out)
            log(f"[{done}/{total}] {what}: {_task_line(out)}")
            if fold is not None and plan.cell.path in waiting:
                waiting[plan.cell.path].discard(fold)
                if not waiting[plan.cell.path]:
                    del waiting[plan.cell.path]
                    submit_cell(plan)
        record_progress()


@contextlib.contextmanager
def _ray_session(address: str | None):
    """Yield the ``ray`` module connected to a cluster: this process's connection if it has one, else a new one
    to ``address`` (None: a new Ray instance on this machine), shut down on leaving."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # Ray folds "similar" lines: the tasks' epoch lines are progress
    import ray

    if ray.is_initialized():
        yield ray
        return
    # "local": a new Ray instance on this machine even where `ray start` left one running (--address auto joins it)
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=True)
    except ConnectionError as exc:
        raise ValueError(
            f"--address {address}: {exc}. If the cluster is running, it may want a token (Ray 2.60 clusters "
            f"started by `ray start` do): run this command with RAY_AUTH_MODE=token and the cluster's token "
            f"(RAY_AUTH_TOKEN, or ~/.ray/auth_token), or start the cluster with RAY_AUTH_MODE=disabled "
            f"(docs/rounds.md)") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


LOCK_FILE = ".round.lock"


@contextlib.contextmanager
def _round_lock(root: Path):
    """Hold ``root/.round.lock`` (``flock``; released on leaving, or when the process ends) for the driver that
    trains into ``root``; ``ValueError`` naming the holder when another driver has it."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process"
            raise ValueError(f"{root}: another `percepiano round` is training into this folder ({holder}; "
                             f"{root / LOCK_FILE}): wait for it, or stop it (it resumes where it stopped)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {now()}\n")
        f.flush()
        yield  # closing the file releases the lock


def _cell_fields(common: Mapping, spec: RoundSpec, plan: CellPlan) -> dict:
    """What every task of a cell is given: the driver's code, dataset and resources, and the cell's run."""
    c = plan.cell
    fields = {k: common[k] for k in ("data_path", "code", "data_sha256", "device", "threads", "allow_code_change",
                                     "reuse_without_checkpoint", "keep")}
    return {**fields, "cell": c.path, "preset": c.preset, "split": c.split,
            "train_config": spec.tcfg(c.seed).to_dict()}


def _fold_job(common: Mapping, spec: RoundSpec, plan: CellPlan, fold: int, root: Path) -> dict:
    """The argument of :func:`train_task` for ``fold`` of the cell ``plan``."""
    c = plan.cell
    return {**_cell_fields(common, spec, plan), "fold": fold, "feature_set": PRESET_FEATURES[c.preset],
            "dir": str(root / c.fold_path(fold)),
            "model_config": get_preset(c.preset, **spec.model_overrides).to_dict(),
            "on_epoch_end": common["on_epoch_end"],
            "mirror_dir": None if common["mirror_root"] is None else str(
                common["mirror_root"] / c.fold_path(fold))}


def _cell_job(common: Mapping, spec: RoundSpec, plan: CellPlan, root: Path) -> dict:
    """The argument of :func:`cell_task` for the cell ``plan``."""
    return {**_cell_fields(common, spec, plan), "dir": str(root / plan.cell.path),
            "model_overrides": dict(spec.model_overrides), "folds": list(spec.folds), "command": common["command"]}


class RoundFailed(RuntimeError):
    """Tasks of a round failed after their retries; the rest finished, round.json lists both."""

    def __init__(self, failed: list[dict], where: Path):
        self.failed = failed
        lines = "".join(f"\n  {f['cell']}{'' if f['fold'] is None else ' fold ' + str(f['fold'])}: {f['error']}"
                        for f in failed)
        super().__init__(f"{len(failed)} task(s) failed (recorded in {where}); rerun the same command to retry "
                         f"them from their last.pt:{lines}")


def _failure_reason(exc) -> str:
    """The cause of a failed Ray task in one line: the task's own exception, or how its worker was lost."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0] if str(cause) else type(cause).__name__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _task_line(out: Mapping) -> str:
    where = f"node {out['node_id'][:8]} ({out['device']}, pid {out['pid']})"
    if out["kind"] == "cell":
        return f"results.json written: mean test R2 {out['mean_test_r2']:.4f} (fold std {out['fold_std']:.4f})"
    return (f"{out['how']}: test R2 {out['test_r2']:.4f} (best epoch {out['best_epoch']} of "
            f"{out['epochs_trained']}), {out['wall_seconds'] / 60:.1f} min on {where}")


# --------------------------------------------------------------------------------------------- round.json


def _record(root: Path, request: Mapping, invocations: list[dict], mirror_to,
            log: Callable[[str], None] = lambda s: None) -> dict:
    """round.json rewritten from the folder, and the small outputs copied to ``mirror_to`` (if given). A copy
    that fails (the mirror's disk full or gone) is logged and the round goes on: the next task's copy retries."""
    summary = write_round_json(root, request, invocations)
    if mirror_to is not None:
        try:
            export_results(root, mirror_to)
        except OSError as exc:
            log(f"--mirror-to {mirror_to}: could not copy the round's small outputs ({exc}); the round goes on "
                f"and copies them again after the next task")
    return summary


def _request(spec: RoundSpec, command: str | None) -> dict:
    return {"presets": list(spec.presets), "splits": list(spec.splits), "seeds": list(spec.seeds),
            "folds": list(spec.folds), "train_config": {k: v for k, v in spec.train_config.to_dict().items()
                                                         if k != "seed"},
            "model_overrides": dict(spec.model_overrides), "keep": spec.keep, "command": command}
