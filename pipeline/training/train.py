"""Train one experiment: data -> samples -> patient-level CV (metrics, plots, OOF CSV) -> final model -> registry.

One MLflow parent run per call with a child run per fold (through `registry`, the only package that imports mlflow).
The final model is fitted on all rows; its calibration and operating point come from inner patient-level splits of
those rows (pipeline.model.estimators.PatientCalibratedClassifier), never from test data.
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

from pipeline.config.card import ModelCard, metric_entry
from pipeline.config.card import code_version as card_code_version
from pipeline.errors import ConfigError, DatasetError
from pipeline.evaluation.metrics import exam_average
from pipeline.evaluation.splits import patient_stratified_folds
from pipeline.io.exams import exam_ids
from pipeline.training.cv import CVResult, cross_validate, site_groups, site_metrics, subgroup_metrics
from pipeline.config.experiment import Experiment, flatten_config
from pipeline.model.estimators import build_pipeline, disable_cache, final_classifier
from pipeline.config.tasks import ORDINAL_SCHEMES, Task, get_task, ordinal_scheme
from pipeline.training.trust import FoldTrust, card_entries, final_trust

__all__ = [
    "ORDINAL_SCHEMES",
    "TaskData",
    "TrainResult",
    "load_task_data",
    "load_task_features",
    "task_table",
    "resolve_classes",
    "dense_classes_for",
    "sample_params",
    "evaluate_experiment",
    "head_pipeline",
    "fit_final",
    "train_experiment",
    "build_card",
]

log = logging.getLogger(__name__)



@dataclass
class TaskData:
    """Everything a training needs about its data: table rows, samples X (or streamed features), class indices y,
    patient groups."""

    table: pd.DataFrame
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    classes: list[str]
    dense_classes: list[str]
    density: np.ndarray
    source: str
    errors: list[Any] = field(default_factory=list)
    features: np.ndarray | None = None   # streamed: frozen-feature rows (n, d) of the front; X is then None
    front: Any = None                    # streamed: the fitted frozen steps (preprocess, features) before the head
    example: np.ndarray | None = None    # streamed: two samples (input example of the registered model)
    stream: Any = None                   # streamed: pipeline.training.stream.StreamResult (counts, timings)
    samples: Any = None                  # fine-tuning: pipeline.model.sample_rows.SampleLayout (store on disk;
                                         # `features` are then [frozen features | store row])
    copies: Any = None                   # training-time export copies (pipeline.training.copies.ExportCopies) in
                                         # the form of X / features: they only train, nothing is tested on them

    @property
    def streamed(self) -> bool:
        """True when the data are the frozen-feature matrix (the head is fitted on `features`)."""
        return self.features is not None


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


def resolve_classes(task: str | Task, labels: Sequence[str], configured: Sequence | None) -> list[str]:
    """Class order: the experiment's, else the task's, else a known ordinal density scheme, else sorted."""
    return get_task(task).resolve_classes(labels, configured)


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
    params = {"size": int(s["size"]), "context": float(s["context"]), "min_side": int(s["min_side"])}
    if get_task(config["dataset"]["task"]).sample_recipe == "highres":  # the breast at scale x size (screening)
        params["scale"] = float(config["screening"]["scale"])
        aspect = float(config["screening"].get("aspect", 1.0))
        if aspect != 1.0:  # a square sample's parameters (and feature caches) stay as they were
            params["aspect"] = aspect
    return params


def _shape_text(sp: Mapping[str, Any]) -> str:
    """'448' (a square sample's side) or '634 x 317' (H x W) for progress lines."""
    from pipeline.samples import sample_shape

    h, w = sample_shape(int(sp["size"]), sp.get("scale", 1.0), sp.get("aspect", 1.0))
    return str(h) if h == w else f"{h} x {w}"


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


def task_table(config: Mapping[str, Any]) -> tuple[pd.DataFrame, list[str], Path]:
    """The task's labelled rows of the dataset (label in the class set, subsampled by dataset.max_samples), the
    class order and the dataset path; raises DatasetError when they cannot make a two-class problem."""
    from pipeline.io.datasets import load_dataset
    from pipeline.paths import default_mias_dir

    ds = config["dataset"]
    spec = get_task(ds["task"])
    task = spec.name
    path = Path(ds["path"]).expanduser() if ds["path"] else default_mias_dir()
    if not path.is_absolute() and not path.exists():  # experiments name paths relative to the project folder
        from pipeline.paths import PROJECT_DIR

        path = PROJECT_DIR / path
    if not ds["path"] and not path.exists():
        raise DatasetError(f"{path}: mini-MIAS, the default dataset, is not there; `mammoscope data fetch mias` "
                           "downloads it (or set MAMMOSCOPE_DATA to a folder holding it in mias/)")
    full = load_dataset(ds["adapter"], path)
    table = spec.rows(full, ds)
    label_col = spec.label_column
    table = table[table[label_col].notna()].reset_index(drop=True)
    classes = spec.resolve_classes(table[label_col].astype(str).unique(), ds["classes"])
    unknown = sorted(set(table[label_col].astype(str)) - set(classes))
    if unknown:
        log.warning("dropping %d rows with labels %s not in dataset.classes %s",
                    int(table[label_col].astype(str).isin(unknown).sum()), unknown, classes)
        table = table[table[label_col].astype(str).isin(classes)].reset_index(drop=True)
    if ds["max_samples"]:
        table = _subsample(table, label_col, int(ds["max_samples"]), int(config["evaluation"]["seed"]))
    if not spec.whole_breast and ds["require_roi"] and table[label_col].nunique() < 2:
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
    return table, classes, path


def _task_data(config: Mapping[str, Any], table: pd.DataFrame, classes: list[str], path: Path, errors: pd.DataFrame,
               n_prepared: int, **arrays: Any) -> TaskData:
    """TaskData of the rows that could be prepared (`errors` lists the others by table position)."""
    ds = config["dataset"]
    spec = get_task(ds["task"])
    if len(errors):
        bad = sorted(int(p) for p in errors["position"])
        log.warning("%d samples could not be prepared and were skipped, e.g. %s", len(errors),
                    errors["error"].head(3).tolist())
        table = table.drop(index=bad).reset_index(drop=True)
    if n_prepared != len(table):
        raise DatasetError(f"{n_prepared} samples were prepared for {len(table)} usable rows; cannot align them")
    y = np.array([classes.index(str(v)) for v in table[spec.label_column]], dtype=int)
    if len(set(y.tolist())) < 2:
        raise DatasetError(f"{path}: after skipping {len(errors)} samples that could not be prepared, the "
                           f"{spec.name} task has {len(y)} samples of {len(set(y.tolist()))} class(es); it needs two. "
                           "First problems: " + "; ".join(map(str, errors["error"].head(3).tolist()
                                                               if len(errors) else [])))
    dens = table["density"].astype(object).where(table["density"].notna(), None).to_numpy()
    density_labels = classes if spec.density_labels else ordinal_scheme([d for d in dens if d])
    return TaskData(table=table, X=arrays.pop("X", None), y=y, groups=table["patient_id"].astype(str).to_numpy(),
                    classes=classes, dense_classes=dense_classes_for(density_labels, ds["dense_classes"]),
                    density=dens, source=str(path), errors=errors.to_dict("records"), **arrays)


def sample_jobs(config: Mapping[str, Any]) -> int:
    """Worker processes preparing samples in memory: samples.n_jobs, else compute.n_jobs (0/None = every core)."""
    from pipeline.compute import resolve_compute

    own = config["samples"].get("n_jobs")
    jobs = resolve_compute(config, default_cache=False).n_jobs if own is None else (None if int(own) <= 0 else own)
    return -1 if jobs is None else int(jobs)


def load_task_data(config: Mapping[str, Any], progress: Callable[[str], None] = log.info, *,
                   progress_bar: bool = False) -> TaskData:
    """Dataset table of the task, labelled rows in the class set, and their samples at working resolution, all in
    memory (X (n, S*S)): the path of fine-tuning and of tests; training streams features instead
    (`load_task_features`). `progress_bar`: a tqdm bar on stderr while the samples are prepared."""
    spec = get_task(config["dataset"]["task"])
    table, classes, path = task_table(config)
    sp = sample_params(config)
    progress(f"{len(table)} {spec.name} samples from {path} ({table['patient_id'].nunique()} patients); "
             f"preparing {_shape_text(sp)} px samples")
    X, errors = task_samples(config, table, progress_bar=progress_bar)
    data = _task_data(config, table, classes, path, errors, len(X), X=X)
    from pipeline.training.copies import load_copies

    data.copies = load_copies(config, data, progress)
    return data


def task_samples(config: Mapping[str, Any], table: pd.DataFrame, *, progress_bar: bool = False,
                 export: tuple[int, int] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """(X float32 (n_ok, S*S), errors DataFrame): the task's samples of `table`'s rows in memory (`export`: of each
    image's re-export, pipeline.training.copies)."""
    from pipeline.samples import load_samples

    sp = sample_params(config)
    X, errors = load_samples(table, get_task(config["dataset"]["task"]).sample_recipe, size=sp["size"],
                             n_jobs=sample_jobs(config), whole_breast_without_roi=not config["dataset"]["require_roi"],
                             context=sp["context"], min_side=sp["min_side"], progress_bar=progress_bar,
                             export=export, **{k: sp[k] for k in ("scale", "aspect") if k in sp})
    return np.asarray(X, dtype=np.float32), pd.DataFrame(errors)


def load_task_features(config: Mapping[str, Any], progress: Callable[[str], None] = log.info, *,
                       cache_dir: str | Path | None = None, progress_bar: bool = False) -> TaskData | None:
    """The task's rows and their frozen-feature matrix, streamed (pipeline.training.stream): every image read once
    in worker processes (compute.n_jobs; Dask workers inside a compute_backend block), per-row features cached on
    disk, nothing but the feature matrix (n, d) held here. Fine-tuning experiments (stateful feature steps): their
    samples go to a store on disk (`load_task_store`). Screening streams too: its front is the whole breast's
    features and each image's tile matrix (pipeline.model.screening). None where nothing applies (no cache folder
    for a fine-tuning store): use `load_task_data`."""
    from pipeline.compute import current_session, resolve_compute
    from pipeline.training import stream

    ds = config["dataset"]
    spec = get_task(ds["task"])
    compute = resolve_compute(config, cache_dir=cache_dir)
    session = current_session()
    if session is not None and session.is_distributed and session.cache_dir is not None:
        cache = session.cache_dir  # the folder the workers were pointed at (shared storage)
    else:
        cache = compute.cache_dir
    pipe = build_pipeline(config, cache)
    parts = stream.split_pipeline(pipe)
    if parts is None:  # stateful feature steps (fine-tuning): their samples go to a store on disk
        return load_task_store(config, pipe, progress, cache, progress_bar=progress_bar)
    front, _ = parts
    table, classes, path, sp, example, fspec = _stream_front(config, front, cache)
    distributed = session is not None and session.is_distributed
    jobs = None if distributed else compute.n_jobs
    where = "on the Dask workers" if distributed else f"in {jobs or 'one per core'} worker process(es)"
    progress(f"{len(table)} {spec.name} samples from {path} ({table['patient_id'].nunique()} patients); "
             f"streaming {_shape_text(sp)} px samples through the frozen feature steps {where}")
    desc = "samples + tiles embedded" if spec.levels else "samples + features"
    result = stream.stream_features(table, fspec, n_jobs=jobs, progress_bar=progress_bar, desc=desc)
    progress(result.summary())
    data = _task_data(config, table, classes, path, result.errors, len(result.features), features=result.features,
                      front=front, example=example, stream=result)
    from pipeline.training.copies import stream_copies

    data.copies = stream_copies(config, data, front, cache, jobs, progress, progress_bar)
    return data


def _stream_front(config: Mapping[str, Any], front: Any, cache: Path | None) -> tuple[Any, ...]:
    """(table, classes, path, sample params, example samples, stream spec): the task's rows and the frozen front
    fitted on its first samples (stateless steps: fitted for their parameters only), ready to stream."""
    from pipeline.training import stream

    ds = config["dataset"]
    spec = get_task(ds["task"])
    table, classes, path = task_table(config)
    sp = sample_params(config)
    wbwr = not ds["require_roi"]
    example = stream.first_samples(table, spec.sample_recipe, sp, whole_breast_without_roi=wbwr)
    if not len(example):
        raise DatasetError(f"{path}: none of the first rows of the {spec.name} task could be prepared; check the "
                           "images (mammoscope data scan)")
    stream.fit_front(front, example)
    return table, classes, path, sp, example, stream_spec(config, front, cache)


def stream_spec(config: Mapping[str, Any], front: Any, cache: Path | None,
                export: tuple[int, int] | None = None) -> Any:
    """The worker spec (pipeline.training.stream.FeatureSpec) streaming the task's rows through the fitted `front`
    (`export`: each image's re-export instead, cached apart, pipeline.training.copies)."""
    from pipeline.training import stream

    return stream.make_spec(front, get_task(config["dataset"]["task"]).sample_recipe, sample_params(config),
                            whole_breast_without_roi=not config["dataset"]["require_roi"], cache_dir=cache,
                            image_key=config["compute"].get("image_key", "content"), export=export)


def load_task_store(config: Mapping[str, Any], pipe: Any, progress: Callable[[str], None], cache: Path | None, *,
                    progress_bar: bool = False) -> TaskData | None:
    """Fine-tuning experiments (pipeline.model.sample_rows): the frozen branches streamed to feature rows as in
    `load_task_features`, every prepared sample written once to a float32 store on disk (stream.stream_samples), and
    rows ``[frozen features | store row]``: the pixel steps read the batch they need from the store. None without a
    cache folder or for Pipelines that do not split (then the samples are held in memory: `load_task_data`)."""
    from pipeline.compute import current_session, resolve_compute
    from pipeline.model import sample_rows
    from pipeline.training import stream

    parts = sample_rows.split_samples(pipe)
    if parts is None or cache is None:
        return None
    front, _, _ = parts
    ds = config["dataset"]
    spec = get_task(ds["task"])
    compute = resolve_compute(config, cache_dir=cache)
    session = current_session()
    jobs = None if session is not None and session.is_distributed else compute.n_jobs
    table, classes, path, sp, example, fspec = _stream_front(config, front, cache)
    progress(f"{len(table)} {spec.name} samples from {path} ({table['patient_id'].nunique()} patients); "
             f"{sp['size']} px samples to a store on disk for the fine-tuned steps")
    store = stream.stream_samples(table, fspec, n_jobs=jobs, dtype=np.float32, progress_bar=progress_bar)
    ok, errors, result = store.ok.copy(), store.errors, None
    features = np.zeros((len(table), 0), dtype=np.float32)
    if fspec.branches:
        result = stream.stream_features(table, fspec, n_jobs=jobs, progress_bar=progress_bar)
        progress(result.summary())
        both = np.zeros(len(table), dtype=bool)
        both[result.positions] = True
        features = np.zeros((len(table), result.features.shape[1]), dtype=result.features.dtype)
        features[result.positions] = result.features
        extra = result.errors[~result.errors["position"].isin(errors["position"])]
        errors = pd.concat([errors, extra], ignore_index=True).sort_values("position") if len(extra) else errors
        ok &= both
    positions = np.flatnonzero(ok)
    rows = sample_rows.rows_matrix(features[positions], positions)
    return _task_data(config, table, classes, path, errors, len(rows), features=rows, front=front,
                      example=example, stream=result,
                      samples=sample_rows.layout(pipe, front, example, store.path))


def _metrics(task: str | Task, y: np.ndarray, proba: np.ndarray, call: np.ndarray | None, classes: list[str],
             ev: Mapping[str, Any], prefix: str, n_resamples: int | None = None) -> dict[str, float]:
    kw = dict(n_resamples=ev["bootstrap_resamples"] if n_resamples is None else n_resamples,
              confidence_level=ev["confidence_level"], seed=ev["seed"], ece_bins=ev["ece_bins"], prefix=prefix)
    return get_task(task).metrics(y, proba, call, classes, **kw)


def evaluate_experiment(config: Mapping[str, Any], data: TaskData, cache_dir: str | Path | None = None,
                        progress: Callable[[str], None] = log.info,
                        on_fold: Callable[[int, dict[str, float]], None] | None = None, *,
                        progress_bar: bool = False) -> tuple[dict[str, float], CVResult, pd.DataFrame]:
    """Patient-level CV of the experiment's Pipeline: (cv_* and subgroup metrics, OOF result, OOF table).

    `cache_dir` None: the experiment's compute.cache_dir, else the default cache (pipeline.compute.resolve_compute).
    `progress_bar`: a tqdm bar on stderr over the folds (feature extraction and fitting, rate and ETA)."""
    import sys

    from tqdm.auto import tqdm

    from pipeline.compute import resolve_compute

    task = get_task(config["dataset"]["task"])
    ev = config["evaluation"]
    cache_dir = resolve_compute(config, cache_dir=cache_dir).cache_dir
    folds = patient_stratified_folds(data.y, data.groups, ev["folds"], ev["seed"])
    for tr, te in folds:
        crossing = set(data.groups[tr]) & set(data.groups[te])
        if crossing:  # StratifiedGroupKFold guarantees this; checked because the whole evaluation rests on it
            raise RuntimeError(f"patients {sorted(crossing)[:3]} are in both a training and a test fold")
    pipe = build_pipeline(config, cache_dir)
    X = data.X
    fold_jobs = 1
    if data.streamed:  # the frozen front already ran (streamed features): folds fit only the stateful head
        pipe, X = head_pipeline(pipe, data), data.features
        if data.samples is None:  # a head on feature rows: folds side by side, one XGBoost thread each
            pipe, fold_jobs = _parallel_folds(pipe, config, len(folds))
    make = lambda: clone(pipe)  # noqa: E731
    levels = None
    if task.levels:  # breasts and exams beside images (screening): each fold an ExamModel, as the final model
        from pipeline.model.screening import build_exam_model, context_C
        from pipeline.training.levels import LevelTracker, check_folds

        check_folds(folds, data.table)
        levels = LevelTracker(data.table, data.y, X, config["screening"]["view_fusion"],
                              context_C(config) is not None)
        make = lambda: build_exam_model(config, clone(pipe), with_map=False)  # noqa: E731
    started = time.perf_counter()
    bar = tqdm(total=len(folds), desc="cross-validation (features + fit)", unit="fold", file=sys.stderr,
               disable=not progress_bar, dynamic_ncols=True)
    trust = FoldTrust(config, data)  # conformal sets and per-density-group thresholds, from each fold's own rows

    exams = exam_ids(data.table)
    calls, exam_calls = np.zeros(len(data.y), int), np.zeros(len(data.y), int)  # the fold models' own calls

    def fold_done(i: int, tr: np.ndarray, te: np.ndarray, est: Any, p: np.ndarray) -> None:
        clf = final_classifier(est)
        trust.add_fold(tr, te, clf, p)
        if levels is not None:
            levels.on_fold(i, tr, te, est, p)
        calls[te], exam_calls[te] = clf.decide(p), clf.decide(exam_average(p, exams[te]))
        thr = float(clf.threshold_)
        call = p[:, 1] >= thr if task.uses_threshold else calls[te]
        fm = _metrics(task, data.y[te], p, call, data.classes, ev, prefix="", n_resamples=0)
        fm = {k: v for k, v in fm.items() if not k.endswith(("_ci_low", "_ci_high"))}
        if task.uses_threshold:
            fm["threshold"] = thr
        fm["n_train"] = float(len(tr))
        headline = task.default_champion_metric.removeprefix("cv_")
        progress(f"fold {i + 1}/{len(folds)}: train {len(tr)} test {len(te)} {headline} "
                 f"{fm.get(headline, float('nan')):.3f} ({time.perf_counter() - started:.0f} s)")
        if on_fold is not None:
            on_fold(i, fm)
        bar.update(1)

    with bar:
        cv = cross_validate(make, X, data.y, data.groups, folds, route_groups=True, on_fold=fold_done,
                            n_jobs=fold_jobs, exams=data.table if levels is not None else None, copies=data.copies)
    call = cv.call if task.uses_threshold else calls  # multiclass: the fold models' decide() (e.g. cut-points)
    metrics = _metrics(task, data.y, cv.proba, call, data.classes, ev, prefix="cv_")
    kw = dict(n_resamples=ev["bootstrap_resamples"], confidence_level=ev["confidence_level"], seed=ev["seed"],
              ece_bins=ev["ece_bins"])
    metrics.update(subgroup_metrics(task, data.y, cv.proba, call, data.density, data.dense_classes,
                                    data.classes, **kw))
    metrics.update(site_metrics(task, data.y, cv.proba, call, data.table, data.classes, **kw))
    metrics.update(trust.metrics(call, kw))
    if levels is not None:
        # with the context stage on, the image level also with its exam's other views (cv_image_*): cv_* stays
        # the single image, as Predictor.score and the app serve one image; the levels read the context output
        image = ("image",) if levels.context else ()
        metrics.update(levels.metrics(cv.proba[:, 1], prefix="cv_{level}_", levels=(*image, *task.levels), **kw))
    exam_proba = None
    if task.exam_pooled and len(set(exams)) < len(exams):  # some exam has several images: score it as a whole
        exam_proba = exam_average(cv.proba, exams)
        # one row per (exam, label): an exam's images share their averaged call, so counting each image would
        # shrink the bootstrap CI; exams whose images carry different labels keep one row per label
        first = ~pd.DataFrame({"exam": exams, "y": data.y}).duplicated().to_numpy()
        metrics.update(task.metrics(data.y[first], exam_proba[first], exam_calls[first], data.classes,
                                    prefix="cv_exam_", **kw))
    oof = pd.DataFrame({"sample_id": data.table["sample_id"].astype(str), "patient_id": data.groups,
                        "fold": cv.fold, "label": [data.classes[i] for i in data.y],
                        "density": data.density})
    for j, c in enumerate(data.classes):
        oof[f"p_{c}"] = cv.proba[:, j]
    oof["predicted"] = [data.classes[i] for i in cv.proba.argmax(axis=1)]
    if not task.uses_threshold:
        oof["call"] = [data.classes[i] for i in calls]
    if exam_proba is not None:
        oof["exam_id"] = exams
        for j, c in enumerate(data.classes):
            oof[f"exam_p_{c}"] = exam_proba[:, j]
        oof["exam_predicted"] = [data.classes[i] for i in exam_proba.argmax(axis=1)]
    if levels is not None:
        for column, values in levels.oof_columns(cv.proba[:, 1]).items():
            oof[column] = values
    if task.uses_threshold:
        oof["threshold"] = cv.threshold
        oof["call"] = np.where(call, data.classes[1], data.classes[0])
    trust.add_columns(oof)
    return metrics, cv, oof


def _parallel_folds(head: Any, config: Mapping[str, Any], n_folds: int) -> tuple[Any, int]:
    """(head with its XGBoost on one thread, local fold processes) when folds run side by side: compute.n_jobs
    processes (every core when 0/None), or the Dask workers. On feature rows (a few thousand), XGBoost's OpenMP
    threads cost more than they save (docs/scale-out.md: 2 threads 5-20x slower than 1 on a shared 2-core
    machine), while folds are independent; with one process and no cluster nothing changes."""
    import os

    from pipeline.compute import current_session, resolve_compute

    session = current_session()
    distributed = session is not None and session.is_distributed
    jobs = resolve_compute(config, default_cache=False).n_jobs
    jobs = min(n_folds, os.cpu_count() or 1) if jobs is None or jobs <= 0 else min(int(jobs), n_folds)
    if jobs <= 1 and not distributed:
        return head, 1
    return _one_xgb_thread(head), max(jobs, 1)


def _one_xgb_thread(head: Any) -> Any:
    """A clone of `head` whose XGBoost models train on one thread (the same trees: hist is thread-count
    independent)."""
    from pipeline.model.estimators import WeightedXGBClassifier

    single = {f"{k}__n_jobs": 1 for k, v in head.get_params(deep=True).items() if isinstance(v, WeightedXGBClassifier)}
    return clone(head).set_params(**single) if single else head


def start_final(config: Mapping[str, Any], data: TaskData, cache_dir: str | Path | None = None) -> Any:
    """The final model's fit started in a background thread (a concurrent.futures.Future) when the CV folds will
    run in worker processes (`_parallel_folds`): the folds leave this process idle and the last round of folds
    leaves a worker idle, so the final fit (XGBoost on one thread; it releases the GIL) costs little wall time.
    None where the folds run here: then fit the final model after them (`fit_final`)."""
    from concurrent.futures import ThreadPoolExecutor

    if not data.streamed or data.samples is not None:
        return None
    n_folds = int(config["evaluation"]["folds"])
    if _parallel_folds(head_pipeline(build_pipeline(config, cache_dir)), config, n_folds)[1] <= 1:
        return None
    import xgboost  # noqa: F401  imported here first: joblib's reader thread unpickling the folds' models while
    # the final fit's thread imports it for the first time fails (KeyError: 'xgboost')

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mammoscope-final")
    future = pool.submit(fit_final, config, data, cache_dir, one_thread=True)
    pool.shutdown(wait=False)
    return future


def _plots(task: str | Task, data: TaskData, cv: CVResult, n_bins: int) -> dict[str, Any]:
    from pipeline.training.plots import plot_confusion, plot_pr, plot_reliability, plot_roc

    figs = {"plots/reliability.png": plot_reliability(data.y, cv.proba, n_bins)}
    if get_task(task).uses_threshold:
        figs["plots/roc.png"] = plot_roc(data.y, cv.proba[:, 1])
        figs["plots/pr.png"] = plot_pr(data.y, cv.proba[:, 1])
        figs["plots/confusion.png"] = plot_confusion(data.y, cv.call.astype(int), data.classes,
                                                     "Confusion at the operating point (out-of-fold)")
    else:
        figs["plots/confusion.png"] = plot_confusion(data.y, cv.proba.argmax(axis=1), data.classes)
    return figs


def headline_keys(task: str | Task) -> list[str]:
    """The metrics printed and stored as model-version tags (the task's)."""
    return list(get_task(task).headline_keys)


def head_pipeline(pipe: Any, data: TaskData | None = None) -> Any:
    """The stateful steps after the frozen front of an experiment's Pipeline (select, classifier); with data from a
    sample store (fine-tuning), the Pipeline on its ``[frozen features | store row]`` rows (sample_rows)."""
    from pipeline.training.stream import split_pipeline

    if data is not None and data.samples is not None:
        from pipeline.model.sample_rows import store_pipeline

        return store_pipeline(pipe, data.samples)
    parts = split_pipeline(pipe)
    if parts is None:
        raise ConfigError("the experiment's feature steps are not all frozen (fine-tuning): it cannot be fitted on "
                          "streamed features; load its samples with load_task_data")
    return parts[1]


def fit_final(config: Mapping[str, Any], data: TaskData, cache_dir: str | Path | None = None, *,
              one_thread: bool = False) -> Any:
    """The final image -> probability Pipeline fitted on all rows: streamed data fit the head on the feature
    matrix behind the already-fitted frozen front; in-memory samples fit the whole Pipeline. A task with levels
    (screening) gets its ExamModel, fitted by the same ExamModel.fit as every CV fold. `one_thread`: the head's
    XGBoost on one thread (beside the CV folds, `start_final`)."""
    from pipeline.model.routing import fit_with_groups
    from pipeline.training.copies import training_rows
    from pipeline.training.stream import assemble

    pipe = build_pipeline(config, cache_dir)

    def rows(X: Any, exams: pd.DataFrame | None = None) -> tuple:
        """(X, y, groups, exams, augmented): every row, then the export copies (rows that only train) if any."""
        if data.copies is None:
            return X, data.y, data.groups, exams, None
        return training_rows(X, data.y, data.groups, exams, np.arange(len(data.y)), data.copies)

    if get_task(config["dataset"]["task"]).levels:
        from pipeline.model.screening import build_exam_model

        front, X = None, data.X
        if data.streamed:
            pipe, front, X = head_pipeline(pipe, data), data.front, data.features
            pipe = _one_xgb_thread(pipe) if one_thread else pipe
        X, y, groups, exams, augmented = rows(X, data.table)
        extra = {} if augmented is None else {"augmented": augmented}
        return build_exam_model(config, pipe, front=front).fit(X, y, groups=groups, exams=exams, **extra)
    if not data.streamed:
        X, y, groups, _, augmented = rows(data.X)
        return fit_with_groups(pipe, X, y, groups, augmented)
    head = head_pipeline(pipe, data)
    X, y, groups, _, augmented = rows(data.features)
    head = fit_with_groups(_one_xgb_thread(head) if one_thread else head, X, y, groups, augmented)
    if data.samples is not None:
        from pipeline.model.sample_rows import image_pipeline

        return image_pipeline(data.front, head)
    return assemble(data.front, head)


def train_experiment(exp: Experiment, tracking_uri: str | None = None, *, register: bool = True,
                     cache_dir: str | Path | None = None, progress: Callable[[str], None] = log.info,
                     progress_bar: bool = False) -> TrainResult:
    """Evaluate by patient-level CV, fit the final model on all rows, log everything and register the model.

    `progress_bar`: tqdm bars on stderr over sample preparation and the cross-validation folds (the CLI's)."""
    import matplotlib.pyplot as plt

    import registry
    from pipeline.compute import resolve_compute
    from pipeline.model.routing import strip_requests

    cfg = exp.config
    task = exp.task
    cache = resolve_compute(cfg, cache_dir=cache_dir).cache_dir
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    # streamed: samples + frozen features per image in worker processes, cached; fine-tuning: in memory
    data = load_task_features(cfg, progress, cache_dir=cache, progress_bar=progress_bar) \
        or load_task_data(cfg, progress, progress_bar=progress_bar)
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
        audit = _shortcut_audit(cfg, data, progress)  # before the CV: a flagged shortcut is said at once
        t1 = time.perf_counter()
        pending = start_final(cfg, data, cache) if register else None  # beside the folds when they run in workers
        metrics, cv, oof = evaluate_experiment(
            cfg, data, cache, progress,
            on_fold=lambda i, fm: registry.fold_run(i, metrics=fm), progress_bar=progress_bar)
        seconds["cv"] = time.perf_counter() - t1
        registry.log_metrics(metrics)
        registry.log_table(oof, "predictions/oof.csv")
        for path, fig in _plots(task, data, cv, cfg["evaluation"]["ece_bins"]).items():
            registry.log_figure(fig, path)
            plt.close(fig)
        for line in _metric_lines(metrics, headline_keys(task)):
            progress(line)
        metric = tr["champion_metric"]  # a metric of the task (checked with the config); present for these data?
        if metric not in metrics:
            raise ConfigError(f"tracking.champion_metric: {metric!r} was not measured on these data (e.g. exam "
                              f"metrics need exams with several images); use one of "
                              f"{sorted(k for k in metrics if k.startswith('cv_') and '_ci_' not in k)}")
        result = TrainResult(exp.name, task, metrics, cv, oof, seconds, run_id=run.run_id)
        if register:
            t2 = time.perf_counter()
            progress("fitting the final model on all samples")
            final = pending.result() if pending is not None else fit_final(cfg, data, cache)
            # screening: the ExamModel's breast/exam operating points, view fusion and stages in the card
            decision_extra = final.decision_entries() if get_task(task).levels else None
            strip_requests(disable_cache(final))
            card = build_card(exp, data, metrics, cv, final_classifier(final), digest, run.run_id, decision_extra,
                              audit=audit)
            registry.log_text(card.to_json(), "model_card/card.json")
            info = registry.log_model(final, artifact_name="model", registered_model_name=tr["registered_model_name"],
                                      input_example=data.X[:2] if data.X is not None else data.example,
                                      card=card.to_dict())
            _log_rendered_card(card)
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


def _shortcut_audit(config: Mapping[str, Any], data: TaskData, progress: Callable[[str], None]) -> Any:
    """The shortcut audit of a binary task's data in the run's folds (pipeline.training.audit), logged to the run
    (metrics audit_*, artifact audit/shortcut_audit.json); None where it is off or the task is not binary."""
    import json

    import registry
    from pipeline.training.audit import audit_for_training

    audit = audit_for_training(config, data, progress)
    if audit is not None:
        registry.log_metrics(audit.metrics())
        registry.log_text(json.dumps(audit.to_dict(), indent=2), "audit/shortcut_audit.json")
    return audit


def _log_rendered_card(card: ModelCard) -> None:
    """The card's Markdown and self-contained HTML beside its card.json in the run (model_card/)."""
    import registry
    from pipeline.config.card_render import render_html, render_markdown

    d = card.to_dict()
    registry.log_card(render_markdown(d), render_html(d))


def build_card(exp: Experiment, data: TaskData, metrics: Mapping[str, float], cv: CVResult, classifier: Any,
               digest: str, run_id: str | None, decision_extra: Mapping[str, Any] | None = None, *,
               audit: Any = None) -> ModelCard:
    """The model card of a trained model: task, classes, decision rule (with per-density-group thresholds where
    the data allow; screening: per-level thresholds in `decision_extra`), sample parameters, data, split, metrics
    (conformal coverage included), reliability bins, the conformal state the Predictor forms prediction sets
    with and the shortcut `audit` (pipeline.training.audit.ShortcutAudit: extra ``shortcut_audit``, its warnings
    among the limitations)."""
    cfg = exp.config
    spec = get_task(exp.task)
    table = data.table
    density = table["density"].dropna().astype(str)
    views = table["view"].dropna().astype(str) if "view" in table.columns else pd.Series([], dtype=str)
    headline = list(spec.headline_keys)
    # density groups, then each acquisition machine / site the table names
    groups = {"dense": "dense_", "nondense": "nondense_", **{g: p for g, p, _ in site_groups(table)}}
    subgroups = {}
    for group, prefix in groups.items():
        entries = {k.removeprefix(prefix): metric_entry(metrics, k) for k in metrics
                   if k.startswith(prefix) and not k.endswith(("_ci_low", "_ci_high"))}
        entries = {k: v for k, v in entries.items() if v is not None}
        if entries:
            subgroups[group] = entries
    cv_keys = [k for k in metrics if k.startswith(("cv_", "conformal_")) and not k.endswith(("_ci_low", "_ci_high"))]
    ordered = [k for k in headline if k in cv_keys] + [k for k in cv_keys if k not in headline]
    decision_trust, extra_trust = card_entries(final_trust(cfg, data, classifier), data, cv.proba,
                                               int(cfg["evaluation"]["ece_bins"]))
    return ModelCard(
        name=str(cfg["tracking"]["registered_model_name"]),
        task=spec.name,
        classes=list(data.classes),
        ordinal=spec.ordinal,
        decision={"rule": (rule := spec.training_rule(cfg)).name, **rule.fit_params(classifier, cfg),
                  **decision_trust, **(decision_extra or {})},
        sample_params=sample_params(cfg),
        preprocessing=dict(cfg["preprocessing"]),
        features=dict(cfg["features"]),
        dataset={"adapter": cfg["dataset"]["adapter"], "path": data.source, "digest": digest,
                 "n_samples": int(len(table)), "n_patients": int(table["patient_id"].nunique()),
                 "n_exams": int(len(set(exam_ids(data.table)))),
                 "class_counts": {c: int((data.y == i).sum()) for i, c in enumerate(data.classes)},
                 "density_counts": density.value_counts().sort_index().to_dict() or None,
                 "views": views.value_counts().sort_index().to_dict() or None,
                 **({"export_copies": {"n": int(len(data.copies.origin)), "long_side": data.copies.setting[0],
                                       "jpeg_quality": data.copies.setting[1], "failed": int(len(data.copies.errors)),
                                       "role": "training only"}} if data.copies is not None else {})},
        split={"protocol": "patient-level StratifiedGroupKFold", "folds": len(cv.folds),
               "seed": int(cfg["evaluation"]["seed"])},
        metrics={k: e for k in ordered if (e := metric_entry(metrics, k)) is not None},
        subgroups=subgroups,
        experiment=dict(cfg),
        code_version=card_code_version(),
        run_id=run_id,
        extra={"experiment_name": exp.name, "dense_classes": list(data.dense_classes),
               "selection_metric": cfg["tracking"]["champion_metric"],
               "cnn": bool(cfg["features"]["cnn"]["enabled"]),
               "handcrafted": bool(cfg["features"]["handcrafted"]["enabled"]), **extra_trust,
               **_audit_extra(audit, extra_trust)},
    )


def _audit_extra(audit: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Card extra entries of a shortcut audit: ``shortcut_audit`` and its warnings added to ``limitations``."""
    if audit is None:
        return {}
    out: dict[str, Any] = {"shortcut_audit": audit.to_dict()}
    if audit.warnings():
        out["limitations"] = [*(extra.get("limitations") or []), *audit.warnings()]
    return out


def _metric_lines(metrics: Mapping[str, float], keys: Sequence[str]) -> list[str]:
    lines = []
    for key in keys:
        if key not in metrics:
            continue
        lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        ci = f" [{lo:.3f}-{hi:.3f}]" if lo is not None and hi is not None and np.isfinite(lo) else ""
        lines.append(f"  {key} = {metrics[key]:.3f}{ci}")
    return lines
