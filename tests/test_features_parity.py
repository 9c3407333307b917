"""Feature-pipeline parity against the original pipeline's processed dataset.

Needs the dataset: ``PERCEPIANO_DATA`` (the npz), ``PERCEPIANO_RAW`` (raw/ with MIDI and MusicXML) and
``PERCEPIANO_ALIGNMENTS`` (the original ``*_infer_corresp.txt``); each defaults to its place in ``../shared`` beside
the repository when that exists. The default suite runs a CI-sized subset (excerpts with tuplet drift, ``fp``,
ties across voices, grace notes and two sections); the full runs are ``-m slow``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from percepiano.features import agreement

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "percepiano"


def _path(env: str, default: Path) -> Path | None:
    value = os.environ.get(env)
    if value:
        return Path(value)
    return default if default.exists() else None


DATA = _path("PERCEPIANO_DATA", SHARED / "processed" / "percepiano_vnet_m2pf.npz")
RAW = _path("PERCEPIANO_RAW", SHARED / "raw")
ALIGN = _path("PERCEPIANO_ALIGNMENTS", SHARED / "alignment")

needs_data = pytest.mark.skipif(
    DATA is None or RAW is None or not DATA.is_file() or not RAW.is_dir(),
    reason="needs the dataset: set PERCEPIANO_DATA (npz) and PERCEPIANO_RAW (raw/), or have ../shared/percepiano")
needs_alignments = pytest.mark.skipif(
    ALIGN is None or not ALIGN.is_dir(),
    reason="needs the original alignments: set PERCEPIANO_ALIGNMENTS or have ../shared/percepiano/alignment")

#: excerpts covering the hard cases (docs/features.md#tests): tuplet drift, fp, ties across voices (+ 2-track
#: pedal), grace notes, two sections
CI_EXCERPTS = ["Beethoven_WoO80_var18_8bars_Score_12", "Schubert_D960_mv2_8bars_Score_09",
               "Schubert_D960_mv2_8bars_Score_15", "Beethoven_WoO80_var25_8bars_Score_14",
               "Beethoven_WoO80_var6_8bars_Score_5"]
#: segments of those excerpts (two tracks with pedal CCs in Schubert_D960_mv2_8bars_Score_15; a poorly matched one)
CI_SEGMENTS = ["Beethoven_WoO80_var18_8bars_7_12", "Beethoven_WoO80_var18_8bars_Score_12",
               "Beethoven_WoO80_var18_8bars_1_12", "Schubert_D960_mv2_8bars_1_09", "Schubert_D960_mv2_8bars_3_09",
               "Schubert_D960_mv2_8bars_Score_15", "Schubert_D960_mv2_8bars_2_15", "Schubert_D960_mv2_8bars_5_15",
               "Beethoven_WoO80_var25_8bars_1_14", "Beethoven_WoO80_var25_8bars_19_14",
               "Beethoven_WoO80_var25_8bars_2_14", "Beethoven_WoO80_var6_8bars_1_5", "Beethoven_WoO80_var6_8bars_2_5",
               "Beethoven_WoO80_var6_8bars_Score2_5", "Beethoven_WoO80_thema_8bars_1_1",
               "Schubert_D960_mv2_16bars_Score_08", "Schubert_D935_no.3_4bars_1_5",
               "Schubert_D960_mv3_8bars_9_37", "Schubert_D960_mv2_8bars_1_01", "Schubert_D960_mv3_16bars_1_01"]
#: segments for the aligner check in the default suite (well-matched ones of the excerpts above)
CI_ALIGNER_SEGMENTS = ["Schubert_D960_mv2_8bars_1_01", "Beethoven_WoO80_var25_8bars_1_14",
                       "Schubert_D935_no.3_4bars_1_5", "Beethoven_WoO80_var6_8bars_1_5",
                       "Schubert_D960_mv2_8bars_1_09", "Beethoven_WoO80_var18_8bars_7_12"]
#: pair agreement floor on that small subset (the full-set targets are in agreement.PAIR_*_TARGET)
CI_PAIR_F1 = 0.95


@pytest.fixture(scope="module")
def ref():
    return agreement.load_reference(DATA)


@needs_data
@pytest.mark.parity
def test_score_side_ci_excerpts(ref):
    r = agreement.score_parity(ref, RAW, limit=CI_EXCERPTS)
    assert r["excerpts"] == len(CI_EXCERPTS)
    assert r["differing_excerpts"] == {}
    assert r["identical_rows"] == r["score_rows"] > 0


@needs_data
@needs_alignments
@pytest.mark.parity
def test_full_matrix_with_original_pairs_ci_segments(ref):
    missing = [s for s in CI_SEGMENTS if s not in ref.index]
    assert not missing, missing
    r = agreement.corresp_parity(ref, RAW, ALIGN, limit=CI_SEGMENTS)
    assert r["differing_segments"] == {}
    assert r["identical_segments"] == len(CI_SEGMENTS)
    assert r["identical_rows"] == r["rows"] > 0


@needs_data
@pytest.mark.parity
def test_aligner_ci_segments(ref):
    pytest.importorskip("parangonar", reason="the aligner needs the `features` extra (parangonar)")
    r = agreement.aligner_parity(ref, RAW, limit=CI_ALIGNER_SEGMENTS)
    assert r["segments"] == len(CI_ALIGNER_SEGMENTS) and not r["errors"]
    f1 = 2 * r["common_pairs"] / (r["original_pairs"] + r["our_pairs"])
    assert f1 >= CI_PAIR_F1
    assert r["identical_matrices"] >= 1  # Beethoven_WoO80_var25_8bars_1_14 and D935 _1_5 match exactly


@needs_data
@pytest.mark.parity
def test_extract_result_is_model_ready(ref):
    pytest.importorskip("parangonar", reason="the aligner needs the `features` extra (parangonar)")
    from percepiano.features.pipeline import extract
    seg = "Beethoven_WoO80_var25_8bars_1_14"
    res = extract(agreement.score_xml_for(ref, seg, RAW), agreement.perf_midi_for(ref, seg, RAW))
    assert res.x.dtype == np.float32 and res.x.shape[1] == 101
    for key in ("beat", "measure", "section"):
        steps = np.diff(res.locations[key])
        assert steps.min() >= 0 and steps.max() <= 1, key
    x, lengths, locs = res.model_inputs
    assert tuple(x.shape) == (1, res.x.shape[0], 101) and int(lengths[0]) == res.x.shape[0]
    assert set(locs) == {"beat", "measure", "section", "voice"}


# ------------------------------------------------------------------------------------------- full runs (slow)
@needs_data
@pytest.mark.slow
@pytest.mark.parity
def test_score_side_all_excerpts(ref):
    r = agreement.score_parity(ref, RAW)
    assert r["excerpts"] == 98
    assert r["identical_rows"] == r["score_rows"] == 12413


@needs_data
@needs_alignments
@pytest.mark.slow
@pytest.mark.parity
def test_full_matrix_with_original_pairs_all_segments(ref):
    r = agreement.corresp_parity(ref, RAW, ALIGN)
    assert r["identical_segments"] == r["segments"] == 1192
    assert r["identical_rows"] == r["rows"] == 168677


@needs_data
@pytest.mark.slow
@pytest.mark.parity
def test_aligner_all_well_matched_segments_and_all_files(ref):
    pytest.importorskip("parangonar", reason="the aligner needs the `features` extra (parangonar)")
    r = agreement.aligner_parity(ref, RAW, all_files=True)
    failed = [what for what, ok in agreement.aligner_verdict(r) if not ok]
    assert not failed, failed


# ------------------------------------------------------------------------------------------- predict end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random-weight checkpoint in the `percepiano train` format (format, model_state, model_config)."""
    import torch
    from percepiano import ModelConfig, PercePianoModel
    from percepiano.checkpoints import CHECKPOINT_FORMAT
    cfg = ModelConfig(hidden_size=16, num_heads=4)
    torch.manual_seed(0)
    model = PercePianoModel(cfg)
    path = tmp_path_factory.mktemp("ck") / "best.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "kind": "best", "model_state": model.state_dict(),
                "model_config": cfg.to_dict()}, path)
    return path


@needs_data
def test_predict_json_and_table(ref, checkpoint, capsys):
    pytest.importorskip("parangonar", reason="predict needs the `features` extra (parangonar)")
    import json
    from percepiano.cli import main
    from percepiano.constants import LABEL_NAMES
    seg = "Schubert_D960_mv2_8bars_1_01"
    args = ["predict", str(agreement.perf_midi_for(ref, seg, RAW)), "--score", str(agreement.score_xml_for(ref, seg, RAW)),
            "--checkpoint", str(checkpoint)]
    assert main(args + ["--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["ratings"]] == list(LABEL_NAMES)
    assert all(0 < r["value"] < 1 and r["rating_1_to_7"] == pytest.approx(7 * r["value"]) for r in out["ratings"])
    assert out["alignment"]["match_rate"] > 0.95 and out["warnings"] == []
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "Timing_Stable_Unstable" in table and "alignment:" in table


@needs_data
def test_predict_refuses_another_piece(ref, checkpoint, capsys):
    pytest.importorskip("parangonar", reason="predict needs the `features` extra (parangonar)")
    from percepiano.cli import main
    perf = agreement.perf_midi_for(ref, "Schubert_D960_mv2_8bars_1_01", RAW)
    score = agreement.score_xml_for(ref, "Beethoven_WoO80_var25_8bars_1_14", RAW)
    code = main(["predict", str(perf), "--score", str(score), "--checkpoint", str(checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and "does not look like a performance of this score" in err and "Traceback" not in err


@needs_data
def test_e2e_check_runs(ref, checkpoint):
    pytest.importorskip("parangonar", reason="the e2e check needs the `features` extra (parangonar)")
    from percepiano.checkpoints import load_trained_model
    segs = ["Schubert_D960_mv2_8bars_1_01", "Beethoven_WoO80_var25_8bars_1_14", "Schubert_D935_no.3_4bars_1_5",
            "Beethoven_WoO80_thema_8bars_1_1"]
    r = agreement.e2e_parity(ref, RAW, load_trained_model(checkpoint)[0], limit=segs)
    assert not r["errors"] and r["well"]["segments"] == 3 and r["poor"]["segments"] == 1
    # var25 and D935 _1_5 re-extract identically, so their predictions agree; all are finite
    assert np.isfinite(r["well"]["mean_abs_delta_sd"]) and r["well"]["mean_abs_delta_sd"] < 0.5
    assert [w for w, _ in agreement.e2e_verdict(r)]


@needs_data
@needs_alignments
@pytest.mark.slow
def test_reextract_with_original_pairs_reproduces_the_npz(ref, tmp_path):
    from percepiano.data import load_dataset
    from percepiano.features.dataset import reextract
    out = tmp_path / "re.npz"
    info = reextract(DATA, RAW, out, alignments=ALIGN, log=lambda m: None)
    assert info["failed_segments_kept_as_stored"] == []
    with np.load(DATA) as a, np.load(out) as b:
        for key in ("note_beat", "note_measure", "note_section", "note_voice", "note_kind", "align_matched",
                    "articulation_loss_weight", "offsets", "labels", "composition_split"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert agreement.identical(b["input"].astype(np.float64), a["input"].astype(np.float64)).all()
    assert len(load_dataset(out)) == 1192


# ------------------------------------------------------------------------------------------- CLI, no dataset needed
@pytest.fixture
def tiny_reference(tmp_path):
    """A processed npz of synthetic segments (no segments.csv: none counts as well matched) and an empty raw/."""
    from percepiano.synthetic import dataset_arrays
    arrays = dataset_arrays(n_segments=16)
    arrays["note_kind"] = np.zeros(len(arrays["input"]), dtype=np.int8)
    npz = tmp_path / "reference.npz"
    np.savez(npz, **arrays)
    raw = tmp_path / "raw"
    raw.mkdir()
    return npz, raw, [str(s) for s in arrays["segment_ids"]]


def test_unknown_segment_ids_are_an_error_not_a_pass(tiny_reference, capsys):
    from percepiano.cli import main
    npz, raw, ids = tiny_reference
    code = main(["features-parity", "--data", str(npz), "--raw", str(raw), "--check", "score",
                 "--segments", f"{ids[0]},no_such_segment,typo_1"])
    captured = capsys.readouterr()
    assert code == 2 and "PASS" not in captured.out
    assert "features-parity: error: --segments: 2 of 3 ids are not segments of" in captured.err
    assert "no_such_segment, typo_1" in captured.err and ids[0] + "," not in captured.err
    assert main(["features-parity", "--data", str(npz), "--raw", str(raw), "--segments", " , "]) == 2
    assert "--segments is empty" in capsys.readouterr().err


def test_nothing_checked_is_never_a_pass(tiny_reference, capsys):
    from percepiano.cli import main
    npz, raw, ids = tiny_reference
    # a known segment that is not well matched: the aligner check has nothing to compare
    code = main(["features-parity", "--data", str(npz), "--raw", str(raw), "--check", "aligner", "--segments", ids[0]])
    out = capsys.readouterr().out
    assert code == 1 and "aligner on 0 well-matched segments" in out
    assert "FAIL: at least one well-matched segment checked" in out and "aligner -> FAIL" in out
