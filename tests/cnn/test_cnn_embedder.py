"""cnn.embedder.CNNEmbedder: shapes, preprocessing, pretrained features, clone/pickle, threads, lazy torch."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from cnn.embedder import CNNEmbedder, images_from_X

def _images(n: int = 6, size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size), dtype=np.float32)


def _tiny(**params) -> CNNEmbedder:
    return CNNEmbedder(backbone="tiny", weights="random", input_size=32, **params)


def test_importing_the_embedder_does_not_import_torch():
    code = "import sys, cnn.embedder, cnn.finetune, cnn.gradcam, cnn.backbones; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


def test_transform_gives_float32_embeddings_with_names():
    images = _images()
    X = images.reshape(len(images), -1)
    emb = _tiny().fit(X)
    Z = emb.transform(X)
    assert Z.shape == (6, 16) and Z.dtype == np.float32 and np.isfinite(Z).all()
    assert list(emb.get_feature_names_out()[:2]) == ["cnn_tiny_0", "cnn_tiny_1"]
    np.testing.assert_array_equal(emb.transform(images), Z)  # (N, H, W) input == flattened input
    np.testing.assert_array_equal(emb.transform(X.astype(np.float64)), Z)
    assert _tiny(pooling="avgmax").fit(X).transform(X).shape == (6, 32)


def test_transform_equals_the_bare_network_on_preprocessed_batches():
    torch = pytest.importorskip("torch")
    from cnn.embedder import preprocess_batch

    images = _images(5, size=64)
    emb = _tiny(batch_size=2).fit(images.reshape(5, -1))
    x = preprocess_batch(torch.from_numpy(images), input_size=32, mean=emb.mean_, std=emb.std_)
    assert x.shape == (5, 3, 32, 32)
    # the same grey value in the 3 channels, each normalised with its own ImageNet mean/std
    torch.testing.assert_close(x[:, 0] * 0.229 + 0.485, x[:, 1] * 0.224 + 0.456)
    assert x.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = emb.model_(x).numpy()
    np.testing.assert_allclose(emb.transform(images.reshape(5, -1)), expected, rtol=1e-5, atol=1e-6)


def test_image_shape_and_strip_images():
    X = np.random.default_rng(1).random((3, 12), dtype=np.float32)
    assert images_from_X(X).shape == (3, 1, 12)  # not a square: a (1, n) strip
    assert images_from_X(X, (3, 4)).shape == (3, 3, 4)
    a = _tiny(image_shape=(3, 4)).fit(X)
    assert a.transform(X).shape == (3, 16)
    np.testing.assert_array_equal(_tiny().fit(X).transform(X), _tiny().fit(X).transform(X))  # deterministic
    with pytest.raises(ValueError, match=r"image_shape.*holds 10 pixels, but X has 12 features"):
        _tiny(image_shape=(2, 5)).fit(X)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"backbone": "vgg99"}, "'backbone' parameter of CNNEmbedder must be one of"),
        ({"pooling": "median"}, "'pooling' parameter of CNNEmbedder must be one of"),
        ({"batch_size": 0}, "'batch_size' parameter of CNNEmbedder must be an int >= 1"),
        ({"n_threads": 0}, "'n_threads' parameter of CNNEmbedder must be None or an int >= 1"),
    ],
)
def test_bad_parameters_are_named_in_the_error(params, message):
    base = {"backbone": "tiny", "weights": "random", "input_size": 32}
    with pytest.raises(ValueError, match=message):
        CNNEmbedder(**{**base, **params}).fit(np.zeros((2, 16), np.float32))


def test_wrong_number_of_pixels_in_transform_is_refused():
    emb = _tiny().fit(np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError, match="X has 25 features, but CNNEmbedder is expecting 16"):
        emb.transform(np.zeros((2, 25), np.float32))


def test_clone_and_pickle_round_trips_give_identical_embeddings():
    X = _images(4).reshape(4, -1)
    emb = _tiny(random_state=7).fit(X)
    Z = emb.transform(X)
    np.testing.assert_array_equal(clone(emb).fit(X).transform(X), Z)
    state = emb.__getstate__()
    assert all(isinstance(v, np.ndarray) for v in state["model_"]["features"].values())  # no torch objects
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(emb)).transform(X), Z)


def test_n_threads_applies_inside_transform_only():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    seen = []
    emb = _tiny(n_threads=1).fit(np.zeros((2, 16), np.float32))
    hook = emb.inference_model_.register_forward_hook(lambda *args: seen.append(torch.get_num_threads()))
    emb.transform(np.zeros((2, 16), np.float32))
    hook.remove()
    assert seen == [1] and torch.get_num_threads() == before


def test_default_embedder_gives_pretrained_features_on_a_grey_photo_and_real_mammograms(mias_dir):
    skdata = pytest.importorskip("skimage.data")
    from skimage.color import rgb2gray
    from skimage.transform import resize

    cat = resize(rgb2gray(skdata.chelsea()), (256, 256), anti_aliasing=True).astype(np.float32)
    emb = CNNEmbedder().fit(cat.reshape(1, -1))  # efficientnet_lite0, ImageNet weights, offline
    assert emb.n_embedding_ == 1280
    assert 281 <= int(emb.predict_logits(cat.reshape(1, -1)).argmax()) <= 285  # a cat, from grey pixels

    from skimage.io import imread

    scans = np.stack([resize(imread(mias_dir / "images" / f"mdb00{i}.png"), (256, 256), anti_aliasing=True)
                      for i in (1, 2, 3)]).astype(np.float32)
    Z = emb.transform(scans.reshape(3, -1))
    assert Z.shape == (3, 1280) and np.isfinite(Z).all() and (Z >= 0).all()  # ReLU6 features
    assert np.abs(Z[0] - Z[2]).max() > 0.01
    restored = pickle.loads(pickle.dumps(emb))  # 18 MB of pretrained weights travel in the pickle
    np.testing.assert_array_equal(restored.transform(scans.reshape(3, -1)), Z)
