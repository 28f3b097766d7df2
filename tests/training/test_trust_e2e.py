"""Trust features through a real (tiny) training: CV reports coverage and per-group thresholds, the registered model's
card carries its conformal state (extra) and group thresholds (decision), and the Predictor forms the set and says
which threshold applied."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.paths import default_mias_dir

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (default_mias_dir() / "Info.txt").is_file(), reason="mini-MIAS not present")]


def test_cv_reports_coverage_per_class_and_group_thresholds(tiny_store):
    for task in ("density", "malignancy"):
        result = tiny_store.results[task]
        m, oof = result.metrics, result.oof
        classes = sorted(set(oof["label"]))
        for c in classes:
            assert 0.0 <= m[f"conformal_coverage_{c}"] <= 1.0
            assert m[f"conformal_n_{c}"] == (oof["label"] == c).sum()
        # the logged coverage is the share of OOF rows whose label is in their written set
        in_set = [label in s.split(" or ") or s == "uncertain: second read"
                  for label, s in zip(oof["label"], oof["prediction_set"])]
        assert m["conformal_coverage"] == pytest.approx(np.mean(in_set))
        assert 1.0 <= m["conformal_mean_set_size"] <= len(classes)
    m = tiny_store.results["malignancy"].metrics
    for group in ("cv", "dense", "nondense"):
        for rule in ("groupthr", "singlethr"):
            assert f"{group}_{rule}_sens_ci_low" in m
    assert m["cv_singlethr_sens"] == pytest.approx(m["cv_sens_at_target"])


def test_registered_models_form_sets_and_name_the_threshold(tiny_store):
    from pipeline.io.imageio import read_image
    from pipeline.serving.predict import load_task_models, predict_image

    models = load_task_models(["density", "malignancy"], tracking_uri=tiny_store.tracking_uri)
    card = models["malignancy"].card
    conformal, decision = card.extra["conformal"], card.decision
    assert conformal["coverage"] == 0.90 and len(conformal["alphas"]) > 0
    assert decision["rule"] == "group_threshold"
    assert set(decision["group_thresholds"]["groups"]) == {"dense", "nondense"}
    image, meta = read_image(sorted((default_mias_dir() / "images").glob("*.png"))[0])
    out = predict_image(image, meta, models)
    assert set(out["density"]["prediction_set"]) <= {"F", "G", "D"}
    mal = out["malignancy"]
    assert mal["prediction_set_label"] in {"benign", "malignant", "uncertain: second read",
                                           "none fits: atypical image, second read"}
    density_call = out["density"]["call"] or out["density"]["predicted"]  # its decision rule's call (cut-points)
    group = "dense" if density_call == "D" else "nondense"
    assert mal["density_group"] == group
    assert mal["threshold"] == decision["group_thresholds"]["groups"][group]["threshold"]
    assert mal["call"] == ("malignant" if mal["probability_malignant"] >= mal["threshold"] else "benign")


def mlflow_artifacts(tiny_store, run_id, path):
    """The run's artifacts under `path` (through the registry's configured MLflow client)."""
    from registry.store import client

    return client().list_artifacts(run_id, path)


def test_card_of_a_tiny_model_holds_its_real_metrics_and_counts(tiny_store):
    import registry
    from pipeline.config.card_render import render_html, render_markdown

    registry.configure(tiny_store.tracking_uri)
    result = tiny_store.results["malignancy"]
    card = registry.load_card(tiny_store.names["malignancy"], "champion")
    # the run keeps the renderings beside the card's data (one card.json in the run, one in the model)
    run_files = {a.path for a in mlflow_artifacts(tiny_store, result.run_id, "model_card")}
    assert run_files == {"model_card/card.json", "model_card/model_card.md", "model_card/model_card.html"}
    oof = result.oof
    assert card["dataset"]["n_samples"] == len(oof)
    assert card["dataset"]["n_patients"] == oof["patient_id"].nunique()
    assert card["dataset"]["class_counts"] == oof["label"].value_counts().to_dict()
    assert card["metrics"]["cv_roc_auc"]["value"] == pytest.approx(result.metrics["cv_roc_auc"])
    assert card["metrics"]["cv_roc_auc"]["low"] == pytest.approx(result.metrics["cv_roc_auc_ci_low"])
    md, page = render_markdown(card), render_html(card)
    assert f"{result.metrics['cv_roc_auc']:.3f} [{result.metrics['cv_roc_auc_ci_low']:.3f}" in md
    for section in ("Intended use", "Data", "Split protocol", "Subgroups", "Operating points", "Known limitations",
                    "CLAIM / TRIPOD+AI", "per 1,000"):
        assert section.lower() in md.lower(), section
    assert page.count("data:image/png;base64,") == 2 and "http" not in page.replace("http-equiv", "")
    assert len(md.splitlines()) < 90  # two printed pages


def test_models_card_command_prints_the_card(tiny_store, capsys, monkeypatch):
    from pipeline.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_store.tracking_uri)
    assert main(["models", "--card", f"{tiny_store.names['density']}@champion"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# Model card: {tiny_store.names['density']}")
    assert "conformal_coverage_F" in out
    assert main(["models", "--card", "no-such-model@champion"]) == 1
