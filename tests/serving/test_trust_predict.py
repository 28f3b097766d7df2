"""Prediction sets and per-density-group thresholds at use time: the card's conformal state and `group_threshold`
rule reach the app path (predict_image) and the batch path (score_batch) alike, the density model's prediction picks
the group, and the batch rows carry the set, the threshold applied and why."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.tasks import decide
from pipeline.evaluation.conformal import UNCERTAIN, calibrate
from pipeline.evaluation.operating import choose_group_thresholds
from pipeline.io.batchio import InputItem
from pipeline.serving.batch import Prepared, result_columns, score_batch
from pipeline.serving.predict import Predictor, predict_image, prepare_sample
from tests._cards import card
from tests._images import breast_like


class _Fixed:
    """A stand-in fitted pipeline returning the same (unnormalised) probabilities for every row."""

    def __init__(self, row: list[float]) -> None:
        self.row = np.asarray(row, dtype=float)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.tile(self.row, (len(X), 1))


def _group_state() -> dict:
    """A per-group state whose dense threshold (lower) and non-dense threshold differ, from synthetic validation rows."""
    rng = np.random.default_rng(0)
    n = 2000
    dense = rng.random(n) < 0.5
    y = (rng.random(n) < 0.4).astype(int)
    p = np.clip(0.3 + 0.4 * y - 0.2 * (dense & (y == 1)) + rng.normal(0, 0.1, n), 0, 1)
    return choose_group_thresholds(y, p, np.where(dense, "dense", "nondense"), target_sensitivity=0.9,
                                   min_positives=10)


def _predictors(p_malignant: float, density_row: list[float]) -> dict[str, Predictor]:
    state = _group_state()
    conf = calibrate(np.array([[0.4, 0.6], [0.6, 0.4]] * 20), [0, 1] * 20, 0.9)  # poor: wide sets
    mal = card("malignancy", ["benign", "malignant"], state["pooled"])
    mal.decision.update(rule="group_threshold", group_thresholds=state, dense_classes=["D"])
    mal.extra["conformal"] = conf
    den = card("density", ["F", "G", "D"])
    return {"malignancy": Predictor(_Fixed([1 - p_malignant, p_malignant]), mal, name="m-mal", version=1),
            "density": Predictor(_Fixed(density_row), den, name="m-den", version=2)}


@pytest.mark.parametrize("density_row, group", [([0.1, 0.2, 0.7], "dense"), ([0.7, 0.2, 0.1], "nondense")])
def test_the_predicted_density_picks_the_threshold_on_both_paths(density_row, group):
    state = _group_state()
    assert state["groups"]["dense"]["threshold"] < state["groups"]["nondense"]["threshold"]
    between = (state["groups"]["dense"]["threshold"] + state["groups"]["nondense"]["threshold"]) / 2
    models = _predictors(between, density_row)
    image = breast_like(96, 64)
    app = predict_image(image, None, models, roi=(10, 10, 40, 40))
    prepared = Prepared(item=InputItem(path="x.png"),
                        samples={t: prepare_sample(image, None, t, {"size": 32}, (10, 10, 40, 40)) for t in models})
    row = score_batch([prepared], list(models.values()))[0]
    mal = app["malignancy"]
    expected = state["groups"][group]["threshold"]
    assert mal["density_group"] == group and mal["threshold"] == row["malignancy_threshold"] == expected
    assert mal["call"] == row["malignancy_call"] == ("malignant" if group == "dense" else "benign")
    assert mal["threshold_reason"] == row["malignancy_threshold_reason"] and group in mal["threshold_reason"]
    assert mal["prediction_set_label"] == row["malignancy_set"]
    assert "density_set" not in row and "prediction_set" not in app["density"]  # that card has no conformal state
    cols = result_columns(list(models.values()))
    assert {"malignancy_set", "malignancy_threshold", "malignancy_threshold_reason"} <= set(cols)
    assert not any(c.startswith("density_") and c.endswith(("_set", "_threshold")) for c in cols)


def test_without_a_density_prediction_the_pooled_threshold_applies_and_says_so():
    models = _predictors(0.5, [0.1, 0.2, 0.7])
    mal = models["malignancy"]
    scores = mal.score(np.zeros((2, 32 * 32), np.float32))
    pooled = mal.card.decision["threshold"]
    assert scores.thresholds == [pooled, pooled] and scores.density_groups == [None, None]
    assert all("unknown" in why for why in scores.threshold_reasons)
    assert scores.calls == decide(scores.probabilities, ["benign", "malignant"], {"rule": "threshold",
                                                                                   "threshold": pooled})


def test_a_two_class_set_reads_as_a_second_read():
    models = _predictors(0.5, [0.1, 0.2, 0.7])
    scores = models["malignancy"].score(np.zeros((1, 32 * 32), np.float32))
    assert scores.sets == [["benign", "malignant"]] and scores.set_labels == [UNCERTAIN]
    assert scores.set_coverage == 0.9


@pytest.mark.parametrize("fitted_on", [["F", "G", "D"], None])  # a card that stores its scheme, and an older one
def test_a_density_model_of_another_scheme_gets_the_pooled_threshold_and_says_why(fitted_on):
    """A mini-MIAS malignancy card (dense = D of F/G/D) beside an A-D density model: its C is dense in BI-RADS but
    would count as non-dense here, so the groups are not used; an F/G/D density model still picks them."""
    models = _predictors(0.5, [0.1, 0.2, 0.7])
    mal = models["malignancy"]
    if fitted_on is not None:
        mal.card.decision["density_classes"] = fitted_on
    pooled = mal.card.decision["threshold"]
    birads = Predictor(_Fixed([0.1, 0.2, 0.6, 0.1]), card("density", ["A", "B", "C", "D"]), name="m-den", version=3)
    image = breast_like(96, 64)
    out = predict_image(image, None, {"density": birads, "malignancy": mal}, roi=(10, 10, 40, 40))
    assert out["density"]["call"] == "C" and out["malignancy"]["threshold"] == pooled
    assert out["malignancy"]["density_group"] is None
    assert "not the scheme this model's dense groups were fitted on" in out["malignancy"]["threshold_reason"]
    same = predict_image(image, None, models, roi=(10, 10, 40, 40))
    assert same["malignancy"]["density_group"] == "dense"


def test_the_app_s_drawn_region_gets_the_same_scheme_check_as_predict():
    """The page scores a drawn region with the exam's density call as context; it must carry the density model's
    classes too, so an A-D exam density beside a mini-MIAS malignancy card takes the pooled threshold there as well."""
    from types import SimpleNamespace

    from gradio_app import _Exam, _Handlers

    models = _predictors(0.5, [0.1, 0.2, 0.7])
    image = breast_like(96, 64)
    loaded = SimpleNamespace(image=image, meta=None)
    for classes, call, group in ((["A", "B", "C", "D"], "C", None), (["F", "G", "D"], "D", "dense")):
        exam = _Exam([loaded], [None], ["image 1"], [])
        exam.result = SimpleNamespace(density={"call": call, "classes": classes})
        app = SimpleNamespace(models={"malignancy": models["malignancy"]}, scored=lambda e: e.result)
        out = _Handlers.region(app, exam, 0, (10, 10, 40, 40))
        assert out["density_group"] == group
