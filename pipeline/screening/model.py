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

Input X: (n, R*R) screening samples (pipeline.screening.samples), R = round(scale * S).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from sklearn.pipeline import FeatureUnion, Pipeline

from pipeline.model import CachedTransformer, build_pipeline

__all__ = ["whole_image_config", "tile_embedding_step", "build_screening_pipeline", "build_map_pipeline"]


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
    steps.append(("embed", TileEmbedder(tile_size=int(sc["tile_size"]), overlap=float(sc["overlap"]),
                                        max_tiles=int(sc["max_tiles"]), min_breast=float(sc["min_breast"]),
                                        backbone=cn["backbone"], weights=cn["weights"], pooling=cn["pooling"],
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
    return Pipeline([("features", FeatureUnion(union)), ("select", plain.named_steps["select"]),
                     ("classifier", plain.named_steps["classifier"])])


def build_map_pipeline(config: Mapping[str, Any], cache_dir: str | Path | None = None) -> Pipeline:
    """Tile embeddings -> TileScorer (each tile inherits its image's label): the per-tile scores of the map."""
    from features.tiles import TileScorer

    sc = config["screening"]
    return Pipeline([("embed", tile_embedding_step(config, cache_dir)),
                     ("scorer", TileScorer(max_tiles=int(sc["max_tiles"]), top_k=1, C=float(sc["map_C"]),
                                           random_state=int(config["evaluation"]["seed"])))])
