"""Generic manifest CSV adapter, so users bring their own data.

Columns: ``file`` (image path; relative paths resolve against the CSV's folder) and ``patient_id`` are required,
with at least one label column of ``density`` (kept as written: BI-RADS ``A``-``D``, ``1``-``4``, ...) and
``pathology`` (``benign``/``malignant``, also ``B``/``M``, ``0``/``1`` and CBIS's ``BENIGN_WITHOUT_CALLBACK``).
Optional: ``laterality`` (L/R/LEFT/RIGHT), ``view``, ``sample_id`` and an ROI given as a box ``x0, y0, x1, y1`` or a
circle ``cx, cy, r`` (pixels of the original image, top-left origin; the ``roi_`` prefixed names work too). Empty
cells mean unknown; every other column is kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io.datasets.table import finalize_table
from pipeline.errors import DatasetError

__all__ = ["load_manifest"]

_PATHOLOGY = {
    "benign": "benign",
    "b": "benign",
    "0": "benign",
    "benign_without_callback": "benign",
    "malignant": "malignant",
    "m": "malignant",
    "1": "malignant",
    "cancer": "malignant",
}
# images read as normal (no finding): pathology stays empty (density/malignancy unchanged); the screening task
# (pipeline.screening.labels) counts them as not malignant through the extra column ``is_normal``
_NORMAL = {"normal", "norm", "negative", "none"}
_BOX = ("x0", "y0", "x1", "y1")
_CIRCLE = ("cx", "cy", "r")
_SIDES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}


def _roi_columns(df: pd.DataFrame, names: tuple[str, ...], csv: Path) -> list[str] | None:
    """The columns holding an ROI of these names (plain or roi_-prefixed); None when absent; error when partial."""
    found = [n if n in df.columns else f"roi_{n}" if f"roi_{n}" in df.columns else None for n in names]
    if all(f is None for f in found):
        return None
    if any(f is None for f in found):
        missing = [n for n, f in zip(names, found) if f is None]
        raise DatasetError(f"{csv}: ROI columns incomplete, missing {missing}; give all of {list(names)} or none")
    return found  # type: ignore[return-value]


def _blank(series: pd.Series) -> pd.Series:
    text = series.astype(str).str.strip()
    return series.isna() | (text == "") | (text.str.lower() == "nan")


def load_manifest(csv: str | Path) -> pd.DataFrame:
    """Dataset table of a manifest CSV (see the module docstring for its columns)."""
    csv = Path(csv)
    if not csv.is_file():
        raise DatasetError(f"{csv}: manifest CSV not found; pass the path of a CSV with columns file, patient_id, ...")
    try:
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{csv}: cannot be read as CSV ({exc}); save it as comma-separated UTF-8") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in ("file", "patient_id") if c not in raw.columns]
    if not {"density", "pathology"} & set(raw.columns):
        missing.append("density or pathology")
    if missing:
        raise DatasetError(
            f"{csv}: missing columns {missing}; a manifest needs file, patient_id and at least one of density, "
            f"pathology (found {list(raw.columns)})"
        )
    df = raw.copy()
    for col in df.columns:
        df[col] = df[col].where(~_blank(df[col]), np.nan)
    if df["file"].isna().any():
        raise DatasetError(f"{csv}: rows {list(np.flatnonzero(df['file'].isna())[:5] + 2)} have an empty file column")
    if df["patient_id"].isna().any():
        rows = list(np.flatnonzero(df["patient_id"].isna())[:5] + 2)
        raise DatasetError(f"{csv}: rows {rows} have an empty patient_id; splits need one per image")

    base = csv.resolve().parent
    out = pd.DataFrame(index=df.index)
    out["path"] = [str(p if p.is_absolute() else (base / p)) for p in (Path(str(f)).expanduser() for f in df["file"])]
    out["patient_id"] = df["patient_id"].astype(str)
    out["density"] = df["density"].str.upper() if "density" in df.columns else np.nan
    if "pathology" in df.columns:
        text = df["pathology"].str.strip().str.lower()
        mapped = text.map(_PATHOLOGY)
        normal = text.isin(_NORMAL)
        bad = df["pathology"].notna() & mapped.isna() & ~normal
        if bad.any():
            raise DatasetError(
                f"{csv}: pathology values {sorted(set(df.loc[bad, 'pathology']))[:5]} are not understood; "
                "use benign, malignant or normal (or leave empty for unknown)"
            )
        out["pathology"] = mapped
        out["is_normal"] = normal
    if "laterality" in df.columns:
        out["laterality"] = df["laterality"].str.strip().str.upper().map(_SIDES)
    if "view" in df.columns:
        out["view"] = df["view"].str.strip().str.upper()

    box = _roi_columns(df, _BOX, csv)
    circle = _roi_columns(df, _CIRCLE, csv)
    kind = pd.Series(np.nan, index=df.index, dtype=object)
    if circle:
        values = df[circle].apply(pd.to_numeric, errors="coerce")
        has = values.notna().all(axis=1)
        for name, col in zip(("roi_cx", "roi_cy", "roi_r"), circle):
            out[name] = values[col]
        kind[has] = "circle"
    if box:
        values = df[box].apply(pd.to_numeric, errors="coerce")
        has = values.notna().all(axis=1)
        for name, col in zip(("roi_x0", "roi_y0", "roi_x1", "roi_y1"), box):
            out[name] = values[col]
        bad = has & ((values[box[2]] <= values[box[0]]) | (values[box[3]] <= values[box[1]]))
        if bad.any():
            raise DatasetError(f"{csv}: rows {list(np.flatnonzero(bad)[:5] + 2)} have a box with x1 <= x0 or y1 <= y0")
        kind[has & kind.isna()] = "box"
    out["roi_kind"] = kind

    if "sample_id" in df.columns and df["sample_id"].notna().all():
        out["sample_id"] = df["sample_id"].astype(str)
        if out["sample_id"].duplicated().any():
            raise DatasetError(f"{csv}: sample_id values are not unique")
    else:
        stems = pd.Series([Path(p).stem for p in out["path"]], index=df.index)
        rank = stems.groupby(stems).cumcount()
        dup = stems.duplicated(keep=False)
        out["sample_id"] = np.where(dup, stems + "_" + (rank + 1).astype(str), stems)
    out["source"] = df["source"] if "source" in df.columns else csv.name
    used = {"file", "patient_id", "density", "pathology", "laterality", "view", "sample_id", "source"}
    used |= set(box or ()) | set(circle or ())
    for col in df.columns:
        if col not in used and col not in out.columns:
            out[col] = df[col]
    return finalize_table(out)
