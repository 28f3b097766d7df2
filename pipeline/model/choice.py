"""A feature group kept only where it pays, decided inside each fit from its own training rows.

`LastColumnsChoice` fits a calibrated classifier (`PatientCalibratedClassifier`) twice, on every column and
without the last `n_drop` columns (a feature group the union appends last, e.g. ``screening.tile_scores``), and
keeps the fit whose inner out-of-fold probabilities of its training rows (`validation_proba_`, the same inner
patient folds for both) rank them better by ROC AUC. The test fold of an outer cross-validation is never seen by
the choice, so the CV of a pipeline ending in it is a nested estimate of "add the group where it pays".

Why not GridSearchCV over two pipelines (what ``benchmarks/quality.py --choose`` does): the calibrated classifier
already holds out patient-level inner folds, so its out-of-fold probabilities score each candidate for free; a
search would add another level of folds (3x the fits) and hide the fitted classifier behind ``best_estimator_``
from the screening stages that read its inner out-of-fold probabilities.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["LastColumnsChoice"]


class LastColumnsChoice(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """A calibrated classifier on all columns or on all but the last `n_drop`, whichever ranks its own
    training rows' inner out-of-fold probabilities better (ties keep the fewer columns). Fitted attributes:
    `estimator_` (the kept fit), `keep_columns_` (how many leading columns it reads), `kept_group_` (bool),
    `choice_auc_` ({"with": auc, "without": auc}); `classes_`, `threshold_`, `cutpoints_`, `cutpoints_min_recall_`,
    `validation_index_`, `validation_proba_` and `decide` are the kept fit's. `estimator`: a
    PatientCalibratedClassifier (default) or another classifier with those fitted attributes."""

    def __init__(self, estimator: Any = None, n_drop: int = 0) -> None:
        self.estimator = estimator
        self.n_drop = n_drop

    def fit(self, X: Any, y: Any, groups: Any = None, augmented: Any = None) -> "LastColumnsChoice":
        """Fit both candidates (groups: patient ids for their inner folds; augmented: rows that only train,
        PatientCalibratedClassifier) and keep the better; returns self."""
        from pipeline.model.estimators import PatientCalibratedClassifier

        X, y = validate_data(self, X, y, reset=True, ensure_all_finite="allow-nan")
        n_drop = int(self.n_drop)
        if n_drop < 0 or n_drop >= X.shape[1]:
            raise ValueError(f"LastColumnsChoice: n_drop must be in [0, {X.shape[1] - 1}] for {X.shape[1]} "
                             f"columns; got {self.n_drop!r}.")
        base = self.estimator if self.estimator is not None else PatientCalibratedClassifier()
        extra = {} if augmented is None else {"augmented": augmented}
        full = clone(base).fit(X, y, groups=groups, **extra)
        self.choice_auc_ = {"with": float("nan"), "without": float("nan")}
        keep, chosen = X.shape[1], full
        if n_drop > 0:
            reduced = clone(base).fit(X[:, : X.shape[1] - n_drop], y, groups=groups, **extra)
            self.choice_auc_ = {"with": _inner_auc(full, y), "without": _inner_auc(reduced, y)}
            if not self.choice_auc_["with"] > self.choice_auc_["without"]:  # NaN or a tie: the simpler model
                keep, chosen = X.shape[1] - n_drop, reduced
        self.estimator_, self.keep_columns_ = chosen, int(keep)
        self.kept_group_ = bool(keep == X.shape[1])
        self.classes_ = chosen.classes_
        for name in ("threshold_", "cutpoints_", "validation_index_", "validation_proba_"):
            setattr(self, name, getattr(chosen, name))
        self.cutpoints_min_recall_ = getattr(chosen, "cutpoints_min_recall_", None)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, k) calibrated probabilities of the kept fit, on its columns."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return self.estimator_.predict_proba(X[:, : self.keep_columns_])

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """The kept fit's calls (binary: positive where p >= threshold_)."""
        check_is_fitted(self)
        return self.estimator_.decide(proba)

    def predict(self, X: Any) -> np.ndarray:
        """The class `decide` calls from the calibrated probabilities."""
        calls = self.decide(self.predict_proba(X))  # first: predict_proba raises NotFittedError before classes_
        return self.classes_[calls]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def _inner_auc(fit: Any, y: np.ndarray) -> float:
    """ROC AUC (one-vs-rest macro for several classes) of a fitted calibrated classifier's inner out-of-fold
    probabilities of its own training rows; NaN where those rows hold one class."""
    from sklearn.metrics import roc_auc_score

    yv = np.asarray(y)[fit.validation_index_]
    classes = np.asarray(fit.classes_)
    if len(np.unique(yv)) < 2:
        return float("nan")
    p = np.asarray(fit.validation_proba_, float)
    if len(classes) == 2:
        return float(roc_auc_score(yv == classes[1], p[:, 1]))
    if len(np.unique(yv)) < len(classes):
        return float("nan")
    return float(roc_auc_score(yv, p, multi_class="ovr", labels=classes))
