"""pipeline.serving.predict.Predictor: one path for the app and `mammoscope predict`, one loader for every model URI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import ModelNotFoundError
from tests._app_helpers import MIAS_PNG


@pytest.fixture(scope="module")
def predictors(tiny_store):
    from pipeline.serving.predict import load_task_models

    return load_task_models(("density", "malignancy"), alias="champion", tracking_uri=tiny_store.tracking_uri)


def test_app_and_batch_give_identical_probabilities_for_the_same_image_and_model(tiny_store, predictors, tmp_path):
    """The app's /predict handler and `mammoscope predict` (run_batch, worker processes) agree to the last bit."""
    import gradio_app
    from app_support import ImageCache
    from pipeline.serving.batch import BatchOptions, run_batch

    if not MIAS_PNG.is_file():
        pytest.skip(f"{MIAS_PNG} is absent")
    handlers = gradio_app._Handlers(predictors, {}, ImageCache())
    app = handlers.api_predict(str(MIAS_PNG), "")["results"]
    out = tmp_path / "results.jsonl"
    summary = run_batch(BatchOptions(paths=[str(MIAS_PNG)], out=str(out), tracking_uri=tiny_store.tracking_uri,
                                     n_jobs=2, progress=False))
    assert summary.exit_code == 0
    row = json.loads(out.read_text().splitlines()[0])
    assert set(app) == {"density"}  # a whole image: the lesion model answers only for a drawn region
    for task, result in app.items():
        for cls, p in result["probabilities"].items():
            assert row[f"{task}_p_{cls}"] == p  # identical, not approximately equal
        assert row[f"{task}_call"] == result["call"]
        assert row[f"{task}_version"] == result["model"]["version"]


def test_one_click_builds_each_sample_once(predictors, monkeypatch):
    """refresh, refresh_map and the report of one image and region share one sample per task."""
    import gradio_app
    from pipeline.serving import predict
    from app_support import ImageCache

    if not MIAS_PNG.is_file():
        pytest.skip(f"{MIAS_PNG} is absent")
    calls = []
    real = predict.SampleSpec.prepare

    def counting(self, *args, **kwargs):
        calls.append(self.task)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(predict.SampleSpec, "prepare", counting)
    h = gradio_app._Handlers(predictors, {}, ImageCache())
    state = h.on_upload([str(MIAS_PNG)])[3]
    h.refresh(state, "450, 300, 650, 500")
    h.refresh_map(state, "450, 300, 650, 500")
    h.refresh_report(state, "450, 300, 650, 500")
    assert sorted(calls) == ["density", "malignancy"]


def test_prepare_score_explain_on_one_sample(predictors):
    from pipeline.io.imageio import read_image

    if not MIAS_PNG.is_file():
        pytest.skip(f"{MIAS_PNG} is absent")
    image, meta = read_image(MIAS_PNG)
    p = predictors["malignancy"]
    with_roi, without = p.prepare(image, meta, (450, 300, 650, 500)), p.prepare(image, meta)
    assert with_roi.array.shape == (32, 32) and not with_roi.notes and without.notes  # no ROI: whole breast, noted
    scores = p.score([with_roi, without])
    assert scores.probabilities.shape == (2, 2) and np.allclose(scores.probabilities.sum(axis=1), 1.0)
    assert scores.calls == p.task_spec.rule.decide(scores.probabilities, list(p.classes), p.card.decision)
    ex = p.explain(with_roi, top=3, heatmap=False)
    assert ex["task"] == "malignancy" and ex["target_class"] == "malignant" and len(ex["contributions"]) <= 3


def test_one_loader_for_alias_version_and_run_uris(tiny_store, predictors):
    from pipeline.serving.predict import load_predictor

    name, version = tiny_store.names["density"], tiny_store.versions["density"]
    run_id = tiny_store.results["density"].run_id
    X = np.random.default_rng(0).random((3, 32 * 32)).astype(np.float32)
    expected = predictors["density"].score(X).probabilities
    for uri in (f"models:/{name}@champion", f"models:/{name}/{version}", f"runs:/{run_id}/model"):
        p = load_predictor(uri, tracking_uri=tiny_store.tracking_uri)
        assert p.task == "density" and p.card.to_dict() == predictors["density"].card.to_dict()
        np.testing.assert_array_equal(p.score(X).probabilities, expected)
    with pytest.raises(ModelNotFoundError, match="not malignancy"):
        load_predictor(f"models:/{name}/{version}", task="malignancy", tracking_uri=tiny_store.tracking_uri)


def test_a_model_without_a_readable_card_is_refused(tmp_path):
    import registry
    from tests._registry_helpers import separable_data, strong_pipeline, tracking_store

    X, y = separable_data(60)
    with tracking_store(f"sqlite:///{tmp_path / 'm.db'}"):
        with registry.training_run("cards", run_name="no-card"):
            registry.log_model(strong_pipeline(X, y), artifact_name="model", registered_model_name="m-nocard",
                               input_example=X[:2], metadata={"task": "malignancy"})
        with registry.training_run("cards", run_name="bad-card"):
            registry.log_model(strong_pipeline(X, y), artifact_name="model", registered_model_name="m-badcard",
                               input_example=X[:2], card={"schema_version": 7, "task": "malignancy"})
        from pipeline.config.card import CardError
        from pipeline.serving.predict import load_predictor

        with pytest.raises(ModelNotFoundError, match="no model card"):
            load_predictor("models:/m-nocard/1")
        with pytest.raises(CardError, match="schema_version 7"):
            load_predictor("models:/m-badcard/1")
        assert registry.load_model("m-badcard", version=1).card == {"schema_version": 7, "task": "malignancy"}
