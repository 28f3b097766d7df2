"""Density-aware operating points: one malignancy threshold per density group (dense / non-dense), chosen on
validation rows of the training data only, with the pooled threshold as the fallback for a group too small.

At training time a row's group comes from its density label (`dataset.dense_classes`); at use time from the density
model's prediction for the same image (`group_from_density`). A group needs `min_positives` positives and as many
negatives among the validation rows to get its own threshold; otherwise it keeps the pooled threshold and the state
says why. The state is a JSON-able dict stored in the model card (`decision.group_thresholds`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.evaluation.metrics import _rate, bootstrap_ci, choose_threshold

__all__ = ["GROUPS", "density_groups", "group_from_density", "choose_group_thresholds", "apply_group_thresholds",
           "sens_spec_with_ci"]

GROUPS = ("dense", "nondense")


def density_groups(density: Sequence[Any], dense_classes: Sequence[Any]) -> np.ndarray:
    """'dense' / 'nondense' per row from its density label, None where the label is missing."""
    dense = {str(d) for d in dense_classes}
    out = []
    for d in density:
        missing = d is None or (isinstance(d, float) and np.isnan(d)) or str(d).strip() == ""
        out.append(None if missing else ("dense" if str(d) in dense else "nondense"))
    return np.asarray(out, dtype=object)


def group_from_density(predicted: str | None, dense_classes: Sequence[Any]) -> str | None:
    """The group of an image at use time from the density model's predicted class (None without a prediction)."""
    if predicted is None or not dense_classes:
        return None
    return "dense" if str(predicted) in {str(d) for d in dense_classes} else "nondense"


def choose_group_thresholds(y: Sequence[int], p_pos: Sequence[float], groups: Sequence[Any], *,
                            target_sensitivity: float, min_positives: int = 10,
                            pooled: float | None = None) -> dict[str, Any]:
    """{"pooled": t, "target_sensitivity", "min_positives", "groups": {g: {"threshold", "source", "reason",
    "n", "n_positive"}}} from validation rows (labels 0/1, positive-class probabilities, group per row)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p_pos, dtype=float)
    g = np.asarray(list(groups), dtype=object)
    pooled_t = float(choose_threshold(y, p, target_sensitivity) if pooled is None else pooled)
    out: dict[str, Any] = {"pooled": pooled_t, "target_sensitivity": float(target_sensitivity),
                           "min_positives": int(min_positives), "groups": {}}
    for name in GROUPS:
        sel = g == name
        n_pos, n_neg = int((y[sel] == 1).sum()), int((y[sel] == 0).sum())
        if n_pos >= min_positives and n_neg >= min_positives:
            t, source = float(choose_threshold(y[sel], p[sel], target_sensitivity)), "group"
            reason = (f"{name} threshold: {n_pos} malignant / {n_neg} benign {name} validation findings set it for "
                      f"{target_sensitivity:.0%} sensitivity in {name} breasts")
        else:
            t, source = pooled_t, "pooled"
            reason = (f"pooled threshold: only {n_pos} malignant / {n_neg} benign {name} validation findings "
                      f"(fewer than {min_positives} of each) to set a {name} one")
        out["groups"][name] = {"threshold": t, "source": source, "reason": reason, "n": int(sel.sum()),
                               "n_positive": n_pos}
    return out


def apply_group_thresholds(state: Mapping[str, Any], groups: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """(threshold per row, reason per row): the row's group's threshold, else the pooled one (group unknown)."""
    thr, why = [], []
    for g in groups:
        entry = state.get("groups", {}).get(g) if g is not None else None
        if entry is None:
            thr.append(float(state["pooled"]))
            why.append("pooled threshold: density group unknown (no density prediction)")
        else:
            thr.append(float(entry["threshold"]))
            why.append(str(entry["reason"]))
    return np.asarray(thr, dtype=float), why


def sens_spec_with_ci(y: Sequence[int], call: Sequence[bool], *, prefix: str, n_resamples: int = 1000,
                      confidence_level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """`{prefix}sens`, `{prefix}spec` with bootstrap CIs (`_ci_low`, `_ci_high`) and counts; NaN where undefined."""
    y = np.asarray(y, dtype=int)
    c = np.asarray(call, dtype=float)
    out: dict[str, float] = {f"{prefix}n": float(len(y)), f"{prefix}n_positive": float((y == 1).sum())}
    for name, label in (("sens", 1), ("spec", 0)):
        sel = y == label
        value = float(((c[sel] > 0.5) == bool(label)).mean()) if sel.any() else float("nan")
        out[f"{prefix}{name}"] = value
        if np.isnan(value) or n_resamples <= 0:
            out[f"{prefix}{name}_ci_low"] = out[f"{prefix}{name}_ci_high"] = float("nan")
            continue
        out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = bootstrap_ci(
            lambda yy, cc, axis=-1, _l=label: _rate(yy, cc, _l, axis), (y, c), vectorized=True,
            n_resamples=n_resamples, confidence_level=confidence_level, seed=seed)
    return out
