"""The screening estimator: whole-breast features (the 224 px recipe) fused with pooled tile embeddings of the
breast at `screening.scale` x the working resolution -> calibrated XGBoost; and the tile scorer behind the map.

    Pipeline([
        ("preprocess", "passthrough"),
        ("features", FeatureUnion([                                   # the frozen front: cached per image
            ("whole", CachedTransformer(Resize(S) -> <preprocess + FeatureUnion(handcrafted, CNN) of the density
                                        recipe>)),
            ("blobs", CachedTransformer(BlobFeatures)),  # only with screening.blobs: the breast's bright spots
            ("tiles", CachedTransformer(CLAHE -> unsharp -> TileEmbedder)),  # the tile matrix, max_tiles x (1 + D)
        ])),
        ("blocks", ColumnTransformer([("whole", "passthrough", <whole [+ blobs] columns>),  # the head: in-fold
                                      ("tiles", TilePooling, <tile matrix>),
                                      ("tile_scores", TileScoreFeatures (patient groups), <tile matrix>)])),
        ("select", ...), ("classifier", [LastColumnsChoice of] PatientCalibratedClassifier(WeightedXGBClassifier)),
    ])

Input X: (n, R*R) screening samples (pipeline.samples recipe ``highres``), R = round(scale * S); with
``screening.aspect`` != 1, (n, H*W) samples of pipeline.samples.sample_shape (each image step is told the shape).
Every branch of the front is stateless, so training streams it (pipeline.training.stream: each image's sample,
whole-breast features and tile matrix computed once on a worker and cached on disk) and fits the head on the front's
output; whatever is fitted on tiles (the tile scores, the map's scorer, the asymmetry model) reads the tile matrix
from those columns.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.pipeline import FeatureUnion, Pipeline

from pipeline.errors import ConfigError
from pipeline.evaluation.metrics import choose_threshold
from pipeline.io.exams import level_ids
from pipeline.model.estimators import CachedTransformer, build_pipeline, cnn_input_size
from pipeline.model.levels import LEVELS, level_proba

__all__ = ["whole_image_config", "sample_image_shape", "tile_embedding_step", "tile_block_width",
           "build_screening_pipeline", "build_map_pipeline", "context_C", "asymmetry_C", "front_features",
           "tile_matrix", "tile_max_block", "asymmetry_setup", "level_thresholds", "blocks_tile_max_columns",
           "context_auto", "build_exam_model"]


def whole_image_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config of the plain whole-breast recipe (the density sample recipe, binary labels)."""
    plain = copy.deepcopy(dict(config))
    plain["dataset"] = {**plain["dataset"], "task": "density"}
    return plain


def tile_embedding_step(config: Mapping[str, Any], cache_dir: str | Path | None = None) -> CachedTransformer:
    """Cached per image: (with screening.tile_exclude_pectoral, the muscle zeroed) -> CLAHE -> unsharp (radius scaled
    to the high resolution) -> TileEmbedder."""
    from features.clahe import CLAHE
    from features.tiles import TileEmbedder
    from features.unsharp import UnsharpMask

    pre, sc, cn = config["preprocessing"], config["screening"], config["features"]["cnn"]
    shape = sample_image_shape(config)
    steps: list[tuple[str, Any]] = []
    if sc.get("tile_exclude_pectoral", False):  # before CLAHE: the muscle is found on the sample's own contrast
        from features.pectoral import PectoralMask

        steps.append(("pectoral", PectoralMask(image_shape=shape)))
    if pre["clahe"]["enabled"]:
        steps.append(("clahe", CLAHE(clip_limit=pre["clahe"]["clip_limit"], kernel_size=pre["clahe"]["kernel_size"],
                                     keep_zero=True, image_shape=shape)))
    if pre["unsharp"]["enabled"]:
        steps.append(("unsharp", UnsharpMask(radius=pre["unsharp"]["radius"] * float(sc["scale"]),
                                             amount=pre["unsharp"]["amount"], keep_zero=True, image_shape=shape)))
    n_jobs = int(config["compute"]["n_jobs"])
    pooling = sc.get("tile_pooling") or cn["pooling"]  # null: the whole-breast CNN's pooling
    tile = int(sc["tile_size"])
    size = cnn_input_size(cn, tile)
    steps.append(("embed", TileEmbedder(tile_size=tile, overlap=float(sc["overlap"]),
                                        max_tiles=int(sc["max_tiles"]), min_breast=float(sc["min_breast"]),
                                        backbone=cn["backbone"], weights=cn["weights"], pooling=pooling,
                                        batch_size=int(cn["batch_size"]), flips=str(sc.get("tile_flips", "none")),
                                        shift=int(sc.get("tile_shift", 0)), image_shape=shape,
                                        input_size=None if size == tile else size,
                                        n_threads=n_jobs if n_jobs > 0 else None)))
    return CachedTransformer(Pipeline(steps), str(cache_dir) if cache_dir else None)


def sample_image_shape(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """(H, W) of the screening samples where ``screening.aspect`` makes them tall (or wide); None for the square
    sample (the steps infer it, and their parameters and feature caches stay those of the square recipe)."""
    from pipeline.samples import sample_shape

    sc = config["screening"]
    h, w = sample_shape(int(config["samples"]["size"]), float(sc["scale"]), float(sc.get("aspect", 1.0)))
    return None if h == w else (h, w)


def tile_block_width(config: Mapping[str, Any]) -> int:
    """Columns of the tile matrix the tile embedding step writes per image: max_tiles x (1 + D), D the CNN
    embedding's width for the configured backbone and pooling (probed once per process: a network is built)."""
    step = tile_embedding_step(config).transformer.steps[-1][1]
    key = (step.backbone, step.weights, step.pooling, int(step.tile_size))
    if key not in _EMBEDDING_WIDTH:
        t = int(step.tile_size)
        probe = clone(step).set_params(max_tiles=1, n_threads=None, image_shape=None)
        probe.fit(np.zeros((1, t * t), np.float32))
        _EMBEDDING_WIDTH[key] = int(probe.n_embedding_)
    return int(step.max_tiles) * (1 + _EMBEDDING_WIDTH[key])


_EMBEDDING_WIDTH: dict[tuple, int] = {}


def build_screening_pipeline(config: Mapping[str, Any], cache_dir: str | Path | None = None) -> Pipeline:
    """The screening Pipeline of a resolved config (dataset.task screening): a frozen front of cached per-image
    features (the whole breast's, the tile matrix) and a head fitted on them (``blocks``: the tile matrix pooled
    and, with ``screening.tile_scores``, scored in-fold; ``select``; ``classifier``), so training can stream the
    front (pipeline.training.stream) and serve ``assemble(front, head)``."""
    from sklearn.compose import ColumnTransformer

    from features.resize import Resize
    from features.tiles import TilePooling

    sc = config["screening"]
    plain = build_pipeline(whole_image_config(config), None)  # uncached inside: the branch is cached as a whole
    shape = sample_image_shape(config)
    cache = str(cache_dir) if cache_dir else None
    front: list[tuple[str, Any]] = []
    if sc["whole_breast"]:  # a tall frame is padded to the branch's square input
        front.append(("whole", CachedTransformer(Pipeline([
            ("resize", Resize(size=int(config["samples"]["size"]), aspect="stretch" if shape is None else "pad",
                              image_shape=shape)),
            ("preprocess", plain.named_steps["preprocess"]), ("features", plain.named_steps["features"])]), cache)))
    if sc.get("blobs", False):  # bright-spot features of the high-resolution breast (natural contrast)
        from features.blobs import BlobFeatures

        front.append(("blobs", CachedTransformer(BlobFeatures(
            sigmas=tuple(float(v) for v in sc["blob_sigmas"]), image_shape=shape), cache)))
    front.append(("tiles", tile_embedding_step(config, cache_dir)))  # last: the head reads it as the last columns
    width = tile_block_width(config)
    tiles = slice(-width, None)  # the tile matrix: the front's last columns
    blocks: list[tuple[str, Any, Any]] = []
    if sc["whole_breast"] or sc.get("blobs", False):  # every front column before the tile matrix
        blocks.append(("whole", "passthrough", slice(0, -width)))
    blocks.append(("tiles", TilePooling(max_tiles=int(sc["max_tiles"]), poolings=tuple(sc["poolings"]),
                                        top_k=int(sc["top_k"])), tiles))
    if int(sc.get("tile_scores", 0)) > 0:  # the tile scorer's top-k tile probabilities, fitted in-fold
        from features.tile_scores import TileScoreFeatures
        from pipeline.model.routing import request_groups

        blocks.append(("tile_scores", request_groups(TileScoreFeatures(
            max_tiles=int(sc["max_tiles"]), k=int(sc["tile_scores"]), C=float(sc["map_C"]),
            random_state=int(config["evaluation"]["seed"]))), tiles))
    classifier = plain.named_steps["classifier"]
    if int(sc.get("tile_scores", 0)) > 0 and sc.get("tile_scores_auto", False):
        # the tile scores (the blocks' last columns) kept by each fit only where they pay on its training rows
        from pipeline.model.choice import LastColumnsChoice
        from pipeline.model.routing import request_groups

        if config["features"]["selection"]["k_best"] is not None:
            raise ConfigError("screening.tile_scores_auto needs features.selection.k_best: null (the choice drops "
                              "the feature blocks' last columns, which a selection step would reorder)")
        classifier = request_groups(LastColumnsChoice(classifier, n_drop=int(sc["tile_scores"])))
    return Pipeline([("preprocess", "passthrough"), ("features", FeatureUnion(front)),
                     ("blocks", ColumnTransformer(blocks, sparse_threshold=0.0)),
                     ("select", plain.named_steps["select"]), ("classifier", classifier)])


def build_map_pipeline(config: Mapping[str, Any], cache_dir: str | Path | None = None) -> Pipeline:
    """Tile embeddings -> TileScorer (each tile inherits its image's label): the per-tile scores of the map."""
    from features.tiles import TileScorer

    sc = config["screening"]
    return Pipeline([("embed", tile_embedding_step(config, cache_dir)),
                     ("scorer", TileScorer(max_tiles=int(sc["max_tiles"]), top_k=1, C=float(sc["map_C"]),
                                           random_state=int(config["evaluation"]["seed"])))])


def context_C(config: Mapping[str, Any]) -> float | None:
    """The multi-view context stage's C where ``screening.context`` is on (true or auto), else None
    (pipeline.model.context)."""
    sc = config["screening"]
    return float(sc.get("context_C", 1.0)) if sc.get("context", False) in (True, "auto") else None


def context_presence(config: Mapping[str, Any]) -> bool:
    """``screening.context_presence``: whether the context stage reads view-presence flags (False: the
    shortcut-free stage of pipeline.model.context, applied to every image)."""
    return bool(config["screening"].get("context_presence", False))


def context_auto(config: Mapping[str, Any]) -> bool:
    """``screening.context: auto``: each fit keeps the context stage only where, on its own training images'
    out-of-fold probabilities, it ranks them better than the first stage (a choice made without the test fold)."""
    return config["screening"].get("context", False) == "auto"


def asymmetry_C(config: Mapping[str, Any]) -> float | None:
    """The bilateral asymmetry model's C where ``screening.context_asymmetry`` is on and the context stage it is a
    column of is on too (``screening.context`` true or auto), else None (pipeline.model.asymmetry)."""
    sc = config["screening"]
    if not sc.get("context_asymmetry", False) or context_C(config) is None:
        return None
    return float(sc.get("context_asymmetry_C", 1e-3))


def front_features(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """(n, d) the frozen front's output (whole-breast [and bright-spot] features, then the tile matrix) of a fitted
    screening Pipeline
    for samples X (n, R*R): what streamed training holds instead of the samples."""
    return np.asarray(pipeline[:2].transform(X))


def tile_matrix(config: Mapping[str, Any], features: np.ndarray) -> np.ndarray:
    """(n, max_tiles * (1 + D)) float32 each image's tile matrix: the last columns of the front's output."""
    return np.asarray(np.asarray(features)[:, -tile_block_width(config):], np.float32)


def _pooling(config: Mapping[str, Any]) -> Any:
    from features.tiles import TilePooling

    sc = config["screening"]
    return TilePooling(max_tiles=int(sc["max_tiles"]), poolings=tuple(sc["poolings"]), top_k=int(sc["top_k"]))


def tile_max_block(config: Mapping[str, Any], X: np.ndarray | None = None, cache_dir: str | Path | None = None,
                   pipeline: Pipeline | None = None, *, features: np.ndarray | None = None) -> np.ndarray:
    """(n, D) each image's tile-max embedding (TilePooling's max block): from the front's output `features`, else
    from samples X through the front of `pipeline` (fitted) or of a fresh screening pipeline (the tile embedding and
    pooling learn nothing from labels, so one pass over all images serves every fold; it reads the tile cache)."""
    from pipeline.model.asymmetry import tile_max_columns

    if features is None:
        front = pipeline[:2] if pipeline is not None else build_screening_pipeline(config, cache_dir)[:2].fit(X[:2])
        features = front_features(front, X)
    T = tile_matrix(config, features)
    pooled = _pooling(config).fit(T[:1]).transform(T)
    return np.asarray(pooled[:, tile_max_columns(pooled.shape[1], config["screening"]["poolings"])], np.float64)


def asymmetry_setup(config: Mapping[str, Any], X: np.ndarray | None = None, cache_dir: str | Path | None = None,
                    *, features: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
    """(tile-max block of every image, C) for a CV with ``screening.context_asymmetry`` on, else None; from the
    front's output `features` (streamed) or the samples X."""
    C = asymmetry_C(config)
    return None if C is None else (tile_max_block(config, X, cache_dir, features=features), C)


def level_thresholds(classifier: Any, table: pd.DataFrame, y: np.ndarray, how: str, target: float,
                     inner_p: np.ndarray | None = None) -> dict[str, float]:
    """Per level (image, breast, exam): the highest threshold reaching `target` sensitivity on the fitted
    classifier's inner out-of-fold probabilities of its training rows (`table`, `y`; or `inner_p`, the same rows'
    context-stage probabilities), fused as at scoring time."""
    ids = {k: v[classifier.validation_index_] for k, v in level_ids(table).items()}
    p = classifier.validation_proba_[:, 1] if inner_p is None else inner_p
    inner = level_proba(p, np.asarray(y)[classifier.validation_index_], ids, how)
    return {lv: float(choose_threshold(inner[lv][1], inner[lv][2], target)) for lv in LEVELS}


def blocks_tile_max_columns(config: Mapping[str, Any], n_front: int) -> tuple[int, int]:
    """[start, stop) of the tile-max block in the ``blocks`` step's output (the classifier's input, which serving
    computes anyway) of a front with `n_front` columns: the pooled tiles follow the whole breast's columns."""
    from pipeline.model.asymmetry import tile_max_columns

    sc = config["screening"]
    width = tile_block_width(config)
    d = width // int(sc["max_tiles"]) - 1
    cols = tile_max_columns(1 + len(sc["poolings"]) * d, sc["poolings"], offset=int(n_front) - width)
    return int(cols.start), int(cols.stop)


def build_exam_model(config: Mapping[str, Any], pipeline: Any, *, front: Any = None, with_map: bool = True) -> Any:
    """The ExamModel (pipeline.model.exam) of a resolved screening config around the image `pipeline` (the whole
    screening Pipeline, or its head on the frozen `front`'s output); `with_map`: fit the map's tile scorer too (the
    served model; cross-validation folds need none)."""
    from features.tiles import TileScorer
    from pipeline.model.exam import ExamModel

    sc = config["screening"]
    scorer = TileScorer(max_tiles=int(sc["max_tiles"]), top_k=1, C=float(sc["map_C"]),
                        random_state=int(config["evaluation"]["seed"])) if with_map else None
    return ExamModel(pipeline, front=front, map_scorer=scorer, context_C=context_C(config),
                     context_auto=context_auto(config), context_presence=context_presence(config),
                     asymmetry_C=asymmetry_C(config),
                     view_fusion=str(sc["view_fusion"]),
                     target_sensitivity=float(config["evaluation"]["target_sensitivity"]))
