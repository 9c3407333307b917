"""Evaluation metrics of the original (docs/original.md#metric), in numpy, without scikit-learn.

* :func:`r2` / :func:`r2_per_label`: ``sklearn.metrics.r2_score`` with its defaults (``multioutput=
  'uniform_average'``, ``force_finite=True``): per label ``1 - SS_res / SS_tot`` with the label's mean over the
  evaluated split, then the unweighted mean over labels. A label whose targets are constant scores 1.0 if
  predicted exactly, else 0.0 (sklearn's finite convention). Inputs are cast to float64 first (recent sklearn
  sums in the input dtype, so float32 inputs agree with it to ~1e-6, float64 inputs to rounding).
* :func:`mse`: ``mean_squared_error`` (mean over all samples and labels).
* :func:`std_score`: the original "std evaluation": per label, the percentage of predictions lying within
  ``k`` x the annotators' rating std of the target (bounds inclusive), for k in 1, 0.5, 0.1.
"""
from __future__ import annotations

import numpy as np

STD_SCORE_RANGES = {"std_score_1": 1.0, "std_score_05": 0.5, "std_score_01": 0.1}


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a (n_samples, n_labels) array, got shape {a.shape}")
    return a


def _check(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = _as_2d(y_true, "y_true").astype(np.float64)
    p = _as_2d(y_pred, "y_pred").astype(np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    if t.shape[0] < 2:
        raise ValueError("R2 needs at least two samples")
    return t, p


def r2_per_label(y_true, y_pred) -> np.ndarray:
    """R2 of each label (column), as ``r2_score(..., multioutput='raw_values')``."""
    t, p = _check(y_true, y_pred)
    num = ((t - p) ** 2).sum(axis=0)
    den = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    out = np.ones(t.shape[1], dtype=np.float64)
    nonzero_den = den != 0
    out[nonzero_den] = 1.0 - num[nonzero_den] / den[nonzero_den]
    out[~nonzero_den & (num != 0)] = 0.0
    return out


def r2(y_true, y_pred) -> float:
    """Uniform average over labels of the per-label R2 (the number the paper reports per fold)."""
    return float(r2_per_label(y_true, y_pred).mean())


def r2_flat(y_true, y_pred) -> float:
    """R2 of the flattened arrays (the original's logged ``R2flat``)."""
    t, p = _check(y_true, y_pred)
    return r2(t.reshape(-1), p.reshape(-1))


def mse_per_label(y_true, y_pred) -> np.ndarray:
    t, p = _check(y_true, y_pred)
    return ((t - p) ** 2).mean(axis=0)


def mse(y_true, y_pred) -> float:
    return float(mse_per_label(y_true, y_pred).mean())


def std_score_per_label(y_true, y_pred, label_std, k: float) -> np.ndarray:
    """Percentage (0-100) of samples with ``|pred - true| <= k * std`` per label (the original tests
    ``true - k*std <= pred <= true + k*std``; both bounds inclusive)."""
    t, p, s = _as_2d(y_true, "y_true"), _as_2d(y_pred, "y_pred"), _as_2d(label_std, "label_std")
    if not t.shape == p.shape == s.shape:
        raise ValueError(f"shapes differ: y_true {t.shape}, y_pred {p.shape}, label_std {s.shape}")
    within = (p >= t - k * s) & (p <= t + k * s)
    return within.mean(axis=0) * 100.0


def std_score(y_true, y_pred, label_std, k: float) -> float:
    """Mean over labels of :func:`std_score_per_label` (the original's ``std_score_{1,05,01}``)."""
    return float(std_score_per_label(y_true, y_pred, label_std, k).mean())


def evaluate_predictions(y_true, y_pred, label_std=None) -> dict:
    """All metrics the original logs for one split, as plain floats/lists (JSON-ready)."""
    t, p = _check(y_true, y_pred)
    out = {
        "r2": r2(t, p),
        "r2_flat": r2_flat(t, p),
        "mse": mse(t, p),
        "per_label_r2": r2_per_label(t, p).tolist(),
        "per_label_mse": mse_per_label(t, p).tolist(),
        "n": int(t.shape[0]),
    }
    if label_std is not None:
        for name, k in STD_SCORE_RANGES.items():
            per = std_score_per_label(t, p, label_std, k)
            out[name] = float(per.mean())
            out[f"per_label_{name}"] = per.tolist()
    return out
