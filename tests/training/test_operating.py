"""Density-aware operating points (pipeline.operating, pipeline.trust): per-group thresholds reach the target in
each group, fall back to the pooled one when a group is too small, and never see the test fold."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from pipeline.evaluation.splits import patient_stratified_folds
from pipeline.config.experiment import resolve_config
from pipeline.model.estimators import PatientCalibratedClassifier
from pipeline.evaluation.operating import apply_group_thresholds, choose_group_thresholds, density_groups
from pipeline.training.trust import FoldTrust
from tests.evaluation.test_evaluate import CallLog, RecordingClassifier


def test_dense_threshold_holds_sensitivity_where_the_pooled_one_does_not():
    rng = np.random.default_rng(0)
    n = 4000
    dense = rng.random(n) < 0.4
    y = (rng.random(n) < 0.3).astype(int)
    # dense breasts hide lesions: malignant scores sit lower there
    p = np.clip(0.25 + 0.45 * y - 0.2 * (dense & (y == 1)) + rng.normal(0, 0.12, n), 0, 1)
    groups = np.where(dense, "dense", "nondense")
    state = choose_group_thresholds(y, p, groups, target_sensitivity=0.95, min_positives=10)
    assert state["groups"]["dense"]["source"] == "group"
    assert state["groups"]["dense"]["threshold"] < state["pooled"]
    thr, why = apply_group_thresholds(state, groups)
    sens_dense_group = (p[dense & (y == 1)] >= thr[dense & (y == 1)]).mean()
    sens_dense_pooled = (p[dense & (y == 1)] >= state["pooled"]).mean()
    assert sens_dense_group >= 0.95 > sens_dense_pooled
    assert "dense threshold" in why[int(np.argmax(dense))]


def test_a_small_group_falls_back_to_the_pooled_threshold_and_says_so():
    y = np.array([0, 1] * 20)
    p = np.linspace(0, 1, 40)
    groups = np.array(["nondense"] * 36 + ["dense"] * 4, dtype=object)
    state = choose_group_thresholds(y, p, groups, target_sensitivity=0.9, min_positives=5)
    assert state["groups"]["dense"]["source"] == "pooled"
    assert state["groups"]["dense"]["threshold"] == state["pooled"]
    assert "only 2 malignant" in state["groups"]["dense"]["reason"]
    thr, why = apply_group_thresholds(state, [None])
    assert thr[0] == state["pooled"] and "unknown" in why[0]
    assert list(density_groups(["D", "F", None, "G"], ["D"])) == ["dense", "nondense", None, "nondense"]


def _fold_trust(X, y, density, tr, te, log):
    config = resolve_config(None, ["dataset.task=malignancy", "evaluation.group_thresholds.min_positives=3"])
    data = SimpleNamespace(y=y, classes=["benign", "malignant"], density=density, dense_classes=["D"])
    groups = np.repeat(np.arange(len(y) // 2), 2)
    clf = PatientCalibratedClassifier(RecordingClassifier(log), inner_folds=3, random_state=0)
    clf.fit(X[tr], y[tr], groups=groups[tr])
    fitting = list(log)  # what the fit touched (the test fold's scoring below is ours, not the fit's)
    trust = FoldTrust(config, data)
    trust.add_fold(tr, te, clf, clf.predict_proba(X[te]))
    return trust, fitting


def test_group_thresholds_and_sets_never_see_the_test_fold():
    rng = np.random.default_rng(0)
    n = 160
    groups = np.repeat(np.arange(n // 2), 2)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    density = np.repeat(rng.choice(["F", "G", "D"], n // 2), 2).astype(object)
    X = np.column_stack([np.arange(n), 2.0 * y - 1 + rng.normal(0, 1.0, n)])
    tr, te = patient_stratified_folds(y, groups, 4, seed=0)[0]
    trust, fitting = _fold_trust(X, y, density, tr, te, CallLog())
    touched = set().union(*(rows for _, rows in fitting))
    assert touched  # the log saw the fit (clones share it)
    assert not touched & set(te)  # no fit or calibration score of the classifier used a test row
    state = trust.fold_states[0]["group_thresholds"]
    assert state["groups"]["dense"]["source"] == "group"  # a real per-group threshold was chosen
    # every test row changed (scores, labels, density): the fold's thresholds and calibration counts stay the same
    X2, y2, d2 = X.copy(), y.copy(), density.copy()
    X2[te, 1] = rng.normal(0, 5, len(te))
    y2[te] = 1 - y2[te]
    d2[te] = np.where(d2[te] == "D", "F", "D")
    other, _ = _fold_trust(X2, y2, d2, tr, te, CallLog())
    assert other.fold_states[0] == trust.fold_states[0]
    # and the test rows got the threshold of their own group
    dense_te = te[density[te] == "D"]
    assert np.allclose(trust.group_threshold[dense_te], state["groups"]["dense"]["threshold"])
    oof = pd.DataFrame(index=range(n))
    trust.add_columns(oof)
    assert set(oof.loc[te, "prediction_set"]) <= {"benign", "malignant", "uncertain: second read",
                                                 "none fits: atypical image, second read"}
