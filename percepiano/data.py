"""The processed PercePiano dataset: loading with validation, feature sets, splits and batching.

The input is the pickle-free ``percepiano_vnet_m2pf.npz`` (see the dataset's FEATURES.md): all segments' notes
concatenated, segment ``i`` being rows ``offsets[i]:offsets[i+1]``. Everything is checked on load, and a bad file
fails with a :class:`ValueError` naming the file, the array and the first offending segment (id and index).

What the original feeds the model (docs/original.md#data-interface): one sample = one whole segment (no slicing for
this data), the 19 labels, and the ``note_locations`` dict (beat/measure/section/voice) zero-padded by
``FeatureCollate``. The original packs the input with ``pack_sequence``; here it is zero-padded with explicit
``lengths``, which carries the same information (``pack_padded_sequence(x, lengths)`` recovers the same packed
data, see tests/test_data.py).
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from .constants import (  # noqa: F401 (re-exported: the data's names)
    CONTIGUOUS_KEYS,
    DATA_ENV,
    FEATURE_SETS,
    INPUT_DIM,
    LABEL_NAMES,
    LOCATION_KEYS,
    MAX_VOICE,
    N_FOLDS,
    NUM_LABELS,
    PARTS,
    SHIPPED_SPLIT_SCHEMES,
    SPLIT_SCHEMES,
)
from .splits import recorded_work_split, works_across_parts


@dataclass(frozen=True)
class Batch:
    """A collated batch, as the original ``FeatureCollate`` produces it but zero-padded instead of packed."""

    x: torch.Tensor  # (B, N, F) float32, zero-padded past each segment's length
    lengths: torch.Tensor  # (B,) int64 number of notes per segment
    note_locations: dict[str, torch.Tensor]  # beat/measure/section/voice, each (B, N) int64, zero-padded
    labels: torch.Tensor  # (B, 19) float32
    segment_ids: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor (``lengths`` included) on ``device``."""
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return dataclasses.replace(
            self,
            x=mv(self.x),
            lengths=mv(self.lengths),
            note_locations={k: mv(v) for k, v in self.note_locations.items()},
            labels=mv(self.labels),
        )

    def pin_memory(self) -> "Batch":
        """A copy in page-locked host memory, so that a CUDA copy with ``non_blocking=True`` is asynchronous."""
        return dataclasses.replace(
            self,
            x=self.x.pin_memory(),
            lengths=self.lengths.pin_memory(),
            note_locations={k: v.pin_memory() for k, v in self.note_locations.items()},
            labels=self.labels.pin_memory(),
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class Sample:
    """One segment: what the original ``ScorePerformDataset.__getitem__`` returns that the model uses."""

    x: torch.Tensor  # (n, F) float32
    note_locations: dict[str, torch.Tensor]  # each (n,) int64
    labels: torch.Tensor  # (19,) float32
    segment_id: str


def collate(samples: Sequence[Sample]) -> Batch:
    """Zero-pad a list of samples into a :class:`Batch` (the original ``FeatureCollate``: locations through
    ``pad_sequence(batch_first=True)`` with 0, as int64; labels stacked as float32; input padded instead of packed)."""
    if not samples:
        raise ValueError("collate: empty list of samples")
    lengths = [int(s.x.shape[0]) for s in samples]
    if min(lengths) < 1:
        raise ValueError("collate: a sample has no notes")
    feat = int(samples[0].x.shape[1])
    n = max(lengths)
    x = torch.zeros(len(samples), n, feat, dtype=torch.float32)
    locs = {k: torch.zeros(len(samples), n, dtype=torch.int64) for k in LOCATION_KEYS}
    for b, s in enumerate(samples):
        x[b, : lengths[b]] = s.x
        for k in LOCATION_KEYS:
            locs[k][b, : lengths[b]] = s.note_locations[k]
    labels = torch.stack([s.labels.to(torch.float32) for s in samples])
    return Batch(
        x=x,
        lengths=torch.tensor(lengths, dtype=torch.int64),
        note_locations=locs,
        labels=labels,
        segment_ids=[s.segment_id for s in samples],
    )


def _segment_of(offsets: np.ndarray, row: int) -> int:
    """The segment that note row ``row`` of the concatenated arrays belongs to."""
    return int(np.searchsorted(offsets, row, side="right") - 1)


def _fail(path, array: str, what: str, seg_ids=None, seg: int | None = None) -> ValueError:
    where = ""
    if seg is not None:
        sid = str(seg_ids[seg]) if seg_ids is not None and 0 <= seg < len(seg_ids) else "?"
        where = f", segment {sid!r} (index {seg})"
    return ValueError(f"{path}: array {array!r}{where}: {what}")


class PercePianoData:
    """The validated dataset in memory. Build with :func:`load_dataset`."""

    def __init__(self, arrays: Mapping[str, np.ndarray], path: str | os.PathLike = "<arrays>"):
        self.path = str(path)
        _validate(arrays, self.path)
        self.segment_ids = np.asarray(arrays["segment_ids"]).astype(str)
        self.offsets = np.asarray(arrays["offsets"], dtype=np.int64)
        self.input = np.asarray(arrays["input"], dtype=np.float32)
        self.labels = np.asarray(arrays["labels"], dtype=np.float32)
        self.labels_std = np.asarray(arrays["labels_std"], dtype=np.float32)
        # astype(str): names stored as bytes (dtype S) read as text, not as "b'...'"
        self.label_names = [str(s) for s in np.asarray(arrays["label_names"]).astype(str)]
        self.feature_names = ([str(s) for s in np.asarray(arrays["feature_names"]).astype(str)]
                              if "feature_names" in arrays else None)
        self.note_locations = {k: np.asarray(arrays[f"note_{k}"], dtype=np.int64) for k in LOCATION_KEYS}
        self.splits = {s: np.asarray(arrays[f"{s}_split"], dtype=np.int8) for s in SPLIT_SCHEMES if f"{s}_split" in arrays}
        if "work" not in self.splits:  # not in the file: the recorded one, for the recorded segment ids (splits.py)
            work = recorded_work_split(self.segment_ids)
            if work is not None:
                self.splits["work"] = work
        self.lengths = np.diff(self.offsets)
        # Torch views (no copy) used by batching.
        self._x = torch.from_numpy(self.input)
        self._loc = {k: torch.from_numpy(v) for k, v in self.note_locations.items()}
        self._y = torch.from_numpy(self.labels)

    # --- sizes ---
    def __len__(self) -> int:
        return len(self.segment_ids)

    @property
    def num_notes(self) -> int:
        return int(self.offsets[-1])

    # --- splits ---
    def split_indices(self, scheme: str, fold: int, part: str) -> np.ndarray:
        """Dataset row indices (ascending) of ``part`` (train/valid/test) in ``fold`` of ``scheme``."""
        if scheme not in SPLIT_SCHEMES:
            raise ValueError(f"unknown split scheme {scheme!r}; available: {list(SPLIT_SCHEMES)}")
        if scheme not in self.splits:
            raise ValueError(f"{self.path}: no {scheme!r} split: the file has no {scheme}_split array and its segment "
                             f"ids are not those of percepiano/resources/work_split.json (the processed PercePiano "
                             f"data); add one built by percepiano.splits.work_split")
        if part not in PARTS:
            raise ValueError(f"unknown split part {part!r}; available: {list(PARTS)}")
        if not 0 <= int(fold) < N_FOLDS:
            raise ValueError(f"fold must be in 0..{N_FOLDS - 1}, got {fold!r}")
        return np.flatnonzero(self.splits[scheme][:, int(fold)] == PARTS[part]).astype(np.int64)

    # --- samples and batches ---
    def sample(self, index: int, feature_set: str = "full") -> Sample:
        cols = _feature_columns(feature_set)
        s, e = int(self.offsets[index]), int(self.offsets[index + 1])
        x = self._x[s:e, cols.start : cols.stop]
        return Sample(
            x=x,
            note_locations={k: v[s:e] for k, v in self._loc.items()},
            labels=self._y[index],
            segment_id=str(self.segment_ids[index]),
        )

    def batch(self, indices: Sequence[int], feature_set: str = "full") -> Batch:
        return collate([self.sample(int(i), feature_set) for i in indices])

    def segment_features(self, index: int) -> np.ndarray:
        """Raw per-note input matrix (n, 101) of one segment (numpy view)."""
        return self.input[self.offsets[index] : self.offsets[index + 1]]


def _feature_columns(feature_set: str) -> slice:
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; available: {sorted(FEATURE_SETS)}")
    cols = FEATURE_SETS[feature_set]
    return slice(cols[0], cols[-1] + 1)  # both sets are contiguous column ranges


def feature_size(feature_set: str) -> int:
    _feature_columns(feature_set)
    return len(FEATURE_SETS[feature_set])


def resolve_data_path(path: str | os.PathLike | None) -> Path:
    """``path`` if given, else the ``PERCEPIANO_DATA`` environment variable."""
    if path is None or str(path) == "":
        path = os.environ.get(DATA_ENV)
        if not path:
            raise ValueError(f"no dataset given: pass --data PATH or set {DATA_ENV} to percepiano_vnet_m2pf.npz")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dataset file not found: {p}")
    return p


def load_dataset(path: str | os.PathLike | None = None) -> PercePianoData:
    """Load and validate the npz (no pickle). ``path=None`` reads ``PERCEPIANO_DATA``. A file that is not a
    readable npz (empty, truncated, damaged, a plain ``.npy``, pickled objects) is a ``ValueError`` naming it."""
    p = resolve_data_path(path)
    return PercePianoData(read_npz(p), p)


NPY_MAGIC = b"\x93NUMPY"  # a single array written by np.save
ZIP_MAGIC = b"PK\x03\x04"  # an npz is a zip archive of .npy files


def read_npz(path: str | os.PathLike,
             expected: str = "expected the processed dataset, an .npz archive (percepiano_vnet_m2pf.npz)",
             ) -> dict[str, np.ndarray]:
    """Every array of an npz file (no pickle), or a ``ValueError`` naming the file, what is wrong with it and
    ``expected`` (what the caller wanted)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if not head:
        raise ValueError(f"{path}: empty file (0 bytes); {expected}")
    if head == NPY_MAGIC:
        raise ValueError(f"{path}: a single array (a plain .npy file); {expected}")
    if not head.startswith(ZIP_MAGIC):  # np.load would try to unpickle it
        raise ValueError(f"{path}: not an npz archive (an npz is a zip file; this one starts with {head[:4]!r}); "
                         f"{expected}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:  # a truncated archive
        raise ValueError(f"{path}: a truncated or damaged npz archive ({_reason(exc)}); {expected}") from None
    try:
        with loaded as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:  # an object array, which would need pickle
        raise ValueError(f"{path}: cannot be read without pickle ({_reason(exc)}); {expected}") from None
    except (EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:  # a damaged member (bad CRC, cut short)
        raise ValueError(f"{path}: a damaged npz archive ({_reason(exc)}); {expected}") from None


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _validate(a: Mapping[str, np.ndarray], path: str) -> None:
    required = (
        ["segment_ids", "offsets", "input", "labels", "labels_std", "label_names"]
        + [f"note_{k}" for k in LOCATION_KEYS]
        + [f"{s}_split" for s in SHIPPED_SPLIT_SCHEMES]
    )
    missing = [k for k in required if k not in a]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}")
    ids = a["segment_ids"]
    if ids.ndim != 1 or ids.dtype.kind not in "US" or len(ids) == 0:
        raise _fail(path, "segment_ids", f"expected a non-empty 1-d string array, got {ids.dtype} {ids.shape}")
    n_seg = len(ids)
    if len(set(ids.tolist())) != n_seg:
        raise _fail(path, "segment_ids", "segment ids are not unique")

    off = a["offsets"]
    if off.dtype.kind not in "iu" or off.shape != (n_seg + 1,):
        raise _fail(path, "offsets", f"expected integer shape ({n_seg + 1},), got {off.dtype} {off.shape}")
    off = off.astype(np.int64)
    if off[0] != 0:
        raise _fail(path, "offsets", f"must start at 0, starts at {off[0]}")
    steps = np.diff(off)
    if (steps < 1).any():
        seg = int(np.flatnonzero(steps < 1)[0])
        raise _fail(path, "offsets", f"segment has {steps[seg]} notes (offsets must strictly increase)", ids, seg)
    n_notes = int(off[-1])

    x = a["input"]
    if x.dtype != np.float32 or x.ndim != 2 or x.shape != (n_notes, INPUT_DIM):
        raise _fail(path, "input", f"expected float32 ({n_notes}, {INPUT_DIM}), got {x.dtype} {x.shape}")
    bad_rows = ~np.isfinite(x).all(axis=1)
    if bad_rows.any():
        row = int(np.flatnonzero(bad_rows)[0])
        seg = _segment_of(off, row)
        raise _fail(path, "input", f"non-finite value at note {row - off[seg]} of the segment", ids, seg)
    # The original embeds an all-zero row as a note (it masks pooled hidden states by their feature sum, never
    # the input), but no note is one: every note of the processed data has at least 27 nonzero features (its
    # z-scored tempi and measure length among them). A zero row inside a segment is padding or lost features.
    zero_rows = ~x.any(axis=1)
    if zero_rows.any():
        row = int(np.flatnonzero(zero_rows)[0])
        seg = _segment_of(off, row)
        raise _fail(path, "input", f"note {row - off[seg]} of the segment has all {INPUT_DIM} features 0: padding "
                    "or missing features, not a note (the processed data has no such row)", ids, seg)

    seg_start = np.zeros(n_notes, dtype=bool)
    seg_start[off[:-1]] = True
    for k in LOCATION_KEYS:
        name = f"note_{k}"
        v = a[name]
        if v.dtype.kind not in "iu" or v.shape != (n_notes,):
            raise _fail(path, name, f"expected integer shape ({n_notes},), got {v.dtype} {v.shape}")
        v = v.astype(np.int64)
        if (v < 0).any():
            row = int(np.flatnonzero(v < 0)[0])
            seg = _segment_of(off, row)
            raise _fail(path, name, f"negative index {v[row]} at note {row - off[seg]}", ids, seg)
        if k == "voice" and (v > MAX_VOICE).any():
            row = int(np.flatnonzero(v > MAX_VOICE)[0])
            seg = _segment_of(off, row)
            raise _fail(path, name, f"voice number {v[row]} at note {row - off[seg]} is above the maximum "
                        f"{MAX_VOICE} (constants.MAX_VOICE; the processed data's largest is 7)", ids, seg)
        if k in CONTIGUOUS_KEYS:
            d = np.diff(v)
            bad = ~seg_start[1:] & ((d < 0) | (d > 1))
            if bad.any():
                row = int(np.flatnonzero(bad)[0]) + 1
                seg = _segment_of(off, row)
                raise _fail(
                    path, name,
                    f"indices must be non-decreasing and contiguous (steps 0 or +1); step {d[row - 1]:+d} "
                    f"at note {row - off[seg]}", ids, seg,
                )

    for k in ("beat", "measure"):  # the original's boundary search fails on a segment whose indices are all 0
        seg_max = np.maximum.reduceat(a[f"note_{k}"].astype(np.int64), off[:-1])
        if (seg_max == 0).any():
            seg = int(np.flatnonzero(seg_max == 0)[0])
            raise _fail(path, f"note_{k}", "all indices are 0 (a segment needs at least two beats and two measures; "
                        "the original crashes on it)", ids, seg)

    for name, lo_open in (("labels", True), ("labels_std", False)):
        y = a[name]
        if y.dtype != np.float32 or y.shape != (n_seg, NUM_LABELS):
            raise _fail(path, name, f"expected float32 ({n_seg}, {NUM_LABELS}), got {y.dtype} {y.shape}")
        finite = np.isfinite(y).all(axis=1)
        if not finite.all():
            seg = int(np.flatnonzero(~finite)[0])
            raise _fail(path, name, "non-finite value", ids, seg)
        if lo_open:
            ok = ((y > 0) & (y <= 1)).all(axis=1)
            if not ok.all():
                seg = int(np.flatnonzero(~ok)[0])
                raise _fail(path, name, f"labels must lie in (0, 1], got {y[seg][~((y[seg] > 0) & (y[seg] <= 1))]}", ids, seg)
        else:
            ok = (y >= 0).all(axis=1)
            if not ok.all():
                seg = int(np.flatnonzero(~ok)[0])
                raise _fail(path, name, "annotator std must be >= 0", ids, seg)
    names = a["label_names"]
    if names.shape != (NUM_LABELS,) or names.dtype.kind not in "US":
        raise _fail(path, "label_names", f"expected {NUM_LABELS} strings, got {names.dtype} {names.shape}")
    text = [str(n) for n in names.astype(str)]
    if set(text) == set(LABEL_NAMES) and text != list(LABEL_NAMES):  # PercePiano's labels, in another order
        first = next(i for i, (a_, b_) in enumerate(zip(text, LABEL_NAMES)) if a_ != b_)
        raise _fail(path, "label_names", f"PercePiano's 19 labels in another order (column {first} is {text[first]!r}, "
                    f"expected {LABEL_NAMES[first]!r}): the model's outputs are named in the original order "
                    f"(constants.LABEL_NAMES); reorder the label columns")
    if "feature_names" in a and a["feature_names"].shape != (INPUT_DIM,):
        raise _fail(path, "feature_names", f"expected ({INPUT_DIM},), got {a['feature_names'].shape}")

    for scheme in (s for s in SPLIT_SCHEMES if f"{s}_split" in a):  # the work split is optional
        name = f"{scheme}_split"
        s = a[name]
        if s.dtype.kind not in "iu" or s.shape != (n_seg, N_FOLDS):
            raise _fail(path, name, f"expected integer ({n_seg}, {N_FOLDS}), got {s.dtype} {s.shape}")
        bad = ~np.isin(s, (0, 1, 2)).all(axis=1)
        if bad.any():
            seg = int(np.flatnonzero(bad)[0])
            raise _fail(path, name, f"values must be 0 (train), 1 (valid) or 2 (test), got {s[seg].tolist()}", ids, seg)
        test = s == PARTS["test"]
        differs = (test != test[:, :1]).any(axis=1)
        if differs.any():
            seg = int(np.flatnonzero(differs)[0])
            raise _fail(path, name, f"test membership differs across folds: {s[seg].tolist()}", ids, seg)
        valid_in = (s == PARTS["valid"]).sum(axis=1)
        if (valid_in > 1).any():  # the folds of a cross-validation: each segment validates at most one of them
            seg = int(np.flatnonzero(valid_in > 1)[0])
            raise _fail(path, name, f"valid in folds {np.flatnonzero(s[seg] == PARTS['valid']).tolist()}: a segment "
                        f"may be in the valid part of one fold only (folds copied or overlapping?)", ids, seg)
        for fold in range(N_FOLDS):
            for part, code in PARTS.items():
                if not (s[:, fold] == code).any():
                    raise _fail(path, name, f"fold {fold} has no {part} segment")
        if scheme == "work":  # what the split is for: no work in two of train, valid and test
            for fold, leaks in enumerate(works_across_parts(ids, s)):
                if leaks:
                    work, parts = next(iter(leaks.items()))
                    raise _fail(path, name, f"fold {fold}: work {work!r} has segments in {' and '.join(parts)} "
                                f"({len(leaks)} such work(s)); a work-held-out split keeps every work in one part")


# --------------------------------------------------------------------------------------------- batching


def shuffle_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch's shuffle: a function of (seed, epoch) only, so a resumed run shuffles
    exactly as an uninterrupted one."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1, np.uint64)[0] >> 1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(n)`` used for training epoch ``epoch``."""
    g = torch.Generator()
    g.manual_seed(shuffle_seed(seed, epoch))
    return torch.randperm(n, generator=g)


def num_batches(n: int, batch_size: int) -> int:
    return -(-int(n) // int(batch_size))  # drop_last=False, as the original loaders


def iterate_batches(
    data: PercePianoData,
    indices: Sequence[int] | np.ndarray,
    batch_size: int = 8,
    *,
    feature_set: str = "full",
    shuffle: bool = False,
    seed: int | None = None,
    epoch: int = 0,
    max_batches: int | None = None,
) -> Iterator[Batch]:
    """Batches over ``indices``: in the given order (eval), or shuffled per epoch with a generator seeded from
    (``seed``, ``epoch``) (training; the original shuffles the train loader only). The last batch may be smaller."""
    idx = np.asarray(indices, dtype=np.int64)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        if seed is None:
            raise ValueError("iterate_batches: shuffle=True needs a seed")
        idx = idx[epoch_order(len(idx), seed, epoch).numpy()]
    nb = num_batches(len(idx), batch_size)
    if max_batches is not None:
        nb = min(nb, int(max_batches))
    for b in range(nb):
        yield data.batch(idx[b * batch_size : (b + 1) * batch_size], feature_set)


# --------------------------------------------------------------------------------------------- summary


def summary(data: PercePianoData) -> dict:
    """Counts and label statistics (what ``percepiano data-summary`` prints)."""
    out: dict = {
        "path": data.path,
        "segments": len(data),
        "notes": data.num_notes,
        "notes_per_segment": {
            "min": int(data.lengths.min()),
            "median": float(np.median(data.lengths)),
            "mean": float(data.lengths.mean()),
            "max": int(data.lengths.max()),
        },
        "splits": {},
        "labels": [],
    }
    for scheme in data.splits:
        out["splits"][scheme] = [
            {"fold": f, **{p: int(len(data.split_indices(scheme, f, p))) for p in PARTS}} for f in range(N_FOLDS)
        ]
    y, s = data.labels, data.labels_std
    for i, name in enumerate(data.label_names):
        out["labels"].append(
            {
                "index": i,
                "name": name,
                "min": float(y[:, i].min()),
                "max": float(y[:, i].max()),
                "mean": float(y[:, i].mean()),
                "std": float(y[:, i].std()),
                "mean_annotator_std": float(s[:, i].mean()),
            }
        )
    return out


def format_summary(sm: dict) -> str:
    nps = sm["notes_per_segment"]
    lines = [
        f"dataset: {sm['path']}",
        f"segments: {sm['segments']}   notes: {sm['notes']}   notes/segment: min {nps['min']}, "
        f"median {nps['median']:g}, mean {nps['mean']:.1f}, max {nps['max']}",
        "",
        f"{'scheme':<12} {'fold':>4} {'train':>6} {'valid':>6} {'test':>6}",
    ]
    for scheme, folds in sm["splits"].items():
        for f in folds:
            lines.append(f"{scheme:<12} {f['fold']:>4} {f['train']:>6} {f['valid']:>6} {f['test']:>6}")
    lines += ["", f"{'#':>2} {'label':<50} {'min':>6} {'max':>6} {'mean':>6} {'std':>6} {'ann.std':>7}"]
    for r in sm["labels"]:
        lines.append(
            f"{r['index']:>2} {r['name']:<50} {r['min']:>6.3f} {r['max']:>6.3f} {r['mean']:>6.3f} "
            f"{r['std']:>6.3f} {r['mean_annotator_std']:>7.3f}"
        )
    return "\n".join(lines)
