"""Pectoral muscle of an MLO mammogram: the bright triangle in the upper chest-wall corner, as a boolean mask.

Method of :func:`pectoral_mask` (after Karssemeijer 1998, who found the muscle edge as the strongest straight
edge of the upper chest-wall corner, and Kwok et al. 2004, who bound it by a straight line first)
----------------------------------------------------------------------------------------------------------
1. The breast is the given mask (default: pixels > 0, the convention after BreastMask). The chest wall is the side
   of the breast's bounding box where the breast touches the box edge over more rows (the chest wall is cut straight
   by the film or detector edge; the skin line on the other side is curved); the image is mirrored so it is left.
2. Work at a long side of at most ``work_size`` pixels, Gaussian-smoothed (``sigma`` working pixels).
3. Every line from the breast's top row to its chest-wall column is a candidate muscle edge: it cuts the top row at
   ``a`` and the chest-wall column at ``b`` (fractions of the breast's width and height, on a grid). A candidate's
   score is the lower quartile of the step across it (intensity just inside, towards the corner, minus just
   outside, ``step`` working pixels on either side) over the points of the line inside the breast: a muscle edge
   steps down along its whole length, a bright blob in the corner (a lesion, dense tissue) along part of it only.
4. The best-scoring line is kept only when it is credible: its step is at least ``min_contrast`` of the
   breast's own intensity spread (95th minus 5th percentile of the smoothed breast) and at least ``min_step`` grey
   levels (a flat, noisy breast has a tiny spread), the triangle is brighter than the rest of the breast,
   and it covers between ``min_area`` and ``max_area`` of the breast. Otherwise the mask is empty, so CC views (no
   muscle), blank or odd images are safe: a feature computed "outside the muscle" is then computed on the breast.
5. The triangle is drawn at the input resolution from the line (intersected with the breast), mirrored back.

The last few lines found are remembered by the image's content (a BLAKE2 digest of its bytes, its mask and the
parameters): a density model asks twice for the same sample's line (PectoralMask before the texture features and
the percent-density features), ~9 ms each on a 224 px sample.

:class:`PectoralMask` zeroes the muscle of breast-masked images, so the ``mask="nonzero"`` features leave it out.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from sklearn.base import OneToOneFeatureMixin

from features._base import ImageTransformerBase

__all__ = ["PectoralLine", "PectoralMask", "find_pectoral_line", "mask_pectoral", "pectoral_mask"]


class PectoralLine(tuple):
    """(a, b, score): the muscle edge cuts the breast's top row `a` px from the chest wall and the chest-wall
    column `b` px below the top row (input-resolution pixels, chest wall on the left); `score` is its step (lower quartile along the line)."""

    __slots__ = ()

    def __new__(cls, a: float, b: float, score: float) -> "PectoralLine":
        return super().__new__(cls, (float(a), float(b), float(score)))


def _chest_wall_left(mask: np.ndarray) -> bool:
    """True when the breast touches the left edge of its bounding box over at least as many rows as the right."""
    cols = np.flatnonzero(mask.any(axis=0))
    return int(mask[:, cols[0]].sum()) >= int(mask[:, cols[-1]].sum())


_RECENT: OrderedDict[bytes, tuple[PectoralLine | None, bool]] = OrderedDict()  # digest -> result, newest last
_RECENT_SIZE = 8
_RECENT_LOCK = threading.Lock()


def find_pectoral_line(
    image: np.ndarray, mask: np.ndarray | None = None, *, work_size: int = 128, sigma: float = 1.5,
    step: float = 3.0, grid: int = 40, min_contrast: float = 0.15, min_step: float = 0.02, min_area: float = 0.01, max_area: float = 0.45,
) -> tuple[PectoralLine | None, bool]:
    """(the credible muscle edge or None, whether the chest wall is on the left); see the module docstring."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2D (H, W) array. Got shape {image.shape} instead.")
    mask = image > 0 if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"mask must have the image's shape {image.shape}. Got {mask.shape} instead.")
    params = (work_size, sigma, step, grid, min_contrast, min_step, min_area, max_area)
    digest = hashlib.blake2b(image.data, digest_size=16)
    digest.update(np.packbits(mask).tobytes())
    digest.update(repr((image.shape, params)).encode())
    key = digest.digest()
    with _RECENT_LOCK:
        if key in _RECENT:
            _RECENT.move_to_end(key)
            return _RECENT[key]
    found = _find_line(image, mask, *params)
    with _RECENT_LOCK:
        _RECENT[key] = found
        while len(_RECENT) > _RECENT_SIZE:
            _RECENT.popitem(last=False)
    return found


def _find_line(image: np.ndarray, mask: np.ndarray, work_size: int, sigma: float, step: float, grid: int,
               min_contrast: float, min_step: float, min_area: float, max_area: float
               ) -> tuple[PectoralLine | None, bool]:
    if mask.sum() < 64:
        return None, True
    left = _chest_wall_left(mask)
    if not left:
        image, mask = image[:, ::-1], mask[:, ::-1]
    stride = max(1, int(np.ceil(max(image.shape) / work_size)))
    small_m = mask[::stride, ::stride]
    small = ndi.gaussian_filter(np.where(mask, image, 0.0)[::stride, ::stride].astype(np.float32), sigma)
    weight = ndi.gaussian_filter(small_m.astype(np.float32), sigma)
    small = np.where(weight > 1e-3, small / np.maximum(weight, 1e-3), 0.0)  # normalised: no dark halo at the skin
    rows = np.flatnonzero(small_m.any(axis=1))
    cols = np.flatnonzero(small_m.any(axis=0))
    if rows.size < 8 or cols.size < 8:
        return None, left
    r0, c0 = rows[0], cols[0]
    height, width = rows[-1] - r0 + 1, cols[-1] - c0 + 1
    vals = small[small_m]
    spread = float(np.percentile(vals, 95) - np.percentile(vals, 5))
    if spread <= 0:
        return None, left

    a = np.linspace(0.05, 0.85, grid) * width  # top-row intercepts
    b = np.linspace(0.08, 0.95, grid) * height  # chest-wall intercepts
    A, B = (v.ravel() for v in np.meshgrid(a, b, indexing="ij"))
    t = np.linspace(0.02, 0.98, 48)
    pr = r0 + t[None, :] * B[:, None]  # points from (r0, c0 + a) to (r0 + b, c0)
    pc = c0 + (1 - t[None, :]) * A[:, None]
    norm = np.hypot(A, B)[:, None]
    nr, nc = A[:, None] / norm, B[:, None] / norm  # unit normal pointing away from the corner
    eroded = ndi.binary_erosion(small_m, iterations=int(np.ceil(step)) + 1)

    def at(img: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(img, [r.ravel(), c.ravel()], order=1, mode="constant").reshape(r.shape)

    inside = at(small, pr - step * nr, pc - step * nc)
    outside = at(small, pr + step * nr, pc + step * nc)
    valid = at(eroded.astype(np.float32), pr, pc) > 0.5
    n_valid = valid.sum(axis=1)
    ranked = np.sort(np.where(valid, inside - outside, np.inf), axis=1)  # points outside the breast sort last
    lower = ranked[np.arange(ranked.shape[0]), np.maximum(n_valid - 1, 0) // 4]
    score = np.where(n_valid >= 0.5 * t.size, lower, -1.0)  # a line mostly outside the breast does not count
    best = int(np.argmax(score))
    if score[best] < max(min_contrast * spread, min_step):
        return None, left
    rr, cc = np.nonzero(small_m)
    tri = (cc - c0) / A[best] + (rr - r0) / B[best] < 1.0
    share = float(tri.mean())
    if not (min_area <= share <= max_area) or small[rr[tri], cc[tri]].mean() <= small[rr[~tri], cc[~tri]].mean():
        return None, left
    # back to input pixels: the line's intercepts are measured from the top-left of the breast's bounding box
    return PectoralLine(A[best] * stride, B[best] * stride, score[best]), left


def pectoral_mask(image: np.ndarray, mask: np.ndarray | None = None, **params: float) -> np.ndarray:
    """Boolean (H, W) mask of the pectoral muscle inside the breast `mask` (default: pixels > 0); all False when no
    credible muscle edge is found (CC views, blank images). `params` go to :func:`find_pectoral_line`."""
    image = np.asarray(image, dtype=np.float32)
    breast = image > 0 if mask is None else np.asarray(mask, dtype=bool)
    line, left = find_pectoral_line(image, breast, **params)
    out = np.zeros(image.shape, dtype=bool)
    if line is None:
        return out
    view = breast if left else breast[:, ::-1]
    rows = np.flatnonzero(view.any(axis=1))
    cols = np.flatnonzero(view.any(axis=0))
    a, b, _ = line
    rr, cc = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    tri = view & ((cc - cols[0]) / a + (rr - rows[0]) / b < 1.0)
    return tri if left else tri[:, ::-1]


def mask_pectoral(image: np.ndarray) -> np.ndarray:
    """float32 (H, W): the image with its pectoral muscle (pectoral_mask over pixels > 0) set to 0.

    An image without a credible muscle edge (CC views, blank images) is returned as it came, clipped to [0, 1].
    """
    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return np.where(pectoral_mask(img, img > 0), np.float32(0), img)


class PectoralMask(OneToOneFeatureMixin, ImageTransformerBase):
    """Set the pectoral muscle of the (already breast-masked) image to 0, so ``mask="nonzero"`` features leave it
    out (see mask_pectoral); X (n, H*W) -> float32 (n, H*W). Parameters: image_shape, n_jobs, memory as in CLAHE."""

    _func = "features.pectoral:mask_pectoral"

    def __init__(self, image_shape: tuple[int, int] | None = None, n_jobs: int | None = None,
                 memory: Any = None) -> None:
        self.image_shape = image_shape
        self.n_jobs = n_jobs
        self.memory = memory

    def _func_kwargs(self) -> dict[str, Any]:
        return {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
