"""Conformal prediction sets with crepes: calibrated on held-out patients, class-conditional (Mondrian by label).

The non-conformity score of a label is ``1 - p(label)`` (crepes.extras.hinge) of the calibrated probabilities. The
calibration scores are those of rows the model did not see while fitting: the inner out-of-fold probabilities that
`pipeline.model.estimators.PatientCalibratedClassifier` keeps of its validation patients (`validation_proba_`), so inside an
outer CV fold nothing of the test fold is used. With ``class_conditional=True`` each label is calibrated on the rows
of that label only (Mondrian conformal prediction), which holds the coverage in every class, rare ones included:
a class with fewer than ``1 / (1 - coverage) - 1`` calibration rows is then always in the set (honest: too few to
exclude it). p-values are not smoothed, so sets are deterministic and coverage is at least the nominal level
(at most ``1 / (n_class + 1)`` above it).

The state is a plain JSON-able dict (calibration scores and labels), stored in the model card (`extra.conformal`); sets are
formed at predict time by a crepes ConformalClassifier fitted from it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "calibrate",
    "predict_sets",
    "set_label",
    "set_labels",
    "coverage_metrics",
    "nominal_interval",
    "UNCERTAIN",
]

UNCERTAIN = "uncertain: second read"
EMPTY = "none fits: atypical image, second read"


def calibrate(proba: np.ndarray, y: Sequence[int], coverage: float = 0.90, *,
              class_conditional: bool = True) -> dict[str, Any]:
    """JSON-able conformal state from calibration probabilities (n, k) of held-out rows and their labels (0..k-1)."""
    from crepes.extras import hinge

    proba = np.asarray(proba, dtype=float)
    y = np.asarray(y, dtype=int)
    if proba.ndim != 2 or len(proba) != len(y):
        raise ValueError(f"proba must be (n, k) with one row per label. Got {proba.shape} for {len(y)} labels.")
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1). Got {coverage!r} instead.")
    alphas = hinge(proba, np.arange(proba.shape[1]), y)
    return {"method": "crepes mondrian (class-conditional)" if class_conditional else "crepes standard",
            "coverage": float(coverage), "class_conditional": bool(class_conditional), "n_classes": int(proba.shape[1]),
            "alphas": [float(a) for a in alphas], "labels": [int(v) for v in y],
            "n_per_class": [int((y == c).sum()) for c in range(proba.shape[1])]}


def predict_sets(state: Mapping[str, Any], proba: np.ndarray) -> np.ndarray:
    """Boolean membership (n, k): label j is in row i's set at the state's coverage (crepes ConformalClassifier)."""
    from crepes import ConformalClassifier
    from crepes.extras import hinge

    proba = np.atleast_2d(np.asarray(proba, dtype=float))
    k = int(state["n_classes"])
    if proba.shape[1] != k:
        raise ValueError(f"proba must have {k} columns (the calibrated classes). Got {proba.shape} instead.")
    alphas_cal = np.asarray(state["alphas"], dtype=float)
    labels = np.asarray(state["labels"], dtype=int)
    alphas = hinge(proba)
    conf = float(state["coverage"])
    if not state.get("class_conditional", True):
        cc = ConformalClassifier().fit(alphas_cal)
        return np.asarray(cc.predict_set(alphas, confidence=conf, smoothing=False), dtype=bool)
    cc = ConformalClassifier().fit(alphas_cal, bins=labels)
    out = np.ones((len(proba), k), dtype=bool)  # a label never seen in calibration cannot be excluded
    for c in np.unique(labels):
        out[:, c] = np.asarray(cc.predict_set(alphas, bins=np.full(len(proba), c), confidence=conf,
                                              smoothing=False), dtype=bool)[:, c]
    return out


def set_label(classes: Sequence[str], member: Sequence[bool], *, several_is_uncertain: bool = False) -> str:
    """Words for one set: "B or C"; with `several_is_uncertain` (a binary call, e.g. malignancy) a set of both
    classes reads "uncertain: second read"; an empty set says that no class fits."""
    chosen = [str(c) for c, m in zip(classes, member) if m]
    if not chosen:
        return EMPTY
    if several_is_uncertain and len(chosen) > 1:
        return UNCERTAIN
    return " or ".join(chosen)


def set_labels(classes: Sequence[str], sets: np.ndarray, *, several_is_uncertain: bool = False) -> list[str]:
    """`set_label` of every row of a membership matrix (n, k)."""
    return [set_label(classes, row, several_is_uncertain=several_is_uncertain) for row in np.asarray(sets, dtype=bool)]


def nominal_interval(n: int, coverage: float, level: float = 0.95) -> tuple[float, float]:
    """Central binomial `level` interval of the empirical coverage of n exchangeable rows at nominal `coverage`."""
    if n <= 0:
        return (float("nan"), float("nan"))
    lo, hi = stats.binom.interval(level, n, coverage)
    return float(lo) / n, float(hi) / n


def coverage_metrics(y: Sequence[int], sets: np.ndarray, classes: Sequence[str], coverage: float,
                     prefix: str = "conformal_") -> dict[str, float]:
    """Empirical coverage overall and per class, with the binomial 95% interval of the nominal level for that many
    rows (`*_nominal_low/high`), mean set size, and the share of singleton / empty sets."""
    y = np.asarray(y, dtype=int)
    sets = np.asarray(sets, dtype=bool)
    hit = sets[np.arange(len(y)), y]
    size = sets.sum(axis=1)
    out: dict[str, float] = {f"{prefix}level": float(coverage)}
    for name, sel in [("", np.ones(len(y), bool))] + [(f"_{c}", y == j) for j, c in enumerate(classes)]:
        n = int(sel.sum())
        out[f"{prefix}coverage{name}"] = float(hit[sel].mean()) if n else float("nan")
        out[f"{prefix}coverage{name}_nominal_low"], out[f"{prefix}coverage{name}_nominal_high"] = \
            nominal_interval(n, coverage)
        out[f"{prefix}n{name}"] = float(n)
    out[f"{prefix}mean_set_size"] = float(size.mean()) if len(y) else float("nan")
    out[f"{prefix}singleton_share"] = float((size == 1).mean()) if len(y) else float("nan")
    out[f"{prefix}empty_share"] = float((size == 0).mean()) if len(y) else float("nan")
    return out
