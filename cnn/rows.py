"""Rows of an array on disk, read only when indexed: what fine-tuning and embedding need from a sample store.

``LazyRows(base, rows)`` stands for ``base[rows]`` (base: (n, d) or (n, H, W), typically a read-only memmap of a
sample store) without reading it: ``len``, ``shape``, ``dtype`` come from the index, and indexing with an int array
or a slice reads just those rows, so a cross-validation fold of a store on disk costs its index, not its pixels.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LazyRows"]


class LazyRows:
    """``base[rows]`` read on demand: ``self[key]`` is ``np.asarray(base[rows[key]])`` (only those rows read)."""

    def __init__(self, base: Any, rows: Any, shape: tuple[int, ...] | None = None) -> None:
        self.base = base
        self.rows = np.asarray(rows, dtype=np.intp).reshape(-1)
        self.item_shape = tuple(shape) if shape is not None else tuple(base.shape[1:])
        if int(np.prod(self.item_shape)) != int(np.prod(base.shape[1:])):
            raise ValueError(f"rows of shape {tuple(base.shape[1:])} cannot be viewed as {self.item_shape}")
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(base)):
            raise IndexError(f"row index out of range for an array of {len(base)} rows")

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def reshape(self, n: int, *item_shape: int) -> "LazyRows":
        """The same rows seen with another per-row shape (nothing read)."""
        if n != len(self.rows):
            raise ValueError(f"cannot reshape {len(self.rows)} rows to {n}")
        return LazyRows(self.base, self.rows, item_shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        picked = self.rows[key]
        if np.ndim(picked) == 0:
            return np.asarray(self.base[int(picked)]).reshape(self.item_shape)
        return np.asarray(self.base[picked]).reshape(len(picked), *self.item_shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every row, read (what np.asarray does: avoided on the fine-tuning path)."""
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype, copy=False)
