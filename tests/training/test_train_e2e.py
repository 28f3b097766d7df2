"""End to end: a tiny experiment on real mini-MIAS images -> temporary SQLite store -> registered, champion moved,
loaded back through the one predict path with identical predictions. The training is the session's `tiny_store`
density champion (tests/conftest.py), shared with the app and batch tests."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from pipeline.errors import ModelNotFoundError
from pipeline.evaluation.metrics import binary_metrics
from pipeline.evaluation.splits import patient_stratified_folds
from pipeline.training.cv import cross_validate
from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
from pipeline.model.estimators import build_pipeline
from pipeline.paths import default_mias_dir

pytestmark = pytest.mark.skipif(not (default_mias_dir() / "Info.txt").is_file(), reason="mini-MIAS not present")


@pytest.fixture(scope="module")
def trained(tiny_store):
    """(TrainResult, tracking URI, progress lines, Experiment) of the tiny density training into the session store."""
    from tests._tiny_store import tiny_experiment

    task = "density"
    return tiny_store.results[task], tiny_store.tracking_uri, tiny_store.lines[task], tiny_experiment(task)


@pytest.mark.slow
def test_tiny_experiment_trains_registers_and_promotes(trained):
    result, uri, lines, exp = trained
    assert result.model_version == 1 and result.promoted
    assert any(line.startswith("fold 1/") for line in lines)
    assert np.isfinite(result.metrics["cv_kappa_quadratic"])
    for key in ("cv_accuracy", "cv_kappa_quadratic_ci_low", "cv_brier", "cv_ece", "cv_recall_F"):
        assert key in result.metrics
    oof = result.oof
    # every sample tested once, no patient in two folds
    assert (oof.groupby("patient_id")["fold"].nunique() == 1).all()
    assert np.allclose(oof[[c for c in oof.columns if c.startswith("p_")]].sum(axis=1), 1.0)
    # density is also scored per exam (here: the patient's two breasts), one row per exam and label
    assert (oof.groupby("exam_id")["exam_predicted"].nunique() == 1).all()
    assert result.metrics["cv_exam_n"] == len(oof.drop_duplicates(["exam_id", "label"]))
    assert np.isfinite(result.metrics["cv_exam_kappa_quadratic"])
    # density metrics score the fold models' own calls (ordinal cut-points, #16), kept in the OOF `call` column
    from sklearn.metrics import cohen_kappa_score

    assert set(oof["call"]) <= {"F", "G", "D"}
    assert result.metrics["cv_kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(oof["label"], oof["call"], labels=["F", "G", "D"], weights="quadratic"))

    import registry

    registry.configure(uri)
    models = registry.list_models(name=result.model_name)
    row = models[models["version"].astype(int) == 1].iloc[0]
    assert "champion" in str(row["aliases"])


@pytest.mark.slow
def test_champion_loads_back_with_identical_predictions(trained):
    from pipeline.io.imageio import read_image
    from pipeline.serving.predict import load_task_models, predict_image, prepare_sample
    from pipeline.samples import load_samples
    from pipeline.training.train import load_task_data

    result, uri, _, exp = trained
    size = exp.config["samples"]["size"]
    models = load_task_models(("density",), tracking_uri=uri, names={"density": result.model_name})
    loaded = models["density"]
    assert loaded.version == 1 and loaded.alias == "champion"
    md = loaded.card.to_dict()
    assert md["task"] == "density" and md["classes"] == ["F", "G", "D"]
    assert md["sample_params"]["size"] == size
    # the streamed head kept the ordinal decision: its cut-points are the card's decision (#16)
    from pipeline.model.estimators import final_classifier

    clf = final_classifier(loaded.pipeline)
    assert clf.decision == "ordinal" and md["decision"]["rule"] == "ordinal_cutpoints"
    assert md["decision"]["cutpoints"] == pytest.approx(list(clf.cutpoints_)) and len(clf.cutpoints_) == 2

    data = load_task_data(exp.config, lambda s: None)
    from pipeline.model.estimators import disable_cache

    refit = disable_cache(build_pipeline(exp.config).fit(data.X, data.y, classifier__groups=data.groups))
    np.testing.assert_allclose(loaded.pipeline.predict_proba(data.X[:6]), refit.predict_proba(data.X[:6]),
                               rtol=1e-6, atol=1e-7)

    # the one predict path prepares a file exactly like training did
    path = data.table["path"].iloc[0]
    image, meta = read_image(path)
    sample = prepare_sample(image, meta, "density", md["sample_params"])
    X_train, _ = load_samples(data.table.iloc[[0]], "density", size=size)
    np.testing.assert_array_equal(sample.reshape(1, -1), X_train)
    out = predict_image(image, meta, models)
    probs = out["density"]["probabilities"]
    assert list(probs) == ["F", "G", "D"]
    assert sum(probs.values()) == pytest.approx(1.0)
    assert out["density"]["model"]["version"] == 1
    expected = loaded.pipeline.predict_proba(sample.reshape(1, -1))[0]
    np.testing.assert_allclose(list(probs.values()), expected / expected.sum(), rtol=1e-9)
    call = md["classes"][int(loaded.pipeline.predict(sample.reshape(1, -1))[0])]
    assert out["density"]["call"] == call  # the card's rule makes the classifier's own decide() call


@pytest.mark.slow
def test_missing_champion_names_the_training_command(trained):
    from pipeline.serving.predict import load_task_models

    _, uri, _, _ = trained
    with pytest.raises(ModelNotFoundError, match="mammoscope train experiments/mias_malignancy_fused.yaml"):
        load_task_models(("malignancy",), tracking_uri=uri, names={"malignancy": "mammoscope-test-nothing"})


def test_separable_synthetic_images_beat_chance_by_far(tmp_path):
    rng = np.random.default_rng(0)
    n, size = 60, 48
    y = np.repeat([0, 1], n // 2)
    images = rng.random((n, size, size)).astype(np.float32) * 0.3 + 0.2
    # class 1: a bright blob in the middle (a "lesion"); breast-like background everywhere
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / 60.0)
    images[y == 1] += 0.5 * blob.astype(np.float32)
    X = np.clip(images, 0, 1).reshape(n, -1)
    groups = np.arange(n) // 2 * 2 + y  # pairs of images per patient, same class
    cfg = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml",
                          ["dataset.task=malignancy", "dataset.classes=[benign, malignant]", "samples.size=48",
                           "preprocessing.breast_mask=false"]).config
    pipe = build_pipeline(cfg, tmp_path / "cache")
    folds = patient_stratified_folds(y, groups, 3, seed=0)
    cv = cross_validate(lambda: clone(pipe), X, y, groups, folds, fit_groups_param="classifier__groups")
    assert np.allclose(cv.proba.sum(axis=1), 1.0)
    m = binary_metrics(y, cv.proba[:, 1], cv.call, n_resamples=0)
    assert m["roc_auc"] > 0.9
    # occlusion map of a fitted model peaks on the blob of a class-1 image
    from pipeline.serving.predict import occlusion_map

    fitted = clone(pipe).fit(X, y, classifier__groups=groups)
    heat = occlusion_map(fitted, X[y == 1][0].reshape(size, size), target=1)
    peak_y, peak_x = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(peak_y - size / 2) <= size / 4 and abs(peak_x - size / 2) <= size / 4, (peak_y, peak_x)
    # warm cache: same features, same predictions
    cv2 = cross_validate(lambda: clone(pipe), X, y, groups, folds, fit_groups_param="classifier__groups")
    np.testing.assert_allclose(cv.proba, cv2.proba)
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.slow
def test_explain_and_batch_paths(trained, tmp_path):
    from pipeline.io.imageio import read_image
    from pipeline.serving.predict import explain, load_task_models, predict_paths

    result, uri, _, _ = trained
    models = load_task_models(("density",), tracking_uri=uri, names={"density": result.model_name})
    path = default_mias_dir() / "images" / "mdb001.png"
    image, meta = read_image(path)
    ex = explain(image, meta, models["density"], top=5)
    assert 0 < len(ex["contributions"]) <= 5
    assert all(not c["feature"].startswith("cnn") for c in ex["contributions"])
    # handcrafted-only model: no Grad-CAM, an occlusion map of the whole model instead, and it says so
    assert ex["heatmap"].shape == (32, 32) and 0 <= ex["heatmap"].min() and ex["heatmap"].max() <= 1
    assert any("occlusion" in n for n in ex["notes"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = list(predict_paths([path, broken], models))
    assert [r["ok"] for r in rows] == [True, False]
    assert "broken.png" in rows[1]["error"]


def test_prepare_sample_with_roi_matches_training_crop():
    from pipeline.io.datasets import lesion_table, load_dataset
    from pipeline.io.imageio import read_image
    from pipeline.serving.predict import prepare_sample
    from pipeline.samples import load_samples

    row = lesion_table(load_dataset("mias", default_mias_dir())).iloc[[3]]
    params = {"size": 64, "context": 1.25, "min_side": 128}
    X, _ = load_samples(row, "malignancy", size=64, context=1.25, min_side=128)
    image, meta = read_image(row["path"].iloc[0])
    r = row.iloc[0]
    sample = prepare_sample(image, meta, "malignancy", params, roi={"cx": r.roi_cx, "cy": r.roi_cy, "r": r.roi_r})
    np.testing.assert_array_equal(sample.reshape(1, -1), X)
    whole = prepare_sample(image, meta, "malignancy", params, roi=None)  # no ROI: the whole breast
    assert whole.shape == (64, 64) and not np.array_equal(whole, sample)


@pytest.mark.slow
def test_finetuned_cnn_inside_the_pipeline_gives_a_heat_map():
    from pipeline.serving.predict import explain

    cfg = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", [
        "dataset.task=malignancy", "dataset.classes=[benign, malignant]", "samples.size=32",
        "preprocessing.breast_mask=false", "features.cnn.enabled=true", "features.cnn.backbone=tiny",
        "features.cnn.weights=random", "features.cnn.finetune.enabled=true", "features.cnn.finetune.epochs=1"]).config
    rng = np.random.default_rng(0)
    n = 24
    y = np.repeat([0, 1], n // 2)
    X = (rng.random((n, 32 * 32)) * 0.5 + 0.25 * y[:, None]).astype(np.float32)
    pipe = build_pipeline(cfg, None).fit(X, y, classifier__groups=np.arange(n) // 2)
    assert np.allclose(pipe.predict_proba(X[:4]).sum(axis=1), 1.0)

    from tests._cards import card

    class Loaded:  # what registry.load_model returns, reduced to what explain reads
        name, version, alias = "m", 1, None
        pipeline = pipe
    Loaded.card = card("malignancy", ["benign", "malignant"], 0.5)

    from tests._images import breast_like

    image = breast_like(200, 200)  # random noise is refused as "no breast"
    ex = explain(image, None, Loaded(), roi=(50, 50, 120, 120))
    assert ex["heatmap"].shape == (32, 32) and 0 <= ex["heatmap"].min() and ex["heatmap"].max() <= 1
    assert ex["contributions"] and all(not c["feature"].startswith("cnn") for c in ex["contributions"])


@pytest.mark.parametrize("cnn_input", ["raw", "enhanced"])
def test_cnn_input_raw_or_enhanced_while_texture_always_sees_the_enhanced_image(cnn_input):
    """features.cnn.input: the CNN embeds the masked sample as read ("raw") or after CLAHE + unsharp ("enhanced");
    the texture features and the app's processed view are the enhanced image either way."""
    from cnn.embedder import CNNEmbedder
    from pipeline.model.estimators import enhanced_view

    exp = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml",
                          ["features.cnn.enabled=true", "features.cnn.backbone=tiny", "features.cnn.weights=random",
                           f"features.cnn.input={cnn_input}"])
    rng = np.random.default_rng(0)
    X = rng.random((6, 64 * 64)).astype(np.float32)
    X[:, :64 * 8] = 0.0  # some background for the mask
    y = np.array([0, 1, 2, 0, 1, 2])
    pipe = build_pipeline(exp.config, None).fit(X, y, classifier__groups=np.arange(6))
    cnn = dict(pipe.named_steps["features"].transformer_list)["cnn"]
    hc = dict(pipe.named_steps["features"].transformer_list)["handcrafted"]
    reference = build_pipeline(load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml").config, None)
    enhanced = reference.named_steps["preprocess"].fit(X).transform(X)  # mask -> CLAHE -> unsharp, as before
    np.testing.assert_allclose(enhanced_view(pipe, X), enhanced, atol=1e-6)
    texture = reference.named_steps["features"].fit(enhanced).transform(enhanced)
    np.testing.assert_allclose(hc.transform(pipe.named_steps["preprocess"].transform(X)), texture, rtol=1e-5, atol=1e-6)
    cnn_in = pipe.named_steps["preprocess"].transform(X)
    embedder = CNNEmbedder(backbone="tiny", weights="random", input_size=64).fit(X[:1])
    expected = embedder.transform(enhanced if cnn_input == "enhanced" else cnn_in)
    np.testing.assert_allclose(cnn.transform(cnn_in), expected, rtol=1e-5, atol=1e-6)
    assert (np.abs(cnn_in - enhanced).max() > 0.05) == (cnn_input == "raw")


def test_whole_breast_mask_is_re_estimated_on_density_samples_only():
    """A lesion crop is not a whole breast: re-estimating the breast mask on it would zero tissue around the lesion."""
    from features.masking import BreastMask

    def has_mask(task: str) -> bool:
        config = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", [f"dataset.task={task}"]).config
        pre = build_pipeline(config, None).named_steps["preprocess"]
        return any(isinstance(step, BreastMask) for _, step in pre.transformer.steps)

    assert has_mask("density") and not has_mask("malignancy")
