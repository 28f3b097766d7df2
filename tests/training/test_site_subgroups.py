"""Per-machine / per-site subgroups: where a dataset's table names its acquisition machines or sites, training scores
each one's images apart (metrics `site/<column>/<value>/*`), the model card shows them beside the density subgroups,
and MLflow takes the keys."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.training.cv import site_groups, site_metrics


def _table(n_pat: int = 20) -> pd.DataFrame:
    rows = [{"patient_id": f"p{p}", "machine": 1 if p < 12 else 2, "source": "one archive",
             "scanner_serial": f"s{p}_{v}", "site": None if p == 0 else ("A" if p < 19 else "B/../x"), "view": v}
            for p in range(n_pat) for v in ("CC", "MLO")]
    return pd.DataFrame(rows)


def test_site_groups_split_each_machine_column_and_nothing_else():
    """A machine column with 2 values gives one group per value; a constant column, an id-like column (one value
    per image) and the view give none; a missing value is in no group; odd characters never reach a metric key."""
    table = _table()
    groups = site_groups(table)
    assert [(name, prefix) for name, prefix, _ in groups] == [
        ("machine 1", "site/machine/1/"), ("machine 2", "site/machine/2/"),
        ("site A", "site/site/A/"), ("site B/../x", "site/site/B_x/")]
    masks = {name: m for name, _, m in groups}
    assert masks["machine 1"].sum() == 24 and masks["machine 2"].sum() == 16
    assert not (masks["machine 1"] & masks["machine 2"]).any()
    assert masks["site A"].sum() == 36 and masks["site B/../x"].sum() == 2  # patient 0 (no site) in neither
    assert site_groups(table.drop(columns=["machine", "site"])) == []
    assert site_groups(table, max_values=1) == []


def test_site_keys_stay_unique_short_and_valid_for_mlflow():
    """Values that clean to the same key, padded values, a float column of whole numbers, a 300-character site name
    and a column about the lesion's site: every prefix unique and a valid MLflow metric name, the padded value one
    group, machine 1 not 1.0, the lesion's site no subgroup, a '|' kept out of the card's table cell."""
    from mlflow.utils.validation import _validate_metric_name

    n = 12
    table = pd.DataFrame({"manufacturer": ["GE/Senographe", "GE.Senographe", "GE_Senographe", "Hologic ", "Hologic",
                                           "Selenia | 2D"] * 2,
                          "machine": [1.0, 2.0, np.nan] * 4,
                          "hospital": ["x" * 300, "y"] * 6,
                          "lesion_site": ["UOQ", "LIQ", "UIQ"] * 4, "patient_id": [f"p{i}" for i in range(n)]})
    groups = site_groups(table)
    names = [g[0] for g in groups]
    prefixes = [g[1] for g in groups]
    assert len(set(prefixes)) == len(prefixes)
    for prefix in prefixes:
        _validate_metric_name(prefix + "kappa_quadratic_ci_high")
        assert len(prefix) < 130
    assert "manufacturer Hologic" in names and sum(n.startswith("manufacturer Hologic") for n in names) == 1
    assert {"machine 1", "machine 2"} <= set(names) and not any("1.0" in n for n in names)
    assert not any(n.startswith("lesion_site") for n in names)
    assert all("|" not in n for n in names)
    masks = {g[0]: g[2] for g in groups}
    assert masks["manufacturer Hologic"].sum() == 4 and masks["machine 1"].sum() == 4


def test_site_metrics_score_each_machines_rows_alone():
    """The task's metrics on each machine's rows: the AUC equals sklearn's on that subset; a machine whose rows
    hold one class gets no metric."""
    rng = np.random.default_rng(0)
    table = _table().drop(columns=["site"])
    n = len(table)
    y = (np.arange(n) % 3 == 0).astype(int)
    on_1 = (table["machine"] == 1).to_numpy()
    p1 = np.where(on_1, np.clip(0.6 * y + 0.4 * rng.random(n), 0, 1), rng.random(n))
    proba = np.column_stack([1 - p1, p1])
    m = site_metrics("malignancy", y, proba, p1 >= 0.5, table, ["benign", "malignant"], n_resamples=0)
    assert m["site/machine/1/roc_auc"] == pytest.approx(roc_auc_score(y[on_1], p1[on_1]))
    assert m["site/machine/2/roc_auc"] == pytest.approx(roc_auc_score(y[~on_1], p1[~on_1]))
    assert m["site/machine/1/roc_auc"] > 0.95 and m["site/machine/1/n"] == 24
    y2 = np.where(on_1, y, 0)  # machine 2: no cancer
    m = site_metrics("malignancy", y2, proba, p1 >= 0.5, table, ["benign", "malignant"], n_resamples=0)
    assert "site/machine/1/roc_auc" in m and not any(k.startswith("site/machine/2/") for k in m)


def test_training_scores_each_machine_and_the_card_and_mlflow_show_them(tmp_path):
    """A tiny density training whose table names two machines: its metrics hold each machine's kappa, the model
    card lists both machines among its subgroups (Markdown table too), and an MLflow run logs the keys."""
    import mlflow

    from pipeline.config.card_render import render_markdown
    from pipeline.config.experiment import load_experiment
    from pipeline.model.estimators import final_classifier
    from pipeline.training.train import build_card, evaluate_experiment, fit_final, load_task_data
    from tests._tiny_store import TINY_EXPERIMENT

    exp = load_experiment(TINY_EXPERIMENT, {"compute": {"n_jobs": 1, "cache_dir": str(tmp_path / "cache")},
                                            "evaluation": {"bootstrap_resamples": 0}})
    data = load_task_data(exp.config, lambda s: None)
    patients = sorted(data.table["patient_id"].astype(str).unique())
    second = set(patients[::2])  # every other patient on the second machine
    data.table["machine"] = ["B" if str(p) in second else "A" for p in data.table["patient_id"]]
    metrics, cv, _ = evaluate_experiment(exp.config, data, tmp_path / "cache")
    on_b = data.table["machine"].to_numpy() == "B"
    for name, rows in (("A", ~on_b), ("B", on_b)):
        if len(np.unique(data.y[rows])) >= 2:
            assert metrics[f"site/machine/{name}/n"] == rows.sum()
            assert f"site/machine/{name}/kappa_quadratic" in metrics
    shown = [g for g in ("A", "B") if f"site/machine/{g}/n" in metrics]
    assert shown  # at least one machine holds two density classes in 24 images
    final = fit_final(exp.config, data, tmp_path / "cache")
    card = build_card(exp, data, metrics, cv, final_classifier(final), "digest", None).to_dict()
    assert [g for g in card["subgroups"] if g.startswith("machine ")] == [f"machine {g}" for g in shown]
    assert card["subgroups"][f"machine {shown[0]}"]["n"]["value"] == metrics[f"site/machine/{shown[0]}/n"]
    assert f"| machine {shown[0]} " in render_markdown(card) or f" machine {shown[0]} |" in render_markdown(card)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as run:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k.startswith("site/")})
        logged = mlflow.get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(None)
    assert {k for k in metrics if k.startswith("site/") and np.isfinite(metrics[k])} <= set(logged)
