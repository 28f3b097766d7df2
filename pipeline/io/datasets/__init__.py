"""Dataset adapters: mini-MIAS, CBIS-DDSM, a generic manifest CSV and a plain folder -> one table (see table.py)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.io.datasets.table import COLUMNS, density_table, lesion_table, validate_table
from pipeline.errors import DatasetError

__all__ = ["ADAPTERS", "COLUMNS", "load_dataset", "detect_adapter", "density_table", "lesion_table", "validate_table"]

ADAPTERS = ("mias", "cbis", "manifest", "folder")


def detect_adapter(path: str | Path) -> str:
    """Adapter for `path`: Info.txt -> mias; case-description CSVs -> cbis; a CSV -> manifest; else folder."""
    from pipeline.io.datasets.cbis_ddsm import find_case_csvs
    from pipeline.io.datasets.mias import find_info_file

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: does not exist; pass a dataset folder or a manifest CSV")
    if find_info_file(path) is not None:
        return "mias"
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise DatasetError(f"{path}: a file that is not a CSV; pass a folder or a manifest CSV")
    if find_case_csvs(path):
        return "cbis"
    csvs = sorted(path.glob("*.csv"))
    if len(csvs) == 1 or (path / "manifest.csv").is_file():
        return "manifest"
    return "folder"


def load_dataset(adapter: str | None, path: str | Path) -> pd.DataFrame:
    """Dataset table (one row per finding, columns table.COLUMNS first) from `path` with the named adapter.

    `adapter` is one of ``mias``, ``cbis``, ``manifest``, ``folder`` or None to detect it (see detect_adapter).
    A folder given to the manifest adapter uses its ``manifest.csv`` (or its only CSV).
    """
    path = Path(path).expanduser()
    adapter = adapter or detect_adapter(path)
    if adapter == "mias":
        from pipeline.io.datasets.mias import load_mias

        table = load_mias(path)
    elif adapter == "cbis":
        from pipeline.io.datasets.cbis_ddsm import load_cbis_ddsm

        table = load_cbis_ddsm(path)
    elif adapter == "manifest":
        from pipeline.io.datasets.manifest import load_manifest

        if path.is_dir():
            csvs = [path / "manifest.csv"] if (path / "manifest.csv").is_file() else sorted(path.glob("*.csv"))
            if len(csvs) != 1:
                raise DatasetError(f"{path}: expected one manifest CSV in the folder, found {len(csvs)}; pass the CSV")
            path = csvs[0]
        table = load_manifest(path)
    elif adapter == "folder":
        from pipeline.io.datasets.folder import load_folder

        table = load_folder(path)
    else:
        raise DatasetError(f"unknown adapter {adapter!r}; use one of {list(ADAPTERS)}")
    return validate_table(table, name=str(path))
