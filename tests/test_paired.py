"""percepiano.paired: the cluster bootstrap of ΔR², against simple cases, a brute-force enumeration and
simulated experiments with known effects."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from percepiano import paired as P
from percepiano.metrics import r2, r2_per_label

EXACT = 1e-12  # float64 sums of a few hundred terms
# Monte Carlo: the standard error of a bootstrap SD from B replicates is about SD / sqrt(2B); at B = 20000 that is
# 0.5 %, so 3 % is six of those.
MC_SD_RTOL = 0.03


def ids_for(n_excerpts: int, players: int, composer: str = "Schubert") -> list[str]:
    """Dataset-style ids PIECE_Nbars_PERFORMER_SEGMENT: every excerpt played by every player."""
    return [f"{composer}_D960_mv{e}_8bars_{p + 1}_{e:02d}" for e in range(n_excerpts) for p in range(players)]


def synthetic_folds(n_excerpts=30, players=3, labels=4, folds=2, seeds=1, skill=0.7, seed=0):
    """Labels with an excerpt effect, a player effect and noise; predictions that explain part of them."""
    rng = np.random.default_rng(seed)
    ids = sorted(ids_for(n_excerpts, players))
    ex = np.array([int(s.split("_")[2][2:]) for s in ids])
    pl = np.array([int(s.split("_")[4]) - 1 for s in ids])
    y = 0.5 + 0.06 * rng.normal(size=(n_excerpts, labels))[ex] + 0.04 * rng.normal(size=(players, labels))[pl] \
        + 0.05 * rng.normal(size=(len(ids), labels))
    out = []
    for _ in range(folds):
        pred = np.stack([y.mean(0) + skill * (y - y.mean(0)) + 0.04 * rng.normal(size=y.shape) for _ in range(seeds)])
        out.append(P.FoldPredictions(tuple(ids), y, pred))
    return out


def with_predictions(folds, fn):
    return [P.FoldPredictions(f.segment_ids, f.labels, fn(f.predictions, f.labels)) for f in folds]


# ---------------------------------------------------------------------------------------------------------- ids
def test_segment_ids_give_excerpt_and_player():
    p = P.parse_segment_id("Beethoven_WoO80_var18_8bars_7_12")
    assert (p.piece, p.bars, p.performer, p.segment) == ("Beethoven_WoO80_var18", "8bars", "7", "12")
    assert p.excerpt == "Beethoven_WoO80_var18_8bars_12" and p.player == "Beethoven_7"
    assert P.parse_segment_id("Schubert_D935_no.3_4bars_Score2_46").player == "Schubert_Score2"
    with pytest.raises(ValueError, match="not PIECE_Nbars_PERFORMER_SEGMENT.*clustering 'segment'"):
        P.parse_segment_id("segment_17")
    ids = ["A_x_8bars_1_01", "A_x_8bars_2_01", "A_x_8bars_1_02", "B_y_8bars_1_01"]
    assert P.cluster_keys(ids, "excerpt") == [("A_x_8bars_01",), ("A_x_8bars_01",), ("A_x_8bars_02",), ("B_y_8bars_01",)]
    assert P.cluster_keys(ids, "performer") == [("A_1",), ("A_2",), ("A_1",), ("B_1",)]
    assert P.cluster_keys(ids, "excerpt+performer")[1] == ("A_x_8bars_01", "A_2")
    c = P.make_clusters(ids, "excerpt+performer")
    assert c.sizes == (3, 3)  # 3 excerpts, 3 players (A_1, A_2, B_1)
    with pytest.raises(ValueError, match="clustering 'piece'"):
        P.cluster_keys(ids, "piece")


def test_cluster_counts_and_weights():
    rng = np.random.default_rng(0)
    counts = P.draw_cluster_counts([5, 3], 50, rng)
    assert counts[0].shape == (50, 5) and counts[1].shape == (50, 3)
    assert (counts[0].sum(axis=1) == 5).all() and (counts[1].sum(axis=1) == 3).all()
    codes = np.array([[0, 2], [4, 0], [4, 1]])
    w = P.segment_weights(counts, codes)
    np.testing.assert_array_equal(w, counts[0][:, [0, 4, 4]] * counts[1][:, [2, 0, 1]])


# ------------------------------------------------------------------------------------------------ weighted R²
def test_weighted_r2_equals_r2_of_repeated_rows():
    rng = np.random.default_rng(1)
    y, p = rng.uniform(0.2, 0.9, (12, 3)), rng.uniform(0.2, 0.9, (12, 3))
    np.testing.assert_allclose(P.weighted_r2_per_label(y, p, np.ones((1, 12)))[0], r2_per_label(y, p), rtol=0, atol=EXACT)
    w = rng.integers(0, 4, size=(6, 12)).astype(float)
    w[:, 0] += 1  # at least two distinct rows per replicate
    w[:, 1] += 1
    got = P.weighted_r2_per_label(y, p, w)
    for b in range(len(w)):
        rows = np.repeat(np.arange(12), w[b].astype(int))
        np.testing.assert_allclose(got[b], r2_per_label(y[rows], p[rows]), rtol=0, atol=EXACT)


def test_weighted_r2_of_a_constant_label_follows_sklearn():
    y = np.array([[0.5, 0.1], [0.5, 0.9], [0.5, 0.4]])
    p = np.array([[0.5, 0.2], [0.5, 0.8], [0.5, 0.4]])
    np.testing.assert_array_equal(P.weighted_r2_per_label(y, p, np.ones((1, 3)))[0, 0], 1.0)  # exact on a constant label
    np.testing.assert_array_equal(P.weighted_r2_per_label(y, p + 0.1, np.ones((1, 3)))[0, 0], 0.0)  # missed: 0
    # a replicate that draws one segment only: every label is constant there
    np.testing.assert_array_equal(P.weighted_r2_per_label(y, p, np.array([[0.0, 3.0, 0.0]]))[0], [1.0, 0.0])


# ----------------------------------------------------------------------------------------- brute force
def brute_force_deltas(new, old, ids, clustering):
    """Every ordered draw of the clusters with replacement (equally likely), the data set it makes by repeating
    rows, and ΔR² (mean over folds) on it with percepiano.metrics.r2: the exact bootstrap distribution."""
    keys = [k[0] for k in P.cluster_keys(ids, clustering)]
    names = sorted(set(keys))
    out, counts = [], []
    for draw in itertools.product(range(len(names)), repeat=len(names)):
        rows = [i for c in draw for i, k in enumerate(keys) if k == names[c]]
        d = [r2(fn.labels[rows], fn.predictions[0][rows]) - r2(fo.labels[rows], fo.predictions[0][rows])
             for fn, fo in zip(new, old)]
        out.append(np.mean(d))
        counts.append(np.bincount(draw, minlength=len(names)))
    return np.array(out), np.array(counts, dtype=float)


def test_bootstrap_equals_brute_force_on_a_tiny_example():
    old = synthetic_folds(n_excerpts=3, players=2, labels=2, folds=2, seed=3)
    new = with_predictions(old, lambda p, y: 0.5 * p + 0.5 * y.mean(0))  # shrunk halfway to the mean
    ids = list(old[0].segment_ids)
    exact, counts = brute_force_deltas(new, old, ids, "excerpt")
    clusters = P.make_clusters(ids, "excerpt")
    assert clusters.sizes == (3,)
    # the engine, fed the enumerated draws as its counts, reproduces every replicate
    d = P.seed_resampled(P.round_r2(new, clusters, [counts]), None) - P.seed_resampled(P.round_r2(old, clusters, [counts]), None)
    # (a draw of one cluster three times leaves labels of two segments: R² near -1300, hence a relative bound)
    np.testing.assert_allclose(d.mean(axis=(1, 2)), exact, rtol=1e-10, atol=EXACT)
    # and its Monte Carlo draws converge to the exact distribution
    cmp = P.paired_comparison(new, old, "excerpt", resamples=20000)
    assert cmp.overall.value == pytest.approx(np.mean([r2(a.labels, a.predictions[0]) - r2(b.labels, b.predictions[0])
                                                       for a, b in zip(new, old)]), abs=EXACT)
    assert cmp.overall.se == pytest.approx(exact.std(), rel=MC_SD_RTOL)
    assert cmp.replicates.mean() == pytest.approx(exact.mean(), abs=3 * exact.std() / math.sqrt(20000))


def test_point_values_are_the_folds_r2():
    old = synthetic_folds(folds=3, seeds=2, seed=4)
    new = with_predictions(old, lambda p, y: p + 0.01)
    cmp = P.paired_comparison(new, old, resamples=200)
    want = np.mean([[r2(f.labels, f.predictions[s]) for s in range(2)] for f in new])
    assert cmp.new_value == pytest.approx(want, abs=EXACT)
    for k, (a, b) in enumerate(zip(new, old)):
        dk = np.mean([r2(a.labels, a.predictions[s]) - r2(b.labels, b.predictions[s]) for s in range(2)])
        assert cmp.per_fold[k].value == pytest.approx(dk, abs=EXACT)
    assert cmp.overall.value == pytest.approx(np.mean([e.value for e in cmp.per_label]), abs=EXACT)


def test_a_round_against_itself_has_a_zero_interval():
    f = synthetic_folds(seeds=3)
    cmp = P.paired_comparison(f, f, resamples=300, paired_seeds=True)  # the same seeds: drawn as pairs
    assert (cmp.overall.value, cmp.overall.low, cmp.overall.high) == (0.0, 0.0, 0.0)
    assert P.decide(cmp.overall, 0.0) == "not worse"
    # drawn independently, the same three seeds differ from themselves by their seed noise
    unpaired = P.paired_comparison(f, f, resamples=300).overall
    assert unpaired.value == 0.0 and unpaired.low < 0 < unpaired.high
    # the interval does not depend on the RNG beyond the seed: same seed, same numbers
    a, b = synthetic_folds(seed=1), synthetic_folds(seed=2)
    assert P.paired_comparison(a, b, resamples=300).overall == P.paired_comparison(a, b, resamples=300).overall


def test_seed_resampling_gives_the_unbiased_seed_variance():
    # no test-segment noise (B replicates of the same values), seeds differing by known amounts
    seed_values = np.array([0.30, 0.34, 0.29, 0.35, 0.32])
    r = np.broadcast_to(seed_values[:, None, None, None], (5, 1, 40000, 1))
    draws = P.draw_seeds(5, 40000, np.random.default_rng(0))
    out = P.seed_resampled(np.asarray(r), draws)[:, 0, 0]
    want = seed_values.var(ddof=1) / 5  # the variance of a mean of 5 seeds
    assert out.var() == pytest.approx(want, rel=2 * MC_SD_RTOL)
    assert P.draw_seeds(1, 10, np.random.default_rng(0)) is None
    np.testing.assert_array_equal(P.seed_resampled(np.asarray(r[:1]), None)[:, 0, 0], 0.30)


def test_paired_comparison_measures_seed_variance():
    old = synthetic_folds(seeds=3, seed=5)
    cmp = P.paired_comparison(old, old, resamples=200)
    per_seed = np.array([np.mean([r2(f.labels, f.predictions[s]) for f in old]) for s in range(3)])
    assert cmp.seed_var_new == pytest.approx(per_seed.var(ddof=1), abs=EXACT)
    assert P.paired_comparison(synthetic_folds(), synthetic_folds(), resamples=200).seed_var_new is None


def test_paired_seeds_measure_the_variance_of_the_per_seed_difference():
    """Seed i of both rounds shares its model (here: the same predictions plus a small change), so the per-seed
    ΔR² varies far less than either round's R²: the planning reads var(ΔR²_seed), not var_new + var_old."""
    from percepiano.gate import plan

    old = synthetic_folds(seeds=4, seed=5)
    rng = np.random.default_rng(9)
    new = with_predictions(old, lambda p, y: p + 0.002 * rng.normal(size=p.shape))
    per_seed = lambda folds: np.array([np.mean([r2(f.labels, f.predictions[s]) for f in folds]) for s in range(4)])  # noqa: E731
    cmp = P.paired_comparison(new, old, resamples=200, paired_seeds=True)
    want = (per_seed(new) - per_seed(old)).var(ddof=1)
    assert cmp.seed_delta_var == pytest.approx(want, abs=EXACT)
    assert cmp.seed_delta_var < 0.05 * (cmp.seed_var_new + cmp.seed_var_old)  # the pairing removes the shared noise
    paired_plan, unpaired_plan = plan(cmp, 0.02), plan(P.paired_comparison(new, old, resamples=200), 0.02)
    assert paired_plan.seed_var_sum == cmp.seed_delta_var and "4 paired seeds" in paired_plan.seed_var_from
    assert unpaired_plan.seed_var_sum == pytest.approx(cmp.seed_var_new + cmp.seed_var_old, abs=EXACT)
    assert P.paired_comparison(new, old, resamples=200).seed_delta_var is None


# ------------------------------------------------------------------------------------------ verdict, planning
def test_three_outcomes():
    e = lambda lo, hi: P.Estimate((lo + hi) / 2, lo, hi, 0.0)  # noqa: E731
    assert P.decide(e(-0.015, 0.01), 0.02) == "not worse"
    assert P.decide(e(-0.02, 0.01), 0.02) == "not worse"  # the bound itself: a drop of exactly the margin is allowed
    assert P.decide(e(-0.05, -0.03), 0.02) == "worse"
    assert P.decide(e(-0.03, -0.01), 0.02) == "inconclusive"
    assert P.decide(e(-0.01, 0.01), 0.0) == "inconclusive"
    with pytest.raises(ValueError, match="margin"):
        P.decide(e(0, 0), -0.1)


def test_minimum_detectable_effect_and_seeds_needed():
    assert P.z_sum(0.95, 0.8) == pytest.approx(1.959964 + 0.841621, abs=1e-6)
    assert P.minimum_detectable_effect(0.01) == pytest.approx(0.028016, abs=1e-6)
    se_test, var_sum, margin = 0.004, 0.0004, 0.02
    n = P.seeds_needed(se_test, var_sum, margin)
    ok = [s for s in range(1, 200) if P.minimum_detectable_effect(P.standard_error(se_test, var_sum, s)) <= margin]
    assert n == ok[0]  # the fewest that suffice, by brute force
    assert P.seeds_needed(0.008, var_sum, margin) is None  # 2.8 x 0.008 > 0.02: seeds cannot help
    assert P.seeds_needed(se_test, 0.0, margin) == 1
    assert P.seeds_needed(se_test, var_sum, 0.0) is None
    # the detectable drop reads the interval's own upper half-width: a skewed interval states a larger one
    sym, skewed = P.Estimate(-0.05, -0.07, -0.03, 0.01), P.Estimate(-0.05, -0.07, -0.02, 0.01)
    assert P.detectable_drop(sym, 0.02) == pytest.approx(0.02 + 0.02 + 0.841621 * 0.01, abs=1e-6)
    assert P.detectable_drop(skewed, 0.02) == pytest.approx(P.detectable_drop(sym, 0.02) + 0.01, abs=EXACT)


def test_round_interval_of_perfect_predictions():
    f = synthetic_folds()
    perfect = with_predictions(f, lambda p, y: np.broadcast_to(y, p.shape).copy())
    iv = P.round_interval(perfect, resamples=200)
    assert (iv.overall.value, iv.overall.low, iv.overall.high) == (1.0, 1.0, 1.0)
    assert iv.n_segments == 90 and iv.clusters == (30,)
    with pytest.raises(ValueError, match="level"):
        P.round_interval(f, level=1.5)


def test_clustering_widens_the_interval_when_segments_share_an_excerpt():
    """Errors shared by the performances of one excerpt: resampling segments alone would understate the noise."""
    old = synthetic_folds(n_excerpts=20, players=6, seed=6)
    rng = np.random.default_rng(7)
    ex_err = rng.normal(0, 0.05, size=(20, 4))
    ex = np.array([int(s.split("_")[2][2:]) for s in old[0].segment_ids])
    new = with_predictions(old, lambda p, y: p + ex_err[ex])  # an error that moves whole excerpts
    by_segment = P.paired_comparison(new, old, "segment", resamples=2000).overall.se
    by_excerpt = P.paired_comparison(new, old, "excerpt", resamples=2000).overall.se
    assert by_excerpt > 1.5 * by_segment


# ---------------------------------------------------------------------------------------- known effects
def test_simulated_experiments_detect_a_large_drop_and_pass_an_equal_round():
    old = synthetic_folds(n_excerpts=40, players=3, seed=8)
    same = P.simulate_verdicts(old, lambda rng, f: f, 40, 0.02, resamples=200)
    assert same.fractions["not worse"] == 1.0 and same.true_delta == 0.0
    noise = P.simulate_verdicts(old, lambda rng, f: P.noise_added(f, 0.5, rng), 60, 0.02, resamples=200)
    stated = noise.median_detectable
    assert stated > 0.02  # the margin plus the interval's half-width plus z_0.8 SE
    assert -noise.true_delta > stated  # the effect exceeds the stated detectable size ...
    assert noise.fractions["worse"] >= P.POWER  # ... so it is detected at least at the stated power
    assert noise.true_delta == pytest.approx(-0.25, abs=0.03)  # noise of sd 0.5 x label sd costs 0.5² of R²


def test_false_alarm_rate_under_the_null_is_at_most_nominal():
    """Two simulated seeds of the same predictions, each with its own per-segment noise: equal in expectation.
    At margin 0, 'worse' must come at most (1 - level) / 2 of the time, plus the binomial spread of the count."""
    old = synthetic_folds(n_excerpts=40, players=3, seed=9)
    experiments = 300
    null = lambda rng, f: P.noise_added(f, 0.3, rng)  # noqa: E731
    sim = P.simulate_verdicts(old, null, experiments, 0.0, make_old=null, resamples=1000)
    nominal = (1 - P.DEFAULT_LEVEL) / 2
    assert sim.fractions["worse"] <= nominal + 2 * math.sqrt(nominal * (1 - nominal) / experiments)


def test_model_level_noise_needs_seeds():
    """A per-model error (what another training run makes) is invisible to one seed and seen with several."""
    old = synthetic_folds(n_excerpts=40, players=3, seed=10)
    one = lambda rng, f: P.noise_added(f, 0.3, rng, per="model")  # noqa: E731

    def three(rng, f):
        tiled = [P.FoldPredictions(x.segment_ids, x.labels, np.repeat(x.predictions, 3, axis=0)) for x in f]
        return P.noise_added(tiled, 0.3, rng, per="model")

    experiments, nominal = 300, (1 - P.DEFAULT_LEVEL) / 2
    blind = P.simulate_verdicts(old, one, 100, 0.0, make_old=one, resamples=200)
    seen = P.simulate_verdicts(old, three, experiments, 0.0, make_old=three, resamples=500, seed=3)
    assert blind.fractions["worse"] > 4 * nominal  # one seed cannot see this noise
    assert seen.fractions["worse"] <= nominal + 2 * math.sqrt(nominal * (1 - nominal) / experiments)
    with pytest.raises(ValueError, match="per"):
        P.noise_added(old, 0.1, np.random.default_rng(0), per="label")


def test_shrink_toward_a_center():
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    np.testing.assert_allclose(P.shrink_toward(p, np.array([0.5, 0.5]), 0.25), [[0.275, 0.725], [0.575, 0.425]], atol=EXACT)
    np.testing.assert_array_equal(P.shrink_toward(p, np.array([0.5, 0.5]), 0.0), p)


def test_resampled_test_sets_keep_copies_apart():
    ids = ids_for(4, 2)
    rows, new_ids = P.resample_test_set(ids, "excerpt", np.random.default_rng(0))
    assert len(rows) == len(ids) and len(set(new_ids)) == len(new_ids)  # every copy is its own cluster
    assert P.make_clusters(new_ids, "excerpt").sizes == (4,)
    assert all(P.parse_segment_id(n).performer == P.parse_segment_id(ids[r]).performer for n, r in zip(new_ids, rows))
    with pytest.raises(ValueError, match="one-dimensional"):
        P.resample_test_set(ids, "excerpt+performer", np.random.default_rng(0))
