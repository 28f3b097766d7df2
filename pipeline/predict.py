"""The one predict path: registered models -> sample -> calibrated probabilities, call and explanation.

Used by the Gradio app, `mammoscope predict` and the tests. Models come from the registry (`registry.load_model`)
with the metadata they were logged with (task, classes, threshold, sample parameters), so an image is prepared
exactly as the training samples were (pipeline.samples).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from pipeline.errors import MammoscopeError, ModelNotFoundError

__all__ = [
    "TASKS",
    "DEFAULT_MODEL_NAMES",
    "DEFAULT_EXPERIMENTS",
    "load_task_models",
    "normalize_roi",
    "prepare_sample",
    "decide",
    "predict_image",
    "predict_paths",
    "explain",
]

log = logging.getLogger(__name__)

TASKS = ("density", "malignancy")
DEFAULT_MODEL_NAMES = {"density": "mammoscope-density", "malignancy": "mammoscope-malignancy"}
DEFAULT_EXPERIMENTS = {"density": "experiments/mias_density_fused.yaml",
                       "malignancy": "experiments/mias_malignancy_fused.yaml"}
NO_ROI_NOTE = ("no ROI given: the whole breast was scored, but this model was trained on lesion crops; draw a box "
               "around the finding for a meaningful malignancy probability")


def load_task_models(tasks: Sequence[str] = TASKS, alias: str = "champion", tracking_uri: str | None = None,
                     names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """{task: registry LoadedModel} for `models:/NAME@alias`; ModelNotFoundError naming the command that trains one."""
    import registry

    registry.configure(tracking_uri)
    names = {**DEFAULT_MODEL_NAMES, **(names or {})}
    out = {}
    for task in tasks:
        if task not in TASKS:
            raise ModelNotFoundError(f"unknown task {task!r}; use one of {list(TASKS)}")
        try:
            out[task] = registry.load_model(names[task], alias)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"no {task} model at models:/{names[task]}@{alias} ({exc}). Train one with "
                f"`mammoscope train {DEFAULT_EXPERIMENTS[task]}` (or `mammoscope main` for both)") from exc
    return out


def normalize_roi(roi: Any) -> dict[str, Any] | None:
    """An ROI as table columns: (x0, y0, x1, y1) or {"x0",..} -> box; {"cx", "cy", "r"} -> circle; None -> None."""
    if roi is None:
        return None
    if isinstance(roi, Mapping):
        if {"cx", "cy", "r"} <= set(roi):
            return {"roi_kind": "circle", "roi_cx": float(roi["cx"]), "roi_cy": float(roi["cy"]),
                    "roi_r": float(roi["r"])}
        if {"x0", "y0", "x1", "y1"} <= set(roi):
            roi = (roi["x0"], roi["y0"], roi["x1"], roi["y1"])
        else:
            raise ValueError(f"ROI {dict(roi)!r}: give x0, y0, x1, y1 (a box) or cx, cy, r (a circle) in pixels")
    values = [float(v) for v in roi]
    if len(values) != 4:
        raise ValueError(f"ROI {roi!r}: a box is (x0, y0, x1, y1) in pixels of the original image")
    x0, y0, x1, y1 = values
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"ROI {roi!r} is empty; draw a box at least one pixel wide and high")
    return {"roi_kind": "box", "roi_x0": x0, "roi_y0": y0, "roi_x1": x1, "roi_y1": y1}


def prepare_sample(image: np.ndarray, meta: Any, task: str, sample_params: Mapping[str, Any],
                   roi: Any = None, path: str | Path | None = None) -> np.ndarray:
    """The model input for one image, as in training: float32 (S, S) in [0, 1] (S = sample_params["size"]).

    Malignancy with no ROI: the whole breast (the density-style sample) is returned; predict_image notes it.
    An image too small to be a mammogram raises ImageReadError naming `path` (pipeline.samples.check_image_size).
    """
    from pipeline.samples import make_sample

    laterality = getattr(meta, "laterality", None) if meta is not None else None
    size = int(sample_params.get("size", 224))
    crop = {k: float(sample_params[k]) for k in ("context", "min_side") if k in sample_params}
    row: dict[str, Any] = {"sample_id": "input", "laterality": laterality}
    if path is not None:
        row["path"] = str(path)
    region = normalize_roi(roi)
    if task == "malignancy" and region is not None:
        row.update(region)
        return make_sample(np.asarray(image, dtype=np.float32), row, "malignancy", laterality=laterality,
                           size=size, **crop)
    return make_sample(np.asarray(image, dtype=np.float32), row, "density", laterality=laterality, size=size,
                       **crop)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _threshold(metadata: Mapping[str, Any]) -> float | None:
    """The model's operating point from its metadata, None when it has none (missing or NaN)."""
    value = metadata.get("threshold")
    return None if value is None else _nan_to_none(float(value))


def decide(proba: np.ndarray, metadata: Mapping[str, Any]) -> list[str | None]:
    """The call for each row of `proba` (n, k), columns in metadata["classes"] order: for a malignancy model the
    positive class (classes[1]) when its probability reaches metadata["threshold"], else classes[0] (None for every
    row when the model has no operating point); for a density model the ordinal cut-points of
    metadata["cutpoints"] on the expected class (pipeline.ordinal) when it has them, else the most probable class."""
    proba = np.asarray(proba, dtype=float)
    classes = [str(c) for c in metadata.get("classes") or []]
    if proba.ndim != 2 or proba.shape[1] != len(classes) or not classes:
        raise ValueError(f"proba must have shape (n, {len(classes)}) for classes {classes}. "
                         f"Got {proba.shape} instead.")
    if metadata.get("task") == "malignancy":
        threshold = _threshold(metadata)
        if threshold is None or len(classes) != 2:
            return [None] * len(proba)
        return [classes[1] if p >= threshold else classes[0] for p in proba[:, 1]]
    cuts = metadata.get("cutpoints")
    if cuts is not None and len(cuts) == len(classes) - 1:  # #16: ordinal decision stored by train
        from pipeline.ordinal import apply_cutpoints

        return [classes[i] for i in apply_cutpoints(proba, cuts)]
    return [classes[i] for i in np.argmax(proba, axis=1)]


def predict_image(image: np.ndarray, meta: Any, models: Mapping[str, Any], roi: Any = None,
                  path: str | Path | None = None) -> dict[str, Any]:
    """{task: {classes, probabilities (sum to 1), predicted, call/threshold (malignancy), model, note}} (JSON-able).

    `predicted` is the most probable class; the malignancy `call` follows `decide` (the model's operating point).
    `path` (the image's file, if any) names it in errors.
    """
    out: dict[str, Any] = {}
    for task, loaded in models.items():
        md = loaded.metadata
        classes = [str(c) for c in md.get("classes", [])]
        sample = prepare_sample(image, meta, md.get("task", task), md.get("sample_params", {}), roi, path=path)
        proba = np.asarray(loaded.pipeline.predict_proba(sample.reshape(1, -1))[0], dtype=float)
        proba = proba / proba.sum()
        rule = {**md, "task": md.get("task", task), "classes": classes}
        entry: dict[str, Any] = {
            "classes": classes,
            "probabilities": {c: float(p) for c, p in zip(classes, proba)},
            "predicted": classes[int(np.argmax(proba))] if classes else None,
            "model": {"name": loaded.name, "version": int(loaded.version), "alias": loaded.alias,
                      "experiment": md.get("experiment")},
            "notes": [],
        }
        if md.get("task", task) == "malignancy":
            entry["threshold"] = _threshold(md)
            entry["target_sensitivity"] = md.get("target_sensitivity")
            p_pos = float(proba[1]) if len(proba) > 1 else float("nan")
            entry["call"] = decide(proba[None, :], rule)[0] if classes else None
            entry["probability_malignant"] = p_pos
            if roi is None:
                entry["notes"].append(NO_ROI_NOTE)
        elif md.get("cutpoints") is not None and classes:  # #16: the ordinal density call, beside the arg-max
            entry["call"] = decide(proba[None, :], rule)[0]
        out[task] = entry
    return out


def predict_paths(paths: Iterable[str | Path], models: Mapping[str, Any], rois: Mapping[str, Any] | None = None
                  ) -> Iterator[dict[str, Any]]:
    """One result dict per path, in order: {"path", "ok", "result" | "error"}; unreadable files do not stop it."""
    from pipeline.imageio import read_image

    for path in paths:
        key = str(path)
        try:
            image, meta = read_image(path)
            result = predict_image(image, meta, models, roi=(rois or {}).get(key), path=key)
            yield {"path": key, "ok": True, "meta": {"laterality": meta.laterality, "view": meta.view,
                                                      "format": meta.format}, "result": result}
        except (MammoscopeError, ValueError) as exc:
            yield {"path": key, "ok": False, "error": str(exc)}


def _feature_names(pipeline: Any) -> list[str]:
    """Names of the classifier's input columns (after the union and any selection)."""
    names = np.asarray(pipeline[:-2].get_feature_names_out(), dtype=object) if len(pipeline) > 2 else None
    select = pipeline.steps[-2][1]
    if names is not None and select != "passthrough" and hasattr(select, "get_support"):
        names = names[select.get_support()]
    return [str(n) for n in names] if names is not None else []


def explain(image: np.ndarray, meta: Any, loaded: Any, roi: Any = None, top: int = 10,
            heatmap: bool = True) -> dict[str, Any]:
    """Top XGBoost contributions (log-odds, averaged over the calibration ensemble) of named handcrafted features for
    the predicted class, and a heat map (S, S) in [0, 1]: Grad-CAM when the CNN part has a fine-tuned head, else the
    occlusion sensitivity of the whole model (`occlusion_map`)."""
    from pipeline.model import final_classifier

    md = loaded.metadata
    task = md.get("task")
    pipe = loaded.pipeline
    sample = prepare_sample(image, meta, task, md.get("sample_params", {}), roi)
    x = sample.reshape(1, -1)
    proba = pipe.predict_proba(x)[0]
    target = int(np.argmax(proba)) if task != "malignancy" else 1
    Z = pipe[:-1].transform(x)
    clf = final_classifier(pipe)
    contribs = []
    for base in clf.base_estimators():
        if getattr(base, "model_", None) is None:
            continue
        c = np.asarray(base.contributions(Z))
        if c.ndim == 3:  # (n, k, d + 1): the target class's row (base classes are encoded 0..k-1)
            cls = list(base.classes_)
            c = c[0, cls.index(target)] if target in cls else np.zeros(c.shape[-1])
        else:
            c = c[0]
        contribs.append(c[:-1])
    names = _feature_names(pipe)
    result: dict[str, Any] = {"task": task, "target_class": (md.get("classes") or [None] * (target + 1))[target],
                              "contributions": [], "heatmap": None, "notes": []}
    if contribs and names:
        mean = np.mean(contribs, axis=0)
        order = [i for i in np.argsort(-np.abs(mean)) if not names[i].startswith("cnn")]
        result["contributions"] = [{"feature": names[i].removeprefix("handcrafted__"), "value": float(mean[i]),
                                    "feature_value": float(Z[0, i])} for i in order[:top]]
    if heatmap:
        cnn = dict(pipe.named_steps["features"].transformer_list).get("cnn")
        emb = getattr(cnn, "transformer_", cnn)
        if emb is None or getattr(emb, "head_", None) is None or not hasattr(emb, "classes_"):
            result["heatmap"] = occlusion_map(pipe, sample, target)
            result["notes"].append("heat map: occlusion sensitivity of the whole model (how much the score falls when "
                                   "each region is hidden); a fine-tuned CNN gives Grad-CAM instead")
        else:
            from cnn.gradcam import grad_cam

            pre = pipe.named_steps["preprocess"]
            img = (pre.transform(x) if pre != "passthrough" else x).reshape(sample.shape)
            result["heatmap"] = grad_cam(emb, img, target)
    return result


def occlusion_map(pipe: Any, sample: np.ndarray, target: int, grid: int = 4) -> np.ndarray:
    """Occlusion sensitivity (S, S) float32 in [0, 1]: drop of P(target) when each of grid x grid half-overlapping
    patches of `sample` (S, S) is replaced by the sample's mean, bilinearly smoothed; zeros when nothing lowers it.

    Model-agnostic (Zeiler & Fergus 2014): one batched predict_proba of (2 * grid - 1) ** 2 occluded copies.
    """
    from skimage.transform import resize

    size = sample.shape[0]
    side, step = size // grid, size // (2 * grid)
    starts = range(0, size - side + 1, step)
    fill = float(sample.mean())
    batch = []
    for top in starts:
        for left in starts:
            occluded = sample.copy()
            occluded[top : top + side, left : left + side] = fill
            batch.append(occluded.ravel())
    base = float(pipe.predict_proba(sample.reshape(1, -1))[0, target])
    drops = base - pipe.predict_proba(np.stack(batch))[:, target]
    n = len(starts)
    heat = np.zeros((size, size), np.float32)
    counts = np.zeros((size, size), np.float32)
    for k, drop in enumerate(np.maximum(drops, 0.0)):
        top, left = starts[k // n], starts[k % n]
        heat[top : top + side, left : left + side] += drop
        counts[top : top + side, left : left + side] += 1
    heat = heat / np.maximum(counts, 1)
    heat = resize(resize(heat, (n, n), anti_aliasing=True), (size, size), order=1).astype(np.float32)
    peak = float(heat.max())
    return heat / peak if peak > 0 else np.zeros_like(heat)
