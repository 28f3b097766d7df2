"""Metrics of out-of-fold predictions: the operating point, calibration error, bootstrap CIs, exam pooling.

Confidence intervals are percentile bootstrap intervals from ``scipy.stats.bootstrap`` resampling *samples* (paired:
labels and predictions resampled together). With mini-MIAS each patient contributes at most two images (one per
breast) so sample- and patient-level resampling differ little; say "sample-level bootstrap" when quoting them.
The operating point of a malignancy model is chosen inside each training fold (on inner out-of-fold predictions, see
pipeline.model.estimators.PatientCalibratedClassifier) and applied unchanged to the test fold.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics

__all__ = [
    "choose_threshold",
    "expected_calibration_error",
    "bootstrap_ci",
    "binary_metrics",
    "multiclass_metrics",
    "exam_average",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Operating point and calibration
# --------------------------------------------------------------------------------------------------------------------
def choose_threshold(y_true: Sequence[int], score: Sequence[float], target_sensitivity: float = 0.95) -> float:
    """Highest threshold t whose sensitivity (score >= t) on these (validation) data reaches the target."""
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=float)
    if not (y_true == 1).any():
        return 0.5
    if not (y_true == 0).any():
        return float(score[y_true == 1].min())
    fpr, tpr, thr = metrics.roc_curve(y_true, score, drop_intermediate=False)
    idx = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    return float(min(thr[idx], 1.0))


def expected_calibration_error(y_true: Sequence[int], proba: np.ndarray, n_bins: int = 10) -> float:
    """ECE: mean |accuracy - confidence| of the top-label prediction over equal-width confidence bins, weighted by count.

    For a binary problem pass the (n, 2) probabilities or the (n,) positive-class probability with 0/1 labels.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    if proba.ndim == 1:
        proba = np.column_stack([1 - proba, proba])
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def multiclass_brier(y_true: Sequence[int], proba: np.ndarray) -> float:
    """Mean over samples of sum_k (p_k - 1[y = k])^2 (0 = perfect, 2 = worst)."""
    proba = np.asarray(proba, dtype=float)
    onehot = np.eye(proba.shape[1])[np.asarray(y_true, dtype=int)]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


# --------------------------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------------------------
def bootstrap_ci(statistic: Callable[..., float], arrays: Sequence[np.ndarray], *, n_resamples: int = 1000,
                 confidence_level: float = 0.95, seed: int = 0, vectorized: bool = False) -> tuple[float, float]:
    """Percentile bootstrap CI of statistic(*arrays) with scipy.stats.bootstrap, resampling rows of all arrays together.

    `vectorized=True`: statistic(*arrays, axis=-1) handles a batch of resamples at once (NaN where undefined).
    Resamples where the statistic is undefined (e.g. one class only) are dropped. Returns (nan, nan) when
    n_resamples is 0 or too few resamples are defined.
    """
    if n_resamples <= 0:
        return (float("nan"), float("nan"))

    def safe(*xs: np.ndarray) -> float:
        try:
            return float(statistic(*xs))
        except ValueError:
            return float("nan")

    res = stats.bootstrap(tuple(np.asarray(a) for a in arrays), statistic if vectorized else safe, paired=True,
                          vectorized=vectorized,
                          n_resamples=n_resamples, confidence_level=confidence_level, method="percentile",
                          random_state=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isnan(low) or np.isnan(high):
        dist = np.asarray(res.bootstrap_distribution, dtype=float)
        dist = dist[np.isfinite(dist)]
        if dist.size < max(10, n_resamples // 10):
            return (float("nan"), float("nan"))
        alpha = (1 - confidence_level) / 2
        low, high = (float(q) for q in np.quantile(dist, [alpha, 1 - alpha]))
    return low, high


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------
def _sens_spec(y: np.ndarray, call: np.ndarray) -> tuple[float, float]:
    y, call = np.asarray(y), np.asarray(call).astype(bool)
    pos, neg = y == 1, y == 0
    sens = float(call[pos].mean()) if pos.any() else float("nan")
    spec = float((~call[neg]).mean()) if neg.any() else float("nan")
    return sens, spec


def _rate(y: np.ndarray, call: np.ndarray, label: int, axis: int = -1) -> np.ndarray:
    """Vectorized share of rows with y == label whose call equals label (sensitivity: 1, specificity: 0)."""
    sel = np.asarray(y) == label
    hit = sel & ((np.asarray(call) > 0.5) == bool(label))
    n = sel.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hit.sum(axis=axis) / n, np.nan)


def _auc_vectorized(y: np.ndarray, score: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC along `axis` via the Mann-Whitney U statistic of scipy.stats.rankdata (ties averaged, as
    sklearn.metrics.roc_auc_score); NaN where a resample holds one class only."""
    pos = np.asarray(y) == 1
    ranks = stats.rankdata(score, axis=axis)
    n1 = pos.sum(axis=axis)
    n0 = pos.shape[axis] - n1
    u = (ranks * pos).sum(axis=axis) - n1 * (n1 + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def _ap_vectorized(y: np.ndarray, score: np.ndarray, axis: int = -1) -> np.ndarray:
    """Average precision along the last axis, as sklearn.metrics.average_precision_score (one step per distinct
    score): sum over thresholds of (R_n - R_{n-1}) P_n; NaN where a resample holds no positive."""
    y = np.asarray(y)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, axis=-1, kind="stable")
    ys = np.take_along_axis(y, order, axis=-1) == 1
    ss = np.take_along_axis(score, order, axis=-1)
    tp = np.cumsum(ys, axis=-1)
    rank = np.arange(1, ys.shape[-1] + 1)
    end = np.ones(ss.shape, dtype=bool)
    end[..., :-1] = ss[..., :-1] != ss[..., 1:]
    last_end = np.maximum.accumulate(np.where(end, tp, 0), axis=-1)
    before = np.concatenate([np.zeros(last_end.shape[:-1] + (1,), dtype=tp.dtype), last_end[..., :-1]], axis=-1)
    gained = np.where(end, tp - before, 0)
    n1 = tp[..., -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n1 > 0, (gained * tp / rank).sum(axis=-1) / n1, np.nan)


def _kappa_quadratic_vectorized(a: np.ndarray, b: np.ndarray, k: int, axis: int = -1) -> np.ndarray:
    """Quadratic-weighted Cohen's kappa along the last axis, as sklearn.metrics.cohen_kappa_score(weights=
    "quadratic", labels=range(k)); NaN where undefined."""
    eye = np.eye(k)
    oa, ob = eye[np.asarray(a, dtype=int)], eye[np.asarray(b, dtype=int)]
    observed = np.einsum("...ni,...nj->...ij", oa, ob)
    expected = np.einsum("...i,...j->...ij", oa.sum(axis=-2), ob.sum(axis=-2)) / oa.shape[-2]
    idx = np.arange(k)
    weights = (idx[:, None] - idx[None, :]) ** 2
    num = (weights * observed).sum(axis=(-2, -1))
    den = (weights * expected).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1.0 - num / den, np.nan)


def binary_metrics(y_true: Sequence[int], p_pos: Sequence[float], call: Sequence[bool] | None = None, *,
                   n_resamples: int = 1000, confidence_level: float = 0.95, seed: int = 0, ece_bins: int = 10,
                   prefix: str = "") -> dict[str, float]:
    """ROC AUC, PR AUC (average precision) with CIs, Brier, ECE, and sensitivity/specificity of `call` (with CIs).

    `call` is the per-sample decision at the operating point (chosen on validation data, never on these labels).
    Undefined figures (one class only) are NaN.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(p_pos, dtype=float)
    out: dict[str, float] = {f"{prefix}n": float(len(y)), f"{prefix}n_positive": float(y.sum())}
    both = len(np.unique(y)) == 2
    kw = dict(n_resamples=n_resamples, confidence_level=confidence_level, seed=seed)
    for name, fn, vec in (("roc_auc", metrics.roc_auc_score, _auc_vectorized),
                          ("pr_auc", metrics.average_precision_score, _ap_vectorized)):
        if both:
            out[f"{prefix}{name}"] = float(fn(y, p))
            out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = (
                bootstrap_ci(vec, (y, p), vectorized=True, **kw) if vec is not None else bootstrap_ci(fn, (y, p), **kw))
        else:
            out[f"{prefix}{name}"] = out[f"{prefix}{name}_ci_low"] = out[f"{prefix}{name}_ci_high"] = float("nan")
    out[f"{prefix}brier"] = float(metrics.brier_score_loss(y, p, pos_label=1)) if len(y) else float("nan")
    out[f"{prefix}ece"] = expected_calibration_error(y, p, ece_bins) if len(y) else float("nan")
    if call is not None:
        c = np.asarray(call, dtype=bool)
        sens, spec = _sens_spec(y, c)
        out[f"{prefix}sens_at_target"], out[f"{prefix}spec_at_target"] = sens, spec
        for name, label, value in (("sens_at_target", 1, sens), ("spec_at_target", 0, spec)):
            if np.isnan(value):
                out[f"{prefix}{name}_ci_low"] = out[f"{prefix}{name}_ci_high"] = float("nan")
                continue
            stat = lambda yy, cc, axis=-1, _label=label: _rate(yy, cc, _label, axis)  # noqa: E731
            out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = bootstrap_ci(
                stat, (y, c.astype(float)), vectorized=True, **kw)
    return out


def multiclass_metrics(y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str], *,
                       n_resamples: int = 1000, confidence_level: float = 0.95, seed: int = 0,
                       ece_bins: int = 10, prefix: str = "", pred: Sequence[int] | None = None) -> dict[str, float]:
    """Accuracy, quadratic-weighted Cohen's kappa (with CI), per-class recall, multiclass Brier, top-label ECE.

    `y_true` holds class indices into `classes` (ordinal order for the weighted kappa); `proba` is (n, k); `pred`
    the model's calls (class indices, e.g. ordinal cut-points; None = arg-max of proba).
    """
    y = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    labels = list(range(len(classes)))
    pred = proba.argmax(axis=1) if pred is None else np.asarray(pred, dtype=int)
    out: dict[str, float] = {f"{prefix}n": float(len(y))}
    if len(y) == 0:
        return out
    kappa = lambda a, b: metrics.cohen_kappa_score(a, b, weights="quadratic", labels=labels)  # noqa: E731
    out[f"{prefix}accuracy"] = float(metrics.accuracy_score(y, pred))
    out[f"{prefix}accuracy_ci_low"], out[f"{prefix}accuracy_ci_high"] = bootstrap_ci(
        lambda a, b, axis=-1: np.mean(a == b, axis=axis), (y, pred), n_resamples=n_resamples,
        confidence_level=confidence_level, seed=seed, vectorized=True)
    k = float(kappa(y, pred))
    out[f"{prefix}kappa_quadratic"] = k
    if np.isnan(k):
        out[f"{prefix}kappa_quadratic_ci_low"] = out[f"{prefix}kappa_quadratic_ci_high"] = float("nan")
    else:
        out[f"{prefix}kappa_quadratic_ci_low"], out[f"{prefix}kappa_quadratic_ci_high"] = bootstrap_ci(
            lambda a, b, axis=-1: _kappa_quadratic_vectorized(a, b, len(classes), axis), (y, pred),
            n_resamples=n_resamples, confidence_level=confidence_level, seed=seed, vectorized=True)
    recalls = metrics.recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    for cls, r in zip(classes, recalls):
        out[f"{prefix}recall_{cls}"] = float(r)
    out[f"{prefix}brier"] = multiclass_brier(y, proba)
    out[f"{prefix}ece"] = expected_calibration_error(y, proba, ece_bins)
    return out


def exam_average(proba: np.ndarray, exams: Sequence) -> np.ndarray:
    """Each row's probabilities replaced by the mean over the rows of its exam: (n, k) -> (n, k), rows sum to 1.

    Breast density is assessed per examination (BI-RADS gives one category per exam), so a density call from all of
    an exam's images (left and right, CC and MLO) is the clinical unit; `exams` holds one exam id per row. Uses no
    labels: applied to out-of-fold probabilities it stays honest, since an exam's images share their patient's fold.
    """
    proba = np.asarray(proba, dtype=float)
    exams = pd.Series(list(exams), dtype=object)
    if len(exams) != len(proba):
        raise ValueError(f"exams has {len(exams)} entries but proba has {len(proba)} rows.")
    mean = pd.DataFrame(proba).groupby(exams.to_numpy(), dropna=False).transform("mean").to_numpy()
    return mean / np.clip(mean.sum(axis=1, keepdims=True), 1e-12, None)
