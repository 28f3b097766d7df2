"""Training-time export copies: each training image also as an archive re-exports it, training the models only.

External screening sets are often shared as 640 px 8-bit JPEG re-exports, while development images are
full-resolution PNG or DICOM (benchmarks/reexport.py measures that shift). With ``samples.export_copies: <JPEG
quality>`` every training image is also read as such a re-export (pipeline.io.reexport: long side
``samples.export_long_side`` px, 8 bit, JPEG), its sample made by the same recipe and its features by the same
frozen front (streamed and cached under keys of their own). A copy keeps its patient's id, so no patient crosses a
fold, and forms an exam of its own (``~export`` ids), so the exam stage never reads a woman's own re-export as her
other view. In every fit (each CV fold, the final model) the copies of that fit's training images join it as rows that
only train (``augmented``: pipeline.model.estimators.PatientCalibratedClassifier), so calibration, the exam stage and
every operating point come from original images, and nothing is ever tested on a copy: the metrics are the originals'.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

__all__ = ["ExportCopies", "export_setting", "copy_table", "training_rows", "load_copies", "stream_copies"]

COPY_SUFFIX = "~export"


@dataclass
class ExportCopies:
    """The copies of a TaskData's rows: model inputs in the data's own form (samples, or frozen-feature rows)."""

    X: np.ndarray                # (m, d) one row per copy made
    origin: np.ndarray           # (m,) the TaskData row each copy was made from
    setting: tuple[int, int] = (640, 75)  # (long side px, JPEG quality)
    errors: pd.DataFrame = field(default_factory=pd.DataFrame)  # copies not made (position, sample_id, path, error)

    def summary(self) -> str:
        """One line for the training's progress: how many copies, how they were made, how many failed."""
        side, quality = self.setting
        failed = f"; {len(self.errors)} could not be made (their originals train alone)" if len(self.errors) else ""
        return f"export copies: {len(self.origin)} ({side} px, 8 bit, JPEG quality {quality}), training only{failed}"


def export_setting(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """(long side px, JPEG quality) of the experiment's export copies, None where it makes none."""
    s = config["samples"]
    quality = s.get("export_copies")
    if quality is None:
        return None
    return int(s.get("export_long_side", 640)), int(quality)


def copy_table(table: pd.DataFrame) -> pd.DataFrame:
    """The exam-table rows of copies of `table`'s rows: the same patient, side and view, own sample and exam ids."""
    out = table.reset_index(drop=True).copy()
    out["sample_id"] = out["sample_id"].astype(str) + COPY_SUFFIX
    exam = out["exam_id"] if "exam_id" in out.columns else pd.Series([None] * len(out))
    known = exam.notna() & (exam.astype(str).str.strip() != "")
    out["exam_id"] = np.where(known, exam.astype(str), "") + COPY_SUFFIX  # never an original's exam id
    return out


def training_rows(X: Any, y: np.ndarray, groups: np.ndarray, exams: pd.DataFrame | None, train: np.ndarray,
                  copies: ExportCopies | None) -> tuple[Any, np.ndarray, np.ndarray, pd.DataFrame | None,
                                                        np.ndarray | None]:
    """(X, y, groups, exams, augmented) of one fit on the rows `train`: those rows, then the copies made of them
    (augmented marks the copies; None without copies)."""
    train = np.asarray(train)
    ex = None if exams is None else exams.iloc[train].reset_index(drop=True)
    if copies is None:
        return X[train], y[train], groups[train], ex, None
    pick = np.flatnonzero(np.isin(copies.origin, train))
    if not len(pick):  # no copy of these rows could be made: the originals train alone
        return X[train], y[train], groups[train], ex, None
    src = copies.origin[pick]
    Xt = np.concatenate([np.asarray(X[train]), np.asarray(copies.X[pick], dtype=np.asarray(X[:0]).dtype)])
    if ex is not None:
        ex = pd.concat([ex, copy_table(exams.iloc[src])], ignore_index=True)
    augmented = np.r_[np.zeros(len(train), bool), np.ones(len(pick), bool)]
    return Xt, np.r_[y[train], y[src]], np.r_[groups[train], groups[src]], ex, augmented


def load_copies(config: Mapping[str, Any], data: Any, progress: Callable[[str], None]) -> ExportCopies | None:
    """In-memory samples of every row's export copy (the samples of `load_task_data`), None without copies."""
    from pipeline.training.train import task_samples

    setting = export_setting(config)
    if setting is None:
        return None
    X, errors = task_samples(config, data.table, export=setting)
    made = np.setdiff1d(np.arange(len(data.table)), errors["position"].astype(int).to_numpy())
    copies = ExportCopies(X=X, origin=made, setting=setting, errors=errors)
    progress(copies.summary())
    return copies


def stream_copies(config: Mapping[str, Any], data: Any, front: Any, cache: Any, jobs: int | None,
                  progress: Callable[[str], None], progress_bar: bool = False) -> ExportCopies | None:
    """Frozen-feature rows of every row's export copy, streamed like the originals' (cached under keys of their own);
    None without copies."""
    from pipeline.training import stream
    from pipeline.training.train import stream_spec

    setting = export_setting(config)
    if setting is None:
        return None
    result = stream.stream_features(data.table, stream_spec(config, front, cache, export=setting), n_jobs=jobs,
                                    progress_bar=progress_bar, desc="export copies embedded")
    progress(f"export copies' {result.summary()}")
    X = result.features if len(result.positions) else np.zeros((0, data.features.shape[1]), np.float32)
    copies = ExportCopies(X=X, origin=np.asarray(result.positions, int), setting=setting, errors=result.errors)
    progress(copies.summary())
    return copies
