"""Shortcut audit arithmetic: how well does each thing that should not predict the label predict it?

Each candidate (a named group of columns of one kind) gets its own simple model, fitted inside the run's patient
folds and scored on their test folds: a shallow decision tree for numbers (counts, sizes, bit depth: any step or
bump is found), one-hot logistic regression for categories (view, machine, folder), bag-of-tokens logistic
regression for file names. Its out-of-fold ROC AUC with a bootstrap CI (pipeline.evaluation.metrics) says whether
the label can be read off it; a candidate is *flagged* when the AUC exceeds `max_auc` and the CI's lower bound
exceeds 0.5. Own code because no maintained library audits tabular metadata for label leakage inside given folds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import binary_metrics

__all__ = ["KINDS", "Candidate", "CandidateResult", "audit_candidates", "candidate_model", "flagged_names", "summary"]

log = logging.getLogger(__name__)
KINDS = ("numeric", "category", "tokens")


@dataclass(frozen=True)
class Candidate:
    """What should not predict the label: `values` (n,) or (n, k) numbers (NaN = unknown) for kind numeric,
    (n,) strings (None = unknown) for category, (n,) space-separated tokens for tokens."""

    name: str
    kind: str
    values: Any
    what: str = ""


@dataclass
class CandidateResult:
    """One candidate's verdict: out-of-fold ROC AUC [CI] of its simple model, or why it was not tested."""

    name: str
    kind: str
    what: str
    roc_auc: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0
    n_known: int = 0
    levels: int = 0
    flagged: bool = False
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (floats rounded to 4 digits)."""
        r = lambda v: None if v is None or not np.isfinite(v) else round(float(v), 4)  # noqa: E731
        return {"name": self.name, "kind": self.kind, "what": self.what, "roc_auc": r(self.roc_auc),
                "ci_low": r(self.low), "ci_high": r(self.high), "n": self.n, "n_known": self.n_known,
                "levels": self.levels, "flagged": self.flagged, "skipped": self.skipped}


def candidate_model(kind: str, n_rows: int, seed: int = 0) -> Any:
    """The simple sklearn model of one candidate kind: tree (numeric), one-hot + logistic regression (category),
    binary bag of tokens + logistic regression (tokens)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    from sklearn.tree import DecisionTreeClassifier

    if kind == "numeric":  # leaves of >= 2% of the rows (at least 5): a rule many images share, not one image's value
        return DecisionTreeClassifier(max_depth=3, min_samples_leaf=max(5, n_rows // 50), random_state=seed)
    if kind == "category":
        return make_pipeline(OneHotEncoder(handle_unknown="ignore", min_frequency=5),
                             LogisticRegression(C=1.0, max_iter=1000))
    if kind == "tokens":
        return make_pipeline(CountVectorizer(binary=True, min_df=5, token_pattern=r"[^ ]+", lowercase=True),
                             LogisticRegression(C=1.0, max_iter=1000))
    raise ValueError(f"kind must be one of {KINDS}. Got {kind!r} instead.")


def _matrix(c: Candidate) -> tuple[Any, np.ndarray]:
    """(model input, (n,) bool: value known) of a candidate."""
    if c.kind == "numeric":
        X = np.asarray(c.values, float)
        X = X.reshape(len(X), -1)
        return X, np.isfinite(X).any(axis=1)
    values = pd.Series(list(c.values), dtype=object)
    known = values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
    text = values.where(known, "").astype(str)
    if c.kind == "category":
        return text.to_numpy().reshape(-1, 1), known
    return text.tolist(), known


def _levels(X: Any, kind: str) -> int:
    if kind == "numeric":
        return int(len(np.unique(np.nan_to_num(np.asarray(X, float), nan=-np.inf), axis=0)))
    if kind == "category":
        return int(len(set(np.asarray(X).ravel().tolist())))
    return int(len({t for s in X for t in s.split()}))


def _take(X: Any, idx: np.ndarray) -> Any:
    return [X[i] for i in idx] if isinstance(X, list) else X[idx]


def _oof_scores(c: Candidate, X: Any, y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]],
                seed: int) -> np.ndarray:
    """Out-of-fold P(label 1) of the candidate's model; a training fold of one class (or whose tokens all fall
    under min_df) predicts its base rate."""
    out = np.full(len(y), np.nan)
    for tr, te in folds:
        prior = float(y[tr].mean()) if len(tr) else 0.5
        if len(np.unique(y[tr])) < 2:
            out[te] = prior
            continue
        model = candidate_model(c.kind, len(tr), seed)
        try:
            model.fit(_take(X, tr), y[tr])
        except ValueError:  # e.g. no token reaches min_df in this training fold: nothing to learn from
            out[te] = prior
            continue
        out[te] = model.predict_proba(_take(X, te))[:, 1]
    return out


def audit_candidates(candidates: Sequence[Candidate], y: np.ndarray,
                     folds: Sequence[tuple[np.ndarray, np.ndarray]], *, max_auc: float = 0.60,
                     n_resamples: int = 1000, confidence_level: float = 0.95, seed: int = 0
                     ) -> list[CandidateResult]:
    """Per candidate, its simple model's out-of-fold ROC AUC [bootstrap CI] on binary labels `y` (0/1) over the
    given (train, test) position folds; `flagged` when AUC > max_auc and the CI's low end > 0.5. A candidate
    with one value for every row (or none known) is skipped and says so."""
    y = np.asarray(y, int)
    if set(np.unique(y)) - {0, 1}:
        raise ValueError(f"the shortcut audit needs binary labels 0/1. Got classes {sorted(np.unique(y))} instead.")
    out = []
    for c in candidates:
        if c.kind not in KINDS:
            raise ValueError(f"candidate {c.name!r}: kind must be one of {KINDS}. Got {c.kind!r} instead.")
        X, known = _matrix(c)
        if len(known) != len(y):
            raise ValueError(f"candidate {c.name!r} has {len(known)} values for {len(y)} labels")
        res = CandidateResult(c.name, c.kind, c.what, n=len(y), n_known=int(known.sum()))
        res.levels = _levels(_take(X, np.flatnonzero(known)), c.kind) if known.any() else 0
        if not known.any():
            res.skipped = "unknown for every image"
        elif res.levels < 2 and known.all():
            res.skipped = "the same for every image"
        else:
            scores = _oof_scores(c, X, y, folds, seed)
            m = binary_metrics(y, scores, n_resamples=n_resamples, confidence_level=confidence_level, seed=seed)
            res.roc_auc, res.low, res.high = m["roc_auc"], m["roc_auc_ci_low"], m["roc_auc_ci_high"]
            res.flagged = bool(np.isfinite(res.roc_auc) and res.roc_auc > max_auc
                               and np.isfinite(res.low) and res.low > 0.5)
        out.append(res)
    return out


def flagged_names(results: Sequence[CandidateResult]) -> list[str]:
    """Names of the flagged candidates, highest AUC first."""
    return [r.name for r in sorted((r for r in results if r.flagged), key=lambda r: -float(r.roc_auc))]


def summary(results: Sequence[CandidateResult]) -> Mapping[str, Any]:
    """{flagged: [...], candidates: [...]} (JSON-able)."""
    return {"flagged": flagged_names(results), "candidates": [r.to_dict() for r in results]}
