"""Diagnostics for debugging rounds: the numbers the prior replication attempt computed by hand, computed once, right.

Each diagnostic answers one question the prior replication attempt (``docs/debugging_rounds.md``) got wrong or had
to guess:

- :func:`attention_entropy` — how peaked is the attention of each level? Normalized entropy
  ``H(p) / log(n)`` per segment of size ``n`` and per head, 1 = uniform, 0 = one-hot. Segments of size 1 have
  no defined normalized entropy (``log 1 = 0``); they are *excluded* and counted separately, never averaged
  in as 0 or 1. Near-uniform attention at init (≈ 0.998 for beats) is a property of the original, not a bug
  (docs/original.md#behaviour-at-init).
- :func:`prediction_spread` — the collapse detector: ``std(pred) / std(label)`` per label on one split; a
  label is *collapsed* below :data:`COLLAPSE_RATIO`.
- :func:`hierarchy_gain` — the paper's hierarchy gain: mean test R² of ``han`` minus mean test R² of
  ``bilstm_sa`` on the same split (two ``results.json``), not a fold-2 validation R² nor an ablation.
- :func:`config_deviations` — the named deviations from the original a config carries
  (:meth:`ModelConfig.deviations` with the reason from :data:`percepiano.config.DEVIATION_NOTES`).
- :func:`boundary_differences` — segments whose grouping into beats/measures differs between the boundary
  rules ``diff_eq_1`` (original) and ``diff_gt_0``, i.e. segments with an index jump > 1.

Nothing here changes a model or trains; every function reads tensors, arrays or result files.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from . import hierarchy as hier
from .config import DEVIATION_NOTES, ORIGINAL_BEHAVIOUR, ModelConfig, describe_deviations
from .constants import N_FOLDS
from .results import fold_spread, load_results, metric_value, per_label_mean, target_for

# A label is "collapsed" when its predictions vary less than this fraction of the labels' own spread.
# Rationale: for calibrated predictions E[y|x], std(pred)/std(y) = sqrt(R²) for that label, so a ratio of 0.2
# caps what the predictions can explain at about R² 0.04; the prior log's init collapse had ratio ≈ 0.06.
COLLAPSE_RATIO = 0.2

# Levels whose attention weights the model returns, and the intermediate key holding each.
ENTROPY_LEVELS = {"beat": "beat_weights", "measure": "measure_weights", "pool": "pool_weights"}
# Levels whose pooling runs over notes (the rest pool over beat or measure nodes).
NOTE_POOLED_LEVELS = ("note", "voice", "total_note_cat")


# ---------------------------------------------------------------------------------------------------------
# Attention entropy
# ---------------------------------------------------------------------------------------------------------
def normalized_entropy(p: np.ndarray | Sequence[float]) -> float:
    """``H(p) / log(n)`` of one distribution ``p`` of ``n`` entries (natural log; 0·log 0 = 0).

    Returns NaN for ``n == 1`` (undefined: there is nothing to choose between). ``p`` is used as given; it
    should sum to 1.
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n < 2:
        return float("nan")
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float(terms.sum() / math.log(n))


def segment_entropies(weights: torch.Tensor, seg: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized entropy of each segment's weights, per head, for a whole batch.

    ``weights`` (B, T, h): a softmax over the positions of each segment (what ``hierarchy.segment_softmax``
    returns); ``seg`` (B, T) segment ids with padding at ``num_nodes`` (``hierarchy.segment_ids``).
    Returns ``entropy`` (B, S, h) float64, NaN where the node is absent or has fewer than 2 positions, and
    ``sizes`` (B, S) int64 (0 for absent nodes).
    """
    w = weights.detach().to(torch.float64)
    member = hier.membership(seg, num_nodes, torch.float64)  # (B, T, S)
    plogp = torch.where(w > 0, -w * torch.log(w.clamp_min(torch.finfo(torch.float64).tiny)), torch.zeros_like(w))
    ent_sum = torch.bmm(member.transpose(1, 2), plogp)  # (B, S, h)
    sizes = member.sum(dim=1)  # (B, S)
    log_n = torch.log(sizes.clamp_min(1.0))[:, :, None]  # (B, S, 1)
    entropy = torch.where(sizes[:, :, None] >= 2, ent_sum / log_n.clamp_min(1e-300), torch.full_like(ent_sum, float("nan")))
    return entropy, sizes.round().long()


@dataclass
class LevelEntropy:
    """Normalized attention entropy of one level, accumulated over segments (1 = uniform, 0 = one-hot)."""

    level: str
    num_heads: int
    values: list[np.ndarray] = field(default_factory=list, repr=False)  # each (n_segments, h)
    sizes: list[np.ndarray] = field(default_factory=list, repr=False)  # each (n_segments,)
    n_singletons: int = 0  # segments of size 1: excluded (normalized entropy undefined)
    outside_mass: list[float] = field(default_factory=list, repr=False)  # pool only: weight on padding, per sample

    def add(self, entropy: np.ndarray, sizes: np.ndarray) -> None:
        """Add segments: ``entropy`` (n, h) with NaN rows for singletons, ``sizes`` (n,) (> 0)."""
        keep = sizes >= 2
        self.n_singletons += int(((sizes == 1)).sum())
        if keep.any():
            self.values.append(np.asarray(entropy[keep], dtype=np.float64))
            self.sizes.append(np.asarray(sizes[keep], dtype=np.int64))

    @property
    def n_segments(self) -> int:
        """Segments counted (size >= 2)."""
        return int(sum(len(s) for s in self.sizes))

    def all_values(self) -> np.ndarray:
        return np.concatenate(self.values) if self.values else np.zeros((0, self.num_heads))

    def per_head(self) -> np.ndarray:
        """(h,) mean over counted segments; NaN when there are none."""
        v = self.all_values()
        return v.mean(axis=0) if len(v) else np.full(self.num_heads, np.nan)

    @property
    def mean(self) -> float:
        """Mean over counted segments and heads; NaN when no segment has 2 or more positions."""
        v = self.all_values()
        return float(v.mean()) if v.size else float("nan")

    def summary(self) -> dict:
        sizes = np.concatenate(self.sizes) if self.sizes else np.zeros(0, dtype=np.int64)
        out = {
            "level": self.level,
            "mean": _none_if_nan(self.mean),
            "per_head": [_none_if_nan(v) for v in self.per_head()],
            "n_segments": self.n_segments,
            "n_singletons_excluded": self.n_singletons,
            "median_segment_size": float(np.median(sizes)) if len(sizes) else None,
        }
        if self.outside_mass:
            out["max_weight_on_padding"] = float(max(self.outside_mass))
        return out


def _none_if_nan(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _node_segments(note_locations: Mapping[str, torch.Tensor], lengths: torch.Tensor, rule: str):
    """Per level, (segment ids, number of nodes, nodes per sample) of beats (in note space) and measures (in
    beat-node space), from :func:`percepiano.hierarchy.node_segments`, the model's own derivation."""
    lengths = lengths.long()
    locs = {k: note_locations[k].long() for k in ("beat", "measure") if k in note_locations}
    nodes = hier.node_segments(locs, hier.valid_mask(lengths, locs["beat"].shape[1]), rule)
    out = {"beat": (nodes.beat, nodes.beats, nodes.beats_per_sample)}
    if nodes.measure is not None:
        out["measure"] = (nodes.measure, nodes.measures, nodes.measures_per_sample)
    return out


def entropy_from_intermediates(
    intermediates: Mapping[str, torch.Tensor],
    lengths: torch.Tensor,
    note_locations: Mapping[str, torch.Tensor],
    *,
    boundary_rule: str = "diff_eq_1",
    pool_level: str = "measure",
    into: dict[str, LevelEntropy] | None = None,
) -> dict[str, LevelEntropy]:
    """Accumulate the entropy of every attention the forward pass returned (``beat``, ``measure``, ``pool``).

    Segments are rebuilt from ``note_locations`` with the model's own hierarchy functions and boundary rule.
    The ``pool`` attention is one distribution per sample over what the level pools (notes, beat or measure
    nodes); its entropy is taken over the sample's real positions, renormalized, and the weight the original
    puts on padding (note-pooled levels do not mask it, docs/original.md#levels-and-pooling) is reported as
    ``max_weight_on_padding``.
    """
    out = into if into is not None else {}
    lengths = torch.as_tensor(lengths).long().cpu()
    locs = {k: torch.as_tensor(v).cpu() for k, v in note_locations.items()}
    segs = None
    for level, key in ENTROPY_LEVELS.items():
        if key not in intermediates:
            continue
        w = intermediates[key].detach().cpu()
        heads = int(w.shape[-1])
        acc = out.setdefault(level, LevelEntropy(level, heads))
        if level in ("beat", "measure"):
            segs = segs or _node_segments(locs, lengths, boundary_rule)
            seg, num_nodes, counts = segs[level]
            length = seg.shape[1]
            ent, sizes = segment_entropies(w[:, :length], seg, num_nodes)
            present = sizes > 0
            acc.add(ent[present].numpy(), sizes[present].numpy())
        else:
            n_valid = _pooled_lengths(pool_level, lengths, locs, boundary_rule, intermediates, w.shape[1], segs)
            for b in range(w.shape[0]):
                n = int(n_valid[b])
                p = w[b, :n].to(torch.float64)  # (n, h)
                mass = p.sum(dim=0)  # (h,)
                acc.outside_mass.append(float((1.0 - mass).abs().max()))
                p = p / mass.clamp_min(1e-300)
                ent = np.array([[normalized_entropy(p[:, h].numpy()) for h in range(heads)]])
                acc.add(ent, np.array([n]))
    return out


def sample_attention(
    intermediates: Mapping[str, torch.Tensor],
    lengths: torch.Tensor,
    note_locations: Mapping[str, torch.Tensor],
    index: int = 0,
    boundary_rule: str = "diff_eq_1",
) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """One sample's beat and measure attention with the spans they are normalized over.

    Returns ``weights`` ({"beat": (n_notes, h), "measure": (n_beats, h)}, levels the model computed) and
    ``boundaries`` ({"beat": [0, ..., n_notes] in note positions, "measure": [0, ..., n_beats] in beat-node
    positions}), the original's boundary-list format.
    """
    lengths = torch.as_tensor(lengths).long().cpu()
    locs = {k: torch.as_tensor(v).cpu() for k, v in note_locations.items()}
    segs = _node_segments(locs, lengths, boundary_rule)
    weights: dict[str, np.ndarray] = {}
    bounds: dict[str, list[int]] = {}
    spans = {"beat": int(lengths[index]), "measure": int(segs["beat"][2][index])}
    for level, key in (("beat", "beat_weights"), ("measure", "measure_weights")):
        if key not in intermediates or level not in segs:
            continue
        n = spans[level]
        weights[level] = intermediates[key][index, :n].detach().cpu().double().numpy()
        seg = segs[level][0][index, :n].numpy()
        bounds[level] = [0] + (np.flatnonzero(np.diff(seg)) + 1).tolist() + [n]
    return weights, bounds


def _pooled_lengths(pool_level, lengths, locs, rule, intermediates, width, segs):
    """Number of real positions of the pooled sequence per sample."""
    if pool_level in NOTE_POOLED_LEVELS:
        return lengths
    segs = segs or _node_segments(locs, lengths, rule)
    counts = segs[pool_level][2]
    if int(counts.max()) > width:
        raise ValueError(f"pool_weights have {width} positions but the {pool_level} level has {int(counts.max())} nodes")
    return counts


def attention_entropy(model, batches: Iterable, *, max_batches: int | None = None) -> dict[str, LevelEntropy]:
    """Run ``model`` (eval mode, no grad) on ``batches`` and return the entropy of every level's attention.

    ``batches``: :class:`percepiano.data.Batch` objects, or ``(x, lengths, note_locations)`` tuples, or
    dicts with those keys. The model is put back into the mode it was in.
    """
    cfg = model.config
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, LevelEntropy] = {}
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x, lengths, locs = _unpack_batch(batch)
                res = model(x.to(device), lengths.to(device), {k: v.to(device) for k, v in locs.items()}, return_intermediates=True)
                entropy_from_intermediates(
                    res.intermediates, lengths, locs, boundary_rule=cfg.boundary_rule, pool_level=cfg.level, into=out
                )
    finally:
        model.train(was_training)
    return out


def _unpack_batch(batch):
    if hasattr(batch, "x") and hasattr(batch, "note_locations"):
        return batch.x, batch.lengths, batch.note_locations
    if isinstance(batch, Mapping):
        return batch["x"], batch["lengths"], batch["note_locations"]
    x, lengths, locs = batch[:3]
    return x, lengths, locs


def format_entropy(entropy: Mapping[str, LevelEntropy]) -> str:
    """A small text table: level, mean, min/max over heads, segments counted, singletons excluded."""
    lines = [f"{'level':<8} {'mean':>6} {'head min':>8} {'head max':>8} {'segments':>9} {'size-1 excluded':>16}"]
    for level, acc in entropy.items():
        ph = acc.per_head()
        lo, hi = (np.nanmin(ph), np.nanmax(ph)) if np.isfinite(ph).any() else (float("nan"),) * 2
        lines.append(f"{level:<8} {acc.mean:6.3f} {lo:8.3f} {hi:8.3f} {acc.n_segments:9d} {acc.n_singletons:16d}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Prediction spread (collapse detector)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpreadRow:
    label: str
    pred_std: float
    label_std: float
    ratio: float  # pred_std / label_std; NaN when the labels are constant
    collapsed: bool


def prediction_spread(
    predictions: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str] | None = None,
    threshold: float = COLLAPSE_RATIO,
) -> list[SpreadRow]:
    """Per label, ``std(pred) / std(label)`` over the samples (population std); collapsed below ``threshold``.

    ``predictions`` must be on the label scale (after the sigmoid), shape (n, L) like ``labels``. A label whose
    targets are constant gets ratio NaN and is not flagged (nothing to spread over).
    """
    pred = np.asarray(predictions, dtype=np.float64)
    lab = np.asarray(labels, dtype=np.float64)
    if pred.shape != lab.shape or pred.ndim != 2:
        raise ValueError(f"prediction_spread: predictions {pred.shape} and labels {lab.shape} must both be (n, L)")
    if pred.shape[0] < 2:
        raise ValueError("prediction_spread: need at least 2 samples")
    names = list(label_names) if label_names is not None else [str(i) for i in range(pred.shape[1])]
    if len(names) != pred.shape[1]:
        raise ValueError(f"prediction_spread: {len(names)} label names for {pred.shape[1]} labels")
    rows = []
    for j, name in enumerate(names):
        ps, ls = float(pred[:, j].std()), float(lab[:, j].std())
        ratio = ps / ls if ls > 0 else float("nan")
        rows.append(SpreadRow(name, ps, ls, ratio, bool(ls > 0 and ratio < threshold)))
    return rows


def prediction_spread_by_fold(
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    label_names: Sequence[str] | None = None,
    threshold: float = COLLAPSE_RATIO,
) -> list[SpreadRow]:
    """:func:`prediction_spread` of each fold's (predictions, labels), averaged over folds per label.

    Use this for cross-validation output: stacking the folds first would count the fold-to-fold differences of
    the models as spread (a model predicting one constant per fold would look alive). A label is collapsed when
    its mean ratio is below ``threshold``.
    """
    per = [prediction_spread(p, y, label_names, threshold) for p, y in folds]
    if not per:
        raise ValueError("prediction_spread_by_fold: no folds")
    rows = []
    for j, first in enumerate(per[0]):
        ps = float(np.mean([f[j].pred_std for f in per]))
        ls = float(np.mean([f[j].label_std for f in per]))
        ratios = [f[j].ratio for f in per if not math.isnan(f[j].ratio)]
        ratio = float(np.mean(ratios)) if ratios else float("nan")
        rows.append(SpreadRow(first.label, ps, ls, ratio, bool(ratios and ratio < threshold)))
    return rows


def collapsed_labels(rows: Sequence[SpreadRow]) -> list[str]:
    return [r.label for r in rows if r.collapsed]


# ---------------------------------------------------------------------------------------------------------
# Hierarchy gain
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HierarchyGain:
    split: str
    han_r2: float
    bilstm_sa_r2: float
    gain: float  # han - bilstm_sa
    han_fold_std: float
    bilstm_sa_fold_std: float
    per_label_gain: dict[str, float]
    paper_gain: float | None  # from the published targets when both are known for this split

    def as_dict(self) -> dict:
        return asdict(self)


def hierarchy_gain(han, bilstm_sa, *, targets: Mapping | None = None, check_presets: bool = True) -> HierarchyGain:
    """The paper's hierarchy gain: mean test R² of ``han`` minus that of ``bilstm_sa`` on the same split.

    ``han`` / ``bilstm_sa``: results.json paths, run directories or loaded dicts. Raises ``ValueError`` when the
    splits or the folds differ (a gain across splits or folds means nothing) or, with ``check_presets``, when the
    presets are not ``han`` and ``bilstm_sa``.
    """
    a, b = load_results(han), load_results(bilstm_sa)
    if a.get("split") != b.get("split"):
        raise ValueError(f"hierarchy gain needs the same split: han run is {a.get('split')!r}, bilstm_sa run is {b.get('split')!r}")
    if check_presets and (a.get("preset"), b.get("preset")) != ("han", "bilstm_sa"):
        raise ValueError(
            f"hierarchy gain is han minus bilstm_sa; got presets {a.get('preset')!r} and {b.get('preset')!r} "
            "(pass check_presets=False to compare other runs)"
        )
    folds_a, folds_b = (sorted(int(f["fold"]) for f in r["folds"]) for r in (a, b))
    if folds_a != folds_b:  # each fold has its own test set (performer, work): a gain over other folds means nothing
        raise ValueError(f"hierarchy gain needs the same folds: the han run ({a.get('_path', '<dict>')}) covers folds "
                         f"{folds_a}, the bilstm_sa run ({b.get('_path', '<dict>')}) {folds_b}")
    split = str(a.get("split"))
    la, lb = per_label_mean(a), per_label_mean(b)
    paper = None
    if targets is not None:
        t_han, t_sa = target_for(targets, split, "han"), target_for(targets, split, "bilstm_sa")
        if t_han is not None and t_sa is not None:
            paper = t_han - t_sa
    return HierarchyGain(
        split=split,
        han_r2=metric_value(a),
        bilstm_sa_r2=metric_value(b),
        gain=metric_value(a) - metric_value(b),
        han_fold_std=fold_spread(a),
        bilstm_sa_fold_std=fold_spread(b),
        per_label_gain={n: la[n] - lb[n] for n in la if n in lb},
        paper_gain=paper,
    )


# ---------------------------------------------------------------------------------------------------------
# Deviations from the original
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deviation:
    field: str
    value: object
    original: object
    note: str
    line: str  # the human-readable line of :func:`percepiano.config.describe_deviations`


def as_model_config(config: ModelConfig | Mapping) -> ModelConfig:
    """A ModelConfig from itself, its ``to_dict()``, or a results.json ``config`` (``model`` sub-dict or
    extra training keys are tolerated: only ModelConfig fields are read)."""
    if isinstance(config, ModelConfig):
        return config
    d = dict(config)
    if "model" in d:
        if not isinstance(d["model"], Mapping):
            raise ValueError("this run has no model config (a non-neural baseline?)")
        d = dict(d["model"])
    fields = set(ModelConfig.__dataclass_fields__)
    return ModelConfig(**{k: v for k, v in d.items() if k in fields})


def config_deviations(config: ModelConfig | Mapping) -> list[Deviation]:
    """Every named deviation from the original that ``config`` carries (empty for an original config)."""
    cfg = as_model_config(config)
    lines = describe_deviations(cfg)
    return [
        Deviation(k, v, ORIGINAL_BEHAVIOUR[k], DEVIATION_NOTES[k], line)
        for (k, v), line in zip(cfg.deviations().items(), lines)
    ]


@dataclass(frozen=True)
class RunDeviation:
    scope: str  # "model (named deviation)", "model (size/structure)", "training protocol", "folds"
    field: str
    value: object
    original: object
    note: str


# Training-config fields that do not change what is computed (only how reproducibly / what is logged).
NEUTRAL_TRAIN_FIELDS = ("deterministic", "eval_test_every_epoch", "rng")  # rng: whose random draws, same protocol


def run_deviations(results: Mapping) -> list[RunDeviation]:
    """Everything in a results.json that differs from the published run of its preset: the named model
    deviations (:func:`config_deviations`), other model fields that differ from the preset (sizes, layers,
    heads), training-protocol fields that differ from :class:`percepiano.training.TrainConfig` defaults, and
    a run over fewer than :data:`~percepiano.constants.N_FOLDS` folds. Empty for a faithful run; baselines
    (no model config) give an empty list."""
    from .config import PRESETS

    cfg = results.get("config") or {}
    model = cfg.get("model") if isinstance(cfg, Mapping) else None
    out: list[RunDeviation] = []
    if isinstance(model, Mapping):
        mc = as_model_config(model)
        for d in config_deviations(mc):
            out.append(RunDeviation("model (named deviation)", d.field, d.value, d.original, d.note))
        preset = PRESETS.get(str(results.get("preset")))
        if preset is not None:
            ref = preset.to_dict()
            for k, v in mc.to_dict().items():
                if k in ORIGINAL_BEHAVIOUR or k == "hidden_size" or ref.get(k) == v:
                    continue
                out.append(RunDeviation("model (size/structure)", k, v, ref.get(k),
                                        f"differs from the published `{results.get('preset')}` preset"))
    train = cfg.get("train") if isinstance(cfg, Mapping) else None
    if isinstance(train, Mapping):
        from .training import TrainConfig

        ref = TrainConfig().to_dict()
        for k, v in train.items():
            if k in ref and ref[k] != v and k not in NEUTRAL_TRAIN_FIELDS:
                out.append(RunDeviation("training protocol", k, v, ref[k], "differs from the original protocol (docs/original.md#hyperparameters, #training-protocol)"))
    n_folds = len(results.get("folds", []))
    if n_folds and n_folds != N_FOLDS:
        out.append(RunDeviation("folds", "n_folds", n_folds, N_FOLDS, f"the paper's number is the mean over all {N_FOLDS} folds"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Boundary rules
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoundaryDifference:
    """One segment and level whose nodes differ between ``diff_eq_1`` and ``diff_gt_0``."""

    segment: str
    level: str  # "beat" or "measure"
    nodes_diff_eq_1: int
    nodes_diff_gt_0: int
    jumps: tuple[tuple[int, int], ...]  # (note position, index step > 1)


def boundary_differences(
    note_locations: Mapping[str, torch.Tensor | np.ndarray],
    lengths: torch.Tensor | np.ndarray,
    segment_ids: Sequence[str] | None = None,
    levels: Sequence[str] = ("beat", "measure"),
) -> list[BoundaryDifference]:
    """Segments (rows of a padded batch) whose grouping differs between the two boundary rules.

    The rules differ exactly where an index steps by more than 1 inside a segment (``diff_eq_1`` merges the
    two groups, ``diff_gt_0`` splits them). Node counts use the model's own :mod:`percepiano.hierarchy`.
    For the measure level the count is of measures in note space (the rules act on the measure indices).
    """
    lengths = torch.as_tensor(np.asarray(lengths)).long()
    out = []
    for level in levels:
        idx = torch.as_tensor(np.asarray(note_locations[level])).long()
        valid = hier.valid_mask(lengths, idx.shape[1])
        counts = {}
        for rule in ("diff_eq_1", "diff_gt_0"):
            _, counts[rule], _ = hier.segment_ids(hier.boundary_flags(idx, valid, rule), valid)
        step = idx[:, 1:] - idx[:, :-1]
        jump = (step > 1) & valid[:, 1:]
        for b in torch.nonzero(jump.any(dim=1)).flatten().tolist():
            pos = torch.nonzero(jump[b]).flatten().tolist()
            out.append(
                BoundaryDifference(
                    segment=str(segment_ids[b]) if segment_ids is not None else str(b),
                    level=level,
                    nodes_diff_eq_1=int(counts["diff_eq_1"][b]),
                    nodes_diff_gt_0=int(counts["diff_gt_0"][b]),
                    jumps=tuple((p + 1, int(step[b, p])) for p in pos),
                )
            )
    return out


def dataset_boundary_differences(data, indices: Sequence[int] | None = None, chunk: int = 256) -> dict:
    """:func:`boundary_differences` over a :class:`percepiano.data.PercePianoData` (all segments by default).

    Returns ``{"n_segments", "differences": [BoundaryDifference...], "decreasing": [...], "single_node": [...]}``:
    besides rule differences it lists segments whose beat/measure indices decrease (neither rule handles
    them) and segments with a single beat or measure (the original ``diff_eq_1`` code crashes on those).
    """
    idx = list(range(len(data))) if indices is None else [int(i) for i in indices]
    diffs, decreasing, single = [], [], []
    for start in range(0, len(idx), chunk):
        part = idx[start : start + chunk]
        lengths = np.asarray([data.offsets[i + 1] - data.offsets[i] for i in part])
        n = int(lengths.max())
        locs = {}
        for level in ("beat", "measure"):
            arr = np.zeros((len(part), n), dtype=np.int64)
            for r, i in enumerate(part):
                arr[r, : lengths[r]] = data.note_locations[level][data.offsets[i] : data.offsets[i + 1]]
            locs[level] = arr
            for r, i in enumerate(part):
                row = arr[r, : lengths[r]]
                if (np.diff(row) < 0).any():
                    decreasing.append((str(data.segment_ids[i]), level))
                if (row == row[0]).all():
                    single.append((str(data.segment_ids[i]), level))
        ids = [str(data.segment_ids[i]) for i in part]
        diffs.extend(boundary_differences(locs, lengths, ids))
    return {"n_segments": len(idx), "differences": diffs, "decreasing": decreasing, "single_node": single}
