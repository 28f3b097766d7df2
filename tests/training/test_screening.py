"""Screening training: fusion per breast / exam, folds at every level, a tiny image/breast/exam CV on real images."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from pipeline.config.experiment import resolve_config
from pipeline.io.datasets.screening import CLASSES, screening_table
from pipeline.samples import load_samples
from pipeline.model.levels import fuse
from pipeline.training.levels import check_folds, cross_validate_levels
from pipeline.model.screening import build_screening_pipeline

TINY = {"features": {"cnn": {"backbone": "tiny", "weights": "random", "batch_size": 64},
                     "handcrafted": {"glcm": {"levels": 8, "distances": [1]}, "intensity": {"bins": 8}}},
        "samples": {"size": 32},
        "screening": {"scale": 2.0, "tile_size": 32, "max_tiles": 6},
        "model": {"n_estimators": 20}, "calibration": {"inner_folds": 2},
        "evaluation": {"folds": 3, "bootstrap_resamples": 50}, "dataset": {"task": "screening"}}


def test_fuse_mean_max_and_exam_is_most_suspicious_breast():
    ids, y, p = fuse(np.array([0.2, 0.6, 0.9]), np.array([0, 1, 0]), np.array(["b", "a", "b"]), "mean")
    assert list(ids) == ["a", "b"] and list(y) == [1, 0] and np.allclose(p, [0.6, 0.55])
    assert np.allclose(fuse(np.array([0.2, 0.9]), np.array([0, 0]), np.array(["b", "b"]), "max")[2], [0.9])


def test_check_folds_catches_a_breast_across_folds():
    t = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "patient_id": ["p1", "p1", "p2", "p2"],
                      "laterality": ["L", "L", "R", "R"]})
    check_folds([(np.array([0, 1]), np.array([2, 3]))], t)
    with pytest.raises(RuntimeError, match="patient"):
        check_folds([(np.array([0, 2]), np.array([1, 3]))], t)


@pytest.fixture(scope="module")
def tiny_mias(mias_dir):
    from pipeline.io.datasets import load_dataset

    table = screening_table(load_dataset("mias", mias_dir))
    pos = table[table["screening"] == CLASSES[1]].head(12)
    neg = table[table["screening"] == CLASSES[0]].head(24)
    table = pd.concat([pos, neg]).reset_index(drop=True)
    X, errors = load_samples(table, "highres", size=32, scale=2.0)
    assert errors.empty
    return table, X, (table["screening"] == CLASSES[1]).to_numpy().astype(int)


def test_tiny_screening_cv_on_real_images_reports_every_level(tiny_mias, tmp_path):
    table, X, y = tiny_mias
    config = resolve_config(None, TINY)
    pipe = build_screening_pipeline(config, tmp_path / "cache")
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    from pipeline.evaluation.splits import patient_stratified_folds

    folds = patient_stratified_folds(y, table["patient_id"].to_numpy(), 3, 0)
    res = cross_validate_levels(lambda: clone(pipe), X, y, table, config["evaluation"], folds=folds,
                                progress=lambda m: seen.append(m))
    for lv in ("image", "breast", "exam"):
        assert 0.0 <= res.metrics[f"{lv}_roc_auc"] <= 1.0 and len(res.thresholds[lv]) == 3
        assert np.isfinite(res.metrics[f"{lv}_spec_at_target"])
    assert res.metrics["image_n"] == len(table) and res.metrics["exam_n"] == table["patient_id"].nunique()
    # each image's call is its probability against its own fold's in-fold threshold
    calls = np.array([res.calls["image"][k] for k in res.oof["sample_id"]])
    at = np.array([res.thresholds["image"][f] for f in res.oof["fold"]])
    assert np.array_equal(calls, res.oof["p"].to_numpy() >= at)
    assert len(res.calls["exam"]) == table["patient_id"].nunique()
    # no patient, breast or exam crosses folds: every unit has one fold
    for col in ("patient_id", "breast_id", "exam_id"):
        assert (res.oof.groupby(col)["fold"].nunique() == 1).all()
    # tiles: the tile matrix has one row per image, so a tile travels with its image (and patient)
    tiles = dict(pipe.named_steps["features"].transformer_list)["tiles"]
    assert clone(tiles).fit(X[:3]).transform(X[:3]).shape[0] == 3


def test_tile_score_features_are_cross_fitted_on_the_routed_patients(tiny_mias, tmp_path, monkeypatch):
    """screening.tile_scores: the tile scorer's top-k tile probabilities join the union; inside a fit they are
    cross-fitted on the patient groups routed to them (no patient scored by a scorer fitted on it)."""
    from features.tile_scores import TileScoreFeatures
    from pipeline.model.routing import fit_with_groups

    table, X, y = tiny_mias
    config = resolve_config(None, {**TINY, "screening": {**TINY["screening"], "tile_scores": 2}})
    pipe = build_screening_pipeline(config, tmp_path / "cache")
    # the front: cached per image; the tile scores read the front's tile matrix in the head's blocks
    assert [n for n, _ in pipe.named_steps["features"].transformer_list] == ["whole", "tiles"]
    assert [n for n, _, _ in pipe.named_steps["blocks"].transformers] == ["whole", "tiles", "tile_scores"]
    seen: list[np.ndarray] = []
    original = TileScoreFeatures.fit_transform

    def spy(self, X, y=None, groups=None, **kw):
        seen.append(np.asarray(groups))
        return original(self, X, y, groups, **kw)

    monkeypatch.setattr(TileScoreFeatures, "fit_transform", spy)
    groups = table["patient_id"].astype(str).to_numpy()
    fit_with_groups(pipe, X, y, groups)
    assert len(seen) == 1 and np.array_equal(seen[0], groups)
    p = pipe.predict_proba(X[:4])
    assert p.shape == (4, 2) and np.isfinite(p).all()
    # cross-fitted scores differ from the in-sample ones of the scorer fitted on every row
    tiles = dict(pipe.named_steps["features"].transformer_list)["tiles"].transform(X)
    step = TileScoreFeatures(max_tiles=6, k=2, C=float(config["screening"]["map_C"]))
    assert not np.allclose(step.fit_transform(tiles, y, groups), step.transform(tiles))
    assert step.transform(tiles).shape == (len(y), 2)


def test_tile_scores_auto_ends_in_a_choice_that_reads_the_union_columns_it_kept(tiny_mias, tmp_path):
    """screening.tile_scores_auto: the classifier is a LastColumnsChoice over the tile-score columns (the blocks'
    last k), fitted with the routed patient groups; with a selection step it is refused with a clear error."""
    from pipeline.errors import ConfigError
    from pipeline.model.choice import LastColumnsChoice
    from pipeline.model.estimators import final_classifier
    from pipeline.model.routing import fit_with_groups

    table, X, y = tiny_mias
    sc = {**TINY["screening"], "tile_scores": 2, "tile_scores_auto": True}
    config = resolve_config(None, {**TINY, "screening": sc})
    pipe = build_screening_pipeline(config, tmp_path / "cache")
    fit_with_groups(pipe, X, y, table["patient_id"].astype(str).to_numpy())
    clf = final_classifier(pipe)
    assert isinstance(clf, LastColumnsChoice) and clf.n_drop == 2
    width = pipe[:-1].transform(X[:3]).shape[1]
    assert clf.keep_columns_ == (width if clf.kept_group_ else width - 2)
    assert set(clf.choice_auc_) == {"with", "without"}
    p = pipe.predict_proba(X[:3])
    assert p.shape == (3, 2) and np.allclose(p.sum(axis=1), 1.0)
    with pytest.raises(ConfigError, match="tile_scores_auto needs features.selection.k_best: null"):
        build_screening_pipeline(resolve_config(None, {**TINY, "screening": sc,
                                                       "features": {**TINY["features"],
                                                                    "selection": {"k_best": 5}}}), None)
