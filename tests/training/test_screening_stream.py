"""Screening training streams (issue 28, item 4): the 448 px samples and tile matrices are made once per image on
worker processes and cached; cross-validation, the final fit and the exam stage read the feature rows, never the
samples; the registered model is still one image -> probability Pipeline that serves what the in-memory fit serves.

Tiny settings on real CDD-CESM images (a random tiny CNN, 32 px working resolution, 64 px screening samples), with
every optional front branch and head stage on.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.experiment import EXPERIMENTS_DIR, deep_merge, load_experiment
from tests.serving.test_screening_acceptance import CDD, TINY

pytestmark = pytest.mark.skipif(not CDD.is_file(), reason="CDD-CESM is not in shared/data")

N = 30


def _config(cache) -> dict:
    over = deep_merge(TINY, {"dataset": {"max_samples": N}, "compute": {"n_jobs": 2, "cache_dir": str(cache)},
                             "screening": {"context": True, "context_asymmetry": True, "tile_scores": 2,
                                           "tile_scores_auto": True, "blobs": True}})
    return load_experiment(EXPERIMENTS_DIR / "cdd_cesm_screening.yaml", over).config


def test_screening_training_streams_features_and_serves_the_in_memory_numbers(tmp_path, monkeypatch):
    import pipeline.samples
    from pipeline.model.screening import front_features, tile_block_width
    from pipeline.training.train import evaluate_experiment, fit_final, load_task_data, load_task_features

    cache = tmp_path / "cache"
    cfg = _config(cache)
    held: list[int] = []  # rows whose samples this process prepares (the workers make the rest and keep none)
    original = pipeline.samples.load_samples

    def counting(df, *args, **kwargs):
        held.append(len(df))
        return original(df, *args, **kwargs)

    monkeypatch.setattr(pipeline.samples, "load_samples", counting)
    data = load_task_features(cfg, lambda s: None, cache_dir=cache)
    n = len(data.y)
    # worker processes did the work (loky may replace a worker that a previous test's executor left idle: >= 2 pids)
    assert data.X is None and data.streamed and data.stream.workers >= 2
    assert data.stream.images_computed == n and sum(held) <= 2  # two samples: the front's fit and input example
    assert data.features.shape == (n, data.features.shape[1]) and data.features.shape[1] > tile_block_width(cfg)
    metrics, cv, oof = evaluate_experiment(cfg, data, cache)
    final = fit_final(cfg, data, cache)
    extra = final.decision_entries()  # the ExamModel's exam stage: fitted inside fit_final
    assert sum(held) <= 2  # CV, the final fit and the exam stage read the feature rows only
    assert [name for name, _ in final.steps] == ["preprocess", "features", "blocks", "select", "classifier"]
    # the bright-spot branch streams and serves like the other front branches (it sits before the tile matrix)
    assert [name for name, _ in final.named_steps["features"].transformer_list] == ["whole", "blobs", "tiles"]
    again = load_task_features(cfg, lambda s: None, cache_dir=cache)  # a second run reads the cache
    assert again.stream.images_cached == n and again.stream.images_computed == 0
    np.testing.assert_array_equal(again.features, data.features)
    monkeypatch.setattr(pipeline.samples, "load_samples", original)

    # the in-memory path on the same images: same features, CV, final model, exam stage and served numbers
    mem = load_task_data(cfg, lambda s: None)
    np.testing.assert_array_equal(mem.y, data.y)
    np.testing.assert_allclose(front_features(final, mem.X), data.features, rtol=0, atol=1e-5)
    metrics_mem, cv_mem, oof_mem = evaluate_experiment(cfg, mem, tmp_path / "mem")
    np.testing.assert_allclose(cv.proba, cv_mem.proba, rtol=0, atol=1e-6)
    np.testing.assert_allclose(oof["p_context"], oof_mem["p_context"], rtol=0, atol=1e-6)
    final_mem = fit_final(cfg, mem, tmp_path / "mem")
    extra_mem = final_mem.decision_entries()
    assert extra.keys() == extra_mem.keys() and extra["context_asymmetry"] and extra["context"]
    for level, t in extra["level_thresholds"].items():
        assert t == pytest.approx(extra_mem["level_thresholds"][level], abs=1e-6)
    X = mem.X[:5]
    np.testing.assert_allclose(final.predict_proba(X), final_mem.predict_proba(X), rtol=0, atol=1e-6)
    assert final.asymmetry_columns_ == final_mem.asymmetry_columns_
    start, stop = final.asymmetry_columns_
    np.testing.assert_allclose(final[:-2].transform(X)[:, start:stop], final_mem[:-2].transform(X)[:, start:stop],
                               rtol=0, atol=1e-5)
    tiles = final.heatmap_.named_steps["embed"].transform(X)
    np.testing.assert_allclose(final.heatmap_.named_steps["scorer"].tile_proba(tiles),
                               final_mem.heatmap_.named_steps["scorer"].tile_proba(tiles), rtol=0, atol=1e-6)
