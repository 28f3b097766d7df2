"""Nested choice of the exam stage: which multi-view stage (none, context, context with asymmetry, ...) a training
set earns, decided by patient-grouped inner cross-validation of the whole ExamModel on that set alone.

``ExamSearch(exam_model, candidates).fit(X, y, groups=, exams=)`` splits the training rows into patient-grouped,
stratified inner folds; in each it fits the image pipeline once (the first candidate's ExamModel) and every
candidate's exam stage on it (`ExamModel.with_stage`: the stages differ, the image pipeline does not), scores the
inner test rows with their exam's other views (`score_levels`, the image-with-context probability) and keeps the
ROC AUC. The candidate with the best mean inner AUC (the first among equals; the first where no inner fold could be
fitted, which is warned as GridSearchCV warns) is then fitted on all training rows and serves. So an outer test
fold (benchmarks/quality.py ``--choose screening.context=...``) is seen only by the refitted winner, as with
scikit-learn's GridSearchCV, which cannot do this itself: its candidates are estimators fitted on X alone, while the
exam stage needs each row's exam (breast, view, the other images) beside X.

Why our own: GridSearchCV has no way to route an exam table to the scorer with the test rows, nor to share the image
fit between candidates that differ after it (it would cost one image fit per candidate and inner fold).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import FitFailedWarning
from sklearn.utils.validation import check_is_fitted

from pipeline.model.exam import STAGE_PARAMS, _own_exams, _rows, check_binary

__all__ = ["ExamSearch"]


class ExamSearch(ClassifierMixin, BaseEstimator):
    """The ExamModel whose exam stage (one of `candidates`) ranks inner patient-level folds best (ROC AUC per image,
    with its exam's other views).

    Parameters
    ----------
    exam_model : an unfitted ExamModel (pipeline.model.exam), the template of every candidate.
    candidates : exam-stage parameter sets (keys of pipeline.model.exam.STAGE_PARAMS), e.g.
        ``[{"context_C": None}, {"context_C": 1.0}]``.
    inner_folds : patient-grouped stratified inner folds of each training set.
    random_state : seed of the inner folds.
    """

    def __init__(self, exam_model: Any = None, candidates: Sequence[Mapping[str, Any]] = (),
                 inner_folds: int = 3, random_state: int = 0) -> None:
        self.exam_model = exam_model
        self.candidates = candidates
        self.inner_folds = inner_folds
        self.random_state = random_state

    def fit(self, X: Any, y: Any, *, groups: Any = None, exams: pd.DataFrame | None = None) -> "ExamSearch":
        """Inner CV of every candidate on (X, y) (patient `groups`, one `exams` row per X row), then the best one
        fitted on all of it (`best_estimator_`); `cv_scores_` (n_candidates, inner_folds), `best_index_`."""
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedGroupKFold

        cands = [dict(c) for c in self.candidates]
        if not cands:
            raise ValueError("ExamSearch needs at least one candidate exam stage")
        for c in cands:
            unknown = sorted(set(c) - set(STAGE_PARAMS))
            if unknown:
                raise ValueError(f"a candidate sets {unknown}: candidates set the exam stage only "
                                 f"({', '.join(STAGE_PARAMS)})")
        y = check_binary(self, X, y)
        groups = np.arange(len(y)).astype(str) if groups is None else np.asarray(groups).astype(str)
        exams = (_own_exams(len(y), groups) if exams is None else exams).reset_index(drop=True)
        if len(exams) != len(y):
            raise ValueError(f"exams has {len(exams)} rows but X has {len(y)}; give one exam row per image")
        scores = np.full((len(cands), int(self.inner_folds)), np.nan)
        if len(cands) > 1:
            split = StratifiedGroupKFold(int(self.inner_folds), shuffle=True, random_state=self.random_state)
            for f, (tr, te) in enumerate(split.split(np.zeros(len(y)), y, groups)):
                first = clone(self.exam_model).set_params(**cands[0])
                try:
                    first.fit(_rows(X, tr), y[tr], groups=groups[tr], exams=exams.iloc[tr])
                except ValueError as e:  # as GridSearchCV's error_score=nan: this fold scores nothing
                    warnings.warn(f"ExamSearch: inner fold {f + 1} could not be fitted ({e}); it scores no "
                                  f"candidate", FitFailedWarning, stacklevel=2)
                    continue
                p = first.predict_proba(_rows(X, te))[:, 1]
                yte = (y[te] == first.classes_[1]).astype(int)
                if len(np.unique(yte)) < 2:
                    continue  # an inner test fold of one class ranks nothing
                for j, c in enumerate(cands):
                    m = first if j == 0 else first.with_stage(_rows(X, tr), y[tr], exams.iloc[tr], **c)
                    a = m.image_asymmetry(_rows(X, te)) if m.asymmetry_ is not None else None
                    pc = m.score_levels(p, exams.iloc[te], a).images["p"].to_numpy()
                    scores[j, f] = roc_auc_score(yte, pc)
        self.cv_scores_ = scores
        mean = np.array([np.nanmean(s) if np.isfinite(s).any() else -np.inf for s in scores])
        self.best_index_ = int(np.argmax(mean))  # the first of equal means
        self.best_params_ = cands[self.best_index_]
        final = clone(self.exam_model).set_params(**cands[0]).fit(X, y, groups=groups, exams=exams)
        self.best_estimator_ = final if self.best_index_ == 0 else final.with_stage(X, y, exams, **self.best_params_)
        self.classes_ = self.best_estimator_.classes_
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(self.best_estimator_, name):
                setattr(self, name, getattr(self.best_estimator_, name))
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # an exam stage scores malignant vs not
        return tags

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, 2) the image alone (the chosen ExamModel's)."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """(n,) the more probable class of each image alone."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)
