"""The multi-view context stage (#15, screening.context): features from the other views of an exam, the fallback
to the single-image score, fitting inside training rows only, and the levels' CV with it."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score

from pipeline.model.context import (FEATURES, apply_context, context_features, cross_fit_context, fit_context,
                                       has_context)


class ScoreColumn(ClassifierMixin, BaseEstimator):
    """A first stage for level CVs: scores = column 0 of X; its 'inner out-of-fold' probabilities = the same."""

    __metadata_request__fit = {"groups": True}  # receives the patients, as the calibrated classifier does

    def fit(self, X, y, groups=None):
        self.classes_, self.threshold_ = np.array([0, 1]), 0.5
        self.validation_index_ = np.arange(len(y))
        self.validation_proba_ = np.column_stack([1 - X[:, 0], X[:, 0]])
        return self

    def predict_proba(self, X):
        return np.column_stack([1 - X[:, 0], X[:, 0]])


def _exams(n: int, seed: int = 0, views=("CC", "MLO")) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """n patients x 2 breasts x views; one breast in three malignant; per-patient brightness confounds the score."""
    rng = np.random.default_rng(seed)
    rows, y, z = [], [], []
    for i in range(n):
        offset = rng.normal(0, 1.5)  # a patient-level shift (e.g. background enhancement) shared by both breasts
        sick = rng.choice(["L", "R", None], p=[1 / 6, 1 / 6, 2 / 3])
        for side in "LR":
            for view in views:
                rows.append({"sample_id": f"p{i}_{side}_{view}", "patient_id": f"p{i}", "laterality": side,
                             "view": view})
                y.append(int(side == sick))
                z.append(offset + 1.0 * (side == sick) + rng.normal(0, 0.5))
    return pd.DataFrame(rows), np.array(y), 1 / (1 + np.exp(-np.array(z)))


def test_features_read_the_other_view_and_the_contralateral_breast():
    t = pd.DataFrame({"sample_id": list("abcdef"), "patient_id": ["p"] * 4 + ["q", "r"],
                      "laterality": ["L", "L", "R", "R", "L", None], "view": ["CC", "MLO", "CC", "MLO", "CC", "CC"]})
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.5, 0.3])
    z = np.log(p / (1 - p))
    f = context_features(p, t)
    assert f.shape == (6, len(FEATURES))
    assert np.allclose(f[:, 0], z)
    assert np.isclose(f[0, 1], z[1] - z[0]) and np.isclose(f[0, 2], z[2] - z[0])  # other view; contralateral CC
    assert np.isclose(f[0, 3], (z[2] + z[3]) / 2 - z[0])  # the contralateral breast's mean
    assert np.isclose(f[3, 2], z[1] - z[3])  # R MLO against L MLO
    assert has_context(f).tolist() == [True] * 4 + [False, False]  # q: one image; r: no laterality
    assert (f[4:, 1:] == 0).all()


def test_an_image_without_other_views_keeps_its_single_image_score():
    t, y, p = _exams(60)
    model = fit_context(p, y, t)
    assert model is not None
    alone = t.iloc[[0]]  # one image of an exam: nothing to compare with
    assert apply_context(model, p[:1], alone)[0] == p[0]
    assert np.array_equal(apply_context(None, p, t), p)  # no model: every image keeps its score
    two = t[t["patient_id"] == "p1"].iloc[:2]  # one breast, two views: the stage applies
    assert not np.allclose(apply_context(model, p[4:6], two), p[4:6])


def test_contralateral_context_learnt_on_training_patients_helps_on_new_ones():
    train, y_tr, p_tr = _exams(150, seed=1)
    test, y_te, p_te = _exams(150, seed=2)
    model = fit_context(p_tr, y_tr, train)
    single, fused = roc_auc_score(y_te, p_te), roc_auc_score(y_te, apply_context(model, p_te, test))
    assert fused > single + 0.1  # the patient shift cancels against the other breast


def test_context_of_a_patient_does_not_depend_on_other_patients_rows():
    t, y, p = _exams(40, seed=3)
    model = fit_context(p, y, t)
    some = t["patient_id"].isin([f"p{i}" for i in range(0, 40, 3)]).to_numpy()
    assert np.allclose(apply_context(model, p, t)[some], apply_context(model, p[some], t[some]))


def test_cross_fit_uses_patient_groups_and_changes_only_rows_with_context():
    t, y, p = _exams(30, seed=4)
    t = pd.concat([t, pd.DataFrame([{"sample_id": "solo", "patient_id": "solo", "laterality": "L", "view": "CC"}])],
                  ignore_index=True)
    y, p = np.append(y, 0), np.append(p, 0.42)
    out = cross_fit_context(p, y, t, t["patient_id"].to_numpy(), folds=3)
    assert out[-1] == 0.42 and not np.allclose(out[:-1], p[:-1])


def test_level_cv_with_context_keeps_patients_whole_and_scores_every_level():
    """cross_validate_levels with the context stage on a tiny estimator exposing inner out-of-fold probabilities."""
    from sklearn.pipeline import Pipeline

    from pipeline.training.levels import cross_validate_levels

    t, y, p = _exams(80, seed=5)
    ev = {"folds": 4, "seed": 0, "target_sensitivity": 0.95, "bootstrap_resamples": 20, "confidence_level": 0.95,
          "ece_bins": 10}
    make = lambda: Pipeline([("classifier", ScoreColumn())])  # noqa: E731
    off = cross_validate_levels(make, p[:, None], y, t, ev, folds=None)
    on = cross_validate_levels(make, p[:, None], y, t, ev, context_C=1.0)
    assert np.allclose(off.oof["p"], p) and "p_context" in on.oof
    assert on.metrics["image_roc_auc"] > off.metrics["image_roc_auc"] + 0.05
    assert on.metrics["exam_n"] == off.metrics["exam_n"] == 80


def test_auto_keeps_the_stage_only_in_folds_where_it_ranks_the_training_images_better():
    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.model.context import context_pays
    from pipeline.training.levels import LevelTracker

    class Fitted:  # a fold's classifier: its inner out-of-fold probabilities are the scores themselves
        def __init__(self, p):
            self.steps = [("classifier", self)]
            self.validation_index_ = np.arange(len(p))
            self.validation_proba_ = np.column_stack([1 - p, p])

    def run(t, y, p):
        tracker = LevelTracker(t, y, 0.95, "mean", context_C=1.0, context_auto=True)
        groups = t["patient_id"].to_numpy()
        for i, (tr, te) in enumerate(patient_stratified_folds(y, groups, 3, seed=0)):
            tracker.on_fold(i, tr, te, Fitted(p[tr]), np.column_stack([1 - p[te], p[te]]))
        return tracker

    t, y, p = _exams(120, seed=6)  # the patient shift: the other breast explains it away
    helped = run(t, y, p)
    assert helped.context_used == [True] * 3
    assert roc_auc_score(y, helped.image_proba(p)) > roc_auc_score(y, p) + 0.05
    # scores that already rank perfectly: the stage cannot rank better, so every fold keeps the first stage
    clean = np.where(y == 1, 0.7, 0.3) + np.random.default_rng(0).normal(0, 0.01, len(y))
    kept = run(t, y, clean)
    assert kept.context_used == [False] * 3 and np.array_equal(kept.image_proba(clean), clean)
    assert not context_pays(y, clean, clean) and context_pays(y, 1 - clean, clean)
