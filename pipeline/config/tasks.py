"""The task registry: what each prediction task is, in one object per task.

Every place that used to branch on a task name asks its `Task` instead: which table rows and label column it trains
on, its classes and their order, whether they are ordinal, its sample recipe (``breast``: the whole breast;
``lesion``: a crop around the finding's ROI), its metric function and headline metrics, its default champion
metric, its decision rule and its output columns. Adding a task is one `register_task(Task(...))` entry plus, if it
needs a new way to turn an image into a sample, its recipe in pipeline.samples.

Decision rules are pluggable: a rule is an object with `name`, `fit_params(...)` (what training stores in the model
card's ``decision`` dict) and `decide(proba, classes, decision)`; `register_rule` adds one (an ordinal cut-point rule,
per-group thresholds, ...) and the card's ``decision["rule"]`` names the rule that reads it back. A rule whose
`uses_context` is true also gets `context` (what other models said about the same images, e.g. ``{"density": [the
predicted density class per row]}``): `group_threshold` picks each image's density-group threshold with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from pipeline.config.values import finite_or_none

__all__ = [
    "Task",
    "DecisionRule",
    "ThresholdRule",
    "ArgmaxRule",
    "GroupThresholdRule",
    "OrdinalCutpointsRule",
    "ORDINAL_RULE",
    "TASKS",
    "task_names",
    "DECISION_RULES",
    "ORDINAL_SCHEMES",
    "dense_matches",
    "ordinal_scheme",
    "get_task",
    "register_task",
    "register_rule",
    "get_rule",
    "decide",
]

#: Known ordinal density label sets, in order (for the class order of quadratic-weighted kappa) with their dense part.
ORDINAL_SCHEMES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("F", "G", "D"), ("D",)),
    (("A", "B", "C", "D"), ("C", "D")),
    (("1", "2", "3", "4"), ("3", "4")),
)
PATHOLOGIES = ("benign", "malignant")


def dense_matches(dense_classes: Sequence[Any], density_classes: Sequence[Any],
                  fitted_on: Sequence[Any] | None = None) -> bool:
    """Whether a density model with `density_classes` can name the groups of a card fitted with `dense_classes` on
    the density scheme `fitted_on` (cards since 2026-12-07 store it): every dense class is one of its classes, and
    its classes are that scheme. Older cards: the known scheme (ORDINAL_SCHEMES) whose dense part the card's dense
    classes are, where there is one (a mini-MIAS card's [D] is F/G/D's, so an A-D density model does not match)."""
    dense, known = {str(d) for d in dense_classes}, {str(c) for c in density_classes}
    if not dense <= known:
        return False
    if fitted_on is None:
        fitted_on = next((scheme for scheme, part in ORDINAL_SCHEMES if set(part) == dense), None)
    return fitted_on is None or {str(c) for c in fitted_on} == known


def ordinal_scheme(labels: Sequence[str]) -> list[str]:
    """The known ordinal density scheme holding every label (F, G, D; A-D; 1-4), else the labels sorted."""
    present = {str(v) for v in labels}
    for scheme, _ in ORDINAL_SCHEMES:
        if present <= set(scheme):
            return list(scheme)
    return sorted(present)


# --------------------------------------------------------------------------------------------------------------------
# Decision rules
# --------------------------------------------------------------------------------------------------------------------
class DecisionRule(Protocol):
    """Turns calibrated probabilities into calls; its parameters live in the model card's ``decision`` dict."""

    name: str

    def fit_params(self, classifier: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        """The rule's parameters of a fitted model (stored in the card's ``decision``, with ``rule`` = name)."""

    def decide(self, proba: np.ndarray, classes: Sequence[str], decision: Mapping[str, Any]) -> list[str | None]:
        """One call (a class name, or None when the rule has no parameters to decide with) per row of proba."""


@dataclass(frozen=True)
class ThresholdRule:
    """Binary: the positive class (classes[1]) when its probability reaches ``decision["threshold"]``."""

    name: str = "threshold"

    def fit_params(self, classifier: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"threshold": finite_or_none(getattr(classifier, "threshold_", None)),
                "target_sensitivity": float(config["evaluation"]["target_sensitivity"])}

    def decide(self, proba: np.ndarray, classes: Sequence[str], decision: Mapping[str, Any]) -> list[str | None]:
        threshold = finite_or_none(decision.get("threshold"))
        if threshold is None or len(classes) != 2:
            return [None] * len(proba)
        return [classes[1] if p >= threshold else classes[0] for p in np.asarray(proba)[:, 1]]


@dataclass(frozen=True)
class ArgmaxRule:
    """The most probable class."""

    name: str = "argmax"

    def fit_params(self, classifier: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"threshold": None, "target_sensitivity": None}

    def decide(self, proba: np.ndarray, classes: Sequence[str], decision: Mapping[str, Any]) -> list[str | None]:
        return [classes[i] for i in np.argmax(np.asarray(proba), axis=1)]


ORDINAL_RULE = "ordinal_cutpoints"


@dataclass(frozen=True)
class OrdinalCutpointsRule:
    """Ordered classes: the number of ``decision["cutpoints"]`` (K-1, increasing) below the expected class
    index (pipeline.evaluation.ordinal); fitted to maximise quadratic kappa on inner out-of-fold probabilities of the
    training data (PatientCalibratedClassifier.cutpoints_); ``decision["min_recall"]`` is the recall they keep there
    for the lowest and the highest class (`cutpoints_min_recall_`), None where no floor was asked or kept. A card
    without cut-points calls the most probable class."""

    name: str = ORDINAL_RULE

    def fit_params(self, classifier: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        cuts = getattr(classifier, "cutpoints_", None)
        floor = getattr(classifier, "cutpoints_min_recall_", None)  # the floor kept, not the one asked for
        return {"threshold": None, "target_sensitivity": None,
                "cutpoints": None if cuts is None else [float(c) for c in cuts],
                "min_recall": None if cuts is None or floor is None else float(floor)}

    def decide(self, proba: np.ndarray, classes: Sequence[str], decision: Mapping[str, Any]) -> list[str | None]:
        from pipeline.evaluation.ordinal import apply_cutpoints

        cuts = decision.get("cutpoints")
        if cuts is None:
            return [classes[i] for i in np.argmax(np.asarray(proba), axis=1)]
        return [classes[i] for i in apply_cutpoints(proba, cuts)]


DECISION_RULES: dict[str, DecisionRule] = {}


def register_rule(rule: DecisionRule) -> DecisionRule:
    """Add (or replace) a decision rule under its name; returns it."""
    DECISION_RULES[rule.name] = rule
    return rule


def get_rule(name: str) -> DecisionRule:
    """The registered decision rule `name`; ValueError listing the known ones."""
    try:
        return DECISION_RULES[name]
    except KeyError:
        raise ValueError(f"unknown decision rule {name!r}; known: {sorted(DECISION_RULES)}") from None


@dataclass(frozen=True)
class GroupThresholdRule:
    """Binary, one threshold per density group (pipeline.evaluation.operating): ``decision["group_thresholds"]`` holds
    each group's threshold and why, ``decision["dense_classes"]`` the density classes counted as dense. An image's
    group comes from the density predicted for it (``context["density"]``); without one it gets the pooled
    ``decision["threshold"]``, as the `threshold` rule would."""

    name: str = "group_threshold"
    uses_context: bool = True

    def fit_params(self, classifier: Any, config: Mapping[str, Any]) -> dict[str, Any]:
        """The pooled operating point; training adds the groups' state (pipeline.training.trust.card_entries)."""
        return ThresholdRule().fit_params(classifier, config)

    def operating_points(self, n: int, decision: Mapping[str, Any], context: Mapping[str, Any] | None = None
                         ) -> tuple[list[float | None], list[str | None], list[str]]:
        """(threshold, density group, why) per row: the predicted density's group threshold, else the pooled one."""
        from pipeline.evaluation.operating import apply_group_thresholds, group_from_density

        state = decision.get("group_thresholds")
        pooled = finite_or_none(decision.get("threshold"))
        if not state:
            return [pooled] * n, [None] * n, ["single operating point (no per-group thresholds)"] * n
        density = list((context or {}).get("density") or [None] * n)
        if len(density) != n:
            raise ValueError(f"context['density'] must have one entry per row ({n}). Got {len(density)} instead.")
        dense = list(decision.get("dense_classes") or [])
        classes = (context or {}).get("density_classes")
        if classes is not None and not dense_matches(dense, classes, decision.get("density_classes")):
            why = (f"single operating point: the density model's classes ({', '.join(map(str, classes))}) are not the "
                   f"scheme this model's dense groups were fitted on (dense = {', '.join(map(str, dense))})")
            return [pooled] * n, [None] * n, [why] * n
        groups = [group_from_density(None if d is None else str(d), dense) for d in density]
        thresholds, why = apply_group_thresholds(state, groups)
        why = [f"density predicted {d} ({g}): {w}" if g is not None else w for d, g, w in zip(density, groups, why)]
        return [float(t) for t in thresholds], groups, why

    def decide(self, proba: np.ndarray, classes: Sequence[str], decision: Mapping[str, Any],
               context: Mapping[str, Any] | None = None) -> list[str | None]:
        if len(classes) != 2:
            return [None] * len(proba)
        thresholds, _, _ = self.operating_points(len(proba), decision, context)
        return [None if t is None else (classes[1] if p >= t else classes[0])
                for p, t in zip(np.asarray(proba)[:, 1], thresholds)]


register_rule(ThresholdRule())
register_rule(ArgmaxRule())
register_rule(GroupThresholdRule())
register_rule(OrdinalCutpointsRule())


def decide(proba: np.ndarray, classes: Sequence[str], decision: Mapping[str, Any],
           context: Mapping[str, Any] | None = None) -> list[str | None]:
    """Calls for proba (n, k) (columns in `classes` order) by the rule a model card's `decision` names; `context`
    reaches rules that use it (`uses_context`)."""
    proba = np.asarray(proba, dtype=float)
    classes = [str(c) for c in classes]
    if proba.ndim != 2 or proba.shape[1] != len(classes) or not classes:
        raise ValueError(f"proba must have shape (n, {len(classes)}) for classes {classes}. Got {proba.shape} instead.")
    rule = get_rule(str(decision.get("rule") or "argmax"))
    if getattr(rule, "uses_context", False):
        return rule.decide(proba, classes, decision, context=context)
    return rule.decide(proba, classes, decision)


# --------------------------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------------------------
def _density_rows(full: pd.DataFrame, dataset: Mapping[str, Any]) -> pd.DataFrame:
    from pipeline.io.datasets import density_table

    return density_table(full)


def _finding_rows(full: pd.DataFrame, dataset: Mapping[str, Any]) -> pd.DataFrame:
    from pipeline.io.datasets import lesion_table

    if not dataset.get("require_roi", True):
        return full[full["pathology"].isin(PATHOLOGIES)].reset_index(drop=True)
    return lesion_table(full)


def _binary_metrics(y: np.ndarray, proba: np.ndarray, call: np.ndarray | None, classes: Sequence[str],
                    **kw: Any) -> dict[str, float]:
    from pipeline.evaluation.metrics import binary_metrics

    return binary_metrics(y, np.asarray(proba)[:, 1], call, **kw)


def _multiclass_metrics(y: np.ndarray, proba: np.ndarray, call: np.ndarray | None, classes: Sequence[str],
                        **kw: Any) -> dict[str, float]:
    from pipeline.evaluation.metrics import multiclass_metrics

    return multiclass_metrics(y, proba, classes, pred=call, **kw)


BINARY_METRIC_KEYS = ("roc_auc", "pr_auc", "sens_at_target", "spec_at_target", "brier", "ece", "n", "n_positive")
MULTICLASS_METRIC_KEYS = ("accuracy", "kappa_quadratic", "brier", "ece", "n")


@dataclass(frozen=True)
class Task:
    """One prediction task: data, labels, samples, metrics, decision and outputs."""

    name: str
    label_column: str                           # table column holding the label (derived by `derive_label` if set)
    sample_recipe: str                          # pipeline.samples recipe: "breast" | "lesion" | ...
    select_rows: Callable[[pd.DataFrame, Mapping[str, Any]], pd.DataFrame]  # (full table, dataset section) -> rows
    metric_fn: Callable[..., dict[str, float]]  # (y, proba, call, classes, **kw) -> metrics
    metric_keys: tuple[str, ...]                # the metric function's keys (before a prefix), for validation
    headline_keys: tuple[str, ...]              # metrics printed, stored on the card and as version tags
    default_champion_metric: str
    decision_rule: str                          # DECISION_RULES name used at training time (ordinal tasks:
                                                # with evaluation.decision "argmax"; see `training_rule`)
    default_classes: tuple[str, ...] | None = None   # None: resolved from the data (ordinal schemes, else sorted)
    ordinal: bool = False
    density_labels: bool = False                # its classes are breast-density labels (dense_classes among them)
    exam_pooled: bool = False                   # the clinical unit is the exam: probabilities averaged per exam
    derive_label: Callable[[pd.DataFrame], pd.Series] | None = None  # label from other columns (e.g. pathology)
    levels: tuple[str, ...] = ()                # fused units scored beside images: "breast" (views), "exam"
    pipeline_builder: str = "standard"          # pipeline.model.estimators.PIPELINE_BUILDERS name
    region_free: bool = False                   # a whole-image model: the app shows it when no region is drawn
    needs_roi_note: str | None = None           # note shown when an image is scored without the ROI it expects
    display_label: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # --- names ------------------------------------------------------------------------------------------------
    @property
    def default_model_name(self) -> str:
        return f"mammoscope-{self.name}"

    @property
    def default_experiment(self) -> str:
        return str(self.extra.get("experiment") or f"experiments/mias_{self.name}_fused.yaml")

    @property
    def main_experiment(self) -> str:
        """The experiment `mammoscope main` trains for this task: one a stranger's machine can get the data of
        (mini-MIAS, downloaded when absent), where the default experiment needs another dataset."""
        return str(self.extra.get("main_experiment") or self.default_experiment)

    @property
    def in_main(self) -> bool:
        """Whether `mammoscope main` trains this task (every task the app serves, unless its entry says otherwise)."""
        return bool(self.extra.get("in_main", True))

    @property
    def rule(self) -> DecisionRule:
        return get_rule(self.decision_rule)

    def training_rule(self, config: Mapping[str, Any]) -> DecisionRule:
        """The rule training fits and stores on the card: an ordinal task with evaluation.decision "ordinal" calls
        by cut-points (ORDINAL_RULE), every other task (or "argmax") by its `decision_rule`."""
        if self.ordinal and config["evaluation"].get("decision", "ordinal") == "ordinal":
            return get_rule(ORDINAL_RULE)
        return self.rule

    def classifier_decision(self, config: Mapping[str, Any]) -> str:
        """PatientCalibratedClassifier's `decision`: "ordinal" when the training rule needs cut-points, else
        "argmax"."""
        return "ordinal" if self.training_rule(config).name == ORDINAL_RULE else "argmax"

    @property
    def uses_threshold(self) -> bool:
        """Whether training picks an operating point on the positive-class probability (binary tasks)."""
        return self.decision_rule == "threshold"

    @property
    def whole_breast(self) -> bool:
        """Whether samples show a whole breast (so the breast mask is re-estimated on them)."""
        return self.sample_recipe != "lesion"

    # --- data -------------------------------------------------------------------------------------------------
    def rows(self, full: pd.DataFrame, dataset: Mapping[str, Any]) -> pd.DataFrame:
        """The task's rows of a dataset table, with the label column (derived where the task says so)."""
        table = self.select_rows(full, dataset)
        if self.derive_label is not None:
            table = table.assign(**{self.label_column: self.derive_label(table)})
        return table

    def resolve_classes(self, labels: Sequence[str], configured: Sequence | None = None) -> list[str]:
        """Class order: the experiment's, else the task's, else a known ordinal scheme containing them, else sorted."""
        if configured is not None:
            return [str(c) for c in configured]
        if self.default_classes is not None:
            return list(self.default_classes)
        return ordinal_scheme(labels)

    # --- evaluation and serving -------------------------------------------------------------------------------
    def metrics(self, y: np.ndarray, proba: np.ndarray, call: np.ndarray | None, classes: Sequence[str],
                **kw: Any) -> dict[str, float]:
        """The task's metrics of out-of-fold probabilities and the model's calls (binary: at the operating point;
        multiclass: class indices of the decision rule, None = arg-max)."""
        return self.metric_fn(y, proba, call, classes, **kw)

    def metric_names(self, classes: Sequence[str] | None = None) -> set[str]:
        """Every metric key of this task's fixed prefixes (cv_, density subgroup and exam prefixes, CI bounds); the
        per-machine keys `site/<column>/<value>/*` depend on the data and are not listed."""
        base = set(self.metric_keys) | {f"recall_{c}" for c in (classes or [])}
        base |= {f"{k}_ci_{side}" for k in self.metric_keys for side in ("low", "high")}
        return {p + k for p in self._metric_prefixes() for k in base}

    def _metric_prefixes(self) -> list[str]:
        levels = dict.fromkeys((["exam"] if self.exam_pooled else []) + list(self.levels))
        return ["cv_", "dense_", "nondense_"] + [f"cv_{lv}_" for lv in levels]

    def is_metric(self, key: str) -> bool:
        """Whether `key` names a metric of this task (per-class recalls of any class included)."""
        prefixes = self._metric_prefixes()
        if any(key.startswith(p + "recall_") for p in prefixes) and not self.uses_threshold:
            return True
        return key in self.metric_names()

    def explain_target(self, proba: np.ndarray) -> int:
        """The class index an explanation explains: the positive class of a binary task, else the most probable."""
        return 1 if self.uses_threshold else int(np.argmax(proba))

    def output_columns(self, classes: Sequence[str], *, sets: bool = False, thresholds: bool = False) -> list[str]:
        """Batch output columns of this task: probabilities per class, call, model name and version; with `sets` the
        conformal prediction set (`_set`), with `thresholds` the threshold applied and why (`_threshold`,
        `_threshold_reason`: per-group operating points)."""
        cols = [f"{self.name}_p_{c}" for c in classes] + [f"{self.name}_{k}" for k in ("call", "model", "version")]
        cols += [f"{self.name}_set"] if sets else []
        return cols + ([f"{self.name}_threshold", f"{self.name}_threshold_reason"] if thresholds else [])


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task to the registry (a new task = one entry here + its sample recipe); returns it."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(task: "str | Task") -> Task:
    """The registered Task (a Task passes through); ValueError naming the known tasks."""
    if isinstance(task, Task):
        return task
    try:
        return TASKS[str(task)]
    except KeyError:
        raise ValueError(f"task must be one of {list(TASKS)}. Got {task!r} instead.") from None


register_task(Task(
    name="density",
    label_column="density",
    sample_recipe="breast",
    select_rows=_density_rows,
    metric_fn=_multiclass_metrics,
    metric_keys=MULTICLASS_METRIC_KEYS,
    headline_keys=("cv_kappa_quadratic", "cv_accuracy", "cv_brier", "cv_ece", "dense_accuracy", "nondense_accuracy",
                   "cv_exam_kappa_quadratic", "cv_exam_accuracy"),
    default_champion_metric="cv_kappa_quadratic",
    decision_rule="argmax",
    ordinal=True,
    density_labels=True,
    exam_pooled=True,
    display_label="Breast density (calibrated)",
    description="one row per image, the whole breast; BI-RADS-style density classes",
))
register_task(Task(
    name="malignancy",
    label_column="pathology",
    sample_recipe="lesion",
    select_rows=_finding_rows,
    metric_fn=_binary_metrics,
    metric_keys=BINARY_METRIC_KEYS,
    headline_keys=("cv_roc_auc", "cv_pr_auc", "cv_sens_at_target", "cv_spec_at_target", "cv_brier", "cv_ece",
                   "dense_sens_at_target", "dense_spec_at_target", "nondense_sens_at_target",
                   "nondense_spec_at_target"),
    default_champion_metric="cv_roc_auc",
    decision_rule="threshold",
    default_classes=PATHOLOGIES,
    needs_roi_note=("no ROI given: the whole breast was scored, but this model was trained on lesion crops; draw a "
                    "box around the finding for a meaningful malignancy probability"),
    display_label="Malignancy of the region (calibrated)",
    description="one row per finding, a crop around its ROI; benign vs malignant",
))


def _screening_rows(full: pd.DataFrame, dataset: Mapping[str, Any]) -> pd.DataFrame:
    from pipeline.io.datasets.screening import image_rows

    return image_rows(full)


def _screening_label(table: pd.DataFrame) -> pd.Series:
    from pipeline.io.datasets.screening import screening_label

    return screening_label(table)


register_task(Task(
    name="screening",
    label_column="screening",
    sample_recipe="highres",
    select_rows=_screening_rows,
    derive_label=_screening_label,
    metric_fn=_binary_metrics,
    metric_keys=BINARY_METRIC_KEYS,
    headline_keys=("cv_roc_auc", "cv_spec_at_target", "cv_sens_at_target", "cv_image_roc_auc",
                   "cv_image_spec_at_target", "cv_image_sens_at_target", "cv_breast_roc_auc",
                   "cv_breast_spec_at_target", "cv_breast_sens_at_target", "cv_exam_roc_auc",
                   "cv_exam_spec_at_target", "cv_exam_sens_at_target", "cv_brier", "cv_ece",
                   "dense_roc_auc", "nondense_roc_auc"),
    default_champion_metric="cv_roc_auc",
    decision_rule="threshold",
    default_classes=("not_malignant", "malignant"),
    levels=("breast", "exam"),
    pipeline_builder="tiles",
    region_free=True,
    extra={"experiment": "experiments/cdd_cesm_screening.yaml", "main_experiment": "experiments/mias_screening.yaml"},
    display_label="Screening: cancer in this image (calibrated)",
    description="one row per image, the whole breast at higher resolution in tiles; malignant vs benign or normal",
))


def task_names() -> tuple[str, ...]:
    """The registered task names, in registration order."""
    return tuple(TASKS)
