"""mini-MIAS adapter: ``Info.txt`` + ``mdbNNN.png``/``.pgm`` images -> the dataset table (one row per finding).

Info.txt columns: reference, background tissue (F fatty, G fatty-glandular, D dense-glandular), abnormality class
(CALC, CIRC, SPIC, MISC, ARCH, ASYM, NORM), severity (B/M), x, y (origin bottom-left) and radius in pixels. Every
mini-MIAS image is 1024 x 1024, so the top-left row is ``1024 - y``. Even reference numbers are left breasts; the
left and right films of one woman are consecutive numbers (mdb001 + mdb002 = patient 1), which is the patient id.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io.datasets.files import entry_path, is_entry
from pipeline.io.datasets.table import finalize_table
from pipeline.errors import DatasetError

__all__ = ["load_mias", "find_info_file", "MIAS_SIZE", "INFO_LINE"]

logger = logging.getLogger(__name__)

MIAS_SIZE = 1024  # every mini-MIAS image is 1024 x 1024 pixels
_LINE = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]+)(?:\s+([BM]))?(?:\s+(\d+)\s+(\d+)\s+(\d+))?", re.IGNORECASE)
INFO_LINE = _LINE  # one Info.txt record: reference, tissue, class, severity, x, y, radius
_SEVERITY = {"B": "benign", "M": "malignant"}
# the distributed formats first; a JPEG / TIFF copy of the films is read too (ROI coordinates stay in the 1024 px frame)
_SUFFIXES = (".png", ".pgm", ".PNG", ".PGM", ".jpg", ".jpeg", ".JPG", ".JPEG", ".tif", ".tiff", ".TIF", ".TIFF")


def find_info_file(root: str | Path) -> Path | None:
    """Info.txt in `root` (or `root` itself when it is that file), else None."""
    root = Path(root)
    if root.is_file():
        return root if root.name.lower() == "info.txt" else None
    for name in ("Info.txt", "info.txt", "INFO.TXT"):
        if (root / name).is_file():
            return root / name
    return None


def _image_path(root: Path, ref: str) -> Path | None:
    for folder in (root / "images", root):
        for suffix in _SUFFIXES:
            candidate = folder / f"{ref}{suffix}"
            if is_entry(candidate):  # a FIFO or broken link too: the reader gives it an error row
                return Path(entry_path(candidate))
    return None


def load_mias(root: str | Path) -> pd.DataFrame:
    """Dataset table of a mini-MIAS folder (Info.txt beside the images or an ``images/`` subfolder)."""
    root = Path(root)
    info = find_info_file(root)
    if info is None:
        raise DatasetError(f"{root}: no Info.txt found; pass the mini-MIAS folder (it holds Info.txt and mdbNNN images)")
    root = info.parent
    rows = []
    counts: dict[str, int] = {}
    missing = []
    for line in info.read_text(encoding="latin-1").splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        ref, tissue, klass, severity, x, y, r = match.groups()
        ref = ref.lower()
        path = _image_path(root, ref)
        if path is None:
            missing.append(ref)
            continue
        number = int(ref[3:])
        counts[ref] = counts.get(ref, 0) + 1
        has_roi = x is not None
        rows.append(
            {
                "sample_id": f"{ref}_{counts[ref]}",
                "path": str(path),
                "patient_id": f"mias_{(number + 1) // 2:03d}",
                "density": tissue.upper(),
                "pathology": _SEVERITY.get((severity or "").upper(), np.nan),
                "laterality": "L" if number % 2 == 0 else "R",
                "view": "MLO",
                "roi_kind": "circle" if has_roi else np.nan,
                "roi_cx": float(x) if has_roi else np.nan,
                "roi_cy": float(MIAS_SIZE - int(y)) if has_roi else np.nan,
                "roi_r": float(r) if has_roi else np.nan,
                "source": "mini-MIAS",
                "image_id": ref,
                "abnormality_class": klass.upper(),
                "is_normal": klass.upper() == "NORM",  # screening: a normal image is a negative
                "background_tissue": tissue.upper(),
            }
        )
    if missing:
        logger.warning("mini-MIAS: %d findings listed in %s have no image file (e.g. %s)", len(missing), info, missing[0])
    if not rows:
        raise DatasetError(f"{info}: no mini-MIAS rows with an image file found beside it or in images/")
    return finalize_table(pd.DataFrame(rows))
