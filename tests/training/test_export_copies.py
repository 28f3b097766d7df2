"""Training-time export copies (samples.export_copies): every training image also as a 640 px JPEG re-export, in its
patient's group and an exam of its own, training the models only; metrics, calibration and thresholds stay on the
originals. Real CDD-CESM and mini-MIAS files, tiny models."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.serving.test_screening_acceptance import CDD


def _copies(origin, X, setting=(640, 75)):
    from pipeline.training.copies import ExportCopies

    return ExportCopies(X=np.asarray(X), origin=np.asarray(origin), setting=setting,
                        errors=pd.DataFrame(columns=["position", "sample_id", "path", "error"]))


def test_a_copy_keeps_its_patient_and_side_in_an_exam_of_its_own():
    from pipeline.io.exams import level_ids
    from pipeline.training.copies import copy_table

    table = pd.DataFrame({"sample_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"],
                          "exam_id": ["e1", "e1", None], "laterality": ["L", "R", "L"], "view": ["CC", "CC", "MLO"]})
    copies = copy_table(table)
    assert (copies["patient_id"] == table["patient_id"]).all() and (copies["laterality"] == table["laterality"]).all()
    both = pd.concat([table, copies], ignore_index=True)
    ids = level_ids(both)
    assert len(set(ids["image"])) == 6
    assert not set(ids["exam"][:3]) & set(ids["exam"][3:])  # never an original's exam (nor its other view)
    assert ids["exam"][3] == ids["exam"][4]  # the copies of one exam stay one exam of copies


def test_a_fit_takes_the_copies_of_its_training_rows_only_marked_augmented():
    from pipeline.training.copies import training_rows

    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    y, groups = np.array([0, 1, 0, 1, 0, 1]), np.array(list("aabbcc"))
    copies = _copies([0, 2, 3, 5], -X[[0, 2, 3, 5]])
    Xt, yt, gt, _, aug = training_rows(X, y, groups, None, np.array([0, 1, 2, 4]), copies)
    assert Xt.shape == (6, 2) and aug.tolist() == [False] * 4 + [True] * 2
    np.testing.assert_array_equal(Xt[4:], -X[[0, 2]])  # the copies of training rows 0 and 2 (row 4 has none)
    assert yt[4:].tolist() == [0, 0] and gt[4:].tolist() == ["a", "b"]
    Xn, yn, gn, en, none = training_rows(X, y, groups, None, np.array([4, 5]), None)
    assert none is None and len(Xn) == 2


def test_a_training_copy_is_the_re_exported_file_as_read_back(tmp_path):
    """The copies made in memory are pixel for pixel what benchmarks/reexport.py writes and read_image reads."""
    from PIL import Image

    from pipeline.io.datasets import load_dataset
    from pipeline.io.imageio import read_image
    from pipeline.io.reexport import export_copy, jpeg_export

    if not CDD.is_file():
        pytest.skip("CDD-CESM is not in shared/data")
    image, _ = read_image(load_dataset("manifest", CDD)["path"].iloc[0])
    data, shape = jpeg_export(image, 640, 75)
    (tmp_path / "copy.jpg").write_bytes(data)
    from_file, _ = read_image(tmp_path / "copy.jpg")
    in_memory = export_copy(image, 640, 75)
    assert in_memory.shape == shape == from_file.shape and max(shape) == 640
    np.testing.assert_array_equal(in_memory, from_file)
    resized = np.asarray(Image.fromarray(image, mode="F").resize(shape[::-1], Image.BILINEAR), np.float32)
    assert np.corrcoef(in_memory.ravel(), resized.ravel())[0, 1] > 0.98  # the same picture, JPEG loss only
    assert np.abs(in_memory - resized).mean() > 0  # and not the original's pixels


@pytest.mark.skipif(not CDD.is_file(), reason="CDD-CESM is not in shared/data")
def test_streamed_screening_training_with_copies_tests_and_thresholds_on_originals_only(tmp_path, monkeypatch):
    from pipeline.io.exams import level_ids
    from pipeline.model.estimators import final_classifier
    from pipeline.model.exam import ExamModel
    from pipeline.training.train import evaluate_experiment, fit_final, load_task_features
    from tests.training.test_screening_stream import _config

    cache = tmp_path / "cache"
    cfg = _config(cache)
    cfg["samples"]["export_copies"] = 75
    lines: list[str] = []
    data = load_task_features(cfg, lines.append, cache_dir=cache)
    n = len(data.y)
    copies = data.copies
    assert copies is not None and copies.X.shape == (n, data.features.shape[1]) and (copies.origin == np.arange(n)).all()
    assert any(line.startswith("export copies: ") and "JPEG quality 75" in line for line in lines)
    r = np.corrcoef(copies.X[:, :64].ravel(), data.features[:, :64].ravel())[0, 1]
    assert 0.5 < r < 1.0 and not np.allclose(copies.X, data.features)  # the same breasts, other pixels
    fits: list[tuple[int, int]] = []
    fit = ExamModel.fit

    def recording(self, X, y, *, groups=None, exams=None, augmented=None):
        fits.append((len(y), int(np.asarray(augmented).sum()) if augmented is not None else 0))
        out = fit(self, X, y, groups=groups, exams=exams, augmented=augmented)
        clf = final_classifier(out.pipeline_)
        assert clf.validation_index_.max() < len(y) - fits[-1][1]  # originals first: never a copy held out
        exam = level_ids(exams)["exam"]  # the exam the stage would read: never an original's with a copy in it
        assert not set(exam[: len(y) - fits[-1][1]]) & set(exam[len(y) - fits[-1][1]:])
        return out

    monkeypatch.setattr(ExamModel, "fit", recording)
    cfg["compute"]["n_jobs"] = 1  # folds in this process, where the recorder is
    metrics, cv, oof = evaluate_experiment(cfg, data, cache)
    assert len(oof) == n and len(cv.proba) == n  # only originals are tested and scored
    assert [f[1] for f in fits] == [len(tr) for tr, _ in cv.folds]  # each fold: its training rows' copies
    assert [f[0] for f in fits] == [2 * len(tr) for tr, _ in cv.folds]
    final = fit_final(cfg, data, cache)
    assert fits[-1] == (2 * n, n)
    p = final.predict_proba(data.example)  # the served model scores samples, its front before the head
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    again = load_task_features(cfg, lambda s: None, cache_dir=cache)  # the copies' features were cached
    np.testing.assert_array_equal(again.copies.X, copies.X)


def test_in_memory_density_samples_get_their_copies(tmp_path):
    from pipeline.config.experiment import load_experiment
    from pipeline.training.train import evaluate_experiment, load_task_data
    from tests._tiny_store import TINY_EXPERIMENT

    exp = load_experiment(TINY_EXPERIMENT, {"samples": {"export_copies": 60, "export_long_side": 320},
                                            "compute": {"n_jobs": 1, "cache_dir": str(tmp_path)}})
    data = load_task_data(exp.config, lambda s: None)
    assert data.copies.X.shape == data.X.shape and data.copies.setting == (320, 60)
    assert not np.allclose(data.copies.X, data.X)
    metrics, cv, oof = evaluate_experiment(exp.config, data, tmp_path)
    assert len(oof) == len(data.y) == len(cv.proba)  # the copies trained; only originals were scored
    plain = evaluate_experiment(exp.config, load_task_data({**exp.config, "samples": {
        **exp.config["samples"], "export_copies": None}}, lambda s: None), tmp_path)[0]
    assert metrics["cv_kappa_quadratic"] != plain["cv_kappa_quadratic"]  # the copies changed the fits
    from pipeline.config.card_render import render_markdown
    from pipeline.model.estimators import final_classifier
    from pipeline.training.train import build_card, fit_final

    final = fit_final(exp.config, data, tmp_path)
    assert final_classifier(final).validation_index_.max() < len(data.y)
    card = build_card(exp, data, metrics, cv, final_classifier(final), "digest", None).to_dict()
    assert card["dataset"]["export_copies"] == {"n": len(data.y), "long_side": 320, "jpeg_quality": 60, "failed": 0,
                                                "role": "training only"}
    assert "Export copies: " in render_markdown(card)


def test_a_bad_setting_is_refused_by_the_config_check():
    from pipeline.config.experiment import load_experiment
    from pipeline.errors import ConfigError
    from tests._tiny_store import TINY_EXPERIMENT

    with pytest.raises(ConfigError, match="export_copies"):
        load_experiment(TINY_EXPERIMENT, {"samples": {"export_copies": 0}})
    with pytest.raises(ConfigError, match="export_long_side"):
        load_experiment(TINY_EXPERIMENT, {"samples": {"export_copies": 75, "export_long_side": 10}})


def test_copies_are_refused_where_they_would_be_wrong_before_any_work():
    from pipeline.config.experiment import load_experiment
    from pipeline.errors import ConfigError
    from tests._tiny_store import TINY_EXPERIMENT

    lesion = {"dataset": {"task": "malignancy", "classes": ["benign", "malignant"]}, "samples": {"export_copies": 75}}
    with pytest.raises(ConfigError, match="whole-breast tasks"):  # an ROI in the original's pixels
        load_experiment(TINY_EXPERIMENT, lesion)
    tuned = {"features": {"cnn": {"enabled": True, "finetune": {"enabled": True}}}, "samples": {"export_copies": 75}}
    with pytest.raises(ConfigError, match="finetune.enabled is true"):  # its early-stopping split would hold copies
        load_experiment(TINY_EXPERIMENT, tuned)


def test_no_copy_made_leaves_the_originals_to_train_alone():
    from pipeline.training.copies import training_rows

    X, y, groups = np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]), np.array(list("abcd"))
    none_made = _copies(np.zeros(0, int), np.zeros((0, 3), np.float32))
    Xt, yt, gt, _, aug = training_rows(X, y, groups, None, np.arange(4), none_made)
    assert Xt.shape == (4, 3) and aug is None
    other = _copies([3], np.zeros((1, 3), np.float32))  # only a test row's copy exists
    assert training_rows(X, y, groups, None, np.arange(3), other)[4] is None


def test_copies_without_patient_groups_are_refused():
    from sklearn.linear_model import LogisticRegression

    from pipeline.model.estimators import PatientCalibratedClassifier

    X = np.random.default_rng(0).normal(size=(40, 2))
    y = np.tile([0, 1], 20)
    with pytest.raises(ValueError, match="augmented rows need groups"):
        PatientCalibratedClassifier(LogisticRegression()).fit(X, y, augmented=np.r_[np.zeros(20, bool),
                                                                                      np.ones(20, bool)])
