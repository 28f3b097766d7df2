"""pipeline.serving.predict.decide: the one decision rule of the app, `mammoscope predict` and the tests; and the minimum
image size every scoring path refuses below."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipeline.serving.batch import Prepared, TaskModel, score_batch
from pipeline.io.batchio import InputItem
from pipeline.errors import ImageReadError
from pipeline.serving.predict import decide, predict_image, prepare_sample
from pipeline.samples import MIN_IMAGE_SIDE, load_samples
from tests._cards import card
from tests._images import breast_like

MALIGNANCY = {"task": "malignancy", "classes": ["benign", "malignant"], "threshold": 0.3}
DENSITY = {"task": "density", "classes": ["F", "G", "D"], "threshold": float("nan")}


def test_malignancy_call_is_the_operating_point_not_the_argmax():
    proba = np.array([[0.9, 0.1], [0.71, 0.29], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    assert decide(proba, MALIGNANCY) == ["benign", "benign", "malignant", "malignant", "malignant"]
    assert decide(proba, {**MALIGNANCY, "threshold": 0.95}) == ["benign"] * 5
    # no operating point (missing or NaN): no call, rather than a silent 0.5 or "never malignant"
    assert decide(proba, {**MALIGNANCY, "threshold": None}) == [None] * 5
    assert decide(proba, {**MALIGNANCY, "threshold": float("nan")}) == [None] * 5


def test_density_call_is_the_most_probable_class_whatever_the_threshold():
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6], [0.2, 0.45, 0.35]])
    assert decide(proba, DENSITY) == ["F", "D", "G"]
    assert decide(proba, {**DENSITY, "threshold": 0.01}) == ["F", "D", "G"]
    assert decide(np.zeros((0, 3)), DENSITY) == []


def _ordinal(cuts):
    """A density card dict whose decision is the ordinal cut-point rule (#16)."""
    return {"task": "density", "classes": ["F", "G", "D"],
            "decision": {"rule": "ordinal_cutpoints", "threshold": None, "cutpoints": cuts}}


def test_density_call_follows_the_cards_ordinal_cutpoints():
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6], [0.2, 0.45, 0.35]])  # expected index 0.7, 1.5, 1.15
    assert decide(proba, _ordinal([0.8, 1.4])) == ["F", "D", "G"]
    assert decide(proba, _ordinal([0.6, 1.1])) == ["G", "D", "D"]
    assert decide(proba, _ordinal(None)) == ["F", "D", "G"]  # a card without cut-points: the most probable class
    with pytest.raises(ValueError, match="K-1"):
        decide(proba, _ordinal([0.5]))


def test_decide_refuses_probabilities_that_do_not_match_the_classes():
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        decide(np.array([[0.5, 0.5]]), DENSITY)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        decide(np.array([0.5, 0.5]), MALIGNANCY)


class _Fixed:
    """A stand-in fitted pipeline returning the same (unnormalised) probabilities for every row."""

    def __init__(self, row: list[float]) -> None:
        self.row = np.asarray(row, dtype=float)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.tile(self.row, (len(X), 1))


class _Loaded:
    """What registry.load_model returns (pipeline, card, name, version, alias), with a stand-in pipeline."""

    def __init__(self, metadata: dict, row: list[float]) -> None:
        self.card = card(metadata["task"], metadata["classes"], metadata.get("threshold"))
        if "decision" in metadata:
            self.card = dataclasses.replace(self.card, decision=metadata["decision"])
        self.pipeline = _Fixed(row)
        self.name, self.version, self.alias = f"m-{metadata['task']}", 1, "champion"


@pytest.mark.parametrize("threshold", [0.3, 0.5, float("nan")])
def test_app_and_batch_paths_make_the_same_call(threshold: float):
    """predict_image (the app) and score_batch (`mammoscope predict`) give the same call through `decide`."""
    image = breast_like(96, 64)
    loaded = {"malignancy": _Loaded({**MALIGNANCY, "threshold": threshold}, [1.4, 0.6]),  # p_malignant = 0.3
              "density": _Loaded(DENSITY, [1.0, 3.0, 2.0])}
    app = predict_image(image, None, loaded, roi=(10, 10, 40, 40))
    models = [TaskModel.from_loaded(m) for m in loaded.values()]
    prepared = Prepared(item=InputItem(path="x.png"),
                        samples={t: prepare_sample(image, None, t, {"size": 32}, (10, 10, 40, 40)) for t in loaded})
    row = score_batch([prepared], models)[0]
    expected = None if np.isnan(threshold) else ("malignant" if threshold <= 0.3 else "benign")
    assert app["malignancy"]["call"] == row["malignancy_call"] == expected
    assert app["density"]["predicted"] == row["density_call"] == "G"
    assert row["malignancy_p_malignant"] == pytest.approx(0.3, abs=1e-12)


def test_app_and_batch_paths_make_the_same_ordinal_density_call():
    """A card with cut-points: the app and `mammoscope predict` both call by them, not by the arg-max."""
    image = breast_like(96, 64)
    loaded = {"density": _Loaded(_ordinal([0.5, 1.1]), [1.0, 3.0, 2.0])}  # expected index 7/6 > 1.1, arg-max G
    app = predict_image(image, None, loaded)
    prepared = Prepared(item=InputItem(path="x.png"),
                        samples={"density": prepare_sample(image, None, "density", {"size": 32})})
    row = score_batch([prepared], [TaskModel.from_loaded(loaded["density"])])[0]
    assert app["density"]["predicted"] == "G"
    assert app["density"]["call"] == row["density_call"] == "D"


def test_too_small_image_is_refused_on_every_scoring_path(tmp_path):
    """A 1x1 (or 31 px wide) image is not scored as a mammogram: prepare_sample, the batch predictor and training's
    load_samples all refuse it with an ImageReadError naming the file, the size and what to do."""
    from PIL import Image

    from pipeline.serving.batch import prepare_item

    path = tmp_path / "one pixel.png"
    Image.fromarray(np.array([[128]], dtype=np.uint8)).save(path)
    with pytest.raises(ImageReadError, match=r"one pixel\.png: image is 1 x 1 px, too small to be a mammogram.*"
                                             r"full-resolution mammogram"):
        prepare_sample(np.ones((1, 1), np.float32), None, "density", {"size": 32}, path=path)
    with pytest.raises(ImageReadError, match=rf"^image: image is {MIN_IMAGE_SIDE - 1} x 400 px"):
        prepare_sample(np.ones((400, MIN_IMAGE_SIDE - 1), np.float32), None, "density", {"size": 32})
    assert prepare_sample(breast_like(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), None, "density",
                          {"size": 32}).shape == (32, 32)

    prepared = prepare_item(InputItem(path=str(path)), [("density", {"size": 32})])
    assert prepared.samples == {} and prepared.error.startswith(f"{path}: image is 1 x 1 px, too small")
    X, errors = load_samples(pd.DataFrame([{"sample_id": "s", "path": str(path)}]), "density", 32)
    assert X.shape == (0, 32 * 32)
    assert errors["error"].tolist() == [prepared.error]  # the same message, the file named once
