"""Scan a dataset: build its table, read every image in parallel, set aside unreadable files, summarise."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.io.datasets import load_dataset
from pipeline.errors import MammoscopeError
from pipeline.io.imageio import read_image

__all__ = ["ScanResult", "scan_dataset", "summary_lines"]

logger = logging.getLogger(__name__)


@dataclass
class ScanResult:
    """A scanned dataset: `table` (rows whose image read, plus height/width/file_laterality/file_view), `errors`."""

    path: Path
    adapter: str
    table: pd.DataFrame
    errors: pd.DataFrame  # columns: path, sample_ids, error

    @property
    def n_images(self) -> int:
        """Readable image files."""
        return int(self.table["path"].nunique())


def _probe(path: str) -> dict:
    """Read one image; return its size and file metadata, or the error message."""
    try:
        image, meta = read_image(path)
    except MammoscopeError as exc:
        return {"path": path, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one odd file must never end a long scan; reported, not swallowed
        return {"path": path, "error": f"{path}: unexpected {type(exc).__name__}: {exc}"}
    return {
        "path": path,
        "height": image.shape[0],
        "width": image.shape[1],
        "file_laterality": meta.laterality,
        "file_view": meta.view,
        "format": meta.format,
    }


def scan_dataset(
    path: str | Path | None = None, *, adapter: str | None = None, n_jobs: int = 1, progress: bool = True
) -> ScanResult:
    """Load the dataset at `path` (default: the embedded mini-MIAS) and read every image once, in parallel."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from pipeline.io.datasets import detect_adapter
    from pipeline.paths import default_mias_dir

    path = Path(path).expanduser() if path is not None else default_mias_dir()
    adapter = adapter or detect_adapter(path)
    table = load_dataset(adapter, path)
    paths = list(dict.fromkeys(table["path"]))
    parallel = Parallel(n_jobs=n_jobs, return_as="generator", batch_size="auto")
    results = list(
        tqdm(
            parallel(delayed(_probe)(p) for p in paths),
            total=len(paths),
            desc="reading images",
            unit="img",
            file=sys.stderr,
            disable=not progress,
        )
    )
    probes = pd.DataFrame(results)
    if "error" not in probes.columns:
        probes["error"] = None
    failed = probes[probes["error"].notna()]
    ok = probes[probes["error"].isna()].drop(columns=["error"])
    ids = table.groupby("path")["sample_id"].apply(lambda s: ";".join(map(str, s)))
    errors = pd.DataFrame(
        {"path": failed["path"].to_numpy(), "sample_ids": failed["path"].map(ids).to_numpy(), "error": failed["error"].to_numpy()}
    )
    good = table.merge(ok, on="path", how="inner", sort=False)
    if len(errors):
        logger.warning("%d of %d image files could not be read and were skipped", len(errors), len(paths))
    return ScanResult(path=path, adapter=adapter, table=good, errors=errors)


def _counts(series: pd.Series) -> str:
    counts = series.fillna("unknown").astype(str).value_counts()
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def summary_lines(result: ScanResult) -> list[str]:
    """Human-readable summary of a scan (one line per fact)."""
    t = result.table
    per_image = t.drop_duplicates("path")
    findings = t[t["pathology"].notna() | t["roi_kind"].notna()]
    lines = [
        f"dataset: {result.path} (adapter: {result.adapter})",
        f"images read: {per_image.shape[0]}   unreadable: {len(result.errors)}",
        f"patients: {t['patient_id'].nunique()}   rows: {len(t)}   findings: {len(findings)} "
        f"(with ROI: {int(t['roi_kind'].notna().sum())})",
        f"density (per image): {_counts(per_image['density'])}",
        f"pathology (per finding): {_counts(findings['pathology'])}",
        f"laterality (per image): {_counts(per_image['laterality'].fillna(per_image.get('file_laterality')))}",
        f"view (per image): {_counts(per_image['view'].fillna(per_image.get('file_view')))}",
    ]
    if len(per_image):
        sizes = per_image["height"].astype(int).astype(str) + "x" + per_image["width"].astype(int).astype(str)
        top = sizes.value_counts().head(3)
        lines.append(
            f"sizes (HxW): {', '.join(f'{k} ({v})' for k, v in top.items())}"
            + (f", ... {sizes.nunique() - 3} more" if sizes.nunique() > 3 else "")
        )
    return lines
