"""features.preprocess: CLAHE, unsharp mask and resize against scikit-image, and what they do to images."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import exposure, filters, transform

from features.preprocess import INSIDE_FLOOR, clahe, pad_to_square, resize_image, unsharp_mask

from tests._images import mias_image


@pytest.mark.parametrize("shape", [(224, 224), (200, 150)])
def test_clahe_matches_skimage_equalize_adapthist(shape):
    image = transform.resize(mias_image("mdb003"), shape, anti_aliasing=True).astype(np.float32)
    mine = clahe(image, clip_limit=0.01)
    ref = exposure.equalize_adapthist(image, clip_limit=0.01)
    diff = np.abs(mine - ref)
    assert diff.mean() < 1e-4
    assert diff.max() < 5e-4  # a couple of levels of skimage's 2**14


def test_clahe_raises_contrast_of_a_low_contrast_image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128] / 128
    image = (0.45 + 0.05 * np.sin(12 * xx) * np.cos(9 * yy) + 0.01 * rng.standard_normal((128, 128))).astype(np.float32)
    out = clahe(image, clip_limit=0.02)
    assert out.std() > 3 * image.std()
    assert out.min() == 0.0 and out.max() == 1.0
    # local contrast (mean gradient magnitude) rises too, not only the global range
    assert np.abs(np.diff(out, axis=1)).mean() > 3 * np.abs(np.diff(image, axis=1)).mean()


def test_keep_zero_keeps_the_outside_at_zero_and_the_inside_above():
    image = mias_image("mdb005")[::8, ::8].copy()
    image[:, :40] = 0
    for out in (clahe(image, keep_zero=True), unsharp_mask(image, radius=2, amount=2, keep_zero=True)):
        assert (out[image == 0] == 0).all()
        assert (out[image > 0] >= INSIDE_FLOOR).all()


def test_unsharp_mask_matches_skimage_and_sharpens():
    image = transform.resize(mias_image("mdb010"), (128, 128), anti_aliasing=True).astype(np.float32)
    mine = unsharp_mask(image, radius=2.0, amount=1.5)
    ref = np.clip(filters.unsharp_mask(image, radius=2.0, amount=1.5, preserve_range=True), 0, 1)
    np.testing.assert_allclose(mine, ref, atol=1e-5)
    laplacian_energy = lambda im: np.abs(np.diff(im, 2, axis=0)).mean() + np.abs(np.diff(im, 2, axis=1)).mean()
    assert laplacian_energy(mine) > 1.5 * laplacian_energy(image)


def test_pad_to_square_centres_the_image():
    out = pad_to_square(np.ones((2, 6), np.float32))
    assert out.shape == (6, 6)
    np.testing.assert_array_equal(out.sum(axis=1), [0, 0, 6, 6, 0, 0])


def test_resize_pads_not_stretches_by_default():
    wide = np.ones((50, 100), np.float32)
    padded = resize_image(wide, 20)
    assert padded.shape == (20, 20)
    assert padded[:4].max() == 0 and padded[-4:].max() == 0  # a quarter of the height above/below is padding
    np.testing.assert_allclose(padded[6:14], 1.0, atol=1e-6)
    np.testing.assert_allclose(resize_image(wide, 20, aspect="stretch"), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="aspect must be 'pad' or 'stretch'"):
        resize_image(wide, 20, aspect="crop")


def test_resize_is_close_to_skimage_antialiased_resize():
    image = mias_image("mdb001")
    mine = resize_image(image, 224)
    ref = transform.resize(image, (224, 224), anti_aliasing=True)
    assert np.abs(mine - ref).mean() < 2e-3
