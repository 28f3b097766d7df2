"""Ordinal density decisions: cut-points on the expected class fitted on training data only
(pipeline.evaluation.ordinal)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, recall_score
from sklearn.model_selection import cross_val_predict

from pipeline.evaluation.ordinal import (apply_cutpoints, expected_index, extreme_recall_bounds, extreme_recalls,
                                         fit_cutpoints, quadratic_kappa)
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



def _recall(y: np.ndarray, calls: np.ndarray, cls: int) -> float:
    return float(np.mean(calls[y == cls] == cls))


def _overlapping(n: int, seed: int, shares=(0.1, 0.8, 0.1)) -> tuple[np.ndarray, np.ndarray]:
    """(y, proba) of three ordered classes whose expected indices overlap: kappa alone under-calls the extremes."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=list(shares))
    logits = np.outer(y - 1.0, [-1.0, 0.0, 1.0]) * 0.5 + rng.normal(scale=1.0, size=(n, 3))
    logits[:, 1] += 2.0  # the middle class is favoured: its probability dominates
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def test_the_recall_floor_keeps_both_extreme_classes_on_the_fitting_data_at_a_small_kappa_cost():
    y, proba = _overlapping(1000, seed=4)
    free = apply_cutpoints(proba, fit_cutpoints(y, proba))
    assert min(_recall(y, free, 0), _recall(y, free, 2)) < 0.5  # the situation the floor is for
    cuts = fit_cutpoints(y, proba, min_recall=0.5)
    floored = apply_cutpoints(proba, cuts)
    assert _recall(y, floored, 0) >= 0.5 and _recall(y, floored, 2) >= 0.5
    assert np.all(np.diff(cuts) > 0)
    k_free, k_floor = quadratic_kappa(y, free, 3)[0], quadratic_kappa(y, floored, 3)[0]
    assert k_floor <= k_free + 1e-12 and k_floor > k_free - 0.1


def test_the_floor_fitted_on_training_data_carries_to_new_data_from_the_same_source():
    y, proba = _overlapping(4000, seed=5)
    train, test = np.arange(2000), np.arange(2000, 4000)
    free_cuts = fit_cutpoints(y[train], proba[train])
    assert min(extreme_recalls(y[train], proba[train], free_cuts)) < 0.6  # the floor binds on the training data
    free = apply_cutpoints(proba[test], free_cuts)
    floored = apply_cutpoints(proba[test], fit_cutpoints(y[train], proba[train], min_recall=0.6))
    for cls in (0, 2):
        assert _recall(y[test], floored, cls) > 0.55 and _recall(y[test], floored, cls) >= _recall(y[test], free, cls)
    assert min(_recall(y[test], floored, c) for c in (0, 2)) > min(_recall(y[test], free, c) for c in (0, 2)) + 0.1


def test_a_floor_the_kappa_cutpoints_already_keep_returns_them_unchanged():
    X, y = ordinal_problem(2000, seed=6)
    proba = LogisticRegression(max_iter=1000).fit(X, y).predict_proba(X)
    free = fit_cutpoints(y, proba)
    floor = min(extreme_recalls(y, proba, free)) - 0.05
    assert floor > 0.2
    assert np.array_equal(fit_cutpoints(y, proba, min_recall=floor), free)
    assert not np.array_equal(fit_cutpoints(y, proba, min_recall=floor + 0.15), free)  # a binding floor moves them


@pytest.mark.parametrize("k", [2, 4])
def test_the_floor_holds_for_two_and_four_classes(k):
    rng = np.random.default_rng(10 + k)
    y = rng.choice(k, size=800, p=[0.1] + [0.8 / (k - 2)] * (k - 2) + [0.1] if k > 2 else [0.2, 0.8])
    logits = np.outer(y, np.linspace(-1, 1, k)) * 0.6 + rng.normal(size=(800, k))
    logits[:, 1:-1] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert min(extreme_recalls(y, proba, fit_cutpoints(y, proba))) < 0.6
    cuts = fit_cutpoints(y, proba, min_recall=0.6)
    assert cuts.shape == (k - 1,) and np.all(np.diff(cuts) >= 0)
    assert min(extreme_recalls(y, proba, cuts)) >= 0.6


def test_near_equal_bounds_still_keep_the_floor():
    proba = np.array([[0.0, 0.3, 0.7], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])  # expected 1.7, 1.7 + 1 ulp, 1.0
    y = np.array([0, 2, 1])
    cuts = fit_cutpoints(y, proba, min_recall=1.0)
    assert extreme_recalls(y, proba, cuts) == (1.0, 1.0)


@pytest.mark.parametrize("ties", [False, True])
def test_recall_bounds_are_exact_against_brute_force(ties):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 97)
    e = rng.uniform(0, 3, 97)
    if ties:
        e = np.round(e, 1)
    for r in (0.1, 0.33, 0.5, 0.7, 0.9, 1.0):
        lo, hi = extreme_recall_bounds(y, e, 4, r)
        assert np.mean(e[y == 0] <= lo) >= r and np.mean(e[y == 0] <= np.nextafter(lo, -np.inf)) < r
        assert np.mean(e[y == 3] > np.nextafter(hi, -np.inf)) >= r and np.mean(e[y == 3] > hi) < r


def test_an_impossible_floor_warns_and_falls_back_to_kappa_alone():
    rng = np.random.default_rng(8)
    y = np.repeat([0, 1, 2], 50)
    proba = rng.dirichlet(np.ones(3), size=150)  # no signal: the extremes' expected indices coincide
    with pytest.warns(RuntimeWarning, match="recall >= 0.9"):
        cuts = fit_cutpoints(y, proba, min_recall=0.9)
    assert np.array_equal(cuts, fit_cutpoints(y, proba))
    with pytest.raises(ValueError, match="min_recall"):
        fit_cutpoints(y, proba, min_recall=0.0)
