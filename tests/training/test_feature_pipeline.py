"""The handcrafted stack as sklearn objects: names, pandas output, clone/pickle/joblib, cache, n_jobs, Resize, BreastMask."""
from __future__ import annotations

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

import features.glcm
from features import CLAHE, BreastMask, GLCMFeatures, IntensityFeatures, Resize, make_handcrafted_pipeline
from features.preprocess import resize_image

from tests._images import mias_image

SIZE = 64


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    """Four real mammograms at SIZE x SIZE, flattened: (4, SIZE*SIZE) float32."""
    return np.stack([resize_image(mias_image(n), SIZE).ravel() for n in ("mdb001", "mdb002", "mdb003", "mdb004")])


def test_pipeline_feature_names_and_pandas_output(X):
    pipe = make_handcrafted_pipeline(distances=(1, 2), aggregation="both", bins=8)
    out = pipe.fit_transform(X)
    names = pipe.get_feature_names_out()
    assert out.shape == (4, len(names))
    assert "glcm__glcm_contrast_d1_mean" in names and "glcm__glcm_contrast_d2_a45" in names
    assert "intensity__intensity_kurtosis" in names and "intensity__hist_7" in names
    frame = clone(pipe).set_output(transform="pandas").fit_transform(X)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(names)
    np.testing.assert_allclose(frame.to_numpy(), out)


def test_pipeline_clone_pickle_joblib_round_trip_identical(X, tmp_path):
    pipe = make_handcrafted_pipeline().fit(X)
    expected = pipe.transform(X)
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(clone(pipe).fit(X).transform(X), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pipe)).transform(X), expected)
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "pipe.joblib").transform(X), expected)


def test_second_transform_is_read_from_the_cache(X, tmp_path, monkeypatch):
    est = GLCMFeatures(levels=32, memory=str(tmp_path))
    first = est.fit(X).transform(X)
    calls = []

    def counting(image, **kwargs):
        calls.append(1)
        raise AssertionError("computed again instead of read from the cache")

    monkeypatch.setattr(features.glcm, "glcm_of_image", counting)
    np.testing.assert_array_equal(est.transform(X), first)
    np.testing.assert_array_equal(clone(est).fit(X).transform(X), first)  # a new experiment, same images
    assert calls == []
    with pytest.raises(AssertionError, match="computed again"):  # other parameters are another key
        est.set_params(levels=16).transform(X)


def test_n_jobs_gives_the_same_features(X):
    many = np.concatenate([X] * 20)  # 80 images: two chunks of work
    one = IntensityFeatures(bins=8).fit_transform(many)
    two = IntensityFeatures(bins=8, n_jobs=2).fit_transform(many)
    np.testing.assert_array_equal(two, one)


def test_resize_takes_images_of_different_sizes():
    images = [mias_image("mdb001")[:600, :300], mias_image("mdb002"), np.ones((10, 30), np.float32)]
    out = Resize(size=32).fit_transform(images)
    assert out.shape == (3, 32 * 32) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], resize_image(images[1], 32).ravel())
    third = out[2].reshape(32, 32)
    assert third[:8].max() == 0 and third[12:20].min() > 0.99  # padded above and below, not stretched
    assert Resize(size=32).fit(images).get_feature_names_out()[0] == "resize0"
    three_d = Resize(size=16).fit_transform(np.stack([mias_image("mdb003")[:64, :64]] * 2))
    assert three_d.shape == (2, 256)


def test_breast_mask_zeroes_background_and_film_label():
    image = resize_image(mias_image("mdb001"), 224)
    out = BreastMask().fit_transform(image.reshape(1, -1)).reshape(224, 224)
    inside = out > 0
    assert 0.2 < inside.mean() < 0.8
    assert (out[inside] == np.maximum(image[inside], out[inside].min())).all()
    assert image[~inside].mean() < 0.1  # what was removed is dark background (and small labels)


def test_masked_stack_measures_only_the_breast(X):
    pipe = make_handcrafted_pipeline(breast_mask=True).fit(X)
    masked = pipe.transform(X)
    unmasked = make_handcrafted_pipeline(breast_mask=False).fit_transform(X)
    names = list(pipe.get_feature_names_out())
    mean = names.index("intensity__intensity_mean")
    assert (masked[:, mean] > unmasked[:, mean]).all()  # background no longer pulls the mean down


def test_invalid_parameters_are_named():
    with pytest.raises(ValueError, match="The 'levels' parameter of GLCMFeatures must be an int in \\[2, 256\\]. Got 1000"):
        GLCMFeatures(levels=1000).fit(np.zeros((2, 16)))
    with pytest.raises(ValueError, match="'clip_limit' parameter of CLAHE"):
        CLAHE(clip_limit=2).fit(np.zeros((2, 16)))
    with pytest.raises(ValueError, match="'aspect' parameter of Resize"):
        Resize(aspect="crop").fit(np.zeros((2, 16)))
