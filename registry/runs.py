"""Training runs: one parent run per experiment, a child run per fold, params, metrics, artifacts, provenance tags."""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from pipeline.paths import PROJECT_DIR
from registry import tags as T
from registry.store import ensure_configured, ensure_experiment

__all__ = [
    "TrainingRun",
    "training_run",
    "fold_run",
    "log_params",
    "log_metrics",
    "log_figure",
    "log_table",
    "log_text",
    "log_dataset_digest",
    "dataset_digest",
    "flatten_params",
    "provenance_tags",
]

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
MAX_PARAM_CHARS = 6000  # MLflow's param value limit
# distribution name -> tag suffix; torch only when some code already imported it (never imported here)
PACKAGES = {"numpy": "numpy", "scikit-learn": "sklearn", "xgboost": "xgboost", "mlflow": "mlflow",
            "skops": "skops", "pandas": "pandas", "mammoscope": "mammoscope"}
LAZY_PACKAGES = {"torch": "torch", "torchvision": "torchvision"}


@dataclass(frozen=True)
class TrainingRun:
    """The parent run of one `mammoscope train`: ids to cite in logs and to find it in the UI."""

    run_id: str
    experiment_id: str
    experiment_name: str
    run_name: str
    artifact_uri: str


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model": {"max_depth": 3}} -> {"model.max_depth": "3"}; lists and None become their str()."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = str(value)
            flat[name] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return flat


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance_tags() -> dict[str, str]:
    """Git commit of the project ("unknown" outside git), dirty flag, and versions of the packages that matter."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    tags = {T.GIT_COMMIT: commit, "mlflow.source.git.commit": commit}
    if commit != "unknown":
        tags[T.GIT_DIRTY] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    wanted = dict(PACKAGES)
    wanted.update({dist: tag for dist, tag in LAZY_PACKAGES.items() if dist in sys.modules})
    for dist, tag in wanted.items():
        try:
            tags[f"{T.VERSION_PREFIX}{tag}"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            tags[f"{T.VERSION_PREFIX}{tag}"] = "not installed"
    tags[f"{T.VERSION_PREFIX}python"] = sys.version.split()[0]
    return tags


def log_params(params: Mapping[str, Any]) -> None:
    """Log (nested) params into the active run, flattened with dots, in batches MLflow accepts."""
    items = list(flatten_params(params).items())
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        mlflow.log_params(dict(items[start : start + MAX_PARAMS_PER_BATCH]))


@contextmanager
def training_run(
    experiment_name: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[TrainingRun]:
    """Open the parent run of one training: params flattened, provenance tags set; FAILED if the body raises."""
    ensure_configured()
    experiment_id = ensure_experiment(experiment_name)
    all_tags = provenance_tags()
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags) as run:
        if params:
            log_params(params)
        log.info("MLflow run %s (%s) in experiment %r", run.info.run_id, run_name, experiment_name)
        yield TrainingRun(
            run_id=run.info.run_id,
            experiment_id=experiment_id,
            experiment_name=experiment_name,
            run_name=run_name,
            artifact_uri=run.info.artifact_uri,
        )


def _clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    clean = {}
    for name, value in metrics.items():
        number = float(value)
        if math.isinf(number):
            log.warning("metric %s is infinite; logged as NaN", name)
            number = math.nan
        clean[name] = number
    return clean


def fold_run(
    i: int,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Record fold `i` as a finished child run of the active parent run (name `fold-<i>`); returns its run id."""
    # through child_run (which refuses to run without an active parent run): a nested start_run without experiment_id lands in the Default experiment, not the parent's
    return child_run(f"fold-{i}", params, metrics, {"mammoscope.fold": str(i), **(tags or {})})


def child_run(
    name: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Record a finished, named child run of the active parent run (e.g. one arm of a benchmark); returns its id."""
    if mlflow.active_run() is None:
        raise RuntimeError("child_run needs an active parent run: call it inside `with training_run(...)`.")
    parent = mlflow.active_run().info
    with mlflow.start_run(run_name=name, nested=True, experiment_id=parent.experiment_id,  # else: the Default one
                          tags={k: str(v) for k, v in (tags or {}).items()}) as child:
        if params:
            log_params(params)
        if metrics:
            mlflow.log_metrics(_clean_metrics(metrics))
        return child.info.run_id


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log numeric metrics (numpy scalars fine; inf becomes NaN) into the active run."""
    mlflow.log_metrics(_clean_metrics(metrics), step=step)


def _check_path(path: str, suffixes: tuple[str, ...]) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"artifact path must be relative inside the run, got {path!r}")
    if rel.suffix.lower() not in suffixes:
        raise ValueError(f"artifact path {path!r} must end with one of {', '.join(suffixes)}")
    return rel


def log_figure(fig: Any, path: str) -> None:
    """Save a matplotlib figure as PNG at run-relative `path` (e.g. "plots/roc.png")."""
    _check_path(path, (".png",))
    mlflow.log_figure(fig, path)


def log_table(df: pd.DataFrame, path: str) -> None:
    """Save a DataFrame as CSV (no index) at run-relative `path` (e.g. "predictions/oof.csv")."""
    rel = _check_path(path, (".csv",))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / rel.name
        df.to_csv(local, index=False)
        parent = str(rel.parent)
        mlflow.log_artifact(str(local), artifact_path=None if parent == "." else parent)


def log_text(text: str, path: str) -> None:
    """Save text (e.g. the resolved experiment YAML) at run-relative `path`."""
    _check_path(path, (".yaml", ".yml", ".txt", ".json", ".md", ".csv"))
    mlflow.log_text(text, path)


def dataset_digest(df: pd.DataFrame) -> str:
    """16-hex-digit digest of every row and column of `df` (order-sensitive, index ignored)."""
    h = hashlib.sha256()
    h.update("\x1f".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def log_dataset_digest(
    data: pd.DataFrame | str, name: str, *, source: str | None = None, context: str = "training"
) -> str:
    """Log a dataset input (name, digest, schema when a DataFrame) to the active run; tag and return the digest.

    `data` is the dataset table or a digest computed by the caller; `source` is e.g. the data folder.
    The digest is what `champion.maybe_promote` compares: same digest = same data.
    """
    if source and "://" not in source:
        source = Path(source).expanduser().resolve().as_uri()
    with warnings.catch_warnings():
        # MLflow hints about int columns in the schema and about file URIs matching two equivalent source types
        warnings.filterwarnings("ignore", message=r"Hint: Inferred schema contains integer", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"The specified dataset source can be interpreted")
        src = resolve_dataset_source(source) if source else CodeDatasetSource(tags={})
        if isinstance(data, pd.DataFrame):
            digest = dataset_digest(data)
            dataset = mlflow.data.from_pandas(data, source=src, name=name, digest=digest)
        else:
            digest = str(data)
            dataset = MetaDataset(source=src, name=name, digest=digest)
        mlflow.log_input(dataset, context=context)
    mlflow.set_tag(T.DATA_DIGEST, digest)
    return digest
