"""Stream a dataset table through an experiment's frozen feature steps: each image read once, on worker processes
(or Dask workers), each row's features cached on disk; the main process only ever holds the feature matrix.

A Pipeline from `build_pipeline` splits in two (`split_pipeline`):

* the **front**: ``preprocess`` and the ``features`` FeatureUnion when every branch is a `CachedTransformer` (a
  stateless extractor: its output for a row does not depend on the data it was fitted on);
* the **head**: ``select`` (MutualInfoSelector, stateful) and ``classifier``: fitted in-fold on the feature rows.

`stream_features` sends image groups (the rows sharing one file) to `pipeline.compute.map_chunks` (local joblib
processes, or Dask tasks with retries inside a `compute_backend` block), at most a few chunks in flight, results in
input order. A worker reads the image, makes the row's sample (pipeline.samples.make_sample), runs the preprocess
step once and each missing branch, and writes each branch's row to
``<cache>/stream/<branch key>/<row key[:2]>/<row key>.npy`` atomically (tmp file + os.replace), so a job killed at
any moment leaves only whole entries, and its rerun computes only the rows without one. The branch key hashes the
sample recipe and parameters, the code version of the sample path (`pipeline.samples`, `pipeline.io.imageio`,
`features.breast`) and the preprocess and branch steps' keys (class, parameters, code version: CachedTransformer's);
the row key hashes the image file (its bytes, or path + size + mtime with ``image_key="stat"``) and the row's fields
that shape its sample (ROI, laterality). A row that fails (unreadable file, no breast found) leaves its message in
``<cache>/stream/errors-<key>/...txt``, keyed the same way, so a rerun reports it without reading the file again. Branches are cached separately, so experiments sharing one (the handcrafted
features of the handcrafted and the fused model) compute it once.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import joblib
import numpy as np
import pandas as pd
from sklearn.pipeline import FeatureUnion, Pipeline

from pipeline.errors import MammoscopeError

__all__ = ["IMAGE_KEYS", "FeatureSpec", "StreamResult", "split_pipeline", "fit_front", "stream_features",
           "file_key", "assemble", "SampleStore", "sample_store_path", "stream_samples"]

log = logging.getLogger(__name__)

IMAGE_KEYS = ("content", "stat")  # how a file is identified in the cache: its bytes, or path + size + mtime
ROW_FIELDS = ("roi_kind", "roi_cx", "roi_cy", "roi_r", "roi_x0", "roi_y0", "roi_x1", "roi_y1", "roi_mask_path",
              "laterality")
SAMPLE_MODULES = ("pipeline.samples", "pipeline.io.imageio", "pipeline.io.dicom", "features.breast",
                  "features.polarity", "features.resize")
IMAGES_PER_CHUNK = 2  # images per map_chunks task: small, so a lost task costs little and progress is smooth
# On Dask, tasks grow from IMAGES_PER_CHUNK to about TASK_SECONDS of worker time, at most MAX_IMAGES_PER_CHUNK images
# (Dask's per-task round trips cost milliseconds; a handcrafted-only image takes ~20 ms): docs/scale-out.md
TASK_SECONDS = 0.5
MAX_IMAGES_PER_CHUNK = 32
_READ_BLOCK = 1 << 20


# --------------------------------------------------------------------------------------------------------------------
# Which steps are frozen
# --------------------------------------------------------------------------------------------------------------------
def split_pipeline(pipe: Pipeline) -> tuple[Pipeline, Pipeline] | None:
    """(front, head) of an experiment's Pipeline, or None when a feature step is stateful (fine-tuning).

    The front (``preprocess``, ``features``) holds only CachedTransformers (or passthrough); the head is the rest
    (``select``, ``classifier``), fitted on the feature rows."""
    from pipeline.model.estimators import CachedTransformer

    names = [n for n, _ in pipe.steps]
    if names[:2] != ["preprocess", "features"]:
        return None
    pre, union = pipe.steps[0][1], pipe.steps[1][1]
    if not (pre in (None, "passthrough") or isinstance(pre, CachedTransformer)):
        return None
    if not isinstance(union, FeatureUnion) or not union.transformer_list:
        return None
    if not all(isinstance(t, CachedTransformer) for _, t in union.transformer_list):
        return None
    return Pipeline(pipe.steps[:2]), Pipeline(pipe.steps[2:])


def fit_front(front: Pipeline, samples: np.ndarray) -> Pipeline:
    """Fit the frozen front on a few samples (its steps learn only shapes); returns it."""
    return front.fit(np.asarray(samples, dtype=np.float32))


# --------------------------------------------------------------------------------------------------------------------
# What a worker needs
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSpec:
    """Everything a worker needs to turn image groups into feature rows (pickled once per map_chunks call)."""

    recipe: str
    size: int
    crop: dict
    whole_breast_without_roi: bool
    preprocess: Any                     # fitted transformer (inner of the CachedTransformer) or None
    branches: tuple                     # ((name, fitted inner transformer, cache key), ...) in FeatureUnion order
    cache_dir: str | None
    image_key: str = "content"
    preprocess_key: str = ""            # the preprocess step's cache key (class, parameters, code version)
    error_key: str = ""                 # cache folder of the rows that failed (unreadable file, no breast)
    export: tuple | None = None         # (long side, JPEG quality): each image re-exported first (export copies)


def _sample_code_version() -> str:
    import importlib

    from pipeline.model.estimators import _module_digest

    parts = []
    for name in SAMPLE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        parts.append(f"{name}:{_module_digest(name)}")
    return "-".join(parts)


def make_spec(front: Pipeline, recipe: str, sample_params: Mapping[str, Any], *, whole_breast_without_roi: bool,
              cache_dir: str | Path | None, image_key: str = "content",
              export: tuple[int, int] | None = None) -> FeatureSpec:
    """The worker spec of a fitted front (see `split_pipeline`) for a sample recipe and its parameters; `export`
    (long side px, JPEG quality): every image re-exported that way before its sample is made (training-time export
    copies, pipeline.training.copies), cached under keys of their own."""
    if image_key not in IMAGE_KEYS:
        raise ValueError(f"image_key must be one of {IMAGE_KEYS}. Got {image_key!r} instead.")
    pre = front.steps[0][1]
    union = front.steps[1][1] if len(front.steps) > 1 else None  # None: a front of preprocessing only (samples)
    pre_key = pre._step_key() if pre not in (None, "passthrough") else "passthrough"
    size = int(sample_params["size"])
    crop = _crop(sample_params)
    base = (recipe, size, sorted(crop.items()), bool(whole_breast_without_roi), _sample_code_version(), pre_key)
    if export is not None:  # a copy's rows (and failures) are cached apart from its original's; None: keys as before
        import pipeline.io.reexport  # noqa: F401  (its source digest keys the copies)
        from pipeline.model.estimators import _module_digest

        export = (int(export[0]), int(export[1]))
        base = (*base[:-1], ("export", export, _module_digest("pipeline.io.reexport")), base[-1])
    branches = tuple((name, t.transformer_, f"{name}-{t._step_key()}-{joblib.hash(base)[:12]}")
                     for name, t in (union.transformer_list if union is not None else []))
    return FeatureSpec(recipe=recipe, size=size, crop=crop, whole_breast_without_roi=bool(whole_breast_without_roi),
                       preprocess=pre.transformer_ if pre not in (None, "passthrough") else None,
                       branches=branches, cache_dir=str(cache_dir) if cache_dir else None, image_key=image_key,
                       preprocess_key=pre_key, error_key=f"errors-{joblib.hash(base[:-1])[:12]}", export=export)


def _crop(sample_params: Mapping[str, Any]) -> dict[str, float]:
    """The sample parameters beside `size` that shape a sample: the lesion crop's, and the highres recipe's scale
    and aspect."""
    return {k: float(sample_params[k]) for k in ("context", "min_side", "scale", "aspect") if k in sample_params}


def file_key(path: str, how: str = "content") -> str:
    """Identity of an image file for the cache: BLAKE2 of its bytes, or of (real path, size, mtime_ns)."""
    if how == "stat":
        st = os.stat(path)
        return hashlib.blake2b(f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}".encode(),
                               digest_size=16).hexdigest()
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _row_key(fkey: str, row: Mapping[str, Any], recipe: str) -> str:
    fields = []
    for name in ROW_FIELDS:
        value = row.get(name)
        fields.append(None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))
    return hashlib.blake2b(repr((fkey, recipe, fields)).encode(), digest_size=16).hexdigest()


def _entry(cache_dir: str, branch_key: str, row_key: str) -> Path:
    return Path(cache_dir) / "stream" / branch_key / row_key[:2] / f"{row_key}.npy"


def _error_entry(spec: FeatureSpec, row_key: str) -> Path | None:
    if not (spec.cache_dir and spec.error_key):
        return None
    return Path(spec.cache_dir) / "stream" / spec.error_key / row_key[:2] / f"{row_key}.txt"


def _cached_error(spec: FeatureSpec, row_key: str) -> str | None:
    entry = _error_entry(spec, row_key)
    try:
        return entry.read_text(encoding="utf-8") if entry is not None else None
    except OSError:
        return None


def _save_error(spec: FeatureSpec, row_key: str, message: str) -> None:
    """Remember that this row failed (keyed like its features: file content, recipe, code version)."""
    entry = _error_entry(spec, row_key)
    if entry is None:
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(message, encoding="utf-8")
    os.replace(tmp, entry)


def _save_atomic(path: Path, row: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{time.monotonic_ns()}.tmp.npy")
    np.save(tmp, row)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------------
# The per-image work (runs on workers)
# --------------------------------------------------------------------------------------------------------------------
def _sample_row(spec: FeatureSpec, image: np.ndarray, meta: Any, row: dict, recipe: str, path: str, *,
                prepare: bool) -> np.ndarray | str:
    """The row's sample (1, S*S) float32 (after the preprocess step when `prepare`), or the error message."""
    from pipeline.samples import make_sample

    try:
        sample = make_sample(image, row, recipe, laterality=meta.laterality, size=spec.size, **spec.crop)
    except MammoscopeError as exc:
        return str(exc) if str(exc).startswith(path) else f"{path}: {exc}"
    except ValueError as exc:
        return f"{path}: {exc}"
    x = sample.reshape(1, -1).astype(np.float32, copy=False)
    if prepare and spec.preprocess is not None:
        x = np.asarray(spec.preprocess.transform(x), dtype=np.float32)
    return x


def _recipes(spec: FeatureSpec, rows: list[dict]) -> list[str]:
    from pipeline.io.datasets.table import ROI_KINDS

    return ["breast" if spec.whole_breast_without_roi and r.get("roi_kind") not in ROI_KINDS else spec.recipe
            for r in rows]


def _image_features(spec: FeatureSpec, path: str, rows: list[dict]) -> dict:
    """Feature rows of the rows sharing image `path`: {"rows": [(pos, row | error str)], "cached", "seconds"}."""
    from pipeline.io.imageio import read_image

    seconds = {"read": 0.0, "sample": 0.0, "features": 0.0}
    t = time.perf_counter()
    try:
        fkey = file_key(path, spec.image_key)
    except OSError as exc:
        return {"rows": [(r["_pos"], f"{path}: cannot read the file ({exc})") for r in rows], "cached": False,
                "seconds": seconds}
    recipes = _recipes(spec, rows)
    keys = [_row_key(fkey, r, rec) for r, rec in zip(rows, recipes)]
    parts: list[list[np.ndarray | None]] = [[None] * len(spec.branches) for _ in rows]
    if spec.cache_dir:
        for i, key in enumerate(keys):
            for j, (_, _, bkey) in enumerate(spec.branches):
                try:
                    parts[i][j] = np.load(_entry(spec.cache_dir, bkey, key))
                except (OSError, ValueError, EOFError):
                    pass
    # rows that failed before (unreadable file, no breast...) stay failed for the same file and code: not re-read
    failed = [None if all(p is not None for p in row_parts) else _cached_error(spec, key)
              for key, row_parts in zip(keys, parts)]
    if all(f is not None or all(p is not None for p in row) for f, row in zip(failed, parts)):
        seconds["read"] += time.perf_counter() - t
        return {"rows": [(r["_pos"], f if f is not None else np.concatenate(p))
                         for r, p, f in zip(rows, parts, failed)], "cached": True, "seconds": seconds}
    try:
        image, meta = read_image(path)
    except MammoscopeError as exc:
        for key in keys:
            _save_error(spec, key, str(exc))
        return {"rows": [(r["_pos"], str(exc)) for r in rows], "cached": False, "seconds": seconds}
    if spec.export is not None:
        from pipeline.io.reexport import export_copy

        image = export_copy(image, *spec.export)
    seconds["read"] += time.perf_counter() - t
    out: list[tuple[int, Any]] = []
    for r, rec, key, row_parts, fail in zip(rows, recipes, keys, parts, failed):
        if all(p is not None for p in row_parts):
            out.append((r["_pos"], np.concatenate(row_parts)))
            continue
        if fail is not None:
            out.append((r["_pos"], fail))
            continue
        t = time.perf_counter()
        x = _sample_row(spec, image, meta, r, rec, path, prepare=False)
        if isinstance(x, str):
            _save_error(spec, key, x)
            out.append((r["_pos"], x))
            continue
        seconds["sample"] += time.perf_counter() - t
        t = time.perf_counter()
        if spec.preprocess is not None:
            x = np.asarray(spec.preprocess.transform(x), dtype=np.float32)
        for j, (_, transformer, bkey) in enumerate(spec.branches):
            if row_parts[j] is None:
                row_parts[j] = np.asarray(transformer.transform(x))[0]
                if spec.cache_dir:
                    _save_atomic(_entry(spec.cache_dir, bkey, key), row_parts[j])
        seconds["features"] += time.perf_counter() - t
        out.append((r["_pos"], np.concatenate(row_parts)))
    return {"rows": out, "cached": False, "seconds": seconds}


def _chunk_features(groups: list[tuple[str, list[dict]]], spec: FeatureSpec, threads: int | None = None) -> dict:
    """One map_chunks task: the feature rows of a few image groups, and the worker's peak RSS (bytes); `threads`:
    torch's intra-op threads at most (1 where several worker processes share the cores)."""
    if threads is not None:
        from cnn.embedder import cap_threads

        cap_threads(threads)
    results = [_image_features(spec, path, rows) for path, rows in groups]
    return {"images": results, "pid": os.getpid(), "peak_rss": _peak_rss()}


def _peak_rss() -> int:
    """High-water resident set size of this process, bytes (0 where unknown)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return 0


# --------------------------------------------------------------------------------------------------------------------
# The stream (runs in the main process)
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class StreamResult:
    """Features of the rows that could be prepared (table order), what failed, and what it cost."""

    features: np.ndarray                 # (n_ok, d)
    positions: np.ndarray                # (n_ok,) row positions in the table
    errors: pd.DataFrame                 # position, sample_id, path, error
    n_images: int = 0
    images_cached: int = 0               # images whose every row came from the cache (file read only to key it)
    images_computed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)   # wall time; summed worker time per stage
    worker_peak_rss: int = 0             # bytes: highest peak RSS reported by a worker
    workers: int = 0                     # distinct worker processes seen

    def summary(self) -> str:
        """One line for the log: images, from cache, computed, throughput."""
        wall = self.seconds.get("wall", 0.0)
        rate = self.n_images / wall if wall > 0 else float("nan")
        return (f"features of {self.n_images} images: {self.images_cached} from the cache, {self.images_computed} "
                f"computed, {len(self.errors)} rows skipped; {wall:.1f} s ({rate:.1f} images/s, "
                f"{self.workers} worker process(es))")


def _groups(table: pd.DataFrame) -> list[tuple[str, list[dict]]]:
    records = table.reset_index(drop=True).to_dict("records")
    groups: dict[str, list[dict]] = {}
    for pos, rec in enumerate(records):
        rec["_pos"] = pos
        groups.setdefault(str(rec["path"]), []).append(rec)
    return list(groups.items())


def stream_features(table: pd.DataFrame, spec: FeatureSpec, *, n_jobs: int | None = None,
                    chunk_size: int = IMAGES_PER_CHUNK, max_in_flight: int | None = None,
                    progress_bar: bool = False, desc: str = "samples + features") -> StreamResult:
    """Feature rows of every row of `table` (rows sharing a file read it once), computed where the active compute
    session says (`n_jobs` local processes, None = every core; a Dask cluster inside `compute_backend`)."""
    from tqdm.auto import tqdm

    from pipeline.compute import map_chunks

    groups = _groups(table)
    n_rows = len(table)
    jobs = -1 if n_jobs is None else int(n_jobs)
    started = time.perf_counter()
    features: np.ndarray | None = None
    ok = np.zeros(n_rows, dtype=bool)
    errors: list[dict] = []
    stage = {"read": 0.0, "sample": 0.0, "features": 0.0}
    cached = computed = 0
    peak = 0
    pids: set[int] = set()
    # several worker processes (or a cluster's workers): one CNN thread each, the processes fill the cores
    func = functools.partial(_chunk_features, spec=spec, threads=None if jobs == 1 else 1)
    bar = tqdm(total=len(groups), desc=desc, unit="img", file=sys.stderr, disable=not progress_bar,
               dynamic_ncols=True)
    with bar:
        for start, result in map_chunks(func, groups, chunk_size, n_jobs=jobs, max_in_flight=max_in_flight,
                                        ordered=True, task_seconds=TASK_SECONDS,
                                        max_chunk_size=max(chunk_size, MAX_IMAGES_PER_CHUNK)):
            peak = max(peak, int(result["peak_rss"]))
            pids.add(int(result["pid"]))
            for k, (path, rows) in enumerate(groups[start:start + len(result["images"])]):
                res = result["images"][k]
                cached += bool(res["cached"])
                computed += not res["cached"]
                for name, value in res["seconds"].items():
                    stage[name] += value
                for pos, value in res["rows"]:
                    if isinstance(value, np.ndarray):
                        if features is None:
                            features = np.zeros((n_rows, value.size), dtype=value.dtype)
                        features[pos] = value
                        ok[pos] = True
                    else:
                        rec = rows[[r["_pos"] for r in rows].index(pos)]
                        errors.append({"position": pos, "sample_id": rec.get("sample_id"), "path": path,
                                       "error": value})
            bar.update(len(result["images"]))
    positions = np.flatnonzero(ok)
    if features is None:
        features = np.zeros((0, 0), dtype=np.float64)
    elif len(positions) < n_rows:
        features = features[positions]
    err = pd.DataFrame(sorted(errors, key=lambda e: e["position"]), columns=["position", "sample_id", "path", "error"])
    for message in err["error"].head(5):
        log.warning("sample skipped: %s", message)
    res = StreamResult(features=features, positions=positions, errors=err, n_images=len(groups),
                       images_cached=cached, images_computed=computed,
                       seconds={"wall": time.perf_counter() - started, **{f"worker_{k}": v for k, v in stage.items()}},
                       worker_peak_rss=peak, workers=len(pids))
    log.info(res.summary())
    return res


def assemble(front: Pipeline, head: Pipeline) -> Pipeline:
    """One image -> probability Pipeline from a fitted front and a head fitted on its features."""
    return Pipeline(list(front.steps) + list(head.steps))


def first_samples(table: pd.DataFrame, recipe: str, sample_params: Mapping[str, Any], *,
                  whole_breast_without_roi: bool, n: int = 2, tries: int = 16) -> np.ndarray:
    """Up to `n` samples (n, S*S) from the first rows that can be prepared (to fit the front on; input example)."""
    from pipeline.samples import load_samples, recipe_shape

    size = int(sample_params["size"])
    crop = _crop(sample_params)
    got: list[np.ndarray] = []
    for begin in range(0, min(len(table), tries), n):
        X, _ = load_samples(table.iloc[begin:begin + n], recipe, size=size, n_jobs=1,
                            whole_breast_without_roi=whole_breast_without_roi, **crop)
        got.extend(X)
        if len(got) >= n:
            break
    h, w = recipe_shape(recipe, size, crop)
    return np.asarray(got[:n], dtype=np.float32).reshape(-1, h * w)



# --------------------------------------------------------------------------------------------------------------------
# The sample store: prepared samples on disk for the steps that train on samples (fine-tuning)
# --------------------------------------------------------------------------------------------------------------------
SAMPLE_DTYPE = np.float16  # half the disk of float32; samples are in [0, 1] (rounding error < 5e-4)


@dataclass
class SampleStore:
    """Prepared samples of a table on disk: ``samples`` (n_rows, S*S) is a read-only memmap in table order (rows
    that failed are zeros and not ``ok``); index it to read only those rows (`cnn.finetune` reads one batch)."""

    path: Path
    samples: np.ndarray
    ok: np.ndarray                       # (n_rows,) bool
    errors: pd.DataFrame                 # position, sample_id, path, error
    reused: bool = False                 # True when a complete store of the same key was found

    def images(self) -> np.ndarray:
        """The samples as (n_rows, S, S) images: a memmap view, nothing read."""
        side = int(round(np.sqrt(self.samples.shape[1])))
        return self.samples.reshape(len(self.samples), side, side)


def sample_store_path(table: pd.DataFrame, spec: FeatureSpec, dtype: Any = SAMPLE_DTYPE) -> Path:
    """Where the store of `table`'s samples lives: ``<cache>/samples/<key>.npy``, the key hashing the sample recipe,
    the preprocess step and the code version (as the feature cache) and each row's file (path, size, mtime) and
    sample-shaping fields, in table order."""
    if not spec.cache_dir:
        raise ValueError("a sample store needs a cache folder (compute.cache_dir): the spec has none")
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((spec.recipe, spec.size, sorted(spec.crop.items()), spec.whole_breast_without_roi,
                        _sample_code_version(), spec.preprocess_key, np.dtype(dtype).str)).encode())
    for rec in table.reset_index(drop=True).to_dict("records"):
        path = str(rec["path"])
        try:
            st = os.stat(path)
            stamp = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (path, None, None)
        digest.update(repr((stamp, [None if pd.isna(rec.get(f)) else str(rec.get(f)) for f in ROW_FIELDS
                                    if f in rec])).encode())
    return Path(spec.cache_dir) / "samples" / f"{digest.hexdigest()}.npy"


def _chunk_samples(groups: list[tuple[str, list[dict]]], spec: FeatureSpec, dtype: Any) -> list[list[tuple]]:
    """One map_chunks task of the sample store: per image group, [(pos, prepared sample (S*S,) | error str)]."""
    from pipeline.io.imageio import read_image

    out = []
    for path, rows in groups:
        try:
            image, meta = read_image(path)
        except MammoscopeError as exc:
            out.append([(r["_pos"], str(exc)) for r in rows])
            continue
        got = []
        for r, rec in zip(rows, _recipes(spec, rows)):
            x = _sample_row(spec, image, meta, r, rec, path, prepare=True)
            got.append((r["_pos"], x if isinstance(x, str) else x[0].astype(dtype)))
        out.append(got)
    return out


def stream_samples(table: pd.DataFrame, spec: FeatureSpec, *, n_jobs: int | None = None,
                   chunk_size: int = IMAGES_PER_CHUNK, dtype: Any = SAMPLE_DTYPE,
                   progress_bar: bool = False) -> SampleStore:
    """Prepared samples (the sample, then the front's preprocess step) of every row of `table` in a store on disk.

    Workers (local processes, or Dask inside `compute_backend`) read each image once and prepare its rows; this
    process writes each chunk's rows into a .npy memmap as they arrive (in order, a few chunks in flight), so it
    holds a chunk, never the set. The file is written under a temporary name and renamed when complete, with an
    ``.ok.npy`` mask beside it; a complete store of the same key (`sample_store_path`) is reused as it is."""
    from tqdm.auto import tqdm

    from pipeline.compute import map_chunks

    path = sample_store_path(table, spec, dtype)
    ok_path = path.with_suffix(".ok.npy")
    err_path = path.with_suffix(".errors.csv")
    if path.is_file() and ok_path.is_file() and err_path.is_file():
        return SampleStore(path, np.load(path, mmap_mode="r"), np.load(ok_path), pd.read_csv(err_path), reused=True)
    groups = _groups(table)
    n_rows = len(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{time.monotonic_ns()}"
    tmp = path.with_name(f".{path.stem}.{tag}.tmp.npy")
    store = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_rows, spec.size * spec.size))
    ok = np.zeros(n_rows, dtype=bool)
    errors: list[dict] = []
    func = functools.partial(_chunk_samples, spec=spec, dtype=dtype)
    try:
        with tqdm(total=len(groups), desc="samples to disk", unit="img", file=sys.stderr,
                  disable=not progress_bar, dynamic_ncols=True) as bar:
            for start, result in map_chunks(func, groups, chunk_size, n_jobs=-1 if n_jobs is None else n_jobs,
                                            ordered=True, task_seconds=TASK_SECONDS,
                                            max_chunk_size=max(chunk_size, MAX_IMAGES_PER_CHUNK)):
                for (img_path, rows), got in zip(groups[start:start + len(result)], result):
                    by_pos = {r["_pos"]: r for r in rows}
                    for pos, value in got:
                        if isinstance(value, str):
                            errors.append({"position": pos, "sample_id": by_pos[pos].get("sample_id"),
                                           "path": img_path, "error": value})
                        else:
                            store[pos] = value
                            ok[pos] = True
                bar.update(len(result))
        store.flush()
        del store
        err = pd.DataFrame(sorted(errors, key=lambda e: e["position"]),
                           columns=["position", "sample_id", "path", "error"])
        err.to_csv(err_path, index=False)
        _save_atomic(ok_path, ok)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("samples of %d rows (%d failed) stored in %s", n_rows, len(errors), path)
    return SampleStore(path, np.load(path, mmap_mode="r"), ok, err)
