"""benchmarks/reexport.py: 640 px JPEG re-exports of real images, and the same test images scored both ways."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests._benchmarks import benchmark_module


def _module():
    return benchmark_module("reexport")


def test_reexport_file_is_a_640_px_8_bit_jpeg_of_the_same_breast(mias_dir: Path, tmp_path: Path):
    from pipeline.io.imageio import read_image

    src = mias_dir / "images" / "mdb005.png"
    dst = tmp_path / "mdb005.jpg"
    _module().reexport_file(src, dst, quality=90)
    assert dst.read_bytes()[:2] == b"\xff\xd8"  # a JPEG stream
    small, _ = read_image(dst)
    full, _ = read_image(src)
    assert max(small.shape) == 640
    # the same picture: the 640 px copy against the original brought to its size (JPEG error is a few grey levels)
    from skimage.transform import resize

    ref = resize(full, small.shape, anti_aliasing=True)
    assert np.corrcoef(ref.ravel(), small.ravel())[0, 1] > 0.98
    mtime = dst.stat().st_mtime_ns
    _module().reexport_file(src, dst, quality=90)  # written once, then reused
    assert dst.stat().st_mtime_ns == mtime


def test_tissue_rows_score_the_same_test_images_original_and_reexported_and_pair_two_trainings(
        mias_dir: Path, tmp_path: Path):
    sets = ["dataset.max_samples=30", "evaluation.folds=2", "features.cnn.enabled=false",
            "model.n_estimators=20"]
    mod = _module()
    rows = mod.run_task("tissue", 90, "original", sets, tmp_path / "cache", 50, lambda s: None)
    metrics = [r["metric"] for r in rows]
    assert metrics[0] == "kappa_w per image" and metrics[-1].startswith("kappa_w per exam")
    assert all({"original", "re_export", "re_export - original (paired)"} <= set(r) for r in rows)
    written = sorted((tmp_path / "cache" / "reexport-q90" / "mias" / "images").glob("*.jpg"))
    assert len(written) == 30  # every sampled image, and only those
    kept = mod._load(mod._result_file(tmp_path / "cache", 90, "tissue", "original", sets))
    assert set(kept) == {"original", "reexport"} and len(kept["original"]["call"]) == 30

    paired = mod.run_task("tissue", 90, "both", sets, tmp_path / "cache", 50, lambda s: None, pair_with="original")
    extra = [r for r in paired if "tested on" in r["metric"]]
    assert len(extra) == 2 * len(rows)  # every metric, on the originals and on the re-exports
    assert all("trained_both - trained_original (paired)" in r for r in extra)
    with pytest.raises(SystemExit, match="run --train-on reexport first"):
        mod.run_task("tissue", 90, "both", sets, tmp_path / "cache", 50, lambda s: None, pair_with="reexport")


def test_training_with_reexports_keeps_each_copy_in_its_patient_and_an_exam_of_its_own(tmp_path: Path, monkeypatch):
    """--train-on both / nested: a copy is its patient's row (inner folds keep the pair together) in an exam of its
    own (the exam stage never reads a woman's own re-export as her other view); nested picks by inner AUC."""
    from pipeline.io.exams import exam_ids
    from pipeline.model.exam import ExamModel
    from pipeline.model.screening import build_screening_pipeline
    from pipeline.training.train import load_task_data
    from tests.serving.test_screening_acceptance import CDD
    from tests.training.test_screening_stream import _config

    if not CDD.is_file():
        pytest.skip("CDD-CESM is not in shared/data")
    mod = _module()
    cache = tmp_path / "cache"
    cfg = _config(cache)
    cfg["compute"]["n_jobs"] = 1
    data = load_task_data(cfg, progress=lambda s: None)
    Xr = np.clip(data.X * 0.9 + 0.05, 0, 1).astype(np.float32)  # a stand-in re-export: same breasts, other grey levels
    table = data.table.reset_index(drop=True).copy()
    table["exam_id"] = exam_ids(table)
    seen: list[tuple[np.ndarray, pd.DataFrame]] = []
    marks: list = []
    fit = ExamModel.fit

    def recording_fit(self, X, y, *, groups=None, exams=None, augmented=None):
        seen.append((np.asarray(groups), exams))
        marks.append(augmented)
        return fit(self, X, y, groups=groups, exams=exams, augmented=augmented)

    monkeypatch.setattr(ExamModel, "fit", recording_fit)
    pipe = build_screening_pipeline(cfg, cache)
    tr = np.arange(len(data.y))
    mod._fit_exam(cfg, pipe, data, Xr, table, tr, "both")
    groups, exams = seen[-1]
    n = len(tr)
    assert len(exams) == 2 * n and (groups[:n] == groups[n:]).all()
    assert not set(exams["exam_id"][:n]) & set(exams["exam_id"][n:])  # no copy shares an exam with an original
    assert exams["sample_id"].is_unique and marks[-1] is None  # "both": the copies are held out like originals

    est = mod._fit_exam(cfg, pipe, data, Xr, table, tr, "augment")  # the copies only train
    assert marks[-1] is not None and not marks[-1][:n].any() and marks[-1][n:].all()
    from pipeline.model.estimators import final_classifier
    assert final_classifier(est.pipeline_).validation_index_.max() < n  # calibrated and thresholded on originals

    seen.clear()
    choice, auc = mod.choose_training(cfg, pipe, data, Xr, table, tr)
    assert choice in ("original", "both") and set(auc) == {"original", "both"}
    assert all(0.0 <= v <= 1.0 for v in auc.values())
    assert choice == ("both" if auc["both"] > auc["original"] else "original")
    assert len(seen) == 6  # 3 inner folds x 2 candidates, each fitted without its held-out patients
    assert [len(e) for _, e in seen[3:]] == [2 * len(e) for _, e in seen[:3]]
