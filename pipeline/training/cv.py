"""Cross-validation on given patient-level folds (locally or on a Dask cluster) and subgroup metrics of its output."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

__all__ = ["CVResult", "cross_validate", "subgroup_metrics", "site_groups", "site_metrics"]


# --------------------------------------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class CVResult:
    """Out-of-fold predictions of one cross-validation."""

    proba: np.ndarray                     # (n, k) out-of-fold probabilities, columns in `classes` order
    fold: np.ndarray                      # (n,) index of the fold where each sample was tested
    threshold: np.ndarray                 # (n,) operating point used for each sample (its fold's; NaN for multiclass)
    folds: list[tuple[np.ndarray, np.ndarray]]
    fold_thresholds: list[float] = field(default_factory=list)
    fold_metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def call(self) -> np.ndarray:
        """Binary decision at each sample's fold threshold (positive class = column 1)."""
        return self.proba[:, 1] >= self.threshold


def cross_validate(make_estimator: Callable[[], Any], X: np.ndarray, y: np.ndarray, groups: np.ndarray,
                   folds: list[tuple[np.ndarray, np.ndarray]], *, fit_groups_param: str | None = None,
                   route_groups: bool = False,
                   on_fold: Callable[[int, np.ndarray, np.ndarray, Any, np.ndarray], None] | None = None,
                   n_jobs: int | None = None, exams: pd.DataFrame | None = None, copies: Any = None) -> CVResult:
    """Fit a fresh estimator on each training fold only; predict its test fold. y holds class indices 0..k-1.

    The estimator sees test rows only in `predict_proba`; its operating point (`threshold_`, binary) comes from its
    own fit. `fit_groups_param` names the fit parameter that receives the training rows' patient ids
    (e.g. "classifier__groups" for a Pipeline), so inner splits stay patient-level; `route_groups=True` passes
    them as `groups=` with scikit-learn metadata routing instead (pipeline.model.routing: every step that requested them,
    e.g. the calibrated classifier and the fine-tuning embedder, gets the training rows' patient ids).

    Each fold is fitted by the module-level `_fit_fold`, through `pipeline.compute.map_chunks` (one fold per task):
    locally by `joblib.Parallel(n_jobs)` (default 1: in this process, in fold order, bit-identical to a plain loop);
    inside a `pipeline.compute.compute_backend` block on a Dask cluster, as Dask tasks on the workers (with the
    session's retries; every fold in flight at once, also on a cluster of one single-threaded worker, where joblib's
    dask backend would fall back to this process). Estimators are made (`make_estimator`) and
    `on_fold(i, train_idx, test_idx, fitted, test_proba)` is called here, on the client, in fold order as folds
    finish (`test_proba`: the fold's out-of-fold probabilities, (len(test_idx), k), already computed).
    `exams` (one row per X row): an ExamModel's exam table, its training rows passed to fit as ``exams=`` with
    ``groups=`` (the ExamModel routes the groups itself). `copies` (pipeline.training.copies.ExportCopies): each
    fold's training rows are joined by the copies made of them, as rows that only train (``augmented=``, routed);
    no copy is ever a test row.
    """
    from pipeline.compute import map_chunks

    if n_jobs is not None and (not isinstance(n_jobs, (int, np.integer)) or isinstance(n_jobs, bool) or n_jobs == 0):
        raise ValueError(f"n_jobs must be a non-zero int or None. Got {n_jobs!r} instead.")
    if copies is not None and exams is None and not route_groups:
        raise ValueError("export copies train as rows marked augmented, which reach the classifier by metadata "
                         "routing: pass route_groups=True (or exams=) with copies")
    n = len(y)
    k = int(np.max(y)) + 1
    proba = np.full((n, k), np.nan)
    fold_of = np.full(n, -1)
    thr = np.full(n, np.nan)
    fold_thresholds: list[float] = []
    fit = functools.partial(_fit_folds, X=X, y=y, groups=groups,
                            fit_groups_param=EXAMS if exams is not None else ROUTED if route_groups else fit_groups_param,
                            exams=exams, copies=copies)
    specs = ((make_estimator(), tr, te) for tr, te in folds)  # lazy: each estimator made as its fold is sent
    results = (fitted for _, chunk in map_chunks(fit, specs, 1, n_jobs=1 if n_jobs is None else int(n_jobs),
                                                 max_in_flight=max(1, len(folds)), ordered=True)
               for fitted in chunk)
    for i, ((tr, te), (est, p)) in enumerate(zip(folds, results)):
        cols = np.asarray(_classes_of(est), dtype=int)
        proba[np.ix_(te, cols)] = p
        proba[te] = np.nan_to_num(proba[te], nan=0.0)
        fold_of[te] = i
        t = float(getattr(_final(est), "threshold_", np.nan))
        thr[te] = t
        fold_thresholds.append(t)
        if on_fold is not None:
            on_fold(i, tr, te, est, proba[te])
    return CVResult(proba=proba, fold=fold_of, threshold=thr, folds=folds, fold_thresholds=fold_thresholds)


ROUTED = "<metadata routing>"  # _fit_fold: pass groups by metadata routing
EXAMS = "<exam model>"  # _fit_fold: fit(X, y, groups=, exams=) of an ExamModel


def _fit_fold(estimator: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray, train: np.ndarray,
              test: np.ndarray, fit_groups_param: str | None, exams: pd.DataFrame | None = None,
              copies: Any = None) -> tuple[Any, np.ndarray]:
    """(estimator fitted on the `train` rows (and their export copies), its probabilities (len(test), k) on the
    `test` rows): one CV fold."""
    if fit_groups_param in (EXAMS, ROUTED):
        from pipeline.training.copies import training_rows

        Xt, yt, gt, et, augmented = training_rows(X, y, groups, exams, train, copies)
    if fit_groups_param == EXAMS:
        extra = {} if augmented is None else {"augmented": augmented}
        estimator.fit(Xt, yt, groups=gt, exams=et, **extra)
    elif fit_groups_param == ROUTED:
        from pipeline.model.routing import fit_with_groups

        fit_with_groups(estimator, Xt, yt, gt, augmented)
    else:
        fit_kw = {fit_groups_param: groups[train]} if fit_groups_param else {}
        estimator.fit(X[train], y[train], **fit_kw)
    return estimator, np.asarray(estimator.predict_proba(X[test]), dtype=float)


def _fit_folds(specs: list[tuple[Any, np.ndarray, np.ndarray]], *, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
               fit_groups_param: str | None, exams: pd.DataFrame | None = None,
               copies: Any = None) -> list[tuple[Any, np.ndarray]]:
    """`_fit_fold` of each (estimator, train_idx, test_idx): one map_chunks task (X, y, groups and the copies
    travel once, with the function, to each worker)."""
    return [_fit_fold(est, X, y, groups, tr, te, fit_groups_param, exams, copies) for est, tr, te in specs]


def _final(est: Any) -> Any:
    return est.steps[-1][1] if hasattr(est, "steps") else est


def _classes_of(est: Any) -> np.ndarray:
    return np.asarray(getattr(est, "classes_", None) if getattr(est, "classes_", None) is not None
                      else _final(est).classes_)


def subgroup_metrics(task: str, y: np.ndarray, proba: np.ndarray, call: np.ndarray | None, density: Sequence,
                     dense_classes: Sequence, classes: Sequence[str], **kw: Any) -> dict[str, float]:
    """The task's metrics within dense (`dense_*`) and non-dense (`nondense_*`) samples where density is known."""
    dens = pd.Series(list(density), dtype=object)
    known = dens.notna().to_numpy() & (dens.astype(str) != "").to_numpy()
    is_dense = dens.astype(str).isin({str(d) for d in dense_classes}).to_numpy()
    groups = [("dense_", known & is_dense), ("nondense_", known & ~is_dense)]
    return _group_metrics(task, y, proba, call, classes, groups, min_classes=1, **kw)


def _group_metrics(task: str, y: np.ndarray, proba: np.ndarray, call: np.ndarray | None, classes: Sequence[str],
                   groups: Sequence[tuple[str, np.ndarray]], min_classes: int, **kw: Any) -> dict[str, float]:
    """The task's metrics on the rows of each (metric prefix, row mask) group holding `min_classes` classes or more."""
    from pipeline.config.tasks import get_task

    spec = get_task(task)
    y = np.asarray(y)
    out: dict[str, float] = {}
    for prefix, sel in groups:
        if len(np.unique(y[sel])) < min_classes:
            continue
        out.update(spec.metrics(y[sel], proba[sel], None if call is None else call[sel], classes, prefix=prefix,
                                **kw))
    return out


#: a site column is split into per-value subgroups only where it holds at most this many values (a machine, not an id)
MAX_SITES = 8
#: at most this many site subgroups in all (the card's subgroup table and figure stay readable): columns in order
MAX_SITE_GROUPS = 12
#: words that make a site-like column name something else for subgroups (a lesion's site is a place in the breast)
_NOT_ACQUISITION_WORDS = {"lesion", "finding", "abnormality", "roi", "biopsy", "quadrant", "anatomic", "anatomical",
                          "label", "labels", "annotation", "annotator", "reader"}
_KEY_PART = 48  # characters of a column or value in a metric key (MLflow refuses keys over 250 characters)


def _key_part(text: str, digest: bool = False) -> str:
    """A metric-key part: characters MLflow takes (no dot or slash, so no part can resolve to another path), at most
    _KEY_PART long (a longer text, or any with `digest`, keeps its start and a short digest of the whole)."""
    import hashlib
    import re

    part = re.sub(r"[^A-Za-z0-9_ -]+", "_", text).strip() or "_"
    if digest or len(part) > _KEY_PART:
        part = f"{part[:_KEY_PART - 9]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return part


def _value_text(values: pd.Series) -> pd.Series:
    """A site column's values as trimmed text (a float column of whole numbers as integers: machine 1, not 1.0);
    missing and blank values are NaN."""
    v = values
    if pd.api.types.is_float_dtype(v) and np.all(np.mod(v.dropna(), 1) == 0):
        v = v.astype("Int64")
    text = v.astype(str).str.strip().where(v.notna())
    return text.where(text != "")


def site_groups(table: pd.DataFrame, max_values: int = MAX_SITES) -> list[tuple[str, str, np.ndarray]]:
    """(name, metric prefix, row mask) per value of each acquisition machine / site column of `table` holding
    2..`max_values` values, e.g. ("machine 2", "site/machine/2/", mask): how a model does on each machine of its own
    data. Columns: the shortcut audit's site columns (pipeline.training.audit.site_columns) whose name is not about a
    lesion, a label or a reader (_NOT_ACQUISITION_WORDS); at most MAX_SITE_GROUPS groups. Every prefix is unique
    (values that clean to the same key get a digest) and short enough for MLflow."""
    from pipeline.training.audit import site_columns

    table = table.reset_index(drop=True)
    out: list[tuple[str, str, np.ndarray]] = []
    for col in site_columns(table, exclude=_NOT_ACQUISITION_WORDS):
        values = _value_text(table[col])
        kinds = sorted(values.dropna().unique())
        if not 2 <= len(kinds) <= int(max_values) or len(out) + len(kinds) > MAX_SITE_GROUPS:
            continue
        column = _key_part(str(col))
        for v in kinds:
            prefix = f"site/{column}/{_key_part(v)}/"
            if any(prefix == p for _, p, _ in out):  # two values, one cleaned key: tell them apart
                prefix = f"site/{column}/{_key_part(v, digest=True)}/"
            name = " ".join(f"{col} {v}".replace("|", "/").split())  # one table cell of the card
            out.append((name, prefix, (values == v).to_numpy()))
    return out


def site_metrics(task: str, y: np.ndarray, proba: np.ndarray, call: np.ndarray | None, table: pd.DataFrame,
                 classes: Sequence[str], **kw: Any) -> dict[str, float]:
    """The task's metrics on the rows of each machine / site (`site/<column>/<value>/<metric>`, site_groups) whose
    rows hold two classes or more; none where the table names no machine or site."""
    return _group_metrics(task, y, proba, call, classes, [(p, m) for _, p, m in site_groups(table)], min_classes=2,
                          **kw)
