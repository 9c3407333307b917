"""Paired comparison of two rounds on the same test segments: ΔR² with a cluster-bootstrap interval.

Pure numpy functions; :mod:`percepiano.gate` turns them into a verdict. docs/debugging_rounds.md explains the
choices and measures them on this dataset.

*What is compared.* Every fold of a split tests its model on the same fixed test set
(docs/original.md#reported-number), and every run saves its per-segment test predictions. So two rounds can be
compared segment by segment: per fold ``ΔR²_k = R²_k(new) − R²_k(old)`` on identical segments, and the verdict's
number is the mean over folds (and seeds) of that difference, the difference of the two rounds' reported numbers.

*Test-segment noise.* A bootstrap replicate draws test clusters with replacement (:func:`draw_cluster_counts`)
and gives every segment the number of times its cluster was drawn as its weight (:func:`segment_weights`);
both rounds and every fold and seed are scored with the same weights (:func:`weighted_r2_per_label`), which is
what makes the comparison paired. Segments of one cluster are drawn together because they are correlated:
:data:`CLUSTERINGS` (``excerpt``, the default: the performances of one score excerpt share the music, so a
model's errors on them move together).

*Training noise.* A seed is the unit of replication of training noise. Where a round has several seeds, each
replicate also draws that round's seeds with replacement, independently for the two rounds, and scales the
drawn seeds' deviation from the all-seed mean by ``sqrt(S / (S − 1))`` so that the seed part of the variance is
the unbiased ``s² / S`` rather than the plug-in ``(S − 1) / S · s² / S`` (:func:`seed_resampled`). Two rounds
that ran the same seeds draw them as pairs. A round of one seed cannot show its training noise: its interval
covers test segments only.

*Planning.* :func:`minimum_detectable_effect` is ``(z_{(1+level)/2} + z_power) · SE``: the distance beyond the
margin at which a true drop is called worse, and the margin a truly equal round needs to be called not worse,
each with probability ``power`` (normal approximation); :func:`detectable_drop` states the first from the
interval's own, possibly skewed, upper half-width. :func:`seeds_needed` gives the seeds per round that bring
the minimum detectable effect below the margin.

*Validation.* :func:`resample_test_set`, :func:`shrink_toward` and :func:`simulate_verdicts` run the gate on
simulated experiments with known effects (power curve, false-alarm rate under the null).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

from .constants import (
    BOOTSTRAP_SEED,
    CLUSTERINGS,
    DEFAULT_CLUSTERING,
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    MAX_PLANNED_SEEDS,
    POWER,
)

# Below this many clusters (in any dimension) a cluster bootstrap has too few distinct resamples to trust its
# percentiles (3 clusters: 10 distinct resamples); the gate says so beside its verdict.
MIN_RELIABLE_CLUSTERS = 10
# A label whose weighted total sum of squares is below this fraction of its weighted sum of squares around the
# unweighted mean is constant in that replicate (R² then follows sklearn's convention, as percepiano.metrics).
CONSTANT_LABEL_RTOL = 1e-12

# The dataset's segment id: PIECE_Nbars_PERFORMER_SEGMENT, e.g. Beethoven_WoO80_var18_8bars_7_12 is player 7's
# performance of excerpt 12 of the 8-bar Beethoven_WoO80_var18 segments (the processed data's segments.csv has
# the same four fields; the excerpt id is the id without the performer).
SEGMENT_ID = re.compile(r"^(?P<piece>.+)_(?P<bars>\d+bars)_(?P<performer>[^_]+)_(?P<segment>\d+)$")

VERDICTS = ("not worse", "worse", "inconclusive")


# ---------------------------------------------------------------------------------------------------------
# Clusters
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentParts:
    piece: str
    bars: str
    performer: str
    segment: str

    @property
    def excerpt(self) -> str:
        """The excerpt: the same music, whoever plays it (segments.csv ``excerpt``)."""
        return f"{self.piece}_{self.bars}_{self.segment}"

    @property
    def player(self) -> str:
        """The player: player ids are numbered per composer (docs: the performer split maps Beethoven and
        Schubert ids separately), so the composer is part of the player's identity."""
        return f"{self.piece.split('_')[0]}_{self.performer}"


def parse_segment_id(segment_id: str) -> SegmentParts:
    m = SEGMENT_ID.match(str(segment_id).strip())
    if m is None:
        raise ValueError(
            f"segment id {segment_id!r} is not PIECE_Nbars_PERFORMER_SEGMENT (e.g. Beethoven_WoO80_var18_8bars_7_12): "
            "its excerpt and performer are unknown; use the clustering 'segment'"
        )
    return SegmentParts(m["piece"], m["bars"], m["performer"], m["segment"])


def cluster_keys(segment_ids: Sequence[str], clustering: str) -> list[tuple[str, ...]]:
    """For every segment, its cluster in each dimension of ``clustering`` (one key, two for the crossed one)."""
    if clustering not in CLUSTERINGS:
        raise ValueError(f"clustering {clustering!r}: expected one of {CLUSTERINGS}")
    if clustering == "segment":
        return [(str(s),) for s in segment_ids]
    parts = [parse_segment_id(s) for s in segment_ids]
    dims = clustering.split("+")
    return [tuple(p.excerpt if d == "excerpt" else p.player for d in dims) for p in parts]


@dataclass(frozen=True)
class Clusters:
    """Cluster codes of a set of segment ids: ``codes[id]`` (one int per dimension) and the cluster count per
    dimension."""

    clustering: str
    codes: dict[str, tuple[int, ...]]
    sizes: tuple[int, ...]

    def of(self, segment_ids: Sequence[str]) -> np.ndarray:
        """(n, dims) int codes of ``segment_ids``."""
        return np.array([self.codes[str(s)] for s in segment_ids], dtype=np.int64).reshape(len(segment_ids), -1)


def make_clusters(segment_ids: Sequence[str], clustering: str = DEFAULT_CLUSTERING) -> Clusters:
    """Number the clusters of ``segment_ids`` (a union over folds) in first-seen order of the sorted ids."""
    ids = sorted({str(s) for s in segment_ids})
    keys = cluster_keys(ids, clustering)
    n_dims = len(keys[0]) if keys else 1
    tables: list[dict[str, int]] = [{} for _ in range(n_dims)]
    codes = {}
    for sid, key in zip(ids, keys):
        codes[sid] = tuple(tables[d].setdefault(k, len(tables[d])) for d, k in enumerate(key))
    return Clusters(clustering, codes, tuple(len(t) for t in tables))


def draw_cluster_counts(sizes: Sequence[int], resamples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per dimension, (resamples, C) counts: how often each of the C clusters was drawn when drawing C with
    replacement (one bootstrap replicate per row)."""
    return [rng.multinomial(int(c), np.full(int(c), 1.0 / int(c)), size=int(resamples)).astype(np.float64)
            for c in sizes]


def segment_weights(counts: Sequence[np.ndarray], codes: np.ndarray) -> np.ndarray:
    """(resamples, n) weights of the segments with cluster ``codes`` (n, dims): their cluster's count, the product
    over dimensions for a crossed clustering."""
    w = counts[0][:, codes[:, 0]]
    for d in range(1, len(counts)):
        w = w * counts[d][:, codes[:, d]]
    return w


# ---------------------------------------------------------------------------------------------------------
# Weighted R²
# ---------------------------------------------------------------------------------------------------------
def weighted_r2_per_label(labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, L) R² of every label under each row of ``weights`` (B, n): ``r2_per_label`` of the data set in which
    segment i appears ``weights[b, i]`` times (integer weights), i.e. percepiano.metrics.r2_per_label with
    weighted sums; a label that is constant under a weight row scores 1 if predicted exactly, else 0."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    yc = y - y.mean(axis=0)  # centred first: the weighted variance below then does not cancel digits
    sw = w.sum(axis=1, keepdims=True)
    s1, s2 = w @ yc, w @ (yc * yc)
    tot = s2 - s1 * s1 / sw
    res = w @ ((y - p) ** 2)
    constant = tot <= CONSTANT_LABEL_RTOL * np.maximum(s2, np.finfo(np.float64).tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 - res / tot
    return np.where(constant, np.where(res == 0, 1.0, 0.0), out)


# ---------------------------------------------------------------------------------------------------------
# Rounds: predictions of every seed and fold
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldPredictions:
    """One fold of a round: the test segments (sorted ids), their labels (n, L) and every seed's predictions
    (S, n, L)."""

    segment_ids: tuple[str, ...]
    labels: np.ndarray
    predictions: np.ndarray

    @property
    def n_seeds(self) -> int:
        return int(self.predictions.shape[0])


def round_r2(folds: Sequence[FoldPredictions], clusters: Clusters, counts: Sequence[np.ndarray] | None) -> np.ndarray:
    """(S, K, B, L) R² of every seed, fold, replicate and label (B = 1, unit weights, when ``counts`` is None)."""
    out = []
    for f in folds:
        codes = clusters.of(f.segment_ids)
        w = np.ones((1, len(f.segment_ids))) if counts is None else segment_weights(counts, codes)
        out.append([weighted_r2_per_label(f.labels, f.predictions[s], w) for s in range(f.n_seeds)])
    return np.asarray(out).transpose(1, 0, 2, 3)


def draw_seeds(n_seeds: int, resamples: int, rng: np.random.Generator) -> np.ndarray | None:
    """(B, S) seed indices drawn with replacement, or None for a round of one seed (nothing to draw)."""
    return None if n_seeds < 2 else rng.integers(0, n_seeds, size=(int(resamples), int(n_seeds)))


def seed_resampled(r2: np.ndarray, draws: np.ndarray | None) -> np.ndarray:
    """(B, K, L) seed-mean R² of each replicate from ``r2`` (S, K, B, L): the mean over all seeds plus
    ``sqrt(S / (S − 1))`` times the drawn seeds' deviation from it (the unbiased seed variance); without draws,
    the mean over seeds."""
    full = r2.mean(axis=0).transpose(1, 0, 2)  # (B, K, L)
    if draws is None:
        return full
    n_seeds, n_rep = r2.shape[0], r2.shape[2]
    drawn = r2[draws, :, np.arange(n_rep)[:, None], :].mean(axis=1)  # (B, S, K, L) -> (B, K, L)
    return full + math.sqrt(n_seeds / (n_seeds - 1)) * (drawn - full)


# ---------------------------------------------------------------------------------------------------------
# Estimates and intervals
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A point value with its bootstrap percentile interval and standard error."""

    value: float
    low: float
    high: float
    se: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def estimate(value: float, replicates: np.ndarray, level: float) -> Estimate:
    lo, hi = np.quantile(np.asarray(replicates, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(value), float(lo), float(hi), float(np.std(replicates)))


def check_level(level: float, resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if int(resamples) < 100:
        raise ValueError(f"resamples: expected at least 100 bootstrap replicates, got {resamples!r}")


@dataclass
class RoundInterval:
    """A round's mean test R² (over labels, folds, seeds) with its interval; per label too."""

    overall: Estimate
    per_label: list[Estimate]
    n_seeds: int
    n_segments: int
    clusters: tuple[int, ...]
    clustering: str
    level: float
    resamples: int


def round_interval(folds: Sequence[FoldPredictions], clustering: str = DEFAULT_CLUSTERING, *,
                   resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                   seed: int = BOOTSTRAP_SEED) -> RoundInterval:
    """The interval of one round's mean test R² (``--against targets``: the paper has no per-segment side)."""
    check_level(level, resamples)
    rng = np.random.default_rng(seed)
    clusters = make_clusters([s for f in folds for s in f.segment_ids], clustering)
    counts = draw_cluster_counts(clusters.sizes, resamples, rng)
    point = round_r2(folds, clusters, None).mean(axis=(0, 1))[0]  # (L,)
    reps = seed_resampled(round_r2(folds, clusters, counts), draw_seeds(folds[0].n_seeds, resamples, rng)).mean(axis=1)
    return RoundInterval(
        overall=estimate(point.mean(), reps.mean(axis=1), level),
        per_label=[estimate(point[j], reps[:, j], level) for j in range(len(point))],
        n_seeds=folds[0].n_seeds, n_segments=len(clusters.codes), clusters=clusters.sizes, clustering=clustering,
        level=level, resamples=int(resamples),
    )


@dataclass
class PairedComparison:
    """new − old: mean test R² over labels, folds and seeds, per label and per fold, each with its interval."""

    new_value: float
    old_value: float
    overall: Estimate
    per_label: list[Estimate]
    per_fold: list[Estimate]
    new_per_label: np.ndarray
    old_per_label: np.ndarray
    replicates: np.ndarray  # (B,) overall ΔR² of every replicate
    se_test: float  # SE of the overall ΔR² from the test segments alone (all seeds kept in every replicate)
    seed_var_new: float | None  # variance over seeds (ddof 1) of one seed's mean R²; None with one seed
    seed_var_old: float | None
    # with paired seeds: variance over seeds (ddof 1) of the per-seed ΔR², var_new + var_old − 2 cov (seed i of
    # both rounds shares initial weights and batch order, so the covariance is the point of pairing); else None
    seed_delta_var: float | None
    n_seeds_new: int
    n_seeds_old: int
    paired_seeds: bool
    n_folds: int
    n_segments: int
    clusters: tuple[int, ...]
    clustering: str
    level: float
    resamples: int

    @property
    def per_fold_delta_var(self) -> float | None:
        """Variance over folds (ddof 1) of the per-fold ΔR²; None with one fold."""
        v = np.array([e.value for e in self.per_fold])
        return float(v.var(ddof=1)) if len(v) > 1 else None


def paired_comparison(new: Sequence[FoldPredictions], old: Sequence[FoldPredictions],
                      clustering: str = DEFAULT_CLUSTERING, *, resamples: int = DEFAULT_RESAMPLES,
                      level: float = DEFAULT_LEVEL, seed: int = BOOTSTRAP_SEED,
                      paired_seeds: bool = False) -> PairedComparison:
    """ΔR² (new − old) with cluster-bootstrap intervals; fold k of ``new`` and of ``old`` must hold the same
    segment ids (sorted) and labels (checked by the caller, :mod:`percepiano.gate`). ``paired_seeds``: the two
    rounds ran the same seeds (seed i of one is seed i of the other: same initial weights and batch order where
    the change leaves them alone), so seeds are drawn as pairs, like segments; else independently."""
    check_level(level, resamples)
    if len(new) != len(old):
        raise ValueError(f"the rounds have {len(new)} and {len(old)} folds")
    rng = np.random.default_rng(seed)
    clusters = make_clusters([s for f in new for s in f.segment_ids], clustering)
    counts = draw_cluster_counts(clusters.sizes, resamples, rng)
    draws_new = draw_seeds(new[0].n_seeds, resamples, rng)
    if paired_seeds and new[0].n_seeds != old[0].n_seeds:
        raise ValueError(f"paired seeds need the same number of seeds, got {new[0].n_seeds} and {old[0].n_seeds}")
    draws_old = draws_new if paired_seeds else draw_seeds(old[0].n_seeds, resamples, rng)
    p_new, p_old = round_r2(new, clusters, None)[:, :, 0], round_r2(old, clusters, None)[:, :, 0]  # (S, K, L)
    r_new, r_old = round_r2(new, clusters, counts), round_r2(old, clusters, counts)
    d = seed_resampled(r_new, draws_new) - seed_resampled(r_old, draws_old)  # (B, K, L)
    d_test = seed_resampled(r_new, None) - seed_resampled(r_old, None)
    pd = p_new.mean(axis=0) - p_old.mean(axis=0)  # (K, L)
    overall = d.mean(axis=(1, 2))

    def seed_var(p):
        return float(p.mean(axis=(1, 2)).var(ddof=1)) if p.shape[0] > 1 else None

    return PairedComparison(
        new_value=float(p_new.mean()), old_value=float(p_old.mean()),
        overall=estimate(pd.mean(), overall, level),
        per_label=[estimate(pd[:, j].mean(), d[:, :, j].mean(axis=1), level) for j in range(pd.shape[1])],
        per_fold=[estimate(pd[k].mean(), d[:, k].mean(axis=1), level) for k in range(pd.shape[0])],
        new_per_label=p_new.mean(axis=(0, 1)), old_per_label=p_old.mean(axis=(0, 1)),
        replicates=overall, se_test=float(np.std(d_test.mean(axis=(1, 2)))),
        seed_var_new=seed_var(p_new), seed_var_old=seed_var(p_old),
        seed_delta_var=seed_var(p_new - p_old) if paired_seeds else None,
        n_seeds_new=new[0].n_seeds, n_seeds_old=old[0].n_seeds, paired_seeds=bool(paired_seeds), n_folds=len(new),
        n_segments=len(clusters.codes), clusters=clusters.sizes, clustering=clustering, level=level,
        resamples=int(resamples),
    )


# ---------------------------------------------------------------------------------------------------------
# Verdict and planning
# ---------------------------------------------------------------------------------------------------------
def decide(delta: Estimate, margin: float) -> str:
    """``not worse`` when the interval excludes every drop larger than ``margin`` (low >= −margin), ``worse``
    when it lies entirely below −margin, else ``inconclusive``."""
    if margin < 0:
        raise ValueError(f"margin: expected >= 0, got {margin!r}")
    slack = 1e-12  # a round compared with itself has the interval [0, 0]: not worse even at margin 0
    if delta.low >= -margin - slack:
        return "not worse"
    if delta.high < -margin - slack:
        return "worse"
    return "inconclusive"


def z_sum(level: float = DEFAULT_LEVEL, power: float = POWER) -> float:
    """``z_{(1+level)/2} + z_power`` (2.80 at level 0.95 and power 0.8)."""
    nd = NormalDist()
    return nd.inv_cdf((1 + level) / 2) + nd.inv_cdf(power)


def minimum_detectable_effect(se: float, level: float = DEFAULT_LEVEL, power: float = POWER) -> float:
    """``z_sum · se``: with standard error ``se``, a true drop of ``margin + this`` is called worse, and a truly
    equal round is called not worse when ``margin >= this``, each with probability ``power`` (normal
    approximation of the bootstrap distribution)."""
    return z_sum(level, power) * float(se)


def detectable_drop(delta: Estimate, margin: float, power: float = POWER) -> float:
    """``margin + (high − value) + z_power · se``: the smallest true drop the gate calls worse with probability
    ``power``, from this interval's own upper half-width (a bootstrap distribution of ΔR² is often skewed, so
    ``z · se`` alone would understate it)."""
    return float(margin + (delta.high - delta.value) + NormalDist().inv_cdf(power) * delta.se)


def standard_error(se_test: float, seed_var_sum: float, n_seeds: int) -> float:
    """SE of ΔR² with ``n_seeds`` seeds in each round: test-segment part plus the seed part ``seed_var_sum /
    n_seeds`` (``seed_var_sum``: the variance of one seed's ΔR², ``var_new + var_old`` of one seed's mean R² for
    independent seeds, less twice their covariance for paired ones)."""
    return math.sqrt(se_test ** 2 + seed_var_sum / n_seeds)


def seeds_needed(se_test: float, seed_var_sum: float, margin: float, level: float = DEFAULT_LEVEL,
                 power: float = POWER, max_seeds: int = MAX_PLANNED_SEEDS) -> int | None:
    """The fewest seeds per round whose minimum detectable effect is at most ``margin``; None when the test
    segments alone already exceed it (no number of seeds helps) or more than ``max_seeds`` would be needed."""
    z = z_sum(level, power)
    if margin <= 0 or z * se_test >= margin:
        return None
    if seed_var_sum <= 0:
        return 1
    n = math.ceil(seed_var_sum / ((margin / z) ** 2 - se_test ** 2))
    n = max(1, n)
    while n > 1 and z * standard_error(se_test, seed_var_sum, n - 1) <= margin:  # rounding at the boundary
        n -= 1
    return n if n <= max_seeds else None


# ---------------------------------------------------------------------------------------------------------
# Validation on known effects
# ---------------------------------------------------------------------------------------------------------
def resample_test_set(segment_ids: Sequence[str], clustering: str, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One simulated test set: clusters drawn with replacement (one-dimensional clusterings only). Returns the
    row indices into ``segment_ids`` and new ids in which each drawn copy of a cluster is a cluster of its own
    (the segment id with ``#copy`` after its segment number keeps it parseable for the gate)."""
    if "+" in clustering:
        raise ValueError("simulated test sets need a one-dimensional clustering")
    keys = [k[0] for k in cluster_keys(segment_ids, clustering)]
    names = sorted(set(keys))
    members = {k: [i for i, kk in enumerate(keys) if kk == k] for k in names}
    picks = rng.integers(0, len(names), size=len(names))
    rows, ids = [], []
    for copy, c in enumerate(picks):
        for i in members[names[c]]:
            rows.append(i)
            ids.append(_copy_id(segment_ids[i], clustering, copy))
    return np.asarray(rows, dtype=np.int64), ids


def _copy_id(segment_id: str, clustering: str, copy: int) -> str:
    if clustering == "segment":
        return f"{segment_id}#{copy}"
    p = parse_segment_id(segment_id)
    if clustering == "excerpt":  # a new excerpt per copy, the same player
        return f"{p.piece}c{copy}_{p.bars}_{p.performer}_{p.segment}"
    return f"{p.piece}_{p.bars}_{p.performer}c{copy}_{p.segment}"  # performer: a new player per copy


def shrink_toward(predictions: np.ndarray, center: np.ndarray, fraction: float) -> np.ndarray:
    """Predictions moved ``fraction`` of the way to ``center`` (per label; e.g. the train-label mean, which is
    what a collapsing model predicts)."""
    return np.asarray(center) + (1.0 - fraction) * (np.asarray(predictions) - np.asarray(center))


# A simulated round built from a round's fold predictions: (rng, folds) -> folds.
Perturbation = Callable[[np.random.Generator, Sequence[FoldPredictions]], Sequence[FoldPredictions]]


@dataclass
class Simulation:
    """What :func:`simulate_verdicts` found: the fraction of experiments with each verdict, the true effect (ΔR²
    of the two rounds on the full test set, the population of the simulation, mean over experiments), the
    median of the standard errors the gate reported and of the detectable drops it stated
    (:func:`detectable_drop`)."""

    fractions: dict[str, float]
    true_delta: float
    median_se: float
    median_detectable: float
    experiments: int
    intervals: np.ndarray  # (experiments, 2): each experiment's interval of ΔR² (low, high)

    def fractions_at(self, margin: float) -> dict[str, float]:
        """The verdicts' fractions had the gate used ``margin`` (the same experiments)."""
        verdicts = [decide(Estimate(0.0, lo, hi, 0.0), margin) for lo, hi in self.intervals]
        return {v: verdicts.count(v) / len(verdicts) for v in VERDICTS}


def simulate_verdicts(
    old: Sequence[FoldPredictions],
    make_new: Perturbation,
    experiments: int,
    margin: float,
    *,
    make_old: Perturbation | None = None,
    clustering: str = DEFAULT_CLUSTERING,
    resamples: int = 400,
    level: float = DEFAULT_LEVEL,
    seed: int = 1,
) -> Simulation:
    """Run the gate on simulated experiments. An experiment draws a test set from the clusters of the real one
    (:func:`resample_test_set`: the real test set plays the population), builds the two rounds on it from
    ``old``'s predictions (``make_new(rng, folds)``; ``make_old(rng, folds)`` when given, else unchanged: a
    perturbation drawn per segment is drawn per drawn copy, as for a new sample of segments), runs
    :func:`paired_comparison` (its own bootstrap) and :func:`decide`. The true effect is the ΔR² the
    perturbations make on the full test set (a fresh draw per experiment, averaged)."""
    rng = np.random.default_rng(seed)
    tally = dict.fromkeys(VERDICTS, 0)
    ids = list(old[0].segment_ids)
    for f in old[1:]:
        if list(f.segment_ids) != ids:
            raise ValueError("simulated test sets need folds that share one test set")
    clusters = make_clusters(ids, "segment")
    true, ses, intervals, detectable = [], [], [], []
    same = lambda rng, folds: folds  # noqa: E731
    make_old = make_old or same
    for _ in range(int(experiments)):
        new_full, old_full = make_new(rng, old), make_old(rng, old)
        true.append(float(round_r2(new_full, clusters, None).mean() - round_r2(old_full, clusters, None).mean()))
        rows, new_ids = resample_test_set(ids, clustering, rng)
        drawn = [_subset(f, rows, new_ids) for f in old]
        a, b = make_new(rng, drawn), make_old(rng, drawn)
        cmp = paired_comparison(a, b, clustering, resamples=resamples, level=level, seed=int(rng.integers(2 ** 31)))
        ses.append(cmp.overall.se)
        detectable.append(detectable_drop(cmp.overall, margin))
        intervals.append((cmp.overall.low, cmp.overall.high))
        tally[decide(cmp.overall, margin)] += 1
    n = int(experiments)
    return Simulation({k: v / n for k, v in tally.items()}, float(np.mean(true)), float(np.median(ses)),
                      float(np.median(detectable)), n, np.asarray(intervals))


def power_curve(old: Sequence[FoldPredictions], perturb: Callable[[float, np.random.Generator, Sequence[FoldPredictions]],
                Sequence[FoldPredictions]], parameters: Sequence[float], experiments: int, margin: float,
                **simulate) -> list[dict]:
    """One row per perturbation size: ``parameter``, ``true_drop`` (−ΔR² on the full test set), the fractions
    of experiments called ``worse`` / ``not worse`` / ``inconclusive``, the median SE and the median stated
    ``detectable`` drop (:func:`detectable_drop`)."""
    rows = []
    for i, x in enumerate(parameters):
        sim = simulate_verdicts(old, lambda rng, f, x=x: perturb(x, rng, f), experiments, margin,
                                **{"seed": 1000 + i, **simulate})
        rows.append({"parameter": float(x), "true_drop": -sim.true_delta, **sim.fractions, "se": sim.median_se,
                     "detectable": sim.median_detectable})
    return rows


def noise_added(folds: Sequence[FoldPredictions], scale: float, rng: np.random.Generator,
                per: str = "segment") -> list[FoldPredictions]:
    """Every seed's predictions plus Gaussian noise of standard deviation ``scale`` × the label's standard
    deviation on the fold's test segments: independent per segment and label (``per="segment"``: the expected
    R² drop is ``scale²``), or one offset per label and seed (``per="model"``: a model-level error, what a
    different training run makes and test-segment resampling cannot see)."""
    out = []
    for f in folds:
        sd = f.labels.std(axis=0)
        shape = f.predictions.shape if per == "segment" else (f.predictions.shape[0], 1, f.predictions.shape[2])
        if per not in ("segment", "model"):
            raise ValueError(f"per: expected 'segment' or 'model', got {per!r}")
        out.append(FoldPredictions(f.segment_ids, f.labels, f.predictions + rng.normal(0.0, 1.0, shape) * scale * sd))
    return out


def _subset(f: FoldPredictions, rows: np.ndarray, ids: list[str]) -> FoldPredictions:
    order = np.argsort(ids, kind="stable")
    rows = rows[order]
    return FoldPredictions(tuple(ids[i] for i in order), f.labels[rows], f.predictions[:, rows])
