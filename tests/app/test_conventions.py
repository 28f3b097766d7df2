"""The conventions users expect: Gradio's own host/port variables, `roi` optional in the API, a progress bar on
stderr while `train` prepares samples and extracts features, no MLflow download bars in the app's output."""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_support import server_address
from pipeline.errors import ConfigError
from tests._app_helpers import MIAS_PNG, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_server_address_order_explicit_then_gradio_then_project_aliases():
    assert server_address(environ={}) == ("127.0.0.1", 7860)
    env = {"MAMMOSCOPE_HOST": "0.0.0.0", "MAMMOSCOPE_PORT": "8000"}
    assert server_address(environ=env) == ("0.0.0.0", 8000)
    env |= {"GRADIO_SERVER_NAME": "localhost", "GRADIO_SERVER_PORT": "9001"}
    assert server_address(environ=env) == ("localhost", 9001)
    assert server_address("127.0.0.1", 7000, environ=env) == ("127.0.0.1", 7000)  # explicit flags win
    with pytest.raises(ConfigError, match="GRADIO_SERVER_PORT: port 'http'"):
        server_address(environ={"GRADIO_SERVER_PORT": "http"})


def test_mammoscope_app_leaves_host_and_port_to_the_environment_unless_given(monkeypatch):
    import gradio_app
    from pipeline.commands import app as app_command

    seen = {}
    monkeypatch.setattr(gradio_app, "launch", lambda **kw: seen.update(kw))
    parser = argparse.ArgumentParser()
    app_command.add_arguments(parser)
    app_command.run(parser.parse_args([]))
    assert seen["host"] is None and seen["port"] is None  # launch() then reads GRADIO_SERVER_NAME/PORT
    app_command.run(parser.parse_args(["--port", "7001", "--host", "0.0.0.0"]))
    assert seen["host"] == "0.0.0.0" and seen["port"] == 7001


def test_launch_serves_on_gradio_server_port(monkeypatch, tiny_store):
    import gradio_app

    port = free_port()
    monkeypatch.setenv("GRADIO_SERVER_PORT", str(port))
    monkeypatch.setenv("MAMMOSCOPE_PORT", "1")  # the alias loses to Gradio's own variable
    demo = gradio_app.launch(tracking_uri=tiny_store.tracking_uri, prevent_thread_lock=True, quiet=True)
    try:
        assert demo.server_port == port and demo.server_name == "127.0.0.1"
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30).status == 200
    finally:
        demo.close()


@pytest.mark.server
@pytest.mark.timeout(240)
def test_python_gradio_app_on_gradio_server_port_predicts_without_roi(tiny_store):
    """`python gradio_app.py` with GRADIO_SERVER_PORT set: served there; /predict with the file alone works and
    MLflow's download progress bars stay out of the app's output."""
    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "MLFLOW_TRACKING_URI": tiny_store.tracking_uri,
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "gradio_app.py")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url + "config", timeout=5)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the app did not come up on GRADIO_SERVER_PORT"
                time.sleep(1)
        client = Client(url, verbose=False)
        out = client.predict(handle_file(str(MIAS_PNG)), api_name="/predict")  # no ROI: the whole image
        assert out["roi"] is None
        assert sum(out["results"]["density"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert "Downloading artifacts" not in output and not re.search(r"\d+%\|", output), output[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_train_writes_a_progress_bar_to_stderr(tmp_path):
    """`mammoscope train` (tiny experiment, no registration): tqdm bars with rate on stderr for samples and folds."""
    cmd = [sys.executable, "-m", "pipeline.cli", "train", str(ROOT / "experiments" / "tiny_test.yaml"),
           "--set", "samples.size=32", "--set", "model.n_estimators=5", "--set", "evaluation.folds=2",
           "--set", "evaluation.bootstrap_resamples=20", "--set", "dataset.max_samples=40", "--no-register",
           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=360, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # the streamed path's bar (#18: samples and frozen features in one pass); fine-tuning keeps "preparing samples"
    assert re.search(r"(?:samples \+ features|preparing samples): 100%\|.*\d+/\d+ \[.*img/s", done.stderr), \
        done.stderr[-3000:]
    assert re.search(r"cross-validation \(features \+ fit\): 100%\|.*2/2 \[", done.stderr), done.stderr[-3000:]
    assert "samples + features" not in done.stdout and "preparing samples" not in done.stdout  # bars: stderr
