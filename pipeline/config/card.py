"""The model card as data: a versioned dataclass written at training time and stored beside the model.

`train_experiment` builds a `ModelCard`, `registry.log_model` stores `to_dict()` as ``card.json`` with the model
version, and loading (`pipeline.serving.predict.load_predictor`) reads it back through `ModelCard.from_dict`, which refuses
a card of an unknown schema version or without the keys below. Renderers (Markdown/HTML) work from the dict.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from pipeline.errors import MammoscopeError

__all__ = ["SCHEMA_VERSION", "CARD_FILE", "ModelCard", "CardError", "code_version"]

SCHEMA_VERSION = 1
CARD_FILE = "card.json"


class CardError(MammoscopeError):
    """A model card that cannot be read (unknown schema version, missing keys, wrong types)."""


def code_version() -> str:
    """'mammoscope <package version>+<git commit>' (each 'unknown' when it cannot be found)."""
    import importlib.metadata
    import subprocess
    from pathlib import Path

    try:
        version = importlib.metadata.version("mammoscope")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"mammoscope {version}+{commit}"


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class ModelCard:
    """What a model is, how it was made and how well it did (docs: /work/briefs/card.md contract, schema 1)."""

    name: str
    task: str
    classes: list[str]
    ordinal: bool
    decision: dict[str, Any]
    sample_params: dict[str, Any]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    subgroups: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    experiment: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    created: str = field(default_factory=_utc_now)
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    # --- convenience ------------------------------------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        value = self.decision.get("threshold")
        return None if value is None else float(value)

    @property
    def target_sensitivity(self) -> float | None:
        value = self.decision.get("target_sensitivity")
        return None if value is None else float(value)

    # --- (de)serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with every key of the contract (schema_version first)."""
        d = asdict(self)
        out = {"schema_version": d.pop("schema_version")}
        out.update(d)
        return json.loads(json.dumps(out, default=_json_default, allow_nan=False))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "model card") -> "ModelCard":
        """The card of `d`; CardError (naming `source`) for an unknown schema version or missing/bad keys."""
        if not isinstance(d, Mapping):
            raise CardError(f"{source}: not a mapping ({type(d).__name__}); the model was not logged by "
                            "`mammoscope train` with a model card. Retrain it.")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CardError(f"{source}: model card schema_version {version!r} is not one this Mammoscope reads "
                            f"({SCHEMA_VERSION}); upgrade Mammoscope or retrain the model")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d))
        if missing:
            raise CardError(f"{source}: model card lacks {missing}; retrain the model with `mammoscope train`")
        if not isinstance(d["classes"], list) or len(d["classes"]) < 2 or not isinstance(d["decision"], Mapping):
            raise CardError(f"{source}: model card 'classes' must list at least two classes and 'decision' be a "
                            "mapping; retrain the model")
        from pipeline.config.tasks import TASKS

        if d["task"] not in TASKS:
            raise CardError(f"{source}: model card task {d['task']!r} is not a registered task {list(TASKS)}")
        kw = {k: d[k] for k in names}
        kw["classes"] = [str(c) for c in kw["classes"]]
        kw["decision"] = dict(kw["decision"])
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CardError(f"{source}: not valid JSON ({exc}); retrain the model") from exc
        return cls.from_dict(data, source)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def metric_entry(metrics: Mapping[str, float], key: str) -> dict[str, float | None] | None:
    """{"value", "low", "high"} of `key` in a flat metrics dict (CI keys `<key>_ci_low/high`), None if absent."""
    from pipeline.config.values import finite_or_none as clean

    if key not in metrics or clean(metrics[key]) is None:
        return None
    return {"value": clean(metrics[key]), "low": clean(metrics.get(f"{key}_ci_low")),
            "high": clean(metrics.get(f"{key}_ci_high"))}
