"""Use-time side of pipeline.trust: the prediction set and the density-group threshold of one image's result."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.evaluation import conformal, operating

__all__ = ["trust_entry", "set_of", "threshold_for", "trust_columns", "trust_row", "trust_lines"]


def set_of(metadata: Mapping[str, Any], proba: np.ndarray, task: str) -> tuple[list[list[str]], list[str]] | None:
    """(set members, words) per row of proba (n, k) from the model's stored conformal state; None without one."""
    state = metadata.get("conformal")
    if not state:
        return None
    classes = [str(c) for c in metadata.get("classes") or []]
    sets = conformal.predict_sets(state, proba)
    return ([[c for c, m in zip(classes, row) if m] for row in sets], conformal.set_labels(task, classes, sets))


def threshold_for(metadata: Mapping[str, Any], density_predicted: str | None) -> tuple[float | None, str | None, str]:
    """(threshold, density group, why) for one image: its predicted density group's threshold, else the pooled."""
    state = metadata.get("group_thresholds")
    pooled = metadata.get("threshold")
    if not state:
        return (None if pooled is None else float(pooled)), None, "single operating point (no per-group thresholds)"
    group = operating.group_from_density(density_predicted, metadata.get("dense_classes") or [])
    thr, why = operating.apply_group_thresholds(state, [group])
    if group is not None:
        why[0] = f"density predicted {density_predicted} ({group}): {why[0]}"
    return float(thr[0]), group, why[0]


def trust_entry(metadata: Mapping[str, Any], task: str, classes: Sequence[str], proba: np.ndarray,
                density_result: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keys added to a predict_image task entry: prediction_set (+ its words, coverage) and, for malignancy,
    threshold / density_group / threshold_reason (the density entry's predicted class picks the group)."""
    out: dict[str, Any] = {}
    task = metadata.get("task", task)
    found = set_of(metadata, np.asarray(proba, dtype=float)[None, :], task)
    if found is not None:
        out["prediction_set"], out["prediction_set_label"] = found[0][0], found[1][0]
        out["set_coverage"] = float(metadata["conformal"]["coverage"])
    if task == "malignancy" and metadata.get("group_thresholds"):
        predicted = density_result.get("predicted") if density_result else None
        out["threshold"], out["density_group"], out["threshold_reason"] = threshold_for(metadata, predicted)
    return out


def trust_columns(task: str, trust: Mapping[str, Any]) -> list[str]:
    """Batch output columns a model's trust state adds: `{task}_set`; malignancy `_threshold` and `_threshold_reason`."""
    cols = [f"{task}_set"] if trust.get("conformal") else []
    if task == "malignancy" and trust.get("group_thresholds"):
        cols += [f"{task}_threshold", f"{task}_threshold_reason"]
    return cols


def trust_row(task: str, classes: Sequence[str], trust: Mapping[str, Any], proba: np.ndarray,
              row: Mapping[str, Any]) -> dict[str, Any]:
    """Batch row values of `trust_columns` for one image (the row's `density_call`, when scored, picks the group;
    the malignancy call is re-made at the group's threshold)."""
    metadata = {**trust, "task": task, "classes": list(classes)}
    out: dict[str, Any] = {}
    found = set_of(metadata, np.asarray(proba, dtype=float)[None, :], task)
    if found is not None:
        out[f"{task}_set"] = found[1][0]
    if task == "malignancy" and trust.get("group_thresholds"):
        thr, _, why = threshold_for(metadata, row.get("density_call"))
        out[f"{task}_threshold"], out[f"{task}_threshold_reason"] = thr, why
        out[f"{task}_call"] = classes[1] if float(proba[1]) >= thr else classes[0]
    return out


def trust_lines(results: Mapping[str, Any]) -> list[str]:
    """Markdown lines for the app: each task's prediction set at its coverage, the malignancy threshold and why."""
    lines = []
    for task, entry in results.items():
        if entry.get("prediction_set_label"):
            lines.append(f"**{task.capitalize()} prediction set** ({entry['set_coverage']:.0%} coverage): "
                         f"**{entry['prediction_set_label']}**")
        if entry.get("threshold_reason"):
            lines.append(f"Threshold applied: {entry['threshold']:.3f}: {entry['threshold_reason']}")
    return lines
