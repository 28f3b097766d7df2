"""Shared machinery of the image estimators: input layout, chunked parallel application, content-keyed cache.

Input layout (the project contract): X is (n_samples, H*W) flattened images, with (H, W) taken from the
estimator's ``image_shape`` parameter, else (S, S) with S = isqrt(n_features) when n_features is a perfect
square, else (1, n_features) (each row is a one-row image); a 3-D array (N, H, W) is accepted too and
flattened. Values are expected in [0, 1] and clipped to it.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from joblib import Memory, Parallel, delayed, effective_n_jobs
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

#: Images per unit of work: the grain of joblib parallelism and of the cache.
CHUNK_SIZE = 64


def resolve_memory(memory: None | str | Memory) -> Memory | None:
    """A joblib Memory from an estimator's ``memory`` parameter (None, a folder path, or a Memory)."""
    if memory is None:
        return None
    if isinstance(memory, Memory):
        return memory
    if isinstance(memory, (str, bytes)) or hasattr(memory, "__fspath__"):
        return Memory(location=memory, verbose=0)
    raise TypeError(
        f"memory must be None, a folder path or a joblib.Memory. Got {type(memory).__name__} instead."
    )


def _resolve(func_path: str) -> Callable[..., np.ndarray]:
    """The function named 'module:qualname', looked up at call time (so tests can patch it)."""
    module, name = func_path.split(":")
    return getattr(importlib.import_module(module), name)


def apply_per_image(func_path: str, kwargs: dict[str, Any], images: Sequence[np.ndarray]) -> np.ndarray:
    """Apply ``func(image, **kwargs)`` to each image and stack the flattened results: (n_images, n_out)."""
    func = _resolve(func_path)
    rows = [np.asarray(func(img, **kwargs)).reshape(-1) for img in images]
    return np.stack(rows) if rows else np.zeros((0, 0))


def map_images(
    func_path: str,
    kwargs: dict[str, Any],
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    n_jobs: int | None = None,
    memory: None | str | Memory = None,
) -> np.ndarray:
    """``apply_per_image`` over chunks of CHUNK_SIZE images, in parallel (joblib) and cached when asked.

    The cache key of a chunk is the function name, ``kwargs`` and the chunk's pixel content, so the same
    images with the same parameters are never computed twice (within a chunk grid of CHUNK_SIZE).
    """
    mem = resolve_memory(memory)
    work = mem.cache(apply_per_image) if mem is not None else apply_per_image
    chunks = [images[i : i + CHUNK_SIZE] for i in range(0, len(images), CHUNK_SIZE)]
    if len(chunks) <= 1 or effective_n_jobs(n_jobs) == 1:  # under a Dask backend n_jobs=None means the cluster
        parts = [work(func_path, kwargs, c) for c in chunks]
    else:
        parts = Parallel(n_jobs=n_jobs)(delayed(work)(func_path, kwargs, c) for c in chunks)
    return np.concatenate(parts, axis=0)


def flatten_input(X: Any) -> tuple[Any, tuple[int, int] | None]:
    """(X as 2-D, (H, W) when X came as a 3-D image batch else None); other inputs pass through."""
    if sparse.issparse(X) or not hasattr(X, "shape") and not isinstance(X, (list, tuple)):
        return X, None
    if not hasattr(X, "iloc") and np.ndim(X) == 3:
        arr = np.asarray(X)
        return arr.reshape(arr.shape[0], -1), (arr.shape[1], arr.shape[2])
    return X, None


def infer_image_shape(n_features: int, image_shape: Sequence[int] | None) -> tuple[int, int]:
    """(H, W) of a flattened row: ``image_shape`` if given, else square, else (1, n_features)."""
    if image_shape is not None:
        h, w = (int(s) for s in image_shape)
        if h * w != n_features:
            raise ValueError(
                f"image_shape={tuple(image_shape)} holds {h * w} pixels but X has {n_features} features."
            )
        return h, w
    s = math.isqrt(n_features)
    return (s, s) if s * s == n_features else (1, n_features)


class ImageTransformerBase(TransformerMixin, BaseEstimator):
    """Base of the per-image estimators: fit validates X and learns ``image_shape_``; transform maps images.

    Subclasses define ``_func`` ('module:function' applied to each (H, W) image) and ``_func_kwargs()``.
    They have ``image_shape``, ``n_jobs`` and ``memory`` parameters.
    """

    _func: str = ""
    _out_dtype = np.float32

    def _func_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_params(self) -> None:
        """Raise ValueError naming the parameter when one is out of range (override)."""

    def fit(self, X: Any, y: Any = None) -> "ImageTransformerBase":
        """Validate X (n_samples, H*W) or (N, H, W) and record the image shape; learns nothing else."""
        self._check_params()
        X2, shape3 = flatten_input(X)
        X2 = validate_data(self, X2, reset=True, dtype=[np.float32, np.float64])
        self.image_shape_ = shape3 if shape3 is not None else infer_image_shape(X2.shape[1], self.image_shape)
        return self

    def _images(self, X: Any) -> np.ndarray:
        """Validated input of transform as float32 (N, H, W)."""
        check_is_fitted(self)
        X2, shape3 = flatten_input(X)
        X2 = validate_data(self, X2, reset=False, dtype=[np.float32, np.float64])
        if shape3 is not None and shape3 != tuple(self.image_shape_):
            raise ValueError(f"X holds images of shape {shape3}, but {type(self).__name__} was fitted on "
                             f"{tuple(self.image_shape_)}.")
        return np.asarray(X2, dtype=np.float32).reshape((X2.shape[0],) + tuple(self.image_shape_))

    def transform(self, X: Any) -> np.ndarray:
        """Apply the per-image function to each sample: (n_samples, n_features_out)."""
        images = self._images(X)
        out = map_images(self._func, self._func_kwargs(), images, n_jobs=self.n_jobs, memory=self.memory)
        if out.size == 0:
            out = out.reshape(images.shape[0], -1)
        return out.astype(self._out_dtype, copy=False)
