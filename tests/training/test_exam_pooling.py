"""ExamMeanRows (pipeline.model.exam_pooling): an exam's images classified from their pooled features."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.model.exam_pooling import ExamMeanRows, with_exam_codes


def test_each_row_becomes_its_exams_mean_and_other_exams_do_not_move_it():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(6, 3))
    exams = ["a", "a", "b", "c", "c", "c"]
    X = with_exam_codes(F, exams)
    assert list(X[:, 0]) == [0, 0, 1, 2, 2, 2]
    out = ExamMeanRows().fit(X).transform(X)
    assert out.shape == (6, 3)
    assert np.allclose(out[0], F[:2].mean(0)) and np.allclose(out[1], out[0])
    assert np.allclose(out[2], F[2]) and np.allclose(out[3:], F[3:].mean(0))
    assert np.allclose(ExamMeanRows().fit(X).transform(X[:2]), out[:2])  # an exam scored alone: the same vector
    assert np.allclose(ExamMeanRows(pool="none").fit(X).transform(X), F)


def test_a_pooled_exam_gets_one_density_call_from_both_breasts():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(1)
    n = 200  # exams of two images; the density signal is split between the breasts' features
    y = rng.integers(0, 2, n)
    left = y[:, None] + rng.normal(0, 1.2, (n, 4))
    right = y[:, None] + rng.normal(0, 1.2, (n, 4))
    F = np.empty((2 * n, 4))
    F[0::2], F[1::2] = left, right
    exams, yy = np.repeat(np.arange(n), 2), np.repeat(y, 2)
    X = with_exam_codes(F, exams)
    train, test = np.arange(2 * n) < n, np.arange(2 * n) >= n
    pooled = make_pipeline(ExamMeanRows(), LogisticRegression()).fit(X[train], yy[train])
    single = make_pipeline(ExamMeanRows(pool="none"), LogisticRegression()).fit(X[train], yy[train])
    p = pooled.predict(X[test])
    assert (p[0::2] == p[1::2]).all()  # one call per exam
    assert (p == yy[test]).mean() > (single.predict(X[test]) == yy[test]).mean() + 0.05


def test_rows_without_features_are_refused():
    with pytest.raises(ValueError, match="exam code"):
        ExamMeanRows().fit(np.zeros((4, 1)))
    with pytest.raises(ValueError, match="pool must be"):
        ExamMeanRows(pool="max").fit(np.zeros((4, 3)))
