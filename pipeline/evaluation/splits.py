"""Patient-level splits: StratifiedGroupKFold over patients, shuffled with a seed; no patient crosses."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["patient_stratified_folds", "train_only_folds", "train_only_mask"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------------
def patient_stratified_folds(y: Sequence, groups: Sequence, n_splits: int, seed: int
                             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, test_idx) pairs: StratifiedGroupKFold over patients, shuffled with `seed`; no patient crosses.

    n_splits is lowered to the number of patients of the rarest class when there are fewer (with a warning).
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    per_class = min(len(np.unique(groups[y == c])) for c in np.unique(y))
    k = min(n_splits, n_groups, max(per_class, 2))
    if k < n_splits:
        log.warning("only %d patients in the rarest class: using %d folds instead of %d", per_class, k, n_splits)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]


def train_only_mask(train_only: Sequence | None, n: int) -> np.ndarray:
    """(n,) bool: the rows that only train (augmented copies), all False for None; a clear error for a bad mask."""
    if train_only is None:
        return np.zeros(n, bool)
    mask = np.asarray(train_only)
    if mask.shape != (n,) or mask.dtype != bool:
        raise ValueError(f"augmented must be a boolean array of one entry per row ({n}); got dtype {mask.dtype} "
                         f"and shape {mask.shape}")
    if mask.all():
        raise ValueError("every row is marked augmented: at least the original images must be held out to "
                         "calibrate and choose operating points on; mark only the copies")
    return mask


def train_only_folds(y: Sequence, groups: Sequence, train_only: np.ndarray, n_splits: int, seed: int
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient folds whose held-out side holds only rows that may be held out (originals): the folds of
    `patient_stratified_folds` over those rows, and every row of another patient (a copy included) on the training
    side. Augmented copies share their patient's id, so a copy never trains a model that scores its original."""
    y, groups = np.asarray(y), np.asarray(groups)
    own = np.flatnonzero(~np.asarray(train_only, bool))
    out = []
    for _, va in patient_stratified_folds(y[own], groups[own], n_splits, seed):
        held = own[va]
        out.append((np.flatnonzero(~np.isin(groups, groups[held])), held))
    return out
