"""The test suite's one tiny MLflow store: mammoscope-density and mammoscope-malignancy champions trained on real
mini-MIAS images (32 px, 5 trees, 2 folds), once per process, shared by the app, batch, bad-input and end-to-end
tests (through the session fixture `tiny_store` in tests/conftest.py) and by benchmarks/app.py."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.paths import PROJECT_DIR

__all__ = ["TASK_OVERRIDES", "TINY_EXPERIMENT", "TINY_OVERRIDES", "TinyStore", "tiny_experiment", "tiny_store"]

TINY_EXPERIMENT = PROJECT_DIR / "experiments" / "tiny_test.yaml"
TINY_OVERRIDES = ("samples.size=32", "model.n_estimators=5", "evaluation.bootstrap_resamples=20",
                  "evaluation.folds=2")
TASK_OVERRIDES = {
    "density": ("tracking.registered_model_name=mammoscope-density",),
    "malignancy": ("dataset.task=malignancy", "dataset.classes=[benign,malignant]", "dataset.max_samples=24",
                   "tracking.registered_model_name=mammoscope-malignancy"),
}


@dataclass(frozen=True)
class TinyStore:
    """A SQLite MLflow store holding one tiny champion per task, and how each was trained."""

    folder: Path
    tracking_uri: str
    cache_dir: Path
    versions: dict[str, int]  # task -> registered version at @champion
    names: dict[str, str]  # task -> registered model name
    results: dict[str, object] = field(repr=False)  # task -> pipeline.training.train.TrainResult of the training
    lines: dict[str, list[str]] = field(repr=False)  # task -> progress lines printed by that training

    def model_uri(self, task: str) -> str:
        """models:/NAME@champion of the task's tiny champion."""
        return f"models:/{self.names[task]}@champion"


def tiny_experiment(task: str):
    """The tiny experiment (pipeline.config.experiment.Experiment) the store trains for `task` ("density"/"malignancy")."""
    from pipeline.config.experiment import load_experiment

    return load_experiment(TINY_EXPERIMENT, [*TINY_OVERRIDES, *TASK_OVERRIDES[task]])


def _train(folder: Path) -> TinyStore:
    from pipeline.training.train import train_experiment

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cache_dir = folder / "cache"
    versions, names, results, lines = {}, {}, {}, {}
    for task in TASK_OVERRIDES:
        exp = tiny_experiment(task)
        lines[task] = []
        result = train_experiment(exp, uri, cache_dir=cache_dir, progress=lines[task].append)
        assert result.promoted, result.promotion_reason
        versions[task] = int(result.model_version)
        names[task] = str(exp.config["tracking"]["registered_model_name"])
        results[task] = result
    return TinyStore(folder, uri, cache_dir, versions, names, results, lines)


_STORE: list[TinyStore] = []


def tiny_store(folder: Path | None = None) -> TinyStore:
    """The process-wide tiny store, trained on first call into `folder` (default: a temporary folder removed at
    exit); later calls return the same store whatever `folder` they pass."""
    if not _STORE:
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="mammoscope-tiny-"))
            atexit.register(shutil.rmtree, folder, True)
        folder.mkdir(parents=True, exist_ok=True)
        _STORE.append(_train(folder))
    return _STORE[0]
