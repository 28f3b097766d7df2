"""DensityFeatures: dense-area fractions rise when dense tissue is added, and the pectoral muscle does not count."""
from __future__ import annotations

import numpy as np
import pytest

from features.density import DensityFeatures, density_feature_names, density_features
from tests.features.test_pectoral import _mlo


def _features(image: np.ndarray, **params) -> dict[str, float]:
    est = DensityFeatures(**params).fit(image.reshape(1, -1))
    return dict(zip(est.get_feature_names_out(), est.transform(image.reshape(1, -1))[0]))


def _with_dense(image: np.ndarray, radius: float, level: float = 0.75) -> np.ndarray:
    """`image` with a disc of dense (bright) tissue of `radius` px in the middle of the breast."""
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    out = image.copy()
    out[((yy - 130) ** 2 + (xx - 60) ** 2 < radius**2) & (image > 0)] = level
    return out


def test_names_match_columns():
    image, _ = _mlo()
    names = density_feature_names(relative_thresholds=(0.5,), offsets=(0.1, 0.2))
    assert len(names) == density_features(image, relative_thresholds=(0.5,), offsets=(0.1, 0.2)).size
    assert "density_rel0_5_fraction" in names and "density_fat_plus0_1_fraction" in names
    assert len(set(names)) == len(names)


def test_more_dense_tissue_raises_the_dense_fractions():
    base, _ = _mlo(muscle=0.45)
    small, large = _features(_with_dense(base, 20)), _features(_with_dense(base, 45))
    for key in ("density_fat_plus0_2_fraction", "density_fat_plus0_1_fraction", "density_otsu_fraction",
                "density_core_otsu_fraction"):
        assert large[key] > small[key] + 0.05, key
    assert _features(base)["density_fat_plus0_2_fraction"] < small["density_fat_plus0_2_fraction"]
    assert large["density_fibroglandular_mean_above_fat"] > 0.2  # the dense part is ~0.3 above fat
    assert large["density_dense_fatty_contrast"] > 0.2


def test_the_pectoral_muscle_is_not_dense():
    """Adding a bright muscle changes nothing when it is excluded, and counts as dense when it is not."""
    fatty, _ = _mlo(muscle=0.45, seed=1)
    with_muscle, true = _mlo(muscle=0.8, seed=1)
    kept = _features(with_muscle, exclude_pectoral=False)
    excluded = _features(with_muscle)
    plain = _features(fatty)
    assert excluded["density_pectoral_share"] == pytest.approx(true.sum() / (with_muscle > 0).sum(), abs=0.03)
    assert plain["density_pectoral_share"] == 0.0
    assert kept["density_fat_plus0_2_fraction"] > 0.05  # the muscle counts as dense when it is kept
    assert excluded["density_fat_plus0_2_fraction"] < 0.01  # and is gone when excluded
    assert excluded["density_fat_plus0_2_fraction"] == pytest.approx(plain["density_fat_plus0_2_fraction"], abs=0.01)


def test_robust_to_a_global_brightness_shift():
    """Thresholds are relative to the breast's own intensities: a scanner offset changes no fraction."""
    image, _ = _mlo(muscle=0.45)
    image = _with_dense(image, 35)
    shifted = np.where(image > 0, np.clip(image + 0.1, 0, 1), 0)
    a, b = _features(image), _features(shifted)
    for key in a:
        if key.endswith("fraction") or key.endswith("above_fat") or key == "density_span":
            assert a[key] == pytest.approx(b[key], abs=0.02), key


def test_blank_image_gives_zeros():
    out = DensityFeatures().fit_transform(np.zeros((2, 64 * 64)))
    assert out.shape == (2, len(density_feature_names(relative_thresholds=(0.25, 0.5, 0.75),
                                                      offsets=(0.05, 0.1, 0.2, 0.3))))
    assert not out.any()


@pytest.mark.parametrize("params, match", [
    ({"relative_thresholds": (0.0,)}, "relative_thresholds"), ({"offsets": ()}, "offsets"),
    ({"fat_percentile": 80}, "fat_percentile"), ({"core_fraction": 1.0}, "core_fraction"),
    ({"exclude_pectoral": "yes"}, "exclude_pectoral"),
])
def test_parameter_errors_name_the_parameter(params, match):
    with pytest.raises(ValueError, match=match):
        DensityFeatures(**params).fit(np.zeros((1, 16)))
