"""Patient groups through scikit-learn metadata routing: every step that splits its training data asks for them.

Routing is switched on only inside these helpers (`sklearn.config_context(enable_metadata_routing=True)`), never
globally: `build_pipeline` marks the steps that split (the calibrated classifier's inner folds, the fine-tuning
early-stopping split) with `set_fit_request(groups=True)`, and `fit_with_groups` fits a Pipeline with
`groups=` so each of them receives the patient ids of exactly the rows it is fitted on.
"""
from __future__ import annotations

from typing import Any

import sklearn

__all__ = ["routing", "request_groups", "fit_with_groups", "strip_requests"]


def routing():
    """A context in which scikit-learn metadata routing is enabled (thread-local, restored on exit)."""
    return sklearn.config_context(enable_metadata_routing=True)


def request_groups(estimator: Any) -> Any:
    """`estimator.set_fit_request(groups=True)` (routing enabled for the call), and `augmented=True` where its fit
    takes the rows that only train (pipeline.model.estimators.PatientCalibratedClassifier); returns the estimator."""
    import inspect

    wanted = {"groups": True}
    if "augmented" in inspect.signature(estimator.fit).parameters:
        wanted["augmented"] = True
    with routing():
        return estimator.set_fit_request(**wanted)


def fit_with_groups(estimator: Any, X: Any, y: Any, groups: Any, augmented: Any = None) -> Any:
    """`estimator.fit(X, y, groups=groups)` with routing on: groups reach every step that requested them; with
    `augmented` (bool per row: training-time copies) it reaches the classifier, which never holds those rows out."""
    with routing():
        if augmented is None:
            return estimator.fit(X, y, groups=groups)
        return estimator.fit(X, y, groups=groups, augmented=augmented)


def strip_requests(estimator: Any) -> Any:
    """Drop the routing requests of `estimator` and its sub-estimators (a served model routes nothing, and the
    request objects are not types the model file should need to trust); returns it."""
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen or not hasattr(obj, "get_params"):
            return
        seen.add(id(obj))
        obj.__dict__.pop("_metadata_request", None)
        for value in list(vars(obj).values()):
            if isinstance(value, (list, tuple)):
                for item in value:
                    walk(item[1] if isinstance(item, tuple) and len(item) >= 2 else item)
            else:
                walk(value)

    walk(estimator)
    return estimator
