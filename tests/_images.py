"""Real mini-MIAS images for tests, read with Pillow from the shared data folder."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from pipeline.paths import default_mias_dir


@lru_cache(maxsize=8)
def _read(name: str) -> np.ndarray:
    with Image.open(default_mias_dir() / "images" / f"{name}.png") as img:
        return np.asarray(img, dtype=np.float32) / np.float32(255.0)


def mias_image(name: str) -> np.ndarray:
    """float32 (1024, 1024) in [0, 1] of mini-MIAS image ``name`` (e.g. 'mdb001'); a fresh copy."""
    return _read(name).copy()


def breast_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """float32 (height, width): a textured bright half-disc against the left edge on a dark background, the least
    that scoring accepts as a breast (random noise or a uniform image is refused as "no breast")."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((yy - height / 2) ** 2 + xx**2) < (0.45 * max(height, width)) ** 2
    return np.where(disc, 0.4 + 0.5 * rng.random((height, width)), 0.02 * rng.random((height, width))).astype(
        np.float32)
