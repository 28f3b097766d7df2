"""A screening experiment's data: the dataset table -> one row per image with its label -> high-resolution samples."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError
from pipeline.screening.labels import CLASSES, screening_table
from pipeline.screening.samples import load_screening_samples, sample_side

__all__ = ["ScreeningData", "dataset_path", "load_screening_table", "load_screening_data"]

log = logging.getLogger(__name__)


@dataclass
class ScreeningData:
    """Rows (one per image), their high-resolution samples X (n, R*R) and labels y (1 = malignant)."""

    table: pd.DataFrame
    X: np.ndarray
    y: np.ndarray
    side: int


def dataset_path(config: Mapping[str, Any]) -> Path:
    """dataset.path (relative paths against the project folder), else the embedded mini-MIAS."""
    from pipeline.paths import PROJECT_DIR, default_mias_dir

    raw = config["dataset"]["path"]
    if not raw:
        return default_mias_dir()
    path = Path(raw).expanduser()
    return path if path.is_absolute() or path.exists() else PROJECT_DIR / path


def load_screening_table(config: Mapping[str, Any]) -> pd.DataFrame:
    """The experiment's images with their screening label (column ``screening``), at most dataset.max_samples."""
    from pipeline.datasets import load_dataset
    from pipeline.train import _subsample

    table = screening_table(load_dataset(config["dataset"]["adapter"], dataset_path(config)))
    if config["dataset"]["max_samples"]:
        table = _subsample(table, "screening", int(config["dataset"]["max_samples"]), int(config["evaluation"]["seed"]))
    if table["screening"].nunique() < 2:
        raise DatasetError(f"{dataset_path(config)}: screening needs malignant and not malignant images; found "
                           f"{table['screening'].value_counts().to_dict()}")
    return table


def load_screening_data(config: Mapping[str, Any], progress: Callable[[str], None] = log.info) -> ScreeningData:
    """Table, samples at round(scale * size) px and labels; images that cannot be read are skipped (logged)."""
    table = load_screening_table(config)
    side = sample_side(config["samples"]["size"], config["screening"]["scale"])
    progress(f"{len(table)} screening images ({table['patient_id'].nunique()} patients, "
             f"{int((table['screening'] == CLASSES[1]).sum())} malignant); preparing {side} px samples")
    X, errors = load_screening_samples(table, side, n_jobs=int(config["samples"]["n_jobs"]))
    if len(errors):
        table = table.drop(index=sorted(int(p) for p in errors["position"])).reset_index(drop=True)
    y = (table["screening"] == CLASSES[1]).to_numpy().astype(int)
    return ScreeningData(table=table, X=X, y=y, side=side)
