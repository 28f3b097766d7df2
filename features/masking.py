"""BreastMask: zero everything outside the breast (features.breast.breast_mask) as a scikit-learn transformer.

Convention used by the later steps: after BreastMask a pixel equal to 0 is outside the breast, and pixels
inside are at least features.preprocess.INSIDE_FLOOR. CLAHE/UnsharpMask with ``keep_zero=True`` keep it,
and GLCMFeatures/IntensityFeatures with ``mask="nonzero"`` measure only the breast.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import OneToOneFeatureMixin

from features._base import ImageTransformerBase
from features.breast import breast_mask  # module level: the feature cache's code version follows the mask's source
from features.preprocess import INSIDE_FLOOR


def mask_breast(image: np.ndarray, *, otsu_fraction: float = 0.5, opening_radius: int = 2) -> np.ndarray:
    """float32 (H, W): the image inside its breast mask (raised to at least INSIDE_FLOOR), 0 outside.

    An image whose mask is empty (no bright component) is returned unmasked, clipped to [0, 1].
    """
    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    work_size = max(16, max(img.shape))
    mask = breast_mask(img, work_size=work_size, otsu_fraction=otsu_fraction, opening_radius=opening_radius)
    if not mask.any():
        return img
    return np.where(mask, np.maximum(img, INSIDE_FLOOR), np.float32(0))


class BreastMask(OneToOneFeatureMixin, ImageTransformerBase):
    """Set pixels outside the breast to 0 (see mask_breast); X (n, H*W) -> float32 (n, H*W).

    Parameters
    ----------
    otsu_fraction : float, default=0.5
        Threshold as a fraction of Otsu's threshold (features.breast.breast_mask).
    opening_radius : int, default=2
        Radius in pixels of the opening that detaches film labels from the breast.
    image_shape, n_jobs, memory
        As in CLAHE.

    Deterministic: no randomness is involved.
    """

    _func = "features.masking:mask_breast"

    def __init__(
        self,
        otsu_fraction: float = 0.5,
        opening_radius: int = 2,
        image_shape: tuple[int, int] | None = None,
        n_jobs: int | None = None,
        memory: Any = None,
    ) -> None:
        self.otsu_fraction = otsu_fraction
        self.opening_radius = opening_radius
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.memory = memory

    def _check_params(self) -> None:
        if not 0 < float(self.otsu_fraction) <= 1:
            raise ValueError(f"The 'otsu_fraction' parameter of BreastMask must be a float in (0, 1]. "
                             f"Got {self.otsu_fraction!r} instead.")

    def _func_kwargs(self) -> dict[str, Any]:
        return {"otsu_fraction": self.otsu_fraction, "opening_radius": self.opening_radius}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
