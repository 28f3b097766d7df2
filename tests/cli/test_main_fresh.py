"""Acceptance (#32): `mammoscope main` on a fresh machine. With MAMMOSCOPE_DATA an empty folder and the download URL
at a loopback server holding the real archive, it downloads, verifies, trains the three tasks (tiny settings) and
registers three champions in a real SQLite MLflow store; without a server it stops in seconds with exit code 3 and
leaves nothing half-written, and a second run with the server then works."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.paths import PROJECT_DIR
from tests._mias_server import ArchiveServer, refused_url

pytestmark = [pytest.mark.slow, pytest.mark.server]

TINY = ["features.cnn.backbone=tiny", "features.cnn.weights=random", "features.cnn.batch_size=64",
        "features.handcrafted.glcm.levels=8", "features.handcrafted.glcm.distances=[1]",
        "features.handcrafted.intensity.bins=8", "samples.size=32", "screening.tile_size=32",
        "screening.max_tiles=4", "model.n_estimators=10", "calibration.inner_folds=2", "evaluation.folds=2",
        "evaluation.bootstrap_resamples=20", "dataset.max_samples=40", "compute.n_jobs=1"]


def _main(tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAMMOSCOPE_DATA": str(tmp / "data"), "MAMMOSCOPE_MIAS_URL": url,
           "PYTHONPATH": str(PROJECT_DIR), "GRADIO_ANALYTICS_ENABLED": "False", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "pipeline.cli", "main", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
           "--cache-dir", str(tmp / "cache"), "--skip-scan", *extra]
    for item in TINY:
        cmd += ["--set", item]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)


def test_main_on_a_fresh_machine_fetches_mini_mias_and_registers_three_champions(
        tmp_path: Path, mias_archive: Path) -> None:
    (tmp_path / "data").mkdir()
    start = time.perf_counter()
    offline = _main(tmp_path, refused_url())
    seconds = time.perf_counter() - start
    assert offline.returncode == 3, offline.stderr[-2000:]
    assert seconds < 30  # the interpreter's imports included; the connection itself is refused at once
    assert "could not download mini-MIAS" in offline.stderr and "MAMMOSCOPE_DATA" in offline.stderr
    assert "research use only" in offline.stdout
    assert list((tmp_path / "data").iterdir()) == [] and not (tmp_path / "mlflow.db").exists()

    with ArchiveServer(mias_archive.read_bytes()) as server:
        done = _main(tmp_path, server.url)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mias"]
    assert "mini-MIAS verified (322 images)" in done.stdout
    for n, task in enumerate(("density", "malignancy", "screening"), 1):
        assert f"== train {n}/3: mias_{task}" in done.stdout
        assert f"mammoscope-{task} v1: champion" in done.stdout

    from pipeline.serving.predict import load_task_models  # what the app loads, read back from the store

    models = load_task_models(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {task: m.card.task for task, m in models.items()} == {t: t for t in ("density", "malignancy", "screening")}


def test_data_fetch_offline_exits_3_naming_the_url_and_the_way_out(tmp_path: Path, capsys) -> None:
    from pipeline.cli import main

    url = refused_url()
    assert main(["data", "fetch", "mias", "--root", str(tmp_path / "data"), "--url", url, "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("mammoscope data: error: ") and url in err and "MAMMOSCOPE_DATA" in err
    assert not (tmp_path / "data").exists()


def test_train_on_the_missing_default_dataset_says_how_to_fetch_it(tmp_path: Path, monkeypatch, capsys) -> None:
    from pipeline.cli import main

    monkeypatch.setenv("MAMMOSCOPE_DATA", str(tmp_path))
    assert main(["train", str(PROJECT_DIR / "experiments" / "tiny_test.yaml"), "--tracking-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 1
    assert "mammoscope data fetch mias" in capsys.readouterr().err
