"""Benchmark: should a density call per exam use cut-points fitted on exams rather than on single images?

The shipped exam call applies the image-level ordinal cut-points (pipeline.evaluation.ordinal, fitted on a training
fold's inner out-of-fold image probabilities) to the mean of the exam's image probabilities. Averaging narrows the
expected class, so cut-points fitted where exams live might call the extremes better. This script cross-validates the
shipped density recipe on benchmarks/quality.py's tasks and folds and, in each outer training fold, also fits a second
set of cut-points on the same inner out-of-fold probabilities averaged per exam of the training fold; both exam calls
are scored on the outer fold (one row per exam and label), with paired patient-bootstrap CIs.

Measured 2026-12-07 (docs/benchmarks.md section 2): exam cut-points were not better on either set, so the exam call
keeps the image cut-points.

Run: .venv/bin/python benchmarks/exam_cutpoints.py [--tasks tissue tissue_20_60_20] [--resamples 1000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality as q  # noqa: E402  (benchmarks/quality.py: the tasks, folds and paired bootstrap)

DENSITY_TASKS = ("tissue", "tissue_20_60_20")


def exam_calls(bt: q.BenchTask) -> dict[str, Any]:
    """Cross-validate the shipped recipe of `bt` on quality.py's folds; the exam calls by image and by exam cuts."""
    from sklearn.base import clone

    from pipeline.config.experiment import deep_merge
    from pipeline.evaluation.metrics import exam_average
    from pipeline.evaluation.ordinal import apply_cutpoints, fit_cutpoints
    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.io.exams import exam_ids
    from pipeline.model.estimators import build_pipeline, final_classifier
    from pipeline.paths import default_cache_dir
    from pipeline.training.cv import cross_validate
    from pipeline.training.train import load_task_data

    cfg = q.arm_configs(bt, q._merge(bt.overrides, {}), q.FOLDS, [], False, False, None)["shipped"]
    data = load_task_data(cfg, progress=lambda s: None)
    if bt.prevalence:
        data = q._prevalence_subsample(data, bt.prevalence, seed=0)
    ev = cfg["evaluation"]
    folds = patient_stratified_folds(data.y, data.groups, ev["folds"], ev["seed"])
    exams = exam_ids(data.table)
    pipe = build_pipeline(deep_merge(cfg, {"evaluation": {"decision": "ordinal"}}), default_cache_dir())
    n = len(data.y)
    by_image, by_exam = np.zeros(n, int), np.zeros(n, int)
    cuts: list[tuple[list[float], list[float]]] = []

    def on_fold(i: int, tr: np.ndarray, te: np.ndarray, est: Any, p: np.ndarray) -> None:
        clf = final_classifier(est)
        pe = exam_average(p, exams[te])
        by_image[te] = clf.decide(pe)
        val = clf.validation_index_  # rows of the training fold with inner out-of-fold probabilities
        exam_cuts = fit_cutpoints(data.y[tr][val], exam_average(clf.validation_proba_, exams[tr][val]))
        by_exam[te] = apply_cutpoints(pe, exam_cuts)
        cuts.append(([round(float(c), 3) for c in clf.cutpoints_], [round(float(c), 3) for c in exam_cuts]))

    cross_validate(lambda: clone(pipe), data.X, data.y, data.groups, folds, route_groups=True, on_fold=on_fold)
    first = ~pd.DataFrame({"exam": exams, "y": data.y}).duplicated().to_numpy()  # one row per exam and label
    return {"y": data.y[first], "groups": np.asarray(data.groups)[first], "classes": list(data.classes),
            "image cuts": by_image[first], "exam cuts": by_exam[first], "cuts": cuts}


def report(key: str, r: dict[str, Any], n_resamples: int) -> None:
    """Print per-exam kappa and extreme-class recall, image vs exam cut-points, paired."""
    k, classes = len(r["classes"]), r["classes"]
    arms = {a: {"y": r["y"], "call": r[a], "k": k} for a in ("image cuts", "exam cuts")}
    arms["exam cuts-image cuts"] = {}
    res = q.patient_resamples(r["groups"], n_resamples, seed=0)
    print(f"{key}: {len(r['y'])} exam rows")
    for name, stat in [("kappa_w per exam", q._kappa), (f"recall {classes[0]} per exam", q._rate(0)),
                       (f"recall {classes[-1]} per exam", q._rate(k - 1))]:
        out = q.paired_ci(stat, arms, res)
        print(f"  {name:22s} image cuts {q._fmt(out['image cuts'])}  exam cuts {q._fmt(out['exam cuts'])}  "
              f"difference {q._fmt(out['exam cuts-image cuts'], signed=True)}")
    print(f"  cut-points per fold (image, exam): {r['cuts']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=DENSITY_TASKS, default=list(DENSITY_TASKS))
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    for bt in (t for t in q.TASKS if t.key in args.tasks):
        report(bt.key, exam_calls(bt), args.resamples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
