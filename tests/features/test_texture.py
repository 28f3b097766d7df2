"""features.texture: GLCM against hand-worked matrices and skimage, first-order statistics against numpy/scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from skimage.feature import graycomatrix, graycoprops

from features.preprocess import resize_image
from features.texture import (
    GLCM_PROPERTIES,
    glcm_feature_names,
    glcm_features,
    glcm_matrices,
    glcm_properties,
    intensity_feature_names,
    intensity_features,
    quantize,
)

from tests._images import mias_image

LEVELS_4x4 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 2, 2], [2, 2, 3, 3]])


def test_glcm_4x4_matches_hand_worked_matrices():
    P = glcm_matrices(LEVELS_4x4, distances=[1], angles=[0, 90], levels=4, symmetric=False)
    right = [[2, 2, 1, 0], [0, 2, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1]]  # pairs (r, c) -> (r, c + 1)
    down = [[3, 0, 2, 0], [0, 2, 2, 0], [0, 0, 1, 2], [0, 0, 0, 0]]  # pairs (r, c) -> (r + 1, c)
    np.testing.assert_array_equal(P[0, 0], right)
    np.testing.assert_array_equal(P[0, 1], down)
    sym = glcm_matrices(LEVELS_4x4, distances=[1], angles=[0], levels=4, symmetric=True)
    np.testing.assert_array_equal(sym[0, 0], np.array(right) + np.array(right).T)


def test_glcm_4x4_mask_drops_pairs_with_an_outside_pixel():
    mask = np.ones((4, 4), bool)
    mask[:, 3] = False
    P = glcm_matrices(LEVELS_4x4, distances=[1], angles=[0], levels=4, mask=mask, symmetric=False)
    expected = [[2, 2, 1, 0], [0, 0, 0, 0], [0, 0, 2, 1], [0, 0, 0, 0]]
    np.testing.assert_array_equal(P[0, 0], expected)


def test_glcm_4x4_contrast_by_hand_from_float_image():
    image = (LEVELS_4x4 + 0.5) / 4  # quantises back to LEVELS_4x4
    np.testing.assert_array_equal(quantize(image, 4), LEVELS_4x4)
    # symmetric, normed, d=1, angle 0: contrast = sum p (i-j)^2 = (2*2*1 + 2*1*4 + 2*1*1) / 24 = 14/24
    value = glcm_features(image, distances=[1], angles=[0], levels=4, properties=["contrast"])
    assert value == pytest.approx([14 / 24])


@pytest.mark.parametrize("levels", [8, 64, 256])
def test_glcm_matches_skimage_on_a_real_mammogram(levels):
    q = quantize(resize_image(mias_image("mdb001"), 96), levels)
    distances, angles = [1, 2, 3], [0, 45, 90, 135]
    P = glcm_matrices(q, distances=distances, angles=angles, levels=levels)
    ref = graycomatrix(q.astype(np.uint8), distances, np.deg2rad(angles), levels=levels, symmetric=True)
    np.testing.assert_array_equal(P, ref.transpose(2, 3, 0, 1))
    mine = glcm_properties(P, GLCM_PROPERTIES)
    theirs = np.stack([graycoprops(ref, p) for p in GLCM_PROPERTIES])
    np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-12)


def test_masked_glcm_matches_skimage_with_an_extra_outside_level():
    rng = np.random.default_rng(0)
    q = quantize(resize_image(mias_image("mdb002"), 64), 16)
    mask = rng.random(q.shape) > 0.3
    P = glcm_matrices(q, distances=[1, 2], angles=[0, 45, 90, 135], levels=16, mask=mask)
    outside_as_16 = np.where(mask, q, 16).astype(np.uint8)
    ref = graycomatrix(outside_as_16, [1, 2], np.deg2rad([0, 45, 90, 135]), levels=17, symmetric=True)
    np.testing.assert_array_equal(P, ref[:16, :16].transpose(2, 3, 0, 1))


def test_feature_names_say_property_distance_and_angle():
    names = glcm_feature_names(distances=[1, 3], angles=[0, 45], properties=["contrast"], aggregation="both")
    assert names == ["glcm_contrast_d1_mean", "glcm_contrast_d1_a0", "glcm_contrast_d1_a45",
                     "glcm_contrast_d3_mean", "glcm_contrast_d3_a0", "glcm_contrast_d3_a45"]
    image = np.random.default_rng(1).random((16, 16))
    values = glcm_features(image, distances=[1, 3], angles=[0, 45], properties=["contrast"], aggregation="both")
    assert values.shape == (6,)
    assert values[0] == pytest.approx(values[1:3].mean())


def _stripes(period: int, size: int = 64) -> np.ndarray:
    x = np.arange(size)
    return np.tile(0.5 + 0.4 * np.sin(2 * np.pi * x / period), (size, 1))


def test_glcm_changes_with_texture_but_not_with_a_shift():
    kw = dict(distances=[1, 2], angles=[0, 45, 90, 135], levels=32, properties=["contrast", "homogeneity"])
    # a textured patch on a zero background, measured inside its mask: moving it changes nothing
    patch = np.zeros((64, 64))
    patch[10:40, 12:44] = _stripes(8)[:30, :32]
    moved = np.roll(patch, (13, 9), axis=(0, 1))
    base = glcm_features(patch, mask=patch > 0, **kw)
    np.testing.assert_allclose(glcm_features(moved, mask=moved > 0, **kw), base, rtol=1e-12)
    # a periodic texture rolled cyclically: the same up to the border pairs
    stripes = _stripes(8)
    rolled = glcm_features(np.roll(stripes, 3, axis=1), **kw)
    np.testing.assert_allclose(rolled, glcm_features(stripes, **kw), rtol=0.05)
    # a finer texture: contrast rises several-fold
    finer = glcm_features(_stripes(3), **kw)
    assert finer[0] > 3 * glcm_features(stripes, **kw)[0]


def test_intensity_features_match_numpy_and_scipy():
    image = resize_image(mias_image("mdb001"), 64)
    pct = (5, 25, 50, 75, 95)
    f = intensity_features(image, bins=16, percentiles=pct)
    names = intensity_feature_names(bins=16, percentiles=pct)
    assert len(names) == f.size == 16 + 5 + 5
    values = dict(zip(names, f))
    v = image.ravel().astype(np.float64)
    assert sum(values[f"hist_{b:02d}"] for b in range(16)) == pytest.approx(1.0)
    assert values["intensity_mean"] == pytest.approx(v.mean(), rel=1e-6)
    assert values["intensity_std"] == pytest.approx(v.std(), rel=1e-6)
    assert values["intensity_skewness"] == pytest.approx(stats.skew(v), rel=1e-6)
    assert values["intensity_kurtosis"] == pytest.approx(stats.kurtosis(v), rel=1e-6)
    np.testing.assert_allclose(f[-5:], np.percentile(v, pct), atol=2 / 4096)


def test_intensity_entropy_and_mask_by_hand():
    image = np.zeros((4, 4))
    image[:2] = 0.1
    image[2:] = 0.9
    f = dict(zip(intensity_feature_names(bins=4, percentiles=[50]), intensity_features(image, bins=4, percentiles=[50])))
    assert f["intensity_entropy"] == pytest.approx(1.0)  # two equally likely bins: 1 bit
    assert [f[f"hist_{b}"] for b in range(4)] == [0.5, 0, 0, 0.5]
    masked = intensity_features(image, bins=4, percentiles=[50], mask=image > 0.5)
    assert masked[4] == pytest.approx(0.9)  # mean of the inside pixels only
    assert masked[8] == pytest.approx(0.0)  # entropy of a single bin


def test_empty_region_gives_zeros():
    image = np.ones((8, 8))
    assert not intensity_features(image, mask=np.zeros((8, 8), bool)).any()
    assert glcm_features(image, mask=np.zeros((8, 8), bool), properties=["contrast"]).tolist() == [0.0, 0.0, 0.0]


def test_unknown_property_and_aggregation_are_refused():
    with pytest.raises(ValueError, match="Unknown GLCM property 'sharpness'"):
        glcm_features(np.zeros((4, 4)), properties=["sharpness"])
    with pytest.raises(ValueError, match="aggregation must be one of"):
        glcm_features(np.zeros((4, 4)), aggregation="max")
