"""The one dataset table every adapter produces: column list, validation and the per-task views.

One row per finding (an image without findings is one row with no pathology and no ROI). Columns (see
docs/architecture.md): ``sample_id`` (unique), ``path`` (absolute), ``patient_id``, ``density`` (the dataset's own
label: BI-RADS ``A``-``D``, mini-MIAS ``F``/``G``/``D``, ... or missing), ``pathology`` (``benign``, ``malignant`` or
missing), ``laterality`` (``L``/``R``), ``view`` (``CC``/``MLO``/...), ``roi_kind`` (``circle``, ``box``, ``mask`` or missing),
``roi_cx``, ``roi_cy``, ``roi_r``, ``roi_x0``, ``roi_y0``, ``roi_x1``, ``roi_y1`` (pixels of the original image,
top-left origin) and ``source``. Adapters may add columns after these.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError

__all__ = [
    "COLUMNS",
    "ROI_COLUMNS",
    "PATHOLOGIES",
    "empty_table",
    "finalize_table",
    "validate_table",
    "density_table",
    "lesion_table",
]

ROI_KINDS = ("circle", "box", "mask")  # mask: roi_mask_path names a binary image the size of the mammogram
ROI_COLUMNS = ("roi_kind", "roi_cx", "roi_cy", "roi_r", "roi_x0", "roi_y0", "roi_x1", "roi_y1")
COLUMNS = ("sample_id", "path", "patient_id", "density", "pathology", "laterality", "view", *ROI_COLUMNS, "source")
PATHOLOGIES = ("benign", "malignant")
_STRING_COLUMNS = ("sample_id", "path", "patient_id", "density", "pathology", "laterality", "view", "roi_kind", "source")
_FLOAT_COLUMNS = ("roi_cx", "roi_cy", "roi_r", "roi_x0", "roi_y0", "roi_x1", "roi_y1")


def empty_table() -> pd.DataFrame:
    """A table with the standard columns and no rows."""
    return finalize_table(pd.DataFrame({c: [] for c in COLUMNS}))


def finalize_table(df: pd.DataFrame) -> pd.DataFrame:
    """Add missing standard columns, put them first, fix dtypes (strings as object with NaN, ROI as float)."""
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    for col in _STRING_COLUMNS:
        values = df[col].astype(object)
        df[col] = values.where(values.notna() & (values.astype(str).str.strip() != ""), np.nan).astype(object)
    for col in _FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra].reset_index(drop=True)


def validate_table(df: pd.DataFrame, *, name: str = "dataset table") -> pd.DataFrame:
    """Check the standard columns and values; raise DatasetError naming what is wrong. Returns `df` unchanged."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{name}: missing columns {missing}; adapters must produce all of {list(COLUMNS)}")
    if df["sample_id"].isna().any():
        raise DatasetError(f"{name}: {int(df['sample_id'].isna().sum())} rows have no sample_id")
    dup = df["sample_id"][df["sample_id"].duplicated()].unique()
    if len(dup):
        raise DatasetError(f"{name}: sample_id values are not unique, e.g. {list(dup[:3])}")
    if df["path"].isna().any():
        raise DatasetError(f"{name}: {int(df['path'].isna().sum())} rows have no image path")
    if df["patient_id"].isna().any():
        raise DatasetError(f"{name}: {int(df['patient_id'].isna().sum())} rows have no patient_id (splits need it)")
    bad = sorted(set(df["pathology"].dropna()) - set(PATHOLOGIES))
    if bad:
        raise DatasetError(f"{name}: pathology must be one of {list(PATHOLOGIES)} or empty; got {bad}")
    bad = sorted(set(df["laterality"].dropna()) - {"L", "R"})
    if bad:
        raise DatasetError(f"{name}: laterality must be 'L', 'R' or empty; got {bad}")
    bad = sorted(set(df["roi_kind"].dropna()) - set(ROI_KINDS))
    if bad:
        raise DatasetError(f"{name}: roi_kind must be 'circle', 'box', 'mask' or empty; got {bad}")
    circles = df["roi_kind"] == "circle"
    if df.loc[circles, ["roi_cx", "roi_cy", "roi_r"]].isna().any(axis=None):
        raise DatasetError(f"{name}: circle ROIs need roi_cx, roi_cy and roi_r")
    boxes = df["roi_kind"] == "box"
    if df.loc[boxes, ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]].isna().any(axis=None):
        raise DatasetError(f"{name}: box ROIs need roi_x0, roi_y0, roi_x1 and roi_y1")
    masks = df["roi_kind"] == "mask"
    if masks.any() and ("roi_mask_path" not in df.columns or df.loc[masks, "roi_mask_path"].isna().any()):
        raise DatasetError(f"{name}: mask ROIs need roi_mask_path (the binary mask image of the finding)")
    return df


def density_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per image (first finding row of each path) that has a density label."""
    per_image = df.drop_duplicates(subset="path", keep="first")
    return per_image[per_image["density"].notna()].reset_index(drop=True)


def lesion_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finding that has an ROI and a benign/malignant label."""
    keep = df["roi_kind"].isin(ROI_KINDS) & df["pathology"].isin(PATHOLOGIES)
    return df[keep].reset_index(drop=True)
