"""ExamSearch (pipeline.model.exam_search): the exam stage chosen by patient-grouped inner CV of the training rows,
the image pipeline fitted once per inner fold and shared by the candidates (ExamModel.with_stage)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from pipeline.model.exam import ExamModel
from pipeline.model.exam_search import ExamSearch
from tests.training.test_context import ScoreColumn, _exams

OFF, ON = {"context_C": None}, {"context_C": 1.0}


def _template() -> ExamModel:
    return ExamModel(Pipeline([("classifier", ScoreColumn())]), context_presence=False)


def test_with_stage_shares_the_image_fit_and_equals_a_fresh_fit_with_that_stage():
    t, y, p = _exams(60, seed=1)
    g = t["patient_id"].to_numpy()
    off = _template().fit(p[:, None], y, groups=g, exams=t)
    on = off.with_stage(p[:, None], y, t, **ON)
    fresh = _template().set_params(**ON).fit(p[:, None], y, groups=g, exams=t)
    assert on.pipeline_ is off.pipeline_ and on.context_C == 1.0 and off.context_C is None  # the original untouched
    assert off.context_ is None and on.context_ is not None
    assert on.thresholds_ == fresh.thresholds_
    new_t, _, new_p = _exams(10, seed=2)
    a = on.score_levels(new_p, new_t).images["p"].to_numpy()
    assert np.allclose(a, fresh.score_levels(new_p, new_t).images["p"].to_numpy())
    assert not np.allclose(a, off.score_levels(new_p, new_t).images["p"].to_numpy())
    with pytest.raises(ValueError, match="exam stage only"):
        off.with_stage(p[:, None], y, t, pipeline=None)
    with pytest.raises(ValueError, match="exams has 4 rows"):
        off.with_stage(p[:, None], y, t.iloc[:4], **ON)


def test_the_stage_that_ranks_inner_folds_better_is_chosen_and_refitted_on_all_rows():
    t, y, p = _exams(120, seed=6)  # a patient-level shift the other breast explains away: context pays
    g = t["patient_id"].to_numpy()
    search = ExamSearch(_template(), [OFF, ON], inner_folds=3, random_state=0).fit(p[:, None], y, groups=g, exams=t)
    assert search.cv_scores_.shape == (2, 3) and np.isfinite(search.cv_scores_).all()
    assert search.best_index_ == 1 and search.best_params_ == ON
    assert search.cv_scores_[1].mean() > search.cv_scores_[0].mean() + 0.05
    best = search.best_estimator_
    fresh = _template().set_params(**ON).fit(p[:, None], y, groups=g, exams=t)
    assert best.thresholds_ == fresh.thresholds_ and list(search.classes_) == [0, 1]
    new_t, _, new_p = _exams(10, seed=3)
    assert np.allclose(best.score_levels(new_p, new_t).images["p"], fresh.score_levels(new_p, new_t).images["p"])
    assert np.allclose(search.predict_proba(new_p[:, None])[:, 1], new_p)  # the image alone: the first stage's


def test_a_stage_that_cannot_rank_better_loses_to_the_first_candidate():
    t, y, _ = _exams(120, seed=6)
    clean = np.where(y == 1, 0.7, 0.3) + np.random.default_rng(0).normal(0, 0.01, len(y))  # already ranks perfectly
    search = ExamSearch(_template(), [OFF, ON], inner_folds=3).fit(clean[:, None], y,
                                                                    groups=t["patient_id"].to_numpy(), exams=t)
    assert search.best_index_ == 0 and search.best_estimator_.context_ is None
    assert np.allclose(search.cv_scores_[0], 1.0)


def test_inner_folds_keep_patients_whole(monkeypatch):
    t, y, p = _exams(45, seed=4)
    seen: list[tuple[set, set]] = []
    fit = ExamModel.fit

    def recording(self, X, yy, *, groups=None, exams=None):
        seen.append(set(groups))
        return fit(self, X, yy, groups=groups, exams=exams)

    monkeypatch.setattr(ExamModel, "fit", recording)
    ExamSearch(_template(), [OFF, ON], inner_folds=3).fit(p[:, None], y, groups=t["patient_id"].to_numpy(), exams=t)
    everyone = set(t["patient_id"])
    assert len(seen) == 4 and seen[-1] == everyone  # three inner fits, then one on all rows
    held_out = [everyone - s for s in seen[:3]]
    assert all(held_out) and set().union(*held_out) == everyone and sum(map(len, held_out)) == len(everyone)


def test_candidates_set_the_exam_stage_only():
    t, y, p = _exams(20, seed=0)
    with pytest.raises(ValueError, match="exam stage only"):
        ExamSearch(_template(), [OFF, {"pipeline": None}]).fit(p[:, None], y, exams=t)
    with pytest.raises(ValueError, match="at least one candidate"):
        ExamSearch(_template(), []).fit(p[:, None], y, exams=t)
