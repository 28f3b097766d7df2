"""Experiment files: defaults in one place, extends/--set layering, schema errors naming key, value and what is allowed."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.config.experiment import (
    DEFAULTS_PATH,
    EXPERIMENTS_DIR,
    SCHEMA,
    flatten_config,
    load_experiment,
    parse_overrides,
)

SHIPPED = sorted(p for p in EXPERIMENTS_DIR.glob("*.yaml") if p.name != "defaults.yaml")


def _keys(schema, prefix=""):
    for key, rule in schema.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(rule, dict):
            yield from _keys(rule, path)
        else:
            yield path


def test_defaults_cover_the_whole_schema_and_nothing_else():
    defaults = flatten_config(yaml.safe_load(DEFAULTS_PATH.read_text()))
    assert set(defaults) == set(_keys(SCHEMA))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_experiment_resolves(path):
    exp = load_experiment(path)
    from pipeline.config.tasks import TASKS

    assert exp.task in TASKS
    assert exp.config["tracking"]["registered_model_name"] == f"mammoscope-{exp.task}" or "test" in path.name


def test_required_experiments_exist():
    names = {p.stem for p in SHIPPED}
    for task in ("density", "malignancy"):
        for kind in ("handcrafted", "cnn", "fused"):
            assert f"mias_{task}_{kind}" in names
    assert "cbis_ddsm_malignancy" in names


def test_extends_and_overrides_layer_in_order():
    fused = load_experiment(EXPERIMENTS_DIR / "mias_malignancy_fused.yaml").config
    hand = load_experiment(EXPERIMENTS_DIR / "mias_malignancy_handcrafted.yaml").config
    assert fused["features"]["cnn"]["enabled"] and not hand["features"]["cnn"]["enabled"]
    assert hand["dataset"]["task"] == "malignancy"  # inherited from the file it extends
    assert hand["model"]["max_depth"] == yaml.safe_load(DEFAULTS_PATH.read_text())["model"]["max_depth"]
    over = load_experiment(EXPERIMENTS_DIR / "mias_malignancy_handcrafted.yaml",
                           ["features.cnn.enabled=true", "features.handcrafted.glcm.distances=[1, 3]",
                            "evaluation.folds=3"]).config
    assert over["features"]["cnn"]["enabled"] is True
    assert over["features"]["handcrafted"]["glcm"]["distances"] == [1, 3]
    assert over["evaluation"]["folds"] == 3
    assert over["name"] == "mias_malignancy_handcrafted"


@pytest.mark.parametrize("override, message", [
    ("features.handcrafted.glcm.levels=1000", "features.handcrafted.glcm.levels: 1000 is not an int in [2, 256]"),
    ("features.glcm.levels=64", "features.glcm: unknown key; allowed here: handcrafted, density, cnn, selection"),
    ("dataset.task=birads", "dataset.task: 'birads' is not one of density, malignancy"),
    ("calibration.method=platt", "calibration.method: 'platt' is not one of sigmoid, isotonic"),
    ("evaluation.target_sensitivity=1.5", "evaluation.target_sensitivity: 1.5 is not a number in (0.0, 1.0]"),
    ("model.max_depth=true", "model.max_depth: true is not an int in [1, 32]"),
    ("features.handcrafted.glcm.distances=[]", "features.handcrafted.glcm.distances: [] is not a list of at least 1"),
    ("features.cnn.finetune.trainable_stages=-1",
     "features.cnn.finetune.trainable_stages: -1 is not an int >= 0 (the last k backbone stages train; 0 = only the "
     "head) or null (every stage trains)"),
    ("features.cnn.finetune.trainable_stages=half", "features.cnn.finetune.trainable_stages: 'half' is not an int"),
    ("features.cnn.finetune.device=gpu", "features.cnn.finetune.device: 'gpu' is not one of auto, cpu, cuda"),
    ("features.cnn.backbone=tiny", "features.cnn.weights: imagenet, but the 'tiny' test backbone has no ImageNet"),
    ("features.cnn.backbone=efficientnet_lite9", "features.cnn.backbone: 'efficientnet_lite9' is not one of "
                                                 "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"),
    ("features.cnn.finetune.batch_size=1", "features.cnn.finetune.batch_size: 1 is not an int in [2, 1024]"),
    ("features.cnn.finetune.freeze=3", "features.cnn.finetune.freeze: unknown key; allowed here: enabled, epochs"),
])
def test_bad_override_names_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as info:
        load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", [override])
    assert message in str(info.value)


def test_bad_key_in_file_fails_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  task: malignancy\nmodel:\n  max_dept: 3\n")
    from pipeline.cli import main

    start = time.perf_counter()
    status = main(["train", str(bad), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert status == 1
    assert "model.max_dept: unknown key; allowed here: n_estimators" in capsys.readouterr().err
    assert time.perf_counter() - start < 5  # no data read, no training
    assert not (tmp_path / "m.db").exists()


def test_bad_key_message_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: [other.yaml]\nsamples:\n  size: 8\n")
    (tmp_path / "other.yaml").write_text("dataset:\n  task: density\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: samples.size: 8 is not an int in \[16, 1024\]"):
        load_experiment(bad)


def test_extends_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_experiment(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_cross_key_rules():
    with pytest.raises(ConfigError, match="enable at least one"):
        load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["features.handcrafted.enabled=false"])
    with pytest.raises(ConfigError, match="dataset.dense_classes"):
        load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["dataset.dense_classes=[X]"])


def test_parse_overrides_rejects_malformed():
    assert parse_overrides(["a.b=1", "a.c=[x, y]", "d=null"]) == {"a": {"b": 1, "c": ["x", "y"]}, "d": None}
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        parse_overrides(["features.cnn.enabled"])


def test_derived_names_and_champion_metric():
    cfg = load_experiment(EXPERIMENTS_DIR / "mias_density_cnn.yaml").config
    assert cfg["tracking"]["champion_metric"] == "cv_kappa_quadratic"
    assert cfg["tracking"]["experiment_name"] == "mammoscope-density"
    assert Path(load_experiment(None).config["name"]).name == "default_density"
