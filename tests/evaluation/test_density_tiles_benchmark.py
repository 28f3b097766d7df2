"""benchmarks/density_tiles.py: the nested arm picks, inside each outer training fold, the feature set that orders
the classes, and its calls are the refitted winner's (ordinal density classes, patient folds)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tests._benchmarks import ROOT, benchmark_module


def test_nested_choice_picks_the_informative_feature_set_in_every_training_fold():
    from sklearn.metrics import cohen_kappa_score

    from pipeline.config.experiment import resolve_config
    from pipeline.evaluation.splits import patient_stratified_folds

    bench = benchmark_module("density_tiles")
    rng = np.random.default_rng(0)
    n_pat = 90
    groups = np.repeat([f"p{i}" for i in range(n_pat)], 2)          # two breasts per woman, one exam
    y = np.repeat(rng.integers(0, 3, n_pat), 2)                      # F / G / D, a woman's breasts alike
    noise = rng.normal(0, 1, (2 * n_pat, 3))
    signal = np.column_stack([y + rng.normal(0, 0.4, 2 * n_pat), rng.normal(0, 1, 2 * n_pat)])
    arms = {"shipped": noise, "+tiles": np.hstack([noise, signal])}
    cfg = resolve_config(ROOT / "experiments" / "mias_density_fused.yaml",
                         {"model": {"n_estimators": 12}, "calibration": {"inner_folds": 2}})
    proto = bench.classifier(cfg)
    data = SimpleNamespace(y=y, groups=groups)
    folds = patient_stratified_folds(y, groups, 3, seed=0)
    image, exam, chosen = bench.nested_calls(arms, data, groups, folds, proto, inner_folds=2)
    assert chosen == ["+tiles"] * 3
    assert cohen_kappa_score(y, image, weights="quadratic") > 0.7
    assert cohen_kappa_score(y, exam, weights="quadratic") > 0.7
    shipped_image, _ = bench.cross_validated_calls(noise, data, groups, folds, proto)
    assert cohen_kappa_score(y, shipped_image, weights="quadratic") < 0.4
