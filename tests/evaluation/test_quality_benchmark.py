"""benchmarks/quality.py --quick on a few real images: the table's columns, and plain and shipped on identical folds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests._benchmarks import benchmark_module


def _module():
    """benchmarks/quality.py as a module."""
    return benchmark_module("quality")


def _four_views(n_pat: int, every: int = 3):
    """(table, y, data): n_pat patients x L/R x CC/MLO images; every `every`-th patient's left breast malignant."""
    import pandas as pd

    table = pd.DataFrame([{"sample_id": f"p{p}_{side}_{view}", "patient_id": f"p{p}", "laterality": side,
                           "view": view} for p in range(n_pat) for side in "LR" for view in ("CC", "MLO")])
    y = np.array([int(p % every == 0 and side == "L") for p in range(n_pat) for side in "LR" for _ in range(2)])
    data = type("D", (), {"table": table, "y": y, "groups": table["patient_id"].to_numpy()})()
    return table, y, data


@pytest.fixture(scope="module")
def quick(mias_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from registry import store

    tmp = tmp_path_factory.mktemp("quality")
    before = store.configured_uri()
    try:
        return _module().run(["tissue", "cdd_malignancy"], quick=True, variants=False, cache_dir=tmp / "cache",
                             tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", n_resamples=50, progress=lambda s: None)
    finally:
        store.configure(before) if before else store.reset()


def test_quick_table_has_the_columns_and_both_task_kinds(quick: dict):
    table = quick["table"]
    assert list(table.columns) == ["task", "dataset", "n images / patients", "metric", "plain", "shipped",
                                   "shipped - plain (paired)"]
    metrics = set(table["metric"])
    assert "kappa_w per image" in metrics and "recall D per image" in metrics
    assert any(m.startswith("kappa_w per exam") for m in metrics)
    if "CDD-CESM" in set(table["dataset"]):
        assert {"ROC AUC", "spec at in-fold 95%-sens thr", "sens reached"} <= metrics
    cell = table.loc[table["metric"] == "kappa_w per image", "shipped - plain (paired)"].iloc[0]
    assert cell.startswith(("+", "-")) and "[" in cell  # a signed difference with its paired CI


def test_plain_and_shipped_used_identical_folds(quick: dict):
    for task, digests in quick["folds"].items():
        assert {"plain", "shipped"} <= set(digests)
        assert len(set(digests.values())) == 1, (task, digests)
    assert quick["seconds"] > 0


def test_folds_digest_tells_different_folds_apart():
    mod = _module()
    ids = np.array([f"s{i}" for i in range(6)])
    a = [(np.array([2, 3, 4, 5]), np.array([0, 1])), (np.array([0, 1]), np.array([2, 3, 4, 5]))]
    b = [(np.array([0, 3, 4, 5]), np.array([2, 1])), (np.array([2, 1]), np.array([0, 3, 4, 5]))]
    assert mod.folds_digest(a, ids) == mod.folds_digest([(t, v[::-1]) for t, v in a], ids)
    assert mod.folds_digest(a, ids) != mod.folds_digest(b, ids)


def test_paired_ci_of_an_arm_against_itself_is_zero_and_resamples_whole_patients():
    mod = _module()
    groups = np.repeat(np.arange(20), 2)
    res = mod.patient_resamples(groups, 30, seed=0)
    assert all(len(r) == 40 and np.all(np.bincount(groups[r], minlength=20) % 2 == 0) for r in res)
    rng = np.random.default_rng(0)
    arm = {"y": rng.integers(0, 2, 40), "p": rng.random(40)}
    ci = mod.paired_ci(mod._auc, {"a": arm, "b": dict(arm), "a-b": None}, res)
    assert ci["a-b"] == (0.0, 0.0, 0.0)
    assert ci["a"][1] <= ci["a"][0] <= ci["a"][2]


def test_ablation_walks_from_plain_to_shipped_one_change_at_a_time():
    mod = _module()
    bt = next(t for t in mod.TASKS if t.key == "tissue")
    arms = mod.arm_configs(bt, {}, {}, [], ablate=True, variants=False)
    steps = [a for a in arms if a.startswith("+ ")]
    assert arms["plain"] != arms["shipped"] and len(steps) >= 3
    assert arms[steps[-1]] == arms["shipped"]  # the walk ends at the shipped default
    assert arms["plain"]["samples"] == arms["shipped"]["samples"]  # same samples, so the same rows and folds
    assert arms["plain"]["evaluation"]["decision"] == "argmax" and arms["shipped"]["evaluation"]["decision"] == "ordinal"


def test_quick_run_is_one_mlflow_experiment_with_a_child_run_per_arm(quick: dict):
    from registry import store

    before = store.configured_uri()
    store.configure(quick["tracking_uri"])
    try:
        client = store.client()
        exp = client.get_experiment_by_name("mammoscope-quality")
        names = {r.info.run_name for r in client.search_runs([exp.experiment_id], max_results=100)}
    finally:
        store.configure(before) if before else store.reset()
    assert "quick" in names and "tissue/plain" in names and "tissue/shipped" in names


def test_screening_rows_pair_arms_per_level_on_whole_patients():
    """score_levels: a row per level and metric; an arm against its copy differs by exactly 0; breasts fuse views."""
    mod = _module()
    rng = np.random.default_rng(0)
    n_pat = 24
    table, y, data = _four_views(n_pat)
    p = np.clip(0.6 * y + 0.4 * rng.random(len(y)), 0, 1)
    from pipeline.io.exams import level_ids
    from pipeline.model.levels import LEVELS, level_proba

    fused = level_proba(p, y, level_ids(table), "mean")
    calls = {lv: {u: bool(q >= 0.5) for u, q in zip(fused[lv][0], fused[lv][2])} for lv in LEVELS}
    arm = mod.LevelArm("plain", {}, p, calls, "f", 1.0)
    arms = {"plain": arm, "shipped": mod.LevelArm("shipped", {}, p.copy(), calls, "f", 1.0)}
    bt = next(t for t in mod.TASKS if t.levels)
    rows, per_arm = mod.score_levels(bt, data, arms, "mean", n_resamples=40, seed=0)
    assert [r["metric"] for r in rows] == [f"{m} per {lv}" for lv in LEVELS for m in
                                           ("ROC AUC", "spec at in-fold 95%-sens thr", "sens reached")]
    assert {r["shipped - plain (paired)"] for r in rows} == {"+0.00 [+0.00, +0.00]"}
    assert [r["n images / patients"].split()[0] for r in rows[::3]] == [str(len(y)), str(2 * n_pat), str(n_pat)]
    assert per_arm["shipped"]["image_roc_auc"] > 0.9  # the separable scores above


def test_screening_rows_add_the_image_alone_from_the_first_stage_probabilities():
    """With every arm's first-stage probabilities kept, one more row scores each image alone: it reads `single`,
    not the exam-stage probability the level rows read."""
    mod = _module()
    rng = np.random.default_rng(1)
    table, y, data = _four_views(24)
    context = np.clip(0.6 * y + 0.4 * rng.random(len(y)), 0, 1)  # separable: what the other views added
    alone = rng.random(len(y))                                      # the image alone: chance
    from pipeline.io.exams import level_ids
    from pipeline.model.levels import LEVELS, level_proba

    fused = level_proba(context, y, level_ids(table), "mean")
    calls = {lv: {u: bool(q >= 0.5) for u, q in zip(fused[lv][0], fused[lv][2])} for lv in LEVELS}
    arms = {"plain": mod.LevelArm("plain", {}, alone, calls, "f", 1.0, single=alone),
            "shipped": mod.LevelArm("shipped", {}, context, calls, "f", 1.0, single=alone)}
    bt = next(t for t in mod.TASKS if t.levels)
    rows, per_arm = mod.score_levels(bt, data, arms, "mean", n_resamples=40, seed=0)
    assert rows[-1]["metric"] == "ROC AUC per image alone (first stage)" and len(rows) == 3 * len(LEVELS) + 1
    assert rows[-1]["shipped - plain (paired)"] == "+0.00 [+0.00, +0.00]"
    assert per_arm["shipped"]["image_roc_auc"] > 0.9 and abs(per_arm["shipped"]["image_alone_roc_auc"] - 0.5) < 0.2
    arms["plain"] = mod.LevelArm("plain", {}, alone, calls, "f", 1.0)  # a file saved before `single` was kept
    rows, _ = mod.score_levels(bt, data, arms, "mean", n_resamples=40, seed=0)
    assert len(rows) == 3 * len(LEVELS)


def test_screening_rows_add_the_image_auc_of_each_machine_a_manifest_names():
    """A site column (machine) with two values adds one row per machine: the AUC of that machine's images alone,
    paired on its own patients; a constant site column, an id-like one with many values and a machine whose images
    hold one class add nothing."""
    from sklearn.metrics import roc_auc_score

    mod = _module()
    rng = np.random.default_rng(2)
    n_pat = 30
    table, y, data = _four_views(n_pat)
    pid = table["patient_id"].str[1:].astype(int).to_numpy()
    table["machine"] = np.where(pid < 18, 1, 2)            # 18 patients on machine 1, 12 on machine 2
    table["source"] = "one archive"                        # one value: no split
    table["scanner_serial"] = [f"s{i}" for i in range(len(table))]  # every image its own: no split
    table["site"] = np.where(pid < 29, "A", "B")           # site B: one patient, no cancer -> no row
    p = np.where(table["machine"] == 1, np.clip(0.7 * y + 0.3 * rng.random(len(y)), 0, 1), rng.random(len(y)))
    from pipeline.io.exams import level_ids
    from pipeline.model.levels import LEVELS, level_proba

    fused = level_proba(p, y, level_ids(table), "mean")
    calls = {lv: {u: bool(q >= 0.5) for u, q in zip(fused[lv][0], fused[lv][2])} for lv in LEVELS}
    arms = {"plain": mod.LevelArm("plain", {}, rng.random(len(y)), calls, "f", 1.0),
            "shipped": mod.LevelArm("shipped", {}, p, calls, "f", 1.0)}
    bt = next(t for t in mod.TASKS if t.levels)
    rows, per_arm = mod.score_levels(bt, data, arms, "mean", n_resamples=40, seed=0)
    sites = [r for r in rows if r["metric"].startswith("ROC AUC per image, ")]
    assert [r["metric"] for r in sites] == [f"ROC AUC per image, machine {k} ({int(y[table['machine'] == k].sum())} "
                                            f"malignant)" for k in (1, 2)] + ["ROC AUC per image, site A (20 malignant)"]
    assert [r["n images / patients"] for r in sites[:2]] == ["72 images / 18", "48 images / 12"]
    for r, k in zip(sites, (1, 2)):
        m = (table["machine"] == k).to_numpy()
        assert r["shipped"].startswith(f"{roc_auc_score(y[m], p[m]):.2f} [")
    assert float(sites[0]["shipped"].split()[0]) > 0.95 and abs(float(sites[1]["shipped"].split()[0]) - 0.5) < 0.25
    on_2 = (table["machine"] == 2).to_numpy()  # each arm's child run gets the machine's figure as a metric
    assert per_arm["shipped"]["site/machine/2/image_roc_auc"] == pytest.approx(roc_auc_score(y[on_2], p[on_2]))
    assert per_arm["plain"]["site/machine/1/image_roc_auc_ci_low"] <= per_arm["plain"]["site/machine/1/image_roc_auc"]
    assert not any(k.startswith("site/site/B") for k in per_arm["shipped"])  # no row, no metric


def test_choose_parses_every_combination_of_the_candidate_values():
    choices = _module().parse_choices(["calibration.ensemble=true|false", "model.max_depth=2|3"])
    assert [label for label, _ in choices] == [
        "calibration.ensemble=true,model.max_depth=2", "calibration.ensemble=true,model.max_depth=3",
        "calibration.ensemble=false,model.max_depth=2", "calibration.ensemble=false,model.max_depth=3"]
    assert choices[1][1] == {"calibration": {"ensemble": True}, "model": {"max_depth": 3}}
    with pytest.raises(SystemExit, match="two or more"):
        _module().parse_choices(["model.max_depth=3"])


def test_nested_arm_picks_the_informative_candidate_inside_each_training_fold():
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.training.cv import cross_validate
    from pipeline.model.estimators import PatientCalibratedClassifier, WeightedXGBClassifier
    from pipeline.model.routing import request_groups

    rng = np.random.default_rng(0)
    n = 160
    groups = np.repeat(np.arange(n // 2), 2)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    X = np.column_stack([rng.normal(0, 1, n), 2.0 * y + rng.normal(0, 1, n)])  # column 0 noise, column 1 signal

    def candidate(col: int) -> Pipeline:
        clf = PatientCalibratedClassifier(WeightedXGBClassifier(n_estimators=20, max_depth=2, n_jobs=1),
                                          inner_folds=2)
        return Pipeline([("pick", ColumnTransformer([("c", "passthrough", [col])])),
                         ("classifier", request_groups(clf))])

    nested = _module().nested_search(["noise", "signal"], [candidate(0), candidate(1)], binary=True,
                                     inner_folds=3, seed=0)
    folds = patient_stratified_folds(y, groups, 4, seed=0)
    chosen: list[str] = []
    cv = cross_validate(nested.make, X, y, groups, folds, route_groups=True,
                        on_fold=lambda i, tr, te, est, p: chosen.append(nested.labels[est.best_index_]))
    assert chosen == ["signal"] * 4
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y, cv.proba[:, 1]) > 0.8


def test_screening_extra_arm_rows_pair_it_with_plain_and_shipped():
    """--arm on a screening entry: its own columns per level, paired against plain and against shipped."""
    mod = _module()
    rng = np.random.default_rng(1)
    table, y, data = _four_views(20)
    from pipeline.io.exams import level_ids
    from pipeline.model.levels import LEVELS, level_proba

    def arm(name, p):
        fused = level_proba(p, y, level_ids(table), "mean")
        calls = {lv: {u: bool(q >= 0.5) for u, q in zip(fused[lv][0], fused[lv][2])} for lv in LEVELS}
        return mod.LevelArm(name, {}, p, calls, "f", 1.0)

    p = np.clip(0.3 * y + 0.7 * rng.random(len(y)), 0, 1)
    arms = {"plain": arm("plain", p), "shipped": arm("shipped", p.copy()), "ctx": arm("ctx", np.clip(p + 0.5 * y, 0, 1))}
    rows, per_arm = mod.score_levels(next(t for t in mod.TASKS if t.levels), data, arms, "mean", 40, 0)
    assert all({"ctx", "ctx - plain", "ctx - shipped"} <= set(r) for r in rows)
    assert rows[0]["ctx - plain"] == rows[0]["ctx - shipped"] and rows[0]["ctx - plain"].startswith("+0.")
    assert per_arm["ctx"]["image_roc_auc_minus_plain"] > 0.05


@pytest.mark.parametrize("experiment", ["mias_screening.yaml", "cdd_cesm_screening.yaml"])
def test_plain_screening_arm_has_none_of_the_shipped_second_stages(experiment: str):
    """The plain arm of a screening entry scores each image alone even where the experiment ships the context stage
    or tile scores (and where --set turns them on): it is the recipe to beat, not plain + our second stage."""
    from pipeline.config.experiment import resolve_config
    from pipeline.model.screening import context_C

    mod = _module()
    path = mod.EXPERIMENTS / experiment
    over = {"screening": {"context": True, "tile_scores": 3}}
    shipped = resolve_config(path, over)
    plain = mod.plain_screening_config(path, over)
    assert context_C(shipped) is not None and shipped["screening"]["tile_scores"] == 3
    assert context_C(plain) is None and plain["screening"]["tile_scores"] == 0
    assert plain["model"]["max_depth"] == mod.PLAIN["model"]["max_depth"]
    assert plain["model"]["max_bin"] == 256  # XGBoost's default, whatever bins the shipped screening recipe uses


def test_screening_arm_records_each_folds_keep_of_the_optional_stages(tmp_path: Path):
    """A context arm records, per fold, whether its fit kept the tile scores (LastColumnsChoice) and the context
    stage, and a rerun read from the memo under <cache>/quality-cv/ says the same."""
    from sklearn.pipeline import Pipeline

    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.model.choice import LastColumnsChoice
    from pipeline.model.estimators import PatientCalibratedClassifier, WeightedXGBClassifier
    from pipeline.model.routing import request_groups

    mod = _module()
    rng = np.random.default_rng(0)
    table, y, data = _four_views(40, every=2)
    X = np.column_stack([rng.normal(0, 1, len(y)), 2.5 * y + rng.normal(0, 1, len(y))])  # the last column: signal
    groups = data.groups
    folds = patient_stratified_folds(y, groups, 3, seed=0)
    clf = PatientCalibratedClassifier(WeightedXGBClassifier(n_estimators=20, max_depth=2, n_jobs=1), inner_folds=2)
    make = lambda: Pipeline([("classifier", request_groups(LastColumnsChoice(clf, n_drop=1)))])  # noqa: E731
    config = {"dataset": {}, "evaluation": {"target_sensitivity": 0.95},
              "screening": {"context": "auto", "context_C": 1.0}}
    arm = mod.run_level_arm("ctx", config, make, X, data, folds, tmp_path, "mean")
    assert arm.kept["tile_scores"] == [True] * 3  # without the signal column the fit is at chance
    assert len(arm.kept["context"]) == 3 and np.isfinite(arm.proba).all()
    again = mod.run_level_arm("ctx", config, lambda: None, X, data, folds, tmp_path, "mean")  # from the memo
    assert again.kept == arm.kept and np.allclose(again.proba, arm.proba)


def test_exam_stage_nested_arm_chooses_the_context_stage_per_training_fold(tmp_path: Path):
    """--choose screening.context=false|true: each outer training fold's ExamSearch picks by its own inner CV; with
    a patient-level shift that the other breast explains away, every fold picks the context stage."""
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import Pipeline

    from pipeline.evaluation.splits import patient_stratified_folds
    from tests.training.test_context import ScoreColumn, _exams

    mod = _module()
    table, y, p = _exams(120, seed=6)
    data = type("D", (), {"table": table, "y": y, "groups": table["patient_id"].to_numpy()})()
    folds = patient_stratified_folds(y, data.groups, 3, seed=0)
    nested = mod.Nested(["context=false", "context=true"], lambda: Pipeline([("classifier", ScoreColumn())]),
                        "test", [{"context_C": None}, {"context_C": 1.0}], inner_folds=3, seed=0)
    config = {"dataset": {}, "evaluation": {"target_sensitivity": 0.95}, "screening": {"context": False}}
    arm = mod.run_level_arm("nested", config, lambda: None, p[:, None], data, folds, tmp_path, "mean", nested)
    assert arm.chosen == ["context=true"] * 3
    assert roc_auc_score(y, arm.proba) > roc_auc_score(y, p) + 0.05


def test_sample_key_nested_arm_reads_each_candidates_own_front(tmp_path: Path):
    """--choose screening.aspect=1.0|2.0: the candidates' samples differ, so each candidate's frozen front runs over
    its own samples once and its head reads only those columns; every outer training fold picks one of them and the
    arm is scored on the same folds as plain and shipped; an --arm with other samples gets its own front too (tiny
    settings on real CDD-CESM images)."""
    from pipeline.config.experiment import deep_merge
    from tests.serving.test_screening_acceptance import CDD, TINY

    if not CDD.is_file():
        pytest.skip("CDD-CESM is not in shared/data")
    mod = _module()
    bt = next(t for t in mod.TASKS if t.key == "screening_cdd")
    base = deep_merge(TINY, {"dataset": {"max_samples": 60}, "screening": {"context": False},
                             "compute": {"n_jobs": 1}})
    common = {"evaluation": {"folds": 3, "seed": 0}}
    choices = mod.parse_choices(["screening.aspect=1.0|2.0"])
    lines: list[str] = []
    rows, per_arm, digests, arms = mod.run_levels(bt, base, common, [], tmp_path, 20, lines.append,
                                                  extra={"tall": ["screening.aspect=2.0"]}, choices=choices)
    name = "nested[screening.aspect]"
    assert set(arms) == {"plain", "shipped", "tall", name}
    assert np.isfinite(arms["tall"].proba).all()  # an --arm with its own samples: the head on its own front
    assert len(set(digests.values())) == 1  # one list of folds for every arm
    arm = arms[name]
    assert len(arm.chosen) == 3 and set(arm.chosen) <= {"screening.aspect=1.0", "screening.aspect=2.0"}
    assert np.isfinite(arm.proba).all() and len(arm.proba) == len(arms["shipped"].proba)
    fronts = [line for line in lines if "front of" in line]
    assert len(fronts) == 3  # the --arm's front, and each candidate's, once
    if arm.chosen.count("screening.aspect=1.0") == 3:  # the square candidate is the shipped recipe, refitted alone
        np.testing.assert_allclose(arm.proba, arms["shipped"].proba, atol=1e-6)


def test_pair_reads_two_memoised_arms_and_pairs_them_per_level(tmp_path: Path):
    """--pair: two levels-*.npz as run_level_arm writes them, AFTER against BEFORE on the same resamples; an arm
    against itself differs by exactly 0, a better one by a positive AUC; a file of other rows is refused."""
    import json

    mod = _module()
    rng = np.random.default_rng(2)
    table, y, data = _four_views(20)
    from pipeline.io.exams import level_ids
    from pipeline.model.levels import LEVELS, level_proba

    def save(name: str, p: np.ndarray, rows: int | None = None) -> Path:
        fused = level_proba(p, y, level_ids(table), "mean")
        p = p[:rows]
        calls = {lv: {u: bool(q >= 0.5) for u, q in zip(fused[lv][0], fused[lv][2])} for lv in LEVELS}
        path = tmp_path / f"levels-{name}.npz"
        mod._save_npz(path, proba=p, calls=json.dumps(calls), seconds=1.0, chosen=np.asarray([], dtype=str),
                      kept_context=np.ones(5, bool))
        return path

    p = np.clip(0.3 * y + 0.7 * rng.random(len(y)), 0, 1)
    before, better = save("before", p), save("better", np.clip(p + 0.5 * y, 0, 1))
    bt = next(t for t in mod.TASKS if t.levels)
    arm = mod.load_level_arm(before, "before")
    assert arm.kept == {"context": [True] * 5} and np.array_equal(arm.proba, p)
    same = mod.pair_level_arms(bt, data, arm, mod.load_level_arm(before, "after"), "mean", 40)
    assert set(same["after - before (paired)"]) == {"+0.00 [+0.00, +0.00]"}
    up = mod.pair_level_arms(bt, data, arm, mod.load_level_arm(better, "after"), "mean", 40)
    assert up.loc[up["metric"] == "ROC AUC per image", "after - before (paired)"].iloc[0].startswith("+0.")
    short = save("short", p, rows=-4)
    with pytest.raises(SystemExit, match="not the same rows"):
        mod.pair_level_arms(bt, data, arm, mod.load_level_arm(short, "after"), "mean", 40)
    with pytest.raises(SystemExit, match="exactly one screening task"):
        mod.pair_main(["tissue"], [before, better], [], 40)


def test_export_copies_are_sent_to_the_benchmark_that_judges_them():
    """quality.py's arms share the rows loaded once per task, so a copy setting would be silently unused there."""
    mod = _module()
    for flags in (["--set", "samples.export_copies=75"], ["--arm", "x:samples.export_copies=75"],
                  ["--choose", "samples.export_copies=null|75"]):
        with pytest.raises(SystemExit, match="reexport.py --train-on augment"):
            mod.main(["--tasks", "screening_mias", "--no-mlflow", *flags])
