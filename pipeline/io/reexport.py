"""An image as an archive re-exports it: resized so its long side is a given length, 8 bit, JPEG.

Public screening sets are often shared as such re-exports (640 px JPEG) while development data are full-resolution
PNG or DICOM. `jpeg_export` writes the bytes of such a file; `export_copy` is the image read back from them, as
`read_image` would read the file (8-bit grey / 255), for training-time export copies (pipeline.training.copies) and
the re-export benchmark (benchmarks/reexport.py). Pillow does the resizing (bilinear, on float32) and the encoding.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["jpeg_export", "export_copy", "export_shape"]


def export_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(H, W) of an image of `shape` resized so its long side is `long_side` px (up or down), aspect kept."""
    h, w = shape
    scale = float(long_side) / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def jpeg_export(image: np.ndarray, long_side: int = 640, quality: int = 90) -> tuple[bytes, tuple[int, int]]:
    """(JPEG bytes, (H, W)) of a float32 (H, W) image in [0, 1] resized to `long_side` px on its long side, 8 bit,
    at JPEG `quality` (1-100)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100; got {quality!r}")
    image = np.asarray(image, np.float32)
    if image.ndim != 2:
        raise ValueError(f"a grey (H, W) image is re-exported; got shape {image.shape}")
    shape = export_shape(image.shape, int(long_side))
    small = np.asarray(Image.fromarray(image, mode="F").resize(shape[::-1], Image.BILINEAR), np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)).save(buf, format="JPEG",
                                                                                    quality=int(quality))
    return buf.getvalue(), shape


def export_copy(image: np.ndarray, long_side: int = 640, quality: int = 75) -> np.ndarray:
    """The float32 (h, w) image in [0, 1] read back from `jpeg_export(image, long_side, quality)`."""
    data, _ = jpeg_export(image, long_side, quality)
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"), np.float32) * np.float32(1 / 255)
