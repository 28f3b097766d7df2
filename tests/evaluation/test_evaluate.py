"""Evaluation: metrics on hand-checkable arrays, bootstrap CIs, patient-level folds, and proof that calibration and
the operating point never see the test fold."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import average_precision_score, cohen_kappa_score, roc_auc_score

from pipeline.evaluation.metrics import _ap_vectorized, _auc_vectorized, _kappa_quadratic_vectorized, binary_metrics, choose_threshold, exam_average, expected_calibration_error, multiclass_metrics
from pipeline.evaluation.splits import patient_stratified_folds
from pipeline.training.cv import cross_validate, subgroup_metrics
from pipeline.model.estimators import PatientCalibratedClassifier, WeightedXGBClassifier


def test_binary_metrics_hand_checked():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = binary_metrics(y, p, call=p >= 0.3, n_resamples=0)
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered correctly
    assert m["pr_auc"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)  # AP: R steps 0.5 at P=1, 0.5 at P=2/3
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["sens_at_target"] == 1.0 and m["spec_at_target"] == 0.5  # calls: 0.4 and 0.35, 0.8 positive
    assert np.isnan(m["roc_auc_ci_low"])  # no resamples, no interval


def test_vectorized_bootstrap_statistics_equal_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 2, 40)
        p = np.round(rng.random(40), 1)  # ties
        a, b = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
        assert _auc_vectorized(y, p) == pytest.approx(roc_auc_score(y, p))
        assert _ap_vectorized(y, p) == pytest.approx(average_precision_score(y, p))
        assert _kappa_quadratic_vectorized(a, b, 4) == pytest.approx(
            cohen_kappa_score(a, b, weights="quadratic", labels=[0, 1, 2, 3]))


def test_ci_brackets_point_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.35 * y + 0.65 * rng.random(200), 0, 1)
    m = binary_metrics(y, p, p >= 0.5, n_resamples=300)
    for key in ("roc_auc", "pr_auc", "sens_at_target", "spec_at_target"):
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"]
        assert m[f"{key}_ci_high"] - m[f"{key}_ci_low"] < 0.3
    yy = rng.integers(0, 3, 150)
    proba = np.eye(3)[np.where(rng.random(150) < 0.7, yy, rng.integers(0, 3, 150))] * 0.8 + 0.2 / 3
    mm = multiclass_metrics(yy, proba, ["F", "G", "D"], n_resamples=300)
    assert mm["kappa_quadratic_ci_low"] <= mm["kappa_quadratic"] <= mm["kappa_quadratic_ci_high"]
    assert mm["accuracy_ci_low"] <= mm["accuracy"] <= mm["accuracy_ci_high"]


def test_multiclass_metrics_hand_checked():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0]])
    m = multiclass_metrics(y, proba, ["F", "G", "D"], n_resamples=0)
    assert m["accuracy"] == 0.75
    assert m["recall_F"] == 1.0 and m["recall_G"] == 1.0 and m["recall_D"] == 0.5
    assert m["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, [0, 1, 1, 2], weights="quadratic"))
    onehot = np.eye(3)[y]
    assert m["brier"] == pytest.approx(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def test_ece_hand_checked():
    # two bins: confidences 0.9 (3 right of 4: acc .75) and 0.6 (1 right of 2: acc .5)
    proba = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    y = np.array([0, 0, 0, 1, 1, 0])
    expected = 4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(0.5 - 0.6)
    assert expected_calibration_error(y, proba, n_bins=10) == pytest.approx(expected)


def test_choose_threshold_reaches_target_on_validation():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.25, 0.5, 0.7, 0.8, 0.9])
    t = choose_threshold(y, s, 0.8)
    assert t == 0.5  # 4 of 5 positives >= 0.5, the highest such threshold
    assert (s[y == 1] >= t).mean() >= 0.8
    assert choose_threshold(y, s, 1.0) == 0.25


def test_subgroups_split_by_density():
    y = np.array([0, 1, 0, 1, 0, 1])
    proba = np.column_stack([1 - np.linspace(0.1, 0.9, 6), np.linspace(0.1, 0.9, 6)])
    call = proba[:, 1] >= 0.5
    dens = ["D", "D", "F", "G", None, "D"]
    m = subgroup_metrics("malignancy", y, proba, call, dens, ["D"], ["benign", "malignant"], n_resamples=0)
    assert m["dense_n"] == 3 and m["nondense_n"] == 2  # the unknown density is in neither


def test_exam_average_pools_each_exams_images_and_only_those():
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    exams = ["e1", "e1", "e2", "e3"]
    out = exam_average(proba, exams)
    assert np.allclose(out[0], [0.5, 0.15, 0.35]) and np.allclose(out[0], out[1])
    assert np.allclose(out[2:], proba[2:])  # single-image exams are unchanged
    assert np.allclose(out.sum(axis=1), 1.0)
    # one confident wrong view is outvoted by the exam's other views: argmax follows the exam
    views = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.25, 0.75]])
    assert (exam_average(views, ["a"] * 4).argmax(axis=1) == 1).all()
    with pytest.raises(ValueError, match="exams has 2 entries"):
        exam_average(proba, ["e1", "e2"])


def test_patient_folds_never_split_a_patient():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 2)
    y = np.repeat(rng.integers(0, 2, 40), 2)
    folds = patient_stratified_folds(y, groups, 5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen) == list(range(80))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
    again = patient_stratified_folds(y, groups, 5, seed=0)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))


class CallLog(list):
    """A list of (kind, row ids) that every clone of a RecordingClassifier shares (clone deep-copies parameters)."""

    def __deepcopy__(self, memo):
        return self


class RecordingClassifier(ClassifierMixin, BaseEstimator):
    """Logistic-like scorer on column 1 that records the row ids (column 0) it is fitted on and scores."""

    def __init__(self, log=None):
        self.log = log

    def fit(self, X, y):
        self.log.append(("fit", set(X[:, 0].astype(int))))
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        self.log.append(("predict", set(X[:, 0].astype(int))))
        p = 1 / (1 + np.exp(-X[:, 1]))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]


def test_single_model_calibration_maps_held_out_and_new_scores_alike():
    # RecordingClassifier's score does not depend on its training rows, so an inner member's held-out score equals
    # the whole-fold model's score of the same row: with ensemble=False the operating point is chosen on exactly the
    # probabilities new rows get; sklearn's ensemble (mean of the inner members) gives new rows other probabilities
    rng = np.random.default_rng(0)
    n = 120
    groups = np.repeat(np.arange(n // 2), 2)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    X = np.column_stack([np.arange(n), 2.0 * y - 1 + rng.normal(0, 1.5, n)])
    log = CallLog()
    single = PatientCalibratedClassifier(RecordingClassifier(log), inner_folds=3, random_state=0, ensemble=False)
    single.fit(X, y, groups)
    fits = [rows for kind, rows in log if kind == "fit"]
    assert len(fits) == 4 and fits[-1] == set(range(n))  # three inner members, then one model on every row
    val = single.validation_index_
    assert np.allclose(single.predict_proba(X[val]), single.validation_proba_)
    assert single.base_estimators() == [single.scorer_]
    ens = PatientCalibratedClassifier(RecordingClassifier(CallLog()), inner_folds=3, random_state=0, ensemble=True)
    ens.fit(X, y, groups)
    assert not np.allclose(ens.predict_proba(X[ens.validation_index_]), ens.validation_proba_, atol=1e-3)
    assert len(ens.base_estimators()) == 3


@pytest.mark.parametrize("holdout, ensemble", [("cv", False), ("cv", True), ("split", False)])
def test_calibration_and_threshold_never_see_the_test_fold(holdout, ensemble):
    rng = np.random.default_rng(0)
    n = 80
    groups = np.repeat(np.arange(n // 2), 2)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    X = np.column_stack([np.arange(n), 2.0 * y - 1 + rng.normal(0, 1.0, n)])
    folds = patient_stratified_folds(y, groups, 4, seed=0)
    for tr, te in folds[:2]:
        log = CallLog()
        clf = PatientCalibratedClassifier(RecordingClassifier(log), holdout=holdout, inner_folds=3, random_state=0,
                                          ensemble=ensemble)
        clf.fit(X[tr], y[tr], groups=groups[tr])
        touched = set().union(*(rows for _, rows in log))
        assert touched  # every clone of the base shares the log
        assert touched <= set(tr)  # base fits, calibrator inputs: training rows only
        assert not touched & set(te)
        assert set(tr[clf.validation_index_]) <= set(tr)  # the operating point's rows
        # calibration held out by patient: no patient is both in a base fit and its own calibration rows
        fits = [rows for kind, rows in log if kind == "fit"]
        scored = [rows for kind, rows in log if kind == "predict"]
        for fit_rows, cal_rows in zip(fits, scored):
            assert not {g for g in groups[list(fit_rows)]} & {g for g in groups[list(cal_rows)]}
        # changing every test row leaves the fitted threshold unchanged
        X2 = X.copy()
        X2[te, 1] = rng.normal(0, 5, len(te))
        y2 = y.copy()
        y2[te] = 1 - y2[te]
        clf2 = PatientCalibratedClassifier(RecordingClassifier(CallLog()), holdout=holdout, inner_folds=3,
                                           random_state=0, ensemble=ensemble)
        clf2.fit(X2[tr], y2[tr], groups=groups[tr])
        assert clf2.threshold_ == clf.threshold_


def test_cross_validate_separable_beats_chance_and_sums_to_one():
    rng = np.random.default_rng(0)
    n = 80
    groups = np.repeat(np.arange(n // 2), 2)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    X = rng.normal(0, 1, (n, 5))
    X[:, 0] += 3.0 * y
    folds = patient_stratified_folds(y, groups, 4, seed=0)
    est = PatientCalibratedClassifier(WeightedXGBClassifier(n_estimators=20, max_depth=2), inner_folds=2)
    cv = cross_validate(lambda: clone(est), X, y, groups, folds, fit_groups_param="groups")
    assert np.allclose(cv.proba.sum(axis=1), 1.0)
    assert (cv.fold >= 0).all()
    m = binary_metrics(y, cv.proba[:, 1], cv.call, n_resamples=0)
    assert m["roc_auc"] > 0.9
    assert m["sens_at_target"] >= 0.85
    assert np.isfinite(cv.fold_thresholds).all()
