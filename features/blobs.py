"""BlobFeatures: how strongly the breast's most conspicuous bright spot stands out, at several scales.

A mass, an enhancing lesion on a subtracted contrast image, or a cluster of calcifications is a compact region
brighter than the tissue around it: the classic CAD cue (Laplacian-of-Gaussian / difference-of-Gaussian spot
detectors: Lindeberg 1998, te Brake & Karssemeijer 1999; the scale-normalised LoG is scikit-image's ``blob_log``).
A CNN tile embedding averages a spot away with the rest of its tile; these features keep its strength in a few
numbers, relative to this breast's own tissue, so they compare across films, detectors and contrast agents.

Per image (the breast masked, 0 outside, natural contrast: before CLAHE), with the breast's median, and its
spread = 90th - 10th percentile of the breast's grey levels:

* intensity tail: (99th percentile - median) / spread, (99.9th - median) / spread, (max - median) / spread;
* per scale sigma (px of the image it receives), the scale-normalised LoG response ``-sigma^2 * LoG`` (bright spots
  positive; ``scipy.ndimage.gaussian_laplace``) inside the breast at least 2 sigma from the skin line (the skin edge
  is the strongest "spot" of all; the background is filled with the breast's 25th percentile first): its peak
  minus its median over the breast, in units of spread; the same in units of the response's robust deviation
  (1.4826 x MAD) -- a z-score of the peak; the 99.9th percentile of those z-scores; the share of the breast above
  z 4; and the number of local maxima above z 6 (spots, one per 2 sigma + 1 window).

We compute the responses with SciPy's filters and the statistics ourselves: scikit-image's ``blob_log`` returns
blob positions above one absolute threshold, not statistics relative to the breast.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from sklearn.utils.validation import check_is_fitted

from features._base import ImageTransformerBase

__all__ = ["BlobFeatures", "blob_feature_names", "blob_features"]

_TAIL = ("p99", "p999", "max")
_PER_SCALE = ("peak_contrast", "peak_z", "z_p999", "share_z4", "spots_z6")


def _label(value: float) -> str:
    return f"{value:g}".replace(".", "_")


def blob_feature_names(*, sigmas: Sequence[float]) -> list[str]:
    """Names of the columns of blob_features, in order."""
    names = [f"blob_intensity_{t}_above_median" for t in _TAIL]
    names += [f"blob_log{_label(s)}_{stat}" for s in sigmas for stat in _PER_SCALE]
    return names


def blob_features(image: np.ndarray, *, sigmas: Sequence[float] = (2.0, 4.0, 8.0, 16.0)) -> np.ndarray:
    """float64 vector of blob_feature_names for one (H, W) image in [0, 1] (breast > 0); all zeros without a
    breast (fewer than 64 breast pixels)."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    n_out = len(blob_feature_names(sigmas=sigmas))
    breast = image > 0
    if breast.sum() < 64:
        return np.zeros(n_out)
    values = image[breast].astype(np.float64)
    p10, p25, med, p90, p99, p999 = np.percentile(values, [10, 25, 50, 90, 99, 99.9])
    spread = max(float(p90 - p10), 1e-3)
    out = [(p99 - med) / spread, (p999 - med) / spread, (float(values.max()) - med) / spread]
    filled = np.where(breast, image, np.float32(p25)).astype(np.float32)
    depth = ndi.distance_transform_edt(breast)
    for sigma in sigmas:
        s = float(sigma)
        inside = depth >= 2.0 * s
        if inside.sum() < 16:  # a small breast at a large scale: its deepest half
            inside = depth >= 0.5 * depth.max()
        response = -(s * s) * ndi.gaussian_laplace(filled, s)
        vals = response[inside].astype(np.float64)
        centre = float(np.median(vals))
        dev = max(1.4826 * float(np.median(np.abs(vals - centre))), 1e-6)
        z = (vals - centre) / dev
        peak = float(vals.max())
        size = 2 * int(round(s)) + 1
        local_max = (response == ndi.maximum_filter(response, size=size)) & inside
        spots = int(np.sum((response[local_max] - centre) / dev > 6.0))
        out += [(peak - centre) / spread, (peak - centre) / dev, float(np.percentile(z, 99.9)),
                float(np.mean(z > 4.0)), float(spots)]
    return np.asarray(out, dtype=np.float64)


class BlobFeatures(ImageTransformerBase):
    """Bright-spot (scale-normalised LoG) and intensity-tail features of the breast; X (n, H*W) -> float64
    (n, 3 + 5 * len(sigmas)).

    Parameters
    ----------
    sigmas : sequence of float, default=(2, 4, 8, 16)
        LoG scales in px of the image received (a bright disc of radius r responds most at sigma = r / sqrt(2));
        each > 0.
    image_shape, n_jobs, memory
        As in CLAHE.

    Expects the breast masked (0 outside, after BreastMask) and not contrast-enhanced. Deterministic.
    """

    _func = "features.blobs:blob_features"
    _out_dtype = np.float64

    def __init__(
        self,
        sigmas: Sequence[float] = (2.0, 4.0, 8.0, 16.0),
        image_shape: tuple[int, int] | None = None,
        n_jobs: int | None = None,
        memory: Any = None,
    ) -> None:
        self.sigmas = sigmas
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.memory = memory

    def _check_params(self) -> None:
        vals = list(self.sigmas) if isinstance(self.sigmas, (list, tuple, np.ndarray)) else None
        if not vals or any(not np.isfinite(float(v)) or float(v) <= 0.0 for v in vals):
            raise ValueError(f"The 'sigmas' parameter of BlobFeatures must be a non-empty sequence of positive "
                             f"floats (LoG scales in px). Got {self.sigmas!r} instead.")

    def _func_kwargs(self) -> dict[str, Any]:
        return {"sigmas": [float(s) for s in self.sigmas]}

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names ``blob_intensity_p99_above_median`` ... ``blob_log16_spots_z6``, one per output column."""
        check_is_fitted(self)
        return np.asarray(blob_feature_names(sigmas=[float(s) for s in self.sigmas]), dtype=object)
