"""The breast at its own aspect ratio (issue 31, item 3; switch ``screening.aspect``): the high-resolution sample is
the breast's box padded to a tall frame instead of a square, at the square's pixel count, and every step from the
sample to the served map follows that shape.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.samples import highres_sample, map_to_original, resize_square, sample_shape


def _tall_breast(h: int = 400, w: int = 300) -> np.ndarray:
    image = np.zeros((h, w), np.float32)
    image[20:380, 0:150] = 0.5  # a left breast twice as tall as wide, chest wall on the left
    image[300:312, 60:72] = 1.0  # a bright spot low in the breast
    return image


def test_sample_shape_keeps_the_square_pixel_count():
    assert sample_shape(224, 2.0) == (448, 448) == sample_shape(224, 2.0, 1.0)
    h, w = sample_shape(224, 2.0, 2.0)
    assert (h, w) == (634, 317) and abs(h * w - 448 ** 2) / 448 ** 2 < 0.01


def test_a_tall_frame_gives_the_breast_more_resolution_than_the_square():
    image = _tall_breast()
    square, gs = highres_sample(image, "L", 64)
    tall, gt = highres_sample(image, "L", 64, aspect=2.0)
    assert square.shape == (64, 64) and tall.shape == sample_shape(64, 1.0, 2.0) == (91, 45)
    assert (gt.h, gt.w) == (360, 180) and (gs.h, gs.w) == (360, 360)
    # the 360 x 150 box fills 150/180 of the tall frame and 150/360 of the square; its pixels grow ~sqrt(2)**2
    assert 0.8 < (tall > 0).mean() < 0.87 and 0.38 < (square > 0).mean() < 0.45
    assert (tall > 0).sum() > 1.8 * (square > 0).sum()


def test_the_square_frame_is_the_breast_box_padded_to_a_square():
    image = _tall_breast()
    sample, _ = highres_sample(image, "L", 64, aspect=1.0)
    box = image[20:380, 0:150]
    padded = np.zeros((360, 360), np.float32)
    padded[:, :150] = box
    np.testing.assert_array_equal(sample, resize_square(padded, 64))


@pytest.mark.parametrize("aspect", [1.0, 2.0, 0.5])
def test_a_map_of_the_frame_lands_on_the_original_spot(aspect):
    image = _tall_breast()[:, ::-1].copy()  # a right breast: mirrored to the left and back
    sample, geom = highres_sample(image, "R", 64, aspect=aspect)
    back = map_to_original((sample > 0.8).astype(np.float32), geom)
    ys, xs = np.nonzero(back > 0.5)
    assert back.shape == image.shape and 296 <= ys.mean() <= 316 and 222 <= xs.mean() <= 244


def test_a_wide_box_is_padded_above_and_below():
    image = np.zeros((300, 400), np.float32)
    image[100:200, 0:300] = 0.5  # wider than tall
    sample, geom = highres_sample(image, "L", 64, aspect=2.0)
    assert (geom.h, geom.w) == (600, 300) and geom.r0 == 100 - 250
    rows = np.flatnonzero((sample > 0).any(axis=1))
    assert sample.shape == (91, 45) and 35 <= rows[0] and rows[-1] <= 56  # the breast sits in the middle band


def test_a_tall_frame_trains_streams_and_serves_its_map_on_the_original(tmp_path):
    """Tiny settings on real CDD-CESM images: the streamed front equals the in-memory one on the tall samples, the
    card carries the aspect, and the served model prepares the same tall sample and maps it back."""
    from pipeline.config.experiment import EXPERIMENTS_DIR, deep_merge, load_experiment
    from pipeline.io.imageio import read_image
    from pipeline.model.screening import build_screening_pipeline, front_features, sample_image_shape
    from pipeline.serving.predict import load_predictor
    from pipeline.training.train import load_task_data, load_task_features, train_experiment
    from tests.serving.test_screening_acceptance import CDD, TINY

    if not CDD.is_file():
        pytest.skip("CDD-CESM is not in shared/data")
    over = deep_merge(TINY, {"dataset": {"max_samples": 16}, "screening": {"aspect": 2.0},
                             "compute": {"n_jobs": 2, "cache_dir": str(tmp_path / "cache")},
                             "tracking": {"registered_model_name": "mammoscope-screening-aspect"}})
    exp = load_experiment(EXPERIMENTS_DIR / "cdd_cesm_screening.yaml", over)
    cfg = exp.config
    assert sample_image_shape(cfg) == (91, 45)
    # every step that reads the sample as an image is told its shape (a row that is not a square would otherwise
    # be read as a one-pixel strip); the whole-breast branch pads it to its square input
    shapes = {k: v for k, v in build_screening_pipeline(cfg).get_params().items()
              if k.endswith("image_shape") and ("tiles" in k or "resize" in k)}
    assert len(shapes) == 4 and set(shapes.values()) == {(91, 45)}
    mem = load_task_data(cfg, lambda s: None)
    assert mem.X.shape[1] == 91 * 45
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train_experiment(exp, uri, cache_dir=tmp_path / "cache")
    assert result.promoted, result.promotion_reason
    streamed = load_task_features(cfg, lambda s: None, cache_dir=tmp_path / "cache")
    assert streamed.stream.images_cached == len(mem.y)  # training streamed these very rows
    predictor = load_predictor("models:/mammoscope-screening-aspect@champion", tracking_uri=uri)
    assert predictor.card.sample_params["aspect"] == 2.0
    np.testing.assert_allclose(front_features(predictor.pipeline.served_, mem.X), streamed.features, atol=1e-5)
    path = mem.table["path"].iloc[0]
    image, meta = read_image(path)
    sample = predictor.prepare(image, meta, path=path)
    assert sample.array.shape == (91, 45)
    p = predictor.score([sample]).probabilities
    assert p.shape == (1, 2) and np.allclose(p.sum(axis=1), 1.0)
    heat = predictor.pipeline.heatmap_
    tiles = heat.named_steps["embed"].transform(sample.array.reshape(1, -1)).reshape(1, 4, -1)
    assert tiles[0, :, 0].sum() > 1  # several tiles of the tall breast (a strip would hold one)
    ex = predictor.explain(sample)
    assert ex["heatmap"].shape == (91, 45) and np.isfinite(ex["heatmap"]).all(), ex["heatmap"]
    assert ex["heatmap_original"].shape == image.shape and ex["heatmap_original"].max() > 0
