"""Helpers for the registry tests: tiny real pipelines on separable synthetic data, and store switching."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier

N_FEATURES = 8


def separable_data(n: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (n, N_FEATURES) float32 and y in {0, 1}, separable by the sign of x0 + x1 with a margin."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    X[:, 0] += np.where(y == 1, 0.5, -0.5).astype(np.float32)
    return X, y


def strong_pipeline(X: np.ndarray, y: np.ndarray) -> Pipeline:
    """Frozen scaler -> CalibratedClassifierCV(FrozenEstimator(XGBClassifier)): fit one half, calibrate the other."""
    half = len(X) // 2
    scaler = StandardScaler().fit(X[:half])
    xgb = XGBClassifier(n_estimators=30, max_depth=2, learning_rate=0.3, n_jobs=1, random_state=0)
    xgb.fit(scaler.transform(X[:half]), y[:half])
    pipe = Pipeline([("scale", FrozenEstimator(scaler)), ("clf", CalibratedClassifierCV(FrozenEstimator(xgb)))])
    return pipe.fit(X[half:], y[half:])


def weak_pipeline(X: np.ndarray, y: np.ndarray) -> Pipeline:
    """StandardScaler -> CalibratedClassifierCV(XGBClassifier stumps, cv=3), fitted on labels half shuffled."""
    rng = np.random.default_rng(1)
    noisy = y.copy()
    flip = rng.random(len(y)) < 0.35
    noisy[flip] = 1 - noisy[flip]
    xgb = XGBClassifier(n_estimators=3, max_depth=1, n_jobs=1, random_state=0)
    pipe = Pipeline([("scale", StandardScaler()), ("clf", CalibratedClassifierCV(xgb, cv=3))])
    return pipe.fit(X, noisy)


@contextmanager
def tracking_store(uri: str) -> Iterator[str]:
    """Point the registry at `uri` for a block; restore the previous configuration and env afterwards."""
    from registry import store

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    previous = store.configured_uri()
    try:
        yield store.configure(uri)
    finally:
        store.reset()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if previous is not None:
            store.configure(previous)
