"""pipeline.predict.decide: the one decision rule of the app, `mammoscope predict` and the tests; and the minimum
image size every scoring path refuses below."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.batch import Prepared, TaskModel, score_batch
from pipeline.batchio import InputItem
from pipeline.errors import ImageReadError
from pipeline.predict import decide, predict_image, prepare_sample
from pipeline.samples import MIN_IMAGE_SIDE, load_samples

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


def test_density_call_follows_stored_ordinal_cutpoints():
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6], [0.2, 0.45, 0.35]])  # expected index 0.7, 1.5, 1.15
    assert decide(proba, {**DENSITY, "cutpoints": [0.8, 1.4]}) == ["F", "D", "G"]
    assert decide(proba, {**DENSITY, "cutpoints": [0.6, 1.1]}) == ["G", "D", "D"]
    assert decide(proba, {**DENSITY, "cutpoints": None}) == ["F", "D", "G"]  # models trained before #16


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
    def __init__(self, metadata: dict, row: list[float]) -> None:
        self.metadata = {**metadata, "sample_params": {"size": 32}}
        self.pipeline = _Fixed(row)
        self.name, self.version, self.alias = f"m-{metadata['task']}", 1, "champion"


@pytest.mark.parametrize("threshold", [0.3, 0.5, float("nan")])
def test_app_and_batch_paths_make_the_same_call(threshold: float):
    """predict_image (the app) and score_batch (`mammoscope predict`) give the same call through `decide`."""
    rng = np.random.default_rng(0)
    image = rng.random((96, 64), dtype=np.float32)
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


def test_too_small_image_is_refused_on_every_scoring_path(tmp_path):
    """A 1x1 (or 31 px wide) image is not scored as a mammogram: prepare_sample, the batch predictor and training's
    load_samples all refuse it with an ImageReadError naming the file, the size and what to do."""
    from PIL import Image

    from pipeline.batch import prepare_item

    path = tmp_path / "one pixel.png"
    Image.fromarray(np.array([[128]], dtype=np.uint8)).save(path)
    with pytest.raises(ImageReadError, match=r"one pixel\.png: image is 1 x 1 px, too small to be a mammogram.*"
                                             r"full-resolution mammogram"):
        prepare_sample(np.ones((1, 1), np.float32), None, "density", {"size": 32}, path=path)
    with pytest.raises(ImageReadError, match=rf"^image: image is {MIN_IMAGE_SIDE - 1} x 400 px"):
        prepare_sample(np.ones((400, MIN_IMAGE_SIDE - 1), np.float32), None, "density", {"size": 32})
    assert prepare_sample(np.ones((MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), np.float32), None, "density",
                          {"size": 32}).shape == (32, 32)

    prepared = prepare_item(InputItem(path=str(path)), [("density", {"size": 32})])
    assert prepared.samples == {} and prepared.error.startswith(f"{path}: image is 1 x 1 px, too small")
    X, errors = load_samples(pd.DataFrame([{"sample_id": "s", "path": str(path)}]), "density", 32)
    assert X.shape == (0, 32 * 32)
    assert errors["error"].tolist() == [prepared.error]  # the same message, the file named once
