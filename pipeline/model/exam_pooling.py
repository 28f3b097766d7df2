"""An exam's images pooled before the classifier: density decided from both breasts' features at once, rather than
as the mean of per-image probabilities (benchmarks/quality.py ``--choose exam_pooling=none|mean``).

`ExamMeanRows` reads rows ``[exam code | features]`` (the code a number per exam, e.g. ``pd.factorize`` of the exam
ids) and returns the features, each row replaced by the mean of its exam's rows in the same call (``pool="mean"``)
or as they are (``"none"``: the code dropped). Fitted and applied to whole exams (patient-grouped folds never split
one), every image of an exam is then classified from the same pooled vector: one density call per exam, from both
breasts' features; training rows stay images, so an exam weighs as many rows as it has images, as the per-image
model does.

Why our own: a scikit-learn transformer cannot see group ids beside X (metadata routing passes them to fit, not to
transform), so the code travels as the first column; the pooling is a pandas groupby-mean.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["ExamMeanRows", "with_exam_codes"]


class ExamMeanRows(TransformerMixin, BaseEstimator):
    """(n, 1 + d) rows ``[exam code | features]`` -> (n, d) features, each row its exam's mean (`pool="mean"`) or
    its own (`"none"`)."""

    def __init__(self, pool: str = "mean") -> None:
        self.pool = pool

    def fit(self, X: Any, y: Any = None) -> "ExamMeanRows":
        """Check the rows; nothing is learnt."""
        if self.pool not in ("mean", "none"):
            raise ValueError(f"pool must be 'mean' or 'none'; got {self.pool!r}")
        X = validate_data(self, X, dtype=np.float64)
        if X.shape[1] < 2:
            raise ValueError(f"ExamMeanRows needs rows [exam code | features] (at least 2 columns); got "
                             f"{X.shape[1]} feature(s)")
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The features of each row, pooled over the rows of its exam in `X` (pool="mean")."""
        check_is_fitted(self, "n_features_in_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        features = X[:, 1:]
        if self.pool == "none":
            return features
        return pd.DataFrame(features).groupby(X[:, 0]).transform("mean").to_numpy()


def with_exam_codes(features: np.ndarray, exams: Any) -> np.ndarray:
    """(n, 1 + d): each row's exam code (0, 1, ... in order of first appearance of `exams`, n ids) before its
    features (n, d)."""
    codes = pd.factorize(pd.Series(np.asarray(exams).astype(str)))[0]
    return np.column_stack([codes.astype(np.float64), np.asarray(features, np.float64)])
