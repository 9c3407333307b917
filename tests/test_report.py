"""`percepiano report`: Markdown + HTML + PNGs from real `percepiano cv` run directories."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from percepiano import report as rep
from percepiano.cli import main

TINY = Path(__file__).parent / "data" / "tiny_runs"  # committed: a real tiny `percepiano cv` run (see tests/data/README.md)
SYNTHETIC = Path(__file__).parent / "data" / "synthetic_m2pf.npz"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_PLOT_PIXELS = 300  # every plot is at least this wide and tall (readable, not a thumbnail)


def assert_png(path: Path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    h, w = mpimg.imread(path).shape[:2]
    assert h >= MIN_PLOT_PIXELS and w >= MIN_PLOT_PIXELS, (path, h, w)


def test_report_from_the_committed_tiny_run(tmp_path):
    out = tmp_path / "report"
    r = rep.build_report([TINY / "han", TINY / "bilstm_sa"], out, data=None)
    md, html = r.markdown.read_text(), r.html.read_text()
    names = {p.name for p in r.images}
    # curves for both neural runs, one per-label chart, scatter for the runs and the baselines found beside them
    assert names == {
        "curves_han_composition_han.png", "curves_bilstm_sa_composition_bilstm_sa.png", "per_label_r2.png",
        "scatter_han_composition_han.png", "scatter_bilstm_sa_composition_bilstm_sa.png",
        "scatter_mean_composition_mean.png", "scatter_ridge_composition_ridge.png",
    }
    for p in r.images:
        assert_png(p)
        assert f"![" in md and f"({p.name})" in md and f"src='{p.name}'" in html
    for section in ("## Summary", "## Training curves", "## Per-label test R²", "## Predicted vs true",
                    "## Hierarchy gain", "## Attention of one segment", "## Deviations from the original"):
        assert section in md
    # no checkpoint is committed: the attention section says why it is skipped
    assert "attention heatmaps skipped: no checkpoint" in md
    assert all("no checkpoint" in why for k, why in r.skipped.items() if k.startswith("attention"))
    # the tiny run is honest about what it is
    assert "**does not beat ridge**" in md
    assert "| han/composition (han) | training protocol | epochs | 3 (original 100) |" in md
    assert "| han/composition (han) | model (size/structure) | note_size | 8 (original 256) |" in md
    # the hierarchy gain is han - bilstm_sa of the same split (values from the two results.json)
    import json

    han = json.loads((TINY / "han" / "results.json").read_text())["mean_test_r2"]
    sa = json.loads((TINY / "bilstm_sa" / "results.json").read_text())["mean_test_r2"]
    assert f"| composition | {han:.3f} | {sa:.3f} | {han - sa:+.3f} | +0.093 |" in md
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<td><b>does not beat ridge</b></td>" in html and "**" not in html


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A live tiny `percepiano cv` on the synthetic dataset: 2 folds, 1 epoch, hidden size 4 (checkpoints kept)."""
    import torch

    from percepiano.data import load_dataset
    from percepiano.cv import run_cv
    from percepiano.training import TrainConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    data = load_dataset(SYNTHETIC)
    run_cv("han", "composition", data, root / "han", tcfg=TrainConfig(epochs=2, lr=1e-3),
           model_overrides={"hidden_size": 4}, folds=[0, 1], device="cpu", progress=False)
    run_cv("ridge", "composition", data, root / "ridge", folds=[0, 1])
    return root, data


def test_report_cli_with_attention_from_a_live_synthetic_run(synthetic_run, tmp_path, capsys):
    root, data = synthetic_run
    seg = str(data.segment_ids[-1])  # a test segment
    out = tmp_path / "out"
    assert main(["report", str(root / "han"), "--out", str(out), "--data", str(SYNTHETIC), "--segment", seg]) == 0
    printed = capsys.readouterr().out
    att = out / "attention_han_composition_han.png"
    assert f"wrote {att}" in printed and "skipped attention" not in printed
    assert_png(att)
    md = (out / "report.md").read_text()
    assert f"segment `{seg}` (test split of that fold)" in md
    assert "| beat |" in md and "| measure |" in md and "| pool |" in md  # entropy table of the segment
    assert (out / "scatter_ridge_composition_ridge.png").is_file()  # sibling baseline found
    assert [r.preset for r in rep.find_baseline_runs([rep.load_run(root / "han")])] == ["ridge"]
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_segment_attention_weights_are_softmaxes_per_span(synthetic_run):
    root, data = synthetic_run
    run = rep.load_run(root / "han")
    att = rep.segment_attention(run, data=data, segment=str(data.segment_ids[0]))
    assert att["ok"], att.get("reason")
    for level in ("beat", "measure"):
        w, bounds = att["weights"][level], att["boundaries"][level]
        sums = np.stack([w[s:e].sum(axis=0) for s, e in zip(bounds[:-1], bounds[1:])])
        np.testing.assert_allclose(sums, 1.0, atol=1e-5)  # float32 softmax
    bad = rep.segment_attention(run, data=data, segment="no_such_segment")
    assert not bad["ok"] and "not in the dataset" in bad["reason"]


def test_missing_matplotlib_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"percepiano\[report\]"):
        rep._plt()


def test_load_run_tolerates_missing_artifacts(tmp_path):
    shutil.copytree(TINY / "mean", tmp_path / "mean")
    for f in (tmp_path / "mean").glob("fold1/*.npz"):
        f.unlink()
    run = rep.load_run(tmp_path / "mean")
    assert run.is_baseline and [f.predictions is None for f in run.folds] == [False, True, False, False]
    pred, lab, fold = run.test_predictions()
    assert pred.shape == lab.shape and set(fold.tolist()) == {0, 2, 3}
    assert rep.segment_attention(run)["reason"] == "mean is a non-neural baseline: it has no attention"


@pytest.mark.skipif(not os.environ.get("PERCEPIANO_DATA"), reason="real data: set PERCEPIANO_DATA to percepiano_vnet_m2pf.npz")
def test_report_from_a_tiny_real_run(tmp_path):
    """1 fold, 1 epoch, hidden size 4, 8 segments per split, on the real data; then the full report."""
    import torch

    from percepiano.data import load_dataset
    from percepiano.cv import run_cv
    from percepiano.training import TrainConfig

    torch.set_num_threads(1)
    data = load_dataset(None)
    run_cv("han", "performer", data, tmp_path / "han", tcfg=TrainConfig(epochs=1, limit_segments=8),
           model_overrides={"hidden_size": 4}, folds=[0], device="cpu", progress=False)
    r = rep.build_report([tmp_path / "han"], tmp_path / "out", data=data)
    md = r.markdown.read_text()
    assert (tmp_path / "out" / "attention_han_performer_han.png") in r.images
    for p in r.images:
        assert_png(p)
    assert "| folds | n_folds | 1 (original 4) |" in md
    assert "recorded ridge" in md  # run_cv records the ridge baseline of the split in results.json


def test_document_renders_markdown_and_html():
    from percepiano.document import Document, slug

    doc = Document()
    doc.h(2, "A & B")
    doc.p("`code`, **bold** and *emphasis* <raw>")
    doc.table(["a|b", "c"], [["x|y", 1]])
    doc.img(Path("/elsewhere/plot.png"), "a plot")
    assert doc.markdown() == ("## A & B\n\n`code`, **bold** and *emphasis* <raw>\n\n| a\\|b | c |\n|---|---|\n"
                              "| x\\|y | 1 |\n\n![a plot](plot.png)\n")
    html = doc.html("t")
    assert "<h2>A &amp; B</h2>" in html and "<p><code>code</code>, <b>bold</b> and <i>emphasis</i> &lt;raw&gt;</p>" in html
    assert "<th>a|b</th>" in html and "<td>1</td>" in html and "<img src='plot.png' alt='a plot'>" in html
    assert slug("han/composition (run 1)") == "han_composition_run_1"
