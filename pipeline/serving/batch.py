"""Batch prediction: score thousands of images with registered models, streaming, in bounded memory, resumable.

Flow: ``discover_inputs`` (paths only) -> grouped by exam (the manifest's ``exam_id``, else ``patient_id``; images
of no known exam are chunked alone) -> worker processes read and prepare one exam each (``read_image`` then
``pipeline.serving.predict.SampleSpec.prepare`` per model: the same path as the app), a bounded number in flight ->
the main process scores each exam with ``pipeline.serving.exam.score_exam`` (the app's and PACS's call) and images
of no exam in batches -> ``ResultWriter`` appends the image rows and, from the same ExamResult, the exam's density
row and its screening image / breast / exam rows; ``--maps`` draws each map from the sample already in memory. A
file that cannot be read or prepared becomes a row with its error; nothing stops the run.

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
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.batchio import InputItem, ResultWriter, discover_inputs
from pipeline.errors import MammoscopeError
from pipeline.serving.predict import Predictor
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
    "ExamFiles",
    "MapWriter",
    "work_units",
    "iter_units",
    "iter_results",
    "score_exam_unit",
    "exam_image_of",
    "prepare_item",
    "iter_prepared",
    "score_batch",
    "iter_scored",
    "result_columns",
    "run_batch",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
DENSITY_FILE = "exams"  # key of the density-per-exam writer beside the screening level writers
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
    meta: Any = None  # the reader's ImageMeta (safe fields only)
    display: np.ndarray | None = None  # uint8 (H, W) copy of the image for --maps overlays, else None


def _as_spec(spec: Any) -> Any:
    from pipeline.serving.predict import SampleSpec

    return spec if isinstance(spec, SampleSpec) else SampleSpec(spec[0], dict(spec[1]))


def prepare_item(item: InputItem, specs: Sequence[Any], display: bool = False) -> Prepared:
    """Read `item` and prepare one working-resolution sample per SampleSpec (or (task, sample_params)); errors
    become `error`. `display`: keep a uint8 copy of the image for a --maps overlay."""
    from pipeline.io.exams import laterality_of
    from pipeline.io.imageio import read_image
    from pipeline.samples import shared_breast_finding

    out = Prepared(item=item, laterality=item.laterality, view=item.view)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image, meta = read_image(item.path)
            # the side its exam key names (manifest, else tags, else file name): the sample is mirrored from it
            out.laterality = laterality_of(item.laterality, meta, item.path)
            out.view = item.view or meta.view
            if out.laterality and meta.laterality != out.laterality:
                meta = _with_laterality(meta, out.laterality)
            out.meta = meta
            with shared_breast_finding():  # one blank check and breast finding for every task's sample
                for spec in map(_as_spec, specs):
                    sample = spec.prepare(image, meta, path=item.path)
                    out.samples[spec.task] = replace(sample, array=np.ascontiguousarray(sample.array,
                                                                                        dtype=np.float32))
            if display:
                out.display = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            del image
        except MammoscopeError as exc:
            out.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd file must never end a run of thousands; it gets an error row
            out.error = f"{item.path}: unexpected {type(exc).__name__}: {exc}"
    if out.error:
        out.samples, out.display = {}, None
    seen = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    out.warnings = tuple(seen)
    return out


def _with_laterality(meta: Any, laterality: str) -> Any:
    return replace(meta, laterality=laterality)


def _prepare_chunk(items: list[InputItem], specs: Sequence[tuple[str, dict[str, Any]]], display: bool = False
                   ) -> list[Prepared]:
    logging.getLogger("pipeline").setLevel(logging.ERROR)  # worker: warnings travel in the rows, not the terminal
    return [prepare_item(item, specs, display) for item in items]


def _prepare_units(units: list[list[InputItem]], specs: Sequence[Any], display: bool = False
                   ) -> list[list[Prepared]]:
    return [_prepare_chunk(unit, specs, display) for unit in units]


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


def work_units(items: Iterable[InputItem], done: Collection[str] = ()
               ) -> list[tuple[str | None, list[InputItem]]]:
    """(exam, its items) per exam in order of first appearance (`exam_of`: one exam is one unit of work, so one
    exam is in flight per worker), then the images of no known exam in chunks of CHUNK (exam None); exams whose
    items are all in `done` and images of no exam in `done` are left out."""
    exams: dict[str, list[InputItem]] = {}
    lone: list[InputItem] = []
    for item in items:
        exam = exam_of(item)
        if exam is None:
            if item.key not in done:
                lone.append(item)
        else:
            exams.setdefault(exam, []).append(item)
    todo = [(exam, group) for exam, group in exams.items() if any(item.key not in done for item in group)]
    return [*todo, *((None, chunk) for chunk in _chunks(lone, CHUNK))]


def iter_units(units: Sequence[tuple[str | None, list[InputItem]]], specs: Sequence[Any], *, n_jobs: int = 1,
               max_in_flight: int | None = None, display: bool = False
               ) -> Iterator[tuple[str | None, list[Prepared]]]:
    """(exam, its Prepared items) per unit of `work_units`, in order; with n_jobs > 1, worker processes (joblib's
    loky) work ahead by at most `max_in_flight` units, so memory stays bounded however many images there are.
    Inside `pipeline.compute.compute_backend` on a Dask cluster, the workers read and prepare the units instead."""
    from pipeline.compute import current_session, map_chunks

    exams = [exam for exam, _ in units]
    groups = (group for _, group in units)
    session = current_session()
    if session is not None and session.is_distributed:
        prepare = functools.partial(_prepare_units, specs=specs, display=display)
        k = 0
        for _, prepared in map_chunks(prepare, groups, 1, max_in_flight=max_in_flight, ordered=True):
            for unit in prepared:
                yield exams[k], unit
                k += 1
        return
    if n_jobs <= 1:
        for exam, group in zip(exams, groups):
            yield exam, _prepare_chunk(group, specs, display)
        return
    # joblib's own factory for its reusable loky executor: taking loky's directly would leave the shared executor
    # without joblib's temporary-folder manager, and a later joblib.Parallel in this process would fail on it
    from joblib.executor import get_memmapping_executor

    executor = get_memmapping_executor(n_jobs, timeout=60)
    limit = max_in_flight or 2 * n_jobs + 2
    pending: collections.deque = collections.deque()
    try:
        for exam, group in zip(exams, groups):
            pending.append((exam, executor.submit(_prepare_chunk, group, specs, display)))
            if len(pending) >= limit:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()
    finally:
        for _, future in pending:
            future.cancel()


def iter_prepared(
    items: Iterable[InputItem],
    specs: Sequence[tuple[str, dict[str, Any]]],
    *,
    n_jobs: int = 1,
    max_in_flight: int | None = None,
) -> Iterator[Prepared]:
    """Prepared items in input order, read and prepared CHUNK at a time (see `iter_units`)."""
    units = [(None, chunk) for chunk in _chunks(items, CHUNK)]
    for _, prepared in iter_units(units, specs, n_jobs=n_jobs, max_in_flight=max_in_flight):
        yield from prepared


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


def score_batch(batch: Sequence[Prepared], models: Sequence[Predictor]) -> list[dict[str, Any]]:
    """Rows for a batch of images of no common exam: one predict_proba per task on the batch's samples
    (pipeline.serving.predict.score_tasks: density first, its calls pick the other models' per-group thresholds); a
    batch that fails is retried image by image so that one bad sample costs one row, not the batch."""
    from pipeline.serving.predict import score_tasks

    rows = [_base_row(p) for p in batch]
    ready = [i for i, p in enumerate(batch) if p.error is None and all(m.task in p.samples for m in models)]
    if not ready or not models:
        return rows
    try:
        groups = [(ready, score_tasks(models, {m.task: [batch[i].samples[m.task] for i in ready] for m in models}))]
    except Exception:  # noqa: BLE001 - retried one by one below to find the offending image
        logger.debug("batch inference failed; retrying image by image", exc_info=True)
        groups = []
        for i in ready:
            try:
                groups.append(([i], score_tasks(models, {m.task: [batch[i].samples[m.task]] for m in models})))
            except Exception as exc:  # noqa: BLE001
                rows[i]["error"] = f"{batch[i].item.path}: scoring failed: {type(exc).__name__}: {exc}"
    for idx, scores in groups:
        for j, i in enumerate(idx):
            for model in models:
                rows[i].update(model.output_row(scores[model.task], j))
    return rows


def exam_image_of(prepared: Prepared) -> Any:
    """The ExamImage (pipeline.serving.exam) of a prepared input: its samples, meta and key; no pixels travel."""
    from pipeline.io.exams import key_from_meta
    from pipeline.serving.exam import ExamImage

    extra, path = prepared.item.extra, prepared.item.path
    key = key_from_meta(path=path, meta=prepared.meta, patient_id=extra.get("patient_id"),
                        exam_id=extra.get("exam_id"), laterality=prepared.laterality, view=prepared.view)
    return ExamImage(None, prepared.meta, path, key, dict(prepared.samples))


def score_exam_unit(unit: Sequence[Prepared], models: Sequence[Predictor], maps: bool = False
                    ) -> tuple[list[dict[str, Any]], Any | None]:
    """(rows, ExamResult or None) of one exam's prepared images: `pipeline.serving.exam.score_exam` on those that
    were read (the failed ones keep their error rows); an exam that cannot be scored together is scored image by
    image (`score_batch`) with no exam result."""
    from pipeline.serving.exam import score_exam

    rows = [_base_row(p) for p in unit]
    ok = [i for i, p in enumerate(unit) if p.error is None]
    if not ok or not models:
        return rows, None
    try:
        result = score_exam(models, [exam_image_of(unit[i]) for i in ok], maps=maps,
                            errors=[p.error for p in unit if p.error])
    except Exception as exc:  # noqa: BLE001 - one bad sample must cost one row, not the exam: retried image by image
        logger.warning("the exam of %s could not be scored together (%s: %s): its images are scored alone and it "
                       "gets no breast / exam rows", unit[ok[0]].item.path, type(exc).__name__, exc)
        logger.debug("exam scoring failed", exc_info=True)
        return score_batch(unit, models), None
    for j, i in enumerate(ok):
        rows[i].update(result.images[j].outputs)
    return rows, result


def iter_results(items: Iterable[InputItem], models: Sequence[Predictor], *, batch_size: int = DEFAULT_BATCH_SIZE,
                 n_jobs: int = 1, maps: bool = False, done: Collection[str] = ()
                 ) -> Iterator[tuple[list[dict[str, Any]], Any | None, list[Prepared]]]:
    """(rows, ExamResult or None, the Prepared inputs) per exam (`score_exam_unit`) and per batch of images of no
    known exam (`score_batch`), in `work_units` order; reading overlaps with inference when n_jobs > 1. `done`:
    keys already scored (a resumed run): an exam with all of them done is skipped, one partly done is scored whole
    (its images are scored together) and the caller keeps the rows it lacks."""
    specs = [m.spec for m in models]
    lone: list[Prepared] = []
    units = work_units(items, done)
    ahead = 2 * n_jobs + math.ceil(batch_size / CHUNK)
    for exam, unit in iter_units(units, specs, n_jobs=n_jobs, max_in_flight=ahead, display=maps):
        if exam is not None:
            rows, result = score_exam_unit(unit, models, maps)
            yield rows, result, unit
            continue
        lone.extend(unit)
        while len(lone) >= batch_size:
            batch, lone = lone[:batch_size], lone[batch_size:]
            yield score_batch(batch, models), None, batch
    if lone:
        yield score_batch(lone, models), None, lone


def iter_scored(
    items: Iterable[InputItem],
    models: Sequence[Predictor],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    n_jobs: int = 1,
) -> Iterator[list[dict[str, Any]]]:
    """Batches of result rows (one per item): per exam, then the images of no known exam in batches."""
    for rows, _, _ in iter_results(items, models, batch_size=batch_size, n_jobs=n_jobs):
        yield rows


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
    try:
        files = ExamFiles(writer.out, models, items, mode="overwrite" if options.overwrite else "resume")
    except (MammoscopeError, OSError) as exc:
        return BatchSummary(EXIT_NOTHING_RAN, message=str(exc))
    screening = next((m for m in models if get_task(m.task).levels), None)
    maps = MapWriter(options.maps) if options.maps and screening is not None else None
    with tqdm(total=len(todo), unit="img", desc="scoring", file=sys.stderr, disable=not options.progress,
              dynamic_ncols=True, smoothing=0.1) as bar:
        for rows, result, prepared in iter_results(items, models, batch_size=options.batch_size, n_jobs=n_jobs,
                                                   maps=maps is not None, done=writer.done):
            files.add(prepared, rows, result)  # before the image rows: those mark the exam done for a resume
            fresh = [r for r in rows if str(r["path"]) not in writer.done]
            writer.write(fresh)
            if maps is not None:
                maps.add(screening, prepared, rows, result)
            failed_now += sum(1 for r in fresh if r.get("error"))
            bar.update(len(fresh))
            if failed_now:
                bar.set_postfix(failed=failed_now, refresh=False)
    writer.close()
    summary = _summarise(writer, items, skipped, len(todo), time.perf_counter() - start)
    summary.exams_out = files.density_path or ""
    summary.levels_out = files.level_paths
    summary.maps_out = 0 if maps is None else len(maps.written)
    return summary


def exam_of(item: InputItem) -> str | None:
    """The examination an input belongs to (`pipeline.io.exams.exam_id_of` of its manifest's `patient_id` and
    `exam_id`), None where the manifest names neither."""
    from pipeline.io.exams import exam_id_of

    try:
        return exam_id_of(item.extra.get("patient_id"), item.extra.get("exam_id"))
    except ValueError:
        return None


class ExamFiles:
    """The per-exam files beside the results file, appended exam by exam from each exam's one ExamResult:
    ``<out stem>.exams.csv`` (density per exam: the mean of its images' probabilities and the density model's call,
    pipeline.serving.exam) when a density model runs and the inputs name exams, and with a screening model
    ``.screening.breasts.csv``, ``.screening.exams.csv`` (and ``.screening.images.csv`` with a context stage): the
    rows of `ExamResult.rows()`. A resumed run keeps what is there and writes no row twice."""

    def __init__(self, out: str | Path, models: Sequence[Predictor], items: Sequence[InputItem], mode: str) -> None:
        from pipeline.serving.exam import image_rows_columns
        from pipeline.serving.screening import context_model

        out = Path(out)
        named = any(exam_of(item) for item in items)
        self.density = next((m for m in models if get_task(m.task).exam_pooled), None)
        self.screening = next((m for m in models if get_task(m.task).levels), None)
        self.writers: dict[str, ResultWriter] = {}
        if self.density is not None and named:
            t = self.density.task
            columns = ["exam", "n_images", "n_failed", *(f"{t}_p_{c}" for c in self.density.classes),
                       f"{t}_call", f"{t}_model", f"{t}_version"]
            self.writers[DENSITY_FILE] = ResultWriter(out.with_name(out.stem + ".exams.csv"), columns, mode=mode,
                                                   key="exam")
        if self.screening is not None and named:
            positive = self.screening.classes[1]
            level = [f"screening_p_{positive}", "screening_threshold", "screening_call", "screening_model",
                     "screening_version"]
            tables = {"breast": ("breast_id", ["breast_id", "patient_id", "n_images", "views", "exam_id",
                                               "laterality", *level]),
                      "exam": ("exam_id", ["exam_id", "patient_id", "n_images", "views", "most_suspicious_breast",
                                           *level])}
            if context_model(self.screening) is not None:
                tables = {"image": ("sample_id", image_rows_columns(positive)), **tables}
            for lv, (key, columns) in tables.items():
                self.writers[lv] = ResultWriter(out.with_name(f"{out.stem}.screening.{lv}s.csv"), columns,
                                                mode=mode, key=key)

    def add(self, prepared: Sequence[Prepared], rows: Sequence[dict[str, Any]], result: Any | None) -> None:
        """Append the rows of one exam (or of a batch of images of no known exam: nothing to write)."""
        exam = exam_of(prepared[0].item) if prepared else None
        if exam is None:
            return
        stale = False  # a row of this exam already written: a resumed run rescoring an exam that gained images
        writer = self.writers.get(DENSITY_FILE)
        if writer is not None:
            stale = exam in writer.done
            if not stale:
                writer.write([self._density_row(exam, rows, result)])
        if result is not None and result.exam is not None:
            for lv, table in result.rows().items():
                writer = self.writers.get(lv)
                if writer is not None:
                    records = table.to_dict("records")
                    fresh = [r for r in records if str(r[writer.key]) not in writer.done]
                    stale = stale or len(fresh) < len(records)
                    writer.write(fresh)
        if stale:
            logger.warning("the exam of %s has images the first run did not score: its per-exam rows written then are "
                           "kept (no row is written twice), so they do not count the new images; run with --overwrite "
                           "to rescore every exam whole", prepared[0].item.path)

    def _density_row(self, exam: str, rows: Sequence[dict[str, Any]], result: Any | None) -> dict[str, Any]:
        m = self.density
        failed = sum(1 for r in rows if r.get("error"))
        row: dict[str, Any] = {"exam": exam, "n_images": len(rows) - failed, "n_failed": failed,
                               f"{m.task}_model": m.name, f"{m.task}_version": m.version}
        density = None if result is None else result.density
        scored = [r for r in rows if not r.get("error") and f"{m.task}_p_{m.classes[0]}" in r]
        if density is None and scored:  # scored image by image (score_exam_unit's fallback): the same mean and rule
            from pipeline.serving.exam import density_of_exam

            density = density_of_exam(m, np.array([[r[f"{m.task}_p_{c}"] for c in m.classes] for r in scored]))
        if density is not None:  # an exam whose images all failed keeps empty probabilities and call
            row.update({f"{m.task}_p_{c}": density["probabilities"][c] for c in m.classes})
            row[f"{m.task}_call"] = density["call"]
        return row

    @property
    def density_path(self) -> str | None:
        """The density-per-exam file, where one was written."""
        w = self.writers.get(DENSITY_FILE)
        return str(w.out) if w is not None and w.out.exists() else None

    @property
    def level_paths(self) -> list[str]:
        """The screening level files written."""
        return [str(w.out) for lv, w in self.writers.items() if lv != DENSITY_FILE and w.out.exists()]


class MapWriter:
    """``--maps``: one PNG overlay per scored image (its grey image with the screening tile map, the colouring of
    pipeline.serving.screening.overlay_rgb), drawn from the map and pixels already in memory."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: list[str] = []

    def add(self, model: Predictor, prepared: Sequence[Prepared], rows: Sequence[dict[str, Any]],
            result: Any | None) -> None:
        """Overlays of one exam (its ExamResult's maps) or of a batch of images of no exam (mapped here)."""
        from pipeline.serving.screening import explain_screening

        heats = {}
        if result is not None:
            heats = {r.sample_id: r.heatmap for r in result.images}
        for p, row in zip(prepared, rows):
            if row.get("error") or p.display is None:
                continue
            heat = heats.get(p.item.path)
            if result is None and model.task in p.samples:
                try:
                    heat = explain_screening(model, p.samples[model.task]).get("heatmap_original")
                except (MammoscopeError, ValueError) as exc:
                    logger.warning("--maps: %s: %s", p.item.path, exc)
            if heat is not None:
                self._save(p.item.path, p.display, heat)

    def _save(self, path: str, display: np.ndarray, heat: np.ndarray) -> None:
        from PIL import Image

        from pipeline.serving.screening import overlay_rgb

        target, n = self.folder / f"{Path(path).stem}.screening.png", 1
        while str(target) in self.written:
            target, n = self.folder / f"{Path(path).stem}-{n}.screening.png", n + 1
        Image.fromarray(overlay_rgb(display, heat)).save(target)
        self.written.append(str(target))


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
