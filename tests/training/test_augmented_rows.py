"""Rows that only train (training-time copies of images): they fit the models, never calibrate them or set an
operating point, and never train a model that scores their own patient's originals."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from pipeline.evaluation.splits import patient_stratified_folds, train_only_folds


class _Counting(ClassifierMixin, BaseEstimator):
    """A logistic regression that records how many rows it was fitted on."""

    def fit(self, X, y):
        self.n_fit_ = len(y)
        self.model_ = LogisticRegression().fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(X)

    def predict(self, X):
        return self.model_.predict(X)


def _data(n_patients: int = 60, seed: int = 0):
    """Two images per patient, the label learnable from the first column, and a noisy copy of every image."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), 2).astype(str)
    y = np.repeat(rng.integers(0, 2, n_patients), 2)
    X = rng.normal(size=(len(y), 4)) + y[:, None] * np.array([1.5, 0, 0, 0])
    copies = X + rng.normal(scale=0.3, size=X.shape)
    Xa = np.vstack([X, copies])
    ya, ga = np.concatenate([y, y]), np.concatenate([groups, groups])
    aug = np.r_[np.zeros(len(y), bool), np.ones(len(y), bool)]
    return X, y, groups, Xa, ya, ga, aug


def test_train_only_folds_hold_out_originals_only_and_keep_copies_with_their_patient():
    X, y, groups, Xa, ya, ga, aug = _data()
    folds = train_only_folds(ya, ga, aug, 3, seed=0)
    held = np.concatenate([va for _, va in folds])
    assert sorted(held) == list(range(len(y)))  # every original held out once, no copy ever
    for tr, va in folds:
        assert not set(ga[tr]) & set(ga[va])  # no patient on both sides: a copy never trains on its original's fold
        assert aug[tr].sum() == (~aug[tr]).sum()  # the training side carries its patients' copies
    # the held-out sides are the folds the originals alone would give
    plain = patient_stratified_folds(y, groups, 3, 0)
    assert [sorted(va) for _, va in folds] == [sorted(va) for _, va in plain]


@pytest.mark.parametrize("holdout, ensemble", [("cv", True), ("cv", False), ("split", True)])
def test_copies_train_the_members_but_never_calibrate_or_set_the_threshold(holdout, ensemble):
    from pipeline.model.estimators import PatientCalibratedClassifier

    X, y, groups, Xa, ya, ga, aug = _data()
    clf = PatientCalibratedClassifier(_Counting(), holdout=holdout, ensemble=ensemble, inner_folds=3)
    clf.fit(Xa, ya, groups=ga, augmented=aug)
    assert clf.validation_index_.max() < len(y)  # held-out rows: originals only
    plain = PatientCalibratedClassifier(_Counting(), holdout=holdout, ensemble=ensemble, inner_folds=3)
    plain.fit(X, y, groups=groups)
    assert np.array_equal(np.sort(clf.validation_index_), np.sort(plain.validation_index_))
    if holdout == "cv" and ensemble:  # each member fitted on its training originals and their copies
        members = [m.estimator.n_fit_ for m in clf.calibrated_.calibrated_classifiers_]
        plain_members = [m.estimator.n_fit_ for m in plain.calibrated_.calibrated_classifiers_]
        assert members == [2 * n for n in plain_members]
    elif holdout == "cv":
        assert clf.scorer_.n_fit_ == len(ya)
    else:
        assert clf.calibrated_.estimator.estimator.n_fit_ == 2 * plain.calibrated_.estimator.estimator.n_fit_
    assert not np.allclose(clf.validation_proba_, plain.validation_proba_)  # the copies changed the fit
    p = clf.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_no_copies_give_the_same_fit_as_no_mask():
    from pipeline.model.estimators import PatientCalibratedClassifier

    X, y, groups, *_ = _data()
    a = PatientCalibratedClassifier(_Counting()).fit(X, y, groups=groups)
    b = PatientCalibratedClassifier(_Counting()).fit(X, y, groups=groups, augmented=np.zeros(len(y), bool))
    np.testing.assert_array_equal(a.validation_proba_, b.validation_proba_)
    assert a.threshold_ == b.threshold_


def test_a_bad_mask_is_refused_with_what_to_do():
    from pipeline.model.estimators import PatientCalibratedClassifier

    X, y, groups, *_ = _data()
    with pytest.raises(ValueError, match="boolean array of one entry per row"):
        PatientCalibratedClassifier(_Counting()).fit(X, y, groups=groups, augmented=np.zeros(3, bool))
    with pytest.raises(ValueError, match="mark only the copies"):
        PatientCalibratedClassifier(_Counting()).fit(X, y, groups=groups, augmented=np.ones(len(y), bool))


def test_the_mask_reaches_the_classifier_through_a_pipeline_and_the_tile_score_choice():
    from pipeline.model.choice import LastColumnsChoice
    from pipeline.model.estimators import PatientCalibratedClassifier
    from pipeline.model.routing import fit_with_groups, request_groups

    X, y, groups, Xa, ya, ga, aug = _data()
    for clf in (PatientCalibratedClassifier(_Counting()), LastColumnsChoice(PatientCalibratedClassifier(_Counting()),
                                                                            n_drop=1)):
        pipe = fit_with_groups(Pipeline([("classifier", request_groups(clf))]), Xa, ya, ga, aug)
        assert pipe.named_steps["classifier"].validation_index_.max() < len(y)


def test_an_exam_model_sets_its_operating_points_on_originals_alone():
    from pipeline.model.estimators import PatientCalibratedClassifier
    from pipeline.model.exam import ExamModel
    from pipeline.model.routing import request_groups

    X, y, groups, Xa, ya, ga, aug = _data()
    side = np.tile(["L", "R"], len(y) // 2)
    exams = pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(ya))], "patient_id": ga,
                          "exam_id": np.r_[groups, [g + "~copy" for g in groups]],
                          "laterality": np.r_[side, side], "view": "CC"})
    image = Pipeline([("classifier", request_groups(PatientCalibratedClassifier(_Counting())))])
    model = ExamModel(image, context_C=1.0).fit(Xa, ya, groups=ga, exams=exams, augmented=aug)
    clf = model.pipeline_.named_steps["classifier"]
    assert clf.validation_index_.max() < len(y)
    lv = model.predict_levels(X, exams=exams.iloc[: len(y)])
    assert lv.images["p"].between(0, 1).all() and len(lv.exams) == len(np.unique(groups))
