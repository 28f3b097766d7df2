"""A plain folder of images -> one row per image file, labels unknown, patient id = file stem."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.io.datasets.table import finalize_table
from pipeline.errors import DatasetError
from pipeline.io.imageio import IMAGE_SUFFIXES

__all__ = ["load_folder", "image_files"]


def image_files(root: str | Path) -> list[Path]:
    """Image files (by suffix) under `root`, recursively, sorted; hidden files skipped.

    Links named like images are kept even when they are broken or loop, so that the reader reports them as errors
    instead of the file silently vanishing from the dataset; linked folders are not followed (no walk loops).
    """
    root = Path(root)
    return sorted(
        p
        for p in root.rglob("*")
        if (p.is_symlink() or p.is_file())
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )


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
            "path": [os.path.realpath(p) for p in files],  # realpath, unlike resolve(), tolerates link loops
            "patient_id": [p.stem for p in files],
            "source": root.name or str(root),
        }
    )
    return finalize_table(table)
