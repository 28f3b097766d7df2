"""Unsharp-mask sharpening as a scikit-learn transformer."""
from __future__ import annotations

from typing import Any

from sklearn.base import OneToOneFeatureMixin

from features._base import ImageTransformerBase


class UnsharpMask(OneToOneFeatureMixin, ImageTransformerBase):
    """Sharpen each image (features.preprocess.unsharp_mask); X (n, H*W) -> float32 (n, H*W) in [0, 1].

    Parameters
    ----------
    radius : float, default=1.0
        Gaussian sigma in pixels of the blur that is subtracted.
    amount : float, default=1.0
        Gain of the detail (image - blurred) added back.
    keep_zero : bool, default=False
        Pixels equal to 0 are outside the region (after BreastMask): they stay 0, inside never becomes 0.
    image_shape, n_jobs, memory
        As in CLAHE.

    Deterministic: no randomness is involved.
    """

    _func = "features.preprocess:unsharp_mask"

    def __init__(
        self,
        radius: float = 1.0,
        amount: float = 1.0,
        keep_zero: bool = False,
        image_shape: tuple[int, int] | None = None,
        n_jobs: int | None = None,
        memory: Any = None,
    ) -> None:
        self.radius = radius
        self.amount = amount
        self.keep_zero = keep_zero
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.memory = memory

    def _check_params(self) -> None:
        if float(self.radius) < 0:
            raise ValueError(f"The 'radius' parameter of UnsharpMask must be a float >= 0. Got {self.radius!r} instead.")

    def _func_kwargs(self) -> dict[str, Any]:
        return {"radius": self.radius, "amount": self.amount, "keep_zero": self.keep_zero}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
