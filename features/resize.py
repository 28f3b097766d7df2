"""Resize: bring images of any size to the square working resolution, as a scikit-learn transformer."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from features._base import infer_image_shape, map_images


class Resize(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Resize each image to (size, size) and flatten: -> float32 (n_images, size*size).

    Accepts a list of 2-D arrays of different sizes, an (N, H, W) array, or X (n_samples, H*W) with
    (H, W) from ``image_shape`` / isqrt(n_features) / (1, n_features). Antialiased bilinear resampling
    (features.preprocess.resize_image).

    Parameters
    ----------
    size : int, default=224
        Side S of the output images in pixels.
    aspect : {"pad", "stretch"}, default="pad"
        "pad": pad with zeros to a centred square first (no distortion); "stretch": scale axes independently.
    image_shape, n_jobs, memory
        As in CLAHE (image_shape applies to 2-D X only).
    """

    _func = "features.preprocess:resize_image"

    def __init__(
        self,
        size: int = 224,
        aspect: str = "pad",
        image_shape: tuple[int, int] | None = None,
        n_jobs: int | None = None,
        memory: Any = None,
    ) -> None:
        self.size = size
        self.aspect = aspect
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.memory = memory

    def _check_params(self) -> None:
        if self.aspect not in ("pad", "stretch"):
            raise ValueError(f"The 'aspect' parameter of Resize must be 'pad' or 'stretch'. Got {self.aspect!r} instead.")
        if int(self.size) < 1:
            raise ValueError(f"The 'size' parameter of Resize must be an int >= 1. Got {self.size!r} instead.")

    @staticmethod
    def _is_image_list(X: Any) -> bool:
        return isinstance(X, (list, tuple)) and len(X) > 0 and np.ndim(X[0]) == 2

    def _to_images(self, X: Any, reset: bool) -> list[np.ndarray] | np.ndarray:
        if self._is_image_list(X):
            return [np.asarray(img, dtype=np.float32) for img in X]
        if hasattr(X, "shape") and not hasattr(X, "iloc") and np.ndim(X) == 3:
            return np.asarray(X, dtype=np.float32)
        X2 = validate_data(self, X, reset=reset, dtype=[np.float32, np.float64])
        shape = infer_image_shape(X2.shape[1], self.image_shape)
        return np.asarray(X2, dtype=np.float32).reshape((X2.shape[0],) + shape)

    def fit(self, X: Any, y: Any = None) -> "Resize":
        """Validate the input; learns only the output width ``_n_features_out`` = size**2."""
        self._check_params()
        self._to_images(X, reset=True)
        self._n_features_out = int(self.size) ** 2
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Resized images, flattened: float32 (n_images, size*size)."""
        check_is_fitted(self, "_n_features_out")
        images = self._to_images(X, reset=False)
        kwargs = {"size": int(self.size), "aspect": self.aspect}
        return map_images(self._func, kwargs, images, n_jobs=self.n_jobs, memory=self.memory).astype(
            np.float32, copy=False
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
