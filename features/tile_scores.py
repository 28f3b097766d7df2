"""Tile evidence as image features (switch ``screening.tile_scores``): the k highest tile probabilities of an
instance-level `TileScorer` fitted on the training images, cross-fitted inside a fit.

Kept apart from features/tiles.py so that the tile embeddings' cache key (the source of that module) is unchanged.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from features.tiles import TileScorer, _slots

__all__ = ["TileScoreFeatures"]


class TileScoreFeatures(TransformerMixin, BaseEstimator):
    """Tile matrix -> the `k` highest tile probabilities (descending) of an instance-level `TileScorer` fitted on the
    training images; 0 where an image has fewer tiles. `fit_transform` returns cross-fitted values (`folds`
    patient-grouped folds when `groups` are routed to it, else stratified), so the next step never sees a
    training image scored by a tile scorer fitted on that image; `transform` uses the scorer fitted on all rows."""

    def __init__(self, max_tiles: int = 16, k: int = 3, C: float = 0.01, folds: int = 3, random_state: int = 0) -> None:
        self.max_tiles = max_tiles
        self.k = k
        self.C = C
        self.folds = folds
        self.random_state = random_state

    def _scorer(self) -> TileScorer:
        return TileScorer(max_tiles=self.max_tiles, top_k=1, C=self.C, random_state=self.random_state)

    def _top(self, scorer: TileScorer, X: np.ndarray) -> np.ndarray:
        tp = scorer.tile_proba(X)[:, :, -1]
        k = min(int(self.k), tp.shape[1])
        return np.nan_to_num(-np.sort(-np.nan_to_num(tp, nan=-1.0), axis=1)[:, :k], nan=0.0).clip(0.0, 1.0)

    def fit(self, X: Any, y: Any, groups: Any = None) -> "TileScoreFeatures":
        if int(self.k) < 1 or int(self.folds) < 2:
            raise ValueError(f"TileScoreFeatures: k must be >= 1 and folds >= 2; got k={self.k}, folds={self.folds}")
        X, y = validate_data(self, X, y, reset=True, dtype=np.float32)
        self.scorer_ = self._scorer().fit(X, y)
        return self

    def fit_transform(self, X: Any, y: Any = None, groups: Any = None, **fit_params: Any) -> np.ndarray:
        from sklearn.model_selection import GroupKFold, StratifiedKFold

        self.fit(X, y, groups)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        y = np.asarray(y)
        out = self._top(self.scorer_, X)
        _, counts = np.unique(y, return_counts=True)
        if groups is not None and len(np.unique(groups)) >= int(self.folds):
            splits = GroupKFold(n_splits=int(self.folds)).split(X, y, np.asarray(groups))
        elif len(counts) > 1 and counts.min() >= int(self.folds):
            splits = StratifiedKFold(int(self.folds), shuffle=True, random_state=self.random_state).split(X, y)
        else:
            return out  # too few rows to cross-fit: the in-sample scores
        for tr, te in splits:
            if len(np.unique(y[tr])) < 2 or not _slots(X[tr], self.max_tiles)[1].any():
                continue
            out[te] = self._top(self._scorer().fit(X[tr], y[tr]), X[te])
        return out

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "scorer_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return self._top(self.scorer_, X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
