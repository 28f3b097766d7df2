"""Every command that touches MLflow takes --tracking-uri; compute settings resolve in one place."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import build_parser, main
from pipeline.compute import resolve_compute
from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment


@pytest.mark.parametrize("command", ["train", "main", "predict", "models", "promote", "app", "ui"])
def test_every_mlflow_command_takes_tracking_uri(command):
    extra = {"train": ["x.yaml"], "predict": ["x.png"], "promote": ["m", "1"]}.get(command, [])
    args = build_parser(command).parse_args([command, *extra, "--tracking-uri", "sqlite:////tmp/x.db"])
    assert args.tracking_uri == "sqlite:////tmp/x.db"


def test_models_and_promote_use_the_given_store(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["models", "--tracking-uri", uri]) == 0
    assert str(tmp_path / "other.db") in capsys.readouterr().out
    assert main(["promote", "mammoscope-density", "1", "--tracking-uri", uri]) == 1  # no such model there
    assert "other.db" in capsys.readouterr().err


def test_compute_settings_resolve_argument_then_experiment_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMMOSCOPE_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    config = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml").config
    assert resolve_compute(config).cache_dir == tmp_path / "env-cache"
    assert resolve_compute(config, default_cache=False).cache_dir is None
    config["compute"].update(cache_dir=str(tmp_path / "exp-cache"), scheduler="head:8786", n_jobs=0)
    c = resolve_compute(config)
    assert c.cache_dir == tmp_path / "exp-cache" and c.scheduler == "tcp://head:8786" and c.n_jobs is None
    c = resolve_compute(config, cache_dir=tmp_path / "cli", scheduler="local", n_jobs=2)
    assert c.cache_dir == Path(tmp_path / "cli") and c.scheduler is None and c.n_jobs == 2


def test_build_pipeline_honours_the_experiments_cache_dir(tmp_path):
    from pipeline.model.estimators import CachedTransformer, build_pipeline

    config = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", [f"compute.cache_dir={tmp_path}"]).config
    cached = [s for _, s in build_pipeline(config).named_steps["features"].transformer_list
              if isinstance(s, CachedTransformer)]
    assert cached and all(s.cache_dir == str(tmp_path) for s in cached)
    assert build_pipeline(config, tmp_path / "other").named_steps["preprocess"].cache_dir == str(tmp_path / "other")
