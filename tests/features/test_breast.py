"""breast_mask and orient_chest_wall_left on synthetic images and real mini-MIAS / CBIS-DDSM laterality."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from features.breast import breast_mask, chest_wall_side, orient_chest_wall_left
from pipeline.io.imageio import read_image


def _synthetic(h: int = 200, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w), 0.02, np.float32)
    breast = ((yy - h / 2) ** 2 / (0.45 * h) ** 2 + xx**2 / (0.6 * w) ** 2) < 1
    image[breast] = 0.6
    image[(yy - h / 2) ** 2 + (xx - 20) ** 2 < 100] = 0.1  # a dark lobule inside: a hole to fill
    image[10:30, 120:150] = 0.95  # burned-in film label, separate from the breast
    return image


def test_mask_keeps_breast_fills_holes_drops_label():
    image = _synthetic()
    mask = breast_mask(image)
    assert mask.shape == image.shape and mask.dtype == bool
    assert mask[100, 20] and mask[100, 60]  # lobule filled, tissue kept
    assert not mask[20, 135]  # label removed
    assert not mask[195, 150]  # background


def test_mask_of_blank_image_is_empty():
    assert not breast_mask(np.zeros((50, 40), np.float32)).any()


def test_mask_errors():
    with pytest.raises(ValueError, match="2D"):
        breast_mask(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="otsu_fraction"):
        breast_mask(np.zeros((8, 8)), otsu_fraction=2.0)


def test_orientation_flips_right_breasts_and_infers_side():
    image = _synthetic()
    mirrored = image[:, ::-1]
    out, flipped = orient_chest_wall_left(mirrored, "R")
    assert flipped and np.array_equal(out, image)
    out, flipped = orient_chest_wall_left(image, "L")
    assert not flipped and out is image
    assert orient_chest_wall_left(mirrored)[1] and not orient_chest_wall_left(image)[1]
    with pytest.raises(ValueError, match="laterality"):
        orient_chest_wall_left(image, "X")


def test_speed_224_and_1024():
    rng = np.random.default_rng(0)
    for size, budget in ((224, 0.010), (1024, 0.050)):
        image = _synthetic(size, size) + rng.random((size, size), dtype=np.float32) * 0.01
        breast_mask(image)
        start = time.perf_counter()
        for _ in range(5):
            breast_mask(image)
            orient_chest_wall_left(image)
        per_call = (time.perf_counter() - start) / 5
        assert per_call < budget * 3, f"{size}: {per_call * 1000:.1f} ms"  # x3 slack for a shared CI machine


def test_intensity_rule_agrees_with_laterality_on_real_images(mias_dir, cbis_dir):
    manifest = pd.read_csv(mias_dir / "manifest.csv").drop_duplicates("file").iloc[::8]  # 41 images
    for row in manifest.itertuples():
        image = read_image(mias_dir / row.file)[0][::4, ::4]
        side = chest_wall_side(image, breast_mask(image))
        assert side == ("left" if row.laterality == "L" else "right"), row.file
    cbis = pd.read_csv(cbis_dir / "manifest.csv").drop_duplicates("file").iloc[:2]
    for row in cbis.itertuples():
        image = read_image(cbis_dir / row.file)[0][::8, ::8]
        assert orient_chest_wall_left(image)[1] == (row.laterality == "R"), row.file
