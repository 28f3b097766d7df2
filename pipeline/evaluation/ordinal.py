"""Ordinal decisions: the call for ordered, imbalanced classes (breast density) from class probabilities.

Arg-max of calibrated probabilities rarely names a rare extreme class (BI-RADS A or D): its probability seldom wins
even when the image is more extreme than most. Ordered classes have a natural one-dimensional score, the expected
class index e = sum_k k p_k; the call is the number of cut-points below e. The K-1 cut-points are fitted to maximise
quadratic-weighted kappa on held-out probabilities of the *training* data (the inner out-of-fold probabilities of
pipeline.model.estimators.PatientCalibratedClassifier), stored in the model card (the ordinal_cutpoints rule) and
applied unchanged at predict time.

    cuts = fit_cutpoints(y_val, proba_val)          # (K-1,) increasing, in expected-index units
    calls = apply_cutpoints(proba_test, cuts)       # (n,) class indices 0..K-1
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["expected_index", "fit_cutpoints", "apply_cutpoints", "quadratic_kappa"]

_MAX_CANDIDATES = 256
_MAX_SWEEPS = 20


def expected_index(proba: np.ndarray) -> np.ndarray:
    """E[class index] of each row of (n, K) probabilities (rows renormalised): (n,) in [0, K-1]."""
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"proba must be (n, K) with K >= 2. Got shape {p.shape} instead.")
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    return p @ np.arange(p.shape[1], dtype=float)


def apply_cutpoints(proba: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """Class index of each row: the number of cut-points strictly below its expected index (ties go down)."""
    e = expected_index(proba)
    c = np.asarray(cuts, dtype=float)
    if c.shape != (np.asarray(proba).shape[1] - 1,):
        raise ValueError(f"cuts must hold K-1 = {np.asarray(proba).shape[1] - 1} values. Got {c.shape} instead.")
    return np.searchsorted(np.sort(c), e, side="left").astype(int)


def quadratic_kappa(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Quadratic-weighted Cohen's kappa of y against each row of pred ((n,) or (m, n)); NaN where undefined."""
    y = np.asarray(y, dtype=int)
    pred = np.atleast_2d(np.asarray(pred, dtype=int))
    n = len(y)
    idx = np.arange(k)
    w = (idx[:, None] - idx[None, :]) ** 2.0
    observed = np.zeros((len(pred), k, k))
    rows = np.repeat(np.arange(len(pred)), n)
    np.add.at(observed, (rows, np.tile(y, len(pred)), pred.ravel()), 1.0)
    hist_y = np.bincount(y, minlength=k).astype(float)
    hist_p = observed.sum(axis=1)
    expected = hist_y[None, :, None] * hist_p[:, None, :] / max(n, 1)
    num = (w * observed).sum(axis=(1, 2))
    den = (w * expected).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1.0 - num / den, np.nan)


def fit_cutpoints(y: Sequence[int], proba: np.ndarray) -> np.ndarray:
    """K-1 increasing cut-points on the expected class index maximising quadratic kappa of (y, calls) on these data.

    Coordinate ascent from the arg-max-like start (0.5, 1.5, ...): each cut in turn moves to the best candidate
    (midpoints between distinct expected indices, at most 256 quantiles) between its neighbours; it stops when a
    sweep changes nothing. A move must strictly raise kappa, so ties keep the start. `y` holds class indices.
    """
    y = np.asarray(y, dtype=int)
    e = expected_index(proba)
    k = np.asarray(proba).shape[1]
    if len(y) != len(e):
        raise ValueError(f"y has {len(y)} entries but proba has {len(e)} rows.")
    cuts = np.arange(k - 1, dtype=float) + 0.5
    if len(y) < 2 or len(np.unique(y)) < 2:
        return cuts
    values = np.unique(e)
    mids = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values
    if len(mids) > _MAX_CANDIDATES:
        mids = np.unique(np.quantile(mids, np.linspace(0, 1, _MAX_CANDIDATES)))
    best = float(quadratic_kappa(y, np.searchsorted(cuts, e, side="left"), k)[0])
    best = -np.inf if np.isnan(best) else best
    for _ in range(_MAX_SWEEPS):
        moved = False
        for j in range(k - 1):
            lo = cuts[j - 1] if j > 0 else -np.inf
            hi = cuts[j + 1] if j < k - 2 else np.inf
            cand = mids[(mids > lo) & (mids < hi)]
            if not len(cand):
                continue
            trial = np.repeat(cuts[None, :], len(cand), axis=0)
            trial[:, j] = cand
            preds = (e[None, :, None] > trial[:, None, :]).sum(axis=2)
            scores = np.nan_to_num(quadratic_kappa(y, preds, k), nan=-np.inf)
            i = int(np.argmax(scores))
            if scores[i] > best + 1e-12:
                best, cuts[j], moved = float(scores[i]), float(cand[i]), True
        if not moved:
            break
    return cuts
