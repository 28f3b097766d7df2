"""ExamModel: one fit path for the exam stage. Real CDD-CESM rows (tiny settings: a random tiny CNN, 32 px working
resolution), each cross-validation fold and the final model fitted by the same ExamModel.fit, recorded."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.serving.test_screening_acceptance import CDD

pytestmark = pytest.mark.skipif(not CDD.is_file(), reason="CDD-CESM is not in shared/data")


def test_a_cv_fold_and_the_final_fit_run_the_same_exam_model_fit(tmp_path, monkeypatch):
    import pipeline.model.asymmetry as asymmetry
    import pipeline.model.context as context
    import pipeline.model.routing as routing
    from pipeline.model.estimators import build_pipeline
    from pipeline.model.exam import ExamModel
    from pipeline.model.screening import build_exam_model
    from pipeline.training.train import evaluate_experiment, fit_final, head_pipeline, load_task_features
    from tests.training.test_screening_stream import _config

    cache = tmp_path / "cache"
    cfg = _config(cache)
    data = load_task_features(cfg, lambda s: None, cache_dir=cache)
    cfg["compute"]["n_jobs"] = 1  # folds in this process, where the recorders are
    calls: list[dict] = []
    fit = ExamModel.fit

    def recording_fit(self, X, y, *, groups=None, exams=None):
        calls.append({"model": self, "n": len(y), "steps": []})
        return fit(self, X, y, groups=groups, exams=exams)

    def recorder(module, name):
        original = getattr(module, name)

        def record(*args, **kwargs):
            if calls:
                calls[-1]["steps"].append(name)
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, record)

    monkeypatch.setattr(ExamModel, "fit", recording_fit)
    recorder(routing, "fit_with_groups")  # the recording stand-in first stage: the image pipeline's fit
    for module, name in ((context, "fit_context"), (context, "cross_fit_context"), (context, "context_pays"),
                         (asymmetry, "cross_fit_asymmetry")):
        recorder(module, name)

    metrics, cv, oof = evaluate_experiment(cfg, data, cache)
    n_folds = len(cv.folds)
    final = fit_final(cfg, data, cache)

    assert len(calls) == n_folds + 1 and calls[-1]["model"] is final and isinstance(final, ExamModel)
    assert [c["n"] for c in calls] == [len(tr) for tr, _ in cv.folds] + [len(data.y)]
    stages = [c["steps"] for c in calls]
    assert stages[0][0] == "fit_with_groups" and {"cross_fit_asymmetry", "fit_context",
                                                   "cross_fit_context"} <= set(stages[0])
    assert all(s == stages[0] for s in stages)  # every fold and the final model: the same steps in the same order
    assert final.heatmap_ is not None and all(c["model"].heatmap_ is None for c in calls[:-1])  # the map: served
    # the CV's builder on all rows gives the final model's exam stage (only the map differs)
    same = build_exam_model(cfg, head_pipeline(build_pipeline(cfg, cache), data), with_map=False)
    same = fit(same, data.features, data.y, groups=data.groups, exams=data.table)
    assert same.thresholds_ == final.thresholds_ and same.context_used_ == final.context_used_
    assert same.asymmetry_columns_ == final.asymmetry_columns_
    # the fold models' thresholds are what the CV's calls used
    assert metrics["cv_folds_context_kept"] == sum(c["model"].context_used_ for c in calls[:-1])


def test_score_levels_fuses_views_into_breasts_and_exams_at_the_model_thresholds():
    """ExamLevels of a model without a context stage on a four-view exam and a single image."""
    from sklearn.pipeline import Pipeline

    from pipeline.model.exam import ExamModel
    from tests.training.test_context import ScoreColumn

    rng = np.random.default_rng(0)
    n = 60
    exams = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i // 4}" for i in range(n)],
                          "laterality": ["L", "L", "R", "R"] * (n // 4), "view": ["CC", "MLO"] * (n // 2)})
    y = (rng.uniform(size=n) < 0.4).astype(int)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, n), 0.01, 0.99)
    model = ExamModel(Pipeline([("classifier", ScoreColumn())]), view_fusion="max").fit(
        p[:, None], y, groups=exams["patient_id"].to_numpy(), exams=exams)
    new = pd.DataFrame({"sample_id": ["a", "b", "c", "d", "e"], "patient_id": ["q", "q", "q", "q", "r"],
                        "laterality": ["L", "L", "R", "R", None], "view": ["CC", "MLO", "CC", "MLO", "CC"]})
    q = np.array([0.2, 0.9, 0.1, 0.3, 0.5])
    out = model.predict_levels(q[:, None], new)
    assert list(out.images["p"]) == list(out.images["p_single"]) == list(q)
    assert list(out.breasts["breast_id"]) == ["q|L", "q|R", "r|e"] and list(out.breasts["p"]) == [0.9, 0.3, 0.5]
    assert list(out.breasts["views"]) == ["CC,MLO", "CC,MLO", "CC"] and list(out.breasts["n_images"]) == [2, 2, 1]
    assert list(out.exams["exam_id"]) == ["q", "r"] and list(out.exams["most_suspicious_breast"]) == ["q|L", "r|e"]
    t = model.thresholds_
    assert list(out.exams["call"]) == [int(v >= t["exam"]) for v in out.exams["p"]]
    assert (out.images["threshold"] == t["image"]).all() and set(t) == {"image", "breast", "exam"}
