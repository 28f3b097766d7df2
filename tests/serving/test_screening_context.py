"""The multi-view context stage end to end (#15, screening.context on): a tiny screening model trained on real
CDD-CESM images carries it; the Predictor's level rows and `mammoscope predict` score each image beside its exam's
other views, and an image given without them scores as it would beside views that look like it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
from tests.serving.test_screening_acceptance import CDD, TINY, _exam

NAME = "mammoscope-screening-context"

pytestmark = pytest.mark.skipif(not CDD.is_file(), reason="CDD-CESM is not in shared/data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipeline.config.experiment import deep_merge
    from pipeline.training.train import train_experiment

    root = tmp_path_factory.mktemp("screening-context")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    over = deep_merge(TINY, {"screening": {"context": True, "context_asymmetry": False}, "dataset": {"max_samples": 40},
                             "tracking": {"registered_model_name": NAME}})
    exp = load_experiment(EXPERIMENTS_DIR / "cdd_cesm_screening.yaml", over)
    return uri, train_experiment(exp, uri, cache_dir=root / "cache")


def _predict(uri: str, manifest: pd.DataFrame, tmp_path, name: str) -> dict[str, pd.DataFrame]:
    from pipeline.cli import main

    path, out = tmp_path / f"{name}.csv", tmp_path / f"{name}-results.csv"
    manifest[["path", "patient_id", "laterality", "view"]].to_csv(path, index=False)
    assert main(["predict", str(path), "--model", f"models:/{NAME}@champion", "--tracking-uri", uri,
                 "--out", str(out), "--n-jobs", "1", "--no-progress"]) == 0
    return {lv: pd.read_csv(out.with_name(f"{out.stem}.screening.{lv}s.csv")) for lv in ("image", "breast", "exam")
            } | {"results": pd.read_csv(out)}


def test_context_model_travels_and_predict_rows_agree_at_every_level(trained, tmp_path):
    from pipeline.serving.predict import load_predictor
    from pipeline.serving.screening import context_model
    from pipeline.model.context import apply_context

    uri, result = trained
    assert "p_context" in result.oof and np.isfinite(result.metrics["cv_breast_roc_auc"])
    predictor = load_predictor(f"models:/{NAME}@champion", tracking_uri=uri)
    context = context_model(predictor)
    assert context is not None and predictor.card.decision["context"] is True
    exam = _exam(result)
    out = _predict(uri, exam, tmp_path, "exam")
    single = out["results"].set_index("path")["screening_p_malignant"].reindex(exam["path"]).to_numpy()
    images = out["image"].set_index("sample_id").reindex(exam["path"])
    assert np.allclose(images["single_image_p"], single, atol=1e-9) and images["context_views"].all()
    expected = apply_context(context, single, exam.assign(sample_id=exam["path"]))
    assert np.allclose(images["screening_p_malignant"], expected, atol=1e-9)
    assert not np.allclose(expected, single)  # the stage moved the scores
    # the breasts fuse the context probabilities (mean of two views), the exam is the most suspicious breast
    side = exam.set_index("path")["laterality"].reindex(images.index).to_numpy()
    fused = pd.Series(images["screening_p_malignant"].to_numpy()).groupby(side).mean()
    assert np.allclose(out["breast"].set_index("laterality")["screening_p_malignant"].sort_index(), fused.sort_index())
    assert np.isclose(out["exam"]["screening_p_malignant"].iloc[0], fused.max())
    # the served ExamModel's own levels are the same rows
    rows = predictor.pipeline.score_levels(single, exam.assign(sample_id=exam["path"]))
    assert np.allclose(rows.images["p"], images["screening_p_malignant"])


def test_an_image_without_its_exams_other_views_scores_as_beside_views_that_look_like_it(trained, tmp_path):
    """The shipped stage reads no view-presence flag (screening.context_presence: false): a lone image gets the
    probability it would get beside other views scoring exactly as it does, so view availability alone moves nothing."""
    from pipeline.serving.predict import load_predictor

    uri, result = trained
    lone = _exam(result).iloc[[0]]
    out = _predict(uri, lone, tmp_path, "lone")
    row = out["image"].iloc[0]
    assert not row["context_views"]
    assert out["breast"]["screening_p_malignant"].iloc[0] == pytest.approx(row["screening_p_malignant"], abs=1e-12)
    model = load_predictor(f"models:/{NAME}@champion", tracking_uri=uri).pipeline
    assert model.decision_entries()["context_presence"] is False
    single = float(row["single_image_p"])
    four = pd.DataFrame({"sample_id": list("abcd"), "patient_id": ["w"] * 4, "laterality": list("LLRR"),
                         "view": ["CC", "MLO", "CC", "MLO"]})
    beside = model.score_levels(np.full(4, single), four).images["p"].to_numpy()
    alone = model.score_levels(np.array([single]), four.iloc[[0]]).images["p"].to_numpy()
    assert np.allclose(beside, alone[0], rtol=0, atol=1e-12)
    assert row["screening_p_malignant"] == pytest.approx(alone[0], abs=1e-12)


@pytest.fixture(scope="module")
def trained_asymmetry(tmp_path_factory):
    from pipeline.config.experiment import deep_merge
    from pipeline.training.train import train_experiment

    root = tmp_path_factory.mktemp("screening-asymmetry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    over = deep_merge(TINY, {"screening": {"context": True, "context_asymmetry": True, "context_asymmetry_C": 0.1},
                             "dataset": {"max_samples": 40}, "tracking": {"registered_model_name": NAME + "-asym"}})
    exp = load_experiment(EXPERIMENTS_DIR / "cdd_cesm_screening.yaml", over)
    return uri, train_experiment(exp, uri, cache_dir=root / "cache"), exp


def test_the_asymmetry_score_travels_per_image_and_the_exam_rows_use_it(trained_asymmetry, tmp_path):
    from dataclasses import replace

    from pipeline.cli import main
    from pipeline.io.imageio import read_image
    from pipeline.serving.predict import load_predictor
    from pipeline.serving.screening import context_model
    from pipeline.model.asymmetry import image_scores
    from pipeline.model.context import apply_context, uses_asymmetry
    from pipeline.model.screening import tile_max_block

    uri, result, exp = trained_asymmetry
    predictor = load_predictor(f"models:/{NAME}-asym@champion", tracking_uri=uri)
    context = context_model(predictor)
    assert predictor.card.decision["context_asymmetry"] is True and uses_asymmetry(context)
    assert predictor.asymmetry is not None and "screening_asymmetry_score" in predictor.output_columns()
    exam = _exam(result)
    samples = [predictor.prepare(read_image(r.path)[0], replace(read_image(r.path)[1], laterality=r.laterality),
                                 path=r.path) for r in exam.itertuples()]
    scores = predictor.score(samples)
    # the score the Predictor slices out of the features it computes is the model's score of the tile-max block
    X = np.stack([s.row for s in samples])
    direct = image_scores(predictor.asymmetry, tile_max_block(exp.config, X, pipeline=predictor.pipeline))
    assert np.allclose(scores.asymmetry, direct, atol=1e-6) and np.ptp(scores.asymmetry) > 0
    # predict writes it per image, and the exam's image rows are the context stage with it
    path, out = tmp_path / "exam.csv", tmp_path / "exam-results.csv"
    exam[["path", "patient_id", "laterality", "view"]].to_csv(path, index=False)
    assert main(["predict", str(path), "--model", f"models:/{NAME}-asym@champion", "--tracking-uri", uri,
                 "--out", str(out), "--n-jobs", "1", "--no-progress"]) == 0
    results = pd.read_csv(out).set_index("path").reindex(exam["path"])
    assert np.allclose(results["screening_asymmetry_score"], scores.asymmetry, atol=1e-6)
    images = pd.read_csv(out.with_name(f"{out.stem}.screening.images.csv")).set_index("sample_id").reindex(exam["path"])
    single = results["screening_p_malignant"].to_numpy()
    table = exam.assign(sample_id=exam["path"])
    expected = apply_context(context, single, table, results["screening_asymmetry_score"].to_numpy())
    assert np.allclose(images["screening_p_malignant"], expected, atol=1e-9)
    rows = predictor.pipeline.score_levels(single, table, scores.asymmetry)
    assert np.allclose(rows.images["p"], images["screening_p_malignant"], atol=1e-6)
    with pytest.raises(ValueError, match="asymmetry"):
        predictor.pipeline.score_levels(single, table)
