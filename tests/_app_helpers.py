"""Helpers of the app tests: tiny density + malignancy champions in a temporary store, and a live app server."""
from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.paths import PROJECT_DIR, default_data_root

MIAS_PNG = default_data_root() / "mias" / "images" / "mdb001.png"
CBIS_DICOM = default_data_root() / "cbis_ddsm" / "dicom" / "sfm-benign-0_1-130.dcm"
TINY_EXPERIMENT = PROJECT_DIR / "experiments" / "tiny_test.yaml"
TINY_OVERRIDES = ("samples.size=32", "model.n_estimators=5", "evaluation.bootstrap_resamples=20",
                  "evaluation.folds=2")
TASK_OVERRIDES = {
    "density": ("tracking.registered_model_name=mammoscope-density",),
    "malignancy": ("dataset.task=malignancy", "dataset.classes=[benign,malignant]", "dataset.max_samples=24",
                   "tracking.registered_model_name=mammoscope-malignancy"),
}
_STORE: list[tuple[str, dict[str, int]]] = []


def tiny_champions() -> tuple[str, dict[str, int]]:
    """(tracking URI, {task: registered version}) of tiny mammoscope-density/-malignancy champions, trained once
    per test process on real mini-MIAS images into a temporary folder removed at exit."""
    if not _STORE:
        from pipeline.experiment import load_experiment
        from pipeline.train import train_experiment

        folder = Path(tempfile.mkdtemp(prefix="mammoscope-app-"))
        atexit.register(shutil.rmtree, folder, True)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        versions = {}
        for task, extra in TASK_OVERRIDES.items():
            exp = load_experiment(TINY_EXPERIMENT, [*TINY_OVERRIDES, *extra])
            result = train_experiment(exp, uri, cache_dir=folder / "cache", progress=lambda line: None)
            assert result.promoted, result.promotion_reason
            versions[task] = int(result.model_version)
        _STORE.append((uri, versions))
    return _STORE[0]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_app(tracking_uri: str, **build: object) -> Iterator[tuple[str, object]]:
    """(url, demo) of the real app served on a free loopback port for the block; closed afterwards."""
    import gradio_app

    port = free_port()
    demo = gradio_app.launch(gradio_app.DEFAULT_HOST, port, tracking_uri, prevent_thread_lock=True, quiet=True,
                             **build)
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.close()
