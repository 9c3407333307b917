"""Honest non-neural baselines, evaluated exactly like the neural models (per fold, on the fold's test split).

* ``mean``: predict, for every test segment, the per-label mean of the fold's **train** labels.
  Its test R2 is slightly below 0 by construction (the test mean differs from the train mean).
* ``ridge``: ``sklearn.linear_model.Ridge`` on per-segment statistics of the 101 per-note inputs (mean, std,
  10th and 90th percentile of every dim over the segment's notes -> 404 features), standardised with the train
  split's mean/std; ``alpha`` is chosen on the fold's **valid** split (lowest valid MSE, the same criterion the
  neural protocol uses for its checkpoint) from :data:`RIDGE_ALPHAS`, the model refit on train only at that alpha,
  then evaluated on test. Predictions are not clipped.

Both are deterministic: same data -> same numbers.
"""
from __future__ import annotations

import numpy as np

from .constants import BASELINES, N_FOLDS  # noqa: F401 (BASELINES re-exported)
from .data import PercePianoData
from .metrics import mse

RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 5, 13))  # 0.1 ... 1e5, half-decades
STAT_NAMES = ("mean", "std", "p10", "p90")


def segment_statistics(data: PercePianoData) -> np.ndarray:
    """(n_segments, 4 * 101) float64: per-dim mean, std (ddof 0), 10th and 90th percentile over each segment's
    notes (numpy's default linear-interpolation percentile), in the order of :data:`STAT_NAMES`."""
    cache = getattr(data, "_segment_statistics", None)
    if cache is not None:
        return cache
    feats = np.empty((len(data), 4 * data.input.shape[1]), dtype=np.float64)
    for i in range(len(data)):
        x = data.segment_features(i).astype(np.float64)
        p10, p90 = np.percentile(x, [10, 90], axis=0)
        feats[i] = np.concatenate([x.mean(axis=0), x.std(axis=0), p10, p90])
    data._segment_statistics = feats  # computed once per loaded dataset
    return feats


def _fit_ridge(x_train, y_train, alpha):
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha).fit(x_train, y_train)


def _single_thread_blas():
    """One BLAS thread: these 404x404 solves are tiny, and threaded BLAS on a busy machine is ~40x slower.
    (Also makes the numbers independent of the machine's thread count.)"""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()


def fit_predict(name: str, data: PercePianoData, scheme: str, fold: int) -> dict:
    """Fit baseline ``name`` on fold ``fold`` of ``scheme``; predictions (float64) for the valid and test splits
    plus what was chosen."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; available: {list(BASELINES)}")
    tr, va, te = (data.split_indices(scheme, fold, p) for p in ("train", "valid", "test"))
    y = data.labels.astype(np.float64)
    if name == "mean":
        m = y[tr].mean(axis=0)
        return {
            "valid_pred": np.tile(m, (len(va), 1)),
            "test_pred": np.tile(m, (len(te), 1)),
            "chosen": {},
        }
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - sklearn is a declared extra
        raise ValueError("the ridge baseline needs scikit-learn (pip install 'percepiano[baselines]')") from exc
    with _single_thread_blas():
        return _fit_predict_ridge(data, tr, va, te, y)


def _fit_predict_ridge(data, tr, va, te, y) -> dict:
    feats = segment_statistics(data)
    mu = feats[tr].mean(axis=0)
    sd = feats[tr].std(axis=0)
    sd[sd == 0] = 1.0  # constant columns (e.g. the composer one-hot) stay constant (0) after scaling
    z = (feats - mu) / sd
    scores = []
    for alpha in RIDGE_ALPHAS:
        model = _fit_ridge(z[tr], y[tr], alpha)
        scores.append(mse(y[va], model.predict(z[va])))
    best = int(np.argmin(scores))  # first minimum on ties
    alpha = RIDGE_ALPHAS[best]
    model = _fit_ridge(z[tr], y[tr], alpha)
    return {
        "valid_pred": model.predict(z[va]),
        "test_pred": model.predict(z[te]),
        "chosen": {"alpha": alpha, "valid_mse_by_alpha": dict(zip([repr(a) for a in RIDGE_ALPHAS], scores))},
    }


def folds() -> range:
    return range(N_FOLDS)
