"""pipeline.compute on real Dask clusters: a LocalCluster (2 worker processes) and a `dask scheduler` + `dask worker`
pair started as subprocesses, both on loopback.

Same features as the local path: the cluster runs the very same numpy code on the same float32 inputs, so
features must agree to atol=1e-6 (they are in practice bit-identical). A worker killed mid-run costs a retry,
not the run. No process may outlive the module.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.compute import (
    ENV_VAR,
    ComputeSession,
    FailureReport,
    compute_backend,
    map_chunks,
    resolve_scheduler,
)
from pipeline.errors import ConfigError

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
DASK_CLI = Path(sys.executable).with_name("dask")
N_IMAGES = 8
SIZE = 64
FEATURE_ATOL = 1e-6


# --------------------------------------------------------------------------------------------------------------------
# Work shipped to the workers (module-level so workers import it; tests/ is on their path)
# --------------------------------------------------------------------------------------------------------------------
class Featurizer:
    """Rows of a dataset table -> handcrafted features, reading each image from its path (on the worker)."""

    def __init__(self, pipeline, task: str = "density", size: int = SIZE) -> None:
        self.pipeline = pipeline
        self.task = task
        self.size = size

    def __call__(self, rows: list[dict]) -> np.ndarray:
        from pipeline.samples import load_samples

        X, errors = load_samples(pd.DataFrame(rows), self.task, self.size, n_jobs=1)
        if len(errors):
            raise RuntimeError(f"unreadable rows: {errors.to_dict('records')}")
        return self.pipeline.transform(X)


class DiesOnce:
    """Wraps a chunk function: the first call anywhere creates `marker` and kills its worker process."""

    def __init__(self, func, marker: str, how: str = "exit") -> None:
        self.func = func
        self.marker = marker
        self.how = how

    def __call__(self, chunk):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.func(chunk)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        if self.how == "exit":
            os._exit(3)  # the worker process dies mid-task, as on an OOM kill or a lost machine
        raise RuntimeError("transient failure (first attempt only)")


def worker_pid(_=None) -> int:
    return os.getpid()


# --------------------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rows(mias_dir: Path) -> list[dict]:
    from pipeline.io.datasets import density_table, load_dataset

    table = density_table(load_dataset("mias", mias_dir))
    return table.head(N_IMAGES).to_dict("records")


@pytest.fixture(scope="module")
def featurizer(rows: list[dict]) -> Featurizer:
    from features import make_handcrafted_pipeline
    from pipeline.samples import load_samples

    X, _ = load_samples(pd.DataFrame(rows[:2]), "density", SIZE)
    pipe = make_handcrafted_pipeline(kernel_size=4, levels=16, distances=(1, 2)).fit(X)
    return Featurizer(pipe)


@pytest.fixture(scope="module")
def local_features(rows: list[dict], featurizer: Featurizer) -> np.ndarray:
    """The reference: every row featurized in this process."""
    return featurizer(rows)


def _assemble(results, n: int) -> np.ndarray:
    parts = sorted(results, key=lambda pair: pair[0])
    starts = [s for s, _ in parts]
    out = np.concatenate([r for _, r in parts])
    assert starts == sorted(set(starts)) and len(out) == n
    return out


def _alive(pids) -> list[int]:
    """The pids among `pids` that still exist as non-zombie processes."""
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """A real LocalCluster: 2 single-threaded worker processes on 127.0.0.1 (nannies restart a dead worker)."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, local_directory=str(tmp_path_factory.mktemp("lc")))
    client = distributed.Client(cluster, set_as_default=False)
    pids = set(client.run(worker_pid).values())
    yield client
    pids |= set(client.run(worker_pid).values())  # restarted workers too
    client.close()
    cluster.close()
    deadline = time.monotonic() + 15
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pids), f"LocalCluster worker processes left behind: {_alive(pids)}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_members(pgid: int) -> list[int]:
    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(proc.info["pid"])
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (dask shuts down gracefully and reaps its own children), then SIGKILL leftovers."""
    pgid = proc.pid  # start_new_session=True: the group id is the leader's pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _group_members(pgid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """`dask scheduler` and `dask worker` as subprocesses on loopback, each in its own process group."""
    folder = tmp_path_factory.mktemp("dask-cli")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    logs = [open(folder / "scheduler.log", "wb"), open(folder / "worker.log", "wb")]
    procs = [subprocess.Popen([str(DASK_CLI), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard", "--no-show"],
                              cwd=folder, env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)]
    procs.append(subprocess.Popen([str(DASK_CLI), "worker", address, "--host", "127.0.0.1", "--no-nanny",
                                   "--nthreads", "1", "--no-dashboard", "--local-directory", str(folder),
                                   "--death-timeout", "60"],
                                  cwd=folder, env=env, stdout=logs[1], stderr=subprocess.STDOUT,
                                  start_new_session=True))
    try:
        with distributed.Client(address, timeout=60, set_as_default=False) as probe:
            probe.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            _stop_group(proc)
        for log in logs:
            log.close()
        left = [pid for proc in procs for pid in _group_members(proc.pid)]
        assert all(proc.poll() is not None for proc in procs)
        assert not left, f"dask CLI processes left behind: {left}"


# --------------------------------------------------------------------------------------------------------------------
# Which scheduler: no cluster needed
# --------------------------------------------------------------------------------------------------------------------
def test_resolve_scheduler_precedence_and_forms():
    env = {ENV_VAR: "10.0.0.9:8786"}
    assert resolve_scheduler(None, None, {}) is None
    assert resolve_scheduler(None, None, env) == "tcp://10.0.0.9:8786"
    assert resolve_scheduler(None, "tls://head:9000", env) == "tls://head:9000"
    assert resolve_scheduler("tcp://127.0.0.1:8786", "tls://head:9000", env) == "tcp://127.0.0.1:8786"
    assert resolve_scheduler("local", "tls://head:9000", env) is None
    assert resolve_scheduler(None, "local", env) is None
    with pytest.raises(ConfigError, match=r"compute\.scheduler: 'http://x:1'"):
        resolve_scheduler(None, "http://x:1", {})
    with pytest.raises(ConfigError, match=r"--scheduler: 'head'.*SCHEME://HOST:PORT"):
        resolve_scheduler("head", None, {})
    with pytest.raises(ConfigError, match=r"\$DASK_SCHEDULER_ADDRESS: port 70000"):
        resolve_scheduler(None, None, {ENV_VAR: "tcp://head:70000"})


def test_default_path_is_local_and_imports_no_dask():
    code = (
        "import sys\n"
        "from pipeline.compute import compute_backend, map_chunks\n"
        "with compute_backend(None) as s:\n"
        "    out = sorted(map_chunks(sum, range(20), 6, n_jobs=2))\n"
        "assert s.client is None and s.report.clean, s\n"
        "assert out == [(0, 15), (6, 51), (12, 87), (18, 37)], out\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def test_map_chunks_keeps_a_bounded_number_of_chunks_in_flight():
    pulled = []

    def items():
        for i in range(100):
            pulled.append(i)
            yield i

    stream = map_chunks(sum, items(), 5, max_in_flight=2, n_jobs=1)
    first = next(stream)
    assert first == (0, 10)
    assert len(pulled) <= 5 * 3  # two chunks in flight plus the one being read, never the whole input
    rest = list(stream)
    assert len(rest) == 19 and sum(r for _, r in rest) + 10 == sum(range(100))
    assert list(map_chunks(sum, range(7), 2, n_jobs=2, ordered=True)) == [(0, 1), (2, 5), (4, 9), (6, 6)]
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        next(map_chunks(sum, [1], 0))


# --------------------------------------------------------------------------------------------------------------------
# LocalCluster
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_cluster_features_match_local_path(local_cluster, rows, featurizer, local_features, tmp_path):
    pulled = []

    def lazy_rows():
        for row in rows:
            pulled.append(row["sample_id"])
            yield row

    with compute_backend(local_cluster, cache_dir=tmp_path / "cache") as session:
        assert session.is_distributed and session.n_workers() == 2
        assert session.cache_shared is True  # loopback workers see the client's cache folder
        stream = map_chunks(featurizer, lazy_rows(), 3, max_in_flight=2)
        first = next(stream)
        assert len(pulled) <= 3 * 3  # bounded: the input is not read ahead of the chunks in flight
        feats = _assemble([first, *stream], len(rows))
    assert session.report.clean, session.report
    np.testing.assert_allclose(feats, local_features, rtol=0, atol=FEATURE_ATOL)


@pytest.mark.slow
def test_local_cluster_runs_joblib_code_unchanged(local_cluster, rows, featurizer, local_features):
    """load_samples and the feature estimators use joblib: inside compute_backend their tasks run on the workers."""
    from features import make_handcrafted_pipeline
    from pipeline.samples import load_samples

    worker_pids = set(local_cluster.run(worker_pid).values())
    with compute_backend(local_cluster) as session, distributed.get_task_stream(client=local_cluster) as stream:
        X, errors = load_samples(pd.DataFrame(rows), "density", SIZE, n_jobs=2)
        pipe = make_handcrafted_pipeline(kernel_size=4, levels=16, distances=(1, 2), n_jobs=-1).fit(X)
        feats = pipe.transform(X)
        import joblib

        pids = set(joblib.Parallel(n_jobs=2)(joblib.delayed(worker_pid)(i) for i in range(8)))
    keys = " ".join(str(t["key"]) for t in stream.data)
    assert "_samples_of_image" in keys  # image reading ran as Dask tasks
    assert pids <= worker_pids and os.getpid() not in pids
    assert errors.empty and session.report.clean
    np.testing.assert_allclose(feats, local_features, rtol=0, atol=FEATURE_ATOL)


@pytest.mark.slow
def test_killed_worker_costs_a_retry_not_the_run(local_cluster, rows, featurizer, local_features, tmp_path):
    marker = tmp_path / "died"
    with compute_backend(local_cluster, retries=1) as session:
        feats = _assemble(map_chunks(DiesOnce(featurizer, str(marker)), rows, 2, max_in_flight=4), len(rows))
        local_cluster.wait_for_workers(2, timeout=60)  # the nanny restarts the dead worker
    report = session.report
    assert marker.is_file(), "no worker was killed"
    assert len(report.lost_workers) == 1, report
    assert report.rescheduled_tasks >= 1 and report.retried_tasks >= 1, report
    assert "1 worker(s) lost" in str(report)
    np.testing.assert_allclose(feats, local_features, rtol=0, atol=FEATURE_ATOL)


@pytest.mark.slow
def test_task_error_is_retried_by_dask_and_reported(local_cluster, tmp_path):
    marker = tmp_path / "raised"
    with compute_backend(local_cluster, retries=2) as session:
        out = sorted(map_chunks(DiesOnce(sum, str(marker), how="raise"), range(12), 4))
        ordered = list(map_chunks(sum, range(40), 3, max_in_flight=3, ordered=True))
    assert out == [(0, 6), (4, 22), (8, 38)]
    assert ordered == [(s, sum(range(s, min(s + 3, 40)))) for s in range(0, 40, 3)]
    assert session.report.retried_errors == 1 and not session.report.lost_workers, session.report
    # with no retries left the error reaches the caller
    marker2 = tmp_path / "raised-again"
    with compute_backend(local_cluster, retries=0):
        with pytest.raises(RuntimeError, match="transient failure"):
            list(map_chunks(DiesOnce(sum, str(marker2), how="raise"), range(4), 4))


def sleepy_items(chunk: list[int]) -> list[int]:
    """5 ms of (sleeping) work per item; the chunk back, so the test sees each task's items."""
    time.sleep(0.005 * len(chunk))
    return list(chunk)


@pytest.mark.slow
def test_adaptive_chunks_grow_on_dask_and_keep_input_order(local_cluster):
    """task_seconds: tasks grow from chunk_size towards ~0.05 s of work (10 items of 5 ms), capped at 16 items;
    results still come in input order, every item once."""
    with compute_backend(local_cluster) as session:
        out = list(map_chunks(sleepy_items, range(300), 1, ordered=True, task_seconds=0.05, max_chunk_size=16))
    sizes = [len(chunk) for _, chunk in out]
    assert [x for _, chunk in out for x in chunk] == list(range(300))
    assert all(start == chunk[0] for start, chunk in out)
    assert sizes[0] == 1 and max(sizes) <= 16
    assert len(out) < 300 / 4, sizes                         # grown: far fewer tasks than items
    assert 6 <= sorted(sizes)[len(sizes) // 2] <= 16, sizes   # most tasks near the target (10 items)
    assert session.report.clean, session.report


# --------------------------------------------------------------------------------------------------------------------
# `dask scheduler` + `dask worker` subprocesses, reached through the environment variable
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.server
def test_cli_cluster_features_match_local_path(cli_cluster, rows, featurizer, local_features, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, cli_cluster)
    address = resolve_scheduler(None, None)
    assert address == cli_cluster
    with compute_backend(address, cache_dir=tmp_path / "cache") as session:
        assert isinstance(session, ComputeSession) and session.address == cli_cluster
        feats = _assemble(map_chunks(featurizer, rows, 4), len(rows))
        from pipeline.samples import load_samples

        X, errors = load_samples(pd.DataFrame(rows), "density", SIZE, n_jobs=-1)
    assert isinstance(session.report, FailureReport) and session.report.clean
    np.testing.assert_allclose(feats, local_features, rtol=0, atol=FEATURE_ATOL)
    np.testing.assert_allclose(featurizer.pipeline.transform(X), local_features, rtol=0, atol=FEATURE_ATOL)


def test_unreachable_scheduler_is_a_config_error():
    port = _free_port()
    with pytest.raises(ConfigError, match=rf"scheduler tcp://127.0.0.1:{port}: cannot connect"):
        with compute_backend(f"tcp://127.0.0.1:{port}", timeout=2):
            pass


@pytest.mark.slow
def test_tiny_experiment_through_the_cluster_matches_local(local_cluster, tmp_path):
    """The tiny experiment's data loading + patient-level CV inside compute_backend: same OOF probabilities."""
    from pipeline.config.experiment import load_experiment
    from pipeline.training.train import evaluate_experiment, load_task_data

    quick = ["evaluation.bootstrap_resamples=0"]
    local_cfg = load_experiment(ROOT / "experiments" / "tiny_test.yaml", [*quick, "samples.n_jobs=1"]).config
    cluster_cfg = load_experiment(ROOT / "experiments" / "tiny_test.yaml", [*quick, "samples.n_jobs=2"]).config
    local_data = load_task_data(local_cfg)
    local_metrics, local_cv, _ = evaluate_experiment(local_cfg, local_data, cache_dir=tmp_path / "cache")
    with compute_backend(local_cluster, cache_dir=tmp_path / "cache") as session, \
            distributed.get_task_stream(client=local_cluster) as stream:
        data = load_task_data(cluster_cfg)
        metrics, cv, _ = evaluate_experiment(cluster_cfg, data, cache_dir=tmp_path / "cache")
    assert any("_samples_of_image" in str(t["key"]) for t in stream.data)  # images were read on the workers
    assert session.report.clean
    np.testing.assert_array_equal(data.X, local_data.X)
    np.testing.assert_allclose(cv.proba, local_cv.proba, rtol=0, atol=1e-9)
    assert metrics["cv_kappa_quadratic"] == pytest.approx(local_metrics["cv_kappa_quadratic"], abs=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# Cross-validation folds and batch prediction on both clusters
# --------------------------------------------------------------------------------------------------------------------
CV_OVERRIDES = ["evaluation.bootstrap_resamples=0", "samples.size=32", "model.n_estimators=5", "evaluation.folds=3"]
PREDICT_IMAGES = 4


@pytest.fixture(scope="module")
def tiny_cv(tmp_path_factory):
    """(config, task data, local out-of-fold result) of the tiny experiment, cross-validated in this process."""
    from pipeline.config.experiment import load_experiment
    from pipeline.training.train import evaluate_experiment, load_task_data

    cfg = load_experiment(ROOT / "experiments" / "tiny_test.yaml", CV_OVERRIDES).config
    data = load_task_data(cfg)
    _, local_cv, _ = evaluate_experiment(cfg, data, cache_dir=tmp_path_factory.mktemp("cv-cache"))
    return cfg, data, local_cv


@pytest.fixture(scope="module")
def champions():
    """(tracking URI, {task: version}) of tiny density + malignancy champions (tests/_app_helpers.tiny_champions)."""
    from tests._app_helpers import tiny_champions

    return tiny_champions()


@pytest.fixture(scope="module")
def local_predictions(champions, tmp_path_factory) -> pd.DataFrame:
    """`mammoscope predict`'s table for a few real mini-MIAS images, scored locally (one process)."""
    from pipeline.serving.batch import EXIT_OK, run_batch

    out = tmp_path_factory.mktemp("predict-local") / "local.csv"
    summary = run_batch(_predict_options(champions, out))
    assert summary.exit_code == EXIT_OK and summary.scored == PREDICT_IMAGES, summary.text()
    return pd.read_csv(out, keep_default_na=False)


def _predict_options(champions, out: Path):
    from badinputs import good_mias_images
    from pipeline.serving.batch import BatchOptions

    uri, _ = champions
    return BatchOptions(paths=[str(p) for p in good_mias_images(PREDICT_IMAGES)], out=str(out), task="both",
                        batch_size=3, n_jobs=1, tracking_uri=uri, progress=False)


def _cv_on(cluster, tiny_cv, cache: Path) -> tuple[object, list[dict], ComputeSession]:
    """The tiny experiment's CV inside compute_backend(cluster), with a fresh feature cache (nothing reused from the
    local run): (CVResult, task stream records, session)."""
    from pipeline.training.train import evaluate_experiment

    cfg, data, _ = tiny_cv
    with compute_backend(cluster, cache_dir=cache) as session, \
            distributed.get_task_stream(client=cluster) as stream:
        _, cv, _ = evaluate_experiment(cfg, data, cache_dir=cache)
    return cv, list(stream.data), session


def _assert_folds_ran_on_workers(cv, local_cv, records, client, n_folds: int) -> None:
    fold_tasks = [t for t in records if "mammoscope-chunk" in str(t["key"])]
    workers = set(client.scheduler_info(n_workers=-1)["workers"])
    assert len(fold_tasks) == n_folds, [str(t["key"]) for t in records]
    # one map_chunks task per fold, each finished on a worker of the cluster
    assert {t["worker"] for t in fold_tasks} <= workers and all(t["status"] == "OK" for t in fold_tasks)
    assert len(cv.folds) == n_folds and (cv.fold >= 0).all()
    # XGBoost and every transformer run the same code on the same float32 inputs; the workers run 1 OpenMP thread
    # where this process may run more, so histogram sums may round differently: 1e-6 on a probability
    np.testing.assert_allclose(cv.proba, local_cv.proba, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(cv.fold, local_cv.fold)
    np.testing.assert_allclose(cv.threshold, local_cv.threshold, rtol=0, atol=1e-6, equal_nan=True)


@pytest.mark.slow
def test_local_cluster_cross_validation_folds_run_on_the_workers(local_cluster, tiny_cv, tmp_path):
    cv, records, session = _cv_on(local_cluster, tiny_cv, tmp_path / "cache")
    assert session.report.clean, session.report
    _assert_folds_ran_on_workers(cv, tiny_cv[2], records, local_cluster, 3)


@pytest.mark.slow
@pytest.mark.server
def test_cli_cluster_cross_validation_folds_run_on_the_worker(cli_cluster, tiny_cv, tmp_path):
    with distributed.Client(cli_cluster, set_as_default=False) as client:
        cv, records, session = _cv_on(client, tiny_cv, tmp_path / "cache")
        assert session.report.clean, session.report
        _assert_folds_ran_on_workers(cv, tiny_cv[2], records, client, 3)


def _predict_on(client, champions, out: Path) -> tuple[pd.DataFrame, list[dict]]:
    from pipeline.serving.batch import EXIT_OK, run_batch

    with compute_backend(client) as session, distributed.get_task_stream(client=client) as stream:
        summary = run_batch(_predict_options(champions, out))
    assert summary.exit_code == EXIT_OK and summary.scored == PREDICT_IMAGES, summary.text()
    assert session.report.clean, session.report
    return pd.read_csv(out, keep_default_na=False), list(stream.data)


def _assert_same_rows(table: pd.DataFrame, local: pd.DataFrame, records: list[dict], client) -> None:
    chunks = [t for t in records if "mammoscope-chunk" in str(t["key"])]
    assert chunks and {t["worker"] for t in chunks} <= set(client.scheduler_info(n_workers=-1)["workers"])
    # images are read and prepared on the workers by the same code; the models run here on identical float32
    # samples: the rows are identical, probabilities included (compared as written, to the last digit)
    pd.testing.assert_frame_equal(table, local)
    assert set(table["density_call"]) <= {"F", "G", "D"} and set(table["malignancy_call"]) <= {"benign", "malignant"}


@pytest.mark.slow
def test_local_cluster_batch_prediction_matches_local(local_cluster, champions, local_predictions, tmp_path):
    table, records = _predict_on(local_cluster, champions, tmp_path / "cluster.csv")
    _assert_same_rows(table, local_predictions, records, local_cluster)


@pytest.mark.slow
@pytest.mark.server
def test_cli_cluster_batch_prediction_matches_local(cli_cluster, champions, local_predictions, tmp_path):
    with distributed.Client(cli_cluster, set_as_default=False) as client:
        table, records = _predict_on(client, champions, tmp_path / "cluster.csv")
        _assert_same_rows(table, local_predictions, records, client)


def test_train_command_validates_the_scheduler_before_any_work(tmp_path, capsys):
    from pipeline.cli import main

    tiny = str(ROOT / "experiments" / "tiny_test.yaml")
    db = tmp_path / "m.db"
    start = time.perf_counter()
    assert main(["train", tiny, "--tracking-uri", f"sqlite:///{db}", "--scheduler", "http://head:8786"]) == 1
    assert "--scheduler: 'http://head:8786' is not a Dask scheduler address" in capsys.readouterr().err
    assert main(["train", tiny, "--tracking-uri", f"sqlite:///{db}", "--set", "compute.scheduler=head"]) == 1
    assert "compute.scheduler: 'head' is not a Dask scheduler address" in capsys.readouterr().err
    assert time.perf_counter() - start < 30 and not db.exists()  # refused before data, training or tracking


# --------------------------------------------------------------------------------------------------------------------
# Streamed training features (pipeline.training.stream) on the cluster
# --------------------------------------------------------------------------------------------------------------------
STREAM_QUICK = ["evaluation.bootstrap_resamples=0", "model.n_estimators=5", "evaluation.folds=3",
                "calibration.inner_folds=2", "samples.size=32", "features.cnn.enabled=false",
                "features.handcrafted.glcm.levels=16", "preprocessing.clahe.kernel_size=8", "dataset.classes=[F, G, D]"]


def _stream_config(csv: Path) -> dict:
    from pipeline.config.experiment import load_experiment

    return load_experiment(ROOT / "experiments" / "defaults.yaml",
                           ["dataset.adapter=manifest", f"dataset.path={csv}", "compute.n_jobs=2",
                            *STREAM_QUICK]).config


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_streamed_features_on_the_cluster_match_local_and_a_killed_worker_loses_no_image(local_cluster, tmp_path):
    """Training's streamed feature stage inside compute_backend: each image's work runs on the workers, rows come
    back in order, equal to the local path; SIGKILL of a worker mid-stream costs a retry and no image."""
    import threading

    sys.path.insert(0, str(ROOT))
    from benchmarks.archive import build_archive
    from pipeline.training.train import load_task_features

    csv = build_archive(24, tmp_path / "archive", side=128, seed=3)
    cfg = _stream_config(csv)
    local = load_task_features(cfg, lambda s: None, cache_dir=tmp_path / "local")
    assert local.stream.images_computed == 24

    cache = tmp_path / "cluster"
    pids = sorted(set(local_cluster.run(worker_pid).values()))
    killed: list[int] = []

    def kill_one_worker_after_some_entries() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = [p for p in cache.rglob("*.npy") if not p.name.startswith(".")] if cache.exists() else []
            if len(done) >= 4:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_one_worker_after_some_entries, daemon=True)
    with compute_backend(local_cluster, retries=2, cache_dir=cache) as session, \
            distributed.get_task_stream(client=local_cluster) as stream:
        watcher.start()
        streamed = load_task_features(cfg, lambda s: None, cache_dir=cache)
        watcher.join(timeout=5)
        local_cluster.wait_for_workers(2, timeout=60)  # the nanny restarts the dead worker
    assert any("mammoscope-chunk-" in str(t["key"]) for t in stream.data), "the images were not read on the workers"
    assert killed, "no worker was killed (the stream finished before 4 cache entries were seen)"
    assert len(session.report.lost_workers) >= 1, session.report
    assert streamed.stream.n_images == 24 and len(streamed.stream.errors) == 0
    np.testing.assert_array_equal(streamed.y, local.y)
    np.testing.assert_allclose(streamed.features, local.features, rtol=0, atol=FEATURE_ATOL)
