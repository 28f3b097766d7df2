"""Read any mammogram file (PNG, JPEG, PGM, TIFF, DICOM) into a float32 (H, W) array in [0, 1] plus metadata.

Rules, the same for every format:

* grey 8-bit values are divided by 255; grey 16-bit values by the smallest 2**k - 1 (k in 10, 12, 14, 16) that
  holds the image's maximum, so 12-bit data stored in 16-bit containers are not squeezed into [0, 1/16];
* RGB becomes luminance (ITU-R BT.601 weights 0.299, 0.587, 0.114); an alpha channel is dropped;
* DICOM goes through the display chain of ``pipeline.io.dicom`` (modality LUT, VOI LUT/window, MONOCHROME1 inversion);
* the image size is checked from the header before any pixel is decoded (decompression-bomb guard);
* empty, truncated and unrecognised files raise ``ImageReadError`` naming the file, the problem and what to do.
"""
from __future__ import annotations

import errno
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ImageReadError

__all__ = ["ImageMeta", "read_image", "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

# 80 megapixels (e.g. 10,000 x 8,000): larger than any full-field mammogram, below Pillow's own bomb warning.
DEFAULT_MAX_PIXELS = 80_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".pnm", ".ppm", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".dic")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ImageMeta:
    """What was read and how; never patient-identifying values (no names, IDs, dates, accession, institution)."""

    format: str
    original_shape: tuple[int, int]
    bits_stored: int | None = None
    photometric: str | None = None
    inverted: bool = False
    voi: str | None = None
    laterality: str | None = None
    view: str | None = None
    modality: str | None = None
    presentation_intent: str | None = None
    transfer_syntax: str | None = None
    manufacturer: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for tables, logs and JSON)."""
        return asdict(self)


def _refuse_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            path,
            f"image header claims {width} x {height} pixels ({width * height:,}), more than the {max_pixels:,} "
            "allowed for a mammogram",
            "refused before decoding as a possible decompression bomb; pass a larger max_pixels if the file is genuine",
        )


def _scale_integer(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer grey values -> float32 in [0, 1]; returns the bit depth used for scaling."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1 / 255), 8
    if arr.dtype == bool:
        return arr.astype(np.float32), 1
    top = int(arr.max()) if arr.size else 0
    if arr.size and int(arr.min()) < 0:
        raise ValueError("negative grey values")
    for bits in (8, 10, 12, 14, 16, 32):
        if top <= 2**bits - 1:
            break
    return (arr.astype(np.float32) / np.float32(2**bits - 1)), bits


def _to_grey(arr: np.ndarray) -> tuple[np.ndarray, int | None, str]:
    """(H, W), (H, W, 2|3|4) arrays -> float32 grey in [0, 1], bit depth and photometric description."""
    photometric = "grey"
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels in (2, 4):  # grey+alpha or RGBA: drop alpha
            arr = arr[..., :-1]
            channels -= 1
        if channels == 1:
            arr = arr[..., 0]
        elif channels == 3:
            photometric = "rgb"
        else:
            raise ValueError(f"{arr.shape[2]} channels")
    if np.issubdtype(arr.dtype, np.floating):
        grey = arr.astype(np.float32)
        if photometric == "rgb":
            grey = grey @ _LUMA
        lo, hi = float(np.nanmin(grey)), float(np.nanmax(grey))
        if lo < 0.0 or hi > 1.0:
            grey = (grey - lo) / (hi - lo) if hi > lo else np.zeros_like(grey)
        return np.nan_to_num(grey).astype(np.float32), 32, photometric
    if photometric == "rgb":
        scaled, bits = _scale_integer(arr.reshape(-1, 3))
        return (scaled @ _LUMA).reshape(arr.shape[:2]).astype(np.float32), bits, photometric
    scaled, bits = _scale_integer(arr)
    return scaled, bits, photometric


def _read_pillow(path: Path, max_pixels: int) -> tuple[np.ndarray, ImageMeta]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
            _refuse_size(path, width, height, max_pixels)
            fmt = (im.format or path.suffix.lstrip(".")).lower()
            im.load()
            im = ImageOps.exif_transpose(im) if fmt in ("jpeg", "mpo", "tiff") else im
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.asarray(im)
            if mode in ("I", "I;16", "I;16B", "I;16L") and arr.dtype != np.uint8:
                arr = arr.astype(np.int64) if arr.dtype.kind == "i" else arr
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            path, f"image is too large to be a mammogram ({exc})", "refused before decoding as a decompression bomb"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            path, "not a recognised image format", "use PNG, JPEG, PGM, TIFF or DICOM; check the file is not damaged"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            path, f"image data are truncated or corrupt ({exc})", "re-export or re-download the file"
        ) from None
    try:
        grey, bits, photometric = _to_grey(arr)
    except ValueError as exc:
        raise ImageReadError(path, f"unsupported pixel layout {arr.shape} {arr.dtype}: {exc}", "save as grey PNG") from None
    meta = ImageMeta(format=fmt, original_shape=(height, width), bits_stored=bits, photometric=photometric)
    return grey, meta


def _read_tiff(path: Path, max_pixels: int) -> tuple[np.ndarray, ImageMeta]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = page.shape
            height, width = int(shape[0]), int(shape[1])
            if len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (1, 2, 3, 4):  # planar (C, H, W)
                height, width = int(shape[1]), int(shape[2])
            _refuse_size(path, width, height, max_pixels)
            arr = page.asarray()
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, struct.error, ...)
        raise ImageReadError(path, f"TIFF cannot be read ({type(exc).__name__}: {exc})", "re-export the file") from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    try:
        grey, bits, photometric = _to_grey(arr)
    except ValueError as exc:
        raise ImageReadError(path, f"unsupported pixel layout {arr.shape} {arr.dtype}: {exc}", "save as grey TIFF") from None
    return grey, ImageMeta(format="tiff", original_shape=(height, width), bits_stored=bits, photometric=photometric)


def _looks_like_dicom(path: Path, head: bytes) -> bool:
    return head[128:132] == b"DICM" or path.suffix.lower() in _DICOM_SUFFIXES


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageMeta]:
    """Read PNG/JPEG/PGM/TIFF/DICOM at `path` into (float32 (H, W) in [0, 1], ImageMeta).

    Raises ImageReadError for a missing, empty, truncated, unrecognised or oversized (> `max_pixels`) file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except FileNotFoundError:
        raise ImageReadError(path, "file does not exist", "check the path") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not an image file", "pass an image file") from None
    except OSError as exc:
        hint = "it is a symbolic link that points to itself or loops: fix the link" if exc.errno == errno.ELOOP \
            else "check its permissions"
        raise ImageReadError(path, f"file cannot be opened ({exc.strerror})", hint) from None
    if not head:
        raise ImageReadError(path, "file is empty (0 bytes)", "re-export or re-download the file")

    if _looks_like_dicom(path, head):
        from pipeline.io.dicom import read_dicom

        image, info = read_dicom(path, max_pixels=max_pixels)
        return image, ImageMeta(**info)
    if head[:4] in _TIFF_MAGIC:
        return _read_tiff(path, max_pixels)
    return _read_pillow(path, max_pixels)
