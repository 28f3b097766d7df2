"""Polarity of a mammogram from its pixels: is the breast brighter than the background (as the models expect)?

Method of :func:`background_shares`
------------------------------------
1. Downsample by an integer stride so the long side is at most ``work_size`` pixels (default 128): the decision
   needs the layout, not the detail, and costs about a millisecond.
2. Take the robust grey range ``[p0.5, p99.5]`` (percentiles, so a few saturated label or marker pixels do not set
   it) and, at each end, the pixels within ``delta`` (default 10 %) of that end.
3. Keep, at each end, only the connected regions that touch the image border; weigh their share of the image by
   their flatness, ``exp(-roughness / flatness_scale)``, where roughness is the mean absolute difference from a
   3 x 3 median, relative to the grey range (film and detector background: ~0.001; breast tissue: ~0.01 and more).
4. Weigh it again by its shape (``geometry=True``, the default): by ``1 - 0.8 solidity`` (solidity: its area over
   that of its convex hull) and by ``(1 + corners) / 5``, where corners is how many of the frame's four corners it
   holds (0.8 and 1 keep some weight for a rectangular background or one without a corner).

The background of a mammogram is one large, flat region at one end of the grey range that reaches the border
(whatever the breast touches: a breast against three borders leaves the fourth, a very dense breast is bright but
textured, and film labels or markers are small). So the end with the larger weighted share is the background's:
the dark end for a normal image, the bright end for an inverted one.

Why the shape (step 4): when a large breast fills 80-95 % of the frame (full-frame screening exports) the dark
background is a thin rim, and a flat bright part of the breast (tissue clipped by a bright export, the pectoral
muscle) can be larger. Geometry tells them apart without trusting the grey levels: the background is the outside
of a rounded breast lying against one side, so its convex hull is mostly breast (low solidity) and it holds the
frame's corners on the nipple side; clipped tissue or the muscle is a compact blob or triangle (high solidity) that
holds at most the chest-wall corner. Both factors are invariant to inverting the image, so an inverted image and its
original get mirror-image shares. Cases that remain wrong are listed in docs/breast-mask.md.

Checked on every mini-MIAS, CBIS-DDSM and CDD-CESM image and its inverse, and on generated full-frame exports and
their inverses: benchmarks/polarity.py, tests/io/test_polarity.py, tests/features/test_polarity_full_frame.py and
docs/breast-mask.md ("Polarity").
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

__all__ = ["background_shares", "is_inverted", "polarity_margin"]


def _small(image: np.ndarray, work_size: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"image must be a non-empty 2D (H, W) array. Got shape {image.shape} instead.")
    if work_size < 16:
        raise ValueError(f"work_size must be an int >= 16. Got {work_size!r} instead.")
    stride = max(1, int(np.ceil(max(image.shape) / work_size)))
    return np.asarray(image[::stride, ::stride], dtype=np.float32)


def _shape_weight(region: np.ndarray) -> float:
    """(1 - 0.8 solidity) x (1 + corners held) / 5 of a border region (module docstring, step 4), in [0.04, 1]."""
    corners = int(region[0, 0]) + int(region[0, -1]) + int(region[-1, 0]) + int(region[-1, -1])
    hull = convex_hull_image(region) if region.sum() >= 3 else region
    solidity = float(region.sum()) / max(float(hull.sum()), 1.0)
    return (1.0 - 0.8 * solidity) * (1 + corners) / 5.0


def _border_share(selected: np.ndarray, roughness: np.ndarray, flatness_scale: float,
                  geometry: bool = True) -> float:
    """Share of the image in the connected regions of `selected` touching the border, weighed by their flatness
    (and, with `geometry`, by their shape)."""
    labels, count = ndi.label(selected)
    if count == 0:
        return 0.0
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = np.zeros(count + 1, dtype=bool)
    keep[edge] = True
    keep[0] = False
    region = keep[labels]
    if not region.any():
        return 0.0
    share = float(region.mean() * np.exp(-float(roughness[region].mean()) / flatness_scale))
    return share * _shape_weight(region) if geometry else share


def background_shares(image: np.ndarray, *, work_size: int = 128, delta: float = 0.1,
                      flatness_scale: float = 0.02, geometry: bool = True) -> tuple[float, float]:
    """(dark, bright): flatness-weighted share of the image in border-connected regions within `delta` of the low /
    high grey end.

    See the module docstring; `geometry=False` drops the shape weight (step 4), as before issue 31. A uniform image
    gives (0.0, 0.0): it has no background to find.
    """
    if not 0.0 < delta < 0.5:
        raise ValueError(f"delta must be a float in (0, 0.5). Got {delta!r} instead.")
    if not flatness_scale > 0.0:
        raise ValueError(f"flatness_scale must be a float > 0. Got {flatness_scale!r} instead.")
    small = _small(image, work_size)
    finite = small[np.isfinite(small)]
    if finite.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    span = hi - lo
    if span <= 1e-6:
        return 0.0, 0.0
    small = np.where(np.isfinite(small), small, np.float32(lo))
    roughness = np.abs(small - ndi.median_filter(small, size=3)) / np.float32(span)
    dark = _border_share(small <= lo + delta * span, roughness, flatness_scale, geometry)
    bright = _border_share(small >= hi - delta * span, roughness, flatness_scale, geometry)
    return dark, bright


def polarity_margin(image: np.ndarray, **kwargs: float) -> float:
    """bright - dark background share: > 0 means the image looks inverted, < 0 normal; its size is the confidence."""
    dark, bright = background_shares(image, **kwargs)
    return bright - dark


def is_inverted(image: np.ndarray, *, min_margin: float = 0.0, **kwargs: float) -> bool:
    """True when the background is the bright end by more than `min_margin` (share of the image), i.e. the breast is
    darker than its background; False when it is the dark end or the evidence is not clear enough."""
    if not 0.0 <= min_margin < 1.0:
        raise ValueError(f"min_margin must be a float in [0, 1). Got {min_margin!r} instead.")
    return polarity_margin(image, **kwargs) > min_margin
