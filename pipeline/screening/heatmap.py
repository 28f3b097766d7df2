"""Where: the tile scorer's per-tile probabilities as a heat map over the screening sample, and on the original
image (pipeline.screening.samples.map_to_original)."""
from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline

from features.tiles import tile_heatmap

__all__ = ["sample_heatmap"]


def sample_heatmap(map_pipeline: Pipeline, sample: np.ndarray) -> np.ndarray:
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
