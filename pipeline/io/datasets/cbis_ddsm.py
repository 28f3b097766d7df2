"""CBIS-DDSM adapter: the official case-description CSVs + a DICOM tree -> the dataset table (one row per finding).

Labels come from the four official CSVs (``mass_case_description_train_set.csv``, ``..._test_set.csv``,
``calc_case_description_train_set.csv``, ``..._test_set.csv``), found in the folder, its ``labels/`` subfolder or
given explicitly. Images are resolved from each row's ``image file path``, whose first component is the subject
folder (``Mass-Test_P_00173_LEFT_CC``):

* exactly as written, under the root or ``<root>/CBIS-DDSM`` (the layout the CSVs were made with);
* else any DICOM under a folder of that subject name, as TCIA's NBIA Data Retriever delivers it
  (``CBIS-DDSM/<Subject>/<date-DDSM-NA-xxxxx>/<1.000000-full mammogram images-xxxxx>/1-1.dcm``: other folder names and
  file name than the CSV); with several candidates the one under a "full mammogram" series, else the largest, wins;
* else, for a folder with its own ``manifest.csv`` (columns ``file`` and ``original_id`` = subject), that file.

Rows whose image is not in the tree are dropped (counted in the log): a partial download loads what is there.
Density 1-4 becomes BI-RADS ``A``-``D`` (0 or empty: unknown); ``BENIGN_WITHOUT_CALLBACK`` counts as benign.
CBIS-DDSM ROIs are masks: a finding whose mask is found gets ``roi_kind`` ``mask`` and ``roi_mask_path`` (the CSV's
file, else the DICOMs of its ROI subject folder joined by ``os.pathsep``); its box is read from the mask when the
sample is made (pipeline.samples.roi_geometry).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io.datasets.files import entry_path, entry_size, is_entry
from pipeline.io.datasets.table import finalize_table
from pipeline.errors import DatasetError

__all__ = ["load_cbis_ddsm", "find_case_csvs", "SUBJECT_RE"]

logger = logging.getLogger(__name__)

SUBJECT_RE = re.compile(r"^(Calc|Mass)-(Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)(?:_(\d+))?$", re.IGNORECASE)
_DENSITY = {1: "A", 2: "B", 3: "C", 4: "D"}
_PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
_REQUIRED = ("patient_id", "left or right breast", "image view", "abnormality id", "pathology", "image file path")


def find_case_csvs(root: str | Path) -> list[Path]:
    """The case-description CSVs in `root` or `root/labels` (files whose header has an 'image file path' column)."""
    root = Path(root)
    found = []
    for folder in (root, root / "labels"):
        if not folder.is_dir():
            continue
        for csv in sorted(folder.glob("*.csv")):
            try:
                header = csv.open(encoding="utf-8", errors="replace").readline().lower()
            except OSError:
                continue
            if "image file path" in header and "pathology" in header:
                found.append(csv)
    return found


def _read_csvs(csvs: list[Path]) -> pd.DataFrame:
    frames = []
    for csv in csvs:
        df = pd.read_csv(csv, dtype=str)
        df.columns = [c.strip().lower().replace("breast_density", "breast density") for c in df.columns]
        missing = [c for c in _REQUIRED if c not in df.columns]
        if missing:
            raise DatasetError(f"{csv}: not a CBIS-DDSM case-description CSV, missing columns {missing}")
        df["case_csv"] = csv.name
        frames.append(df)
    table = pd.concat(frames, ignore_index=True)
    for col in table.columns:
        table[col] = table[col].str.strip()
    return table


def _subject_of(relpath: str) -> str:
    return str(relpath).replace("\\", "/").strip().strip("/").split("/")[0]


def _index_tree(root: Path) -> dict[str, list[Path]]:
    """Subject folder name -> DICOM files below it, for every *.dcm under `root`."""
    index: dict[str, list[Path]] = {}
    for dcm in root.rglob("*.dcm"):
        for part in dcm.relative_to(root).parts[:-1]:
            if SUBJECT_RE.match(part):
                index.setdefault(part, []).append(dcm)
                break
    return index


def _manifest_index(root: Path) -> dict[str, list[Path]]:
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return {}
    df = pd.read_csv(manifest, dtype=str)
    if not {"file", "original_id"} <= set(df.columns):
        return {}
    index: dict[str, list[Path]] = {}
    for file, subject in zip(df["file"], df["original_id"]):
        path = Path(entry_path(root / file))
        if is_entry(path) and path not in index.get(subject, []):
            index.setdefault(subject, []).append(path)
    return index


def _pick(candidates: list[Path]) -> Path:
    if len(candidates) == 1:
        return candidates[0]
    full = [p for p in candidates if "full mammogram" in str(p).lower()]
    pool = full or candidates
    return max(pool, key=lambda p: (entry_size(p), str(p)))


def _top_folders(root: Path) -> set[str]:
    """Names of the folders directly under `root` and `root/CBIS-DDSM` (subject folders of the CSV layout)."""
    names: set[str] = set()
    for base in (root, root / "CBIS-DDSM"):
        if base.is_dir():
            names.update(p.name for p in base.iterdir() if p.is_dir())
    return names


def _resolve(root: Path, relpath: str, index: dict[str, list[Path]], present: set[str]) -> Path | None:
    if not isinstance(relpath, str) or not relpath:
        return None
    rel = relpath.replace("\\", "/").strip()
    if _subject_of(rel) not in present:
        candidates = index.get(_subject_of(rel))
        return Path(entry_path(_pick(candidates))) if candidates else None
    for base in (root, root / "CBIS-DDSM"):
        candidate = base / rel
        if is_entry(candidate):  # a FIFO or broken link too: the reader gives it an error row
            return Path(entry_path(candidate))
    candidates = index.get(_subject_of(rel))
    return Path(entry_path(_pick(candidates))) if candidates else None


def _mask_candidates(root: Path, relpath: object, index: dict[str, list[Path]]) -> list[str]:
    """The finding's ROI mask file as the CSV names it, else every DICOM of its ROI subject folder (TCIA's
    retriever stores the mask and the lesion crop there under other names; pipeline.samples keeps the binary one)."""
    if not isinstance(relpath, str) or not relpath.strip():
        return []
    rel = relpath.replace("\\", "/").strip()
    named = [str((base / rel).resolve()) for base in (root, root / "CBIS-DDSM") if (base / rel).is_file()][:1]
    # the named file first (some CSV rows name the lesion crop instead), then the rest of the ROI folder
    others = [entry_path(p) for p in sorted(index.get(_subject_of(rel), []))]
    return named + [p for p in others if p not in named]


def _density(value: object) -> object:
    try:
        return _DENSITY.get(int(float(str(value))), np.nan)
    except ValueError:
        return np.nan


def load_cbis_ddsm(root: str | Path, *, csvs: list[str | Path] | None = None) -> pd.DataFrame:
    """Dataset table of a CBIS-DDSM download at `root` (case-description CSVs found there unless `csvs` given)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; pass the folder of the CBIS-DDSM download")
    csv_paths = [Path(c) for c in csvs] if csvs else find_case_csvs(root)
    if not csv_paths:
        raise DatasetError(
            f"{root}: no CBIS-DDSM case-description CSVs (e.g. mass_case_description_train_set.csv) in it or labels/; "
            "download them from TCIA (see pipeline/io/datasets/download.py) or pass csvs=[...]"
        )
    labels = _read_csvs(csv_paths)
    index = _manifest_index(root) or _index_tree(root)
    present = _top_folders(root)

    rows = []
    unresolved = 0
    for rec in labels.to_dict("records"):
        path = _resolve(root, rec["image file path"], index, present)
        if path is None:
            unresolved += 1
            continue
        subject = _subject_of(rec["image file path"])
        mask_paths = _mask_candidates(root, rec.get("roi mask file path"), index)
        side = str(rec["left or right breast"]).upper()
        rows.append(
            {
                "sample_id": f"{subject}_{rec['abnormality id']}",
                "path": str(path),
                "patient_id": rec["patient_id"],
                "density": _density(rec.get("breast density")),
                "pathology": _PATHOLOGY.get(str(rec["pathology"]).upper(), np.nan),
                "laterality": {"LEFT": "L", "RIGHT": "R"}.get(side, np.nan),
                "view": str(rec["image view"]).upper(),
                "source": "CBIS-DDSM",
                "image_id": subject,
                "abnormality_id": rec["abnormality id"],
                "abnormality_type": rec.get("abnormality type"),
                "pathology_raw": rec["pathology"],
                "assessment": rec.get("assessment"),
                "subtlety": rec.get("subtlety"),
                "split": "test" if "test" in subject.lower() else "train",
                "roi_kind": "mask" if mask_paths else np.nan,
                "roi_mask_path": os.pathsep.join(mask_paths) if mask_paths else np.nan,
                "case_csv": rec["case_csv"],
            }
        )
    if unresolved:
        logger.info("CBIS-DDSM: %d of %d CSV rows have no image under %s (skipped)", unresolved, len(labels), root)
    if not rows:
        raise DatasetError(
            f"{root}: none of the {len(labels)} CBIS-DDSM CSV rows has its DICOM in this folder; "
            "pass the folder that holds the CBIS-DDSM/<Subject>/... tree"
        )
    table = finalize_table(pd.DataFrame(rows))
    dup = table["sample_id"].duplicated(keep=False)
    if dup.any():  # the official CSVs list a few findings twice: keep them apart
        table.loc[dup, "sample_id"] = table.loc[dup, "sample_id"] + "_" + table.loc[dup].groupby("sample_id").cumcount().add(1).astype(str)
    return table
