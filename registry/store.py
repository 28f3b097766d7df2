"""Where MLflow keeps runs, artifacts and registered models: the embedded SQLite store or a team server."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import unquote

import mlflow
from mlflow import MlflowClient

from pipeline.paths import default_tracking_uri

__all__ = [
    "configure",
    "configured_uri",
    "reset",
    "ensure_configured",
    "client",
    "local_db_path",
    "artifact_root",
    "ensure_experiment",
]

log = logging.getLogger(__name__)

ARTIFACTS_DIRNAME = "mlartifacts"  # beside the SQLite file, as `mlflow server` names its artifact folder

_configured_uri: str | None = None
_clients: dict[tuple[str, str], MlflowClient] = {}


def local_db_path(uri: str) -> Path | None:
    """The SQLite file of a `sqlite:///relative.db` or `sqlite:////absolute.db` URI, else None (server, ...)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = unquote(uri[len(prefix):].split("?", 1)[0])
    if not path or path == ":memory:":
        return None
    return Path(path)


def artifact_root(uri: str | None = None) -> str | None:
    """Artifact folder URI (file://) for an embedded SQLite store: `mlartifacts/` beside the .db; None otherwise."""
    db = local_db_path(uri or mlflow.get_tracking_uri())
    return (db.resolve().parent / ARTIFACTS_DIRNAME).as_uri() if db is not None else None


def configure(tracking_uri: str | None = None) -> str:
    """Point MLflow tracking and the model registry at `tracking_uri` (default: paths.default_tracking_uri()).

    Returns the URI in use. MLflow exports it as MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI for subprocesses.
    An embedded `sqlite:///` store gets its folder created; a server URI
    (`MLFLOW_TRACKING_URI=http://host:port`, team mode) is used unchanged.
    """
    uri = tracking_uri or default_tracking_uri()
    db = local_db_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    global _configured_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _configured_uri = uri
    log.debug("MLflow tracking and registry URI: %s", uri)
    return uri


def configured_uri() -> str | None:
    """The URI set by `configure` in this process, or None."""
    return _configured_uri


def reset() -> None:
    """Forget the configured URIs and the MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI that MLflow exported; for tests."""
    global _configured_uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    _configured_uri = None


def ensure_configured() -> str:
    """The configured URI; configures the default one first if `configure` was never called in this process."""
    return _configured_uri if _configured_uri is not None else configure()


def client() -> MlflowClient:
    """An MlflowClient on the configured tracking and registry URIs (one per URI pair, reused)."""
    ensure_configured()
    key = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    if key not in _clients:
        _clients[key] = MlflowClient(tracking_uri=key[0], registry_uri=key[1])
    return _clients[key]


def _folder_name(experiment_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name).strip("_") or "experiment"


def ensure_experiment(name: str) -> str:
    """Id of experiment `name`, created if missing; on an embedded store its artifacts go beside the .db file.

    MLflow's own default for a SQLite store is `./mlruns` in the working directory; naming the artifact
    location here keeps every artifact in the project folder whatever the cwd.
    """
    c = client()
    existing = c.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            c.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    root = artifact_root()
    location = f"{root}/{_folder_name(name)}" if root else None
    return c.create_experiment(name, artifact_location=location)
