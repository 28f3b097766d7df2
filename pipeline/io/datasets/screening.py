"""Screening labels: one row per image, malignant vs not malignant (benign and normal images are negatives).

Which exam and breast a row belongs to: `pipeline.io.exams` (the one definition).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError

__all__ = ["CLASSES", "image_rows", "screening_label", "screening_table"]

CLASSES = ["not_malignant", "malignant"]


def image_rows(full: pd.DataFrame) -> pd.DataFrame:
    """One row per image of a dataset table, its ``pathology`` the image's worst finding (malignant over benign)
    and ``is_normal`` kept; images of unknown status (no finding with a pathology, not normal) are dropped."""
    if full.empty:
        raise DatasetError("screening: the dataset table is empty")
    df = full.copy()
    normal = df["is_normal"].fillna(False).astype(bool) if "is_normal" in df.columns else pd.Series(False, df.index)
    status = np.where(df["pathology"] == "malignant", 3,
                      np.where(df["pathology"] == "benign", 2, np.where(normal, 1, 0)))
    df["_status"] = status
    worst = df.groupby("path", sort=False)["_status"].transform("max")
    keep = ~df["path"].duplicated() & (worst > 0)
    out = df[keep].copy()
    worst = worst[keep].to_numpy()
    out["pathology"] = np.where(worst == 3, "malignant", np.where(worst == 2, "benign", None))
    out["is_normal"] = worst == 1
    out = out.drop(columns="_status").reset_index(drop=True)
    if out.empty:
        raise DatasetError("screening: no image has a known status (malignant, benign or normal); give pathology "
                           "per image (manifest column pathology: normal / benign / malignant)")
    return out


def screening_label(table: pd.DataFrame) -> pd.Series:
    """The screening label of each row: malignant, not_malignant (benign or ``is_normal``), else missing."""
    normal = table["is_normal"].fillna(False).astype(bool) if "is_normal" in table.columns else False
    label = np.where(table["pathology"] == "malignant", CLASSES[1],
                     np.where((table["pathology"] == "benign") | normal, CLASSES[0], None))
    return pd.Series(label, index=table.index, dtype=object)


def screening_table(full: pd.DataFrame) -> pd.DataFrame:
    """`image_rows` with the label in column ``screening`` (what Task screening trains on)."""
    rows = image_rows(full)
    return rows.assign(screening=screening_label(rows))
