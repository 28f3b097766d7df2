"""Screening labels: one row per image, malignant vs not malignant (benign and normal images are negatives).

A breast is patient + laterality; an exam is the table's ``exam_id`` where it has one, else the patient.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError

__all__ = ["CLASSES", "screening_table", "breast_ids", "exam_ids"]

CLASSES = ["not_malignant", "malignant"]


def screening_table(full: pd.DataFrame) -> pd.DataFrame:
    """One row per image of a dataset table with column ``screening`` (CLASSES): malignant when any finding of
    the image is malignant, else not_malignant when a finding is benign or the image is normal (``is_normal``);
    images of unknown status are dropped."""
    if full.empty:
        raise DatasetError("screening: the dataset table is empty")
    df = full.copy()
    normal = df["is_normal"].fillna(False).astype(bool) if "is_normal" in df.columns else pd.Series(False, df.index)
    status = np.where(df["pathology"] == "malignant", 2, np.where((df["pathology"] == "benign") | normal, 1, 0))
    df["_status"] = status
    worst = df.groupby("path", sort=False)["_status"].transform("max")
    first = ~df["path"].duplicated()
    out = df[first & (worst > 0)].copy()
    out["screening"] = np.where(worst[first & (worst > 0)] == 2, CLASSES[1], CLASSES[0])
    out = out.drop(columns="_status").reset_index(drop=True)
    if out.empty:
        raise DatasetError("screening: no image has a known status (malignant, benign or normal); give pathology "
                           "per image (manifest column pathology: normal / benign / malignant)")
    return out


def breast_ids(table: pd.DataFrame) -> np.ndarray:
    """exam|laterality per row (exam|image id where the laterality is unknown: a breast of its own)."""
    side = table["laterality"].astype(object) if "laterality" in table.columns else pd.Series(np.nan, table.index)
    known = side.isin(["L", "R"]).to_numpy()
    exam = pd.Series(exam_ids(table), index=table.index)
    return np.where(known, exam + "|" + side.astype(str), exam + "|" + table["sample_id"].astype(str)).astype(str)


def exam_ids(table: pd.DataFrame) -> np.ndarray:
    """The row's ``exam_id`` where given, else its patient id."""
    pid = table["patient_id"].astype(str)
    if "exam_id" not in table.columns:
        return pid.to_numpy(dtype=str)
    exam = table["exam_id"]
    known = exam.notna().to_numpy() & (exam.astype(str).str.strip() != "").to_numpy()
    return np.where(known, (pid + "|exam:" + exam.astype(str)).to_numpy(), pid.to_numpy()).astype(str)
