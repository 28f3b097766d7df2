"""Team mode: the registry against a real `mlflow server` subprocess on loopback, stopped with its whole group."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from tests._registry_helpers import separable_data, strong_pipeline, tracking_store, weak_pipeline

pytestmark = pytest.mark.server

NAME = "mammoscope-teamtest"
START_TIMEOUT_S = 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> list[int]:
    """SIGTERM the server's process group, SIGKILL what is left after `timeout`; return pids still alive."""
    pgid = proc.pid  # start_new_session=True: the server leads its own group
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_members(pgid):
                break
            time.sleep(0.3)
        if not _group_members(pgid):
            break
    proc.wait(timeout=10)
    return _group_members(pgid)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def test_register_promote_load_against_a_real_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server_dir, work_dir = tmp_path / "server", tmp_path / "client"
    server_dir.mkdir()
    work_dir.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers for this short-lived server
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
           "--artifacts-destination", str(server_dir / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = server_dir / "server.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=server_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        # while the server starts: fit the models and import the client side
        X, y = separable_data(120, seed=2)
        weak, strong = weak_pipeline(X, y), strong_pipeline(X, y)
        from pipeline.paths import default_tracking_uri
        from registry import list_models, load_model, log_model, maybe_promote, promote, training_run
        from registry.runs import log_dataset_digest

        _wait_healthy(url, proc, log)
        monkeypatch.chdir(work_dir)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        with tracking_store(default_tracking_uri()) as uri:
            assert uri == url
            versions = []
            for label, pipe, value in (("weak", weak, 0.70), ("strong", strong, 0.95)):
                with training_run("team-test", label, params={"model": {"label": label}}):
                    digest = log_dataset_digest(pd.DataFrame(X).assign(y=y), "synthetic")
                    info = log_model(pipe, artifact_name="model", registered_model_name=NAME, input_example=X[:1],
                                     metadata={"task": "malignancy", "metrics": {"roc_auc": value}})
                decision = maybe_promote(NAME, info.version, metric="roc_auc", value=value, data_digest=digest)
                assert decision.promoted
                versions.append(info.version)
            assert versions == [1, 2]
            worse = maybe_promote(NAME, 1, metric="roc_auc", value=0.70, data_digest=digest)
            assert not worse.promoted

            loaded = load_model(NAME)
            assert loaded.version == 2 and loaded.metadata["task"] == "malignancy"
            np.testing.assert_array_equal(loaded.pipeline.predict_proba(X), strong.predict_proba(X))
            promote(NAME, 1)
            np.testing.assert_array_equal(load_model(NAME).pipeline.predict_proba(X), weak.predict_proba(X))
            table = list_models(name=NAME)
            assert dict(zip(table["version"], table["aliases"])) == {1: "champion", 2: ""}
        assert list((server_dir / "artifacts").rglob("model.skops")), "artifacts not stored by the server"
        assert not any(work_dir.iterdir()), "the client wrote files into its working directory"
    finally:
        left = _stop_group(proc)
    assert left == [], f"server processes still alive: {left}"
    assert proc.returncode is not None
