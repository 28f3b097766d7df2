"""DensityFeatures: percent-density (dense-area) features of the breast without its pectoral muscle.

What radiologists grade as density is the share of the breast that is fibroglandular (radio-dense) rather than
fat: Wolfe's patterns, Boyd's Cumulus percent density (a reader-set threshold on the breast minus the pectoral
muscle, Byng et al. 1994) and its automated successors (LIBRA, Keller et al. 2012: clustering of the breast's own
intensities after removing the muscle). The threshold that separates dense from fat differs per film or detector, so
every threshold here is relative to the breast's own intensity distribution:

* ``fat`` = the ``fat_percentile`` percentile of the breast's intensities (the fattiest tissue of this breast),
  ``span`` = its 98th percentile minus ``fat``;
* Otsu's and 3-class multi-Otsu thresholds within the breast (the dense class = above Otsu / the top class);
* fixed fractions of the span above fat (``relative_thresholds``) and fixed offsets above fat (``offsets``, grey
  levels in [0, 1]: a dense pixel is brighter than fat by at least this much, as Cumulus' threshold is);
* the same Otsu split on the breast's interior only (``core_fraction`` of the largest distance to the skin line
  inwards), where the compressed thickness is uniform and the dim periphery (thickness fall-off) is left out.

The region measured is the breast (pixels > 0, the convention after BreastMask) minus the pectoral muscle
(features.pectoral.pectoral_mask) when ``exclude_pectoral``: in MLO views the muscle is as bright as dense tissue.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from sklearn.utils.validation import check_is_fitted

from features._base import ImageTransformerBase
from features.pectoral import pectoral_mask

__all__ = ["DensityFeatures", "density_feature_names", "density_features"]

_FIBRO = ("mean", "p50", "p90")


def _label(value: float) -> str:
    return f"{value:g}".replace(".", "_").replace("-", "m")


def density_feature_names(*, relative_thresholds: Sequence[float], offsets: Sequence[float]) -> list[str]:
    """Names of the columns of density_features, in order."""
    names = ["density_pectoral_share", "density_span", "density_otsu_fraction", "density_otsu_level",
             "density_multiotsu_fraction", "density_core_otsu_fraction"]
    names += [f"density_rel{_label(t)}_fraction" for t in relative_thresholds]
    names += [f"density_fat_plus{_label(d)}_fraction" for d in offsets]
    names += [f"density_fibroglandular_{s}_above_fat" for s in _FIBRO]
    names += ["density_fatty_mean_above_fat", "density_dense_fatty_contrast"]
    return names


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if np.ptp(values) > 0 else float(values[0])


def density_features(
    image: np.ndarray, *, relative_thresholds: Sequence[float] = (0.25, 0.5, 0.75),
    offsets: Sequence[float] = (0.05, 0.1, 0.2, 0.3), fat_percentile: float = 10.0, core_fraction: float = 0.3,
    exclude_pectoral: bool = True,
) -> np.ndarray:
    """float64 vector of density_feature_names for one (H, W) image in [0, 1]; all zeros without a breast."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    n_out = len(density_feature_names(relative_thresholds=relative_thresholds, offsets=offsets))
    breast = image > 0
    if breast.sum() < 16:
        return np.zeros(n_out)
    muscle = pectoral_mask(image, breast) if exclude_pectoral else np.zeros_like(breast)
    region = breast & ~muscle
    values = image[region].astype(np.float64)
    fat = float(np.percentile(values, fat_percentile))
    span = max(float(np.percentile(values, 98)) - fat, 1e-6)
    otsu = _otsu(values)
    dense = values > otsu
    try:
        from skimage.filters import threshold_multiotsu

        top = float(np.mean(values > threshold_multiotsu(values, classes=3)[1]))
    except ValueError:  # fewer than 3 distinct grey levels
        top = float(np.mean(dense))
    depth = ndi.distance_transform_edt(breast)
    core = region & (depth >= core_fraction * depth.max())
    core_dense = float(np.mean(image[core] > otsu)) if core.any() else float(np.mean(dense))
    fibro = values[dense] if dense.any() else values
    fatty = values[~dense] if (~dense).any() else values
    out = [float(muscle.sum()) / float(breast.sum()), span, float(np.mean(dense)), (otsu - fat) / span, top,
           core_dense]
    out += [float(np.mean(values > fat + t * span)) for t in relative_thresholds]
    out += [float(np.mean(values > fat + d)) for d in offsets]
    out += [float(np.mean(fibro)) - fat, float(np.median(fibro)) - fat, float(np.percentile(fibro, 90)) - fat]
    out += [float(np.mean(fatty)) - fat, float(np.mean(fibro) - np.mean(fatty))]
    return np.asarray(out, dtype=np.float64)


class DensityFeatures(ImageTransformerBase):
    """Percent-density features of the breast minus its pectoral muscle; X (n, H*W) -> float64 (n, n_features_out).

    Parameters
    ----------
    relative_thresholds : sequence of float, default=(0.25, 0.5, 0.75)
        Dense = brighter than fat + t x span (fractions in (0, 1); columns ``density_rel0_25_fraction`` ...).
    offsets : sequence of float, default=(0.05, 0.1, 0.2, 0.3)
        Dense = brighter than fat + d grey levels (in (0, 1); columns ``density_fat_plus0_05_fraction`` ...).
    fat_percentile : float, default=10
        Percentile of the breast's intensities taken as the fatty reference, in [0, 50].
    core_fraction : float, default=0.3
        The interior: pixels at least this fraction of the largest skin distance from the skin line, in [0, 1).
    exclude_pectoral : bool, default=True
        Leave the pectoral muscle (features.pectoral.pectoral_mask; empty on CC views) out of every measure.
    image_shape, n_jobs, memory
        As in CLAHE.

    Expects the breast masked (0 outside, after BreastMask) and not contrast-enhanced. Deterministic.
    """

    _func = "features.density:density_features"
    _out_dtype = np.float64

    def __init__(
        self,
        relative_thresholds: Sequence[float] = (0.25, 0.5, 0.75),
        offsets: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
        fat_percentile: float = 10.0,
        core_fraction: float = 0.3,
        exclude_pectoral: bool = True,
        image_shape: tuple[int, int] | None = None,
        n_jobs: int | None = None,
        memory: Any = None,
    ) -> None:
        self.relative_thresholds = relative_thresholds
        self.offsets = offsets
        self.fat_percentile = fat_percentile
        self.core_fraction = core_fraction
        self.exclude_pectoral = exclude_pectoral
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.memory = memory

    def _check_params(self) -> None:
        for name in ("relative_thresholds", "offsets"):
            vals = list(getattr(self, name))
            if not vals or any(not 0.0 < float(v) < 1.0 for v in vals):
                raise ValueError(f"The '{name}' parameter of DensityFeatures must be a non-empty sequence of floats "
                                 f"in (0, 1). Got {vals!r} instead.")
        if not 0.0 <= float(self.fat_percentile) <= 50.0:
            raise ValueError(f"The 'fat_percentile' parameter of DensityFeatures must be a float in [0, 50]. "
                             f"Got {self.fat_percentile!r} instead.")
        if not 0.0 <= float(self.core_fraction) < 1.0:
            raise ValueError(f"The 'core_fraction' parameter of DensityFeatures must be a float in [0, 1). "
                             f"Got {self.core_fraction!r} instead.")
        if not isinstance(self.exclude_pectoral, (bool, np.bool_)):
            raise ValueError(f"The 'exclude_pectoral' parameter of DensityFeatures must be a bool. "
                             f"Got {self.exclude_pectoral!r} instead.")

    def _func_kwargs(self) -> dict[str, Any]:
        return {"relative_thresholds": [float(t) for t in self.relative_thresholds],
                "offsets": [float(d) for d in self.offsets], "fat_percentile": float(self.fat_percentile),
                "core_fraction": float(self.core_fraction), "exclude_pectoral": bool(self.exclude_pectoral)}

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names ``density_pectoral_share`` ... ``density_dense_fatty_contrast``, one per output column."""
        check_is_fitted(self)
        return np.asarray(density_feature_names(relative_thresholds=[float(t) for t in self.relative_thresholds],
                                                offsets=[float(d) for d in self.offsets]), dtype=object)
