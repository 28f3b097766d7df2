"""The screening sample: the masked breast, chest wall left, cropped to its bounding box, padded to a square and
resized to ``round(scale * size)`` px (the high-resolution view the tiles cover), plus the geometry to map a
sample-scale heat map back onto the original image."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.breast import breast_mask, orient_chest_wall_left
from pipeline.errors import MammoscopeError
from pipeline.imageio import read_image
from pipeline.samples import check_image_size, resize_square

__all__ = ["Geometry", "sample_side", "screening_sample", "load_screening_samples", "map_to_original"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Geometry:
    """Where a screening sample came from: image shape, mirroring, breast box, padded square side."""

    shape: tuple[int, int]
    flipped: bool
    r0: int
    c0: int
    h: int
    w: int
    side: int


def sample_side(size: int, scale: float) -> int:
    """Side in px of the high-resolution sample: round(scale * size)."""
    return int(round(float(scale) * int(size)))


def screening_sample(image: np.ndarray, laterality: str | None, side: int, path: Any = None
                     ) -> tuple[np.ndarray, Geometry]:
    """(float32 (side, side) masked breast, Geometry) of an image already read."""
    check_image_size(image, path)
    oriented, flipped = orient_chest_wall_left(image, laterality if laterality in ("L", "R") else None)
    mask = breast_mask(oriented)
    masked = np.where(mask, oriented, np.float32(0.0)) if mask.any() else oriented
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        rows, cols = np.arange(image.shape[0]), np.arange(image.shape[1])
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = masked[r0:r1, c0:c1]
    h, w = crop.shape
    sq = max(h, w)
    if sq < side:
        logger.debug("%s: breast box %d px is smaller than the %d px screening sample (upsampled)", path, sq, side)
    padded = np.zeros((sq, sq), np.float32)
    top = (sq - h) // 2
    padded[top:top + h, :w] = crop
    geom = Geometry(tuple(image.shape), bool(flipped), int(r0) - top, int(c0), sq, sq, sq)
    return resize_square(padded, side), geom


def map_to_original(heat: np.ndarray, geom: Geometry) -> np.ndarray:
    """A (side, side) map of the screening sample placed on the original image (H, W), float32, 0 elsewhere."""
    full = np.zeros(geom.shape, np.float32)
    big = resize_square(np.asarray(heat, np.float32), geom.side) if heat.shape[0] != geom.side else heat
    y0, x0 = max(geom.r0, 0), max(geom.c0, 0)
    y1, x1 = min(geom.r0 + geom.side, geom.shape[0]), min(geom.c0 + geom.side, geom.shape[1])
    full[y0:y1, x0:x1] = big[y0 - geom.r0:y1 - geom.r0, x0 - geom.c0:x1 - geom.c0]
    return full[:, ::-1].copy() if geom.flipped else full


def _one(path: str, laterality: Any, side: int) -> np.ndarray | str:
    try:
        image, meta = read_image(path)
        lat = laterality if isinstance(laterality, str) and laterality in ("L", "R") else meta.laterality
        return screening_sample(image, lat, side, path)[0]
    except MammoscopeError as exc:
        return str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
    except ValueError as exc:
        return f"{path}: {exc}"


def load_screening_samples(table: pd.DataFrame, side: int, n_jobs: int = 1) -> tuple[np.ndarray, pd.DataFrame]:
    """(X float32 (n_ok, side*side) in row order, errors DataFrame (position, sample_id, path, error))."""
    from joblib import Parallel, delayed

    rows = table.reset_index(drop=True)
    jobs = [delayed(_one)(str(r.path), getattr(r, "laterality", None), side) for r in rows.itertuples()]
    results = Parallel(n_jobs=n_jobs)(jobs) if n_jobs != 1 else [f(*a, **k) for f, a, k in jobs]
    good = [r.reshape(-1) for r in results if isinstance(r, np.ndarray)]
    X = np.stack(good).astype(np.float32, copy=False) if good else np.zeros((0, side * side), np.float32)
    errors = pd.DataFrame([{"position": i, "sample_id": rows.loc[i, "sample_id"], "path": rows.loc[i, "path"],
                            "error": r} for i, r in enumerate(results) if not isinstance(r, np.ndarray)],
                          columns=["position", "sample_id", "path", "error"])
    for message in errors["error"].head(5):
        logger.warning("screening sample skipped: %s", message)
    return X, errors
