"""Mammoscope's Gradio app: upload a mammogram, an exam (one to four views) or a DICOM study as a zip, read the
answer to the question asked, with what each call costs, and keep a report.

The question decides the model: a whole image or exam is answered by the screening model (with density per exam)
through `pipeline.serving.exam.score_exam`, the call `mammoscope predict` makes, so the figures agree; a drawn region
by the malignancy model, and only then. Each call carries its cost in words from the model card (how many of 100
cancers the model found and how many of 100 cancer-free images it flagged in cross-validation, with 95% CIs), the
threshold is drawn on its bar, classes keep the card's order, and the warnings that stand (inverted image, a view or
image kind the model never saw, FOR PROCESSING, a region off the breast) stay beside the result. One click downloads
a report (HTML + the JSON it was made from + the model cards), holding no file name and no patient value.

Thin by design: models come from the registry's champions (``pipeline.serving.predict.load_available_models``),
every number from ``pipeline.serving``, display helpers from ``app_support``. Safe defaults: binds 127.0.0.1, serves
no extra paths, caps uploads, queues requests with a concurrency limit, shows no patient-identifying DICOM value.
Run ``mammoscope app`` or ``python gradio_app.py``.

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
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import gradio as gr
import numpy as np

from pipeline.serving import predict as P
from app_support import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    RESULT_CSS,
    server_address,
    ImageCache,
    esc,
    bar_html,
    box_from_corners,
    box_problem,
    box_to_display,
    call_html,
    card_warnings,
    cost_sentence,
    density_cost,
    density_legend,
    draw_box,
    format_roi,
    heat_overlay,
    parse_roi,
    figure_bytes,
    region_warnings,
    safe_meta,
    sentence,
    set_line,
    trained_on,
    user_message,
    write_report,
)
from pipeline.errors import MammoscopeError
from pipeline.io.imageio import IMAGE_SUFFIXES
from pipeline.config.card_render import about_models, render_html
from pipeline.config.tasks import get_task

__all__ = ["build_demo", "launch", "load_models", "DEFAULT_HOST", "DEFAULT_PORT"]

log = logging.getLogger(__name__)

MAX_FILE_SIZE = "150mb"  # a full-field 16-bit mammogram is ~25-60 MB uncompressed
CONCURRENCY_LIMIT = 2  # predictions at once (CPU-bound); further requests wait in the queue
QUEUE_MAX_SIZE = 64
TOP_FEATURES = 8
SAMPLE_CACHE_SIZE = 8  # (image, region) pairs whose samples are kept between the events of a click (API)
EXAM_CACHE_SIZE = 4  # uploads (read images, scores, maps) kept between the events of the page
REPORTS_KEPT = 16  # report folders kept on the server for their downloads; older ones are deleted
MAX_EXAM_VIEWS = 4  # files one exam upload may hold (CC and MLO of both breasts)

NOTE = ("**Decision support, not a diagnosis.** Calibrated model outputs for research use; a qualified reader makes "
        "every clinical decision.")
HOW_TO = ("**How to use.** Upload one image, the views of one exam (up to four files at once) or a DICOM study as a "
          "zip: the screening model answers for the whole exam (per image, breast and exam) and maps where it looks; "
          "density is called once per exam. Click two opposite corners on the image (or type them) to draw a region "
          "around a finding: the malignancy model answers for that region. *Whole image* clears it. "
          "*Download report* keeps what is on show.")
UPLOAD_TYPES = [*IMAGE_SUFFIXES, ".zip"]


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
        self._exams: dict[tuple, _Exam] = {}  # upload paths -> the exam read, scored and mapped (page events)
        self._lock = threading.Lock()
        self._code_version = ""
        self._reports: list[Path] = []  # report folders written, oldest first (REPORTS_KEPT of them on disk)
        # each model's card as one HTML page: a download in the About panel and a file of every report
        self.card_html = {f"cards/{m.name}-v{m.version}.html": render_html(m.card.to_dict())
                          for m in self.models.values()}
        self.card_files = {t: f"cards/{m.name}-v{m.version}.html" for t, m in self.models.items()}

    def active(self, box: tuple | None) -> dict[str, Any]:
        """The models that answer for this region: with none drawn, the whole-image models (screening, density); with
        one, the lesion model for it (and density, always of the whole breast)."""
        if box is None:
            return self.whole_models()
        return {t: m for t, m in self.models.items() if not get_task(t).region_free}

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
        """Calibrated probabilities per task answering this region (`active`), each call at its operating point,
        model name/version/alias."""
        loaded, box = self._read(file, roi)
        if not self.models:
            raise gr.Error(" ".join(self.missing.values()) or "no model loaded")
        models = self.active(box)
        if not models:
            raise gr.Error("No model in this installation answers a whole image (screening and density are not "
                           "available): give a region 'x0, y0, x1, y1' for the malignancy model.")
        try:
            results = P.predict_image(loaded.image, loaded.meta, models, roi=box,
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
        from pipeline.serving.exam import exam_image, one_exam, score_exam, scorable

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
        ok, failed = scorable(exam_models, images)  # a view without a breast is named; the rest is scored
        errors += [f"{images[i].path}: {user_message(exc)}" for i, exc in failed]
        images = [images[i] for i in ok]
        if not images:
            raise gr.Error(" ".join(errors))
        try:
            result = score_exam(exam_models, one_exam(images), maps=True, errors=errors)  # the upload is one exam
        except (MammoscopeError, ValueError) as exc:
            raise gr.Error(user_message(exc)) from None
        return result.to_dict(maps="summary")

    # --- page events ----------------------------------------------------------------------------------------
    def whole_models(self) -> dict[str, Any]:
        """The models that answer a whole image or exam: density and screening (never the lesion model)."""
        return {t: m for t, m in self.models.items() if get_task(t).region_free or get_task(t).density_labels}

    def exam(self, paths: Sequence[str]) -> "_Exam":
        """The upload `paths` read once (zips unpacked; each refused file named) and kept for the session's events."""
        key = tuple(paths)
        with self._lock:
            if key in self._exams:
                return self._exams[key]
        exam = _read_exam(paths, self.cache)
        if exam.images and self.whole_models():  # a view that reads but holds no breast is named, not scored
            from pipeline.serving.exam import scorable

            ok, failed = scorable(self.whole_models(), exam.images)
            if failed:
                exam = _Exam([exam.loaded[i] for i in ok], [exam.images[i] for i in ok], [exam.labels[i] for i in ok],
                             exam.errors + [f"{exam.images[i].path}: {user_message(exc)}" for i, exc in failed])
        with self._lock:
            while len(self._exams) >= EXAM_CACHE_SIZE:
                self._exams.pop(next(iter(self._exams)))
            self._exams[key] = exam
        return exam

    def scored(self, exam: "_Exam") -> Any:
        """score_exam of the exam by the whole-image models (density, screening), once; None without either."""
        if exam.result is None and exam.images and self.whole_models():
            from pipeline.serving.exam import score_exam

            exam.result = score_exam(self.whole_models(), exam.images, maps=False, errors=exam.errors)
        return exam.result

    def overlay(self, exam: "_Exam", i: int) -> np.ndarray:
        """Display image i with the screening map over it (grey without a screening model), made once."""
        if i not in exam.overlays:
            loaded = exam.loaded[i]
            grey = loaded.display.astype(np.float32) / 255.0
            screening = next((m for t, m in self.models.items() if get_task(t).levels), None)
            heat = None
            if screening is not None:
                from pipeline.serving.screening import explain_screening

                heat = explain_screening(screening, exam.images[i].sample(screening)).get("heatmap_original")
                exam.maps[i] = None if heat is None else _peak(heat)
            exam.overlays[i] = heat_overlay(grey, _to_display(heat, loaded.display.shape))
        return exam.overlays[i]

    def region(self, exam: "_Exam", i: int, box: tuple) -> dict[str, Any] | None:
        """The malignancy model's result for region `box` of image i (density context: the exam's density call)."""
        model = next((m for t, m in self.models.items() if not get_task(t).whole_breast), None)  # region model
        if model is None:
            return None
        key = (i, box)
        if key not in exam.regions:
            result = self.scored(exam)
            density = (result.density or {}).get("call") if result is not None else None
            sample = model.prepare(exam.loaded[i].image, exam.loaded[i].meta, roi=box)
            classes = (result.density or {}).get("classes") if result is not None else None
            context = {"density": [density], "density_classes": classes} if density else None  # as score_tasks
            exam.regions[key] = model.result(sample, context=context)
        return exam.regions[key]

    def on_upload(self, files: Any):
        """New files: read them, show the first, reset the region; refused files are named in the status line."""
        paths = _paths(files)
        empty = {"paths": [], "shown": 0, "pending": None}
        hidden = gr.update(choices=[], value=None, visible=False)
        if not paths:
            return None, hidden, "", empty, "", {}
        exam = self.exam(paths)
        status = "\n\n".join(f"⚠️ {e}" for e in exam.errors)
        if not exam.images:
            return None, hidden, "", empty, status or "⚠️ No image in this upload.", {}
        labels = exam.labels
        chooser = gr.update(choices=labels, value=labels[0], visible=len(labels) > 1)
        return (draw_box(exam.loaded[0].display), chooser, "", {"paths": paths, "shown": 0, "pending": None},
                status, {label: safe_meta(im.meta) for label, im in zip(labels, exam.loaded)})

    def on_choose(self, label: str | None, state: dict):
        """Another view of the exam chosen: show it (its map where there is one), clear the region."""
        if not state or not state.get("paths") or not label:
            return gr.skip(), gr.skip(), state
        exam = self.exam(state["paths"])
        i = exam.labels.index(label) if label in exam.labels else 0
        return draw_box(exam.overlays.get(i, exam.loaded[i].display)), "", {**state, "shown": i, "pending": None}

    def on_select(self, state: dict, evt: gr.SelectData):
        """A click on the image: first click marks a corner, second click closes the box (original pixels)."""
        if not state or not state.get("paths"):
            return gr.skip(), gr.skip(), state
        exam = self.exam(state["paths"])
        i = state.get("shown", 0)
        loaded = exam.loaded[i]
        base = exam.overlays.get(i, loaded.display)
        x, y = int(evt.index[0]), int(evt.index[1])
        pending = state.get("pending")
        if pending is None:
            return draw_box(base, point=(x, y)), gr.skip(), {**state, "pending": [x, y]}
        box = box_from_corners(tuple(pending), (x, y), loaded.factor, loaded.image.shape)
        return draw_box(base, box=box_to_display(box, loaded.factor)), format_roi(box), {**state, "pending": None}

    def on_roi_typed(self, roi: str, state: dict):
        """A region typed (Enter or leaving the field): redraw it; errors are reported by the refresh that follows."""
        if not state or not state.get("paths"):
            return gr.skip(), state
        exam = self.exam(state["paths"])
        i = state.get("shown", 0)
        loaded = exam.loaded[i]
        try:
            box = parse_roi(roi)
        except ValueError:
            box = None
        shown = box_to_display(box, loaded.factor) if box and not box_problem(box, loaded.image.shape) else None
        return draw_box(exam.overlays.get(i, loaded.display), box=shown), {**state, "pending": None}

    def on_whole_image(self, state: dict):
        """Clear the region: the whole image or exam is answered by the screening model again."""
        if not state or not state.get("paths"):
            return gr.skip(), "", state
        exam = self.exam(state["paths"])
        i = state.get("shown", 0)
        return draw_box(exam.overlays.get(i, exam.loaded[i].display)), "", {**state, "pending": None}

    def refresh(self, state: dict, roi: str):
        """The answer to the question asked: the whole exam by screening + density, or a drawn region by the
        malignancy model; with the warnings that stand for it. Outputs: verdict, density, warnings, status."""
        if state and state.get("pending") is not None:
            return [gr.skip()] * 4
        if not state or not state.get("paths"):
            return "", "", "", gr.skip()  # keeps an upload error on show
        exam = self.exam(state["paths"])
        if not exam.images:
            return "", "", "", gr.skip()
        i = min(state.get("shown", 0), len(exam.images) - 1)
        status = [f"⚠️ {e}" for e in exam.errors]
        try:
            result = self.scored(exam)
        except (MammoscopeError, ValueError) as exc:
            return "", "", "", "\n\n".join([*status, f"⚠️ {user_message(exc)}"])
        region = None
        try:
            box = parse_roi(roi)
            problem = box_problem(box, exam.loaded[i].image.shape)
            region = None if box is None or problem else self.region(exam, i, box)
        except (MammoscopeError, ValueError) as exc:  # the region cannot be scored: say why, show no stale call
            box, problem = None, region_message(roi, exc)
        if problem:
            status.append(f"⚠️ {problem}")
            return "", self._density(result), self._warnings(exam, i, None), "\n\n".join(status)
        verdict = self._verdict(exam, result, box, region, problem, i)
        density = self._density(result)
        warn = self._warnings(exam, i, box if region is not None else None)
        return verdict, density, warn, "\n\n".join(status)

    def _shown(self, state: dict, roi: str) -> tuple[Any, int, tuple | None] | None:
        """(exam, shown image index, box in range or None) of a settled state; None while nothing is to show."""
        if not state or not state.get("paths") or state.get("pending") is not None:
            return None
        exam = self.exam(state["paths"])
        if not exam.images:
            return None
        i = min(state.get("shown", 0), len(exam.images) - 1)
        try:
            box = parse_roi(roi)
        except ValueError:
            box = None
        return exam, i, None if box_problem(box, exam.loaded[i].image.shape) else box

    def refresh_map(self, state: dict, roi: str):
        """The view shown with the screening map over it (whole exam) and the drawn box. Output: view."""
        shown = self._shown(state, roi)
        if shown is None:
            return gr.skip()
        exam, i, box = shown
        try:
            overlay = self.overlay(exam, i)
        except (MammoscopeError, ValueError) as exc:
            log.warning("map failed: %s", user_message(exc))
            return gr.skip()
        return draw_box(overlay, box=box_to_display(box, exam.loaded[i].factor) if box else None)

    def refresh_report(self, state: dict, roi: str):
        """The report of what is on show (every view's map made first). Output: the report button."""
        if state and state.get("pending") is not None:
            return gr.skip()
        shown = self._shown(state, roi)
        if shown is None:
            return gr.update(value=None, interactive=False)
        exam, i, box = shown
        try:
            for j in range(len(exam.images)):  # every view's map: the report shows them all
                self.overlay(exam, j)
            report = self.report(exam, box, i)
        except (MammoscopeError, ValueError) as exc:
            log.warning("report failed: %s", user_message(exc))
            return gr.update(value=None, interactive=False)
        return gr.update(value=str(report), interactive=True)

    # --- words ----------------------------------------------------------------------------------------------
    def _model(self, task: str) -> Any:
        return next((m for t, m in self.models.items() if get_task(t).name == task), None)

    def _calls(self, exam: "_Exam", result: Any, box: tuple | None, region: Mapping | None, i: int
               ) -> list[dict[str, Any]]:
        """Every call on show as plain data: what, task, p, threshold, call, classes, cost, set line, level."""
        out: list[dict[str, Any]] = []
        if box is not None and region is not None:
            m = self._model("malignancy")
            pos = region["classes"][1]
            out.append({"what": f"Region {format_roi(box)} of {exam.labels[i]}", "task": "malignancy",
                        "level": "region", "p": region["probabilities"][pos], "threshold": region.get("threshold"),
                        "call": region.get("call"), "classes": region["classes"],
                        "cost": cost_sentence(m.card, "region"),
                        "set_line": set_line(region.get("prediction_set"), region.get("set_coverage"), 2)})
            return out
        screening = self._model("screening")
        if result is None or screening is None or result.exam is None:
            return out
        classes = list(screening.classes)
        e = result.exam
        if len(result.images) > 1:  # one image is answered as an image; an exam per exam, breast and image
            out.append({"what": f"Exam ({len(result.images)} images)", "task": "screening", "level": "exam",
                        "p": e.p, "threshold": e.threshold, "call": e.call, "classes": classes,
                        "cost": cost_sentence(screening.card, "exam"), "set_line": ""})
            for b in result.breasts:
                side = {"L": "Left", "R": "Right"}.get(b.laterality or "", "Breast")
                out.append({"what": f"{side} breast ({', '.join(b.views) or 'view unknown'})", "task": "screening",
                            "level": "breast", "p": b.p, "threshold": b.threshold, "call": b.call,
                            "classes": classes, "cost": cost_sentence(screening.card, "breast"), "set_line": ""})
        coverage = (screening.conformal or {}).get("coverage")
        for label, r in zip(exam.labels, result.images):
            out.append({"what": sentence(label), "task": "screening", "level": "image", "p": r.p,
                        "threshold": r.threshold, "call": r.call, "classes": classes,
                        "cost": cost_sentence(screening.card, "image"),
                        "set_line": set_line(r.prediction_set, coverage, len(classes))})
        return out

    def _verdict(self, exam: "_Exam", result: Any, box: tuple | None, region: Mapping | None,
                 problem: str | None, i: int = 0) -> str:
        """HTML of the calls on show, each with its bar, threshold mark and cost sentence."""
        calls = self._calls(exam, result, box, region, i)
        parts = [call_html(c["what"], c["level"], c["p"], c["threshold"], c["call"], self._model(c["task"]).card,
                           c["classes"], c["set_line"]) for c in calls]
        n_levels = sum(c["level"] != "image" for c in calls)
        if len(calls) - n_levels > 1:  # an exam's image calls fold away under its exam and breast calls
            parts = parts[:n_levels] + ["<details class='views'><summary>Each image</summary>"
                                        + "".join(parts[n_levels:]) + "</details>"]
        if box is not None and not problem:
            if region is None:  # no lesion model: what is on show is the whole image's (screening), said so
                parts.append("<p>Malignancy of a region is not available in this installation"
                             + ("; the calls above are the screening model's for the whole "
                                f"{'exam' if len(exam.images) > 1 else 'image'}" if calls else "") + ".</p>")
            else:
                parts.append("<p class='cost'>Answered by the malignancy model for the drawn region; "
                             "<i>Whole image</i> returns to the screening model.</p>")
        elif box is None and self._model("screening") is None:
            parts.append("<p>Screening is not available in this installation: the whole image is not scored for "
                         "cancer. Draw a box around a finding to have the malignancy model score it.</p>")
        elif box is None:
            parts.append("<p class='cost'>Answered by the screening model for the whole "
                         f"{'exam' if len(exam.images) > 1 else 'image'}; draw a box for the malignancy of a "
                         "region.</p>")
        return "".join(parts)

    def _density(self, result: Any) -> str:
        """HTML of the exam's one density call: bars in the card's class order, set, cost and legend."""
        model = self._model("density")
        if model is None:
            return "<p>Density is not available in this installation.</p>"
        if result is None or not result.density:
            return ""
        d = result.density
        classes = list(model.classes)
        coverage = (model.conformal or {}).get("coverage")
        adapter = trained_on(model.card.dataset or {})
        per = "exam" if d.get("n_images", 1) > 1 else "image"
        return (f"<div class='call' data-level='density'><div class='head'><b>Density ({per})</b>: "
                f"<b class='word'>{esc(d['call'])}</b></div>"
                f"{bar_html(d['probabilities'], classes, None, d['call'])}"
                + (f"<div class='setline'>{esc(set_line(d.get('prediction_set'), coverage, len(classes)))}</div>"
                   if d.get("prediction_set") else "")
                + f"<div class='cost'>{esc(sentence(density_cost(model.card, per == 'exam')))}.</div>"
                f"<div class='legend'>{esc(density_legend(classes, adapter))}</div></div>")

    def _warnings(self, exam: "_Exam", i: int, box: tuple | None) -> str:
        """Markdown of every warning that stands for the result on show (reader, card, region)."""
        return "\n\n".join(f"⚠️ {w}" for w in self.warnings(exam, i, box))

    def warnings(self, exam: "_Exam", i: int, box: tuple | None) -> list[str]:
        """Every warning that stands for the result on show, once, naming the images it concerns in an exam: the
        reader's (inversion, FOR PROCESSING, ...), the cards' (view, image kind) and a region's (off the breast)."""
        found: dict[str, list[str]] = {}
        tasks = ["malignancy"] if box is not None else [t for t in ("screening", "density") if self._model(t)]
        for j, (label, loaded, image) in enumerate(zip(exam.labels, exam.loaded, exam.images)):
            if box is not None and j != i:
                continue
            messages = list(loaded.meta.warnings)
            for task in tasks:
                model = self._model(task)
                if model is not None:
                    messages += card_warnings(loaded.meta, image.path, model.card, task)
            for message in messages:
                found.setdefault(message, []).append(label.split(" (")[0])
        out = [(f"{sentence(', '.join(who))}: " if len(exam.images) > 1 and box is None else "") + message
               for message, who in found.items()]
        if box is not None:
            out += region_warnings(exam.loaded[i].image, box)
        return out

    # --- the report -----------------------------------------------------------------------------------------
    def report(self, exam: "_Exam", box: tuple | None, i: int) -> Path:
        """The report zip (HTML + JSON + model cards) of what is on show: no file name, no patient value."""
        import datetime as dt

        from pipeline.config.card import code_version

        result = self.scored(exam)
        try:
            region = self.region(exam, i, box) if box is not None else None
        except (MammoscopeError, ValueError):  # a region that cannot be scored: the report holds the whole exam
            box, region = None, None
        calls = [{k: v for k, v in c.items() if k != "classes"} for c in self._calls(exam, result, box, region, i)]
        density = None
        if result is not None and result.density:
            model = self._model("density")
            density = {"call": result.density["call"], "probabilities": result.density["probabilities"],
                       "prediction_set": result.density.get("prediction_set"),
                       "set_line": set_line(result.density.get("prediction_set"),
                                            (model.conformal or {}).get("coverage"), len(model.classes)),
                       "cost": density_cost(model.card, result.density.get("n_images", 1) > 1),
                       "legend": density_legend(model.classes, trained_on(model.card.dataset or {}))}
        images = []
        for j, (label, loaded) in enumerate(zip(exam.labels, exam.loaded)):
            meta = safe_meta(loaded.meta)
            images.append({"label": label, **{k: meta[k] for k in ("format", "original_shape", "laterality",
                                                                     "view", "modality", "inverted")},
                           "map_peak_xy": exam.maps.get(j)})
        payload = {"created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                   "code_version": self._code_version or code_version(), "note": NOTE.replace("**", ""),
                   "question": f"region {format_roi(box)} of {exam.labels[i]}" if box else "whole exam",
                   "images": images, "calls": calls, "density": density,
                   "warnings": self.warnings(exam, i, box), "errors": [f"{n} file(s) refused"
                                                                       for n in [len(exam.errors)] if n],
                   "models": [{"task": t, **self.models[t].model_info(), "card_file": self.card_files.get(t)}
                              for t in self.models]}
        self._code_version = payload["code_version"]
        figures = {}
        for j, label in enumerate(exam.labels):
            shown = exam.overlays.get(j, exam.loaded[j].display)
            if box is not None and j == i:
                shown = draw_box(shown, box=box_to_display(box, exam.loaded[j].factor))
            figures[label + (" with the screening map" if j in exam.maps else "")] = figure_bytes(shown)
        folder = Path(tempfile.mkdtemp(prefix="mammoscope-report-"))
        with self._lock:  # every page event writes a report: keep the newest few, not one per click forever
            self._reports = _keep_newest(self._reports, folder)
        return write_report(folder, payload, figures, self.card_html)


@dataclass
class _Exam:
    """One upload read: display copies, ExamImages for score_exam, refused files, and what was computed from them."""

    loaded: list
    images: list
    labels: list[str]
    errors: list[str]
    result: Any = None
    overlays: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)  # image index -> [x, y] of the map's peak (original pixels)
    regions: dict = field(default_factory=dict)


def region_message(roi: str, exc: BaseException) -> str:
    """Why a typed or drawn region cannot be scored, as one sentence about the region (never 'this upload')."""
    problem = getattr(exc, "problem", None) or str(exc)
    problem = problem.replace("the region of interest", "it")
    hint = getattr(exc, "hint", None)
    return (f"The region {roi.strip()} cannot be scored: {problem}." + (f" {sentence(hint)}." if hint else "")
            ).replace("..", ".")


def _paths(files: Any) -> list[str]:
    """The file paths of a gr.File value (one path, a list of paths, or file objects)."""
    if not files:
        return []
    files = files if isinstance(files, (list, tuple)) else [files]
    return [str(getattr(f, "name", f)) for f in files if f]


MAX_ZIP_MEMBERS = 64
MAX_ZIP_BYTES = 600 * 1024 * 1024  # a four-view 16-bit DICOM study is ~100-250 MB


def _keep_newest(kept: Sequence[Path], new: Path, n: int = REPORTS_KEPT) -> list[Path]:
    """`kept` + `new` (oldest first), the folders beyond the newest `n` deleted from disk."""
    folders = [*kept, new]
    for old in folders[:-n]:
        shutil.rmtree(old, ignore_errors=True)
    return folders[-n:]


def _unpack(paths: Sequence[str], folders: list[Path] | None = None) -> tuple[list[str], list[str]]:
    """Paths with each zip replaced by its files (a DICOM study as a zip); (files, errors naming the zip). The
    folders unpacked into are appended to `folders` (the caller deletes them once the files are read)."""
    import zipfile

    out, errors = [], []
    for path in paths:
        if not zipfile.is_zipfile(path):
            out.append(path)
            continue
        name = Path(path).name
        try:
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")
                           and "__MACOSX" not in m.filename and Path(m.filename).name.upper() != "DICOMDIR"]
                if len(members) > MAX_ZIP_MEMBERS or sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                    errors.append(f"{name}: more than {MAX_ZIP_MEMBERS} files or {MAX_ZIP_BYTES >> 20} MB "
                                  "unpacked; upload one exam (up to four views) at a time")
                    continue
                folder = Path(tempfile.mkdtemp(prefix="mammoscope-zip-"))
                if folders is not None:
                    folders.append(folder)
                for k, m in enumerate(sorted(members, key=lambda m: m.filename)):
                    target = folder / f"{k:03d}_{Path(m.filename).name}"  # flat: no path from the zip is trusted
                    target.write_bytes(z.read(m))
                    out.append(str(target))
        except (zipfile.BadZipFile, OSError) as exc:
            errors.append(f"{name}: this zip cannot be read ({exc}); upload the image files themselves")
    return out, errors


def _label(i: int, meta: Any, key: Any) -> str:
    side = {"L": "left", "R": "right"}.get(getattr(key, "laterality", None) or "", "")
    view = getattr(key, "view", None) or getattr(meta, "view", None) or ""
    return f"image {i + 1}" + (f" ({' '.join(x for x in (side, view) if x)})" if side or view else "")


def _read_exam(paths: Sequence[str], cache: ImageCache) -> _Exam:
    """Read every file once (display copy + ExamImage with its key); refused files become errors naming them."""
    from pipeline.serving.exam import exam_image, one_exam

    unpacked: list[Path] = []
    files, errors = _unpack(paths, unpacked)
    loaded, images = [], []
    try:
        for path in files:
            try:
                item = cache.get(path)
            except (MammoscopeError, ValueError) as exc:
                errors.append(f"{Path(path).name}: {user_message(exc)}")
                continue
            loaded.append(item)
            images.append(exam_image(item.image, item.meta, Path(path).name))  # what the user gave, not our copy
    finally:  # read into memory: a zip's unpacked files (up to MAX_ZIP_BYTES) are not kept on the server
        for folder in unpacked:
            shutil.rmtree(folder, ignore_errors=True)
    if len(images) > MAX_EXAM_VIEWS:
        errors.append(f"{len(images)} images given: an exam has up to {MAX_EXAM_VIEWS} views; the first {MAX_EXAM_VIEWS} "
                      "are scored")
        loaded, images = loaded[:MAX_EXAM_VIEWS], images[:MAX_EXAM_VIEWS]
    images = one_exam(images)  # files uploaded together are one exam (as /score_exam takes them)
    labels = [_label(i, item.meta, im.key) for i, (item, im) in enumerate(zip(loaded, images))]
    return _Exam(loaded, images, labels, errors)


def _peak(heat: Any) -> list[int]:
    """[x, y] of a map's maximum (original pixels)."""
    y, x = np.unravel_index(int(np.argmax(heat)), np.shape(heat))
    return [int(x), int(y)]


def _to_display(heat: Any, shape: tuple[int, ...]) -> Any:
    """A heat map (H, W) of the original image resized to the display image's (h, w), scaled to [0, 1]."""
    if heat is None:
        return None
    from skimage.transform import resize

    heat = np.asarray(heat, np.float32)
    if heat.shape[0] > 2 * shape[0]:  # block means first: resizing a full-field map with anti-aliasing is slow
        f = heat.shape[0] // shape[0]
        hh, ww = heat.shape[0] // f * f, heat.shape[1] // f * f
        heat = heat[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3))
    small = resize(heat, shape[:2], order=1, anti_aliasing=False).astype(np.float32)
    peak = float(small.max())
    return small / peak if peak > 0 else small


def _how_to_train(missing: Mapping[str, str]) -> str:
    """The About panel's lines on models this installation lacks: which command trains each."""
    if not missing:
        return ""
    return "**Models not installed.**\n\n" + "\n\n".join(f"- {task}: {msg}" for task, msg in missing.items())


CSS = RESULT_CSS + """
#view img{max-height:560px;object-fit:contain}
#note p{margin:0}
#upload{min-height:0}
"""


def build_demo(models: Mapping[str, Any] | None = None, tracking_uri: str | None = None, *, alias: str = "champion",
               image_cache_size: int = 4) -> gr.Blocks:
    """The app as gr.Blocks; `models` ({task: LoadedModel}) or, if None, the registry's `alias` models."""
    missing: dict[str, str] = {}
    if models is None:
        models, missing = load_models(tracking_uri, alias)
    h = _Handlers(models, missing, ImageCache(max_items=image_cache_size))
    card_dir = Path(tempfile.mkdtemp(prefix="mammoscope-cards-"))
    for name, text in h.card_html.items():
        (card_dir / Path(name).name).write_text(text, encoding="utf-8")

    with gr.Blocks(title="Mammoscope", analytics_enabled=False) as demo:
        gr.Markdown("**Mammoscope** · " + NOTE + " " + (
            "Models: " + "; ".join(f"{t} {_model_line(m)}" for t, m in h.models.items()) if h.models else
            "No model is installed."), elem_id="note")
        if missing:
            gr.Markdown(" ".join(f"{t.capitalize()} is not available in this installation." for t in missing),
                        elem_id="missing")
        state = gr.State({"paths": [], "shown": 0, "pending": None})
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=420):
                upload = gr.File(label="Mammogram(s): PNG, JPEG, TIFF, PGM, DICOM, or a zip of one study",
                                 file_count="multiple", file_types=UPLOAD_TYPES, type="filepath", elem_id="upload",
                                 height=90)
                chooser = gr.Radio([], label="View shown", visible=False, elem_id="shown")
                view = gr.Image(label="Click two corners to draw a region", type="numpy", interactive=False,
                                format="jpeg", elem_id="view", buttons=["fullscreen"], height=470)
                with gr.Row():
                    roi = gr.Textbox("", label="Region x0, y0, x1, y1 (original pixels; empty = whole image)",
                                     elem_id="roi", scale=4, max_lines=1)  # an initial value: `roi` optional in API
                    whole = gr.Button("Whole image", elem_id="whole", scale=1, size="sm")
            with gr.Column(scale=2, min_width=380):
                verdict = gr.HTML(elem_id="verdict")
                warnings = gr.Markdown(elem_id="warnings")
                status = gr.Markdown(elem_id="status")
                density = gr.HTML(elem_id="density-box")
                report = gr.DownloadButton("Download report (HTML + JSON)", value=None, interactive=False,
                                           elem_id="report", size="sm")
        with gr.Accordion("About the models and how to use the app", open=False, elem_id="about"):
            gr.Markdown(HOW_TO)
            if missing:
                gr.Markdown(_how_to_train(missing), elem_id="how-to-train")
            with gr.Row():
                for task, m in h.models.items():
                    gr.DownloadButton(f"Model card: {task} (HTML)", value=str(card_dir / Path(h.card_files[task]).name),
                                      elem_id=f"card-{task}", size="sm")
            gr.Markdown(about_models(h.models), elem_id="model-card")
        with gr.Accordion("Image facts (no patient-identifying values)", open=False):
            facts = gr.JSON(elem_id="facts")
        api_out = gr.JSON(visible=False)
        api_file = gr.File(visible=False, type="filepath")  # the API's one file (the page takes several)
        api_trigger = gr.Button(visible=False)
        exam_files = gr.File(file_count="multiple", type="filepath", visible=False, file_types=list(IMAGE_SUFFIXES))

        private = {"api_visibility": "private"}
        (upload.change(h.on_upload, [upload], [view, chooser, roi, state, status, facts], **private)
         .then(h.refresh, [state, roi], [verdict, density, warnings, status], **private)
         .then(h.refresh_map, [state, roi], [view], **private)
         .then(h.refresh_report, [state, roi], [report], **private))
        (chooser.input(h.on_choose, [chooser, state], [view, roi, state], **private)
         .then(h.refresh, [state, roi], [verdict, density, warnings, status], **private)
         .then(h.refresh_map, [state, roi], [view], **private)
         .then(h.refresh_report, [state, roi], [report], **private))
        (view.select(h.on_select, [state], [view, roi, state], **private)
         .then(h.refresh, [state, roi], [verdict, density, warnings, status], **private)
         .then(h.refresh_map, [state, roi], [view], **private)
         .then(h.refresh_report, [state, roi], [report], **private))
        for typed in (roi.submit, roi.blur):  # a typed region applies on Enter and on leaving the field
            (typed(h.on_roi_typed, [roi, state], [view, state], **private)
             .then(h.refresh, [state, roi], [verdict, density, warnings, status], **private)
             .then(h.refresh_map, [state, roi], [view], **private)
         .then(h.refresh_report, [state, roi], [report], **private))
        (whole.click(h.on_whole_image, [state], [view, roi, state], **private)
         .then(h.refresh, [state, roi], [verdict, density, warnings, status], **private)
         .then(h.refresh_map, [state, roi], [view], **private)
         .then(h.refresh_report, [state, roi], [report], **private))
        api_trigger.click(h.api_predict, [api_file, roi], [api_out], api_name="predict",
                          api_description="Calibrated probabilities for an uploaded image: '' for the whole image "
                          "(screening and density), or roi 'x0, y0, x1, y1' in original pixels for the malignancy of "
                          "that region (and density). Returns JSON.")
        api_trigger.click(h.api_explain, [api_file, roi], [api_out], api_name="explain",
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
                footer_links=["api"], css=CSS, **launch_kwargs)
    return demo


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    launch()  # host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (app_support.server_address)
