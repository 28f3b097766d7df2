"""Conformal sets and density-group thresholds inside a cross-validation and for the final model.

Everything here is computed from a fitted `PatientCalibratedClassifier`'s own validation rows (held-out patients of
its training data: `validation_index_`, `validation_proba_`), so within an outer CV fold the test fold is only
*scored*, never used to calibrate a set or choose a threshold.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline.config.tasks import get_task
from pipeline.evaluation import conformal, operating

__all__ = ["FoldTrust", "final_trust", "card_entries", "reliability_bins", "validation_rows", "GROUP_RULE"]

GROUP_RULE = "group_threshold"  # the decision rule (pipeline.config.tasks) reading the per-group thresholds


def validation_rows(clf: Any, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(global row indices, probabilities (n_val, k) in class-index order) of a fitted classifier's validation rows;
    `rows` maps the classifier's training rows to global indices."""
    local = np.asarray(clf.validation_index_, dtype=int)
    proba = np.zeros((len(local), k))
    proba[:, np.asarray(clf.classes_, dtype=int)] = np.asarray(clf.validation_proba_, dtype=float)
    return np.asarray(rows)[local], proba


def _settings(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], float]:
    ev = config["evaluation"]
    return ev["conformal"], ev["group_thresholds"], float(ev["target_sensitivity"])


def _uses_groups(config: Mapping[str, Any], data: Any, groups: np.ndarray) -> bool:
    """Per-group thresholds apply: a binary operating-point task, the option on, density labels in the data."""
    enabled = bool(config["evaluation"]["group_thresholds"]["enabled"])
    return (get_task(config["dataset"]["task"]).uses_threshold and enabled and len(data.classes) == 2 and bool(data.dense_classes) and any(g is not None for g in groups))


class FoldTrust:
    """Collects, fold by fold, the test rows' conformal sets and per-group thresholds, each fold's from its own
    training rows; then reports coverage, set size and the per-group vs single-threshold comparison."""

    def __init__(self, config: Mapping[str, Any], data: Any) -> None:
        self.conf, self.grp, self.target = _settings(config)
        self.task = get_task(config["dataset"]["task"])
        self.config = config
        self.data = data
        n, k = len(data.y), len(data.classes)
        self.k = k
        self.sets = np.zeros((n, k), dtype=bool)
        self.groups = operating.density_groups(data.density, data.dense_classes)
        self.group_threshold = np.full(n, np.nan)
        self.group_reason = [""] * n
        self.p_pos = np.full(n, np.nan)
        self.fold_states: list[dict[str, Any]] = []

    @property
    def uses_groups(self) -> bool:
        """Per-group thresholds apply: a binary operating-point task with density labels and the option on."""
        return _uses_groups(self.config, self.data, self.groups)

    def add_fold(self, tr: np.ndarray, te: np.ndarray, clf: Any, test_proba: np.ndarray) -> None:
        """Calibrate on the fold's validation rows (inside `tr`) and apply to its test rows `te`."""
        val, vp = validation_rows(clf, tr, self.k)
        state: dict[str, Any] = {}
        if self.conf["enabled"]:
            cs = conformal.calibrate(vp, self.data.y[val], self.conf["coverage"],
                                     class_conditional=self.conf["class_conditional"])
            self.sets[te] = conformal.predict_sets(cs, test_proba)
            state["conformal_n_per_class"] = cs["n_per_class"]
        if self.uses_groups:
            gs = operating.choose_group_thresholds(self.data.y[val], vp[:, 1], self.groups[val],
                                                   target_sensitivity=self.target,
                                                   min_positives=int(self.grp["min_positives"]),
                                                   pooled=float(clf.threshold_))
            thr, why = operating.apply_group_thresholds(gs, self.groups[te])
            self.group_threshold[te] = thr
            for j, i in enumerate(te):
                self.group_reason[i] = why[j]
            self.p_pos[te] = test_proba[:, 1]
            state["group_thresholds"] = gs
        self.fold_states.append(state)

    def metrics(self, single_call: np.ndarray | None, kw: Mapping[str, Any]) -> dict[str, float]:
        """conformal_* coverage metrics; for a binary operating-point task (malignancy) pooled/dense/non-dense sensitivity and specificity at the
        per-group thresholds (`*_groupthr_*`) and at the single threshold (`*_singlethr_*`), same folds."""
        out: dict[str, float] = {}
        y = self.data.y
        if self.conf["enabled"]:
            out.update(conformal.coverage_metrics(y, self.sets, self.data.classes, self.conf["coverage"]))
        if self.uses_groups and single_call is not None:
            ci = dict(n_resamples=kw["n_resamples"], confidence_level=kw["confidence_level"], seed=kw["seed"])
            group_call = self.p_pos >= self.group_threshold
            for name, sel in (("cv", np.ones(len(y), bool)), ("dense", self.groups == "dense"),
                              ("nondense", self.groups == "nondense")):
                out.update(operating.sens_spec_with_ci(y[sel], group_call[sel], prefix=f"{name}_groupthr_", **ci))
                out.update(operating.sens_spec_with_ci(y[sel], single_call[sel], prefix=f"{name}_singlethr_", **ci))
            own = [s["group_thresholds"]["groups"]["dense"]["source"] == "group" for s in self.fold_states]
            out["groupthr_dense_own_folds"] = float(sum(own))
        return out

    def add_columns(self, oof: pd.DataFrame) -> None:
        """prediction_set (words) and, with per-group thresholds, density_group / group_threshold / group_call / why."""
        if self.conf["enabled"]:
            oof["prediction_set"] = conformal.set_labels(self.data.classes, self.sets,
                                                         several_is_uncertain=self.task.uses_threshold)
        if self.uses_groups:
            oof["density_group"] = self.groups
            oof["group_threshold"] = self.group_threshold
            oof["group_call"] = np.where(self.p_pos >= self.group_threshold, self.data.classes[1],
                                         self.data.classes[0])
            oof["group_threshold_reason"] = self.group_reason


def final_trust(config: Mapping[str, Any], data: Any, clf: Any) -> dict[str, Any]:
    """{"conformal": state | None, "group_thresholds": state | None} of the final model (its validation rows)."""
    conf, grp, target = _settings(config)
    k = len(data.classes)
    val, vp = validation_rows(clf, np.arange(len(data.y)), k)
    out: dict[str, Any] = {"conformal": None, "group_thresholds": None}
    if conf["enabled"]:
        out["conformal"] = conformal.calibrate(vp, data.y[val], conf["coverage"],
                                               class_conditional=conf["class_conditional"])
    groups = operating.density_groups(data.density, data.dense_classes)
    if _uses_groups(config, data, groups):
        out["group_thresholds"] = operating.choose_group_thresholds(
            data.y[val], vp[:, 1], groups[val], target_sensitivity=target,
            min_positives=int(grp["min_positives"]), pooled=float(clf.threshold_))
    return out


def reliability_bins(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Equal-width bins of the positive-class (binary) or top-label (multiclass) probability: mean predicted,
    observed frequency, count (the card's reliability diagram)."""
    proba = np.asarray(proba, dtype=float)
    y = np.asarray(y, dtype=int)
    if proba.shape[1] == 2:
        conf, hit, what = proba[:, 1], (y == 1).astype(float), "P(positive class) vs observed (out-of-fold)"
    else:
        conf, hit = proba.max(axis=1), (proba.argmax(axis=1) == y).astype(float)
        what = "top-label confidence vs accuracy (out-of-fold)"
    which = np.clip(np.digitize(conf, np.linspace(0, 1, n_bins + 1)[1:-1], right=True), 0, n_bins - 1)
    bins = [{"mean_predicted": float(conf[which == b].mean()), "observed": float(hit[which == b].mean()),
             "count": int((which == b).sum())} for b in range(n_bins) if (which == b).any()]
    return {"what": what, "bins": bins}


def card_entries(trust: Mapping[str, Any], data: Any, proba: np.ndarray, n_bins: int
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(decision update, extra entries) of the model card from `final_trust`'s states and the OOF probabilities.

    With per-group thresholds the decision becomes the `group_threshold` rule carrying their state and the dense
    classes (the card's one copy of them); "extra" gets the reliability bins and the conformal state (read back at
    predict time to form the sets)."""
    decision: dict[str, Any] = {}
    if trust.get("group_thresholds"):
        from pipeline.config.tasks import ordinal_scheme

        known = [d for d in data.density if isinstance(d, str) and d.strip()]
        decision = {"rule": GROUP_RULE, "group_thresholds": trust["group_thresholds"],
                    "dense_classes": [str(c) for c in data.dense_classes],
                    "density_classes": ordinal_scheme(known)}  # the scheme the groups were fitted on
    extra = {"reliability": reliability_bins(data.y, proba, n_bins), "conformal": trust.get("conformal")}
    return decision, extra
