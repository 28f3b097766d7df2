"""Synthetic task for fine-tuning and Grad-CAM tests: class 1 images hold a bright Gaussian blob."""
from __future__ import annotations

import numpy as np


def blob_images(n: int, size: int = 32, seed: int = 0, sigma: float = 2.5):
    """(images (n, size, size) float32 in [0, 1], labels (n,), blob centres (n, 2) row/col; centre unused for 0)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.05, (n, size, size)).astype(np.float32)
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    centres = rng.integers(6, size - 6, (n, 2))
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(labels):
        cy, cx = centres[i]
        images[i] += 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return np.clip(images, 0, 1).astype(np.float32), labels, centres
