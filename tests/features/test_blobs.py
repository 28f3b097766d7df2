"""BlobFeatures: a bright spot in the breast raises its scale's peak, the skin line does not count, brightness and
contrast of the whole film change nothing."""
from __future__ import annotations

import numpy as np
import pytest

from features.blobs import BlobFeatures, blob_feature_names, blob_features


def _breast(seed: int = 0, size: int = 160) -> np.ndarray:
    """A half-disc breast (chest wall on the left) of textured tissue around 0.4, 0 outside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (yy - size / 2) ** 2 + xx**2 < (0.9 * size) ** 2 / 1.2
    from scipy import ndimage as ndi

    tissue = 0.4 + 0.03 * ndi.gaussian_filter(rng.standard_normal((size, size)), 2) / 0.1
    return np.where(inside, np.clip(tissue, 0.05, 1.0), 0.0).astype(np.float32)


def _with_spot(image: np.ndarray, radius: float, level: float = 0.8, centre=(80, 60)) -> np.ndarray:
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    out = image.copy()
    out[((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2) & (image > 0)] = level
    return out


def _features(image: np.ndarray, **params) -> dict[str, float]:
    est = BlobFeatures(**params).fit(image.reshape(1, -1))
    return dict(zip(est.get_feature_names_out(), est.transform(image.reshape(1, -1))[0]))


def test_names_match_columns():
    names = blob_feature_names(sigmas=(2.0, 4.5))
    assert len(names) == blob_features(_breast(), sigmas=(2.0, 4.5)).size == 3 + 5 * 2
    assert "blob_log4_5_peak_z" in names and len(set(names)) == len(names)


def test_a_bright_spot_raises_its_scale_more_than_others():
    """A disc of radius 6 px (best sigma ~4) lifts the sigma-4 peak well above the plain breast's; a tiny scale
    barely sees its inside."""
    base = _features(_breast())
    spot = _features(_with_spot(_breast(), 6))
    assert spot["blob_log4_peak_z"] > base["blob_log4_peak_z"] + 5
    assert spot["blob_log4_peak_contrast"] > base["blob_log4_peak_contrast"] + 0.5
    assert spot["blob_log4_spots_z6"] >= 1
    assert spot["blob_intensity_max_above_median"] > base["blob_intensity_max_above_median"]
    gain = {s: spot[f"blob_log{s}_peak_contrast"] - base[f"blob_log{s}_peak_contrast"] for s in (2, 4, 8, 16)}
    assert max(gain, key=gain.get) in (4, 8)


def test_the_skin_line_is_not_a_spot():
    """The breast's edge against the background is no spot: the plain breast's peaks stay modest."""
    base = _features(_breast())
    for s in (2, 4, 8):
        assert base[f"blob_log{s}_spots_z6"] <= 3, s


def test_invariant_to_the_film_s_brightness_and_contrast():
    """Every measure is relative to the breast's own grey levels: an offset or a gain leaves them (nearly) alone."""
    image = _with_spot(_breast(seed=2), 8)
    a = _features(image)
    b = _features(np.where(image > 0, np.clip(0.5 * image + 0.2, 0, 1), 0).astype(np.float32))
    for key in a:
        if "peak_z" in key or "contrast" in key or "above_median" in key:
            assert a[key] == pytest.approx(b[key], rel=0.05, abs=0.05), key


def test_blank_image_gives_zeros():
    out = BlobFeatures().fit_transform(np.zeros((2, 64 * 64)))
    assert out.shape == (2, len(blob_feature_names(sigmas=(2, 4, 8, 16)))) and not out.any()


@pytest.mark.parametrize("sigmas", [(), (0.0,), (-1.0, 2.0), "2"])
def test_bad_sigmas_name_the_parameter(sigmas):
    with pytest.raises(ValueError, match="sigmas"):
        BlobFeatures(sigmas=sigmas).fit(np.zeros((1, 16)))
