"""The test suite's one tiny MLflow store: mammoscope-density and mammoscope-malignancy champions trained on real
mini-MIAS images (32 px, 5 trees, 2 folds), once per process, shared by the app, batch, bad-input and end-to-end
tests (through the session fixture `tiny_store` in tests/conftest.py) and by benchmarks/app.py."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.paths import PROJECT_DIR, default_data_root

__all__ = ["TASK_OVERRIDES", "TINY_EXPERIMENT", "TINY_OVERRIDES", "TINY_SCREENING", "TinyStore", "tiny_experiment",
           "tiny_store", "tiny_screening"]

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


# A tiny screening champion (CDD-CESM, 28 images, 32 px samples at scale 2, 4 tiles): the app's whole-image model.
TINY_SCREENING = {"features": {"cnn": {"backbone": "tiny", "weights": "random", "batch_size": 64},
                               "handcrafted": {"glcm": {"levels": 8, "distances": [1]}, "intensity": {"bins": 8}}},
                  "samples": {"size": 32},
                  "screening": {"scale": 2.0, "tile_size": 32, "max_tiles": 4},
                  "model": {"n_estimators": 15}, "calibration": {"inner_folds": 2},
                  "evaluation": {"folds": 3, "bootstrap_resamples": 20},
                  "dataset": {"max_samples": 28},
                  "compute": {"n_jobs": 1},
                  "tracking": {"experiment_name": "mammoscope-test", "registered_model_name": "mammoscope-screening"}}
_SCREENING: list[int] = []


def tiny_screening(store: TinyStore | None = None) -> TinyStore:
    """The tiny store with a mammoscope-screening champion added (trained on first call from real CDD-CESM images,
    ~1 min on 2 cores); its version joins `store.versions["screening"]`."""
    from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
    from pipeline.training.train import train_experiment

    store = store or tiny_store()
    if not _SCREENING:
        if not (default_data_root() / "cdd_cesm" / "manifest.csv").is_file():
            raise FileNotFoundError("CDD-CESM is not in shared/data: the tiny screening champion needs it")
        exp = load_experiment(EXPERIMENTS_DIR / "cdd_cesm_screening.yaml", TINY_SCREENING)
        result = train_experiment(exp, store.tracking_uri, cache_dir=store.cache_dir)
        assert result.promoted, result.promotion_reason
        _SCREENING.append(int(result.model_version))
        store.versions["screening"] = _SCREENING[0]
        store.names["screening"] = "mammoscope-screening"
    return store
