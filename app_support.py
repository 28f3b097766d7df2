"""Helpers of the Gradio app that are about showing things, not predicting them.

Reading an upload once per session (a small thread-safe cache), a browser-sized display image of a mammogram
(16-bit data are windowed by ``pipeline.io.imageio`` and only the display copy is 8-bit), the region of interest
drawn as a box by two clicks, heat-map overlays, and a whitelist of image facts safe to show (never a
patient-identifying DICOM value); the words a reader reads (each call's cost from its model card, bars in the card's
class order with the threshold mark, prediction-set and density lines, warnings when an image is outside what a card
says its model saw) and the report to keep (one HTML page + its JSON + the cards, zipped; own code because it is a
few lines of HTML over data the app already holds). Prediction itself is ``pipeline.serving``; nothing here computes
features or scores.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

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
    "esc",
    "call_word",
    "operating_figures",
    "cost_sentence",
    "density_cost",
    "set_line",
    "density_legend",
    "bar_html",
    "call_html",
    "RESULT_CSS",
    "box_problem",
    "region_warnings",
    "card_warnings",
    "trained_on",
    "sentence",
    "figure_bytes",
    "report_html",
    "write_report",
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
    """uint8 (h, w) or RGB (h, w, 3) display -> RGB uint8 (h, w, 3) with the ROI `box` (display pixels) and a
    pending `point`."""
    rgb = np.repeat(display[..., None], 3, axis=2) if display.ndim == 2 else np.array(display, copy=True)
    h, w = display.shape[:2]
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
    """Grey float (S, S) in [0, 1] and a heat map (S, S) in [0, 1] -> RGB uint8 (S, S, 3) blend: the jet colouring of
    pipeline.serving.screening.overlay_rgb (`mammoscope predict --maps`), in float32 with broadcasting (a third of
    its time on a 1024 px image; the app's map waits on it); grey without a map."""
    grey = np.clip(np.asarray(image, np.float32), 0, 1)[..., None]
    if heat is None:
        return np.repeat(to_uint8(grey), 3, axis=2)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != image.shape:
        raise ValueError(f"heat map shape {heat.shape} differs from the image shape {image.shape}")
    h = np.clip(heat, 0, 1)[..., None]
    # jet: blue -> cyan -> yellow -> red, piecewise linear
    colours = np.clip(np.float32(1.5) - np.abs(4 * h - np.array([3.0, 2.0, 1.0], np.float32)), 0, 1)
    weight = np.float32(alpha) * h  # cold regions stay grey
    return to_uint8(grey + weight * (colours - grey))


def safe_meta(meta: ImageMeta | None) -> dict[str, Any]:
    """The whitelisted, non-identifying facts of an image (SAFE_META_FIELDS) as plain JSON-able values."""
    if meta is None:
        return {}
    out: dict[str, Any] = {}
    for key in SAFE_META_FIELDS:
        value = getattr(meta, key, None)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


# --------------------------------------------------------------------------------------------------------------------
# What a reader reads: each call with its cost from the model card, bars in the card's class order, set and density
# words, and the warnings that stand beside a result
# --------------------------------------------------------------------------------------------------------------------
CALL_WORDS = {"malignant": "suspicious", "not_malignant": "not suspicious", "benign": "not suspicious"}
UNIT = {"image": "image", "breast": "breast", "exam": "exam", "region": "finding"}
# What each dataset adapter's images are (the card names its adapter): a different kind of image gets a warning.
CONTRAST_ADAPTERS = frozenset({"cdd_cesm"})
ADAPTER_WORDS = {"mias": "mini-MIAS digitised film mammograms", "cbis_ddsm": "CBIS-DDSM digitised film mammograms",
                 "cdd_cesm": "CDD-CESM contrast-enhanced (subtracted) images"}
MIAS_TISSUE = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
BIRADS_DENSITY = {"A": "almost entirely fatty", "B": "scattered areas of fibroglandular density",
                  "C": "heterogeneously dense, may obscure small masses",
                  "D": "extremely dense, lowers the sensitivity of mammography"}
OFF_BREAST_SHARE = 0.25  # a region with less breast than this share of its pixels is called off the breast
BREAST_LEVEL = 0.05  # grey level above which a pixel counts as breast (background is near 0 after the reader)


def sentence(text: str) -> str:
    """`text` with its first letter upper-case (str.capitalize would lower-case the rest: 'CI', 'CC')."""
    return text[:1].upper() + text[1:]


def call_word(call: str | None) -> str:
    """A call in a reader's words ("suspicious" for malignant); the class name itself for other classes."""
    return "none" if call is None else CALL_WORDS.get(str(call), str(call))


def _entry(metrics: Mapping[str, Any], key: str) -> dict[str, float] | None:
    entry = metrics.get(key)
    if not isinstance(entry, Mapping) or entry.get("value") is None:
        return None
    return {k: entry.get(k) for k in ("value", "low", "high")}


def operating_figures(card: Any, level: str = "image") -> tuple[dict | None, dict | None]:
    """(sensitivity, specificity) {"value", "low", "high"} of the card's operating point at `level` ("image",
    "breast", "exam", or "region" for a lesion model) in cross-validation; None where the card has none. A region
    call under per-density-group thresholds gives those figures (the rule it used); a screening call on the page is
    made at its level's own threshold (the exam model's), so it reads that level's figures, as the PACS report does."""
    d = card.to_dict() if hasattr(card, "to_dict") else dict(card or {})
    metrics = d.get("metrics") or {}
    if level == "region" and (d.get("decision") or {}).get("group_thresholds") and _entry(metrics, "cv_groupthr_sens"):
        return _entry(metrics, "cv_groupthr_sens"), _entry(metrics, "cv_groupthr_spec")
    prefixes = {"image": ["cv_image_", "cv_"], "region": ["cv_"]}.get(level, [f"cv_{level}_"])
    for prefix in prefixes:
        if _entry(metrics, f"{prefix}sens_at_target") is not None:
            return _entry(metrics, f"{prefix}sens_at_target"), _entry(metrics, f"{prefix}spec_at_target")
    return None, None


def _of_100(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.0f}"


def cost_sentence(card: Any, level: str = "image") -> str:
    """What a call at the card's operating point costs, in words: 'at this threshold the model found S of 100
    cancers (95% CI a-b) and flagged F of 100 cancer-free images (95% CI c-d) in cross-validation'."""
    sens, spec = operating_figures(card, level)
    unit = UNIT.get(level, "image")
    if sens is None or spec is None:
        return f"the model card holds no cross-validated sensitivity at this threshold for one {unit}"
    s_ci = (f" (95% CI {_of_100(sens['low'])}-{_of_100(sens['high'])})"
            if sens.get("low") is not None and sens.get("high") is not None else "")
    f_ci = (f" (95% CI {_of_100(1 - spec['high'])}-{_of_100(1 - spec['low'])})"
            if spec.get("low") is not None and spec.get("high") is not None else "")
    things = "cancers" if level != "region" else "malignant findings"
    clean = "cancer-free" if level != "region" else "benign"
    return (f"at this threshold the model found {_of_100(sens['value'])} of 100 {things}{s_ci} and flagged "
            f"{_of_100(1 - spec['value'])} of 100 {clean} {unit}s{f_ci} in cross-validation")


def density_cost(card: Any, per_exam: bool = True) -> str:
    """How often the density call matched the dataset's label in cross-validation, in words (exam or image)."""
    d = card.to_dict() if hasattr(card, "to_dict") else dict(card or {})
    metrics = d.get("metrics") or {}
    key, unit = ("cv_exam_accuracy", "exams") if per_exam and _entry(metrics, "cv_exam_accuracy") else \
        ("cv_accuracy", "images")
    acc = _entry(metrics, key)
    if acc is None:
        return "the model card holds no cross-validated accuracy"
    ci = (f" (95% CI {_of_100(acc['low'])}-{_of_100(acc['high'])})"
          if acc.get("low") is not None and acc.get("high") is not None else "")
    return f"the call matched the dataset's label for {_of_100(acc['value'])} of 100 {unit}{ci} in cross-validation"


def set_line(members: Sequence[str] | None, coverage: float | None, n_classes: int) -> str:
    """The conformal prediction set in one line; '' when there is none."""
    if not members or coverage is None:
        return ""
    shown = ", ".join(map(str, members))
    if len(members) == 1:
        return f"Prediction set {{{shown}}}: one class at {coverage:.0%} confidence."
    if len(members) >= n_classes:
        return f"Prediction set {{{shown}}}: at {coverage:.0%} confidence the model cannot rule out any class."
    return f"Prediction set {{{shown}}}: the model cannot tell these apart at {coverage:.0%} confidence."


def density_legend(classes: Sequence[str], adapter: str | None = None) -> str:
    """One line saying what the density labels mean: mini-MIAS F/G/D are tissue classes, not BI-RADS; A-D (or 1-4)
    are BI-RADS density categories with their meaning; anything else is the dataset's own labels."""
    cls = [str(c) for c in classes]
    if set(cls) <= set(MIAS_TISSUE) or adapter == "mias":
        return ("mini-MIAS tissue classes, not BI-RADS: " +
                "; ".join(f"{c} {MIAS_TISSUE.get(c, c)}" for c in cls) + ".")
    birads = {str(i + 1): k for i, k in enumerate("ABCD")}
    if all(c.upper() in BIRADS_DENSITY or c in birads for c in cls):
        return ("BI-RADS density: " +
                "; ".join(f"{c} {BIRADS_DENSITY[birads.get(c, c.upper())]}" for c in cls) + ".")
    return "The training dataset's own density labels: " + ", ".join(cls) + "."


def esc(text: Any) -> str:
    import html

    return html.escape(str(text), quote=True)


def bar_html(probabilities: Mapping[str, float], classes: Sequence[str], threshold: float | None = None,
             highlight: str | None = None) -> str:
    """HTML bars, one per class in `classes` order (fixed, never sorted by value); a binary model's positive-class
    bar carries its threshold as a vertical mark."""
    rows = []
    for i, c in enumerate(classes):
        p = float(probabilities.get(c, 0.0))
        mark = ""
        if threshold is not None and len(classes) == 2 and i == 1:
            mark = (f"<span class='thr' style='left:{100 * threshold:.1f}%' "
                    f"title='threshold {threshold:.3f}'></span>")
        hot = " hot" if c == highlight else ""
        rows.append(f"<div class='barrow'><span class='cls'>{esc(c)}</span><span class='bar'><span "
                    f"class='fill{hot}' style='width:{100 * p:.1f}%'></span>{mark}</span>"
                    f"<span class='pct'>{100 * p:.0f}%</span></div>")
    return "".join(rows)


def call_html(title: str, level: str, p: float | None, threshold: float | None, call: str | None, card: Any,
              classes: Sequence[str], extra: str = "") -> str:
    """One call as HTML: title, the positive class's probability bar with the threshold mark, the call in words, its
    cost sentence (`cost_sentence`) and an `extra` line (the prediction set)."""
    positive = str(classes[1])
    probs = {} if p is None else {str(classes[0]): 1 - p, positive: p}
    rel = "" if p is None or threshold is None else (" ≥ " if p >= threshold else " < ")
    why = f" (P({esc(positive)}) {p:.2f}{rel}threshold {threshold:.2f})" if p is not None and threshold else ""
    return (f"<div class='call' data-level='{esc(level)}' data-call='{esc(call)}'><div class='head'>"
            f"<b>{esc(title)}</b>: called <b class='word'>{esc(call_word(call))}</b>{why}</div>"
            f"{bar_html(probs, [str(c) for c in classes], threshold, positive if call == positive else None)}"
            f"<div class='cost'>{esc(sentence(cost_sentence(card, level)))}.</div>"
            + (f"<div class='setline'>{esc(extra)}</div>" if extra else "") + "</div>")


RESULT_CSS = """
#verdict .call,#density-box .call{margin:0 0 6px;padding:4px 6px;border-left:3px solid #888;font-size:13px}
#verdict .call[data-call=malignant]{border-left-color:#d33}
.barrow{display:flex;align-items:center;gap:6px;font-size:12px;line-height:16px}
.barrow .cls{width:96px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.barrow .bar{position:relative;flex:1;height:10px;background:#e8e8e8;border-radius:2px}
.barrow .fill{position:absolute;left:0;top:0;bottom:0;background:#7a8da6;border-radius:2px}
.barrow .fill.hot{background:#d33}
.barrow .thr{position:absolute;top:-3px;bottom:-3px;width:2px;background:#000}
.barrow .pct{width:34px;text-align:right}
.cost,.legend,.setline{font-size:12px;color:#444}
details.views summary{cursor:pointer;font-size:13px}
"""


def box_problem(box: tuple[int, int, int, int] | None, shape: tuple[int, int]) -> str | None:
    """Why a box (x0, y0, x1, y1) cannot be scored on an image of `shape` (H, W), None when it can."""
    if box is None:
        return None
    h, w = shape
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        return (f"The region {format_roi(box)} lies outside the image, which is {w} x {h} pixels: draw the box on "
                f"the image or type corners within 0-{w} (x) and 0-{h} (y).")
    return None


def region_warnings(image: np.ndarray, box: tuple[int, int, int, int] | None) -> list[str]:
    """A warning when the drawn region lies mostly off the breast (its pixels mostly background)."""
    if box is None:
        return []
    x0, y0, x1, y1 = box
    crop = np.asarray(image)[y0:y1, x0:x1]
    if crop.size and float((crop > BREAST_LEVEL).mean()) < OFF_BREAST_SHARE:
        return ["The region lies mostly off the breast (background): its malignancy probability means little; "
                "draw the box around a finding inside the breast."]
    return []


def _image_kind(meta: Any, path: str | None) -> str | None:
    """'contrast' / 'standard' when the file says which (CDD-CESM names: _CM_ subtracted, _DM_ standard; a DICOM of
    modality MG is a standard mammogram), else None."""
    stem = Path(str(path)).stem.upper() if path else ""
    if "_CM_" in f"_{stem}_":
        return "contrast"
    if "_DM_" in f"_{stem}_" or getattr(meta, "modality", None) == "MG":
        return "standard"
    return None


def trained_on(dataset: Mapping[str, Any]) -> str:
    """The known dataset a card's `dataset` entry names (its adapter, else a known name in its path: a manifest of
    CDD-CESM images is CDD-CESM), else the adapter as written ('' when none)."""
    adapter = str(dataset.get("adapter") or "")
    if adapter in ADAPTER_WORDS:
        return adapter
    where = str(dataset.get("path") or "").lower().replace("-", "_")
    return next((k for k in ADAPTER_WORDS if k in where), adapter)


def card_warnings(meta: Any, path: str | None, card: Any, task: str) -> list[str]:
    """Warnings when an image is outside what `card` says its model saw: a view not in its training views, a
    contrast-enhanced image for a model of standard mammograms or the reverse."""
    d = card.to_dict() if hasattr(card, "to_dict") else dict(card or {})
    ds = d.get("dataset") or {}
    out = []
    views = [str(v).upper() for v in (ds.get("views") or {})]
    view = getattr(meta, "view", None) or None
    if view is None and path:
        stem = f"_{Path(str(path)).stem.upper()}_"
        view = next((v for v in ("MLO", "CC") if f"_{v}_" in stem), None)
    if view and views and str(view).upper() not in views:
        out.append(f"This is a {view} view; the {task} model saw only {', '.join(views)} views in training: "
                   "read its result with care.")
    adapter = trained_on(ds)
    kind = _image_kind(meta, path)
    trained = ADAPTER_WORDS.get(adapter, f"{adapter} images")
    if kind == "contrast" and adapter and adapter not in CONTRAST_ADAPTERS:
        out.append(f"This looks like a contrast-enhanced image; the {task} model saw only {trained}: its result "
                   "may not hold.")
    if kind == "standard" and adapter in CONTRAST_ADAPTERS:
        out.append(f"This looks like a standard mammogram; the {task} model saw only {trained}: its result "
                   "may not hold.")
    return out


# --------------------------------------------------------------------------------------------------------------------
# The report a reader keeps: one self-contained HTML page, the JSON it was made from, and the model cards, zipped
# --------------------------------------------------------------------------------------------------------------------
REPORT_CSS = ("body{font:11pt/1.35 sans-serif;max-width:19cm;margin:1cm auto}h1{font-size:16pt}h2{font-size:12pt;"
              "border-bottom:1px solid #ccc}table{border-collapse:collapse;font-size:10pt}td,th{border:1px solid "
              "#ddd;padding:2px 5px;text-align:left}.figs{display:flex;flex-wrap:wrap;gap:6px}.figs figure{margin:0}"
              ".figs img{width:8.5cm}figcaption{font-size:9pt}.warn{color:#a40}")


def figure_bytes(rgb: np.ndarray, max_side: int = 720) -> bytes:
    """uint8 image (h, w[, 3]) -> JPEG bytes (quality 88), shrunk so its longer side is at most `max_side` pixels
    (a PNG of a mammogram with its map costs ~1.7 s to encode here; this costs ~20 ms)."""
    import io

    from PIL import Image

    im = Image.fromarray(np.asarray(rgb))
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _row(cells: Sequence[Any], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{esc('' if c is None else c)}</{tag}>" for c in cells) + "</tr>"


def _fmt(p: Any) -> str:
    return "" if p is None else f"{float(p):.3f}"


def report_html(payload: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The report page from its JSON `payload` (see gradio_app) and JPEG `figures` {caption: bytes}: images with their
    maps, calls with their cost, prediction sets, density, warnings, models with links to their cards; the payload
    itself travels inside the page as JSON. Nothing is fetched; no patient-identifying value is in the payload."""
    import base64
    import json

    b = [f"<h1>Mammoscope report</h1><p>{esc(payload.get('note', ''))}</p>",
         f"<p>Made {esc(payload.get('created'))} by {esc(payload.get('code_version'))}; question: "
         f"{esc(payload.get('question'))}.</p>"]
    if figures:
        b.append("<div class='figs'>" + "".join(
            f"<figure><img alt='{esc(k)}' src='data:image/jpeg;base64,{base64.b64encode(v).decode()}'>"
            f"<figcaption>{esc(k)}</figcaption></figure>" for k, v in figures.items()) + "</div>")
    calls = payload.get("calls") or []
    if calls:
        b.append("<h2>Calls</h2><table>" + _row(["what", "model", "probability", "threshold", "call", "cost"], "th")
                 + "".join(_row([c.get("what"), c.get("task"), _fmt(c.get("p")), _fmt(c.get("threshold")),
                                 call_word(c.get("call")), c.get("cost")]) for c in calls) + "</table>")
    sets = [c for c in calls if c.get("set_line")]
    if sets:
        b.append("<h2>Prediction sets</h2><ul>" + "".join(f"<li>{esc(c['what'])}: {esc(c['set_line'])}</li>"
                                                          for c in sets) + "</ul>")
    density = payload.get("density")
    if density:
        probs = ", ".join(f"{k} {v:.0%}" for k, v in (density.get("probabilities") or {}).items())
        b.append(f"<h2>Density</h2><p>Call <b>{esc(density.get('call'))}</b> ({esc(probs)}); "
                 f"{esc(density.get('cost'))}. {esc(density.get('set_line') or '')}</p>"
                 f"<p>{esc(density.get('legend'))}</p>")
    warns = payload.get("warnings") or []
    b.append("<h2>Warnings</h2>" + ("<ul>" + "".join(f"<li class='warn'>{esc(w)}</li>" for w in warns) + "</ul>"
                                    if warns else "<p>None.</p>"))
    models = payload.get("models") or []
    b.append("<h2>Models</h2><ul>" + "".join(
        f"<li>{esc(m['task'])}: {esc(m['name'])} version {esc(m['version'])}"
        + (f" (<a href='{esc(m['card_file'])}'>model card</a>)" if m.get("card_file") else "") + "</li>"
        for m in models) + "</ul>")
    data = json.dumps(payload, indent=1).replace("</", "<\\/")
    b.append(f"<script type='application/json' id='report-data'>{data}</script>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Mammoscope report</title>"
            f"<style>{REPORT_CSS}</style></head><body>{''.join(b)}</body></html>\n")


def write_report(folder: str | Path, payload: Mapping[str, Any], figures: Mapping[str, bytes],
                 cards: Mapping[str, str]) -> Path:
    """`folder`/mammoscope-report.zip holding report.html, report.json and cards/<file>.html ({file: html})."""
    import json
    import zipfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "mammoscope-report.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report.html", report_html(payload, figures))
        z.writestr("report.json", json.dumps(payload, indent=1))
        for name, text in cards.items():
            z.writestr(name, text)
    return out


def user_message(exc: BaseException) -> str:
    """A message for the page: what is wrong and what to do, without the server-side upload path."""
    if isinstance(exc, ImageReadError):
        text = f"This upload cannot be read: {exc.problem}."
        return text + (f" {exc.hint[0].upper()}{exc.hint[1:]}." if exc.hint else "")
    if isinstance(exc, (MammoscopeError, ValueError)):
        return str(exc)
    return f"Unexpected {type(exc).__name__}: {exc}"


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
