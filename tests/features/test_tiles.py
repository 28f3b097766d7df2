"""TileEmbedder's test-time flips and shifts (a tile's embedding is the mean over its views) and its CNN input size."""
import numpy as np
import pytest

from features.tiles import TileEmbedder


def _breast(seed: int = 0, side: int = 64) -> np.ndarray:
    """A textured, asymmetric 'breast' filling the frame (every tile is inside it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    image = 0.3 + 0.4 * x * (1 - y) + 0.1 * rng.random((side, side))
    image[10:20, 40:52] += 0.3  # an off-centre bright spot
    return np.clip(image, 0.05, 1.0).astype(np.float32)


def _embedder(flips: str) -> TileEmbedder:
    return TileEmbedder(tile_size=64, max_tiles=1, backbone="tiny", weights="random", n_threads=1, flips=flips)


@pytest.mark.parametrize("flips, mirror", [("h", lambda a: a[:, ::-1]), ("hv", lambda a: a[::-1, :]),
                                           ("hv", lambda a: a[::-1, ::-1])])
def test_flipped_embeddings_do_not_move_when_the_tile_is_mirrored(flips, mirror):
    image = _breast()
    X = np.stack([image.ravel(), np.ascontiguousarray(mirror(image)).ravel()])
    plain = _embedder("none").fit(X).transform(X)
    flipped = _embedder(flips).fit(X).transform(X)
    assert not np.allclose(plain[0], plain[1], atol=1e-4)  # the CNN alone sees the mirrored tile differently
    np.testing.assert_allclose(flipped[0], flipped[1], rtol=1e-4, atol=1e-5)
    assert flipped.shape == plain.shape and flipped.dtype == np.float32


def test_h_flips_average_the_tile_and_its_mirror():
    image = _breast(1)
    X = image.reshape(1, -1)
    mirrored = np.ascontiguousarray(image[:, ::-1]).reshape(1, -1)
    none = _embedder("none").fit(X)
    want = (none.transform(X)[0, 1:] + none.transform(mirrored)[0, 1:]) / 2
    got = _embedder("h").fit(X).transform(X)[0]
    assert got[0] == 1.0  # the slot is valid
    np.testing.assert_allclose(got[1:], want, rtol=1e-4, atol=1e-6)


def test_unknown_flips_are_refused_by_name():
    with pytest.raises(ValueError, match="'flips' parameter of TileEmbedder"):
        _embedder("diagonal").fit(_breast().reshape(1, -1))


def test_the_experiment_switch_reaches_the_tile_embedder():
    from pipeline.config.experiment import resolve_config
    from pipeline.model.screening import tile_embedding_step

    cfg = resolve_config("experiments/tiny_test.yaml", {"dataset": {"task": "screening"},
                                                        "screening": {"tile_flips": "h"}})
    assert tile_embedding_step(cfg).transformer.named_steps["embed"].flips == "h"
    with pytest.raises(Exception, match="tile_flips"):
        resolve_config("experiments/tiny_test.yaml", {"screening": {"tile_flips": "sideways"}})


def test_shift_averages_the_tile_and_its_diagonal_neighbours():
    """shift=s: the embedding of a tile is the mean of the plain tile's and of the tiles at its corner moved by
    (+s, +s) and (-s, -s), clipped to the image; the slot and the tile positions are those of the plain grid."""
    image = _breast(2, side=96)
    X = image.reshape(1, -1)
    emb = TileEmbedder(tile_size=64, max_tiles=1, backbone="tiny", weights="random", n_threads=1,
                       min_breast=0.0, overlap=0.5).fit(X)
    corners, _ = emb.tiles_of(image)
    (y, x), = corners
    at = [(min(max(y + d, 0), 32), min(max(x + d, 0), 32)) for d in (0, 8, -8)]  # 96 - 64: the last corner
    crops = [image[r:r + 64, c:c + 64] for r, c in at]
    want = np.mean([emb.embedder_.transform(c.reshape(1, -1))[0] for c in crops], axis=0)
    shifted = TileEmbedder(**{**emb.get_params(), "shift": 8}).fit(X)
    got = shifted.transform(X)[0]
    assert got[0] == 1.0 and shifted.tiles_of(image)[0] == corners
    np.testing.assert_allclose(got[1:], want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(got[1:], emb.transform(X)[0, 1:], atol=1e-4)  # the shifted views moved it


def test_shift_and_flips_combine_and_a_bad_shift_is_refused():
    image = _breast(3)
    X = image.reshape(1, -1)
    params = dict(tile_size=32, max_tiles=2, backbone="tiny", weights="random", n_threads=1)
    plain = TileEmbedder(**params).fit(X).transform(X)
    both = TileEmbedder(**params, flips="h", shift=4).fit(X).transform(X)
    assert both.shape == plain.shape and np.isfinite(both).all() and not np.allclose(both, plain, atol=1e-4)
    with pytest.raises(ValueError, match="'shift' parameter of TileEmbedder"):
        TileEmbedder(tile_size=32, shift=-1, backbone="tiny", weights="random").fit(X)


def test_the_shift_switch_reaches_the_tile_embedder():
    from pipeline.config.experiment import resolve_config
    from pipeline.model.screening import tile_embedding_step

    cfg = resolve_config("experiments/tiny_test.yaml", {"dataset": {"task": "screening"},
                                                        "screening": {"tile_shift": 16}})
    assert tile_embedding_step(cfg).transformer.named_steps["embed"].shift == 16


def test_input_size_resizes_each_tile_before_the_cnn():
    """input_size=s: a tile's embedding is the CNN's embedding of the tile resized to s px (None: its own size)."""
    import torch
    import torch.nn.functional as F

    from cnn.embedder import CNNEmbedder

    image = _breast(4)
    X = image.reshape(1, -1)
    own = TileEmbedder(tile_size=64, max_tiles=1, backbone="tiny", weights="random", n_threads=1).fit(X)
    big = TileEmbedder(**{**own.get_params(), "input_size": 96}).fit(X)
    assert big.embedder_.input_size == 96 and own.embedder_.input_size == 64
    up = F.interpolate(torch.from_numpy(image)[None, None], size=(96, 96), mode="bilinear", align_corners=False)
    up = up[0, 0].numpy().reshape(1, -1)
    want = CNNEmbedder(backbone="tiny", weights="random", input_size=96, n_threads=1).fit(up).transform(up)[0]
    got = big.transform(X)[0]
    np.testing.assert_allclose(got[1:], want, rtol=1e-4, atol=1e-5)
    assert got.shape == own.transform(X)[0].shape and not np.allclose(got[1:], own.transform(X)[0, 1:], atol=1e-4)
    with pytest.raises(ValueError, match="'input_size' parameter of TileEmbedder"):
        TileEmbedder(tile_size=32, input_size=4, backbone="tiny", weights="random").fit(X)


@pytest.mark.parametrize("backbone, whole, tile", [("efficientnet_lite2", 260, 260), ("efficientnet_lite1", 240, 240),
                                                   ("efficientnet_lite0", 224, None)])
def test_native_input_size_reaches_the_whole_breast_cnn_and_the_tiles(backbone, whole, tile):
    """features.cnn.input_size: native resizes samples and tiles to the backbone's ImageNet input; where that is
    the tile's own size the step keeps input_size=None (its parameters, and its feature cache, stay the same)."""
    from pipeline.config.experiment import resolve_config
    from pipeline.model.estimators import cnn_input_size
    from pipeline.model.screening import tile_embedding_step

    cfg = resolve_config("experiments/mias_screening.yaml", {"features": {"cnn": {"backbone": backbone,
                                                                                   "input_size": "native"}}})
    assert cnn_input_size(cfg["features"]["cnn"], cfg["samples"]["size"]) == whole
    assert tile_embedding_step(cfg).transformer.named_steps["embed"].input_size == tile
    sample = resolve_config("experiments/mias_screening.yaml", {"features": {"cnn": {"backbone": backbone}}})
    assert cnn_input_size(sample["features"]["cnn"], 224) == 224
    assert tile_embedding_step(sample).transformer.named_steps["embed"].input_size is None


def test_native_input_size_is_refused_for_a_backbone_without_one():
    from pipeline.errors import ConfigError
    from pipeline.model.estimators import cnn_input_size

    with pytest.raises(ConfigError, match="input_size: native needs a built-in backbone"):
        cnn_input_size({"backbone": "my_net", "input_size": "native"}, 224)
    assert cnn_input_size({"backbone": "my_net", "input_size": "sample"}, 224) == 224


def test_excluding_the_pectoral_muscle_keeps_it_out_of_every_tile():
    """screening.tile_exclude_pectoral: the muscle is zeroed before the tiles are placed and embedded, so no tile
    is placed on it and the tiles see none of it but its edge (without the switch the corner tile is the muscle)."""
    from pipeline.config.experiment import resolve_config
    from pipeline.model.screening import tile_embedding_step
    from tests.features.test_pectoral import _mlo

    image, muscle = _mlo(h=128, w=128, a=70, b=110, muscle=0.8)
    X = image.reshape(1, -1)
    for on in (False, True):
        cfg = resolve_config("experiments/tiny_test.yaml", {"dataset": {"task": "screening"}, "screening": {
            "tile_size": 64, "max_tiles": 9, "tile_exclude_pectoral": on}})
        step = tile_embedding_step(cfg).transformer
        assert ("pectoral" in step.named_steps) is on
        emb = step.fit(X).transform(X)
        seen = step[:-1].transform(X).reshape(image.shape)  # what the tile embedder is given
        corners, _ = step[-1].tiles_of(seen)
        kept = float((seen[muscle] > 0).mean())
        if on:
            assert kept < 0.05 and (0, 0) not in corners, (kept, corners)
        else:
            assert kept == 1.0 and (0, 0) in corners
        assert emb.shape == (1, 9 * (1 + step[-1].n_embedding_)) and np.isfinite(emb).all()
