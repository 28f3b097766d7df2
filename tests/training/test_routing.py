"""Patient groups reach every step that splits, by metadata routing: fine-tuning's early stopping included."""
from __future__ import annotations

import numpy as np

import cnn.finetune as finetune_module
from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
from pipeline.model.estimators import build_pipeline


def test_finetuning_early_stopping_split_keeps_each_patient_on_one_side(monkeypatch):
    """Inside the experiment's Pipeline (CV fold and final fit alike), FineTunedEmbedder's validation split for
    early stopping gets the training rows' patient ids, so no patient is on both sides of it."""
    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.training.cv import cross_validate
    from pipeline.model.routing import fit_with_groups

    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    real = finetune_module.patient_split

    def spy(y, groups, val_fraction, seed):
        train, val = real(y, groups, val_fraction, seed)
        seen.append((np.asarray(groups), train, val))
        return train, val

    monkeypatch.setattr(finetune_module, "patient_split", spy)
    cfg = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", [
        "dataset.task=malignancy", "features.handcrafted.enabled=false", "features.cnn.enabled=true",
        "features.cnn.backbone=tiny", "features.cnn.weights=random", "features.cnn.finetune.enabled=true",
        "features.cnn.finetune.epochs=1", "model.n_estimators=3", "calibration.inner_folds=2"]).config
    rng = np.random.default_rng(0)
    n = 40
    groups = np.repeat(np.arange(n // 4), 4).astype(str)  # four images per patient
    y = (np.arange(n) // 4) % 2
    X = (rng.random((n, 16 * 16)) * 0.5 + 0.3 * y[:, None]).astype(np.float32)
    cfg["samples"]["size"] = 16

    fit_with_groups(build_pipeline(cfg, None), X, y, groups)
    folds = patient_stratified_folds(y, groups, 2, 0)
    cross_validate(lambda: build_pipeline(cfg, None), X, y, groups, folds, route_groups=True)
    assert len(seen) == 3  # the final fit and each of the two training folds
    for (fit_groups, train, val), rows in zip(seen, [np.arange(n), *(tr for tr, _ in folds)]):
        np.testing.assert_array_equal(fit_groups, groups[rows])  # the fitted rows' patients, not one per image
        assert len(val) and not set(fit_groups[train]) & set(fit_groups[val])
