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
