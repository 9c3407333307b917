"""``percepiano report``: one Markdown and one HTML page, with PNG plots, for one or more debugging rounds.

A round is a ``percepiano cv`` run directory, a seeds directory (``cv --seeds``) or a ``percepiano round``
cell; rounds are given oldest first. Sections: the gate's verdict of each round (against the round before it on the same split, else the
published target), the round comparison (ΔR² overall, per label and per fold with their intervals, config
differences), summary (mean test R² against the published target and the ``mean``/``ridge`` baselines, fold
spread, collapsed labels), the rounds' training curves overlaid, training curves per run, per-label test R², predicted vs true per label (with the collapse
detector's spread ratio), hierarchy gain (when a ``han`` and a ``bilstm_sa`` run of the same split are given),
attention heatmaps of one segment at beat and measure level (needs a checkpoint and the dataset; otherwise the
section says why it is skipped), and the deviations from the original each run's config carries.
:func:`build_report` writes them in that order, one function per section, into a
:class:`percepiano.document.Document`.

matplotlib is an optional extra (``pip install 'percepiano[report]'``), imported only when plotting, with the
Agg backend (no display needed) unless the caller already chose one (a notebook's inline backend). The
``*_figure`` functions return matplotlib figures (for notebooks); ``plot_*`` save them as PNG.
"""
from __future__ import annotations

import math
import os
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import diagnostics as diag
from .constants import BASELINE_PRESET, BASELINES, DEFAULT_MARGIN, N_FOLDS, PARTS, POWER, PROTOCOL_EPOCHS, SPLIT_SCHEMES
from .document import Document, slug
from . import gate as gates
from .gate import distinct_names, fold_directory, load_round, round_names
from .results import (
    fold_spread,
    label_names_of,
    load_log,
    load_predictions,
    load_results,
    load_targets,
    per_label_mean,
    sibling_results,
    target_for,
)
from .training import BEST, LOG, PREDICTIONS


def _plt():
    """pyplot (Agg backend unless one was chosen), or a clear error naming the extra to install."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "percepiano report needs matplotlib: pip install 'percepiano[report]' (or pip install matplotlib)"
        ) from exc
    import sys

    # Agg (files only, no display), unless the caller chose a backend already: a notebook's inline backend
    # (MPLBACKEND is set by ipykernel) or a pyplot imported before us.
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------------------
# Loading runs
# ---------------------------------------------------------------------------------------------------------
@dataclass
class FoldArtifacts:
    fold: int
    dir: Path | None
    log: list[dict] = field(default_factory=list)  # one dict per epoch (log.jsonl)
    predictions: dict | None = None  # {"segment_ids", "predictions" (n, L), "labels" (n, L)} on the test split
    checkpoint: Path | None = None


@dataclass
class Run:
    dir: Path
    results: dict
    folds: list[FoldArtifacts]
    label: str = ""  # the run's name in tables: its directory name (with parents or its seed where needed)

    @property
    def preset(self) -> str:
        return str(self.results.get("preset", "?"))

    @property
    def split(self) -> str:
        return str(self.results.get("split", "?"))

    @property
    def name(self) -> str:
        return f"{self.preset}/{self.split} ({self.label or self.dir.name})"

    @property
    def label_names(self) -> list[str]:
        return label_names_of(self.results)

    @property
    def is_baseline(self) -> bool:
        return self.preset in BASELINES

    def test_predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """All folds' test predictions stacked: (pred (n, L), labels (n, L), fold (n,)); None if none saved."""
        parts = [(f.predictions, f.fold) for f in self.folds if f.predictions is not None]
        if not parts:
            return None
        pred = np.concatenate([p["predictions"] for p, _ in parts])
        lab = np.concatenate([p["labels"] for p, _ in parts])
        fold = np.concatenate([np.full(len(p["predictions"]), k) for p, k in parts])
        return pred, lab, fold


def load_run(path: str | os.PathLike, label: str = "") -> Run:
    """A run directory (or its results.json) with every fold's log, test predictions and checkpoint."""
    results = load_results(path)
    run_dir = Path(results["_path"]).parent
    folds = []
    for i, entry in enumerate(results["folds"]):
        k = int(entry.get("fold", i))
        d = fold_directory(run_dir, entry)
        art = FoldArtifacts(fold=k, dir=d)
        if d is not None:
            if (d / LOG).is_file():
                art.log = load_log(d / LOG)
            if (d / PREDICTIONS).is_file():
                art.predictions = load_predictions(d / PREDICTIONS)
            if (d / BEST).is_file():
                art.checkpoint = d / BEST
        folds.append(art)
    return Run(run_dir, results, folds, label)


def load_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[gates.Round], list[list[Run]]]:
    """The rounds given (run directories, results.json files or seeds directories, :func:`percepiano.gate.load_round`)
    and, per round, its seeds' runs, named by :func:`percepiano.gate.round_names` (``name/seed7`` for a seed of
    a seeds directory)."""
    rounds = [load_round(p) for p in paths]
    runs = []
    for rnd, name in zip(rounds, round_names(rounds)):
        rnd.name = name
        if rnd.n_seeds == 1:
            runs.append([load_run(rnd.first["_path"], name)])
        else:
            runs.append([load_run(r["_path"], f"{name}/{Path(r['_path']).parent.name}") for r in rnd.runs])
    return rounds, runs


def find_baseline_runs(runs: Sequence[Run], dirs: Sequence[Path] | None = None) -> list[Run]:
    """``mean``/``ridge`` runs of the same splits found next to the given runs (sibling directories; next to
    ``dirs`` instead when given: the seeds directory of a multi-seed round, not its seed folders)."""
    found = sibling_results(dirs if dirs is not None else [r.dir for r in runs], BASELINES, {r.split for r in runs})
    # named by their folders, with parents where two rounds' folders each hold a `ridge/` (else one name, one plot)
    names = distinct_names([Path(res["_path"]).resolve().parent.parts for res in found]) if found else []
    baselines = []
    for res, name in zip(found, names):
        try:
            baselines.append(load_run(res["_path"], name))
        except (OSError, ValueError) as exc:  # a broken sibling is not the report's run: say so and go on
            warnings.warn(f"baseline run next to the report's runs skipped: {exc}", stacklevel=2)
    return baselines


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------
def short_label(name: str, width: int = 22) -> str:
    """A label name wrapped for plot titles (underscores and slashes become break points)."""
    return "\n".join(textwrap.wrap(name.replace("_", " "), width)[:3])


def curves_figure(run: Run):
    """Train/valid loss and valid/test R² per epoch, one colour per fold; the best epoch is marked (None: no logs)."""
    folds = [f for f in run.folds if f.log]
    if not folds:
        return None
    plt = _plt()
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("tab10")
    best = {int(e.get("fold", i)): e.get("best_epoch") for i, e in enumerate(run.results["folds"])}
    for i, f in enumerate(folds):
        c = colors(i % 10)
        ep = [int(r["epoch"]) for r in f.log]
        for key, style, ax, lab in (
            ("train_loss", "-", ax_l, "train"), ("valid_loss", "--", ax_l, "valid"),
            ("test_r2", "-", ax_r, "test"), ("valid_r2", "--", ax_r, "valid"),
        ):
            ys = [r.get(key) for r in f.log]
            if any(v is not None for v in ys):
                ax.plot(ep, [np.nan if v is None else v for v in ys], style, color=c, marker="o", ms=3,
                        label=f"fold {f.fold} {lab}")
        b = best.get(f.fold)
        if b is not None and b in ep:
            r = f.log[ep.index(b)]
            if r.get("valid_loss") is not None:
                ax_l.plot([b], [r["valid_loss"]], "*", color=c, ms=12, mec="k")
            if r.get("test_r2") is not None:
                ax_r.plot([b], [r["test_r2"]], "*", color=c, ms=12, mec="k")
    ax_l.set(title="loss (MSE after sigmoid); * = selected epoch", xlabel="epoch", ylabel="loss")
    ax_r.set(title="R² per epoch (solid test, dashed valid)", xlabel="epoch", ylabel="R²")
    ax_r.axhline(0, color="grey", lw=0.8)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_l, ax_r):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(run.name)
    fig.tight_layout()
    return fig


# What the two losses of log.jsonl are (percepiano.training.train_fold): they differ in scale by about the batch
# size, so they get separate axes.
TRAIN_LOSS_MEANING = "train loss: mean over the epoch's training batches of MSE(sigmoid(logits), labels), dropout on"
VALID_LOSS_MEANING = ("valid loss: the original's Σ over batches of 8 of the batch-mean MSE / segments (≈ MSE / 8), "
                      "eval mode; its minimum picks the checkpoint")


def rounds_curves_figure(rounds: Sequence[tuple[str, Sequence[Run]]]):
    """The rounds' training curves overlaid, one colour per round: train loss, valid loss and test R² per epoch
    on separate axes; thin lines are single folds (and seeds), the thick line their mean over the epochs all of
    them reached (None: no logs)."""
    have = [(name, [f for r in rs for f in r.folds if f.log]) for name, rs in rounds]
    have = [(name, folds) for name, folds in have if folds]
    if not have:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colors = plt.get_cmap("tab10")
    panels = (("train_loss", TRAIN_LOSS_MEANING), ("valid_loss", VALID_LOSS_MEANING),
              ("test_r2", "test R² per epoch (logged only; the reported number is the selected epoch's)"))
    for i, (name, folds) in enumerate(have):
        c = colors(i % 10)
        for ax, (key, _) in zip(axes, panels):
            series = [{int(r["epoch"]): r[key] for r in f.log if r.get(key) is not None} for f in folds]
            series = [s for s in series if s]
            if not series:
                continue
            for s in series:
                ep = sorted(s)
                ax.plot(ep, [s[e] for e in ep], color=c, lw=0.6, alpha=0.35)
            common = sorted(set.intersection(*(set(s) for s in series)))
            if common:
                ax.plot(common, [float(np.mean([s[e] for s in series])) for e in common], color=c, lw=2.2,
                        label=f"{name} (mean of {len(series)})")
    from matplotlib.ticker import MaxNLocator

    for ax, (key, meaning) in zip(axes, panels):
        ax.set_title("\n".join(textwrap.wrap(meaning, 48)), fontsize=8)
        ax.set(xlabel="epoch", ylabel={"train_loss": "train loss", "valid_loss": "valid loss", "test_r2": "test R²"}[key])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Training curves of the rounds (thin: one fold of one seed; thick: their mean)")
    fig.tight_layout()
    return fig


# Per-label bars are drawn from this R² up; lower values (a tiny run's collapsed model easily reaches -3) are
# clipped at the axis edge and written next to the bar, so the interesting range [0, 0.6] stays readable.
R2_AXIS_MIN = -0.5


def per_label_figure(runs: Sequence[Run], targets: Mapping | None = None):
    """Horizontal grouped bars of mean-over-folds test R² per label, one bar per run (baselines hatched);
    dotted vertical lines: each run's mean test R²; dashed: the published mean target of its preset/split."""
    plt = _plt()
    names = runs[0].label_names
    n, m = len(names), len(runs)
    fig_h = 1.6 + n * (0.16 + 0.1 * m)
    fig, ax = plt.subplots(figsize=(10, fig_h))
    height = 0.8 / m
    colors = plt.get_cmap("tab10")
    ypos = np.arange(n)
    hi = 0.1
    for j, run in enumerate(runs):
        per = per_label_mean(run.results)
        vals = np.array([per.get(nm, np.nan) for nm in names], dtype=float)
        hi = max(hi, float(np.nanmax(vals)) if np.isfinite(vals).any() else hi)
        c = colors(j % 10)
        y = ypos - 0.4 + height * (j + 0.5)
        ax.barh(y, np.maximum(vals, R2_AXIS_MIN), height=height, color=c, alpha=0.85,
                hatch="//" if run.is_baseline else None, edgecolor="k" if run.is_baseline else None, lw=0.3,
                label=f"{run.name}: mean {run.results['mean_test_r2']:.3f}")
        for yy, v in zip(y, vals):
            if v < R2_AXIS_MIN:
                ax.text(R2_AXIS_MIN + 0.01, yy, f"{v:.2f} ◂", va="center", ha="left", fontsize=6.5, color="white",
                        fontweight="bold")
        mean = run.results["mean_test_r2"]
        if mean >= R2_AXIS_MIN:
            ax.axvline(mean, color=c, ls=":", lw=1.2)
        t = target_for(targets, run.split, run.preset) if targets else None
        if t is not None:
            ax.axvline(t, color=c, ls="--", lw=1.5, label=f"published {run.preset}/{run.split}: {t:.3f}")
            hi = max(hi, t)
    ax.set_xlim(R2_AXIS_MIN, hi + 0.08)
    ax.set_yticks(ypos)
    ax.set_yticklabels([nm.replace("_", " ") for nm in names], fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"test R² (mean over folds); bars below {R2_AXIS_MIN} are clipped, their value written on them")
    ax.set_title("Per-label test R² (dotted: run mean; dashed: published mean target)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.6 / (fig_h - 1.0)), ncol=2)
    fig.tight_layout()
    return fig


def scatter_figure(run: Run, spread: Sequence[diag.SpreadRow] | None = None):
    """Predicted vs true on the test split, one panel per label, colour = fold, with the y = x line (None: no
    saved predictions)."""
    data = run.test_predictions()
    if data is None:
        return None
    pred, lab, fold = data
    plt = _plt()
    names = run.label_names
    cols = 5
    rows = math.ceil(len(names) / cols)
    # one scale for every panel (labels and sigmoid outputs live in [0, 1]): a collapsed label shows as a flat
    # band, and inner panels need no tick labels (drawing text dominates the cost of this figure)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.9 * rows), squeeze=False, sharex=True, sharey=True)
    # fixed margins instead of tight_layout: 20 panels make tight_layout the slowest part of the report
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.06, top=0.9, wspace=0.28, hspace=0.62)
    cmap = plt.get_cmap("tab10")
    point_colors = cmap(fold.astype(int) % 10)
    r2 = per_label_mean(run.results)
    by_label = {s.label: s for s in spread} if spread else {}
    for j, name in enumerate(names):
        ax = axes[j // cols][j % cols]
        ax.scatter(lab[:, j], pred[:, j], s=6, alpha=0.5, c=point_colors, linewidths=0)
        ax.plot([0, 1], [0, 1], color="k", lw=0.8)
        s = by_label.get(name)
        extra = f"\nR² {r2.get(name, float('nan')):.3f}" + (f", spread {s.ratio:.2f}{' COLLAPSED' if s.collapsed else ''}" if s else "")
        ax.set_title(short_label(name, 30) + extra, fontsize=7.5, color="red" if s and s.collapsed else "black")
        ax.tick_params(labelsize=6)
    lo = min(0.1, float(np.nanmin(lab)), float(np.nanmin(pred)))
    hi = max(1.0, float(np.nanmax(lab)), float(np.nanmax(pred)))
    axes[0][0].set_xlim(lo - 0.02, hi + 0.02)
    axes[0][0].set_ylim(lo - 0.02, hi + 0.02)
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
        axes[j // cols - 1][j % cols].xaxis.set_tick_params(labelbottom=True)  # the panel above an empty one
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", ms=4, color=cmap(int(k) % 10), label=f"fold {k}") for k in np.unique(fold)]
    axes[0][0].legend(handles=handles, fontsize=6)
    fig.supxlabel("true label")
    fig.supylabel("prediction (label scale; neural runs: after the sigmoid)")
    fig.suptitle(f"{run.name}: test predictions vs labels (spread = std(pred)/std(label), mean over folds)")
    return fig


def attention_figure(weights: Mapping[str, np.ndarray], boundaries: Mapping[str, Sequence[int]], title: str = ""):
    """Heatmaps of one segment's beat weights (heads x notes) and measure weights (heads x beat nodes).

    Each weight is shown times the size of its span (beat or measure), so 1 means "uniform within the span",
    values > 1 mark what a head focuses on and < 1 what it ignores (log colour scale, centred on 1, from
    1/m to m where m is the largest value shown, at least 2).
    Spans of one position are always exactly 1. Vertical lines mark where a new span starts.
    """
    plt = _plt()
    from matplotlib.colors import LogNorm

    levels = [lv for lv in ("beat", "measure") if lv in weights]
    fig, axes = plt.subplots(len(levels), 1, figsize=(11, 2.5 * len(levels) + 0.7), squeeze=False)
    for ax, lv in zip(axes[:, 0], levels):
        w = np.asarray(weights[lv], dtype=np.float64)  # (T, h)
        b = list(boundaries.get(lv, [0, len(w)]))
        size = np.zeros(len(w))
        for s0, s1 in zip(b[:-1], b[1:]):
            size[s0:s1] = s1 - s0
        rel = w * size[:, None]
        # the scale is set by the most focused weight (at most the span size); weights far below uniform are
        # clipped to the darkest blue rather than stretching the scale so far that the red side fades
        span = float(min(64.0, max(2.0, np.nanmax(rel))))
        rel = np.clip(rel, 1.0 / span, span)
        im = ax.imshow(rel.T, aspect="auto", cmap="RdBu_r", interpolation="nearest", norm=LogNorm(1 / span, span))
        for x in b[1:-1]:
            ax.axvline(x - 0.5, color="0.35", lw=0.8)
        space = "note" if lv == "beat" else "beat node"
        ax.set(xlabel=f"{space} position", ylabel="head",
               title=f"{lv} attention × {lv} size (1 = uniform within the {lv}; lines: {lv} starts)")
        ax.set_yticks(range(w.shape[1]))
        top = int(np.floor(np.log2(span)))
        step = max(1, int(np.ceil(top / 3)))  # at most 7 ticks
        exps = [k for k in range(-top, top + 1) if k % step == 0]
        cb = fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, ticks=[2.0 ** k for k in exps])
        cb.ax.set_yticklabels([f"{2 ** k}" if k >= 0 else f"1/{2 ** -k}" for k in exps])
        cb.ax.minorticks_off()
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _save(fig, path: Path, dpi: int, **kw) -> Path | None:
    if fig is None:
        return None
    plt = _plt()
    fig.savefig(path, dpi=dpi, **kw)
    plt.close(fig)
    return path


def plot_curves(run: Run, path: Path) -> Path | None:
    return _save(curves_figure(run), path, 110)


def plot_rounds_curves(rounds: Sequence[tuple[str, Sequence[Run]]], path: Path) -> Path | None:
    return _save(rounds_curves_figure(rounds), path, 100)


def detectable_threshold(rows: Sequence[Mapping]) -> float | None:
    """Where a power curve's true drop reaches the detectable drop the gate states at that size (the SE, and so
    the stated size, grows with the perturbation): linear interpolation of ``true_drop − detectable`` between the
    rows around its sign change; None if it never changes sign."""
    rows = sorted(rows, key=lambda r: r["true_drop"])
    gap = [r["true_drop"] - r["detectable"] for r in rows]
    for (a, ga), (b, gb) in zip(zip(rows, gap), zip(rows[1:], gap[1:])):
        if ga < 0 <= gb:
            return float(a["true_drop"] + (b["true_drop"] - a["true_drop"]) * (-ga) / (gb - ga))
    return None


def power_curve_figure(curves: Mapping[str, Sequence[Mapping]], margin: float, title: str = ""):
    """Fraction of simulated experiments the gate calls *worse* (and *not worse*) against the true drop of mean
    test R², one line per perturbation (``curves[name]``: the rows of :func:`percepiano.paired.power_curve`);
    the margin, each perturbation's stated detectable drop (:func:`detectable_threshold`) and the power
    (``percepiano.constants.POWER``) are marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.get_cmap("tab10")
    for i, (name, rows) in enumerate(curves.items()):
        rows = sorted(rows, key=lambda r: r["true_drop"])
        x = [r["true_drop"] for r in rows]
        c = colors(i % 10)
        ax.plot(x, [r["worse"] for r in rows], "o-", color=c, label=f"{name}: called worse")
        ax.plot(x, [r["not worse"] for r in rows], "s:", color=c, alpha=0.7, label=f"{name}: called not worse")
        det = detectable_threshold(rows)
        if det is not None:
            ax.axvline(det, color=c, ls="--", lw=1, label=f"{name}: stated detectable drop {det:.3f}")
    ax.axvline(margin, color="k", lw=1, label=f"margin {margin:g}")
    ax.axhline(POWER, color="grey", lw=0.8, ls="-.", label=f"power {POWER:.0%}")
    ax.set(xlabel="true drop of mean test R² (on the full test set)", ylabel="fraction of simulated experiments",
           ylim=(-0.02, 1.02), title=title or "Power of the gate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    return fig


def plot_per_label(runs: Sequence[Run], targets: Mapping | None, path: Path) -> Path:
    return _save(per_label_figure(runs, targets), path, 110, bbox_inches="tight")


def plot_scatter(run: Run, path: Path, spread: Sequence[diag.SpreadRow] | None = None) -> Path | None:
    return _save(scatter_figure(run, spread), path, 90)


def plot_attention(weights, boundaries, title: str, path: Path) -> Path:
    return _save(attention_figure(weights, boundaries, title), path, 110)


# ---------------------------------------------------------------------------------------------------------
# Attention of one segment from a checkpoint
# ---------------------------------------------------------------------------------------------------------
def segment_attention(run: Run, data=None, segment: str | None = None) -> dict:
    """Beat/measure attention of one test segment from the first fold checkpoint of ``run``.

    Returns ``{"ok": True, "segment", "fold", "weights", "boundaries", "entropy"}`` or
    ``{"ok": False, "reason": ...}`` (no checkpoint, no dataset, unknown segment, level without hierarchy).
    """
    import torch

    from .config import PRESET_FEATURES, ModelConfig

    if run.is_baseline:
        return {"ok": False, "reason": f"{run.preset} is a non-neural baseline: it has no attention"}
    fold = next((f for f in run.folds if f.checkpoint is not None), None)
    if fold is None:
        return {"ok": False, "reason": f"no checkpoint (best.pt) in the fold directories of {run.dir}"}
    if data is None:
        try:
            from .data import load_dataset

            data = load_dataset(None)
        except (ValueError, FileNotFoundError) as exc:
            return {"ok": False, "reason": f"no dataset ({exc})"}
    cfg = diag.as_model_config(run.results.get("config", {}))
    if cfg.level not in ("beat", "measure", "total_note_cat"):
        return {"ok": False, "reason": f"level {cfg.level!r} has no beat/measure attention that reaches the output"}
    ids = [str(s) for s in data.segment_ids]
    if segment is None:
        test = data.split_indices(run.split, fold.fold, "test") if run.split in SPLIT_SCHEMES else []
        if fold.predictions is not None and fold.predictions["segment_ids"] and fold.predictions["segment_ids"][0] in ids:
            segment = fold.predictions["segment_ids"][0]
        elif len(test):
            segment = ids[int(test[0])]
        else:
            segment = ids[0]
    if segment not in ids:
        return {"ok": False, "reason": f"segment {segment!r} is not in the dataset {getattr(data, 'path', '')}"}
    idx = ids.index(segment)
    from .checkpoints import load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(fold.checkpoint)
    cfg = ModelConfig.from_dict(ck["model_config"])
    model = model_from_checkpoint(ck)
    model.eval()
    feature_set = PRESET_FEATURES.get(run.preset, "full")
    batch = data.batch([idx], feature_set)
    with torch.no_grad():
        out = model(batch.x, batch.lengths, batch.note_locations, return_intermediates=True)
    inter = out.intermediates
    weights, bounds = diag.sample_attention(inter, batch.lengths, batch.note_locations, 0, cfg.boundary_rule)
    ent = diag.entropy_from_intermediates(inter, batch.lengths, batch.note_locations,
                                          boundary_rule=cfg.boundary_rule, pool_level=cfg.level)
    part = "not in any"
    if run.split in getattr(data, "splits", {}):
        code = int(data.splits[run.split][idx, fold.fold])
        part = {c: name for name, c in PARTS.items()}.get(code, part)
    return {"ok": True, "segment": segment, "fold": fold.fold, "part": part, "weights": weights, "boundaries": bounds,
            "entropy": {k: v.summary() for k, v in ent.items()}, "checkpoint": fold.checkpoint}


# ---------------------------------------------------------------------------------------------------------
# Report assembly
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Report:
    markdown: Path
    html: Path
    images: list[Path]
    skipped: dict[str, str]  # section -> reason


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    segment: str | None = None,
    data=None,
    targets: Mapping | None = None,
    find_baselines: bool = True,
    collapse_ratio: float = diag.COLLAPSE_RATIO,
    margin: float = DEFAULT_MARGIN,
    clustering: str | None = None,
    resamples: int | None = None,
    level: float | None = None,
) -> Report:
    """Write ``report.md``, ``report.html`` and PNGs for ``run_dirs`` into ``out_dir`` (default: ``<first run>/report``).

    ``run_dirs`` are rounds, oldest first: run directories, results.json files or seeds directories (``cv
    --seeds``). Each neural round is gated against the neural round given before it on the same split
    (:func:`percepiano.gate.gate` with ``margin``, ``clustering``, ``resamples``, ``level``); a single neural
    round is gated against its published target. The verdicts open the report, the ΔR² per label and per fold
    with their intervals follow, and the rounds' training curves are overlaid.

    ``data``: a loaded :class:`percepiano.data.PercePianoData` for the attention heatmaps (default: the
    ``PERCEPIANO_DATA`` dataset, if set). ``targets``: published targets (default: the package's
    regression_targets.json, if present). Baseline runs (``mean``/``ridge``) are taken from ``run_dirs`` and,
    with ``find_baselines``, from sibling directories.
    """
    if not run_dirs:
        raise ValueError("report: give at least one run directory")
    rounds, per_round = load_runs(run_dirs)
    runs = [r for rs in per_round for r in rs]
    if find_baselines:
        runs += find_baseline_runs(runs, [rnd.dir for rnd in rounds])
    out = Path(out_dir) if out_dir is not None else rounds[0].dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    if targets is None:
        try:
            targets = load_targets()
        except FileNotFoundError as exc:
            targets = None
            skipped["targets"] = str(exc)
    models = [r for r in runs if not r.is_baseline]
    spreads = prediction_spreads(runs, collapse_ratio)
    options = {k: v for k, v in (("clustering", clustering), ("resamples", resamples), ("level", level)) if v is not None}
    verdicts = round_verdicts(rounds, margin=margin, targets_file=None, skipped=skipped, **options)

    doc = Document()
    images: list[Path] = []
    _introduction(doc, runs)
    _verdicts(doc, verdicts)
    _round_comparison(doc, verdicts)
    _summary(doc, runs, targets, spreads, collapse_ratio, skipped)
    _folds(doc, runs)
    images += _rounds_curves(doc, rounds, per_round, out)
    images += _training_curves(doc, models, out)
    images += _per_label(doc, runs, targets, out)
    images += _predicted_vs_true(doc, runs, spreads, out)
    _hierarchy_gain(doc, models, targets)
    images += _attention(doc, models, data, segment, out, skipped)
    _deviations(doc, models)
    _provenance(doc, runs)

    md = out / "report.md"
    md.write_text(doc.markdown(), encoding="utf-8")
    ht = out / "report.html"
    ht.write_text(doc.html("PercePiano run report: " + ", ".join(r.name for r in runs)), encoding="utf-8")
    return Report(md, ht, images, skipped)


@dataclass
class RoundVerdict:
    """The gate of one round in the report: its result, or why there is none."""

    name: str
    against: str  # the previous round's name, or "targets"
    result: gates.GateResult | None
    reason: str = ""


def round_verdicts(rounds: Sequence[gates.Round], *, margin: float = DEFAULT_MARGIN, targets_file=None,
                   skipped: dict[str, str] | None = None, **options) -> list[RoundVerdict]:
    """Each neural round against the neural round before it on the same split; a split with one neural round
    against its published target. A round that cannot be gated (no predictions, different test segments, no
    target) gets the reason instead."""
    neural = [r for r in rounds if r.preset not in BASELINES]
    out = []
    for i, rnd in enumerate(neural):
        before = [r for r in neural[:i] if r.split == rnd.split]
        same_split = [r for r in neural if r.split == rnd.split]
        if not before and len(same_split) > 1:
            continue  # the oldest round of its split is the reference of the next one
        against = before[-1] if before else "targets"
        try:
            res = gates.gate(rnd, against, margin=margin, targets_file=targets_file, **options)
        except (ValueError, FileNotFoundError) as exc:
            out.append(RoundVerdict(rnd.name, "targets" if against == "targets" else against.name, None, str(exc)))
            if skipped is not None:
                skipped[f"verdict {rnd.name}"] = str(exc)
            continue
        out.append(RoundVerdict(rnd.name, "targets" if against == "targets" else against.name, res))
    return out


def _verdicts(doc: Document, verdicts: Sequence[RoundVerdict]) -> None:
    doc.h(2, "Verdict")
    if not verdicts:
        doc.p("No neural round given: nothing to gate.")
        return
    rows = []
    for v in verdicts:
        r = v.result
        if r is None:
            rows.append([v.name, v.against, "no verdict", v.reason])
            continue
        rows.append([v.name, v.against, f"**{r.verdict}** (exit {r.exit_code})", gates.verdict_line(r)])
    doc.table(["run", "against", "verdict", "why"], rows)
    notes = sorted({n for v in verdicts if v.result is not None for n in v.result.notes if "seed" in n})
    for n in notes:
        doc.p(f"Note: {n}.")
    doc.p("`percepiano gate` decides the same way (docs/debugging_rounds.md#the-verdict): *not worse* when the "
          "interval of ΔR² excludes a drop larger than the margin, *worse* when it lies below −margin, *inconclusive* "
          "otherwise; against the published target, pass when the mean is within the tolerance of it.")


def _round_comparison(doc: Document, verdicts: Sequence[RoundVerdict]) -> None:
    paired_ones = [v for v in verdicts if v.result is not None and v.result.comparison is not None]
    if not paired_ones:
        return
    doc.h(2, "Round comparison: ΔR² with intervals")
    for v in paired_ones:
        r, c = v.result, v.result.comparison
        lvl = f"{c.level:.0%} interval"
        rows = [[v.name, v.against, "mean over labels", _f(c.old_value), _f(c.new_value), _f(c.overall.value, 4, True),
                 _interval(c.overall), _below(c.overall, r.allowed_drop)]]
        for name, e, a, b in zip(r.label_names, c.per_label, c.old_per_label, c.new_per_label):
            rows.append([v.name, v.against, name, _f(float(a)), _f(float(b)), _f(e.value, 4, True), _interval(e),
                         _below(e, r.allowed_drop)])
        doc.table(["run", "against", "label", f"R² {v.against}", f"R² {v.name}", "ΔR²", lvl, "below −margin"], rows)
        doc.table(["run", "against", "fold", "ΔR²", lvl],
                  [[v.name, v.against, str(k), _f(e.value, 4, True), _interval(e)]
                   for k, e in zip(r.round.fold_ids, c.per_fold)])
        doc.p(f"`{v.name}` against `{v.against}`: {c.n_segments} test segments in {' x '.join(map(str, c.clusters))} "
              f"{c.clustering} clusters, {c.resamples} bootstrap resamples, seeds {c.n_seeds_new} and {c.n_seeds_old}, "
              f"margin {r.allowed_drop:g}. Config differences (old → new): "
              + ("; ".join(f"`{d}`" for d in r.differences) if r.differences else "none") + ".")
        p = r.planning
        if p is not None:
            doc.p(f"Minimum detectable effect {p.mde:.4f} at these seeds and segments; training noise "
                  f"{p.seed_var_from}" + (f", with it {p.mde_with_training:.4f}" if p.mde_with_training is not None else "")
                  + (f"; {p.why}; the estimate lies {p.distance:.4f} from −margin, resolving it needs "
                     + (f"{p.resolve_seeds} seed(s) per round" if p.resolve_seeds is not None else "more seeds and segments than a run has")
                     if r.verdict == "inconclusive" else "") + ".")


def _interval(e) -> str:
    return f"[{e.low:+.4f}, {e.high:+.4f}]"


def _below(e, margin: float) -> str:
    return "**yes**" if e.high < -margin else "no"


def _rounds_curves(doc: Document, rounds: Sequence[gates.Round], per_round: Sequence[Sequence[Run]], out: Path) -> list[Path]:
    neural = [(rnd.name, rs) for rnd, rs in zip(rounds, per_round) if rnd.preset not in BASELINES]
    if len(neural) < 2 and not any(len(rs) > 1 for _, rs in neural):
        return []
    doc.h(2, "Training curves of the rounds, overlaid")
    p = plot_rounds_curves(neural, out / "rounds_curves.png")
    if p is None:
        doc.p("No log.jsonl in the rounds' fold directories: no curves.")
        return []
    doc.img(p, "training curves of the rounds")
    doc.p(f"{TRAIN_LOSS_MEANING}. {VALID_LOSS_MEANING}. The two differ in scale by about the batch size, hence "
          "separate axes; the test R² per epoch is logged for inspection only (the protocol never selects on it).")
    return [p]


def prediction_spreads(runs: Sequence[Run], collapse_ratio: float = diag.COLLAPSE_RATIO) -> dict[str, list[diag.SpreadRow]]:
    """The collapse detector of every run with saved test predictions, by run name."""
    spreads = {}
    for r in runs:
        parts = [(f.predictions["predictions"], f.predictions["labels"]) for f in r.folds if f.predictions is not None]
        if parts:
            spreads[r.name] = diag.prediction_spread_by_fold(parts, r.label_names, collapse_ratio)
    return spreads


def _f(v, nd=3, signed=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def _image_path(out: Path, kind: str, run: Run) -> Path:
    return out / f"{kind}_{slug(run.preset + '_' + run.split + '_' + (run.label or run.dir.name))}.png"


def _introduction(doc: Document, runs: Sequence[Run]) -> None:
    doc.h(1, "PercePiano run report")
    doc.p("Runs: " + ", ".join(f"`{r.name}`" for r in runs) + ".")
    doc.p("The reported metric is the paper's: mean over folds of the test-split R² of each fold's checkpoint "
          "with the lowest validation loss (docs/original.md#reported-number). Curves, bars and scatter plots below come from "
          "the run directories as written by `percepiano cv`.")


def _vs_ridge(run: Run, ridge_runs: Mapping[str, Run]) -> str:
    """Whether ``run`` beats the ridge run of its split, else the ridge numbers its results.json recorded."""
    res = run.results
    rg = ridge_runs.get(run.split)
    recorded = (res.get("baselines") or {}).get(BASELINE_PRESET)
    if run.preset == BASELINE_PRESET:
        return f"(is {BASELINE_PRESET})"
    if rg is not None:
        if res["mean_test_r2"] > rg.results["mean_test_r2"]:
            return f"beats {BASELINE_PRESET}"
        return f"**does not beat {BASELINE_PRESET}**"
    if recorded is not None:
        beats = res["mean_test_r2"] > recorded["mean_test_r2"]
        return ("beats" if beats else "**does not beat**") + f" recorded {BASELINE_PRESET} {recorded['mean_test_r2']:.3f}"
    return f"n/a (no {BASELINE_PRESET} run)"


def _summary(doc: Document, runs: Sequence[Run], targets: Mapping | None, spreads: Mapping[str, list],
             collapse_ratio: float, skipped: Mapping[str, str]) -> None:
    doc.h(2, "Summary")
    ridge_runs = {r.split: r for r in runs if r.is_baseline and r.preset == BASELINE_PRESET}
    rows = []
    for r in runs:
        res = r.results
        t = target_for(targets, r.split, r.preset) if targets else None
        if r.name in spreads:
            n_coll = str(len(diag.collapsed_labels(spreads[r.name])))
        else:
            n_coll = "n/a (no predictions saved)"
        rows.append([
            r.name, r.preset, r.split, str(len(res["folds"])), "–" if res.get("epochs") is None else str(res["epochs"]),
            str(res.get("protocol", "?")), _f(res["mean_test_r2"]),
            _f(fold_spread(res)), _f(t), _f(None if t is None else res["mean_test_r2"] - t, signed=True),
            _vs_ridge(r, ridge_runs), n_coll,
        ])
    doc.table(["run", "preset", "split", "folds", "epochs", "protocol", "mean test R²", "fold std", "published", "Δ vs published",
               f"vs {BASELINE_PRESET}", "collapsed labels"], rows)
    doc.p(f"A label is *collapsed* when std(prediction) / std(label) on the test split, averaged over folds, is below "
          f"{collapse_ratio} (percepiano.diagnostics.COLLAPSE_RATIO). Published targets are means only; runs with "
          f"fewer than {N_FOLDS} folds or {PROTOCOL_EPOCHS} epochs are not comparable with them.")
    if "targets" in skipped:
        doc.p(f"Published targets unavailable: {skipped['targets']}.")


def _folds(doc: Document, runs: Sequence[Run]) -> None:
    doc.h(2, "Folds")
    rows = []
    for r in runs:
        for i, f in enumerate(r.results["folds"]):
            rows.append([r.name, str(f.get("fold", i)), "–" if f.get("best_epoch") is None else str(f["best_epoch"]),
                         _f(f.get("valid_loss"), 5), _f(f.get("test_r2")), _f(f.get("test_mse"), 5)])
    doc.table(["run", "fold", "best epoch", "valid loss", "test R²", "test MSE"], rows)


def _training_curves(doc: Document, models: Sequence[Run], out: Path) -> list[Path]:
    doc.h(2, "Training curves")
    images = []
    for r in models:
        p = plot_curves(r, _image_path(out, "curves", r))
        if p is None:
            doc.p(f"`{r.name}`: no log.jsonl in the fold directories, no curves.")
        else:
            images.append(p)
            doc.img(p, f"training curves {r.name}")
    if not models:
        doc.p("Only baseline runs were given; baselines have no training curves.")
    return images


def _per_label(doc: Document, runs: Sequence[Run], targets: Mapping | None, out: Path) -> list[Path]:
    doc.h(2, "Per-label test R²")
    p = plot_per_label(runs, targets, out / "per_label_r2.png")
    doc.img(p, "per-label test R2")
    names = runs[0].label_names
    per = [per_label_mean(r.results) for r in runs]
    doc.table(["label"] + [r.name for r in runs], [[n] + [_f(pl.get(n)) for pl in per] for n in names])
    return [p]


def _predicted_vs_true(doc: Document, runs: Sequence[Run], spreads: Mapping[str, list], out: Path) -> list[Path]:
    doc.h(2, "Predicted vs true (test split)")
    images = []
    for r in runs:
        p = plot_scatter(r, _image_path(out, "scatter", r), spreads.get(r.name))
        if p is None:
            doc.p(f"`{r.name}`: no per-segment test predictions (npz) in the fold directories.")
            continue
        images.append(p)
        doc.img(p, f"predicted vs true {r.name}")
        coll = diag.collapsed_labels(spreads[r.name])
        missing = [f.fold for f in r.folds if f.predictions is None]
        partial = (f" No saved test predictions for fold(s) {', '.join(map(str, missing))} (e.g. folds reused with "
                   f"--reuse-without-checkpoint): the plot and the collapse detector read fold(s) "
                   f"{', '.join(str(f.fold) for f in r.folds if f.predictions is not None)} only." if missing else "")
        doc.p(f"`{r.name}`: collapsed labels ({len(coll)}): " + (", ".join(coll) if coll else "none") + "." + partial)
    return images


def _hierarchy_gain(doc: Document, models: Sequence[Run], targets: Mapping | None) -> None:
    """Only when a ``han`` and a ``bilstm_sa`` run of the same split are given."""
    han = {r.split: r for r in models if r.preset == "han"}
    sa = {r.split: r for r in models if r.preset == "bilstm_sa"}
    common = sorted(set(han) & set(sa))
    if not common:
        return
    doc.h(2, "Hierarchy gain (han − bilstm_sa, same split)")
    rows, apart = [], []
    for s in common:
        folds = [sorted(int(f["fold"]) for f in r.results["folds"]) for r in (han[s], sa[s])]
        if folds[0] != folds[1]:
            apart.append(f"{s}: `{han[s].name}` covers folds {folds[0]}, `{sa[s].name}` folds {folds[1]}")
            continue
        g = diag.hierarchy_gain(han[s].results, sa[s].results, targets=targets)
        rows.append([s, han[s].name, sa[s].name, _f(g.han_r2), _f(g.bilstm_sa_r2), _f(g.gain, signed=True),
                     _f(g.paper_gain, signed=True)])
    if rows:
        doc.table(["split", "han run", "bilstm_sa run", "han", "bilstm_sa", "gain", "published gain"], rows)
    if apart:
        doc.p("Not compared, the runs cover other folds (each fold has its own test set): " + "; ".join(apart) + ".")


def _attention(doc: Document, models: Sequence[Run], data, segment: str | None, out: Path,
               skipped: dict[str, str]) -> list[Path]:
    doc.h(2, "Attention of one segment")
    images = []
    for r in models:
        try:
            att = segment_attention(r, data=data, segment=segment)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:  # a checkpoint that does not fit its config
            att = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
        if not att["ok"]:
            skipped[f"attention {r.name}"] = att["reason"]
            doc.p(f"`{r.name}`: attention heatmaps skipped: {att['reason']}.")
            continue
        p = plot_attention(att["weights"], att["boundaries"],
                           f"{r.name}, fold {att['fold']}, segment {att['segment']}", _image_path(out, "attention", r))
        images.append(p)
        doc.p(f"`{r.name}`: fold {att['fold']} checkpoint, segment `{att['segment']}` ({att['part']} split of that fold).")
        doc.img(p, f"attention {r.name}")
        ent = att["entropy"]
        doc.table(["run", "level", "normalized entropy (mean over heads)", "segments counted", "size-1 excluded"],
                  [[r.name, k, _f(v["mean"], 4), str(v["n_segments"]), str(v["n_singletons_excluded"])]
                   for k, v in ent.items()])
    if not models:
        doc.p("No neural run given: no attention to show.")
    elif images:
        doc.p("Normalized entropy is H(p)/log(n) per span of n ≥ 2 positions: 1 = uniform, 0 = one position. "
              "The original itself starts near 1 (≈ 0.998 for beats at init, docs/original.md#behaviour-at-init).")
    return images


def _deviations(doc: Document, models: Sequence[Run]) -> None:
    doc.h(2, "Deviations from the original")
    rows = []
    for r in models:
        if not r.results.get("config"):
            rows.append([r.name, "unknown", "no config in results.json", "", ""])
            continue
        devs = diag.run_deviations(r.results)
        if not devs:
            rows.append([r.name, "none", "the original model and protocol", "", ""])
        for d in devs:
            rows.append([r.name, d.scope, d.field, f"{d.value!r} (original {d.original!r})", d.note])
    if rows:
        doc.table(["run", "kind", "field", "value", "why it is not the original"], rows)
    else:
        doc.p("No neural run given.")
    doc.p("Named deviations are the switches of percepiano.config.ORIGINAL_BEHAVIOUR; size/structure rows are "
          "model fields that differ from the published preset; training-protocol rows differ from "
          "percepiano.training.TrainConfig defaults (determinism and per-epoch test logging do not change the "
          "protocol and are not listed).")


def _provenance(doc: Document, runs: Sequence[Run]) -> None:
    doc.h(2, "Provenance")
    rows = []
    for r in runs:
        res = r.results
        commit = str(res.get("git_commit") or "?")[:12] + (" (dirty)" if res.get("git_dirty") else "")
        rows.append([r.name, commit, str(res.get("device", "?")), _f(res.get("wall_seconds"), 1), str(res.get("seed", "?"))])
    doc.table(["run", "git commit", "device", "wall time (s)", "seed"], rows)
