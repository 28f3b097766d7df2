"""Trust features through a real (tiny) training: CV reports coverage and per-group thresholds, the registered model
carries its conformal and group-threshold states, and predict forms the set and says which threshold applied."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.paths import default_mias_dir

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (default_mias_dir() / "Info.txt").is_file(), reason="mini-MIAS not present")]


def test_cv_reports_coverage_per_class_and_group_thresholds(tiny_store):
    for task in ("density", "malignancy"):
        result = tiny_store.results[task]
        m, oof = result.metrics, result.oof
        classes = sorted(set(oof["label"]))
        for c in classes:
            assert 0.0 <= m[f"conformal_coverage_{c}"] <= 1.0
            assert m[f"conformal_n_{c}"] == (oof["label"] == c).sum()
        # the logged coverage is the share of OOF rows whose label is in their written set
        in_set = [label in s.split(" or ") or s == "uncertain: second read"
                  for label, s in zip(oof["label"], oof["prediction_set"])]
        assert m["conformal_coverage"] == pytest.approx(np.mean(in_set))
        assert 1.0 <= m["conformal_mean_set_size"] <= len(classes)
    m = tiny_store.results["malignancy"].metrics
    for group in ("cv", "dense", "nondense"):
        for rule in ("groupthr", "singlethr"):
            assert f"{group}_{rule}_sens_ci_low" in m
    assert m["cv_singlethr_sens"] == pytest.approx(m["cv_sens_at_target"])


def test_registered_models_form_sets_and_name_the_threshold(tiny_store):
    from pipeline.imageio import read_image
    from pipeline.predict import load_task_models, predict_image

    models = load_task_models(tracking_uri=tiny_store.tracking_uri)
    md = models["malignancy"].metadata
    assert md["conformal"]["coverage"] == 0.90 and len(md["conformal"]["alphas"]) > 0
    assert set(md["group_thresholds"]["groups"]) == {"dense", "nondense"}
    image, meta = read_image(sorted((default_mias_dir() / "images").glob("*.png"))[0])
    out = predict_image(image, meta, models)
    assert set(out["density"]["prediction_set"]) <= {"F", "G", "D"}
    mal = out["malignancy"]
    assert mal["prediction_set_label"] in {"benign", "malignant", "uncertain: second read",
                                           "none fits: atypical image, second read"}
    group = "dense" if out["density"]["predicted"] == "D" else "nondense"
    assert mal["density_group"] == group
    assert mal["threshold"] == md["group_thresholds"]["groups"][group]["threshold"]
    assert mal["call"] == ("malignant" if mal["probability_malignant"] >= mal["threshold"] else "benign")
