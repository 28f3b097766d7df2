"""Fine-tuning from the sample store on disk: Pipeline rows that reference a store row instead of holding pixels.

An experiment whose feature union has stateful branches (a fine-tuned CNN) cannot be streamed to a feature matrix
alone (the training stream's split_pipeline). It splits instead into (`split_samples`):

* the **front**: ``preprocess`` and the frozen branches (CachedTransformers), streamed to feature rows as usual;
* the **pixel branches** (FineTunedEmbedder): fitted in-fold on samples, which live in a store on disk
  (`stream.stream_samples`: the prepared sample of table row i is store row i);
* the **head** (``select``, ``classifier``).

The training rows are then ``[frozen features | store row]`` (`rows_matrix`) and the cross-validated estimator is
an ordinary Pipeline (`store_pipeline`): a ColumnTransformer passes each frozen branch's columns through and hands
the store-row column to `SampleRows`, which gives its estimator a `cnn.rows.LazyRows` view of those rows (read one
batch at a time by fine-tuning and embedding), then ``select`` and ``classifier`` as in the experiment's Pipeline.
Column blocks keep the feature union's order, so the classifier sees the matrix the in-memory Pipeline builds.
`image_pipeline` turns a fitted one back into the image -> probability Pipeline that is registered and served.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, TransformerMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["SampleRows", "SampleLayout", "split_samples", "rows_matrix", "store_pipeline", "image_pipeline"]

MAX_EXACT_ROW = 2 ** 24  # store rows travel as a float column: exact in float32 below this


class SampleRows(MetaEstimatorMixin, TransformerMixin, BaseEstimator):
    """X (n, 1): positions of rows in the sample store `store` (an .npy file); `estimator` is fitted on and
    transforms a lazy view of those rows (cnn.rows.LazyRows), so only the batch it reads is ever in memory."""

    def __init__(self, estimator: Any = None, store: str | None = None) -> None:
        self.estimator = estimator
        self.store = store

    def _rows(self, X: Any, *, reset: bool) -> Any:
        from cnn.rows import LazyRows

        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        if X.shape[1] != 1:
            raise ValueError(f"SampleRows expects one column of store rows; got {X.shape[1]} columns.")
        rows = X[:, 0]
        if not np.array_equal(rows, np.round(rows)):
            raise ValueError("SampleRows: the store-row column holds non-integer values.")
        if not self.store:
            raise ValueError("SampleRows needs the path of its sample store (store=...).")
        return LazyRows(np.load(self.store, mmap_mode="r"), rows.astype(np.intp))

    def fit(self, X: Any, y: Any = None, groups: Any = None) -> "SampleRows":
        """Fit a clone of `estimator` on the store rows X names (groups passed on when given); returns self."""
        rows = self._rows(X, reset=True)
        est = clone(self.estimator)
        self.estimator_ = est.fit(rows, y) if groups is None else est.fit(rows, y, groups=groups)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The fitted estimator's output for the store rows X names."""
        check_is_fitted(self)
        return self.estimator_.transform(self._rows(X, reset=False))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return self.estimator_.get_feature_names_out()


@dataclass(frozen=True)
class SampleLayout:
    """How the rows of a fine-tuning experiment are laid out: the store file and, per feature-union branch in
    order, its kind ("frozen": a block of `width` feature columns; "pixels": the store-row column)."""

    store: str
    branches: tuple          # ((name, "frozen" | "pixels", width), ...)

    @property
    def n_frozen(self) -> int:
        return sum(w for _, kind, w in self.branches if kind == "frozen")


def split_samples(pipe: Pipeline) -> tuple[Pipeline, list[tuple[str, Any]], Pipeline] | None:
    """(front: preprocess + the frozen branches, [(name, stateful branch)], head: select + classifier), or None
    when the Pipeline is not preprocess -> features -> ... with frozen preprocessing and some stateful branch."""
    from pipeline.model.estimators import CachedTransformer

    if [n for n, _ in pipe.steps[:2]] != ["preprocess", "features"]:
        return None
    pre, union = pipe.steps[0][1], pipe.steps[1][1]
    if not (pre in (None, "passthrough") or isinstance(pre, CachedTransformer)):
        return None
    if not isinstance(union, FeatureUnion):
        return None
    frozen = [(n, t) for n, t in union.transformer_list if isinstance(t, CachedTransformer)]
    pixels = [(n, t) for n, t in union.transformer_list if not isinstance(t, CachedTransformer)]
    if not pixels:
        return None
    front_steps = [("preprocess", pre)] + ([("features", FeatureUnion(frozen))] if frozen else [])
    return Pipeline(front_steps), pixels, Pipeline(pipe.steps[2:])


def branch_widths(front: Pipeline, example: np.ndarray) -> dict[str, int]:
    """Columns each frozen branch of a fitted front makes (measured on an example sample)."""
    if len(front.steps) < 2:
        return {}
    x = front.steps[0][1]
    x = np.asarray(example if x in (None, "passthrough") else x.transform(example), dtype=np.float32)
    return {name: int(np.asarray(t.transform(x[:1])).shape[1]) for name, t in front.steps[1][1].transformer_list}


def layout(pipe: Pipeline, front: Pipeline, example: np.ndarray, store: str | Path) -> SampleLayout:
    """The SampleLayout of an experiment's Pipeline, its fitted front and its sample store."""
    widths = branch_widths(front, example)
    branches = tuple((n, "frozen", widths[n]) if n in widths else (n, "pixels", 1)
                     for n, _ in pipe.steps[1][1].transformer_list)
    return SampleLayout(str(store), branches)


def rows_matrix(features: np.ndarray, store_rows: np.ndarray) -> np.ndarray:
    """Training rows ``[frozen features | store row]`` in the frozen features' dtype (row numbers exact)."""
    dtype = np.result_type(features.dtype, np.float32)
    if len(store_rows) and int(np.max(store_rows)) >= MAX_EXACT_ROW and dtype == np.float32:
        dtype = np.dtype(np.float64)
    return np.column_stack([features.astype(dtype, copy=False), np.asarray(store_rows, dtype=dtype)])


def store_pipeline(pipe: Pipeline, lay: SampleLayout) -> Pipeline:
    """The estimator cross-validated on `rows_matrix` rows: branch blocks in union order, then select, classifier."""
    from pipeline.model.routing import request_groups, routing

    union = dict(pipe.steps[1][1].transformer_list)
    parts: list[tuple[str, Any, Any]] = []
    start = 0
    for name, kind, width in lay.branches:
        if kind == "frozen":
            parts.append((name, "passthrough", list(range(start, start + width))))
            start += width
        else:
            step = SampleRows(union[name], lay.store)
            with routing():
                requests = union[name].get_metadata_routing().fit.requests
            parts.append((name, request_groups(step) if requests.get("groups") else step, [lay.n_frozen]))
    columns = ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)
    return Pipeline([("features", columns)] + list(pipe.steps[2:]))


def image_pipeline(front: Pipeline, fitted: Pipeline) -> Pipeline:
    """The image -> probability Pipeline of a fitted `store_pipeline`: preprocess, the feature union of the front's
    frozen branches and the fitted pixel estimators (in the layout's order), then select and classifier."""
    columns = fitted.steps[0][1]
    frozen = dict(front.steps[1][1].transformer_list) if len(front.steps) > 1 else {}
    branches = [(name, frozen[name] if name in frozen else columns.named_transformers_[name].estimator_)
                for name, _, _ in columns.transformers]
    return Pipeline([front.steps[0], ("features", FeatureUnion(branches))] + list(fitted.steps[1:]))
