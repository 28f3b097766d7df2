"""IntensityFeatures: grey-level histogram and first-order statistics per image, as a scikit-learn transformer."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from features._base import ImageTransformerBase
from features.glcm import region_mask
from features.texture import intensity_feature_names, intensity_features


def intensity_of_image(image: np.ndarray, *, mask: str | None = None, **kwargs: Any) -> np.ndarray:
    """intensity_features of one image over the region named by ``mask`` (see features.glcm.region_mask)."""
    return intensity_features(image, mask=region_mask(image, mask), **kwargs)


class IntensityFeatures(ImageTransformerBase):
    """Histogram + mean, std, skewness, kurtosis, entropy, percentiles; X (n, H*W) -> float64 (n, bins + 5 + n_pct).

    Parameters
    ----------
    bins : int, default=32
        Histogram bins over [0, 1] (output columns ``hist_00`` ...; also the bins of the entropy).
    percentiles : sequence of float, default=(5, 25, 50, 75, 95)
        Percentiles in [0, 100] (columns ``intensity_p5`` ...).
    mask : None or "nonzero", default=None
        "nonzero": only pixels > 0 count (the breast, after BreastMask).
    image_shape, n_jobs, memory
        As in CLAHE.
    """

    _func = "features.intensity:intensity_of_image"
    _out_dtype = np.float64

    def __init__(
        self,
        bins: int = 32,
        percentiles: Sequence[float] = (5, 25, 50, 75, 95),
        mask: str | None = None,
        image_shape: tuple[int, int] | None = None,
        n_jobs: int | None = None,
        memory: Any = None,
    ) -> None:
        self.bins = bins
        self.percentiles = percentiles
        self.mask = mask
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.memory = memory

    def _check_params(self) -> None:
        if not isinstance(self.bins, (int, np.integer)) or not 1 <= self.bins <= 65536:
            raise ValueError(f"The 'bins' parameter of IntensityFeatures must be an int in [1, 65536]. Got {self.bins!r} instead.")
        if any(not 0 <= float(p) <= 100 for p in self.percentiles):
            raise ValueError(f"The 'percentiles' parameter of IntensityFeatures must hold values in [0, 100]. "
                             f"Got {list(self.percentiles)!r} instead.")
        if self.mask not in (None, "nonzero"):
            raise ValueError(f"The 'mask' parameter of IntensityFeatures must be None or 'nonzero'. Got {self.mask!r} instead.")

    def _func_kwargs(self) -> dict[str, Any]:
        return {"bins": int(self.bins), "percentiles": [float(p) for p in self.percentiles], "mask": self.mask}

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names ``hist_00`` ... ``intensity_mean`` ... ``intensity_p95``, one per output column."""
        check_is_fitted(self)
        return np.asarray(intensity_feature_names(bins=int(self.bins), percentiles=list(self.percentiles)), dtype=object)
