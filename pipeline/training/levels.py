"""Screening evaluation at three levels: image, breast (its views fused: mean or max of their probabilities) and
exam (its most suspicious breast), from one patient-level cross-validation.

The operating point of each level is chosen inside the training folds: the final classifier's inner out-of-fold
probabilities of the training images (`PatientCalibratedClassifier.validation_proba_`) are fused the same way and
the highest threshold reaching the target sensitivity there is applied unchanged to the test fold.

With ``context_C`` set (experiment switch ``screening.context``), each fold also fits the multi-view context stage
(pipeline.model.context) on those inner out-of-fold probabilities and replaces the test images' probabilities by
its output before fusing; the thresholds are then chosen on its patient-grouped out-of-fold output (`image_proba`).
With `asymmetry` (the (n, D) tile-max block of every image and the C of ``screening.context_asymmetry``), the
fold also cross-fits the bilateral asymmetry model (pipeline.model.asymmetry) on the same training rows and the
context stage reads its scores: out-of-fold ones for the training rows, the mean of the fold models for the test
rows (none where too few training images have a contralateral breast: the stage then reads no asymmetry).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import binary_metrics
from pipeline.evaluation.splits import patient_stratified_folds
from pipeline.io.exams import level_ids
from pipeline.model.levels import LEVELS, level_proba
from pipeline.training.cv import cross_validate

__all__ = ["check_folds", "LevelTracker", "LevelCV",
           "cross_validate_levels"]

log = logging.getLogger(__name__)


def check_folds(folds: list[tuple[np.ndarray, np.ndarray]], table: pd.DataFrame) -> None:
    """Raise RuntimeError when any patient, breast or exam has rows on both sides of a fold."""
    ids = {"patient": table["patient_id"].astype(str).to_numpy(), **level_ids(table)}
    for tr, te in folds:
        for level, col in ids.items():
            crossing = set(col[tr]) & set(col[te])
            if crossing:
                raise RuntimeError(f"{level} {sorted(crossing)[:3]} is in both a training and a test fold")


class LevelTracker:
    """Collects, fold by fold, each fitted ExamModel's operating point of each level and the test units' calls at
    it; then the metrics of the out-of-fold probabilities at every level (used by pipeline.training.train and the
    benchmarks). Every fold's exam stage is fitted by ExamModel.fit, as the final model's is."""

    def __init__(self, table: pd.DataFrame, y: np.ndarray, X: Any, how: str = "mean",
                 context: bool = False) -> None:
        self.table = table.reset_index(drop=True)
        self.ids = level_ids(table)
        self.y = np.asarray(y, int)
        self.X = X                              # what the fold models score (to read test rows' asymmetry)
        self.how = how
        self.context = bool(context)            # the levels read the context stage's output
        self.context_used: list[bool] = []      # per fold: was the context stage applied
        self.tile_scores_kept: list[bool] = []  # per fold, with screening.tile_scores_auto: did the fit keep them
        self.context_proba = np.full(len(self.y), np.nan)  # test images' context-stage probabilities (context on)
        self.thresholds: dict[str, list[float]] = {lv: [] for lv in LEVELS}
        self.calls: dict[str, dict[str, bool]] = {lv: {} for lv in LEVELS}

    def on_fold(self, i: int, tr: np.ndarray, te: np.ndarray, est: Any, p: np.ndarray) -> None:
        """The fold's ExamModel `est` (fitted on tr) scores the test rows te at every level at its own thresholds
        (an ExamSearch: the ExamModel it chose)."""
        est = getattr(est, "best_estimator_", est)
        if est.tile_scores_kept_ is not None:
            self.tile_scores_kept.append(bool(est.tile_scores_kept_))
        if est.context_C is not None:
            self.context_used.append(bool(est.context_used_))
        asym = est.image_asymmetry(_rows(self.X, te)) if est.asymmetry_ is not None else None
        test_p = est.score_levels(p[:, 1], self.table.iloc[te], asym).images["p"].to_numpy()
        if self.context:
            self.context_proba[te] = test_p
        outer = level_proba(test_p, self.y[te], {k: v[te] for k, v in self.ids.items()}, self.how)
        for lv in LEVELS:
            t = est.thresholds_[lv]
            self.thresholds[lv].append(float(t))
            self.calls[lv].update({u: float(q) >= t for u, q in zip(outer[lv][0], outer[lv][2])})

    def kept(self) -> dict[str, list[bool]]:
        """Per optional stage that some fold decided on (auto switches): whether each fold's fit kept it."""
        return {name: list(used) for name, used in (("context", self.context_used),
                                                    ("tile_scores", self.tile_scores_kept)) if used}

    def image_proba(self, p: np.ndarray) -> np.ndarray:
        """The out-of-fold image probabilities the levels are scored on: `p` (the first stage), or with the context
        stage on, its output on every image tested so far."""
        p = np.asarray(p, float)
        if not self.context:
            return p
        return np.where(np.isfinite(self.context_proba), self.context_proba, p)

    def metrics(self, p: np.ndarray, prefix: str = "{level}_", levels: tuple[str, ...] = LEVELS,
                **kw: Any) -> dict[str, float]:
        """binary_metrics of the out-of-fold positive-class probabilities `p` at each level (prefix per level;
        with the context stage on, of its output: `image_proba`), and with an optional stage on, how many folds'
        fits kept it (`{prefix at level "folds"}context_kept`, `...tile_scores_kept`)."""
        fused = level_proba(self.image_proba(p), self.y, self.ids, self.how)
        out: dict[str, float] = {}
        for name, used in self.kept().items():  # how many folds' fits kept an optional stage (auto switches)
            out[prefix.format(level="folds") + f"{name}_kept"] = float(sum(used))
        for lv in levels:
            u, yy, pp = fused[lv]
            out.update(binary_metrics(yy, pp, np.array([self.calls[lv][k] for k in u]),
                                      prefix=prefix.format(level=lv), **kw))
        return out

    def oof_columns(self, p: np.ndarray) -> dict[str, np.ndarray]:
        """Per image row: its breast and exam ids and their fused out-of-fold probabilities (and, with the context
        stage on, the image's own context-stage probability ``p_context``)."""
        fused = level_proba(self.image_proba(p), self.y, self.ids, self.how)
        out: dict[str, np.ndarray] = {}
        if self.context:
            out["p_context"] = self.image_proba(p)
        for lv in ("breast", "exam"):
            u, _, pp = fused[lv]
            out[f"{lv}_id"] = self.ids[lv]
            out[f"p_{lv}"] = pd.Series(pp, index=u).reindex(self.ids[lv]).to_numpy()
        return out


def _rows(X: Any, index: np.ndarray) -> Any:
    return X.iloc[index] if hasattr(X, "iloc") else np.asarray(X)[index]


@dataclass
class LevelCV:
    """Out-of-fold results of a screening cross-validation at each level."""

    metrics: dict[str, float]
    oof: pd.DataFrame                     # one row per image: ids, fold, label, p, fused breast and exam p
    thresholds: dict[str, list[float]]    # per level, the in-fold threshold of each fold
    calls: dict[str, dict[str, bool]] | None = None  # per level, {unit id: positive call at its fold's threshold}


def cross_validate_levels(make_estimator: Callable[[], Any], X: np.ndarray, y: np.ndarray, table: pd.DataFrame,
                          ev: Mapping[str, Any], how: str = "mean",
                          folds: list[tuple[np.ndarray, np.ndarray]] | None = None,
                          progress: Callable[[str], None] = log.info, context_C: float | None = None,
                          context_auto: bool = False, asymmetry_C: float | None = None, *,
                          context_presence: bool = False) -> LevelCV:
    """Patient-level CV of a binary image estimator (y 0/1), each fold an ExamModel around it, with
    image/breast/exam metrics and in-fold thresholds (`context_C`: with the multi-view context stage, `context_auto`:
    kept per fold where it pays, `asymmetry_C`: with the bilateral asymmetry score in it, `context_presence` False:
    the stage without view-presence flags)."""
    from pipeline.model.exam import ExamModel

    groups = table["patient_id"].astype(str).to_numpy()
    folds = folds or patient_stratified_folds(y, groups, ev["folds"], ev["seed"])
    check_folds(folds, table)
    tracker = LevelTracker(table, y, X, how, context_C is not None)

    def make() -> Any:
        return ExamModel(make_estimator(), context_C=context_C, context_auto=context_auto,
                         context_presence=context_presence, asymmetry_C=asymmetry_C, view_fusion=how, target_sensitivity=float(ev["target_sensitivity"]))

    def on_fold(i: int, tr: np.ndarray, te: np.ndarray, est: Any, p: np.ndarray) -> None:
        tracker.on_fold(i, tr, te, est, p)
        progress(f"fold {i + 1}/{len(folds)}: train {len(tr)} test {len(te)} images")

    cv = cross_validate(make, X, y, groups, folds, route_groups=True, on_fold=on_fold, exams=table)
    kw = dict(n_resamples=ev["bootstrap_resamples"], confidence_level=ev["confidence_level"], seed=ev["seed"],
              ece_bins=ev["ece_bins"])
    metrics = tracker.metrics(cv.proba[:, 1], **kw)
    oof = pd.DataFrame({"sample_id": tracker.ids["image"], "patient_id": groups, "fold": cv.fold, "y": y,
                        "p": cv.proba[:, 1], **tracker.oof_columns(cv.proba[:, 1])})
    return LevelCV(metrics, oof, tracker.thresholds, tracker.calls)
