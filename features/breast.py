"""Breast segmentation and orientation for mammograms: pure functions on float (H, W) arrays in [0, 1].

Method of :func:`breast_mask`
-----------------------------
1. Downsample by an integer stride so the long side is at most ``work_size`` pixels (default 128); the breast
   outline does not need more, and this keeps a 1024 x 1024 image to a few milliseconds.
2. Threshold at a fraction (``otsu_fraction``, default 0.5) of Otsu's threshold (Otsu 1979) computed over the
   non-black pixels. Plain Otsu separates dense from fatty tissue in many films and would cut off the dim fatty
   periphery; half of it still lies well above the film/detector background.
3. A binary opening with a small square detaches thin bridges between the breast and burned-in film labels, markers or
   scanner edges; the largest 8-connected component is kept (the breast is by far the largest bright object, labels
   and markers are small and separate).
   Markers brighter than the breast (``max_peel``): on a dim export with a saturated corner marker or label, the
   marker sets the top of the grey scale and Otsu's threshold can fall between the breast and the marker, so the
   marker alone, or a sliver of the brightest tissue, is kept. A marker is a component smaller than ``min_share`` of
   the image (too small to be a breast) whose median is brighter than every pixel of the largest component (or, when
   none is, the largest component itself while it is under ``min_share``); it is set aside with a 2-pixel rim (blur,
   JPEG ringing) and the rest thresholded again (its grey scale now ends at the brightest pixel left), up to
   ``max_peel`` times. A lone label leaves nothing: the mask is empty.
4. Holes inside the component (dark fat lobules, a dark lesion core) are filled, then the mask is dilated back by
   the opening radius intersected with the threshold mask.
5. Dim breast inside the outline (``fill_convex``, on by default): on digital and contrast-enhanced images whose
   background is flat black, Otsu over the non-black pixels falls *inside* the breast's own intensities, and half of
   it still cuts the dim tissue by the chest wall or around a dark centre, even where a lesion sits (CDD-CESM
   subtracted images lost 30-50 % of the breast that way). So every pixel above the background floor
   (``floor_levels`` of 255 above the image minimum) inside the convex hull of the component, and connected to it,
   joins the mask. A breast outline is convex, so this adds the dim tissue and, on films, at most a sliver of film
   between the pectoral muscle and the skin line (+1.8 % of the image on mini-MIAS vs +5.8 % on CDD-CESM, up to 31 %).
6. Textured breasts (``smooth_sigma``, ``textured_share``): where steps 2-4 leave no component of ``min_share`` (a
   refusal), or one holding under ``textured_share`` of the pixels above the threshold (the rest are pieces the
   opening cut apart), the working-size image is smoothed (Gaussian, ``smooth_sigma`` working pixels) and
   thresholded once more, and the larger result kept. A contrast-enhanced subtraction filling the frame (CDD-CESM
   P80_L_CM_CC: dark vessels and ducts all over, a saturated nipple) split into pieces above the threshold, the
   largest 1 % of the image, and was refused; smoothed, its mask covers 73 %. In others the largest piece was a
   bright rim or the enhancing core while most of the tissue above the threshold lay in pieces beside it (P118_L_CM_CC:
   the skin line, 7 % of the image; smoothed, 36 %). On the development images this step changes 41 of 898 CDD-CESM
   masks, all larger, and none of the 322 mini-MIAS films or 8 CBIS-DDSM DICOMs, whose largest piece holds 0.67 or
   more of the pixels above the threshold (median 0.99; CDD-CESM median 0.97, 5 % under 0.51). Blank and empty
   exposures are refused before the mask (pipeline.samples.check_not_blank) and a lone label stays label-sized.
7. Upsampled to (H, W) by nearest neighbour.

Orientation
-----------
:func:`orient_chest_wall_left` mirrors images so the chest wall is on the left. In the standard display of
mammograms (checked on all 322 mini-MIAS images and the 8 CBIS-DDSM DICOMs) a left breast has its chest wall on the
left and a right breast on the right, so a known laterality decides: ``R`` -> flip. Without laterality the side that
holds more breast intensity (the chest wall side is where the breast is widest) is taken as the chest wall.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image

__all__ = ["MIN_BREAST_SHARE", "breast_mask", "contrast_to_noise", "chest_wall_side", "orient_chest_wall_left"]

MIN_BREAST_SHARE = 0.02  # a bright region under 2 % of the image is a label, a marker or noise, not a breast


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) array. Got shape {image.shape} instead.")
    if image.size == 0:
        raise ValueError(f"{name} must not be empty. Got shape {image.shape} instead.")
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer) or image.dtype == bool):
        raise TypeError(f"{name} must be a numeric array. Got dtype {image.dtype} instead.")
    return image


def _fill_convex(component: np.ndarray, above_floor: np.ndarray) -> np.ndarray:
    """`component` plus the above-floor pixels inside its convex hull that connect to it (holes filled again)."""
    grown = ndi.binary_fill_holes(component | (convex_hull_image(component) & above_floor))
    labels, _ = ndi.label(grown, structure=np.ones((3, 3), bool))
    keep = np.unique(labels[component])
    return np.isin(labels, keep[keep > 0])


def _bright(small: np.ndarray, counted: np.ndarray, lowest: float, otsu_fraction: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 levels of `small` over [lowest, max of the counted pixels], counted pixels above the fraction of Otsu's
    threshold of the counted non-black pixels)."""
    span = float(small[counted].max()) - lowest
    if span <= 0.0:
        return np.zeros(small.shape, np.uint8), np.zeros(small.shape, bool)
    levels = np.clip((small - lowest) * np.float32(255.0 / span), 0, 255).astype(np.uint8)
    # 256-level histogram of the non-black pixels, then Otsu on it (cheaper than on the pixels themselves)
    counts = np.bincount(levels[counted], minlength=256).astype(np.float64)
    counts[0] = 0.0
    if np.count_nonzero(counts) < 2:
        bright = levels > 0
    else:
        threshold = threshold_otsu(hist=(counts, np.arange(256, dtype=np.float64)))
        bright = levels > threshold * otsu_fraction
    return levels, bright & counted


def _largest(bright: np.ndarray, opening_radius: int) -> np.ndarray | None:
    """The largest 8-connected component of `bright` after a square opening (None when there is none)."""
    size = 2 * opening_radius + 1
    if opening_radius > 0:  # square opening via separable min/max filters: fast on uint8
        as_u8 = bright.view(np.uint8)
        opened = ndi.maximum_filter(ndi.minimum_filter(as_u8, size=size), size=size).astype(bool)
    else:
        opened = bright
    labels, count = ndi.label(opened if opened.any() else bright, structure=np.ones((3, 3), bool))
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _markers(bright: np.ndarray, component: np.ndarray, levels: np.ndarray, min_share: float) -> np.ndarray:
    """The bright pixels that look like markers or labels, not breast: the components of `bright` under `min_share`
    of the image whose median grey level lies above every level of the largest component (small, and brighter than
    any breast tissue), else, when the largest component is itself under `min_share`, that component."""
    labels, count = ndi.label(bright & ~component, structure=np.ones((3, 3), bool))
    if count:
        top = int(levels[component].max())
        index = np.arange(1, count + 1)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        peaks = np.asarray(ndi.maximum(levels, labels, index))
        candidates = index[(sizes < min_share * bright.size) & (peaks > top)]  # cheap first cut: any pixel above
        if candidates.size:
            medians = np.asarray(ndi.median(levels, labels, candidates))
            outliers = candidates[medians > top]
            if outliers.size:
                return np.isin(labels, outliers)
    if component.mean() < min_share:
        return component & bright
    return np.zeros_like(bright)


def _component(small: np.ndarray, lowest: float, otsu_fraction: float, opening_radius: int, min_share: float,
               max_peel: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(the breast component of the working-size image, holes filled, or None; its uint8 levels; the pixels above the
    threshold): steps 2-4 of the method, markers brighter than the breast peeled up to `max_peel` times."""
    counted = np.ones(small.shape, dtype=bool)  # pixels the threshold is computed from
    component, levels, bright = None, np.zeros(small.shape, np.uint8), np.zeros(small.shape, bool)
    for _ in range(max_peel + 1):
        levels, bright = _bright(small, counted, lowest, otsu_fraction)
        component = _largest(bright, opening_radius)
        if component is None:
            break
        markers = _markers(bright, component, levels, min_share)
        if not markers.any() or not (counted & ~markers).any():
            break
        # markers or labels brighter than the breast set the grey scale and pull Otsu's threshold above the breast:
        # set them and their rim (blur, JPEG ringing) aside and threshold the rest again
        counted &= ~ndi.binary_dilation(markers, iterations=2)
    if component is None:
        return None, levels, bright
    if opening_radius > 0:
        size = 2 * opening_radius + 1
        component = ndi.maximum_filter(component.view(np.uint8), size=size).astype(bool) & bright
    return ndi.binary_fill_holes(component), levels, bright


def breast_mask(
    image: np.ndarray, *, work_size: int = 128, otsu_fraction: float = 0.5, opening_radius: int = 2,
    fill_convex: bool = True, floor_levels: int = 2, min_share: float = MIN_BREAST_SHARE, max_peel: int = 3,
    smooth_sigma: float = 1.0, textured_share: float = 0.5,
) -> np.ndarray:
    """Boolean (H, W) mask of the breast: largest bright component after a fraction of Otsu's threshold, holes filled.

    See the module docstring for the method. An image with no bright pixel gives an all-False mask.
    """
    image = _check_image(image)
    if not 0.0 < otsu_fraction <= 1.0:
        raise ValueError(f"otsu_fraction must be a float in (0, 1]. Got {otsu_fraction!r} instead.")
    if not 0.0 <= textured_share <= 1.0:
        raise ValueError(f"textured_share must be a float in [0, 1]. Got {textured_share!r} instead.")
    if work_size < 16:
        raise ValueError(f"work_size must be an int >= 16. Got {work_size!r} instead.")
    height, width = image.shape
    stride = max(1, int(np.ceil(max(height, width) / work_size)))
    small = np.asarray(image[::stride, ::stride], dtype=np.float32)

    lowest = float(small.min())
    if float(small.max()) <= lowest:
        return np.zeros((height, width), dtype=bool)
    component, levels, bright = _component(small, lowest, otsu_fraction, opening_radius, min_share, max_peel)
    if smooth_sigma > 0 and (component is None or component.mean() < min_share
                             or component.sum() < textured_share * bright.sum()):
        # a textured breast (contrast-enhanced subtractions filling the frame: dark vessels and ducts all over) can
        # split into pieces above the threshold, none of them breast-sized or, the largest holding a small part of
        # the tissue above the threshold, a rim: threshold a smoothed copy once more
        smooth = ndi.gaussian_filter(small, float(smooth_sigma))
        again, again_levels, _ = _component(smooth, float(smooth.min()), otsu_fraction, opening_radius, min_share,
                                            max_peel)
        if again is not None and (component is None or again.sum() > component.sum()):
            component, levels = again, again_levels
    if component is None:
        return np.zeros((height, width), dtype=bool)
    if fill_convex and component.any():
        component = _fill_convex(component, levels > floor_levels)

    if stride == 1:
        return component
    return np.repeat(np.repeat(component, stride, axis=0), stride, axis=1)[:height, :width]


def contrast_to_noise(image: np.ndarray, *, work_size: int = 128) -> float:
    """Grey range of the image's large structure over its noise: p99 - p1 of a 9 x 9 median-filtered copy, divided
    by the noise standard deviation in its flattest tenth (blocks of 8 x 8 pixels), both at `work_size` px; inf when
    noise-free.

    A breast against its background gives tens or more (its contrast is large, the background flat); an empty
    detector or a noise field, whose only structure is its noise, about 1. The 9 x 9 median keeps structure wider
    than about 5 % of the image's long side (a breast) and drops what is thinner or smaller (a detector seam line, a
    corner marker) and most of the noise; the noise is estimated from the absolute difference to a 3 x 3 median (0.72
    of the standard deviation for Gaussian noise) in the flattest blocks, so tissue texture does not count as noise.
    """
    image = _check_image(image)
    stride = max(1, int(np.ceil(max(image.shape) / work_size)))
    small = np.asarray(image[::stride, ::stride], dtype=np.float32)
    low, high = np.percentile(ndi.median_filter(small, size=9, mode="nearest"), [1, 99])
    residual = np.abs(small - ndi.median_filter(small, size=3, mode="nearest"))
    noise = float(np.percentile(ndi.uniform_filter(residual, size=8, mode="nearest"), 10)) / 0.72
    contrast = float(high - low)
    if noise <= 0.0:
        return float("inf") if contrast > 0.0 else 0.0
    return contrast / noise


def chest_wall_side(image: np.ndarray, mask: np.ndarray | None = None) -> str:
    """'left' or 'right': the half of the image holding more breast intensity (inside `mask` when given)."""
    image = _check_image(image)
    weights = np.asarray(image, dtype=np.float32)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise ValueError(f"mask must have the image's shape {image.shape}. Got {mask.shape} instead.")
        weights = np.where(mask, weights, 0.0)
    half = image.shape[1] // 2
    left = float(weights[:, :half].sum())
    right = float(weights[:, image.shape[1] - half :].sum())
    return "left" if left >= right else "right"


def orient_chest_wall_left(image: np.ndarray, laterality: str | None = None) -> tuple[np.ndarray, bool]:
    """Mirror `image` so the chest wall is on the left; returns (image or its mirrored view, flipped).

    `laterality` 'L'/'R' (also 'LEFT'/'RIGHT', any case) decides when given: a right breast is flipped. Otherwise
    the side with more breast intensity (inside the breast mask) is taken as the chest wall.
    """
    image = _check_image(image)
    side = None if laterality is None else str(laterality).strip().upper()
    if side in ("", "NAN", "NONE", "U", "B"):
        side = None
    if side is not None and side not in ("L", "R", "LEFT", "RIGHT"):
        raise ValueError(f"laterality must be 'L', 'R' or None. Got {laterality!r} instead.")
    if side is None:
        step = max(1, int(np.ceil(max(image.shape) / 128)))
        small = image[::step, ::step]
        flip = chest_wall_side(small, breast_mask(small)) == "right"
    else:
        flip = side in ("R", "RIGHT")
    return (image[:, ::-1] if flip else image), flip
