"""The bilateral asymmetry score (#15, screening.context_asymmetry): which images it compares, that its per-image
scores reproduce the difference model exactly, that it finds a one-sided change a woman-level offset hides, and that
its cross-fitted scores never come from a model that saw the image's patient."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.model.asymmetry import (asymmetry_of, cross_fit_asymmetry, fit_asymmetry, image_scores,
                                         tile_max_columns)
from pipeline.model.context import (FEATURES, apply_context, context_features, contralateral_rows, fit_context,
                                       uses_asymmetry)


def _exams(n_patients: int, views=("CC", "MLO")) -> pd.DataFrame:
    rows = [{"sample_id": f"P{p}_{s}_{v}", "patient_id": f"P{p}", "laterality": s, "view": v}
            for p in range(n_patients) for s in ("L", "R") for v in views]
    return pd.DataFrame(rows)


def _bilateral(n_patients: int = 60, d: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Per patient a large offset shared by all her images (tissue, scanner); in half of them one breast holds a
    change in the first 3 dimensions (both its views)."""
    rng = np.random.default_rng(seed)
    table = _exams(n_patients)
    woman = rng.normal(0, 3.0, (n_patients, d))
    M = woman[table.index // 4] + rng.normal(0, 0.3, (len(table), d))
    y = np.zeros(len(table), int)
    for p in range(0, n_patients, 2):
        side = "L" if p % 4 == 0 else "R"
        rows = np.flatnonzero((table["patient_id"] == f"P{p}") & (table["laterality"] == side))
        y[rows] = 1
        M[np.ix_(rows, [0, 1, 2])] += 1.0
    return M, y, table


def test_contralateral_rows_prefer_the_same_view_of_the_other_breast():
    table = pd.DataFrame({"sample_id": list("abcde"), "patient_id": ["P"] * 4 + ["Q"],
                          "laterality": ["L", "L", "R", "R", "L"], "view": ["CC", "MLO", "CC", "", "CC"]})
    rows = contralateral_rows(table)
    assert list(rows[0]) == [2]          # L CC -> R CC
    assert sorted(rows[1]) == [2, 3]     # L MLO: no R MLO -> every right view
    assert list(rows[2]) == [0]          # R CC -> L CC
    assert sorted(rows[3]) == [0, 1]     # no view -> every left view
    assert len(rows[4]) == 0             # Q has no other breast
    no_side = table.drop(columns="laterality")
    assert all(len(r) == 0 for r in contralateral_rows(no_side))


def test_per_image_scores_reproduce_the_difference_model_exactly():
    M, y, table = _bilateral()
    model = fit_asymmetry(M, y, table, C=0.1)
    partners = contralateral_rows(table)
    D = np.stack([M[i] - M[p].mean(axis=0) for i, p in enumerate(partners)])
    assert np.allclose(asymmetry_of(image_scores(model, M), table), model.decision_function(D), atol=1e-9)


def test_the_score_finds_a_one_sided_change_that_the_woman_level_offset_hides():
    M, y, table = _bilateral(n_patients=80)
    M_test, y_test, t_test = _bilateral(n_patients=40, seed=1)
    model = fit_asymmetry(M, y, table, C=0.1)
    asym = roc_auc_score(y_test, asymmetry_of(image_scores(model, M_test), t_test))
    from sklearn.linear_model import LogisticRegression

    own = roc_auc_score(y_test, LogisticRegression(C=0.1, max_iter=2000).fit(M, y).decision_function(M_test))
    assert asym > 0.95 and asym > own + 0.2


def test_cross_fitted_scores_of_a_patient_never_come_from_a_model_that_saw_her():
    M, y, table = _bilateral()
    groups = table["patient_id"].to_numpy()
    base = cross_fit_asymmetry(M, y, table, groups, C=0.1)[0]
    flipped = y.copy()
    mine = groups == "P0"
    flipped[mine] = 1 - flipped[mine]  # her labels change: only the models of the other folds see them
    again = cross_fit_asymmetry(M, flipped, table, groups, C=0.1)[0]
    assert np.array_equal(base[mine], again[mine])
    assert not np.allclose(base[~mine], again[~mine])


def test_no_model_without_enough_contralateral_pairs_and_zero_scores_then():
    table = pd.DataFrame({"sample_id": list("ab"), "patient_id": ["P", "Q"], "laterality": ["L", "L"],
                          "view": ["CC", "CC"]})
    assert fit_asymmetry(np.ones((2, 3)), np.array([0, 1]), table) is None
    assert np.array_equal(image_scores(None, np.ones((2, 3))), np.zeros(2))
    assert np.array_equal(asymmetry_of(np.array([1.0, 2.0]), table), np.zeros(2))


def test_the_context_stage_reads_the_asymmetry_column_and_asks_for_it():
    M, y, table = _bilateral()
    rng = np.random.default_rng(0)
    p = np.clip(0.5 + 0.1 * rng.normal(size=len(y)), 0.01, 0.99)  # an uninformative first stage
    s = image_scores(fit_asymmetry(M, y, table, C=0.1), M)
    assert context_features(p, table, s).shape == (len(y), len(FEATURES) + 1)
    with_asym, without = fit_context(p, y, table, 1.0, s), fit_context(p, y, table, 1.0)
    assert uses_asymmetry(with_asym) and not uses_asymmetry(without)
    assert roc_auc_score(y, apply_context(with_asym, p, table, s)) > 0.9
    with pytest.raises(ValueError, match="asymmetry"):
        apply_context(with_asym, p, table)


def test_the_tile_max_block_is_found_in_the_pooled_columns():
    # TilePooling: [n_tiles] + D per pooling, in the order of screening.poolings
    assert tile_max_columns(1 + 3 * 4, ["mean", "max", "topk"]) == slice(5, 9)
    assert tile_max_columns(1 + 2 * 4, ["max", "mean"], offset=10) == slice(11, 15)
    with pytest.raises(ValueError, match="max"):
        tile_max_columns(9, ["mean", "topk"])


def test_level_cv_with_the_asymmetry_score_beats_an_uninformative_first_stage():
    """cross_validate_levels: the asymmetry model is fitted on each fold's training rows only and lifts the image
    level where the first stage knows nothing; a fold's test rows never enter its fit (their labels flipped: same
    test scores)."""
    from sklearn.pipeline import Pipeline

    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.training.levels import cross_validate_levels
    from tests.training.test_context import ScoreColumn

    M, y, table = _bilateral(n_patients=80)
    p = np.random.default_rng(1).uniform(0.2, 0.8, len(y))  # a first stage at chance
    ev = {"folds": 4, "seed": 0, "target_sensitivity": 0.95, "bootstrap_resamples": 20, "confidence_level": 0.95,
          "ece_bins": 10}
    make = lambda: Pipeline([("classifier", ScoreColumn())])  # noqa: E731
    folds = patient_stratified_folds(y, table["patient_id"].to_numpy(), 4, 0)
    plain = cross_validate_levels(make, p[:, None], y, table, ev, folds=folds, context_C=1.0)
    asym = cross_validate_levels(make, p[:, None], y, table, ev, folds=folds, context_C=1.0, asymmetry=(M, 0.1))
    assert plain.metrics["image_roc_auc"] < 0.7 < 0.9 < asym.metrics["image_roc_auc"]
    tr, te = folds[0]
    flipped = y.copy()
    flipped[te] = 1 - flipped[te]
    again = cross_validate_levels(make, p[:, None], flipped, table, ev, folds=folds, context_C=1.0,
                                  asymmetry=(M, 0.1))
    assert np.allclose(asym.oof["p_context"].to_numpy()[te], again.oof["p_context"].to_numpy()[te])


def test_the_asymmetry_switch_acts_with_the_context_stage_and_needs_max_pooling():
    from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
    from pipeline.errors import ConfigError
    from pipeline.model.screening import asymmetry_C

    on = load_experiment(EXPERIMENTS_DIR / "mias_screening.yaml").config
    assert on["screening"]["context_asymmetry"] is True and asymmetry_C(on) == pytest.approx(1e-3)
    off = load_experiment(EXPERIMENTS_DIR / "mias_screening.yaml", {"screening": {"context": False}}).config
    assert asymmetry_C(off) is None  # a column of the context stage: without the stage, nothing reads it
    with pytest.raises(ConfigError, match="poolings"):
        load_experiment(EXPERIMENTS_DIR / "mias_screening.yaml", {"screening": {"poolings": ["mean"]}})


def test_new_images_are_scored_by_the_mean_of_the_fold_models_the_stage_learnt_from():
    M, y, table = _bilateral()
    groups = table["patient_id"].to_numpy()
    oof, models = cross_fit_asymmetry(M, y, table, groups, C=0.1)
    assert len(models) == 3 and np.array_equal(oof, cross_fit_asymmetry(M, y, table, groups, C=0.1)[0])
    new = _bilateral(n_patients=10, seed=2)[0]
    expected = np.mean([m.decision_function(new) for m in models], axis=0)
    assert np.allclose(image_scores(models, new), expected)
    few = table["patient_id"].isin(["P0", "P1"]).to_numpy()  # 8 images: a fold trains on 4, too few pairs
    assert cross_fit_asymmetry(M[few], y[few], table[few], groups[few], C=0.1)[1] == []
