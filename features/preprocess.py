"""Image preprocessing as pure functions on float32 (H, W) images in [0, 1]: resize, CLAHE, unsharp mask.

Conventions shared by every function here:

* An image is a 2-D float array with values in [0, 1]; values outside are clipped.
* ``keep_zero=True`` means "pixels equal to 0 are outside the region of interest" (see
  :class:`features.BreastMask`): they stay exactly 0 in the output, and pixels inside never become 0
  (they are raised to :data:`INSIDE_FLOOR`), so later steps can tell inside from outside.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["INSIDE_FLOOR", "clahe", "pad_to_square", "resize_image", "unsharp_mask"]

#: Smallest value of a pixel inside the region when zeros mark the outside (1/65535).
INSIDE_FLOOR = np.float32(1.0 / 65535.0)

#: Grey levels used internally by CLAHE, as in skimage.exposure.equalize_adapthist.
_NR_OF_GRAY = 2**14


def pad_to_square(image: np.ndarray, *, value: float = 0.0) -> np.ndarray:
    """Pad a (H, W) image with ``value`` to (M, M), M = max(H, W), keeping it centred."""
    image = np.asarray(image)
    h, w = image.shape
    m = max(h, w)
    if h == w:
        return image
    top, left = (m - h) // 2, (m - w) // 2
    out = np.full((m, m), value, dtype=image.dtype)
    out[top : top + h, left : left + w] = image
    return out


def resize_image(
    image: np.ndarray, size: int, *, aspect: Literal["pad", "stretch"] = "pad"
) -> np.ndarray:
    """Resize a (H, W) image to float32 (size, size); antialiased bilinear (Pillow) on float data.

    ``aspect="pad"`` pads with zeros to a centred square first (no distortion); ``"stretch"`` scales
    each axis independently. A large shrink first averages integer blocks (Pillow's ``reduce``, a box
    filter), then resamples bilinearly: the same anti-aliasing at about half the cost.
    """
    if aspect not in ("pad", "stretch"):
        raise ValueError(f"aspect must be 'pad' or 'stretch'. Got {aspect!r} instead.")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"Expected a 2-D image (H, W). Got an array of shape {image.shape} instead.")
    if aspect == "pad":
        image = pad_to_square(image)
    if image.shape == (size, size):
        return np.ascontiguousarray(image)
    pil = Image.fromarray(np.ascontiguousarray(image))
    factor = min(image.shape) // size // 2  # keep >= 2x the target before the bilinear step
    if factor >= 2:
        pil = pil.reduce(factor)
    out = pil.resize((size, size), resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _clip_histograms(hist: np.ndarray, clip_limit: int) -> np.ndarray:
    """Clip each row of (n, nbins) int histograms at ``clip_limit`` and redistribute the excess.

    Vectorised over rows; follows the redistribution of skimage's ``clip_histogram`` (uniform share,
    then the remainder spread with a stride over bins still under the limit).
    """
    nbins = hist.shape[1]
    excess = np.maximum(hist - clip_limit, 0).sum(axis=1)
    hist = np.minimum(hist, clip_limit)
    bin_incr = excess // nbins
    upper = (clip_limit - bin_incr)[:, None]
    low = hist < upper
    excess -= low.sum(axis=1) * bin_incr
    hist = hist + low * bin_incr[:, None]
    mid = (hist >= upper) & (hist < clip_limit)
    excess += (hist * mid).sum(axis=1) - mid.sum(axis=1) * clip_limit
    hist = np.where(mid, clip_limit, hist)
    positions = np.arange(nbins)
    for index in range(nbins):
        rows = excess > 0
        if not rows.any():
            break
        under = hist[rows] < clip_limit
        n_under = under.sum(axis=1)
        step = np.maximum(1, n_under // np.maximum(excess[rows], 1))
        pick = under & (positions[None, :] >= index) & ((positions[None, :] - index) % step[:, None] == 0)
        added = pick.sum(axis=1)
        if not added.any():
            break
        hist[rows] += pick
        excess[rows] -= added
    return hist


def clahe(
    image: np.ndarray,
    *,
    clip_limit: float = 0.01,
    kernel_size: int | tuple[int, int] | None = None,
    nbins: int = 256,
    keep_zero: bool = False,
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a (H, W) image; float32 (H, W) in [0, 1].

    Same algorithm and parameters as ``skimage.exposure.equalize_adapthist`` (Zuiderveld 1994):
    contextual regions of ``kernel_size`` pixels (default 1/8 of each side), histograms of ``nbins``
    bins clipped at ``clip_limit`` x region size, bilinear interpolation between region mappings, and
    the output stretched to [0, 1]. Vectorised with numpy (one ``bincount`` for all regions).
    """
    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if img.ndim != 2:
        raise ValueError(f"Expected a 2-D image (H, W). Got an array of shape {img.shape} instead.")
    inside = img > 0 if keep_zero else None
    h, w = img.shape
    if kernel_size is None:
        ky, kx = max(h // 8, 1), max(w // 8, 1)
    elif np.ndim(kernel_size) == 0:
        ky = kx = int(kernel_size)
    else:
        ky, kx = (int(k) for k in kernel_size)
    u16 = np.rint(img * np.float32(65535.0))  # as skimage: img_as_uint, then stretch to 0..NR_OF_GRAY-1
    lo, hi = float(u16.min()), float(u16.max())
    if hi > lo:
        q = np.rint((u16 - lo) * np.float32((_NR_OF_GRAY - 1) / (hi - lo))).astype(np.int32)
    else:
        q = np.zeros(img.shape, dtype=np.int32)
    bin_size = 1 + _NR_OF_GRAY // nbins
    q //= bin_size
    n_bins_eff = nbins  # skimage counts nbins bins even though only (NR-1)//bin_size + 1 can be filled

    pad_y0, pad_x0 = ky // 2, kx // 2
    pad_y1 = (ky - h % ky) % ky + math.ceil(ky / 2)
    pad_x1 = (kx - w % kx) % kx + math.ceil(kx / 2)
    padded = np.pad(q, ((pad_y0, pad_y1), (pad_x0, pad_x1)), mode="reflect") if min(h, w) > 1 else np.pad(
        q, ((pad_y0, pad_y1), (pad_x0, pad_x1)), mode="edge"
    )
    hp, wp = padded.shape
    ny, nx = hp // ky - 1, wp // kx - 1
    region = padded[pad_y0 : pad_y0 + ny * ky, pad_x0 : pad_x0 + nx * kx]
    tile_id = (np.arange(ny * ky) // ky)[:, None] * nx + (np.arange(nx * kx) // kx)[None, :]
    hist = np.bincount((tile_id * n_bins_eff + region).ravel(), minlength=ny * nx * n_bins_eff)
    hist = hist.reshape(ny * nx, n_bins_eff)
    n_pixels = ky * kx
    clim = int(max(clip_limit * n_pixels, 1)) if clip_limit > 0 else n_pixels
    hist = _clip_histograms(hist, clim)
    maps = np.cumsum(hist, axis=1).astype(np.float64) * ((_NR_OF_GRAY - 1) / n_pixels)
    maps = np.minimum(maps, _NR_OF_GRAY - 1).astype(np.int64).astype(np.float32)
    maps = np.pad(maps.reshape(ny, nx, n_bins_eff), ((1, 1), (1, 1), (0, 0)), mode="edge")
    maps = maps.reshape(-1, n_bins_eff)

    yp = np.arange(h) + pad_y0
    xp = np.arange(w) + pad_x0
    by, bx = yp // ky, xp // kx
    cy = ((yp % ky) / ky).astype(np.float32)[:, None]
    cx = ((xp % kx) / kx).astype(np.float32)[None, :]
    row0 = (by * (nx + 2))[:, None]
    base = (row0 + bx[None, :]) * n_bins_eff + q
    stride_y = (nx + 2) * n_bins_eff
    flat = maps.ravel()
    top = flat[base] * (1 - cx) + flat[base + n_bins_eff] * cx
    bottom = flat[base + stride_y] * (1 - cx) + flat[base + stride_y + n_bins_eff] * cx
    out = top * (1 - cy) + bottom * cy
    out = np.floor(out)  # skimage casts its float32 sum back to the integer image dtype
    lo, hi = float(out.min()), float(out.max())
    out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    out = out.astype(np.float32)
    if inside is not None:
        out = np.where(inside, np.maximum(out, INSIDE_FLOOR), np.float32(0))
    return out


def unsharp_mask(
    image: np.ndarray, *, radius: float = 1.0, amount: float = 1.0, keep_zero: bool = False
) -> np.ndarray:
    """Sharpen a (H, W) image: ``image + amount * (image - gaussian(image, sigma=radius))``, clipped to [0, 1].

    Matches ``skimage.filters.unsharp_mask(image, radius, amount, preserve_range=True)`` (Gaussian with
    reflect borders, truncated at 4 sigma); float32 (H, W).
    """
    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if img.ndim != 2:
        raise ValueError(f"Expected a 2-D image (H, W). Got an array of shape {img.shape} instead.")
    blurred = ndimage.gaussian_filter(img, sigma=radius, mode="reflect", truncate=4.0) if radius > 0 else img
    out = img + np.float32(amount) * (img - blurred)
    np.clip(out, 0.0, 1.0, out=out)
    if keep_zero:
        out = np.where(img > 0, np.maximum(out, INSIDE_FLOOR), np.float32(0))
    return out.astype(np.float32, copy=False)
