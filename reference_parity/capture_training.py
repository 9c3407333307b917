"""Record the replay fixtures: whole training runs of the ORIGINAL, step by step (``fixtures/replay/``).

Regenerate (from the repository root, with a checkout of the original at commit e672299 and the processed data)::

    PERCEPIANO_UPSTREAM=/path/to/PercePiano PERCEPIANO_DATA=/path/to/percepiano_vnet_m2pf.npz \\
        python -m reference_parity.capture_training

Live side (imports the original through :mod:`reference_parity.upstream`). For each case (preset x dtype, one
epoch of performer fold 0 with seed 7 at the published settings) it runs what the original's
``__main__.py: main`` does (seed ``random``, ``numpy``, torch with ``th_seed``; build ``VirtuosoNetMultiLevel``
from the published yml; ``nn.MSELoss``) and then the original ``train_m2pf.train`` itself, on the CPU, with the
published script flags (``_script_flags`` of :mod:`reference_parity.capture`) except data paths, device and
``--num_epochs``. It records per optimizer step the loss, the gradient norm before clipping and the learning
rate, the epoch's valid/test loss and R², the order in which the train set was visited, and a sha256 of every
initial weight: scalars and checksums, no tensors.

The original reads ``<data>/<part>/*.pkl`` files (``dataset.py``: ``ScorePerformDataset``) and two label JSON
files; they are written from the processed npz into a temporary directory outside the repository (pickles:
the original's own format, read only by it). What runs differs from an unmodified checkout in exactly these
ways, all applied to the loaded module objects for the duration of a run (never to the files) and listed in
MANIFEST.json:

* **the one patch**: ``ScorePerformDataset.get_data_path`` lists the files sorted (the original takes
  ``Path.rglob`` order, the file system's); sorted, the train set's order is the segment ids sorted as Python
  strings, which is what ours replays (:func:`percepiano.replay.original_file_order`);
* plumbing that changes no number: ``dataset.py`` opens the label-std JSON at an absolute path of the authors'
  machine, redirected to the file written here; ``train_m2pf.Logger`` (tensorboard) is replaced by a recorder
  of what ``train`` logs; ``train_m2pf.train_step`` and ``ScorePerformDataset.__getitem__`` are wrapped to read
  the learning rate before each step and the indices fetched; the net params that ``utils.handle_args``
  returns are rebuilt by :meth:`Upstream.net_params` (the same yml read and input width; it also applies the
  smaller sizes of the live tests);
* float64 cases: the model is built in float32 (the draws are the float32 ones), then ``.double()``, and the
  run happens under ``torch.set_default_dtype(torch.float64)`` (the original allocates buffers in the default
  dtype); the original itself trains in float32 only.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import pickle
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from percepiano.config import PRESET_FEATURES, get_preset
from percepiano.constants import DATA_ENV, FEATURE_SETS, PARTS
from percepiano.data import load_dataset
from percepiano.replay import weight_checksums

from . import upstream as U
from .capture import _script_flags, default_dtype
from .recorded import REPLAY_DIR, REPLAY_REGENERATE, UPSTREAM_ENV, array_specs, save_npz, sha256

# The recorded runs: performer fold 0, the original's th_seed, one epoch (104 steps), both dtypes.
SPLIT, FOLD, SEED, EPOCHS = "performer", 0, 7, 1
CASES = (("han", "float64"), ("han", "float32"), ("bilstm", "float64"), ("bilstm", "float32"))
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# dataset.py: ScorePerformDataset.__init__ reads the annotators' label std from an absolute path of the authors'
# machine; the capture redirects any open of a file with this name
LABEL_STD_NAME = "label_2round_std_reg_19_with0_rm_highstd0.json"
PATCHES = {
    "dataset.ScorePerformDataset.get_data_path": "sorted(...) around the original's rglob listing: the train, "
                                                 "valid and test files in sorted order (the one patch)",
}
INSTRUMENTATION = {
    "dataset.open": f"redirects the authors' absolute path to {LABEL_STD_NAME} (ScorePerformDataset.__init__) to the label-std "
                    "JSON written from the processed data",
    "train_m2pf.Logger": "a recorder of log_training / log_validation instead of tensorboard (make_log stays True)",
    "train_m2pf.train_step": "wrapped: reads optimizer.param_groups[0]['lr'] before each call (the lr it uses)",
    "dataset.ScorePerformDataset.__getitem__": "wrapped: records the train indices fetched (the batch order)",
    "utils.handle_args": "called; its net_param is replaced by Upstream.net_params (the same yml through "
                         "utils.read_model_setting, input_size = the data width, num_label; LSTM sizes for live "
                         "tests)",
}


class StopRun(Exception):
    """Raised by the step recorder after the requested number of steps (a short live run)."""


# --------------------------------------------------------------------------------------------- the data


def _feature_index(data, feature_set: str, name: str) -> int:
    cols = FEATURE_SETS[feature_set]
    names = data.feature_names or []
    return cols.index(names.index(name)) if name in names and names.index(name) in cols else 0


def write_original_data(data, split: str, fold: int, feature_set: str, root: Path) -> dict:
    """The fold as the original's data directory: ``root/data/<part>/<id>.pkl`` + ``stat.pkl``, the label map
    and the label-std JSON (labels are our float32 values, written as the doubles they are). Returns paths."""
    stats = {
        # read by ScorePerformDataset (the pitch column, used only for key augmentation, which is off) and by
        # MixEmbedder (continuous-only features, off): any in-range index leaves the run unchanged
        "key_to_dim": {"input": {"midi_pitch_unnorm": (_feature_index(data, feature_set, "midi_pitch_unnorm"),) * 2,
                                 "midi_pitch": (0, 1), "pitch": (0, 13)}},
        "stats": {"midi_pitch": {"stds": 1.0}},
        # utils.handle_args reads the input width from the first *.pkl that glob finds in train/, which may be
        # this file: give it that width too
        "input": np.zeros((1, len(FEATURE_SETS[feature_set])), np.float32),
    }
    labels, stds = {}, {}
    cols = FEATURE_SETS[feature_set]
    for part in PARTS:
        folder = root / "data" / part
        folder.mkdir(parents=True)
        with open(folder / "stat.pkl", "wb") as f:
            pickle.dump(stats, f)
        for i in data.split_indices(split, fold, part):
            sid = str(data.segment_ids[i])
            x = data.segment_features(int(i))[:, cols[0]:cols[-1] + 1]
            n = len(x)
            locs = {k: data.note_locations[k][data.offsets[i]:data.offsets[i + 1]].copy()
                    for k in ("beat", "measure", "section", "voice")}
            sample = {"input": np.ascontiguousarray(x), "output": np.zeros((n, 1), np.float32), "note_location": locs,
                      "align_matched": np.zeros(n, np.float32), "articulation_loss_weight": np.zeros(n, np.float32),
                      "meas": np.zeros((n, 1), np.float32), "beat": np.zeros((n, 1), np.float32),
                      "perform_path": f"{sid}.mid"}
            with open(folder / f"{sid}.pkl", "wb") as f:
                pickle.dump(sample, f)
            labels[sid] = [float(v) for v in data.labels[i]]
            stds[sid] = [float(v) for v in data.labels_std[i]]
    paths = {"data": root / "data", "labels": root / "labels.json", "stds": root / "label_stds.json"}
    paths["labels"].write_text(json.dumps(labels))
    paths["stds"].write_text(json.dumps(stds))
    return paths


# --------------------------------------------------------------------------------------------- one run


class _Recorder:
    """Stands in for ``logger.Logger``: keeps what ``train_m2pf.train`` logs."""

    def __init__(self, box: dict):
        self.box = box

    def __call__(self, logdir):  # Logger(out_dir / log_dir)
        return self

    def log_training(self, loss, loss_dict, grad_norm, lr, duration, iteration):
        self.box["steps"][int(iteration)] = (float(loss), float(grad_norm), float(lr))  # logged twice per step

    def log_validation(self, loss, metrics, model, iteration, is_best=False, is_test=False):
        self.box["epochs"].append({"part": "test" if is_test else "valid", "loss": float(loss),
                                   "r2": float(metrics["R2"]), "step": int(iteration)})


@contextlib.contextmanager
def _patched(up, box: dict, std_file: Path, max_steps: int | None):
    """The patch and the instrumentation of the module docstring, undone afterwards."""
    ds, tr = up.mod("dataset"), up.training()
    cls = ds.ScorePerformDataset
    saved = {"get_data_path": cls.get_data_path, "__getitem__": cls.__getitem__}
    saved_tr = {"Logger": tr.Logger, "train_step": tr.train_step}
    original_get_data_path, original_getitem, original_step = cls.get_data_path, cls.__getitem__, tr.train_step

    def get_data_path(self):
        return sorted(original_get_data_path(self))

    def getitem(self, index):
        if self.type == "train":
            box["order"].append(int(index))
        return original_getitem(self, index)

    def train_step(model, batch, optimizer, scheduler, *args):
        box["lr"].append(float(optimizer.param_groups[0]["lr"]))
        original_step(model, batch, optimizer, scheduler, *args)
        if max_steps is not None and len(box["lr"]) >= max_steps:
            raise StopRun

    def redirecting_open(file, *args, **kwargs):
        return open(std_file if Path(str(file)).name == LABEL_STD_NAME else file, *args, **kwargs)

    cls.get_data_path, cls.__getitem__ = get_data_path, getitem
    tr.Logger, tr.train_step = _Recorder(box), train_step
    ds.open = redirecting_open
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(cls, k, v)
        for k, v in saved_tr.items():
            setattr(tr, k, v)
        del ds.open


def _args(up, paths: dict, level: str, seed: int, epochs: int, out: Path) -> argparse.Namespace:
    """The published script's flags parsed by the original parser, with our paths, the CPU, seed and epochs."""
    argv, _ = _script_flags(up)
    values = {"-yml": str(up.root / U.YML), "-data": str(paths["data"]), "--label_file_path": str(paths["labels"]),
              "-dev": "cpu", "--checkpoints_dir": str(out), "--multi_level": level}
    argv = list(argv)
    for flag, value in values.items():
        argv[argv.index(flag) + 1] = value
    argv += ["--num_epochs", str(epochs), "--th_seed", str(seed)]
    return up.mod("parser").get_parser().parse_args(argv)


def run_original(up, data, preset: str, dtype: str, *, split: str = SPLIT, fold: int = FOLD, seed: int = SEED,
                 epochs: int = EPOCHS, max_steps: int | None = None, hidden_size: int | None = None) -> dict:
    """Run the original's ``main`` + ``train_m2pf.train`` on a fold of ``data`` on the CPU and return what it
    did: ``steps`` (loss, grad_norm, lr per step), ``epochs`` (valid/test loss and R² per epoch), ``order`` (train
    indices visited), ``init_sha256`` (per original parameter name). ``max_steps`` stops after that many
    steps (no epoch metrics then); ``hidden_size`` shrinks every LSTM (live tests)."""
    cfg = get_preset(preset, **({"hidden_size": hidden_size} if hidden_size else {}))
    feature_set = PRESET_FEATURES[preset]
    with tempfile.TemporaryDirectory(prefix="percepiano-replay-") as tmp:
        root = Path(tmp)
        paths = write_original_data(data, split, fold, feature_set, root)
        args = _args(up, paths, cfg.level, seed, epochs, root / "checkpoints")
        box: dict = {"steps": {}, "epochs": [], "order": [], "lr": []}
        sizes = {k: getattr(cfg, k) for k in ("note_size", "voice_size", "beat_size", "measure_size")}
        quiet = contextlib.ExitStack()  # the original prints and draws progress bars
        quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
        quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        with _patched(up, box, paths["stds"], max_steps), quiet:
            # __main__.py: main, in its order
            import random

            random.seed(args.th_seed)
            np.random.seed(args.th_seed)
            torch.manual_seed(args.th_seed)
            args, _, data_stats = up.mod("utils").handle_args(args)
            net_param = up.net_params(cfg.input_size, args.num_labels, **sizes)
            model = up.mod("model_m2pf").VirtuosoNetMultiLevel(net_param, data_stats, multi_level=args.multi_level)
            init = weight_checksums(model.state_dict())
            model = model.to("cpu")
            if dtype == "float64":
                model = model.double()
            with default_dtype(DTYPES[dtype]):
                try:
                    up.training().train(args, model, "cpu", args.num_epochs, torch.nn.MSELoss(), "replay")
                except StopRun:
                    pass
    steps = [box["steps"][i] for i in sorted(box["steps"])]
    return {"steps": [{"loss": a, "grad_norm": b, "lr": lr} for (a, b, _), lr in zip(steps, box["lr"])],
            "epochs": box["epochs"], "order": box["order"], "init_sha256": init,
            "n_train": len(data.split_indices(split, fold, "train"))}


# --------------------------------------------------------------------------------------------- fixtures

INIT_FILE = "init_checksums.npz"
INIT_SEEDS = (SEED, 0, 2024)  # the published th_seed and two more


def record_init(up, out: Path) -> dict:
    """sha256 of every initial weight of ``VirtuosoNetMultiLevel`` for every preset and :data:`INIT_SEEDS`, built
    as ``main`` builds it right after seeding (no data, no training)."""
    from percepiano.config import PRESETS

    arrays = {}
    for preset, cfg in PRESETS.items():
        for seed in INIT_SEEDS:
            torch.manual_seed(seed)
            model = up.build_model(up.net_params(cfg.input_size, cfg.num_labels), cfg.level)
            sums = weight_checksums(model.state_dict())
            arrays[f"{preset}/seed{seed}/names"] = np.asarray(list(sums))
            arrays[f"{preset}/seed{seed}/sha256"] = np.asarray(list(sums.values()))
    save_npz(out / INIT_FILE, arrays)
    return {"file": INIT_FILE, "kind": "init", "presets": sorted(PRESETS), "seeds": list(INIT_SEEDS),
            "note": "<preset>/seed<s>/{names,sha256}: every tensor of VirtuosoNetMultiLevel.state_dict() right "
                    "after torch.manual_seed(s) and construction (float32; __main__.py: main seeds random and "
                    "numpy too, which the construction does not draw from)"}


def fixture_name(preset: str, dtype: str) -> str:
    return f"replay_{preset}_{dtype}.npz"


def fixture_arrays(res: dict) -> dict[str, np.ndarray]:
    """What :func:`run_original` returned, as the arrays of a replay fixture (read by
    :func:`reference_parity.replay_compare.compare_case`)."""
    steps, epochs = res["steps"], res["epochs"]
    arrays = {
        "step/loss": np.asarray([s["loss"] for s in steps], np.float64),
        "step/grad_norm": np.asarray([s["grad_norm"] for s in steps], np.float64),
        "step/lr": np.asarray([s["lr"] for s in steps], np.float64),
        "order": np.asarray(res["order"], np.int64),
        "init/names": np.asarray(list(res["init_sha256"])),
        "init/sha256": np.asarray(list(res["init_sha256"].values())),
    }
    for part in ("valid", "test"):
        rows = [e for e in epochs if e["part"] == part]
        arrays[f"epoch/{part}_loss"] = np.asarray([e["loss"] for e in rows], np.float64)
        arrays[f"epoch/{part}_r2"] = np.asarray([e["r2"] for e in rows], np.float64)
    return arrays


def record_case(up, data, preset: str, dtype: str, out: Path, max_steps: int | None = None) -> dict:
    """Run one case with the original and write its fixture; returns its MANIFEST entry."""
    res = run_original(up, data, preset, dtype, max_steps=max_steps)
    arrays = fixture_arrays(res)
    steps = res["steps"]
    name = fixture_name(preset, dtype)
    save_npz(out / name, arrays)
    return {"file": name, "kind": "replay", "preset": preset, "dtype": dtype, "split": SPLIT, "fold": FOLD,
            "seed": SEED, "epochs": EPOCHS, "steps": len(steps), "n_train": res["n_train"],
            "train_loss_epoch1": float(np.mean(arrays["step/loss"])) if max_steps is None else None,
            "note": "step/* per optimizer step (grad_norm before clipping, lr = the lr the step used); order = "
                    "the train set positions (in sorted-id order) in the order the DataLoader fetched them; "
                    "init/sha256 of every tensor of VirtuosoNetMultiLevel.state_dict() right after construction "
                    "(float32); epoch/* as train_m2pf.train logs them after each epoch (batch 8)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference_parity.capture_training", description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", default=None, help=f"original checkout (default ${UPSTREAM_ENV})")
    ap.add_argument("--data", default=None, help=f"processed npz (default ${DATA_ENV})")
    ap.add_argument("--out", type=Path, default=REPLAY_DIR, help="output directory (default: reference_parity/fixtures/replay)")
    ap.add_argument("--steps", type=int, default=None,
                    help="record only the first N steps of each case (no epoch metrics; default: the whole epoch)")
    ap.add_argument("--cases", default=",".join(f"{p}:{d}" for p, d in CASES),
                    help="comma-separated preset:dtype (default all; '' for the initial-weight checksums only, which "
                         "are always recorded; MANIFEST.json lists the files)")
    a = ap.parse_args(argv)
    up = U.load_or_say_why(a.upstream, "capture_training")
    if up is None:
        return 2
    data = load_dataset(a.data)
    cases = [tuple(c.split(":")) for c in a.cases.split(",") if c]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recorded numbers are those of a one-thread run (the original's are the same with 2)
    try:
        a.out.mkdir(parents=True, exist_ok=True)
        _write_manifest(a.out, up, data, record_init(up, a.out))
        for preset, dtype in cases:
            print(f"recording the original: {preset} {dtype} ...", file=sys.stderr, flush=True)
            entry = record_case(up, data, preset, dtype, a.out, a.steps)
            _write_manifest(a.out, up, data, entry)  # after every case: a long capture keeps what it recorded
    finally:
        torch.set_num_threads(threads)
    print(f"wrote {len(cases)} replay fixture(s) + MANIFEST.json to {a.out}", file=sys.stderr)
    return 0


def _write_manifest(out: Path, up, data, entry: dict) -> None:
    """MANIFEST.json of the replay fixtures with ``entry`` added (replacing an older entry of its file)."""
    path = out / "MANIFEST.json"
    files = json.loads(path.read_text())["files"] if path.is_file() else []
    p = out / entry["file"]
    entry = {**entry, "sha256": sha256(p), "bytes": p.stat().st_size, "arrays": array_specs(p)}
    files = sorted([e for e in files if e["file"] != entry["file"]] + [entry], key=lambda e: e["file"])
    manifest = {
        "regenerate": REPLAY_REGENERATE,
        "original": {"repo": U.REPO_URL, "commit": U.EXPECTED_COMMIT, "verified_by": up.verification["method"],
                     "key_file_sha256": up.verification["fingerprints"], "shims": up.shims_used},
        "patches": PATCHES, "instrumentation": INSTRUMENTATION,
        "data": {"file": Path(data.path).name, "sha256": sha256(Path(data.path))},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "threads": 1, "device": "cpu",
        "files": files,
    }
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
