"""LastColumnsChoice: a trailing feature group kept by a fit only where its inner out-of-fold AUC is higher."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.model.choice import LastColumnsChoice
from pipeline.model.estimators import PatientCalibratedClassifier, WeightedXGBClassifier


def _clf() -> PatientCalibratedClassifier:
    return PatientCalibratedClassifier(WeightedXGBClassifier(n_estimators=30, max_depth=2), inner_folds=3)


def _data(seed: int = 0, n: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y, a weak leading column, patient groups of two rows each."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    weak = y + rng.normal(0, 2.0, n)
    return y, weak[:, None], np.repeat(np.arange(n // 2), 2)


def test_an_informative_last_group_is_kept_and_read():
    y, weak, groups = _data()
    strong = (y + np.random.default_rng(1).normal(0, 0.3, len(y)))[:, None]
    X = np.hstack([weak, strong])
    est = LastColumnsChoice(_clf(), n_drop=1).fit(X, y, groups=groups)
    assert est.kept_group_ and est.keep_columns_ == 2
    assert est.choice_auc_["with"] > est.choice_auc_["without"] + 0.1
    moved = X.copy()
    moved[:, 1] = -moved[:, 1]  # the kept group is what the probabilities read
    assert not np.allclose(est.predict_proba(X), est.predict_proba(moved))


def test_a_group_that_adds_nothing_is_dropped_and_never_read():
    y, weak, groups = _data()
    X = np.hstack([weak, np.zeros((len(y), 2))])  # two constant columns: the same fit either way -> the simpler one
    est = LastColumnsChoice(_clf(), n_drop=2).fit(X, y, groups=groups)
    assert not est.kept_group_ and est.keep_columns_ == 1
    noisy = X.copy()
    noisy[:, 1:] = np.random.default_rng(2).normal(size=(len(y), 2))
    np.testing.assert_allclose(est.predict_proba(X), est.predict_proba(noisy))
    np.testing.assert_array_equal(est.validation_index_, est.estimator_.validation_index_)
    assert est.threshold_ == est.estimator_.threshold_
    p = est.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(est.predict(X), est.classes_[(p[:, 1] >= est.threshold_).astype(int)])


def test_n_drop_must_leave_a_column():
    y, weak, groups = _data()
    with pytest.raises(ValueError, match="n_drop must be in"):
        LastColumnsChoice(_clf(), n_drop=1).fit(weak, y, groups=groups)
