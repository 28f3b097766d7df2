"""Benchmark (exploratory): do embeddings of the breast's tiles at twice the working resolution help density?

The shipped density recipe (experiments/mias_density_fused.yaml) reads the whole breast at 224 px: texture, percent
density and a frozen EfficientNet-Lite0 embedding. mini-MIAS films have over 4x its pixels per side; parenchymal
pattern lives at the scale the 224 px sample averages away. This script puts, beside the shipped features, the
frozen CNN's embeddings of the breast's 224 px tiles at 2x (the screening recipe's tiles, `pipeline.model.screening.
tile_embedding_step`, with the density recipe's preprocessing: no CLAHE, no unsharp mask), averaged and max-pooled
over the tiles (`features.tiles.TilePooling`), and cross-validates the shipped classifier (calibrated XGBoost, the
ordinal cut-points) on both, on benchmarks/quality.py's tasks and patient folds (seed 0) and on further fold seeds.
The front is frozen and per image, so the classifier is fitted on the features of each training fold, as the
Pipeline would. Paired patient-bootstrap CIs per image and per exam (one row per exam and label, as quality.py).

Exploratory: arms compared on the reported folds adopt nothing; a switch ships only by nested CV on two density sets
(docs/benchmarks.md section 2). Measured 2026-12-07 (docs/benchmarks.md section 2): a tiles candidate was chosen
in 4 of 5 training folds on tissue but 2 of 5 on the 20/60/20 set, so density keeps the 224 px recipe.

Run: .venv/bin/python benchmarks/density_tiles.py [--tasks tissue tissue_20_60_20] [--seeds 0 1 2 3]
     [--tiles 4:32 9:0]  (max_tiles:tile_shift per tiles arm) [--nested]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality as q  # noqa: E402  (benchmarks/quality.py: the tasks, folds and paired bootstrap)

DENSITY_TASKS = ("tissue", "tissue_20_60_20")


def tile_features(max_tiles: int, shift: int, cache: Path) -> pd.DataFrame:
    """(n_images, 2 D + 1) pooled tile embeddings (mean, max, tile count) of every mini-MIAS image, by sample id."""
    from features.tiles import TilePooling
    from pipeline.config.experiment import resolve_config
    from pipeline.model.screening import tile_embedding_step
    from pipeline.training.train import load_task_data

    cfg = resolve_config(q.EXPERIMENTS / "mias_screening.yaml", q._merge(q.FOLDS, {
        "preprocessing": {"clahe": {"enabled": False}, "unsharp": {"enabled": False}},
        "screening": {"max_tiles": max_tiles, "tile_shift": shift}}))
    data = load_task_data(cfg, progress=lambda s: None)  # the 2x (448 px) breast samples of every image
    t0 = time.perf_counter()
    matrix = np.asarray(tile_embedding_step(cfg, cache).fit_transform(data.X), np.float32)
    pooled = TilePooling(max_tiles=max_tiles, poolings=("mean", "max")).fit(matrix).transform(matrix)
    print(f"  tiles {max_tiles}:{shift}: {pooled.shape[1]} columns for {len(pooled)} images "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return pd.DataFrame(pooled, index=data.table["sample_id"].astype(str).to_numpy())


def classifier(cfg: dict[str, Any]) -> Any:
    """The shipped classifier of a density config, unfitted (calibrated XGBoost, ordinal cut-points)."""
    from pipeline.config.experiment import deep_merge
    from pipeline.model.estimators import build_pipeline

    return build_pipeline(deep_merge(cfg, {"evaluation": {"decision": "ordinal"}}), None).named_steps["classifier"]


def cross_validated_calls(F: np.ndarray, data: Any, exams: np.ndarray, folds: list, proto: Any
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Image and exam calls (ordinal cut-points) of classifier `proto` cross-validated on features F."""
    from sklearn.base import clone

    from pipeline.evaluation.metrics import exam_average

    image, exam = np.zeros(len(data.y), int), np.zeros(len(data.y), int)
    for tr, te in folds:
        clf = clone(proto).fit(F[tr], data.y[tr], groups=np.asarray(data.groups)[tr])
        p = clf.predict_proba(F[te])
        image[te], exam[te] = clf.decide(p), clf.decide(exam_average(p, exams[te]))
    return image, exam


def nested_calls(arms: dict[str, np.ndarray], data: Any, exams: np.ndarray, folds: list, proto: Any,
                 inner_folds: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Image and exam calls of the feature set each outer training fold picks by its own inner patient-level CV
    (quadratic kappa of the ordinal calls, as quality.py's --choose), refitted on the whole training fold."""
    from sklearn.base import clone
    from sklearn.metrics import cohen_kappa_score
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.asarray(data.groups)
    image, exam = np.zeros(len(data.y), int), np.zeros(len(data.y), int)
    chosen: list[str] = []
    for tr, te in folds:
        inner = list(StratifiedGroupKFold(inner_folds, shuffle=True, random_state=seed).split(
            tr, data.y[tr], groups[tr]))
        score = {}
        for name, F in arms.items():
            calls = np.zeros(len(tr), int)
            for itr, ite in inner:
                clf = clone(proto).fit(F[tr][itr], data.y[tr][itr], groups=groups[tr][itr])
                calls[ite] = clf.predict(F[tr][ite])
            score[name] = cohen_kappa_score(data.y[tr], calls, weights="quadratic")
        best = max(score, key=lambda a: score[a])  # ties: the first (shipped) candidate
        chosen.append(best)
        i, e = cross_validated_calls(arms[best], data, exams, [(tr, te)], proto)
        image[te], exam[te] = i[te], e[te]
    return image, exam, chosen


def run_task(bt: q.BenchTask, tiles: dict[str, pd.DataFrame], seeds: list[int], n_resamples: int,
             cache: Path, nested: bool = False) -> None:
    """Print, per fold seed, the kappa of the shipped features and of each tiles arm, paired, per image and exam."""
    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.io.exams import exam_ids
    from pipeline.model.estimators import build_pipeline
    from pipeline.training.train import load_task_data

    cfg = q.arm_configs(bt, q._merge(bt.overrides, {}), q.FOLDS, [], False, False, None)["shipped"]
    data = load_task_data(cfg, progress=lambda s: None)
    if bt.prevalence:
        data = q._prevalence_subsample(data, bt.prevalence, seed=0)
    exams = exam_ids(data.table)
    ids = data.table["sample_id"].astype(str).to_numpy()
    shipped = np.asarray(build_pipeline(cfg, cache)[:-1].fit_transform(data.X))  # the frozen front, cached
    arms = {"shipped": shipped, **{f"+tiles {k}": np.hstack([shipped, t.loc[ids].to_numpy()])
                                   for k, t in tiles.items()}}
    first = ~pd.DataFrame({"exam": exams, "y": data.y}).duplicated().to_numpy()
    k, proto = len(data.classes), classifier(cfg)
    print(f"{bt.key}: {len(data.y)} images, {int(first.sum())} exam rows, classes {data.classes}")
    for seed in seeds:
        folds = patient_stratified_folds(data.y, data.groups, 5, seed)
        calls = {a: cross_validated_calls(F, data, exams, folds, proto) for a, F in arms.items()}
        if nested:
            *calls["nested"], chosen = nested_calls(arms, data, exams, folds, proto, seed=seed)
            print(f"  seed {seed} nested: chosen per outer fold {chosen}", flush=True)
        for level, rows in (("image", np.arange(len(data.y))), ("exam", np.flatnonzero(first))):
            res = q.patient_resamples(np.asarray(data.groups)[rows], n_resamples, seed=0)
            d = {a: {"y": data.y[rows], "call": c[0 if level == "image" else 1][rows], "k": k}
                 for a, c in calls.items()}
            d.update({f"{a}-shipped": {} for a in calls if a != "shipped"})
            out = q.paired_ci(q._kappa, d, res)
            line = "  ".join(f"{a} {q._fmt(out[a])}" + ("" if a == "shipped" else
                                                         f" ({q._fmt(out[f'{a}-shipped'], signed=True)})")
                             for a in calls)
            recall = "  ".join(f"{a} D {q._rate(k - 1)(d[a], np.arange(len(rows))):.2f}" for a in calls)
            print(f"  seed {seed} {level:5s} kappa: {line}   recall {recall}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from pipeline.paths import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=DENSITY_TASKS, default=list(DENSITY_TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--tiles", nargs="+", default=["4:32", "9:0"], help="max_tiles:tile_shift per tiles arm")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--nested", action="store_true",
                        help="also the arm whose feature set each outer training fold picks by its inner CV")
    args = parser.parse_args(argv)
    cache = default_cache_dir()
    tiles = {spec: tile_features(*(int(v) for v in spec.split(":")), cache) for spec in args.tiles}
    for bt in (t for t in q.TASKS if t.key in args.tasks):
        run_task(bt, tiles, args.seeds, args.resamples, cache, args.nested)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
