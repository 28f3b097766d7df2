"""A plain folder of images -> one row per image file, labels unknown, patient id = file stem."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.io.datasets.files import entry_path
from pipeline.io.datasets.table import finalize_table
from pipeline.errors import DatasetError
from pipeline.io.imageio import IMAGE_SUFFIXES

__all__ = ["load_folder", "image_files"]


def image_files(root: str | Path) -> list[Path]:
    """Entries named like images (by suffix) under `root`, recursively, sorted; hidden files and folders skipped.

    Every non-folder entry counts, checked from the directory listing without opening it: FIFOs, sockets, devices,
    broken links and link loops are kept so that the reader reports each as an error row instead of it silently
    vanishing from the dataset (or blocking a read). A folder is walked whatever its name (``scans.png/``); linked
    folders are not followed (no walk loops).
    """
    root = Path(root)
    found = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:  # os.walk lists links to folders under dirnames, everything else here
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(folder) / name)
    return sorted(found)


def load_folder(root: str | Path) -> pd.DataFrame:
    """Dataset table of every image file under `root` (no labels)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    files = image_files(root)
    if not files:
        raise DatasetError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    rel = [p.relative_to(root) for p in files]
    ids = [r.as_posix() for r in rel]  # relative path with suffix: unique, even for a.png beside a.jpg
    table = pd.DataFrame(
        {
            "sample_id": ids,
            "path": [entry_path(p) for p in files],  # a broken link or loop keeps its own name for the error row
            "patient_id": [p.stem for p in files],
            "source": root.name or str(root),
        }
    )
    return finalize_table(table)
