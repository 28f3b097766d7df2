"""Cheap per-file facts of images without decoding their pixels: size, bit depth, format, scanner (DICOM).

Read from the header only (Pillow's lazy `Image.open`, pydicom's `stop_before_pixels`), so a training-time audit of
what the files themselves say about the label (pipeline.training.audit) costs milliseconds per file, not a second
full decode. Values are technical only: no patient-identifying tags (names, IDs, dates, institution) are read.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

__all__ = ["HEADER_COLUMNS", "image_header", "image_headers"]

log = logging.getLogger(__name__)

HEADER_COLUMNS = ("height", "width", "bit_depth", "format", "manufacturer", "model")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# bits per sample of Pillow's modes (a 12-bit image in a 16-bit container reads as 16: the container is the fact)
_MODE_BITS = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8, "I;16": 16, "I;16B": 16,
              "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _blank() -> dict[str, Any]:
    return {c: None for c in HEADER_COLUMNS}


def _dicom_header(path: Path) -> dict[str, Any]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=["Rows", "Columns", "BitsStored", "Manufacturer", "ManufacturerModelName"])
    text = lambda v: (str(v).strip() or None) if v is not None else None  # noqa: E731
    return {"height": int(ds.get("Rows", 0) or 0) or None, "width": int(ds.get("Columns", 0) or 0) or None,
            "bit_depth": int(ds.get("BitsStored", 0) or 0) or None, "format": "dicom",
            "manufacturer": text(ds.get("Manufacturer")), "model": text(ds.get("ManufacturerModelName"))}


def image_header(path: str | Path) -> dict[str, Any]:
    """{height, width, bit_depth, format, manufacturer, model} of one image file from its header (None where the
    header does not say or the file cannot be opened: an audit must not stop on one odd file)."""
    path = Path(path)
    out = _blank()
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        if head[128:132] == b"DICM" or path.suffix.lower() in _DICOM_SUFFIXES:
            return {**out, **_dicom_header(path)}
        from PIL import Image

        with Image.open(path) as im:  # the header only: pixels are decoded on .load(), never called here
            width, height = im.size
            return {**out, "height": int(height), "width": int(width), "bit_depth": _MODE_BITS.get(im.mode),
                    "format": (im.format or path.suffix.lstrip(".")).lower()}
    except Exception as exc:  # noqa: BLE001 - an unreadable header leaves the facts unknown (reported, not fatal)
        log.debug("%s: header not read (%s: %s)", path, type(exc).__name__, exc)
        return out


def image_headers(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per distinct path (index: the path as given) with the HEADER_COLUMNS of `image_header`."""
    unique = list(dict.fromkeys(str(p) for p in paths))
    frame = pd.DataFrame([image_header(p) for p in unique], index=pd.Index(unique, name="path"),
                         columns=list(HEADER_COLUMNS))
    unread = int(frame["height"].isna().sum())
    if unread:
        log.warning("%d of %d image headers could not be read; their size and bit depth count as unknown",
                    unread, len(unique))
    return frame
