"""Batch prediction: score thousands of images with registered models, streaming, in bounded memory, resumable.

Flow: ``discover_inputs`` (paths only) -> worker processes read and prepare each image (``read_image`` then
``pipeline.serving.predict.SampleSpec.prepare`` per model: the same path as the app) with a bounded number of chunks in flight
-> the main process runs each task's model on a batch of samples -> ``ResultWriter`` appends the batch's rows
durably. A file that cannot be read or prepared becomes a row with its error; nothing stops the run.

Exit status of ``run_batch``: ``EXIT_OK`` (0) every image scored, ``EXIT_SOME_FAILED`` (3) some rows carry an
error, ``EXIT_NOTHING_RAN`` (4) no model, no input file or an unusable output.
"""
from __future__ import annotations

import collections
import functools
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.batchio import InputItem, ResultWriter, discover_inputs
from pipeline.errors import MammoscopeError
from pipeline.serving.predict import Predictor, Scores, density_first
from pipeline.config.tasks import get_task

__all__ = [
    "BatchOptions",
    "BatchSummary",
    "TaskModel",
    "Prepared",
    "DEFAULT_BATCH_SIZE",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_NOTHING_RAN",
    "exam_of",
    "write_exam_summary",
    "prepare_item",
    "iter_prepared",
    "score_batch",
    "iter_scored",
    "result_columns",
    "run_batch",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_JOBS = 4
CHUNK = 4  # images per worker task: amortises inter-process overhead, keeps the pipeline fine-grained
EXIT_OK, EXIT_SOME_FAILED, EXIT_NOTHING_RAN = 0, 3, 4


TaskModel = Predictor  # the former name of a batch's loaded model: now the one Predictor of pipeline.serving.predict


@dataclass
class Prepared:
    """One image after reading and preparing: a sample per task, or the error; never pixels of the full image."""

    item: InputItem
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    laterality: str | None = None
    view: str | None = None
    warnings: tuple[str, ...] = ()
    error: str | None = None


def _as_spec(spec: Any) -> Any:
    from pipeline.serving.predict import SampleSpec

    return spec if isinstance(spec, SampleSpec) else SampleSpec(spec[0], dict(spec[1]))


def prepare_item(item: InputItem, specs: Sequence[Any]) -> Prepared:
    """Read `item` and prepare one working-resolution sample per SampleSpec (or (task, sample_params)); errors
    become `error`."""
    from pipeline.io.imageio import read_image

    out = Prepared(item=item, laterality=item.laterality, view=item.view)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image, meta = read_image(item.path)
            out.laterality = item.laterality or meta.laterality
            out.view = item.view or meta.view
            if out.laterality and meta.laterality is None:
                meta = _with_laterality(meta, out.laterality)
            for spec in map(_as_spec, specs):
                out.samples[spec.task] = np.ascontiguousarray(spec.prepare(image, meta, path=item.path).array,
                                                              dtype=np.float32)
            del image
        except MammoscopeError as exc:
            out.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd file must never end a run of thousands; it gets an error row
            out.error = f"{item.path}: unexpected {type(exc).__name__}: {exc}"
    if out.error:
        out.samples = {}
    seen = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    out.warnings = tuple(seen)
    return out


def _with_laterality(meta: Any, laterality: str) -> Any:
    from dataclasses import replace

    return replace(meta, laterality=laterality)


def _prepare_chunk(items: list[InputItem], specs: Sequence[tuple[str, dict[str, Any]]]) -> list[Prepared]:
    logging.getLogger("pipeline").setLevel(logging.ERROR)  # worker: warnings travel in the rows, not the terminal
    return [prepare_item(item, specs) for item in items]


def _chunks(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    chunk: list[InputItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Worker processes: None = CPU cores (at most 4); negative counts back from the core count as in joblib."""
    from joblib import cpu_count

    cores = cpu_count()
    if n_jobs is None:
        return max(1, min(cores, DEFAULT_MAX_JOBS))
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return max(1, n_jobs)


def iter_prepared(
    items: Iterable[InputItem],
    specs: Sequence[tuple[str, dict[str, Any]]],
    *,
    n_jobs: int = 1,
    max_in_flight: int | None = None,
) -> Iterator[Prepared]:
    """Prepared items in input order; with n_jobs > 1, worker processes (joblib's loky) work ahead by at most
    `max_in_flight` chunks of `CHUNK` images, so memory stays bounded however many images there are. Inside
    `pipeline.compute.compute_backend` on a Dask cluster, the workers read and prepare the chunks instead."""
    from pipeline.compute import current_session, map_chunks

    session = current_session()
    if session is not None and session.is_distributed:
        prepare = functools.partial(_prepare_chunk, specs=specs)
        for _, prepared in map_chunks(prepare, items, CHUNK, max_in_flight=max_in_flight, ordered=True):
            yield from prepared
        return
    if n_jobs <= 1:
        for item in items:
            yield prepare_item(item, specs)
        return
    # joblib's own factory for its reusable loky executor: taking loky's directly would leave the shared executor
    # without joblib's temporary-folder manager, and a later joblib.Parallel in this process would fail on it
    from joblib.executor import get_memmapping_executor

    executor = get_memmapping_executor(n_jobs, timeout=60)
    limit = max_in_flight or 2 * n_jobs + 2
    pending: collections.deque = collections.deque()
    chunks = _chunks(items, CHUNK)
    try:
        for chunk in chunks:
            pending.append(executor.submit(_prepare_chunk, chunk, specs))
            if len(pending) >= limit:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def result_columns(models: Sequence[Predictor]) -> list[str]:
    """Output columns: path, laterality, view, per task (Predictor.output_columns: Task.output_columns)
    probabilities/call/model/version and, where the card has them, prediction set and threshold applied and why,
    then warnings, error."""
    columns = ["path", "laterality", "view"]
    for m in models:
        columns += m.output_columns()
    return columns + ["warnings", "error"]


def _base_row(p: Prepared) -> dict[str, Any]:
    return {
        "path": p.item.path,
        "laterality": p.laterality,
        "view": p.view,
        "warnings": "; ".join(p.warnings) or None,
        "error": p.error,
    }


def _score_task(model: Predictor, X: np.ndarray, density: list[Any] | None = None) -> Scores:
    """Predictor.score of the rows X (probabilities normalised to sum to 1, calls, sets, thresholds), as the app;
    `density`: the density model's predicted class per row (None where it did not run), the decision context."""
    return model.score(X, None if density is None else {"density": density})


def score_batch(batch: Sequence[Prepared], models: Sequence[Predictor]) -> list[dict[str, Any]]:
    """Rows for a batch: one predict_proba per task on the batch's samples (density models first: their predicted
    class picks the other models' per-group thresholds); a batch that fails is retried image by image so that one
    bad sample costs one row, not the batch."""
    rows = [_base_row(p) for p in batch]
    density: dict[int, Any] = {}  # batch index -> predicted density class
    for model in density_first(models):
        ready = [i for i, p in enumerate(batch) if p.error is None and model.task in p.samples]
        if not ready:
            continue
        X = np.stack([batch[i].samples[model.task].reshape(-1) for i in ready])
        context = [density.get(i) for i in ready] if density else None
        try:
            results = [_score_task(model, X, context)]
            groups = [ready]
        except Exception:  # noqa: BLE001 - retried one by one below to find the offending image
            logger.debug("batch inference failed for %s; retrying image by image", model.task, exc_info=True)
            results, groups = [], []
            for i in ready:
                try:
                    results.append(_score_task(model, X[ready.index(i)][None, :],
                                               None if context is None else [density.get(i)]))
                    groups.append([i])
                except Exception as exc:  # noqa: BLE001
                    rows[i]["error"] = f"{batch[i].item.path}: {model.task} model failed: {type(exc).__name__}: {exc}"
        for scores, idx in zip(results, groups):
            for j, i in enumerate(idx):
                if rows[i]["error"]:
                    continue
                rows[i].update(model.output_row(scores, j))
                if model.task_spec.density_labels:
                    # the density model's own call (ordinal cut-points where its card has them), as the app
                    density[i] = scores.calls[j] or scores.classes[int(np.argmax(scores.probabilities[j]))]
    return rows


def iter_scored(
    items: Iterable[InputItem],
    models: Sequence[Predictor],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    n_jobs: int = 1,
) -> Iterator[list[dict[str, Any]]]:
    """Batches of result rows (one per item, in input order); reading overlaps with inference when n_jobs > 1."""
    specs = [m.spec for m in models]
    batch: list[Prepared] = []
    for prepared in iter_prepared(items, specs, n_jobs=n_jobs, max_in_flight=2 * n_jobs + math.ceil(batch_size / CHUNK)):
        batch.append(prepared)
        if len(batch) == batch_size:
            yield score_batch(batch, models)
            batch = []
    if batch:
        yield score_batch(batch, models)


@dataclass
class BatchOptions:
    """What `mammoscope predict` was asked to do."""

    paths: list[str]
    out: str = "results.csv"
    model_uri: str | None = None
    alias: str = "champion"
    task: str = "both"
    include: tuple[str, ...] = ()
    overwrite: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    n_jobs: int | None = None
    tracking_uri: str | None = None
    progress: bool = True
    maps: str | None = None  # folder for PNG heat-map overlays of the screening model (--maps)


@dataclass
class BatchSummary:
    """Outcome of a run: counts over the whole output table and this run's share."""

    exit_code: int
    out: str = ""
    total: int = 0
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    this_run: int = 0
    seconds: float = 0.0
    problems: dict[str, int] = field(default_factory=dict)
    message: str = ""
    exams_out: str = ""
    levels_out: list[str] = field(default_factory=list)
    maps_out: int = 0

    def text(self) -> str:
        """Human-readable summary for stderr."""
        if self.exit_code == EXIT_NOTHING_RAN:
            return f"mammoscope predict: nothing could run: {self.message}"
        rate = self.this_run / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.out}: {self.total} images, {self.scored} scored, {self.failed} failed "
            f"({self.this_run} this run in {self.seconds:.1f} s, {rate:.1f} images/s; {self.skipped} already done)"
        ]
        if self.exams_out:
            lines.append(f"{self.exams_out}: density per exam (the mean over each exam's images)")
        lines += [f"{path}: screening per {path.rsplit('.', 2)[-2].rstrip('s')}" for path in self.levels_out]
        if self.maps_out:
            lines.append(f"{self.maps_out} screening heat-map overlays written")
        if self.problems:
            lines.append("failures by cause:")
            lines += [f"  {n:5d}  {problem}" for problem, n in sorted(self.problems.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


def _problem_of(error: str, path: str) -> str:
    """The cause of an error message without the file name (for grouping in the summary)."""
    text = error[len(path) + 2 :] if error.startswith(path + ": ") else error
    return text.split(" (")[0][:120]


def parse_model_uri(uri: str) -> tuple[str, str | None, int | None]:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS` (or plain NAME) -> (name, alias, version)."""
    from pipeline.serving.predict import parse_model_uri as parse

    return parse(uri)


def load_models(options: BatchOptions) -> list[Predictor]:
    """The Predictors to score with: --model, else each requested task's model at --alias. With --task both
    (every registered task), a task without a model is skipped (logged) as long as another has one."""
    from pipeline.errors import ModelNotFoundError
    from pipeline.serving.predict import load_available_models, load_predictor, load_task_models

    one = None if options.task in ("both", "all") else options.task
    if options.model_uri:
        model = load_predictor(options.model_uri, alias=options.alias, tracking_uri=options.tracking_uri)
        if one is not None and model.task != one:
            raise ModelNotFoundError(f"--model {options.model_uri} is a {model.task} model, not {one}")
        return [model]
    if one is not None:
        return [load_task_models((one,), options.alias, options.tracking_uri)[one]]
    available, missing = load_available_models(alias=options.alias, tracking_uri=options.tracking_uri)
    if not available:
        raise ModelNotFoundError("; ".join(missing.values()))
    for message in missing.values():
        logger.warning("skipping a task: %s", message)
    return list(available.values())


def run_batch(options: BatchOptions) -> BatchSummary:
    """Score every input into `options.out` (resuming unless `overwrite`); returns the summary and exit status."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    items = discover_inputs(options.paths, options.include or None)
    if not items:
        return BatchSummary(EXIT_NOTHING_RAN, message=f"no image files found in {' '.join(map(str, options.paths))}")
    try:
        models = load_models(options)
    except MammoscopeError as exc:
        return BatchSummary(EXIT_NOTHING_RAN, message=str(exc))
    columns = result_columns(models)
    try:
        writer = ResultWriter(options.out, columns, mode="overwrite" if options.overwrite else "resume")
        _check_same_models(writer, models)
    except (MammoscopeError, OSError) as exc:
        return BatchSummary(EXIT_NOTHING_RAN, message=str(exc))
    todo = [item for item in items if item.key not in writer.done]
    skipped = len(items) - len(todo)
    if skipped:
        logger.info("%s: %d of %d images already done, resuming", options.out, skipped, len(items))
    n_jobs = resolve_n_jobs(options.n_jobs)
    failed_now = 0
    with tqdm(total=len(todo), unit="img", desc="scoring", file=sys.stderr, disable=not options.progress,
              dynamic_ncols=True, smoothing=0.1) as bar:
        for rows in iter_scored(todo, models, batch_size=options.batch_size, n_jobs=n_jobs):
            writer.write(rows)
            failed_now += sum(1 for r in rows if r.get("error"))
            bar.update(len(rows))
            if failed_now:
                bar.set_postfix(failed=failed_now, refresh=False)
    writer.close()
    summary = _summarise(writer, items, skipped, len(todo), time.perf_counter() - start)
    summary.exams_out = write_exam_summary(writer.out, writer.all_rows(), items, models) or ""
    for model in (m for m in models if get_task(m.task).levels):  # screening: per breast, per exam, --maps
        from pipeline.serving.screening import write_level_files, write_maps

        wanted = {item.key for item in items}
        rows = [r for r in writer.all_rows() if str(r.get("path")) in wanted]
        summary.levels_out += write_level_files(writer.out, rows, items, model)
        if options.maps:
            summary.maps_out += len(write_maps(options.maps, rows, model))
    return summary


def exam_of(item: InputItem) -> str | None:
    """The examination an input belongs to (`pipeline.io.exams.exam_id_of` of its manifest's `patient_id` and
    `exam_id`), None where the manifest names neither."""
    from pipeline.io.exams import exam_id_of

    try:
        return exam_id_of(item.extra.get("patient_id"), item.extra.get("exam_id"))
    except ValueError:
        return None


def write_exam_summary(out: str | Path, rows: Sequence[dict[str, Any]], items: Sequence[InputItem],
                       models: Sequence[Predictor]) -> str | None:
    """Density per examination (the mean of its images' probabilities) as `<out stem>.exams.csv`; returns its path.

    BI-RADS density is one category per exam, so the views of an exam are pooled (pipeline.evaluation.metrics.exam_average).
    Written only when a density model ran and the inputs came from a manifest naming exams (`exam_id` or
    `patient_id`; images with neither are left out); images that failed are left out of the mean and counted in
    `n_failed` (an exam whose images all failed has empty probabilities and call).
    """
    import pandas as pd

    from pipeline.evaluation.metrics import exam_average

    model = next((m for m in models if get_task(m.task).exam_pooled), None)
    exams = {item.key: exam_of(item) for item in items}
    if model is None or not any(exams.values()):
        return None
    t = model.task
    columns = [f"{t}_p_{c}" for c in model.classes]
    table = pd.DataFrame([{**{c: r.get(c) for c in columns}, "exam": exams.get(str(r.get("path"))),
                           "failed": bool(r.get("error"))} for r in rows])
    if table.empty:
        return None
    table = table[table["exam"].notna()]
    exam_order = pd.Index(table["exam"].unique())  # every exam, also one whose images all failed
    ok = table[~table["failed"]]
    probs = ok[columns].apply(pd.to_numeric, errors="coerce").to_numpy()
    pooled = pd.DataFrame(exam_average(probs, ok["exam"]), columns=columns, index=ok["exam"].to_numpy())
    mean = pooled[~pooled.index.duplicated()].reindex(exam_order)
    summary = pd.DataFrame({"exam": exam_order,
                            "n_images": ok.groupby("exam").size().reindex(exam_order).fillna(0).astype(int).to_numpy()})
    summary["n_failed"] = table[table["failed"]].groupby("exam").size().reindex(exam_order).fillna(0).astype(int).to_numpy()
    for c in columns:
        summary[c] = mean[c].to_numpy()
    values = mean[columns].to_numpy()
    summary[f"{t}_call"] = [model.classes[int(np.argmax(v))] if np.isfinite(v).all() else "" for v in values]
    summary[f"{t}_model"], summary[f"{t}_version"] = model.name, model.version
    path = Path(out).with_name(Path(out).stem + ".exams.csv")
    summary.to_csv(path, index=False)
    return str(path)


def _check_same_models(writer: ResultWriter, models: Sequence[Predictor]) -> None:
    for model in models:
        column = f"{model.task}_version"
        versions = {str(r.get(column)) for r in writer.previous if r.get(column) not in (None, "")}
        names = {str(r.get(f"{model.task}_model")) for r in writer.previous if r.get(f"{model.task}_model")}
        if versions - {str(model.version)} or names - {model.name}:
            raise MammoscopeError(
                f"{writer.out}: existing rows were scored by {', '.join(sorted(names))} version "
                f"{', '.join(sorted(versions))}, not {model.name} version {model.version}; pass --overwrite to "
                "rescore everything, or choose another --out"
            )


def _summarise(writer: ResultWriter, items: Sequence[InputItem], skipped: int, this_run: int, seconds: float) -> BatchSummary:
    wanted = {item.key for item in items}
    rows = [r for r in writer.all_rows() if str(r.get("path")) in wanted]
    failed = [r for r in rows if r.get("error")]
    problems: dict[str, int] = collections.Counter(_problem_of(str(r["error"]), str(r["path"])) for r in failed)
    return BatchSummary(
        exit_code=EXIT_SOME_FAILED if failed else EXIT_OK,
        out=str(writer.out),
        total=len(rows),
        scored=len(rows) - len(failed),
        failed=len(failed),
        skipped=skipped,
        this_run=this_run,
        seconds=seconds,
        problems=dict(problems),
    )
