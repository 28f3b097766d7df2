"""Train one experiment: data -> samples -> patient-level CV (metrics, plots, OOF CSV) -> final model -> registry.

One MLflow parent run per call with a child run per fold (through `registry`, the only package that imports mlflow).
The final model is fitted on all rows; its calibration and operating point come from inner patient-level splits of
those rows (pipeline.model.PatientCalibratedClassifier), never from test data.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone

from pipeline.errors import ConfigError, DatasetError
from pipeline.evaluate import (
    CVResult,
    binary_metrics,
    cross_validate,
    exam_average,
    multiclass_metrics,
    patient_stratified_folds,
    subgroup_metrics,
)
from pipeline.experiment import Experiment, flatten_config
from pipeline.model import build_pipeline, disable_cache, final_classifier

__all__ = [
    "ORDINAL_SCHEMES",
    "TaskData",
    "TrainResult",
    "load_task_data",
    "resolve_classes",
    "dense_classes_for",
    "sample_params",
    "evaluate_experiment",
    "exam_ids",
    "train_experiment",
]

log = logging.getLogger(__name__)

#: Known ordinal density label sets, in order (for the class order of quadratic-weighted kappa) with their dense part.
ORDINAL_SCHEMES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("F", "G", "D"), ("D",)),
    (("A", "B", "C", "D"), ("C", "D")),
    (("1", "2", "3", "4"), ("3", "4")),
)
LABEL_COLUMN = {"density": "density", "malignancy": "pathology"}


@dataclass
class TaskData:
    """Everything a training needs about its data: table rows, samples X, class indices y, patient groups."""

    table: pd.DataFrame
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    classes: list[str]
    dense_classes: list[str]
    density: np.ndarray
    source: str
    errors: list[Any] = field(default_factory=list)


@dataclass
class TrainResult:
    """What one `mammoscope train` produced."""

    experiment: str
    task: str
    metrics: dict[str, float]
    cv: CVResult
    oof: pd.DataFrame
    seconds: dict[str, float]
    run_id: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    promoted: bool | None = None
    promotion_reason: str = ""


def resolve_classes(task: str, labels: Sequence[str], configured: Sequence | None) -> list[str]:
    """Class order: the experiment's, else benign/malignant, else a known ordinal density scheme, else sorted."""
    if configured is not None:
        return [str(c) for c in configured]
    if task == "malignancy":
        return ["benign", "malignant"]
    present = {str(v) for v in labels}
    for scheme, _ in ORDINAL_SCHEMES:
        if present <= set(scheme):
            return list(scheme)
    return sorted(present)


def dense_classes_for(classes: Sequence[str], configured: Sequence | None) -> list[str]:
    """Density labels counted as dense: the experiment's, else the known scheme's (D; C, D; 3, 4), else none."""
    if configured is not None:
        return [str(c) for c in configured]
    for scheme, dense in ORDINAL_SCHEMES:
        if set(map(str, classes)) <= set(scheme):
            return list(dense)
    return []


def sample_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that turn an image into a model input (stored with the model, reused by predict)."""
    s = config["samples"]
    return {"size": int(s["size"]), "context": float(s["context"]), "min_side": int(s["min_side"])}


def _subsample(table: pd.DataFrame, label_col: str, n: int, seed: int) -> pd.DataFrame:
    """At most n rows, whole patients, stratified by label (seeded)."""
    if len(table) <= n:
        return table
    patients = table.groupby("patient_id")[label_col].first()
    rng = np.random.default_rng(seed)
    per_class = {c: list(rng.permutation(p.index.to_numpy())) for c, p in patients.groupby(patients)}
    chosen: list[str] = []
    count = 0
    sizes = table.groupby("patient_id").size()
    while count < n and any(per_class.values()):
        for c in sorted(per_class):
            if per_class[c] and count < n:
                pid = per_class[c].pop()
                chosen.append(pid)
                count += int(sizes[pid])
    return table[table["patient_id"].isin(chosen)].reset_index(drop=True)


def load_task_data(config: Mapping[str, Any], progress: Callable[[str], None] = log.info) -> TaskData:
    """Dataset table of the task, labelled rows in the class set, and their samples at working resolution."""
    from pipeline.datasets import density_table, lesion_table, load_dataset
    from pipeline.paths import default_mias_dir
    from pipeline.samples import load_samples

    ds = config["dataset"]
    task = ds["task"]
    path = Path(ds["path"]).expanduser() if ds["path"] else default_mias_dir()
    full = load_dataset(ds["adapter"], path)
    table = density_table(full) if task == "density" else lesion_table(full)
    if task == "malignancy" and not ds["require_roi"]:
        table = full[full["pathology"].isin(["benign", "malignant"])].reset_index(drop=True)
    label_col = LABEL_COLUMN[task]
    table = table[table[label_col].notna()].reset_index(drop=True)
    classes = resolve_classes(task, table[label_col].astype(str).unique(), ds["classes"])
    unknown = sorted(set(table[label_col].astype(str)) - set(classes))
    if unknown:
        log.warning("dropping %d rows with labels %s not in dataset.classes %s",
                    int(table[label_col].astype(str).isin(unknown).sum()), unknown, classes)
        table = table[table[label_col].astype(str).isin(classes)].reset_index(drop=True)
    if ds["max_samples"]:
        table = _subsample(table, label_col, int(ds["max_samples"]), int(config["evaluation"]["seed"]))
    if task == "malignancy" and ds["require_roi"] and table[label_col].nunique() < 2:
        labelled = full[full["pathology"].isin(classes)]
        no_roi = int(labelled["roi_kind"].isna().sum())
        if no_roi:
            raise DatasetError(
                f"{path}: {len(labelled)} findings are labelled {'/'.join(classes)}, but {no_roi} of them have no ROI "
                f"(circle, box or mask file) and the malignancy task crops around it; give the ROIs (CBIS-DDSM: "
                f"download the ROI mask images with the mammograms) or set dataset.require_roi=false to use whole "
                f"images")
    if table.empty or table[label_col].nunique() < 2:
        raise DatasetError(f"{path}: the {task} task needs rows of at least two classes of {classes}; found "
                           f"{table[label_col].value_counts().to_dict()} (check dataset.adapter/path/classes)")
    sp = sample_params(config)
    progress(f"{len(table)} {task} samples from {path} ({table['patient_id'].nunique()} patients); "
             f"preparing {sp['size']} px samples")
    X, errors = load_samples(table, task, size=sp["size"], n_jobs=int(config["samples"]["n_jobs"]),
                             whole_breast_without_roi=not ds["require_roi"], context=sp["context"],
                             min_side=sp["min_side"])
    X = np.asarray(X, dtype=np.float32)
    errors = pd.DataFrame(errors) if not isinstance(errors, pd.DataFrame) else errors
    if len(errors):
        bad = sorted(int(p) for p in errors["position"])
        log.warning("%d samples could not be prepared and were skipped, e.g. %s", len(errors),
                    errors["error"].head(3).tolist())
        table = table.drop(index=bad).reset_index(drop=True)
    if len(X) != len(table):
        raise DatasetError(f"load_samples returned {len(X)} samples for {len(table)} usable rows; cannot align them")
    y = np.array([classes.index(str(v)) for v in table[label_col]], dtype=int)
    if len(set(y.tolist())) < 2:
        raise DatasetError(f"{path}: after skipping {len(errors)} samples that could not be prepared, the {task} task "
                           f"has {len(y)} samples of {len(set(y.tolist()))} class(es); it needs two. First problems: "
                           + "; ".join(map(str, errors["error"].head(3).tolist() if len(errors) else [])))
    dens = table["density"].astype(object).where(table["density"].notna(), None).to_numpy()
    return TaskData(table=table, X=X, y=y, groups=table["patient_id"].astype(str).to_numpy(), classes=classes,
                    dense_classes=dense_classes_for(classes if task == "density" else
                                                    resolve_classes("density", [d for d in dens if d], None),
                                                    ds["dense_classes"]),
                    density=dens, source=str(path), errors=errors.to_dict("records"))


def exam_ids(data: TaskData) -> np.ndarray:
    """One examination id per row: the table's `exam_id` where the row has one, else its patient id."""
    if "exam_id" not in data.table.columns:
        return np.asarray(data.groups, dtype=str)
    patients = np.asarray([f"patient:{g}" for g in data.groups], dtype=object)
    exam = data.table["exam_id"]
    known = exam.notna().to_numpy() & (exam.astype(str).str.strip() != "").to_numpy()
    return np.where(known, [f"exam:{e}" for e in exam.astype(str)], patients).astype(str)


def _metrics(task: str, y: np.ndarray, proba: np.ndarray, call: np.ndarray | None, classes: list[str],
             ev: Mapping[str, Any], prefix: str, n_resamples: int | None = None) -> dict[str, float]:
    kw = dict(n_resamples=ev["bootstrap_resamples"] if n_resamples is None else n_resamples,
              confidence_level=ev["confidence_level"], seed=ev["seed"], ece_bins=ev["ece_bins"], prefix=prefix)
    if task == "malignancy":
        return binary_metrics(y, proba[:, 1], call, **kw)
    return multiclass_metrics(y, proba, classes, pred=call, **kw)


def evaluate_experiment(config: Mapping[str, Any], data: TaskData, cache_dir: str | Path | None = None,
                        progress: Callable[[str], None] = log.info,
                        on_fold: Callable[[int, dict[str, float]], None] | None = None
                        ) -> tuple[dict[str, float], CVResult, pd.DataFrame]:
    """Patient-level CV of the experiment's Pipeline: (cv_* and subgroup metrics, OOF result, OOF table)."""
    task = config["dataset"]["task"]
    ev = config["evaluation"]
    folds = patient_stratified_folds(data.y, data.groups, ev["folds"], ev["seed"])
    for tr, te in folds:
        crossing = set(data.groups[tr]) & set(data.groups[te])
        if crossing:  # StratifiedGroupKFold guarantees this; checked because the whole evaluation rests on it
            raise RuntimeError(f"patients {sorted(crossing)[:3]} are in both a training and a test fold")
    pipe = build_pipeline(config, cache_dir)
    started = time.perf_counter()
    exams = exam_ids(data)
    calls, exam_calls = np.zeros(len(data.y), int), np.zeros(len(data.y), int)  # #16: the model's own decisions

    def fold_done(i: int, tr: np.ndarray, te: np.ndarray, est: Any, p: np.ndarray) -> None:
        calls[te] = final_classifier(est).decide(p)
        exam_calls[te] = final_classifier(est).decide(exam_average(p, exams[te]))
        thr = float(final_classifier(est).threshold_)
        call = p[:, 1] >= thr if task == "malignancy" else None
        fm = _metrics(task, data.y[te], p, call if task == "malignancy" else calls[te], data.classes, ev, prefix="",
                      n_resamples=0)
        fm = {k: v for k, v in fm.items() if not k.endswith(("_ci_low", "_ci_high"))}
        if task == "malignancy":
            fm["threshold"] = thr
        fm["n_train"] = float(len(tr))
        headline = "roc_auc" if task == "malignancy" else "kappa_quadratic"
        progress(f"fold {i + 1}/{len(folds)}: train {len(tr)} test {len(te)} {headline} "
                 f"{fm.get(headline, float('nan')):.3f} ({time.perf_counter() - started:.0f} s)")
        if on_fold is not None:
            on_fold(i, fm)

    cv = cross_validate(lambda: clone(pipe), data.X, data.y, data.groups, folds,
                        fit_groups_param="classifier__groups", on_fold=fold_done)
    call = cv.call if task == "malignancy" else None
    metrics = _metrics(task, data.y, cv.proba, call if task == "malignancy" else calls, data.classes, ev,
                       prefix="cv_")
    kw = dict(n_resamples=ev["bootstrap_resamples"], confidence_level=ev["confidence_level"], seed=ev["seed"],
              ece_bins=ev["ece_bins"])
    metrics.update(subgroup_metrics(task, data.y, cv.proba, call, data.density, data.dense_classes,
                                    data.classes, **kw))
    exam_proba = None
    if task == "density" and len(set(exams)) < len(exams):  # some exam has several images: score it as a whole
        exam_proba = exam_average(cv.proba, exams)
        # one row per (exam, label): an exam's images share their averaged call, so counting each image would
        # shrink the bootstrap CI; exams whose images carry different labels keep one row per label
        first = ~pd.DataFrame({"exam": exams, "y": data.y}).duplicated().to_numpy()
        metrics.update(multiclass_metrics(data.y[first], exam_proba[first], data.classes, prefix="cv_exam_",
                                          pred=exam_calls[first], **kw))
    oof = pd.DataFrame({"sample_id": data.table["sample_id"].astype(str), "patient_id": data.groups,
                        "fold": cv.fold, "label": [data.classes[i] for i in data.y],
                        "density": data.density})
    for j, c in enumerate(data.classes):
        oof[f"p_{c}"] = cv.proba[:, j]
    oof["predicted"] = [data.classes[i] for i in cv.proba.argmax(axis=1)]
    if task != "malignancy":
        oof["call"] = [data.classes[i] for i in calls]
    if exam_proba is not None:
        oof["exam_id"] = exams
        for j, c in enumerate(data.classes):
            oof[f"exam_p_{c}"] = exam_proba[:, j]
        oof["exam_predicted"] = [data.classes[i] for i in exam_proba.argmax(axis=1)]
    if task == "malignancy":
        oof["threshold"] = cv.threshold
        oof["call"] = np.where(call, data.classes[1], data.classes[0])
    return metrics, cv, oof


def _plots(task: str, data: TaskData, cv: CVResult, n_bins: int) -> dict[str, Any]:
    from pipeline.evaluate import plot_confusion, plot_pr, plot_reliability, plot_roc

    figs = {"plots/reliability.png": plot_reliability(data.y, cv.proba, n_bins)}
    if task == "malignancy":
        figs["plots/roc.png"] = plot_roc(data.y, cv.proba[:, 1])
        figs["plots/pr.png"] = plot_pr(data.y, cv.proba[:, 1])
        figs["plots/confusion.png"] = plot_confusion(data.y, cv.call.astype(int), data.classes,
                                                     "Confusion at the operating point (out-of-fold)")
    else:
        figs["plots/confusion.png"] = plot_confusion(data.y, cv.proba.argmax(axis=1), data.classes)
    return figs


def headline_keys(task: str) -> list[str]:
    """The metrics printed and stored as model-version tags."""
    if task == "malignancy":
        return ["cv_roc_auc", "cv_pr_auc", "cv_sens_at_target", "cv_spec_at_target", "cv_brier", "cv_ece",
                "dense_sens_at_target", "dense_spec_at_target", "nondense_sens_at_target", "nondense_spec_at_target"]
    return ["cv_kappa_quadratic", "cv_accuracy", "cv_brier", "cv_ece", "dense_accuracy", "nondense_accuracy",
            "cv_exam_kappa_quadratic", "cv_exam_accuracy"]


def train_experiment(exp: Experiment, tracking_uri: str | None = None, *, register: bool = True,
                     cache_dir: str | Path | None = None, progress: Callable[[str], None] = log.info) -> TrainResult:
    """Evaluate by patient-level CV, fit the final model on all rows, log everything and register the model."""
    import matplotlib.pyplot as plt

    import registry
    from pipeline.paths import default_cache_dir

    cfg = exp.config
    task = exp.task
    cache = cache_dir or cfg["compute"]["cache_dir"] or default_cache_dir()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_task_data(cfg, progress)
    seconds["samples"] = time.perf_counter() - t0
    registry.configure(tracking_uri)
    tr = cfg["tracking"]
    with registry.training_run(tr["experiment_name"], run_name=exp.name, params=flatten_config(cfg),
                               tags={"mammoscope.task": task, "mammoscope.experiment": exp.name,
                                     "mammoscope.experiment_file": str(exp.path or ""),
                                     "mammoscope.data_source": data.source}) as run:
        digest = registry.log_dataset_digest(
            data.table[["sample_id", "patient_id", "path", "density", "pathology"]].astype(str),
            name=f"{cfg['dataset']['adapter'] or 'dataset'}-{task}")
        registry.log_text(exp.to_yaml(), "config/experiment.yaml")
        t1 = time.perf_counter()
        metrics, cv, oof = evaluate_experiment(
            cfg, data, cache, progress,
            on_fold=lambda i, fm: registry.fold_run(i, metrics=fm))
        seconds["cv"] = time.perf_counter() - t1
        registry.log_metrics(metrics)
        registry.log_table(oof, "predictions/oof.csv")
        for path, fig in _plots(task, data, cv, cfg["evaluation"]["ece_bins"]).items():
            registry.log_figure(fig, path)
            plt.close(fig)
        for line in _metric_lines(metrics, headline_keys(task)):
            progress(line)
        result = TrainResult(exp.name, task, metrics, cv, oof, seconds, run_id=run.run_id)
        if register:
            t2 = time.perf_counter()
            progress("fitting the final model on all samples")
            final = build_pipeline(cfg, cache).fit(data.X, data.y, classifier__groups=data.groups)
            disable_cache(final)
            clf = final_classifier(final)
            meta = {
                "task": task, "classes": data.classes, "threshold": float(clf.threshold_),
                "cutpoints": None if clf.cutpoints_ is None else [float(c) for c in clf.cutpoints_],  # #16 ordinal
                "target_sensitivity": float(cfg["evaluation"]["target_sensitivity"]),
                "sample_params": sample_params(cfg), "experiment": exp.name, "data_digest": digest,
                "dense_classes": data.dense_classes, "selection_metric": tr["champion_metric"],
                "metrics": {k: metrics[k] for k in headline_keys(task) if k in metrics and np.isfinite(metrics[k])},
                "cnn": bool(cfg["features"]["cnn"]["enabled"]),
                "handcrafted": bool(cfg["features"]["handcrafted"]["enabled"]),
            }
            info = registry.log_model(final, artifact_name="model", registered_model_name=tr["registered_model_name"],
                                      input_example=data.X[:2], metadata=meta)
            metric = tr["champion_metric"]
            if metric not in metrics:
                raise ConfigError(f"tracking.champion_metric: {metric!r} is not a metric of this {task} experiment; "
                                  f"use one of {sorted(k for k in metrics if k.startswith('cv_'))}")
            decision = registry.maybe_promote(tr["registered_model_name"], info.version, metric=metric,
                                              value=metrics[metric], higher_is_better=tr["higher_is_better"],
                                              data_digest=digest)
            seconds["final"] = time.perf_counter() - t2
            result.model_name, result.model_version = info.name, info.version
            result.promoted, result.promotion_reason = decision.promoted, decision.reason
            progress(f"registered {info.name} version {info.version}; champion "
                     f"{'moved' if decision.promoted else 'kept'}: {decision.reason}")
        seconds["total"] = time.perf_counter() - t0
        registry.log_metrics({f"seconds_{k}": v for k, v in seconds.items()})
    return result


def _metric_lines(metrics: Mapping[str, float], keys: Sequence[str]) -> list[str]:
    lines = []
    for key in keys:
        if key not in metrics:
            continue
        lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        ci = f" [{lo:.3f}-{hi:.3f}]" if lo is not None and hi is not None and np.isfinite(lo) else ""
        lines.append(f"  {key} = {metrics[key]:.3f}{ci}")
    return lines
