"""CachedTransformer's key includes a code version: editing a feature's code makes its cached rows miss."""
from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np

from pipeline.model.estimators import CachedTransformer

FEATURE = '''
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class MeanFeature(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X).mean(axis=1, keepdims=True) * {factor}
'''


def test_editing_a_feature_invalidates_its_cached_rows(tmp_path, monkeypatch):
    package = tmp_path / "src"
    package.mkdir()
    module = package / "mammoscope_test_feature.py"
    module.write_text(textwrap.dedent(FEATURE.format(factor=1.0)))
    monkeypatch.syspath_prepend(str(package))
    mod = importlib.import_module("mammoscope_test_feature")
    X = np.random.default_rng(0).random((5, 16)).astype(np.float32)
    cache = tmp_path / "cache"
    first = CachedTransformer(mod.MeanFeature(), str(cache)).fit(X).transform(X)
    again = CachedTransformer(mod.MeanFeature(), str(cache)).fit(X).transform(X)
    np.testing.assert_array_equal(first, again)
    assert len(list(cache.iterdir())) == 1  # one step folder, hit the second time

    module.write_text(textwrap.dedent(FEATURE.format(factor=2.0)))  # edit the feature (same class, same params)
    importlib.invalidate_caches()
    mod = importlib.reload(mod)
    edited = CachedTransformer(mod.MeanFeature(), str(cache)).fit(X).transform(X)
    np.testing.assert_allclose(edited, 2.0 * first, rtol=1e-6)  # recomputed, not the stale rows
    assert len(list(cache.iterdir())) == 2
    sys.modules.pop("mammoscope_test_feature", None)


def test_the_cache_key_names_what_a_step_computes_not_how_many_threads_run_it(tmp_path):
    """compute.n_jobs reaches nested steps as n_threads / n_jobs: a rerun with another core count reads the same
    cached rows; a parameter that changes the output (here the tile budget) names another folder."""
    from sklearn.pipeline import Pipeline

    from features.clahe import CLAHE
    from features.tiles import TileEmbedder

    def key(**embed) -> str:
        params = dict(tile_size=32, max_tiles=2, backbone="tiny", weights="random", n_threads=None) | embed
        return CachedTransformer(Pipeline([("clahe", CLAHE()), ("embed", TileEmbedder(**params))]),
                                 str(tmp_path))._step_key()

    assert key() == key(n_threads=1) == key(n_threads=2)
    assert key(max_tiles=3) != key()
