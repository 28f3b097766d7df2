"""One table row -> its working-resolution sample, a float32 (S, S) image in [0, 1].

Steps: read the file, mirror so the chest wall is on the left (the row's laterality, else the file's, else the
image's intensity), zero everything outside the breast mask (background, film labels), then

* task ``density``: crop to the breast's bounding box, pad (not stretch) to a square with the breast against the
  left edge and centred vertically, resize to S x S;
* recipe ``highres`` (task ``screening``): the masked breast cropped to its bounding box, padded to a square
  (breast against the left edge) and resized to ``round(scale * S)`` px, or with ``aspect`` (height / width) to a
  frame of that shape at the square's pixel count (`sample_shape`), with the `Geometry` to map a heat map of it back
  onto the original image;
* task ``malignancy``: a square around the ROI centre with side ``max(context * 2 r, min_side)`` (boxes: ``context``
  times their longer side), padded with zeros where it leaves the image, resized to S x S. ROI coordinates are
  mirrored with the image.

Resizing goes through Pillow's float ("F") resampling with a bilinear filter widened to the reduction factor (an
antialiased reduction), a few milliseconds for 1024 -> 224.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.breast import MIN_BREAST_SHARE, breast_mask, contrast_to_noise, orient_chest_wall_left
from features.preprocess import resize_image
from pipeline.io.datasets.table import ROI_KINDS
from pipeline.errors import ImageReadError, MammoscopeError, NoBreastError
from pipeline.io.imageio import read_image

__all__ = ["RECIPES", "DEFAULT_CROP", "sample_recipe", "MIN_IMAGE_SIDE", "BLANK_RANGE", "ROSE_CNR", "MIN_BREAST_SHARE",
           "check_image_size", "check_not_blank", "check_breast", "find_breast", "check_roi_on_breast",
           "resize_square", "density_sample", "shared_breast_finding",
           "lesion_sample", "make_sample", "load_samples", "Geometry", "sample_side", "sample_shape",
           "recipe_shape", "highres_sample", "map_to_original"]

logger = logging.getLogger(__name__)

RECIPES = ("breast", "lesion", "highres")  # whole breast; square crop around the row's ROI; breast at scale x S
MIN_IMAGE_SIDE = 32  # px: a smaller image (icon, thumbnail, placeholder) is refused, never scored as a mammogram
# robust grey range (p99.5 - p0.5) below which an image is blank: under 16 grey levels of an 8-bit export (4 bits)
# no tissue can be told apart; a near-black export is refused, not scored
BLANK_RANGE = 16 / 255
ROSE_CNR = 5.0  # Rose criterion: structure under 5 noise standard deviations cannot be seen (an empty detector)


# image id -> results of the checks below, inside `shared_breast_finding` (None outside: nothing is kept)
_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mammoscope_shared_breast", default=None)


@contextlib.contextmanager
def shared_breast_finding() -> Iterator[None]:
    """Within the block, the blank check and the breast finding of one image object run once, however many models'
    samples are made of it (an upload scored for density and screening: ~30 ms saved per 1024 px image).

    Results are keyed by the image object, which the block keeps alive: an array changed in place inside the block
    would be served stale, so callers only read their images (every sample recipe does)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _shared(kind: str, image: np.ndarray, extra: Any, compute: Callable[[], Any]) -> Any:
    """compute() once per (kind, image object, extra) inside `shared_breast_finding`; plainly outside it."""
    memo = _SHARED.get()
    if memo is None:
        return compute()
    key = (kind, id(image), extra)
    hit = memo.get(key)
    if hit is not None and hit[0] is image:
        return hit[1]
    result = compute()  # an exception is not kept: the next model raises it again, naming its own path
    memo[key] = (image, result)
    return result


@functools.lru_cache(maxsize=1)
def _default_crop_cached() -> tuple[tuple[str, float], ...]:
    from pipeline.config.experiment import default_config

    s = default_config()["samples"]
    return (("context", float(s["context"])), ("min_side", float(s["min_side"])))


def _default_crop() -> dict[str, float]:
    """The crop parameters' defaults: the `samples` section of experiments/defaults.yaml (one source of defaults)."""
    return dict(_default_crop_cached())


def __getattr__(name: str):
    if name == "DEFAULT_CROP":  # read from defaults.yaml, never spelled out here
        return _default_crop()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sample_recipe(task_or_recipe: str) -> str:
    """A recipe name (``breast``, ``lesion``) from itself or from a task name (pipeline.config.tasks: the task's recipe)."""
    if task_or_recipe in RECIPES:
        return task_or_recipe
    from pipeline.config.tasks import get_task

    recipe = get_task(task_or_recipe).sample_recipe
    if recipe not in RECIPES:
        raise ValueError(f"task {task_or_recipe!r} has sample recipe {recipe!r}, unknown here; known: {RECIPES}")
    return recipe


def check_image_size(image: np.ndarray, path: object = None, min_side: int = MIN_IMAGE_SIDE) -> None:
    """Raise ImageReadError naming `path` when `image` (H, W) is smaller than `min_side` pixels on a side."""
    height, width = np.shape(image)[:2]
    if min(height, width) < min_side:
        raise ImageReadError(
            path,
            f"image is {width} x {height} px, too small to be a mammogram (it needs at least {min_side} px on "
            "each side)",
            "give the full-resolution mammogram, not a thumbnail, icon or placeholder",
        )


def check_not_blank(image: np.ndarray, path: object = None, min_range: float = BLANK_RANGE,
                    min_cnr: float = ROSE_CNR) -> None:
    """Raise NoBreastError when `image` is uniform or nearly so (robust grey range below `min_range`) or holds no
    structure above its noise (features.breast.contrast_to_noise below `min_cnr`: an empty detector)."""
    lo, hi, median = _shared("range", image, None, lambda: _grey_range(image))
    if hi - lo < min_range:
        raise NoBreastError(
            path,
            f"image is blank: nearly every pixel has the grey level {median:.2f} (range {hi - lo:.3f}, "
            f"under {min_range:.3f}), there is no breast to score",
            "check the export (an all-black, all-white or near-black image is a failed conversion or a placeholder)",
        )
    cnr = _shared("cnr", image, None, lambda: contrast_to_noise(_thumbnail(image)))
    if cnr < min_cnr:
        raise NoBreastError(
            path,
            f"no breast found: nothing wider than a marker or label stands out of the noise (contrast {cnr:.1f} times "
            f"the noise; a breast gives at least {min_cnr:.0f}): an empty detector, a lone label or a noise image",
            "give a mammogram; an exposure without a breast is not scored",
        )


def _thumbnail(image: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(np.shape(image)) / 256)))
    return np.asarray(image[::step, ::step], dtype=np.float32)


def _grey_range(image: np.ndarray) -> tuple[float, float, float]:
    """(p0.5, p99.5, median) grey level of the image's <= 256 px thumbnail (check_not_blank's range test)."""
    lo, hi, median = (float(v) for v in np.percentile(_thumbnail(image), [0.5, 99.5, 50.0]))
    return lo, hi, median


def check_breast(mask: np.ndarray, path: object = None, min_share: float = MIN_BREAST_SHARE) -> None:
    """Raise NoBreastError when the breast mask covers less than `min_share` of the image."""
    share = float(np.mean(mask))
    if share < min_share:
        raise NoBreastError(
            path,
            f"no breast found: the largest bright region covers {share:.1%} of the image (a breast covers at least "
            f"{min_share:.0%})",
            "give a mammogram; a label, a marker or an almost empty image is not scored",
        )


def find_breast(image: np.ndarray, laterality: str | None = None, path: object = None
                ) -> tuple[np.ndarray, bool, np.ndarray]:
    """(image mirrored so the chest wall is on the left, flipped, its boolean breast mask); NoBreastError when the
    mask is too small to be a breast (check_breast)."""
    def find() -> tuple[np.ndarray, bool, np.ndarray]:
        oriented, flipped = orient_chest_wall_left(image, laterality)
        return oriented, flipped, breast_mask(oriented)

    oriented, flipped, mask = _shared("breast", image, laterality, find)
    check_breast(mask, path)
    return oriented, flipped, mask


def check_roi_on_breast(mask: np.ndarray, cx: float, cy: float, extent: float, path: object = None) -> None:
    """Raise NoBreastError when the ROI box (centre, extent; mask coordinates) does not touch the breast mask."""
    h, w = mask.shape
    half = max(extent, 1.0) / 2.0
    x0, x1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)) + 1, w)
    y0, y1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)) + 1, h)
    if x1 <= x0 or y1 <= y0 or not mask[y0:y1, x0:x1].any():
        raise NoBreastError(
            path,
            f"the region of interest (centre {cx:.0f}, {cy:.0f}; size {extent:.0f} px) lies outside the breast",
            "give the region in pixels of the original image (x0, y0, x1, y1, top-left origin), on the breast",
        )


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a square float image to (size, size) float32 in [0, 1] with antialiasing (features' resize)."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape == (size, size):
        return image.copy()
    return np.clip(resize_image(image, size, aspect="stretch"), 0.0, 1.0)


def _pad_square(crop: np.ndarray) -> np.ndarray:
    h, w = crop.shape
    side = max(h, w)
    out = np.zeros((side, side), dtype=np.float32)
    top = (side - h) // 2
    out[top : top + h, :w] = crop  # chest wall stays on the left edge
    return out


def density_sample(image: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """Masked breast cropped to its bounding box, padded to a square, resized to (size, size)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return resize_square(_pad_square(image), size)
    crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return resize_square(_pad_square(crop), size)


def _square_crop(image: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """Square of `side` pixels centred on (cx, cy), zero-padded where it leaves the image."""
    side_px = max(1, int(round(side)))
    x0 = int(round(cx - side_px / 2))
    y0 = int(round(cy - side_px / 2))
    out = np.zeros((side_px, side_px), dtype=np.float32)
    h, w = image.shape
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side_px, w), min(y0 + side_px, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def mask_box(paths: str, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in image pixels of the foreground of the first binary mask among `paths` (os.pathsep-joined);
    a mask of another size than the image `shape` (H, W) is scaled to it. Grey images (a lesion crop stored
    beside the mask) are passed over; raises ImageReadError when no usable mask is found."""
    candidates = [p for p in str(paths).split(os.pathsep) if p]
    seen = []
    for path in candidates:
        try:
            mask, _ = read_image(path, polarity=False)  # a mask is no mammogram: no polarity check
        except MammoscopeError as exc:
            seen.append(f"{path}: {exc}")
            continue
        step = max(1, min(mask.shape) // 512)
        levels = len(np.unique(mask[::step, ::step]))  # a lesion crop has many grey levels, a mask two
        low, high = float(mask.min()), float(mask.max())  # full resolution: a few-pixel calcification counts
        if levels > 2 or high <= low:
            seen.append(f"{path}: not a binary mask ({levels} grey levels)")
            continue
        foreground = mask > (low + high) / 2.0  # 0/1, 0/255 or any two values
        share = float(foreground.mean())
        if share > 0.9:
            seen.append(f"{path}: foreground covers {share:.0%} of the image (an inverted mask?)")
            continue
        rows = np.flatnonzero(foreground.any(axis=1))
        cols = np.flatnonzero(foreground.any(axis=0))
        sy, sx = shape[0] / mask.shape[0], shape[1] / mask.shape[1]
        return cols[0] * sx, rows[0] * sy, (cols[-1] + 1) * sx, (rows[-1] + 1) * sy
    raise ImageReadError(candidates[0] if candidates else "roi_mask_path", "no binary ROI mask among "
                         f"{len(candidates)} file(s): " + "; ".join(seen[:3]),
                         "check the finding's ROI mask file (CBIS-DDSM: 'ROI mask file path')")


def roi_geometry(row: Any, width: int, flipped: bool, height: int | None = None) -> tuple[float, float, float]:
    """(cx, cy, extent) of the row's ROI in the (possibly mirrored) image; extent = diameter or longer box side.

    A ``mask`` ROI is read from ``roi_mask_path`` (its foreground's bounding box; `height` is the image's)."""
    kind = row.get("roi_kind")
    if kind == "mask":
        if height is None:
            raise ValueError("roi_geometry needs the image height for a mask ROI")
        x0, y0, x1, y1 = mask_box(row.get("roi_mask_path"), (int(height), int(width)))
        cx, cy, extent = (x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0)
        return ((width - 1) - cx if flipped else cx), cy, extent
    if kind == "circle":
        cx, cy, extent = float(row["roi_cx"]), float(row["roi_cy"]), 2.0 * float(row["roi_r"])
    elif kind == "box":
        x0, y0, x1, y1 = (float(row[k]) for k in ("roi_x0", "roi_y0", "roi_x1", "roi_y1"))
        cx, cy, extent = (x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0)
    else:
        raise ValueError(f"row {row.get('sample_id')!r} has no ROI (roi_kind is {kind!r}); the malignancy task needs one")
    if flipped:
        cx = (width - 1) - cx
    return cx, cy, extent


def lesion_sample(
    image: np.ndarray, cx: float, cy: float, extent: float, size: int, *, context: float, min_side: float
) -> np.ndarray:
    """Square crop of side max(context * extent, min_side) around (cx, cy), resized to (size, size)."""
    side = max(context * extent, min_side)
    return resize_square(_square_crop(image, cx, cy, side), size)


def make_sample(
    image: np.ndarray, row: Any, task: str, *, laterality: str | None = None, size: int = 224, **crop_params: float
) -> np.ndarray:
    """Working-resolution sample (float32 (size, size)) of `row` from its already-read `image`.

    Every path that scores or trains on an image comes through here: an image smaller than MIN_IMAGE_SIDE on a side
    raises ImageReadError, a blank image, one whose breast is too small and an ROI off the breast raise
    NoBreastError (naming row["path"] when the row has one): nothing of the kind is scored.
    """
    recipe = sample_recipe(task)
    defaults = _default_crop()
    scale = float(crop_params.pop("scale", 1.0))  # the highres recipe's multiple of `size`
    aspect = float(crop_params.pop("aspect", 1.0))  # and its height / width
    params = {**defaults, **crop_params}
    unknown = set(params) - set(defaults)
    if unknown:
        raise TypeError(f"unknown crop parameters {sorted(unknown)}; allowed: {sorted(defaults)}")
    check_image_size(image, row.get("path"))
    check_not_blank(image, row.get("path"))
    side = row.get("laterality")
    side = side if isinstance(side, str) and side in ("L", "R") else laterality
    if recipe == "highres":
        return highres_sample(image, side, sample_side(size, scale), row.get("path"), aspect=aspect)[0]
    oriented, flipped, mask = find_breast(image, side, row.get("path"))
    masked = np.where(mask, oriented, np.float32(0.0))
    if recipe == "breast":
        return density_sample(masked, mask, size)
    cx, cy, extent = roi_geometry(row, image.shape[1], flipped, height=image.shape[0])
    check_roi_on_breast(mask, cx, cy, extent, row.get("path"))
    return lesion_sample(masked, cx, cy, extent, size, context=params["context"], min_side=params["min_side"])


@dataclass(frozen=True)
class Geometry:
    """Where a highres sample came from: image shape, mirroring, the padded breast frame's corner (r0, c0, in the
    mirrored image) and its height h and width w (original px); `side` is max(h, w)."""

    shape: tuple[int, int]
    flipped: bool
    r0: int
    c0: int
    h: int
    w: int
    side: int


def sample_side(size: int, scale: float) -> int:
    """Side in px of the square high-resolution sample: round(scale * size)."""
    return int(round(float(scale) * int(size)))


def sample_shape(size: int, scale: float, aspect: float = 1.0) -> tuple[int, int]:
    """(H, W) px of the high-resolution sample: H / W = `aspect` (1: the square sample_side) at the square's pixel
    count, H * W ~ sample_side**2, so a tall frame gives a tall breast sqrt(aspect) more linear resolution."""
    side, a = sample_side(size, scale), float(aspect)
    if a == 1.0:
        return side, side
    return max(1, int(round(side * a ** 0.5))), max(1, int(round(side / a ** 0.5)))


def recipe_shape(task_or_recipe: str, size: int, crop: Mapping[str, float]) -> tuple[int, int]:
    """(H, W) px of the samples a recipe (or a task's) makes at working size `size`: (size, size), or for the highres
    recipe `sample_shape` of the crop parameters' scale and aspect."""
    if sample_recipe(task_or_recipe) != "highres":
        return size, size
    return sample_shape(size, crop.get("scale", 1.0), crop.get("aspect", 1.0))


def _resize_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float32 `image` resized to `shape` (H, W), clipped to [0, 1]: antialiased bilinear as features' resize (a
    large shrink first averages integer blocks)."""
    from PIL import Image

    image = np.asarray(image, np.float32)
    h, w = (int(v) for v in shape)
    if image.shape == (h, w):
        return image.copy()
    if h == w:
        return resize_square(image, h)
    pil = Image.fromarray(np.ascontiguousarray(image))
    factor = min(image.shape[0] // h, image.shape[1] // w) // 2
    if factor >= 2:
        pil = pil.reduce(factor)
    return np.clip(np.asarray(pil.resize((w, h), resample=Image.Resampling.BILINEAR), np.float32), 0.0, 1.0)


def highres_sample(image: np.ndarray, laterality: str | None, side: int, path: Any = None, aspect: float = 1.0
                   ) -> tuple[np.ndarray, Geometry]:
    """(float32 (H, W) masked breast, Geometry) of an image already read; NoBreastError without a breast.

    The breast's bounding box is padded to a frame of height / width `aspect` (the breast against the left edge,
    centred vertically; 1: a square, (side, side)) and resized to `sample_shape`'s (H, W) for a square of `side`
    px: the pixel count of the square, the breast at its own shape instead of padded to a square."""
    check_image_size(image, path)
    oriented, flipped, mask = find_breast(image, laterality if laterality in ("L", "R") else None, path)
    masked = np.where(mask, oriented, np.float32(0.0))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = masked[r0:r1, c0:c1]
    h, w = crop.shape
    a = float(aspect)
    fh = max(h, int(np.ceil(a * w - 1e-9)))  # the frame: aspect = fh / fw, covering the box
    fw = max(w, int(round(fh / a)))
    out = sample_shape(int(side), 1.0, a)
    if max(out) > max(fh, fw):
        logger.debug("%s: breast box %d x %d px is smaller than the %d x %d px screening sample (upsampled)",
                     path, h, w, *out)
    frame = np.zeros((fh, fw), np.float32)
    top = (fh - h) // 2
    frame[top:top + h, :w] = crop
    geom = Geometry(tuple(image.shape), bool(flipped), int(r0) - top, int(c0), fh, fw, max(fh, fw))
    return _resize_to(frame, out), geom


def map_to_original(heat: np.ndarray, geom: Geometry) -> np.ndarray:
    """A map (H, W) of a highres sample placed on the original image (its shape), float32, 0 elsewhere."""
    full = np.zeros(geom.shape, np.float32)
    heat = np.asarray(heat, np.float32)
    big = heat if heat.shape == (geom.h, geom.w) else _resize_to(heat, (geom.h, geom.w))
    y0, x0 = max(geom.r0, 0), max(geom.c0, 0)
    y1, x1 = min(geom.r0 + geom.h, geom.shape[0]), min(geom.c0 + geom.w, geom.shape[1])
    full[y0:y1, x0:x1] = big[y0 - geom.r0:y1 - geom.r0, x0 - geom.c0:x1 - geom.c0]
    return full[:, ::-1].copy() if geom.flipped else full


def _samples_of_image(path: str, rows: list[dict], task: str, size: int, crop: dict,
                      whole_breast_without_roi: bool = False, export: tuple[int, int] | None = None
                      ) -> list[tuple[int, Any]]:
    """[(position, sample or error message)] for the rows that share one image file (`export`: (long side,
    JPEG quality) of a re-export made of the image first, pipeline.io.reexport)."""
    try:
        image, meta = read_image(path)
    except MammoscopeError as exc:
        return [(r["_pos"], str(exc)) for r in rows]
    if export is not None:
        from pipeline.io.reexport import export_copy

        image = export_copy(image, *export)
    out = []
    for r in rows:
        # a finding without an ROI, where the caller allows it, is scored on its whole breast (as predict does)
        no_roi = whole_breast_without_roi and r.get("roi_kind") not in ROI_KINDS
        row_task = "breast" if no_roi else task
        try:
            out.append((r["_pos"], make_sample(image, r, row_task, laterality=meta.laterality, size=size, **crop)))
        except ImageReadError as exc:  # names the file already
            out.append((r["_pos"], str(exc) if str(exc).startswith(path) else f"{path}: {exc}"))
        except ValueError as exc:
            out.append((r["_pos"], f"{path}: {exc}"))
    return out


def load_samples(
    df: pd.DataFrame, task: str, size: int = 224, n_jobs: int = 1, *, whole_breast_without_roi: bool = False,
    progress_bar: bool = False, export: tuple[int, int] | None = None, **crop_params: float
) -> tuple[np.ndarray, pd.DataFrame]:
    """Samples of every row: (X float32 (n_ok, size*size) in row order, errors DataFrame).

    `export`: (long side px, JPEG quality): each image is first re-exported that way (pipeline.io.reexport), as the
    training-time export copies are made (pipeline.training.copies).

    `progress_bar`: a tqdm bar on stderr (images done, rate, ETA) while the images are read and prepared.
    `whole_breast_without_roi`: a malignancy row without an ROI gets the whole-breast sample (as predict makes for
    an image given without one) instead of an error.
    Rows that fail (unreadable file, no ROI for the malignancy task) are left out of X and listed in `errors`
    (columns ``position`` in df, ``sample_id``, ``path``, ``error``). Rows sharing an image read it once.
    """
    from joblib import Parallel, delayed

    sample_recipe(task)  # ValueError for an unknown task or recipe, before any file is read
    records = df.reset_index(drop=True).to_dict("records")
    groups: dict[str, list[dict]] = {}
    for pos, rec in enumerate(records):
        rec["_pos"] = pos
        groups.setdefault(str(rec["path"]), []).append(rec)
    import sys

    from tqdm.auto import tqdm

    jobs = (delayed(_samples_of_image)(path, rows, task, size, crop_params, whole_breast_without_roi, export)
            for path, rows in groups.items())
    done = Parallel(n_jobs=n_jobs, return_as="generator")(jobs) if n_jobs != 1 else (
        job[0](*job[1], **job[2]) for job in jobs)
    results = list(tqdm(done, total=len(groups), desc="preparing samples", unit="img", file=sys.stderr,
                        disable=not progress_bar, dynamic_ncols=True))
    by_pos = dict(item for chunk in results for item in chunk)
    h, w = recipe_shape(task, size, crop_params)
    X = np.zeros((0, h * w), dtype=np.float32)
    good = [by_pos[p] for p in range(len(records)) if isinstance(by_pos[p], np.ndarray)]
    if good:
        X = np.stack([g.reshape(-1) for g in good]).astype(np.float32, copy=False)
    errors = pd.DataFrame(
        [
            {"position": p, "sample_id": records[p].get("sample_id"), "path": records[p].get("path"), "error": by_pos[p]}
            for p in range(len(records))
            if not isinstance(by_pos[p], np.ndarray)
        ],
        columns=["position", "sample_id", "path", "error"],
    )
    for message in errors["error"].head(5):
        logger.warning("sample skipped: %s", message)
    return X, errors
