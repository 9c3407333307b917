"""percepiano.metrics against scikit-learn and against hand-computed std-scores."""
from __future__ import annotations

import numpy as np
import pytest

from percepiano import metrics as M

sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is needed to compare against it")

F64_TOL = 1e-12  # float64 inputs: same formula, rounding only
F32_TOL = 1e-6  # float32 inputs: recent sklearn sums in float32, we in float64


@pytest.fixture
def yp():
    rng = np.random.default_rng(0)
    y = rng.uniform(0.15, 0.95, size=(57, 19))
    p = np.clip(y + rng.normal(0, 0.08, size=y.shape), 0, 1)
    return y, p


def test_r2_matches_sklearn_float64(yp):
    y, p = yp
    assert M.r2(y, p) == pytest.approx(sk.r2_score(y, p), abs=F64_TOL)
    np.testing.assert_allclose(M.r2_per_label(y, p), sk.r2_score(y, p, multioutput="raw_values"), rtol=0, atol=F64_TOL)
    assert M.r2_flat(y, p) == pytest.approx(sk.r2_score(y.reshape(-1), p.reshape(-1)), abs=F64_TOL)
    assert M.mse(y, p) == pytest.approx(sk.mean_squared_error(y, p), abs=F64_TOL)
    np.testing.assert_allclose(
        M.mse_per_label(y, p), sk.mean_squared_error(y, p, multioutput="raw_values"), rtol=0, atol=F64_TOL
    )


def test_r2_matches_sklearn_float32(yp):
    y, p = (a.astype(np.float32) for a in yp)
    assert M.r2(y, p) == pytest.approx(sk.r2_score(y, p), abs=F32_TOL)
    np.testing.assert_allclose(M.r2_per_label(y, p), sk.r2_score(y, p, multioutput="raw_values"), rtol=0, atol=F32_TOL)


def test_r2_bad_predictions_are_negative_and_match(yp):
    y, _ = yp
    p = np.full_like(y, 0.9)
    assert M.r2(y, p) < -1
    assert M.r2(y, p) == pytest.approx(sk.r2_score(y, p), abs=F64_TOL)


def test_r2_constant_label_follows_sklearn_force_finite():
    y = np.array([[0.5, 0.1], [0.5, 0.4], [0.5, 0.7]])
    exact = np.array([[0.5, 0.2], [0.5, 0.4], [0.5, 0.6]])
    wrong = np.array([[0.6, 0.2], [0.5, 0.4], [0.5, 0.6]])
    for p in (exact, wrong):
        np.testing.assert_allclose(M.r2_per_label(y, p), sk.r2_score(y, p, multioutput="raw_values"), atol=F64_TOL)
    assert M.r2_per_label(y, exact)[0] == 1.0 and M.r2_per_label(y, wrong)[0] == 0.0


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        M.r2(np.zeros((4, 19)), np.zeros((4, 18)))
    with pytest.raises(ValueError, match="two samples"):
        M.r2(np.zeros((1, 19)), np.zeros((1, 19)))


def test_std_score_by_hand():
    # 4 samples, 2 labels; std 0.1 everywhere.
    y = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    s = np.full_like(y, 0.1)
    p = np.array([[0.5, 0.59], [0.55, 0.61], [0.449, 0.3], [0.6, 0.5]])
    # |p - y| label 0: 0, 0.05, 0.051, 0.1 ; label 1: 0.09, 0.11, 0.2, 0
    np.testing.assert_allclose(M.std_score_per_label(y, p, s, 1.0), [100.0, 50.0])  # 0.1 bound is inclusive
    np.testing.assert_allclose(M.std_score_per_label(y, p, s, 0.5), [50.0, 25.0])
    np.testing.assert_allclose(M.std_score_per_label(y, p, s, 0.1), [25.0, 25.0])
    assert M.std_score(y, p, s, 0.5) == pytest.approx(37.5)


def test_std_score_inclusive_bound_exact():
    y = np.array([[0.5], [0.25]])
    s = np.array([[0.25], [0.25]])
    p = np.array([[0.75], [0.0]])  # exactly y + 1*s and y - 1*s (all binary-exact)
    assert M.std_score(y, p, s, 1.0) == 100.0
    assert M.std_score(y, p, s, 0.5) == 0.0


def test_evaluate_predictions_keys(yp):
    y, p = yp
    out = M.evaluate_predictions(y, p, np.full_like(y, 0.15))
    for k in ("r2", "r2_flat", "mse", "per_label_r2", "per_label_mse", "std_score_1", "std_score_05", "std_score_01"):
        assert k in out
    assert len(out["per_label_r2"]) == 19 and out["n"] == 57
    assert out["std_score_1"] >= out["std_score_05"] >= out["std_score_01"]
    assert out["r2"] == pytest.approx(sk.r2_score(y, p), abs=F64_TOL)
