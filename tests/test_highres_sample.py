"""The highres sample recipe (task screening): the breast at scale x S, and its geometry back to the original."""
from __future__ import annotations

import numpy as np

from pipeline.samples import highres_sample, map_to_original


def test_screening_sample_maps_back_onto_the_original():
    image = np.zeros((300, 200), np.float32)
    image[40:260, 120:200] = 0.6  # a right breast (chest wall on the right): mirrored to the left
    image[100:110, 150:160] = 1.0
    sample, geom = highres_sample(image, "R", 64)
    assert sample.shape == (64, 64) and geom.flipped
    back = map_to_original((sample > 0.8).astype(np.float32), geom)
    ys, xs = np.nonzero(back > 0.5)
    assert back.shape == image.shape and 95 <= ys.mean() <= 115 and 145 <= xs.mean() <= 165
