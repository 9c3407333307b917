"""Live parity: run the ORIGINAL code (checkout named by ``PERCEPIANO_UPSTREAM``) next to ours.

The original is imported in isolation by :mod:`reference_parity.upstream`; hypothesis draws batches (segment
counts and lengths, voices incl. voice 0 and gaps, beats and measures with index offsets) that both
implementations run with the same weights. Without ``PERCEPIANO_UPSTREAM`` these tests skip, except the
loader's own error handling, which needs no original.
"""
from __future__ import annotations

import hashlib
import shutil
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from percepiano import ModelConfig, PercePianoModel
from percepiano.constants import LEVELS
from percepiano import synthetic as S
from reference_parity import inputs
from reference_parity import compare as C
from reference_parity import recorded as R
from reference_parity import upstream as U
from reference_parity.tolerances import FLOAT64_ATOL, FLOAT64_RTOL

pytestmark = [pytest.mark.parity, pytest.mark.usefixtures("one_thread")]

needs_upstream = pytest.mark.skipif(
    not U.available(),
    reason=f"live parity: set {R.UPSTREAM_ENV}=/path/to/PercePiano (a checkout of commit {U.EXPECTED_COMMIT}: "
           f"git clone {U.REPO_URL} && git checkout {U.EXPECTED_COMMIT})",
)


# ------------------------------------------------------------------------------------------ loader errors (no original)


def test_missing_checkout_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(R.UPSTREAM_ENV, raising=False)
    with pytest.raises(U.UpstreamError, match="PERCEPIANO_UPSTREAM is not set.*git clone .*git checkout e672299"):
        U.resolve_root()
    with pytest.raises(U.UpstreamError, match="not a directory.*git clone"):
        U.resolve_root(tmp_path / "nope")
    with pytest.raises(U.UpstreamError, match="lacks .*model_m2pf.py.*git clone"):
        U.load(tmp_path)


# ------------------------------------------------------------------------------------------ live


@pytest.fixture(scope="module")
def up():
    return U.load()


@needs_upstream
def test_original_modules_do_not_leak_into_sys_modules(up):
    own = U._own_names(up.code_dir)
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in own)
    assert not leaked, leaked
    assert str(up.code_dir) not in sys.path
    assert hasattr(up.utils, "find_boundaries_batch") and hasattr(up.model_m2pf, "VirtuosoNetMultiLevel")
    assert up.training().__name__ == "train_m2pf"  # lazily imported, still isolated
    assert not [n for n in sys.modules if n.split(".")[0] in own]


@needs_upstream
def test_checkout_verification(up, tmp_path):
    copy = tmp_path / "PercePiano"
    for rel in U.FINGERPRINTS:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(up.root / rel, copy / rel)
    assert U.verify_checkout(copy)["commit"] == U.EXPECTED_COMMIT
    (copy / "UPSTREAM_COMMIT").write_text("8f95aba\n")
    with pytest.raises(U.UpstreamError, match="expected e672299"):
        U.verify_checkout(copy)
    (copy / "UPSTREAM_COMMIT").unlink()
    if shutil.which("git"):  # a git checkout at another commit is refused by its HEAD
        import subprocess

        git = ["git", "-C", str(copy), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run(git[:3] + ["init", "-q"], check=True)
        subprocess.run(git + ["add", "-A"], check=True)
        subprocess.run(git + ["commit", "-q", "-m", "not the original"], check=True)
        with pytest.raises(U.UpstreamError, match="is at commit .*expected e672299"):
            U.verify_checkout(copy)
        shutil.rmtree(copy / ".git")
    with open(copy / "virtuoso/virtuoso/module.py", "a") as f:
        f.write("\n# modified\n")
    with pytest.raises(U.UpstreamError, match="module.py.*differ"):
        U.verify_checkout(copy)


@needs_upstream
def test_recorded_fixtures_regenerate(up, tmp_path):
    from reference_parity import capture

    assert capture.main(["--upstream", str(up.root), "--out", str(tmp_path)]) == 0
    man = R.manifest()
    fresh = R.manifest(tmp_path)
    same_versions = fresh["versions"] == man["versions"]
    for e_old, e_new in zip(man["files"], fresh["files"]):
        assert e_old["file"] == e_new["file"]
        if same_versions:  # byte-identical on the recording environment
            assert e_old["sha256"] == e_new["sha256"], e_old["file"]
        elif e_old["file"].endswith(".npz"):  # another torch/numpy: the same numbers up to rounding
            old, new = R.load(e_old["file"]), R.load(e_new["file"], tmp_path)
            assert old.keys() == new.keys()
            for k in old:
                np.testing.assert_allclose(new[k], old[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert hashlib.sha256((tmp_path / "published_config.json").read_bytes()).hexdigest() == \
        R.entry("config")["sha256"]


@needs_upstream
def test_original_crashes_where_ours_raises_value_error(up):
    from reference_parity import capture

    case = capture.MODEL_CASES["measure"]
    segs = (S.Segment(((2, 1),), (1, 1, 2), name="one measure numbered 0"),) + inputs.MODEL_SEGMENTS[:2]
    batch = S.stack(segs, case["input_size"], case["num_labels"], seed=1)
    original = capture.build_original(up, case, seed=0).eval()
    with pytest.raises(RuntimeError):
        capture.run_original(up, original, batch, torch.float64, "measure", grads=False)
    ours = PercePianoModel(ModelConfig(**case)).double().eval()
    x, lengths, locs, _ = S.to_torch(batch, torch.float64)
    with pytest.raises(ValueError):
        ours(x, lengths, locs)


@needs_upstream
def test_original_mishandles_one_note_segments(up):
    """``cal_length_from_padded_beat_numbers`` gives a one-note segment the batch width, so the original
    spans padding by negative node indices: out of range it crashes (at every level: it always runs the
    whole HanEncoder), in range it copies the wrong node into the padding, which ``total_note_cat`` pools.
    Ours raises ValueError at that level and is unaffected at the others."""
    from reference_parity import capture

    one_note = S.Segment(((1,),), (1,), first_beat=1, first_measure=2)
    segs = (one_note, S.Segment(((1, 1),), (1, 1), first_beat=0, first_measure=1))
    for level in ("note", "total_note_cat"):
        case = capture.MODEL_CASES[level]
        batch = S.stack(segs, case["input_size"], case["num_labels"], seed=1)
        original = capture.build_original(up, case, seed=0).double().eval()
        with pytest.raises(IndexError):  # measure index 0 - 2 = -2 on a one-measure axis
            capture.run_original(up, original, batch, torch.float64, level, grads=False)
        ours = PercePianoModel(ModelConfig(**case)).double().eval()
        x, lengths, locs, _ = S.to_torch(batch, torch.float64)
        if level == "total_note_cat":
            with pytest.raises(ValueError, match="row 0 has one note"):
                ours(x, lengths, locs)
        else:
            assert torch.isfinite(ours(x, lengths, locs)).all()


@st.composite
def segment(draw):
    n_measures = draw(st.integers(1, 4))
    measures = tuple(tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))) for _ in range(n_measures))
    n = sum(sum(m) for m in measures)
    voices = tuple(draw(st.lists(st.sampled_from([0, 1, 1, 2, 3, 3, 5]), min_size=n, max_size=n)))
    n_beats = sum(len(m) for m in measures)
    # a single beat (measure) numbered 0 makes the original crash (tested above), so those start at >= 1
    first_beat = draw(st.integers(1 if n_beats == 1 else 0, 6))
    first_measure = draw(st.integers(1 if n_measures == 1 else 0, 4))
    return S.Segment(measures, voices, first_beat=first_beat, first_measure=first_measure)


_ORIGINALS: dict = {}


def _original(up, level):
    from reference_parity import capture

    if level not in _ORIGINALS:
        _ORIGINALS[level] = capture.build_original(up, capture.MODEL_CASES[level], seed=11).double().eval()
    return _ORIGINALS[level]


@needs_upstream
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(level=st.sampled_from(LEVELS),
       # one-note segments make the original crash or span the wrong nodes (tested above)
       segs=st.lists(segment().filter(lambda g: g.num_notes >= 2), min_size=1, max_size=4),
       seed=st.integers(0, 2 ** 16))
def test_hypothesis_batches_match_the_original(up, level, segs, seed):
    from reference_parity import capture

    case = capture.MODEL_CASES[level]
    batch = S.stack(segs, case["input_size"], case["num_labels"], seed=seed)
    original = _original(up, level)
    ref, ref_loss, ref_grads = capture.run_original(up, original, batch, torch.float64, level, grads=True)
    arrays = {f"param/{k}": v.detach().numpy() for k, v in original.state_dict().items()}
    arrays.update({f"input/{k}": v for k, v in batch.items()})
    inter, loss, grads = C.run_ours(ModelConfig(**case), arrays, torch.float64)
    t = {"atol": FLOAT64_ATOL, "rtol": FLOAT64_RTOL}
    for name in C.REQUIRED[level]:
        assert_close(inter[name], torch.as_tensor(ref[name]), **t, msg=lambda m, n=name: f"{level}/{n}: {m}")
    assert_close(loss, torch.tensor(ref_loss, dtype=torch.float64), **t)
    for name, g in ref_grads.items():
        assert_close(grads[name], torch.as_tensor(g), **t, msg=lambda m, n=name: f"{level} grad {n}: {m}")
