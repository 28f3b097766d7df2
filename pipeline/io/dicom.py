"""DICOM mammograms -> float32 (H, W) in [0, 1] with the display pipeline applied, plus non-identifying metadata.

The display chain follows DICOM PS3.3 C.11 (stored values -> modality LUT -> VOI LUT or window -> presentation):

1. decompress the pixel data with pydicom's decoders (RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K through the pylibjpeg
   plugins that setup.cfg declares),
2. modality LUT or rescale slope/intercept (``pydicom.pixels.apply_modality_lut``),
3. VOI LUT sequence, else window centre/width with the LINEAR, LINEAR_EXACT or SIGMOID function
   (``pydicom.pixels.apply_voi_lut``); without either, the stored range of the image is stretched to [0, 1],
4. an inversion for MONOCHROME1 or a Presentation LUT Shape of INVERSE, so that the breast is always bright
   (DICOM requires MONOCHROME1 mammograms to carry INVERSE: the pair means one inversion, not two).

For integer pixel data the chain is computed once on the (at most 2**17) distinct stored values and applied as a
lookup table, which keeps a 4,500 x 2,800 16-bit mammogram to a few tens of milliseconds beyond decompression.

No patient-identifying value (names, IDs, birth dates, accession numbers, institution) is read into the returned
metadata or written to logs.
"""
from __future__ import annotations

import logging
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ImageReadError

__all__ = ["read_dicom", "DICOM_PIP_PACKAGES"]

logger = logging.getLogger(__name__)

# Transfer syntax UID -> the pip package(s) that decode it in pydicom 3.
DICOM_PIP_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg (or pillow)",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE lossless (pydicom also decodes it, slowly)
}

# View Code Sequence meanings (SNOMED / DICOM CID 4014) -> the usual abbreviations.
_VIEW_MEANINGS = {
    "cranio-caudal": "CC",
    "medio-lateral oblique": "MLO",
    "medio-lateral": "ML",
    "latero-medial": "LM",
    "latero-medial oblique": "LMO",
    "exaggerated cranio-caudal": "XCC",
    "cranio-caudal exaggerated laterally": "XCCL",
    "cranio-caudal exaggerated medially": "XCCM",
    "caudo-cranial (from below)": "FB",
    "superolateral to inferomedial oblique": "SIO",
    "cleavage": "CV",
    "axillary tail": "AT",
}
_KNOWN_VIEWS = {"CC", "MLO", "ML", "LM", "LMO", "XCC", "XCCL", "XCCM", "FB", "SIO", "CV", "AT", "RCC", "RMLO"}
_LUT_MAX_RANGE = 1 << 17  # integer data spanning more values than this is transformed directly, not by LUT


def _text(value: Any) -> str | None:
    """A DICOM element value as a stripped upper-case string, or None when empty."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
        if value is None:
            return None
    text = str(value).strip().upper()
    return text or None


def _first_item(ds: Any, keyword: str) -> Any:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _functional_group_item(ds: Any, keyword: str) -> Any:
    """First item of `keyword` in the shared, else the first per-frame functional group (enhanced MG objects)."""
    for group_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        group = _first_item(ds, group_kw)
        if group is not None:
            item = _first_item(group, keyword)
            if item is not None:
                return item
    return None


def laterality_of(ds: Any) -> str | None:
    """'L' or 'R' from ImageLaterality (0020,0062), else Laterality (0020,0060), else the frame laterality."""
    candidates = [ds.get("ImageLaterality"), ds.get("Laterality")]
    frame = _functional_group_item(ds, "FrameAnatomySequence")
    if frame is not None:
        candidates.append(frame.get("FrameLaterality"))
    for value in candidates:
        text = _text(value)
        if text in ("L", "R"):
            return text
    return None


def view_of(ds: Any) -> str | None:
    """View abbreviation (CC, MLO, ...) from ViewPosition (0018,5101), the View Code Sequence or the orientation.

    CBIS-DDSM files carry no ViewPosition but put the view into Patient Orientation (0020,0020); that value is used
    only when it is a known view abbreviation.
    """
    text = _text(ds.get("ViewPosition"))
    if text:
        return text
    code = _first_item(ds, "ViewCodeSequence")
    if code is not None:
        meaning = str(code.get("CodeMeaning", "")).strip().lower()
        if meaning in _VIEW_MEANINGS:
            return _VIEW_MEANINGS[meaning]
    orientation = ds.get("PatientOrientation")
    if orientation is not None:
        values = [str(v).strip().upper() for v in (orientation if not isinstance(orientation, str) else [orientation])]
        for v in values:
            if v in _KNOWN_VIEWS:
                return v
    return None


def _flatten_enhanced(ds: Any) -> None:
    """Copy rescale and window values of an enhanced (functional-group) object to the top level, if absent there."""
    trans = _functional_group_item(ds, "PixelValueTransformationSequence")
    if trans is not None and "RescaleSlope" not in ds and "RescaleSlope" in trans:
        ds.RescaleSlope = trans.RescaleSlope
        ds.RescaleIntercept = trans.get("RescaleIntercept", 0)
    voi = _functional_group_item(ds, "FrameVOILUTSequence")
    if voi is not None and "WindowCenter" not in ds and "WindowCenter" in voi and "WindowWidth" in voi:
        ds.WindowCenter = voi.WindowCenter
        ds.WindowWidth = voi.WindowWidth
        if "VOILUTFunction" in voi:
            ds.VOILUTFunction = voi.VOILUTFunction


def _voi_range(ds: Any) -> tuple[float, float] | None:
    """Output range (min, max) of the VOI stage per PS3.3 C.11.2, or None when no VOI applies (stretch instead)."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        depth = int(seq[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    bits = int(ds.get("BitsStored", 16))
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        y_min, y_max = sorted((y_min * slope + intercept, y_max * slope + intercept))
    return y_min, y_max


def _display_chain(values: np.ndarray, ds: Any) -> tuple[np.ndarray, str]:
    """Modality LUT, then VOI; returns float64 values in [0, 1] (before any inversion) and a description."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    out = apply_modality_lut(values, ds)
    voi_range = _voi_range(ds)
    if voi_range is not None:
        if ds.get("VOILUTSequence") and not np.issubdtype(np.asarray(out).dtype, np.integer):
            out = np.rint(out).astype(np.int64)  # a VOI LUT indexes integers
        out = apply_voi_lut(out, ds, prefer_lut=True)
        lo, hi = voi_range
        out = (np.asarray(out, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
        if ds.get("VOILUTSequence"):
            how = "VOI LUT sequence"
        else:
            how = f"window {_text(ds.get('VOILUTFunction')) or 'LINEAR'}"
    else:
        out = np.asarray(out, dtype=np.float64)
        lo, hi = float(out.min()), float(out.max())
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        how = "stretched stored range (no window in file)"
    return np.clip(out, 0.0, 1.0), how


def _pixel_array(ds: Any, path: Path) -> np.ndarray:
    """Decoded stored values of frame 0, with a clear error when no decoder is installed for the transfer syntax."""
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise ImageReadError(
                path,
                f"pixel data use the transfer syntax {ts.name} ({ts}), which no Python DICOM decoder supports",
                "convert the file to an uncompressed or JPEG/JPEG 2000 syntax, e.g. with `gdcmconv --raw` or dcmtk",
            ) from None
        if not decoder.is_available:
            package = DICOM_PIP_PACKAGES.get(str(ts), "pylibjpeg and its plugins")
            raise ImageReadError(
                path,
                f"pixel data use the transfer syntax {ts.name} ({ts}) and no decoder for it is installed",
                f"run `pip install {package}`",
            )
    try:
        arr = ds.pixel_array
    except (ValueError, EOFError) as exc:
        raise ImageReadError(path, f"pixel data are truncated or corrupt: {exc}", "re-export or re-download the file") from None
    except RuntimeError as exc:
        package = DICOM_PIP_PACKAGES.get(str(ts), "pylibjpeg and its plugins")
        raise ImageReadError(path, f"pixel data cannot be decoded: {exc}", f"try `pip install {package}`") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    return arr


def read_dicom(path: str | Path, *, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM file into a float32 (H, W) array in [0, 1], breast bright, and a dict of non-identifying metadata.

    Raises ImageReadError when the file is not DICOM, has no pixel data, is larger than `max_pixels`, is
    truncated, has more than one frame, or uses a transfer syntax without an installed decoder.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ImageReadError(
            path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)", "check the file is a DICOM image"
        ) from None
    except (OSError, EOFError, ValueError, KeyError, struct.error) as exc:
        raise ImageReadError(path, f"DICOM header cannot be parsed: {exc}", "re-export or re-download the file") from None

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(
            path,
            "DICOM file has no pixel data (it may be a report, structured report or presentation state)",
            "pass the image file of the study instead",
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ImageReadError(path, "DICOM header gives no image size (Rows/Columns)", "re-export the image")
    if rows * cols > max_pixels:
        raise ImageReadError(
            path,
            f"image is {cols} x {rows} pixels ({rows * cols:,}), more than the {max_pixels:,} allowed for a mammogram",
            "refused before decoding as a possible decompression bomb; raise max_pixels if the file is genuine",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            path,
            f"DICOM holds {frames} frames (tomosynthesis or a multi-frame series), not one 2D mammogram",
            "export a 2D (or synthesized 2D) view",
        )
    _flatten_enhanced(ds)

    problems: list[str] = []
    modality = _text(ds.get("Modality"))
    if modality not in (None, "MG"):
        problems.append(f"modality is {modality}, not MG (mammography)")
    intent = _text(ds.get("PresentationIntentType"))
    if intent == "FOR PROCESSING":
        problems.append(
            "presentation intent is FOR PROCESSING (raw detector data): the models expect FOR PRESENTATION images"
        )
    for problem in problems:
        warnings.warn(f"{path.name}: {problem}", UserWarning, stacklevel=3)
        logger.warning("%s: %s", path.name, problem)

    stored = _pixel_array(ds, path)
    photometric = _text(ds.get("PhotometricInterpretation")) or "MONOCHROME2"
    if stored.ndim == 3:  # colour: pydicom returns RGB; take luminance, no VOI for colour images
        rgb = stored.astype(np.float32)
        lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        image = np.clip(lum / top, 0.0, 1.0).astype(np.float32)
        how, inverted = "colour to luminance", False
    else:
        if np.issubdtype(stored.dtype, np.integer) and stored.size:
            lo, hi = int(stored.min()), int(stored.max())
            if hi - lo < _LUT_MAX_RANGE:
                lut_in = np.arange(lo, hi + 1, dtype=np.int64).astype(stored.dtype)
                lut, how = _display_chain(lut_in, ds)
                index = stored.astype(np.int32, copy=False) - lo if lo else stored
                image = lut.astype(np.float32)[index]
            else:
                image, how = _display_chain(stored, ds)
        else:
            image, how = _display_chain(np.asarray(stored, dtype=np.float64), ds)
        image = np.asarray(image, dtype=np.float32)
        shape_lut = _text(ds.get("PresentationLUTShape"))
        inverted = photometric == "MONOCHROME1" or shape_lut == "INVERSE"
        if inverted:
            image = 1.0 - image
    image = np.ascontiguousarray(image, dtype=np.float32)

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    meta: dict[str, Any] = {
        "format": "dicom",
        "original_shape": (rows, cols),
        "bits_stored": int(ds.get("BitsStored", 0) or 0) or None,
        "photometric": photometric,
        "inverted": inverted,
        "inverted_by": "tag" if inverted else None,
        "voi": how,
        "laterality": laterality_of(ds),
        "view": view_of(ds),
        "modality": modality,
        "presentation_intent": intent,
        "transfer_syntax": ts.name if ts is not None else None,
        "manufacturer": str(ds.get("Manufacturer", "")).strip() or None,
        "pixel_spacing_mm": (float(spacing[0]), float(spacing[1])) if spacing else None,
        "warnings": tuple(problems),
        "study_uid": str(ds.get("StudyInstanceUID", "")).strip() or None,
    }
    return image, meta

