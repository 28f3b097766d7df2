"""Helpers of the Gradio app that are about showing things, not predicting them.

Reading an upload once per session (a small thread-safe cache), a browser-sized display image of a mammogram
(16-bit data are windowed by ``pipeline.io.imageio`` and only the display copy is 8-bit), the region of interest
drawn as a box by two clicks, heat-map overlays, and a whitelist of image facts safe to show (never a
patient-identifying DICOM value). Prediction itself is ``pipeline.serving.predict``; nothing here computes features.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline.errors import ConfigError, ImageReadError, MammoscopeError
from pipeline.io.imageio import ImageMeta, read_image

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HOST_VARIABLES",
    "PORT_VARIABLES",
    "server_address",
    "DISPLAY_MAX_SIDE",
    "SAFE_META_FIELDS",
    "LoadedImage",
    "ImageCache",
    "display_image",
    "parse_roi",
    "format_roi",
    "box_from_corners",
    "box_to_display",
    "draw_box",
    "heat_overlay",
    "to_uint8",
    "enlarge",
    "safe_meta",
    "user_message",
    "processed_view",
    "trust_lines",
]

DISPLAY_MAX_SIDE = 1024
# ImageMeta fields shown in the page and returned by the API: acquisition facts only, nothing identifying.
SAFE_META_FIELDS = ("format", "original_shape", "bits_stored", "photometric", "inverted", "inverted_by", "voi",
                    "laterality", "view", "modality", "warnings")
_BOX_RGB = np.array([255, 140, 0], dtype=np.uint8)
_POINT_RGB = np.array([0, 200, 255], dtype=np.uint8)


@dataclass(frozen=True)
class LoadedImage:
    """An upload read once: the float32 (H, W) image in [0, 1], its meta, and an 8-bit display copy."""

    image: np.ndarray
    meta: ImageMeta
    display: np.ndarray
    factor: int  # original pixels per display pixel (integer block size)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float image in [0, 1] -> uint8 with rounding (values outside [0, 1] are clipped)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def enlarge(image: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Repeat pixels (nearest neighbour, integer factor) so a small model input is visible: min side >= min_side."""
    factor = max(1, -(-min_side // max(1, min(image.shape[:2]))))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def display_image(image: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> tuple[np.ndarray, int]:
    """float32 (H, W) -> (uint8 display (h, w), integer factor) by block means so that max(h, w) <= max_side."""
    if max_side < 1:
        raise ValueError(f"max_side must be a positive int. Got {max_side!r} instead.")
    h, w = image.shape
    factor = max(1, -(-max(h, w) // max_side))
    if factor > 1:
        hh, ww = h // factor * factor, w // factor * factor
        image = image[:hh, :ww].reshape(hh // factor, factor, ww // factor, factor).mean(axis=(1, 3))
    return to_uint8(image), factor


class ImageCache:
    """Bounded, thread-safe LRU of uploads read with ``read_image``, keyed by path, size and modification time."""

    def __init__(self, max_items: int = 4, max_side: int = DISPLAY_MAX_SIDE) -> None:
        self.max_items = max_items
        self.max_side = max_side
        self._items: OrderedDict[tuple, LoadedImage] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path) -> LoadedImage:
        """The upload at `path`, read (or taken from the cache); ImageReadError when it is not a usable image."""
        path = Path(path)
        try:
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
        except OSError:
            key = None
        if key is not None and self.max_items > 0:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
        image, meta = read_image(path)
        display, factor = display_image(image, self.max_side)
        loaded = LoadedImage(image, meta, display, factor)
        if key is not None and self.max_items > 0:
            with self._lock:
                self._items[key] = loaded
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        return loaded


def parse_roi(text: str | None) -> tuple[int, int, int, int] | None:
    """'x0, y0, x1, y1' (pixels of the original image, top-left origin) -> ordered int box; '' or None -> None."""
    if text is None or not str(text).strip():
        return None
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = [int(round(float(p))) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(f"region {text!r}: write four numbers 'x0, y0, x1, y1' in pixels of the original image, "
                         "or leave it empty for the whole image")
    x0, y0, x1, y1 = values
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"region {text!r} is empty: the box must be at least 2 pixels wide and high")
    return x0, y0, x1, y1


def format_roi(box: tuple[int, int, int, int] | None) -> str:
    """Box -> 'x0, y0, x1, y1' (the form ``parse_roi`` reads); None -> ''."""
    return "" if box is None else ", ".join(str(int(v)) for v in box)


def box_from_corners(a: tuple[int, int], b: tuple[int, int], factor: int, shape: tuple[int, int]
                     ) -> tuple[int, int, int, int]:
    """Two clicked display points (x, y) -> box (x0, y0, x1, y1) in original pixels, clipped to `shape` (H, W)."""
    h, w = shape
    x0, x1 = sorted((a[0], b[0]))
    y0, y1 = sorted((a[1], b[1]))
    box = (x0 * factor, y0 * factor, (x1 + 1) * factor, (y1 + 1) * factor)
    x0, y0, x1, y1 = (int(np.clip(box[0], 0, w)), int(np.clip(box[1], 0, h)),
                      int(np.clip(box[2], 0, w)), int(np.clip(box[3], 0, h)))
    return x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)


def box_to_display(box: tuple[int, int, int, int], factor: int) -> tuple[int, int, int, int]:
    """Box in original pixels -> box in display pixels."""
    return tuple(int(v) // factor for v in box)  # type: ignore[return-value]


def draw_box(display: np.ndarray, box: tuple[int, int, int, int] | None = None,
             point: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (h, w) display -> RGB uint8 (h, w, 3) with the ROI `box` (display pixels) and a pending `point`."""
    rgb = np.repeat(display[..., None], 3, axis=2)
    h, w = display.shape
    t = max(2, round(max(h, w) / 300))
    if box is not None:
        x0, y0, x1, y1 = (int(np.clip(box[0], 0, w - 1)), int(np.clip(box[1], 0, h - 1)),
                          int(np.clip(box[2], 0, w - 1)), int(np.clip(box[3], 0, h - 1)))
        rgb[y0:y0 + t, x0:x1 + 1] = _BOX_RGB
        rgb[max(y1 - t + 1, 0):y1 + 1, x0:x1 + 1] = _BOX_RGB
        rgb[y0:y1 + 1, x0:x0 + t] = _BOX_RGB
        rgb[y0:y1 + 1, max(x1 - t + 1, 0):x1 + 1] = _BOX_RGB
    if point is not None:
        x, y = int(np.clip(point[0], 0, w - 1)), int(np.clip(point[1], 0, h - 1))
        r = 3 * t
        rgb[max(y - t, 0):y + t + 1, max(x - r, 0):x + r + 1] = _POINT_RGB
        rgb[max(y - r, 0):y + r + 1, max(x - t, 0):x + t + 1] = _POINT_RGB
    return rgb


def heat_overlay(image: np.ndarray, heat: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """Grey float (S, S) in [0, 1] and a heat map (S, S) in [0, 1] -> RGB uint8 (S, S, 3) blend (jet colours)."""
    grey = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    if heat is None:
        return to_uint8(grey)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != image.shape:
        raise ValueError(f"heat map shape {heat.shape} differs from the image shape {image.shape}")
    h = np.clip(heat, 0, 1)[..., None]
    # jet: blue -> cyan -> yellow -> red, piecewise linear
    colours = np.concatenate([np.clip(1.5 - np.abs(4 * h - c), 0, 1) for c in (3.0, 2.0, 1.0)], axis=2)
    weight = alpha * h  # cold regions stay grey
    return to_uint8((1 - weight) * grey + weight * colours)


def safe_meta(meta: ImageMeta | None) -> dict[str, Any]:
    """The whitelisted, non-identifying facts of an image (SAFE_META_FIELDS) as plain JSON-able values."""
    if meta is None:
        return {}
    out: dict[str, Any] = {}
    for key in SAFE_META_FIELDS:
        value = getattr(meta, key, None)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def trust_lines(results: Mapping[str, Any]) -> list[str]:
    """Markdown lines of predict_image results: each task's prediction set at its coverage, and the threshold a
    per-group decision rule applied with the reason."""
    lines = []
    for task, entry in results.items():
        if entry.get("prediction_set_label"):
            lines.append(f"**{task.capitalize()} prediction set** ({entry['set_coverage']:.0%} coverage): "
                         f"**{entry['prediction_set_label']}**")
        if entry.get("threshold_reason") and entry.get("threshold") is not None:
            lines.append(f"Threshold applied: {entry['threshold']:.3f}: {entry['threshold_reason']}")
    return lines


def user_message(exc: BaseException) -> str:
    """A message for the page: what is wrong and what to do, without the server-side upload path."""
    if isinstance(exc, ImageReadError):
        text = f"This upload cannot be read: {exc.problem}."
        return text + (f" {exc.hint[0].upper()}{exc.hint[1:]}." if exc.hint else "")
    if isinstance(exc, (MammoscopeError, ValueError)):
        return str(exc)
    return f"Unexpected {type(exc).__name__}: {exc}"


def processed_view(sample: np.ndarray, loaded: Any) -> np.ndarray:
    """What the model's texture features see (pipeline.model.estimators.enhanced_view: masking, CLAHE + unsharp mask) of
    `sample` (S, S): float32 (S, S) in [0, 1]; the sample itself when the pipeline has no such step."""
    from pipeline.model.estimators import enhanced_view

    steps: Mapping[str, Any] = getattr(loaded.pipeline, "named_steps", {})
    if "features" not in steps:
        return np.asarray(sample, dtype=np.float32)
    out = enhanced_view(loaded.pipeline, np.asarray(sample, dtype=np.float32).reshape(1, -1)).reshape(sample.shape)
    return np.clip(out, 0.0, 1.0)


# Where the app listens: explicit arguments win, then Gradio's own variables (GRADIO_SERVER_NAME/PORT), then the
# project's older aliases (MAMMOSCOPE_HOST/PORT), then 127.0.0.1:7860.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
HOST_VARIABLES = ("GRADIO_SERVER_NAME", "MAMMOSCOPE_HOST")
PORT_VARIABLES = ("GRADIO_SERVER_PORT", "MAMMOSCOPE_PORT")


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = (environ.get(name) or "").strip()
        if value:
            return name, value
    return None


def server_address(host: str | None = None, port: int | str | None = None,
                   environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """(host, port) to serve on; ConfigError naming the variable when a port is not an integer in 1-65535."""
    environ = os.environ if environ is None else environ
    if host is None:
        found = _first(environ, HOST_VARIABLES)
        host = found[1] if found else DEFAULT_HOST
    source = "port argument"
    if port is None:
        found = _first(environ, PORT_VARIABLES)
        source, port = found if found else ("default", DEFAULT_PORT)
    try:
        number = int(port)
    except (TypeError, ValueError):
        number = -1
    if not 1 <= number <= 65535:
        raise ConfigError(f"{source}: port {port!r} is not an integer in 1-65535; set it to a free port, e.g. 7860")
    return host, number
