"""The shortcut audit's arithmetic (pipeline.evaluation.audit): a candidate that carries the label is flagged, one
that does not is not, a constant one is skipped, and every kind of simple model reads its kind of candidate."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.audit import Candidate, audit_candidates, flagged_names
from pipeline.evaluation.splits import patient_stratified_folds

N = 200


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    y = (rng.random(N) < 0.4).astype(int)
    groups = np.repeat(np.arange(N // 2), 2)  # two images per patient
    y = y.reshape(-1, 2).max(axis=1).repeat(2)  # one label per patient
    folds = patient_stratified_folds(y, groups, 5, 0)
    return rng, y, folds


def _result(results, name):
    return next(r for r in results if r.name == name)


def test_a_candidate_that_carries_the_label_is_flagged_and_noise_is_not(setup):
    rng, y, folds = setup
    views = np.where(y == 1, 2.0, 4.0)  # cancers come with one breast's two views, the others with four
    views[rng.random(N) < 0.1] = 3.0
    cands = [Candidate("views", "numeric", views), Candidate("noise", "numeric", rng.random(N)),
             Candidate("site", "category", np.where(rng.random(N) < 0.5, "A", "B")),
             Candidate("same", "numeric", np.ones(N)), Candidate("none", "category", [None] * N)]
    res = audit_candidates(cands, y, folds, n_resamples=200)
    assert _result(res, "views").roc_auc > 0.9 and _result(res, "views").flagged
    assert not _result(res, "noise").flagged and not _result(res, "site").flagged
    assert 0.3 < _result(res, "noise").roc_auc < 0.7
    assert _result(res, "same").skipped == "the same for every image" and _result(res, "same").roc_auc is None
    assert _result(res, "none").skipped == "unknown for every image"
    assert flagged_names(res) == ["views"]


def test_categories_and_file_name_tokens_are_read(setup):
    rng, y, folds = setup
    site = np.where(y == 1, "diagnostic", "screening").astype(object)
    flip = rng.random(N) < 0.15
    site[flip] = np.where(y[flip] == 1, "screening", "diagnostic")
    names = [f"p{i} {'calc' if lab else 'norm'} cc" for i, lab in enumerate(y)]
    res = audit_candidates([Candidate("site", "category", site), Candidate("name", "tokens", names)], y, folds,
                           n_resamples=200)
    assert _result(res, "site").flagged and 0.75 < _result(res, "site").roc_auc < 0.95
    assert _result(res, "name").flagged and _result(res, "name").roc_auc > 0.95
    assert _result(res, "name").levels == N + 3  # p0..p199 (one image each: below min_df), calc, norm, cc


def test_the_rule_needs_the_auc_above_the_bar_and_the_ci_above_chance(setup):
    rng, y, folds = setup
    weak = y + rng.normal(0, 2.2, N)  # a little signal: AUC around 0.6
    r = audit_candidates([Candidate("weak", "numeric", weak)], y, folds, n_resamples=200, max_auc=0.99)[0]
    assert not r.flagged  # whatever its AUC, under the bar
    r2 = audit_candidates([Candidate("weak", "numeric", weak)], y, folds, n_resamples=200, max_auc=0.5)[0]
    assert r2.flagged == bool(r2.roc_auc > 0.5 and r2.low > 0.5)
    d = r2.to_dict()
    assert set(d) == {"name", "kind", "what", "roc_auc", "ci_low", "ci_high", "n", "n_known", "levels", "flagged",
                      "skipped"}


def test_bad_input_is_refused_by_name(setup):
    _, y, folds = setup
    with pytest.raises(ValueError, match="kind must be one of"):
        audit_candidates([Candidate("x", "image", np.zeros(N))], y, folds)
    with pytest.raises(ValueError, match="binary labels"):
        audit_candidates([Candidate("x", "numeric", np.zeros(N))], y * 2, folds)
    with pytest.raises(ValueError, match="'x' has 3 values"):
        audit_candidates([Candidate("x", "numeric", np.zeros(3))], y, folds)
