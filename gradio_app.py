"""Mammoscope's Gradio app: upload a mammogram or DICOM, draw a region of interest, see calibrated probabilities.

Thin by design: models come from the registry's champions (``pipeline.serving.predict.load_task_models``), every number
comes from ``pipeline.serving.predict`` and display helpers from ``app_support``. Safe defaults: binds
127.0.0.1, serves no extra paths, caps uploads, queues requests with a concurrency limit, shows no
patient-identifying DICOM values. Run ``mammoscope app`` or ``python gradio_app.py``.

API (``gradio_client``): ``/score_exam`` takes a list of one to four files of one exam and returns the JSON of
``pipeline.serving.exam.ExamResult.to_dict()`` (the numbers of `mammoscope predict` for the same files; laterality and
view from the files' tags, else their names, e.g. ``P1_L_CM_CC.png``). ``/predict`` and ``/explain`` take ``(file, roi)`` where ``roi`` (optional) is
``"x0, y0, x1, y1"`` in pixels of the original image or ``""`` / left out for the whole image, and return plain JSON.
With no region and a screening model loaded, ``/explain`` gives ``explanations["screening"]["map"]``: ``peak_xy``
[x, y] (the map's maximum, original-image pixels), ``value_range`` [min, max] (tile malignancy probabilities over the
breast), ``image_shape`` [H, W] of the original image, ``grid_shape`` [32, 32] and ``grid`` (32 rows of 32 values in
[0, 1], the mean map value of each cell of a 32 x 32 partition of the image; row i spans pixel rows i*H/32 to
(i+1)*H/32, 0 outside the breast): enough to place and draw the map over the image.
Host and port: ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (``app_support.server_address``).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Mapping

import gradio as gr
import numpy as np

from pipeline.serving import predict as P
from app_support import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    server_address,
    ImageCache,
    box_from_corners,
    box_to_display,
    draw_box,
    enlarge,
    format_roi,
    heat_overlay,
    parse_roi,
    processed_view,
    safe_meta,
    to_uint8,
    trust_lines,
    user_message,
)
from pipeline.errors import MammoscopeError
from pipeline.io.imageio import IMAGE_SUFFIXES
from pipeline.config.card_render import about_models
from pipeline.config.tasks import TASKS, get_task

__all__ = ["build_demo", "launch", "load_models", "DEFAULT_HOST", "DEFAULT_PORT"]

log = logging.getLogger(__name__)

MAX_FILE_SIZE = "150mb"  # a full-field 16-bit mammogram is ~25-60 MB uncompressed
CONCURRENCY_LIMIT = 2  # predictions at once (CPU-bound); further requests wait in the queue
QUEUE_MAX_SIZE = 64
TOP_FEATURES = 8
SAMPLE_CACHE_SIZE = 8  # (image, region) pairs whose samples are kept between the events of a click
MAX_EXAM_VIEWS = 4  # files one exam upload may hold (CC and MLO of both breasts)

NOTE = ("**Decision support, not a diagnosis.** Probabilities are calibrated model outputs for research use; a "
        "qualified reader makes every clinical decision.")
HOW_TO = ("1. Upload a mammogram: PNG, JPEG, TIFF, PGM or DICOM (read on the server, windowed and 16-bit preserved). "
          "2. Click two opposite corners on the image to draw a region of interest around a finding (click again to "
          "start a new box; *Whole image* clears it). Results refresh by themselves: density on the whole breast, "
          "malignancy on the region; with no region drawn, the screening model (when one is trained) scores the "
          "whole image and maps where it looks.")


def load_models(tracking_uri: str | None = None, alias: str = "champion") -> tuple[dict[str, Any], dict[str, str]]:
    """({task: Predictor} for each task with a model at `alias`, {task: why not and which command trains it})."""
    models, missing = P.load_available_models(alias=alias, tracking_uri=tracking_uri)
    for message in missing.values():
        log.warning("%s", message)
    return models, missing


def _model_line(loaded: Any) -> str:
    alias = f"@{loaded.alias}" if getattr(loaded, "alias", None) else ""
    return f"`{loaded.name}` version {loaded.version}{alias}"


class _Handlers:
    """The app's event handlers; state between events is a small per-session dict (path, pending click)."""

    def __init__(self, models: Mapping[str, Any], missing: Mapping[str, str], cache: ImageCache) -> None:
        self.models = {task: P.Predictor.from_loaded(m) for task, m in models.items()}
        self.missing = dict(missing)
        self.cache = cache
        self._samples: dict[tuple, dict[str, P.Sample]] = {}  # (path, roi) -> {task: Sample}: once per click
        self._lock = threading.Lock()

    def active(self, box: tuple | None) -> dict[str, Any]:
        """The models that answer for this region: a whole-image model (screening) only when none is drawn."""
        return {t: m for t, m in self.models.items() if box is None or not get_task(t).region_free}

    def samples(self, path: str, loaded: Any, box: tuple | None) -> dict[str, P.Sample]:
        """Each model's sample of the image and region, made once and shared by the events of one click."""
        key = (path, box)
        with self._lock:
            if key in self._samples:
                return self._samples[key]
        made = P.prepare_samples(loaded.image, loaded.meta, self.active(box), roi=box)
        with self._lock:
            while len(self._samples) >= SAMPLE_CACHE_SIZE:
                self._samples.pop(next(iter(self._samples)))
            self._samples[key] = made
        return made

    # --- JSON API -------------------------------------------------------------------------------------------
    def _read(self, file: str | None, roi: str | None):
        if not file:
            raise gr.Error("No file: upload a mammogram (PNG, JPEG, TIFF, PGM or DICOM).")
        try:
            loaded = self.cache.get(file)
            box = parse_roi(roi)
        except (MammoscopeError, ValueError) as exc:
            raise gr.Error(user_message(exc)) from None
        return loaded, box

    def api_predict(self, file: str | None, roi: str | None = None) -> dict[str, Any]:
        """Calibrated probabilities per task, the malignancy call at its operating point, model name/version/alias."""
        loaded, box = self._read(file, roi)
        if not self.models:
            raise gr.Error(" ".join(self.missing.values()) or "no model loaded")
        try:
            results = P.predict_image(loaded.image, loaded.meta, self.active(box), roi=box,
                                      samples=self.samples(file, loaded, box))
        except (MammoscopeError, ValueError) as exc:
            raise gr.Error(user_message(exc)) from None
        return {"results": results, "image": safe_meta(loaded.meta), "roi": list(box) if box else None,
                "missing_models": dict(self.missing)}

    def api_explain(self, file: str | None, roi: str | None = None) -> dict[str, Any]:
        """Top handcrafted-feature contributions (log-odds) and notes per task; the screening model (no region) adds
        its map's summary (``map``: peak, value range, coarse grid; `pipeline.serving.screening.map_summary`)."""
        from pipeline.serving.screening import map_summary

        loaded, box = self._read(file, roi)
        out: dict[str, Any] = {}
        for task, model in self.active(box).items():
            whole = get_task(task).region_free
            try:
                ex = model.explain(self.samples(file, loaded, box)[task], top=TOP_FEATURES, heatmap=whole)
            except (MammoscopeError, ValueError) as exc:
                raise gr.Error(user_message(exc)) from None
            out[task] = {k: v for k, v in ex.items() if not k.startswith("heatmap")}
            if whole and ex.get("heatmap_original") is not None:
                out[task]["map"] = map_summary(ex["heatmap_original"])
        return {"explanations": out, "roi": list(box) if box else None}

    def api_score_exam(self, files: Any) -> dict[str, Any]:
        """One exam (one to four views of one woman's screening) scored by `pipeline.serving.exam.score_exam` with
        the screening and density models: the JSON of its ExamResult (per image, per breast, per exam; density per
        exam; each map as its summary). Files the reader refuses are listed in ``errors``; the rest is scored."""
        from pipeline.serving.exam import exam_image, one_exam, score_exam

        paths = [f if isinstance(f, str) else getattr(f, "path", None) or (f or {}).get("path")
                 for f in (files if isinstance(files, (list, tuple)) else [files] if files else [])]
        paths = [p for p in paths if p]
        if not paths:
            raise gr.Error("No files: upload one to four views (CC / MLO, left / right) of one exam.")
        if len(paths) > MAX_EXAM_VIEWS:
            raise gr.Error(f"{len(paths)} files: an exam is one to {MAX_EXAM_VIEWS} views; upload one exam at a time.")
        exam_models = {t: m for t, m in self.models.items() if get_task(t).levels or get_task(t).exam_pooled}
        if not exam_models:
            raise gr.Error("Screening is not available in this installation (no screening or density model).")
        images, errors = [], []
        for path in paths:
            name = os.path.basename(path)  # what the user uploaded, not the server's copy
            try:
                loaded = self.cache.get(path)
            except (MammoscopeError, ValueError) as exc:
                errors.append(f"{name}: {user_message(exc)}")
                continue
            images.append(exam_image(loaded.image, loaded.meta, name))
        if not images:
            raise gr.Error(" ".join(errors))
        try:
            result = score_exam(exam_models, one_exam(images), maps=True, errors=errors)  # the upload is one exam
        except (MammoscopeError, ValueError) as exc:
            raise gr.Error(user_message(exc)) from None
        return result.to_dict(maps="summary")

    # --- page events ----------------------------------------------------------------------------------------
    def on_upload(self, file: str | None):
        """New file: read it, show it, reset the region; errors go to the status line."""
        empty_state = {"path": None, "pending": None}
        if not file:
            return None, "", empty_state, "", {}
        try:
            loaded = self.cache.get(file)
        except (MammoscopeError, ValueError) as exc:
            return None, "", empty_state, f"⚠️ {user_message(exc)}", {}
        status = "; ".join(loaded.meta.warnings) if loaded.meta.warnings else ""
        return (draw_box(loaded.display), "", {"path": file, "pending": None}, status, safe_meta(loaded.meta))

    def on_select(self, state: dict, evt: gr.SelectData):
        """A click on the image: first click marks a corner, second click closes the box (original pixels)."""
        if not state or not state.get("path"):
            return gr.skip(), gr.skip(), state
        loaded = self.cache.get(state["path"])
        x, y = int(evt.index[0]), int(evt.index[1])
        pending = state.get("pending")
        if pending is None:
            return draw_box(loaded.display, point=(x, y)), gr.skip(), {**state, "pending": [x, y]}
        box = box_from_corners(tuple(pending), (x, y), loaded.factor, loaded.image.shape)
        view = draw_box(loaded.display, box=box_to_display(box, loaded.factor))
        return view, format_roi(box), {**state, "pending": None}

    def on_roi_typed(self, roi: str, state: dict):
        """A region typed into the box: redraw it (errors are reported by the refresh that follows)."""
        if not state or not state.get("path"):
            return gr.skip(), state
        loaded = self.cache.get(state["path"])
        try:
            box = parse_roi(roi)
        except ValueError:
            return gr.skip(), {**state, "pending": None}
        shown = box_to_display(box, loaded.factor) if box else None
        return draw_box(loaded.display, box=shown), {**state, "pending": None}

    def on_whole_image(self, state: dict):
        """Clear the region: malignancy is scored on the whole image (with a note)."""
        if not state or not state.get("path"):
            return gr.skip(), "", state
        return draw_box(self.cache.get(state["path"]).display), "", {**state, "pending": None}

    def refresh(self, state: dict, roi: str):
        """Probabilities for the current image and region (skipped while a box is half drawn)."""
        n = len(TASKS)
        if state and state.get("pending") is not None:
            return [gr.skip()] * (n + 2)
        if not state or not state.get("path"):
            return [None] * n + ["", gr.skip()]  # keeps an upload error on show
        if not self.models:
            return [None] * n + ["", "⚠️ " + " ".join(self.missing.values())]
        try:
            loaded = self.cache.get(state["path"])
            box = parse_roi(roi)
            results = P.predict_image(loaded.image, loaded.meta, self.active(box), roi=box,
                                      samples=self.samples(state["path"], loaded, box))
        except (MammoscopeError, ValueError) as exc:
            return [None] * n + ["", f"⚠️ {user_message(exc)}"]
        labels = []
        for task in TASKS:
            r = results.get(task)
            if r is None:
                labels.append(None)
            elif get_task(task).uses_threshold:
                labels.append(gr.Label(r["probabilities"], label=f"{get_task(task).display_label}: call at the "
                                       f"operating point = {r.get('call') or 'none'}"))
            else:
                labels.append(r["probabilities"])
        return [*labels, self._result_markdown(results, box), ""]

    def _result_markdown(self, results: Mapping[str, Any], box: tuple | None) -> str:
        lines = []
        for task, r in results.items():
            spec = get_task(task)
            model = _model_line(self.models[task])
            if not spec.uses_threshold:
                lines.append(f"**{task.capitalize()}**: most likely **{r['predicted']}** "
                             f"({r['probabilities'][r['predicted']]:.0%}) — model {model}")
                continue
            thr = r.get("threshold")
            target = r.get("target_sensitivity")
            positive = r["classes"][1]
            op = (f"operating point {thr:.3f}" + (f" (chosen for {target:.0%} sensitivity)" if target else "")
                  if thr is not None else "no operating point stored")
            lines.append(f"**{task.capitalize()}**: P({positive}) = **{r['probabilities'][positive]:.3f}**, {op} → "
                         f"call: **{r.get('call') or 'none'}** — model {model}")
            if not spec.whole_breast:
                lines.append(f"Region: {format_roi(box)} (pixels of the original image)" if box else
                             "Region: whole image")
            lines.extend(f"*Note: {n}*" for n in r.get("notes", []))
        lines.extend(trust_lines(results))  # prediction sets, threshold applied and why (app_support.trust_lines)
        lines.extend(f"⚠️ {msg}" for msg in self.missing.values())
        return "\n\n".join(lines)

    def refresh_views(self, state: dict, roi: str):
        """Processed views the models saw, the heat-map overlay and the top feature contributions."""
        if state and state.get("pending") is not None:
            return [gr.skip()] * 3
        if not state or not state.get("path") or not self.models:
            return None, None, ""
        try:
            loaded = self.cache.get(state["path"])
            box = parse_roi(roi)
            samples = self.samples(state["path"], loaded, box)
            density_view = None
            overlay, table = None, ""
            active = self.active(box)
            whole_map = next((t for t in active if get_task(t).region_free), None)
            for task, model in active.items():
                sample = samples[task]
                if task == whole_map:  # no region drawn: the screening map at the original image's scale
                    ex = model.explain(sample, heatmap=True)
                    overlay = enlarge(heat_overlay(loaded.display.astype(np.float32) / 255.0,
                                                   _to_display(ex.get("heatmap_original"), loaded.display.shape)))
                    table = "\n\n".join(f"*{n}*" for n in ex.get("notes", []))
                elif get_task(task).uses_threshold and whole_map is None:  # heat map and contributions
                    ex = model.explain(sample, top=TOP_FEATURES, heatmap=True)
                    overlay = enlarge(heat_overlay(processed_view(sample.array, model), ex.get("heatmap")))
                    table = _contributions_markdown(ex)
                elif density_view is None:
                    density_view = enlarge(to_uint8(processed_view(sample.array, model)))
        except (MammoscopeError, ValueError) as exc:
            return None, None, f"⚠️ {user_message(exc)}"
        return density_view, overlay, table


def _to_display(heat: Any, shape: tuple[int, ...]) -> Any:
    """A heat map (H, W) of the original image resized to the display image's (h, w), scaled to [0, 1]."""
    if heat is None:
        return None
    from skimage.transform import resize

    small = resize(np.asarray(heat, np.float32), shape[:2], order=1, anti_aliasing=True).astype(np.float32)
    peak = float(small.max())
    return small / peak if peak > 0 else small


def _contributions_markdown(ex: Mapping[str, Any]) -> str:
    rows = ex.get("contributions") or []
    lines = [f"Top handcrafted features for the *{ex.get('target_class')}* score "
             "(XGBoost contributions, log-odds; positive pushes towards it):", "",
             "| feature | contribution | value |", "|---|---:|---:|"]
    lines += [f"| {r['feature']} | {r['value']:+.3f} | {r['feature_value']:.4g} |" for r in rows]
    if not rows:
        lines = ["No handcrafted-feature contributions for this model."]
    lines += [""] + [f"*{n}*" for n in ex.get("notes", [])]
    return "\n".join(lines)


def build_demo(models: Mapping[str, Any] | None = None, tracking_uri: str | None = None, *, alias: str = "champion",
               image_cache_size: int = 4) -> gr.Blocks:
    """The app as gr.Blocks; `models` ({task: LoadedModel}) or, if None, the registry's `alias` models."""
    missing: dict[str, str] = {}
    if models is None:
        models, missing = load_models(tracking_uri, alias)
    h = _Handlers(models, missing, ImageCache(max_items=image_cache_size))

    with gr.Blocks(title="Mammoscope", analytics_enabled=False) as demo:
        gr.Markdown("# Mammoscope\n" + NOTE, elem_id="note")
        if missing:
            gr.Markdown("\n\n".join(f"⚠️ {m}" for m in missing.values()), elem_id="missing")
        gr.Markdown("Models: " + ("; ".join(f"{t}: {_model_line(m)}" for t, m in models.items()) or "none"),
                    elem_id="models")
        state = gr.State({"path": None, "pending": None})
        with gr.Row():
            with gr.Column(scale=3):
                upload = gr.File(label="Mammogram (PNG, JPEG, TIFF, PGM or DICOM)", file_types=list(IMAGE_SUFFIXES),
                                 type="filepath", elem_id="upload")
                view = gr.Image(label="Click two corners to draw a region of interest", type="numpy",
                                interactive=False, format="jpeg", elem_id="view", buttons=["fullscreen"])
                with gr.Row():
                    roi = gr.Textbox("", label="Region x0, y0, x1, y1 (original pixels; empty = whole image)",
                                     elem_id="roi", scale=4)  # an initial value makes `roi` optional in the API
                    whole = gr.Button("Whole image", elem_id="whole", scale=1)
                status = gr.Markdown(elem_id="status")
                gr.Markdown(HOW_TO)
            with gr.Column(scale=2):
                task_labels = [gr.Label(label=spec.display_label or name, elem_id=name,
                                        show_heading=not spec.uses_threshold) for name, spec in TASKS.items()]
                summary = gr.Markdown(elem_id="summary")
        with gr.Row():
            processed = gr.Image(label="Processed view (density model input)", interactive=False, elem_id="processed",
                                 format="png")
            heat = gr.Image(label="Region as the malignancy model saw it, heat-map overlay", interactive=False,
                            elem_id="heat", format="png")
            contributions = gr.Markdown(elem_id="contributions")
        with gr.Accordion("Image facts (no patient-identifying values)", open=False):
            facts = gr.JSON(elem_id="facts")
        with gr.Accordion("About this model", open=False, elem_id="about"):  # the loaded models' cards
            gr.Markdown(about_models(h.models), elem_id="model-card")
        api_out = gr.JSON(visible=False)
        api_trigger = gr.Button(visible=False)
        exam_files = gr.File(file_count="multiple", type="filepath", visible=False, file_types=list(IMAGE_SUFFIXES))

        results = [*task_labels, summary, status]
        views = [processed, heat, contributions]
        private = {"api_visibility": "private"}
        (upload.change(h.on_upload, [upload], [view, roi, state, status, facts], **private)
         .then(h.refresh, [state, roi], results, **private)
         .then(h.refresh_views, [state, roi], views, **private))
        (view.select(h.on_select, [state], [view, roi, state], **private)
         .then(h.refresh, [state, roi], results, **private)
         .then(h.refresh_views, [state, roi], views, **private))
        (roi.submit(h.on_roi_typed, [roi, state], [view, state], **private)
         .then(h.refresh, [state, roi], results, **private)
         .then(h.refresh_views, [state, roi], views, **private))
        (whole.click(h.on_whole_image, [state], [view, roi, state], **private)
         .then(h.refresh, [state, roi], results, **private)
         .then(h.refresh_views, [state, roi], views, **private))
        api_trigger.click(h.api_predict, [upload, roi], [api_out], api_name="predict",
                          api_description="Calibrated density and malignancy probabilities for an uploaded image; "
                          "roi 'x0, y0, x1, y1' in original pixels or '' for the whole image. Returns JSON.")
        api_trigger.click(h.api_explain, [upload, roi], [api_out], api_name="explain",
                          api_description="Top handcrafted-feature contributions (log-odds) per task. Returns JSON.")
        api_trigger.click(h.api_score_exam, [exam_files], [api_out], api_name="score_exam",
                          api_description="One exam (1-4 views) scored as `mammoscope predict` scores it: per image "
                          "(alone and with the exam's other views), per breast, per exam, density per exam, map "
                          "summaries. Returns the JSON of pipeline.serving.exam.ExamResult.")
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_MAX_SIZE)
    return demo


def launch(host: str | None = None, port: int | None = None, tracking_uri: str | None = None,
           alias: str = "champion", *, models: Mapping[str, Any] | None = None, image_cache_size: int = 4,
           **launch_kwargs: Any) -> gr.Blocks:
    """Build and start the app on `host`:`port` (blocks unless prevent_thread_lock=True); returns the Blocks.

    None: from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else MAMMOSCOPE_HOST / MAMMOSCOPE_PORT, else 127.0.0.1:7860.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    host, port = server_address(host, port)
    demo = build_demo(models, tracking_uri, alias=alias, image_cache_size=image_cache_size)
    demo.launch(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, share=False,
                footer_links=["api"], **launch_kwargs)
    return demo


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    launch()  # host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (app_support.server_address)
