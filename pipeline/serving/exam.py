"""Serving an exam: one call scores one exam's images (one to four views, two breasts) with every loaded model and
returns per image (alone and beside its exam's other views), per breast and per exam probabilities, calls,
prediction sets and maps, plus density per exam. `mammoscope predict`, the app and the PACS command call only this,
so their figures agree to the bit.

- `read_exam_images(paths)`: files -> `ExamImage`s (pixels, safe meta, exam key) and the errors of those refused.
- `Predictor.score_exam(images)` (the screening model) and `score_exam(models, images)` (density first: its calls
  feed the other models' decision rules, `pipeline.serving.predict.score_tasks`; density per exam; screening levels).
- `ExamResult.rows()`: the image / breast / exam rows `mammoscope predict` writes to
  ``<out>.screening.{images,breasts,exams}.csv``; `ExamResult.to_dict()`: the JSON of the app and PACS.

Density per exam is the mean of the exam's image probabilities (`pipeline.evaluation.metrics.exam_average`, the
exam metric of training: BI-RADS gives one density per exam), called by the density model's own decision rule (its
ordinal cut-points where the card has them), so one density call is used everywhere.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import ImageReadError, MammoscopeError
from pipeline.io.exams import ExamKey, key_from_meta, level_ids

__all__ = ["ExamKey", "ExamImage", "ImageResult", "LevelResult", "ExamResult", "read_exam_images", "score_exam",
           "predictor_score_exam", "exam_levels", "exam_image", "one_exam", "image_rows_columns", "density_of_exam",
           "scorable", "not_a_view", "SINGLE_EXAM"]

SINGLE_EXAM = "exam"  # exam id of files given together with no patient or study id (an upload is one exam)


@dataclass
class ExamImage:
    """One input view, read: float32 (H, W) image in [0, 1] (None where only its prepared `samples` travel, as from
    `mammoscope predict`'s workers), its safe meta, what the user gave (path / instance UID), its exam key, and
    the model inputs made from it by task (made on first use)."""

    image: np.ndarray | None
    meta: Any
    path: str | None
    key: ExamKey
    samples: dict[str, Any] = field(default_factory=dict)

    def sample(self, predictor: Any) -> Any:
        """The `predictor`'s Sample of this image (pipeline.serving.predict.SampleSpec.prepare), made once."""
        made = self.samples.get(predictor.task)
        if made is None:
            if self.image is None:
                raise MammoscopeError(f"{self.path}: no pixels and no prepared {predictor.task} sample to score")
            made = predictor.prepare(self.image, self.meta, path=self.path)
            self.samples[predictor.task] = made
        return made


@dataclass
class ImageResult:
    """One image of an exam: the screening probability alone (`p_single`) and beside its exam's other views (`p`),
    its operating point, call and conformal set, the map (H, W) on the original image masked to the breast, and
    `outputs`, the image's row of `mammoscope predict`'s results file (every task's columns)."""

    sample_id: str
    laterality: str | None
    view: str | None
    p_single: float | None
    p: float | None
    threshold: float | None
    call: str | None
    prediction_set: list[str] | None
    heatmap: np.ndarray | None
    warnings: list[str]
    breast_id: str | None = None
    exam_id: str | None = None
    context_views: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LevelResult:
    """One breast (its views fused) or the exam (its most suspicious breast) with the level's operating point."""

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
    """Everything one exam's scoring gives; `breasts` / `exam` are empty / None without a screening model."""

    exam_id: str
    patient_id: str
    images: list[ImageResult]
    breasts: list[LevelResult]
    exam: LevelResult | None
    density: dict[str, Any] | None
    model: dict[str, Any]
    errors: list[str] = field(default_factory=list)

    def rows(self) -> dict[str, pd.DataFrame]:
        """{"image", "breast", "exam"}: exactly the rows and columns `mammoscope predict` writes to
        ``<out>.screening.{images,breasts,exams}.csv`` for this exam (empty without a screening model)."""
        if self.exam is None:
            return {}
        column = f"screening_p_{self.model['classes'][1]}"
        tag = {"screening_model": self.model["name"], "screening_version": self.model["version"]}
        image = pd.DataFrame([{"sample_id": r.sample_id, "breast_id": r.breast_id, "exam_id": r.exam_id,
                               "single_image_p": r.p_single, "context_views": r.context_views, column: r.p,
                               "screening_threshold": r.threshold, "screening_call": r.call, **tag}
                              for r in self.images])
        breast = pd.DataFrame([{"breast_id": b.id, "patient_id": self.patient_id, "n_images": b.n_images,
                                "views": ",".join(b.views), "exam_id": self.exam.id, "laterality": b.laterality,
                                column: b.p, "screening_threshold": b.threshold, "screening_call": b.call, **tag}
                               for b in self.breasts])
        e = self.exam
        exam = pd.DataFrame([{"exam_id": e.id, "patient_id": self.patient_id, "n_images": e.n_images,
                              "views": ",".join(e.views), "most_suspicious_breast": e.most_suspicious_breast,
                              column: e.p, "screening_threshold": e.threshold, "screening_call": e.call, **tag}])
        return {"image": image, "breast": breast, "exam": exam}

    def to_dict(self, maps: str = "summary") -> dict[str, Any]:
        """Plain JSON: every field; each heat map as `map_summary` (peak, value range, coarse grid) with
        maps="summary", left out with maps="none"."""
        from dataclasses import asdict

        from pipeline.serving.screening import map_summary

        images = []
        for r in self.images:
            entry = {k: v for k, v in asdict(replace(r, heatmap=None)).items() if k != "heatmap"}
            entry["outputs"] = {k: _plain(v) for k, v in r.outputs.items()}
            if maps == "summary":
                entry["map"] = None if r.heatmap is None else map_summary(r.heatmap)
            images.append(entry)
        return {"exam_id": self.exam_id, "patient_id": self.patient_id, "images": images,
                "breasts": [asdict(b) for b in self.breasts],
                "exam": None if self.exam is None else asdict(self.exam),
                "density": self.density, "model": self.model, "errors": list(self.errors)}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def image_rows_columns(positive: str) -> list[str]:
    """The columns of ``<out>.screening.images.csv``."""
    return ["sample_id", "breast_id", "exam_id", "single_image_p", "context_views", f"screening_p_{positive}",
            "screening_threshold", "screening_call", "screening_model", "screening_version"]


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------
def exam_image(image: np.ndarray, meta: Any, path: str | None, patient_id: str | None = None,
               exam_id: str | None = None, laterality: str | None = None, view: str | None = None) -> ExamImage:
    """An ExamImage with its key (pipeline.io.exams.key_from_meta: what is given, else the file's tags, else its
    name, e.g. ``P100_L_CM_CC``); an image with no patient, exam or study id belongs to the one exam of the files
    given together (SINGLE_EXAM). The meta takes the key's laterality (a given value wins over the file's tags, as a
    table's column does in training): the sample is mirrored by the side its breast is paired by."""
    if not (patient_id or exam_id or getattr(meta, "study_uid", None)):
        exam_id = SINGLE_EXAM
    key = key_from_meta(path=path, meta=meta, patient_id=patient_id, exam_id=exam_id, laterality=laterality,
                        view=view)
    if key.laterality and meta is not None and getattr(meta, "laterality", None) != key.laterality:
        meta = replace(meta, laterality=key.laterality)
    return ExamImage(np.asarray(image, np.float32), meta, None if path is None else str(path), key)


def one_exam(images: Sequence[ExamImage], exam_id: str = SINGLE_EXAM) -> list[ExamImage]:
    """`images` as one exam: unchanged where their keys agree, else re-keyed to `exam_id` (files uploaded together
    whose tags name several studies, as the CBIS-DDSM DICOMs do, one study per view)."""
    if len({(im.key.patient_id, im.key.exam_id) for im in images}) <= 1:
        return list(images)
    return [replace(im, key=ExamKey(exam_id, exam_id, im.key.laterality, im.key.view)) for im in images]


def read_exam_images(paths: Sequence[str | Path], *, patient_id: str | None = None, exam_id: str | None = None
                     ) -> tuple[list[ExamImage], list[str]]:
    """Files -> (ExamImages of the ones read, one error per file refused: which file, what is wrong, what to do);
    keys from `patient_id` / `exam_id`, else each file's tags and name (`exam_image`); group them with
    pipeline.io.exams.group_by_exam, or take them as one exam with `one_exam`."""
    from pipeline.io.imageio import read_image

    images, errors = [], []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the reader's warnings travel in meta.warnings
                image, meta = read_image(path)
        except (MammoscopeError, ValueError) as exc:
            errors.append(str(exc))
            continue
        images.append(exam_image(image, meta, str(path), patient_id, exam_id))
    return images, errors


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------
def _levels_of(images: Sequence[ExamImage]) -> pd.DataFrame:
    """The exams table of ExamModel.score_levels (sample_id, patient_id, exam_id where the exam is not the patient,
    laterality, view), whose pipeline.io.exams.level_ids are the images' keys."""
    raw = []
    for im in images:
        prefix = f"{im.key.patient_id}|exam:"
        raw.append(im.key.exam_id[len(prefix):] if im.key.exam_id.startswith(prefix) else None)
    table = pd.DataFrame({"sample_id": [im.path or f"image{i}" for i, im in enumerate(images)],
                          "patient_id": [im.key.patient_id if r is not None else im.key.exam_id
                                         for im, r in zip(images, raw)],
                          "exam_id": raw, "laterality": [im.key.laterality for im in images],
                          "view": [im.key.view for im in images]})
    table = table.drop(columns="exam_id") if table["exam_id"].isna().all() else table
    if list(level_ids(table)["exam"]) != [im.key.exam_id for im in images]:  # the keys are the one definition
        raise MammoscopeError("score_exam: the images' exam keys do not round-trip through pipeline.io.exams ids")
    return table


def _check_one_exam(images: Sequence[ExamImage]) -> None:
    exams = {(im.key.patient_id, im.key.exam_id) for im in images}
    if len(exams) > 1:
        raise MammoscopeError(f"score_exam scores one exam; these images belong to {len(exams)} "
                              "(group them by exam first: pipeline.serving.batch does)")


def _card_summary(predictor: Any) -> dict[str, Any]:
    """The operating points of a screening card per level with their CV sensitivity / specificity and 95% CIs."""
    from pipeline.config.card import metric_entry

    card = predictor.card
    levels = dict(card.decision.get("level_thresholds") or {})
    out: dict[str, Any] = {"threshold": predictor.threshold, "target_sensitivity": card.target_sensitivity,
                           "view_fusion": card.decision.get("view_fusion"), "levels": {}}
    flat: dict[str, Any] = {}  # the card's {"value", "low", "high"} entries as the flat metrics metric_entry reads
    for key, entry in card.metrics.items():
        if isinstance(entry, Mapping):
            flat[key] = entry.get("value")
            flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = entry.get("low"), entry.get("high")
        else:
            flat[key] = entry
    for level in ("image", "breast", "exam"):
        prefixes = ["cv_image_", "cv_"] if level == "image" else [f"cv_{level}_"]
        prefix = next((p for p in prefixes if f"{p}sens_at_target" in flat), prefixes[-1])
        out["levels"][level] = {"threshold": levels.get(level),
                                "sensitivity": metric_entry(flat, f"{prefix}sens_at_target"),
                                "specificity": metric_entry(flat, f"{prefix}spec_at_target")}
    return out


def _model_info(predictor: Any) -> dict[str, Any]:
    return {"name": predictor.name, "version": predictor.version, "alias": predictor.alias, "task": predictor.task,
            "classes": list(predictor.classes), "card": _card_summary(predictor)}


def density_of_exam(model: Any, probabilities: np.ndarray) -> dict[str, Any]:
    """The exam's density from its images' (n, k) probabilities: their mean, called by the density model's rule."""
    from pipeline.config.tasks import decide
    from pipeline.evaluation.metrics import exam_average

    probabilities = np.asarray(probabilities, dtype=float)
    mean = exam_average(probabilities, [0] * len(probabilities))[:1]
    entry: dict[str, Any] = {"classes": list(model.classes),
                             "probabilities": {c: float(p) for c, p in zip(model.classes, mean[0])},
                             "call": decide(mean, model.classes, model.card.decision)[0], "prediction_set": None,
                             "n_images": len(probabilities), "model": {"name": model.name, "version": model.version}}
    if entry["call"] is None:
        entry["call"] = model.classes[int(np.argmax(mean[0]))]
    if model.conformal is not None:
        from pipeline.evaluation.conformal import predict_sets

        member = predict_sets(model.conformal, mean)[0]
        entry["prediction_set"] = [c for c, m in zip(model.classes, member) if m]
    return entry


def exam_levels(predictor: Any, table: pd.DataFrame, p: np.ndarray, asymmetry: np.ndarray | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(images, breasts, exams) of scored images (pipeline.model.exam.ExamLevels columns) by the served ExamModel's
    own `score_levels`: the context stage, view fusion and operating points the cross-validation ran."""
    model = getattr(predictor, "pipeline", None)
    if not hasattr(model, "score_levels"):
        raise MammoscopeError(f"{predictor.name} version {predictor.version} is a screening model registered before "
                              "exam models (pipeline.model.exam.ExamModel): retrain it with `mammoscope train "
                              "experiments/cdd_cesm_screening.yaml` to score exams")
    levels = model.score_levels(p, table, asymmetry)
    # the model is fitted on encoded labels (0 / 1): calls are named by the card's classes, as every call served
    names = dict(zip(getattr(model, "classes_", predictor.classes), predictor.classes))
    images, breasts, exams = (f.assign(call=f["call"].map(lambda c: names.get(c, c)))
                              for f in (levels.images, levels.breasts, levels.exams))
    return images, breasts, exams


def _screening_levels(predictor: Any, images: Sequence[ExamImage], scores: Any, results: list[ImageResult]
                      ) -> tuple[list[LevelResult], LevelResult, str, str]:
    """Fill each image's screening fields in `results` and return (breasts, exam, exam id, patient id): the image
    beside its exam's other views (the context stage), its breasts (views fused) and the exam (its most suspicious
    breast), each at its level's operating point (`exam_levels`)."""
    p = scores.probabilities[:, 1]
    img, breast_rows, exam_rows = exam_levels(predictor, _levels_of(images), p, scores.asymmetry)
    for r, row in zip(results, img.to_dict("records")):
        r.p_single, r.p = float(row["p_single"]), float(row["p"])
        r.threshold, r.call = _none_or(row["threshold"], float), _none_or(row["call"], str)
        r.breast_id, r.exam_id, r.context_views = str(row["breast_id"]), str(row["exam_id"]), bool(row["context_views"])
    for i, r in enumerate(results):
        r.prediction_set = None if scores.sets is None else list(scores.sets[i])
    breasts = [LevelResult(id=str(b["breast_id"]), laterality=_none_or(b["laterality"], str),
                           views=[v for v in str(b["views"]).split(",") if v], n_images=int(b["n_images"]),
                           p=float(b["p"]), threshold=_none_or(b["threshold"], float), call=_none_or(b["call"], str))
               for b in breast_rows.to_dict("records")]
    e = exam_rows.iloc[0]
    exam = LevelResult(id=str(e["exam_id"]), laterality=None, views=[v for v in str(e["views"]).split(",") if v],
                       n_images=int(e["n_images"]), p=float(e["p"]), threshold=_none_or(e["threshold"], float),
                       call=_none_or(e["call"], str), most_suspicious_breast=_none_or(e["most_suspicious_breast"], str))
    return breasts, exam, exam.id, str(e["patient_id"])


def _none_or(value: Any, kind: type) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        return None if pd.isna(value) else kind(value)
    except (TypeError, ValueError):
        return kind(value)


def _maps(predictor: Any, images: Sequence[ExamImage], results: list[ImageResult]) -> None:
    from pipeline.serving.screening import explain_screening

    for image, r in zip(images, results):
        heat = explain_screening(predictor, image.sample(predictor)).get("heatmap_original")
        r.heatmap = None if heat is None else np.asarray(heat, np.float32)


def not_a_view(meta: Any) -> str | None:
    """Why an image read from a DICOM is not a view of the exam to score (None where it is): another modality (a
    secondary capture, e.g. Mammoscope's own maps in an exported study) or raw FOR PROCESSING detector data (sites
    archive it beside the presentation image, which would count each view twice). A lone image is still scored with
    the reader's warning; an exam takes only its views."""
    modality = getattr(meta, "modality", None)
    if modality not in (None, "MG"):
        return f"modality is {modality}, not MG (mammography): not a view of the exam"
    if getattr(meta, "presentation_intent", None) == "FOR PROCESSING":
        return "presentation intent is FOR PROCESSING (raw detector data): the exam's FOR PRESENTATION view is scored"
    return None


def scorable(models: Mapping[str, Any] | Sequence[Any], images: Sequence[ExamImage]
             ) -> tuple[list[int], list[tuple[int, MammoscopeError]]]:
    """(positions of the images every model can score, (position, the error) of each image it cannot): each image's
    samples are made now and kept on it for score_exam, so a view that reads but holds no
    breast (a blank exposure, a specimen image) costs that view, not its exam. `mammoscope predict` does the same in
    its workers."""
    from pipeline.samples import shared_breast_finding
    from pipeline.serving.predict import Predictor

    predictors = [Predictor.from_loaded(m) for m in (models.values() if isinstance(models, Mapping) else models)]
    ok, errors = [], []
    for i, im in enumerate(images):
        try:
            problem = not_a_view(im.meta)
            if problem:
                raise ImageReadError(im.path, problem, "give the exam's FOR PRESENTATION mammograms (modality MG) only")
            with shared_breast_finding():
                for m in predictors:
                    im.sample(m)
            ok.append(i)
        except MammoscopeError as exc:
            errors.append((i, exc))
    return ok, errors


def score_exam(models: Mapping[str, Any] | Sequence[Any], images: Sequence[ExamImage], *, maps: bool = True,
               errors: Sequence[str] = ()) -> ExamResult:
    """One exam's images scored by every model (density first: its calls feed the others' decision rules): each
    image's results-file row, density per exam (density model), and the screening model's image / breast / exam
    levels and maps (`maps`: the tile map of each image on the original image, masked to the breast). `errors`:
    inputs already refused (carried into the result)."""
    from pipeline.samples import shared_breast_finding
    from pipeline.serving.predict import Predictor, score_tasks

    predictors = [Predictor.from_loaded(m) for m in (models.values() if isinstance(models, Mapping) else models)]
    if not images:
        raise MammoscopeError("score_exam: no image to score" + (f" ({'; '.join(errors)})" if errors else ""))
    _check_one_exam(images)
    with shared_breast_finding():  # each image's blank check and breast finding once for all models
        samples = {m.task: [im.sample(m) for im in images] for m in predictors}
    scores = score_tasks(predictors, samples)
    results = [ImageResult(sample_id=im.path or f"image{i}", laterality=im.key.laterality, view=im.key.view,
                           p_single=None, p=None, threshold=None, call=None, prediction_set=None, heatmap=None,
                           warnings=[*getattr(im.meta, "warnings", ()),
                                     *dict.fromkeys(n for s in samples.values() for n in s[i].notes)])
               for i, im in enumerate(images)]
    for m in predictors:
        for i, r in enumerate(results):
            r.outputs.update(m.output_row(scores[m.task], i))
    key = images[0].key
    result = ExamResult(exam_id=key.exam_id, patient_id=key.patient_id, images=results, breasts=[], exam=None,
                        density=None, model={}, errors=list(errors))
    density = next((m for m in predictors if m.task_spec.exam_pooled), None)
    if density is not None:
        result.density = density_of_exam(density, scores[density.task].probabilities)
    screening = next((m for m in predictors if m.task_spec.levels), None)
    if screening is not None:
        result.breasts, result.exam, result.exam_id, result.patient_id = _screening_levels(
            screening, images, scores[screening.task], results)
        result.model = _model_info(screening)
        if maps:
            _maps(screening, images, results)
    return result


def predictor_score_exam(predictor: Any, images: Sequence[ExamImage], *, maps: bool = True,
                         errors: Sequence[str] = ()) -> ExamResult:
    """`Predictor.score_exam`: the screening model alone on one exam (see `score_exam`)."""
    if not predictor.task_spec.levels:
        raise MammoscopeError(f"score_exam needs a screening model (a task with breast and exam levels); "
                              f"{predictor.name} is a {predictor.task} model: use score_exam(models, images)")
    return score_exam([predictor], images, maps=maps, errors=errors)
