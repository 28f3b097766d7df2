"""The screening heat map: tile scores peak inside the breast and follow a lesion that moves."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.experiment import resolve_config
from pipeline.serving.screening import sample_heatmap
from pipeline.model.screening import build_map_pipeline

TINY = {"features": {"cnn": {"backbone": "tiny", "weights": "random", "batch_size": 64},
                     "handcrafted": {"glcm": {"levels": 8, "distances": [1]}, "intensity": {"bins": 8}}},
        "samples": {"size": 32},
        "model": {"n_estimators": 20}, "calibration": {"inner_folds": 2},
        "evaluation": {"folds": 3, "bootstrap_resamples": 50}, "dataset": {"task": "screening"}}


def _blob_breast(cy: int, cx: int, size: int = 96, seed: int = 0, lesion: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    breast = ((yy - size / 2) ** 2 / (0.45 * size) ** 2 + xx ** 2 / (0.8 * size) ** 2) <= 1.0
    img = np.where(breast, rng.normal(0.35, 0.03, (size, size)), 0.0)
    if lesion:
        img = img + breast * 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0 ** 2))
    return np.clip(img, 0, 1).astype(np.float32)


def test_heatmap_peaks_inside_the_breast_and_follows_a_moved_lesion(tmp_path):
    # no CLAHE/unsharp here: the tiny random network does not see a blob through local equalisation
    config = resolve_config(None, {**TINY, "preprocessing": {"clahe": {"enabled": False},
                                                              "unsharp": {"enabled": False}},
                                   "screening": {"scale": 3.0, "tile_size": 24, "overlap": 0.5,
                                                         "max_tiles": 36, "map_C": 1.0}})
    rng = np.random.default_rng(1)
    images, labels = [], []
    for i in range(40):
        lesion = i % 2 == 1
        cy, cx = rng.integers(25, 70), rng.integers(8, 50)
        images.append(_blob_breast(cy, cx, seed=i, lesion=lesion).ravel())
        labels.append(int(lesion))
    mapper = build_map_pipeline(config, None).fit(np.stack(images), np.array(labels))
    peaks = []
    for cy, cx in ((30, 20), (65, 40)):
        img = _blob_breast(cy, cx, seed=99)
        heat = sample_heatmap(mapper, img)
        py, px = np.unravel_index(np.argmax(heat), heat.shape)
        assert img[py, px] > 0  # inside the breast
        assert abs(py - cy) <= 16 and abs(px - cx) <= 16
        peaks.append((py, px))
    assert np.hypot(peaks[0][0] - peaks[1][0], peaks[0][1] - peaks[1][1]) >= 15


def test_map_summary_places_the_peak_and_averages_a_coarse_grid():
    from pipeline.serving.screening import map_summary

    heat = np.zeros((100, 70), np.float32)
    heat[10:90, 5:60] = 0.2
    heat[71:75, 40:44] = 0.9
    s = map_summary(heat, grid=10)
    assert s["peak_xy"] == [40, 71] and s["image_shape"] == [100, 70] and s["grid_shape"] == [10, 10]
    grid = np.asarray(s["grid"])
    assert grid.shape == (10, 10) and s["value_range"] == [0.2, 0.9]
    assert np.unravel_index(np.argmax(grid), grid.shape) == (7, 5)  # rows 70-79, columns 35-41
    assert grid[0, 0] == 0.0 and grid[5, 3] == pytest.approx(0.2)
    assert 0.0 <= grid.min() and grid.max() <= 1.0
