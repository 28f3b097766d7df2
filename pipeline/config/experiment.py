"""Experiment files: load YAML, layer it over the defaults, apply `--set` overrides, validate against a schema.

Layering, later wins: ``experiments/defaults.yaml`` <- each file named in ``extends:`` (paths relative to the
file that names them, merged in order, recursively) <- the experiment file <- ``--set key.path=value`` overrides
(values parsed as YAML: ``--set features.cnn.enabled=false --set features.glcm.distances=[1,3]``).
Every key and value is checked before any work starts; errors name the key path, the value and what is allowed.
"""
from __future__ import annotations

import copy
import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from cnn.backbones import BACKBONES as CNN_BACKBONES, POOLINGS as CNN_POOLINGS
from pipeline.errors import ConfigError

__all__ = [
    "DEFAULTS_PATH",
    "EXPERIMENTS_DIR",
    "SCHEMA",
    "Experiment",
    "load_experiment",
    "resolve_config",
    "parse_overrides",
    "validate_config",
    "flatten_config",
    "deep_merge",
    "default_config",
]

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"  # the project folder's experiments/
DEFAULTS_PATH = EXPERIMENTS_DIR / "defaults.yaml"


# --------------------------------------------------------------------------------------------------------------------
# Schema: one rule per key. A rule checks one value and returns a description of what is allowed when it fails.
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One value check: `check(value) -> bool`; `allowed` says in words what passes."""

    check: Callable[[Any], bool]
    allowed: str | Callable[[], str]  # a callable is asked when the message is written (e.g. registered tasks)
    nullable: bool = False

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        return self.check(value)

    def describe(self) -> str:
        text = self.allowed() if callable(self.allowed) else self.allowed
        return text + (" or null" if self.nullable else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def Int(lo: int | None = None, hi: int | None = None, nullable: bool = False) -> Rule:
    """An int in [lo, hi]."""
    rng = f" in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
    return Rule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                "an int" + (rng if lo is not None or hi is not None else ""), nullable)


def Float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, nullable: bool = False) -> Rule:
    """A number in [lo, hi] (or (lo, hi] when lo_open)."""
    left = "(" if lo_open else "["
    rng = f" in {left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"

    def check(v: Any) -> bool:
        if not _is_num(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi

    return Rule(check, "a number" + (rng if lo is not None or hi is not None else ""), nullable)


def Bool() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def Str(nullable: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string", nullable)


def Text() -> Rule:
    return Rule(lambda v: isinstance(v, str), "a string")


def Choice(options: Iterable[str], nullable: bool = False) -> Rule:
    opts = tuple(options)
    return Rule(lambda v: v in opts, "one of " + ", ".join(map(str, opts)), nullable)


def ListOf(item: Rule, min_len: int = 0, nullable: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, list) and len(v) >= min_len and all(item.ok(x) for x in v),
                f"a list of {'at least %d ' % min_len if min_len else ''}items, each {item.describe()}", nullable)


def _task_names() -> tuple[str, ...]:
    from pipeline.config.tasks import task_names

    return task_names()


def _task_known(value: Any) -> bool:
    return isinstance(value, str) and value in _task_names()


_label = Rule(lambda v: isinstance(v, (str, int)) and not isinstance(v, bool), "a label (string or int)")

SCHEMA: dict[str, Any] = {
    "extends": ListOf(Str()),
    "name": Str(nullable=True),
    "description": Text(),
    "dataset": {
        "adapter": Choice(("mias", "cbis", "manifest", "folder"), nullable=True),
        "path": Str(nullable=True),
        "task": Rule(_task_known, lambda: "one of " + ", ".join(_task_names())),
        "classes": ListOf(_label, min_len=2, nullable=True),
        "dense_classes": ListOf(_label, min_len=1, nullable=True),
        "require_roi": Bool(),
        "max_samples": Int(4, None, nullable=True),
    },
    "samples": {
        "size": Int(16, 1024),
        "context": Float(1.0, 10.0),
        "min_side": Int(8, 4096),
        "n_jobs": Int(-1, 64, nullable=True),
        "export_copies": Int(1, 100, nullable=True),
        "export_long_side": Int(64, 4096),
    },
    "preprocessing": {
        "breast_mask": Bool(),
        "clahe": {"enabled": Bool(), "clip_limit": Float(0.0, 1.0, lo_open=True),
                  "kernel_size": Int(2, 4096, nullable=True)},
        "unsharp": {"enabled": Bool(), "radius": Float(0.0, 50.0, lo_open=True), "amount": Float(0.0, 10.0)},
    },
    "features": {
        "handcrafted": {
            "enabled": Bool(),
            "glcm": {
                "levels": Int(2, 256),
                "distances": ListOf(Int(1, 64), min_len=1),
                "angles": Int(1, 16),
            },
            "intensity": {"bins": Int(2, 256)},
            "scales": ListOf(Float(0.05, 1.0), min_len=1),
            "exclude_pectoral": Bool(),
        },
        "density": {
            "enabled": Bool(),
            "exclude_pectoral": Bool(),
            "fat_percentile": Float(0.0, 50.0),
            "relative_thresholds": ListOf(Float(0.0, 0.99, lo_open=True), min_len=1),
            "offsets": ListOf(Float(0.0, 0.99, lo_open=True), min_len=1),
            "core_fraction": Float(0.0, 0.95),
        },
        "cnn": {
            "enabled": Bool(),
            "backbone": Choice(CNN_BACKBONES),
            "weights": Str(),
            "pooling": Choice(CNN_POOLINGS),
            "input": Choice(("raw", "enhanced")),
            "input_size": Choice(("sample", "native")),
            "exclude_pectoral": Bool(),
            "batch_size": Int(1, 1024),
            "finetune": {
                "enabled": Bool(),
                "epochs": Int(1, 1000),
                "learning_rate": Float(0.0, 1.0, lo_open=True),
                "patience": Int(1, 1000),
                "batch_size": Int(2, 1024),
                "trainable_stages": Rule(lambda v: _is_int(v) and v >= 0,
                                         "an int >= 0 (the last k backbone stages train; 0 = only the head) "
                                         "or null (every stage trains)", nullable=True),
                "device": Choice(("auto", "cpu", "cuda")),
            },
        },
        "selection": {"k_best": Int(1, None, nullable=True)},
    },
    "screening": {
        "scale": Float(1.0, 8.0),
        "aspect": Float(0.25, 4.0),
        "tile_size": Int(16, 1024),
        "overlap": Float(0.0, 0.9),
        "max_tiles": Int(1, 256),
        "min_breast": Float(0.0, 1.0),
        "poolings": ListOf(Choice(("max", "mean", "topk")), min_len=1),
        "top_k": Int(1, 256),
        "whole_breast": Bool(),
        "view_fusion": Choice(("mean", "max")),
        "map_C": Float(0.0, None, lo_open=True),
        "context": Rule(lambda v: v in (True, False, "auto"), "true, false or auto (kept per fit where it ranks "
                        "the training images' out-of-fold scores better)"),
        "tile_scores": Int(0, 256),
        "tile_scores_auto": Bool(),
        "tile_pooling": Choice(CNN_POOLINGS, nullable=True),
        "tile_flips": Choice(("none", "h", "hv")),
        "tile_shift": Int(0, 256),
        "tile_exclude_pectoral": Bool(),
        "blobs": Bool(),
        "blob_sigmas": ListOf(Float(0.0, None, lo_open=True), min_len=1),
        "context_C": Float(0.0, None, lo_open=True),
        "context_presence": Bool(),
        "context_asymmetry": Bool(),
        "context_asymmetry_C": Float(0.0, None, lo_open=True),
    },
    "model": {
        "n_estimators": Int(1, 100000),
        "max_depth": Int(1, 32),
        "learning_rate": Float(0.0, 1.0, lo_open=True),
        "subsample": Float(0.0, 1.0, lo_open=True),
        "colsample_bytree": Float(0.0, 1.0, lo_open=True),
        "min_child_weight": Float(0.0, None),
        "reg_lambda": Float(0.0, None),
        "max_bin": Int(2, 4096),
        "class_weight": Rule(lambda v: v in ("balanced", "none"),
                             "balanced (scikit-learn's inverse class frequency) or null for no weights ('none' is a "
                             "deprecated spelling of null)", nullable=True),
    },
    "calibration": {
        "method": Choice(("sigmoid", "isotonic")),
        "holdout": Choice(("cv", "split")),
        "inner_folds": Int(2, 20),
        "ensemble": Bool(),
        "fraction": Float(0.05, 0.5),
    },
    "evaluation": {
        "folds": Int(2, 50),
        "seed": Int(0, 2**32 - 1),
        "target_sensitivity": Float(0.0, 1.0, lo_open=True),
        "decision": Choice(("ordinal", "argmax")),
        "ordinal_min_recall": Float(0.0, 1.0, lo_open=True, nullable=True),
        "bootstrap_resamples": Int(0, 100000),
        "confidence_level": Float(0.5, 0.999),
        "ece_bins": Int(2, 100),
        "conformal": {"enabled": Bool(), "coverage": Float(0.5, 0.999), "class_conditional": Bool()},
        "group_thresholds": {"enabled": Bool(), "min_positives": Int(1, 100000)},
        "shortcut_audit": {"enabled": Bool(), "max_auc": Float(0.5, 1.0)},
    },
    "compute": {
        "n_jobs": Int(-1, 256),
        "image_key": Choice(("content", "stat")),
        "scheduler": Str(nullable=True),
        "cache_dir": Str(nullable=True),
    },
    "tracking": {
        "experiment_name": Str(nullable=True),
        "registered_model_name": Str(nullable=True),
        "champion_metric": Str(nullable=True),
        "higher_is_better": Bool(),
    },
}


# --------------------------------------------------------------------------------------------------------------------
def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `over` merged in: dicts merge key by key, anything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found (give a path to a .yaml file, e.g. experiments/"
                          "mias_density_fused.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (dataset:, features:, ...), "
                          f"got {type(data).__name__}")
    return data


def _layer_file(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The file merged over everything it `extends:` (recursively), without the defaults."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"{path}: extends: forms a cycle ({chain}); remove one of the links")
    data = _read_yaml(path)
    parents = data.get("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: extends: {parents!r} is not a list of file paths")
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = deep_merge(merged, _layer_file((path.parent / parent), (*seen, path)))
    merged = deep_merge(merged, data)
    merged["extends"] = [str(p) for p in parents]
    return merged


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["a.b=1", "c=[x, y]"]` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set features.cnn.enabled=false")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set twice, once as a value")
        node[parts[-1]] = value
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _validate(node: Any, schema: Mapping[str, Any], prefix: str, source: str) -> None:
    where = f"{source}: " if source else ""
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}{prefix or 'the file'}: {_fmt(node)} is not a mapping; expected keys "
                          + ", ".join(schema))
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            raise ConfigError(f"{where}{path}: unknown key; allowed here: {', '.join(schema)}")
        rule = schema[key]
        if isinstance(rule, Mapping):
            _validate(value, rule, path, source)
        elif not rule.ok(value):
            raise ConfigError(f"{where}{path}: {_fmt(value)} is not {rule.describe()}")


def validate_config(config: Mapping[str, Any], source: str = "") -> None:
    """Raise ConfigError naming the first unknown key or bad value (with what is allowed), and cross-key rules."""
    _validate(config, SCHEMA, "", source)
    where = f"{source}: " if source else ""
    feats = config.get("features", {})
    if not feats.get("handcrafted", {}).get("enabled", True) and not feats.get("cnn", {}).get("enabled", True):
        raise ConfigError(f"{where}features: both handcrafted.enabled and cnn.enabled are false; enable at least one")
    classes = config.get("dataset", {}).get("classes")
    if classes is not None and len(set(map(str, classes))) != len(classes):
        raise ConfigError(f"{where}dataset.classes: {_fmt(classes)} has repeated labels; list each class once")
    cnn = feats.get("cnn", {})
    if cnn.get("backbone") == "tiny" and cnn.get("weights") == "imagenet":
        raise ConfigError(f"{where}features.cnn.weights: imagenet, but the 'tiny' test backbone has no ImageNet "
                          "weights; set weights: random (or a .pth path), or pick an ImageNet backbone")
    if cnn.get("exclude_pectoral") and cnn.get("finetune", {}).get("enabled"):
        raise ConfigError(f"{where}features.cnn.exclude_pectoral: true applies to the frozen CNN only, and "
                          "finetune.enabled is true; set one of them false")
    sc = config.get("screening", {})
    if sc.get("context_asymmetry") and "max" not in list(sc.get("poolings") or []):
        raise ConfigError(f"{where}screening.context_asymmetry: true reads the tiles' max pooling; add max to "
                          f"screening.poolings ({_fmt(sc.get('poolings'))}) or set context_asymmetry: false")
    dense = config.get("dataset", {}).get("dense_classes")
    from pipeline.config.tasks import get_task

    task = config.get("dataset", {}).get("task")
    if config.get("samples", {}).get("export_copies") is not None:  # pipeline.training.copies
        if task is not None and not get_task(task).whole_breast:
            raise ConfigError(f"{where}samples.export_copies is for whole-breast tasks (density, screening): a "
                              f"{task} sample is cropped around an ROI given in the original's pixels, which a "
                              "re-exported copy does not have; set samples.export_copies: null")
        if cnn.get("enabled") and cnn.get("finetune", {}).get("enabled"):
            raise ConfigError(f"{where}samples.export_copies needs frozen feature steps, and features.cnn.finetune."
                              "enabled is true (its early-stopping split would hold copies out); set one of them "
                              "off")
    if task is not None and get_task(task).density_labels and classes is not None and dense is not None:
        unknown = [d for d in dense if str(d) not in set(map(str, classes))]
        if unknown:
            raise ConfigError(f"{where}dataset.dense_classes: {_fmt(unknown)} not in dataset.classes "
                              f"{_fmt(classes)}")


@functools.lru_cache(maxsize=1)
def _defaults_cached() -> dict[str, Any]:
    return _read_yaml(DEFAULTS_PATH)


def _defaults() -> dict[str, Any]:
    return copy.deepcopy(_defaults_cached())


def default_config() -> dict[str, Any]:
    """experiments/defaults.yaml as read (a copy): the one source of every default."""
    return _defaults()


def resolve_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> dict:
    """The fully resolved, validated config: defaults <- extends <- file <- overrides."""
    config = _defaults()
    source = str(path) if path is not None else str(DEFAULTS_PATH)
    if path is not None:
        layered = _layer_file(Path(path), ())
        _validate(layered, SCHEMA, "", source)  # name the file where a bad key lives, before merging
        config = deep_merge(config, layered)
    over = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    if over:
        _validate(over, SCHEMA, "", "--set")
        config = deep_merge(config, over)
    validate_config(config, source)
    _fill_derived(config, path)
    return config


def _fill_derived(config: dict[str, Any], path: str | Path | None) -> None:
    """Fill the null defaults that depend on other keys (names, champion metric); check the champion metric and
    normalise model.class_weight to scikit-learn's meaning (None | "balanced" | {label: weight})."""
    from pipeline.config.tasks import get_task

    task_obj = get_task(config["dataset"]["task"])
    task = task_obj.name
    if not config.get("name"):
        config["name"] = Path(path).stem if path is not None else f"default_{task}"
    tr = config["tracking"]
    tr["experiment_name"] = tr["experiment_name"] or f"mammoscope-{task}"
    tr["registered_model_name"] = tr["registered_model_name"] or f"mammoscope-{task}"
    tr["champion_metric"] = tr["champion_metric"] or task_obj.default_champion_metric
    if not task_obj.is_metric(tr["champion_metric"]):
        raise ConfigError(f"{path or DEFAULTS_PATH}: tracking.champion_metric: {tr['champion_metric']!r} is not a "
                          f"metric of the {task} task; use one of "
                          f"{sorted(k for k in task_obj.metric_names() if k.startswith('cv_') and '_ci_' not in k)}")
    model = config["model"]
    if model["class_weight"] == "none":
        warnings.warn("model.class_weight: 'none' is deprecated; write null (scikit-learn's meaning: no weights)",
                      FutureWarning, stacklevel=3)
        model["class_weight"] = None


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists are kept as their YAML flow text (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_config(value, path))
        elif isinstance(value, list):
            out[path] = _fmt(value)
        else:
            out[path] = value
    return out


@dataclass
class Experiment:
    """A resolved experiment: its config (validated) and where it came from."""

    config: dict[str, Any]
    path: Path | None

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def task(self) -> str:
        return str(self.config["dataset"]["task"])

    def section(self, name: str) -> dict[str, Any]:
        return self.config[name]

    def to_yaml(self) -> str:
        """The resolved config as YAML (what is logged with the run)."""
        return yaml.safe_dump(self.config, sort_keys=False)


def load_experiment(path: str | Path | None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Experiment:
    """Load and validate an experiment file (None = the defaults alone) with `--set` style overrides."""
    return Experiment(resolve_config(path, overrides), Path(path).resolve() if path is not None else None)
