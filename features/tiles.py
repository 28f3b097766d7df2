"""Tiles of a high-resolution breast: a grid inside the breast mask, CNN embeddings per tile, pooling, a tile scorer.

Layout between the steps (the "tile matrix"): one row per image, ``max_tiles`` slots of ``1 + D`` values each,
``[valid, embedding (D)]``; unused slots are all zeros. The tile positions are not stored: `tile_grid` recomputes
them from the image (it is deterministic), which is what `tile_heatmap` needs to place the tile scores.

* `TileEmbedder`   X (n, R*R) masked breast at high resolution -> tile matrix (n, max_tiles * (1 + D)) (stateless,
                   cacheable per image).
* `TilePooling`    tile matrix -> [n_tiles, max, mean, top-k mean of the embeddings] (stateless).
* `TileScorer`     tile matrix -> instance-level (MIL) classifier: every tile inherits its image's label; an image's
                   probability is the mean of its k most suspicious tiles; `tile_proba` gives the per-tile scores.
* `tile_heatmap`   per-tile scores -> a map over the image (Hann-weighted average of the tiles covering a pixel).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["tile_grid", "tile_heatmap", "TileEmbedder", "TilePooling", "TileScorer", "POOLINGS"]

POOLINGS = ("max", "mean", "topk")
FLIPS = {"none": ((False, False),),  # test-time flips of each tile whose embeddings are averaged: (up-down, left-right)
         "h": ((False, False), (False, True)),
         "hv": ((False, False), (False, True), (True, False), (True, True))}
SHIFTS = ((0, 0), (1, 1), (-1, -1))  # test-time shifts of each tile (shift > 0): its corner moved by these x shift px
_CHUNK = 32  # images whose tiles are embedded together


def _positions(length: int, tile: int, stride: int) -> list[int]:
    last = max(length - tile, 0)
    pos = list(range(0, last + 1, stride))
    if pos[-1] != last:
        pos.append(last)
    return pos


def tile_grid(mask: np.ndarray, tile: int, overlap: float = 0.5, max_tiles: int = 16,
              min_breast: float = 0.25) -> list[tuple[int, int]]:
    """(y0, x0) corners of overlapping `tile`-px squares whose share of `mask` is >= `min_breast`, raster order.

    At most `max_tiles` (the most breast first); at least one (the tile with the most breast). An image smaller
    than a tile gives the single corner (0, 0) (the caller pads)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    stride = max(1, int(round(tile * (1.0 - float(overlap)))))
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    cands = []
    for y0 in _positions(h, tile, stride):
        for x0 in _positions(w, tile, stride):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            cands.append((inside / float(tile * tile), y0, x0))
    keep = [c for c in cands if c[0] >= min_breast] or [max(cands, key=lambda c: c[0])]
    keep = sorted(keep, key=lambda c: -c[0])[: int(max_tiles)]
    return sorted((y0, x0) for _, y0, x0 in keep)


def tile_heatmap(shape: tuple[int, int], corners: list[tuple[int, int]], scores: np.ndarray, tile: int,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """float32 map of `shape`: at each pixel the Hann-window-weighted mean score of the tiles covering it (0 where
    none does, and outside `mask` when given)."""
    h, w = shape
    acc = np.zeros((max(h, tile), max(w, tile)), np.float64)
    wsum = np.zeros_like(acc)
    win = np.outer(np.hanning(tile + 2)[1:-1], np.hanning(tile + 2)[1:-1])
    for (y0, x0), s in zip(corners, np.asarray(scores, dtype=float)):
        acc[y0:y0 + tile, x0:x0 + tile] += win * s
        wsum[y0:y0 + tile, x0:x0 + tile] += win
    out = np.where(wsum > 0, acc / np.maximum(wsum, 1e-12), 0.0)[:h, :w]
    if mask is not None:
        out = np.where(np.asarray(mask, dtype=bool), out, 0.0)
    return out.astype(np.float32)


def _images(X: np.ndarray, image_shape: Any) -> np.ndarray:
    n, d = X.shape
    if image_shape is not None:
        h, w = (int(v) for v in image_shape)
        if h * w != d:
            raise ValueError(f"The 'image_shape' parameter {tuple(image_shape)} holds {h * w} pixels, but X has "
                             f"{d} features.")
    else:
        s = math.isqrt(d)
        h, w = (s, s) if s * s == d else (1, d)
    return X.reshape(n, h, w)


class TileEmbedder(TransformerMixin, BaseEstimator):
    """Embed the tiles inside the breast of each image: X (n, H*W) in [0, 1] -> tile matrix (n, max_tiles*(1+D)).

    The breast is the non-zero pixels (samples are masked). Tiles: `tile_size` px, `overlap` in [0, 1), at most
    `max_tiles`, each with at least `min_breast` of its area inside the breast (see `tile_grid`). The CNN parameters
    are those of cnn.embedder.CNNEmbedder (the tiles are embedded at their own size, `tile_size`).
    `flips`: each tile is also embedded mirrored left-right ("h"; "hv": and up-down, and both) and the embeddings
    are averaged, in training and at scoring alike (test-time augmentation at the feature level: a lesion looks
    the same mirrored; the CNN's response to it does not quite). Costs 2x ("h") or 4x ("hv") the CNN passes.
    `shift` (px, 0 = off): each tile is also embedded at its corner moved diagonally by +shift and -shift px (kept
    inside the image) and the embeddings are averaged with the flips' (3x the CNN passes): a lesion on a tile's edge
    is seen whole by a neighbour view. The tile positions (`tiles_of`, the map) are the unshifted corners.
    `input_size` (px, None = `tile_size`): the side each tile is resized to before the CNN, e.g. a backbone's native
    ImageNet input (EfficientNet-Lite2: 260), so that the tile's structures reach the net at the scale it learned.
    """

    def __init__(self, tile_size: int = 224, overlap: float = 0.5, max_tiles: int = 16, min_breast: float = 0.25,
                 backbone: str = "efficientnet_lite0", weights: str = "imagenet", pooling: str = "avg",
                 batch_size: int = 32, n_threads: int | None = None, device: str = "cpu",
                 image_shape: tuple[int, int] | None = None, flips: str = "none", shift: int = 0,
                 input_size: int | None = None) -> None:
        self.tile_size = tile_size
        self.overlap = overlap
        self.max_tiles = max_tiles
        self.min_breast = min_breast
        self.backbone = backbone
        self.weights = weights
        self.pooling = pooling
        self.batch_size = batch_size
        self.n_threads = n_threads
        self.device = device
        self.image_shape = image_shape
        self.flips = flips
        self.shift = shift
        self.input_size = input_size

    def _check_params(self) -> None:
        if self.flips not in FLIPS:
            raise ValueError(f"The 'flips' parameter of TileEmbedder must be one of {sorted(FLIPS)}. Got "
                             f"{self.flips!r} instead.")
        if not isinstance(self.shift, int) or isinstance(self.shift, bool) or self.shift < 0:
            raise ValueError(f"The 'shift' parameter of TileEmbedder must be an int >= 0 (px). Got {self.shift!r} "
                             "instead.")
        if self.input_size is not None and (not isinstance(self.input_size, int) or isinstance(self.input_size, bool)
                                            or self.input_size < 8):
            raise ValueError(f"The 'input_size' parameter of TileEmbedder must be an int >= 8 (px) or None. Got "
                             f"{self.input_size!r} instead.")
        if not isinstance(self.tile_size, int) or self.tile_size < 8:
            raise ValueError(f"The 'tile_size' parameter of TileEmbedder must be an int >= 8. Got {self.tile_size!r}"
                             " instead.")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"The 'overlap' parameter of TileEmbedder must be in [0, 1). Got {self.overlap!r} "
                             "instead.")
        if not isinstance(self.max_tiles, int) or self.max_tiles < 1:
            raise ValueError(f"The 'max_tiles' parameter of TileEmbedder must be an int >= 1. Got "
                             f"{self.max_tiles!r} instead.")
        if not 0.0 <= float(self.min_breast) <= 1.0:
            raise ValueError(f"The 'min_breast' parameter of TileEmbedder must be in [0, 1]. Got "
                             f"{self.min_breast!r} instead.")

    def fit(self, X: Any, y: Any = None) -> "TileEmbedder":
        """Validate X and build the CNN (no training); returns self."""
        from cnn.embedder import CNNEmbedder

        self._check_params()
        X = validate_data(self, X, reset=True, dtype=np.float32)
        _images(X, self.image_shape)
        t = int(self.tile_size)
        self.embedder_ = CNNEmbedder(backbone=self.backbone, weights=self.weights, pooling=self.pooling,
                                     input_size=int(self.input_size or t), batch_size=self.batch_size,
                                     n_threads=self.n_threads,
                                     device=self.device).fit(np.zeros((1, t * t), np.float32))
        self.n_embedding_ = int(self.embedder_.n_embedding_)
        return self

    def tiles_of(self, image: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
        """(corners, tiles (k, tile, tile)) of one (H, W) image, padded with zeros to at least one tile."""
        corners, views = self._views(image)
        return corners, views[0]

    def _views(self, image: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
        """(corners, tiles (s, k, tile, tile)): view 0 the tiles at `corners`, then (shift > 0) the shifted ones."""
        t = int(self.tile_size)
        image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        h, w = image.shape
        if h < t or w < t:
            image = np.pad(image, ((0, max(t - h, 0)), (0, max(t - w, 0))))
            h, w = image.shape
        corners = tile_grid(image > 0, t, float(self.overlap), int(self.max_tiles), float(self.min_breast))
        offsets = SHIFTS if int(self.shift) > 0 else SHIFTS[:1]
        views = []
        for dy, dx in offsets:
            at = [(min(max(y + dy * int(self.shift), 0), h - t), min(max(x + dx * int(self.shift), 0), w - t))
                  for y, x in corners]
            views.append(np.stack([image[y:y + t, x:x + t] for y, x in at]))
        return corners, np.stack(views)

    def transform(self, X: Any) -> np.ndarray:
        """The tile matrix (n, max_tiles * (1 + n_embedding_)) float32."""
        check_is_fitted(self, "embedder_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        images = _images(X, self.image_shape)
        t, k, d = int(self.tile_size), int(self.max_tiles), self.n_embedding_
        out = np.zeros((len(images), k, 1 + d), np.float32)
        for start in range(0, len(images), _CHUNK):  # bounded memory: the tiles of _CHUNK images at a time
            tiles, owners = [], []
            for i in range(start, min(start + _CHUNK, len(images))):
                _, views = self._views(images[i])
                tiles.append(views)
                owners += [(i, j) for j in range(views.shape[1])]
            emb = self._embed(np.concatenate(tiles, axis=1))
            for (i, j), e in zip(owners, emb):
                out[i, j, 0] = 1.0
                out[i, j, 1:] = e
        return out.reshape(len(images), k * (1 + d))

    def __setstate__(self, state: dict) -> None:
        state.setdefault("flips", "none")  # models pickled before the parameters existed embedded tiles unflipped
        state.setdefault("shift", 0)  # and unshifted
        super().__setstate__(state)

    def _embed(self, tiles: np.ndarray) -> np.ndarray:
        """(m, D) embeddings of tiles (s, m, t, t), s shifted views of m tiles: the mean over the views and the
        `flips` of each."""
        t = int(self.tile_size)
        flips = FLIPS[self.flips]
        if len(flips) == 1 and len(tiles) == 1:
            return self.embedder_.transform(tiles[0].reshape(-1, t * t))
        stacked = np.concatenate([view[:, ::-1 if ud else 1, ::-1 if lr else 1] for view in tiles
                                  for ud, lr in flips])
        emb = self.embedder_.transform(np.ascontiguousarray(stacked).reshape(-1, t * t))
        n_views = len(tiles) * len(flips)
        return emb.reshape(n_views, tiles.shape[1], -1).mean(axis=0, dtype=np.float64).astype(np.float32)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _slots(T: np.ndarray, max_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """(slots (n, k, w), valid (n, k)) of a tile matrix; a slot is valid when any of its values is non-zero."""
    n, d = T.shape
    k = int(max_tiles)
    if d % k:
        raise ValueError(f"X has {d} features, not a multiple of max_tiles={k}: is it TileEmbedder's output?")
    slots = T.reshape(n, k, d // k)
    return slots, np.any(slots != 0, axis=2)


class TilePooling(TransformerMixin, BaseEstimator):
    """Pool a tile matrix into image features: [n_tiles] + per pooling (max, mean, topk) the D embedding values.

    topk: per dimension the mean of its `top_k` largest values over the image's tiles. Images without tiles get 0.
    """

    def __init__(self, max_tiles: int = 16, poolings: tuple[str, ...] = POOLINGS, top_k: int = 3) -> None:
        self.max_tiles = max_tiles
        self.poolings = poolings
        self.top_k = top_k

    def fit(self, X: Any, y: Any = None) -> "TilePooling":
        bad = [p for p in self.poolings if p not in POOLINGS] if not isinstance(self.poolings, str) else [1]
        if bad or not self.poolings:
            raise ValueError(f"The 'poolings' parameter of TilePooling must be a non-empty tuple of {POOLINGS}. "
                             f"Got {self.poolings!r} instead.")
        X = validate_data(self, X, reset=True, dtype=np.float32)
        _slots(X, self.max_tiles)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        slots, valid = _slots(X, self.max_tiles)
        emb = slots[:, :, 1:]
        n_tiles = valid.sum(axis=1, keepdims=True).astype(np.float32)
        parts = [n_tiles]
        lowest = np.where(valid[:, :, None], emb, -np.inf)
        for p in self.poolings:
            if p == "max":
                parts.append(np.where(n_tiles > 0, lowest.max(axis=1, initial=-np.inf), 0.0))
            elif p == "mean":
                parts.append((emb * valid[:, :, None]).sum(axis=1) / np.maximum(n_tiles, 1.0))
            else:
                k = max(1, min(int(self.top_k), slots.shape[1]))
                top = -np.sort(-lowest, axis=1)[:, :k]
                cnt = np.minimum(n_tiles, k)
                parts.append(np.where(np.isfinite(top), top, 0.0).sum(axis=1) / np.maximum(cnt, 1.0))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class TileScorer(ClassifierMixin, BaseEstimator):
    """Instance-level (multiple-instance) classifier on a tile matrix: each valid tile inherits its image's label,
    a standardised L2 logistic regression scores tiles, an image's probabilities are those of its `top_k` most
    suspicious tiles (lowest probability of the first class) averaged. Fit it on training images only."""

    def __init__(self, max_tiles: int = 16, top_k: int = 1, C: float = 0.01, random_state: int = 0) -> None:
        self.max_tiles = max_tiles
        self.top_k = top_k
        self.C = C
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "TileScorer":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X, y = validate_data(self, X, y, reset=True, dtype=np.float32)
        slots, valid = _slots(X, self.max_tiles)
        rows, cols = np.nonzero(valid)
        if rows.size == 0:
            raise ValueError("TileScorer: no valid tile in X (every slot is zero).")
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=float(self.C), class_weight="balanced",
                                                                         max_iter=1000))
        self.model_.fit(slots[rows, cols], np.asarray(y)[rows])
        self.classes_ = self.model_.classes_
        return self

    def tile_proba(self, X: Any) -> np.ndarray:
        """(n, max_tiles, n_classes) tile probabilities; NaN in slots without a tile."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        slots, valid = _slots(X, self.max_tiles)
        out = np.full(slots.shape[:2] + (len(self.classes_),), np.nan)
        rows, cols = np.nonzero(valid)
        if rows.size:
            out[rows, cols] = self.model_.predict_proba(slots[rows, cols])
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        tp = self.tile_proba(X)
        k = max(1, int(self.top_k))
        out = np.empty((tp.shape[0], tp.shape[2]))
        for i, tiles in enumerate(tp):
            tiles = tiles[~np.isnan(tiles[:, 0])]
            if len(tiles) == 0:
                out[i] = 1.0 / tp.shape[2]
                continue
            out[i] = tiles[np.argsort(tiles[:, 0], kind="stable")[:k]].mean(axis=0)
        return out

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
