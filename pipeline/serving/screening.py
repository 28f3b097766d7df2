"""Serving a screening model (Task ``screening``): the tile-score heat map on the original image, the per-breast and
per-exam rows of `mammoscope predict`, and the PNG overlays of ``--maps``.

The per-image probability and call come from `Predictor.score` like every task's; here the levels above it: a
breast's probability is the `view_fusion` (mean or max) of its views' probabilities, an exam's is its most
suspicious breast (pipeline.model.levels.level_proba, the same function the cross-validation uses), each with the
operating point the training chose for that level (the card's ``decision["level_thresholds"]``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from features.tiles import tile_heatmap
from pipeline.model.levels import level_proba

__all__ = ["MAP_GRID", "sample_heatmap", "explain_screening", "map_summary", "context_model", "level_rows",
           "write_level_files", "overlay_rgb", "write_maps"]

log = logging.getLogger(__name__)
MAP_GRID = 32  # cells per side of the coarse map in the app's JSON API (`map_summary`)


def sample_heatmap(map_pipeline: Any, sample: np.ndarray) -> np.ndarray:
    """(R, R) float32 map of a fitted build_map_pipeline on one screening sample (R, R): at each breast pixel the
    Hann-weighted mean malignancy probability of the tiles covering it, 0 outside the breast."""
    sample = np.asarray(sample, np.float32)
    x = sample.reshape(1, -1)
    cached = map_pipeline.named_steps["embed"]
    inner = cached.transformer_
    enhanced = inner[:-1].transform(x) if len(inner) > 1 else x
    embedder = inner[-1]
    corners, _ = embedder.tiles_of(enhanced.reshape(sample.shape))
    tile_matrix = cached.transform(x)
    scores = map_pipeline.named_steps["scorer"].tile_proba(tile_matrix)[0, :len(corners), -1]
    return tile_heatmap(sample.shape, corners, scores, int(embedder.tile_size), mask=sample > 0)


def explain_screening(predictor: Any, sample: Any, heatmap: bool = True) -> dict[str, Any]:
    """{"task", "target_class", "contributions": [], "heatmap" (R, R) on the sample, "heatmap_original" (H, W) on
    the original image when the sample carries its geometry, "notes"} of one screening sample."""
    from pipeline.samples import map_to_original

    classes = list(predictor.classes)
    out: dict[str, Any] = {"task": predictor.task, "target_class": classes[1], "contributions": [],
                           "heatmap": None, "heatmap_original": None, "notes": []}
    mapper = getattr(predictor.pipeline, "heatmap_", None)
    if not heatmap:
        return out
    if mapper is None:
        out["notes"].append("this screening model carries no tile scorer: no heat map")
        return out
    heat = sample_heatmap(mapper, sample.array)
    out["heatmap"] = heat
    if getattr(sample, "geometry", None) is not None:
        out["heatmap_original"] = map_to_original(heat, sample.geometry)
    out["notes"].append("heat map: malignancy probability of the overlapping tiles covering each breast pixel "
                        "(a tile scorer fitted on the training images), at the original image's scale")
    return out


def map_summary(heat: np.ndarray, grid: int = MAP_GRID, digits: int = 4) -> dict[str, Any]:
    """Plain-JSON summary of a heat map (H, W) on the original image: ``peak_xy`` [x, y] (column, row of its maximum,
    original pixels), ``value_range`` [min, max] over the mapped (breast) pixels, ``image_shape`` [H, W],
    ``grid_shape`` [g, g] and ``grid``, g rows of g values in [0, 1]: the mean map value over each cell of a g x g
    partition of the image (cell i spans rows floor(i H / g) to floor((i + 1) H / g); 0 outside the breast)."""
    heat = np.nan_to_num(np.asarray(heat, np.float64))
    h, w = heat.shape
    g = max(1, min(int(grid), h, w))
    rows, cols = (np.linspace(0, n, g + 1).astype(int) for n in (h, w))
    sums = np.add.reduceat(np.add.reduceat(heat, rows[:-1], axis=0), cols[:-1], axis=1)
    cells = np.clip(sums / np.outer(np.diff(rows), np.diff(cols)), 0.0, 1.0)
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    mapped = heat[heat > 0]
    low, high = (float(mapped.min()), float(mapped.max())) if mapped.size else (0.0, 0.0)
    return {"peak_xy": [int(px), int(py)], "value_range": [round(low, digits), round(high, digits)],
            "image_shape": [int(h), int(w)], "grid_shape": [g, g],
            "grid": np.round(cells, digits).tolist()}


def _level_ids(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    from pipeline.io.exams import level_ids

    return level_ids(rows)


def context_model(model: Any) -> Any | None:
    """The multi-view context stage a screening model carries (``pipeline.context_``; None when trained without
    ``screening.context``)."""
    return getattr(getattr(model, "pipeline", None), "context_", None)


def level_rows(images: pd.DataFrame, probability: Sequence[float], card: Any, context: Any | None = None,
               asymmetry: Sequence[float] | None = None) -> dict[str, pd.DataFrame]:
    """{"breast": rows, "exam": rows} of scored images (columns sample_id, patient_id, optional exam_id,
    laterality, view) with their positive-class probabilities; each row has its level's operating point and call.
    With a multi-view `context` stage (`context_model`), also {"image": rows}: each image's probability beside its
    exam's other views (an image without any keeps its own), from which the breasts and exams are fused; a stage
    trained with the bilateral asymmetry score also needs each image's `asymmetry` score (Scores.asymmetry, the
    batch column ``screening_asymmetry_score``)."""
    from pipeline.model.context import apply_context, context_features, has_context

    d = card.to_dict() if hasattr(card, "to_dict") else dict(card)
    decision, classes = d["decision"], [str(c) for c in d["classes"]]
    thresholds = dict(decision.get("level_thresholds") or {})
    how = str(decision.get("view_fusion") or "mean")
    ids = _level_ids(images)
    p = np.asarray(probability, float)
    out = {}
    if context is not None:
        single = p
        p = apply_context(context, p, images, None if asymmetry is None else np.asarray(asymmetry, float))
        t = thresholds.get("image")
        out["image"] = pd.DataFrame({"sample_id": ids["image"], "breast_id": ids["breast"], "exam_id": ids["exam"],
                                     "single_image_p": single,
                                     "context_views": has_context(context_features(single, images)),
                                     f"screening_p_{classes[1]}": p, "screening_threshold": t,
                                     "screening_call": [None if t is None else classes[int(v >= t)] for v in p]})
    fused = level_proba(p, np.zeros(len(p), int), ids, how)
    frame = pd.DataFrame({"breast_id": ids["breast"], "exam_id": ids["exam"],
                          "patient_id": images["patient_id"].astype(str).to_numpy(),
                          "laterality": images.get("laterality", pd.Series([None] * len(images))).to_numpy(),
                          "view": images.get("view", pd.Series([None] * len(images))).to_numpy(), "p": p})
    for lv in ("breast", "exam"):
        u, _, pp = fused[lv]
        t = thresholds.get(lv)
        grouped = frame.groupby(f"{lv}_id", sort=True)
        rows = pd.DataFrame({f"{lv}_id": u,
                             "patient_id": grouped["patient_id"].first().reindex(u).to_numpy(),
                             "n_images": grouped.size().reindex(u).to_numpy(),
                             "views": grouped["view"].agg(lambda v: ",".join(sorted(map(str, v.dropna()))))
                             .reindex(u).to_numpy()})
        if lv == "breast":
            rows["exam_id"] = grouped["exam_id"].first().reindex(u).to_numpy()
            rows["laterality"] = grouped["laterality"].first().reindex(u).to_numpy()
        else:
            breast_p = pd.Series(fused["breast"][2], index=fused["breast"][0])
            top = frame.drop_duplicates("breast_id").assign(bp=lambda f: breast_p.reindex(f["breast_id"]).to_numpy())
            rows["most_suspicious_breast"] = top.sort_values("bp", ascending=False).groupby("exam_id")[
                "breast_id"].first().reindex(u).to_numpy()
        rows[f"screening_p_{classes[1]}"] = pp
        rows["screening_threshold"] = t
        rows["screening_call"] = [None if t is None else classes[int(v >= t)] for v in pp]
        out[lv] = rows
    return out


def write_level_files(out: str | Path, rows: Sequence[Mapping[str, Any]], items: Sequence[Any], model: Any
                      ) -> list[str]:
    """`<out stem>.screening.breasts.csv` and `.screening.exams.csv` beside the results file, from the scored
    rows of the inputs whose manifest names a patient (or exam), and with a context stage on the model
    `.screening.images.csv` (each image beside its exam's other views); returns the paths written (none without)."""
    classes = list(model.classes)
    column = f"{model.task}_p_{classes[1]}"
    by_path = {str(r.get("path")): r for r in rows}
    records = []
    for item in items:
        r = by_path.get(item.key)
        patient = str(item.extra.get("patient_id") or item.extra.get("exam_id") or "").strip()
        if r is None or r.get("error") or not patient or r.get(column) in (None, ""):
            continue
        records.append({"sample_id": item.key, "patient_id": patient, "exam_id": item.extra.get("exam_id") or None,
                        "laterality": r.get("laterality") or item.laterality, "view": r.get("view") or item.view,
                        "p": float(r[column]), "asymmetry": _float_or_none(r.get(f"{model.task}_asymmetry_score"))})
    if not records:
        return []
    images = pd.DataFrame(records)
    if images["exam_id"].isna().all():
        images = images.drop(columns="exam_id")
    asym = None
    if getattr(model, "asymmetry", None) is not None:
        if images["asymmetry"].isna().any():
            from pipeline.errors import MammoscopeError

            raise MammoscopeError(f"{out}: some rows lack {model.task}_asymmetry_score, which this model's exam stage "
                             "needs: rescore those images (--overwrite) with this model")
        asym = images["asymmetry"].to_numpy(float)
    levels = level_rows(images, images["p"].to_numpy(), model.card, context_model(model), asym)
    written = []
    for lv, table in levels.items():
        table["screening_model"], table["screening_version"] = model.name, model.version
        path = Path(out).with_name(f"{Path(out).stem}.screening.{lv}s.csv")
        table.to_csv(path, index=False)
        written.append(str(path))
    return written


def _float_or_none(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def overlay_rgb(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grey image (H, W) in [0, 1] with a heat map (H, W) in [0, 1] blended in jet colours -> RGB uint8."""
    grey = np.repeat(np.clip(np.asarray(image, np.float32), 0, 1)[..., None], 3, axis=2)
    h = np.clip(np.asarray(heat, np.float32), 0, 1)[..., None]
    colours = np.concatenate([np.clip(1.5 - np.abs(4 * h - c), 0, 1) for c in (3.0, 2.0, 1.0)], axis=2)
    weight = alpha * h
    return np.round(255 * ((1 - weight) * grey + weight * colours)).astype(np.uint8)


def write_maps(directory: str | Path, rows: Sequence[Mapping[str, Any]], model: Any) -> list[str]:
    """One PNG overlay (the image with its tile-score heat map) per scored image in `directory`; returns the paths.
    An image whose map cannot be made is logged and skipped."""
    from PIL import Image

    from pipeline.errors import MammoscopeError
    from pipeline.io.imageio import read_image

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for r in rows:
        if r.get("error"):
            continue
        path = str(r["path"])
        try:
            image, meta = read_image(path)
            if r.get("laterality") and meta.laterality is None:
                from dataclasses import replace

                meta = replace(meta, laterality=r["laterality"])
            ex = explain_screening(model, model.prepare(image, meta, path=path))
        except (MammoscopeError, ValueError) as exc:
            log.warning("--maps: %s: %s", path, exc)
            continue
        heat = ex.get("heatmap_original")
        if heat is None:
            continue
        target = folder / f"{Path(path).stem}.screening.png"
        n = 1
        while str(target) in written:
            target, n = folder / f"{Path(path).stem}-{n}.screening.png", n + 1
        Image.fromarray(overlay_rgb(image, heat)).save(target)
        written.append(str(target))
    return written
