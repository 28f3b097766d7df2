"""The one predict path: a registered model -> `Predictor` -> prepared samples -> calibrated probabilities and calls.

`load_predictor(uri)` is the one loader (`models:/NAME@alias`, `models:/NAME/VERSION`, `runs:/RUN_ID/model`, or a
task's default model); it returns a `Predictor` holding the fitted pipeline and its `ModelCard` (pipeline.config.card), and
refuses a model whose card it cannot read. `Predictor.prepare(image, meta, roi) -> Sample` makes the model input
exactly as the training samples were made (pipeline.samples, with the card's sample parameters),
`Predictor.score(samples, context) -> Scores` gives probabilities (rows sum to 1), the card's decision-rule calls,
the conformal prediction sets (from the card's ``extra["conformal"]`` state) and, under the `group_threshold` rule,
each image's threshold and why (its density group from `context["density"]`, the density model's prediction for the
same images: `predict_image` and `mammoscope predict` score density-label tasks first and pass it on), and
`Predictor.explain(sample)` the feature contributions and a heat map. The Gradio app calls it for one sample,
`mammoscope predict` (pipeline.serving.batch) for batches, the tests for both.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from pipeline.errors import MammoscopeError, ModelNotFoundError
from pipeline.config.tasks import TASKS, Task, get_task
from pipeline.config.tasks import decide as decide_by_rule
from pipeline.config.tasks import get_rule
from pipeline.config.values import finite_or_none

__all__ = [
    "TASKS",
    "Sample",
    "SampleSpec",
    "Scores",
    "Predictor",
    "parse_model_uri",
    "load_predictor",
    "load_available_models",
    "load_task_models",
    "normalize_roi",
    "prepare_sample",
    "decide",
    "density_first",
    "density_calls",
    "score_tasks",
    "predict_image",
    "predict_paths",
    "explain",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Sample:
    """One model input: float32 (S, S) in [0, 1], the task it was made for, and notes about how it was made."""

    task: str
    array: np.ndarray
    notes: tuple[str, ...] = ()
    path: str | None = None
    geometry: Any = None  # highres recipe: pipeline.samples.Geometry, to put a map of the sample on the image

    @property
    def row(self) -> np.ndarray:
        """The flattened (S*S,) row a Pipeline takes."""
        return self.array.reshape(-1)


@dataclass(frozen=True)
class SampleSpec:
    """How one task's model wants its input made (picklable: batch workers prepare samples with it)."""

    task: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def prepare(self, image: np.ndarray, meta: Any = None, roi: Any = None, path: str | Path | None = None) -> Sample:
        """The sample of `image` as in training: the task's recipe, the card's size/context/min_side.

        A task whose recipe crops around an ROI, given no ROI, gets the whole breast (with the task's note).
        An image too small to be a mammogram raises ImageReadError naming `path` (pipeline.samples).
        """
        from pipeline.samples import highres_sample, make_sample, sample_side

        spec = get_task(self.task)
        laterality = getattr(meta, "laterality", None) if meta is not None else None
        size = int(self.params.get("size", 224))
        crop = {k: float(self.params[k]) for k in ("context", "min_side") if k in self.params}
        row: dict[str, Any] = {"sample_id": "input", "laterality": laterality}
        if path is not None:
            row["path"] = str(path)
        if spec.sample_recipe == "highres":  # the whole breast at scale x size, whatever region is drawn
            from pipeline.samples import check_not_blank

            check_not_blank(np.asarray(image), path)
            array, geometry = highres_sample(np.asarray(image, dtype=np.float32), laterality,
                                             sample_side(size, float(self.params.get("scale", 1.0))), path,
                                             aspect=float(self.params.get("aspect", 1.0)))
            return Sample(self.task, array, (), None if path is None else str(path), geometry)
        region = normalize_roi(roi)
        recipe, notes = spec.sample_recipe, ()
        if not spec.whole_breast:
            if region is not None:
                row.update(region)
            else:
                recipe = "breast"
                notes = (spec.needs_roi_note,) if spec.needs_roi_note else ()
        array = make_sample(np.asarray(image, dtype=np.float32), row, recipe, laterality=laterality, size=size,
                            **crop)
        return Sample(self.task, array, notes, None if path is None else str(path))


def prepare_sample(image: np.ndarray, meta: Any, task: str, sample_params: Mapping[str, Any],
                   roi: Any = None, path: str | Path | None = None) -> np.ndarray:
    """The model input for one image as float32 (S, S) (SampleSpec(task, sample_params).prepare(...).array)."""
    return SampleSpec(task, dict(sample_params)).prepare(image, meta, roi, path).array


# --------------------------------------------------------------------------------------------------------------------
# Decisions and scores
# --------------------------------------------------------------------------------------------------------------------
def get_rule_of(decision: Mapping[str, Any]) -> Any:
    """The decision rule a card's `decision` names (argmax when it names none)."""
    return get_rule(str(decision.get("rule") or "argmax"))


def decide(proba: np.ndarray, card: Any) -> list[str | None]:
    """The call for each row of `proba` (n, k) by the decision rule of `card` (a ModelCard, its dict, or a legacy
    {"task", "classes", "threshold"} dict: the task's rule with that threshold)."""
    d = card.to_dict() if hasattr(card, "to_dict") else dict(card)
    decision = d.get("decision")
    if decision is None:
        decision = {"rule": get_task(d["task"]).decision_rule, "threshold": d.get("threshold")}
    return decide_by_rule(proba, [str(c) for c in d.get("classes") or []], decision)


@dataclass
class Scores:
    """One model's output for a batch of samples: probabilities (n, k) in `classes` order, one call per row; where
    the card has them, the conformal prediction set per row (members and words, at `set_coverage`) and the threshold
    applied per row with its density group and reason (per-group operating points)."""

    task: str
    classes: list[str]
    probabilities: np.ndarray
    calls: list[str | None]
    model: dict[str, Any]
    sets: list[list[str]] | None = None
    set_labels: list[str] | None = None
    set_coverage: float | None = None
    thresholds: list[float | None] | None = None
    density_groups: list[str | None] | None = None
    threshold_reasons: list[str] | None = None
    asymmetry: np.ndarray | None = None  # screening with a bilateral asymmetry stage: per-row image scores (n,)

    def __len__(self) -> int:
        return len(self.probabilities)


class Predictor:
    """A loaded model with its card: prepare samples, score them, explain one (the one predict path)."""

    def __init__(self, pipeline: Any, card: Any, *, name: str = "", version: int = 0, alias: str | None = None,
                 run_id: str = "") -> None:
        from pipeline.config.card import ModelCard

        self.pipeline = pipeline
        self.card = card if isinstance(card, ModelCard) else ModelCard.from_dict(card, f"{name} card")
        self.name, self.version, self.alias, self.run_id = name, int(version), alias, run_id

    @classmethod
    def from_loaded(cls, loaded: Any) -> "Predictor":
        """From a registry.models.LoadedModel whose `card` was read (load_predictor does this)."""
        if isinstance(loaded, Predictor):
            return loaded
        return cls(loaded.pipeline, loaded.card, name=loaded.name, version=loaded.version,
                   alias=getattr(loaded, "alias", None), run_id=getattr(loaded, "run_id", ""))

    # --- what the card says -----------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.card.task

    @property
    def task_spec(self) -> Task:
        return get_task(self.card.task)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card.classes)

    @property
    def threshold(self) -> float | None:
        return finite_or_none(self.card.threshold)

    @property
    def sample_params(self) -> dict[str, Any]:
        return dict(self.card.sample_params)

    @property
    def spec(self) -> SampleSpec:
        return SampleSpec(self.card.task, dict(self.card.sample_params))

    @property
    def conformal(self) -> dict[str, Any] | None:
        """The card's conformal state (pipeline.evaluation.conformal), None when it has none."""
        return self.card.extra.get("conformal") or None

    @property
    def per_image_thresholds(self) -> bool:
        """Whether the decision rule sets a threshold per image (e.g. by density group) and says why."""
        return hasattr(get_rule_of(self.card.decision), "operating_points")

    def output_columns(self) -> list[str]:
        """This model's batch output columns (Task.output_columns with its prediction set and threshold columns)."""
        cols = self.task_spec.output_columns(self.classes, sets=self.conformal is not None,
                                             thresholds=self.per_image_thresholds)
        return cols + ([f"{self.task}_asymmetry_score"] if self.asymmetry is not None else [])

    @property
    def asymmetry(self) -> Any | None:
        """The bilateral asymmetry model of a screening pipeline trained with ``screening.context_asymmetry``
        (pipeline.model.asymmetry), else None: its per-image score joins the exam's context stage."""
        return getattr(self.pipeline, "asymmetry_", None)

    def output_row(self, scores: Scores, i: int) -> dict[str, Any]:
        """Row i of `scores` as values of `output_columns()`."""
        t = self.task
        row: dict[str, Any] = {f"{t}_p_{c}": float(scores.probabilities[i, k]) for k, c in enumerate(scores.classes)}
        row.update({f"{t}_call": scores.calls[i], f"{t}_model": self.name, f"{t}_version": self.version})
        if scores.set_labels is not None:
            row[f"{t}_set"] = scores.set_labels[i]
        if scores.thresholds is not None:
            row[f"{t}_threshold"], row[f"{t}_threshold_reason"] = scores.thresholds[i], scores.threshold_reasons[i]
        if scores.asymmetry is not None:
            row[f"{t}_asymmetry_score"] = float(scores.asymmetry[i])
        return row

    def model_info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "alias": self.alias,
                "experiment": self.card.extra.get("experiment_name")}

    # --- the path ---------------------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, meta: Any = None, roi: Any = None, path: str | Path | None = None) -> Sample:
        """The model input for `image` (see SampleSpec.prepare)."""
        return self.spec.prepare(image, meta, roi, path)

    def score(self, samples: Sequence[Sample | np.ndarray] | np.ndarray,
              context: Mapping[str, Any] | None = None) -> Scores:
        """Probabilities (n, k), rows normalised to sum to 1, the card's decision-rule call of each row, and the
        prediction sets / per-image thresholds where the card has them. `context` (e.g. ``{"density": [predicted
        density per row]}``) reaches a decision rule that uses it."""
        if isinstance(samples, np.ndarray):  # rows (n, S*S) or images (n, S, S)
            X = samples.reshape(len(samples), -1)
        else:
            X = np.stack([(s.row if isinstance(s, Sample) else np.asarray(s).reshape(-1)) for s in samples])
        X = np.asarray(X, dtype=np.float32)
        asymmetry = None
        if self.asymmetry is not None:  # the features once: the classifier's input and the tile-max block
            from pipeline.model.asymmetry import image_scores

            features = self.pipeline[:-2].transform(X)  # the classifier's input: up to select + classifier
            start, stop = self.pipeline.asymmetry_columns_
            asymmetry = image_scores(self.asymmetry, np.asarray(features)[:, start:stop])
            proba = self.pipeline[-2:].predict_proba(features)
        else:
            proba = self.pipeline.predict_proba(X)
        proba = np.asarray(proba, dtype=np.float64)
        proba = proba / proba.sum(axis=1, keepdims=True)
        calls = decide_by_rule(proba, list(self.classes), self.card.decision, context)
        scores = Scores(self.task, list(self.classes), proba, calls, self.model_info(), asymmetry=asymmetry)
        state = self.conformal
        if state is not None:
            from pipeline.evaluation.conformal import predict_sets, set_labels

            member = predict_sets(state, proba)
            scores.sets = [[c for c, m in zip(self.classes, row) if m] for row in member]
            scores.set_labels = set_labels(self.classes, member, several_is_uncertain=self.task_spec.uses_threshold)
            scores.set_coverage = float(state["coverage"])
        rule = get_rule_of(self.card.decision)
        if hasattr(rule, "operating_points"):
            scores.thresholds, scores.density_groups, scores.threshold_reasons = rule.operating_points(
                len(proba), self.card.decision, context)
        return scores

    def result(self, sample: Sample, scores: Scores | None = None, i: int = 0,
               context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The JSON-able result of one sample: classes, probabilities, predicted, call, threshold, model, notes; the
        prediction set and, under per-group thresholds, the threshold applied with its density group and reason."""
        scores = scores if scores is not None else self.score([sample], context)
        proba = scores.probabilities[i]
        classes = scores.classes
        entry: dict[str, Any] = {
            "classes": classes,
            "probabilities": {c: float(p) for c, p in zip(classes, proba)},
            "predicted": classes[int(np.argmax(proba))],
            "call": scores.calls[i],
            "model": scores.model,
            "notes": list(sample.notes),
        }
        if scores.sets is not None:
            entry["prediction_set"], entry["prediction_set_label"] = scores.sets[i], scores.set_labels[i]
            entry["set_coverage"] = scores.set_coverage
        if self.task_spec.uses_threshold:
            entry["threshold"] = self.threshold
            entry["target_sensitivity"] = self.card.target_sensitivity
            entry[f"probability_{classes[1]}"] = float(proba[1])
        if scores.thresholds is not None:
            entry["threshold"], entry["density_group"] = scores.thresholds[i], scores.density_groups[i]
            entry["threshold_reason"] = scores.threshold_reasons[i]
        return entry

    def score_exam(self, images: Sequence[Any], *, maps: bool = True, errors: Sequence[str] = ()) -> Any:
        """One exam's images (pipeline.serving.exam.ExamImage) scored by this screening model: per image (alone
        and beside the exam's other views), per breast and per exam probabilities, calls, prediction sets and maps
        (pipeline.serving.exam.ExamResult)."""
        from pipeline.serving.exam import predictor_score_exam

        return predictor_score_exam(self, images, maps=maps, errors=errors)

    def explain(self, sample: Sample, top: int = 10, heatmap: bool = True) -> dict[str, Any]:
        """Top feature contributions and a heat map for `sample` (see `explain_sample`)."""
        return explain_sample(self, sample, top=top, heatmap=heatmap)


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------
def parse_model_uri(uri: str) -> tuple[str, str | None, int | None]:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS` (or plain NAME) -> (name, alias, version)."""
    body = uri[len("models:/") :] if uri.startswith("models:/") else uri
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, None
    if "/" in body:
        name, version = body.rsplit("/", 1)
        if not version.isdigit():
            raise MammoscopeError(f"--model {uri!r}: the version must be a number, e.g. models:/{name}/3")
        return name, None, int(version)
    return body, "champion", None


def _read_card(raw: Any, source: str) -> Any:
    from pipeline.config.card import ModelCard

    if raw is None:
        raise ModelNotFoundError(f"{source}: the model has no model card (it was logged before cards existed, or "
                                 "not by `mammoscope train`); retrain it")
    if isinstance(raw, str):
        raise ModelNotFoundError(f"{source}: {raw}; retrain the model")
    return ModelCard.from_dict(raw, source)


def load_predictor(uri: str | None = None, *, task: str | None = None, alias: str = "champion",
                   tracking_uri: str | None = None) -> Predictor:
    """The Predictor of `uri` (`models:/NAME@alias`, `models:/NAME/VERSION`, `runs:/RUN_ID/ARTIFACT`, plain NAME),
    else of `task`'s default model at `alias`. ModelNotFoundError (what is missing, what to do) when there is none,
    or when its model card cannot be read."""
    import registry

    registry.configure(tracking_uri)
    if uri is None:
        if task is None:
            raise ValueError("load_predictor needs a model URI or a task")
        uri = f"models:/{get_task(task).default_model_name}@{alias}"
    if uri.startswith("runs:/"):
        run_id, _, artifact = uri[len("runs:/") :].partition("/")
        loaded = registry.load_run_model(run_id, artifact or "model", read_card=_read_card)
    else:
        name, at, version = parse_model_uri(uri)
        loaded = registry.load_model(name, at or alias, version=version, read_card=_read_card)
    predictor = Predictor.from_loaded(loaded)
    if task is not None and predictor.task != get_task(task).name:
        raise ModelNotFoundError(f"{uri} is a {predictor.task} model, not {task}")
    return predictor


def load_task_models(tasks: Sequence[str] | None = None, alias: str = "champion", tracking_uri: str | None = None,
                     names: Mapping[str, str] | None = None) -> dict[str, Predictor]:
    """{task: Predictor} for each task's `models:/NAME@alias`; ModelNotFoundError naming the command that trains one."""
    out = {}
    for task in (tasks if tasks is not None else list(TASKS)):
        if task not in TASKS:
            raise ModelNotFoundError(f"unknown task {task!r}; use one of {list(TASKS)}")
        spec = get_task(task)
        name = (names or {}).get(task, spec.default_model_name)
        try:
            out[task] = load_predictor(f"models:/{name}@{alias}", task=task, tracking_uri=tracking_uri)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"no {task} model at models:/{name}@{alias} ({exc}). Train one with "
                f"`mammoscope main` (every task, on mini-MIAS) or `mammoscope train {spec.main_experiment}`") from exc
    return out


def load_available_models(tasks: Sequence[str] | None = None, alias: str = "champion",
                          tracking_uri: str | None = None) -> tuple[dict[str, Predictor], dict[str, str]]:
    """({task: Predictor} for each task with a model at `alias`, {task: why not and which command trains it}): the
    app and `mammoscope predict` serve what is registered and say what is missing."""
    models: dict[str, Predictor] = {}
    missing: dict[str, str] = {}
    for task in (tasks if tasks is not None else list(TASKS)):
        try:
            models.update(load_task_models([task], alias=alias, tracking_uri=tracking_uri))
        except MammoscopeError as exc:
            missing[task] = str(exc)
    return models, missing


# --------------------------------------------------------------------------------------------------------------------
# Convenience over several tasks' predictors
# --------------------------------------------------------------------------------------------------------------------
def prepare_samples(image: np.ndarray, meta: Any, models: Mapping[str, Predictor], roi: Any = None,
                    path: str | Path | None = None) -> dict[str, Sample]:
    """{task: Sample} of one image, each made once; the models share one blank check and breast finding."""
    from pipeline.samples import shared_breast_finding

    with shared_breast_finding():
        return {task: Predictor.from_loaded(p).prepare(image, meta, roi, path) for task, p in models.items()}


def density_first(models: Iterable[Predictor]) -> list[Predictor]:
    """The predictors in scoring order: those predicting breast density first (their predicted class is the
    others' context), the rest in the order given."""
    return sorted(models, key=lambda m: not m.task_spec.density_labels)


def density_calls(scores: Scores) -> list[str]:
    """A density model's call per row (its decision rule's, the arg-max where the rule gives none): the context
    ``{"density": ...}`` of the other models' decision rules."""
    return [c or scores.classes[int(np.argmax(p))] for c, p in zip(scores.calls, scores.probabilities)]


def score_tasks(models: Iterable[Predictor], samples: Mapping[str, Any]) -> dict[str, Scores]:
    """{task: Scores} of the same images by each model (`samples[task]`: that model's samples or rows, one per
    image, in one order). The one place where density feeds the others: density models score first and their calls
    (`density_calls`) are the context of every later model's decision rule (per-density-group thresholds)."""
    out: dict[str, Scores] = {}
    context: dict[str, Any] = {}
    for model in density_first(models):
        out[model.task] = model.score(samples[model.task], context or None)
        if model.task_spec.density_labels:
            context = {"density": density_calls(out[model.task]), "density_classes": list(model.classes)}
    return out


def predict_image(image: np.ndarray, meta: Any, models: Mapping[str, Predictor], roi: Any = None,
                  path: str | Path | None = None, samples: Mapping[str, Sample] | None = None) -> dict[str, Any]:
    """{task: Predictor.result} (JSON-able, in `models` order) of one image; `samples` (from prepare_samples) are
    reused if given. A density model's call is the context of the other models' decision rules (`score_tasks`)."""
    from pipeline.samples import shared_breast_finding

    samples = dict(samples or {})
    predictors = {task: Predictor.from_loaded(p) for task, p in models.items()}
    with shared_breast_finding():
        made = {task: samples.get(task) or p.prepare(image, meta, roi, path) for task, p in predictors.items()}
    scores = score_tasks(predictors.values(), {task: [s] for task, s in made.items()})
    return {task: predictors[task].result(made[task], scores[task]) for task in models}


def predict_paths(paths: Iterable[str | Path], models: Mapping[str, Predictor], rois: Mapping[str, Any] | None = None
                  ) -> Iterator[dict[str, Any]]:
    """One result dict per path, in order: {"path", "ok", "result" | "error"}; unreadable files do not stop it."""
    from pipeline.io.imageio import read_image

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
    """Explanation of one image (Predictor.from_loaded(loaded).explain of its prepared sample)."""
    p = Predictor.from_loaded(loaded)
    return p.explain(p.prepare(image, meta, roi), top=top, heatmap=heatmap)


def explain_sample(predictor: Predictor, sample: Sample, top: int = 10, heatmap: bool = True) -> dict[str, Any]:
    """Top XGBoost contributions (log-odds, averaged over the calibration ensemble) of named handcrafted features for
    the explained class (the task's explain_target), and a heat map (S, S) in [0, 1]: Grad-CAM when the CNN part has
    a fine-tuned head, else the occlusion sensitivity of the whole model (`occlusion_map`)."""
    from pipeline.model.estimators import final_classifier

    if predictor.task_spec.levels:  # screening: the tile-score map on the original image
        from pipeline.serving.screening import explain_screening

        return explain_screening(predictor, sample, heatmap=heatmap)
    pipe = predictor.pipeline
    x = sample.row.reshape(1, -1)
    proba = pipe.predict_proba(x)[0]
    target = predictor.task_spec.explain_target(proba)
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
    classes = list(predictor.classes)
    result: dict[str, Any] = {"task": predictor.task,
                              "target_class": classes[target] if target < len(classes) else None,
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
            result["heatmap"] = occlusion_map(pipe, sample.array, target)
            result["notes"].append("heat map: occlusion sensitivity of the whole model (how much the score falls when "
                                   "each region is hidden); a fine-tuned CNN gives Grad-CAM instead")
        else:
            from cnn.gradcam import grad_cam

            pre = pipe.named_steps["preprocess"]
            img = (pre.transform(x) if pre != "passthrough" else x).reshape(sample.array.shape)
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
