"""The champion alias: moved automatically only by a fair comparison, by hand with `promote`; listing versions.

Rule (`RULE`, also written as a tag on every version it judges): the new version takes the alias when
  1. no version holds the alias yet, or
  2. the holder was judged on the same selection metric AND the same dataset digest, and the new value is
     strictly better (higher, or lower when `higher_is_better=False`); NaN never wins.
Different data (digest) or a different metric -> the alias stays: figures from different data are not
comparable, so a person decides with `mammoscope promote`. Both figures, the rule and the decision are
recorded as model-version tags on the new version.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd
from mlflow.exceptions import MlflowException

from registry import tags as T
from registry.models import resolve_version
from registry.store import client

__all__ = ["PromotionDecision", "RULE", "maybe_promote", "promote", "list_models", "current_holder"]

log = logging.getLogger(__name__)

RULE = (
    "alias moves if no holder, or holder has the same selection metric and data digest and the new value is "
    "strictly better; otherwise it stays (promote by hand)"
)
BASE_COLUMNS = ["name", "version", "aliases", "task", "selection_metric", "selection_value", "data_digest",
                "run_id", "created"]


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the alias moved, why, and the figures compared (old_* are None when there was no holder)."""

    promoted: bool
    reason: str
    new_value: float | None
    old_value: float | None
    old_version: int | None


def current_holder(name: str, alias: str = "champion"):
    """The ModelVersion holding `alias` for model `name`, or None when no version holds it."""
    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def maybe_promote(
    name: str,
    version: int | str,
    *,
    metric: str,
    value: float,
    higher_is_better: bool = True,
    data_digest: str,
    alias: str = "champion",
) -> PromotionDecision:
    """Record `metric`=`value` on data `data_digest` for version `version`; move `alias` there if it wins (RULE)."""
    mv = resolve_version(name, None, version)
    c = client()
    v = str(mv.version)
    value = float(value)
    for key, tag_value in {
        T.SELECTION_METRIC: metric,
        T.SELECTION_VALUE: repr(value),
        T.HIGHER_IS_BETTER: str(bool(higher_is_better)),
        T.DATA_DIGEST: data_digest,
        T.CHAMPION_RULE: RULE,
    }.items():
        c.set_model_version_tag(name, v, key, tag_value)

    holder = current_holder(name, alias)
    old_version = int(holder.version) if holder is not None else None
    old_tags = holder.tags if holder is not None else {}
    old_value = _float(old_tags.get(T.SELECTION_VALUE))
    if holder is None:
        promoted, reason = True, f"no version held @{alias}"
    elif old_version == int(v):
        promoted, reason = False, f"version {v} already holds @{alias}"
    elif math.isnan(value):
        promoted, reason = False, f"{metric} of version {v} is NaN"
    elif old_tags.get(T.SELECTION_METRIC) != metric:
        promoted, reason = False, (
            f"@{alias} version {old_version} was judged on {old_tags.get(T.SELECTION_METRIC)!r}, not {metric!r}: "
            f"not comparable; promote by hand if wanted"
        )
    elif old_tags.get(T.DATA_DIGEST) != data_digest:
        promoted, reason = False, (
            f"@{alias} version {old_version} was evaluated on other data (digest {old_tags.get(T.DATA_DIGEST)} "
            f"vs {data_digest}): not comparable; promote by hand if wanted"
        )
    elif old_value is None or math.isnan(old_value):
        promoted, reason = True, f"@{alias} version {old_version} has no valid {metric}"
    else:
        better = value > old_value if higher_is_better else value < old_value
        promoted = better
        reason = (
            f"{metric} {value:.4f} {'beats' if better else 'does not beat'} {old_value:.4f} "
            f"of @{alias} version {old_version} on the same data"
        )
    if promoted:
        c.set_registered_model_alias(name, alias, v)
    c.set_model_version_tag(name, v, T.CHAMPION_DECISION, ("promoted: " if promoted else "kept: ") + reason)
    if old_version is not None:
        c.set_model_version_tag(name, v, T.COMPARED_VERSION, str(old_version))
        c.set_model_version_tag(name, v, T.COMPARED_VALUE, repr(old_value))
    log.info("%s version %s: %s", name, v, ("promoted to @%s: " % alias if promoted else "not promoted: ") + reason)
    return PromotionDecision(promoted, reason, value, old_value, old_version)


def promote(name: str, version: int | str, alias: str = "champion") -> PromotionDecision:
    """Move `alias` of model `name` to `version` by hand; ModelNotFoundError if the model or version is absent."""
    mv = resolve_version(name, None, version)
    holder = current_holder(name, alias)
    c = client()
    c.set_registered_model_alias(name, alias, str(mv.version))
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    c.set_model_version_tag(name, str(mv.version), T.PROMOTED_BY, f"hand, {stamp}")
    old_version = int(holder.version) if holder is not None else None
    reason = f"moved by hand from version {old_version}" if holder is not None else "set by hand"
    log.debug("%s @%s -> version %s (%s)", name, alias, mv.version, reason)
    return PromotionDecision(
        True,
        reason,
        _float(mv.tags.get(T.SELECTION_VALUE)),
        _float(holder.tags.get(T.SELECTION_VALUE)) if holder is not None else None,
        old_version,
    )


def list_models(prefix: str = "mammoscope-", name: str | None = None) -> pd.DataFrame:
    """One row per registered version (newest first per model): aliases, run, creation time, headline metrics."""
    c = client()
    if name is not None:
        names = [name]
    else:
        names = sorted(m.name for m in c.search_registered_models(filter_string=f"name LIKE '{prefix}%'"))
    rows = []
    for model_name in names:
        aliases: dict[str, list[str]] = {}
        try:
            for alias, ver in (c.get_registered_model(model_name).aliases or {}).items():
                aliases.setdefault(str(ver), []).append(alias)
        except MlflowException:
            continue
        for mv in c.search_model_versions(f"name = '{model_name}'"):
            row = {
                "name": model_name,
                "version": int(mv.version),
                "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                "task": mv.tags.get(T.TASK, ""),
                "selection_metric": mv.tags.get(T.SELECTION_METRIC, ""),
                "selection_value": _float(mv.tags.get(T.SELECTION_VALUE)),
                "data_digest": mv.tags.get(T.DATA_DIGEST, ""),
                "run_id": mv.run_id or "",
                "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"),
            }
            for key, val in mv.tags.items():
                if key.startswith(T.METRIC_PREFIX):
                    row[key] = _float(val)
            rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else BASE_COLUMNS)
    if rows:
        df = df.sort_values(["name", "version"], ascending=[True, False], ignore_index=True)
    return df
