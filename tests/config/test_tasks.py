"""pipeline.config.tasks: the registry answers what used to be task-name comparisons, and admits a new task."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError
from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
import pipeline.config.tasks as tasks_module
from pipeline.config.tasks import TASKS, Task, decide, get_rule, get_task, register_rule, register_task

ROOT = Path(__file__).resolve().parents[2]
TASK_NAMES = set(TASKS)


def _task_name_comparisons(path: Path) -> list[str]:
    """`x == "density"`, `"malignancy" != y`, `t in ("density", ...)` found in a module's syntax tree."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        parts = [node.left, *node.comparators]
        for op, right in zip(node.ops, node.comparators):
            values = []
            for side in parts:
                if isinstance(side, ast.Constant):
                    values.append(side.value)
                elif isinstance(side, (ast.Tuple, ast.List, ast.Set)) and isinstance(op, (ast.In, ast.NotIn)):
                    values += [e.value for e in side.elts if isinstance(e, ast.Constant)]
            if set(v for v in values if isinstance(v, str)) & TASK_NAMES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_module_compares_against_a_task_name_outside_the_registry():
    # pipeline/io/datasets/ is left out: there "density" is the dataset table's column (docs/architecture.md), not a task
    files = [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"), ROOT / "gradio_app.py"]
    files = [f for f in files if f.name != "tasks.py" and "datasets" not in f.relative_to(ROOT).parts]
    hits = [h for f in files for h in _task_name_comparisons(f)]
    assert hits == []


def test_each_task_answers_for_its_data_metrics_and_decisions():
    density, malignancy = get_task("density"), get_task("malignancy")
    assert density.resolve_classes(["G", "F"]) == ["F", "G", "D"] and density.ordinal
    assert malignancy.resolve_classes(["malignant"]) == ["benign", "malignant"] and not malignancy.ordinal
    assert malignancy.is_metric("cv_roc_auc") and not density.is_metric("cv_roc_auc")
    assert density.is_metric("cv_recall_F") and density.is_metric("cv_exam_kappa_quadratic")
    assert malignancy.output_columns(["benign", "malignant"]) == [
        "malignancy_p_benign", "malignancy_p_malignant", "malignancy_call", "malignancy_model", "malignancy_version"]
    proba = np.array([[0.7, 0.3], [0.2, 0.8]])
    assert decide(proba, ["benign", "malignant"], {"rule": "threshold", "threshold": 0.3}) == ["malignant"] * 2
    assert decide(proba, ["benign", "malignant"], {"rule": "argmax"}) == ["benign", "malignant"]
    with pytest.raises(ValueError, match="unknown decision rule"):
        get_rule("cut-points")


def test_ordinal_tasks_train_the_cutpoint_rule_unless_the_experiment_asks_for_argmax():
    """evaluation.decision picks the density rule (#16); a binary task keeps its threshold whatever it says."""
    from pipeline.model.estimators import build_pipeline, final_classifier

    for task, decision, rule, fitted in (("density", "ordinal", "ordinal_cutpoints", "ordinal"),
                                         ("density", "argmax", "argmax", "argmax"),
                                         ("malignancy", "ordinal", "threshold", "argmax")):
        config = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml",
                                 [f"dataset.task={task}", f"evaluation.decision={decision}"]).config
        spec = get_task(task)
        assert spec.training_rule(config).name == rule and spec.classifier_decision(config) == fitted
        assert final_classifier(build_pipeline(config)).decision == fitted
    with pytest.raises(ConfigError, match="evaluation.decision"):
        load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["evaluation.decision=median"])


def test_ordinal_rule_stores_the_classifiers_cutpoints_and_reads_them_back():
    rule = get_rule("ordinal_cutpoints")

    class Fitted:
        cutpoints_ = np.array([0.7, 1.3])

    params = rule.fit_params(Fitted(), {})
    assert params["cutpoints"] == [0.7, 1.3] and params["threshold"] is None
    proba = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.0, 0.4, 0.6]])  # expected index 0.5, 1.1, 1.6
    assert decide(proba, ["F", "G", "D"], {"rule": "ordinal_cutpoints", **params}) == ["F", "G", "D"]
    assert rule.fit_params(object(), {})["cutpoints"] is None  # no cut-points fitted: the card calls the arg-max


def test_a_new_task_is_one_entry_with_a_derived_label_and_its_own_rule(monkeypatch):
    """A screening-like task: whole image, malignant vs not, normal+benign negatives, label from pathology."""
    monkeypatch.setattr("pipeline.config.tasks.TASKS", dict(TASKS))
    monkeypatch.setattr("pipeline.config.tasks.DECISION_RULES", dict(tasks_module.DECISION_RULES))

    class AlwaysPositive:
        name = "always"

        def fit_params(self, classifier, config):
            return {}

        def decide(self, proba, classes, decision):
            return [classes[-1]] * len(proba)

    register_rule(AlwaysPositive())
    base = get_task("malignancy")
    screening = register_task(Task(
        name="screening_like", label_column="screening_label", sample_recipe="breast",
        select_rows=lambda full, ds: full, metric_fn=base.metric_fn, metric_keys=base.metric_keys,
        headline_keys=("cv_roc_auc",), default_champion_metric="cv_roc_auc", decision_rule="always",
        default_classes=("negative", "malignant"),
        derive_label=lambda t: t["pathology"].map({"malignant": "malignant"}).fillna("negative")))
    table = screening.rows(pd.DataFrame({"pathology": ["malignant", "benign", None]}), {})
    assert table["screening_label"].tolist() == ["malignant", "negative", "negative"]
    assert decide(np.array([[0.9, 0.1]]), screening.resolve_classes([]), {"rule": "always"}) == ["malignant"]
    config = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["dataset.task=screening_like"]).config
    assert config["tracking"]["champion_metric"] == "cv_roc_auc"


def test_screening_is_a_registered_task_labelled_from_pathology_and_normal():
    screening = get_task("screening")
    full = pd.DataFrame({"path": ["a", "a", "b", "c", "d"], "sample_id": list("vwxyz"),
                         "pathology": ["benign", "malignant", "benign", None, None],
                         "is_normal": [False, False, False, True, False]})
    rows = screening.rows(full, {})
    assert rows["path"].tolist() == ["a", "b", "c"]  # one row per image; d has no known status
    assert rows["screening"].tolist() == ["malignant", "not_malignant", "not_malignant"]
    assert screening.resolve_classes([]) == ["not_malignant", "malignant"] and screening.uses_threshold
    assert screening.is_metric("cv_breast_roc_auc") and screening.is_metric("cv_exam_spec_at_target")
    assert not get_task("malignancy").is_metric("cv_breast_roc_auc")
    config = load_experiment(EXPERIMENTS_DIR / "cdd_cesm_screening.yaml").config
    assert config["tracking"]["registered_model_name"] == "mammoscope-screening"
    assert config["tracking"]["champion_metric"] == "cv_roc_auc"


def test_champion_metric_is_checked_with_the_experiment_before_any_work():
    with pytest.raises(ConfigError, match=r"tracking.champion_metric: 'cv_roc_auc' is not a metric of the density"):
        load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["tracking.champion_metric=cv_roc_auc"])
    assert load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml",
                           ["tracking.champion_metric=cv_accuracy"]).config["tracking"]["champion_metric"] == "cv_accuracy"


def test_champion_metric_is_refused_by_train_no_register_before_loading_data(tmp_path, capsys):
    from pipeline.cli import main

    code = main(["train", str(EXPERIMENTS_DIR / "tiny_test.yaml"), "--no-register", "--tracking-uri",
                 f"sqlite:///{tmp_path / 'm.db'}", "--set", "tracking.champion_metric=cv_nonsense"])
    assert code == 1 and "cv_nonsense" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()  # nothing was tracked: refused before any work


def test_class_weight_none_is_deprecated_null_is_no_weights():
    with pytest.warns(FutureWarning, match="class_weight"):
        config = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["model.class_weight=none"]).config
    assert config["model"]["class_weight"] is None
    assert load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["model.class_weight=null"]).config["model"][
        "class_weight"] is None
    with pytest.raises(ConfigError, match="model.class_weight"):
        load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["model.class_weight=heavy"])


def test_model_max_bin_reaches_xgboost_and_is_checked():
    """model.max_bin (histogram bins per feature) goes from the experiment file to the booster XGBoost trains:
    with 2 bins a one-feature model has one split point, so at most two distinct scores."""
    import numpy as np

    from pipeline.model.estimators import WeightedXGBClassifier, build_pipeline

    config = load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["model.max_bin=16"]).config
    base = build_pipeline(config, None).named_steps["classifier"].estimator
    assert isinstance(base, WeightedXGBClassifier) and base.max_bin == 16
    X = np.linspace(0, 1, 200).reshape(-1, 1)
    y = (np.sin(12 * X[:, 0]) > 0).astype(int)  # many label changes along the one feature
    kw = dict(n_estimators=20, max_depth=1, subsample=1.0, colsample_bytree=1.0, class_weight=None)
    coarse = WeightedXGBClassifier(max_bin=2, **kw).fit(X, y).predict_proba(X)[:, 1]
    fine = WeightedXGBClassifier(max_bin=256, **kw).fit(X, y).predict_proba(X)[:, 1]
    assert len(np.unique(coarse.round(6))) <= 2 < len(np.unique(fine.round(6)))
    with pytest.raises(ConfigError, match="model.max_bin"):
        load_experiment(EXPERIMENTS_DIR / "tiny_test.yaml", ["model.max_bin=1"])
