"""pectoral_mask on synthetic MLO-like images with a known muscle, on CC-like images without one, and on real
mini-MIAS MLO films (every mini-MIAS image is an MLO view)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.masking import mask_breast
from features.pectoral import PectoralMask, find_pectoral_line, pectoral_mask


def _mlo(h: int = 224, w: int = 224, a: float = 60, b: float = 130, seed: int = 0, muscle: float = 0.8
         ) -> tuple[np.ndarray, np.ndarray]:
    """(image, true muscle): a half-ellipse breast against the left edge, textured fat, and a bright triangle in the
    top-left corner bounded by the line through (0, a) and (b, 0) (row, column)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    breast = ((yy - h / 2) ** 2 / (0.5 * h) ** 2 + xx**2 / (0.6 * w) ** 2) < 1
    image = np.where(breast, 0.45 + 0.05 * rng.standard_normal((h, w)), 0.0).astype(np.float32)
    true = breast & (xx / a + yy / b < 1)
    image[true] = muscle + 0.03 * rng.standard_normal(int(true.sum()))
    return np.clip(image, 0.0, 1.0) * breast, true


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("a, b", [(60, 130), (100, 90), (40, 180)])
def test_finds_a_known_muscle(a, b):
    image, true = _mlo(a=a, b=b)
    found = pectoral_mask(image)
    assert found.dtype == bool and found.shape == image.shape
    assert _iou(found, true) > 0.8


def test_right_breast_is_mirrored_and_back():
    image, true = _mlo()
    found = pectoral_mask(image[:, ::-1])
    assert _iou(found, true[:, ::-1]) > 0.8
    assert not found[:, :112].any()  # the chest wall is on the right: nothing on the nipple side


def test_empty_without_a_muscle():
    """A CC-like breast (no bright corner), a dark corner, a blank and a near-empty image: nothing is found."""
    no_muscle, _ = _mlo(muscle=0.45)
    dark_corner, _ = _mlo(muscle=0.2)
    for image in (no_muscle, dark_corner, np.zeros((64, 64), np.float32), np.pad(np.ones((3, 3)), 20)):
        assert not pectoral_mask(image).any()


def test_a_bright_blob_in_the_corner_is_not_a_muscle():
    """A round dense region near the chest wall steps down along part of a line only: no muscle."""
    image, _ = _mlo(muscle=0.45)
    yy, xx = np.mgrid[0:224, 0:224]
    image[(yy - 40) ** 2 + (xx - 30) ** 2 < 25**2] = 0.85
    assert not pectoral_mask(image).any()


def test_input_checks():
    with pytest.raises(ValueError, match="2D"):
        pectoral_mask(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="shape"):
        find_pectoral_line(np.ones((8, 8)), np.ones((4, 4), bool))


def test_pectoral_mask_estimator_zeroes_only_the_muscle():
    image, true = _mlo()
    out = PectoralMask().fit_transform(image.reshape(1, -1)).reshape(image.shape)
    assert (out[true] == 0).mean() > 0.9
    keep = (image > 0) & ~pectoral_mask(image)
    np.testing.assert_array_equal(out[keep], image[keep])


def test_real_mlo_films(mias_dir):
    """On mini-MIAS MLO films the muscle is found on most images, sits in the top chest-wall corner and is brighter
    than the breast below it. (Overlays of 48 films were checked by eye: the edge follows the muscle.)"""
    from pipeline.io.imageio import read_image
    from pipeline.samples import make_sample

    man = pd.read_csv(mias_dir / "manifest.csv").drop_duplicates("file").iloc[::27].head(12)
    found = 0
    for _, row in man.iterrows():
        image, _ = read_image(mias_dir / row["file"])
        sample = mask_breast(make_sample(image, row, "density", size=224))  # chest wall left (samples.py)
        muscle = pectoral_mask(sample)
        if not muscle.any():
            continue
        found += 1
        rows, cols = np.nonzero(muscle)
        assert rows.mean() < 0.5 * 224 and cols.mean() < 0.3 * 224  # the upper chest-wall corner
        assert muscle[:, 0].any()  # it touches the chest wall
        rest = (sample > 0) & ~muscle
        assert sample[muscle].mean() > sample[rest].mean()
        assert 0.01 <= muscle.sum() / (sample > 0).sum() <= 0.45
    assert found >= 9


def test_a_line_found_is_remembered_by_content_never_served_for_another_image():
    import features.pectoral as pectoral

    image, true = _mlo(seed=3)
    first = find_pectoral_line(image)
    calls = []
    real = pectoral._find_line
    pectoral._find_line = lambda *a: calls.append(1) or real(*a)
    try:
        assert find_pectoral_line(image.copy()) == first and not calls  # same pixels, another array: remembered
        in_place = image.copy()
        in_place[true] = 0.45  # the muscle painted over in place: new content, found again, and not found
        assert find_pectoral_line(in_place)[0] is None and len(calls) == 1
        assert find_pectoral_line(image, work_size=64)[0] is not None and len(calls) == 2  # other parameters
    finally:
        pectoral._find_line = real
