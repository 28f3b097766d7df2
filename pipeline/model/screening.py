"""The screening estimator: whole-breast features (the 224 px recipe) fused with pooled tile embeddings of the
breast at `screening.scale` x the working resolution -> calibrated XGBoost; and the tile scorer behind the map.

    Pipeline([
        ("features", FeatureUnion([
            ("whole", Pipeline([Resize(S), <preprocess + FeatureUnion(handcrafted, CNN) of the density recipe>])),
            ("tiles", Pipeline([("embed", CachedTransformer(CLAHE -> unsharp -> TileEmbedder)),
                                ("pool", TilePooling)])),
        ])),
        ("select", ...), ("classifier", PatientCalibratedClassifier(WeightedXGBClassifier)),
    ])

Input X: (n, R*R) screening samples (pipeline.samples recipe ``highres``), R = round(scale * S).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from sklearn.pipeline import FeatureUnion, Pipeline

from pipeline.errors import ConfigError
from pipeline.evaluation.metrics import choose_threshold
from pipeline.io.exams import level_ids
from pipeline.model.estimators import CachedTransformer, build_pipeline
from pipeline.model.levels import LEVELS, level_proba

__all__ = ["whole_image_config", "tile_embedding_step", "build_screening_pipeline", "build_map_pipeline",
           "context_C", "context_auto", "context_presence", "asymmetry_C", "tile_max_block", "asymmetry_setup", "level_thresholds"]


def whole_image_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config of the plain whole-breast recipe (the density sample recipe, binary labels)."""
    plain = copy.deepcopy(dict(config))
    plain["dataset"] = {**plain["dataset"], "task": "density"}
    return plain


def tile_embedding_step(config: Mapping[str, Any], cache_dir: str | Path | None = None) -> CachedTransformer:
    """Cached per image: CLAHE -> unsharp (radius scaled to the high resolution) -> TileEmbedder."""
    from features.clahe import CLAHE
    from features.tiles import TileEmbedder
    from features.unsharp import UnsharpMask

    pre, sc, cn = config["preprocessing"], config["screening"], config["features"]["cnn"]
    steps: list[tuple[str, Any]] = []
    if pre["clahe"]["enabled"]:
        steps.append(("clahe", CLAHE(clip_limit=pre["clahe"]["clip_limit"], kernel_size=pre["clahe"]["kernel_size"],
                                     keep_zero=True)))
    if pre["unsharp"]["enabled"]:
        steps.append(("unsharp", UnsharpMask(radius=pre["unsharp"]["radius"] * float(sc["scale"]),
                                             amount=pre["unsharp"]["amount"], keep_zero=True)))
    n_jobs = int(config["compute"]["n_jobs"])
    pooling = sc.get("tile_pooling") or cn["pooling"]  # null: the whole-breast CNN's pooling
    steps.append(("embed", TileEmbedder(tile_size=int(sc["tile_size"]), overlap=float(sc["overlap"]),
                                        max_tiles=int(sc["max_tiles"]), min_breast=float(sc["min_breast"]),
                                        backbone=cn["backbone"], weights=cn["weights"], pooling=pooling,
                                        batch_size=int(cn["batch_size"]),
                                        n_threads=n_jobs if n_jobs > 0 else None)))
    return CachedTransformer(Pipeline(steps), str(cache_dir) if cache_dir else None)


def build_screening_pipeline(config: Mapping[str, Any], cache_dir: str | Path | None = None) -> Pipeline:
    """The screening Pipeline of a resolved config (dataset.task screening)."""
    from features.resize import Resize
    from features.tiles import TilePooling

    sc = config["screening"]
    plain = build_pipeline(whole_image_config(config), cache_dir)
    union: list[tuple[str, Any]] = []
    if sc["whole_breast"]:
        union.append(("whole", Pipeline([("resize", Resize(size=int(config["samples"]["size"]), aspect="stretch")),
                                         ("preprocess", plain.named_steps["preprocess"]),
                                         ("features", plain.named_steps["features"])])))
    union.append(("tiles", Pipeline([
        ("embed", tile_embedding_step(config, cache_dir)),
        ("pool", TilePooling(max_tiles=int(sc["max_tiles"]), poolings=tuple(sc["poolings"]), top_k=int(sc["top_k"]))),
    ])))
    if int(sc.get("tile_scores", 0)) > 0:  # the tile scorer's top-k tile probabilities, fitted in-fold (#15)
        from features.tile_scores import TileScoreFeatures
        from pipeline.model.routing import request_groups

        union.append(("tile_scores", Pipeline([
            ("embed", tile_embedding_step(config, cache_dir)),
            ("score", request_groups(TileScoreFeatures(max_tiles=int(sc["max_tiles"]), k=int(sc["tile_scores"]),
                                                       C=float(sc["map_C"]),
                                                       random_state=int(config["evaluation"]["seed"])))),
        ])))
    classifier = plain.named_steps["classifier"]
    if int(sc.get("tile_scores", 0)) > 0 and sc.get("tile_scores_auto", False):
        # the tile scores (the union's last columns) kept by each fit only where they pay on its training rows
        from pipeline.model.choice import LastColumnsChoice
        from pipeline.model.routing import request_groups

        if config["features"]["selection"]["k_best"] is not None:
            raise ConfigError("screening.tile_scores_auto needs features.selection.k_best: null (the choice drops "
                              "the feature union's last columns, which a selection step would reorder)")
        classifier = request_groups(LastColumnsChoice(classifier, n_drop=int(sc["tile_scores"])))
    return Pipeline([("features", FeatureUnion(union)), ("select", plain.named_steps["select"]),
                     ("classifier", classifier)])


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
    return bool(config["screening"].get("context_presence", True))


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


def _tiles_member(pipeline: Pipeline) -> Any:
    return dict(pipeline.named_steps["features"].transformer_list)["tiles"]


def tile_max_block(config: Mapping[str, Any], X: np.ndarray, cache_dir: str | Path | None = None,
                   pipeline: Pipeline | None = None) -> np.ndarray:
    """(n, D) each image's tile-max embedding (TilePooling's max block) from the tiles member of `pipeline` (fitted)
    or of a fresh screening pipeline (its tile embedding and pooling learn nothing from labels, so one pass over
    all images serves every fold); reads the tile cache where the fit filled it."""
    from pipeline.model.asymmetry import tile_max_columns

    if pipeline is None:
        tiles = _tiles_member(build_screening_pipeline(config, cache_dir))
        T = tiles.fit_transform(X)
    else:
        T = _tiles_member(pipeline).transform(X)
    return np.asarray(T[:, tile_max_columns(T.shape[1], config["screening"]["poolings"])], np.float64)


def asymmetry_setup(config: Mapping[str, Any], X: np.ndarray, cache_dir: str | Path | None = None
                    ) -> tuple[np.ndarray, float] | None:
    """(tile-max block of every image, C) for a CV with ``screening.context_asymmetry`` on, else None."""
    C = asymmetry_C(config)
    return None if C is None else (tile_max_block(config, X, cache_dir), C)


def level_thresholds(classifier: Any, table: pd.DataFrame, y: np.ndarray, how: str, target: float,
                     inner_p: np.ndarray | None = None) -> dict[str, float]:
    """Per level (image, breast, exam): the highest threshold reaching `target` sensitivity on the fitted
    classifier's inner out-of-fold probabilities of its training rows (`table`, `y`; or `inner_p`, the same rows'
    context-stage probabilities), fused as at scoring time."""
    ids = {k: v[classifier.validation_index_] for k, v in level_ids(table).items()}
    p = classifier.validation_proba_[:, 1] if inner_p is None else inner_p
    inner = level_proba(p, np.asarray(y)[classifier.validation_index_], ids, how)
    return {lv: float(choose_threshold(inner[lv][1], inner[lv][2], target)) for lv in LEVELS}
