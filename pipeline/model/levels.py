"""Fusing image probabilities into breasts (its views: mean or max) and exams (the most suspicious breast): the same
functions for cross-validation, the final fit and serving."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

__all__ = ["LEVELS", "fuse", "level_proba"]

LEVELS = ("image", "breast", "exam")


def fuse(p: np.ndarray, y: np.ndarray, ids: np.ndarray, how: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group ids, group label = any positive, group probability = mean or max of its rows), groups sorted."""
    if how not in ("mean", "max"):
        raise ValueError(f"fusion must be 'mean' or 'max'; got {how!r}")
    df = pd.DataFrame({"id": np.asarray(ids, str), "y": np.asarray(y, int), "p": np.asarray(p, float)})
    g = df.groupby("id", sort=True)
    return g.size().index.to_numpy(), g["y"].max().to_numpy(), g["p"].agg(how).to_numpy()


def level_proba(p: np.ndarray, y: np.ndarray, ids: Mapping[str, np.ndarray], how: str
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per level (ids, y, p); an exam's probability is the max over its breasts' fused probabilities."""
    out = {"image": fuse(p, y, ids["image"], "max"), "breast": fuse(p, y, ids["breast"], how)}
    b_ids, b_y, b_p = out["breast"]
    exam_of_breast = pd.Series(ids["exam"], index=ids["breast"]).groupby(level=0).first().reindex(b_ids).to_numpy()
    out["exam"] = fuse(b_p, b_y, exam_of_breast, "max")
    return out
