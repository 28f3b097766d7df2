"""Log a fitted sklearn Pipeline as a registered model version (skops, explicit trusted types) and load it back.

Serialization: skops (no pickle, no cloudpickle). skops 0.16 persists XGBoost natively (`Booster` state is its
own binary model format) and sklearn's calibration objects; those types are not on skops' default trust list,
so they are named in `THIRD_PARTY_TRUSTED_TYPES`. Classes of the project's own packages (`features`, `cnn`,
`pipeline`) are trusted by module, after checking that each name resolves to a class defined there.

Loading never uses MLflow's loader (3.17 gates it behind MLFLOW_ALLOW_PICKLE_DESERIALIZATION and takes the
trusted-type list from the artifact's own MLmodel file). `load_model` downloads the artifact, lists the types
the skops file needs and loads it only if every one passes this module's rule above.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
import mlflow.artifacts
import mlflow.sklearn
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature

from pipeline.errors import ModelNotFoundError
from registry import tags as T
from registry.store import client, ensure_configured

__all__ = [
    "ModelVersionInfo",
    "LoadedModel",
    "THIRD_PARTY_TRUSTED_TYPES",
    "OWN_PACKAGES",
    "trusted_types_for",
    "log_model",
    "load_model",
    "load_run_model",
    "CARD_FILE",
    "pip_requirements",
    "TRAIN_HINT",
]

log = logging.getLogger(__name__)

# Types outside skops' default trust list that the project's pipelines contain; add new ones here, by name.
THIRD_PARTY_TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
)
OWN_PACKAGES: tuple[str, ...] = ("features", "cnn", "pipeline")
FALLBACK_REQUIREMENTS = ("numpy", "scipy", "pandas", "scikit-learn", "scikit-image", "xgboost", "skops", "mlflow")
CARD_FILE = "card.json"  # the model card, stored inside the model's artifact folder (extra_files)
TRAIN_HINT = "train one with `mammoscope train experiments/<experiment>.yaml` or `bash scripts/dev.sh run`"


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version: `uri` is `models:/NAME/VERSION`."""

    name: str
    version: int
    run_id: str
    uri: str


@dataclass(frozen=True)
class LoadedModel:
    """A registered pipeline loaded back, with the metadata it was logged with and its model card.

    `card` is what `read_card` made of the stored card.json (the raw dict when no reader was given; None when the
    model has no card and no reader was given).
    """

    pipeline: Any
    name: str
    version: int
    alias: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    card: Any = None


def _own_class(type_name: str) -> bool:
    module_name, _, attr = type_name.rpartition(".")
    if module_name.split(".")[0] not in OWN_PACKAGES:
        return False
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type) and obj.__module__ == module_name


def trusted_types_for(untrusted: list[str], extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The types of a skops file that the rule allows; ValueError naming any that it does not."""
    allowed = set(THIRD_PARTY_TRUSTED_TYPES) | set(extra)
    refused = [t for t in untrusted if t not in allowed and not _own_class(t)]
    if refused:
        raise ValueError(
            f"refusing to trust types {refused}: they are neither in registry.models.THIRD_PARTY_TRUSTED_TYPES "
            f"nor classes of the project's packages {OWN_PACKAGES}. Name them there if they are safe."
        )
    return sorted(untrusted)


def pip_requirements() -> list[str]:
    """mammoscope's own install_requires pins (extras left out), else a short explicit list."""
    try:
        reqs = importlib.metadata.requires("mammoscope") or []
    except importlib.metadata.PackageNotFoundError:
        reqs = []
    pins = [r for r in reqs if "extra ==" not in r.replace("'", '"')]
    return pins or list(FALLBACK_REQUIREMENTS)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def log_model(
    pipeline: Any,
    *,
    artifact_name: str,
    registered_model_name: str,
    input_example: np.ndarray,
    metadata: dict[str, Any] | None = None,
    skops_trusted_types: list[str] | None = None,
    card: dict[str, Any] | None = None,
) -> ModelVersionInfo:
    """Log a fitted pipeline into the active run and register it as a new version of `registered_model_name`.

    The signature comes from `input_example` (n, n_features) and `pipeline.predict_proba` of it; the pyfunc
    flavour predicts probabilities. `metadata` (task, classes, threshold, selection metric, ...) is stored in the
    MLmodel file and returned by `load_model`; its `metrics` dict (headline figures) and `task` also become
    model-version tags (`metric.<name>`, `mammoscope.task`) for `list_models`. `card` (a model card's JSON-able
    dict) is stored as `card.json` inside the model's artifacts and returned by `load_model`; its task, dataset
    digest and headline metric values become the same tags. `skops_trusted_types` defaults to the types the
    pipeline needs, checked against this module's rule (see module docstring).
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_model needs an active run: call it inside `with training_run(...)`.")
    example = np.asarray(input_example)
    if example.ndim != 2:
        raise ValueError(f"input_example must be a 2-D array (n_samples, n_features), got shape {example.shape}")
    import skops.io as sio  # lazy: importing skops imports every sklearn estimator (and torch when installed)

    untrusted = sio.get_untrusted_types(data=sio.dumps(pipeline))
    if skops_trusted_types is None:
        trusted = trusted_types_for(untrusted)
    else:
        missing = sorted(set(untrusted) - set(skops_trusted_types))
        if missing:
            raise ValueError(f"skops_trusted_types lacks {missing}, which the pipeline contains")
        trusted = trusted_types_for(sorted(skops_trusted_types))
    meta = _jsonable(metadata or {})
    if card is not None:
        card = _jsonable(card)
        meta.setdefault("task", card.get("task"))
        digest = (card.get("dataset") or {}).get("digest")
        if digest:
            meta.setdefault("data_digest", digest)
        meta.setdefault("metrics", {k: v["value"] for k, v in (card.get("metrics") or {}).items()
                                    if isinstance(v, dict) and v.get("value") is not None})
    signature = infer_signature(example, pipeline.predict_proba(example))
    tmp = tempfile.TemporaryDirectory(prefix="mammoscope-card-")
    extra_files = None
    if card is not None:
        card_path = Path(tmp.name) / CARD_FILE
        card_path.write_text(json.dumps(card, indent=2), encoding="utf-8")
        extra_files = [str(card_path)]
    with tmp:
        info = _log_sklearn(pipeline, artifact_name, registered_model_name, signature, example, trusted, meta,
                            extra_files)
    version = int(info.registered_model_version)
    c = client()
    version_tags = {f"{T.METRIC_PREFIX}{k}": f"{float(v):.6g}" for k, v in (meta.get("metrics") or {}).items()}
    if meta.get("task"):
        version_tags[T.TASK] = str(meta["task"])
    if meta.get("data_digest"):
        version_tags[T.DATA_DIGEST] = str(meta["data_digest"])
    for key, value in version_tags.items():
        c.set_model_version_tag(registered_model_name, str(version), key, value)
    log.info("registered %s version %d (run %s)", registered_model_name, version, info.run_id)
    return ModelVersionInfo(registered_model_name, version, info.run_id, f"models:/{registered_model_name}/{version}")


def _log_sklearn(pipeline: Any, artifact_name: str, registered_model_name: str, signature: Any, example: np.ndarray,
                 trusted: list[str], meta: dict[str, Any], extra_files: list[str] | None) -> Any:
    return mlflow.sklearn.log_model(
        pipeline,
        name=artifact_name,
        registered_model_name=registered_model_name,
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
        serialization_format="skops",
        skops_trusted_types=trusted,
        pyfunc_predict_fn="predict_proba",
        metadata=meta,
        extra_files=extra_files,
    )


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def resolve_version(name: str, alias: str | None = "champion", version: int | str | None = None) -> Any:
    """The MLflow ModelVersion for `name` at `version`, else at `alias`; ModelNotFoundError saying what to do."""
    uri = ensure_configured()
    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        raise ModelNotFoundError(f"no registered model {name!r} in the MLflow store {uri}; {TRAIN_HINT}") from exc
    try:
        if version is not None:
            return c.get_model_version(name, str(version))
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        versions = sorted(int(v.version) for v in c.search_model_versions(f"name = '{name}'"))
        listed = ", ".join(map(str, versions)) or "none"
        if version is not None:
            hint = f"pick one of them (`mammoscope models --name {name}`)"
        else:
            hint = f"set it with `mammoscope promote {name} VERSION --alias {alias}`, or {TRAIN_HINT}"
        what = f"version {version}" if version is not None else f"alias {alias!r}"
        raise ModelNotFoundError(
            f"registered model {name!r} has no {what} in the MLflow store {uri} (versions: {listed}); {hint}"
        ) from exc


@contextlib.contextmanager
def _no_download_progress_bar() -> Iterator[None]:
    """Silence MLflow's artifact-download progress bars (MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR) for the block, unless
    the user set the variable: loading a model is one step of the app's or a command's own output."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _load_local(artifact_uri: str, what: str, trusted_types: list[str] | None,
                read_card: Callable[[Any, str], Any] | None) -> tuple[Any, dict[str, Any], Any]:
    """(pipeline, MLmodel metadata, card) of the model at `artifact_uri`, read with the skops trust rule."""
    import skops.io as sio  # lazy, see log_model

    with tempfile.TemporaryDirectory(prefix="mammoscope-model-") as tmp, _no_download_progress_bar():
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp))
        except MlflowException as exc:
            raise ModelNotFoundError(f"{what}: no model at {artifact_uri} ({exc.message}); {TRAIN_HINT}") from exc
        if not (local / "MLmodel").is_file():
            raise ModelNotFoundError(f"{what}: {artifact_uri} holds no MLflow model (no MLmodel file); {TRAIN_HINT}")
        model = Model.load(str(local / "MLmodel"))
        flavor = model.flavors.get("sklearn", {})
        if flavor.get("serialization_format") != "skops":
            raise ModelNotFoundError(
                f"{what} is not stored in the skops format "
                f"({flavor.get('serialization_format')!r}); refusing to unpickle it. Retrain it: {TRAIN_HINT}"
            )
        path = local / flavor["pickled_model"]
        trusted = trusted_types_for(sio.get_untrusted_types(file=path), extra=trusted_types or ())
        pipeline = sio.load(path, trusted=trusted)
        found = sorted(local.rglob(CARD_FILE))
        raw = None
        if found:
            try:
                raw = json.loads(found[0].read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raw = f"unreadable {CARD_FILE}: {exc}"
    card = read_card(raw, f"{what} {CARD_FILE}") if read_card is not None else raw
    return pipeline, dict(model.metadata or {}), card


def load_model(
    name: str, alias: str = "champion", *, version: int | str | None = None, trusted_types: list[str] | None = None,
    read_card: Callable[[Any, str], Any] | None = None,
) -> LoadedModel:
    """Load `models:/NAME@alias` (or `models:/NAME/version`) with its metadata and model card; ModelNotFoundError if
    absent. `read_card(raw_dict_or_None, source)` turns the stored card.json into the card (and raises for one it
    cannot read: the model is then refused)."""
    mv = resolve_version(name, alias, version)
    pipeline, metadata, card = _load_local(f"models:/{name}/{mv.version}", f"{name} version {mv.version}",
                                           trusted_types, read_card)
    return LoadedModel(
        pipeline=pipeline,
        name=name,
        version=int(mv.version),
        alias=None if version is not None else alias,
        metadata=metadata,
        run_id=mv.run_id or "",
        card=card,
    )


def load_run_model(run_id: str, artifact: str = "model", *, trusted_types: list[str] | None = None,
                   read_card: Callable[[Any, str], Any] | None = None) -> LoadedModel:
    """Load the model logged as `artifact` in run `run_id` (`runs:/RUN_ID/ARTIFACT`), registered or not."""
    ensure_configured()
    pipeline, metadata, card = _load_local(f"runs:/{run_id}/{artifact}", f"run {run_id} model {artifact!r}",
                                           trusted_types, read_card)
    return LoadedModel(pipeline=pipeline, name=f"runs:/{run_id}/{artifact}", version=0, alias=None,
                       metadata=metadata, run_id=run_id, card=card)
