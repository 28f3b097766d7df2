"""GLCMFeatures: Haralick texture features of each image as a scikit-learn transformer."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from features._base import ImageTransformerBase
from features.texture import GLCM_PROPERTIES, glcm_feature_names, glcm_features

DEFAULT_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "ASM", "energy", "correlation")


def region_mask(image: np.ndarray, mask: str | None) -> np.ndarray | None:
    """The region a feature is measured over: None = whole image, "nonzero" = pixels > 0 (after BreastMask)."""
    if mask is None:
        return None
    if mask == "nonzero":
        return np.asarray(image) > 0
    raise ValueError(f"mask must be None or 'nonzero'. Got {mask!r} instead.")


def glcm_of_image(image: np.ndarray, *, mask: str | None = None, **kwargs: Any) -> np.ndarray:
    """glcm_features of one image over the region named by ``mask`` (see region_mask)."""
    return glcm_features(image, mask=region_mask(image, mask), **kwargs)


class GLCMFeatures(ImageTransformerBase):
    """GLCM texture features per image; X (n, H*W) in [0, 1] -> float64 (n, n_features_out).

    Parameters
    ----------
    distances : sequence of int, default=(1, 2, 4)
        Pixel-pair distances in pixels.
    angles : sequence of float, default=(0, 45, 90, 135)
        Pair directions in degrees (0 = right neighbour, 90 = next row).
    levels : int, default=64
        Grey levels the image is quantised to, in [2, 256].
    properties : sequence of str, default=("contrast", "dissimilarity", "homogeneity", "ASM", "energy", "correlation")
        Any of features.texture.GLCM_PROPERTIES.
    aggregation : {"mean", "per_angle", "both"}, default="mean"
        Average over angles (``glcm_contrast_d1_mean``), one value per angle (``glcm_contrast_d1_a45``), or both.
    mask : None or "nonzero", default=None
        "nonzero": only pairs of pixels > 0 count (the breast, after BreastMask).
    image_shape, n_jobs, memory
        As in CLAHE.
    """

    _func = "features.glcm:glcm_of_image"
    _out_dtype = np.float64

    def __init__(
        self,
        distances: Sequence[int] = (1, 2, 4),
        angles: Sequence[float] = (0, 45, 90, 135),
        levels: int = 64,
        properties: Sequence[str] = DEFAULT_PROPERTIES,
        aggregation: str = "mean",
        mask: str | None = None,
        image_shape: tuple[int, int] | None = None,
        n_jobs: int | None = None,
        memory: Any = None,
    ) -> None:
        self.distances = distances
        self.angles = angles
        self.levels = levels
        self.properties = properties
        self.aggregation = aggregation
        self.mask = mask
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.memory = memory

    def _check_params(self) -> None:
        if not isinstance(self.levels, (int, np.integer)) or not 2 <= self.levels <= 256:
            raise ValueError(f"The 'levels' parameter of GLCMFeatures must be an int in [2, 256]. Got {self.levels!r} instead.")
        if len(self.distances) == 0 or any(int(d) < 1 for d in self.distances):
            raise ValueError(f"The 'distances' parameter of GLCMFeatures must be a non-empty sequence of ints >= 1. "
                             f"Got {self.distances!r} instead.")
        if len(self.angles) == 0:
            raise ValueError("The 'angles' parameter of GLCMFeatures must be a non-empty sequence of degrees. Got [] instead.")
        bad = [p for p in self.properties if p not in GLCM_PROPERTIES]
        if bad or len(self.properties) == 0:
            raise ValueError(f"The 'properties' parameter of GLCMFeatures must be a non-empty subset of "
                             f"{list(GLCM_PROPERTIES)}. Got {list(self.properties)!r} instead.")
        if self.aggregation not in ("mean", "per_angle", "both"):
            raise ValueError(f"The 'aggregation' parameter of GLCMFeatures must be 'mean', 'per_angle' or 'both'. "
                             f"Got {self.aggregation!r} instead.")
        if self.mask not in (None, "nonzero"):
            raise ValueError(f"The 'mask' parameter of GLCMFeatures must be None or 'nonzero'. Got {self.mask!r} instead.")

    def _func_kwargs(self) -> dict[str, Any]:
        return {"distances": [int(d) for d in self.distances], "angles": [float(a) for a in self.angles],
                "levels": int(self.levels), "properties": list(self.properties),
                "aggregation": self.aggregation, "mask": self.mask}

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names like ``glcm_contrast_d1_mean`` / ``glcm_contrast_d1_a45``, one per output column."""
        check_is_fitted(self)
        names = glcm_feature_names(distances=[int(d) for d in self.distances], angles=list(self.angles),
                                   properties=list(self.properties), aggregation=self.aggregation)
        return np.asarray(names, dtype=object)
