"""Serving a screening model (Task ``screening``): the tile-score heat map on the original image, its JSON summary,
and the overlay colouring of the app and of ``mammoscope predict --maps``. The levels above the image (breasts,
exams) are the served ExamModel's own (pipeline.model.exam.ExamModel.score_levels, via pipeline.serving.exam).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from features.tiles import tile_heatmap

__all__ = ["MAP_GRID", "sample_heatmap", "explain_screening", "map_summary", "context_model", "overlay_rgb"]

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


def context_model(model: Any) -> Any | None:
    """The multi-view context stage a screening model's ExamModel carries (``context_``; None when trained without
    ``screening.context`` or where the fit dropped it)."""
    return getattr(getattr(model, "pipeline", None), "context_", None)


def overlay_rgb(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grey image (H, W) in [0, 1] (or uint8) with a heat map (H, W) in [0, 1] blended in jet colours (blue -> cyan
    -> yellow -> red, piecewise linear) -> RGB uint8; weight alpha * heat, so cold regions stay grey. The one
    colouring of the app and of `mammoscope predict --maps`."""
    image = np.asarray(image)
    grey = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else np.asarray(image, np.float32)
    grey = np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)
    h = np.clip(np.asarray(heat, np.float32), 0, 1)[..., None]
    colours = np.concatenate([np.clip(1.5 - np.abs(4 * h - c), 0, 1) for c in (3.0, 2.0, 1.0)], axis=2)
    weight = alpha * h
    return (np.clip((1 - weight) * grey + weight * colours, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
