"""Patient-level splits: StratifiedGroupKFold over patients, shuffled with a seed; no patient crosses."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["patient_stratified_folds"]

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
