"""Screening labels: one row per image, malignant vs not malignant (benign and normal images are negatives).

A breast is patient + laterality; an exam is the table's ``exam_id`` where it has one, else the patient.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError

__all__ = ["CLASSES", "image_rows", "screening_label", "screening_table", "breast_ids", "exam_ids", "level_ids"]

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


def level_ids(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row -> unit id at each level (image = sample_id, breast = exam|side, exam = exam_id or patient)."""
    return {"image": table["sample_id"].astype(str).to_numpy(), "breast": breast_ids(table),
            "exam": exam_ids(table)}
