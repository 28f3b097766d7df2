"""A trained screening model and its one scoring path: image -> probability, call and heat map on the original
image; images of a manifest -> per-image, per-breast and per-exam rows that agree with each other.

Hand-off for the Task registry / Predictor: `ScreeningModel` is picklable (like the Pipelines it holds);
`fit_screening_model` trains it, `score_image` / `score_table` / `fused_rows` are what predict and the app call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pipeline.evaluate import choose_threshold
from pipeline.model import final_classifier
from pipeline.screening.evaluate import LEVELS, _level_proba, level_ids
from pipeline.screening.heatmap import sample_heatmap
from pipeline.screening.labels import CLASSES
from pipeline.screening.samples import map_to_original, screening_sample

__all__ = ["ScreeningModel", "fit_screening_model", "score_image", "score_table", "fused_rows"]


@dataclass
class ScreeningModel:
    """The fitted screening Pipeline, the tile scorer behind the map, the sample side, the view fusion and one
    operating point per level (chosen on the inner out-of-fold probabilities of the training images)."""

    pipeline: Pipeline
    map_pipeline: Pipeline | None
    side: int
    view_fusion: str = "mean"
    thresholds: dict[str, float] = field(default_factory=dict)
    target_sensitivity: float = 0.95
    classes: tuple[str, str] = tuple(CLASSES)  # type: ignore[assignment]


def fit_screening_model(config: Mapping[str, Any], X: np.ndarray, y: np.ndarray, table: pd.DataFrame,
                        cache_dir: Any = None, with_map: bool = True) -> ScreeningModel:
    """Fit on all of (X, y) (rows of `table`); thresholds per level from the classifier's inner validation."""
    from pipeline.screening.model import build_map_pipeline, build_screening_pipeline
    from pipeline.screening.samples import sample_side

    groups = table["patient_id"].astype(str).to_numpy()
    pipe = build_screening_pipeline(config, cache_dir).fit(X, y, classifier__groups=groups)
    clf = final_classifier(pipe)
    how = config["screening"]["view_fusion"]
    target = float(config["evaluation"]["target_sensitivity"])
    ids = {k: v[clf.validation_index_] for k, v in level_ids(table).items()}
    inner = _level_proba(clf.validation_proba_[:, 1], y[clf.validation_index_], ids, how)
    thresholds = {lv: choose_threshold(inner[lv][1], inner[lv][2], target) for lv in LEVELS}
    mapper = build_map_pipeline(config, cache_dir).fit(X, y) if with_map else None
    return ScreeningModel(pipe, mapper, sample_side(config["samples"]["size"], config["screening"]["scale"]), how,
                          thresholds, target)


def score_image(model: ScreeningModel, image: np.ndarray, laterality: str | None = None,
                with_map: bool = True) -> dict[str, Any]:
    """{"p_malignant", "threshold", "call", "heatmap" (H, W) on the original image or None} of one image."""
    sample, geom = screening_sample(image, laterality, model.side)
    p = float(model.pipeline.predict_proba(sample.reshape(1, -1))[0, 1])
    heat = None
    if with_map and model.map_pipeline is not None:
        heat = map_to_original(sample_heatmap(model.map_pipeline, sample), geom)
    t = float(model.thresholds.get("image", 0.5))
    return {"p_malignant": p, "threshold": t, "call": model.classes[int(p >= t)], "heatmap": heat}


def score_table(model: ScreeningModel, table: pd.DataFrame, X: np.ndarray) -> pd.DataFrame:
    """Per-image rows (sample_id, patient_id, breast_id, exam_id, p_malignant, threshold, call) of samples X."""
    p = model.pipeline.predict_proba(X)[:, 1]
    ids = level_ids(table)
    t = float(model.thresholds.get("image", 0.5))
    return pd.DataFrame({"level": "image", "sample_id": ids["image"], "patient_id": table["patient_id"].astype(str),
                         "breast_id": ids["breast"], "exam_id": ids["exam"], "p_malignant": p, "threshold": t,
                         "call": np.where(p >= t, model.classes[1], model.classes[0])})


def fused_rows(model: ScreeningModel, images: pd.DataFrame) -> pd.DataFrame:
    """Per-breast (views fused by model.view_fusion) and per-exam (most suspicious breast) rows of score_table's
    per-image rows, each with its level's operating point and call."""
    y = np.zeros(len(images), int)
    ids = {"image": images["sample_id"].to_numpy(str), "breast": images["breast_id"].to_numpy(str),
           "exam": images["exam_id"].to_numpy(str)}
    levels = _level_proba(images["p_malignant"].to_numpy(float), y, ids, model.view_fusion)
    out = []
    for lv in ("breast", "exam"):
        u, _, p = levels[lv]
        t = float(model.thresholds.get(lv, 0.5))
        out.append(pd.DataFrame({"level": lv, f"{lv}_id": u, "p_malignant": p, "threshold": t,
                                 "call": np.where(p >= t, model.classes[1], model.classes[0])}))
    return pd.concat(out, ignore_index=True)
