"""Where parallel work runs: local joblib processes (the default) or a Dask cluster.

One setting moves every joblib-parallel piece of Mammoscope (image reading, feature extraction, cross-validation
folds, batch prediction) onto a Dask cluster with no other code change:

* the experiment's ``compute: {scheduler: tcp://host:8786}``, or
* the CLI's ``--scheduler tcp://host:8786`` (``--scheduler local`` forces local work), or
* the ``DASK_SCHEDULER_ADDRESS`` environment variable (the variable Dask itself reads).

The CLI wins over the experiment file, which wins over the environment. ``compute_backend(address)`` connects a
``distributed.Client`` and activates joblib's ``"dask"`` backend (with Dask ``retries``) for the ``with`` block;
``map_chunks`` streams chunked work with a bounded number of chunks in flight. Workers read images themselves from
the paths in the manifest, so those paths must be mounted at the same place on every worker, and so must the feature
cache (``compute.cache_dir`` / ``$MAMMOSCOPE_CACHE``): see docs/scale-out.md.

Without a scheduler nothing here imports ``dask`` or ``distributed`` (they are the optional ``mammoscope[dask]``).
"""
from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, TypeVar

from pipeline.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from distributed import Client

__all__ = [
    "ENV_VAR",
    "LOCAL",
    "DEFAULT_RETRIES",
    "DEFAULT_CHUNK_SIZE",
    "FailureReport",
    "ComputeSession",
    "resolve_scheduler",
    "ComputeSettings",
    "resolve_compute",
    "add_scheduler_option",
    "compute_backend",
    "current_session",
    "map_chunks",
    "ChunkSizer",
    "adaptive_chunk_size",
]

logger = logging.getLogger(__name__)

ENV_VAR = "DASK_SCHEDULER_ADDRESS"
LOCAL = "local"
DEFAULT_RETRIES = 2            # Dask re-runs a task that raised this many times before the error reaches the client
DEFAULT_CHUNK_SIZE = 16        # items (images, rows) per task in map_chunks
DASK_WINDOW_PER_THREAD = 4     # map_chunks on Dask: chunks in flight (running + waiting for order) per worker thread
SIZER_WINDOW = 8               # adaptive chunks: per-item time is the median over the last this many chunks
CONNECT_TIMEOUT_S = 30.0       # seconds to reach the scheduler and to wait for a first worker
ERROR_TOPIC = "mammoscope-task-error"  # scheduler event topic: a map_chunks task raised (Dask retries it)
_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")
_ADDRESS = re.compile(r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?$")

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------------------------------------------------
# Which scheduler
# --------------------------------------------------------------------------------------------------------------------
def _normalize(value: str, where: str) -> str | None:
    text = value.strip()
    if text.lower() in (LOCAL, ""):
        return None
    match = _ADDRESS.match(text)
    scheme = (match.group("scheme") if match else None) or "tcp"
    if match is None or scheme not in _SCHEMES or (scheme != "inproc" and not match.group("port")):
        raise ConfigError(
            f"{where}: {value!r} is not a Dask scheduler address; give SCHEME://HOST:PORT with SCHEME one of "
            f"{', '.join(_SCHEMES)} (e.g. tcp://10.0.0.5:8786, printed by `dask scheduler`), or 'local'"
        )
    if match.group("port") and not 0 < int(match.group("port")) < 65536:
        raise ConfigError(f"{where}: port {match.group('port')} of {value!r} is not in [1, 65535]")
    return text if match.group("scheme") else f"tcp://{text}"


def resolve_scheduler(
    cli: str | None = None,
    experiment: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """Scheduler address to use, or None for local joblib processes: CLI, then experiment, then environment."""
    env = os.environ if environ is None else environ
    for value, where in (
        (cli, "--scheduler"),
        (experiment, "compute.scheduler"),
        (env.get(ENV_VAR), f"${ENV_VAR}"),
    ):
        if value is not None and (value.strip() or where == "--scheduler"):
            return _normalize(value, where)
    return None


@dataclass(frozen=True)
class ComputeSettings:
    """Where and how an experiment computes: worker threads, Dask scheduler (None = local) and feature cache."""

    n_jobs: int | None
    scheduler: str | None
    cache_dir: Path | None


def resolve_compute(config: Mapping[str, Any] | None = None, *, scheduler: str | None = None,
                    cache_dir: str | Path | None = None, n_jobs: int | None = None,
                    environ: Mapping[str, str] | None = None, default_cache: bool = True) -> ComputeSettings:
    """The one place compute settings are resolved, for `train`, `main` and the Python API alike.

    Each setting: the explicit argument (CLI flag / API keyword), else the experiment's ``compute`` section, else the
    environment ($DASK_SCHEDULER_ADDRESS, $MAMMOSCOPE_CACHE), else the default (local; pipeline.paths.default_cache_dir;
    n_jobs None = every core for XGBoost, from compute.n_jobs <= 0). `default_cache=False`: no cache (cache_dir
    None) unless the argument or the experiment names one.
    """
    from pipeline.paths import default_cache_dir

    comp = dict((config or {}).get("compute") or {})
    jobs = n_jobs if n_jobs is not None else comp.get("n_jobs", 1)
    jobs = None if jobs is None or int(jobs) <= 0 else int(jobs)
    address = resolve_scheduler(scheduler, comp.get("scheduler"), environ)
    folder = cache_dir or comp.get("cache_dir") or (default_cache_dir() if default_cache else None)
    return ComputeSettings(n_jobs=jobs, scheduler=address,
                           cache_dir=Path(folder).expanduser() if folder is not None else None)


def add_scheduler_option(parser: "argparse.ArgumentParser") -> None:
    """Add ``--scheduler ADDRESS`` to a subcommand's parser (default: the experiment's, else $DASK_SCHEDULER_ADDRESS)."""
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help=(
            "Dask scheduler (tcp://host:8786) to run this command's parallel work on (docs/scale-out.md); "
            f"'local' = this machine. Default: the experiment's compute.scheduler, else ${ENV_VAR}, else local"
        ),
    )


# --------------------------------------------------------------------------------------------------------------------
# What went wrong on the cluster
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class FailureReport:
    """Worker failures Dask recovered from (or not) during a compute session."""

    lost_workers: list[str] = field(default_factory=list)
    rescheduled_tasks: int = 0   # tasks running on a lost worker, run again elsewhere
    recomputed_tasks: int = 0    # finished results held only by a lost worker, computed again
    retried_errors: int = 0      # map_chunks task attempts that raised on a worker (re-run while retries last)

    @property
    def retried_tasks(self) -> int:
        """Tasks Dask ran more than once because of a failure."""
        return self.rescheduled_tasks + self.recomputed_tasks + self.retried_errors

    @property
    def clean(self) -> bool:
        """True when no worker was lost and no task had to be retried."""
        return not self.lost_workers and not self.retried_tasks

    def __str__(self) -> str:
        if self.clean:
            return "no worker lost, no task retried"
        return (f"{len(self.lost_workers)} worker(s) lost ({', '.join(self.lost_workers) or '-'}); "
                f"{self.retried_tasks} task(s) retried ({self.rescheduled_tasks} rescheduled from lost workers, "
                f"{self.recomputed_tasks} lost results recomputed, {self.retried_errors} after an error)")


@dataclass
class ComputeSession:
    """An active compute backend: `client` is None for local joblib processes."""

    address: str | None
    client: Any = None
    retries: int = DEFAULT_RETRIES
    cache_dir: Path | None = None
    cache_shared: bool | None = None   # None: not checked (local); False: some worker cannot see cache_dir
    report: FailureReport | None = None
    _seen_events: set = field(default_factory=set, repr=False)

    @property
    def is_distributed(self) -> bool:
        return self.client is not None

    def n_workers(self) -> int:
        """Workers connected now (1 for local work)."""
        if self.client is None:
            return 1
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def total_threads(self) -> int:
        """Threads over all workers now (os.cpu_count() for local work)."""
        if self.client is None:
            return os.cpu_count() or 1
        return int(sum(self.client.nthreads().values()))

    def failures(self) -> FailureReport:
        """Failures seen on the cluster since the session started (read from the scheduler's event log)."""
        if self.client is None:
            return FailureReport()
        report = FailureReport()
        for stamp, msg in self.client.get_events("all"):
            if not isinstance(msg, dict):
                continue
            if msg.get("action") == "remove-worker" and not msg.get("expected", False):
                if _event_key(stamp, msg) in self._seen_events:
                    continue
                report.lost_workers.append(str(msg.get("worker")))
                report.rescheduled_tasks += len(msg.get("processing-tasks") or ())
                report.recomputed_tasks += len(msg.get("lost-computed-tasks") or ())
        for stamp, msg in self.client.get_events(ERROR_TOPIC):
            if _event_key(stamp, msg) not in self._seen_events:
                report.retried_errors += 1
        return report

    def _mark_seen(self) -> None:
        for topic in ("all", ERROR_TOPIC):
            for stamp, msg in self.client.get_events(topic):
                self._seen_events.add(_event_key(stamp, msg))


def _event_key(stamp: float, msg: Any) -> tuple:
    worker = msg.get("worker") if isinstance(msg, dict) else None
    action = msg.get("action") if isinstance(msg, dict) else None
    return (stamp, worker, action, str(msg)[:200])


_SESSION: contextvars.ContextVar[ComputeSession | None] = contextvars.ContextVar("mammoscope_compute", default=None)


def current_session() -> ComputeSession | None:
    """The compute session of the innermost active `compute_backend` block, if any."""
    return _SESSION.get()


# --------------------------------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------------------------------
def _import_distributed():
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - exercised only where the extra is missing
        raise ConfigError(
            "compute.scheduler: a Dask scheduler is set but dask.distributed is not installed; "
            "install the extra (pip install 'mammoscope[dask]') or drop the scheduler setting to run locally"
        ) from exc
    return distributed


def _cache_env_plugin(cache_dir: str):
    """A WorkerPlugin that points $MAMMOSCOPE_CACHE at `cache_dir` on every worker, restarted ones included."""
    from distributed import WorkerPlugin

    class MammoscopeCacheDir(WorkerPlugin):
        name = "mammoscope-cache-dir"

        def __init__(self, path: str) -> None:
            self.path = path

        def setup(self, worker) -> None:
            os.environ["MAMMOSCOPE_CACHE"] = self.path

    return MammoscopeCacheDir(cache_dir)


def _probe_path(marker: str) -> bool:
    return os.path.isfile(marker)


def _check_shared_dir(client: "Client", directory: Path) -> list[str]:
    """Workers that cannot see `directory` as this client does (a marker file written here, looked for there)."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / f".mammoscope-shared-{uuid.uuid4().hex}"
    marker.write_text("written by the Mammoscope client to check that workers share this folder\n")
    try:
        seen = client.run(_probe_path, str(marker))
    finally:
        marker.unlink(missing_ok=True)
    return sorted(worker for worker, ok in seen.items() if not ok)


@contextmanager
def compute_backend(
    scheduler: "str | Client | None" = None,
    *,
    retries: int = DEFAULT_RETRIES,
    cache_dir: str | Path | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> Iterator[ComputeSession]:
    """Run joblib-parallel work of the block on `scheduler` (address or Client; None/'local' = local processes).

    On a cluster, joblib's ``"dask"`` backend is active for the block, Dask re-runs a failing task up to `retries`
    times, workers use `cache_dir` (default: this machine's feature cache) as their feature cache, and on exit the
    session's ``report`` holds the worker failures Dask recovered from (also logged).
    """
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"compute retries: {retries!r} is not an int >= 0")
    if scheduler is None or isinstance(scheduler, str):
        address = None if scheduler is None else _normalize(scheduler, "scheduler")
    else:
        address = getattr(scheduler, "scheduler", None) and scheduler.scheduler.address
    if scheduler is None or (isinstance(scheduler, str) and address is None):
        session = ComputeSession(address=None, retries=retries,
                                 cache_dir=Path(cache_dir).expanduser() if cache_dir is not None else None)
        token = _SESSION.set(session)
        try:
            yield session
        finally:
            session.report = FailureReport()
            _SESSION.reset(token)
        return

    _import_distributed()
    import joblib
    from distributed import Client

    owns_client = isinstance(scheduler, str)
    if owns_client:
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"scheduler {address}: cannot connect ({exc}); check that `dask scheduler` runs there and that this "
                "machine can reach its port, or run locally (--scheduler local)"
            ) from exc
    else:
        client = scheduler
    try:
        from pipeline.paths import default_cache_dir

        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache = cache.resolve()
        session = ComputeSession(address=address, client=client, retries=retries, cache_dir=cache)
        session._mark_seen()
        client.register_plugin(_cache_env_plugin(str(cache)), name="mammoscope-cache-dir")
        if timeout:
            client.wait_for_workers(1, timeout=timeout)
        blind = _check_shared_dir(client, cache)
        session.cache_shared = not blind
        if blind:
            logger.warning(
                "feature cache %s is not visible from worker(s) %s: each of them caches on its own disk and "
                "cached features are not reused across workers; set compute.cache_dir (or $MAMMOSCOPE_CACHE) to a "
                "shared filesystem mounted at the same path on every machine", cache, ", ".join(blind))
        logger.info("computing on Dask scheduler %s (%d workers, %d threads; retries=%d; feature cache %s)",
                    address, session.n_workers(), session.total_threads(), retries, cache)
        token = _SESSION.set(session)
        try:
            with joblib.parallel_config(backend="dask", client=client, retries=retries,
                                        wait_for_workers_timeout=timeout):
                yield session
        finally:
            _SESSION.reset(token)
            try:
                session.report = session.failures()
            except Exception as exc:  # the cluster may be gone; the run's own error matters more
                logger.warning("could not read worker failures from scheduler %s: %s", address, exc)
                session.report = FailureReport()
            (logger.info if session.report.clean else logger.warning)(
                "Dask scheduler %s: %s", address, session.report)
    finally:
        if owns_client:
            client.close()


# --------------------------------------------------------------------------------------------------------------------
# Streaming chunks
# --------------------------------------------------------------------------------------------------------------------
def _chunks(items: Iterable[T], size: "int | ChunkSizer") -> Iterator[tuple[int, list[T]]]:
    """(start, chunk) of consecutive items; with a ChunkSizer, each chunk takes the sizer's size at that moment."""
    iterator = iter(items)
    start = 0
    while chunk := list(itertools.islice(iterator, size if isinstance(size, int) else size.size)):
        yield start, chunk
        start += len(chunk)


def adaptive_chunk_size(seconds_per_item: float, target_s: float, minimum: int, maximum: int) -> int:
    """Items per task so a task holds about `target_s` seconds of work, within [minimum, maximum]."""
    if not seconds_per_item > 0:  # no measurable work (cached items, a clock that did not tick): the cap
        return maximum
    return int(min(maximum, max(minimum, round(target_s / seconds_per_item))))


@dataclass
class ChunkSizer:
    """Chunk size of a map_chunks stream on Dask, grown (or shrunk) from the worker time of finished chunks.

    Starts at `minimum` (the caller's chunk_size: first results come quickly, and a slow start, e.g. a worker's first
    imports, cannot make the first task huge); after each finished chunk the size is `adaptive_chunk_size` of the
    median seconds per item over the last SIZER_WINDOW chunks, capped at `maximum` so a lost task costs little and
    the results in flight stay bounded."""

    minimum: int
    maximum: int
    target_s: float
    size: int = 0
    recent: list = field(default_factory=list)   # seconds per item of the last chunks

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"chunk sizes must satisfy 1 <= minimum <= maximum. Got {self.minimum}, {self.maximum}.")
        if not self.target_s > 0:
            raise ValueError(f"target seconds per task must be > 0. Got {self.target_s!r} instead.")
        self.size = self.size or self.minimum

    def observe(self, n_items: int, seconds: float) -> int:
        """Record one finished chunk of `n_items` that took `seconds` on its worker; returns the next size."""
        if n_items > 0:
            self.recent = [*self.recent[-(SIZER_WINDOW - 1):], max(0.0, float(seconds)) / n_items]
            per_item = sorted(self.recent)[len(self.recent) // 2]
            self.size = adaptive_chunk_size(per_item, self.target_s, self.minimum, self.maximum)
        return self.size


def _run_chunk(func: Callable[[list[T]], R], start: int, chunk: list[T]) -> tuple[int, R]:
    """Run `func` on one chunk (on a worker); an error is logged to the scheduler before Dask retries the task."""
    try:
        return start, func(chunk)
    except Exception as exc:
        try:
            from distributed import get_worker

            get_worker().log_event(ERROR_TOPIC, {"start": start, "error": repr(exc)[:500]})
        except (ImportError, ValueError):  # not on a Dask worker (local joblib path)
            pass
        raise


def _run_chunk_timed(func: Callable[[list[T]], R], start: int, chunk: list[T]) -> tuple[int, R, float]:
    """`_run_chunk` and the seconds it took on the worker (what ChunkSizer learns from)."""
    began = time.perf_counter()
    start, result = _run_chunk(func, start, chunk)
    return start, result, time.perf_counter() - began


def map_chunks(
    func: Callable[[list[T]], R],
    items: Iterable[T],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    max_in_flight: int | None = None,
    n_jobs: int | None = None,
    ordered: bool = False,
    task_seconds: float | None = None,
    max_chunk_size: int | None = None,
) -> Iterator[tuple[int, R]]:
    """Yield ``(start, func(items[start:start+size]))`` as chunks complete, at most `max_in_flight` at once.

    `items` may be a lazy iterable (it is read only as chunks are submitted). Inside a `compute_backend` block on a
    cluster, chunks are Dask tasks with the session's retries (a chunk on a worker that dies is run again elsewhere);
    otherwise they run in local joblib processes (`n_jobs`, default joblib's). `func` must be picklable; it is sent
    to the workers once. `start` is the offset of the chunk's first item, so results can be put back in order;
    ``ordered=True`` yields them in input order instead (finished chunks wait for earlier ones, and count towards
    `max_in_flight`; on Dask its default is DASK_WINDOW_PER_THREAD chunks per worker thread, locally 2 per process).

    `task_seconds` (Dask only): chunks start at `chunk_size` items and grow to about that many seconds of worker
    time each, up to `max_chunk_size` items (default 16 x chunk_size): each Dask task costs milliseconds of
    scheduling and round trips, which would dominate tasks of a few ms of work. Local joblib batches small tasks
    itself, so the local path keeps `chunk_size`.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1. Got {chunk_size!r} instead.")
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise ValueError(f"max_in_flight must be an int >= 1 or None. Got {max_in_flight!r} instead.")
    sizer = None
    if task_seconds is not None:
        sizer = ChunkSizer(minimum=chunk_size, maximum=max(chunk_size, max_chunk_size or 16 * chunk_size),
                           target_s=task_seconds)
    session = current_session()
    if session is not None and session.client is not None:
        yield from _map_chunks_dask(session, func, items, chunk_size, max_in_flight, ordered, sizer)
        return
    import joblib

    limit = max_in_flight or 2 * max(1, joblib.effective_n_jobs(n_jobs))
    parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator" if ordered else "generator_unordered",
                               pre_dispatch=str(limit))
    yield from parallel(joblib.delayed(_run_chunk)(func, start, chunk) for start, chunk in _chunks(items, chunk_size))


def _map_chunks_dask(
    session: ComputeSession,
    func: Callable[[list[T]], R],
    items: Iterable[T],
    chunk_size: int,
    max_in_flight: int | None,
    ordered: bool = False,
    sizer: ChunkSizer | None = None,
) -> Iterator[tuple[int, R]]:
    from collections import deque

    from distributed import as_completed

    client = session.client
    limit = max_in_flight or DASK_WINDOW_PER_THREAD * max(1, session.total_threads())
    tag = uuid.uuid4().hex[:8]
    # `func` travels once, as a task of its own: workers fetch it from each other and Dask recomputes it if every
    # copy is lost with its workers (scattered data could not be recovered; scatter(broadcast=True) also trips a
    # serialization bug in the scheduler's `replicate` event in distributed 2026.8).
    func_future = client.submit(_identity, func, pure=False, key=f"mammoscope-func-{tag}")
    running = as_completed(loop=client.loop, with_results=False)
    submitted: deque[int] = deque()   # starts in submission order (ordered=True)
    finished: dict[int, Any] = {}     # results waiting for an earlier chunk (ordered=True)
    sizes: dict[int, int] = {}        # items of each chunk in flight (for the sizer)

    def emit(future) -> Iterator[tuple[int, R]]:
        start, result, seconds = _take(future)
        n_items = sizes.pop(start, 0)
        if sizer is not None:
            sizer.observe(n_items, seconds)
        if not ordered:
            yield start, result
            return
        finished[start] = result
        while submitted and submitted[0] in finished:
            first = submitted.popleft()
            yield first, finished.pop(first)

    try:
        for start, chunk in _chunks(items, sizer if sizer is not None else chunk_size):
            sizes[start] = len(chunk)
            running.add(client.submit(_run_chunk_timed, func_future, start, chunk, retries=session.retries,
                                      pure=False, key=f"mammoscope-chunk-{tag}-{start}"))
            if ordered:
                submitted.append(start)
            while running.count() + len(finished) >= limit:
                yield from emit(next(running))
        for future in running:
            yield from emit(future)
    finally:
        for future in list(running.futures):
            future.cancel()
        func_future.release()


def _identity(value: T) -> T:
    return value


def _take(future) -> Any:
    try:
        return future.result()
    finally:
        future.release()
