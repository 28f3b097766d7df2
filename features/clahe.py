"""CLAHE: contrast-limited adaptive histogram equalisation as a scikit-learn transformer."""
from __future__ import annotations

from typing import Any

from sklearn.base import OneToOneFeatureMixin

from features._base import ImageTransformerBase


class CLAHE(OneToOneFeatureMixin, ImageTransformerBase):
    """Enhance local contrast of each image (features.preprocess.clahe); X (n, H*W) -> float32 (n, H*W).

    Parameters
    ----------
    clip_limit : float, default=0.01
        Histogram clip limit as a fraction of a region's pixel count (skimage's ``clip_limit``); 0 = no clip.
    kernel_size : int, (int, int) or None, default=None
        Contextual region (tile) size in pixels; None = 1/8 of the image height and width.
    nbins : int, default=256
        Histogram bins per region.
    keep_zero : bool, default=False
        Treat pixels equal to 0 as outside the region (after BreastMask): they stay 0, inside never becomes 0.
    image_shape : (int, int) or None, default=None
        (H, W) of a flattened row; None = square (isqrt of n_features), or (1, n_features) if not square.
    n_jobs : int or None, default=None
        joblib workers over chunks of images.
    memory : None, str or joblib.Memory, default=None
        Cache of results keyed by image content and parameters.

    Deterministic: no randomness is involved.
    """

    _func = "features.preprocess:clahe"

    def __init__(
        self,
        clip_limit: float = 0.01,
        kernel_size: int | tuple[int, int] | None = None,
        nbins: int = 256,
        keep_zero: bool = False,
        image_shape: tuple[int, int] | None = None,
        n_jobs: int | None = None,
        memory: Any = None,
    ) -> None:
        self.clip_limit = clip_limit
        self.kernel_size = kernel_size
        self.nbins = nbins
        self.keep_zero = keep_zero
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.memory = memory

    def _check_params(self) -> None:
        if not 0 <= float(self.clip_limit) <= 1:
            raise ValueError(f"The 'clip_limit' parameter of CLAHE must be a float in [0, 1]. Got {self.clip_limit!r} instead.")
        if not 2 <= int(self.nbins) <= 16384:
            raise ValueError(f"The 'nbins' parameter of CLAHE must be an int in [2, 16384]. Got {self.nbins!r} instead.")

    def _func_kwargs(self) -> dict[str, Any]:
        return {"clip_limit": self.clip_limit, "kernel_size": self.kernel_size, "nbins": self.nbins,
                "keep_zero": self.keep_zero}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
