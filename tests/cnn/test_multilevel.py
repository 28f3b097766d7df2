"""pooling='multilevel' of CNNEmbedder: the last map's average, then each intermediate stage's map average- and
max-pooled (cnn._nets.stage_taps / EmbeddingNet)."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from cnn.embedder import CNNEmbedder

torch = pytest.importorskip("torch")


def _images(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size * size), dtype=np.float32)


def _tiny(**params) -> CNNEmbedder:
    return CNNEmbedder(backbone="tiny", weights="random", input_size=32, **params)


def test_stage_taps_of_efficientnet_lite0_are_the_ends_of_its_stride_8_to_32_stages():
    pytest.importorskip("efficientnet_lite_pytorch")
    from cnn._nets import stage_taps
    from cnn.backbones import build_backbone

    features = build_backbone("efficientnet_lite0", "random").features
    features.train()
    taps = stage_taps(features)
    blocks = list(features.net._blocks)
    assert [blocks.index(t) for t in taps] == [4, 7, 10, 14]  # 40, 80, 112, 192 channels; the 320-channel end is last
    assert features.training  # the probe ran in eval mode and gave the mode back


def test_multilevel_starts_with_the_average_pooled_embedding_and_adds_two_poolings_per_stage():
    X = _images()
    avg = _tiny().fit(X).transform(X)
    multi = _tiny(pooling="multilevel").fit(X)
    Z = multi.transform(X)
    # tiny: one intermediate stage (8 channels at stride 2), so 16 + 2 x 8 values
    assert Z.shape == (4, 32) and multi.n_embedding_ == 32 and Z.dtype == np.float32
    np.testing.assert_array_equal(Z[:, :16], avg)
    assert (Z[:, 24:] >= Z[:, 16:24] - 1e-6).all()  # max pooling >= average pooling, channel by channel
    assert not multi.inference_model_._maps  # no activation kept between calls (transform runs the fused copy)
    assert multi.inference_model_._maps is not multi.model_._maps


def test_multilevel_embedders_survive_pickle_and_deepcopy_independently():
    X, other = _images(seed=1), _images(seed=2)
    emb = _tiny(pooling="multilevel").fit(X)
    want = emb.transform(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(emb)).transform(X), want)
    twin = copy.deepcopy(emb)
    # the copy's hooks write into the copy: interleaved calls do not mix their activations
    np.testing.assert_array_equal(twin.transform(other), emb.transform(other))
    np.testing.assert_array_equal(emb.transform(X), want)
    assert twin.model_._maps is not emb.model_._maps
    assert twin.inference_model_._maps is not emb.inference_model_._maps


def test_finetuning_refuses_multilevel_pooling():
    from cnn.finetune import finetune

    with pytest.raises(ValueError, match="multilevel"):
        finetune(np.zeros((4, 32, 32), np.float32), np.array([0, 1, 0, 1]), backbone="tiny", weights="random",
                 pooling="multilevel", epochs=1)


def test_screening_tile_pooling_reaches_the_tile_embedder():
    from pipeline.config.experiment import resolve_config
    from pipeline.model.screening import tile_embedding_step

    def pooling(overrides):
        cfg = resolve_config("experiments/tiny_test.yaml", {"dataset": {"task": "screening"}, **overrides})
        return tile_embedding_step(cfg).transformer.named_steps["embed"].pooling

    assert pooling({}) == "avg"  # null: the whole-breast CNN's pooling
    assert pooling({"screening": {"tile_pooling": "multilevel"}}) == "multilevel"
    assert pooling({"features": {"cnn": {"pooling": "max"}}}) == "max"


def test_multilevel_embeddings_from_many_threads_at_once_equal_one_thread():
    """One fitted embedder shared by concurrent callers (the app's requests): each call reads its own stage maps.
    With a map store shared between threads, calls took each other's maps (wrong values or, at other batch
    sizes, a shape error), as the app's four-client benchmark showed."""
    from concurrent.futures import ThreadPoolExecutor

    emb = _tiny(pooling="multilevel", n_threads=1).fit(_images(1, 64))
    inputs = [_images(1 + i % 3, 64, seed=i) for i in range(48)]
    expected = [emb.transform(x) for x in inputs]
    threads = torch.get_num_threads()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(emb.transform, inputs))
    assert torch.get_num_threads() == threads  # n_threads=1 held while any call ran, then the count is back
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_a_batch_embeds_each_image_as_alone():
    """Each image's multilevel embedding does not depend on the batch it came in."""
    X = _images(7, 64, seed=3)
    emb = _tiny(pooling="multilevel", n_threads=2).fit(X[:1])
    together = emb.transform(X)
    alone = np.concatenate([emb.transform(X[i:i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
