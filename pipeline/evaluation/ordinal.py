"""Ordinal decisions: the call for ordered, imbalanced classes (breast density) from class probabilities.

Arg-max of calibrated probabilities rarely names a rare extreme class (BI-RADS A or D): its probability seldom wins
even when the image is more extreme than most. Ordered classes have a natural one-dimensional score, the expected
class index e = sum_k k p_k; the call is the number of cut-points below e. The K-1 cut-points are fitted to maximise
quadratic-weighted kappa on held-out probabilities of the *training* data (the inner out-of-fold probabilities of
pipeline.model.estimators.PatientCalibratedClassifier), stored in the model card (the ordinal_cutpoints rule) and
applied unchanged at predict time.

Kappa alone can still leave a rare extreme class mostly unnamed when the classes overlap (on mini-MIAS subsampled to
20/60/20, recall of D 0.38-0.50). `min_recall` is a floor on the recall of the lowest and the highest class (BI-RADS
A and D; mini-MIAS F and D) on the data the cut-points are fitted on: kappa is maximised only among cut-points that
keep it, as `target_sensitivity` fixes a binary operating point (off by default: on mini-MIAS it held in-fold but
moved out-of-fold recall only on one of two fold seeds, docs/benchmarks.md, section 2). No library fits constrained
ordinal cut-points on given probabilities (mord and statsmodels' OrderedModel fit their own linear model), hence this
module.

    cuts = fit_cutpoints(y_val, proba_val)          # (K-1,) non-decreasing, in expected-index units
    cuts = fit_cutpoints(y_val, proba_val, min_recall=0.5)   # the extremes keep >= 50% recall on (y_val, proba_val)
    calls = apply_cutpoints(proba_test, cuts)       # (n,) class indices 0..K-1
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

__all__ = ["expected_index", "check_min_recall", "extreme_recall_bounds", "extreme_recalls", "keeps_min_recall",
           "fit_cutpoints", "apply_cutpoints", "quadratic_kappa"]

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


def extreme_recall_bounds(y: Sequence[int], e: np.ndarray, k: int, min_recall: float) -> tuple[float, float]:
    """(lo, hi): the first cut-point must be >= lo and the last < hi for classes 0 and k-1 to keep `min_recall`.

    Class 0 is called where e <= the first cut, class k-1 where e > the last; a class absent from `y` sets no bound.
    """
    y = np.asarray(y, dtype=int)
    lo, hi = -np.inf, np.inf
    first, last = np.sort(e[y == 0]), np.sort(e[y == k - 1])
    if len(first):
        lo = float(first[max(int(np.ceil(min_recall * len(first) - 1e-9)), 1) - 1])
    if len(last):
        hi = float(last[len(last) - max(int(np.ceil(min_recall * len(last) - 1e-9)), 1)])
    return lo, hi


def _candidates(e: np.ndarray, lo: float = -np.inf, hi: float = np.inf) -> np.ndarray:
    """Midpoints between distinct expected indices in [lo, hi) (and lo itself where finite), at most 256 quantiles."""
    values = np.unique(e)
    mids = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values
    mids = mids[(mids >= lo) & (mids < hi)]
    if np.isfinite(lo):
        mids = np.union1d(mids, [lo])  # the first cut may sit on a class-0 value (e <= cut is class 0)
    if len(mids) > _MAX_CANDIDATES:
        mids = np.unique(np.quantile(mids, np.linspace(0, 1, _MAX_CANDIDATES)))
    return mids


def _ascent(y: np.ndarray, e: np.ndarray, k: int, cuts: np.ndarray, mids: np.ndarray, lo: float = -np.inf,
            hi: float = np.inf) -> np.ndarray:
    """Coordinate ascent of quadratic kappa from non-decreasing `cuts`, the first kept >= lo and the last < hi."""
    cuts = cuts.astype(float).copy()
    best = float(quadratic_kappa(y, np.searchsorted(cuts, e, side="left"), k)[0])
    best = -np.inf if np.isnan(best) else best
    for _ in range(_MAX_SWEEPS):
        moved = False
        for j in range(k - 1):
            below = cuts[j - 1] if j > 0 else -np.inf
            above = cuts[j + 1] if j < k - 2 else np.inf
            cand = mids[(mids > below) & (mids < above)]
            if j == 0:
                cand = cand[cand >= lo]
            if j == k - 2:
                cand = cand[cand < hi]
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


def extreme_recalls(y: Sequence[int], proba: np.ndarray, cuts: Sequence[float]) -> tuple[float, float]:
    """Recall of the lowest and of the highest class under `cuts` on (y, proba); NaN for a class absent from y."""
    y = np.asarray(y, dtype=int)
    calls = apply_cutpoints(proba, cuts)
    k = np.asarray(proba).shape[1]
    out = []
    for cls in (0, k - 1):
        rows = y == cls
        out.append(float(np.mean(calls[rows] == cls)) if rows.any() else float("nan"))
    return out[0], out[1]


def keeps_min_recall(y: Sequence[int], proba: np.ndarray, cuts: Sequence[float], min_recall: float) -> bool:
    """Whether the lowest and the highest class present in y each keep recall >= min_recall under `cuts`."""
    return all(not r < float(min_recall) for r in extreme_recalls(y, proba, cuts) if not np.isnan(r))


def check_min_recall(value: Any, name: str = "min_recall") -> None:
    """Refuse a recall floor that is not None or a number in (0, 1] (a bool is refused), naming `name`."""
    if value is not None and (isinstance(value, (bool, np.bool_)) or not 0.0 < float(value) <= 1.0):
        raise ValueError(f"{name} must be a float in (0, 1] or None. Got {value!r} instead.")


def fit_cutpoints(y: Sequence[int], proba: np.ndarray, *, min_recall: float | None = None) -> np.ndarray:
    """K-1 non-decreasing cut-points on the expected class index maximising quadratic kappa of (y, calls) on these
    data.

    Coordinate ascent from the arg-max-like start (0.5, 1.5, ...): each cut in turn moves to the best candidate
    (midpoints between distinct expected indices, at most 256 quantiles) between its neighbours; it stops when a
    sweep changes nothing. A move must strictly raise kappa, so ties keep the start. `y` holds class indices.
    `min_recall` (in (0, 1], or None): the lowest and the highest class each keep at least this recall on these
    data. Cut-points fitted for kappa alone that already keep it are returned unchanged; otherwise the ascent restarts
    from them moved inside the region that keeps it (two cuts may then coincide: a middle class left unnamed). Where
    no cut-points can keep it for both classes, a RuntimeWarning says so and kappa alone decides.
    """
    y = np.asarray(y, dtype=int)
    e = expected_index(proba)
    k = np.asarray(proba).shape[1]
    if len(y) != len(e):
        raise ValueError(f"y has {len(y)} entries but proba has {len(e)} rows.")
    check_min_recall(min_recall)
    cuts = np.arange(k - 1, dtype=float) + 0.5
    if len(y) < 2 or len(np.unique(y)) < 2:
        return cuts
    free = _ascent(y, e, k, cuts, _candidates(e))
    if min_recall is None:
        return free
    floor = float(min_recall)
    if keeps_min_recall(y, proba, free, floor):
        return free
    lo, hi = extreme_recall_bounds(y, e, k, floor)
    if not lo < hi:
        warnings.warn(f"No cut-points keep recall >= {floor:g} for both the lowest and the highest class on these "
                      f"{len(y)} rows (their expected indices overlap too much): the cut-points maximise kappa alone.",
                      RuntimeWarning, stacklevel=2)
        return free
    # clipping is monotone, so the kappa cut-points stay in order inside [lo, hi)
    start = np.clip(free, lo, np.nextafter(hi, -np.inf))
    return _ascent(y, e, k, start, _candidates(e, lo, hi), lo, hi)
