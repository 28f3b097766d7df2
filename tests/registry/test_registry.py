"""registry/ against a real temporary SQLite store: runs, artifacts, versions, the champion rule, loading back."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.errors import ModelNotFoundError
from tests._registry_helpers import separable_data, strong_pipeline, tracking_store, weak_pipeline

NAME = "mammoscope-testmalignancy"
EXPERIMENT = "registry-test"


def _train_and_register(label: str, pipeline, auc: float, X: np.ndarray, y: np.ndarray, digest_df: pd.DataFrame,
                        with_artifacts: bool) -> SimpleNamespace:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from registry import (
        fold_run,
        log_dataset_digest,
        log_figure,
        log_metrics,
        log_model,
        log_table,
        log_text,
        maybe_promote,
        training_run,
    )

    params = {"model": {"kind": "xgboost", "calibration": {"method": "sigmoid"}}, "evaluation": {"folds": 2}}
    with training_run(EXPERIMENT, label, params=params, tags={"mammoscope.experiment_file": f"{label}.yaml"}) as run:
        fold_ids = [fold_run(i, metrics={"roc_auc": auc - 0.01 * i}, params={"fold": i}) for i in range(2)]
        log_metrics({"roc_auc": np.float64(auc), "n_samples": len(y)})
        digest = log_dataset_digest(digest_df, "synthetic-separable", source="/tmp/synthetic")
        if with_artifacts:
            fig, ax = plt.subplots(figsize=(2, 2))
            ax.plot([0, 1], [0, 1])
            log_figure(fig, "plots/roc.png")
            plt.close(fig)
            log_table(pd.DataFrame({"sample_id": np.arange(len(y)), "y": y}), "predictions/oof.csv")
            log_text("model:\n  kind: xgboost\n", "config/experiment.yaml")
        info = log_model(
            pipeline,
            artifact_name="model",
            registered_model_name=NAME,
            input_example=X[:2],
            metadata={"task": "malignancy", "classes": ["benign", "malignant"], "threshold": 0.42,
                      "selection_metric": "roc_auc", "metrics": {"roc_auc": auc}},
        )
    decision = maybe_promote(NAME, info.version, metric="roc_auc", value=auc, data_digest=digest)
    return SimpleNamespace(run=run, info=info, decision=decision, digest=digest, fold_ids=fold_ids)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A fresh SQLite store with two registered versions: v1 weak, v2 strong, each judged by maybe_promote."""
    root = tmp_path_factory.mktemp("store")
    cwd = tmp_path_factory.mktemp("cwd")
    old_cwd = os.getcwd()
    os.chdir(cwd)
    X, y = separable_data(160, seed=0)
    X_test, y_test = separable_data(80, seed=1)
    weak, strong = weak_pipeline(X, y), strong_pipeline(X, y)
    weak_auc = roc_auc_score(y_test, weak.predict_proba(X_test)[:, 1])
    strong_auc = roc_auc_score(y_test, strong.predict_proba(X_test)[:, 1])
    df = pd.DataFrame(X).assign(y=y)
    try:
        with tracking_store(f"sqlite:///{root / 'mlflow.db'}") as uri:
            v1 = _train_and_register("weak", weak, weak_auc, X, y, df, with_artifacts=True)
            v2 = _train_and_register("strong", strong, strong_auc, X, y, df, with_artifacts=False)
            yield SimpleNamespace(root=root, cwd=cwd, uri=uri, X=X_test, weak=weak, strong=strong,
                                  weak_auc=weak_auc, strong_auc=strong_auc, v1=v1, v2=v2)
    finally:
        os.chdir(old_cwd)


def test_synthetic_models_differ_as_intended(store) -> None:
    assert store.strong_auc > 0.9
    assert store.strong_auc > store.weak_auc + 0.05


def test_versions_and_automatic_champion(store) -> None:
    from registry.champion import current_holder

    assert (store.v1.info.version, store.v2.info.version) == (1, 2)
    assert store.v1.decision.promoted and store.v1.decision.old_version is None
    assert store.v2.decision.promoted
    assert store.v2.decision.old_version == 1
    assert store.v2.decision.old_value == pytest.approx(store.weak_auc)
    assert int(current_holder(NAME).version) == 2


def test_champion_moves_only_when_better_on_same_data(store) -> None:
    from registry.champion import current_holder, maybe_promote

    worse = maybe_promote(NAME, 1, metric="roc_auc", value=store.weak_auc, data_digest=store.v1.digest)
    assert not worse.promoted and "does not beat" in worse.reason
    tie = maybe_promote(NAME, 1, metric="roc_auc", value=store.strong_auc, data_digest=store.v1.digest)
    assert not tie.promoted
    other_data = maybe_promote(NAME, 1, metric="roc_auc", value=0.999, data_digest="0123456789abcdef")
    assert not other_data.promoted and "other data" in other_data.reason
    other_metric = maybe_promote(NAME, 1, metric="brier", value=0.01, higher_is_better=False,
                                 data_digest=store.v1.digest)
    assert not other_metric.promoted and "not comparable" in other_metric.reason
    assert int(current_holder(NAME).version) == 2
    # restore v1's own figures
    maybe_promote(NAME, 1, metric="roc_auc", value=store.weak_auc, data_digest=store.v1.digest)


def test_decision_rule_and_figures_are_tags(store) -> None:
    from registry import tags as T
    from registry.champion import RULE
    from registry.store import client

    tags = client().get_model_version(NAME, "2").tags
    assert tags[T.CHAMPION_RULE] == RULE
    assert tags[T.CHAMPION_DECISION].startswith("promoted: ")
    assert float(tags[T.SELECTION_VALUE]) == pytest.approx(store.strong_auc)
    assert float(tags[T.COMPARED_VALUE]) == pytest.approx(store.weak_auc)
    assert tags[T.COMPARED_VERSION] == "1"
    assert tags[T.DATA_DIGEST] == store.v2.digest == store.v1.digest
    assert float(tags["metric.roc_auc"]) == pytest.approx(store.strong_auc, abs=1e-5)
    assert tags[T.TASK] == "malignancy"


def test_load_champion_gives_identical_probabilities_and_metadata(store) -> None:
    from registry import load_model

    loaded = load_model(NAME)
    assert (loaded.version, loaded.alias, loaded.run_id) == (2, "champion", store.v2.info.run_id)
    np.testing.assert_array_equal(loaded.pipeline.predict_proba(store.X), store.strong.predict_proba(store.X))
    assert loaded.metadata["classes"] == ["benign", "malignant"]
    assert loaded.metadata["threshold"] == 0.42
    assert loaded.metadata["metrics"]["roc_auc"] == pytest.approx(store.strong_auc)
    by_version = load_model(NAME, version=1)
    np.testing.assert_array_equal(by_version.pipeline.predict_proba(store.X), store.weak.predict_proba(store.X))


def test_mlflow_pyfunc_reads_the_alias_uri(store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The logged model is a standard MLflow model: models:/NAME@champion predicts probabilities via pyfunc."""
    import mlflow.pyfunc  # the test checks MLflow's own loader; product code loads through registry.load_model

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    np.testing.assert_array_equal(np.asarray(model.predict(store.X)), store.strong.predict_proba(store.X))
    inputs = model.metadata.get_input_schema().inputs
    assert inputs[0].shape == (-1, store.X.shape[1])


def test_promote_by_hand_and_list(store) -> None:
    from registry import list_models, load_model, promote

    decision = promote(NAME, 1)
    assert decision.promoted and decision.old_version == 2
    assert load_model(NAME).version == 1
    promote(NAME, 2, alias="candidate")
    table = list_models()
    assert list(table["version"]) == [2, 1]
    assert dict(zip(table["version"], table["aliases"])) == {1: "champion", 2: "candidate"}
    assert table.loc[table["version"] == 2, "metric.roc_auc"].item() == pytest.approx(store.strong_auc, abs=1e-5)
    assert set(table["run_id"]) == {store.v1.info.run_id, store.v2.info.run_id}
    assert list_models(prefix="nothing-").empty
    promote(NAME, 2)
    assert load_model(NAME).version == 2


def test_model_not_found_messages(store) -> None:
    from registry import load_model, promote

    with pytest.raises(ModelNotFoundError, match=r"no registered model 'mammoscope-absent'.*mammoscope train"):
        load_model("mammoscope-absent")
    with pytest.raises(ModelNotFoundError, match=r"no alias 'gold'.*versions: 1, 2.*mammoscope promote"):
        load_model(NAME, alias="gold")
    with pytest.raises(ModelNotFoundError, match="no version 99"):
        promote(NAME, 99)


def test_run_contents(store) -> None:
    from registry import tags as T
    from registry.store import client

    c = client()
    run = c.get_run(store.v1.run.run_id)
    assert run.data.params["model.calibration.method"] == "sigmoid"
    assert run.data.params["evaluation.folds"] == "2"
    assert run.data.metrics["roc_auc"] == pytest.approx(store.weak_auc)
    assert len(run.data.tags[T.GIT_COMMIT]) in (40, 7) or run.data.tags[T.GIT_COMMIT] == "unknown"
    for pkg in ("numpy", "sklearn", "xgboost", "mlflow", "mammoscope"):
        assert run.data.tags[f"version.{pkg}"][0].isdigit()
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [store.v1.digest]
    for child_id in store.v1.fold_ids:
        child = c.get_run(child_id)
        assert child.data.tags["mlflow.parentRunId"] == store.v1.run.run_id
        assert child.info.experiment_id == run.info.experiment_id  # the parent's experiment, not Default (#16)
        assert child.data.tags["mammoscope.fold"] in ("0", "1") and "roc_auc" in child.data.metrics


def test_artifacts_live_beside_the_database_not_in_cwd(store) -> None:
    run_dir = store.root / "mlartifacts" / EXPERIMENT / store.v1.run.run_id / "artifacts"
    for rel in ("plots/roc.png", "predictions/oof.csv", "config/experiment.yaml"):
        assert (run_dir / rel).stat().st_size > 0, rel
    assert (run_dir / "plots/roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(run_dir / "predictions/oof.csv")) == 160
    assert list(store.root.glob("mlartifacts/**/model.skops"))
    assert not any(Path(store.cwd).iterdir())


def test_untrusted_types_are_refused_by_name(store) -> None:
    from registry.models import THIRD_PARTY_TRUSTED_TYPES, trusted_types_for

    assert trusted_types_for(list(THIRD_PARTY_TRUSTED_TYPES)) == sorted(THIRD_PARTY_TRUSTED_TYPES)
    assert trusted_types_for(["pipeline.errors.ConfigError"]) == ["pipeline.errors.ConfigError"]
    with pytest.raises(ValueError, match=r"builtins.eval"):
        trusted_types_for(["xgboost.core.Booster", "builtins.eval"])
    with pytest.raises(ValueError, match=r"pipeline.paths.default_data_root"):
        trusted_types_for(["pipeline.paths.default_data_root"])  # a function, not a class


def test_cli_models_and_promote(store, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "champion" in out and "metric.roc_auc" in out
    assert main(["promote", NAME, "1", "--alias", "challenger"]) == 0
    assert "@challenger -> version 1" in capsys.readouterr().out
    assert main(["promote", NAME, "42"]) == 1
    assert "no version 42" in capsys.readouterr().err
    assert main(["models", "--name", "mammoscope-absent"]) == 0
    assert "mammoscope train" in capsys.readouterr().out


def test_ui_command_targets_the_embedded_store(tmp_path: Path) -> None:
    from pipeline.commands.ui import ui_command
    from registry.store import artifact_root, local_db_path

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert local_db_path(uri) == tmp_path / "mlflow.db"
    assert local_db_path("http://127.0.0.1:5000") is None
    cmd = ui_command(uri, artifact_root(uri), "127.0.0.1", 5123)
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == uri
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--artifacts-destination") + 1] == (tmp_path / "mlartifacts").as_uri()


def test_flatten_params_and_digest() -> None:
    from registry.runs import dataset_digest, flatten_params

    flat = flatten_params({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None})
    assert flat == {"a.b.c": "1", "a.d": "[1, 2]", "e": "None"}
    df = pd.DataFrame({"sample_id": ["x", "y"], "label": [0, 1]})
    assert dataset_digest(df) == dataset_digest(df.copy())
    assert dataset_digest(df) != dataset_digest(df.assign(label=[1, 1]))
    assert len(dataset_digest(df)) == 16
