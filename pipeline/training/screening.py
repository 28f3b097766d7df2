"""Completing a final screening fit for serving: the map's tile scorer (``heatmap_``), the multi-view context stage
and the operating point of each level (breast, exam) chosen on the classifier's inner out-of-fold probabilities
(``validation_proba_``) of the training rows."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pipeline.model.estimators import disable_cache, final_classifier
from pipeline.model.screening import (asymmetry_C, build_map_pipeline, context_auto, context_C, context_presence,
                                      level_thresholds, tile_max_block)

__all__ = ["finish_screening_model"]


def finish_screening_model(final: Pipeline, config: Mapping[str, Any], X: np.ndarray, y: np.ndarray,
                           table: pd.DataFrame, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Fit the map's tile scorer onto `final` (``final.heatmap_``), with ``screening.context`` on the multi-view
    context stage (``final.context_``, on the classifier's inner out-of-fold probabilities), and return the card's
    extra decision entries: ``level_thresholds`` {image, breast, exam}, ``view_fusion`` and ``context``."""
    final.heatmap_ = disable_cache(build_map_pipeline(config, cache_dir).fit(X, y))
    how = str(config["screening"]["view_fusion"])
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

            M = tile_max_block(config, np.asarray(X)[clf.validation_index_], pipeline=final)
            s_inner, models = cross_fit_asymmetry(M, yy, rows, groups, aC)
            if models:  # served by the mean of the fold models the stage's scores came from
                final.asymmetry_ = models
                final.asymmetry_columns_ = _union_tile_max_columns(final, config, X[:1])
            else:  # too few images with a contralateral breast: the stage reads no asymmetry
                s_inner, aC = None, None
        presence = context_presence(config)
        final.context_ = fit_context(p, yy, rows, C, s_inner, presence)
        inner_p = cross_fit_context(p, yy, rows, groups, C, asymmetry=s_inner, presence=presence)
        if context_auto(config):
            from pipeline.model.context import context_pays

            if not context_pays(yy, p, inner_p):  # auto: the stage does not pay on these training images
                final.context_, inner_p, C = None, None, None
        if final.context_ is None:  # no stage kept (auto) or fitted (too few rows): nothing reads the asymmetry
            final.asymmetry_ = final.asymmetry_columns_ = None
    thresholds = level_thresholds(clf, table, y, how, float(config["evaluation"]["target_sensitivity"]), inner_p)
    extra = {"level_thresholds": thresholds, "view_fusion": how, "context": C is not None,
             "context_presence": C is not None and context_presence(config),
             "context_asymmetry": getattr(final, "asymmetry_", None) is not None}
    if hasattr(clf, "kept_group_"):  # screening.tile_scores_auto: did this fit keep the tile scores
        extra["tile_scores_kept"] = bool(clf.kept_group_)
    return extra


def _union_tile_max_columns(final: Pipeline, config: Mapping[str, Any], X1: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the tile-max block in the fitted feature union's output (what serving slices out of the
    features it computes anyway): the tiles member follows the whole breast's columns."""
    from pipeline.model.asymmetry import tile_max_columns

    offset = 0
    for name, member in final.named_steps["features"].transformer_list:
        width = np.asarray(member.transform(X1)).shape[1]
        if name == "tiles":
            cols = tile_max_columns(width, config["screening"]["poolings"], offset)
            return int(cols.start), int(cols.stop)
        offset += width
    raise ValueError("the screening pipeline has no tiles member")
