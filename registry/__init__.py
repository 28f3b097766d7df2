"""The one door to MLflow: tracking runs, artifacts, registered model versions and the champion alias.

No other package imports mlflow. Importing `registry` itself is cheap: names below load their module on first use.

Store (`registry.store`)
    configure(tracking_uri=None) -> str
        Tracking and registry URI: default `pipeline.paths.default_tracking_uri()`, i.e. $MLFLOW_TRACKING_URI
        (team mode, `http://host:port`, used unchanged) else `sqlite:///<project>/mlflow.db`. On a SQLite store
        every experiment created here keeps its artifacts in `mlartifacts/` beside the .db file, whatever the cwd.
        Every function below configures the default URI itself if `configure` was never called.

Runs (`registry.runs`)
    with training_run(experiment_name, run_name, params=None, tags=None) as run: -> TrainingRun
        Parent run of one training; nested params flattened with dots (`model.max_depth`); tags for the git
        commit (`mammoscope.git_commit`, "unknown" outside git) and `version.<package>` (numpy, sklearn,
        xgboost, mlflow, skops, pandas, mammoscope, python; torch/torchvision only if already imported).
    fold_run(i, params=None, metrics=None, tags=None) -> child run id   (finished child run `fold-<i>`)
    log_params(dict), log_metrics(dict, step=None)
    log_figure(fig, "plots/roc.png"), log_table(df, "predictions/oof.csv"), log_text(text, "config/x.yaml")
    log_dataset_digest(df_or_digest, name, source=None) -> digest   (dataset input + `mammoscope.data_digest`)
    dataset_digest(df) -> str   (16 hex digits over every cell)

Models (`registry.models`)
    log_model(pipeline, *, artifact_name, registered_model_name, input_example, metadata=None,
              skops_trusted_types=None) -> ModelVersionInfo(name, version, run_id, uri)
        Inside a training_run. skops format, signature from input_example + predict_proba, explicit pip
        requirements, pyfunc predicts probabilities. metadata (task, classes, threshold, ...) comes back from
        load_model; metadata["metrics"] (headline figures) -> version tags `metric.<name>`; metadata["task"],
        metadata["data_digest"] -> tags too. Trusted types: THIRD_PARTY_TRUSTED_TYPES plus classes of the
        project's packages (features, cnn, pipeline); anything else is refused by name.
    load_model(name, alias="champion", *, version=None) -> LoadedModel(pipeline, name, version, alias,
               metadata, run_id)
        Raises pipeline.errors.ModelNotFoundError (what is missing, how to train/promote) if absent.
        log_model(card=dict) stores the model card as card.json inside the model; load_model(read_card=f) returns
        f(card dict or None, source) as LoadedModel.card (f raises to refuse a card it cannot read).
    load_run_model(run_id, artifact="model", read_card=None) -> LoadedModel   (`runs:/RUN_ID/model`)

Cards (`registry.cards`)
    log_card(markdown, html)   (run artifacts model_card/model_card.md and .html, beside model_card/card.json; the
        card's data itself is stored once, by log_model(card=...))
    load_card(name, alias="champion", version=None, *, read_card=None) -> card dict (or read_card(dict, source))
        the version's card.json without loading its pipeline; ModelNotFoundError if it has none

Champion (`registry.champion`)
    maybe_promote(name, version, *, metric, value, higher_is_better=True, data_digest, alias="champion")
        -> PromotionDecision(promoted, reason, new_value, old_value, old_version); rule in champion.RULE:
        moves only if no holder, or same metric + same data digest + strictly better.
    promote(name, version, alias="champion") -> PromotionDecision   (by hand)
    list_models(prefix="mammoscope-", name=None) -> DataFrame(name, version, aliases, task, selection_metric,
        selection_value, data_digest, run_id, created, metric.*)
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "configure": "registry.store",
    "training_run": "registry.runs",
    "fold_run": "registry.runs",
    "child_run": "registry.runs",
    "log_params": "registry.runs",
    "log_metrics": "registry.runs",
    "log_figure": "registry.runs",
    "log_table": "registry.runs",
    "log_text": "registry.runs",
    "log_dataset_digest": "registry.runs",
    "dataset_digest": "registry.runs",
    "TrainingRun": "registry.runs",
    "log_model": "registry.models",
    "load_model": "registry.models",
    "load_run_model": "registry.models",
    "ModelVersionInfo": "registry.models",
    "LoadedModel": "registry.models",
    "maybe_promote": "registry.champion",
    "promote": "registry.champion",
    "list_models": "registry.champion",
    "PromotionDecision": "registry.champion",
    "log_card": "registry.cards",
    "load_card": "registry.cards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
