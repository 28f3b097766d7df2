"""Completing a final screening fit for serving: the map's tile scorer (``heatmap_``), the multi-view context stage
and the operating point of each level (breast, exam) chosen on the classifier's inner out-of-fold probabilities
(``validation_proba_``) of the training rows."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pipeline.model.estimators import disable_cache, final_classifier
from pipeline.model.screening import (asymmetry_C, blocks_tile_max_columns, context_auto, context_C,
                                      context_presence, front_features, level_thresholds, tile_matrix,
                                      tile_max_block)

__all__ = ["finish_screening_model"]


def finish_screening_model(final: Pipeline, config: Mapping[str, Any], X: np.ndarray | None, y: np.ndarray,
                           table: pd.DataFrame, cache_dir: str | Path | None = None, *,
                           features: np.ndarray | None = None, progress_bar: bool = False) -> dict[str, Any]:
    """Fit the map's tile scorer onto `final` (``final.heatmap_``), with ``screening.context`` on the multi-view
    context stage (``final.context_``, on the classifier's inner out-of-fold probabilities), and return the card's
    extra decision entries: ``level_thresholds`` {image, breast, exam}, ``view_fusion`` and ``context``.

    Everything here reads the front's output `features` (n, d) (streamed training), computed from the samples X
    where it is not given; `progress_bar`: a tqdm bar on stderr over these steps."""
    import sys

    from tqdm.auto import tqdm

    from features.tiles import TileScorer

    if features is None:
        features = front_features(final, X)
    sc = config["screening"]
    bar = tqdm(total=3, desc="exam stage (map, asymmetry, context)", unit="step", file=sys.stderr,
               disable=not progress_bar, dynamic_ncols=True)
    with bar:
        tiles = copy.deepcopy(dict(final.named_steps["features"].transformer_list)["tiles"])
        scorer = TileScorer(max_tiles=int(sc["max_tiles"]), top_k=1, C=float(sc["map_C"]),
                            random_state=int(config["evaluation"]["seed"])).fit(tile_matrix(config, features), y)
        final.heatmap_ = disable_cache(Pipeline([("embed", tiles), ("scorer", scorer)]))
        bar.update(1)
        how = str(sc["view_fusion"])
        clf, C, inner_p = final_classifier(final), context_C(config), None
        aC = asymmetry_C(config)
        if C is not None:
            from pipeline.model.context import cross_fit_context, fit_context

            rows = table.reset_index(drop=True).iloc[clf.validation_index_]
            groups = rows["patient_id"].astype(str).to_numpy()
            yy, p = np.asarray(y)[clf.validation_index_], clf.validation_proba_[:, 1]
            s_inner = None
            final.asymmetry_ = final.asymmetry_columns_ = None
            if aC is not None:  # the bilateral asymmetry score: a column of the context stage
                from pipeline.model.asymmetry import cross_fit_asymmetry

                M = tile_max_block(config, features=np.asarray(features)[clf.validation_index_])
                s_inner, models = cross_fit_asymmetry(M, yy, rows, groups, aC)
                if models:  # served by the mean of the fold models the stage's scores came from
                    final.asymmetry_ = models
                    final.asymmetry_columns_ = blocks_tile_max_columns(config, np.asarray(features).shape[1])
                else:  # too few images with a contralateral breast: the stage reads no asymmetry
                    s_inner, aC = None, None
            bar.update(1)
            presence = context_presence(config)
            final.context_ = fit_context(p, yy, rows, C, s_inner, presence)
            inner_p = cross_fit_context(p, yy, rows, groups, C, asymmetry=s_inner, presence=presence)
            if context_auto(config):
                from pipeline.model.context import context_pays

                if not context_pays(yy, p, inner_p):  # auto: the stage does not pay on these training images
                    final.context_, inner_p, C = None, None, None
            if final.context_ is None:  # no stage kept (auto) or fitted (too few rows): nothing reads the asymmetry
                final.asymmetry_ = final.asymmetry_columns_ = None
        bar.update(bar.total - bar.n)
    thresholds = level_thresholds(clf, table, y, how, float(config["evaluation"]["target_sensitivity"]), inner_p)
    extra = {"level_thresholds": thresholds, "view_fusion": how, "context": C is not None,
             "context_presence": C is not None and context_presence(config),
             "context_asymmetry": getattr(final, "asymmetry_", None) is not None}
    if hasattr(clf, "kept_group_"):  # screening.tile_scores_auto: did this fit keep the tile scores
        extra["tile_scores_kept"] = bool(clf.kept_group_)
    return extra


