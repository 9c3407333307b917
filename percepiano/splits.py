"""The work-held-out split ("work"): 4 folds in which no work has segments in two of train, valid and test.

A *work* is the piece a segment was cut from: its id without the ``_<bars>bars_<performer>_<segment>`` tail
(``Schubert_D960_mv3_8bars_3_12`` -> ``Schubert_D960_mv3``; the ``piece`` column of the dataset's
segments.csv). The shipped ``composition`` split holds out *excerpts* (``<piece>_<bars>bars_<segment>``, all
performers of one excerpt: the original ``m2pf_dataset_compositionfold.py``, ``get_name_wo_performer``), so
other excerpts of a test work are trained on: on the processed data, 3 of the 5 works in its test set have
segments in training (:func:`works_across_parts`). Each of the 17 Beethoven WoO 80 pieces (the theme and its
variations) is its own score and counts as a work; as one work they would leave 4 works, too few for a test
part and 4 disjoint valid parts.

:func:`work_split` builds the split from the segment ids and the composition split (rule in its docstring,
docs/rounds.md#the-work-split). The dataset file is read-only shared data, so the split of the processed
PercePiano data is recorded as a package resource (``percepiano/resources/work_split.json``: the rule, the
dataset's sha256, the test ids and each fold's valid ids); :func:`recorded_work_split` gives it to
:mod:`percepiano.data` for a dataset with exactly those segment ids. Another dataset has a work split only if
its npz has a ``work_split`` array (build one with :func:`work_split`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .constants import N_FOLDS, PARTS, WORK_SPLIT_REFERENCE

WORK_SPLIT_RESOURCE = Path(__file__).parent / "resources" / "work_split.json"
# <work>_<bars>bars_<performer>_<segment>: the original's file names (``get_performer_id`` reads the
# second-to-last field, ``get_name_wo_performer`` drops it)
_SEGMENT_ID = re.compile(r"(?P<work>.+)_(?P<bars>\d+)bars_(?P<performer>[^_]+)_(?P<segment>\d+)")
RULE = (
    "work = segment id without its _<bars>bars_<performer>_<segment> tail. Works are taken largest first "
    "(number of segments, then name). target = the number of test segments of the composition split. Works "
    "with more segments than target are too large to hold out and are train in every fold. Test: the other "
    "works in that order until test holds at least target segments. Valid: each remaining work, in that "
    "order, goes to the fold whose valid part has the fewest segments so far (ties: the lowest fold). "
    "Everything else is train."
)


def work_of(segment_id: str) -> str:
    """The work of a segment id (``Beethoven_WoO80_var8_8bars_11_3`` -> ``Beethoven_WoO80_var8``)."""
    m = _SEGMENT_ID.fullmatch(str(segment_id))
    if m is None:
        raise ValueError(f"segment id {segment_id!r}: expected <work>_<bars>bars_<performer>_<segment>, the "
                         f"processed data's naming (e.g. Schubert_D960_mv3_8bars_3_12)")
    return m["work"]


def works_of(segment_ids: Iterable[str]) -> list[str]:
    return [work_of(s) for s in segment_ids]


def _check_split_array(split: np.ndarray, n: int, what: str) -> np.ndarray:
    split = np.asarray(split)
    if split.shape != (n, N_FOLDS) or split.dtype.kind not in "iu":
        raise ValueError(f"{what}: expected an integer ({n}, {N_FOLDS}) split, got {split.dtype} {split.shape}")
    if not np.isin(split, list(PARTS.values())).all():
        raise ValueError(f"{what}: values must be the part codes {PARTS}")
    return split


def work_split(segment_ids: Sequence[str], reference_split: np.ndarray) -> np.ndarray:
    """The (n_segments, 4) work split, int8 with the part codes of :data:`~percepiano.constants.PARTS`.

    ``reference_split`` is the dataset's ``composition_split``: only the size of its test part is read, as the
    target size of this one's, so that the three splits test on about as many segments. The rule
    (:data:`RULE`): works largest first (segments, then name); works with more segments than the target are
    train in every fold (they cannot be held out without making test or one fold's valid part larger than the
    target); test takes the next works until it holds at least the target; each remaining work goes to the
    valid part of the fold with the fewest valid segments so far (ties: the lowest fold). Deterministic: a
    function of the ids and the reference test size only (not of their order). ``ValueError`` when the ids do
    not follow the naming or the works are too few for a test part and 4 valid parts.
    """
    ids = [str(s) for s in segment_ids]
    reference = _check_split_array(reference_split, len(ids), f"{WORK_SPLIT_REFERENCE} split")
    target = int((reference[:, 0] == PARTS["test"]).sum())
    works = works_of(ids)
    sizes = Counter(works)
    order = sorted(sizes, key=lambda w: (-sizes[w], w))
    eligible = [w for w in order if sizes[w] <= target]
    test, held = [], 0
    for w in eligible:
        if held >= target:
            break
        test.append(w)
        held += sizes[w]
    valid: list[list[str]] = [[] for _ in range(N_FOLDS)]
    counts = [0] * N_FOLDS
    for w in eligible[len(test):]:
        k = min(range(N_FOLDS), key=lambda f: (counts[f], f))
        valid[k].append(w)
        counts[k] += sizes[w]
    if held < target or not all(valid):
        raise ValueError(
            f"work split: {len(sizes)} works ({len(eligible)} with at most {target} segments, the "
            f"{WORK_SPLIT_REFERENCE} split's test size) are too few for a test part of {target} segments and "
            f"{N_FOLDS} disjoint valid parts"
        )
    part_of = {w: np.full(N_FOLDS, PARTS["train"], dtype=np.int8) for w in sizes}
    for w in test:
        part_of[w][:] = PARTS["test"]
    for k, fold_works in enumerate(valid):
        for w in fold_works:
            part_of[w][k] = PARTS["valid"]
    return np.stack([part_of[w] for w in works]) if ids else np.zeros((0, N_FOLDS), np.int8)


def works_across_parts(segment_ids: Sequence[str], split: np.ndarray) -> list[dict[str, list[str]]]:
    """Per fold, ``{work: the parts it has segments in}`` for every work in more than one of train, valid and
    test ([] per fold for a work-held-out split)."""
    works = works_of(segment_ids)
    split = _check_split_array(split, len(works), "split")
    names = {code: part for part, code in PARTS.items()}
    out = []
    for k in range(N_FOLDS):
        parts: dict[str, set] = {}
        for w, code in zip(works, split[:, k]):
            parts.setdefault(w, set()).add(int(code))
        out.append({w: [names[c] for c in sorted(p)] for w, p in sorted(parts.items()) if len(p) > 1})
    return out


def trained_test_works(segment_ids: Sequence[str], split: np.ndarray) -> tuple[list[str], list[str]]:
    """(the works of the test part, those of them with segments in some fold's train part)."""
    works = works_of(segment_ids)
    split = _check_split_array(split, len(works), "split")
    test = sorted({w for w, row in zip(works, split) if row[0] == PARTS["test"]})
    trained = {w for w, row in zip(works, split) if (row == PARTS["train"]).any()}
    return test, [w for w in test if w in trained]


# --------------------------------------------------------------------------------------------- the resource


def segment_ids_sha256(segment_ids: Iterable[str]) -> str:
    """sha256 of the sorted segment ids joined by newlines: which segments a dataset holds, in any order."""
    return hashlib.sha256("\n".join(sorted(str(s) for s in segment_ids)).encode()).hexdigest()


def work_split_record(segment_ids: Sequence[str], split: np.ndarray, dataset: dict) -> dict:
    """The JSON object of ``percepiano/resources/work_split.json`` for ``split`` (from :func:`work_split`) of
    the dataset ``dataset`` (``{"file", "sha256", "segments"}``): the rule, the ids' checksum, every work's
    part per fold, the test ids and each fold's valid ids (train is every other segment)."""
    ids = [str(s) for s in segment_ids]
    split = _check_split_array(split, len(ids), "work split")
    works = works_of(ids)
    names = {code: part for part, code in PARTS.items()}
    table = {}
    for w, row in zip(works, split):
        entry = table.setdefault(w, {"segments": 0, "parts": [names[int(c)] for c in row]})
        entry["segments"] += 1
    return {
        "description": "The work-held-out split of the processed PercePiano data (percepiano/splits.py, "
                       "docs/rounds.md#the-work-split): no work has segments in two of train, valid and test.",
        "rule": RULE,
        "dataset": dict(dataset),
        "segment_ids_sha256": segment_ids_sha256(ids),
        "test_segments": int((split[:, 0] == PARTS["test"]).sum()),
        "train": "every segment of the dataset not listed under test or the fold's valid",
        "works": {w: table[w] for w in sorted(table, key=lambda w: (-table[w]["segments"], w))},
        "test": sorted(s for s, row in zip(ids, split) if row[0] == PARTS["test"]),
        "valid": [sorted(s for s, row in zip(ids, split) if row[k] == PARTS["valid"]) for k in range(N_FOLDS)],
    }


@functools.lru_cache(maxsize=1)
def load_work_split_record(path: str = str(WORK_SPLIT_RESOURCE)) -> dict:
    """The recorded work split (``percepiano/resources/work_split.json``), checked: ``ValueError`` naming the
    file and the field that is not what :func:`work_split_record` writes."""
    p = Path(path)
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot read the recorded work split ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{p}: expected a JSON object (the recorded work split)")
    if not isinstance(record.get("segment_ids_sha256"), str):
        raise ValueError(f"{p}: field 'segment_ids_sha256': expected a string")
    test, valid = record.get("test"), record.get("valid")
    if not isinstance(test, list) or not test or not all(isinstance(s, str) for s in test):
        raise ValueError(f"{p}: field 'test': expected a non-empty list of segment ids")
    if (not isinstance(valid, list) or len(valid) != N_FOLDS
            or not all(isinstance(v, list) and v and all(isinstance(s, str) for s in v) for v in valid)):
        raise ValueError(f"{p}: field 'valid': expected {N_FOLDS} non-empty lists of segment ids (one per fold)")
    return record


def split_from_record(segment_ids: Sequence[str], record: dict, where: str = "work split record") -> np.ndarray:
    """The (n, 4) split of ``segment_ids`` that ``record`` lists (test ids, each fold's valid ids, the rest
    train); ``ValueError`` when it names a segment the ids lack or puts one in test and valid."""
    ids = [str(s) for s in segment_ids]
    row = {s: i for i, s in enumerate(ids)}
    split = np.full((len(ids), N_FOLDS), PARTS["train"], dtype=np.int8)
    for k in range(N_FOLDS):
        for part, listed in (("test", record["test"]), ("valid", record["valid"][k])):
            missing = [s for s in listed if s not in row]
            if missing:
                raise ValueError(f"{where}: fold {k} {part}: segment {missing[0]!r} is not in the dataset")
            rows = [row[s] for s in listed]
            if (split[rows, k] != PARTS["train"]).any():
                raise ValueError(f"{where}: fold {k}: a segment is listed twice (in test and valid)")
            split[rows, k] = PARTS[part]
    return split


def recorded_work_split(segment_ids: Sequence[str]) -> np.ndarray | None:
    """The recorded work split for a dataset whose segment ids are exactly the recorded ones (in any order;
    their sha256 is compared), else None."""
    record = load_work_split_record()
    if segment_ids_sha256(segment_ids) != record["segment_ids_sha256"]:
        return None
    return split_from_record(segment_ids, record, str(WORK_SPLIT_RESOURCE))


def main(argv: list[str] | None = None) -> int:
    """``python -m percepiano.splits DATA.npz [OUT.json]``: the work split of a dataset file by the rule, as
    ``percepiano/resources/work_split.json`` records it (written to OUT, else printed)."""
    import sys

    from .data import load_dataset
    from .provenance import file_sha256

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m percepiano.splits DATA.npz [OUT.json]", file=sys.stderr)
        return 2
    try:
        data = load_dataset(args[0])  # validated: segment ids, the reference split
        ids = [str(s) for s in data.segment_ids]
        split = work_split(ids, data.splits[WORK_SPLIT_REFERENCE])
        record = work_split_record(ids, split, {"file": Path(args[0]).name, "sha256": file_sha256(args[0]),
                                                "segments": len(ids)})
    except (ValueError, OSError) as exc:
        print(f"python -m percepiano.splits: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(record, indent=1) + "\n"
    if len(args) == 2:
        Path(args[1]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
