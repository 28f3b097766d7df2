"""Ordinal density decisions: cut-points on the expected class fitted on training data only
(pipeline.evaluation.ordinal)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, recall_score
from sklearn.model_selection import cross_val_predict

from pipeline.evaluation.ordinal import apply_cutpoints, expected_index, fit_cutpoints, quadratic_kappa
from tests._ordinal import ordinal_problem


def test_ordinal_decision_raises_rare_class_recall_without_losing_kappa():
    X, y = ordinal_problem(4000, seed=0)
    train, test = np.arange(2000), np.arange(2000, 4000)
    model = LogisticRegression(max_iter=1000)
    inner = cross_val_predict(model, X[train], y[train], cv=3, method="predict_proba")  # training data only
    cuts = fit_cutpoints(y[train], inner)
    proba = model.fit(X[train], y[train]).predict_proba(X[test])
    argmax, ordinal = proba.argmax(axis=1), apply_cutpoints(proba, cuts)
    k_arg = cohen_kappa_score(y[test], argmax, weights="quadratic")
    k_ord = cohen_kappa_score(y[test], ordinal, weights="quadratic")
    r_arg = recall_score(y[test], argmax, average=None)
    r_ord = recall_score(y[test], ordinal, average=None)
    assert k_ord >= k_arg
    assert r_ord[0] > r_arg[0] + 0.05 and r_ord[3] > r_arg[3] + 0.05  # the rare extremes A and D


def test_cutpoints_are_increasing_and_a_start_at_half_integers_reproduces_rounding():
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(4), size=300)
    y = rng.integers(0, 4, 300)
    cuts = fit_cutpoints(y, proba)
    assert cuts.shape == (3,) and np.all(np.diff(cuts) > 0)
    e = expected_index(proba)
    assert np.array_equal(apply_cutpoints(proba, [0.5, 1.5, 2.5]), np.clip(np.ceil(e - 0.5), 0, 3).astype(int))


def test_fitted_cutpoints_never_score_below_the_start_on_their_own_data():
    rng = np.random.default_rng(2)
    y = rng.choice(3, size=200, p=[0.2, 0.6, 0.2])
    proba = rng.dirichlet(np.ones(3), size=200) * 0.5 + np.eye(3)[y] * 0.5
    start = quadratic_kappa(y, apply_cutpoints(proba, [0.5, 1.5]), 3)[0]
    fitted = quadratic_kappa(y, apply_cutpoints(proba, fit_cutpoints(y, proba)), 3)[0]
    assert fitted >= start
    assert quadratic_kappa(y, apply_cutpoints(proba, [0.5, 1.5]), 3)[0] == pytest.approx(
        cohen_kappa_score(y, apply_cutpoints(proba, [0.5, 1.5]), weights="quadratic"))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="K-1"):
        apply_cutpoints(np.full((2, 3), 1 / 3), [0.5])
    with pytest.raises(ValueError, match="rows"):
        fit_cutpoints([0, 1, 2], np.full((2, 3), 1 / 3))

