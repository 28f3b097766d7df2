"""Acceptance (#15): a tiny screening experiment trained end to end on real CDD-CESM images and registered; one exam
scored through the Predictor, the app (gradio_client, no region) and `mammoscope predict` (per-image, per-breast and
per-exam rows that agree with each other)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
from pipeline.paths import default_data_root
from tests._tiny_store import TINY_SCREENING

CDD = default_data_root() / "cdd_cesm" / "manifest.csv"
NAME = "mammoscope-screening-acceptance"
TINY = {**TINY_SCREENING, "tracking": {**TINY_SCREENING["tracking"], "registered_model_name": NAME}}

pytestmark = pytest.mark.skipif(not CDD.is_file(), reason="CDD-CESM is not in shared/data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipeline.training.train import train_experiment

    root = tmp_path_factory.mktemp("screening")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp = load_experiment(EXPERIMENTS_DIR / "cdd_cesm_screening.yaml", TINY)
    result = train_experiment(exp, uri, cache_dir=root / "cache")
    return uri, result, root


def test_train_cross_validates_every_level_and_registers_the_champion_with_its_card(trained):
    from pipeline.serving.predict import load_predictor

    uri, result, _ = trained
    for level in ("", "breast_", "exam_"):
        assert 0.0 <= result.metrics[f"cv_{level}roc_auc"] <= 1.0
        assert np.isfinite(result.metrics[f"cv_{level}spec_at_target"])
    assert result.metrics["cv_n"] > result.metrics["cv_breast_n"] > result.metrics["cv_exam_n"]
    assert result.promoted and result.model_name == NAME
    predictor = load_predictor(f"models:/{NAME}@champion", tracking_uri=uri)
    card = predictor.card
    assert card.task == "screening" and card.classes == ["not_malignant", "malignant"]
    assert card.decision["rule"] == "threshold" and card.sample_params["scale"] == 2.0
    assert set(card.decision["level_thresholds"]) == {"image", "breast", "exam"}
    # the shipped tile scores are kept per fit where they pay: the card and the CV say what each fit decided
    assert isinstance(card.decision["tile_scores_kept"], bool)
    assert 0 <= result.metrics["cv_folds_tile_scores_kept"] <= 3
    # the context stage is on (shipped): the image level with its exam's other views is reported beside the single image
    assert 0.0 <= result.metrics["cv_image_roc_auc"] <= 1.0 and "cv_roc_auc" in result.metrics
    assert "cv_exam_roc_auc" in card.metrics
    assert getattr(predictor.pipeline, "heatmap_", None) is not None  # the map travels with the model


def _exam(result) -> pd.DataFrame:
    """The rows of one patient with both breasts imaged in two views (an exam of four images)."""
    oof = result.oof
    table = pd.read_csv(CDD)
    table["path"] = [str((CDD.parent / f).resolve()) for f in table["file"]]
    table = table[table["patient_id"].isin(set(oof["patient_id"]))]
    full = table.groupby("patient_id").filter(lambda g: len(g) == 4 and g["laterality"].nunique() == 2)
    return full[full["patient_id"] == sorted(full["patient_id"])[0]].reset_index(drop=True)


def test_one_exam_scores_the_same_through_predictor_app_and_batch(trained, tmp_path):
    from gradio_client import Client, handle_file

    from pipeline.cli import main
    from pipeline.io.imageio import read_image
    from pipeline.serving.predict import load_predictor
    from pipeline.serving.screening import context_model
    from tests._app_helpers import running_app

    uri, result, _ = trained
    exam = _exam(result)
    predictor = load_predictor(f"models:/{NAME}@champion", tracking_uri=uri)
    samples = []
    for row in exam.itertuples():
        image, meta = read_image(row.path)
        from dataclasses import replace

        samples.append(predictor.prepare(image, replace(meta, laterality=row.laterality), path=row.path))
    scores = predictor.score(samples)
    p = scores.probabilities[:, 1]
    # the shipped recipe scores each image beside its exam's other views (the context stage, with the bilateral
    # asymmetry score), then a breast = the mean of its two views, the exam = its most suspicious breast
    context = context_model(predictor)
    assert context is not None and scores.asymmetry is not None
    expected = predictor.pipeline.score_levels(p, exam.assign(sample_id=exam["path"]), scores.asymmetry)
    in_context = expected.images["p"].to_numpy()
    breast_p = exam.assign(p=in_context).groupby("laterality")["p"].mean()
    assert np.allclose(sorted(expected.breasts["p"]), sorted(breast_p))
    assert np.isclose(expected.exams["p"].iloc[0], breast_p.max())

    # the app, no region: the screening probability, operating point and call; same number as the Predictor
    first = exam.loc[0, "path"]
    with running_app(uri, models={"screening": predictor}) as (url, _demo):
        client = Client(url, verbose=False)
        out = client.predict(handle_file(first), "", api_name="/predict")
        explained = client.predict(handle_file(first), "", api_name="/explain")
    app = out["results"]["screening"]
    assert app["call"] in ("not_malignant", "malignant") and app["threshold"] == predictor.threshold
    image, meta = read_image(first)  # the app reads laterality from the file (CDD-CESM PNGs carry none)
    alone = predictor.score([predictor.prepare(image, meta, path=first)]).probabilities[0, 1]
    assert app["probabilities"]["malignant"] == pytest.approx(alone, abs=1e-9)
    ex = predictor.explain(predictor.prepare(image, meta, path=first))
    assert ex["heatmap_original"].shape == image.shape and ex["heatmap_original"].max() > 0
    # /explain, no region: the map's peak (original pixels) lies in the breast; a 32 x 32 grid in [0, 1]
    from features.breast import breast_mask

    summary = explained["explanations"]["screening"]["map"]
    x, y = summary["peak_xy"]
    assert summary["image_shape"] == list(image.shape) and breast_mask(image)[y, x]
    grid = np.asarray(summary["grid"])
    assert summary["grid_shape"] == [32, 32] and grid.shape == (32, 32)
    assert 0.0 <= grid.min() and grid.max() <= 1.0 and grid.max() > 0
    low, high = summary["value_range"]
    assert 0.0 < low <= high == pytest.approx(float(ex["heatmap_original"].max()), abs=1e-4)
    assert np.unravel_index(np.argmax(grid), grid.shape) == pytest.approx((y * 32 // image.shape[0],
                                                                           x * 32 // image.shape[1]), abs=3)

    # mammoscope predict on a manifest naming patients, laterality and views: three files that agree
    manifest = tmp_path / "exam.csv"
    exam[["path", "patient_id", "laterality", "view"]].to_csv(manifest, index=False)
    out_csv = tmp_path / "results.csv"
    code = main(["predict", str(manifest), "--model", f"models:/{NAME}@champion", "--tracking-uri", uri,
                 "--out", str(out_csv), "--maps", str(tmp_path / "maps"), "--n-jobs", "1", "--no-progress"])
    assert code == 0
    images = pd.read_csv(out_csv)
    by_path = dict(zip(images["path"], images["screening_p_malignant"]))
    assert np.allclose([by_path[str(Path(x))] for x in exam["path"]], p, atol=1e-6)
    breasts = pd.read_csv(tmp_path / "results.screening.breasts.csv")
    exams = pd.read_csv(tmp_path / "results.screening.exams.csv")
    assert len(breasts) == 2 and len(exams) == 1 and (breasts["n_images"] == 2).all()
    per_image = pd.read_csv(tmp_path / "results.screening.images.csv").set_index("sample_id")
    assert np.allclose(per_image["single_image_p"].reindex(exam["path"]), p, atol=1e-6)
    assert np.allclose(per_image["screening_p_malignant"].reindex(exam["path"]), in_context, atol=1e-6)
    merged = pd.Series(in_context).groupby(exam["laterality"].to_numpy()).mean()
    assert np.allclose(breasts.set_index("laterality")["screening_p_malignant"].sort_index(), merged.sort_index())
    assert np.isclose(exams["screening_p_malignant"].iloc[0], breasts["screening_p_malignant"].max())
    thresholds = predictor.card.decision["level_thresholds"]
    assert (breasts["screening_threshold"] == thresholds["breast"]).all()
    assert exams["screening_call"].iloc[0] == ("malignant" if exams["screening_p_malignant"].iloc[0]
                                               >= thresholds["exam"] else "not_malignant")
    maps = sorted((tmp_path / "maps").glob("*.png"))
    assert len(maps) == 4
    from PIL import Image

    assert Image.open(maps[0]).size[::-1] == read_image(exam.loc[0, "path"])[0].shape


def test_the_app_page_shows_the_screening_map_without_a_region_and_the_lesion_model_with_one(trained):
    import gradio_app
    from app_support import ImageCache
    from pipeline.serving.predict import load_predictor

    uri, result, _ = trained
    predictor = load_predictor(f"models:/{NAME}@champion", tracking_uri=uri)
    path = _exam(result).loc[0, "path"]
    handlers = gradio_app._Handlers({"screening": predictor}, {}, ImageCache())
    state = handlers.on_upload([path])[3]
    verdict, _density, _warnings, status = handlers.refresh(state, "")
    assert "screening model" in verdict and "of 100 cancers" in verdict and "threshold" in verdict and not status
    overlay = handlers.refresh_map(state, "")
    loaded = handlers.cache.get(path)
    assert overlay is not None and overlay.shape[:2] == loaded.display.shape[:2]
    assert overlay[..., 0].astype(int).sum() != overlay[..., 2].astype(int).sum()  # coloured by the map
    assert handlers.active((10, 10, 200, 200)) == {}  # a drawn region: the region's (lesion) model answers
    verdict, *_ = handlers.refresh(state, "10, 10, 200, 200")
    assert "Answered by the screening model" not in verdict and "not available" in verdict


def _same(a: pd.Series, b: pd.Series) -> bool:
    """Equal to the bit: numbers as float64 (NaN == NaN), everything else as text (None / NaN as '')."""
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
        return np.array_equal(a.to_numpy(float), b.to_numpy(float), equal_nan=True)
    text = lambda s: s.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))  # noqa: E731
    return text(a).equals(text(b))


def test_an_exam_agrees_to_the_bit_through_score_exam_the_app_and_batch(trained, tmp_path):
    """#28: one four-view CDD-CESM exam through Predictor.score_exam, the app's /score_exam (a real Gradio server,
    gradio_client, laterality and view from the uploaded file names) and `mammoscope predict` (a manifest): every
    probability, threshold and call equal to the bit; the batch's level files are exactly ExamResult.rows()."""
    from gradio_client import Client, handle_file

    from pipeline.cli import main
    from pipeline.io.imageio import read_image
    from pipeline.serving.exam import exam_image
    from pipeline.serving.predict import load_predictor
    from pipeline.serving.screening import map_summary
    from tests._app_helpers import running_app

    uri, result, _ = trained
    exam = _exam(result)
    predictor = load_predictor(f"models:/{NAME}@champion", tracking_uri=uri)
    images = [exam_image(*read_image(r.path), r.path, patient_id=r.patient_id, laterality=r.laterality, view=r.view)
              for r in exam.itertuples()]
    direct = predictor.score_exam(images)
    assert [im.laterality for im in direct.images] == exam["laterality"].tolist()
    assert len(direct.breasts) == 2 and direct.exam.n_images == 4 and all(r.context_views for r in direct.images)
    assert all(r.heatmap.shape == read_image(p)[0].shape for r, p in zip(direct.images, exam["path"]))

    manifest, out_csv = tmp_path / "exam.csv", tmp_path / "results.csv"
    exam[["path", "patient_id", "laterality", "view"]].to_csv(manifest, index=False)
    assert main(["predict", str(manifest), "--model", f"models:/{NAME}@champion", "--tracking-uri", uri,
                 "--out", str(out_csv), "--maps", str(tmp_path / "maps"), "--n-jobs", "2", "--no-progress"]) == 0
    results = pd.read_csv(out_csv).set_index("path").reindex(exam["path"])
    assert _same(results["screening_p_malignant"], pd.Series([r.p_single for r in direct.images]))
    assert _same(results["screening_call"], pd.Series([r.outputs["screening_call"] for r in direct.images]))
    expected = direct.rows()
    for level in ("image", "breast", "exam"):
        written = pd.read_csv(tmp_path / f"results.screening.{level}s.csv")
        assert list(written.columns) == list(expected[level].columns), level
        for column in written.columns:
            assert _same(written[column], expected[level][column]), (level, column)
    assert len(list((tmp_path / "maps").glob("*.png"))) == 4

    with running_app(uri, models={"screening": predictor}) as (url, _demo):
        app = Client(url, verbose=False).predict([handle_file(p) for p in exam["path"]], api_name="/score_exam")
    assert not app["errors"] and [im["laterality"] for im in app["images"]] == exam["laterality"].tolist()
    for got, want in zip(app["images"], direct.images):
        assert (got["p_single"], got["p"], got["threshold"], got["call"]) == (want.p_single, want.p, want.threshold,
                                                                              want.call)
        assert got["map"] == map_summary(want.heatmap)
    by_side = {b["laterality"]: b for b in app["breasts"]}
    for want in direct.breasts:
        got = by_side[want.laterality]
        assert (got["p"], got["threshold"], got["call"], got["views"]) == (want.p, want.threshold, want.call,
                                                                           want.views)
    assert (app["exam"]["p"], app["exam"]["call"]) == (direct.exam.p, direct.exam.call)
    assert app["model"]["card"]["levels"]["exam"]["threshold"] == predictor.card.decision["level_thresholds"]["exam"]


def test_predict_with_maps_reads_each_image_once(trained, tmp_path, monkeypatch):
    """#28: `--maps` draws each overlay from the sample and pixels already in memory: one read per image."""
    import collections

    import pipeline.io.imageio as imageio
    from pipeline.serving.batch import BatchOptions, run_batch

    uri, result, _ = trained
    exam = _exam(result)
    reads: collections.Counter = collections.Counter()
    real = imageio.read_image

    def counting(path, *args, **kwargs):
        reads[str(path)] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imageio, "read_image", counting)
    manifest = tmp_path / "exam.csv"
    exam[["path", "patient_id", "laterality", "view"]].to_csv(manifest, index=False)
    summary = run_batch(BatchOptions(paths=[str(manifest)], out=str(tmp_path / "r.csv"),
                                     model_uri=f"models:/{NAME}@champion", tracking_uri=uri, n_jobs=1,
                                     progress=False, maps=str(tmp_path / "maps")))
    assert summary.exit_code == 0 and summary.maps_out == 4 and len(summary.levels_out) == 3
    assert dict(reads) == {str(Path(p)): 1 for p in exam["path"]}
