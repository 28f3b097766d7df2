"""Figures of out-of-fold predictions (matplotlib, Agg): ROC, precision-recall, reliability, confusion."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

__all__ = ["plot_roc", "plot_pr", "plot_reliability", "plot_confusion", "iter_metric_lines"]


# --------------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)
# --------------------------------------------------------------------------------------------------------------------
def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    return fig, ax


def plot_roc(y: np.ndarray, p: np.ndarray, title: str = "ROC (out-of-fold)"):
    """ROC curve figure of positive-class probabilities."""
    from sklearn.metrics import RocCurveDisplay

    fig, ax = _figure()
    RocCurveDisplay.from_predictions(y, p, ax=ax, plot_chance_level=True)
    ax.set_title(title)
    return fig


def plot_pr(y: np.ndarray, p: np.ndarray, title: str = "Precision-recall (out-of-fold)"):
    """Precision-recall curve figure."""
    from sklearn.metrics import PrecisionRecallDisplay

    fig, ax = _figure()
    PrecisionRecallDisplay.from_predictions(y, p, ax=ax, plot_chance_level=True)
    ax.set_title(title)
    return fig


def plot_reliability(y: np.ndarray, proba: np.ndarray, n_bins: int = 10, title: str = "Reliability (out-of-fold)"):
    """Reliability diagram: binary -> positive class; multiclass -> one curve per class (one-vs-rest)."""
    from sklearn.calibration import CalibrationDisplay

    fig, ax = _figure()
    proba = np.asarray(proba)
    if proba.ndim == 1 or proba.shape[1] == 2:
        pp = proba if proba.ndim == 1 else proba[:, 1]
        CalibrationDisplay.from_predictions(y, pp, n_bins=n_bins, ax=ax, name="model")
    else:
        for c in range(proba.shape[1]):
            CalibrationDisplay.from_predictions((np.asarray(y) == c).astype(int), proba[:, c], n_bins=n_bins,
                                                ax=ax, name=f"class {c}", ref_line=(c == 0))
    ax.set_title(title)
    return fig


def plot_confusion(y: np.ndarray, pred: np.ndarray, classes: Sequence[str], title: str = "Confusion (out-of-fold)"):
    """Confusion matrix figure (counts)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = _figure()
    ConfusionMatrixDisplay.from_predictions(y, pred, labels=list(range(len(classes))),
                                            display_labels=[str(c) for c in classes], ax=ax, colorbar=False)
    ax.set_title(title)
    return fig


def iter_metric_lines(values: dict[str, float], keys: Sequence[str]) -> Iterator[str]:
    """'name: value [low, high]' lines for the keys present."""
    for key in keys:
        if key in values:
            lo, hi = values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high")
            ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
            yield f"{key}: {values[key]:.3f}{ci}"
