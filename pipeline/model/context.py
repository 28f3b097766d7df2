"""Multi-view context of screening images (switch ``screening.context``, default off): a reader compares each view
with the other view of the same breast and with the same view of the other breast (bilateral asymmetry).

A second stage on image scores: per image, the logit of its first-stage probability beside the differences to the
mean logit of the other view(s) of its breast (ipsilateral) and of the contralateral breast (same view where there is
one, else all its views) (and, with ``context_presence: true``, indicators of which of them exist) -> a logistic
regression. It is fitted on inner
out-of-fold probabilities of the training images only (`PatientCalibratedClassifier.validation_proba_`) and applied
to the test (or served) images with the other images of their exam. With ``screening.context_presence: true`` (the
stage before 2026-12-06) an image without any other view of its exam keeps its first-stage probability unchanged
(the single-image score), in CV and in serving alike.

With ``screening.context_presence: false`` (the default) the stage cannot learn what is missing instead of what is seen: no
has_ipsi / has_contra column, a missing view's difference imputed as 0 ("the other view looks like this one"), and
the stage fitted on and applied to every image, those without other views included; so an image whose other views
score as it does gets exactly the probability it gets alone, and the output does not move with the number of views
alone. A fitted stage says which it is by its number of columns (`stage_layout`): presence flags 6 (+1 asymmetry),
without 4 (+1).

With ``screening.context_asymmetry`` one more column joins them: the image's bilateral asymmetry score
(pipeline.model.asymmetry: a linear model of its tile-max embedding minus the contralateral breast's), passed in
as per-image scores `asymmetry` (0 where the image has no contralateral breast).

Metadata: breast and exam ids from `pipeline.io.exams.level_ids` (patient / exam_id, laterality);
the columns ``laterality`` (L/R) and ``view`` (e.g. CC, MLO) of the table, either of which may be missing.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.io.exams import level_ids

__all__ = ["FEATURES", "PRESENCE", "contralateral_rows", "contralateral_mean", "context_features", "has_context",
           "stage_layout", "uses_asymmetry", "fit_context", "apply_context", "cross_fit_context"]

FEATURES = ("logit", "ipsi_minus_self", "contra_same_view_minus_self", "contra_minus_self", "has_ipsi", "has_contra")
PRESENCE = ("has_ipsi", "has_contra")  # the view-presence columns (left out with screening.context_presence: false)
_EPS = 1e-6
_MIN_ROWS = 8  # fewer training images with context than this: no context model (every image keeps its score)


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    """Upper-case stripped strings of a metadata column ('' where missing or absent)."""
    if name not in table.columns:
        return pd.Series([""] * len(table), index=table.index)
    return table[name].fillna("").astype(str).str.strip().str.upper()


def contralateral_rows(table: pd.DataFrame) -> list[np.ndarray]:
    """Per row, the positions (into `table`) of its contralateral comparison images: the other breast of its exam,
    the same view where there is one, else all its views; empty where unknown (no laterality, no other breast)."""
    t = table.reset_index(drop=True)
    exam = np.asarray(level_ids(t)["exam"], str)
    side, view = _column(t, "laterality").to_numpy(), _column(t, "view").to_numpy()
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, (e, s) in enumerate(zip(exam, side)):
        if s in ("L", "R"):
            by_key.setdefault((e, s), []).append(i)
    out = []
    for i, (e, s) in enumerate(zip(exam, side)):
        other = np.asarray(by_key.get((e, "R" if s == "L" else "L"), []) if s in ("L", "R") else [], int)
        same = other[view[other] == view[i]] if view[i] and len(other) else other[:0]
        out.append(same if len(same) else other)
    return out


def contralateral_mean(values: np.ndarray, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(the mean of `values` ((n,) or (n, D), rows of `table`) over each row's contralateral comparison images, 0
    where it has none; (n,) bool: it has some)."""
    values = np.asarray(values, np.float64)
    partners = contralateral_rows(table)
    has = np.array([len(q) > 0 for q in partners], bool)
    mean = np.zeros_like(values)
    for i in np.flatnonzero(has):
        mean[i] = values[partners[i]].mean(axis=0)
    return mean, has


def context_features(p: np.ndarray, table: pd.DataFrame, asymmetry: np.ndarray | None = None, *,
                     presence: bool = True) -> np.ndarray:
    """(n, len(FEATURES)) float: each image's first-stage logit and its differences to the other views of its exam
    (0 where a view is absent, flagged by has_ipsi / has_contra; `presence` False: without those two columns); with
    per-image `asymmetry` scores (n,), one more column: the image's score minus its contralateral breast's
    (pipeline.model.asymmetry.asymmetry_of)."""
    p = np.clip(np.asarray(p, float), _EPS, 1 - _EPS)
    z = np.log(p / (1 - p))
    ids = level_ids(table.reset_index(drop=True))
    side = _column(table, "laterality").to_numpy()
    df = pd.DataFrame({"z": z, "breast": ids["breast"], "exam": ids["exam"], "side": side})
    known = df["side"].isin(["L", "R"]).to_numpy()
    g = df.groupby("breast")["z"]
    total, count = g.transform("sum").to_numpy(), g.transform("count").to_numpy()
    ipsi = np.where(known & (count > 1), (total - z) / np.maximum(count - 1, 1), np.nan)
    other = np.where(df["side"] == "L", "R", "L")
    by_side = df[known].groupby(["exam", "side"])["z"].mean()
    contra = by_side.reindex(pd.MultiIndex.from_arrays([df["exam"], other])).to_numpy()
    contra = np.where(known, contra, np.nan)
    contra_same, _ = contralateral_mean(z, table)  # the same view of the other breast, else all its views
    has_ipsi, has_contra = np.isfinite(ipsi), np.isfinite(contra)
    columns = [z, np.where(has_ipsi, ipsi - z, 0.0), np.where(has_contra, contra_same - z, 0.0),
               np.where(has_contra, contra - z, 0.0), *((has_ipsi, has_contra) if presence else ())]
    if asymmetry is not None:
        from pipeline.model.asymmetry import asymmetry_of

        columns.append(asymmetry_of(np.asarray(asymmetry, float), table))
    return np.column_stack(columns).astype(float)


def stage_layout(model: Any) -> tuple[bool, bool]:
    """(reads presence flags, reads the asymmetry column) of a fitted context stage, from its number of columns."""
    n = int(getattr(model, "n_features_in_", len(FEATURES)))
    free = len(FEATURES) - len(PRESENCE)
    if n not in (free, free + 1, len(FEATURES), len(FEATURES) + 1):
        raise ValueError(f"a context stage reads {free} to {len(FEATURES) + 1} columns; this one reads {n}")
    return n >= len(FEATURES), n in (free + 1, len(FEATURES) + 1)


def uses_asymmetry(model: Any | None) -> bool:
    """Whether a fitted context stage reads the asymmetry column (it was fitted with asymmetry scores)."""
    return model is not None and stage_layout(model)[1]


def has_context(features: np.ndarray) -> np.ndarray:
    """Rows with at least one other view of their exam (the others keep their first-stage score)."""
    return (features[:, 4] > 0) | (features[:, 5] > 0)


def fit_context(p: np.ndarray, y: np.ndarray, table: pd.DataFrame, C: float = 1.0,
                asymmetry: np.ndarray | None = None, presence: bool = True) -> Any | None:
    """The second stage (StandardScaler -> LogisticRegression(C)) on the images with context (with their
    `asymmetry` scores as a column where given), or None where too few of them (or one class) are there to fit it.
    `presence` False: no presence flags, fitted on every image (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f = context_features(p, table, asymmetry, presence=presence)
    sel = has_context(f) if presence else np.ones(len(f), bool)
    y = np.asarray(y, int)
    if sel.sum() < _MIN_ROWS or len(np.unique(y[sel])) < 2:
        return None
    return make_pipeline(StandardScaler(), LogisticRegression(C=float(C), max_iter=1000)).fit(f[sel], y[sel])


def apply_context(model: Any | None, p: np.ndarray, table: pd.DataFrame,
                  asymmetry: np.ndarray | None = None) -> np.ndarray:
    """P(malignant) per image with its exam's other views (and their `asymmetry` scores, which a stage fitted with
    them needs); an image without any keeps `p` (so does every image when `model` is None), except under a stage
    without presence flags, which scores every image (a missing view's difference 0)."""
    p = np.asarray(p, float)
    if model is None or len(p) == 0:
        return p.copy()
    if uses_asymmetry(model) and asymmetry is None:
        raise ValueError("this context stage was fitted with bilateral asymmetry scores: pass each image's "
                         "asymmetry score (the model's image_scores of its tile-max block)")
    presence, asym = stage_layout(model)
    f = context_features(p, table, asymmetry if asym else None, presence=presence)
    sel = has_context(f) if presence else np.ones(len(f), bool)  # without flags: every image, alone or not
    out = p.copy()
    if sel.any():
        out[sel] = model.predict_proba(f[sel])[:, 1]
    return out


def context_pays(y: np.ndarray, first: np.ndarray, context: np.ndarray) -> bool:
    """True when the context stage's out-of-fold probabilities rank the training images better (ROC AUC) than the
    first stage's: the per-training-fold decision of ``screening.context: auto`` (training rows only)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, int)
    if len(np.unique(y)) < 2:
        return False
    return bool(roc_auc_score(y, context) > roc_auc_score(y, first))


def cross_fit_context(p: np.ndarray, y: np.ndarray, table: pd.DataFrame, groups: np.ndarray, C: float = 1.0,
                      folds: int = 3, asymmetry: np.ndarray | None = None, presence: bool = True) -> np.ndarray:
    """Out-of-fold second-stage probabilities of training images (patient-grouped folds): what the operating points
    are chosen on, so that no threshold is picked on the context model's own training rows."""
    from sklearn.model_selection import GroupKFold

    p = np.asarray(p, float)
    groups = np.asarray(groups)
    out = p.copy()
    k = min(int(folds), len(np.unique(groups)))
    if k < 2:
        return out
    table = table.reset_index(drop=True)
    a = None if asymmetry is None else np.asarray(asymmetry, float)
    for tr, te in GroupKFold(n_splits=k).split(p, y, groups):
        model = fit_context(p[tr], np.asarray(y)[tr], table.iloc[tr], C, None if a is None else a[tr], presence)
        out[te] = apply_context(model, p[te], table.iloc[te], None if a is None else a[te])
    return out
