"""Streamed training data (pipeline.training.stream): same features and CV as the in-memory path, memory that does not
grow with the number of images, and a job killed mid-extraction that resumes computing only the missing images.

The archives are small unique augmentations of real mini-MIAS images (benchmarks/archive.build_archive, 128 px).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SIDE = 128
QUICK = ["evaluation.bootstrap_resamples=0", "model.n_estimators=5", "evaluation.folds=3",
         "calibration.inner_folds=2", "samples.size=32", "features.cnn.enabled=false",
         "features.handcrafted.glcm.levels=16", "preprocessing.clahe.kernel_size=8", "dataset.classes=[F, G, D]"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, mias_dir):
    """(manifest CSV of 60 unique images, its folder)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.archive import build_archive

    folder = tmp_path_factory.mktemp("archive")
    return build_archive(60, folder, side=SIDE, seed=1)


def _config(csv: Path, *extra: str) -> dict:
    from pipeline.config.experiment import load_experiment

    return load_experiment(ROOT / "experiments" / "defaults.yaml",
                           ["dataset.adapter=manifest", f"dataset.path={csv}", *QUICK, *extra]).config


def _entries(cache: Path) -> list[Path]:
    return [p for p in (cache / "stream").rglob("*.npy") if not p.name.startswith(".")]


def test_streamed_cv_and_final_model_match_the_in_memory_path(archive, tmp_path):
    from pipeline.training.train import evaluate_experiment, fit_final, load_task_data, load_task_features

    cfg = _config(archive, "dataset.max_samples=24", "compute.n_jobs=2")
    mem = load_task_data(cfg, lambda s: None)
    streamed = load_task_features(cfg, lambda s: None, cache_dir=tmp_path / "c")
    assert streamed.X is None and streamed.features.shape[0] == len(mem.y) == 24
    assert streamed.stream.images_computed == 24 and streamed.stream.workers == 2
    np.testing.assert_array_equal(streamed.y, mem.y)
    _, cv_mem, _ = evaluate_experiment(cfg, mem, cache_dir=tmp_path / "m")
    _, cv_str, _ = evaluate_experiment(cfg, streamed, cache_dir=tmp_path / "c")
    np.testing.assert_allclose(cv_str.proba, cv_mem.proba, rtol=0, atol=1e-12)
    # the registered model stays one image -> probability Pipeline, equal to the in-memory fit
    final = fit_final(cfg, streamed, tmp_path / "c")
    assert [n for n, _ in final.steps] == ["preprocess", "features", "select", "classifier"]
    np.testing.assert_allclose(final.predict_proba(mem.X[:6]), fit_final(cfg, mem).predict_proba(mem.X[:6]),
                               rtol=0, atol=1e-12)
    again = load_task_features(cfg, lambda s: None, cache_dir=tmp_path / "c")
    assert again.stream.images_cached == 24 and again.stream.images_computed == 0
    np.testing.assert_array_equal(again.features, streamed.features)


def _traced_peak(csv: Path, n: int, cache: Path) -> int:
    """Peak traced allocation (bytes) of the training job (stream, CV of the head, final fit) in this process."""
    cfg = _config(csv, f"dataset.max_samples={n}", "compute.n_jobs=1")
    # pytest keeps every log record and warning it captures: that is the test runner's memory, not the job's
    with warnings.catch_warnings(), _no_logging():
        warnings.simplefilter("ignore")
        return _traced(cfg, n, cache)


@contextlib.contextmanager
def _no_logging():
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _traced(cfg: dict, n: int, cache: Path) -> int:
    from pipeline.training.train import evaluate_experiment, fit_final, load_task_features

    tracemalloc.start()
    try:
        data = load_task_features(cfg, lambda s: None, cache_dir=cache)
        evaluate_experiment(cfg, data, cache_dir=cache, progress=lambda s: None)
        fit_final(cfg, data, cache)
        assert len(data.y) == n
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_grows_less_than_1_5x_for_5x_images(archive, tmp_path):
    # measured in a fresh process (pytest's own bookkeeping grows with what a test does): warm-up run first, so
    # imports and first-call caches stay out of the figures
    code = ("import sys, json; sys.path[:0] = [sys.argv[1], sys.argv[2]]; from pathlib import Path; "
            "import test_stream as T; csv, tmp = Path(sys.argv[3]), Path(sys.argv[4]); "
            "print(json.dumps([T._traced_peak(csv, n, tmp / f'c{i}') for i, n in enumerate((12, 12, 60))]))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(Path(__file__).parent), str(archive),
                          str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    _, small, large = json.loads(out.stdout.strip().splitlines()[-1])
    # the in-memory path's samples alone would add (60 - 12) * 32 * 32 * 4 bytes per copy; here only feature rows
    assert large < 1.5 * small, (small, large)


def test_killed_training_resumes_computing_only_the_missing_images(archive, tmp_path):
    from pipeline.training.train import load_task_features

    cache = tmp_path / "cache"
    sets = [*QUICK, "samples.size=96", "compute.n_jobs=1", "dataset.adapter=manifest", f"dataset.path={archive}"]
    cmd = [sys.executable, "-m", "pipeline.cli", "train", str(ROOT / "experiments" / "defaults.yaml"),
           "--no-register", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--cache-dir", str(cache)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while (cache / "stream").is_dir() is False or len(_entries(cache)) < 5:
            assert proc.poll() is None, "the training job ended before it was killed"
            assert time.monotonic() < deadline, "no feature was cached within 240 s"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-feature-extraction: the job and anything it started
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = len(_entries(cache))
    assert 5 <= done < 60, done  # killed part-way
    for entry in _entries(cache):  # every entry left is whole (written to a tmp file, then renamed)
        assert np.load(entry).ndim == 1

    cfg = _config(archive, "samples.size=96", "compute.n_jobs=1")
    rerun = load_task_features(cfg, lambda s: None, cache_dir=cache)
    assert rerun.stream.images_cached == done and rerun.stream.images_computed == 60 - done
    assert len(_entries(cache)) == 60
    fresh = load_task_features(cfg, lambda s: None, cache_dir=tmp_path / "fresh")
    np.testing.assert_array_equal(rerun.features, fresh.features)


def test_pipelines_with_stateful_features_are_not_streamed():
    from pipeline.config.experiment import load_experiment
    from pipeline.model.estimators import build_pipeline
    from pipeline.training.stream import split_pipeline

    cfg = load_experiment(ROOT / "experiments" / "tiny_test.yaml",
                          ["features.cnn.enabled=true", "features.cnn.finetune.enabled=true",
                           "features.cnn.weights=random"]).config
    assert split_pipeline(build_pipeline(cfg)) is None  # fine-tuning is fitted in-fold on samples
    front, head = split_pipeline(build_pipeline(load_experiment(ROOT / "experiments" / "tiny_test.yaml").config))
    assert [n for n, _ in front.steps] == ["preprocess", "features"]
    assert [n for n, _ in head.steps] == ["select", "classifier"]


def _front_spec(cfg: dict, cache: Path):
    """The fitted front and worker spec of an experiment, as load_task_features makes them."""
    from pipeline.config.tasks import get_task
    from pipeline.training import stream
    from pipeline.model.estimators import build_pipeline
    from pipeline.training.train import sample_params, task_table

    front, _ = stream.split_pipeline(build_pipeline(cfg, cache))
    table, _, _ = task_table(cfg)
    sp, recipe = sample_params(cfg), get_task(cfg["dataset"]["task"]).sample_recipe
    stream.fit_front(front, stream.first_samples(table, recipe, sp, whole_breast_without_roi=True))
    return front, stream.make_spec(front, recipe, sp, whole_breast_without_roi=True, cache_dir=cache), table


def test_sample_store_on_disk_holds_the_prepared_samples_and_fine_tunes_like_ram(archive, tmp_path):
    """stream_samples: workers prepare each row's sample (+ the preprocess step), the store is a float16 memmap in
    table order equal to the in-memory samples; a rerun reuses it, a changed file makes a new one; fine-tuning on
    the store gives the model fine-tuning on its samples in RAM gives."""
    from cnn.finetune import finetune
    from pipeline.training.stream import stream_samples
    from pipeline.training.train import load_task_data

    cfg = _config(archive, "dataset.max_samples=16", "compute.n_jobs=2")
    front, spec, table = _front_spec(cfg, tmp_path / "cache")
    store = stream_samples(table, spec, n_jobs=2)
    assert isinstance(store.samples, np.memmap) and store.samples.dtype == np.float16 and not store.reused
    assert store.ok.all() and store.errors.empty and store.path.is_file()
    mem = load_task_data(cfg, lambda s: None)
    prepared = front.steps[0][1].transform(mem.X)  # what the features (and a fine-tuned CNN) see
    np.testing.assert_allclose(store.samples, prepared, rtol=0, atol=5e-4)  # float16 rounding of [0, 1] values

    again = stream_samples(table, spec, n_jobs=1)
    assert again.reused and again.path == store.path
    np.testing.assert_array_equal(again.samples, store.samples)
    touched = Path(table["path"].iloc[0])
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file changed (mtime): a new store
    assert stream_samples(table, spec, n_jobs=1).path != store.path

    kw = dict(backbone="tiny", weights="random", batch_size=8, lr=1e-2, head_lr_factor=1.0, augment=False,
              n_threads=1, epochs=1, input_size=16, seed=0)
    images = store.images()
    on_disk = finetune(images, mem.y, mem.groups, **kw)
    in_ram = finetune(np.array(images, dtype=np.float32), mem.y, mem.groups, **kw)
    for (k, v), w in zip(in_ram.model.state_dict().items(), on_disk.model.state_dict().values()):
        assert (v == w).all(), k


def test_failed_rows_are_cached_and_not_read_again_until_the_file_changes(tmp_path, mias_dir, monkeypatch):
    """An unreadable file and a blank image (no breast) fail once; the rerun reports the same errors from the cache
    without reading either file (nor any other); a failed file replaced by a real image is read and succeeds."""
    import shutil

    from skimage.io import imsave

    import pipeline.io.imageio as imageio
    from benchmarks.archive import build_archive
    from pipeline.training.train import load_task_features

    csv = build_archive(8, tmp_path / "archive", side=SIDE, seed=5)
    images = sorted((tmp_path / "archive" / "images").glob("*.png"))
    good = tmp_path / "good.png"
    shutil.copy(images[0], good)
    images[0].write_bytes(b"not a png at all")
    imsave(images[1], np.full((SIDE, SIDE), 90, np.uint8), check_contrast=False)
    cfg = _config(csv, "compute.n_jobs=1")  # in this process, so the reads can be counted
    cache = tmp_path / "cache"
    first = load_task_features(cfg, lambda s: None, cache_dir=cache)
    failed = first.stream.errors
    assert sorted(Path(p).name for p in failed["path"]) == [images[0].name, images[1].name], failed
    assert first.stream.images_computed == 8

    reads: list[str] = []
    real = imageio.read_image
    monkeypatch.setattr(imageio, "read_image", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    rerun = load_task_features(cfg, lambda s: None, cache_dir=cache)
    assert reads == [] and rerun.stream.images_cached == 8 and rerun.stream.images_computed == 0
    assert rerun.stream.errors["error"].tolist() == failed["error"].tolist()
    np.testing.assert_array_equal(rerun.features, first.features)

    shutil.copy(good, images[0])  # new content: a new key, so it is read again (and now works)
    fixed = load_task_features(cfg, lambda s: None, cache_dir=cache)
    assert [Path(p).name for p in reads if "archive" in p].count(images[0].name) >= 1
    assert fixed.stream.images_computed == 1 and len(fixed.stream.errors) == 1
    assert len(fixed.features) == len(first.features) + 1
