"""PatientCalibratedClassifier's ordinal decision (#16): cut-points fitted on inner out-of-fold probabilities,
applied by predict/decide, kept through the streamed head path and stored in the model card by the task's rule."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.ordinal import apply_cutpoints
from tests._ordinal import ordinal_problem


def test_classifier_fits_cutpoints_on_inner_folds_and_predict_applies_them():
    from pipeline.model.estimators import PatientCalibratedClassifier, WeightedXGBClassifier

    X, y = ordinal_problem(300, seed=3)
    groups = np.repeat(np.arange(150), 2)
    base = WeightedXGBClassifier(n_estimators=30, max_depth=2)
    ordinal = PatientCalibratedClassifier(base, decision="ordinal").fit(X, y, groups=groups)
    plain = PatientCalibratedClassifier(base, decision="argmax").fit(X, y, groups=groups)
    assert ordinal.cutpoints_.shape == (3,) and plain.cutpoints_ is None
    proba = ordinal.predict_proba(X)
    assert np.array_equal(ordinal.predict(X), ordinal.classes_[apply_cutpoints(proba, ordinal.cutpoints_)])
    assert np.array_equal(plain.predict(X), plain.classes_[plain.predict_proba(X).argmax(axis=1)])
    with pytest.raises(ValueError, match="decision"):
        PatientCalibratedClassifier(base, decision="median").fit(X, y)


def test_the_recall_floor_holds_on_the_inner_out_of_fold_rows_the_cutpoints_are_fitted_on():
    from pipeline.model.estimators import PatientCalibratedClassifier, WeightedXGBClassifier

    X, y = ordinal_problem(400, seed=5)
    groups = np.repeat(np.arange(200), 2)
    base = WeightedXGBClassifier(n_estimators=30, max_depth=2)
    floored = PatientCalibratedClassifier(base, decision="ordinal", ordinal_min_recall=0.8).fit(X, y, groups=groups)
    y_val = floored.label_encoder_.transform(y[floored.validation_index_])
    calls = apply_cutpoints(floored.validation_proba_, floored.cutpoints_)
    for cls in (0, 3):
        assert np.mean(calls[y_val == cls] == cls) >= 0.8
    assert floored.cutpoints_min_recall_ == 0.8
    free = PatientCalibratedClassifier(base, decision="ordinal").fit(X, y, groups=groups)
    assert free.cutpoints_min_recall_ is None
    for bad in (1.5, 0.0, True):
        with pytest.raises(ValueError, match="ordinal_min_recall"):
            PatientCalibratedClassifier(base, decision="ordinal", ordinal_min_recall=bad).fit(X, y)


def test_a_floor_that_cannot_hold_warns_and_the_fit_does_not_claim_it():
    from pipeline.config.tasks import get_rule
    from pipeline.model.estimators import PatientCalibratedClassifier, WeightedXGBClassifier

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 5)), np.repeat([0, 1, 2], 100)  # no signal: the extremes overlap entirely
    base = WeightedXGBClassifier(n_estimators=20, max_depth=2)
    with pytest.warns(RuntimeWarning, match="No cut-points keep recall >= 1"):
        clf = PatientCalibratedClassifier(base, decision="ordinal", ordinal_min_recall=1.0).fit(
            X, y, groups=np.arange(300))
    assert clf.cutpoints_ is not None and clf.cutpoints_min_recall_ is None
    assert get_rule("ordinal_cutpoints").fit_params(clf, {})["min_recall"] is None


def test_the_experiment_key_reaches_the_classifier_and_the_card_says_it():
    from pipeline.config.card_render import render_markdown
    from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
    from pipeline.config.tasks import get_rule
    from pipeline.model.estimators import build_pipeline

    cfg = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["evaluation.ordinal_min_recall=0.5"]).config
    clf = build_pipeline(cfg, None).named_steps["classifier"]
    assert clf.ordinal_min_recall == 0.5 and clf.decision == "ordinal"
    clf.cutpoints_, clf.cutpoints_min_recall_ = np.array([0.8, 1.4]), 0.5  # as a fit keeping the floor leaves them
    decision = {"rule": "ordinal_cutpoints", **get_rule("ordinal_cutpoints").fit_params(clf, cfg)}
    assert decision["min_recall"] == 0.5
    md = render_markdown({"name": "m", "task": "density", "classes": ["F", "G", "D"], "decision": decision,
                          "metrics": {}, "dataset": {}, "split": {}})
    assert "cut-points 0.80, 1.40" in md and "F and D each kept at recall >= 0.50" in md
    with pytest.raises(Exception, match="ordinal_min_recall"):
        load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["evaluation.ordinal_min_recall=0"])
