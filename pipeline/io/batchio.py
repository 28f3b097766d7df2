"""Inputs and outputs of batch prediction: finding the images to score, and a crash-safe, resumable results table.

* ``discover_inputs`` turns files, folders (recursive, include patterns, symlink loops survived, hidden files
  skipped) and manifest CSVs into one de-duplicated list of ``InputItem`` (paths and known metadata, no pixels).
* ``ResultWriter`` appends each batch of rows to the output and makes it durable (write, flush, fsync) before the
  next batch is scored, so a killed run loses at most the batch in flight; reopening the same output returns the
  keys already done (resume). CSV and JSON Lines are appended in place; Parquet and JSON outputs are journalled
  in ``<out>.partial.jsonl`` and written atomically (temporary file + rename) when the run ends.
"""
from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DatasetError, MammoscopeError
from pipeline.io.imageio import IMAGE_SUFFIXES

__all__ = [
    "InputItem",
    "discover_inputs",
    "ResultWriter",
    "OUTPUT_FORMATS",
    "MANIFEST_PATH_COLUMNS",
    "DEFAULT_INCLUDE",
]

logger = logging.getLogger(__name__)

DEFAULT_INCLUDE = tuple(f"*{suffix}" for suffix in IMAGE_SUFFIXES)
MANIFEST_PATH_COLUMNS = ("path", "file", "image_path", "filename")  # first present column names the image
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class InputItem:
    """One image to score: its path (absolute, symlinks kept), the key used for resume, and known metadata."""

    path: str
    laterality: str | None = None
    view: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Resume key: the absolute path."""
        return self.path


def _matches(name: str, include: Sequence[str]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in include)


def _walk(folder: Path, include: Sequence[str]) -> Iterator[Path]:
    """Files under `folder` whose name matches `include`, in sorted order; follows symlinked folders once each."""
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            st = current.stat()
        except OSError as exc:
            logger.warning("skipping folder %s: %s", current, exc.strerror or exc)
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            logger.info("skipping %s: already visited (symlink loop or second link to one folder)", current)
            continue
        seen.add(ident)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            logger.warning("skipping folder %s: %s", current, exc.strerror or exc)
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):  # hidden files, macOS ._ resource forks, .DS_Store
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks; False for broken links and link loops
            except OSError:
                is_dir = False
            if is_dir:
                subfolders.append(Path(entry.path))
            elif _matches(entry.name, include):
                yield Path(entry.path)  # broken links and loops too: they get an error row, not silence
        stack.extend(reversed(subfolders))


def _read_manifest(path: Path) -> Iterator[InputItem]:
    """Rows of a manifest CSV: the image path column (relative paths against the manifest's folder) plus metadata."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            column = next((c for c in MANIFEST_PATH_COLUMNS if c in columns), None)
            if column is None:
                raise DatasetError(
                    f"{path}: manifest has no image path column (looked for {', '.join(MANIFEST_PATH_COLUMNS)}; "
                    f"found {', '.join(columns) or 'no header'}). Add a 'path' column holding each image's path."
                )
            for line, row in enumerate(reader, start=2):
                value = (row.get(column) or "").strip()
                if not value:
                    logger.warning("%s line %d: empty %r, row skipped", path, line, column)
                    continue
                image = Path(value).expanduser()
                if not image.is_absolute():
                    image = path.parent / image
                extra = {k: v for k, v in row.items() if k not in (column, "laterality", "view") and k}
                yield InputItem(
                    path=os.path.abspath(image),
                    laterality=(row.get("laterality") or "").strip().upper() or None,
                    view=(row.get("view") or "").strip().upper() or None,
                    extra=extra,
                )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: manifest cannot be read ({exc}). Check it is a UTF-8 CSV file.") from None


def discover_inputs(inputs: Sequence[str | Path], include: Sequence[str] | None = None) -> list[InputItem]:
    """Files, folders (recursive, names matching `include`, default: image suffixes) and manifest CSVs -> items.

    A path named explicitly is kept whatever its name (a missing one gets an error row later); each image appears
    once, in the order given (folders sorted by name).
    """
    include = tuple(include) if include else DEFAULT_INCLUDE
    items: list[InputItem] = []
    seen: set[str] = set()

    def add(item: InputItem) -> None:
        if item.key not in seen:
            seen.add(item.key)
            items.append(item)

    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            for found in _walk(path, include):
                add(InputItem(path=os.path.abspath(found)))
        elif path.suffix.lower() == ".csv" and path.is_file():
            for item in _read_manifest(path):
                add(item)
        else:
            add(InputItem(path=os.path.abspath(path)))
    return items


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


def _durable_append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _drop_partial_last_line(path: Path) -> None:
    """Cut a last line left unfinished by a killed writer (everything after the last newline)."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                fh.truncate(start + cut + 1)
                logger.warning("%s: dropped an unfinished last row left by an interrupted run", path)
                return
            end = start
        fh.truncate(0)


class ResultWriter:
    """Durable, resumable results table at `out` (.csv, .jsonl, .json or .parquet) with fixed `columns`.

    `mode` is "resume" (keep rows already written; `done` holds their keys) or "overwrite" (start afresh).
    """

    def __init__(self, out: str | Path, columns: Sequence[str], *, mode: str = "resume", key: str = "path") -> None:
        self.out = Path(out)
        self.columns = list(columns)
        self.key = key
        suffix = self.out.suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            raise MammoscopeError(
                f"{self.out}: unknown output format {suffix or '(no extension)'!r}; "
                f"use one of {', '.join(OUTPUT_FORMATS)}"
            )
        if mode not in ("resume", "overwrite"):
            raise ValueError(f"mode must be 'resume' or 'overwrite'. Got {mode!r} instead.")
        self.format = OUTPUT_FORMATS[suffix]
        self.journal = self.out if self.format in ("csv", "jsonl") else self.out.with_name(self.out.name + ".partial.jsonl")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if mode == "overwrite":
            for stale in {self.out, self.journal}:
                stale.unlink(missing_ok=True)
        self.previous: list[dict[str, Any]] = self._load_previous()
        self.done: set[str] = {str(row.get(self.key)) for row in self.previous}
        self.rows_written = 0

    # -- reading what a previous run left -------------------------------------------------------------------------
    def _load_previous(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if self.format == "csv":
            if self.out.exists():
                _drop_partial_last_line(self.out)
                rows = self._read_csv(self.out)
        else:
            if self.format in ("json", "parquet") and self.out.exists():
                rows = self._read_final()
            if self.journal.exists():
                _drop_partial_last_line(self.journal)
                with open(self.journal, encoding="utf-8") as fh:
                    rows.extend(json.loads(line) for line in fh if line.strip())
        for row in rows[:1]:
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise MammoscopeError(
                    f"{self.out}: existing results lack the columns {', '.join(missing)} of this run (written for "
                    "another task or model?); pass --overwrite to replace them or choose another --out"
                )
        return rows

    def _read_csv(self, path: Path) -> list[dict[str, Any]]:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                return []
            return [{k: (v if v != "" else None) for k, v in row.items()} for row in reader]

    def _read_final(self) -> list[dict[str, Any]]:
        try:
            if self.format == "json":
                with open(self.out, encoding="utf-8") as fh:
                    return list(json.load(fh))
            import pandas as pd

            return pd.read_parquet(self.out).to_dict(orient="records")
        except (OSError, ValueError, ImportError) as exc:
            raise MammoscopeError(
                f"{self.out}: existing results cannot be read ({exc}); pass --overwrite to replace them"
            ) from None

    # -- writing ----------------------------------------------------------------------------------------------------
    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append `rows` and make them durable (flush + fsync) before returning."""
        if not rows:
            return
        if self.format == "csv":
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
            if not self.out.exists() or self.out.stat().st_size == 0:
                writer.writeheader()
            writer.writerows(rows)
            _durable_append(self.out, buffer.getvalue())
        else:
            lines = (
                json.dumps({c: _jsonable(row.get(c)) for c in self.columns}, ensure_ascii=False) + "\n" for row in rows
            )
            _durable_append(self.journal, "".join(lines))
        for row in rows:
            self.done.add(str(row.get(self.key)))
        self.rows_written += len(rows)

    def all_rows(self) -> list[dict[str, Any]]:
        """Every row of the output: previous runs' then this run's (read back from disk)."""
        if self.format == "csv":
            return self._read_csv(self.out) if self.out.exists() else []
        rows = self._read_final() if self.format in ("json", "parquet") and self.out.exists() else []
        if self.journal.exists() and self.journal != self.out:
            with open(self.journal, encoding="utf-8") as fh:
                rows.extend(json.loads(line) for line in fh if line.strip())
        elif self.format == "jsonl" and self.out.exists():
            with open(self.out, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
        return rows

    def close(self) -> None:
        """Write the final Parquet/JSON file atomically (temporary file + rename) and remove the journal."""
        if self.format in ("csv", "jsonl"):
            return
        if not self.journal.exists() and self.out.exists():
            return
        rows = self.all_rows()
        tmp = self.out.with_name(self.out.name + ".tmp")
        if self.format == "json":
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump([{c: _jsonable(r.get(c)) for c in self.columns} for r in rows], fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            import pandas as pd

            pd.DataFrame(rows, columns=self.columns).to_parquet(tmp, index=False)
        os.replace(tmp, self.out)
        self.journal.unlink(missing_ok=True)
