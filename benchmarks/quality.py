"""Benchmark: is it any good? The plain recipe beside the shipped default of every task on every real dataset, on
the SAME patient-level folds, with paired patient-level bootstrap CIs of the difference; logged to MLflow.

    .venv/bin/python benchmarks/quality.py                 # every task in TASKS (tens of minutes, 2 cores)
    .venv/bin/python benchmarks/quality.py --ablate        # + plain -> shipped one change at a time
    .venv/bin/python benchmarks/quality.py --quick         # CI-sized: a few real images per task
    .venv/bin/python benchmarks/quality.py --tasks tissue cdd_malignancy --set features.cnn.batch_size=8

The plain recipe (PLAIN): pad to square, 224 px, CLAHE, unsharp mask, GLCM at 64 levels (distance 1, 4 angles) +
32-bin histogram + first-order statistics, frozen EfficientNet-Lite0, XGBoost with its library defaults, sigmoid
calibration in patient-grouped inner folds, arg-max / in-fold 95%-sensitivity threshold. It shares the shipped
default's samples (the same breast crop or ROI crop), so the two differ only by the overrides in PLAIN.
Every arm of a task is cross-validated on one list of folds (5-fold StratifiedGroupKFold by patient, seed 0),
and every figure's CI comes from one set of patient resamples, so "shipped - plain" is a paired difference.
Nothing in an arm is tuned on its test folds: thresholds and ordinal cut-points are fitted on inner out-of-fold
predictions of each training fold; the shipped settings were fixed before this benchmark (see SETTINGS_NOTE).
A new task/dataset is one entry in TASKS. Screening entries (whole images, malignant vs not: `levels=True`) compare
the plain recipe on the 224 px whole breast with the shipped screening recipe (tiles at higher resolution + the
whole breast) and print each figure per image, per breast (views fused as the experiment says) and per exam (its
most suspicious breast), the operating point of each level chosen inside the training folds, and the ROC AUC of
each image alone (the first stage, before the exam stage reads the other views: what "per single image" means in
the external figures of docs/benchmarks.md section 0). Where the table names acquisition machines or sites (the
shortcut audit's site columns, e.g. CDD-CESM's `machine`), each one's images get their own AUC row, paired on their
own patients: the nearest a single development set comes to a scanner the model has not seen.

Nested choices (--choose KEY=V1|V2, repeatable: every combination is a candidate): image-pipeline settings by
scikit-learn's GridSearchCV over the candidates' pipelines; the exam stage of a screening entry (EXAM_STAGE_KEYS:
screening.context, screening.context_asymmetry, ...) by pipeline.model.exam_search.ExamSearch (inner folds carry
each exam's other views; the image fit is shared by the candidates); keys that change the sample itself (SAMPLE_KEYS:
screening.aspect, screening.scale) by GridSearchCV over heads that each read their own candidate's frozen front
(every candidate's samples streamed once); `exam_pooling=none|mean` on a density entry:
density per exam from both breasts' features pooled before the classifier (pipeline.model.exam_pooling) or from the
mean of the images' probabilities. Each arm prints which candidate every outer training fold chose.

Reruns are fast: features come from the feature cache (CachedTransformer), and each arm's out-of-fold result is
kept under <cache>/quality-cv/, keyed by its config, its rows (sample bytes) and its folds; delete that folder (or
pass a fresh --cache-dir) after changing model code. `--pair BEFORE AFTER --tasks screening_cdd` prints two such
memoised screening arms against each other, paired (the same arm before and after a code change that alters the
samples, which leaves the old file in place).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.paths import default_data_root  # noqa: E402

DATA = default_data_root()
EXPERIMENTS = ROOT / "experiments"

SETTINGS_NOTE = ("shipped settings were fixed before this benchmark (not chosen on these folds); thresholds and "
                 "ordinal cut-points are fitted inside each training fold on inner out-of-fold predictions")


def _cdd_benign_malignant(workdir: Path) -> dict[str, Any]:
    """CDD-CESM benign vs malignant whole images: a manifest without the normal images (absolute file paths)."""
    src = DATA / "cdd_cesm" / "manifest.csv"
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    df = df[df["pathology"].isin(["benign", "malignant"])].copy()
    df["file"] = [str((src.parent / f).resolve()) for f in df["file"]]
    out = workdir / "cdd_cesm_benign_malignant.csv"
    df.to_csv(out, index=False)
    return {"dataset": {"adapter": "manifest", "path": str(out), "require_roi": False}}


@dataclass(frozen=True)
class BenchTask:
    """One row group of the table: a task on a dataset, scored with its shipped default experiment."""

    key: str                                   # --tasks name
    task: str                                  # what is called
    dataset: str                               # where
    experiment: str                            # the shipped default experiment file in experiments/
    overrides: Mapping[str, Any] = field(default_factory=dict)
    prepare: Callable[[Path], Mapping[str, Any]] | None = None  # makes dataset overrides (e.g. a filtered manifest)
    prevalence: Mapping[str, float] | None = None  # subsample (whole patients) to these class shares
    needs: str = "mias"                        # data folder that must exist under the data root
    extras: bool = True                        # run the plain variants and the --ablate walk for this entry
    levels: bool = False                       # screening: figures per image, breast and exam (see run_levels)


TASKS: tuple[BenchTask, ...] = (
    BenchTask("tissue", "tissue F/G/D", "mini-MIAS", "mias_density_fused.yaml"),
    BenchTask("tissue_20_60_20", "tissue F/G/D 20/60/20", "mini-MIAS", "mias_density_fused.yaml",
              prevalence={"F": 0.2, "G": 0.6, "D": 0.2}, extras=False),
    BenchTask("lesions", "lesion benign/malignant", "mini-MIAS", "mias_malignancy_fused.yaml"),
    BenchTask("cdd_malignancy", "whole image benign/malignant", "CDD-CESM", "mias_malignancy_fused.yaml",
              prepare=_cdd_benign_malignant, needs="cdd_cesm"),
    BenchTask("screening_mias", "screening malignant vs not", "mini-MIAS", "mias_screening.yaml", levels=True,
              extras=False),
    BenchTask("screening_cdd", "screening malignant vs not", "CDD-CESM", "cdd_cesm_screening.yaml", levels=True,
              needs="cdd_cesm", extras=False),
    # the same benign/malignant images as cdd_malignancy, scored by the shipped whole-image (screening) recipe
    BenchTask("cdd_malignancy_screening", "whole image benign/malignant, screening recipe", "CDD-CESM",
              "cdd_cesm_screening.yaml", prepare=_cdd_benign_malignant, levels=True, needs="cdd_cesm", extras=False),
)

#: The plain recipe, as overrides of a shipped experiment (its dataset and samples are kept).
FOLDS: dict[str, Any] = {"evaluation": {"folds": 5, "seed": 0}}  # every arm's patient folds (--quick: 3)
PLAIN: dict[str, Any] = {
    "preprocessing": {"breast_mask": False, "clahe": {"enabled": True, "clip_limit": 0.01, "kernel_size": None},
                      "unsharp": {"enabled": True, "radius": 2.0, "amount": 1.0}},
    "features": {"handcrafted": {"enabled": True, "glcm": {"levels": 64, "distances": [1], "angles": 4},
                                 "intensity": {"bins": 32}, "scales": [1.0]},
                 "cnn": {"enabled": True, "backbone": "efficientnet_lite0", "weights": "imagenet", "pooling": "avg",
                         "input": "enhanced", "finetune": {"enabled": False}},
                 "selection": {"k_best": None}},
    "model": {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.3, "subsample": 1.0, "colsample_bytree": 1.0,
              "min_child_weight": 1.0, "reg_lambda": 1.0, "class_weight": None, "max_bin": 256},  # XGBoost's defaults
    "calibration": {"method": "sigmoid", "holdout": "cv", "inner_folds": 3, "ensemble": True},
    "evaluation": {"decision": "argmax"},
}
#: The plain recipe of a screening entry scores each image alone: none of the shipped recipe's second stages, whatever
#: the experiment file or --set says (the context stage inherited from mias_screening.yaml made "plain" plain + context).
PLAIN_SCREENING: dict[str, Any] = {"screening": {"context": False, "context_asymmetry": False, "tile_scores": 0}}
VARIANTS = {"fused": {}, "handcrafted": {"features": {"cnn": {"enabled": False}}},
            "cnn": {"features": {"handcrafted": {"enabled": False}}}}

#: --ablate: from plain towards shipped, one group of config keys at a time (each step keeps the ones before).
ABLATION: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("breast mask", ("preprocessing.breast_mask",)),
    ("CLAHE/unsharp as shipped", ("preprocessing.clahe", "preprocessing.unsharp")),
    ("GLCM distances/scales as shipped", ("features.handcrafted",)),
    ("XGBoost settings as shipped", ("model.n_estimators", "model.max_depth", "model.learning_rate",
                                     "model.subsample", "model.colsample_bytree", "model.min_child_weight",
                                     "model.reg_lambda")),
    ("class weighting as shipped", ("model.class_weight",)),
    ("calibration as shipped", ("calibration",)),
    ("decision rule as shipped", ("evaluation.decision",)),
    ("CNN settings as shipped", ("features.cnn", "features.selection")),
)


# --------------------------------------------------------------------------------------------------------------------
def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    from pipeline.config.experiment import deep_merge

    out: dict[str, Any] = {}
    for layer in layers:
        out = deep_merge(out, layer)
    return out


def patient_resamples(groups: np.ndarray, n_resamples: int, seed: int) -> list[np.ndarray]:
    """Row indices of `n_resamples` bootstrap resamples of whole patients (the same list serves every arm)."""
    groups = np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    rows = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    return [np.concatenate([rows[g] for g in rng.integers(0, len(uniq), len(uniq))]) for _ in range(n_resamples)]


def paired_ci(stat: Callable[[np.ndarray], float], arms: Mapping[str, Any], resamples: list[np.ndarray],
              level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """{arm: (value, low, high)} of stat(arm_data, rows) and {"a-b": ...} differences on the SAME resamples.

    `arms` maps a name to whatever `stat(data, rows)` reads; pairs are requested as keys "a-b" of `arms` names.
    """
    names = [n for n in arms if "-" not in n]
    out: dict[str, tuple[float, float, float]] = {}
    alpha = (1 - level) / 2
    boot = {n: np.array([stat(arms[n], r) for r in resamples]) for n in names}
    full = np.arange(len(next(iter(arms.values()))["y"])) if names else None
    for n in names:
        b = boot[n][np.isfinite(boot[n])]
        lo, hi = np.quantile(b, [alpha, 1 - alpha]) if len(b) else (np.nan, np.nan)
        out[n] = (float(stat(arms[n], full)), float(lo), float(hi))
    for pair in (n for n in arms if "-" in n):
        a, b = pair.split("-", 1)
        d = boot[a] - boot[b]
        d = d[np.isfinite(d)]
        lo, hi = np.quantile(d, [alpha, 1 - alpha]) if len(d) else (np.nan, np.nan)
        out[pair] = (out[a][0] - out[b][0], float(lo), float(hi))
    return out


def _auc(d: Mapping[str, np.ndarray], rows: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = d["y"][rows]
    return float(roc_auc_score(y, d["p"][rows])) if 0 < y.sum() < len(y) else np.nan


def _rate(label: int) -> Callable[[Mapping[str, np.ndarray], np.ndarray], float]:
    def stat(d: Mapping[str, np.ndarray], rows: np.ndarray) -> float:
        sel = d["y"][rows] == label
        return float(np.mean(d["call"][rows][sel] == label)) if sel.any() else np.nan
    return stat


def _kappa(d: Mapping[str, np.ndarray], rows: np.ndarray) -> float:
    from pipeline.evaluation.ordinal import quadratic_kappa

    return float(quadratic_kappa(d["y"][rows], d["call"][rows], d["k"])[0])


def folds_digest(folds: list[tuple[np.ndarray, np.ndarray]], ids: np.ndarray) -> str:
    """Short hash of which sample ids are tested in which fold (equal digests = identical folds)."""
    text = "|".join(",".join(sorted(map(str, ids[te]))) for _, te in folds)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Arm:
    """One cross-validated configuration of a task: out-of-fold probabilities and calls."""

    name: str
    config: dict[str, Any]
    proba: np.ndarray
    call: np.ndarray                 # class index per image (binary: at the fold's in-fold threshold)
    argmax: np.ndarray
    exam_call: np.ndarray            # per image: its exam's call (density), from the exam-averaged probabilities
    folds: str
    seconds: float
    thresholds: list[float] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)  # nested arm: the candidate the inner CV picked, per outer fold


#: Switches added after arms were memoised: (parent section, key under it, the value meaning "off", prefix of the
#: parent's keys then left out of the fit key), so an arm memoised before a switch existed stays valid while it is off.
_LATER_SWITCHES: tuple[tuple[str, str, Any, str], ...] = (
    ("screening", "context", False, "context"), ("screening", "context_asymmetry", False, "context_asymmetry"),
    ("screening", "tile_scores", 0, "tile_scores"),
    ("screening", "tile_scores_auto", False, "tile_scores_auto"), ("screening", "tile_pooling", None, "tile_pooling"),
    ("calibration", "ensemble", True, "ensemble"), ("features", "density.enabled", False, "density"),
    ("features.handcrafted", "exclude_pectoral", False, "exclude_pectoral"),
    ("samples", "export_copies", None, "export_"),
    ("evaluation", "ordinal_min_recall", None, "ordinal_min_recall"),
)


def _fit_key(config: Mapping[str, Any]) -> str:
    """What a cross-validation fits (the config without the density decision rule, which only reads its output)."""
    import json

    c = {k: v for k, v in config.items() if k not in ("name", "description")}
    c["evaluation"] = {k: v for k, v in c["evaluation"].items() if k != "decision"}
    c["dataset"] = {**c["dataset"], "path": None}  # may be a temporary file; the rows are keyed by their bytes
    for parent, key, off, drop in _LATER_SWITCHES:  # a switch at its "off" value fits what was fitted before it
        try:
            part = _get(c, parent)
            value = _get(part, key)
        except (KeyError, TypeError):
            continue
        if value == off and type(value) is type(off):
            node, path = c, parent.split(".")
            for name in path[:-1]:  # copy the path down to the parent: the caller's config is not changed
                node[name] = dict(node[name])
                node = node[name]
            node[path[-1]] = {k: v for k, v in part.items() if not k.startswith(drop)}
    return json.dumps(c, sort_keys=True, default=str)


def _memo_file(cache: Path | None, config: Mapping[str, Any], digest: str, X: np.ndarray, tag: str = "",
               prefix: str = "") -> tuple[str, Path | None]:
    """(key, <cache>/quality-cv/<prefix><key>.npz or None) of an arm's CV: its fit config, folds and rows' bytes."""
    rows = hashlib.blake2b(np.ascontiguousarray(X).tobytes()).hexdigest()
    key = hashlib.blake2b((_fit_key(config) + tag + digest + rows).encode(), digest_size=12).hexdigest()
    return key, (Path(cache) / "quality-cv" / f"{prefix}{key}.npz" if cache else None)


def _save_npz(path: Path | None, **arrays: Any) -> None:
    """np.savez to `path` atomically (temporary file, then rename); nothing without a path."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def run_arm(name: str, config: dict[str, Any], data: Any, folds: list, cache: Path | None, exams: np.ndarray,
            memo: dict[str, dict[str, Any]] | None = None, nested: "Nested | None" = None) -> Arm:
    """Cross-validate one configuration on the given folds (a fit already made for an equal config is reused: an
    arm differing only by the density decision reads the same out-of-fold probabilities). With `nested`, each
    training fold fits the candidate its own inner patient-level CV picks (`config` is then the shipped one)."""
    from sklearn.base import clone

    from pipeline.config.experiment import deep_merge
    from pipeline.config.tasks import get_task
    from pipeline.evaluation.metrics import exam_average
    from pipeline.training.cv import cross_validate
    from pipeline.model.estimators import build_pipeline, final_classifier

    memo = {} if memo is None else memo
    digest = folds_digest(folds, data.table["sample_id"].astype(str).to_numpy())
    key, disk = _memo_file(cache, config, digest, data.X, tag=nested.tag if nested else "")
    if key not in memo and disk is not None and disk.is_file():  # a rerun: this arm's CV on these rows and folds
        z = np.load(disk)
        memo[key] = {"proba": z["proba"], "thresholds": list(z["thresholds"]), "seconds": float(z["seconds"]),
                     "calls": {r: z[f"call_{r}"] for r in ("ordinal", "argmax", "exam_ordinal", "exam_argmax")},
                     "chosen": [str(c) for c in z["chosen"]] if "chosen" in z else []}
    if key not in memo:
        fit_cfg = deep_merge(config, {"evaluation": {"decision": "ordinal"}})  # cut-points fitted too (cheap)
        pipe = build_pipeline(fit_cfg, cache)
        n = len(data.y)
        calls = {r: np.zeros(n, int) for r in ("ordinal", "argmax", "exam_ordinal", "exam_argmax")}
        chosen: list[str] = []

        def on_fold(i: int, tr: np.ndarray, te: np.ndarray, est: Any, p: np.ndarray) -> None:
            if nested is not None:
                chosen.append(nested.chosen(est))
            fold_done(name, i, len(folds), t0, chosen)
            clf = final_classifier(est)
            pe = exam_average(p, exams[te])
            calls["ordinal"][te], calls["exam_ordinal"][te] = clf.decide(p), clf.decide(pe)
            calls["argmax"][te] = p.argmax(axis=1) if p.shape[1] > 2 else clf.decide(p)
            calls["exam_argmax"][te] = pe.argmax(axis=1) if p.shape[1] > 2 else clf.decide(pe)

        t0 = time.perf_counter()
        make = nested.make if nested is not None else (lambda: clone(pipe))
        cv = cross_validate(make, data.X, data.y, data.groups, folds, route_groups=True, on_fold=on_fold)
        memo[key] = {"proba": cv.proba, "calls": calls, "seconds": time.perf_counter() - t0,
                     "thresholds": list(cv.fold_thresholds), "chosen": chosen}
        _save_npz(disk, proba=cv.proba, thresholds=np.asarray(cv.fold_thresholds), seconds=memo[key]["seconds"],
                  chosen=np.asarray(chosen, dtype=str), **{f"call_{r}": c for r, c in calls.items()})
    done = memo[key]
    rule = config["evaluation"].get("decision", "argmax") if get_task(config["dataset"]["task"]).ordinal else "argmax"
    return Arm(name, config, done["proba"], done["calls"][rule], done["proba"].argmax(axis=1),
               done["calls"][f"exam_{rule}"], digest, done["seconds"], list(done["thresholds"]), done["chosen"])


# --------------------------------------------------------------------------------------------------------------------
# --choose: a setting picked by nested patient-level CV (each outer training fold picks by its own inner CV)
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Nested:
    """An arm that picks one of several candidate configurations inside each outer training fold."""

    labels: list[str]                   # candidate i's "KEY=VALUE,..." text
    make: Callable[[], Any]             # a fresh unfitted search (GridSearchCV over the candidates' pipelines);
                                        # exam-stage choices: a fresh unfitted image pipeline (the shipped one)
    tag: str                            # memo identity: the candidates' fit configs
    stages: list[dict[str, Any]] | None = None  # exam-stage choices: each candidate's ExamModel stage parameters
    inner_folds: int = 3
    seed: int = 0

    def chosen(self, est: Any) -> str:
        """The label of the candidate a fitted fold model (ExamSearch, ExamModel or search) picked."""
        if self.stages is not None:
            return self.labels[est.best_index_]
        search = getattr(est, "pipeline_", est)
        return self.labels[search.best_index_]


#: screening keys that set the exam stage (ExamModel, after the image pipeline): chosen by an ExamSearch
EXAM_STAGE_KEYS = ("screening.context", "screening.context_C", "screening.context_asymmetry",
                   "screening.context_asymmetry_C", "screening.context_presence")


def parse_choices(items: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """--choose KEY=V1|V2[|...] (repeatable) -> [(label, overrides)]: every combination of the keys' values."""
    from itertools import product

    from pipeline.config.experiment import parse_overrides

    keys, values = [], []
    for item in items:
        key, _, vals = item.partition("=")
        if "|" not in vals:
            raise SystemExit(f"--choose {item!r}: expected KEY=V1|V2[|...] (two or more candidate values)")
        keys.append(key.strip())
        values.append([v.strip() for v in vals.split("|")])
    out = []
    for combo in product(*values):
        pairs = [f"{k}={v}" for k, v in zip(keys, combo)]
        out.append((",".join(pairs), parse_overrides(pairs)))
    return out


def choice_keys(choices: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The --choose keys of parse_choices' candidates, in order (from the first candidate's label)."""
    return [pair.split("=", 1)[0] for pair in choices[0][0].split(",")]


def nested_search(labels: list[str], pipes: list[Any], binary: bool, inner_folds: int, seed: int) -> Nested:
    """A Nested arm: scikit-learn's GridSearchCV over the candidates' whole pipelines, scored by ROC AUC (binary)
    or quadratic kappa of the calls (ordered classes) on patient-grouped stratified inner folds of the training
    fold, refitted on all of it with the winner; the outer test fold is seen only by the refitted winner."""
    import json

    from sklearn.base import clone
    from sklearn.metrics import cohen_kappa_score, make_scorer
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

    scoring = "roc_auc" if binary else make_scorer(cohen_kappa_score, weights="quadratic")
    search = GridSearchCV(pipes[0], [{"steps": [p.steps]} for p in pipes], scoring=scoring, refit=True,
                          cv=StratifiedGroupKFold(inner_folds, shuffle=True, random_state=seed), error_score="raise")
    tag = "nested:" + json.dumps(labels) + f":{inner_folds}:{seed}"
    return Nested(labels, lambda: clone(search), tag)


def choice_arm(bt: BenchTask, over: Mapping[str, Any], choices: list[tuple[str, dict[str, Any]]],
               build: Callable[[dict[str, Any]], Any], binary: bool) -> tuple[str, Nested]:
    """(arm name, Nested) for --choose on one task: each candidate is the shipped experiment with its overrides."""
    from pipeline.config.experiment import resolve_config

    path = EXPERIMENTS / bt.experiment
    configs = [resolve_config(path, _merge(over, o)) for _, o in choices]
    ev = configs[0]["evaluation"]
    keys = choice_keys(choices)
    nested = nested_search([label for label, _ in choices], [build(c) for c in configs], binary,
                           int(configs[0]["calibration"]["inner_folds"]), int(ev["seed"]))
    return f"nested[{','.join(keys)}]", nested


def exam_choice_arm(bt: BenchTask, over: Mapping[str, Any], choices: list[tuple[str, dict[str, Any]]],
                    make: Callable[[], Any]) -> tuple[str, Nested]:
    """(arm name, Nested) for --choose of exam-stage keys (EXAM_STAGE_KEYS) on a screening task: each outer training
    fold fits the ExamModel whose stage its own patient-grouped inner CV ranks best (pipeline.model.exam_search),
    the image pipeline being the shipped one (`make`)."""
    import json

    from pipeline.config.experiment import resolve_config
    from pipeline.model.exam import STAGE_PARAMS
    from pipeline.model.screening import build_exam_model

    path = EXPERIMENTS / bt.experiment
    configs = [resolve_config(path, _merge(over, o)) for _, o in choices]
    stages = [{k: v for k, v in build_exam_model(c, None, with_map=False).get_params(deep=False).items()
               if k in STAGE_PARAMS and k != "view_fusion"} for c in configs]
    ev, folds = configs[0]["evaluation"], int(configs[0]["calibration"]["inner_folds"])
    labels = [label for label, _ in choices]
    keys = choice_keys(choices)
    tag = "nested-exam:" + json.dumps(labels) + json.dumps(stages, sort_keys=True, default=str) + f":{folds}:{ev['seed']}"
    return f"nested[{','.join(keys)}]", Nested(labels, make, tag, stages, folds, int(ev["seed"]))


#: screening keys that change the sample itself (its frame and resolution): each candidate's frozen front runs once
#: over its own samples and the candidates' heads are chosen on the columns of their own front (`sample_choice_arm`)
SAMPLE_KEYS = ("screening.aspect", "screening.scale")


def own_front(cfg: Mapping[str, Any], data: Any, cache: Path, label: str,
              progress: Callable[[str], None]) -> np.ndarray:
    """(n, d) float32 the frozen front's output of `cfg`'s own samples (streamed once, the feature cache), in the
    row order of `data`: for settings that change the sample itself (SAMPLE_KEYS)."""
    from pipeline.training.train import load_task_features

    t0 = time.perf_counter()
    got = load_task_features(cfg, lambda s: None, cache_dir=cache)
    ids = pd.Index(got.table["sample_id"].astype(str))
    want = data.table["sample_id"].astype(str).to_numpy()
    missing = set(want) - set(ids)
    if missing:
        raise SystemExit(f"{label}: {len(missing)} images give the shipped sample but not this one "
                         f"(first: {sorted(missing)[0]})")
    F = np.asarray(got.features, np.float32)[ids.get_indexer(want)]
    progress(f"  {label}: front of {F.shape[1]} columns for {len(F)} images ({time.perf_counter() - t0:.0f} s)")
    return F


def sample_choice_arm(bt: BenchTask, over: Mapping[str, Any], choices: list[tuple[str, dict[str, Any]]], data: Any,
                      cache: Path, progress: Callable[[str], None]) -> tuple[str, Nested, np.ndarray]:
    """(arm name, Nested, rows [front of candidate 1 | front of candidate 2 | ...]) for --choose of SAMPLE_KEYS on a
    screening task: every candidate's samples streamed through its frozen front once (`own_front`), and each
    candidate a Pipeline that reads its own front's columns, then its head; the candidates are chosen per outer
    training fold by GridSearchCV on patient-grouped inner folds as `choice_arm`."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    from pipeline.config.experiment import resolve_config
    from pipeline.model.screening import build_screening_pipeline

    path = EXPERIMENTS / bt.experiment
    configs = [resolve_config(path, _merge(over, o)) for _, o in choices]
    blocks, pipes, start = [], [], 0
    for (label, _), cfg in zip(choices, configs):
        F = own_front(cfg, data, cache, f"--choose {label}", progress)
        head = build_screening_pipeline(cfg, cache).steps[2:]
        pick = ColumnTransformer([("front", "passthrough", slice(start, start + F.shape[1]))], sparse_threshold=0.0)
        pipes.append(Pipeline([("preprocess", pick), *head]))
        blocks.append(F)
        start += F.shape[1]
    ev = configs[0]["evaluation"]
    nested = nested_search([label for label, _ in choices], pipes, True, int(configs[0]["calibration"]["inner_folds"]),
                           int(ev["seed"]))
    return f"nested[{','.join(choice_keys(choices))}]", nested, np.hstack(blocks)


def _sample_changed(cfg: Mapping[str, Any], shipped: Mapping[str, Any]) -> bool:
    """Whether `cfg` cuts other samples than `shipped` (a SAMPLE_KEYS value differs)."""
    return any(_get(cfg, k) != _get(shipped, k) for k in SAMPLE_KEYS)


#: --choose exam_pooling=none|mean: density per exam from the mean of the images' probabilities (none) or from both
#: breasts' features pooled before the classifier (mean; pipeline.model.exam_pooling). A benchmark key, not a config
#: switch: nothing serves pooled features unless this arm earns it.
EXAM_POOLING = "exam_pooling"


def pooling_arm(bt: BenchTask, over: Mapping[str, Any], choices: list[tuple[str, dict[str, Any]]], data: Any,
                exams: np.ndarray, cache: Path) -> tuple[str, Nested, Any]:
    """(arm name, Nested, the task data on rows [exam code | frozen features]) for --choose exam_pooling=...: the
    shipped recipe's frozen front run once (its per-image feature cache), each candidate its head behind an
    ExamMeanRows step; chosen per outer training fold by GridSearchCV on patient-grouped inner folds, which keep
    every exam whole, as the outer folds do."""
    import dataclasses

    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    from pipeline.config.experiment import deep_merge, resolve_config
    from pipeline.model.estimators import build_pipeline
    from pipeline.model.exam_pooling import ExamMeanRows, with_exam_codes
    from pipeline.training.stream import split_pipeline

    shipped = deep_merge(resolve_config(EXPERIMENTS / bt.experiment, over), {"evaluation": {"decision": "ordinal"}})
    parts = split_pipeline(build_pipeline(shipped, cache))
    if parts is None:
        raise SystemExit(f"--choose {EXAM_POOLING}: {bt.key}'s feature steps are not frozen (fine-tuning)")
    front, head = parts
    features = front.fit(data.X[:2]).transform(data.X)
    pools = [str(o.get(EXAM_POOLING)) for _, o in choices]
    pipes = [Pipeline([("pool", ExamMeanRows(pool=v)), *clone(head).steps]) for v in pools]
    ev = shipped["evaluation"]
    nested = nested_search([label for label, _ in choices], pipes, len(data.classes) == 2,
                           int(shipped["calibration"]["inner_folds"]), int(ev["seed"]))
    return f"nested[{EXAM_POOLING}]", nested, dataclasses.replace(data, X=with_exam_codes(features, exams))


def _prevalence_subsample(data: Any, shares: Mapping[str, float], seed: int) -> Any:
    """The task data restricted to whole patients so the class shares approach `shares` (seeded)."""
    from pipeline.training.train import TaskData

    rng = np.random.default_rng(seed)
    label = pd.Series(data.y).groupby(data.groups).first()
    counts = label.value_counts()
    total = min(counts.get(data.classes.index(c), 0) / s for c, s in shares.items() if s > 0)
    keep: list[str] = []
    for c, s in shares.items():
        pats = label.index[label == data.classes.index(c)].to_numpy()
        keep += list(rng.permutation(pats)[: int(round(total * s))])
    sel = np.isin(data.groups, keep)
    return TaskData(table=data.table[sel].reset_index(drop=True), X=data.X[sel], y=data.y[sel],
                    groups=data.groups[sel], classes=data.classes, dense_classes=data.dense_classes,
                    density=data.density[sel], source=data.source)


def arm_configs(bt: BenchTask, base: Mapping[str, Any], common: Mapping[str, Any], cli: list[str],
                ablate: bool, variants: bool, extra: Mapping[str, list[str]] | None = None
                ) -> dict[str, dict[str, Any]]:
    """{arm name: resolved config}: plain (and its variants), shipped, extra shipped variants, the ablation walk."""
    from pipeline.config.experiment import parse_overrides, resolve_config
    from pipeline.config.tasks import get_task

    path = EXPERIMENTS / bt.experiment
    over = _merge(base, common, parse_overrides(cli))
    shipped = resolve_config(path, over)
    plain_over = _merge(PLAIN, base, common, parse_overrides(cli))
    arms = {"plain": resolve_config(path, plain_over)}
    if variants:
        for v, o in VARIANTS.items():
            if o:
                arms[f"plain_{v}"] = resolve_config(path, _merge(plain_over, o))
    arms["shipped"] = shipped
    ordinal = get_task(shipped["dataset"]["task"]).ordinal
    if ordinal:
        arms["shipped_argmax"] = resolve_config(path, _merge(over, {"evaluation": {"decision": "argmax"}}))
    for name, items in (extra or {}).items():
        arms[name] = resolve_config(path, _merge(over, parse_overrides(items)))
    if ablate:
        step, prev = dict(plain_over), arms["plain"]
        for label, keys in ABLATION:
            if keys == ("evaluation.decision",) and not ordinal:
                continue  # the decision rule applies to ordered multiclass tasks only
            for key in keys:
                step = _merge(step, _nest(key, _get(shipped, key)))
            cfg = resolve_config(path, step)
            if cfg != prev:  # a step that changes nothing for this task is not run
                arms[f"+ {label}"] = prev = cfg
    return arms


def _fmt(v: tuple[float, float, float], signed: bool = False) -> str:
    x, lo, hi = v
    if not np.isfinite(x):
        return "n/a"
    s = "+.2f" if signed else ".2f"
    return f"{x:{s}} [{lo:{s}}, {hi:{s}}]"


def score_task(bt: BenchTask, data: Any, arms: dict[str, Arm], exams: np.ndarray, n_resamples: int,
               seed: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Table rows (plain vs shipped, paired) and every arm's headline metrics (for MLflow and the arms table)."""
    y = data.y
    k = len(data.classes)
    res = patient_resamples(data.groups, n_resamples, seed)
    n_txt = f"{len(y)} / {len(set(data.groups))}"
    rows: list[dict[str, Any]] = []
    per_arm: dict[str, dict[str, float]] = {a: {} for a in arms}

    def add(metric: str, stat: Callable, key: str, field_name: str = "call", resamples: list = res,
            sel: np.ndarray | None = None) -> None:
        sel = np.arange(len(y)) if sel is None else sel
        d = {a: {"y": y[sel], "p": arm.proba[sel, -1], "call": getattr(arm, field_name)[sel], "k": k}
             for a, arm in arms.items()}
        d["shipped-plain"] = None
        extra = [a for a in arms if a not in ("plain", "shipped", "shipped_argmax")]  # --arm / --choose arms
        for a in arms:
            if a not in ("plain", "shipped"):
                d[f"{a}-plain"] = None
        for a in extra:
            d[f"{a}-shipped"] = None
        ci = paired_ci(stat, d, resamples)
        for a in arms:
            per_arm[a][key], per_arm[a][f"{key}_ci_low"], per_arm[a][f"{key}_ci_high"] = ci[a]
            if a != "plain":
                per_arm[a][f"{key}_minus_plain"], per_arm[a][f"{key}_minus_plain_ci_low"], \
                    per_arm[a][f"{key}_minus_plain_ci_high"] = ci[f"{a}-plain"]
        row = {"task": bt.task, "dataset": bt.dataset, "n images / patients": n_txt, "metric": metric,
               "plain": _fmt(ci["plain"]), "shipped": _fmt(ci["shipped"]),
               "shipped - plain (paired)": _fmt(ci["shipped-plain"], signed=True)}
        for a in extra:  # beside shipped, paired on the same resamples, as the screening rows are
            row[a], row[f"{a} - shipped"] = _fmt(ci[a]), _fmt(ci[f"{a}-shipped"], signed=True)
        rows.append(row)

    if k == 2:
        add("ROC AUC", _auc, "roc_auc")
        add("spec at in-fold 95%-sens thr", _rate(0), "spec_at_target")
        add("sens reached", _rate(1), "sens_at_target")
    else:
        add("kappa_w per image", _kappa, "kappa_quadratic")
        for j, c in enumerate(data.classes):
            add(f"recall {c} per image", _rate(j), f"recall_{c}")
        first = ~pd.DataFrame({"exam": exams, "y": y}).duplicated().to_numpy()
        if first.sum() < len(y):
            eres = patient_resamples(data.groups[first], n_resamples, seed)
            add(f"kappa_w per exam (n={int(first.sum())})", _kappa, "exam_kappa_quadratic", "exam_call", eres, first)
            for j, c in (list(enumerate(data.classes))[0], list(enumerate(data.classes))[-1]):
                add(f"recall {c} per exam", _rate(j), f"exam_recall_{c}", "exam_call", eres, first)
    for a in arms:
        per_arm[a]["seconds"] = arms[a].seconds
    return rows, per_arm


# --------------------------------------------------------------------------------------------------------------------
# Screening entries: whole images, malignant vs not, at image / breast / exam level
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class LevelArm:
    """One cross-validated screening configuration: out-of-fold P(malignant) per image, in-fold calls per level."""

    name: str
    config: dict[str, Any]
    proba: np.ndarray                 # (n_images,) positive-class probability
    calls: dict[str, dict[str, bool]]  # level -> unit id -> call at the level's in-fold threshold
    folds: str
    seconds: float
    chosen: list[str] = field(default_factory=list)  # nested arm: the candidate picked per outer fold
    kept: dict[str, list[bool]] = field(default_factory=dict)  # LevelTracker.kept: per stage, per fold, kept?
    single: np.ndarray | None = None  # (n_images,) the first stage's probability, each image alone (None: not kept)


def fold_done(arm: str, i: int, n: int, t0: float, chosen: list[str]) -> None:
    """One line per outer fold on stderr, so a cold run (features computed inside the first folds) is never silent."""
    print(f"  {arm}: outer fold {i + 1}/{n} done, {time.perf_counter() - t0:.0f} s"
          + (f", chose {chosen[-1]}" if chosen else ""), file=sys.stderr, flush=True)


def run_level_arm(name: str, config: dict[str, Any], make: Callable[[], Any], X: np.ndarray, data: Any,
                  folds: list, cache: Path | None, how: str, nested: Nested | None = None) -> LevelArm:
    """Patient-level CV of one screening arm on the given folds, thresholds per level chosen in the training folds
    (pipeline.training.levels.LevelTracker); the out-of-fold result is kept under <cache>/quality-cv/ like run_arm's."""
    import json

    from pipeline.training.cv import cross_validate
    from pipeline.model.levels import LEVELS
    from pipeline.training.levels import LevelTracker

    digest = folds_digest(folds, data.table["sample_id"].astype(str).to_numpy())
    _, disk = _memo_file(cache, config, digest, X, tag=name + (nested.tag if nested else ""), prefix="levels-")
    if disk is not None and disk.is_file():
        arm = load_level_arm(disk, name, config, digest)
        # a file saved before the first stage's probabilities were kept: a fixed arm is run again (minutes); a nested
        # arm (an hour on CDD-CESM) is read as it is, and the table then leaves out the image-alone row
        if arm.single is not None or nested is not None:
            return arm
    from pipeline.model.screening import build_exam_model, context_C

    config = {**config, "screening": {**config["screening"], "view_fusion": how}}
    staged = nested is not None and nested.stages is not None and any(
        s.get("context_C") is not None for s in nested.stages)  # an exam-stage choice with a context candidate
    tracker = LevelTracker(data.table, data.y, X, how, context_C(config) is not None or staged)
    chosen: list[str] = []

    def on_fold(i: int, tr: np.ndarray, te: np.ndarray, est: Any, p: np.ndarray) -> None:
        if nested is not None:
            chosen.append(nested.chosen(est))
        fold_done(name, i, len(folds), t0, chosen)
        tracker.on_fold(i, tr, te, est, p)

    def make_exam() -> Any:  # every fold an ExamModel, fitted as train's folds and final model are
        exam = build_exam_model(config, (nested.make if nested else make)(), with_map=False)
        if nested is not None and nested.stages is not None:  # the exam stage chosen by inner CV of the fold
            from pipeline.model.exam_search import ExamSearch

            return ExamSearch(exam, nested.stages, nested.inner_folds, nested.seed)
        return exam

    t0 = time.perf_counter()
    cv = cross_validate(make_exam, X, data.y, data.groups, folds, route_groups=True, on_fold=on_fold,
                        exams=data.table)
    seconds = time.perf_counter() - t0
    single = cv.proba[:, 1]
    calls = {lv: {u: bool(c) for u, c in tracker.calls[lv].items()} for lv in LEVELS}
    proba = tracker.image_proba(single)
    kept = tracker.kept()
    _save_npz(disk, proba=proba, single=single, calls=json.dumps(calls), seconds=seconds,
              chosen=np.asarray(chosen, dtype=str), **{f"kept_{k}": np.asarray(v, bool) for k, v in kept.items()})
    return LevelArm(name, config, proba, calls, digest, seconds, chosen, kept, single)


def load_level_arm(path: Path, name: str, config: dict[str, Any] | None = None, folds: str = "") -> LevelArm:
    """A screening arm as run_level_arm memoised it (<cache>/quality-cv/levels-*.npz)."""
    import json

    z = np.load(path)
    calls = json.loads(str(z["calls"]))
    chosen = [str(c) for c in z["chosen"]] if "chosen" in z else []
    kept = {k[len("kept_"):]: [bool(v) for v in z[k]] for k in z.files if k.startswith("kept_")}
    single = z["single"] if "single" in z.files else None  # absent in files saved before it was kept
    return LevelArm(name, config or {}, z["proba"], calls, folds, float(z["seconds"]), chosen, kept, single)


def pair_level_arms(bt: BenchTask, data: Any, before: LevelArm, after: LevelArm, how: str, n_resamples: int,
                    seed: int = 0) -> pd.DataFrame:
    """AFTER against BEFORE per level (AUC, spec at the in-fold 95%-sensitivity threshold, sensitivity reached),
    paired on the same whole-patient resamples: one arm before and after a change of code, which no config of one
    run can express (e.g. the breast mask). Both must come from the same folds (the same --set evaluation.*)."""
    n = len(data.y)
    for arm in (before, after):
        if len(arm.proba) != n:
            raise SystemExit(f"--pair: {arm.name} holds {len(arm.proba)} images, {bt.key} has {n}: not the same rows")
    rows, _ = score_levels(bt, data, {"plain": before, "shipped": after}, how, n_resamples, seed)
    names = {"plain": "before", "shipped": "after", "shipped - plain (paired)": "after - before (paired)"}
    return pd.DataFrame(rows).rename(columns=names)


def score_levels(bt: BenchTask, data: Any, arms: dict[str, "LevelArm"], how: str, n_resamples: int, seed: int
                 ) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Table rows per level (AUC, spec at the in-fold 95%-sensitivity threshold, sensitivity reached; shipped -
    plain paired on the same whole-patient resamples of that level's units) and every arm's headline metrics."""
    from pipeline.io.exams import level_ids
    from pipeline.model.levels import LEVELS, level_proba

    ids = level_ids(data.table)
    patient_of = {lv: pd.Series(data.groups, index=ids[lv]).groupby(level=0).first() for lv in LEVELS}
    rows: list[dict[str, Any]] = []
    per_arm: dict[str, dict[str, float]] = {a: {"seconds": arm.seconds} for a, arm in arms.items()}
    for lv in LEVELS:
        fused = {a: level_proba(arm.proba, data.y, ids, how)[lv] for a, arm in arms.items()}
        units, y = fused["plain"][0], fused["plain"][1]
        res = patient_resamples(patient_of[lv].reindex(units).to_numpy(), n_resamples, seed)
        d: dict[str, Any] = {a: {"y": y, "p": f[2], "call": np.array([arms[a].calls[lv][u] for u in units], int)}
                             for a, f in fused.items()}
        extra = _request_pairs(d, arms)
        n_txt = f"{len(units)} {lv}s / {len(set(data.groups))}"
        for metric, stat, key in (("ROC AUC", _auc, "roc_auc"), ("spec at in-fold 95%-sens thr", _rate(0),
                                                                  "spec_at_target"),
                                  ("sens reached", _rate(1), "sens_at_target")):
            ci = paired_ci(stat, d, res)
            for a in arms:
                per_arm[a][f"{lv}_{key}"], per_arm[a][f"{lv}_{key}_ci_low"], per_arm[a][f"{lv}_{key}_ci_high"] = ci[a]
            for a in arms:
                if a != "plain":
                    per_arm[a][f"{lv}_{key}_minus_plain"], per_arm[a][f"{lv}_{key}_minus_plain_ci_low"], \
                        per_arm[a][f"{lv}_{key}_minus_plain_ci_high"] = ci[f"{a}-plain"]
            rows.append(_paired_row(bt, n_txt, f"{metric} per {lv}", ci, extra))
    if all(arm.single is not None for arm in arms.values()):  # what the maintainers' "per single image" reads
        rows.append(_single_image_row(bt, data, arms, n_resamples, seed, per_arm))
    rows += _site_rows(bt, data, arms, n_resamples, seed, per_arm)
    return rows, per_arm


def _site_rows(bt: BenchTask, data: Any, arms: dict[str, "LevelArm"], n_resamples: int, seed: int,
               per_arm: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """ROC AUC per image on the images of each machine / site the table names (pipeline.training.cv.site_groups:
    the shortcut audit's site columns with 2..8 values), arms paired on whole-patient resamples of those images: how
    a recipe does on each acquisition machine of one development set, the nearest this set comes to a scanner it was
    not trained on. Only machines whose images hold both classes. Adds `site/<column>/<value>/image_roc_auc*` to
    `per_arm` (each arm's child run in MLflow)."""
    from pipeline.training.cv import site_groups

    rows: list[dict[str, Any]] = []
    for name, prefix, m in site_groups(data.table):
        y = np.asarray(data.y)[m]
        if len(np.unique(y)) < 2:
            continue
        d: dict[str, Any] = {a: {"y": y, "p": np.asarray(arm.proba)[m]} for a, arm in arms.items()}
        extra = _request_pairs(d, arms)
        groups = np.asarray(data.groups)[m]
        ci = paired_ci(_auc, d, patient_resamples(groups, n_resamples, seed))
        for a in arms:
            key = f"{prefix}image_roc_auc"
            per_arm[a][key], per_arm[a][f"{key}_ci_low"], per_arm[a][f"{key}_ci_high"] = ci[a]
        rows.append(_paired_row(bt, f"{int(m.sum())} images / {len(set(groups))}",
                                f"ROC AUC per image, {name} ({int(y.sum())} malignant)", ci, extra))
    return rows


def _single_image_row(bt: BenchTask, data: Any, arms: dict[str, "LevelArm"], n_resamples: int, seed: int,
                      per_arm: dict[str, dict[str, float]]) -> dict[str, Any]:
    """ROC AUC per image of each image alone (the first stage, before the exam stage reads the other views),
    paired against plain on the same whole-patient resamples; adds image_alone_roc_auc* to `per_arm`."""
    d: dict[str, Any] = {a: {"y": data.y, "p": arm.single} for a, arm in arms.items()}
    extra = _request_pairs(d, arms)
    ci = paired_ci(_auc, d, patient_resamples(data.groups, n_resamples, seed))
    for a in arms:
        per_arm[a]["image_alone_roc_auc"], per_arm[a]["image_alone_roc_auc_ci_low"], \
            per_arm[a]["image_alone_roc_auc_ci_high"] = ci[a]
    return _paired_row(bt, f"{len(data.y)} images / {len(set(data.groups))}", "ROC AUC per image alone (first stage)",
                       ci, extra)


def _request_pairs(d: dict[str, Any], arms: Mapping[str, Any]) -> list[str]:
    """Ask paired_ci for shipped - plain and each extra arm (--arm / --choose) against plain and shipped (keys
    added to `d`); returns the extra arms."""
    d["shipped-plain"] = None
    extra = [a for a in arms if a not in ("plain", "shipped")]
    for a in extra:
        d[f"{a}-plain"] = d[f"{a}-shipped"] = None
    return extra


def _paired_row(bt: BenchTask, n_txt: str, metric: str, ci: Mapping[str, tuple[float, float, float]],
                extra: list[str]) -> dict[str, Any]:
    """One screening table row: plain, shipped, shipped - plain, then each extra arm and its two differences."""
    row = {"task": bt.task, "dataset": bt.dataset, "n images / patients": n_txt, "metric": metric,
           "plain": _fmt(ci["plain"]), "shipped": _fmt(ci["shipped"]),
           "shipped - plain (paired)": _fmt(ci["shipped-plain"], signed=True)}
    for a in extra:
        row[a], row[f"{a} - plain"] = _fmt(ci[a]), _fmt(ci[f"{a}-plain"], signed=True)
        row[f"{a} - shipped"] = _fmt(ci[f"{a}-shipped"], signed=True)
    return row


def plain_screening_config(path: Path, over: Mapping[str, Any]) -> dict[str, Any]:
    """The plain recipe of a screening entry: PLAIN on the 224 px whole breast, each image scored alone."""
    from pipeline.config.experiment import resolve_config
    from pipeline.model.screening import whole_image_config

    return whole_image_config(resolve_config(path, _merge(PLAIN, over, PLAIN_SCREENING)))


def run_levels(bt: BenchTask, base: Mapping[str, Any], common: Mapping[str, Any], cli: list[str], cache: Path,
               n_resamples: int, progress: Callable[[str], None],
               extra: Mapping[str, list[str]] | None = None,
               choices: list[tuple[str, dict[str, Any]]] | None = None) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]],
                                                         dict[str, str], dict[str, LevelArm]]:
    """A screening entry: the plain recipe (PLAIN on the 224 px whole breast, binary labels) beside the shipped
    screening recipe, on one list of patient-level folds (no patient, breast or exam on both sides of a fold)."""
    from sklearn.base import clone

    from pipeline.config.experiment import parse_overrides, resolve_config
    from pipeline.config.tasks import get_task
    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.samples import load_samples
    from pipeline.training.levels import check_folds
    from pipeline.model.estimators import build_pipeline
    from pipeline.model.screening import build_screening_pipeline, whole_image_config
    from pipeline.training.train import load_task_data

    path = EXPERIMENTS / bt.experiment
    over = _merge(base, common, parse_overrides(cli))
    shipped = resolve_config(path, over)
    plain = plain_screening_config(path, over)
    t0 = time.perf_counter()
    data = load_task_data(shipped, progress=lambda s: None)
    X224, errors = load_samples(data.table, get_task(plain["dataset"]["task"]).sample_recipe,
                                size=int(plain["samples"]["size"]), n_jobs=int(shipped["compute"]["n_jobs"]))
    if len(errors):
        raise RuntimeError(f"{bt.key}: {len(errors)} images give a screening sample but no 224 px sample")
    ev = shipped["evaluation"]
    folds = patient_stratified_folds(data.y, data.groups, ev["folds"], ev["seed"])
    check_folds(folds, data.table)
    progress(f"{bt.key}: {len(data.y)} images ({int(data.y.sum())} malignant) of {len(set(data.groups))} patients; "
             f"{len(folds)} patient-level folds ({time.perf_counter() - t0:.0f} s to load)")
    how = shipped["screening"]["view_fusion"]
    plain_pipe, shipped_pipe = build_pipeline(plain, cache), build_screening_pipeline(shipped, cache)
    arms = {"plain": run_level_arm("plain", plain, lambda: clone(plain_pipe), X224, data, folds, cache, how),
            "shipped": run_level_arm("shipped", shipped, lambda: clone(shipped_pipe), data.X, data, folds, cache,
                                     how)}
    for name, items in (extra or {}).items():  # --arm: the shipped screening recipe with these overrides
        cfg = resolve_config(path, _merge(over, parse_overrides(items)))
        pipe, rows = build_screening_pipeline(cfg, cache), data.X
        if _sample_changed(cfg, shipped):  # its own samples: the head on its own frozen front's output
            from sklearn.pipeline import Pipeline

            rows = own_front(cfg, data, cache, f"--arm {name}", progress)
            pipe = Pipeline([("preprocess", "passthrough"), *pipe.steps[2:]])
        arms[name] = run_level_arm(name, cfg, lambda p=pipe: clone(p), rows, data, folds, cache,
                                   cfg["screening"]["view_fusion"])
    if choices:
        keys = set(choice_keys(choices))
        rows = data.X
        for own in (EXAM_STAGE_KEYS, SAMPLE_KEYS):
            if keys & set(own) and not keys <= set(own):
                raise SystemExit(f"--choose: {sorted(keys & set(own))} are chosen by their own search; choose them "
                                 f"apart from {sorted(keys - set(own))}")
        if keys <= set(EXAM_STAGE_KEYS):
            name, nested = exam_choice_arm(bt, over, choices, lambda: clone(shipped_pipe))
        elif keys <= set(SAMPLE_KEYS):
            name, nested, rows = sample_choice_arm(bt, over, choices, data, cache, progress)
        else:
            name, nested = choice_arm(bt, over, choices, lambda c: build_screening_pipeline(c, cache), binary=True)
        arms[name] = run_level_arm(name, shipped, lambda: None, rows, data, folds, cache, how, nested)
    for name, arm in arms.items():
        progress(f"  {name:34s} {arm.seconds:6.0f} s  folds {arm.folds}"
                 + (f"  chosen per fold: {arm.chosen}" if arm.chosen else "")
                 + "".join(f"  {k} kept in {sum(v)}/{len(v)} folds" for k, v in arm.kept.items()))
    rows, per_arm = score_levels(bt, data, arms, how, n_resamples, seed=0)
    return rows, per_arm, {a: arm.folds for a, arm in arms.items()}, arms


# --------------------------------------------------------------------------------------------------------------------
def run(tasks: list[str], quick: bool = False, ablate: bool = False, variants: bool = True,
        cache_dir: Path | None = None, tracking_uri: str | None = None, overrides: list[str] | None = None,
        n_resamples: int | None = None, progress: Callable[[str], None] = print,
        extra: Mapping[str, list[str]] | None = None, choose: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns {"table": DataFrame, "arms": DataFrame, "folds": {task: {arm: digest}}, ...}."""
    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.paths import default_cache_dir
    from pipeline.io.exams import exam_ids
    from pipeline.training.train import load_task_data

    started = time.perf_counter()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    common: dict[str, Any] = FOLDS
    if quick:
        common = _merge(common, {"dataset": {"max_samples": 30}, "evaluation": {"folds": 3}})
    n_resamples = n_resamples if n_resamples is not None else (100 if quick else 1000)
    table_rows: list[dict[str, Any]] = []
    arm_rows: list[dict[str, Any]] = []
    digests: dict[str, dict[str, str]] = {}
    logged: list[tuple[str, str, dict[str, Any], dict[str, float]]] = []
    choices = parse_choices(choose) if choose else None
    with tempfile.TemporaryDirectory(prefix="mammoscope-quality-") as tmp:
        for bt in (t for t in TASKS if t.key in tasks):
            if not (DATA / bt.needs).is_dir():
                progress(f"{bt.key}: {DATA / bt.needs} is absent; skipped")
                continue
            if bt.levels:
                base = _merge(bt.overrides, bt.prepare(Path(tmp)) if bt.prepare else {})
                rows, per_arm, digests[bt.key], level_arms = run_levels(bt, base, common, overrides or [], cache,
                                                                        n_resamples, progress, extra, choices)
                table_rows += rows
                for a, m in per_arm.items():
                    arm_rows.append({"task": bt.key, "arm": a, "folds": level_arms[a].folds, "metric": "image_roc_auc",
                                     "value": _fmt((m["image_roc_auc"], m["image_roc_auc_ci_low"],
                                                    m["image_roc_auc_ci_high"])),
                                     "minus plain (paired)": "" if a == "plain" else _fmt(
                                         (m["image_roc_auc_minus_plain"], m["image_roc_auc_minus_plain_ci_low"],
                                          m["image_roc_auc_minus_plain_ci_high"]), signed=True),
                                     "second": f"spec {m['image_spec_at_target']:.2f} at sens "
                                               f"{m['image_sens_at_target']:.2f}", "s": f"{m['seconds']:.0f}"})
                    logged.append((bt.key, a, level_arms[a].config, m))
                continue
            t0 = time.perf_counter()
            base = _merge(bt.overrides, bt.prepare(Path(tmp)) if bt.prepare else {})
            configs = arm_configs(bt, base, common, overrides or [], ablate and bt.extras, variants and bt.extras,
                                  extra)
            data = load_task_data(configs["shipped"], progress=lambda s: None)
            if bt.prevalence:
                data = _prevalence_subsample(data, bt.prevalence, seed=0)
            ev = configs["shipped"]["evaluation"]
            folds = patient_stratified_folds(data.y, data.groups, ev["folds"], ev["seed"])
            exams = exam_ids(data.table)
            counts = {c: int((data.y == i).sum()) for i, c in enumerate(data.classes)}
            progress(f"{bt.key}: {len(data.y)} images of {len(set(data.groups))} patients {counts}; "
                     f"{len(folds)} patient-level folds ({time.perf_counter() - t0:.0f} s to load)")
            arms: dict[str, Arm] = {}
            memo: dict[str, dict[str, Any]] = {}
            for name, cfg in configs.items():
                if cfg["samples"] != configs["shipped"]["samples"]:
                    raise RuntimeError(f"{bt.key}/{name}: arms must share the shipped samples")
                arms[name] = run_arm(name, cfg, data, folds, cache, exams, memo)
                progress(f"  {name:34s} {arms[name].seconds:6.0f} s  folds {arms[name].folds}")
            if choices:
                from pipeline.config.experiment import deep_merge, parse_overrides
                from pipeline.model.estimators import build_pipeline

                over = _merge(base, common, parse_overrides(overrides or []))
                if choice_keys(choices) == [EXAM_POOLING]:
                    name, nested, pooled = pooling_arm(bt, over, choices, data, exams, cache)
                    arms[name] = run_arm(name, configs["shipped"], pooled, folds, cache, exams, memo, nested)
                else:
                    name, nested = choice_arm(bt, over, choices, lambda c: build_pipeline(
                        deep_merge(c, {"evaluation": {"decision": "ordinal"}}), cache),
                        binary=len(data.classes) == 2)
                    arms[name] = run_arm(name, configs["shipped"], data, folds, cache, exams, memo, nested)
                progress(f"  {name:34s} {arms[name].seconds:6.0f} s  folds {arms[name].folds}  "
                         f"chosen per fold: {arms[name].chosen}")
            digests[bt.key] = {a: arm.folds for a, arm in arms.items()}
            rows, per_arm = score_task(bt, data, arms, exams, n_resamples, seed=0)
            table_rows += rows
            head = "roc_auc" if len(data.classes) == 2 else "kappa_quadratic"
            for a, m in per_arm.items():
                arm_rows.append({"task": bt.key, "arm": a, "folds": arms[a].folds, "metric": head, "value": _fmt(
                    (m[head], m[f"{head}_ci_low"], m[f"{head}_ci_high"])),
                    "minus plain (paired)": "" if a == "plain" else _fmt(
                        (m[f"{head}_minus_plain"], m[f"{head}_minus_plain_ci_low"],
                         m[f"{head}_minus_plain_ci_high"]), signed=True),
                    "second": _second(m, data.classes), "s": f"{m['seconds']:.0f}"})
                logged.append((bt.key, a, arms[a].config, m))
        table = pd.DataFrame(table_rows)
        arm_table = pd.DataFrame(arm_rows)
        wall = time.perf_counter() - started
        if tracking_uri is not False:
            _log(table, arm_table, logged, tracking_uri, quick, ablate, wall, n_resamples)
    return {"table": table, "arms": arm_table, "folds": digests, "seconds": wall, "tracking_uri": tracking_uri}


def _second(m: Mapping[str, float], classes: list[str]) -> str:
    if "spec_at_target" in m:
        return f"spec {m['spec_at_target']:.2f} at sens {m['sens_at_target']:.2f}"
    return " ".join(f"{c} {m[f'recall_{c}']:.2f}" for c in classes)


def _log(table: pd.DataFrame, arms: pd.DataFrame, logged: list, uri: str | None, quick: bool, ablate: bool,
         wall: float, n_resamples: int) -> None:
    """One MLflow experiment: a parent run per benchmark call, a child run per (task, arm), the tables as files."""
    import registry
    from registry import store
    from pipeline.paths import default_tracking_uri

    store.configure(uri or default_tracking_uri())
    with registry.training_run("mammoscope-quality", "quick" if quick else "full",
                               params={"quick": quick, "ablate": ablate, "bootstrap": "patient-level, paired",
                                       "n_resamples": n_resamples, "settings": SETTINGS_NOTE},
                               tags={"mammoscope.benchmark": "quality"}):
        for key, arm, cfg, metrics in logged:
            registry.child_run(f"{key}/{arm}", params={k: cfg[k] for k in
                                                      ("preprocessing", "features", "model", "calibration")},
                               metrics=metrics, tags={"mammoscope.task": key, "mammoscope.arm": arm})
        registry.log_metrics({"wall_seconds": wall})
        registry.log_table(table, "quality_table.csv")
        registry.log_table(arms, "quality_arms.csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=[t.key for t in TASKS], choices=[t.key for t in TASKS])
    parser.add_argument("--quick", action="store_true", help="CI-sized: 30 images per task, 3 folds, 100 resamples")
    parser.add_argument("--ablate", action="store_true", help="walk from plain to shipped one change at a time")
    parser.add_argument("--no-variants", action="store_true", help="skip plain handcrafted-only / CNN-only")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: the project's)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: the project's)")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--resamples", type=int, default=None)
    parser.add_argument("--choose", action="append", default=[], metavar="KEY=V1|V2[|...]",
                        help="a nested arm: inside each outer training fold, the candidate (the shipped default with "
                             "one value per --choose key) with the best inner patient-level CV score is fitted and "
                             "scored on the outer fold (an honest figure for a setting picked by comparing scores); "
                             "screening exam-stage keys (screening.context, screening.context_asymmetry, ...) and "
                             "exam_pooling=none|mean (density) are chosen the same way")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="an extra arm: the shipped default with these overrides (exploratory: it is compared on "
                             "the reported folds, so adopting it needs nested CV or other data)")
    parser.add_argument("--pair", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                        help="print two memoised arms of one screening task (<cache>/quality-cv/levels-*.npz, "
                             "the same folds) against each other, paired: the same arm before and after a code "
                             "change")
    args = parser.parse_args(argv)
    if args.pair:
        return pair_main(args.tasks, args.pair, args.overrides, args.resamples)
    extra = {a.split(":", 1)[0]: a.split(":", 1)[1].split(",") for a in args.arm}
    if any("samples.export_copies" in item for item in [*args.overrides, *args.arm, *args.choose]):
        # the arms here fit on the rows loaded once per task: copies made for them would be silently unused
        raise SystemExit("samples.export_copies changes the training rows, which quality.py's arms share: judge it "
                         "with benchmarks/reexport.py --train-on augment (fixed) or nested-augment (nested)")
    logging.basicConfig(level=logging.WARNING)
    out = run(args.tasks, quick=args.quick, ablate=args.ablate, variants=not args.no_variants,
              cache_dir=args.cache_dir, tracking_uri=False if args.no_mlflow else args.tracking_uri,
              overrides=args.overrides, n_resamples=args.resamples, extra=extra, choose=args.choose)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 40):
        print(f"\nPlain recipe vs shipped default ({'QUICK' if args.quick else 'full'}; 95% CIs: patient-level "
              f"bootstrap, the difference paired on the same resamples; {SETTINGS_NOTE})")
        print(out["table"].to_string(index=False))
        print("\nEvery arm (same folds: digest per arm):")
        print(out["arms"].to_string(index=False))
    print(f"\nwall time {out['seconds']:.0f} s")
    return 0


def pair_main(tasks: list[str], pair: list[Path], overrides: list[str], n_resamples: int | None) -> int:
    """--pair: load the task's data and folds' labels, print AFTER against BEFORE per level."""
    from pipeline.config.experiment import parse_overrides, resolve_config
    from pipeline.training.train import load_task_data

    chosen = [t for t in TASKS if t.key in tasks and t.levels]
    if len(chosen) != 1 or len(tasks) != 1:
        raise SystemExit("--pair needs exactly one screening task in --tasks (e.g. --tasks screening_cdd)")
    bt = chosen[0]
    with tempfile.TemporaryDirectory() as tmp:
        base = _merge(bt.overrides, bt.prepare(Path(tmp)) if bt.prepare else {})
        cfg = resolve_config(EXPERIMENTS / bt.experiment,
                             _merge(base, FOLDS, parse_overrides(overrides)))
        data = load_task_data(cfg, progress=lambda s: None)
    before, after = (load_level_arm(p, n) for p, n in zip(pair, ("before", "after")))
    table = pair_level_arms(bt, data, before, after, cfg["screening"]["view_fusion"],
                            n_resamples if n_resamples is not None else 1000)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(f"{bt.key}: {pair[1].name} (after) against {pair[0].name} (before), 95% patient-bootstrap CIs, paired")
        print(table.drop(columns=["task"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
