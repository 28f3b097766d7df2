"""The multi-view context stage end to end (#15, screening.context on): a tiny screening model trained on real
CDD-CESM images carries it; the Predictor's level rows and `mammoscope predict` score each image beside its exam's
other views, and an image given without them keeps its single-image score."""
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
    over = deep_merge(TINY, {"screening": {"context": True}, "dataset": {"max_samples": 40},
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
    from pipeline.serving.screening import context_model, level_rows
    from pipeline.training.context import apply_context

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
    # the Predictor route gives the same rows; without the stage, level_rows has no image rows
    rows = level_rows(exam.assign(sample_id=exam["path"]), single, predictor.card, context)
    assert np.allclose(rows["image"]["screening_p_malignant"], images["screening_p_malignant"])
    assert "image" not in level_rows(exam.assign(sample_id=exam["path"]), single, predictor.card)


def test_an_image_without_its_exams_other_views_keeps_its_single_image_score(trained, tmp_path):
    uri, result = trained
    lone = _exam(result).iloc[[0]]
    out = _predict(uri, lone, tmp_path, "lone")
    row = out["image"].iloc[0]
    assert not row["context_views"]
    assert row["screening_p_malignant"] == pytest.approx(out["results"]["screening_p_malignant"].iloc[0], abs=1e-12)
    assert out["breast"]["screening_p_malignant"].iloc[0] == pytest.approx(row["screening_p_malignant"], abs=1e-12)
