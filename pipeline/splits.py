"""Patient-level splits: stratified, grouped folds and a held-out test split; no patient is ever on both sides."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.errors import DatasetError

__all__ = ["patient_folds", "train_test_split_by_patient"]


def _labels_and_groups(df: pd.DataFrame, label_col: str) -> tuple[np.ndarray, np.ndarray]:
    for col in (label_col, "patient_id"):
        if col not in df.columns:
            raise DatasetError(f"split: the table has no column {col!r} (columns: {list(df.columns)[:12]} ...)")
    if df[label_col].isna().any():
        raise DatasetError(
            f"split: {int(df[label_col].isna().sum())} rows have no {label_col!r} label; "
            "select the labelled rows first (density_table / lesion_table)"
        )
    if df["patient_id"].isna().any():
        raise DatasetError("split: rows without patient_id cannot be grouped by patient")
    return df[label_col].astype(str).to_numpy(), df["patient_id"].astype(str).to_numpy()


def patient_folds(
    df: pd.DataFrame, label_col: str, n_splits: int = 5, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (train_idx, val_idx) positional index arrays of StratifiedGroupKFold grouped by patient_id."""
    y, groups = _labels_and_groups(df, label_col)
    n_patients = len(np.unique(groups))
    if n_splits < 2 or n_splits > n_patients:
        raise DatasetError(f"split: n_splits must be in [2, {n_patients}] (the number of patients); got {n_splits}")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    yield from cv.split(np.zeros(len(y)), y, groups)


def train_test_split_by_patient(
    df: pd.DataFrame, label_col: str, test_size: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) positional arrays: about `test_size` of the patients held out, stratified by label.

    Uses one fold of StratifiedGroupKFold with round(1 / test_size) folds, so the held-out share is 1 / n_folds.
    """
    if not 0.0 < test_size < 1.0:
        raise DatasetError(f"split: test_size must be a fraction in (0, 1); got {test_size}")
    n_splits = max(2, int(round(1.0 / test_size)))
    train_idx, test_idx = next(patient_folds(df, label_col, n_splits=n_splits, seed=seed))
    return train_idx, test_idx
