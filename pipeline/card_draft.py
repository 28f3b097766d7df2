"""The card dict of one training, in the model-card contract's keys (see pipeline.card_render).

A stand-in for the serving contract's `ModelCard(...).to_dict()`: when that lands, train.py builds the card there and
keeps `card_extra` (the trust entries this module adds under "extra") and the rendering/logging unchanged.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping, Sequence

import numpy as np

#: The per-subgroup figures a card shows (where the task has them); the rest stay in the run's metrics.
SUBGROUP_METRICS = ("n", "roc_auc", "sens_at_target", "spec_at_target", "groupthr_sens", "groupthr_spec",
                    "accuracy", "kappa_quadratic")

__all__ = ["SUBGROUP_METRICS", "draft_card", "card_extra", "reliability_bins", "metric_entries"]


def reliability_bins(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Equal-width bins of the positive-class (binary) or top-label (multiclass) probability: mean predicted,
    observed frequency, count."""
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


def metric_entries(metrics: Mapping[str, float], keys: Sequence[str], strip: str = "") -> dict[str, dict]:
    """{name: {value, low, high}} of the keys present (`strip` removed from the front of each name)."""
    out = {}
    for key in keys:
        if key in metrics and np.isfinite(metrics[key]):
            lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
            out[key.removeprefix(strip)] = {"value": float(metrics[key]),
                                            "low": None if lo is None or not np.isfinite(lo) else float(lo),
                                            "high": None if hi is None or not np.isfinite(hi) else float(hi)}
    return out


def card_extra(meta: Mapping[str, Any], data: Any, proba: np.ndarray, n_bins: int) -> dict[str, Any]:
    """The trust entries of the card's "extra": reliability bins, conformal summary, per-group thresholds."""
    conf = meta.get("conformal") or {}
    return {"reliability": reliability_bins(data.y, proba, n_bins),
            "conformal": {k: conf[k] for k in ("coverage", "method", "n_per_class")} if conf else None,
            "group_thresholds": meta.get("group_thresholds")}


def draft_card(config: Mapping[str, Any], data: Any, metrics: Mapping[str, float], meta: Mapping[str, Any],
               proba: np.ndarray, *, headline: Sequence[str], digest: str, run_id: str | None,
               n_exams: int) -> dict[str, Any]:
    """The contract's dict from one training's config, data, CV metrics and model metadata."""
    task = config["dataset"]["task"]
    table = data.table
    dens = table["density"].dropna().astype(str)
    keys = [h for h in headline if not h.startswith(("dense_", "nondense_"))] + [k for k in metrics if k.startswith(("conformal_coverage", "cv_groupthr_s",
                                                                 "conformal_mean")) and "nominal" not in k
                             and not k.endswith(("_ci_low", "_ci_high"))]
    subgroups = {}
    for group in ("dense", "nondense"):
        names = [f"{group}_{m}" for m in SUBGROUP_METRICS]
        entries = metric_entries(metrics, names, strip=f"{group}_")
        if entries:
            subgroups[group] = entries
    try:
        from importlib.metadata import version

        code = version("mammoscope")
    except Exception:  # noqa: BLE001 - not installed: the source tree
        code = "unknown"
    return {
        "schema_version": 1, "name": config["tracking"]["registered_model_name"], "task": task,
        "classes": list(data.classes), "ordinal": task == "density",
        "decision": {"rule": "threshold" if task == "malignancy" else "argmax",
                     "threshold": meta.get("threshold") if task == "malignancy" else None,
                     "target_sensitivity": meta.get("target_sensitivity") if task == "malignancy" else None},
        "sample_params": dict(meta.get("sample_params") or {}), "preprocessing": dict(config["preprocessing"]),
        "features": dict(config["features"]),
        "dataset": {"adapter": config["dataset"]["adapter"], "path": data.source, "digest": digest,
                    "n_samples": int(len(table)), "n_patients": int(table["patient_id"].nunique()),
                    "n_exams": int(n_exams),
                    "class_counts": {c: int((data.y == i).sum()) for i, c in enumerate(data.classes)},
                    "density_counts": dens.value_counts().sort_index().to_dict() or None,
                    "views": table["view"].dropna().astype(str).value_counts().to_dict() or None
                    if "view" in table else None},
        "split": {"protocol": "patient-level StratifiedGroupKFold", "folds": int(config["evaluation"]["folds"]),
                  "seed": int(config["evaluation"]["seed"])},
        "metrics": metric_entries(metrics, keys), "subgroups": subgroups, "experiment": dict(config),
        "code_version": code, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run_id": run_id, "extra": card_extra(meta, data, proba, int(config["evaluation"]["ece_bins"])),
    }
