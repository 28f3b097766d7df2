"""Where things live by default: the project folder, the embedded data, the feature cache, the MLflow store."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def embedded_data_root() -> Path:
    """The developers' data folder beside the project: ../shared/data."""
    return PROJECT_DIR.parent / "shared" / "data"


def user_data_root() -> Path:
    """The platform's per-user data folder for downloads (platformdirs: ~/.local/share/mammoscope on Linux)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("mammoscope", appauthor=False))


def default_data_root() -> Path:
    """Folder that holds the datasets: $MAMMOSCOPE_DATA, else ../shared/data when it holds mini-MIAS, else the
    platform's user data folder (where `mammoscope main` and `mammoscope data fetch mias` download mini-MIAS)."""
    env = os.environ.get("MAMMOSCOPE_DATA")
    if env:
        return Path(env).expanduser()
    embedded = embedded_data_root()
    return embedded if (embedded / "mias").is_dir() else user_data_root()


def default_mias_dir() -> Path:
    """The embedded default dataset: mini-MIAS under the data root."""
    return default_data_root() / "mias"


def default_cache_dir() -> Path:
    """Feature cache shared by experiments: $MAMMOSCOPE_CACHE, else .mammoscope_cache in the project folder."""
    env = os.environ.get("MAMMOSCOPE_CACHE")
    return Path(env).expanduser() if env else PROJECT_DIR / ".mammoscope_cache"


def default_tracking_uri() -> str:
    """MLflow tracking URI: $MLFLOW_TRACKING_URI, else the embedded SQLite file in the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
