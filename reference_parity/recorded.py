"""What was recorded from the original: the files in ``reference_parity/fixtures/``, read, checked and written.

Recorded side (numpy only, never the original code). :mod:`reference_parity.capture`, on the live side, writes the
files with :func:`save_npz` and :func:`sha256`; everything else only reads them.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"
UPSTREAM_ENV = "PERCEPIANO_UPSTREAM"  # names the checkout of the original the fixtures are recorded from
REGENERATE = f"{UPSTREAM_ENV}=/path/to/PercePiano python -m reference_parity.capture"  # recorded in MANIFEST.json
MAX_BYTES = 10 * 1024 * 1024  # all fixtures together: small enough to live in the repository
# The replay fixtures (whole training runs of the original, step by step: reference_parity/capture_training.py)
# live in their own folder with their own MANIFEST.json, so that each capture rewrites only its own files.
REPLAY_DIR = FIXTURE_DIR / "replay"
REPLAY_REGENERATE = (f"{UPSTREAM_ENV}=/path/to/PercePiano PERCEPIANO_DATA=/path/to/percepiano_vnet_m2pf.npz "
                     "python -m reference_parity.capture_training")


def load(name: str, fixture_dir: Path | None = None) -> dict[str, np.ndarray]:
    """The arrays of one ``.npz`` fixture (no pickle)."""
    path = Path(fixture_dir or FIXTURE_DIR) / name
    if not path.is_file():
        raise FileNotFoundError(f"fixture {path} missing; regenerate with `{REGENERATE}`")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def manifest(fixture_dir: Path | None = None) -> dict:
    return json.loads((Path(fixture_dir or FIXTURE_DIR) / "MANIFEST.json").read_text())


def entry(kind: str, fixture_dir: Path | None = None, **match) -> dict:
    """The MANIFEST entry of the fixture of ``kind`` whose fields equal ``match`` (e.g. ``level=``, ``dtype=``)."""
    for e in manifest(fixture_dir)["files"]:
        if e["kind"] == kind and all(e.get(k) == v for k, v in match.items()):
            return e
    raise KeyError(f"no fixture of kind {kind!r} with {match}")


def published_config(fixture_dir: Path | None = None) -> dict:
    return json.loads((Path(fixture_dir or FIXTURE_DIR) / "published_config.json").read_text())


def sub(arrays: dict, prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose key starts with ``prefix``, keyed by the rest of the key."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def array_specs(path: Path) -> dict[str, list]:
    """``{key: [shape, dtype]}`` of an ``.npz`` fixture, as MANIFEST.json records it."""
    with np.load(path, allow_pickle=False) as z:  # raises on object arrays
        return {k: [list(z[k].shape), str(z[k].dtype)] for k in z.files}


def integrity_problems(fixture_dir: Path | None = None) -> list[str]:
    """What differs between the fixture files and MANIFEST.json (sha256, array shapes and dtypes, total size)."""
    fixture_dir = Path(fixture_dir or FIXTURE_DIR)
    problems, total = [], 0
    for e in manifest(fixture_dir)["files"]:
        path = fixture_dir / e["file"]
        if not path.is_file():
            problems.append(f"{e['file']}: missing")
            continue
        total += path.stat().st_size
        if sha256(path) != e["sha256"]:
            problems.append(f"{e['file']}: changed since it was recorded (sha256)")
        if path.suffix == ".npz" and array_specs(path) != e["arrays"]:
            problems.append(f"{e['file']}: arrays differ from MANIFEST.json")
    if total >= MAX_BYTES:
        problems.append(f"fixtures are {total} bytes >= {MAX_BYTES}")
    return problems


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` format with fixed zip timestamps (byte-identical reruns); no object arrays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            arr = np.asarray(arrays[key])
            if arr.dtype == object:
                raise TypeError(f"{path.name}:{key}: object arrays are not allowed")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr, order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
