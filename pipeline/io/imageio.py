"""Read any mammogram file (PNG, JPEG, PGM, TIFF, DICOM) into a float32 (H, W) array in [0, 1] plus metadata.

Rules, the same for every format:

* grey 8-bit values are divided by 255; grey 16-bit values by the smallest 2**k - 1 (k in 10, 12, 14, 16) that
  holds the image's maximum, so 12-bit data stored in 16-bit containers are not squeezed into [0, 1/16];
* RGB becomes luminance (ITU-R BT.601 weights 0.299, 0.587, 0.114); an alpha channel is dropped;
* DICOM goes through the display chain of ``pipeline.io.dicom`` (modality LUT, VOI LUT/window, MONOCHROME1 inversion);
* non-finite pixels (NaN, inf in float TIFFs or DICOMs) are set to the image's lowest finite value (background) with a
  warning that counts them; an image without one finite pixel is refused;
* polarity is then checked from the pixels (``features.polarity``), for every format: an image whose breast is darker
  than its background (a MONOCHROME1 export saved as PNG/JPEG) is inverted back, with a warning; for DICOM the
  photometric tag is applied first and the pixels overrule it only when they clearly contradict it (warning too).
  ``ImageMeta.inverted`` says whether the returned image is the inverse of the stored values and
  ``ImageMeta.inverted_by`` what decided it (``"tag"``, ``"pixels"`` or None);
* the image size is checked from the header before any pixel is decoded (decompression-bomb guard);
* empty, truncated and unrecognised files raise ``ImageReadError`` naming the file, the problem and what to do.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ImageReadError

__all__ = ["ImageMeta", "read_image", "check_regular_file", "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES",
           "PIXEL_POLARITY_MARGIN", "TAG_OVERRULE_MARGIN"]

logger = logging.getLogger(__name__)

# 80 megapixels (e.g. 10,000 x 8,000): larger than any full-field mammogram, below Pillow's own bomb warning.
DEFAULT_MAX_PIXELS = 80_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".pnm", ".ppm", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".dic")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Polarity (features.polarity.polarity_margin, a share of the image): the pixels alone invert an image past
# PIXEL_POLARITY_MARGIN and overrule a DICOM photometric tag only when that margin is past it and the margin without
# the shape weight (geometry=False) is past TAG_OVERRULE_MARGIN (docs/breast-mask.md: every real image
# and inverse has |margin| >= 0.037; without the shape weight the CBIS-DDSM DICOMs >= 0.6; no background: near 0).
PIXEL_POLARITY_MARGIN = 0.02
TAG_OVERRULE_MARGIN = 0.15
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ImageMeta:
    """What was read and how; never patient-identifying values (no names, IDs, dates, accession, institution)."""

    format: str
    original_shape: tuple[int, int]
    bits_stored: int | None = None
    photometric: str | None = None
    inverted: bool = False
    inverted_by: str | None = None  # "tag" (DICOM photometric / presentation LUT), "pixels" (polarity check) or None
    voi: str | None = None
    laterality: str | None = None
    view: str | None = None
    modality: str | None = None
    presentation_intent: str | None = None
    transfer_syntax: str | None = None
    manufacturer: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # DICOM Study Instance UID: which exam the image belongs to (pipeline.io.exams). Not a name, but it links an image
    # to a patient's study, so it is read for grouping only: kept out of repr, to_dict, tables, logs and JSON.
    study_uid: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for tables, logs and JSON), without the study UID."""
        out = asdict(self)
        out.pop("study_uid", None)
        return out


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
        finite = np.isfinite(grey)
        if not finite.any():
            return grey, 32, photometric  # read_image refuses it, naming the file
        lo, hi = float(grey[finite].min()), float(grey[finite].max())
        if lo < 0.0 or hi > 1.0:
            grey = (grey - lo) / (hi - lo) if hi > lo else np.where(finite, 0.0, grey).astype(np.float32)
        return grey.astype(np.float32), 32, photometric  # non-finite pixels stay: read_image cleans and counts them
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


_FILE_KINDS = (
    (stat.S_ISDIR, "is a folder, not an image file", "pass an image file, or the folder to a command that walks it"),
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file: reading it could wait forever",
     "export the image to a regular file; it was not opened"),
    (stat.S_ISSOCK, "is a socket, not a regular file", "export the image to a regular file; it was not opened"),
    (stat.S_ISCHR, "is a character device, not a regular file", "pass an image file; it was not opened"),
    (stat.S_ISBLK, "is a block device, not a regular file", "pass an image file; it was not opened"),
)


def check_regular_file(path: str | Path) -> os.stat_result:
    """The stat of `path` when it is (a link to) a regular file; ImageReadError otherwise, without opening it.

    Dangling links, link loops, folders, FIFOs, sockets and devices are named as such, so a walk can turn them into
    error rows instead of blocking on them or dropping them.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageReadError(path, f"is a symbolic link to {os.readlink(path)!r}, which does not exist",
                                 "fix or remove the dangling link") from None
        raise ImageReadError(path, "file does not exist", "check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageReadError(path, "file cannot be opened: it is a symbolic link that points to itself or "
                                 "loops", "fix the link") from None
        raise ImageReadError(path, f"file cannot be opened ({exc.strerror})", "check its permissions") from None
    for test, problem, hint in _FILE_KINDS:
        if test(st.st_mode):
            raise ImageReadError(path, problem, hint)
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(path, "is not a regular file", "pass an image file; it was not opened")
    return st


def _read_head(path: Path, size: int = 132) -> bytes:
    """First `size` bytes, opened non-blocking and checked to be a regular file once open (no wait on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ImageReadError(path, f"file cannot be opened ({exc.strerror})", "check its permissions") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the stat
            raise ImageReadError(path, "is not a regular file", "pass an image file")
        return os.read(fd, size)
    finally:
        os.close(fd)


def _warn(path: Path, message: str) -> None:
    warnings.warn(f"{path.name}: {message}", UserWarning, stacklevel=4)
    logger.warning("%s: %s", path.name, message)


def _clean_non_finite(path: Path, image: np.ndarray, meta: ImageMeta) -> tuple[np.ndarray, ImageMeta]:
    """Non-finite pixels -> the lowest finite value, with a warning; no finite pixel at all -> ImageReadError."""
    finite = np.isfinite(image)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad == 0:
        return image, meta
    if bad == finite.size:
        raise ImageReadError(path, "every pixel is NaN or infinite: there is no image in the file",
                             "re-export the image; check the software that wrote it")
    values = image[finite]
    lo, hi = float(values.min()), float(values.max())
    cleaned = np.where(finite, image, lo)
    if lo < 0.0 or hi > 1.0:
        cleaned = (cleaned - lo) / (hi - lo) if hi > lo else np.zeros_like(cleaned)
    message = (f"{bad:,} non-finite pixel(s) (NaN/inf, {bad / finite.size:.2%} of the image) were set to the "
               "background value")
    _warn(path, message)
    return np.ascontiguousarray(cleaned, dtype=np.float32), replace(meta, warnings=(*meta.warnings, message))


def _check_polarity(path: Path, image: np.ndarray, meta: ImageMeta) -> tuple[np.ndarray, ImageMeta]:
    """Invert an image whose pixels say the breast is darker than the background; record and warn (module doc)."""
    from features.polarity import polarity_margin

    margin = polarity_margin(image)
    tag_inverted = meta.inverted  # DICOM: the photometric tag already inverted the stored values
    if meta.format == "dicom" and margin > PIXEL_POLARITY_MARGIN:
        # the tag decides unless the flat-region margin without the shape weight is strong too, as before
        margin = polarity_margin(image, geometry=False)
    limit = TAG_OVERRULE_MARGIN if meta.format == "dicom" else PIXEL_POLARITY_MARGIN
    if margin <= limit:
        meta = replace(meta, inverted_by="tag" if tag_inverted else None)
        if meta.format != "dicom" and 0.0 < abs(margin) <= PIXEL_POLARITY_MARGIN:  # no tag to fall back on
            message = (f"polarity could not be decided from the pixels (margin {margin:.3f}: no clear flat "
                       "background at either grey end, as when a large breast fills the frame): left as stored; "
                       "if the breast is dark on a bright background, re-export it with a dark background")
            _warn(path, message)
            meta = replace(meta, warnings=(*meta.warnings, message))
        return image, meta
    if meta.format == "dicom":
        tag = meta.photometric or "MONOCHROME2"
        effect = "inverted" if tag_inverted else "not inverted"
        message = (f"photometric interpretation {tag} (pixels {effect}) contradicts the pixels, which show a dark "
                   f"breast on a bright background: inverted by the pixel check (margin {margin:.2f}); check the "
                   "export's photometric tag")
    else:
        message = (f"image is inverted (dark breast on a bright background, as in a MONOCHROME1 export): inverted "
                   f"back before scoring (margin {margin:.2f})")
    _warn(path, message)
    inverted = np.ascontiguousarray(1.0 - image, dtype=np.float32)
    return inverted, replace(meta, inverted=not tag_inverted, inverted_by="pixels",
                             warnings=(*meta.warnings, message))


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               polarity: bool = True) -> tuple[np.ndarray, ImageMeta]:
    """Read PNG/JPEG/PGM/TIFF/DICOM at `path` into (float32 (H, W) in [0, 1], ImageMeta).

    Only a regular file is opened (non-blocking). Non-finite pixels are cleaned with a warning; with `polarity`
    (default) an inverted image is inverted back (module docstring); pass False for non-image rasters (ROI masks).
    Raises ImageReadError for a missing, empty, truncated, unrecognised, oversized (> `max_pixels`) or non-regular
    file (folder, FIFO, socket, device, dangling link, link loop).
    """
    path = Path(path)
    check_regular_file(path)
    head = _read_head(path)
    if not head:
        raise ImageReadError(path, "file is empty (0 bytes)", "re-export or re-download the file")

    if _looks_like_dicom(path, head):
        from pipeline.io.dicom import read_dicom

        image, info = read_dicom(path, max_pixels=max_pixels)
        image, meta = image, ImageMeta(**info)
    elif head[:4] in _TIFF_MAGIC:
        image, meta = _read_tiff(path, max_pixels)
    else:
        image, meta = _read_pillow(path, max_pixels)
    image, meta = _clean_non_finite(path, image, meta)
    if meta.inverted and meta.inverted_by is None:
        meta = replace(meta, inverted_by="tag")
    if polarity:
        image, meta = _check_polarity(path, image, meta)
    return image, meta
