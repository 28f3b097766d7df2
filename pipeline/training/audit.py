"""Training-time shortcut audit (switch ``evaluation.shortcut_audit``): does anything that should not predict the
label predict it in these data?

Candidates, from the task's table and a header read of each file (pipeline.io.headers: no pixel decoded): images
per exam and per breast, breasts per exam, image size and aspect, bit depth, file format, file name tokens, folder,
view, laterality, and every machine / site / manufacturer column a manifest carries (names matched by
`SITE_COLUMNS`) or a DICOM header gives. Each is scored by its own simple model in the run's patient folds
(pipeline.evaluation.audit); one flagged (out-of-fold AUC > ``max_auc`` with its CI above 0.5) is warned about by
name in the log, the MLflow run (``audit/shortcut_audit.json``, metrics ``audit_<name>_roc_auc``) and the model card
(extra ``shortcut_audit``, a known limitation). A flag is a question for the data owner, not proof of a shortcut
the model took: a real association (a site that sees more cancers) flags too.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.evaluation.audit import Candidate, CandidateResult, audit_candidates, flagged_names
from pipeline.io.exams import level_ids

__all__ = ["SITE_COLUMNS", "site_columns", "ShortcutAudit", "audit_candidates_of", "shortcut_audit", "audit_for_training"]

log = logging.getLogger(__name__)

# manifest columns that name where or on what an image was made: a word of the column name (split at _, -, space)
# is one of these, and none of _NOT_SITE_WORDS (an image's own name or id is no site)
SITE_COLUMNS = ("machine", "site", "manufacturer", "vendor", "scanner", "device", "model", "station", "centre",
                "center", "hospital", "institution", "source", "unit", "equipment")
_NOT_SITE_WORDS = {"name", "file", "path", "id", "uid"}


@dataclass
class ShortcutAudit:
    """The audit's verdict on one dataset: one CandidateResult per candidate, the flagged names."""

    results: list[CandidateResult]
    max_auc: float

    @property
    def flagged(self) -> list[str]:
        """Names of the candidates that predict the label beyond chance, highest AUC first."""
        return flagged_names(self.results)

    def warnings(self) -> list[str]:
        """One sentence per flagged candidate (log, card limitations)."""
        out = []
        for name in self.flagged:
            r = next(r for r in self.results if r.name == name)
            out.append(f"Shortcut audit: '{name}' ({r.what}) predicts the label by itself, out-of-fold ROC AUC "
                       f"{r.roc_auc:.3f} [{r.low:.3f}-{r.high:.3f}]; a model can learn it instead of the image. "
                       "Check how the data were collected and exported before trusting the figures.")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: {max_auc, rule, flagged, candidates: [...]} (the run artifact and card extra)."""
        return {"max_auc": self.max_auc, "rule": f"flagged when out-of-fold ROC AUC > {self.max_auc:.2f} and its "
                "95% CI low end > 0.5 (one simple model per candidate, the run's patient folds)",
                "flagged": self.flagged, "candidates": [r.to_dict() for r in self.results]}

    def metrics(self) -> dict[str, float]:
        """audit_<name>_roc_auc (+ _ci_low/_ci_high) per tested candidate and audit_flagged (count)."""
        out: dict[str, float] = {"audit_flagged": float(len(self.flagged))}
        for r in self.results:
            if r.roc_auc is not None and np.isfinite(r.roc_auc):
                name = _METRIC_UNSAFE.sub("_", r.name)  # a manifest column such as 'Scanner (model)'
                out[f"audit_{name}_roc_auc"] = float(r.roc_auc)
                out[f"audit_{name}_roc_auc_ci_low"] = float(r.low)
                out[f"audit_{name}_roc_auc_ci_high"] = float(r.high)
        return out


_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")  # characters an MLflow metric name may not hold


def _tokens(name: str) -> str:
    """File-name tokens: split at non-alphanumerics and letter/digit boundaries, lower-case, space-joined."""
    stem = PurePath(name).stem
    parts = re.findall(r"[A-Za-z]+|[0-9]+", stem)
    return " ".join(p.lower() for p in parts)


def _folder(paths: pd.Series) -> pd.Series:
    """Each file's folder relative to the deepest folder all files share ('.' for that folder itself)."""
    parents = [PurePath(str(p)).parent for p in paths]
    if not parents:
        return pd.Series([], dtype=object)
    common = parents[0]
    for q in parents[1:]:
        while common != common.parent and not q.is_relative_to(common):
            common = common.parent
    return pd.Series([str(q.relative_to(common)) for q in parents], index=paths.index, dtype=object)


def _count_per(unit: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Per row, the number of distinct images of its unit."""
    df = pd.DataFrame({"u": unit, "i": image})
    return df.groupby("u")["i"].transform("nunique").to_numpy(float)


def site_columns(table: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """The table's machine / site / manufacturer columns (SITE_COLUMNS), less any whose name holds a word of
    `exclude` (words split at _, -, space)."""
    out = []
    for c in table.columns:
        words = set(re.split(r"[^a-z0-9]+", str(c).lower()))
        if words & set(SITE_COLUMNS) and not words & (_NOT_SITE_WORDS | set(exclude)):
            out.append(c)
    return out


def audit_candidates_of(table: pd.DataFrame, headers: pd.DataFrame | None = None) -> list[Candidate]:
    """The candidates of a task table (one row per sample; columns of pipeline.io.datasets.table) with its files'
    header facts (`headers`: pipeline.io.headers.image_headers, indexed by path; None = read them here, always: the
    format and the scanner tags come only from the files; columns height / width / bit_depth already in `table`, e.g.
    from a dataset scan, override the headers' values)."""
    from pipeline.io.headers import image_headers

    t = table.reset_index(drop=True)
    paths = t["path"].astype(str)
    if headers is None:
        headers = image_headers(paths)
    h = headers.reindex(paths.to_numpy()).reset_index(drop=True) if headers is not None else pd.DataFrame(index=t.index)
    for col in ("height", "width", "bit_depth"):
        if col in t.columns:
            h[col] = pd.to_numeric(t[col], errors="coerce")
    ids = level_ids(t)
    side = t["laterality"] if "laterality" in t.columns else pd.Series([None] * len(t))
    breasts = pd.DataFrame({"e": ids["exam"], "s": side.astype(object).where(side.isin(["L", "R"]), None)})
    n_breasts = breasts.groupby("e")["s"].transform(lambda s: s.dropna().nunique()).to_numpy(float)
    height = pd.to_numeric(h.get("height"), errors="coerce").to_numpy(float) if "height" in h else np.full(len(t), np.nan)
    width = pd.to_numeric(h.get("width"), errors="coerce").to_numpy(float) if "width" in h else np.full(len(t), np.nan)
    cands = [
        Candidate("images_per_exam", "numeric", _count_per(ids["exam"], paths.to_numpy()),
                  "number of images (views) of the image's exam"),
        Candidate("images_per_breast", "numeric", _count_per(ids["breast"], paths.to_numpy()),
                  "number of images (views) of the image's breast"),
        Candidate("breasts_per_exam", "numeric", n_breasts, "number of breasts (0-2 known lateralities) in the exam"),
        Candidate("image_size", "numeric", np.column_stack([height, width]), "stored height and width, pixels"),
        Candidate("aspect", "numeric", height / np.where(width > 0, width, np.nan), "stored height / width"),
    ]
    if "bit_depth" in h:
        cands.append(Candidate("bit_depth", "numeric", pd.to_numeric(h["bit_depth"], errors="coerce").to_numpy(float),
                               "bits per sample stored in the file"))
    if "format" in h:
        cands.append(Candidate("file_format", "category", h["format"].to_numpy(object), "file format (png, dicom, ...)"))
    cands += [Candidate("file_name", "tokens", [_tokens(p) for p in paths], "tokens of the file name"),
              Candidate("folder", "category", _folder(paths).to_numpy(object), "folder of the file")]
    for col, what in (("view", "CC, MLO, ..."), ("laterality", "L / R")):
        if col in t.columns:
            cands.append(Candidate(col, "category", t[col].to_numpy(object), what))
    for col in ("manufacturer", "model"):
        if col in h and h[col].notna().any():
            cands.append(Candidate(f"dicom_{col}", "category", h[col].to_numpy(object), f"DICOM {col} tag"))
    for col in site_columns(t):
        cands.append(Candidate(f"column_{col}", "category", t[col].astype(object).to_numpy(), f"table column {col!r}"))
    return cands


def shortcut_audit(table: pd.DataFrame, y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]], *,
                   max_auc: float = 0.60, n_resamples: int = 1000, confidence_level: float = 0.95, seed: int = 0,
                   headers: pd.DataFrame | None = None) -> ShortcutAudit:
    """The audit of a task table (rows aligned with binary labels `y`) in the given patient folds."""
    cands = audit_candidates_of(table, headers)
    results = audit_candidates(cands, y, folds, max_auc=max_auc, n_resamples=n_resamples,
                               confidence_level=confidence_level, seed=seed)
    return ShortcutAudit(results, float(max_auc))


def audit_for_training(config: Mapping[str, Any], data: Any, progress: Callable[[str], None] = log.info
                       ) -> ShortcutAudit | None:
    """The audit of a training run's data (TaskData) in the same patient folds as its cross-validation, for a
    binary task with ``evaluation.shortcut_audit.enabled``; None otherwise. Warns by name (log + `progress`)."""
    from pipeline.config.tasks import get_task
    from pipeline.evaluation.splits import patient_stratified_folds

    ev = config["evaluation"]
    settings = ev.get("shortcut_audit") or {}
    if not settings.get("enabled", True) or len(data.classes) != 2 or not get_task(config["dataset"]["task"]).uses_threshold:
        return None
    folds = patient_stratified_folds(data.y, data.groups, ev["folds"], ev["seed"])  # the CV's own folds
    audit = shortcut_audit(data.table, data.y, folds, max_auc=float(settings.get("max_auc", 0.60)),
                           n_resamples=int(ev["bootstrap_resamples"]), confidence_level=float(ev["confidence_level"]),
                           seed=int(ev["seed"]))
    tested = sum(r.skipped is None for r in audit.results)
    progress(f"shortcut audit: {tested} candidates tested, "
             + (f"FLAGGED: {', '.join(audit.flagged)}" if audit.flagged else "none predicts the label beyond chance"))
    for line in audit.warnings():
        log.warning(line)
    return audit
