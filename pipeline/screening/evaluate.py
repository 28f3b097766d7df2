"""Screening evaluation at three levels: image, breast (its views fused: mean or max of their probabilities) and
exam (its most suspicious breast), from one patient-level cross-validation.

The operating point of each level is chosen inside the training folds: the final classifier's inner out-of-fold
probabilities of the training images (`PatientCalibratedClassifier.validation_proba_`) are fused the same way and
the highest threshold reaching the target sensitivity there is applied unchanged to the test fold.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.base import clone

from pipeline.evaluate import binary_metrics, choose_threshold, cross_validate, patient_stratified_folds
from pipeline.model import final_classifier
from pipeline.screening.labels import breast_ids, exam_ids

__all__ = ["LEVELS", "fuse", "level_ids", "check_folds", "LevelCV", "cross_validate_levels"]

log = logging.getLogger(__name__)
LEVELS = ("image", "breast", "exam")


def fuse(p: np.ndarray, y: np.ndarray, ids: np.ndarray, how: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group ids, group label = any positive, group probability = mean or max of its rows), groups sorted."""
    if how not in ("mean", "max"):
        raise ValueError(f"fusion must be 'mean' or 'max'; got {how!r}")
    df = pd.DataFrame({"id": np.asarray(ids, str), "y": np.asarray(y, int), "p": np.asarray(p, float)})
    g = df.groupby("id", sort=True)
    return g.size().index.to_numpy(), g["y"].max().to_numpy(), g["p"].agg(how).to_numpy()


def level_ids(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row -> unit id at each level (image = sample_id, breast = patient|side, exam = exam_id or patient)."""
    return {"image": table["sample_id"].astype(str).to_numpy(), "breast": breast_ids(table),
            "exam": exam_ids(table)}


def _level_proba(p: np.ndarray, y: np.ndarray, ids: Mapping[str, np.ndarray], how: str
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per level (ids, y, p); an exam's probability is the max over its breasts' fused probabilities."""
    out = {"image": fuse(p, y, ids["image"], "max"), "breast": fuse(p, y, ids["breast"], how)}
    b_ids, b_y, b_p = out["breast"]
    exam_of_breast = pd.Series(ids["exam"], index=ids["breast"]).groupby(level=0).first().reindex(b_ids).to_numpy()
    out["exam"] = fuse(b_p, b_y, exam_of_breast, "max")
    return out


def check_folds(folds: list[tuple[np.ndarray, np.ndarray]], table: pd.DataFrame) -> None:
    """Raise RuntimeError when any patient, breast or exam has rows on both sides of a fold."""
    ids = {"patient": table["patient_id"].astype(str).to_numpy(), **level_ids(table)}
    for tr, te in folds:
        for level, col in ids.items():
            crossing = set(col[tr]) & set(col[te])
            if crossing:
                raise RuntimeError(f"{level} {sorted(crossing)[:3]} is in both a training and a test fold")


@dataclass
class LevelCV:
    """Out-of-fold results of a screening cross-validation at each level."""

    metrics: dict[str, float]
    oof: pd.DataFrame                     # one row per image: ids, fold, label, p, fused breast and exam p
    thresholds: dict[str, list[float]]    # per level, the in-fold threshold of each fold


def cross_validate_levels(make_estimator: Callable[[], Any], X: np.ndarray, y: np.ndarray, table: pd.DataFrame,
                          ev: Mapping[str, Any], how: str = "mean",
                          folds: list[tuple[np.ndarray, np.ndarray]] | None = None,
                          progress: Callable[[str], None] = log.info) -> LevelCV:
    """Patient-level CV of a binary estimator (y 0/1) with image/breast/exam metrics and in-fold thresholds."""
    groups = table["patient_id"].astype(str).to_numpy()
    folds = folds or patient_stratified_folds(y, groups, ev["folds"], ev["seed"])
    check_folds(folds, table)
    ids = level_ids(table)
    target = float(ev["target_sensitivity"])
    thr: dict[str, list[float]] = {lv: [] for lv in LEVELS}
    calls = {lv: {} for lv in LEVELS}

    def on_fold(i: int, tr: np.ndarray, te: np.ndarray, est: Any, p: np.ndarray) -> None:
        clf = final_classifier(est)
        sub = {k: v[tr][clf.validation_index_] for k, v in ids.items()}
        inner = _level_proba(clf.validation_proba_[:, 1], y[tr][clf.validation_index_], sub, how)
        outer = _level_proba(p[:, 1], y[te], {k: v[te] for k, v in ids.items()}, how)
        for lv in LEVELS:
            t = choose_threshold(inner[lv][1], inner[lv][2], target)
            thr[lv].append(t)
            calls[lv].update({u: float(q) >= t for u, q in zip(outer[lv][0], outer[lv][2])})
        progress(f"fold {i + 1}/{len(folds)}: train {len(tr)} test {len(te)} images")

    cv = cross_validate(make_estimator, X, y, groups, folds, fit_groups_param="classifier__groups", on_fold=on_fold)
    levels = _level_proba(cv.proba[:, 1], y, ids, how)
    kw = dict(n_resamples=ev["bootstrap_resamples"], confidence_level=ev["confidence_level"], seed=ev["seed"],
              ece_bins=ev["ece_bins"])
    metrics: dict[str, float] = {}
    for lv in LEVELS:
        u, yy, pp = levels[lv]
        metrics.update(binary_metrics(yy, pp, np.array([calls[lv][k] for k in u]), prefix=f"{lv}_", **kw))
    oof = pd.DataFrame({"sample_id": ids["image"], "patient_id": groups, "breast_id": ids["breast"],
                        "exam_id": ids["exam"], "fold": cv.fold, "y": y, "p": cv.proba[:, 1]})
    for lv in ("breast", "exam"):
        u, _, pp = levels[lv]
        oof[f"p_{lv}"] = pd.Series(pp, index=u).reindex(oof[f"{lv}_id"]).to_numpy() if lv == "breast" else np.nan
    b = pd.Series(levels["exam"][2], index=levels["exam"][0])
    oof["p_exam"] = b.reindex(oof["exam_id"]).to_numpy()
    return LevelCV(metrics, oof, thr)
