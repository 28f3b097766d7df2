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
