"""The one place the PACS path scores an exam: `score_exam(models, images) -> ExamResult`.

Until `pipeline.serving.exam.score_exam` (the exam API of docs/architecture.md) lands, this module holds a stand-in
with the same signature and result fields, built from the very functions `mammoscope predict` uses
(`Predictor.score` density first, `pipeline.serving.screening.level_rows`, `explain_screening`), so the swap is one
import. Everything else in pipeline/pacs reads only the contract's fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["ExamKey", "ExamImage", "ImageResult", "LevelResult", "ExamResult", "score_exam"]


@dataclass(frozen=True)
class ExamKey:
    patient_id: str
    exam_id: str
    laterality: str | None
    view: str | None


@dataclass
class ExamImage:
    image: np.ndarray  # float32 (H, W) in [0, 1]
    meta: Any
    path: str | None
    key: ExamKey


@dataclass
class ImageResult:
    sample_id: str
    laterality: str | None
    view: str | None
    p_single: float
    p: float
    threshold: float | None
    call: str | None
    prediction_set: list[str] | None
    heatmap: np.ndarray | None
    warnings: list[str] = field(default_factory=list)
    density: dict | None = None  # this image's density probabilities/call/set (the batch's per-image columns)


@dataclass
class LevelResult:
    id: str
    laterality: str | None
    views: list[str]
    n_images: int
    p: float
    threshold: float | None
    call: str | None
    most_suspicious_breast: str | None = None


@dataclass
class ExamResult:
    exam_id: str
    patient_id: str
    images: list[ImageResult]
    breasts: list[LevelResult]
    exam: LevelResult
    density: dict | None
    model: dict
    errors: list[str] = field(default_factory=list)


def _density_entry(model: Any, proba: np.ndarray, call: str | None, sets: list[str] | None,
                   label: str | None) -> dict[str, Any]:
    return {"classes": list(model.classes), "probabilities": [float(v) for v in proba], "call": call,
            "prediction_set": sets, "prediction_set_label": label}


def score_exam(models: Mapping[str, Any], images: Sequence[ExamImage], *, maps: bool = True) -> ExamResult:
    """Density (per image and per exam: the mean of its images' probabilities, called by arg-max as
    `mammoscope predict`'s .exams.csv) and screening (per image, breast and exam) of one exam's images."""
    import pandas as pd

    from pipeline.serving.predict import density_first
    from pipeline.serving.screening import context_model, explain_screening, level_rows

    if not images:
        raise ValueError("score_exam needs at least one image")
    key0 = images[0].key
    ordered = density_first(list(models.values()))
    density_model = next((m for m in ordered if m.task_spec.density_labels), None)
    screening = next((m for m in ordered if m.task_spec.levels), None)
    if screening is None:
        from pipeline.errors import ModelNotFoundError

        raise ModelNotFoundError("no screening model: the PACS path needs one (mammoscope train "
                                 "experiments/cdd_cesm_screening.yaml)")
    per_image_density: list[dict | None] = [None] * len(images)
    exam_density = None
    context = None
    if density_model is not None:
        samples = [density_model.prepare(im.image, im.meta, path=im.path) for im in images]
        scores = density_model.score(samples)
        calls = [scores.calls[i] or scores.classes[int(np.argmax(scores.probabilities[i]))] for i in range(len(images))]
        context = {"density": calls}
        for i in range(len(images)):
            per_image_density[i] = _density_entry(density_model, scores.probabilities[i], scores.calls[i],
                                                   None if scores.sets is None else scores.sets[i],
                                                   None if scores.set_labels is None else scores.set_labels[i])
        mean = scores.probabilities.mean(axis=0)
        mean = mean / max(float(mean.sum()), 1e-12)
        exam_density = _density_entry(density_model, mean, density_model.classes[int(np.argmax(mean))], None, None)
        exam_density["model"] = {"name": density_model.name, "version": density_model.version}
    samples = [screening.prepare(im.image, im.meta, path=im.path) for im in images]
    scores = screening.score(samples, context)
    single = scores.probabilities[:, 1]
    table = pd.DataFrame({"sample_id": [im.path for im in images],
                          "patient_id": [im.key.patient_id for im in images],
                          "exam_id": [im.key.exam_id for im in images],
                          "laterality": [im.key.laterality for im in images],
                          "view": [im.key.view for im in images]})
    levels = level_rows(table, single, screening.card, context_model(screening), scores.asymmetry)
    positive = screening.classes[1]
    col = f"screening_p_{positive}"
    if "image" in levels:
        img = levels["image"].set_index("sample_id")
        p = [float(img.loc[im.path, col]) for im in images]
        thr = [None if pd.isna(img.loc[im.path, "screening_threshold"]) else float(img.loc[im.path,
                                                                                    "screening_threshold"])
               for im in images]
        call = [img.loc[im.path, "screening_call"] for im in images]
    else:
        p = [float(v) for v in single]
        thr = [screening.threshold] * len(images)
        call = list(scores.calls)
    results = []
    for i, im in enumerate(images):
        heat = None
        warnings = list(getattr(im.meta, "warnings", ()) or ())
        if maps:
            ex = explain_screening(screening, samples[i])
            heat = ex.get("heatmap_original")
            if heat is None:
                warnings += [n for n in ex.get("notes", []) if "no heat map" in n]
        results.append(ImageResult(
            sample_id=str(im.path), laterality=im.key.laterality, view=im.key.view, p_single=float(single[i]),
            p=p[i], threshold=thr[i], call=call[i],
            prediction_set=None if scores.sets is None else list(scores.sets[i]), heatmap=heat, warnings=warnings,
            density=per_image_density[i]))
    breasts = [LevelResult(id=str(r.breast_id), laterality=None if pd.isna(r.laterality) else str(r.laterality),
                           views=[v for v in str(r.views).split(",") if v], n_images=int(r.n_images),
                           p=float(getattr(r, col)), threshold=None if pd.isna(r.screening_threshold)
                           else float(r.screening_threshold), call=r.screening_call)
               for r in levels["breast"].itertuples(index=False)]
    e = levels["exam"].iloc[0]
    exam = LevelResult(id=str(e["exam_id"]), laterality=None,
                       views=[v for v in str(e["views"]).split(",") if v], n_images=int(e["n_images"]),
                       p=float(e[col]), threshold=None if pd.isna(e["screening_threshold"])
                       else float(e["screening_threshold"]), call=e["screening_call"],
                       most_suspicious_breast=str(e["most_suspicious_breast"]))
    d = screening.card.to_dict()
    model = {"name": screening.name, "version": screening.version,
             "card": {"decision": d["decision"], "metrics": d.get("metrics", {})}}
    if exam_density is not None:
        model["density"] = exam_density["model"]
    return ExamResult(exam_id=key0.exam_id, patient_id=key0.patient_id, images=results, breasts=breasts, exam=exam,
                      density=exam_density, model=model)
