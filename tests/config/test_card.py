"""pipeline.config.card.ModelCard: the contract's keys, a JSON round trip, and refusal of cards it cannot read."""
from __future__ import annotations

import json

import pytest

from pipeline.config.card import SCHEMA_VERSION, CardError, ModelCard
from tests._cards import card

KEYS = ["schema_version", "name", "task", "classes", "ordinal", "decision", "sample_params", "preprocessing",
        "features", "dataset", "split", "metrics", "subgroups", "experiment", "code_version", "created", "run_id",
        "extra"]


def test_to_dict_has_exactly_the_contract_keys_and_round_trips_through_json():
    c = card("malignancy", ["benign", "malignant"], 0.25)
    d = c.to_dict()
    assert sorted(d) == sorted(KEYS) and d["schema_version"] == SCHEMA_VERSION
    assert d["decision"] == {"rule": "threshold", "threshold": 0.25, "target_sensitivity": 0.95}
    back = ModelCard.from_dict(json.loads(json.dumps(d)))
    assert back == c and back.threshold == 0.25


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 99}, "schema_version 99"),
    ({"task": "birads"}, "task 'birads'"),
    ({"classes": ["only"]}, "at least two classes"),
])
def test_unreadable_cards_are_refused(change, message):
    d = {**card("density", ["F", "G", "D"]).to_dict(), **change}
    with pytest.raises(CardError, match=message):
        ModelCard.from_dict(d, "m version 1")
    d = card("density", ["F", "G", "D"]).to_dict()
    del d["dataset"]
    with pytest.raises(CardError, match=r"lacks \['dataset'\]"):
        ModelCard.from_dict(d)


def test_training_stores_the_card_with_the_model_and_loading_returns_it(tiny_store):
    """The tiny store's champion comes back with its card: task, classes, decision, sample parameters, data, CIs."""
    from pipeline.serving.predict import load_predictor

    p = load_predictor(tiny_store.model_uri("malignancy"), tracking_uri=tiny_store.tracking_uri)
    d = p.card.to_dict()
    assert d["task"] == "malignancy" and d["classes"] == ["benign", "malignant"] and not d["ordinal"]
    # mini-MIAS findings carry density labels: the threshold rule becomes one threshold per density group (#17)
    assert d["decision"]["rule"] == "group_threshold" and 0 <= d["decision"]["threshold"] <= 1
    assert set(d["decision"]["group_thresholds"]["groups"]) == {"dense", "nondense"}
    assert d["decision"]["dense_classes"] == ["D"] and d["extra"]["conformal"]["coverage"] == 0.90
    assert d["decision"]["target_sensitivity"] == 0.95
    assert d["sample_params"]["size"] == 32 and d["dataset"]["n_samples"] == sum(d["dataset"]["class_counts"].values())
    auc = d["metrics"]["cv_roc_auc"]
    assert auc["low"] <= auc["value"] <= auc["high"]
    assert d["split"]["protocol"].startswith("patient-level") and d["run_id"]
    assert d["code_version"].startswith("mammoscope ")
