"""`percepiano report`: Markdown + HTML + PNGs from real `percepiano cv` run directories."""
from __future__ import annotations

import json
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
EXACT = 1e-12
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
        "rounds_curves.png",
        "curves_han_composition_han.png", "curves_bilstm_sa_composition_bilstm_sa.png", "per_label_r2.png",
        "scatter_han_composition_han.png", "scatter_bilstm_sa_composition_bilstm_sa.png",
        "scatter_mean_composition_mean.png", "scatter_ridge_composition_ridge.png",
    }
    for p in r.images:
        assert_png(p)
        assert "![" in md and f"({p.name})" in md and f"src='{p.name}'" in html
    sections = ("## Verdict", "## Round comparison: ΔR² with intervals", "## Summary",
                "## Training curves of the rounds, overlaid", "## Training curves", "## Per-label test R²",
                "## Predicted vs true", "## Hierarchy gain", "## Attention of one segment", "## Deviations from the original")
    assert [md.index(x) for x in sections] == sorted(md.index(x) for x in sections)  # the verdict at the top
    # the rounds in the order given: bilstm_sa is gated against han (the same 32 test segments)
    assert "| bilstm_sa | han | **worse** (exit 1) | WORSE (exit 1): bilstm_sa vs han, mean_test_r2 ΔR² -0.1048" in md
    assert "| bilstm_sa | han | mean over labels | -0.501 | -0.606 | -0.1048 |" in md
    assert "| bilstm_sa | han | Pedal_Clean_Blurred |" in md and "| bilstm_sa | han | 3 | -0.1133 |" in md
    assert "Config differences (old → new): `preset: 'han' -> 'bilstm_sa'`; `model_config.level: 'measure' -> 'note'`." in md
    # every table names its run
    for block in md.split("\n\n"):
        if block.startswith("| "):
            header = block.split("\n")[0]
            assert header.startswith(("| run ", "| split | han run", "| label | han/composition")), header
    # no checkpoint is committed: the attention section says why it is skipped
    assert "attention heatmaps skipped: no checkpoint" in md
    assert all("no checkpoint" in why for k, why in r.skipped.items() if k.startswith("attention"))
    # the tiny run is honest about what it is
    assert "**does not beat ridge**" in md
    assert "| han/composition (han) | training protocol | epochs | 3 (original 100) |" in md
    assert "| han/composition (han) | model (size/structure) | note_size | 8 (original 256) |" in md
    # the hierarchy gain is han - bilstm_sa of the same split (values from the two results.json)
    han = json.loads((TINY / "han" / "results.json").read_text())["mean_test_r2"]
    sa = json.loads((TINY / "bilstm_sa" / "results.json").read_text())["mean_test_r2"]
    assert (f"| composition | han/composition (han) | bilstm_sa/composition (bilstm_sa) | {han:.3f} | {sa:.3f} | "
            f"{han - sa:+.3f} | +0.093 |") in md
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


def test_a_broken_sibling_baseline_is_skipped_with_a_warning(synthetic_run, tmp_path):
    root, _ = synthetic_run
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    (copy / "ridge" / "fold1" / "test_predictions.npz").write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match=r"baseline run next to the report's runs skipped: .*test_predictions.npz"):
        assert rep.find_baseline_runs([rep.load_run(copy / "han")]) == []


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


def test_a_run_with_folds_without_predictions_says_which_folds_the_plots_read(tmp_path):
    shutil.copytree(TINY / "han", tmp_path / "han")
    (tmp_path / "han" / "fold1" / "test_predictions.npz").unlink()
    md = rep.build_report([tmp_path / "han"], tmp_path / "report", data=None).markdown.read_text()
    assert ("No saved test predictions for fold(s) 1 (e.g. folds reused with --reuse-without-checkpoint): the plot "
            "and the collapse detector read fold(s) 0, 2, 3 only.") in md


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


def test_report_compares_seeds_rounds(tmp_path):
    """Two rounds of two seeds each (`cv --seeds` layout) and a ridge run beside them: verdict, ΔR² tables,
    overlaid curves of every seed and fold, per-seed runs named after their round."""
    from test_gate import write_seeds_round
    from test_paired import synthetic_folds

    from percepiano import paired as P

    base = synthetic_folds(n_excerpts=30, players=3, labels=6, folds=2, seed=4)  # 6 labels: two rows of scatter panels
    rng = np.random.default_rng(0)
    old = write_seeds_round(tmp_path, "round15", [P.noise_added(base, 0.05, rng, per="model") for _ in range(2)], [7, 8])
    new = write_seeds_round(tmp_path, "round16", [P.noise_added(base, 0.5, rng) for _ in range(2)], [7, 8],
                            train={"lr": 1e-3})
    for rnd in (old, new):  # per-epoch logs, as training writes them
        for seed in ("seed7", "seed8"):
            for k in range(2):
                rows = [{"epoch": e, "train_loss": 0.02 / e, "valid_loss": 0.003 / e, "test_r2": 0.1 * e} for e in (1, 2, 3)]
                (rnd / seed / f"fold{k}" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = rep.build_report([old, new], tmp_path / "out", find_baselines=False, resamples=300)
    md = r.markdown.read_text()
    assert "| round16 | round15 | **worse** (exit 1) |" in md
    assert "`round16` against `round15`: 90 test segments in 30 excerpt clusters, 300 bootstrap resamples, seeds 2 and 2" in md
    assert "`train_config.lr: 2.5e-05 -> 0.001`" in md
    assert "| han/performer (round15/seed7) | han | performer |" in md  # each seed is a row of the summary
    assert (tmp_path / "out" / "rounds_curves.png") in r.images
    assert (tmp_path / "out" / "curves_han_performer_round16_seed8.png") in r.images
    for p in r.images:
        assert_png(p)
    fig = rep.rounds_curves_figure([("round15", rep.load_runs([old])[1][0]), ("round16", rep.load_runs([new])[1][0])])
    axes = fig.axes
    assert [a.get_ylabel() for a in axes] == ["train loss", "valid loss", "test R²"]
    titles = [a.get_title().replace("\n", " ") for a in axes]
    assert titles[0] == rep.TRAIN_LOSS_MEANING and titles[1] == rep.VALID_LOSS_MEANING
    # 2 rounds x (4 thin fold/seed lines + 1 mean) per panel
    assert len(axes[0].lines) == 10
    # the command passes the comparison options on, as `percepiano gate` takes them
    assert main(["report", str(old), str(new), "--out", str(tmp_path / "cli"), "--no-find-baselines",
                 "--resamples", "200", "--cluster", "segment", "--margin", "0.5"]) == 0
    md = (tmp_path / "cli" / "report.md").read_text()
    assert "90 test segments in 90 segment clusters, 200 bootstrap resamples" in md
    assert "| round16 | round15 | **worse** (exit 1) |" not in md  # a margin of 0.5 tolerates the drop


def test_power_curve_figure(tmp_path):
    curves = {"noise added": [{"true_drop": d, "worse": min(1.0, d * 20), "not worse": max(0.0, 1 - d * 40),
                               "detectable": 0.03 + d / 10} for d in (0.0, 0.02, 0.04, 0.06)]}
    # true drop 0.02 is 0.012 short of its detectable 0.032, 0.04 is 0.006 past its 0.034: crossing at 0.02 + 0.02 * 2/3
    assert rep.detectable_threshold(curves["noise added"]) == pytest.approx(0.02 + 0.02 * 0.012 / 0.018, abs=EXACT)
    assert rep.detectable_threshold(curves["noise added"][:2]) is None
    fig = rep.power_curve_figure(curves, 0.02, "test")
    path = tmp_path / "power.png"
    fig.savefig(path, dpi=100)
    assert_png(path)
    assert any("stated detectable drop 0.033" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_the_hierarchy_gain_of_runs_over_other_folds_is_not_computed_but_said(tmp_path):
    """A 4-fold han cell and a 2-fold bilstm_sa cell (the round's composition cells so far): no gain row, a
    sentence naming both runs' folds."""
    from percepiano.document import Document
    from percepiano.report import Run, _hierarchy_gain

    def run(preset, r2):
        res = {"preset": preset, "split": "composition", "mean_test_r2": float(np.mean(r2)),
               "folds": [{"fold": k, "test_r2": v} for k, v in enumerate(r2)]}
        return Run(tmp_path / preset, res, [], label=preset)

    doc = Document()
    _hierarchy_gain(doc, [run("han", [0.4] * 4), run("bilstm_sa", [0.3] * 2)], None)
    assert not [b for b in doc.blocks if b[0] == "table"]
    [text] = [b[1] for b in doc.blocks if b[0] == "p"]
    assert ("composition: `han/composition (han)` covers folds [0, 1, 2, 3], `bilstm_sa/composition (bilstm_sa)` "
            "folds [0, 1]") in text
    doc = Document()
    _hierarchy_gain(doc, [run("han", [0.4] * 2), run("bilstm_sa", [0.3] * 2)], None)
    [table] = [b for b in doc.blocks if b[0] == "table"]
    assert table[2][0][5] == "+0.100"


def test_baselines_next_to_two_rounds_get_distinct_names(tmp_path):
    """Two rounds' folders, each with its own ridge/ and mean/: four baseline runs, four names (one name each
    for two runs had the second overwrite the first's scatter plot and table row)."""
    for where in ("a", "b"):
        shutil.copytree(TINY, tmp_path / where)
    _, runs = rep.load_runs([tmp_path / "a" / "han", tmp_path / "b" / "han"])
    baselines = rep.find_baseline_runs([r for rs in runs for r in rs])
    names = [b.name for b in baselines]
    assert len(names) == len(set(names)) == 4, names
    assert {"ridge/composition (a/ridge)", "ridge/composition (b/ridge)"} <= set(names)
