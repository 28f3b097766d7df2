"""Screening mode: labels, the high-resolution sample, folds at every level, a tiny end-to-end CV, the heat map."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from pipeline.experiment import resolve_config
from pipeline.screening.evaluate import check_folds, cross_validate_levels, fuse, level_ids
from pipeline.screening.heatmap import sample_heatmap
from pipeline.screening.labels import CLASSES, breast_ids, exam_ids, screening_table
from pipeline.screening.model import build_map_pipeline, build_screening_pipeline
from pipeline.screening.samples import load_screening_samples, map_to_original, screening_sample

CDD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cdd_cesm" / "manifest.csv"

TINY = {"features": {"cnn": {"backbone": "tiny", "weights": "random", "batch_size": 64},
                     "handcrafted": {"glcm": {"levels": 8, "distances": [1]}, "intensity": {"bins": 8}}},
        "samples": {"size": 32},
        "screening": {"scale": 2.0, "tile_size": 32, "max_tiles": 6},
        "model": {"n_estimators": 20}, "calibration": {"inner_folds": 2},
        "evaluation": {"folds": 3, "bootstrap_resamples": 50}, "dataset": {"task": "screening"}}


def test_mias_screening_labels_map_normal_images(mias_dir):
    from pipeline.datasets import load_dataset, lesion_table

    full = load_dataset("mias", mias_dir)
    table = screening_table(full)
    assert len(table) == table["path"].nunique() == full["path"].nunique()  # one row per image, none unknown
    malignant_paths = set(full.loc[full["pathology"] == "malignant", "path"])
    assert set(table.loc[table["screening"] == CLASSES[1], "path"]) == malignant_paths
    norm = table["abnormality_class"] == "NORM"
    assert norm.any() and (table.loc[norm, "screening"] == CLASSES[0]).all()
    assert lesion_table(full)["pathology"].isin(["benign", "malignant"]).all()  # malignancy task unchanged


@pytest.mark.skipif(not CDD.is_file(), reason="CDD-CESM manifest not in shared/")
def test_cdd_cesm_manifest_accepts_normal_for_screening():
    from pipeline.datasets import load_dataset

    full = load_dataset("manifest", CDD)
    assert full["pathology"].dropna().isin(["benign", "malignant"]).all()  # normal stays out of pathology
    table = screening_table(full)
    assert len(table) == 898 and table["patient_id"].nunique() == 272
    assert (table["screening"] == "malignant").sum() == 331
    assert int(full["is_normal"].sum()) == 311


def test_manifest_still_refuses_unknown_pathology(tmp_path):
    from pipeline.datasets.manifest import load_manifest
    from pipeline.errors import DatasetError

    (tmp_path / "m.csv").write_text("file,patient_id,pathology\na.png,p1,weird\n")
    with pytest.raises(DatasetError, match="normal"):
        load_manifest(tmp_path / "m.csv")


def test_breast_and_exam_ids_nest_in_patients():
    t = pd.DataFrame({"sample_id": list("abcde"), "patient_id": ["p1", "p1", "p1", "p2", "p2"],
                      "laterality": ["L", "L", "R", "L", np.nan], "exam_id": [np.nan] * 3 + ["e1", "e1"]})
    b, e = breast_ids(t), exam_ids(t)
    assert b[0] == b[1] != b[2] and b[3] != b[4]
    assert len(set(e[:3])) == 1 and e[3] == e[4] and e[0] != e[3]


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


def test_screening_sample_maps_back_onto_the_original():
    image = np.zeros((300, 200), np.float32)
    image[40:260, 120:200] = 0.6  # a right breast (chest wall on the right): mirrored to the left
    image[100:110, 150:160] = 1.0
    sample, geom = screening_sample(image, "R", 64)
    assert sample.shape == (64, 64) and geom.flipped
    back = map_to_original((sample > 0.8).astype(np.float32), geom)
    ys, xs = np.nonzero(back > 0.5)
    assert back.shape == image.shape and 95 <= ys.mean() <= 115 and 145 <= xs.mean() <= 165


@pytest.fixture(scope="module")
def tiny_mias(mias_dir):
    from pipeline.datasets import load_dataset

    table = screening_table(load_dataset("mias", mias_dir))
    pos = table[table["screening"] == CLASSES[1]].head(12)
    neg = table[table["screening"] == CLASSES[0]].head(24)
    table = pd.concat([pos, neg]).reset_index(drop=True)
    X, errors = load_screening_samples(table, 64)
    assert errors.empty
    return table, X, (table["screening"] == CLASSES[1]).to_numpy().astype(int)


def test_tiny_screening_cv_on_real_images_reports_every_level(tiny_mias, tmp_path):
    table, X, y = tiny_mias
    config = resolve_config(None, TINY)
    pipe = build_screening_pipeline(config, tmp_path / "cache")
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    from pipeline.evaluate import patient_stratified_folds

    folds = patient_stratified_folds(y, table["patient_id"].to_numpy(), 3, 0)
    res = cross_validate_levels(lambda: clone(pipe), X, y, table, config["evaluation"], folds=folds,
                                progress=lambda m: seen.append(m))
    for lv in ("image", "breast", "exam"):
        assert 0.0 <= res.metrics[f"{lv}_roc_auc"] <= 1.0 and len(res.thresholds[lv]) == 3
        assert np.isfinite(res.metrics[f"{lv}_spec_at_target"])
    assert res.metrics["image_n"] == len(table) and res.metrics["exam_n"] == table["patient_id"].nunique()
    # no patient, breast or exam crosses folds: every unit has one fold
    for col in ("patient_id", "breast_id", "exam_id"):
        assert (res.oof.groupby(col)["fold"].nunique() == 1).all()
    # tiles: the tile matrix has one row per image, so a tile travels with its image (and patient)
    tiles = pipe.named_steps["features"].transformer_list[-1][1]
    assert clone(tiles).fit(X[:3]).transform(X[:3]).shape[0] == 3


def _blob_breast(cy: int, cx: int, size: int = 96, seed: int = 0, lesion: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    breast = ((yy - size / 2) ** 2 / (0.45 * size) ** 2 + xx ** 2 / (0.8 * size) ** 2) <= 1.0
    img = np.where(breast, rng.normal(0.35, 0.03, (size, size)), 0.0)
    if lesion:
        img = img + breast * 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0 ** 2))
    return np.clip(img, 0, 1).astype(np.float32)


def test_heatmap_peaks_inside_the_breast_and_follows_a_moved_lesion(tmp_path):
    # no CLAHE/unsharp here: the tiny random network does not see a blob through local equalisation
    config = resolve_config(None, {**TINY, "preprocessing": {"clahe": {"enabled": False},
                                                              "unsharp": {"enabled": False}},
                                   "screening": {"scale": 3.0, "tile_size": 24, "overlap": 0.5,
                                                         "max_tiles": 36, "map_C": 1.0}})
    rng = np.random.default_rng(1)
    images, labels = [], []
    for i in range(40):
        lesion = i % 2 == 1
        cy, cx = rng.integers(25, 70), rng.integers(8, 50)
        images.append(_blob_breast(cy, cx, seed=i, lesion=lesion).ravel())
        labels.append(int(lesion))
    mapper = build_map_pipeline(config, None).fit(np.stack(images), np.array(labels))
    peaks = []
    for cy, cx in ((30, 20), (65, 40)):
        img = _blob_breast(cy, cx, seed=99)
        heat = sample_heatmap(mapper, img)
        py, px = np.unravel_index(np.argmax(heat), heat.shape)
        assert img[py, px] > 0  # inside the breast
        assert abs(py - cy) <= 16 and abs(px - cx) <= 16
        peaks.append((py, px))
    assert np.hypot(peaks[0][0] - peaks[1][0], peaks[0][1] - peaks[1][1]) >= 15


def test_screening_model_scores_images_breasts_and_exams_consistently(tiny_mias, tmp_path):
    from pipeline.screening.predict import fit_screening_model, fused_rows, score_image, score_table

    table, X, y = tiny_mias
    config = resolve_config(None, TINY)
    model = fit_screening_model(config, X, y, table, tmp_path / "cache")
    assert set(model.thresholds) == {"image", "breast", "exam"}
    images = score_table(model, table, X)
    fused = fused_rows(model, images)
    exams = fused[fused["level"] == "exam"].set_index("exam_id")["p_malignant"]
    breasts = fused[fused["level"] == "breast"].set_index("breast_id")["p_malignant"]
    for exam, rows in images.groupby("exam_id"):  # an exam = its most suspicious breast = mean of its views
        assert np.isclose(exams[exam], max(rows.groupby("breast_id")["p_malignant"].mean()))
        assert all(np.isclose(breasts[b], v) for b, v in rows.groupby("breast_id")["p_malignant"].mean().items())
    from pipeline.imageio import read_image

    image, _ = read_image(table.loc[0, "path"])
    one = score_image(model, image, table.loc[0, "laterality"])
    assert np.isclose(one["p_malignant"], images.loc[0, "p_malignant"], atol=1e-5)
    assert one["heatmap"].shape == image.shape and one["heatmap"].max() > 0
